//! The read side of the destination seam: where the sessions of one volume are read
//! from, whatever holds them.
//!
//! [`VolumeStore`] is what every reader of an archive (restore, verify, diff, resync,
//! the base view of a send, `spbk-assemble`) needs of one volume: its sessions, their
//! info and manifest bytes, and the stored bytes of chunks. [`FolderStore`] is the
//! volume folder of a local archive (sessions as folders or tar files); a remote
//! archive implements the same trait by asking the machine that holds the files.
//! [`crate::volume::VolumeArchive`], the type readers use, is a façade over one.
//!
//! Every method returns plain data (byte vectors, IDs, strings), so that an
//! implementation can fetch it over a link; and every length it returns is bounded
//! (see [`crate::limits`]) before anything is allocated for it, whichever the
//! implementation: a store is never trusted.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::archive_fs::{self, SharedFs};
use crate::codec::ChunkCodec;
use crate::crypto::{envelope, ArchiveKeys, OpenReader, Place};
use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::tarsession::walk::{self, MemberName, Walked};
use crate::tarsession::{IndexWriter, SealedTarIndexWriter, TarIndexWriter, TarSession};

/// How a session is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// A folder `S_<id>` holding `info`, `manifest` and one file per chunk.
    Folder,
    /// One tar file `S_<id>.tar` with its member index `S_<id>.tar.index`.
    Tar,
}

/// The read side of ONE volume in an archive.
///
/// Session IDs are `YYYYMMDD-HHMMSS` strings ([`layout::is_session_id`]). Errors name
/// the thing that failed (a path for a folder, `ssh://host/path/vol/...` for a remote
/// store), once.
pub trait VolumeStore: Send + Sync + Debug {
    /// Where the volume is, for messages: a folder's path, or a URL-like
    /// `ssh://host/path/vol` for a remote store.
    fn label(&self) -> String;

    /// Whether the volume exists in the archive at all (a volume with no folder has
    /// no sessions).
    fn exists(&self) -> bool;

    /// Committed session IDs, oldest first. Staging folders and the like are not
    /// sessions. A volume that does not exist has none.
    fn sessions(&self) -> Result<Vec<String>>;

    /// How session `id` is stored (a folder wins over a tar left by a conversion).
    fn storage(&self, id: &str) -> Storage;

    /// The bytes of session `id`'s info file, at most [`limits::MAX_INFO_BYTES`].
    fn info_bytes(&self, id: &str) -> Result<Vec<u8>>;

    /// A reader of session `id`'s manifest bytes (streamed: a manifest can be many
    /// MiB). Callers bound what they read with [`VolumeStore::manifest_len`] and the
    /// session's `changed` count.
    fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>>;

    /// Length in bytes of session `id`'s manifest.
    fn manifest_len(&self, id: &str) -> Result<u64>;

    /// The stored (encoded) bytes of the chunks at `addrs` (byte offsets in the
    /// volume) of session `info`, one result per address, in the order asked. A
    /// batch: a remote store sends every request of it before reading a reply, never
    /// one round trip per chunk. No result is longer than a chunk of the session's
    /// size and compression can be stored in ([`limits::max_stored`]); a longer one is
    /// refused unread ([`FormatError::TooLarge`]).
    fn read_stored(&self, info: &SessionInfo, addrs: &[u64]) -> Vec<Result<Vec<u8>>>;

    /// Where the chunk at `addr` of session `id` is stored, for messages (a chunk
    /// file's path; a tar file and the member).
    fn chunk_location(&self, id: &str, addr: u64) -> String;

    /// Where session `id`'s manifest is, for messages.
    fn manifest_label(&self, id: &str) -> PathBuf;

    /// Where session `id`'s info is, for messages.
    fn info_label(&self, id: &str) -> PathBuf;

    /// Forget what was cached about sessions (after they were converted between
    /// forms or removed). Nothing to do for a store that caches nothing.
    fn forget_cached(&self) {}

