//! Saying why a destination filled up: how much the session had written and would
//! have needed against what was free, and whether bytes or inodes ran out.

use std::path::{Path, PathBuf};

use crate::error::Error;

/// Free room on a filesystem.
#[derive(Debug, Clone, Copy)]
pub struct Room {
    /// Bytes an unprivileged writer may still use (`f_bavail`).
    pub bytes_free: u64,
    /// Inodes an unprivileged writer may still use (`f_favail`).
    pub inodes_free: u64,
    /// Inodes in all (`f_files`); 0 on filesystems without a fixed count.
    pub inodes: u64,
}

/// The room on the filesystem holding `path` (or its nearest existing ancestor).
// The statvfs field types differ between platforms (u32 on some 32-bit ones).
#[allow(clippy::unnecessary_cast)]
pub fn room(path: &Path) -> Option<Room> {
    let mut p = path;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(s) => {
                return Some(Room {
                    bytes_free: (s.blocks_available() as u64)
                        .saturating_mul(s.fragment_size() as u64),
                    inodes_free: s.files_available() as u64,
                    inodes: s.files() as u64,
                })
            }
            Err(_) => p = p.parent()?,
        }
    }
}

/// The path of the first `io::Error` in `e`'s chain that says the filesystem is full
/// (ENOSPC, or EDQUOT: a quota), when the chain names one.
pub fn full_at(e: &Error) -> Option<Option<PathBuf>> {
    let mut path = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(Error::Io { path: p, .. }) = c.downcast_ref::<Error>() {
            path = Some(p.clone());
        }
        if let Some(sparsebak_format::FormatError::Io { path: p, .. }) =
            c.downcast_ref::<sparsebak_format::FormatError>()
        {
            path = Some(p.clone());
        }
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return Some(path);
            }
        }
        cur = c.source();
    }
    None
}

/// What a session had done when its destination filled up.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    /// Bytes of chunk data stored.
    pub stored: u64,
    /// Chunks stored (each a file in a folder session).
    pub chunks: u64,
    /// Volume offset reached.
    pub pos: u64,
    /// Volume size.
    pub size: u64,
}

fn human(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

/// When `e` says the destination `dir` is full, the same error with what the session
/// needed against what was free (`before`: the room when it started), and whether
/// inodes rather than bytes ran out (measured now, before the partial session is
/// removed). Other errors come back unchanged.
pub fn explain(e: Error, dir: &Path, before: Option<Room>, done: Progress) -> Error {
    let Some(at) = full_at(&e) else {
        return e;
    };
    let fs_of = at.as_deref().unwrap_or(dir);
    let now = room(fs_of);
    let what = if now.is_some_and(|r| r.inodes > 0 && r.inodes_free == 0) {
        format!(
            "the filesystem of {} has no free inodes left ({} files in all{}), though bytes \
             remain: this session had created {} chunk files; free some files, or use a \
             larger chunksize or a tar session (`send --tarfile`), which need fewer",
            dir.display(),
            now.map_or(0, |r| r.inodes),
            now.map_or(String::new(), |r| format!(", {} free", human(r.bytes_free))),
            done.chunks
        )
    } else {
        let needed = if done.pos > 0 && done.pos < done.size {
            let est = (done.stored as u128 * done.size as u128 / done.pos as u128) as u64;
            format!(
                "more than {} (stored when it failed at {}% of the volume; about {} at \
                 that rate for the whole of it)",
                human(done.stored),
                done.pos as u128 * 100 / done.size.max(1) as u128,
                human(est)
            )
        } else {
            format!("more than {}", human(done.stored))
        };
        format!(
            "the filesystem of {} is full: this session needed {needed}, and {} were free \
             when it started",
            dir.display(),
            before.map_or_else(|| "an unknown amount".to_string(), |r| human(r.bytes_free))
        )
    };
    Error::Full {
        what: format!("{what}; nothing of the session was kept"),
        source: Box::new(e),
    }
}
