//! [`RemoteFs`]: the file operations of an archive folder ([`ArchiveFs`]) performed by
//! `sparsebak serve` on the far side, one request each ([`super::proto::freq`]). The
//! archive code (sealing, manifests, prune, verify) runs on this machine over it, so
//! the far side of an encrypted archive only ever sees sealed files and hidden names.
//!
//! Writes of chunk files (`write`, and `create` with its pieces) go out without waiting
//! for their answers, in the connection's bounded window; the first of them that
//! failed is the error of the next call that waits for an answer (any read, a sync,
//! a rename, a finish that syncs, a lock), named by the far path it failed on.

use std::any::Any;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use sparsebak_format::archive_fs::{ArchiveFs, Entry, FileWriter, LockMode, Meta};

use super::client::{Connection, FarError, RemoteError};
use super::fsserve::kind_of_code;
use super::proto::{freq, Dec, Enc, WireError, FS_PIECE};

/// The archive folder `root` of the far side of `conn`.
#[derive(Clone)]
pub struct RemoteFs {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Arc<Mutex<Connection>>,
    root: PathBuf,
    /// What names a far path in messages (`ssh://host`): the label without the folder.
    prefix: String,
    /// The first failure of a request that was not waited for, not reported yet.
    pending: Mutex<Option<io::Error>>,
    next_handle: AtomicU32,
}

impl std::fmt::Debug for RemoteFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteFs")
            .field("root", &self.inner.root)
            .field("prefix", &self.inner.prefix)
            .finish()
    }
}

fn link(e: RemoteError) -> io::Error {
    io::Error::other(e.to_string())
}

/// The `io::Error` of a failure the far side reported. When it is the answer of the
/// request waited for, an OS error is rebuilt as the same OS error a local call gives
/// (the caller names the path); a failure of an earlier request keeps the far side's
/// line, which names its path.
fn far_error(e: FarError, immediate: bool) -> io::Error {
    match e.io {
        Some((kind, errno))
            if immediate && errno != 0 && io::Error::from_raw_os_error(errno).kind() == kind =>
        {
            io::Error::from_raw_os_error(errno)
        }
        Some((kind, _)) => io::Error::new(kind, e.message),
        None if e.missing.is_some() => io::Error::new(io::ErrorKind::NotFound, e.message),
        None => io::Error::other(e.message),
    }
}

