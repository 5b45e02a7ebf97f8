//! Where an encrypted archive's passphrase comes from (see
//! [`sparsebak_format::passphrase`]): the config's `passfile` and `passcmd` for the
//! chosen destination, then the environment and the terminal.

pub use sparsebak_format::passphrase::*;

use sparsebak_format::crypto::Passphrase;

use crate::config::Config;
use crate::error::Result;

/// The sources `config` gives for its chosen destination.
pub fn sources_of(config: &Config) -> Sources {
    Sources {
        passfile: config.passfile.clone(),
        passcmd: config.passcmd.clone(),
        what: format!("the archive at {}", config.dest_location().display()),
        how: String::new(),
    }
}

/// The passphrase for the chosen destination of `config`. For
/// [`Purpose::NewPassphrase`] see [`obtain_new`] (the config's sources are never
/// used for a new passphrase).
pub fn obtain(config: &Config, purpose: Purpose) -> Result<Passphrase> {
    Ok(obtain_from(&sources_of(config), purpose)?)
}
