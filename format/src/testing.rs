//! Stores for tests: an archive volume held in memory ([`MemoryStore`]), and a
//! decorator that makes any store fail on purpose ([`FaultyStore`], driven by
//! [`Faults`]): an I/O error at the n-th call, no space left after so many bytes
//! written, a torn write or read (only a prefix of the bytes kept), an object that
//! vanishes between the listing and the reading.
//!
//! Built for the unit tests of this crate and, with the `testing` feature, for those of
//! the crates that use it; never part of a release binary.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Cursor};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::chunk::{self, Codec};
use crate::codec::{self, ChunkContext};
use crate::error::{FormatError, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::manifest::{Entry, ManifestWriter};
use crate::store::{FolderStore, Storage, VolumeStore};

/// One stored object of a volume: what a fault is aimed at.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Object {
    Info(String),
    Manifest(String),
    /// The chunk at this byte offset, stored by this session.
    Chunk(String, u64),
}

impl Object {
    /// The object's name inside a volume, as a folder archive spells it.
    pub fn rel_path(&self) -> PathBuf {
        match self {
            Object::Info(id) => PathBuf::from(layout::session_dir_name(id)).join(layout::INFO_FILE),
            Object::Manifest(id) => {
                PathBuf::from(layout::session_dir_name(id)).join(layout::MANIFEST_FILE)
            }
            Object::Chunk(id, addr) => {
                PathBuf::from(layout::session_dir_name(id)).join(layout::chunk_rel_path(*addr))
            }
        }
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Calls counted so far (every method call; every address of a batch).
    calls: u64,
    /// The call (1-based) that fails with EIO, and every one after it when `sticky`.
    eio_at: Option<u64>,
    sticky: bool,
    /// Bytes that may be written before writes fail with ENOSPC.
    room: Option<u64>,
    written: u64,
    /// Objects kept (written) or returned (read) cut to this many bytes.
    torn: BTreeMap<Object, usize>,
    /// Objects that are gone when read (though still listed).
    vanished: BTreeSet<Object>,
    /// Objects whose every read and write fails with EIO (a bad sector).
    bad: BTreeSet<Object>,
    /// Calls (by name) that always fail with EIO.
    bad_calls: BTreeSet<String>,
    /// Faults that fired, in order, as text.
    fired: Vec<String>,
}

/// A plan of faults, shared by the stores and sinks that consult it (clones share it).
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<FaultState>>);

fn os_error(code: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code)
}

impl Faults {
    /// No fault at all.
    pub fn new() -> Faults {
        Faults::default()
    }

    fn state(&self) -> MutexGuard<'_, FaultState> {
        // A test that panicked while holding the lock already failed.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `n`-th call (1-based) fails with EIO; the calls after it succeed again.
    pub fn eio_at_call(self, n: u64) -> Faults {
        {
            let mut s = self.state();
            s.eio_at = Some(n);
            s.sticky = false;
        }
        self
    }

    /// The `n`-th call and every one after it fail with EIO (a disk that died).
    pub fn eio_from_call(self, n: u64) -> Faults {
        {
            let mut s = self.state();
            s.eio_at = Some(n);
            s.sticky = true;
        }
        self
    }

    /// Writes fail with ENOSPC once `bytes` were written in all.
    pub fn enospc_after(self, bytes: u64) -> Faults {
        self.state().room = Some(bytes);
        self
    }

    /// Only the first `keep` bytes of `obj` are kept when it is written, or returned
    /// when it is read.
    pub fn tear(self, obj: Object, keep: usize) -> Faults {
        self.state().torn.insert(obj, keep);
        self
    }

    /// Every call named `what` fails with EIO, whenever it comes. The reads of a
    /// [`FaultyStore`] are `sessions`, `info`, `manifest`, `manifest length` and
    /// `chunk` (one per address of a batch); the sinks and destinations of the main
    /// crate's tests add `put chunk`, `put zero`, `prepare`, `commit`, `delete session`
    /// and `put session file`.
    pub fn eio_on_call(self, what: &str) -> Faults {
        self.state().bad_calls.insert(what.to_string());
        self
    }

