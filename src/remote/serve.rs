//! `sparsebak serve ROOT`: the far side of a remote archive, on standard input and
//! output. It needs no config: the client names the archive folder in its hello, and
//! it must be ROOT or a folder inside it. Every volume name and session ID a request
//! carries is checked with the archive's own rules (no `/`, no `..`, no hidden
//! names) before it is joined to the folder, so no request reaches outside it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};

use sparsebak_format::crypto::keyfile::MAX_KEY_FILE;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::restore;
use sparsebak_format::volume::{Storage, VolumeArchive};

use super::fsserve::{FsFault, FsServer};
use super::proto::{self, dreq, freq, kind, req, Dec, Enc, Hello, WireError};
use super::wire;
use crate::destination::local::resume::{Journal, Kept};
use crate::destination::{DestLock, Destination, SessionKind, SessionSink};

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("the client's frames: {0}")]
    Wire(#[from] WireError),
}

/// Chunks of a READ_STORED request read together (in parallel) before their answers
/// are written: at most this many, and at most `SERVE_READ_BYTES` of chunk size (a
/// single chunk when chunks are larger), so what is held here stays bounded by bytes.
const SERVE_READ_GROUP: usize = 32;
const SERVE_READ_BYTES: u64 = 8 << 20;

/// Whether `dir` is `root` or below it, by its components alone (an absolute path
/// without `.` or `..`).
fn within(root: &Path, dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && dir.starts_with(root)
}

/// Whether `dir` resolves, symbolic links followed, to `root` or below it: a link
/// inside the served folder must not lead the client out of it. Either may not exist
/// yet (a first send makes them): then the nearest folder above that does is
/// resolved, and the rest of the path taken as written (it has no `..`).
fn resolves_within(root: &Path, dir: &Path) -> bool {
    match (resolved(root), resolved(dir)) {
        (Some(root), Some(dir)) => dir.starts_with(root),
        _ => false,
    }
}

/// `p` with its longest existing prefix resolved (symbolic links followed).
fn resolved(p: &Path) -> Option<PathBuf> {
    p.ancestors().find_map(|a| {
        let real = a.canonicalize().ok()?;
        let rest = p.strip_prefix(a).ok()?;
        Some(real.join(rest))
    })
}

fn check_volume(name: &str) -> Result<(), String> {
    match layout::volume_name_problem(name) {
        None => Ok(()),
        Some(why) => Err(format!("{name:?} is not a volume name: {why}")),
    }
}

fn check_session(id: &str) -> Result<(), String> {
    if layout::is_session_id(id) {
        Ok(())
    } else {
        Err(format!("{id:?} is not a session ID"))
    }
}

/// Whether request `p` leaves the archive as it is: the only requests a connection
/// whose hello said it will only read may make. Its locks are taken, so that no
/// writer changes what it reads; a fold only when it is a dry run.
fn reads_only(p: &[u8]) -> bool {
    let Some((&code, rest)) = p.split_first() else {
        return false;
    };
    match code {
        req::VOLUMES
        | req::EXISTS
        | req::SESSIONS
        | req::INFO
        | req::MANIFEST_LEN
        | req::MANIFEST_READ
        | req::READ_STORED
        | req::STORAGE
        | req::CHUNK_LOCATION
        | req::ARCHIVE
        | req::LOCK
        | req::UNLOCK
        | dreq::MARKER
        | dreq::KEY_FILE
        | dreq::INTERRUPTED_PRUNE
        | dreq::CHECK_REMOVAL
        | dreq::CHECK_STORED
        | dreq::VOLUME_IS_FREE => true,
        dreq::FOLD => {
            let mut d = Dec::new(rest);
            matches!((d.str(), d.str(), d.bool()), (Ok(_), Ok(_), Ok(true)))
        }
        _ => false,
    }
}

struct Server {
    /// Whether the client said in its hello that it will change the archive: if
    /// not, every request that would is refused.
    writing: bool,
    dest: Box<dyn Destination>,
    locks: HashMap<String, Option<DestLock>>,
    infos: HashMap<(String, String), SessionInfo>,
    /// The session being written, if any (one at a time per connection).
    sink: Option<Box<dyn SessionSink>>,
    /// The manifest being read in pieces: (volume, id, offset reached, reader).
    manifest: Option<(String, String, u64, Box<dyn BufRead + Send>)>,
    /// Volumes opened so far (a tar session's file and index stay open between
    /// batches of reads). Forgotten, with the infos, after any change.
    vols: HashMap<String, VolumeArchive>,
    /// The archive's folder.
    root: PathBuf,
    /// The journal of the folder session being written (see `resume`).
    journal: Option<Journal>,
    /// What a dropped link left of a session on the same base, offered to this one.
    kept: Option<Kept>,
    /// The file operations of an archive whose keys stay with the client.
    fs: FsServer,
}

type Answer = Result<Vec<u8>, Fault>;

/// Why a request failed, as the client is told.
#[derive(Debug)]
enum Fault {
    /// One line.
    Text(String),
    /// A file that is not there (`path`), and the line.
    Missing { path: String, message: String },
    /// A file operation's failure, with its kind.
    Io(FsFault),
}

