//! Advisory locks (`flock`) that keep two sparsebak runs off the same volume.
//!
//! A lock is held for as long as the returned guard lives; the kernel drops it when
//! the process dies, so a killed run never leaves a stale lock behind.

use std::any::Any;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sparsebak_format::archive_fs::{ArchiveFs, LockMode};

use crate::error::{Error, IoAt, Result};

/// A held lock.
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
    pub path: PathBuf,
}

/// Shared (readers) or exclusive (writers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    Exclusive,
}

/// Take the lock on `path` (created if missing), waiting at most `wait`. `what` names
/// the thing locked in the error.
pub fn lock(path: &Path, mode: Mode, wait: Duration, what: &str) -> Result<LockGuard> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .at(path)?;
    let op = match mode {
        Mode::Shared => libc::LOCK_SH,
        Mode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    let start = Instant::now();
    loop {
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(LockGuard {
                _file: file,
                path: path.to_path_buf(),
            });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).at(path);
        }
        if start.elapsed() >= wait {
            return Err(Error::Msg(format!(
                "{what} is busy: another sparsebak run holds {} (waited {}s); try again later",
                path.display(),
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`lock`] of a file reached through `fs` (a volume's lock in an archive folder):
/// [`ArchiveFs::try_lock`] polled with the same wait and message. The lock is held
/// while the returned value lives.
pub fn lock_in(
    fs: &dyn ArchiveFs,
    path: &Path,
    mode: Mode,
    wait: Duration,
    what: &str,
) -> Result<Box<dyn Any + Send + Sync>> {
    let mode = match mode {
        Mode::Shared => LockMode::Shared,
        Mode::Exclusive => LockMode::Exclusive,
    };
    let start = Instant::now();
    loop {
        if let Some(held) = fs.try_lock(path, mode).at(path)? {
            return Ok(held);
        }
        if start.elapsed() >= wait {
            return Err(Error::Msg(format!(
                "{what} is busy: another sparsebak run holds {} (waited {}s); try again later",
                fs.display(path),
                wait.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Take the lock on `path` at once if it is free; otherwise call `waiting` (to say
/// why this run pauses) and wait for it like [`lock`].
pub fn lock_announced(
    path: &Path,
    mode: Mode,
    wait: Duration,
    what: &str,
    waiting: impl FnOnce(),
) -> Result<LockGuard> {
    match lock(path, mode, Duration::ZERO, what) {
        Ok(g) => Ok(g),
        Err(Error::Msg(_)) => {
            waiting();
            lock(path, mode, wait, what)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let a = lock(&p, Mode::Exclusive, Duration::ZERO, "v").unwrap();
        let e = lock(&p, Mode::Shared, Duration::from_millis(150), "v").unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        drop(a);
        let _s1 = lock(&p, Mode::Shared, Duration::ZERO, "v").unwrap();
        let _s2 = lock(&p, Mode::Shared, Duration::ZERO, "v").unwrap();
    }

    #[test]
    fn announced_only_when_busy() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let mut said = 0;
        let a = lock_announced(&p, Mode::Exclusive, Duration::ZERO, "v", || said += 1).unwrap();
        assert_eq!(said, 0);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(a);
        });
        let _b = lock_announced(&p, Mode::Exclusive, Duration::from_secs(5), "v", || {
            said += 1
        })
        .unwrap();
        assert_eq!(said, 1);
        t.join().unwrap();
    }

    #[test]
    fn through_the_archive_fs_the_same_lock_and_message() {
        use sparsebak_format::archive_fs::LocalFs;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("l");
        let a = lock_in(&LocalFs, &p, Mode::Exclusive, Duration::ZERO, "volume v").unwrap();
        // The same flock as `lock`'s: each excludes the other.
        let e = lock(&p, Mode::Shared, Duration::ZERO, "volume v").unwrap_err();
        assert!(e.to_string().contains("busy"), "{e}");
        let e = lock_in(
            &LocalFs,
            &p,
            Mode::Shared,
            Duration::from_millis(150),
            "volume v",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "volume v is busy: another sparsebak run holds {} (waited 0s); try again later",
                p.display()
            )
        );
        drop(a);
        let _s1 = lock_in(&LocalFs, &p, Mode::Shared, Duration::ZERO, "v").unwrap();
        let _s2 = lock(&p, Mode::Shared, Duration::ZERO, "v").unwrap();
        assert!(lock_in(&LocalFs, &p, Mode::Exclusive, Duration::ZERO, "v").is_err());
    }
}