    /// The codec the chunks of session `info` are stored with (of an encrypted
    /// archive: sealed under its keys).
    fn codec(&self, info: &SessionInfo) -> Arc<dyn ChunkCodec> {
        crate::codec::for_info(info)
    }

    /// The archive's keys, when it is encrypted and the store holds them.
    fn keys(&self) -> Option<Arc<ArchiveKeys>> {
        None
    }

    /// The volume's id as its identity file says (encrypted archives); `None` when
    /// there is no identity file (or the archive is not encrypted). An error when
    /// the file is another volume's or damaged.
    fn volume_id(&self) -> Result<Option<String>> {
        Ok(None)
    }

    /// The local folder, when the store is one (code that must touch its files:
    /// only the local destination's maintenance).
    fn as_folder(&self) -> Option<&FolderStore> {
        None
    }
}

/// A volume's folder in a local archive: sessions as folders or tar files.
///
/// In an encrypted archive (format 2, [`FolderStore::sealed`]) the names of session
/// folders and chunk files are name tokens of the archive's key, and info and manifest
/// are sealed: this store gives their plaintext, opened and authenticated, and the
/// chunks' stored (sealed) bytes, which the session's codec ([`VolumeStore::codec`])
/// opens.
#[derive(Clone)]
pub struct FolderStore {
    /// The file operations the folder is read with (this machine's, or a remote
    /// folder's).
    fs: SharedFs,
    dir: PathBuf,
    /// Tar sessions opened so far (file and mapped index), shared by clones.
    tars: Arc<Mutex<HashMap<String, Arc<TarSession>>>>,
    /// The archive's keys when it is encrypted.
    keys: Option<Arc<ArchiveKeys>>,
    /// The volume's name, in an encrypted archive (its identity file is sealed for it).
    name: String,
}

impl Debug for FolderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FolderStore")
            .field("dir", &self.dir)
            .finish()
    }
}

impl FolderStore {
    /// The volume folder `dir` (which need not exist yet) on this machine.
    pub fn new(dir: &Path) -> FolderStore {
        FolderStore::with_fs(archive_fs::local_in(dir), dir)
    }

    /// The volume folder `dir` (which need not exist yet), read through `fs`.
    pub fn with_fs(fs: SharedFs, dir: &Path) -> FolderStore {
        FolderStore {
            fs,
            dir: dir.to_path_buf(),
            tars: Arc::new(Mutex::new(HashMap::new())),
            keys: None,
            name: String::new(),
        }
    }

    /// The folder `dir` (on this machine) of volume `name` in an encrypted archive
    /// whose keys are `keys`.
    pub fn sealed(dir: &Path, name: &str, keys: Arc<ArchiveKeys>) -> FolderStore {
        FolderStore::sealed_with_fs(archive_fs::local_in(dir), dir, name, keys)
    }

    /// The folder `dir` of volume `name` in an encrypted archive whose keys are
    /// `keys`, read through `fs`.
    pub fn sealed_with_fs(
        fs: SharedFs,
        dir: &Path,
        name: &str,
        keys: Arc<ArchiveKeys>,
    ) -> FolderStore {
        FolderStore {
            keys: Some(keys),
            name: name.to_string(),
            ..FolderStore::with_fs(fs, dir)
        }
    }

    /// The file operations the folder is read and written with.
    pub fn fs(&self) -> &SharedFs {
        &self.fs
    }

    /// The volume's name (encrypted archives).
    pub fn volume_name(&self) -> &str {
        &self.name
    }

