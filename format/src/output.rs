//! Where a restored volume or a written stream goes, looked at before anything is
//! written: `-` (standard output), a FIFO, a character device, a block device, or a
//! regular file (new or replaced). Symlinks are followed to the real object, so a
//! replaced file is built beside the file the link points to and the link stays.
//! Directories, sockets and dangling symlinks are refused here; each command refuses
//! the kinds it cannot write (a restore takes no character device).
//!
//! A regular file is built under a temporary name beside it ([`PartialFile`]), created
//! 0600 whatever the umask (disk images hold secrets), and renamed into place only once
//! complete; a file it replaces keeps its owner, group and mode.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Errors about an output path; each names the path.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is {what}; {hint}")]
    Refused {
        path: PathBuf,
        what: &'static str,
        hint: &'static str,
    },
    #[error("{path} is a symlink to {target}, which does not exist; refusing to write through it")]
    Dangling { path: PathBuf, target: PathBuf },
    #[error(
        "{path} has {links} hard links; the new file would replace this name only and the \
         other links would keep the old content: remove them, or restore to a new path"
    )]
    HardLinked { path: PathBuf, links: u64 },
    /// A memory device (`/dev/null`, `/dev/zero`, `/dev/mem`, ...), named or as
    /// standard output: what is written there is lost (or worse), so a restore or a
    /// stream (which a chain would then build on) would seem to succeed. Standard output
    /// that was closed reads as `/dev/null` here: the runtime opens it there before
    /// `main`.
    #[error(
        "{what}; refusing: give a file, a block device, a FIFO or a pipe \
         (`sparsebak verify` checks a session without writing it)"
    )]
    NotStorage { what: String },
    #[error(
        "{path} is inside {what} {dir}; writing there would damage it: choose a path \
         outside it"
    )]
    Inside {
        path: PathBuf,
        what: String,
        dir: PathBuf,
    },
    #[error(
        "{path} belongs to uid {uid} gid {gid}, which the restored file cannot be given \
         ({source}); run as root, or remove the file first"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        gid: u32,
        #[source]
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What an output path is.
#[derive(Debug)]
pub enum OutputKind {
    /// `-`: standard output, written in order.
    Stdout,
    /// A FIFO (named pipe), written in order.
    Fifo,
    /// A character device (a tape drive, `/dev/null`), written in order.
    CharDevice,
    /// A block device of `size` bytes, written in place.
    BlockDevice { size: u64 },
    /// An existing regular file, to be replaced; its owner, group and mode are kept.
    File { existing: Metadata },
    /// Nothing yet: a new file is created.
    New,
}

/// An output path and what is there.
#[derive(Debug)]
pub struct Output {
    /// The path as given (for messages).
    pub given: PathBuf,
    /// The real object: symlinks resolved (the given path for `-` and new files).
    pub path: PathBuf,
    pub kind: OutputKind,
}

impl Output {
    /// Whether the output is written front to back (zeros included).
    pub fn is_sequential(&self) -> bool {
        matches!(
            self.kind,
            OutputKind::Stdout | OutputKind::Fifo | OutputKind::CharDevice
        )
    }

    /// A name for messages: `standard output`, or the path (and where a symlink leads).
    pub fn describe(&self) -> String {
        match self.kind {
            OutputKind::Stdout => "standard output".into(),
            _ if self.path != self.given => {
                format!("{} (-> {})", self.given.display(), self.path.display())
            }
            _ => self.given.display().to_string(),
        }
    }
}

/// `path` made absolute (against the working directory) with `.` and `..` resolved
/// lexically, then its deepest existing ancestor resolved through symlinks: where a
/// path that does not exist yet would be created.
pub fn resolved(path: &Path) -> PathBuf {
    use std::path::Component;
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(path)
    };
    let mut lexical = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                lexical.pop();
            }
            Component::Normal(n) => lexical.push(n),
            _ => {}
        }
    }
    let mut existing = lexical.as_path();
    let mut rest = Vec::new();
    while let Some(parent) = existing.parent() {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        if let Some(name) = existing.file_name() {
            rest.push(name.to_os_string());
        }
        existing = parent;
    }
    lexical
}

