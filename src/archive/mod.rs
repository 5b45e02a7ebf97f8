//! The archive on the destination: opening or creating it, the per-volume lock,
//! writing sessions ([`writer`]), checking them ([`verify`]), and the copies of each
//! session's info and manifest that the source side keeps ([`local`]).

pub mod identity;
pub mod local;
pub mod prune;
pub mod repair;
pub mod tar;
pub mod verify;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sparsebak_format::layout;
use sparsebak_format::marker::read_marker;
use sparsebak_format::volume::{check_archive_root, VolumeArchive};

use crate::config::Config;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, LockGuard, Mode};

/// How long a command waits for another run to release a volume.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// Why a run may not use the archive at `destdir`. Nothing was written when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive at {path} is on a read-only filesystem; {action} needs to write to it (mount it read-write)")]
    ReadOnly { path: PathBuf, action: String },
    #[error("no archive at {path}, but this machine sends to archive {known} there: is its disk mounted? Nothing was written (if that archive is gone for good, `{accept}` starts a new one there)")]
    Missing {
        path: PathBuf,
        known: String,
        /// The command that accepts: `sparsebak send [--dest=NAME] --accept-archive`.
        accept: String,
    },
    #[error("no archive at {path}, but this machine has sent {volumes} to an archive there: is its disk mounted? Nothing was written (to start a new archive there, `{accept}`)")]
    MissingSent {
        path: PathBuf,
        volumes: String,
        accept: String,
    },
    /// The destination cannot be reached now (a remote host not answering): `send
    /// --dest=all` skips it rather than failing.
    #[error("destination {dest} is not reachable: {reason}")]
    Unreachable { dest: String, reason: String },
    #[error("the archive at {path} is archive {found}, but this machine sends to archive {known} there: is another disk mounted? Nothing was written (to send to archive {found} from now on, `{accept}`)")]
    Different {
        path: PathBuf,
        known: String,
        found: String,
        accept: String,
    },
}

/// An archive root folder.
#[derive(Debug, Clone)]
pub struct Archive {
    pub root: PathBuf,
    /// Its identity (`None` for an archive made before identities, until a run that
    /// writes to it gives it one).
    pub id: Option<String>,
    /// Whether its filesystem is mounted read-only: then only reading is possible,
    /// and readers take no locks (nobody can write it).
    pub read_only: bool,
}

/// Whether `path` (or, if it does not exist yet, the nearest folder above it that
/// does) is on a filesystem mounted read-only.
pub fn is_read_only(path: &Path) -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    path.ancestors()
        .find_map(|p| statvfs(p).ok())
        .is_some_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
}

impl Archive {
    /// Open the configured archive, which must exist, for reading.
    pub fn open(config: &Config) -> Result<Archive> {
        config.check_destination(false)?;
        let root = config.destdir.clone();
        let Some(marker) = read_marker(&root)? else {
            check_archive_root(&root)?;
            return Err(Error::Msg(format!("{}: no archive", root.display())));
        };
        let read_only = is_read_only(&root);
        if read_only {
            tracing::debug!(
                "archive {} is on a read-only filesystem: reading without locks",
                root.display()
            );
        }
        Ok(Archive {
            root,
            id: marker.id,
            read_only,
        })
    }

    /// Open the configured archive, which must exist, to change it (`action` names
    /// what for in errors): it must be writable and be the archive this machine
    /// sends to (see [`identity`]).
    pub fn open_writable(config: &Config, action: &str) -> Result<Archive> {
        config.check_destination(true)?;
        let mut a = Self::open(config)?;
        a.require_writable(action)?;
        identity::adopt(config, &mut a, false)?;
        sweep_dead_runs(&a);
        Ok(a)
    }

    /// Open the configured archive to send to it, creating an empty one if the
    /// folder has none yet, unless this machine knows an archive there (its disk is
    /// probably not mounted). `accept` takes whatever archive is found, or a new one,
    /// as this machine's archive from now on.
    pub fn open_or_create(config: &Config, accept: bool) -> Result<Archive> {
        config.check_destination(true)?;
        let root = config.destdir.clone();
        if read_marker(&root)?.is_none() {
            match identity::refuse_if_known(config, accept) {
                // Unless another run has just created it (and recorded it).
                Err(e) if read_marker(&root)?.is_none() => return Err(e),
                Err(_) => {}
                Ok(()) if is_read_only(&root) => {
                    return Err(ArchiveError::ReadOnly {
                        path: root,
                        action: "send".into(),
                    }
                    .into())
                }
                Ok(()) => identity::create(&root)?,
            }
        }
        let mut a = Self::open(config)?;
        a.require_writable("send")?;
        identity::adopt(config, &mut a, accept)?;
        sweep_dead_runs(&a);
        Ok(a)
    }

    /// Fail with [`ArchiveError::ReadOnly`] when the archive is read-only.
    pub fn require_writable(&self, action: &str) -> Result<()> {
        if self.read_only {
            return Err(ArchiveError::ReadOnly {
                path: self.root.clone(),
                action: action.to_string(),
            }
            .into());
        }
        Ok(())
    }

    pub fn volume(&self, name: &str) -> VolumeArchive {
        VolumeArchive::new(&self.root.join(name))
    }

