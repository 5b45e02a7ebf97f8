//! The far side of the file operations ([`super::proto::freq`]): each request's path,
//! relative to the archive folder the hello named, is confined to it before anything
//! is done: no absolute path, no `.`, `..` or empty component, and no symbolic link on
//! the way (each existing component is looked at with `lstat`, the last one included,
//! except for `METADATA`, which reports a link as what it is without following it).
//! A client that said in its hello that it will only read is refused every change.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sparsebak_format::archive_fs::{ArchiveFs, Entry, Kind, LocalFs, LockMode};

use super::proto::{self, freq, Dec, Enc, WireError};

/// A failed file operation, as the client is told: its kind, its errno (0: none) and
/// one line naming the path over here.
#[derive(Debug)]
pub struct FsFault {
    pub kind: io::ErrorKind,
    pub errno: i32,
    pub line: String,
}

impl FsFault {
    fn new(kind: io::ErrorKind, line: String) -> FsFault {
        FsFault {
            kind,
            errno: 0,
            line,
        }
    }

    fn io(path: &Path, e: io::Error) -> FsFault {
        FsFault {
            kind: e.kind(),
            errno: e.raw_os_error().unwrap_or(0),
            line: format!("{}: {e}", path.display()),
        }
    }

    /// The payload of its `FS_ERR` frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u8(proto::io_kind_code(self.kind))
            .u32(self.errno as u32)
            .str(self.line.lines().next().unwrap_or(""));
        e.0
    }
}

/// Entries of one READ_DIR answer at most (and at most [`proto::FS_PIECE`] bytes).
const DIR_PAGE: usize = 16384;

/// The served folder's file operations, with the files open for writing and the locks
/// held for the client.
pub struct FsServer {
    root: PathBuf,
    writing: bool,
    writers: HashMap<u32, (PathBuf, BufWriter<File>)>,
    locks: HashMap<u32, Box<dyn std::any::Any + Send + Sync>>,
    /// The last folder listed, sorted, for its next pages.
    listing: Option<(PathBuf, Vec<Entry>)>,
}

/// How the last component of a path is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Last {
    /// Refused when it is a symbolic link.
    NoLink,
    /// Looked at without following (`METADATA`).
    Lstat,
}

type FsAnswer = Result<Vec<u8>, FsFault>;

impl FsServer {
    pub fn new(root: &Path, writing: bool) -> FsServer {
        FsServer {
            root: root.to_path_buf(),
            writing,
            writers: HashMap::new(),
            locks: HashMap::new(),
            listing: None,
        }
    }

