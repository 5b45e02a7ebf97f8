//! The write and maintenance side of the destination seam: one archive root, wherever
//! it lives.
//!
//! A [`Destination`] is what every command needs of an archive beyond reading it: its
//! identity, the per-volume lock, writing a new session through a [`SessionSink`], and
//! the maintenance that must run on the machine that holds the files, because only
//! there is it atomic (the commit, the prune's fold and journal, untar, recovery of
//! interrupted runs, deleting and renaming volumes, the writes of `repair`). Reading a
//! volume goes through [`Destination::volume`], a
//! [`VolumeArchive`](sparsebak_format::volume::VolumeArchive) over the read side
//! ([`sparsebak_format::store::VolumeStore`]).
//!
//! Implementations: `local::LocalDestination` (an archive folder on this machine: the
//! only code that touches an archive's files), and a remote destination that maps
//! each method to one request to a `LocalDestination` run on the far side. So every
//! argument and result is plain data (names, IDs, plans, byte vectors): no closure,
//! and no path of the far side that the caller would then open.
//!
//! The source-side state (`<metadir>`: delta maps, copies of sessions, the pending
//! record, the catalog, the source lock) never goes through a destination.

use std::path::PathBuf;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::marker::ArchiveMarker;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::error::Result;
pub use crate::lock::Mode;

pub mod local;
#[cfg(any(test, feature = "testing"))]
pub mod memory;

pub use local::LocalDestination;

/// Why a run may not use the archive at `destdir`. Nothing was written when one of
/// these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("the archive at {path} is on a read-only filesystem; {action} needs to write to it (mount it read-write)")]
    ReadOnly { path: PathBuf, action: String },
    #[error("no archive at {path}, but this machine sends to archive {known} there: is its disk mounted? Nothing was written (if that archive is gone for good, `{accept}` starts a new one there)")]
    Missing {
        path: PathBuf,
        known: String,
        /// The command that accepts: `sparsebak send [--dest=NAME] --accept-archive`.
        accept: String,
    },
    #[error("no archive at {path}, but this machine has sent {volumes} to this destination: is its disk mounted (or did destdir change)? Nothing was written (to start a new archive there, `{accept}`)")]
    MissingSent {
        path: PathBuf,
        volumes: String,
        accept: String,
    },
    /// The destination cannot be reached now (a remote host not answering): `send
    /// --dest=all` skips it rather than failing.
    #[error("destination {dest} is not reachable: {reason}")]
    Unreachable { dest: String, reason: String },
    #[error("the archive at {path} is archive {found}, but this machine sends to archive {known} there: is another disk mounted? Nothing was written (to send to archive {found} from now on, `{accept}`)")]
    Different {
        path: PathBuf,
        known: String,
        found: String,
        accept: String,
    },
}

/// How a new session is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// A folder `S_<id>` with one file per chunk.
    Folder,
    /// One tar file `S_<id>.tar` (and its member index).
    Tar,
}

/// A held lock on a volume of a destination: released when dropped. For a remote
/// destination the far side holds the lock until this is dropped or the link goes.
pub struct DestLock {
    _held: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for DestLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DestLock")
    }
}

impl DestLock {
    /// A lock held for as long as `guard` lives.
    pub fn new(guard: impl std::any::Any + Send + Sync) -> DestLock {
        DestLock {
            _held: Box::new(guard),
        }
    }
}

/// What a new session's info says that the sink cannot know itself. The sink adds
/// what it counted (`changed`, `bytes_stored`) and the manifest's SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSession {
    pub volume: String,
    pub session: String,
    pub previous: Option<String>,
    /// When the session was taken: seconds since the epoch.
    pub time: i64,
    /// Bytes.
    pub volsize: u64,
    /// Bytes.
    pub chunksize: u64,
    pub compression: sparsebak_format::chunk::Codec,
    /// Non-zero chunks in the new session's view.
    pub chunks: u64,
    /// Bytes read from the volume.
    pub bytes_read: u64,
    /// The volume's id in an encrypted archive (see `SessionInfo::volume_id`).
    pub volume_id: Option<String>,
}

impl NewSession {
    /// The complete info, with what the sink counted.
    pub fn info(self, changed: u64, bytes_stored: u64, manifest_sha256: Hash) -> SessionInfo {
        SessionInfo {
            volume: self.volume,
            session: self.session,
            previous: self.previous,
            time: self.time,
            volsize: self.volsize,
            chunksize: self.chunksize,
            compression: self.compression,
            changed,
            chunks: self.chunks,
            bytes_read: self.bytes_read,
            bytes_stored,
            manifest_sha256,
            volume_id: self.volume_id,
        }
    }
}

