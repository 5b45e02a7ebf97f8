use std::path::PathBuf;

/// Errors met while reading or checking the archive format.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: bad manifest line: {reason}")]
    ManifestLine {
        path: PathBuf,
        line: u64,
        reason: String,
    },
    #[error("{path}: bad session info: {reason}")]
    Info { path: PathBuf, reason: String },
    #[error("{path}: not a sparsebak archive ({reason})")]
    NotArchive { path: PathBuf, reason: String },
    #[error("chunk {addr:#018x} of session {session}: {reason}")]
    Chunk {
        session: String,
        addr: u64,
        reason: String,
    },
    #[error("volume {volume}: no session {session}")]
    NoSession { volume: String, session: String },
    #[error("volume {volume} has no sessions")]
    NoSessions { volume: String },
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, FormatError>;

/// Attach a path to an I/O error.
pub trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| FormatError::Io {
            path: path.into(),
            source,
        })
    }
}
