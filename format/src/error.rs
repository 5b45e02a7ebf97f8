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
    #[error("chunk x{addr:016x} of session {session}: {reason}")]
    Chunk {
        session: String,
        addr: u64,
        reason: String,
    },
    #[error("volume {volume}: no session {session}")]
    NoSession { volume: String, session: String },
    #[error("volume {volume} has no sessions")]
    NoSessions { volume: String },
    /// A file larger than what it holds can ever be, refused before it is read.
    #[error("{path}: {what} of {len} bytes is impossible (at most {max})")]
    TooLarge {
        path: PathBuf,
        what: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{path}: the {what} is not UTF-8 text")]
    NotText { path: PathBuf, what: &'static str },
    /// A number read from a file is impossible: larger than the format allows, past
    /// the end of a file or of the volume, or not a multiple of the chunk size.
    #[error("{path}: {field} {value} is impossible: {why}")]
    Bounds {
        path: PathBuf,
        field: String,
        value: u64,
        why: String,
    },
    #[error("{path}: bad tar index: {fault}")]
    TarIndex { path: PathBuf, fault: IndexFault },
    #[error("{0}")]
    Other(String),
}

/// What is wrong with a tar session's member index (`S_<id>.tar.index`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexFault {
    #[error("{len} bytes, shorter than its 64-byte header")]
    TooShort { len: u64 },
    #[error("bad magic")]
    Magic,
    #[error("reserved header bytes are not zero")]
    Reserved,
    #[error("{count} records cannot fill {len} bytes")]
    Count { count: u64, len: u64 },
    #[error("{member}: {len} bytes at offset {off} run past the end of the tar ({tar_len} bytes)")]
    PastEnd {
        member: String,
        off: u64,
        len: u64,
        tar_len: u64,
    },
    #[error("{member}: offset {off} is not on a 512-byte tar block")]
    Misaligned { member: String, off: u64 },
    #[error("{member}: {len} bytes, more than it can be ({max})")]
    TooLarge { member: String, len: u64, max: u64 },
    #[error("{member}: address not after the previous record's")]
    Order { member: String },
    #[error("{member}: overlaps the member before it")]
    Overlap { member: String },
    /// A sealed index (encrypted archive) that fails authentication or is cut.
    #[error("{0}")]
    Sealed(String),
    #[error("{count} records cannot fit in a tar of {tar_len} bytes")]
    TooMany { count: u64, tar_len: u64 },
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

/// An error and its causes on one line, each cause said once.
///
/// The error types of sparsebak say their cause in their own message (`{path}: {source}`)
/// and also expose it as `source()`, so that callers can still find, say, the
/// `io::Error` of a full disk in the chain. Joining the chain naively would repeat the
/// cause (`...: No space left on device (os error 28): No space left on device (os error
/// 28)`); here a cause whose text the line already holds is left out. A context that
/// names what its cause names first (`... into standard output` and `standard output:
/// Broken pipe`) says it once: the cause's leading name is dropped.
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut line = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !line.contains(&text) {
            line.push_str(": ");
            line.push_str(strip_said(&line, &text));
        }
        cause = c.source();
    }
    line
}

/// `text` without its leading `NAME: ` parts that `line` already ends with (as whole
/// words): `strip_said("into /a/b", "/a/b: gone")` is `gone`.
fn strip_said<'a>(line: &str, text: &'a str) -> &'a str {
    let line = line.strip_suffix(": ").unwrap_or(line);
    let mut best = text;
    for (i, _) in text.match_indices(": ") {
        let name = &text[..i];
        let whole = line
            .strip_suffix(name)
            .is_some_and(|before| before.is_empty() || before.ends_with(' '));
        if name.len() >= 3 && whole {
            best = &text[i + 2..];
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_says_each_cause_once() {
        let io = std::io::Error::from_raw_os_error(28); // ENOSPC on Linux
        let e = FormatError::Io {
            path: "/a/b".into(),
            source: io,
        };
        let text = one_line(&e);
        assert_eq!(text, "/a/b: No space left on device (os error 28)");
        // A cause not yet in the message is still said.
        #[derive(Debug, thiserror::Error)]
        #[error("sending v")]
        struct Outer(#[source] FormatError);
        let o = Outer(e);
        assert_eq!(
            one_line(&o),
            "sending v: /a/b: No space left on device (os error 28)"
        );
        // A name the context ends with is not said again by its cause.
        #[derive(Debug, thiserror::Error)]
        #[error("receive v into /a/b")]
        struct Into(#[source] FormatError);
        let e = FormatError::Io {
            path: "/a/b".into(),
            source: std::io::Error::from_raw_os_error(32),
        };
        assert_eq!(
            one_line(&Into(e)),
            "receive v into /a/b: Broken pipe (os error 32)"
        );
        // Only whole names: `into x/a/b` does not end with the name `/a/b`.
        assert_eq!(strip_said("into x/a/b", "/a/b: gone"), "/a/b: gone");
        assert_eq!(strip_said("into /a/b", "/a/b: gone"), "gone");
    }
}
