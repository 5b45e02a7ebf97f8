//! Encryption of archives and streams (format 2): keys, the envelope of every sealed
//! object, keyed chunk identities and the names that hide what they stand for.
//!
//! Nothing here is cryptography of its own: AES-256-GCM (`ring`) in the STREAM
//! construction under a key per object, XChaCha20-Poly1305 for the key file
//! (`chacha20poly1305`), argon2id (`argon2`), HKDF and HMAC over SHA-256 (`hkdf`,
//! `hmac`, `sha2`) and AES-SIV (`aes-siv`) do the work; this
//! module fixes how they are put together, byte by byte as `docs/FORMAT.md` says
//! ("Encrypted archives").
//!
//! - [`keyfile`]: the passphrase, the master key and the key file that wraps it.
//! - [`keys`]: [`ArchiveKeys`], the keys derived from the master key, and what they do
//!   (identities, names).
//! - [`envelope`]: [`Place`], sealing and opening objects bound to their place.
//! - [`paper`]: the key file as short checksummed lines to type back.

pub mod envelope;
pub mod keyfile;
pub mod keys;
pub mod paper;

pub use envelope::{OpenReader, Place, SealWriter, SegmentOpener};
pub use keyfile::{KdfParams, KeyFile, MasterKey, Passphrase};
pub use keys::ArchiveKeys;

/// The AEAD of format 2, as the archive marker and stream headers name it.
pub const AEAD_NAME: &str = "aes-256-gcm";

/// The key file at the root of an encrypted archive.
pub const KEY_FILE: &str = "sparsebak.key";

/// What went wrong opening, sealing or unwrapping. None of these ever holds key
/// material or a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The passphrase does not unwrap the key file's master key.
    #[error("wrong passphrase (it does not unlock the archive's key)")]
    WrongPassphrase,
    /// An object failed authentication: altered, truncated, or not the object that
    /// belongs at this place.
    #[error("{what} failed authentication: altered, truncated, or not the one that belongs here")]
    Auth { what: String },
    /// A key file (or its paper form) that cannot be read.
    #[error("key file: {0}")]
    KeyFile(String),
    /// A name that is not one this archive's key made.
    #[error("{0}")]
    Name(String),
    /// The system's random number generator failed.
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// `n` random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut b = [0u8; N];
    chacha20poly1305::aead::OsRng
        .try_fill_bytes(&mut b)
        .map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(b)
}

/// A random UUID (version 4), lower-case `8-4-4-4-12` hex: identities of archives,
/// volumes and stream chains.
pub fn random_uuid() -> Result<String, CryptoError> {
    let mut b: [u8; 16] = random_bytes()?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}