    /// `rel` below the served folder, or why not.
    fn resolve(&self, rel: &str, last: Last) -> Result<PathBuf, FsFault> {
        if rel.is_empty() {
            return Ok(self.root.clone());
        }
        let refuse = |why: &str| {
            FsFault::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{rel:?} is not a path inside the archive folder {}: {why}",
                    self.root.display()
                ),
            )
        };
        if rel.starts_with('/') {
            return Err(refuse("it is absolute"));
        }
        let parts: Vec<&str> = rel.split('/').collect();
        for c in &parts {
            match *c {
                "" => return Err(refuse("it has an empty component")),
                "." | ".." => return Err(refuse(&format!("it has a {c:?} component"))),
                c if c.contains('\0') => return Err(refuse("it holds a NUL byte")),
                _ => {}
            }
        }
        let mut p = self.root.clone();
        let n = parts.len();
        let mut gone = false;
        for (i, c) in parts.iter().enumerate() {
            p.push(c);
            if gone || (i + 1 == n && last == Last::Lstat) {
                continue;
            }
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(FsFault::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "{}: a symbolic link, refused (nothing of the archive is one, and \
                             none may lead out of {})",
                            p.display(),
                            self.root.display()
                        ),
                    ))
                }
                Ok(_) => {}
                // Nothing below a missing folder exists: the operation says so.
                Err(_) => gone = true,
            }
        }
        Ok(p)
    }

    fn check_writing(&self, p: &Path) -> Result<(), FsFault> {
        if self.writing {
            Ok(())
        } else {
            Err(FsFault::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{}: refusing to change it: the command said it would only read (what an \
                     interrupted run left is finished by one that writes: send, prune)",
                    p.display()
                ),
            ))
        }
    }

    /// Close what the client left open (the connection ended).
    pub fn end(&mut self) {
        self.writers.clear();
        self.locks.clear();
    }

    /// Answer file request `code` (its fields in `d`).
    pub fn handle(&mut self, code: u8, d: &mut Dec) -> Result<FsAnswer, WireError> {
        let fs = LocalFs;
        let mut e = Enc::new();
        macro_rules! tri {
            ($x:expr) => {
                match $x {
                    Ok(v) => v,
                    Err(f) => return Ok(Err(f)),
                }
            };
        }
        macro_rules! io {
            ($p:expr, $x:expr) => {
                tri!($x.map_err(|err| FsFault::io(&$p, err)))
            };
        }
        match code {
            freq::METADATA => {
                let p = tri!(self.resolve(&d.str()?, Last::Lstat));
                d.end()?;
                let m = io!(p, fs.metadata(&p));
                e.u8(kind_code(m.kind)).u64(m.len).u64(m.mtime as u64);
            }
            freq::READ_DIR => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let after = d.opt_str()?;
                d.end()?;
                let fresh = !matches!((&self.listing, &after), (Some((l, _)), Some(_)) if *l == p);
                if fresh {
                    let mut v = io!(p, fs.read_dir(&p));
                    v.sort_by(|a, b| a.name.cmp(&b.name));
                    self.listing = Some((p.clone(), v));
                }
                let Some((_, all)) = &self.listing else {
                    return Ok(Ok(Vec::new()));
                };
                let from = match &after {
                    None => 0,
                    Some(a) => all.partition_point(|x| x.name.as_str() <= a.as_str()),
                };
                let mut n = 0usize;
                let mut body = Enc::new();
                let mut i = from;
                while i < all.len() && n < DIR_PAGE && body.0.len() < proto::FS_PIECE {
                    let x = &all[i];
                    body.str(&x.name).u8(kind_code(x.kind)).u64(x.len);
                    n += 1;
                    i += 1;
                }
                e.u32(n as u32);
                e.0.extend_from_slice(&body.0);
                e.bool(i < all.len());
            }
            freq::READ => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let max = d.u64()?;
                d.end()?;
                let mut f = io!(p, sparsebak_format::archive_fs::open_read(&p));
                let len = io!(p, f.metadata()).len();
                if len > max {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: {len} bytes, above the limit of {max}", p.display()),
                    )));
                }
                let want = len.min(proto::FS_PIECE as u64);
                let mut buf = Vec::with_capacity(want as usize);
                io!(p, (&mut f).take(want).read_to_end(&mut buf));
                e.u64(len).bytes(&buf);
            }
            freq::READ_AT => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let offset = d.u64()?;
                let len = d.u32()? as usize;
                d.end()?;
                if len > proto::FS_PIECE {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{}: a read of {len} bytes, above the protocol's {}",
                            p.display(),
                            proto::FS_PIECE
                        ),
                    )));
                }
                e.bytes(&io!(p, fs.read_at(&p, offset, len)));
            }
            freq::WRITE | freq::WRITE_NEW | freq::WRITE_ATOMIC => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let data = d.bytes()?;
                d.end()?;
                tri!(self.check_writing(&p));
                match code {
                    freq::WRITE => io!(p, fs.write(&p, data)),
                    freq::WRITE_NEW => io!(p, fs.write_new(&p, data)),
                    _ => {
                        // Its temporary name is a sibling: no link may stand there.
                        if let Some(name) = p.file_name() {
                            let tmp = p.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
                            if std::fs::symlink_metadata(&tmp)
                                .is_ok_and(|m| m.file_type().is_symlink())
                            {
                                io!(tmp, std::fs::remove_file(&tmp));
                            }
                        }
                        io!(p, fs.write_atomic(&p, data))
                    }
                }
            }
            freq::CREATE => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let h = d.u32()?;
                d.end()?;
                tri!(self.check_writing(&p));
                if self.writers.contains_key(&h) {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: handle {h} is in use", p.display()),
                    )));
                }
                if self.writers.len() >= proto::FS_MAX_HANDLES {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::Other,
                        format!(
                            "{}: more than {} files open for writing",
                            p.display(),
                            proto::FS_MAX_HANDLES
                        ),
                    )));
                }
                let f = io!(p, File::create(&p));
                self.writers
                    .insert(h, (p, BufWriter::with_capacity(1 << 20, f)));
            }
            freq::APPEND => {
                let h = d.u32()?;
                let data = d.rest();
                let Some((p, w)) = self.writers.get_mut(&h) else {
                    return Ok(Err(no_handle(h)));
                };
                let p = p.clone();
                if let Err(err) = w.write_all(data) {
                    self.writers.remove(&h);
                    return Ok(Err(FsFault::io(&p, err)));
                }
            }
            freq::FINISH => {
                let h = d.u32()?;
                let sync = d.bool()?;
                d.end()?;
                let Some((p, w)) = self.writers.remove(&h) else {
                    return Ok(Err(no_handle(h)));
                };
                let f = io!(p, w.into_inner().map_err(|x| x.into_error()));
                if sync {
                    io!(p, f.sync_all());
                }
            }
            freq::CLOSE => {
                let h = d.u32()?;
                d.end()?;
                if let Some((_, w)) = self.writers.remove(&h) {
                    // What was written so far stays, as for a dropped local writer.
                    drop(w);
                }
            }
            freq::CREATE_DIR | freq::CREATE_DIR_ALL => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                if code == freq::CREATE_DIR_ALL && p.is_dir() {
                    // Nothing to change (a reader's lock folder that exists).
                } else {
                    tri!(self.check_writing(&p));
                    if code == freq::CREATE_DIR {
                        io!(p, fs.create_dir(&p));
                    } else {
                        io!(p, fs.create_dir_all(&p));
                    }
                }
            }
            freq::RENAME | freq::RENAME_NOREPLACE | freq::HARD_LINK => {
                let from = tri!(self.resolve(&d.str()?, Last::NoLink));
                let to = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                tri!(self.check_writing(&from));
                let r = match code {
                    freq::RENAME => fs.rename(&from, &to),
                    freq::RENAME_NOREPLACE => fs.rename_noreplace(&from, &to),
                    _ => fs.hard_link(&from, &to),
                };
                if let Err(err) = r {
                    let line = format!("{} -> {}: {err}", from.display(), to.display());
                    return Ok(Err(FsFault {
                        kind: err.kind(),
                        errno: err.raw_os_error().unwrap_or(0),
                        line,
                    }));
                }
            }
            freq::REMOVE_FILE | freq::REMOVE_DIR | freq::REMOVE_DIR_ALL => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                tri!(self.check_writing(&p));
                if p == self.root && code == freq::REMOVE_DIR_ALL {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::PermissionDenied,
                        format!("{}: refusing to remove the archive folder", p.display()),
                    )));
                }
                match code {
                    freq::REMOVE_FILE => io!(p, fs.remove_file(&p)),
                    freq::REMOVE_DIR => io!(p, fs.remove_dir(&p)),
                    _ => io!(p, fs.remove_dir_all(&p)),
                }
            }
            freq::SYNC_FILE | freq::SYNC_DIR | freq::SYNCFS => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                match code {
                    freq::SYNC_FILE => {
                        // A reader may not open for writing: fsync through a read handle.
                        io!(p, File::open(&p).and_then(|f| f.sync_all()))
                    }
                    freq::SYNC_DIR => io!(p, fs.sync_dir(&p)),
                    _ => io!(p, fs.syncfs(&p)),
                }
            }
            freq::IS_READ_ONLY => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                e.bool(fs.is_read_only(&p));
            }
            freq::ROOM => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                d.end()?;
                let Some(r) = crate::space::room(&p) else {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::Other,
                        format!("{}: the room of its filesystem is unknown", p.display()),
                    )));
                };
                e.u64(r.bytes_free).u64(r.inodes_free).u64(r.inodes);
            }
            freq::LOCK => {
                let p = tri!(self.resolve(&d.str()?, Last::NoLink));
                let h = d.u32()?;
                let mode = if d.bool()? {
                    LockMode::Exclusive
                } else {
                    LockMode::Shared
                };
                d.end()?;
                if self.locks.contains_key(&h) {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::AlreadyExists,
                        format!("{}: lock handle {h} is in use", p.display()),
                    )));
                }
                if self.locks.len() >= proto::FS_MAX_HANDLES {
                    return Ok(Err(FsFault::new(
                        io::ErrorKind::Other,
                        format!(
                            "{}: more than {} locks held",
                            p.display(),
                            proto::FS_MAX_HANDLES
                        ),
                    )));
                }
                match io!(p, fs.try_lock(&p, mode)) {
                    Some(g) => {
                        self.locks.insert(h, g);
                        e.bool(true);
                    }
                    None => {
                        e.bool(false);
                    }
                }
            }
            freq::UNLOCK => {
                let h = d.u32()?;
                d.end()?;
                self.locks.remove(&h);
            }
            c => {
                return Ok(Err(FsFault::new(
                    io::ErrorKind::Unsupported,
                    format!("unknown file request {c}"),
                )))
            }
        }
        Ok(Ok(e.0))
    }
}