impl Fault {
    fn write(&self, out: &mut impl Write) -> Result<(), WireError> {
        match self {
            Fault::Text(m) => proto::write_frame(out, kind::ERR, m.as_bytes()),
            Fault::Missing { path, message } => {
                proto::write_frame(out, kind::MISSING, &Enc::new().str(path).str(message).0)
            }
            Fault::Io(f) => proto::write_frame(out, kind::FS_ERR, &f.encode()),
        }
    }
}

trait ToFault {
    fn fault(self) -> Fault;
}

impl ToFault for Fault {
    fn fault(self) -> Fault {
        self
    }
}

impl ToFault for String {
    fn fault(self) -> Fault {
        Fault::Text(self)
    }
}

impl ToFault for &str {
    fn fault(self) -> Fault {
        Fault::Text(self.to_string())
    }
}

impl ToFault for sparsebak_format::FormatError {
    fn fault(self) -> Fault {
        match &self {
            sparsebak_format::FormatError::Io { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Fault::Missing {
                    path: path.display().to_string(),
                    message: self.to_string(),
                }
            }
            _ => Fault::Text(self.to_string()),
        }
    }
}

impl ToFault for crate::error::Error {
    fn fault(self) -> Fault {
        match self {
            crate::error::Error::Format(e) => e.fault(),
            crate::error::Error::Io { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Fault::Missing {
                    path: path.display().to_string(),
                    message: format!("{}: {source}", path.display()),
                }
            }
            e => Fault::Text(e.to_string()),
        }
    }
}

impl Server {
    fn vol(&mut self, name: &str) -> VolumeArchive {
        if let Some(v) = self.vols.get(name) {
            return v.clone();
        }
        let v = self.dest.volume(name);
        if self.vols.len() > 256 {
            self.vols.clear();
        }
        self.vols.insert(name.to_string(), v.clone());
        v
    }

    /// After a request that may change sessions: nothing cached is trusted.
    fn forget(&mut self) {
        self.vols.clear();
        self.infos.clear();
        self.manifest = None;
    }

    fn info(&mut self, vol: &str, id: &str) -> Result<SessionInfo, String> {
        let key = (vol.to_string(), id.to_string());
        if let Some(i) = self.infos.get(&key) {
            return Ok(i.clone());
        }
        let i = self.vol(vol).info(id).map_err(|e| e.to_string())?;
        if self.infos.len() > 4096 {
            self.infos.clear();
        }
        self.infos.insert(key, i.clone());
        Ok(i)
    }

    /// Up to `len` bytes of a manifest from `offset`. Pieces are asked in order, so
    /// the reader of the last one goes on where it stopped.
    fn manifest_piece(&mut self, vol: &str, id: &str, offset: u64, len: usize) -> Answer {
        let reuse =
            matches!(&self.manifest, Some((v, i, o, _)) if v == vol && i == id && *o <= offset);
        if !reuse {
            let r = self.vol(vol).manifest_bytes(id).map_err(ToFault::fault)?;
            self.manifest = Some((vol.to_string(), id.to_string(), 0, r));
        }
        let label = self.vol(vol).manifest_label(id);
        let Some((_, _, at, r)) = self.manifest.as_mut() else {
            return Err(Fault::Text("no manifest open".into()));
        };
        let io = |e: std::io::Error| Fault::Text(format!("{}: {e}", label.display()));
        std::io::copy(&mut r.take(offset - *at), &mut std::io::sink()).map_err(io)?;
        let mut buf = Vec::with_capacity(len.min(64 << 10));
        r.take(len as u64).read_to_end(&mut buf).map_err(io)?;
        *at = offset + buf.len() as u64;
        Ok(buf)
    }

    fn sink(&mut self) -> Result<&mut Box<dyn SessionSink>, String> {
        self.sink
            .as_mut()
            .ok_or_else(|| "no session is being written".to_string())
    }

    /// Answer one request; READ_STORED writes its own answers (one per address).
    fn handle(&mut self, p: &[u8], out: &mut impl Write) -> Result<Option<Answer>, WireError> {
        if let Some(&code) = p.first().filter(|c| freq::is_fs(**c)) {
            let mut d = Dec::new(&p[1..]);
            return Ok(Some(self.fs.handle(code, &mut d)?.map_err(Fault::Io)));
        }
        if !self.writing && !reads_only(p) {
            return Ok(Some(Err(Fault::Text(format!(
                "{}: refusing request {}: it changes the archive, and the command said it would \
                 only read (what an interrupted run left is finished by one that writes: send, prune)",
                self.root.display(),
                p.first().copied().unwrap_or(0)
            )))));
        }
        let changes = !matches!(
            p.first().copied(),
            Some(
                req::VOLUMES
                    | req::EXISTS
                    | req::SESSIONS
                    | req::INFO
                    | req::MANIFEST_LEN
                    | req::MANIFEST_READ
                    | req::READ_STORED
                    | req::STORAGE
                    | req::CHUNK_LOCATION
                    | req::ARCHIVE
                    | dreq::MARKER
                    | dreq::PUT_CHUNK
                    | dreq::PUT_ZERO
                    | dreq::ADOPT
                    | dreq::RESUME_OFFERS
                    | dreq::KEY_FILE
            )
        );
        if changes {
            self.forget();
        }
        self.dispatch(p, out)
    }