/// Look at `given` (`-` is standard output) without writing anything.
pub fn inspect(given: &Path) -> Result<Output, OutputError> {
    if given == Path::new("-") {
        if let Some(what) = stdout_memory_device() {
            return Err(OutputError::NotStorage { what });
        }
        return Ok(Output {
            given: given.into(),
            path: given.into(),
            kind: OutputKind::Stdout,
        });
    }
    let lmeta = match std::fs::symlink_metadata(given) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // A device node that is missing (an inactive logical volume, a detached
            // disk) must not become a regular file in /dev, where nobody looks for one.
            if resolved(given).starts_with("/dev") {
                return Err(OutputError::Refused {
                    path: given.into(),
                    what: "missing from /dev",
                    hint: "is the device attached (the logical volume active)? \
                           sparsebak makes no regular files under /dev",
                });
            }
            return Ok(Output {
                given: given.into(),
                path: given.into(),
                kind: OutputKind::New,
            });
        }
        r => r.map_err(io_at(given))?,
    };
    let path = if lmeta.file_type().is_symlink() {
        match (std::fs::canonicalize(given), std::fs::metadata(given)) {
            (Ok(p), _) => p,
            // A link with no path to name, that still opens: `/dev/stdout` on a pipe
            // leads to `/proc/self/fd/1` and on to `pipe:[…]`.
            (Err(_), Ok(_)) => given.to_path_buf(),
            (Err(e), Err(_)) if e.kind() == std::io::ErrorKind::NotFound => {
                let target = std::fs::read_link(given).map_err(io_at(given))?;
                return Err(OutputError::Dangling {
                    path: given.into(),
                    target,
                });
            }
            (Err(e), Err(_)) => return Err(io_at(given)(e)),
        }
    } else {
        given.to_path_buf()
    };
    let meta = std::fs::metadata(&path).map_err(io_at(&path))?;
    let ft = meta.file_type();
    let refuse = |what, hint| OutputError::Refused {
        path: given.into(),
        what,
        hint,
    };
    let kind = if ft.is_file() {
        if meta.nlink() > 1 {
            return Err(OutputError::HardLinked {
                path: given.into(),
                links: meta.nlink(),
            });
        }
        if path.starts_with("/dev") {
            // devtmpfs lives in RAM; a regular file there is nobody's disk.
            return Err(refuse(
                "a regular file under /dev",
                "name a device; sparsebak makes and replaces no regular files under /dev",
            ));
        }
        OutputKind::File { existing: meta }
    } else if ft.is_fifo() {
        OutputKind::Fifo
    } else if ft.is_char_device() {
        if let Some(what) = memory_device(&meta, &given.display().to_string(), false) {
            return Err(OutputError::NotStorage { what });
        }
        OutputKind::CharDevice
    } else if ft.is_block_device() {
        // The size of a block device is where its end is; needs no ioctl.
        let mut f = File::open(&path).map_err(io_at(&path))?;
        let size = f.seek(SeekFrom::End(0)).map_err(io_at(&path))?;
        if is_read_only_device(&f).map_err(io_at(&path))? {
            return Err(read_only_device(given));
        }
        OutputKind::BlockDevice { size }
    } else if ft.is_dir() {
        return Err(refuse("a directory", "give the path of a file inside it"));
    } else if ft.is_socket() {
        return Err(refuse(
            "a socket",
            "give a file, a block device, a FIFO or - for standard output",
        ));
    } else {
        return Err(refuse(
            "of an unknown file type",
            "give a file, a block device, a FIFO or - for standard output",
        ));
    };
    Ok(Output {
        given: given.into(),
        path,
        kind,
    })
}