    /// The identity file at `path` opened for volume `name`: `Ok(None)` when there is
    /// no such file, an error when it is not `name`'s.
    fn read_volume_id(&self, k: &ArchiveKeys, path: &Path) -> Result<Option<String>> {
        let max = 4096 + envelope::overhead(4096);
        let sealed =
            match limits::read_bounded_in(self.fs.as_ref(), path, max, "volume identity file") {
                Ok(b) => b,
                Err(FormatError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(e),
            };
        let bad = |reason: String| FormatError::Info {
            path: path.to_path_buf(),
            reason,
        };
        let plain = k
            .open(&Place::Volume { name: &self.name }, &sealed)
            .map_err(|_| {
                bad(format!(
                    "is not volume {}'s (failed authentication): this folder holds another \
                     volume, or the file was altered",
                    self.name
                ))
            })?;
        let text = String::from_utf8(plain).map_err(|_| bad("not UTF-8".into()))?;
        layout::parse_volume_id_text(&text)
            .map(Some)
            .ok_or_else(|| bad("not an identity file".into()))
    }

    /// The archive's keys, when it is encrypted.
    pub fn keys(&self) -> Option<&Arc<ArchiveKeys>> {
        self.keys.as_ref()
    }

    /// What stands for session `id` in file names: the ID itself, or its token.
    pub fn session_name(&self, id: &str) -> String {
        match &self.keys {
            None => id.to_string(),
            Some(k) => k.session_token(id),
        }
    }

    /// The session ID a name (after `S_`, without `.tar`) stands for, if any.
    pub fn session_of_name(&self, name: &str) -> Option<String> {
        match &self.keys {
            None => layout::is_session_id(name).then(|| name.to_string()),
            Some(k) => {
                if !crate::crypto::keys::looks_like_token(name) {
                    return None;
                }
                k.session_of_token(name)
                    .filter(|id| layout::is_session_id(id))
            }
        }
    }

    /// The chunk file of `addr` relative to session `id`'s folder.
    pub fn chunk_rel_path(&self, id: &str, addr: u64) -> PathBuf {
        match &self.keys {
            None => layout::chunk_rel_path(addr),
            Some(k) => k.chunk_rel_path(id, addr),
        }
    }

    /// The address a chunk file `prefix/name` of session `id` stands for, if any.
    pub fn addr_of_chunk(&self, id: &str, prefix: &str, name: &str) -> Option<u64> {
        match &self.keys {
            None => {
                let addr = u64::from_str_radix(name.strip_prefix('x')?, 16).ok()?;
                (name.len() == 17 && layout::prefix_name(addr) == prefix).then_some(addr)
            }
            Some(k) => {
                let addr = k.addr_of_chunk_token(id, name)?;
                (k.chunk_folder(id, addr) == prefix).then_some(addr)
            }
        }
    }

    /// The length of file `p`. Neither a file nor a folder (a link, a FIFO, a device
    /// node): the open that reading it would do says why it is refused, rather than
    /// a length that says nothing.
    fn file_len(&self, p: &Path) -> Result<u64> {
        let m = self.fs.metadata(p).at(p)?;
        if m.kind == crate::archive_fs::Kind::Other {
            self.fs.open(p).at(p)?;
        }
        Ok(m.len)
    }

    /// The volume folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `S_<id>` (`S_<token>` when encrypted).
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{}",
            layout::SESSION_PREFIX,
            self.session_name(id)
        ))
    }

    /// `S_<id>.tar`.
    pub fn tar_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{}{}",
            layout::SESSION_PREFIX,
            self.session_name(id),
            layout::TAR_SUFFIX
        ))
    }

    /// `S_<id>.tar.index`.
    pub fn tar_index_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{}{}",
            layout::SESSION_PREFIX,
            self.session_name(id),
            layout::TAR_INDEX_SUFFIX
        ))
    }

    /// Whether `e`, from opening session `id`'s tar, is about its index (missing or
    /// damaged) while the tar itself is there: what `repair` rebuilds.
    pub fn is_index_fault(&self, id: &str, e: &FormatError) -> bool {
        let ix = self.tar_index_path(id);
        let about = match e {
            FormatError::TarIndex { path, .. } | FormatError::Io { path, .. } => *path == ix,
            other => {
                let t = other.to_string();
                t.contains(&ix.display().to_string()) || t.contains(&self.fs.display(&ix))
            }
        };
        about && self.fs.is_file(&self.tar_path(id))
    }

    /// `e` from opening session `id`'s tar, saying what `repair` does about it when it
    /// is about the index.
    fn index_hint(&self, id: &str, e: FormatError) -> FormatError {
        if !self.is_index_fault(id, &e) {
            return e;
        }
        let vol = if self.name.is_empty() {
            self.dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        } else {
            self.name.clone()
        };
        FormatError::Other(format!(
            "{e} (the index of tar session {id}; the tar still holds the whole session, and \
             `sparsebak repair {vol}` rebuilds the index from it)"
        ))
    }

    /// What member `name` of session `id`'s tar stands for (`None`: not one of its).
    pub fn tar_member(&self, id: &str, name: &str) -> Option<MemberName> {
        let sn = format!("{}{}/", layout::SESSION_PREFIX, self.session_name(id));
        let rest = name.strip_prefix(&sn)?;
        if rest == layout::MANIFEST_FILE {
            return Some(MemberName::Manifest);
        }
        if rest == layout::INFO_FILE {
            return Some(MemberName::Info);
        }
        let (prefix, file) = rest.split_once('/')?;
        self.addr_of_chunk(id, prefix, file).map(MemberName::Chunk)
    }

    /// Read the member headers of session `id`'s tar (not its index): where each
    /// member is, or the first header that is damaged or out of place.
    pub fn walk_tar(&self, id: &str) -> Result<Walked> {
        let tar = self.tar_path(id);
        let len = self.fs.metadata(&tar).at(&tar)?.len;
        walk::walk(self.fs.as_ref(), &tar, len, &|n| self.tar_member(id, n))
    }

    /// Write session `id`'s tar index anew from its tar's member headers (sealed in
    /// an encrypted archive): in a staging folder `.tmp-reindex-S_<name>`, checked
    /// against the tar by opening it, then renamed into place. The index holds
    /// nothing the tar does not, so this is always safe when the tar reads.
    pub fn rebuild_tar_index(&self, id: &str) -> Result<()> {
        let walked = self.walk_tar(id)?;
        let staging = self.dir.join(format!(
            ".tmp-reindex-{}{}",
            layout::SESSION_PREFIX,
            self.session_name(id)
        ));
        if self.fs.exists(&staging) {
            self.fs.remove_dir_all(&staging).at(&staging)?;
        }
        self.fs.create_dir(&staging).at(&staging)?;
        let index = self.tar_index_path(id);
        let tmp = staging.join(index.file_name().unwrap_or_default());
        let write = || -> Result<()> {
            let mut w = match &self.keys {
                None => IndexWriter::Plain(TarIndexWriter::create_in(&self.fs, &tmp)?),
                Some(k) => IndexWriter::Sealed(SealedTarIndexWriter::create(
                    self.fs.as_ref(),
                    &tmp,
                    k,
                    id,
                )?),
            };
            for &(a, off, len) in &walked.chunks {
                w.push(a, off, len)?;
            }
            w.finish(walked.manifest, walked.info)?;
            // The new index must pass every check a reader makes before it is used.
            let tar = self.tar_path(id);
            match &self.keys {
                None => TarSession::open_in(&self.fs, &tar, &tmp).map(drop)?,
                Some(k) => TarSession::open_sealed_in(&self.fs, &tar, &tmp, k, id).map(drop)?,
            }
            self.fs.rename(&tmp, &index).at(&index)?;
            self.fs.sync_dir(&self.dir).at(&self.dir)
        };
        let done = write();
        if let Err(e) = self.fs.remove_dir_all(&staging) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", self.fs.display(&staging));
            }
        }
        VolumeStore::forget_cached(self);
        done
    }

    /// `S_<id>/info`.
    pub fn info_path(&self, id: &str) -> PathBuf {
        self.session_dir(id).join(layout::INFO_FILE)
    }

    /// `S_<id>/manifest`.
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.session_dir(id).join(layout::MANIFEST_FILE)
    }

    /// The chunk file of `addr` in session folder `id`.
    pub fn chunk_path(&self, id: &str, addr: u64) -> PathBuf {
        self.session_dir(id).join(self.chunk_rel_path(id, addr))
    }

    /// A sequential reader of the file at `path`.
    fn open(&self, path: &Path) -> Result<Box<dyn std::io::Read + Send>> {
        self.fs.open(path).at(path)
    }

    /// The open tar session `id`.
    pub fn tar(&self, id: &str) -> Result<Arc<TarSession>> {
        let mut cache = self
            .tars
            .lock()
            .map_err(|_| FormatError::Other("tar cache poisoned".into()))?;
        if let Some(t) = cache.get(id) {
            return Ok(t.clone());
        }
        let opened = match &self.keys {
            None => TarSession::open_in(&self.fs, &self.tar_path(id), &self.tar_index_path(id)),
            Some(k) => TarSession::open_sealed_in(
                &self.fs,
                &self.tar_path(id),
                &self.tar_index_path(id),
                k,
                id,
            ),
        };
        let t = Arc::new(opened.map_err(|e| self.index_hint(id, e))?);
        cache.insert(id.to_string(), t.clone());
        Ok(t)
    }

    /// The stored bytes of one chunk (see [`VolumeStore::read_stored`]).
    pub fn read_one(&self, info: &SessionInfo, addr: u64) -> Result<Vec<u8>> {
        let max = self.codec(info).max_stored(info.chunksize);
        self.read_in(info, self.storage(&info.session), max, addr)
    }

    /// The stored bytes of the chunk at `addr` of session `info`, stored as `storage`,
    /// at most `max` bytes: what one chunk of a batch costs once the batch has looked
    /// up the session's codec and storage.
    fn read_in(
        &self,
        info: &SessionInfo,
        storage: Storage,
        max: u64,
        addr: u64,
    ) -> Result<Vec<u8>> {
        let id = &info.session;
        match storage {
            Storage::Folder => limits::read_bounded_in(
                self.fs.as_ref(),
                &self.chunk_path(id, addr),
                max,
                "chunk file",
            ),
            Storage::Tar => self.tar(id)?.read_chunk(addr, max),
        }
    }
}

