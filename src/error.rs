//! The library's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] sparsebak_format::FormatError),
    #[error(transparent)]
    Archive(#[from] crate::destination::ArchiveError),
    #[error(transparent)]
    Restore(#[from] sparsebak_format::restore::RestoreError),
    #[error(transparent)]
    DeltaMap(#[from] crate::delta_map::DeltaMapError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{0}")]
    Msg(String),
    /// No passphrase could be had (see `crate::passphrase`).
    #[error(transparent)]
    Passphrase(#[from] crate::passphrase::PassError),
    /// A remote destination could not be reached, refused, or failed over there.
    #[error(transparent)]
    Remote(#[from] crate::remote::RemoteError),
    /// A destination filled up: the error met, and what the session needed against
    /// what was free (see `crate::space`).
    #[error("{source}; {what}")]
    Full {
        what: String,
        #[source]
        source: Box<Error>,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

/// Attach a path to an I/O error.
pub trait IoAt<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoAt<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    }
}