    fn dispatch(&mut self, p: &[u8], out: &mut impl Write) -> Result<Option<Answer>, WireError> {
        let mut d = Dec::new(p);
        let code = d.u8()?;
        let mut e = Enc::new();
        let vol = |d: &mut Dec| -> Result<Result<String, String>, WireError> {
            let v = d.str()?;
            Ok(check_volume(&v).map(|_| v))
        };
        let vol_id = |d: &mut Dec| -> Result<Result<(String, String), String>, WireError> {
            let v = d.str()?;
            let id = d.str()?;
            Ok(check_volume(&v)
                .and_then(|_| check_session(&id))
                .map(|_| (v, id)))
        };
        macro_rules! tri {
            ($x:expr) => {
                match $x {
                    Ok(v) => v,
                    Err(m) => return Ok(Some(Err(ToFault::fault(m)))),
                }
            };
        }
        let label = PathBuf::from(self.dest.label());
        match code {
            req::VOLUMES => {
                d.end()?;
                e.strs(&tri!(self.dest.volumes()));
            }
            req::EXISTS => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.bool(self.vol(&v).exists());
            }
            req::SESSIONS => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.strs(&tri!(self.vol(&v).sessions()));
            }
            req::INFO => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.bytes(&tri!(self.vol(&v).info_bytes(&id)));
            }
            req::MANIFEST_LEN => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.u64(tri!(self.vol(&v).manifest_len(&id)));
            }
            req::MANIFEST_READ => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let offset = d.u64()?;
                let len = d.u32()?.min(proto::MANIFEST_PIECE) as usize;
                d.end()?;
                e.bytes(&tri!(self.manifest_piece(&v, &id, offset, len)));
            }
            req::READ_STORED => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let addrs = d.u64s()?;
                d.end()?;
                let info = self.info(&v, &id);
                let vol = self.vol(&v);
                match &info {
                    Ok(i) => {
                        // Read in groups on the reader threads (several reads in
                        // flight on a cold cache), each group's answers written
                        // before the next is read: the first bytes leave early and
                        // no more than a group is held here.
                        let group_len = ((SERVE_READ_BYTES / i.chunksize.max(1)) as usize)
                            .clamp(1, SERVE_READ_GROUP);
                        for group in addrs.chunks(group_len) {
                            let got = restore::with_readers(|| vol.read_stored_batch(i, group));
                            for r in got {
                                match r {
                                    Ok(b) => proto::write_frame(out, kind::OK, &b)?,
                                    Err(e) => e.fault().write(out)?,
                                }
                            }
                        }
                    }
                    Err(m) => {
                        for _ in &addrs {
                            proto::write_frame(out, kind::ERR, m.as_bytes())?;
                        }
                    }
                }
                return Ok(None);
            }
            req::STORAGE => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.u8(match self.vol(&v).storage(&id) {
                    Storage::Folder => 0,
                    Storage::Tar => 1,
                });
            }
            req::CHUNK_LOCATION => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let addr = d.u64()?;
                d.end()?;
                e.str(&self.vol(&v).chunk_location(&id, addr));
            }
            req::ARCHIVE | dreq::MARKER => {
                d.end()?;
                let m = tri!(self.dest.marker());
                if code == dreq::MARKER {
                    match m {
                        None => e.u8(0),
                        Some(m) => e
                            .u8(1)
                            .u32(m.format)
                            .opt_str(m.id.as_deref())
                            .opt_str(m.encryption.as_deref()),
                    };
                } else {
                    e.opt_str(m.and_then(|m| m.id).as_deref())
                        .bool(self.dest.read_only());
                }
            }
            req::LOCK => {
                let v = tri!(vol(&mut d)?);
                let mode = wire::get_mode(&mut d)?;
                d.end()?;
                let g = tri!(self.dest.lock_volume(&v, mode));
                e.bool(g.is_some());
                self.locks.insert(v, g);
            }
            req::UNLOCK => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                self.locks.remove(&v);
            }
            dreq::CREATE => {
                d.end()?;
                tri!(self.dest.create());
            }
            dreq::ADD_IDENTITY => {
                d.end()?;
                e.str(&tri!(self.dest.add_identity()));
            }
            dreq::BEGIN_SESSION => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let k = wire::get_kind(&mut d)?;
                let base = d.opt_str()?;
                let volsize = d.u64()?;
                d.end()?;
                if let Some(b) = &base {
                    tri!(check_session(b));
                }
                self.end_session();
                if let Some(old) = self.sink.take() {
                    tri!(old.abort());
                }
                self.sink = Some(tri!(self.dest.begin_session(
                    &v,
                    &id,
                    k,
                    base.as_deref(),
                    volsize
                )));
                // A folder session can be resumed by the next one if the link drops.
                if k == SessionKind::Folder {
                    let vol_dir = self.root.join(&v);
                    self.journal = Some(tri!(Journal::create(&vol_dir, &id, base.as_deref())));
                    self.kept = tri!(Kept::find(&vol_dir, base.as_deref()));
                }
                e.bool(self.kept.is_some());
            }
            dreq::RESUME_OFFERS => {
                let from = d.u64()?;
                let max = d.u32()?.min(proto::MAX_OFFERS) as usize;
                d.end()?;
                let (offers, more) = match self.kept.as_mut() {
                    Some(k) => k.offer(from, max),
                    None => (Vec::new(), false),
                };
                e.u32(offers.len() as u32);
                for (a, h) in &offers {
                    e.u64(*a).hash(h);
                }
                e.bool(more);
            }
            dreq::ADOPT => {
                let addr = d.u64()?;
                let hash = d.hash()?;
                d.end()?;
                let bytes = tri!(self
                    .kept
                    .as_mut()
                    .and_then(|k| k.take(addr, &hash))
                    .ok_or_else(|| format!(
                        "the chunk x{addr:016x} kept from an interrupted send changed since it was offered; send again"
                    )));
                tri!(tri!(self.sink()).put_chunk(addr, hash, &bytes));
                if let Some(j) = self.journal.as_mut() {
                    tri!(j.record(addr, &hash));
                }
            }
            dreq::PUT_CHUNK => {
                let addr = d.u64()?;
                let hash = d.hash()?;
                let payload = d.rest();
                tri!(tri!(self.sink()).put_chunk(addr, hash, payload));
                if let Some(j) = self.journal.as_mut() {
                    tri!(j.record(addr, &hash));
                }
            }
            dreq::PUT_ZERO => {
                let addr = d.u64()?;
                d.end()?;
                tri!(tri!(self.sink()).put_zero(addr));
            }
            dreq::PREPARE => {
                let n = wire::get_new_session(&mut d)?;
                d.end()?;
                let info = tri!(tri!(self.sink()).prepare(n));
                wire::put_info(&mut e, &info);
            }
            dreq::COMMIT => {
                d.end()?;
                let sink = tri!(self.sink.take().ok_or("no session is being written"));
                let info = tri!(sink.commit());
                if let Some(k) = self.kept.take() {
                    k.remove();
                }
                self.end_session();
                wire::put_info(&mut e, &info);
            }
            dreq::ABORT => {
                d.end()?;
                self.end_session();
                if let Some(s) = self.sink.take() {
                    tri!(s.abort());
                }
            }
            dreq::REMOVE_STAGING => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                tri!(self.dest.remove_staging(&v));
            }
            dreq::SWEEP_DEAD_RUNS => {
                d.end()?;
                self.dest.sweep_dead_runs();
            }
            dreq::INTERRUPTED_PRUNE => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                wire::put_opt_pair(&mut e, tri!(self.dest.interrupted_prune(&v)).as_ref());
            }
            dreq::RECOVER => {
                let v = tri!(vol(&mut d)?);
                let info = wire::get_opt_info(&mut d, &label)?;
                d.end()?;
                wire::put_opt_pair(&mut e, tri!(self.dest.recover(&v, info.as_ref())).as_ref());
            }
            dreq::CHECK_REMOVAL => {
                let v = tri!(vol(&mut d)?);
                let ids = d.strs()?;
                d.end()?;
                for id in &ids {
                    tri!(check_session(id));
                }
                tri!(self.dest.check_removal(&v, &ids));
            }
            dreq::FOLD => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let dry = d.bool()?;
                let info = wire::get_opt_info(&mut d, &label)?;
                d.end()?;
                let plan = tri!(self.dest.fold(&v, &id, dry, info.as_ref()));
                wire::put_plan(&mut e, &plan);
            }
            dreq::END_FOLD => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                tri!(self.dest.end_fold(&v));
            }
            dreq::CHECK_STORED => {
                let v = tri!(vol(&mut d)?);
                let info = wire::get_info(&mut d, &label)?;
                let bad_manifest = d.bool()?;
                d.end()?;
                tri!(check_session(&info.session));
                let c = tri!(self.dest.check_stored(&v, &info, bad_manifest));
                e.strs(&c.problems)
                    .u64s(&c.missing)
                    .bool(c.bad_manifest)
                    .bool(c.unlisted);
            }
            dreq::UNTAR => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.bool(tri!(self.dest.untar(&v, &id)));
            }
            dreq::DELETE_SESSIONS => {
                let v = tri!(vol(&mut d)?);
                let ids = d.strs()?;
                d.end()?;
                for id in &ids {
                    tri!(check_session(id));
                }
                tri!(self.dest.delete_sessions(&v, &ids));
            }
            dreq::DELETE_VOLUME => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.bool(tri!(self.dest.delete_volume(&v)));
            }
            dreq::RENAME_VOLUME => {
                let old = tri!(vol(&mut d)?);
                let new = tri!(vol(&mut d)?);
                d.end()?;
                e.bool(tri!(self.dest.rename_volume(&old, &new)));
            }
            dreq::VOLUME_IS_FREE => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.bool(tri!(self.dest.volume_is_free(&v)));
            }
            dreq::PUT_SESSION_FILE => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let f = wire::get_file(&mut d)?;
                let bytes = d.bytes()?;
                d.end()?;
                tri!(self.dest.put_session_file(&v, &id, f, bytes));
            }
            dreq::KEY_FILE => {
                d.end()?;
                match tri!(self.dest.key_file()) {
                    None => e.bool(false),
                    Some(b) => e.bool(true).bytes(&b),
                };
            }
            dreq::PUT_KEY_FILE => {
                let bytes = d.bytes()?;
                d.end()?;
                if bytes.len() > MAX_KEY_FILE {
                    return Ok(Some(Err(Fault::Text(format!(
                        "a key file of {} bytes, above the limit of {MAX_KEY_FILE}",
                        bytes.len()
                    )))));
                }
                tri!(self.dest.put_key_file(bytes));
            }
            other => return Ok(Some(Err(Fault::Text(format!("unknown request {other}"))))),
        }
        Ok(Some(Ok(e.0)))
    }
}