impl Inner {
    fn conn(&self) -> io::Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| io::Error::other("the connection's lock is poisoned"))
    }

    fn note(&self, e: io::Error) {
        if let Ok(mut p) = self.pending.lock() {
            p.get_or_insert(e);
        }
    }

    fn take_pending(&self) -> Option<io::Error> {
        self.pending.lock().ok().and_then(|mut p| p.take())
    }

    /// `path` relative to the archive folder, as the protocol carries it.
    fn rel(&self, path: &Path) -> io::Result<String> {
        let outside = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}{}: not a path inside the archive folder {}",
                    self.prefix,
                    path.display(),
                    self.root.display()
                ),
            )
        };
        let rest = path.strip_prefix(&self.root).map_err(|_| outside())?;
        let mut parts = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_str().ok_or_else(outside)?),
                Component::CurDir => {}
                _ => return Err(outside()),
            }
        }
        Ok(parts.join("/"))
    }

    /// Send `payload` without waiting for its answer; a failure of it or of an
    /// earlier one is reported by the next call that waits.
    fn post(&self, payload: &[u8]) -> io::Result<()> {
        let mut c = self.conn()?;
        c.send(payload).map_err(link)?;
        if let Some(f) = c.make_room_far().map_err(link)? {
            self.note(far_error(f, false));
        }
        Ok(())
    }

    /// Read every answer in flight: the first failure not reported yet.
    fn settle(&self, c: &mut Connection) -> io::Result<()> {
        if let Some(f) = c.drain().map_err(link)? {
            self.note(far_error(f, false));
        }
        match self.take_pending() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Read every answer in flight, keeping their first failure for a call that
    /// changes or syncs something: a look (metadata, a listing, a read) is often
    /// asked only to learn whether a file is there, its error taken for "no", and
    /// the failure of an earlier write must not be lost in it.
    fn drain(&self, c: &mut Connection) -> io::Result<()> {
        if let Some(f) = c.drain().map_err(link)? {
            self.note(far_error(f, false));
        }
        Ok(())
    }

    /// Send `payload` and wait for its answer (after those in flight).
    fn wait(&self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = self.conn()?;
        self.settle(&mut c)?;
        match c.call_far(payload).map_err(link)? {
            Ok(p) => Ok(p),
            Err(f) => Err(self.immediate(f)),
        }
    }

    /// [`Self::wait`] for a request that only looks: an earlier write's failure
    /// stays for the next call that changes something.
    fn look(&self, payload: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = self.conn()?;
        self.drain(&mut c)?;
        match c.call_far(payload).map_err(link)? {
            Ok(p) => Ok(p),
            Err(f) => Err(self.immediate(f)),
        }
    }

    fn look_decode<T>(
        &self,
        payload: &[u8],
        f: impl FnOnce(&mut Dec) -> Result<T, WireError>,
    ) -> io::Result<T> {
        let p = self.look(payload)?;
        let c = self.conn()?;
        c.decode(&p, f)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// The error of the request waited for: its caller names the path, so the far
    /// side's line loses its own naming of it.
    fn immediate(&self, mut f: FarError) -> io::Error {
        let root = self.root.display().to_string();
        if f.message.starts_with(&root) {
            if let Some(i) = f.message.find(": ") {
                f.message = f.message[i + 2..].to_string();
            }
        }
        far_error(f, true)
    }

    fn wait_decode<T>(
        &self,
        payload: &[u8],
        f: impl FnOnce(&mut Dec) -> Result<T, WireError>,
    ) -> io::Result<T> {
        let p = self.wait(payload)?;
        let c = self.conn()?;
        c.decode(&p, f)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
    }

    /// Read `len` bytes from `offset` in pieces, all asked at once; stops at the end
    /// of the file.
    fn read_at(&self, rel: &str, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let mut c = self.conn()?;
        self.drain(&mut c)?;
        let mut out = Vec::with_capacity(len.min(64 << 20));
        let mut asked = Vec::new();
        let mut at = 0usize;
        // At most the window's worth of pieces in flight: they go out, then come back.
        loop {
            asked.clear();
            while at < len && asked.len() < 16 {
                let n = (len - at).min(FS_PIECE);
                let mut e = Enc::new();
                e.u8(freq::READ_AT)
                    .str(rel)
                    .u64(offset + at as u64)
                    .u32(n as u32);
                c.send(&e.0).map_err(link)?;
                asked.push(n);
                at += n;
            }
            if asked.is_empty() {
                return Ok(out);
            }
            let mut short = false;
            let mut first_err = None;
            for &n in &asked {
                match c.finish_one().map_err(link)? {
                    Err(f) => {
                        first_err.get_or_insert(self.immediate(f));
                    }
                    Ok(p) => {
                        if short || first_err.is_some() {
                            continue;
                        }
                        let b = c.decode(&p, |d| Ok(d.bytes()?.to_vec())).map_err(|e| {
                            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
                        })?;
                        if b.len() > n {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                format!(
                                    "the far side answered a read of {n} bytes with {}",
                                    b.len()
                                ),
                            ));
                        }
                        short = b.len() < n;
                        out.extend_from_slice(&b);
                    }
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            if short {
                return Ok(out);
            }
        }
    }

    fn handle(&self) -> u32 {
        self.next_handle.fetch_add(1, Ordering::Relaxed)
    }
}

impl RemoteFs {
    /// The archive folder `root` (a path of the far side: the folder the hello of
    /// `conn` named) through `conn`.
    pub fn new(conn: Arc<Mutex<Connection>>, root: &Path) -> RemoteFs {
        let label = conn
            .lock()
            .map(|c| c.label().to_string())
            .unwrap_or_default();
        let prefix = label
            .strip_suffix(&root.display().to_string())
            .unwrap_or("")
            .to_string();
        RemoteFs {
            inner: Arc::new(Inner {
                conn,
                root: root.to_path_buf(),
                prefix,
                pending: Mutex::new(None),
                next_handle: AtomicU32::new(1),
            }),
        }
    }

    /// The connection.
    pub fn connection(&self) -> Arc<Mutex<Connection>> {
        self.inner.conn.clone()
    }

    fn one_path(&self, code: u8, path: &Path) -> io::Result<Vec<u8>> {
        let rel = self.inner.rel(path)?;
        self.inner.wait(&Enc::new().u8(code).str(&rel).0)
    }

    fn two_paths(&self, code: u8, from: &Path, to: &Path) -> io::Result<()> {
        let a = self.inner.rel(from)?;
        let b = self.inner.rel(to)?;
        self.inner.wait(&Enc::new().u8(code).str(&a).str(&b).0)?;
        Ok(())
    }
}

/// A sequential reader of a far file, a piece at a time.
struct RemoteReader {
    inner: Arc<Inner>,
    rel: String,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for RemoteReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.buf.len() && !self.done {
            self.buf = self.inner.read_at(&self.rel, self.offset, 4 * FS_PIECE)?;
            self.pos = 0;
            self.offset += self.buf.len() as u64;
            self.done = self.buf.len() < 4 * FS_PIECE;
        }
        let n = (self.buf.len() - self.pos).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A far file being written: its pieces go out without waiting.
struct RemoteWriter {
    inner: Arc<Inner>,
    handle: u32,
    buf: Vec<u8>,
    done: bool,
}

impl RemoteWriter {
    fn send_piece(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let mut e = Enc(Vec::with_capacity(self.buf.len() + 8));
        e.u8(freq::APPEND).u32(self.handle);
        e.0.extend_from_slice(&self.buf);
        self.buf.clear();
        self.inner.post(&e.0)
    }
}

impl Write for RemoteWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(FS_PIECE - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() >= FS_PIECE {
            self.send_piece()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send_piece()
    }
}

impl FileWriter for RemoteWriter {
    fn finish(mut self: Box<Self>, sync: bool) -> io::Result<()> {
        self.send_piece()?;
        self.done = true;
        let mut e = Enc::new();
        e.u8(freq::FINISH).u32(self.handle).bool(sync);
        if sync {
            self.inner.wait(&e.0).map(|_| ())
        } else {
            self.inner.post(&e.0)
        }
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.send_piece();
            let _ = self
                .inner
                .post(&Enc::new().u8(freq::CLOSE).u32(self.handle).0);
        }
    }
}

/// A lock held by the far side until this is dropped (or the link goes).
struct RemoteLock {
    inner: Arc<Inner>,
    handle: u32,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        let p = Enc::new().u8(freq::UNLOCK).u32(self.handle).0.clone();
        if let Ok(mut c) = self.inner.conn() {
            if let Err(e) = c.send(&p) {
                tracing::debug!("releasing a far lock: {e}");
                return;
            }
            match c.make_room_far() {
                Ok(Some(f)) => self.inner.note(far_error(f, false)),
                Ok(None) => {}
                Err(e) => tracing::debug!("releasing a far lock: {e}"),
            }
        }
    }
}

