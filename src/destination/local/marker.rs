//! The root marker of a local archive: creating an archive, and giving one made
//! before identities an identity.
//!
//! Creating an archive is safe against concurrent runs: the marker is written under a
//! private temporary name and published with a rename that never replaces
//! (`RENAME_NOREPLACE`, or a hard link where the filesystem lacks it); the run that
//! loses the race reads the winner's marker.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use sparsebak_format::layout;
use sparsebak_format::marker::{read_marker, ArchiveMarker};

use super::LOCK_WAIT;
use crate::durable;
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
pub fn add_id(root: &Path) -> Result<String> {
    let marker = root.join(layout::ARCHIVE_MARKER);
    let _lock = lock::lock(&marker, Mode::Exclusive, LOCK_WAIT, "the archive's marker")?;
    let mut m = read_marker(root)?.ok_or_else(|| missing_marker(root))?;
    if let Some(id) = m.id {
        return Ok(id);
    }
    let id = new_id()?;
    m.id = Some(id.clone());
    let tmp = write_temp(root, &m)?;
    let res = std::fs::rename(&tmp, &marker).at(&marker);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res?;
    durable::sync_dir(root).at(root)?;
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
fn write_temp(root: &Path, m: &ArchiveMarker) -> Result<PathBuf> {
    write_temp_bytes(root, layout::ARCHIVE_MARKER, m.to_text().as_bytes())
}

/// Write `bytes`, to become the root's file `name`, under a temporary name private
/// to this run, durably.
fn write_temp_bytes(root: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let tmp = root.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        &new_id()?[..8]
    ));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).at(&tmp);
    }
    Ok(tmp)
}

/// Create an empty archive at `root` (the folder may exist, empty but for hidden
/// entries). If another run creates it at the same moment, theirs is kept.
pub fn create(root: &Path) -> Result<()> {
    create_with(root, None, None)
}

/// Create an empty encrypted archive with identity `id` at `root`: the key file
/// `key_file` first, then the marker (see [`create`]). A run that loses the race to
/// create it keeps the other run's key file and marker.
pub fn create_sealed(root: &Path, id: &str, key_file: &[u8]) -> Result<()> {
    create_with(root, Some(id), Some(key_file))
}

fn create_with(root: &Path, sealed_id: Option<&str>, key_file: Option<&[u8]>) -> Result<()> {
    std::fs::create_dir_all(root).at(root)?;
    let marker = root.join(layout::ARCHIVE_MARKER);
    let foreign = std::fs::read_dir(root)
        .at(root)?
        .any(|e| e.map_or(true, |e| !e.file_name().as_bytes().starts_with(b".")));
    // A run creating the same archive writes the marker before anything else: a
    // non-empty folder with a marker is that run's archive, not a foreign folder.
    if foreign && !marker.exists() {
        return Err(Error::Msg(format!(
            "{} is not empty and is not a sparsebak archive; refusing to write into it",
            root.display()
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
        let tmp = write_temp_bytes(root, sparsebak_format::crypto::KEY_FILE, kf)?;
        let published = publish(&tmp, &key);
        let _ = std::fs::remove_file(&tmp);
        if !published.at(&key)? {
            tracing::debug!("archive {}: another run created it first", root.display());
            return Ok(());
        }
        durable::sync_dir(root).at(root)?;
    }
    let tmp = write_temp(root, &m)?;
    let published = publish(&tmp, &marker);
    let _ = std::fs::remove_file(&tmp);
    if published.at(&marker)? {
        durable::sync_dir(root).at(root)?;
        if let Some(parent) = root.parent() {
            durable::sync_dir(parent).at(parent)?;
        }
        tracing::info!("created archive {} (id {id})", root.display());
    } else {
        tracing::debug!("archive {}: another run created it first", root.display());
    }
    Ok(())
}

/// Give `tmp` the name `dest` unless `dest` exists. Returns whether it did.
fn publish(tmp: &Path, dest: &Path) -> std::io::Result<bool> {
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::other("NUL in path"))
    };
    let (from, to) = (c(tmp)?, c(dest)?);
    // SAFETY: two valid NUL-terminated paths; the syscall reads them only.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EEXIST) => Ok(false),
        // Filesystems without RENAME_NOREPLACE (NFS, some FUSE): a hard link never
        // replaces either.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP) => match std::fs::hard_link(tmp, dest)
        {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        },
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                std::thread::spawn(move || create(&root).map(|()| read_marker(&root)))
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
        let id = add_id(d.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&marker).unwrap(),
            format!("sparsebak-archive\nformat=1\nid={id}\n")
        );
        assert_eq!(add_id(d.path()).unwrap(), id);
    }
}
