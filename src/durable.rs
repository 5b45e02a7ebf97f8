//! Making writes durable: fsync of files and folders, atomic replace.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use sparsebak_format::archive_fs::ArchiveFs;

/// Make every file and folder this process creates private to its owner (umask 077),
/// whatever umask it was started with: archives, metadata, streams and restored images
/// hold disk contents. The binary calls it first thing; files are then 0600 and folders
/// 0700 unless the code asks for less.
pub fn private_umask() {
    use nix::sys::stat::{umask, Mode};
    umask(Mode::from_bits_truncate(0o077));
}

/// fsync a folder, so renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync the folder holding `path`.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Flush every dirty page of the filesystem holding `path` (one `syncfs`), instead of
/// an fsync per file when a session writes thousands of chunk files.
pub fn syncfs(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(std::io::Error::from)
}

/// Flushes a filesystem in the background while a long batch of writes goes on.
///
/// A session is made durable by one `syncfs` at its end. Left alone, the kernel keeps
/// most of the session's data dirty until then, and that last `syncfs` waits for all of
/// it. A `Flusher` runs `syncfs` on a thread of its own each time another `every` bytes
/// were written, so the device works while the pipeline hashes and compresses, and the
/// final `syncfs` has little left. The first error a background `syncfs` met is kept and
/// returned by [`Flusher::finish`]: it must fail the batch, as a later `syncfs` on
/// another descriptor would not report it again.
pub struct Flusher {
    tx: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<std::io::Result<()>>>,
    every: u64,
    pending: u64,
}

impl Flusher {
    /// Flush the filesystem holding `path` after every `every` bytes reported.
    pub fn new(path: &Path, every: u64) -> std::io::Result<Flusher> {
        use std::os::fd::AsRawFd;
        let dir = File::open(path)?;
        Self::with(every, move || {
            nix::unistd::syncfs(dir.as_raw_fd()).map_err(std::io::Error::from)
        })
    }

    /// A flusher that never flushes: for a folder reached through a remote
    /// [`ArchiveFs`](sparsebak_format::archive_fs::ArchiveFs), whose writes are made
    /// durable by the one `syncfs` at the end of the batch.
    pub fn idle() -> Flusher {
        Flusher {
            tx: None,
            thread: None,
            every: u64::MAX,
            pending: 0,
        }
    }