impl ArchiveFs for RemoteFs {
    fn display(&self, path: &Path) -> String {
        format!("{}{}", self.inner.prefix, path.display())
    }

    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        let rel = self.inner.rel(path)?;
        self.inner
            .look_decode(&Enc::new().u8(freq::METADATA).str(&rel).0, |d| {
                Ok(Meta {
                    kind: kind_of_code(d.u8()?)?,
                    len: d.u64()?,
                    mtime: d.u64()? as i64,
                })
            })
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        let rel = self.inner.rel(path)?;
        let mut out: Vec<Entry> = Vec::new();
        loop {
            let mut e = Enc::new();
            e.u8(freq::READ_DIR)
                .str(&rel)
                .opt_str(out.last().map(|x| x.name.as_str()));
            let (page, more) = self.inner.look_decode(&e.0, |d| {
                let n = d.u32()? as usize;
                // Each entry takes at least 13 bytes: the count is bounded by the frame.
                let mut v = Vec::with_capacity(n.min(d.rest_len() / 13));
                for _ in 0..n {
                    v.push(Entry {
                        name: d.str()?,
                        kind: kind_of_code(d.u8()?)?,
                        len: d.u64()?,
                    });
                }
                Ok((v, d.bool()?))
            })?;
            let progress = page.last().map(|l| l.name.clone());
            if let (Some(p), Some(last)) = (&progress, out.last()) {
                if p.as_str() <= last.name.as_str() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: the far side listed out of order", self.display(path)),
                    ));
                }
            }
            out.extend(page);
            if !more || progress.is_none() {
                return Ok(out);
            }
        }
    }

    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        let rel = self.inner.rel(path)?;
        let (len, first) = self
            .inner
            .look_decode(&Enc::new().u8(freq::READ).str(&rel).u64(max).0, |d| {
                Ok((d.u64()?, d.bytes()?.to_vec()))
            })?;
        let too_long = |n: u64| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{n} bytes, above the limit of {max}"),
            )
        };
        if len > max {
            return Err(too_long(len));
        }
        if first.len() as u64 > len || first.len() > FS_PIECE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the far side sent more than the file holds",
                    self.display(path)
                ),
            ));
        }
        if first.len() as u64 == len {
            return Ok(first);
        }
        // The rest in pieces, and one byte more: a file that grew is refused as a
        // local read refuses it.
        let mut all = first;
        let want = (len - all.len() as u64).min(max - all.len() as u64) as usize;
        let rest = self.inner.read_at(&rel, all.len() as u64, want + 1)?;
        all.extend_from_slice(&rest);
        if all.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("grew above the limit of {max} bytes while read"),
            ));
        }
        Ok(all)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let rel = self.inner.rel(path)?;
        self.inner.read_at(&rel, offset, len)
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + Send>> {
        let rel = self.inner.rel(path)?;
        // It must exist now, as a local open says.
        let m = self.metadata(path)?;
        if m.kind != sparsebak_format::archive_fs::Kind::File {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a file", self.display(path)),
            ));
        }
        Ok(Box::new(RemoteReader {
            inner: self.inner.clone(),
            rel,
            offset: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }))
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if data.len() <= FS_PIECE {
            let rel = self.inner.rel(path)?;
            let mut e = Enc(Vec::with_capacity(data.len() + rel.len() + 16));
            e.u8(freq::WRITE).str(&rel).bytes(data);
            return self.inner.post(&e.0);
        }
        let mut w = self.create(path)?;
        w.write_all(data)?;
        w.finish(false)
    }

    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if data.len() > FS_PIECE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: a new file of {} bytes, above the {FS_PIECE} one request carries",
                    self.display(path),
                    data.len()
                ),
            ));
        }
        let rel = self.inner.rel(path)?;
        self.inner
            .wait(&Enc::new().u8(freq::WRITE_NEW).str(&rel).bytes(data).0)?;
        Ok(())
    }

    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        if data.len() <= FS_PIECE {
            let rel = self.inner.rel(path)?;
            self.inner
                .wait(&Enc::new().u8(freq::WRITE_ATOMIC).str(&rel).bytes(data).0)?;
            return Ok(());
        }
        // Too large for one request: the same steps, each its own.
        let name = path
            .file_name()
            .ok_or_else(|| io::Error::other("write_atomic: the path has no file name"))?;
        let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
        let mut w = self.create(&tmp)?;
        w.write_all(data)?;
        w.finish(true)?;
        self.rename(&tmp, path)?;
        match path.parent() {
            Some(p) => self.sync_dir(p),
            None => Ok(()),
        }
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        let rel = self.inner.rel(path)?;
        let handle = self.inner.handle();
        self.inner
            .post(&Enc::new().u8(freq::CREATE).str(&rel).u32(handle).0)?;
        Ok(Box::new(RemoteWriter {
            inner: self.inner.clone(),
            handle,
            buf: Vec::with_capacity(64 << 10),
            done: false,
        }))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::CREATE_DIR, path).map(|_| ())
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::CREATE_DIR_ALL, path).map(|_| ())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.two_paths(freq::RENAME, from, to)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.two_paths(freq::RENAME_NOREPLACE, from, to)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.two_paths(freq::HARD_LINK, from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::REMOVE_FILE, path).map(|_| ())
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::REMOVE_DIR, path).map(|_| ())
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::REMOVE_DIR_ALL, path).map(|_| ())
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::SYNC_FILE, path).map(|_| ())
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::SYNC_DIR, path).map(|_| ())
    }
    fn syncfs(&self, path: &Path) -> io::Result<()> {
        self.one_path(freq::SYNCFS, path).map(|_| ())
    }

    fn is_read_only(&self, path: &Path) -> bool {
        let Ok(rel) = self.inner.rel(path) else {
            return false;
        };
        self.inner
            .look_decode(&Enc::new().u8(freq::IS_READ_ONLY).str(&rel).0, |d| d.bool())
            .unwrap_or(false)
    }

    fn room(&self, path: &Path) -> Option<[u64; 3]> {
        let rel = self.inner.rel(path).ok()?;
        // A far side of an older version does not know the request: unknown.
        self.inner
            .look_decode(&Enc::new().u8(freq::ROOM).str(&rel).0, |d| {
                Ok([d.u64()?, d.u64()?, d.u64()?])
            })
            .ok()
    }

    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn Any + Send + Sync>>> {
        let rel = self.inner.rel(path)?;
        let handle = self.inner.handle();
        let mut e = Enc::new();
        e.u8(freq::LOCK)
            .str(&rel)
            .u32(handle)
            .bool(mode == LockMode::Exclusive);
        let held = self.inner.wait_decode(&e.0, |d| d.bool())?;
        Ok(held.then(|| {
            Box::new(RemoteLock {
                inner: self.inner.clone(),
                handle,
            }) as Box<dyn Any + Send + Sync>
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsebak_format::archive_fs::{Kind, LocalFs};
    use std::os::unix::fs::PermissionsExt;

    /// `sparsebak serve` of `root` in a thread, joined to a connection by pipes.
    pub(crate) fn served(root: &Path, writing: bool) -> (Arc<Mutex<Connection>>, RemoteFs) {
        let (c2s_r, c2s_w) = std::io::pipe().unwrap();
        let (s2c_r, s2c_w) = std::io::pipe().unwrap();
        let r = root.to_path_buf();
        std::thread::spawn(move || {
            let _ = crate::remote::serve::serve(&r, c2s_r, s2c_w);
        });
        let conn = Connection::over(
            &format!("pipe:{}", root.display()),
            Box::new(s2c_r),
            Box::new(c2s_w),
            root,
            writing,
        )
        .unwrap();
        let conn = Arc::new(Mutex::new(conn));
        let fs = RemoteFs::new(conn.clone(), root);
        (conn, fs)
    }

    fn kind<T: std::fmt::Debug>(r: io::Result<T>) -> io::ErrorKind {
        r.unwrap_err().kind()
    }

    fn names(fs: &dyn ArchiveFs, dir: &Path) -> Vec<(String, Kind, u64)> {
        let mut v: Vec<_> = fs
            .read_dir(dir)
            .unwrap()
            .into_iter()
            .map(|e| (e.name, e.kind, if e.kind == Kind::File { e.len } else { 0 }))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The same calls, the same results, whichever implementation runs them.
    fn conformance(fs: &dyn ArchiveFs, root: &Path) {
        use io::ErrorKind::*;
        let a = root.join("a");
        let f = a.join("f");
        let none = root.join("none");
        fs.create_dir_all(&a.join("b")).unwrap();
        fs.create_dir_all(&a.join("b")).unwrap();
        assert_eq!(kind(fs.create_dir(&a)), AlreadyExists);
        fs.write(&f, b"hello").unwrap();
        let m = fs.metadata(&f).unwrap();
        assert_eq!((m.kind, m.len), (Kind::File, 5));
        assert_eq!(fs.metadata(&a).unwrap().kind, Kind::Dir);
        assert_eq!(kind(fs.metadata(&none)), NotFound);
        assert_eq!(fs.read(&f, 5).unwrap(), b"hello");
        assert_eq!(kind(fs.read(&f, 4)), InvalidData);
        assert_eq!(kind(fs.read(&none, 9)), NotFound);
        assert_eq!(fs.read_at(&f, 1, 3).unwrap(), b"ell");
        assert_eq!(fs.read_at(&f, 3, 10).unwrap(), b"lo");
        assert_eq!(fs.read_at(&f, 10, 5).unwrap(), b"");
        assert_eq!(kind(fs.read_at(&none, 0, 1)), NotFound);
        let mut s = Vec::new();
        fs.open(&f).unwrap().read_to_end(&mut s).unwrap();
        assert_eq!(s, b"hello");
        assert_eq!(kind(fs.open(&none).map(|_| ())), NotFound);

        // A file of several protocol pieces, written in pieces and read back whole,
        // in part and as a stream.
        let big: Vec<u8> = (0..(3 * FS_PIECE + FS_PIECE / 2))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let bp = a.join("big");
        let mut w = fs.create(&bp).unwrap();
        for piece in big.chunks(100_000) {
            w.write_all(piece).unwrap();
        }
        w.finish(true).unwrap();
        assert_eq!(fs.read(&bp, big.len() as u64).unwrap(), big);
        assert_eq!(kind(fs.read(&bp, big.len() as u64 - 1)), InvalidData);
        let off = FS_PIECE - 3;
        assert_eq!(
            fs.read_at(&bp, off as u64, 2 * FS_PIECE + 7).unwrap(),
            &big[off..off + 2 * FS_PIECE + 7]
        );
        let mut s = Vec::new();
        fs.open(&bp).unwrap().read_to_end(&mut s).unwrap();
        assert_eq!(s, big);
        fs.write(&a.join("big2"), &big).unwrap();
        assert_eq!(fs.read(&a.join("big2"), u64::MAX).unwrap(), big);

        let k = root.join("k");
        fs.write_new(&k, b"key").unwrap();
        assert_eq!(kind(fs.write_new(&k, b"again")), AlreadyExists);
        assert_eq!(fs.read(&k, 9).unwrap(), b"key");
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let m = root.join("m");
        fs.write_atomic(&m, b"one").unwrap();
        fs.write_atomic(&m, b"two").unwrap();
        assert_eq!(fs.read(&m, 9).unwrap(), b"two");
        fs.write_atomic(&m, &big).unwrap();
        assert_eq!(fs.read(&m, u64::MAX).unwrap(), big);
        assert_eq!(
            names(fs, root),
            vec![
                ("a".into(), Kind::Dir, 0),
                ("k".into(), Kind::File, 3),
                ("m".into(), Kind::File, big.len() as u64),
            ]
        );

        let g = a.join("g");
        fs.rename(&f, &g).unwrap();
        assert_eq!(kind(fs.rename(&f, &g)), NotFound);
        assert_eq!(kind(fs.rename_noreplace(&g, &k)), AlreadyExists);
        assert_eq!(fs.read(&k, 9).unwrap(), b"key", "untouched");
        fs.rename_noreplace(&g, &a.join("h")).unwrap();
        fs.hard_link(&a.join("h"), &a.join("i")).unwrap();
        assert_eq!(
            kind(fs.hard_link(&a.join("h"), &a.join("i"))),
            AlreadyExists
        );
        assert_eq!(
            names(fs, &a),
            vec![
                ("b".into(), Kind::Dir, 0),
                ("big".into(), Kind::File, big.len() as u64),
                ("big2".into(), Kind::File, big.len() as u64),
                ("h".into(), Kind::File, 5),
                ("i".into(), Kind::File, 5),
            ]
        );
        assert_eq!(kind(fs.read_dir(&none)), NotFound);
        assert_eq!(kind(fs.remove_file(&none)), NotFound);
        assert_eq!(kind(fs.remove_dir(&a)), DirectoryNotEmpty);
        fs.remove_dir(&a.join("b")).unwrap();
        fs.sync_file(&m).unwrap();
        fs.sync_dir(root).unwrap();
        fs.syncfs(root).unwrap();
        assert_eq!(kind(fs.sync_file(&none)), NotFound);
        assert!(!fs.is_read_only(root));
        fs.remove_dir_all(&a).unwrap();
        assert_eq!(kind(fs.metadata(&a)), NotFound);

        // Locks: one exclusive holder, or shared ones.
        let l = root.join("lock");
        let x = fs.try_lock(&l, LockMode::Exclusive).unwrap().unwrap();
        assert!(fs.try_lock(&l, LockMode::Exclusive).unwrap().is_none());
        assert!(fs.try_lock(&l, LockMode::Shared).unwrap().is_none());
        drop(x);
        let s1 = fs.try_lock(&l, LockMode::Shared).unwrap().unwrap();
        let s2 = fs.try_lock(&l, LockMode::Shared).unwrap().unwrap();
        assert!(fs.try_lock(&l, LockMode::Exclusive).unwrap().is_none());
        drop((s1, s2));
        assert!(fs.try_lock(&l, LockMode::Exclusive).unwrap().is_some());

        // Many small files (more than one page of a listing).
        let c = root.join("c");
        fs.create_dir(&c).unwrap();
        for i in 0..17_000u32 {
            fs.write(&c.join(format!("{i:05}")), &i.to_le_bytes())
                .unwrap();
        }
        fs.sync_dir(&c).unwrap();
        let listed = names(fs, &c);
        assert_eq!(listed.len(), 17_000);
        assert_eq!(listed[16_999], ("16999".into(), Kind::File, 4));
        assert_eq!(
            fs.read(&c.join("12345"), 4).unwrap(),
            12345u32.to_le_bytes()
        );
    }

    #[test]
    fn local_and_remote_agree_on_every_operation() {
        let t = tempfile::tempdir().unwrap();
        let here = t.path().join("here");
        let there = t.path().join("there");
        std::fs::create_dir(&here).unwrap();
        std::fs::create_dir(&there).unwrap();
        conformance(&LocalFs, &here);
        let (_conn, fs) = served(&there, true);
        conformance(&fs, &there);
        assert_eq!(
            fs.display(&there.join("x")),
            format!("pipe:{}", there.join("x").display())
        );
    }

    #[test]
    fn a_write_that_failed_is_the_error_of_the_next_call_that_waits() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir(&root).unwrap();
        let (_conn, fs) = served(&root, true);
        // Not waited for: the far side's failure comes back later, once.
        fs.write(&root.join("nodir/x"), b"1").unwrap();
        fs.write(&root.join("y"), b"2").unwrap();
        let e = fs.sync_dir(&root).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert_eq!(
            e.to_string(),
            format!(
                "{}: No such file or directory (os error 2)",
                root.join("nodir/x").display()
            )
        );
        fs.sync_dir(&root).unwrap();
        assert_eq!(std::fs::read(root.join("y")).unwrap(), b"2");
        // A path that is not the archive's is refused here, before any request.
        let e = fs.metadata(Path::new("/etc/passwd")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e
            .to_string()
            .contains("not a path inside the archive folder"));
    }

    #[test]
    fn a_reading_connection_changes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("r");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("f"), "x").unwrap();
        std::fs::write(
            root.join(sparsebak_format::layout::ARCHIVE_MARKER),
            sparsebak_format::marker::ArchiveMarker::new("0b7e1c52-9f6a-4c1e-8d2b-3a4f5e6d7c8b")
                .to_text(),
        )
        .unwrap();
        let (_conn, fs) = served(&root, false);
        assert_eq!(fs.read(&root.join("f"), 1).unwrap(), b"x");
        for r in [
            fs.remove_file(&root.join("f")),
            fs.rename(&root.join("f"), &root.join("g")),
            fs.write_atomic(&root.join("f"), b"y"),
            fs.create_dir(&root.join("d")),
        ] {
            let e = r.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
            assert!(e.to_string().contains("said it would only read"), "{e}");
        }
        // A lock is not a change of the archive: a reader takes its shared one.
        assert!(fs
            .try_lock(&root.join("f"), LockMode::Shared)
            .unwrap()
            .is_some());
        assert_eq!(std::fs::read(root.join("f")).unwrap(), b"x");
    }
}
