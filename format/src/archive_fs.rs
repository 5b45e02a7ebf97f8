//! [`ArchiveFs`]: the file operations an archive folder is read and written with,
//! wherever its files are.
//!
//! Every file access of the archive side (the folder store, tar sessions, the local
//! destination's writer, prune, recovery, repair, the marker, key and lock files) goes
//! through one of these. [`LocalFs`] is `std::fs` on this machine. A remote
//! implementation maps each call to one request to `sparsebak serve`, which performs it
//! on the far side, confined to the archive folder it serves: so an encrypted archive
//! on a remote host is run by the same code as a local one, with the keys and every
//! plaintext byte staying on this machine.
//!
//! Paths are the archive's paths (the archive folder joined with names inside it), as
//! the folder store builds them; a remote implementation refuses any path that is not
//! below the folder it serves. Errors are `std::io::Error`s with the kind the operation
//! met (`NotFound`, `AlreadyExists`, `WouldBlock` for a lock held elsewhere, ...), so
//! callers tell "missing" from "damaged" the same way for either implementation.

use std::any::Any;
use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What a path is (symbolic links are not followed, and are [`Kind::Other`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Other,
}

/// A path's kind and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: Kind,
    /// Bytes (files; unspecified for folders).
    pub len: u64,
    /// Modification time: seconds since the epoch.
    pub mtime: i64,
}

/// One entry of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name (not valid UTF-8: lossily converted; such names are never the
    /// archive's own).
    pub name: String,
    pub kind: Kind,
    /// Bytes (files).
    pub len: u64,
}

/// Shared (readers) or exclusive (writers) advisory lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// A file being written by [`ArchiveFs::create`]. Dropping it without
/// [`FileWriter::finish`] leaves what was written so far (callers write under a
/// temporary name or in a staging folder, so a partial file is never taken for a
/// whole one).
pub trait FileWriter: Write + Send {
    /// Flush, make the file's bytes durable when `sync`, and close it.
    fn finish(self: Box<Self>, sync: bool) -> io::Result<()>;
}

/// File operations on an archive folder.
pub trait ArchiveFs: Send + Sync + Debug {
    /// How to name `path` in a message (`host:/path` for a remote one).
    fn display(&self, path: &Path) -> String;
    /// Whether this is `std::fs` on this machine (callers may then use the path
    /// directly, e.g. to map a file).
    fn is_local(&self) -> bool {
        false
    }

    /// The kind, size and time of `path` without following a symbolic link.
    fn metadata(&self, path: &Path) -> io::Result<Meta>;
    /// The entries of folder `path`, in no particular order (`.` and `..` left out).
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>>;
    /// The whole file, refused (`InvalidData`) when longer than `max` bytes.
    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>>;
    /// Up to `len` bytes at `offset` (fewer only at the end of the file).
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// A sequential reader of the file.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>>;

    /// Create or truncate `path` and write `data` (not made durable: see
    /// [`ArchiveFs::sync_file`], [`ArchiveFs::syncfs`]).
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Create `path` (which must not exist) with mode 0600 and write `data`, durably.
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Replace `path` with `data` atomically and durably: temporary name, fsync,
    /// rename, fsync of the folder.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Create or truncate `path` for writing in pieces.
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>>;

    fn create_dir(&self, path: &Path) -> io::Result<()>;
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// `rename(2)`: replaces a file, or an empty folder, at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Rename that fails with `AlreadyExists` when `to` exists (`renameat2` with
    /// `RENAME_NOREPLACE`, or a hard link and unlink where the filesystem lacks it).
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Remove an empty folder.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn remove_dir_all(&self, path: &Path) -> io::Result<()>;

    /// fsync of a file.
    fn sync_file(&self, path: &Path) -> io::Result<()>;
    /// fsync of a folder (makes the names in it durable).
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// `syncfs(2)` of the filesystem holding `path`.
    fn syncfs(&self, path: &Path) -> io::Result<()>;
    /// Whether the filesystem holding `path` (or, when `path` does not exist, its
    /// nearest existing ancestor) is mounted read-only.
    fn is_read_only(&self, path: &Path) -> bool;

    /// The free room on the filesystem holding `path` (or its nearest existing
    /// ancestor), for messages: bytes and inodes an unprivileged writer may still
    /// use, and inodes in all. `None` when it cannot be known (the default; a local
    /// folder is measured by its caller directly).
    fn room(&self, _path: &Path) -> Option<[u64; 3]> {
        None
    }

