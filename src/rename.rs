//! `rename OLD NEW`: sparsebak's state for a volume follows a volume that was renamed
//! outside sparsebak (`lvrename`, Qubes renaming a VM, `mv` of an image file), so the
//! next send of NEW is an incremental on OLD's history instead of a new full send, and
//! OLD's reference snapshot does not stay behind pinning old blocks.
//!
//! What moves: the source's snapshots (`OLD.tick` → `NEW.tick`; a tock is dropped), the
//! source-side state `metadir/OLD` → `metadir/NEW`, and the archive folder
//! `destdir/OLD` → `destdir/NEW`. Stream chains are not carried over (every stream
//! names its volume, and a chain of one name is what `receive --from-stream` checks):
//! their records are dropped, and the next stream of NEW is full. The volume itself and
//! the configuration are the user's to rename. Each step is skipped when already done,
//! so an interrupted rename is finished by running it again.
//!
//! With several destinations, the source-side state of all of them moves at once (it
//! lives under `metadir/OLD`), so the command moves the volume's folder in the archive
//! of every destination holding its history, and refuses, before it changes anything,
//! when one of them is not present.

use crate::archive::{meta_dir, Archive};
use crate::config::{valid_volume_name, Config};
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, LockGuard, Mode};
use crate::source::Source;

/// What `rename` did, for the summary.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Renamed {
    pub archive: bool,
    pub metadir: bool,
    pub stream_chains_dropped: u64,
}

/// Whether `dir` holds nothing but the lock file `lock` (or does not exist).
fn only_lock(dir: &std::path::Path, lock: &str) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.at(dir)?;
                if e.file_name() != lock {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).at(dir),
    }
}

/// Move `from` to `to` where `to` may be an empty folder (left by a lock); nothing to do
/// when `from` is gone.
fn move_dir(from: &std::path::Path, to: &std::path::Path, lock: &str) -> Result<bool> {
    if !from.exists() {
        return Ok(false);
    }
    if to.exists() {
        let l = to.join(lock);
        if l.exists() {
            std::fs::remove_file(&l).at(&l)?;
        }
    }
    // rename(2) replaces an empty folder.
    std::fs::rename(from, to).at(from)?;
    durable::sync_parent(to).at(to)?;
    Ok(true)
}

/// Rename volume `old` to `new` in the source, the metadir and the archive.
pub fn rename(
    config: &Config,
    archive: &Archive,
    source: &mut dyn Source,
    old: &str,
    new: &str,
) -> Result<Renamed> {
    for n in [old, new] {
        if !valid_volume_name(n) {
            return Err(Error::Msg(format!("invalid volume name {n:?}")));
        }
    }
    if old == new {
        return Err(Error::Msg(format!(
            "volume {old}: the new name is the same"
        )));
    }
    let (mold, mnew) = (meta_dir(config, old), meta_dir(config, new));
    let (aold, anew) = (archive.root.join(old), archive.root.join(new));
    // New's state would be replaced: refuse unless there is none (a folder holding only
    // a lock file is what a lock left).
    let new_meta_free = only_lock(&mnew, "lock")?;
    let new_arch_free = only_lock(&anew, ".lock")?;
    let old_meta = mold.exists();
    let old_arch = aold.exists();
    if (old_meta && !new_meta_free) || (old_arch && !new_arch_free) {
        return Err(Error::Msg(format!(
            "volume {new} already has sparsebak state ({} or {}); `sparsebak delete {new}` \
             first if it is not wanted",
            mnew.display(),
            anew.display()
        )));
    }
    if !old_meta && !old_arch && new_meta_free && new_arch_free {
        return Err(Error::Msg(format!(
            "volume {old} has no sparsebak state here ({} and {} do not exist)",
            mold.display(),
            aold.display()
        )));
    }
    let mut locks = Vec::new();
    if old_meta {
        locks.push(lock_meta(config, old)?);
        locks.push(lock_meta(config, new)?);
    }
    if old_arch {
        locks.extend(archive.lock_volume(old, Mode::Exclusive)?);
        locks.extend(archive.lock_volume(new, Mode::Exclusive)?);
    }
    source.rename(old, new)?;
    let mut done = Renamed {
        metadir: old_meta && move_dir(&mold, &mnew, "lock")?,
        ..Default::default()
    };
    // Stream chains: their records and maps go (the next stream of NEW is full).
    let streams = crate::metadir::streams_dir_in(&mnew);
    if streams.is_dir() {
        done.stream_chains_dropped = std::fs::read_dir(&streams).at(&streams)?.count() as u64;
        std::fs::remove_dir_all(&streams).at(&streams)?;
    }
    forget_stream_chains(config, old)?;
    done.archive = old_arch && move_dir(&aold, &anew, ".lock")?;
    drop(locks);
    Ok(done)
}

/// The other destinations (not the one `config` was chosen for) that hold history of
/// volume `old` (or of `new`, when an interrupted rename moved the source-side state
/// already): a delta map or session copies. `rename` moves their archive folders too.
pub fn other_destinations(config: &Config, old: &str, new: &str) -> Vec<String> {
    let dirs = [meta_dir(config, old), meta_dir(config, new)];
    config
        .dest_names()
        .into_iter()
        .filter(|d| *d != config.dest)
        .filter(|d| {
            dirs.iter().any(|v| {
                let dir = crate::metadir::dest_dir_in(v, d);
                crate::metadir::delta_map_in(&dir).exists()
                    || crate::metadir::copies_dir_in(&dir).exists()
            })
        })
        .map(str::to_string)
        .collect()
}

/// Whether volume `new`'s folder in `archive` is free to receive `old`'s: missing, or
/// holding only a lock file.
pub fn archive_folder_free(archive: &Archive, new: &str) -> Result<bool> {
    only_lock(&archive.root.join(new), ".lock")
}

/// Move the folder of volume `old` in `archive` to `new` (another destination's
/// archive, once [`rename`] moved the rest). Returns whether it moved anything.
pub fn rename_archive_folder(archive: &Archive, old: &str, new: &str) -> Result<bool> {
    let (aold, anew) = (archive.root.join(old), archive.root.join(new));
    if !aold.exists() {
        return Ok(false);
    }
    if !only_lock(&anew, ".lock")? {
        return Err(Error::Msg(format!(
            "volume {new} already has a folder in the archive at {}; `sparsebak delete {new}` \
             there first if it is not wanted",
            archive.root.display()
        )));
    }
    let mut locks = Vec::new();
    locks.extend(archive.lock_volume(old, Mode::Exclusive)?);
    locks.extend(archive.lock_volume(new, Mode::Exclusive)?);
    let moved = move_dir(&aold, &anew, ".lock")?;
    drop(locks);
    Ok(moved)
}

/// The source-side lock of volume `n` (its folder is created if missing; the rename
/// replaces it).
fn lock_meta(config: &Config, n: &str) -> Result<LockGuard> {
    let dir = meta_dir(config, n);
    crate::archive::create_private_dir(&dir)?;
    lock::lock(
        &crate::metadir::lock_path(config, n),
        Mode::Exclusive,
        crate::send::META_LOCK_WAIT,
        &format!("volume {n} on this machine"),
    )
}

fn forget_stream_chains(config: &Config, volume: &str) -> Result<()> {
    let path = crate::metadir::catalog(config);
    if !path.exists() {
        return Ok(());
    }
    let err = |e: crate::catalog::CatalogError| Error::Msg(e.to_string());
    let cat = crate::catalog::Catalog::open(&path).map_err(err)?;
    cat.forget_volume(volume).map_err(err)
}