/// Refuse a file output (new or replaced) that would be written inside `dir` (`what`
/// names it: an archive, a metadata folder), before anything is written: a restore or
/// a stream written there would replace or add files of it. The folder the file goes
/// to (symlinks resolved) and each folder above it are compared with `dir` by device
/// and inode, so another path to the same folder (a bind mount, `..`) is caught too. A
/// `dir` that does not exist holds nothing to damage.
pub fn refuse_inside(out: &Output, dir: &Path, what: &str) -> Result<(), OutputError> {
    if !matches!(out.kind, OutputKind::File { .. } | OutputKind::New) {
        return Ok(());
    }
    let Ok(d) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let key = (d.dev(), d.ino());
    let parent = match out.path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // A folder that does not exist cannot be written into; that error comes later.
    let Ok(parent) = std::fs::canonicalize(parent) else {
        return Ok(());
    };
    let inside = parent
        .ancestors()
        .any(|a| std::fs::metadata(a).is_ok_and(|m| (m.dev(), m.ino()) == key));
    if inside {
        return Err(OutputError::Inside {
            path: out.given.clone(),
            what: what.to_string(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Refuse a file output that is the input `input` itself (by device and inode): it
/// would be replaced by what is made of it.
pub fn refuse_same_file(out: &Output, input: &Path) -> Result<(), OutputError> {
    let OutputKind::File { existing } = &out.kind else {
        return Ok(());
    };
    match std::fs::metadata(input) {
        Ok(m) if (m.dev(), m.ino()) == (existing.dev(), existing.ino()) => {
            Err(OutputError::Refused {
                path: out.given.clone(),
                what: "one of the streams being read",
                hint: "write the volume to another path",
            })
        }
        _ => Ok(()),
    }
}

// BLKROGET is `_IO(0x12, 94)` and writes an int (from <linux/fs.h>).
nix::ioctl_read_bad!(blkroget, nix::request_code_none!(0x12, 94), libc::c_int);

/// Whether the block device `f` is set read-only (`blockdev --setro`, `losetup -r`, a
/// write-protected disk): writes to it would fail with "Operation not permitted".
pub fn is_read_only_device(f: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut ro: libc::c_int = 0;
    // SAFETY: BLKROGET writes one int to the pointer we pass.
    unsafe { blkroget(f.as_raw_fd(), &mut ro) }.map_err(std::io::Error::from)?;
    Ok(ro != 0)
}

fn read_only_device(path: &Path) -> OutputError {
    OutputError::Refused {
        path: path.to_path_buf(),
        what: "a read-only block device",
        hint:
            "nothing was written; make it writable first (`blockdev --setrw`), or write elsewhere",
    }
}

/// Linux's character major number of the memory devices: `/dev/null` (1:3),
/// `/dev/zero` (1:5), `/dev/full`, `/dev/mem`, `/dev/random`, ...
const MEMORY_MAJOR: u32 = 1;
const NULL_MINOR: u32 = 3;

/// Why `meta` (of `name`; `stdout` when it is standard output) is no place for data:
/// `None` unless it is one of the memory devices.
fn memory_device(meta: &Metadata, name: &str, stdout: bool) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_char_device() || libc::major(meta.rdev()) != MEMORY_MAJOR {
        return None;
    }
    let minor = libc::minor(meta.rdev());
    Some(match (minor, stdout) {
        (NULL_MINOR, true) => {
            format!("{name} is /dev/null (or was closed), which keeps nothing written to it")
        }
        (NULL_MINOR, false) if name == "/dev/null" => {
            "/dev/null keeps nothing written to it".to_string()
        }
        (NULL_MINOR, false) => format!("{name} is /dev/null, which keeps nothing written to it"),
        _ => format!(
            "{name} is a memory device (character device {MEMORY_MAJOR}:{minor}), not storage"
        ),
    })
}

/// Why standard output is no place for data (see [`memory_device`]): `None` unless it
/// is `/dev/null` (given so, or closed when the program started: the runtime then
/// opens `/dev/null` in its place) or another memory device.
pub fn stdout_memory_device() -> Option<String> {
    use std::os::fd::AsFd;
    let meta = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map(File::from)
        .and_then(|f| f.metadata())
        .ok()?;
    memory_device(&meta, "standard output", true)
}

/// Open a FIFO, character or block device for writing (a FIFO waits for its reader;
/// a block device is opened as [`open_block_device`] does).
pub fn open_existing(out: &Output) -> Result<File, OutputError> {
    if let OutputKind::BlockDevice { .. } = out.kind {
        return open_block_device(&out.path);
    }
    OpenOptions::new()
        .write(true)
        .open(&out.path)
        .map_err(io_at(&out.path))
}

/// Open a block device for reading and writing, exclusively (`O_EXCL`): a device that is mounted,
/// or held open exclusively by another program, or set read-only, is refused before anything
/// is written.
pub fn open_block_device(path: &Path) -> Result<File, OutputError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::EBUSY) => OutputError::Refused {
                path: path.to_path_buf(),
                what: "in use (mounted, or held by another program)",
                hint: "unmount it or stop what holds it first",
            },
            Some(libc::EROFS) => read_only_device(path),
            _ => io_at(path)(e),
        })?;
    // A device set read-only opens for writing, and refuses each write.
    if is_read_only_device(&f).map_err(io_at(path))? {
        return Err(read_only_device(path));
    }
    Ok(f)
}

/// The temporary files of [`PartialFile`]s not yet committed or dropped, for
/// [`remove_partials_on_signals`].
static PARTIALS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// The write end of the pipe the signal handler writes the signal number into.
static SIGNAL_PIPE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE.load(std::sync::atomic::Ordering::Relaxed);
    let b = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
    unsafe {
        libc::write(fd, (&b as *const u8).cast(), 1);
    }
}