fn no_handle(h: u32) -> FsFault {
    FsFault::new(
        io::ErrorKind::InvalidInput,
        format!("no file is open under handle {h}"),
    )
}

pub fn kind_code(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Other => 2,
    }
}

pub fn kind_of_code(c: u8) -> Result<Kind, WireError> {
    match c {
        0 => Ok(Kind::File),
        1 => Ok(Kind::Dir),
        2 => Ok(Kind::Other),
        b => Err(WireError::Malformed(format!("file kind {b}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(s: &mut FsServer, code: u8, f: impl FnOnce(&mut Enc)) -> FsAnswer {
        let mut e = Enc::new();
        f(&mut e);
        let mut d = Dec::new(&e.0);
        s.handle(code, &mut d).unwrap()
    }

    fn refused(r: FsAnswer) -> (io::ErrorKind, String) {
        let f = r.unwrap_err();
        (f.kind, f.line)
    }

    #[test]
    fn no_path_leads_out_of_the_served_folder() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("archive");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("v")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("secret"), "s").unwrap();
        std::fs::write(root.join("v/f"), "f").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("v/lnk")).unwrap();
        let listing = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        let mut s = FsServer::new(&root, true);
        use io::ErrorKind::*;
        let r = |p: &str| {
            let p = p.to_string();
            move |e: &mut Enc| {
                e.str(&p).u64(100);
            }
        };
        for (p, want) in [
            ("../outside/secret", "it has a \"..\" component"),
            ("v/../../outside/secret", "it has a \"..\" component"),
            ("/etc/passwd", "it is absolute"),
            ("v//f", "it has an empty component"),
            ("./v/f", "it has a \".\" component"),
            ("v/", "it has an empty component"),
        ] {
            let (k, line) = refused(ask(&mut s, freq::READ, r(p)));
            assert_eq!(k, InvalidInput, "{p}");
            assert_eq!(
                line,
                format!(
                    "{p:?} is not a path inside the archive folder {}: {want}",
                    root.display()
                )
            );
        }
        let link = |p: &str| {
            format!(
                "{}: a symbolic link, refused (nothing of the archive is one, and none may \
                 lead out of {})",
                root.join(p).display(),
                root.display()
            )
        };
        // Through a link, or at a link: refused, whatever the operation.
        assert_eq!(
            refused(ask(&mut s, freq::READ, r("out/secret"))),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::READ, r("v/lnk"))),
            (PermissionDenied, link("v/lnk"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::WRITE, |e| {
                e.str("out/new").bytes(b"x");
            })),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::REMOVE_FILE, |e| {
                e.str("v/lnk");
            })),
            (PermissionDenied, link("v/lnk"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::REMOVE_DIR_ALL, |e| {
                e.str("out");
            })),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::RENAME, |e| {
                e.str("v/f").str("out/f");
            })),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::RENAME, |e| {
                e.str("v/f").str("v/lnk");
            })),
            (PermissionDenied, link("v/lnk"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::LOCK, |e| {
                e.str("out/lock").u32(1).bool(true);
            })),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::CREATE_DIR_ALL, |e| {
                e.str("out/a/b");
            })),
            (PermissionDenied, link("out"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::CREATE, |e| {
                e.str("v/lnk").u32(1);
            })),
            (PermissionDenied, link("v/lnk"))
        );
        assert_eq!(
            refused(ask(&mut s, freq::READ_DIR, |e| {
                e.str("out").opt_str(None);
            })),
            (PermissionDenied, link("out"))
        );
        // A link is seen as what it is, never followed.
        let m = ask(&mut s, freq::METADATA, |e| {
            e.str("out");
        })
        .unwrap();
        assert_eq!(m[0], kind_code(Kind::Other));
        // The root itself cannot be removed; a missing file is said as missing.
        assert_eq!(
            refused(ask(&mut s, freq::REMOVE_DIR_ALL, |e| {
                e.str("");
            }))
            .0,
            PermissionDenied
        );
        let f = ask(&mut s, freq::READ, r("v/none")).unwrap_err();
        assert_eq!((f.kind, f.errno), (NotFound, libc::ENOENT));
        assert_eq!(
            f.line,
            format!(
                "{}: No such file or directory (os error 2)",
                root.join("v/none").display()
            )
        );
        // A read above its limit, and a piece above the protocol's.
        let f = ask(&mut s, freq::READ, |e| {
            e.str("v/f").u64(0);
        })
        .unwrap_err();
        assert_eq!(f.kind, InvalidData);
        let f = ask(&mut s, freq::READ_AT, |e| {
            e.str("v/f").u64(0).u32(proto::FS_PIECE as u32 + 1);
        })
        .unwrap_err();
        assert_eq!(f.kind, InvalidInput);

        // Nothing outside was touched, and the links are still there.
        assert_eq!(listing(&outside), vec!["secret"]);
        assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"s");
        assert_eq!(listing(&root), vec!["out", "v"]);
        assert_eq!(listing(&root.join("v")), vec!["f", "lnk"]);
        assert!(std::fs::symlink_metadata(root.join("v/lnk"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn open_files_and_locks_are_bounded_and_released() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        let mut s = FsServer::new(&root, true);
        for h in 0..proto::FS_MAX_HANDLES as u32 {
            ask(&mut s, freq::CREATE, |e| {
                e.str(&format!("f{h}")).u32(h);
            })
            .unwrap();
        }
        let f = ask(&mut s, freq::CREATE, |e| {
            e.str("one-more").u32(9999);
        })
        .unwrap_err();
        assert!(f.line.contains("more than 256 files open"), "{}", f.line);
        assert!(!root.join("one-more").exists());
        let f = ask(&mut s, freq::CREATE, |e| {
            e.str("again").u32(0);
        })
        .unwrap_err();
        assert_eq!(f.kind, io::ErrorKind::AlreadyExists);
        ask(&mut s, freq::APPEND, |e| {
            e.u32(3).0.extend_from_slice(b"abc");
        })
        .unwrap();
        ask(&mut s, freq::FINISH, |e| {
            e.u32(3).bool(true);
        })
        .unwrap();
        assert_eq!(std::fs::read(root.join("f3")).unwrap(), b"abc");
        let f = ask(&mut s, freq::APPEND, |e| {
            e.u32(3).0.extend_from_slice(b"more");
        })
        .unwrap_err();
        assert_eq!(f.line, "no file is open under handle 3");
        // A lock held by the server until UNLOCK, or until the connection ends.
        let lock = |s: &mut FsServer, h: u32| {
            ask(s, freq::LOCK, |e| {
                e.str("lock").u32(h).bool(true);
            })
            .unwrap()
        };
        assert_eq!(lock(&mut s, 1), [1]);
        assert_eq!(lock(&mut s, 2), [0]);
        ask(&mut s, freq::UNLOCK, |e| {
            e.u32(1);
        })
        .unwrap();
        assert_eq!(lock(&mut s, 3), [1]);
        s.end();
        let mut other = FsServer::new(&root, true);
        assert_eq!(lock(&mut other, 1), [1]);
    }
}