    /// Run `flush` on the background thread after every `every` bytes reported.
    fn with(
        every: u64,
        flush: impl Fn() -> std::io::Result<()> + Send + 'static,
    ) -> std::io::Result<Flusher> {
        // One pending request at most: requests made while a flush runs merge into it.
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new().name("flusher".into()).spawn(
            move || -> std::io::Result<()> {
                let mut first_err = None;
                for () in rx.iter() {
                    if let Err(e) = flush() {
                        first_err.get_or_insert(e);
                    }
                }
                first_err.map_or(Ok(()), Err)
            },
        )?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
            every: every.max(1),
            pending: 0,
        })
    }

    /// Count `n` more bytes written; start a background flush when enough are due.
    pub fn wrote(&mut self, n: u64) {
        self.pending += n;
        if self.pending >= self.every {
            self.pending = 0;
            if let Some(tx) = &self.tx {
                // Full: a flush is already queued and will cover these bytes too.
                let _ = tx.try_send(());
            }
        }
    }

    /// Wait for the background flushes; the first error any of them met. Later
    /// reports start no more flushes.
    pub fn finish(&mut self) -> std::io::Result<()> {
        self.tx = None;
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("flusher thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

/// Replace `path` with `data` atomically and durably: temporary name, fsync, rename,
/// fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("write_atomic: path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Build the file `path` under a temporary name in the same folder (`fill` gets that
/// name), and only if `fill` succeeds rename it into place and sync the folder; on
/// failure the temporary file is removed and `path` is untouched.
pub fn replace_with<T>(
    path: &Path,
    fill: impl FnOnce(&Path) -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    use crate::error::IoAt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "volume".into());
    let tmp = path.with_file_name(format!(".{name}.sparsebak-partial"));
    match fill(&tmp) {
        Ok(v) => {
            std::fs::rename(&tmp, path).at(path)?;
            sync_parent(path).at(path)?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Whether `path` (or, if it does not exist yet, the nearest folder above it that
/// does) is on a filesystem mounted read-only.
pub fn is_read_only(path: &Path) -> bool {
    use nix::sys::statvfs::{statvfs, FsFlags};
    path.ancestors()
        .find_map(|p| statvfs(p).ok())
        .is_some_and(|s| s.flags().contains(FsFlags::ST_RDONLY))
}

/// Whether folder `dir` holds nothing but files named in `leftovers` (a lock file, an
/// encrypted volume's identity files): a rename may then take its name. A folder that
/// is not there holds nothing.
pub fn only_lock(dir: &Path, leftovers: &[&str]) -> crate::error::Result<bool> {
    use crate::error::IoAt;
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.at(dir)?;
                if !leftovers.iter().any(|l| e.file_name() == *l) {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).at(dir),
    }
}

/// Move folder `from` to `to` durably, where `to` may be a folder holding only the
/// files named in `leftovers` (a lock file; they are removed first); nothing to do
/// when `from` is gone.
pub fn move_dir(from: &Path, to: &Path, leftovers: &[&str]) -> crate::error::Result<bool> {
    use crate::error::IoAt;
    if !from.exists() {
        return Ok(false);
    }
    if to.exists() {
        for lock in leftovers {
            let l = to.join(lock);
            if l.exists() {
                std::fs::remove_file(&l).at(&l)?;
            }
        }
    }
    // rename(2) replaces an empty folder.
    std::fs::rename(from, to).at(from)?;
    sync_parent(to).at(to)?;
    Ok(true)
}

/// [`only_lock`] of a folder reached through `fs` (an archive's volume folder).
pub fn only_lock_in(
    fs: &dyn ArchiveFs,
    dir: &Path,
    leftovers: &[&str],
) -> crate::error::Result<bool> {
    use crate::error::IoAt;
    match fs.read_dir(dir) {
        Ok(entries) => Ok(entries
            .iter()
            .all(|e| leftovers.iter().any(|l| e.name == *l))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e).at(dir),
    }
}

/// [`move_dir`] of folders reached through `fs` (an archive's volume folders).
pub fn move_dir_in(
    fs: &dyn ArchiveFs,
    from: &Path,
    to: &Path,
    leftovers: &[&str],
) -> crate::error::Result<bool> {
    use crate::error::IoAt;
    if !fs.exists(from) {
        return Ok(false);
    }
    if fs.exists(to) {
        for lock in leftovers {
            let l = to.join(lock);
            if fs.exists(&l) {
                fs.remove_file(&l).at(&l)?;
            }
        }
    }
    // rename(2) replaces an empty folder.
    fs.rename(from, to).at(from)?;
    fs.sync_parent(to).at(to)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A flusher that counts its flushes.
    fn counting(every: u64) -> (Flusher, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let f = Flusher::with(every, move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .unwrap();
        (f, calls)
    }

    #[test]
    fn flushes_once_enough_was_written() {
        let (mut f, calls) = counting(100);
        f.wrote(60);
        f.wrote(39);
        f.finish().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 0, "99 bytes must not flush");

        let (mut f, calls) = counting(100);
        f.wrote(60);
        f.wrote(40);
        f.finish().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_failed_background_flush_fails_finish_once() {
        let mut f = Flusher::with(1, || Err(std::io::Error::other("EIO in the flush"))).unwrap();
        f.wrote(1);
        let e = f.finish().unwrap_err();
        assert!(e.to_string().contains("EIO in the flush"), "{e}");
        // Reported once; the flusher has stopped and later reports start nothing.
        f.wrote(5);
        assert!(f.finish().is_ok());
    }

    #[test]
    fn syncfs_flusher_on_a_real_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = Flusher::new(dir.path(), 4096).unwrap();
        for i in 0..8 {
            std::fs::write(dir.path().join(format!("c{i}")), [i as u8; 4096]).unwrap();
            f.wrote(4096);
        }
        f.finish().unwrap();
    }
}
