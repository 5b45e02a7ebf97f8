//! The key file of a local archive (`sparsebak.key` at its root): read bounded, and
//! replaced atomically and durably. It holds the master key wrapped under the
//! passphrase, nothing secret in the clear.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use sparsebak_format::crypto::keyfile::MAX_KEY_FILE;
use sparsebak_format::crypto::{KeyFile, KEY_FILE};

use super::LocalDestination;
use crate::durable;
use crate::error::{Error, IoAt, Result};

/// The key file's bytes, `None` when the archive at `root` has none.
pub fn read(root: &Path) -> Result<Option<Vec<u8>>> {
    let path = root.join(KEY_FILE);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&path),
    };
    let mut bytes = Vec::new();
    f.take(MAX_KEY_FILE as u64 + 1)
        .read_to_end(&mut bytes)
        .at(&path)?;
    if bytes.len() > MAX_KEY_FILE {
        return Err(Error::Msg(format!(
            "{}: longer than {MAX_KEY_FILE} bytes, not a key file",
            path.display()
        )));
    }
    Ok(Some(bytes))
}

/// Replace the key file of `dest` with `bytes`, which must be a key file: written
/// under a temporary name in the archive's folder, fsynced, renamed over the old one,
/// the folder fsynced. Nothing else of the archive is touched.
pub fn write(dest: &LocalDestination, bytes: &[u8]) -> Result<()> {
    let root = dest.root();
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
    if !root.is_dir() {
        return Err(Error::Msg(format!(
            "{}: no such folder; no key file was written",
            root.display()
        )));
    }
    let suffix: [u8; 6] = sparsebak_format::crypto::random_bytes()
        .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let tmp = root.join(format!(".{KEY_FILE}.tmp-{}", hex::encode(suffix)));
    let put = || -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.sync_all().at(&tmp)?;
        std::fs::rename(&tmp, &path).at(&path)
    };
    if let Err(e) = put() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    durable::sync_dir(root).at(root)?;
    tracing::info!("{} written", path.display());
    Ok(())
}