impl Server {
    /// The session is over (or another begins): its journal and what it was offered
    /// are not needed any more.
    fn end_session(&mut self) {
        if let Some(j) = self.journal.take() {
            j.discard();
        }
        self.kept = None;
    }
}

impl Drop for Server {
    /// The client went away (or the link broke) in the middle of a session: nothing
    /// of it becomes visible. A folder session's chunks are kept, durable, for the
    /// next send on the same base to take over (see `resume`); else its staging goes.
    fn drop(&mut self) {
        let Some(s) = self.sink.take() else {
            return;
        };
        // What this session took over from an earlier kept folder is in its own now.
        if let Some(k) = self.kept.take() {
            k.remove();
        }
        // The work first, the words after: with the link gone, standard error may be
        // gone too, and writing to it may be the last thing this process does.
        match self.journal.take() {
            Some(j) => {
                let kept = j.keep();
                drop(s);
                match kept {
                    Ok(()) => tracing::warn!(
                        "the client went away while writing a session: its chunks are kept"
                    ),
                    Err(e) => tracing::warn!("keeping the chunks of a session given up: {e}"),
                }
            }
            None => {
                let r = s.abort();
                tracing::warn!("the client went away while writing a session: it is given up");
                if let Err(e) = r {
                    tracing::warn!("giving the session up: {e}");
                }
            }
        }
    }
}