    /// Whether `path` exists (a symbolic link is not followed). Written in terms of
    /// [`ArchiveFs::metadata`].
    fn exists(&self, path: &Path) -> bool {
        self.metadata(path).is_ok()
    }
    /// Whether `path` is a folder (not a symbolic link to one). Written in terms of
    /// [`ArchiveFs::metadata`].
    fn is_dir(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|m| m.kind == Kind::Dir)
    }
    /// Whether `path` is a regular file (not a symbolic link to one). Written in terms
    /// of [`ArchiveFs::metadata`].
    fn is_file(&self, path: &Path) -> bool {
        self.metadata(path).is_ok_and(|m| m.kind == Kind::File)
    }
    /// fsync of the folder holding `path` (the current folder for a bare name).
    /// Written in terms of [`ArchiveFs::sync_dir`].
    fn sync_parent(&self, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => self.sync_dir(p),
            _ => self.sync_dir(Path::new(".")),
        }
    }

    /// Try to take an advisory lock on `path` (created if missing) without waiting:
    /// `Ok(None)` when another holder has it. The lock is held as long as the
    /// returned value lives (for a remote one: or until the link goes).
    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn Any + Send + Sync>>>;
}

/// An `ArchiveFs` shared by the stores and writers of one archive.
pub type SharedFs = Arc<dyn ArchiveFs>;

/// `std::fs` on this machine.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalFs;

/// The `LocalFs`, shared.
pub fn local() -> SharedFs {
    Arc::new(LocalFs)
}

fn kind_of(t: std::fs::FileType) -> Kind {
    if t.is_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else {
        Kind::Other
    }
}

struct LocalWriter {
    file: std::io::BufWriter<std::fs::File>,
}

impl Write for LocalWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.file.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl FileWriter for LocalWriter {
    fn finish(self: Box<Self>, sync: bool) -> io::Result<()> {
        let f = self.file.into_inner().map_err(|e| e.into_error())?;
        if sync {
            f.sync_all()?;
        }
        Ok(())
    }
}

/// The message of a symbolic link met where the archive has a file or folder of its
/// own: the archive never follows one (it could lead anywhere outside the archive).
pub const SYMLINK_REFUSED: &str = "is a symbolic link, not a sparsebak file";

/// The error for a symbolic link met at an archive path.
pub fn symlink_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, SYMLINK_REFUSED)
}

/// `ELOOP` from an `O_NOFOLLOW` open: the last component was a symbolic link.
fn map_loop(e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        symlink_error()
    } else {
        e
    }
}

/// Open options that never follow a symbolic link at the last component.
fn nofollow() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.custom_flags(libc::O_NOFOLLOW);
    o
}

/// What a FIFO, a socket or a device node met at an archive path is refused with.
pub const SPECIAL_REFUSED: &str = "is a FIFO, a socket or a device node, not a sparsebak file";

fn is_special(t: std::fs::FileType) -> bool {
    use std::os::unix::fs::FileTypeExt;
    t.is_fifo() || t.is_socket() || t.is_char_device() || t.is_block_device()
}

fn special_error() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, SPECIAL_REFUSED)
}

/// `path` opened for reading, refusing a symbolic link and a special file (for the
/// callers that map or hold a local archive file open themselves). A FIFO put at an
/// archive path would block the open, and a device node could do anything on open
/// or close: the path is looked at first and not opened when it is one, and the open
/// itself does not wait (`O_NONBLOCK`, which changes nothing for files and folders)
/// and is checked again, should the path have been swapped in between.
pub fn open_read(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| is_special(m.file_type())) {
        return Err(special_error());
    }
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(map_loop)?;
    if is_special(f.metadata()?.file_type()) {
        return Err(special_error());
    }
    Ok(f)
}

/// `path` created or truncated for writing, refusing a symbolic link (a link left
/// at an archive path could make the write land anywhere).
fn open_create(path: &Path) -> io::Result<std::fs::File> {
    nofollow()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(map_loop)
}

fn fsync_path(path: &Path) -> io::Result<()> {
    open_read(path)?.sync_all()
}

/// Refuse `path` when it is a symbolic link (checked before an operation that
/// would follow one, such as listing a folder).
fn refuse_link(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(symlink_error()),
        _ => Ok(()),
    }
}