/// Where the chunks of a new session go, in address order: an archive session
/// (folder or tar, local or remote) or a stream.
///
/// Life: `put_chunk`/`put_zero` for every changed chunk, then [`SessionSink::prepare`]
/// (everything durable, the session not yet visible), then [`SessionSink::commit`]
/// (it appears whole, in one step). Between the two the caller records on the source
/// side that the session is about to exist (the pending record), so a crash between
/// commit and the source's copies is caught up by the next run. Dropping or
/// [`SessionSink::abort`]ing a sink before `commit` leaves nothing visible.
///
/// A full filesystem is reported by the sink itself, with what the session needed
/// (see `crate::space`), since only the machine holding the files can measure it.
pub trait SessionSink: Send {
    /// Store a data chunk: `addr` its byte offset in the volume (a multiple of the
    /// chunk size), `hash` the SHA-256 of its plain bytes, `payload` its encoded
    /// bytes (at most what [`sparsebak_format::limits::max_stored`] allows).
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()>;
    /// Record that the chunk at `addr` became all zero.
    fn put_zero(&mut self, addr: u64) -> Result<()>;
    /// Manifest lines so far.
    fn changed(&self) -> u64;
    /// Bytes of encoded chunk data stored so far.
    fn bytes_stored(&self) -> u64;
    /// Finish the manifest and write the info `fields` make with what the sink
    /// counted; make everything durable. The session is not visible yet. Returns its
    /// info exactly as stored.
    fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo>;
    /// Make the prepared session visible, in one atomic step. Fails if
    /// [`SessionSink::prepare`] did not run.
    fn commit(self: Box<Self>) -> Result<SessionInfo>;
    /// Give the session up: nothing of it stays visible, its staging goes.
    fn abort(self: Box<Self>) -> Result<()>;
}

/// What folding one session into its successor did (or, dry, would do): prune.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FoldPlan {
    /// The session removed.
    pub removed: String,
    /// The session it folds into.
    pub into: String,
    /// Chunk files that move from the removed session into its successor.
    pub moved: u64,
    /// Chunk files deleted.
    pub deleted: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// What the fold needs and cannot find (the first few named).
    pub missing: Vec<String>,
    /// How many needed things are missing in all.
    pub missing_count: u64,
}

/// What checking the stored chunks of one session against its manifest found
/// (`verify`): [`Destination::check_stored`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SessionCheck {
    /// Each problem found, one line (missing and extra files, manifest lines that
    /// are not chunks of the volume, a line count that differs from the info's).
    pub problems: Vec<String>,
    /// Addresses of the manifest's data lines whose chunk is not stored, ascending.
    pub missing: Vec<u64>,
    /// The manifest turned out damaged (or was known to be): nothing read from it is
    /// reported again.
    pub bad_manifest: bool,
    /// The stored chunks could not be listed (said in `problems`): none counts as
    /// stored.
    pub unlisted: bool,
}

/// A problem of session `id`: `e` is said after the session's name unless it already
/// names the session's folder or tar.
pub fn session_problem(id: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.contains(&sparsebak_format::layout::session_dir_name(id)) {
        e
    } else {
        format!("session {id}: {e}")
    }
}

/// A file of a session that `repair` can put back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFile {
    Info,
    Manifest,
    /// The chunk at this byte offset of the volume.
    Chunk(u64),
}

/// One archive root, wherever it lives (see the module documentation).
///
/// Volume names are the config's names (checked by the config: no `/`, no leading
/// `.`); session IDs are `YYYYMMDD-HHMMSS`. Errors name the destination and what
/// failed there, once. Methods that change a volume need its exclusive lock
/// ([`Destination::lock_volume`]) held by the caller.
pub trait Destination: Send + Sync {
    /// The destination, for messages: a folder's path, or `ssh://host/path`.
    fn label(&self) -> String;

    /// Whether the archive can only be read (a read-only mount): then readers take
    /// no locks and every change is refused.
    fn read_only(&self) -> bool;

    /// The archive's folder when it is on this machine (`None` for a remote one): a
    /// restore refuses to write into it.
    fn local_root(&self) -> Option<&std::path::Path> {
        None
    }

    /// The archive's root marker, `None` when there is no archive there.
    fn marker(&self) -> Result<Option<ArchiveMarker>>;

    /// Create an empty archive with a new identity (safe against runs doing the same
    /// at once: one marker wins, and every run reads it). Refuses a folder that holds
    /// other things.
    fn create(&self) -> Result<()>;

    /// Create an empty encrypted archive (format 2) with identity `id`, whose key
    /// file (the master key wrapped under the passphrase, bound to `id`) is
    /// `key_file`: the key file is in place before the marker that makes the folder
    /// an archive.
    fn create_sealed(&self, id: &str, key_file: &[u8]) -> Result<()> {
        let _ = (id, key_file);
        Err(crate::error::Error::Msg(format!(
            "{}: this destination was opened for a plain archive; an encrypted one is opened over its files (run the command again)",
            self.label()
        )))
    }

