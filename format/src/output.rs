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
            let parent = match given.parent() {
                Some(p) if !p.as_os_str().is_empty() => p,
                _ => Path::new("."),
            };
            if std::fs::canonicalize(parent).is_ok_and(|p| p.starts_with("/dev")) {
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
/// or held open exclusively by another program, is refused before anything is written.
pub fn open_block_device(path: &Path) -> Result<File, OutputError> {
    OpenOptions::new()
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
            _ => io_at(path)(e),
        })
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
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_at(&tmp))?;
        // The umask may have taken bits from 0600, never added any; make it exact.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_at(&tmp))?;
        Ok(PartialFile {
            tmp,
            dest: dest.to_path_buf(),
            keep,
            file: Some(file),
        })
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
        let _sock = std::os::unix::net::UnixListener::bind(p.join("sock")).unwrap();
        let e = inspect(&p.join("sock")).unwrap_err().to_string();
        assert!(e.contains("is a socket"), "{e}");
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