    /// Every read or write of `obj` fails with EIO, whenever it comes.
    pub fn eio_on(self, obj: Object) -> Faults {
        self.state().bad.insert(obj);
        self
    }

    /// `obj` is gone when read (a listing still names its session).
    pub fn vanish(self, obj: Object) -> Faults {
        self.state().vanished.insert(obj);
        self
    }

    /// Calls counted so far.
    pub fn calls(&self) -> u64 {
        self.state().calls
    }

    /// Bytes written so far (what was kept of them).
    pub fn written(&self) -> u64 {
        self.state().written
    }

    /// The faults that fired, in order (`"EIO at call 3 (...)"`, ...).
    pub fn fired(&self) -> Vec<String> {
        self.state().fired.clone()
    }

    /// Count one call named `what`; fails when it is the one planned to.
    pub fn call(&self, what: &str) -> std::io::Result<()> {
        let mut s = self.state();
        s.calls += 1;
        let n = s.calls;
        let hit = s.bad_calls.contains(what)
            || match s.eio_at {
                Some(at) if s.sticky => n >= at,
                Some(at) => n == at,
                None => false,
            };
        if hit {
            s.fired.push(format!("EIO at call {n} ({what})"));
            return Err(os_error(libc::EIO));
        }
        Ok(())
    }

    /// Reading `obj`: fails when it vanished; otherwise the bytes as read, cut when
    /// the object is torn.
    pub fn read(&self, obj: &Object, mut bytes: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut s = self.state();
        if s.bad.contains(obj) {
            s.fired
                .push(format!("EIO reading {}", obj.rel_path().display()));
            return Err(os_error(libc::EIO));
        }
        if s.vanished.contains(obj) {
            s.fired
                .push(format!("{} vanished", obj.rel_path().display()));
            return Err(os_error(libc::ENOENT));
        }
        if let Some(&keep) = s.torn.get(obj) {
            if keep < bytes.len() {
                s.fired
                    .push(format!("{} torn at {keep}", obj.rel_path().display()));
                bytes.truncate(keep);
            }
        }
        Ok(bytes)
    }

    /// Writing `bytes` as `obj`: fails with ENOSPC past the room, else what is kept of
    /// them (a prefix when the object is torn).
    pub fn write<'b>(&self, obj: &Object, bytes: &'b [u8]) -> std::io::Result<&'b [u8]> {
        let mut s = self.state();
        if s.bad.contains(obj) {
            s.fired
                .push(format!("EIO writing {}", obj.rel_path().display()));
            return Err(os_error(libc::EIO));
        }
        let keep = s
            .torn
            .get(obj)
            .copied()
            .unwrap_or(bytes.len())
            .min(bytes.len());
        if let Some(room) = s.room {
            if s.written + keep as u64 > room {
                let msg = format!(
                    "ENOSPC writing {} after {} bytes",
                    obj.rel_path().display(),
                    s.written
                );
                s.fired.push(msg);
                return Err(os_error(libc::ENOSPC));
            }
        }
        if keep < bytes.len() {
            s.fired
                .push(format!("{} torn at {keep}", obj.rel_path().display()));
        }
        s.written += keep as u64;
        Ok(&bytes[..keep])
    }
}

/// One session of a [`MemoryStore`].
#[derive(Debug, Clone, Default)]
pub struct MemorySession {
    pub info: Vec<u8>,
    pub manifest: Vec<u8>,
    /// Stored (encoded) chunk bytes by address.
    pub chunks: BTreeMap<u64, Vec<u8>>,
}

/// One volume of an archive held in memory. Clones share the sessions.
#[derive(Debug, Clone)]
pub struct MemoryStore {
    name: String,
    sessions: Arc<Mutex<BTreeMap<String, MemorySession>>>,
}

