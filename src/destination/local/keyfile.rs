//! The key file of a local archive (`sparsebak.key` at its root): read bounded, and
//! replaced atomically and durably. It holds the master key wrapped under the
//! passphrase, nothing secret in the clear.

use std::path::Path;

use sparsebak_format::archive_fs::ArchiveFs;
use sparsebak_format::crypto::keyfile::MAX_KEY_FILE;
use sparsebak_format::crypto::{KeyFile, KEY_FILE};

use super::LocalDestination;
use crate::error::{Error, IoAt, Result};

/// The key file's bytes, `None` when the archive at `root` has none.
pub fn read(fs: &dyn ArchiveFs, root: &Path) -> Result<Option<Vec<u8>>> {
    let path = root.join(KEY_FILE);
    match fs.read(&path, MAX_KEY_FILE as u64) {
        Ok(bytes) if bytes.len() <= MAX_KEY_FILE => Ok(Some(bytes)),
        Ok(_) => Err(too_long(&path)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(too_long(&path)),
        Err(e) => Err(e).at(&path),
    }
}

fn too_long(path: &Path) -> Error {
    Error::Msg(format!(
        "{}: longer than {MAX_KEY_FILE} bytes, not a key file",
        path.display()
    ))
}

/// Replace the key file of `dest` with `bytes`, which must be a key file: written
/// under a temporary name in the archive's folder, fsynced, renamed over the old one,
/// the folder fsynced. Nothing else of the archive is touched.
pub fn write(dest: &LocalDestination, bytes: &[u8]) -> Result<()> {
    let root = dest.root();
    let fs = dest.fs().as_ref();
    let path = root.join(KEY_FILE);
    if dest.read_only {
        return Err(dest.refuse_read_only("changing its key file".into()));
    }
    KeyFile::parse(bytes).map_err(|e| {
        Error::Msg(format!(
            "{}: refusing to install what is not a key file ({e})",
            path.display()
        ))
    })?;
    let no_folder = || {
        Error::Msg(format!(
            "{}: no such folder; no key file was written",
            root.display()
        ))
    };
    // Listable: a folder (or, on this machine, a link to one).
    if fs.read_dir(root).is_err() {
        return Err(no_folder());
    }
    let suffix: [u8; 6] = sparsebak_format::crypto::random_bytes()
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let tmp = root.join(format!(".{KEY_FILE}.tmp-{}", hex::encode(suffix)));
    let put = || -> Result<()> {
        // Mode 0600, written and fsynced (and its folder), then renamed into place.
        fs.write_new(&tmp, bytes).at(&tmp)?;
        fs.rename(&tmp, &path).at(&path)
    };
    if let Err(e) = put() {
        let _ = fs.remove_file(&tmp);
        return Err(e);
    }
    fs.sync_dir(root).at(root)?;
    tracing::info!("{} written", path.display());
    Ok(())
}