/// The archive folder `dir` on this machine.
fn far_destination(dir: &Path) -> Box<dyn Destination> {
    Box::new(crate::destination::LocalDestination::new(dir))
}

/// Check the client's hello and open the archive it names.
fn accept(root: &Path, h: &Hello) -> Result<Box<dyn Destination>, String> {
    let dir = PathBuf::from(&h.destdir);
    if !within(root, &dir) {
        return Err(format!(
            "destdir {} is outside {}, the folder this server serves",
            dir.display(),
            root.display()
        ));
    }
    if !resolves_within(root, &dir) {
        return Err(format!(
            "destdir {} leads outside {}, the folder this server serves (through a symbolic link)",
            dir.display(),
            root.display()
        ));
    }
    if let Some(mp) = &h.destmountpoint {
        if !crate::config::is_mount_point(Path::new(mp)) {
            return Err(if h.writing {
                format!("destmountpoint {mp} is not a mounted filesystem; refusing to write the archive under it")
            } else {
                format!("destmountpoint {mp} is not a mounted filesystem: the archive's disk is not mounted there, so there is no archive to read")
            });
        }
    }
    if !dir.is_dir() && !h.writing {
        return Err(format!("destdir {}: no such folder", dir.display()));
    }
    let dest = far_destination(&dir);
    if !h.writing && dest.marker().map_err(|e| e.to_string())?.is_none() {
        return Err(format!("{}: no archive", dir.display()));
    }
    Ok(dest)
}