impl MemoryStore {
    /// An empty volume `name`.
    pub fn new(name: &str) -> MemoryStore {
        MemoryStore {
            name: name.to_string(),
            sessions: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, MemorySession>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The same sessions as volume `name` (a renamed volume).
    pub fn renamed(&self, name: &str) -> MemoryStore {
        MemoryStore {
            name: name.to_string(),
            sessions: self.sessions.clone(),
        }
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Store session `id` whole (it becomes visible at once).
    pub fn insert(&self, id: &str, session: MemorySession) {
        self.map().insert(id.to_string(), session);
    }

    /// Remove session `id`; whether it was there.
    pub fn remove(&self, id: &str) -> bool {
        self.map().remove(id).is_some()
    }

    /// A copy of session `id`.
    pub fn session(&self, id: &str) -> Option<MemorySession> {
        self.map().get(id).cloned()
    }

    /// Change session `id` in place (to damage it); `false` when it is not there.
    pub fn edit(&self, id: &str, f: impl FnOnce(&mut MemorySession)) -> bool {
        match self.map().get_mut(id) {
            Some(s) => {
                f(s);
                true
            }
            None => false,
        }
    }

    /// Sessions of `versions` (the volume's bytes at each send, oldest first), made as
    /// `send` makes them: chunks of `chunksize` bytes encoded with `codec`'s codec,
    /// manifests through the real writer, infos with their checksums; session IDs are
    /// one second apart from 2026-01-01 00:00:00. Returns their infos.
    pub fn from_versions(
        name: &str,
        chunksize: u64,
        codec: Codec,
        versions: &[Vec<u8>],
    ) -> Result<(MemoryStore, Vec<SessionInfo>)> {
        let store = MemoryStore::new(name);
        let chunk_codec = codec::for_compression(codec);
        let bad = |e: std::io::Error| FormatError::Other(format!("making sessions: {e}"));
        let mut infos: Vec<SessionInfo> = Vec::new();
        let mut prev: Option<&Vec<u8>> = None;
        for (k, v) in versions.iter().enumerate() {
            let id = format!("20260101-0000{k:02}");
            let mut mw = ManifestWriter::new(Vec::new());
            let mut chunks = BTreeMap::new();
            let mut nonzero = 0;
            let piece = |v: &[u8], addr: u64| {
                let s = (addr as usize).min(v.len());
                let e = ((addr + chunksize) as usize).min(v.len());
                let mut d = v[s..e].to_vec();
                d.resize(chunksize as usize, 0);
                d
            };
            for i in 0..(v.len() as u64).div_ceil(chunksize) {
                let addr = i * chunksize;
                let data = piece(v, addr);
                let zero = chunk::is_zero(&data);
                nonzero += u64::from(!zero);
                let changed = match prev {
                    Some(p) if addr < p.len() as u64 => piece(p, addr) != data,
                    _ => !zero,
                };
                if !changed {
                    continue;
                }
                if zero {
                    mw.push(&Entry { addr, hash: None }).map_err(bad)?;
                    continue;
                }
                mw.push(&Entry {
                    addr,
                    hash: Some(chunk_codec.identify(&data)),
                })
                .map_err(bad)?;
                let ctx = ChunkContext {
                    volume: name,
                    session: &id,
                    addr,
                    chunksize,
                };
                let stored = chunk_codec
                    .encode(&ctx, &data)
                    .map_err(|e| FormatError::Other(e.to_string()))?;
                chunks.insert(addr, stored);
            }
            let changed = mw.count();
            let (manifest, manifest_sha256) = mw.finish().map_err(bad)?;
            let info = SessionInfo {
                volume: name.to_string(),
                session: id.clone(),
                previous: infos.last().map(|i| i.session.clone()),
                time: 1_767_225_600 + k as i64,
                volsize: v.len() as u64,
                chunksize,
                compression: codec,
                changed,
                chunks: nonzero,
                bytes_read: v.len() as u64,
                bytes_stored: chunks.values().map(|c: &Vec<u8>| c.len() as u64).sum(),
                manifest_sha256,
                volume_id: None,
            };
            store.insert(
                &id,
                MemorySession {
                    info: info.to_text().into_bytes(),
                    manifest,
                    chunks,
                },
            );
            infos.push(info);
            prev = Some(v);
        }
        Ok((store, infos))
    }

    fn label_of(&self, obj: &Object) -> PathBuf {
        PathBuf::from(format!("mem:{}", self.name)).join(obj.rel_path())
    }

    fn missing(&self, obj: &Object) -> FormatError {
        FormatError::Io {
            path: self.label_of(obj),
            source: os_error(libc::ENOENT),
        }
    }
}

/// A length `len` of `what` at `path`, refused when over `max` (as a folder store
/// refuses a file).
fn bounded(bytes: Vec<u8>, max: u64, path: PathBuf, what: &'static str) -> Result<Vec<u8>> {
    if bytes.len() as u64 > max {
        return Err(FormatError::TooLarge {
            path,
            what,
            len: bytes.len() as u64,
            max,
        });
    }
    Ok(bytes)
}

impl VolumeStore for MemoryStore {
    fn label(&self) -> String {
        format!("mem:{}", self.name)
    }

    fn exists(&self) -> bool {
        !self.map().is_empty()
    }

    fn sessions(&self) -> Result<Vec<String>> {
        Ok(self.map().keys().cloned().collect())
    }

    fn storage(&self, _id: &str) -> Storage {
        Storage::Folder
    }

    fn info_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let obj = Object::Info(id.to_string());
        let bytes = self
            .map()
            .get(id)
            .map(|s| s.info.clone())
            .ok_or_else(|| self.missing(&obj))?;
        bounded(
            bytes,
            limits::MAX_INFO_BYTES,
            self.label_of(&obj),
            "info file",
        )
    }

    fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>> {
        let obj = Object::Manifest(id.to_string());
        let bytes = self
            .map()
            .get(id)
            .map(|s| s.manifest.clone())
            .ok_or_else(|| self.missing(&obj))?;
        Ok(Box::new(Cursor::new(bytes)))
    }

    fn manifest_len(&self, id: &str) -> Result<u64> {
        let obj = Object::Manifest(id.to_string());
        self.map()
            .get(id)
            .map(|s| s.manifest.len() as u64)
            .ok_or_else(|| self.missing(&obj))
    }

    fn read_stored(&self, info: &SessionInfo, addrs: &[u64]) -> Vec<Result<Vec<u8>>> {
        let max = codec::for_info(info).max_stored(info.chunksize);
        let map = self.map();
        addrs
            .iter()
            .map(|&addr| {
                let obj = Object::Chunk(info.session.clone(), addr);
                let bytes = map
                    .get(&info.session)
                    .and_then(|s| s.chunks.get(&addr).cloned())
                    .ok_or_else(|| self.missing(&obj))?;
                bounded(bytes, max, self.label_of(&obj), "chunk file")
            })
            .collect()
    }

    fn chunk_location(&self, id: &str, addr: u64) -> String {
        self.label_of(&Object::Chunk(id.to_string(), addr))
            .display()
            .to_string()
    }

    fn manifest_label(&self, id: &str) -> PathBuf {
        self.label_of(&Object::Manifest(id.to_string()))
    }

    fn info_label(&self, id: &str) -> PathBuf {
        self.label_of(&Object::Info(id.to_string()))
    }
}

/// The volume's bytes at four sends, for tests: 24 chunks of 4 KiB, all data; then
/// chunks 2, 3 and 17 rewritten; then chunk 5 zeroed and chunk 20 rewritten; then a
/// shrink to 22 chunks (the last one partial) and chunk 1 rewritten. The view of the
/// last session has 21 chunks: 1 from session 4, 2, 3 and 17 from session 2, 20 from
/// session 3, the rest from session 1.
pub fn history_versions() -> Vec<Vec<u8>> {
    let cs = 4096usize;
    let v1: Vec<u8> = (0..24 * cs).map(|i| (i * 7 % 251) as u8 | 1).collect();
    let mut v2 = v1.clone();
    for c in [2usize, 3, 17] {
        v2[c * cs + 9] ^= 0x55;
    }
    let mut v3 = v2.clone();
    v3[5 * cs..6 * cs].fill(0);
    v3[20 * cs] = 0;
    let mut v4 = v3.clone();
    v4.truncate(22 * cs - 100);
    v4[cs] ^= 0xff;
    vec![v1, v2, v3, v4]
}

/// Any store, failing as `faults` plans: every method call counts as one call (every
/// address of a batch as one), vanished objects are not found, torn ones come back cut.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Faults,
}

impl<S: VolumeStore> FaultyStore<S> {
    pub fn new(inner: S, faults: Faults) -> FaultyStore<S> {
        FaultyStore { inner, faults }
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn check(&self, what: &str, path: PathBuf) -> Result<()> {
        self.faults
            .call(what)
            .map_err(|source| FormatError::Io { path, source })
    }

    fn read(&self, obj: &Object, path: PathBuf, bytes: Vec<u8>) -> Result<Vec<u8>> {
        self.faults
            .read(obj, bytes)
            .map_err(|source| FormatError::Io { path, source })
    }
}

impl<S: VolumeStore> VolumeStore for FaultyStore<S> {
    fn label(&self) -> String {
        self.inner.label()
    }