/// On SIGINT, SIGTERM or SIGHUP, remove the temporary files of the outputs being
/// built (nothing half-written is left beside the target) and exit with 128 + the
/// signal's number (130 for SIGINT, 143 for SIGTERM). The handler only writes the
/// signal's number to a pipe; a thread reads it and does the work.
pub fn remove_partials_on_signals() -> std::io::Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fds[0] was just opened and is owned here only.
    let mut rd = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fds[0]) };
    SIGNAL_PIPE.store(fds[1], std::sync::atomic::Ordering::Relaxed);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 1];
            if rd.read_exact(&mut b).is_ok() {
                let paths = match PARTIALS.lock() {
                    Ok(p) => p.clone(),
                    Err(p) => p.into_inner().clone(),
                };
                for p in paths {
                    let _ = std::fs::remove_file(&p);
                }
                std::process::exit(128 + i32::from(b[0]));
            }
        })?;
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        unsafe { sigaction(sig, &act) }.map_err(std::io::Error::from)?;
    }
    Ok(())
}

fn register_partial(p: &Path) {
    if let Ok(mut v) = PARTIALS.lock() {
        v.push(p.to_path_buf());
    }
}

fn unregister_partial(p: &Path) {
    if let Ok(mut v) = PARTIALS.lock() {
        v.retain(|x| x != p);
    }
}

/// A regular file being built under a temporary name beside `dest` (the real file,
/// symlinks resolved). Dropped without [`PartialFile::commit`], the temporary file is
/// removed and `dest` is untouched.
pub struct PartialFile {
    tmp: PathBuf,
    dest: PathBuf,
    keep: Option<(u32, u32, u32)>,
    file: Option<File>,
}

impl PartialFile {
    /// Create the temporary file for `out` (a [`OutputKind::File`] or
    /// [`OutputKind::New`]), mode 0600, owned as the file it replaces (a file that
    /// cannot be given that owner is refused here, before anything is written).
    pub fn create(out: &Output) -> Result<PartialFile, OutputError> {
        let keep = match &out.kind {
            OutputKind::File { existing } => {
                Some((existing.uid(), existing.gid(), existing.mode() & 0o7777))
            }
            _ => None,
        };
        let p = Self::create_at(&out.path, keep)?;
        if let Some((uid, gid, _)) = keep {
            std::os::unix::fs::fchown(p.file(), Some(uid), Some(gid)).map_err(|source| {
                OutputError::Owner {
                    path: out.given.clone(),
                    uid,
                    gid,
                    source,
                }
            })?;
        }
        Ok(p)
    }