    /// Give the destination the keys of its encrypted archive (unlocked by the
    /// caller): from now on names are mapped and objects sealed and opened with them.
    fn set_keys(&self, keys: std::sync::Arc<sparsebak_format::crypto::ArchiveKeys>) -> Result<()> {
        let _ = keys;
        Err(crate::error::Error::Msg(format!(
            "{}: this destination was opened for a plain archive, it has no keys",
            self.label()
        )))
    }

    /// Write the identity file of volume `name` of an encrypted archive: volume id
    /// `id` (repair puts it back from the source side's copies).
    fn put_volume_id(&self, name: &str, id: &str) -> Result<()> {
        let _ = (name, id);
        Err(crate::error::Error::Msg(format!(
            "{}: this destination was opened for a plain archive, it has no keys",
            self.label()
        )))
    }

    /// Give an archive whose marker has no identity (made before identities) one;
    /// returns the identity the marker has afterwards.
    fn add_identity(&self) -> Result<String>;

    /// The volumes the archive holds (folder names), sorted.
    fn volumes(&self) -> Result<Vec<String>>;

    /// The read side of volume `name` (which need not exist).
    fn volume(&self, name: &str) -> VolumeArchive;

    /// Lock volume `name` (its folder is created for an exclusive lock). On a
    /// read-only archive a shared lock is not taken (`None`: nobody can write) and
    /// an exclusive one is refused. Waits at most a minute for another run.
    fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<DestLock>>;

    /// Start writing session `id` of volume `name`, stored as `kind`, incremental on
    /// session `base` (`None`: a full session). `volsize` (bytes) is the volume's
    /// size, used to report a full filesystem. Needs the exclusive lock.
    fn begin_session(
        &self,
        name: &str,
        id: &str,
        kind: SessionKind,
        base: Option<&str>,
        volsize: u64,
    ) -> Result<Box<dyn SessionSink>>;

    /// Remove what interrupted runs left in volume `name` (staging folders, a tar
    /// session's leftovers). Needs the exclusive lock.
    fn remove_staging(&self, name: &str) -> Result<()>;

    /// Remove, in every volume whose lock is free, what runs that died left behind.
    /// Never fails (what cannot be removed is logged, and tried again next time).
    fn sweep_dead_runs(&self);

    /// The interrupted prune of volume `name`, if there is one: (the session it
    /// removes, the session it folds into).
    fn interrupted_prune(&self, name: &str) -> Result<Option<(String, String)>>;

    /// Roll an interrupted prune of volume `name` forward (clear leftovers of one
    /// that never reached its journal). `removed_info` is the info of the session
    /// being removed as the source side kept it (used when the archive's is gone).
    /// Returns (removed, into) when a prune was finished; its journal stays until
    /// [`Destination::end_fold`], so that the source side updates its copies first.
    fn recover(
        &self,
        name: &str,
        removed_info: Option<&SessionInfo>,
    ) -> Result<Option<(String, String)>>;

    /// Check that sessions `targets` of volume `name` can be removed (their
    /// manifests, and the chunks their successors' views take from them): refuses,
    /// naming what is missing, with nothing changed.
    fn check_removal(&self, name: &str, targets: &[String]) -> Result<()>;

    /// The bytes removing all of `targets` of volume `name` together would free
    /// (`None`: this destination cannot tell before it happens). A dry run of a prune
    /// of several sessions says this: its steps depend on each other (chunks moved
    /// into a session removed next are freed then), so their figures do not add up.
    fn removal_frees(&self, _name: &str, _targets: &[String]) -> Result<Option<u64>> {
        Ok(None)
    }

    /// Remove session `remove` of volume `name` by folding it into the next session
    /// (prune). With `dry_run` nothing changes and the plan says what would. The
    /// journal stays until [`Destination::end_fold`].
    fn fold(
        &self,
        name: &str,
        remove: &str,
        dry_run: bool,
        removed_info: Option<&SessionInfo>,
    ) -> Result<FoldPlan>;

    /// Remove the journal of a fold once the source side has updated its copies.
    fn end_fold(&self, name: &str) -> Result<()>;

    /// Check the stored chunks of session `info` of volume `name` against its
    /// manifest (verify). `bad_manifest`: the caller found the manifest damaged.
    fn check_stored(
        &self,
        name: &str,
        info: &SessionInfo,
        bad_manifest: bool,
    ) -> Result<SessionCheck>;

    /// Convert tar session `id` of volume `name` into a folder; `false` when it was
    /// one already.
    fn untar(&self, name: &str, id: &str) -> Result<bool>;