/// Serve one client on `input`/`output` until it closes the connection.
pub fn serve(root: &Path, input: impl Read, output: impl Write) -> Result<(), ServeError> {
    let mut input = BufReader::with_capacity(256 << 10, input);
    let mut out = BufWriter::with_capacity(256 << 10, output);
    let mine = Hello {
        protocol: proto::PROTOCOL_VERSION,
        program: proto::PROGRAM_VERSION.into(),
        destdir: String::new(),
        destmountpoint: None,
        writing: false,
    };
    proto::write_frame(&mut out, kind::HELLO, &mine.encode())?;
    out.flush().map_err(WireError::Io)?;
    let f = proto::read_frame(&mut input)?;
    if f.kind != kind::HELLO {
        return Err(WireError::Malformed(format!(
            "the first frame is of kind {}, not a hello",
            f.kind
        ))
        .into());
    }
    let (protocol, program) = Hello::decode_versions(&f.payload)?;
    let refuse = |out: &mut BufWriter<_>, m: String| -> ServeError {
        let _ = proto::write_frame(out, kind::FATAL, m.as_bytes());
        let _ = out.flush();
        ServeError::Refused(m)
    };
    if protocol != proto::PROTOCOL_VERSION {
        let m = proto::mismatch(
            (proto::PROTOCOL_VERSION, proto::PROGRAM_VERSION),
            (protocol, &program),
        );
        return Err(refuse(&mut out, m));
    }
    let hello = Hello::decode(&f.payload)?;
    let dest = match accept(root, &hello) {
        Ok(a) => a,
        Err(m) => return Err(refuse(&mut out, m)),
    };
    proto::write_frame(&mut out, kind::OK, &[])?;
    let mut server = Server {
        writing: hello.writing,
        dest,
        locks: HashMap::new(),
        infos: HashMap::new(),
        sink: None,
        manifest: None,
        vols: HashMap::new(),
        root: PathBuf::from(&hello.destdir),
        journal: None,
        kept: None,
        fs: FsServer::new(Path::new(&hello.destdir), hello.writing),
    };
    loop {
        // Answers go out when no request is waiting: many in flight cost one flush.
        if input.buffer().is_empty() {
            out.flush().map_err(WireError::Io)?;
        }
        let f = match proto::read_frame(&mut input) {
            Ok(f) => f,
            Err(WireError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        if f.kind != kind::REQUEST {
            return Err(WireError::Malformed(format!(
                "a frame of kind {} where a request belongs",
                f.kind
            ))
            .into());
        }
        match server.handle(&f.payload, &mut out)? {
            None => {}
            Some(Ok(p)) if p.len() + 1 > proto::max_frame() => Fault::Text(format!(
                "an answer of {} bytes, above the protocol's limit of {}",
                p.len(),
                proto::max_frame()
            ))
            .write(&mut out)?,
            Some(Ok(p)) => proto::write_frame(&mut out, kind::OK, &p)?,
            Some(Err(f)) => f.write(&mut out)?,
        }
    }
    out.flush().map_err(WireError::Io)?;
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_inside_the_root_are_served() {
        let r = Path::new("/backup");
        assert!(within(r, Path::new("/backup")));
        assert!(within(r, Path::new("/backup/a/b")));
        assert!(!within(r, Path::new("/backup/../etc")));
        assert!(!within(r, Path::new("/backupx")));
        assert!(!within(r, Path::new("backup")));
        assert!(
            within(r, Path::new("/backup/./a")),
            "the same folder as /backup/a"
        );
        assert!(check_volume("../x").is_err());
        assert!(check_volume(".lock").is_err());
        assert!(check_session("../../etc").is_err());
    }

    #[test]
    fn a_symbolic_link_in_the_root_does_not_lead_out_of_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backup");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("lnk")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("inner")).unwrap();
        assert!(resolves_within(&root, &root));
        assert!(resolves_within(&root, &root.join("sub")));
        assert!(resolves_within(&root, &root.join("inner")));
        assert!(resolves_within(&root, &root.join("new/not/yet")));
        assert!(!resolves_within(&root, &root.join("lnk")));
        assert!(!resolves_within(&root, &root.join("lnk/new")));
        // A root that does not exist yet (a first send makes it).
        assert!(resolves_within(&root.join("new"), &root.join("new/a")));
        // The whole hello is refused, naming the link's way out.
        let h = Hello {
            protocol: proto::PROTOCOL_VERSION,
            program: proto::PROGRAM_VERSION.into(),
            destdir: root.join("lnk").display().to_string(),
            destmountpoint: None,
            writing: true,
        };
        let e = accept(&root, &h).err().unwrap();
        assert!(e.contains("leads outside"), "{e}");
        assert!(!outside
            .join(sparsebak_format::layout::ARCHIVE_MARKER)
            .exists());
    }

    #[test]
    fn a_client_of_another_version_is_refused_naming_both() {
        let h = Hello {
            protocol: 99,
            program: "9.9.9".into(),
            destdir: "/".into(),
            destmountpoint: None,
            writing: false,
        };
        let mut input = Vec::new();
        proto::write_frame(&mut input, kind::HELLO, &h.encode()).unwrap();
        let mut output = Vec::new();
        let err = serve(Path::new("/"), &input[..], &mut output)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sparsebak 9.9.9 (protocol 99)"), "{err}");
        assert!(
            err.contains(&format!(
                "sparsebak {} (protocol {})",
                proto::PROGRAM_VERSION,
                proto::PROTOCOL_VERSION
            )),
            "{err}"
        );
        let mut r = &output[..];
        let hello = proto::read_frame(&mut r).unwrap();
        assert_eq!(
            Hello::decode(&hello.payload).unwrap().protocol,
            proto::PROTOCOL_VERSION
        );
        let fatal = proto::read_frame(&mut r).unwrap();
        assert_eq!(fatal.kind, kind::FATAL);
        assert_eq!(String::from_utf8(fatal.payload).unwrap(), err);
    }

    fn run(
        root: &Path,
        destdir: &str,
        requests: &[Vec<u8>],
    ) -> (Vec<proto::Frame>, Result<(), ServeError>) {
        run_as(root, destdir, false, requests)
    }

    fn run_as(
        root: &Path,
        destdir: &str,
        writing: bool,
        requests: &[Vec<u8>],
    ) -> (Vec<proto::Frame>, Result<(), ServeError>) {
        let h = Hello {
            protocol: proto::PROTOCOL_VERSION,
            program: proto::PROGRAM_VERSION.into(),
            destdir: destdir.into(),
            destmountpoint: None,
            writing,
        };
        let mut input = Vec::new();
        proto::write_frame(&mut input, kind::HELLO, &h.encode()).unwrap();
        for r in requests {
            proto::write_frame(&mut input, kind::REQUEST, r).unwrap();
        }
        let mut output = Vec::new();
        let res = serve(root, &input[..], &mut output);
        let mut frames = Vec::new();
        let mut r = &output[..];
        while let Ok(f) = proto::read_frame(&mut r) {
            frames.push(f);
        }
        (frames, res)
    }

    #[test]
    fn no_request_reaches_outside_the_archive() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backup");
        std::fs::create_dir_all(root.join("v")).unwrap();
        std::fs::write(
            root.join(layout::ARCHIVE_MARKER),
            sparsebak_format::marker::ArchiveMarker::new("0b7e1c52-9f6a-4c1e-8d2b-3a4f5e6d7c8b")
                .to_text(),
        )
        .unwrap();
        std::fs::write(t.path().join("secret"), "x").unwrap();
        let d = root.display().to_string();
        let reqs = vec![
            Enc::new().u8(req::SESSIONS).str("..").0.clone(),
            Enc::new()
                .u8(req::INFO)
                .str("v")
                .str("../../secret")
                .0
                .clone(),
            Enc::new()
                .u8(req::MANIFEST_READ)
                .str("v/../..")
                .str("20260101-000000")
                .u64(0)
                .u32(9)
                .0
                .clone(),
            Enc::new().u8(dreq::DELETE_VOLUME).str("/etc").0.clone(),
            Enc::new().u8(req::VOLUMES).0.clone(),
            Enc::new().u8(99).0.clone(),
        ];
        let (frames, res) = run_as(&root, &d, true, &reqs);
        res.unwrap();
        let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                kind::HELLO,
                kind::OK,
                kind::ERR,
                kind::ERR,
                kind::ERR,
                kind::ERR,
                kind::OK,
                kind::ERR
            ]
        );
        let text = |i: usize| String::from_utf8(frames[i].payload.clone()).unwrap();
        assert!(
            text(2).starts_with("\"..\" is not a volume name: it starts with '.'"),
            "{}",
            text(2)
        );
        assert_eq!(text(3), "\"../../secret\" is not a session ID");
        assert_eq!(text(4), "\"v/../..\" is not a volume name: it contains '/'");
        assert_eq!(text(5), "\"/etc\" is not a volume name: it contains '/'");
        let mut dec = Dec::new(&frames[6].payload);
        assert_eq!(dec.strs().unwrap(), vec!["v"]);
        assert_eq!(text(7), "unknown request 99");

        // A folder outside the served one is refused at the hello.
        let outside = t.path().display().to_string();
        let (frames, res) = run(&root, &outside, &[]);
        let m = format!("destdir {outside} is outside {d}, the folder this server serves");
        assert_eq!(res.unwrap_err().to_string(), m);
        assert_eq!(frames[1].kind, kind::FATAL);
        assert_eq!(String::from_utf8(frames[1].payload.clone()).unwrap(), m);
        let (_, res) = run(&root, &format!("{d}/../x"), &[]);
        assert!(res.unwrap_err().to_string().contains("is outside"));
    }

    #[test]
    fn the_key_file_is_read_and_replaced_whole_and_only_a_key_file() {
        use sparsebak_format::crypto::{KdfParams, KeyFile, MasterKey, Passphrase, KEY_FILE};
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backup");
        std::fs::create_dir_all(&root).unwrap();
        let id = "0b7e1c52-9f6a-4c1e-8d2b-3a4f5e6d7c8b";
        std::fs::write(
            root.join(layout::ARCHIVE_MARKER),
            sparsebak_format::marker::ArchiveMarker::new(id).to_text(),
        )
        .unwrap();
        let key = KeyFile::wrap(
            id,
            &MasterKey::from_bytes([1; 32]),
            &Passphrase::new("p".into()),
            KdfParams {
                m_kib: 8192,
                t: 1,
                p: 1,
            },
        )
        .unwrap()
        .render();
        let reqs = vec![
            Enc::new().u8(dreq::KEY_FILE).0.clone(),
            Enc::new()
                .u8(dreq::PUT_KEY_FILE)
                .bytes(b"not a key")
                .0
                .clone(),
            Enc::new()
                .u8(dreq::PUT_KEY_FILE)
                .bytes(&vec![b'x'; MAX_KEY_FILE + 1])
                .0
                .clone(),
            Enc::new()
                .u8(dreq::PUT_KEY_FILE)
                .bytes(key.as_bytes())
                .0
                .clone(),
            Enc::new().u8(dreq::KEY_FILE).0.clone(),
        ];
        let (frames, res) = run_as(&root, &root.display().to_string(), true, &reqs);
        res.unwrap();
        let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [
                kind::HELLO,
                kind::OK,
                kind::OK,
                kind::ERR,
                kind::ERR,
                kind::OK,
                kind::OK
            ]
        );
        let text = |i: usize| String::from_utf8(frames[i].payload.clone()).unwrap();
        assert_eq!(frames[2].payload, [0], "no key file yet");
        let path = root.join(KEY_FILE);
        assert_eq!(
            text(3),
            format!(
                "{}: refusing to install what is not a key file (key file: does not start with \
                 `sparsebak-key 1` (not a key file, or a newer one))",
                path.display()
            )
        );
        assert_eq!(text(4), "a key file of 4097 bytes, above the limit of 4096");
        let mut d = Dec::new(&frames[6].payload);
        assert!(d.bool().unwrap());
        assert_eq!(d.bytes().unwrap(), key.as_bytes());
        d.end().unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), key);
        // Nothing but the marker and the key file: no temporary file stays.
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [layout::ARCHIVE_MARKER, KEY_FILE]);
    }

    #[test]
    fn a_reading_connection_is_refused_every_change() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("backup");
        let sess = root.join("v").join("S_20260101-000000");
        std::fs::create_dir_all(&sess).unwrap();
        std::fs::create_dir_all(root.join("w")).unwrap();
        std::fs::write(sess.join("info"), "x").unwrap();
        std::fs::write(
            root.join(layout::ARCHIVE_MARKER),
            sparsebak_format::marker::ArchiveMarker::new("0b7e1c52-9f6a-4c1e-8d2b-3a4f5e6d7c8b")
                .to_text(),
        )
        .unwrap();
        let d = root.display().to_string();
        let id = "20260101-000000";
        let changing: Vec<Vec<u8>> = vec![
            Enc::new()
                .u8(dreq::DELETE_SESSIONS)
                .str("v")
                .strs(&[id])
                .0
                .clone(),
            Enc::new()
                .u8(dreq::RENAME_VOLUME)
                .str("v")
                .str("v2")
                .0
                .clone(),
            Enc::new().u8(dreq::DELETE_VOLUME).str("w").0.clone(),
            Enc::new().u8(dreq::PUT_KEY_FILE).bytes(b"k").0.clone(),
            Enc::new().u8(dreq::CREATE).0.clone(),
            Enc::new().u8(dreq::ADD_IDENTITY).0.clone(),
            Enc::new().u8(dreq::UNTAR).str("v").str(id).0.clone(),
            Enc::new().u8(dreq::REMOVE_STAGING).str("v").0.clone(),
            Enc::new().u8(dreq::SWEEP_DEAD_RUNS).0.clone(),
            Enc::new().u8(dreq::END_FOLD).str("v").0.clone(),
            Enc::new()
                .u8(dreq::FOLD)
                .str("v")
                .str(id)
                .bool(false)
                .u8(0)
                .0
                .clone(),
            Enc::new().u8(dreq::RECOVER).str("v").u8(0).0.clone(),
            Enc::new()
                .u8(dreq::BEGIN_SESSION)
                .str("v")
                .str("20260102-000000")
                .u8(0)
                .opt_str(None)
                .u64(1 << 20)
                .0
                .clone(),
        ];
        let (frames, res) = run(&root, &d, &changing);
        res.unwrap();
        assert_eq!(frames.len(), 2 + changing.len());
        for (f, r) in frames[2..].iter().zip(&changing) {
            assert_eq!(f.kind, kind::ERR);
            assert_eq!(
                String::from_utf8(f.payload.clone()).unwrap(),
                format!(
                    "{d}: refusing request {}: it changes the archive, and the command said it \
                     would only read (what an interrupted run left is finished by one that \
                     writes: send, prune)",
                    r[0]
                )
            );
        }
        // Nothing changed: the session, both volumes, no key file, no identity.
        let mut names: Vec<String> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [layout::ARCHIVE_MARKER, "v", "w"]);
        assert_eq!(std::fs::read(sess.join("info")).unwrap(), b"x");
        // Reading requests (a dry fold among them) are answered.
        let (frames, res) = run(
            &root,
            &d,
            &[
                Enc::new().u8(req::VOLUMES).0.clone(),
                Enc::new().u8(dreq::VOLUME_IS_FREE).str("w").0.clone(),
            ],
        );
        res.unwrap();
        let kinds: Vec<u8> = frames.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, [kind::HELLO, kind::OK, kind::OK, kind::OK]);
        // The same request on a writing connection is carried out.
        let (frames, res) = run_as(
            &root,
            &d,
            true,
            &[Enc::new().u8(dreq::DELETE_VOLUME).str("w").0.clone()],
        );
        res.unwrap();
        assert_eq!(frames[2].kind, kind::OK);
        assert!(!root.join("w").exists());
    }
}