    fn exists(&self) -> bool {
        self.inner.exists()
    }

    fn sessions(&self) -> Result<Vec<String>> {
        self.check("sessions", PathBuf::from(self.inner.label()))?;
        self.inner.sessions()
    }

    fn storage(&self, id: &str) -> Storage {
        self.inner.storage(id)
    }

    fn info_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let path = self.inner.info_label(id);
        self.check("info", path.clone())?;
        let obj = Object::Info(id.to_string());
        // A vanished object is not read at all.
        self.read(&obj, path.clone(), Vec::new())?;
        let bytes = self.inner.info_bytes(id)?;
        self.read(&obj, path, bytes)
    }

    fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>> {
        let path = self.inner.manifest_label(id);
        self.check("manifest", path.clone())?;
        let obj = Object::Manifest(id.to_string());
        self.read(&obj, path.clone(), Vec::new())?;
        let torn = self.faults.state().torn.get(&obj).copied();
        let r = self.inner.manifest_bytes(id)?;
        Ok(match torn {
            Some(keep) => Box::new(std::io::Read::take(r, keep as u64)),
            None => r,
        })
    }

    fn manifest_len(&self, id: &str) -> Result<u64> {
        let path = self.inner.manifest_label(id);
        self.check("manifest length", path.clone())?;
        let obj = Object::Manifest(id.to_string());
        self.read(&obj, path, Vec::new())?;
        let len = self.inner.manifest_len(id)?;
        let torn = self.faults.state().torn.get(&obj).copied();
        Ok(torn.map_or(len, |k| len.min(k as u64)))
    }

