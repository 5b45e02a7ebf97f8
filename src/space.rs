//! Saying why a destination filled up: how much the session had written and would
//! have needed against what was free, and whether bytes or inodes ran out.

use std::path::{Path, PathBuf};

use sparsebak_format::archive_fs::{ArchiveFs, LocalFs};

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

/// [`room`] of a folder reached through `fs`: on this machine, or as the far side
/// measures it (`None` when it cannot say).
pub fn room_in(fs: &dyn ArchiveFs, path: &Path) -> Option<Room> {
    if fs.is_local() {
        room(path)
    } else {
        // A far folder: measured over there, when the far side can say.
        fs.room(path).map(|[bytes_free, inodes_free, inodes]| Room {
            bytes_free,
            inodes_free,
            inodes,
        })
    }
}

/// The path of the first `io::Error` in `e`'s chain that says the filesystem is full
/// (ENOSPC, or EDQUOT: a quota), when the chain names one.
pub fn full_at(e: &Error) -> Option<Option<PathBuf>> {
    full_in_chain(e)
}

/// [`full_at`] for any error chain (an `anyhow` chain at the edges included).
pub fn full_in_chain(e: &(dyn std::error::Error + 'static)) -> Option<Option<PathBuf>> {
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
            // A far side's failure may come back as its kind alone (no errno).
            if matches!(io.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
                || matches!(
                    io.kind(),
                    std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
                )
            {
                return Some(path);
            }
        }
        cur = c.source();
    }
    None
}

/// Whether the filesystem of `at` has not a single inode left for this writer (a
/// filesystem with a fixed count whose `f_favail` is 0), measured now.
fn out_of_inodes(now: Option<Room>) -> bool {
    now.is_some_and(|r| r.inodes > 0 && r.inodes_free == 0)
}

/// "the filesystem of DIR has no free inodes left (N files in all, X free), though
/// bytes remain", when the inodes of the filesystem holding `at` ran out.
fn inodes_sentence(dir: &Path, now: Option<Room>) -> String {
    format!(
        "the filesystem of {} has no free inodes left ({} files in all{}), though bytes remain",
        dir.display(),
        now.map_or(0, |r| r.inodes),
        now.map_or(String::new(), |r| format!(", {} free", human(r.bytes_free))),
    )
}

/// Why the filesystem of `dir` is full, when the error chain `e` says it is: whether
/// inodes or bytes ran out (measured now, so before anything is cleaned up), with
/// `inode_hint` (what to do) after the first. `None` for other errors. Every writer
/// explains a full filesystem through here or [`explain`].
pub fn why_full(
    e: &(dyn std::error::Error + 'static),
    dir: &Path,
    inode_hint: &str,
) -> Option<String> {
    why_full_in(&LocalFs, e, dir, inode_hint)
}

/// [`why_full`] of a folder reached through `fs` (the room is measured only when it is
/// on this machine).
fn why_full_in(
    fs: &dyn ArchiveFs,
    e: &(dyn std::error::Error + 'static),
    dir: &Path,
    inode_hint: &str,
) -> Option<String> {
    let at = full_in_chain(e)?;
    let now = room_in(fs, at.as_deref().unwrap_or(dir));
    // A far folder is named with its host.
    let shown = PathBuf::from(fs.display(dir));
    let dir = shown.as_path();
    Some(if out_of_inodes(now) {
        format!("{}: {inode_hint}", inodes_sentence(dir, now))
    } else {
        format!(
            "the filesystem of {} is full ({} free)",
            dir.display(),
            now.map_or_else(|| "an unknown amount".to_string(), |r| human(r.bytes_free))
        )
    })
}

/// When `e` says the filesystem of `dir` is full, the same error saying whether bytes
/// or inodes ran out, then `outcome` (what became of the work). For writers that are
/// not sessions (untar, prune, repair, copies of sessions); see [`explain`] for them.
pub fn explain_write(e: Error, dir: &Path, inode_hint: &str, outcome: &str) -> Error {
    explain_write_in(&LocalFs, e, dir, inode_hint, outcome)
}

/// [`explain_write`] of a folder reached through `fs`.
pub fn explain_write_in(
    fs: &dyn ArchiveFs,
    e: Error,
    dir: &Path,
    inode_hint: &str,
    outcome: &str,
) -> Error {
    if matches!(e, Error::Full { .. }) {
        return e;
    }
    match why_full_in(fs, &e, dir, inode_hint) {
        Some(why) => Error::Full {
            what: format!("{why}; {outcome}"),
            source: Box::new(e),
        },
        None => e,
    }
}

/// What to do when a send ran out of inodes.
pub const SESSION_INODE_HINT: &str = "free some files, or use a larger chunksize or a tar \
     session (`send --tarfile`), which need fewer";

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
    explain_in(&LocalFs, e, dir, before, done)
}

/// [`explain`] of a folder reached through `fs`.
pub fn explain_in(
    fs: &dyn ArchiveFs,
    e: Error,
    dir: &Path,
    before: Option<Room>,
    done: Progress,
) -> Error {
    if matches!(e, Error::Full { .. }) {
        return e;
    }
    let Some(at) = full_at(&e) else {
        return e;
    };
    let fs_of = at.as_deref().unwrap_or(dir);
    let now = room_in(fs, fs_of);
    // A far folder is named with its host.
    let shown = PathBuf::from(fs.display(dir));
    let dir = shown.as_path();
    let what = if out_of_inodes(now) {
        format!(
            "{}: this session had created {} chunk files; {SESSION_INODE_HINT}",
            inodes_sentence(dir, now),
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

/// [`explain_write`] at the edges, for an `anyhow` error (a command's own steps, such
/// as creating its output file). An error already explained comes back unchanged.
pub fn explain_any(e: anyhow::Error, dir: &Path, inode_hint: &str, outcome: &str) -> anyhow::Error {
    if e.chain()
        .any(|c| matches!(c.downcast_ref::<Error>(), Some(Error::Full { .. })))
    {
        return e;
    }
    match why_full(e.as_ref(), dir, inode_hint) {
        Some(why) => Error::Full {
            what: format!("{why}; {outcome}"),
            source: Box::new(Error::Msg(sparsebak_format::error::one_line(e.as_ref()))),
        }
        .into(),
        None => e,
    }
}