impl ArchiveFs for LocalFs {
    fn display(&self, path: &Path) -> String {
        path.display().to_string()
    }
    fn is_local(&self) -> bool {
        true
    }

    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Meta {
            kind: kind_of(m.file_type()),
            len: m.len(),
            mtime: m.mtime(),
        })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        refuse_link(path)?;
        let mut out = Vec::new();
        for e in std::fs::read_dir(path)? {
            let e = e?;
            let t = e.file_type()?;
            let len = if t.is_file() {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            } else {
                0
            };
            out.push(Entry {
                name: e.file_name().to_string_lossy().into_owned(),
                kind: kind_of(t),
                len,
            });
        }
        Ok(out)
    }

    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        let f = open_read(path)?;
        let len = f.metadata()?.len();
        if len > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{len} bytes, above the limit of {max}"),
            ));
        }
        let mut buf = Vec::with_capacity(len as usize);
        f.take(max.saturating_add(1)).read_to_end(&mut buf)?;
        if buf.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("grew above the limit of {max} bytes while read"),
            ));
        }
        Ok(buf)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = open_read(path)?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        Ok(Box::new(open_read(path)?))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        open_create(path)?.write_all(data)
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(map_loop)?;
        f.write_all(data)?;
        f.sync_all()?;
        if let Some(p) = path.parent() {
            fsync_path(p)?;
        }
        Ok(())
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("write_atomic: the path has no file name"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".tmp");
        let tmp = path.with_file_name(tmp_name);
        {
            let mut f = open_create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => fsync_path(p),
            _ => fsync_path(Path::new(".")),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        Ok(Box::new(LocalWriter {
            file: std::io::BufWriter::with_capacity(1 << 20, open_create(path)?),
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        match nix::fcntl::renameat2(
            None,
            from,
            None,
            to,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(
                nix::errno::Errno::EINVAL
                | nix::errno::Errno::ENOSYS
                | nix::errno::Errno::EOPNOTSUPP,
            ) => {
                std::fs::hard_link(from, to)?;
                std::fs::remove_file(from)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(path)
    }

    fn sync_file(&self, path: &Path) -> io::Result<()> {
        nofollow()
            .write(true)
            .open(path)
            .map_err(map_loop)?
            .sync_all()
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        fsync_path(path)
    }
    fn syncfs(&self, path: &Path) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let f = open_read(path)?;
        nix::unistd::syncfs(f.as_raw_fd()).map_err(io::Error::from)
    }

    fn is_read_only(&self, path: &Path) -> bool {
        // A path that does not exist yet is on its nearest existing ancestor's
        // filesystem.
        path.ancestors()
            .find_map(|p| nix::sys::statvfs::statvfs(p).ok())
            .is_some_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY))
    }

    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        use std::os::fd::AsRawFd;
        // Never through a symbolic link: a lock link planted in the archive would
        // otherwise make this create a file wherever it points.
        let file = nofollow()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(map_loop)?;
        let op = match mode {
            LockMode::Shared => libc::LOCK_SH,
            LockMode::Exclusive => libc::LOCK_EX,
        } | libc::LOCK_NB;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(Some(Box::new(Held(file, PathBuf::from(path)))));
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(err)
        }
    }
}

/// [`LocalFs`] for the archive folder `root`: besides never following a symbolic link
/// at the last component of a path (as [`LocalFs`]), it refuses a path below `root`
/// that passes through a symbolic link (a volume or session folder linked to
/// somewhere else). `root` itself may be reached through links: it is the user's.
#[derive(Debug, Clone)]
pub struct LocalIn {
    root: PathBuf,
}

/// The [`LocalIn`] of archive folder `root`, shared.
pub fn local_in(root: &Path) -> SharedFs {
    Arc::new(LocalIn {
        root: root.to_path_buf(),
    })
}

impl LocalIn {
    /// Refuse `path` when a folder between the root and its last component is a
    /// symbolic link (the last component is left to the operation, which does not
    /// follow it).
    fn check(&self, path: &Path) -> io::Result<()> {
        let Ok(rest) = path.strip_prefix(&self.root) else {
            return Ok(());
        };
        let mut cur = self.root.clone();
        let comps: Vec<_> = rest.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            cur.push(c);
            if let Ok(m) = std::fs::symlink_metadata(&cur) {
                if m.file_type().is_symlink() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} {SYMLINK_REFUSED}", cur.display()),
                    ));
                }
            }
        }
        Ok(())
    }
}

