//! The root marker of a local archive: creating an archive, and giving one made
//! before identities an identity.
//!
//! Creating an archive is safe against concurrent runs: the marker is written under a
//! private temporary name and published with a rename that never replaces
//! (`RENAME_NOREPLACE`, or a hard link where the filesystem lacks it); the run that
//! loses the race reads the winner's marker.

use std::path::{Path, PathBuf};

use sparsebak_format::archive_fs::ArchiveFs;
use sparsebak_format::layout;
use sparsebak_format::marker::{read_marker_in, ArchiveMarker};

use super::LOCK_WAIT;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, Mode};

/// A new random archive identity (a version 4 UUID).
pub fn new_id() -> Result<String> {
    let mut b = [0u8; 16];
    let mut got = 0;
    while got < b.len() {
        // SAFETY: writes at most `b.len() - got` bytes into the rest of `b`.
        let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Msg(format!("getrandom: {e}")));
        }
        got += n as usize;
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Give the archive at `root`, whose marker has no identity, one. Runs that do this
/// at the same time agree on one: the marker is locked, read again, and replaced
/// only if it still has none.
pub fn add_id(fs: &dyn ArchiveFs, root: &Path) -> Result<String> {
    let marker = root.join(layout::ARCHIVE_MARKER);
    let _lock = lock::lock_in(
        fs,
        &marker,
        Mode::Exclusive,
        LOCK_WAIT,
        "the archive's marker",
    )?;
    let mut m = read_marker_in(fs, root)?.ok_or_else(|| missing_marker(root))?;
    if let Some(id) = m.id {
        return Ok(id);
    }
    let id = new_id()?;
    m.id = Some(id.clone());
    let tmp = write_temp(fs, root, &m)?;
    let res = fs.rename(&tmp, &marker).at(&marker);
    if res.is_err() {
        let _ = fs.remove_file(&tmp);
    }
    res?;
    fs.sync_dir(root).at(root)?;
    tracing::info!("archive {} has no identity; it is now {id}", root.display());
    Ok(id)
}

fn missing_marker(root: &Path) -> Error {
    sparsebak_format::FormatError::NotArchive {
        path: root.to_path_buf(),
        reason: format!("no {}", layout::ARCHIVE_MARKER),
    }
    .into()
}

/// Write marker `m` under a temporary name private to this run, durably.
fn write_temp(fs: &dyn ArchiveFs, root: &Path, m: &ArchiveMarker) -> Result<PathBuf> {
    write_temp_bytes(fs, root, layout::ARCHIVE_MARKER, m.to_text().as_bytes())
}

/// Write `bytes`, to become the root's file `name`, under a temporary name private
/// to this run, durably.
fn write_temp_bytes(fs: &dyn ArchiveFs, root: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = root.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        &new_id()?[..8]
    ));
    if let Err(e) = fs.write_new(&tmp, bytes) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = fs.remove_file(&tmp);
        }
        return Err(e).at(&tmp);
    }
    Ok(tmp)
}

/// Create an empty archive at `root` (the folder may exist, empty but for hidden
/// entries). If another run creates it at the same moment, theirs is kept.
pub fn create(fs: &dyn ArchiveFs, root: &Path) -> Result<()> {
    create_with(fs, root, None, None)
}

/// Create an empty encrypted archive with identity `id` at `root`: the key file
/// `key_file` first, then the marker (see [`create`]). A run that loses the race to
/// create it keeps the other run's key file and marker.
pub fn create_sealed(fs: &dyn ArchiveFs, root: &Path, id: &str, key_file: &[u8]) -> Result<()> {
    create_with(fs, root, Some(id), Some(key_file))
}

fn create_with(
    fs: &dyn ArchiveFs,
    root: &Path,
    sealed_id: Option<&str>,
    key_file: Option<&[u8]>,
) -> Result<()> {
    fs.create_dir_all(root).at(root)?;
    let marker = root.join(layout::ARCHIVE_MARKER);
    let foreign = fs
        .read_dir(root)
        .at(root)?
        .iter()
        .any(|e| !e.name.starts_with('.'));
    // A run creating the same archive writes the marker before anything else: a
    // non-empty folder with a marker is that run's archive, not a foreign folder.
    if foreign && !fs.exists(&marker) {
        return Err(Error::Msg(format!(
            "{} is not empty and is not a sparsebak archive; refusing to write into it",
            fs.display(root)
        )));
    }
    let (id, m) = match sealed_id {
        None => {
            let id = new_id()?;
            let m = ArchiveMarker::new(&id);
            (id, m)
        }
        Some(id) => (id.to_string(), ArchiveMarker::sealed(id)),
    };
    if let Some(kf) = key_file {
        let key = root.join(sparsebak_format::crypto::KEY_FILE);
        let tmp = write_temp_bytes(fs, root, sparsebak_format::crypto::KEY_FILE, kf)?;
        let published = publish(fs, &tmp, &key);
        let _ = fs.remove_file(&tmp);
        if !published.at(&key)? {
            tracing::debug!("archive {}: another run created it first", root.display());
            return Ok(());
        }
        fs.sync_dir(root).at(root)?;
    }
    let tmp = write_temp(fs, root, &m)?;
    let published = publish(fs, &tmp, &marker);
    let _ = fs.remove_file(&tmp);
    if published.at(&marker)? {
        fs.sync_dir(root).at(root)?;
        // The folder holding the archive's: only here (a remote folder's far side
        // serves nothing above it).
        if let Some(parent) = root.parent().filter(|_| fs.is_local()) {
            crate::durable::sync_dir(parent).at(parent)?;
        }
        tracing::info!("created archive {} (id {id})", root.display());
    } else {
        tracing::debug!("archive {}: another run created it first", root.display());
    }
    Ok(())
}

/// Give `tmp` the name `dest` unless `dest` exists (a rename that never replaces:
/// [`ArchiveFs::rename_noreplace`]). Returns whether it did.
fn publish(fs: &dyn ArchiveFs, tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    match fs.rename_noreplace(tmp, dest) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsebak_format::archive_fs::LocalFs;

    #[test]
    fn ids_are_random_v4_uuids() {
        let a = new_id().unwrap();
        let b = new_id().unwrap();
        assert_ne!(a, b);
        assert!(sparsebak_format::marker::is_archive_id(&a), "{a}");
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }

    #[test]
    fn concurrent_creators_agree_on_one_marker() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/b/archive");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let root = root.clone();
                std::thread::spawn(move || {
                    create(&LocalFs, &root).map(|()| read_marker_in(&LocalFs, &root))
                })
            })
            .collect();
        let ids: Vec<String> = threads
            .into_iter()
            .map(|t| t.join().unwrap().unwrap().unwrap().unwrap().id.unwrap())
            .collect();
        assert!(ids.iter().all(|i| *i == ids[0]), "{ids:?}");
        // No temporary marker is left behind.
        let names: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("sparsebak.archive")]);
    }

    #[test]
    fn an_old_marker_gets_one_id() {
        let d = tempfile::tempdir().unwrap();
        let marker = d.path().join(layout::ARCHIVE_MARKER);
        std::fs::write(&marker, "sparsebak-archive\nformat=1\n").unwrap();
        let id = add_id(&LocalFs, d.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!("sparsebak-archive\nformat=1\nid={id}\n")
        );
        assert_eq!(add_id(&LocalFs, d.path()).unwrap(), id);
    }
}