    /// Remove sessions `ids` of volume `name` outright (no fold: later sessions that
    /// build on them lose what they took from them).
    fn delete_sessions(&self, name: &str, ids: &[String]) -> Result<()>;

    /// Remove volume `name` and every session of it, in one visible step; `false`
    /// when it was not there.
    fn delete_volume(&self, name: &str) -> Result<bool>;

    /// Whether volume `name` holds nothing (no folder, or one with only its lock
    /// file): a rename may then take the name.
    fn volume_is_free(&self, name: &str) -> Result<bool>;

    /// Rename volume `old` to `new` (which must be free, see
    /// [`Destination::volume_is_free`]); `false` when `old` was not there (moved already).
    fn rename_volume(&self, old: &str, new: &str) -> Result<bool>;

    /// Put back one file of session `id` of volume `name` (repair): written under a
    /// temporary name, made durable, renamed into place. A tar session is converted
    /// into a folder first.
    fn put_session_file(&self, name: &str, id: &str, file: SessionFile, bytes: &[u8])
        -> Result<()>;

    /// The bytes of the archive's key file (`sparsebak.key` at its root: the master
    /// key wrapped under the passphrase, no secret), at most
    /// [`sparsebak_format::crypto::keyfile::MAX_KEY_FILE`]; `None` when there is none.
    fn key_file(&self) -> Result<Option<Vec<u8>>> {
        Err(crate::error::Error::Msg(format!(
            "{}: reading the key file is not supported by this destination",
            self.label()
        )))
    }

    /// Put `bytes` (a key file, checked) in place as the archive's key file,
    /// atomically and durably (temporary name, fsync, rename, fsync of the folder);
    /// nothing else of the archive changes.
    fn put_key_file(&self, bytes: &[u8]) -> Result<()> {
        let _ = bytes;
        Err(crate::error::Error::Msg(format!(
            "{}: writing the key file is not supported by this destination",
            self.label()
        )))
    }
}

/// The destination `config` names: the archive folder `destdir` on this machine, or
/// on the machine `destvm` names (reached through `sparsebak serve` there). Every
/// command reaches the archive through the destination this returns.
pub fn open(config: &crate::config::Config) -> Result<Box<dyn Destination>> {
    open_for(config, false)
}

/// [`open`], saying whether the run will write: a remote archive's far side then
/// accepts a `destdir` that holds no archive yet (the run creates it).
pub fn open_for(config: &crate::config::Config, writing: bool) -> Result<Box<dyn Destination>> {
    match &config.remote {
        None => {
            #[cfg(test)]
            if let Some(fs) = test_fs::lookup(&config.destdir) {
                return Ok(Box::new(LocalDestination::with_fs(fs, &config.destdir)));
            }
            Ok(Box::new(LocalDestination::new(&config.destdir)))
        }
        Some(spec) => {
            let remote = crate::remote::RemoteDestination::open(
                spec,
                &config.destdir,
                config.destmountpoint.as_deref(),
                writing,
            )?;
            // An encrypted archive (or a new one this run creates encrypted) is run
            // here, over the far folder's file operations: the far side never holds a
            // key or a plain byte. A plain one keeps the far side's own operations.
            let sealed = match remote.marker()? {
                Some(m) => m.is_sealed(),
                None => writing && config.encrypt != Some(false),
            };
            if !sealed {
                return Ok(Box::new(remote));
            }
            let fs = crate::remote::RemoteFs::new(remote.connection(), &config.destdir);
            Ok(Box::new(LocalDestination::with_fs(
                std::sync::Arc::new(fs),
                &config.destdir,
            )))
        }
    }
}

/// For tests: archive folders (by `destdir`) whose files [`open`] reaches through a
/// given [`ArchiveFs`](sparsebak_format::archive_fs::ArchiveFs) instead of this
/// machine's, so that whole commands run over it.
#[cfg(test)]
pub(crate) mod test_fs {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    use sparsebak_format::archive_fs::SharedFs;

    static ROOTS: Mutex<Vec<(PathBuf, SharedFs)>> = Mutex::new(Vec::new());

    /// Reach the archive folder `root` through `fs` from now on.
    pub(crate) fn register(root: &Path, fs: SharedFs) {
        let mut r = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|(p, _)| p != root);
        r.push((root.to_path_buf(), fs));
    }

    /// Forget what [`register`] said of `root`.
    pub(crate) fn forget(root: &Path) {
        let mut r = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
        r.retain(|(p, _)| p != root);
    }

    pub(super) fn lookup(root: &Path) -> Option<SharedFs> {
        let r = ROOTS.lock().unwrap_or_else(|e| e.into_inner());
        r.iter().find(|(p, _)| p == root).map(|(_, fs)| fs.clone())
    }
}
