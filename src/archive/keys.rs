//! Unlocking an encrypted archive, and the keys of a new one.
//!
//! The archive's key file (`sparsebak.key` at its root) holds the master key wrapped
//! under the passphrase; the passphrase comes from where [`crate::passphrase`] says.

use sparsebak_format::crypto::{self, ArchiveKeys, KdfParams, KeyFile, MasterKey};
use sparsebak_format::marker::ArchiveMarker;

use crate::config::Config;
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::passphrase::{self, Purpose};

/// The keys of the encrypted archive `dest` (marker `marker`, at `root` for
/// messages): its key file unwrapped with the passphrase.
pub fn unlock(
    config: &Config,
    dest: &dyn Destination,
    marker: &ArchiveMarker,
    root: &std::path::Path,
) -> Result<ArchiveKeys> {
    let id = marker.id.as_deref().unwrap_or_default();
    let bytes = dest.key_file()?.ok_or_else(|| {
        Error::Msg(format!(
            "the archive at {} is encrypted but its key file {} is missing: put it back \
             with `sparsebak key import` (from `sparsebak key export` or its paper form)",
            root.display(),
            crypto::KEY_FILE
        ))
    })?;
    let kf = KeyFile::parse(&bytes)
        .map_err(|e| Error::Msg(format!("{}: {e}", root.join(crypto::KEY_FILE).display())))?;
    if kf.archive != id {
        return Err(Error::Msg(format!(
            "{}: the key file is archive {}'s, but this archive is {id}",
            root.join(crypto::KEY_FILE).display(),
            kf.archive
        )));
    }
    let pass = passphrase::obtain(config, Purpose::Unlock)?;
    // The key file is this archive's (checked above): its keys are derived for `id`.
    kf.unlock(&pass).map_err(|e| match e {
        crypto::CryptoError::WrongPassphrase => Error::Msg(format!(
            "wrong passphrase for the encrypted archive at {}; nothing was read or written",
            root.display()
        )),
        e => Error::Msg(format!("{}: {e}", root.join(crypto::KEY_FILE).display())),
    })
}

/// Create an empty encrypted archive at `dest`: a new identity and master key, wrapped
/// under the passphrase (asked twice at a prompt). Returns its keys.
pub fn create(config: &Config, dest: &dyn Destination) -> Result<ArchiveKeys> {
    let crypt = |e: crypto::CryptoError| Error::Msg(e.to_string());
    let pass = passphrase::obtain(config, Purpose::Create)?;
    let id = crypto::random_uuid().map_err(crypt)?;
    let master = MasterKey::generate().map_err(crypt)?;
    let kf = KeyFile::wrap(&id, &master, &pass, KdfParams::DEFAULT).map_err(crypt)?;
    dest.create_sealed(&id, kf.render().as_bytes())?;
    // Another run may have created the archive first: then its key is the one.
    match dest.marker()? {
        Some(m) if m.id.as_deref() == Some(id.as_str()) => Ok(ArchiveKeys::derive(&master, &id)),
        Some(m) => unlock(config, dest, &m, std::path::Path::new(&dest.label())),
        None => Err(Error::Msg(format!(
            "{}: the archive was created but its marker cannot be read",
            dest.label()
        ))),
    }
}
