//! Where an encrypted archive's passphrase comes from: `passfile`, `passcmd`, the
//! environment variable `SPARSEBAK_PASSPHRASE`, or a prompt.
//!
//! (A first cut: only the environment variable. The full order is in the README.)

use sparsebak_format::crypto::Passphrase;

use crate::config::Config;
use crate::error::{Error, Result};

/// The environment variable that may hold the passphrase.
pub const ENV: &str = "SPARSEBAK_PASSPHRASE";

/// Why the passphrase is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To unlock an existing archive or stream chain.
    Unlock,
    /// For a new archive or stream chain (a prompt asks twice).
    Create,
    /// The new passphrase of `key passwd`.
    NewPassphrase,
}

/// The passphrase for the chosen destination of `config`.
pub fn obtain(config: &Config, purpose: Purpose) -> Result<Passphrase> {
    let _ = (config, purpose);
    match std::env::var(ENV) {
        Ok(p) if !p.is_empty() => Ok(Passphrase::new(p)),
        _ => Err(Error::Msg(format!(
            "the archive is encrypted and no passphrase was given: set passfile or passcmd \
             in the config, or {ENV}"
        ))),
    }
}