    fn read_stored(&self, info: &SessionInfo, addrs: &[u64]) -> Vec<Result<Vec<u8>>> {
        let inner = self.inner.read_stored(info, addrs);
        addrs
            .iter()
            .zip(inner)
            .map(|(&addr, r)| {
                let path = PathBuf::from(self.inner.chunk_location(&info.session, addr));
                self.check("chunk", path.clone())?;
                let obj = Object::Chunk(info.session.clone(), addr);
                self.read(&obj, path.clone(), Vec::new())?;
                self.read(&obj, path, r?)
            })
            .collect()
    }

    fn chunk_location(&self, id: &str, addr: u64) -> String {
        self.inner.chunk_location(id, addr)
    }

    fn manifest_label(&self, id: &str) -> PathBuf {
        self.inner.manifest_label(id)
    }

    fn info_label(&self, id: &str) -> PathBuf {
        self.inner.info_label(id)
    }

    fn forget_cached(&self) {
        self.inner.forget_cached()
    }

    fn as_folder(&self) -> Option<&FolderStore> {
        // Code that would reach around the store to the files must not: the faults
        // would be skipped.
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ManifestReader;

    use crate::fuzzing::versions;

    fn parse(store: &dyn VolumeStore, id: &str) -> Result<SessionInfo> {
        let b = store.info_bytes(id)?;
        SessionInfo::parse(
            std::str::from_utf8(&b).map_err(|e| FormatError::Other(e.to_string()))?,
            &store.info_label(id),
        )
    }

    #[test]
    fn a_memory_store_holds_what_send_would_write() {
        let (store, infos) =
            MemoryStore::from_versions("vm-a", 4096, Codec::Zstd, &versions()).unwrap();
        assert_eq!(
            store.sessions().unwrap(),
            vec!["20260101-000000", "20260101-000001"]
        );
        for i in &infos {
            assert_eq!(&parse(&store, &i.session).unwrap(), i);
            let m: Vec<_> = ManifestReader::new(
                store.manifest_bytes(&i.session).unwrap(),
                &store.manifest_label(&i.session),
            )
            .collect::<Result<_>>()
            .unwrap();
            assert_eq!(m.len() as u64, i.changed);
        }
        // v1: chunks 0, 1, 2 and 5 are data; v2 zeroes chunk 0, changes chunk 1 and
        // cuts the volume after chunk 4.
        assert_eq!(infos[0].changed, 4);
        assert_eq!(infos[1].changed, 2);
        let got = store.read_stored(&infos[1], &[4096, 0]);
        assert!(got[0].is_ok());
        let e = got[1].as_ref().unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "mem:vm-a/S_20260101-000001/{}: {}",
                layout::chunk_rel_path(0).display(),
                os_error(libc::ENOENT)
            )
        );
    }