    /// Lock a volume's folder (created if needed for exclusive use). On a read-only
    /// archive a shared lock is not taken (nobody can write the archive), and an
    /// exclusive one is refused.
    pub fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<LockGuard>> {
        let dir = self.root.join(name);
        let read_only = |action: String| {
            Error::from(ArchiveError::ReadOnly {
                path: self.root.clone(),
                action,
            })
        };
        let is_erofs = |e: &Error| matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS));
        if mode == Mode::Exclusive && self.read_only {
            return Err(read_only(format!("changing volume {name}")));
        }
        if !dir.is_dir() {
            if mode == Mode::Shared {
                return Ok(None);
            }
            let made = std::fs::create_dir_all(&dir)
                .at(&dir)
                .and_then(|()| durable::sync_parent(&dir).at(&dir));
            match made {
                Err(e) if is_erofs(&e) => return Err(read_only(format!("changing volume {name}"))),
                r => r?,
            }
        }
        let what = format!("volume {name} in the archive");
        match lock::lock(&dir.join(layout::LOCK_FILE), mode, LOCK_WAIT, &what) {
            Ok(g) => Ok(Some(g)),
            Err(e) if is_erofs(&e) && mode == Mode::Shared => {
                tracing::debug!("{e}: reading volume {name} without a lock");
                Ok(None)
            }
            Err(e) if is_erofs(&e) => Err(read_only(format!("changing volume {name}"))),
            Err(e) => Err(e),
        }
    }
}

/// Open volume `name` for reading: finish what interrupted runs left on it
/// ([`settle`]), then hold its shared lock while the guard lives.
pub fn lock_for_reading(
    config: &Config,
    archive: &Archive,
    name: &str,
) -> Result<Option<LockGuard>> {
    settle(config, archive, name)?;
    archive.lock_volume(name, Mode::Shared)
}

/// Remove the staging folders (`.tmp-*`) interrupted runs left in a volume (never
/// part of a view). Needs the volume's exclusive lock.
pub fn remove_staging(vol: &VolumeArchive) -> Result<()> {
    let rd = match std::fs::read_dir(&vol.dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&vol.dir),
    };
    for ent in rd {
        let ent = ent.at(&vol.dir)?;
        if ent.file_name().to_string_lossy().starts_with(".tmp-") {
            let p = ent.path();
            tracing::warn!("removing {} left by an interrupted run", p.display());
            std::fs::remove_dir_all(&p).at(&p)?;
        }
    }
    tar::tidy(vol)
}

/// Whether `name`, an entry of a volume folder, is what an unfinished run leaves
/// behind: a staging folder (`.tmp-*`: a send's session, an untar, a repair), the
/// trash or the new manifest of a prune.
fn is_leftover(name: &str) -> bool {
    name.starts_with(".tmp-")
        || name.starts_with(".trash-")
        || (name.starts_with(".prune-") && name.ends_with(".manifest"))
}

/// Remove, in every volume of the archive, what runs that died left behind (see
/// [`is_leftover`]): on media short of space or inodes a dead run's staging folder
/// would otherwise make every other volume's writes fail. A volume whose lock is held
/// belongs to a live run and is left alone; an interrupted prune (its journal) is
/// left to [`settle`]. Called at the start of every command that writes to the
/// archive; never fails the command (what cannot be removed is said, and tried again
/// next time).
pub fn sweep_dead_runs(archive: &Archive) {
    if archive.read_only {
        return;
    }
    let Ok(rd) = std::fs::read_dir(&archive.root) else {
        return;
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !ent.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let vol = archive.volume(&name);
        let Ok(entries) = std::fs::read_dir(&vol.dir) else {
            continue;
        };
        let any = entries
            .flatten()
            .any(|e| is_leftover(&e.file_name().to_string_lossy()));
        if !any {
            continue;
        }
        let lock_path = vol.dir.join(layout::LOCK_FILE);
        let Ok(_lock) = lock::lock(&lock_path, Mode::Exclusive, Duration::ZERO, &name) else {
            tracing::debug!("volume {name} is in use: its staging folders are a live run's");
            continue;
        };
        let swept = remove_staging(&vol).and_then(|()| {
            if prune::interrupted(&vol) {
                Ok(())
            } else {
                prune::remove_trash(&vol)
            }
        });
        if let Err(e) = swept {
            tracing::warn!("volume {name}: removing what an interrupted run left: {e}");
        }
    }
}

/// Finish what interrupted runs left on a volume (a prune's journal, a send's pending
/// session) before a command reads it. Cheap when there is nothing to do: two stats.
pub fn settle(config: &Config, archive: &Archive, name: &str) -> Result<()> {
    let vol = archive.volume(name);
    let local = local::LocalCopies::for_dest(config, name);
    if !prune::interrupted(&vol) && !local.has_pending() {
        return Ok(());
    }
    if archive.read_only {
        // Nobody can write the archive: what is left to finish on it must wait for
        // writable media; what is left on this machine's side can be done now.
        if prune::interrupted(&vol) {
            return Err(Error::Msg(format!(
                "volume {name}: an interrupted prune in {} must be finished before the volume can be read, \
                 and the archive at {} is on a read-only filesystem; mount it read-write and run \
                 `sparsebak list {name}` to finish it",
                vol.dir.display(),
                archive.root.display()
            )));
        }
        let _meta = crate::send::lock_meta(config, name)?;
        return local.catch_up(&vol);
    }
    let _meta = crate::send::lock_meta(config, name)?;
    let _lock = archive.lock_volume(name, Mode::Exclusive)?;
    let local = crate::metadir::dest_dir(config, name)
        .is_dir()
        .then_some(&local);
    prune::recover(&vol, local)?;
    if let Some(l) = local {
        l.catch_up(&vol)?;
    }
    Ok(())
}

/// `<metadir>/<volume>`: every destination's state of the volume (see
/// [`crate::metadir`]).
pub fn meta_dir(config: &Config, name: &str) -> PathBuf {
    crate::metadir::volume_dir(config, name)
}

/// Create a folder readable only by its owner (metadata can reveal volume layout).
pub fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if p.exists() && !p.is_dir() {
        return Err(Error::Msg(format!(
            "{} exists and is not a folder; move it away",
            p.display()
        )));
    }
    if !p.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .at(p)?;
    }
    Ok(())
}