impl ArchiveFs for LocalIn {
    fn display(&self, path: &Path) -> String {
        LocalFs.display(path)
    }
    fn is_local(&self) -> bool {
        true
    }
    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        self.check(path)?;
        LocalFs.metadata(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        self.check(path)?;
        LocalFs.read_dir(path)
    }
    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        self.check(path)?;
        LocalFs.read(path, max)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check(path)?;
        LocalFs.read_at(path, offset, len)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        self.check(path)?;
        LocalFs.open(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check(path)?;
        LocalFs.write(path, data)
    }
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check(path)?;
        LocalFs.write_new(path, data)
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        self.check(path)?;
        LocalFs.write_atomic(path, data)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        self.check(path)?;
        LocalFs.create(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        refuse_link(path)?;
        LocalFs.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(from)?;
        self.check(to)?;
        LocalFs.rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(from)?;
        self.check(to)?;
        LocalFs.rename_noreplace(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(from)?;
        self.check(to)?;
        LocalFs.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.remove_dir_all(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.check(path)?;
        LocalFs.sync_dir(path)
    }
    fn syncfs(&self, path: &Path) -> io::Result<()> {
        LocalFs.syncfs(path)
    }
    fn is_read_only(&self, path: &Path) -> bool {
        LocalFs.is_read_only(path)
    }
    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        self.check(path)?;
        LocalFs.try_lock(path, mode)
    }
}

/// A local lock: the locked file, held open.
#[derive(Debug)]
struct Held(
    #[allow(dead_code)] std::fs::File,
    #[allow(dead_code)] PathBuf,
);

/// [`LocalFs`] that says it is not local, so that callers take the paths they take
/// for a remote folder (reading by offset instead of mapping, no background flush):
/// for tests of those paths.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug, Clone, Copy, Default)]
pub struct NotLocal;

#[cfg(any(test, feature = "testing"))]
impl ArchiveFs for NotLocal {
    fn display(&self, path: &Path) -> String {
        format!("not-local:{}", path.display())
    }
    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        LocalFs.metadata(path)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        LocalFs.read_dir(path)
    }
    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        LocalFs.read(path, max)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        LocalFs.read_at(path, offset, len)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        LocalFs.open(path)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write(path, data)
    }
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write_new(path, data)
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write_atomic(path, data)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        LocalFs.create(path)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.create_dir(path)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        LocalFs.create_dir_all(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.rename(from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.rename_noreplace(from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.hard_link(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_dir(path)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_dir_all(path)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        LocalFs.sync_file(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.sync_dir(path)
    }
    fn syncfs(&self, path: &Path) -> io::Result<()> {
        LocalFs.syncfs(path)
    }
    fn is_read_only(&self, path: &Path) -> bool {
        LocalFs.is_read_only(path)
    }
    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        LocalFs.try_lock(path, mode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_in_the_archive_are_never_followed() {
        let d = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let root = d.path().join("arch");
        std::fs::create_dir(&root).unwrap();
        let fs = LocalIn { root: root.clone() };
        let secret = out.path().join("secret");
        std::fs::write(&secret, b"not the archive's").unwrap();
        let link = root.join("chunk");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        for e in [
            fs.read(&link, 100).unwrap_err(),
            fs.read_at(&link, 0, 4).unwrap_err(),
            fs.open(&link).err().unwrap(),
            fs.write(&link, b"x").unwrap_err(),
            fs.create(&link).err().unwrap(),
            fs.sync_file(&link).unwrap_err(),
        ] {
            assert_eq!(e.to_string(), SYMLINK_REFUSED);
        }
        assert_eq!(std::fs::read(&secret).unwrap(), b"not the archive's");
        // A lock link to a path that does not exist creates nothing there.
        let lock = root.join(".lock");
        let target = out.path().join("planted");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let e = fs.try_lock(&lock, LockMode::Exclusive).err().unwrap();
        assert_eq!(e.to_string(), SYMLINK_REFUSED);
        assert!(!target.exists());
        // A volume folder linked outside: nothing below it is reached.
        let vol = out.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("info"), b"i").unwrap();
        std::os::unix::fs::symlink(&vol, root.join("v1")).unwrap();
        assert_eq!(
            fs.read_dir(&root.join("v1")).unwrap_err().to_string(),
            SYMLINK_REFUSED
        );
        let e = fs.read(&root.join("v1/info"), 10).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("{} {SYMLINK_REFUSED}", root.join("v1").display())
        );
        let e = fs
            .write(&root.join("v1/new"), b"x")
            .unwrap_err()
            .to_string();
        assert!(e.ends_with(SYMLINK_REFUSED), "{e}");
        assert!(!vol.join("new").exists());
        // The root itself may be reached through a link.
        let via = out.path().join("via");
        std::os::unix::fs::symlink(&root, &via).unwrap();
        std::fs::write(root.join("plain"), b"p").unwrap();
        let fs2 = LocalIn { root: via.clone() };
        assert_eq!(fs2.read(&via.join("plain"), 10).unwrap(), b"p");
    }

    #[test]
    fn default_helpers_do_not_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let (f, sub, link) = (d.path().join("f"), d.path().join("s"), d.path().join("l"));
        std::fs::write(&f, b"x").unwrap();
        std::fs::create_dir(&sub).unwrap();
        std::os::unix::fs::symlink(&sub, &link).unwrap();
        let fs = NotLocal;
        assert!(fs.is_file(&f) && !fs.is_dir(&f) && fs.exists(&f));
        assert!(fs.is_dir(&sub) && !fs.is_file(&sub));
        assert!(fs.exists(&link) && !fs.is_dir(&link) && !fs.is_file(&link));
        assert!(!fs.exists(&d.path().join("missing")));
        fs.sync_parent(&f).unwrap();
        assert!(!LocalFs.is_read_only(&d.path().join("not/yet/made")));
    }
}