    #[test]
    fn the_memory_store_bounds_what_it_returns() {
        let (store, infos) =
            MemoryStore::from_versions("vm-a", 4096, Codec::None, &versions()).unwrap();
        let id = &infos[0].session;
        store.edit(id, |s| {
            s.chunks.insert(0, vec![1u8; 4097]);
            s.info = vec![b'x'; limits::MAX_INFO_BYTES as usize + 1];
        });
        match &store.read_stored(&infos[0], &[0])[0] {
            Err(FormatError::TooLarge {
                what: "chunk file",
                len: 4097,
                max: 4096,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            store.info_bytes(id),
            Err(FormatError::TooLarge {
                what: "info file",
                ..
            })
        ));
    }

    #[test]
    fn faults_fire_as_planned() {
        let (store, infos) =
            MemoryStore::from_versions("vm-a", 4096, Codec::Zstd, &versions()).unwrap();
        let id = infos[0].session.clone();
        // EIO at the third call only: sessions, info, then the batch's first chunk.
        let f = FaultyStore::new(store.clone(), Faults::new().eio_at_call(3));
        f.sessions().unwrap();
        f.info_bytes(&id).unwrap();
        let r = f.read_stored(&infos[0], &[0, 4096]);
        let e = r[0].as_ref().unwrap_err().to_string();
        assert!(e.starts_with(&format!("mem:vm-a/S_{id}/")), "{e}");
        assert!(e.ends_with(&os_error(libc::EIO).to_string()), "{e}");
        assert!(r[1].is_ok());
        assert_eq!(
            f.faults().fired(),
            vec!["EIO at call 3 (chunk)".to_string()]
        );
        // A vanished manifest is listed (its session is) but not found.
        let f = FaultyStore::new(
            store.clone(),
            Faults::new().vanish(Object::Manifest(id.clone())),
        );
        assert!(f.sessions().unwrap().contains(&id));
        let e = f.manifest_bytes(&id).err().unwrap().to_string();
        assert_eq!(
            e,
            format!("mem:vm-a/S_{id}/manifest: {}", os_error(libc::ENOENT))
        );
        // A torn chunk comes back cut, a torn manifest too.
        let f = FaultyStore::new(
            store.clone(),
            Faults::new()
                .tear(Object::Chunk(id.clone(), 0), 7)
                .tear(Object::Manifest(id.clone()), 10),
        );
        assert_eq!(f.read_stored(&infos[0], &[0])[0].as_ref().unwrap().len(), 7);
        assert_eq!(f.manifest_len(&id).unwrap(), 10);
        let mut m = Vec::new();
        std::io::Read::read_to_end(&mut f.manifest_bytes(&id).unwrap(), &mut m).unwrap();
        assert_eq!(m.len(), 10);
        // Writes: torn keeps a prefix, ENOSPC once the room is used.
        let w = Faults::new()
            .enospc_after(10)
            .tear(Object::Chunk(id.clone(), 0), 4);
        assert_eq!(
            w.write(&Object::Chunk(id.clone(), 0), b"abcdefgh").unwrap(),
            b"abcd"
        );
        assert_eq!(
            w.write(&Object::Info(id.clone()), b"123456").unwrap(),
            b"123456"
        );
        let e = w.write(&Object::Manifest(id.clone()), b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(w.written(), 10);
    }
}

/// Receive (restore, read_view) and the read side of every command, reading a volume
/// through a store that fails on purpose.
#[cfg(test)]
mod receive_tests {
    use std::sync::Arc;

    use super::*;
    use crate::restore::{restore, RestoreError, Target};
    use crate::volume::VolumeArchive;

    const VOL: &str = "vm-a";
    const CS: u64 = 4096;

    fn versions() -> Vec<Vec<u8>> {
        history_versions()
    }

    /// A volume in memory, as a plain byte vector.
    #[derive(Default)]
    struct Bytes(Vec<u8>);

    impl Target for Bytes {
        fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
            let end = off as usize + data.len();
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[off as usize..end].copy_from_slice(data);
            Ok(())
        }
        fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
            let end = (off + len) as usize;
            if self.0.len() < end {
                self.0.resize(end, 0);
            }
            self.0[off as usize..end].fill(0);
            Ok(())
        }
        fn finish(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn over(store: &MemoryStore, faults: Faults) -> VolumeArchive {
        VolumeArchive::from_store(VOL, Arc::new(FaultyStore::new(store.clone(), faults)))
    }

    fn receive(vol: &VolumeArchive, id: &str) -> std::result::Result<Vec<u8>, String> {
        let chain = vol.chain(id).map_err(|e| e.to_string())?;
        let mut out = Bytes::default();
        restore(vol, &chain, &mut out, true, &mut |_| {})
            .map_err(|e: RestoreError| e.to_string())?;
        Ok(out.0)
    }

    fn chunk_at(id: &str, addr: u64) -> String {
        format!(
            "mem:{VOL}/{}/{}",
            layout::session_dir_name(id),
            layout::chunk_rel_path(addr).display()
        )
    }

    #[test]
    fn every_session_restores_byte_identical_from_memory() {
        for codec in [Codec::Zstd, Codec::None] {
            let vs = versions();
            let (store, infos) = MemoryStore::from_versions(VOL, CS, codec, &vs).unwrap();
            let faults = Faults::new();
            let vol = over(&store, faults.clone());
            for (v, info) in vs.iter().zip(&infos) {
                assert_eq!(
                    &receive(&vol, &info.session).unwrap(),
                    v,
                    "{}",
                    info.session
                );
            }
            assert!(faults.fired().is_empty());
        }
    }

    #[test]
    fn a_chunk_that_fails_to_read_fails_the_restore_naming_it() {
        let vs = versions();
        let (store, infos) = MemoryStore::from_versions(VOL, CS, Codec::Zstd, &vs).unwrap();
        let (s2, last) = (&infos[1].session, &infos[3].session);
        // Chunk 17 of session 2 is still in session 4's view.
        let obj = Object::Chunk(s2.clone(), 17 * CS);
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        for (faults, want) in [
            (
                Faults::new().eio_on(obj.clone()),
                format!("{}: {eio}", chunk_at(s2, 17 * CS)),
            ),
            (
                Faults::new().vanish(obj.clone()),
                format!("{}: {enoent}", chunk_at(s2, 17 * CS)),
            ),
        ] {
            let e = receive(&over(&store, faults.clone()), last).unwrap_err();
            assert_eq!(e, want);
            assert_eq!(faults.fired().len(), 1, "{:?}", faults.fired());
        }
        // A torn chunk does not decode: the error names its file and the cause.
        let faults = Faults::new().tear(obj, 20);
        let e = receive(&over(&store, faults), last).unwrap_err();
        assert!(
            e.starts_with(&format!("{}: zstd: ", chunk_at(s2, 17 * CS))),
            "{e}"
        );
        // Chunk 17 is not in session 1's view of session 2's data: session 1 restores.
        assert_eq!(
            receive(
                &over(
                    &store,
                    Faults::new().eio_on(Object::Chunk(s2.clone(), 17 * CS))
                ),
                &infos[0].session
            )
            .unwrap(),
            vs[0]
        );
    }

    #[test]
    fn a_manifest_or_info_that_vanished_fails_the_restore_naming_it() {
        let vs = versions();
        let (store, infos) = MemoryStore::from_versions(VOL, CS, Codec::Zstd, &vs).unwrap();
        let last = &infos[3].session;
        let s3 = &infos[2].session;
        let enoent = std::io::Error::from_raw_os_error(libc::ENOENT);
        let e = receive(
            &over(&store, Faults::new().vanish(Object::Manifest(s3.clone()))),
            last,
        )
        .unwrap_err();
        assert_eq!(e, format!("mem:{VOL}/S_{s3}/manifest: {enoent}"));
        let e = receive(
            &over(&store, Faults::new().vanish(Object::Info(s3.clone()))),
            last,
        )
        .unwrap_err();
        assert_eq!(e, format!("mem:{VOL}/S_{s3}/info: {enoent}"));
        // A torn manifest no longer matches the hash in its info: the file is named
        // before any of it is used.
        let e = receive(
            &over(
                &store,
                Faults::new().tear(Object::Manifest(s3.clone()), 100),
            ),
            last,
        )
        .unwrap_err();
        assert!(
            e.starts_with(&format!(
                "mem:{VOL}/S_{s3}/manifest: the manifest of session {s3} does not match \
                 the hash in its info"
            )),
            "{e}"
        );
    }

    #[test]
    fn an_io_error_at_any_call_fails_the_restore_cleanly() {
        let vs = versions();
        let (store, infos) = MemoryStore::from_versions(VOL, CS, Codec::Zstd, &vs).unwrap();
        let last = &infos[3].session;
        let clean = Faults::new();
        assert_eq!(receive(&over(&store, clean.clone()), last).unwrap(), vs[3]);
        let calls = clean.calls();
        assert!(calls > 20, "{calls}");
        let eio = std::io::Error::from_raw_os_error(libc::EIO).to_string();
        for n in 1..=calls {
            let faults = Faults::new().eio_at_call(n);
            let e = receive(&over(&store, faults.clone()), last).unwrap_err();
            assert!(e.starts_with(&format!("mem:{VOL}")), "call {n}: {e}");
            assert!(e.ends_with(&eio), "call {n}: {e}");
            assert_eq!(faults.fired().len(), 1, "call {n}");
        }
    }
}