    fn create_at(dest: &Path, keep: Option<(u32, u32, u32)>) -> Result<PartialFile, OutputError> {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "volume".into());
        let tmp = dest.with_file_name(format!(".{name}.sparsebak-partial"));
        // A leftover of an interrupted run may have any mode: start afresh.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_at(&tmp)(e)),
            _ => {}
        }
        register_partial(&tmp);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) => {
                unregister_partial(&tmp);
                return Err(io_at(&tmp)(e));
            }
        };
        let p = PartialFile {
            tmp,
            dest: dest.to_path_buf(),
            keep,
            file: Some(file),
        };
        // The umask may have taken bits from 0600, never added any; make it exact.
        p.file()
            .set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_at(&p.tmp))?;
        Ok(p)
    }

    /// The temporary file.
    pub fn file(&self) -> &File {
        self.file.as_ref().expect("the file lives until commit")
    }

    /// The temporary file's path.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Give the replaced file's mode to the new one (its owner was given at creation;
    /// a chown clears set-user-ID bits, so the mode comes after), fsync it, rename it
    /// over the destination and fsync the folder.
    pub fn commit(mut self) -> Result<(), OutputError> {
        let file = self.file.take().expect("commit runs once");
        if let Some((_, _, mode)) = self.keep {
            file.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(io_at(&self.tmp))?;
        }
        file.sync_all().map_err(io_at(&self.tmp))?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(io_at(&self.dest))?;
        unregister_partial(&self.tmp);
        let dir = match self.dest.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(io_at(&dir))?;
        self.tmp = PathBuf::new();
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
            unregister_partial(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn kinds_of_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        // The harness's own standard output decides which answer is right.
        match inspect(Path::new("-")) {
            Ok(o) => {
                assert!(matches!(o.kind, OutputKind::Stdout) && stdout_memory_device().is_none())
            }
            Err(e) => assert!(
                matches!(e, OutputError::NotStorage { .. }) && stdout_memory_device().is_some(),
                "{e}"
            ),
        }
        assert!(matches!(
            inspect(&p.join("new")).unwrap().kind,
            OutputKind::New
        ));
        std::fs::write(p.join("f"), b"x").unwrap();
        symlink(p.join("f"), p.join("link")).unwrap();
        let o = inspect(&p.join("link")).unwrap();
        assert!(matches!(o.kind, OutputKind::File { .. }));
        assert_eq!(o.path, std::fs::canonicalize(p.join("f")).unwrap());
        symlink(p.join("gone"), p.join("dangling")).unwrap();
        let e = inspect(&p.join("dangling")).unwrap_err().to_string();
        assert!(e.contains("which does not exist"), "{e}");
        let e = inspect(p).unwrap_err().to_string();
        assert!(e.contains("is a directory"), "{e}");
        nix::unistd::mkfifo(&p.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let o = inspect(&p.join("fifo")).unwrap();
        assert!(matches!(o.kind, OutputKind::Fifo) && o.is_sequential());
        let o = inspect(Path::new("/dev/tty")).unwrap();
        assert!(matches!(o.kind, OutputKind::CharDevice));
        // The memory devices keep nothing: refused, directly and through a symlink.
        let e = inspect(Path::new("/dev/null")).unwrap_err().to_string();
        assert!(
            e.starts_with("/dev/null keeps nothing written to it; refusing"),
            "{e}"
        );
        let null = p.join("null");
        symlink("/dev/null", &null).unwrap();
        let e = inspect(&null).unwrap_err().to_string();
        let want = format!("{} is /dev/null, which keeps nothing", null.display());
        assert!(e.starts_with(&want), "{e}");
        let e = inspect(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(
            e.starts_with("/dev/zero is a memory device (character device 1:5), not storage"),
            "{e}"
        );
        let e = inspect(Path::new("/dev/sparsebak-no-such-device"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is missing from /dev"), "{e}");
        // A folder under /dev that does not exist either, and /dev reached through `..`.
        for p in [
            "/dev/sparsebak-no-such-vg/lv",
            "/tmp/../dev/sparsebak-no-such-device",
        ] {
            let e = inspect(Path::new(p)).unwrap_err().to_string();
            assert!(e.contains("is missing from /dev"), "{p}: {e}");
        }
        let _sock = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
        let e = inspect(&p.join("sock")).unwrap_err().to_string();
        assert!(e.contains("is a socket"), "{e}");
    }

    #[test]
    fn outputs_inside_a_folder_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let arch = d.path().join("arch");
        std::fs::create_dir_all(arch.join("v/S_1")).unwrap();
        std::fs::write(arch.join("v/S_1/manifest"), b"m").unwrap();
        for inside in [
            arch.join("v/S_1/manifest"),
            arch.join("new.img"),
            d.path().join("arch/v/../v/S_1/x.img"),
        ] {
            let e = refuse_inside(&inspect(&inside).unwrap(), &arch, "the archive")
                .unwrap_err()
                .to_string();
            assert!(e.contains("is inside the archive"), "{e}");
        }
        // Through a symlink to a file in it.
        symlink(arch.join("v/S_1/manifest"), d.path().join("link")).unwrap();
        let o = inspect(&d.path().join("link")).unwrap();
        assert!(refuse_inside(&o, &arch, "the archive").is_err());
        // Beside it, and a folder whose name only starts like it, are fine.
        std::fs::create_dir(d.path().join("arch2")).unwrap();
        for outside in [d.path().join("out.img"), d.path().join("arch2/out.img")] {
            refuse_inside(&inspect(&outside).unwrap(), &arch, "the archive").unwrap();
        }
        // The input itself.
        let o = inspect(&arch.join("v/S_1/manifest")).unwrap();
        assert!(refuse_same_file(&o, &d.path().join("link")).is_err());
        refuse_same_file(&o, &d.path().join("out.img")).unwrap();
    }

    #[test]
    fn hard_linked_files_are_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), b"x").unwrap();
        std::fs::hard_link(d.path().join("a"), d.path().join("b")).unwrap();
        let e = inspect(&d.path().join("a")).unwrap_err().to_string();
        assert!(e.contains("has 2 hard links"), "{e}");
    }

    #[test]
    fn partial_file_keeps_mode_and_cleans_up() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("img");
        std::fs::write(&f, b"old").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        let o = inspect(&f).unwrap();
        // Dropped without commit: nothing changed, no temporary left.
        let p = PartialFile::create(&o).unwrap();
        let tmp = p.tmp_path().to_path_buf();
        assert_eq!(std::fs::metadata(&tmp).unwrap().mode() & 0o7777, 0o600);
        drop(p);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        let p = PartialFile::create(&o).unwrap();
        std::io::Write::write_all(&mut p.file(), b"new").unwrap();
        p.commit().unwrap();
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o7777, 0o640);
        assert!(!tmp.exists());
    }
}