impl VolumeStore for FolderStore {
    fn label(&self) -> String {
        self.dir.display().to_string()
    }

    fn exists(&self) -> bool {
        self.fs.is_dir(&self.dir)
    }

    fn sessions(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = match self.fs.read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e).at(&self.dir),
        };
        for ent in rd {
            let name = ent.name.as_str();
            if let Some(rest) = name.strip_prefix(layout::SESSION_PREFIX) {
                let tok = rest.strip_suffix(layout::TAR_SUFFIX).unwrap_or(rest);
                if let Some(id) = self.session_of_name(tok) {
                    ids.push(id);
                }
            }
        }
        ids.sort();
        // A session being converted between forms can briefly exist in both.
        ids.dedup();
        Ok(ids)
    }

    fn storage(&self, id: &str) -> Storage {
        // Anything at the folder's name is the folder form: a link there is then
        // refused as one, not taken for a missing tar.
        if self.fs.exists(&self.session_dir(id)) {
            Storage::Folder
        } else {
            Storage::Tar
        }
    }

    fn info_bytes(&self, id: &str) -> Result<Vec<u8>> {
        if let Some(k) = &self.keys {
            let max = limits::MAX_INFO_BYTES + envelope::overhead(limits::MAX_INFO_BYTES);
            let (path, sealed) = match self.storage(id) {
                Storage::Folder => {
                    let path = self.info_path(id);
                    let sealed =
                        limits::read_bounded_in(self.fs.as_ref(), &path, max, "info file")?;
                    (path, sealed)
                }
                Storage::Tar => (self.info_label(id), self.tar(id)?.info_member(max)?),
            };
            return k
                .open(&Place::Info { session: id }, &sealed)
                .map_err(|e| FormatError::Info {
                    path,
                    reason: e.to_string(),
                });
        }
        match self.storage(id) {
            Storage::Folder => limits::read_bounded_in(
                self.fs.as_ref(),
                &self.info_path(id),
                limits::MAX_INFO_BYTES,
                "info file",
            ),
            Storage::Tar => self.tar(id)?.info_bytes(),
        }
    }

    fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>> {
        if let Some(k) = &self.keys {
            let place = Place::Manifest { session: id };
            let sealed: Box<dyn std::io::Read + Send> = match self.storage(id) {
                Storage::Folder => self.open(&self.manifest_path(id))?,
                Storage::Tar => self.tar(id)?.manifest_reader()?,
            };
            return Ok(Box::new(BufReader::with_capacity(
                64 * 1024,
                OpenReader::new(k, place, sealed),
            )));
        }
        match self.storage(id) {
            Storage::Folder => {
                let p = self.manifest_path(id);
                let f = self.open(&p)?;
                Ok(Box::new(BufReader::with_capacity(64 * 1024, f)))
            }
            Storage::Tar => self.tar(id)?.manifest_reader(),
        }
    }

    fn manifest_len(&self, id: &str) -> Result<u64> {
        if self.keys.is_some() {
            let (p, len) = match self.storage(id) {
                Storage::Folder => {
                    let p = self.manifest_path(id);
                    let len = self.file_len(&p)?;
                    (p, len)
                }
                Storage::Tar => (self.manifest_label(id), self.tar(id)?.index.manifest().1),
            };
            return envelope::plain_len(len).ok_or_else(|| {
                FormatError::Other(format!(
                    "{}: the manifest is cut or altered ({len} bytes is no sealed manifest's \
                     length)",
                    p.display()
                ))
            });
        }
        match self.storage(id) {
            Storage::Folder => self.file_len(&self.manifest_path(id)),
            Storage::Tar => Ok(self.tar(id)?.index.manifest().1),
        }
    }

    fn codec(&self, info: &SessionInfo) -> Arc<dyn ChunkCodec> {
        crate::codec::for_session(self.keys.as_ref(), info)
    }

    fn keys(&self) -> Option<Arc<ArchiveKeys>> {
        self.keys.clone()
    }

    fn volume_id(&self) -> Result<Option<String>> {
        let Some(k) = &self.keys else {
            return Ok(None);
        };
        // A rename in progress wrote the new name's file beside the old one.
        let next = self.read_volume_id(k, &self.dir.join(layout::VOLUME_ID_NEXT));
        match self.read_volume_id(k, &self.dir.join(layout::VOLUME_ID_FILE)) {
            Ok(Some(id)) => Ok(Some(id)),
            Ok(None) => next,
            Err(e) => match next {
                Ok(Some(id)) => Ok(Some(id)),
                _ => Err(e),
            },
        }
    }

    fn read_stored(&self, info: &SessionInfo, addrs: &[u64]) -> Vec<Result<Vec<u8>>> {
        // Reads run on the caller's pool (the readers of `restore::read_view`), so
        // that on a cold cache several are in flight at once. The codec and the form
        // of the session are looked up once per batch, not once per chunk.
        let max = self.codec(info).max_stored(info.chunksize);
        let storage = self.storage(&info.session);
        addrs
            .par_iter()
            .map(|&addr| self.read_in(info, storage, max, addr))
            .collect()
    }

    fn chunk_location(&self, id: &str, addr: u64) -> String {
        match self.storage(id) {
            // A far folder is named with its host.
            Storage::Folder => self.fs.display(&self.chunk_path(id, addr)),
            Storage::Tar => format!(
                "{} (member for chunk x{addr:016x})",
                self.fs.display(&self.tar_path(id))
            ),
        }
    }

    fn manifest_label(&self, id: &str) -> PathBuf {
        match self.storage(id) {
            Storage::Folder => self.manifest_path(id),
            Storage::Tar => self.tar_path(id).join(layout::MANIFEST_FILE),
        }
    }

    fn info_label(&self, id: &str) -> PathBuf {
        match self.storage(id) {
            Storage::Folder => self.info_path(id),
            Storage::Tar => self.tar_path(id).join(layout::INFO_FILE),
        }
    }

    fn forget_cached(&self) {
        if let Ok(mut c) = self.tars.lock() {
            c.clear();
        }
    }

    fn as_folder(&self) -> Option<&FolderStore> {
        Some(self)
    }
}
