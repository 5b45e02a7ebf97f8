//! A destination's write side held in memory, failing on purpose as a
//! [`Faults`] plan says: for tests of `send` and of what reads its sessions back.
//!
//! [`MemorySink`] writes one session into a [`MemoryStore`] (the read side, in the
//! format crate): chunks and manifest lines as they come, the info at `prepare`, and
//! the session appears whole at `commit`, as a folder destination's rename makes it.
//! Every call is one call of the plan (EIO at the n-th), every byte kept counts
//! against its room (ENOSPC after N bytes), a torn object keeps a prefix only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::marker::ArchiveMarker;
use sparsebak_format::store::VolumeStore;
use sparsebak_format::testing::{Faults, FaultyStore, MemorySession, MemoryStore, Object};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::destination::{
    session_problem, DestLock, Destination, FoldPlan, Mode, NewSession, SessionCheck, SessionFile,
    SessionKind, SessionSink,
};
use crate::error::{Error, Result};

/// Where one session being written stands.
enum Stage {
    Writing,
    Prepared(SessionInfo),
}

/// A new session of a [`MemoryStore`]'s volume (see the module documentation).
pub struct MemorySink {
    store: MemoryStore,
    id: String,
    faults: Faults,
    manifest: Option<ManifestWriter<Vec<u8>>>,
    session: MemorySession,
    changed: u64,
    bytes_stored: u64,
    stage: Stage,
}

impl MemorySink {
    /// Start session `id` of `store`'s volume; `faults` decides what fails.
    pub fn new(store: &MemoryStore, id: &str, faults: Faults) -> MemorySink {
        MemorySink {
            store: store.clone(),
            id: id.to_string(),
            faults,
            manifest: Some(ManifestWriter::new(Vec::new())),
            session: MemorySession::default(),
            changed: 0,
            bytes_stored: 0,
            stage: Stage::Writing,
        }
    }

    fn path(&self, obj: &Object) -> PathBuf {
        PathBuf::from(self.store.label()).join(obj.rel_path())
    }

    /// Count one call on `obj`, failing as planned.
    fn call(&self, what: &str, obj: &Object) -> Result<()> {
        self.faults.call(what).map_err(|source| Error::Io {
            path: self.path(obj),
            source,
        })
    }

    /// Write `bytes` as `obj`: what the plan keeps of them.
    fn write(&self, obj: &Object, bytes: &[u8]) -> Result<Vec<u8>> {
        match self.faults.write(obj, bytes) {
            Ok(kept) => Ok(kept.to_vec()),
            Err(source) => Err(Error::Io {
                path: self.path(obj),
                source,
            }),
        }
    }

    fn line(&mut self, entry: &Entry) -> Result<()> {
        let obj = Object::Manifest(self.id.clone());
        let path = self.path(&obj);
        let m = self
            .manifest
            .as_mut()
            .ok_or_else(|| Error::Msg(format!("{}: already finished", path.display())))?;
        m.push(entry).map_err(|source| Error::Io { path, source })?;
        self.changed += 1;
        Ok(())
    }

    fn writing(&self) -> Result<()> {
        match self.stage {
            Stage::Writing => Ok(()),
            Stage::Prepared(_) => Err(Error::Msg(format!(
                "session {} of {}: written to after prepare",
                self.id,
                self.store.label()
            ))),
        }
    }
}

impl SessionSink for MemorySink {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        self.writing()?;
        let obj = Object::Chunk(self.id.clone(), addr);
        self.call("put chunk", &obj)?;
        let kept = self.write(&obj, payload)?;
        self.line(&Entry {
            addr,
            hash: Some(hash),
        })?;
        self.bytes_stored += payload.len() as u64;
        self.session.chunks.insert(addr, kept);
        Ok(())
    }

    fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.writing()?;
        self.call("put zero", &Object::Manifest(self.id.clone()))?;
        self.line(&Entry { addr, hash: None })
    }

    fn changed(&self) -> u64 {
        self.changed
    }

    fn bytes_stored(&self) -> u64 {
        self.bytes_stored
    }

    fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo> {
        self.writing()?;
        let mobj = Object::Manifest(self.id.clone());
        self.call("prepare", &mobj)?;
        let m = self.manifest.take().ok_or_else(|| {
            Error::Msg(format!("{}: already finished", self.path(&mobj).display()))
        })?;
        let (manifest, sha) = m.finish().map_err(|source| Error::Io {
            path: self.path(&mobj),
            source,
        })?;
        let info = fields.info(self.changed, self.bytes_stored, sha);
        self.session.manifest = self.write(&mobj, &manifest)?;
        let iobj = Object::Info(self.id.clone());
        self.session.info = self.write(&iobj, info.to_text().as_bytes())?;
        self.stage = Stage::Prepared(info.clone());
        Ok(info)
    }

    fn commit(self: Box<Self>) -> Result<SessionInfo> {
        let obj = Object::Info(self.id.clone());
        self.call("commit", &obj)?;
        match self.stage {
            Stage::Prepared(info) => {
                self.store.insert(&self.id, self.session);
                Ok(info)
            }
            Stage::Writing => Err(Error::Msg(format!(
                "session {} of {}: commit before prepare",
                self.id,
                self.store.label()
            ))),
        }
    }

    fn abort(self: Box<Self>) -> Result<()> {
        // Nothing of the session was visible: dropping it is all.
        Ok(())
    }
}

/// Several volumes held in memory: the stores a memory destination reads and writes.
#[derive(Debug, Clone, Default)]
pub struct MemoryVolumes {
    volumes: Arc<Mutex<BTreeMap<String, MemoryStore>>>,
}

impl MemoryVolumes {
    fn map(&self) -> MutexGuard<'_, BTreeMap<String, MemoryStore>> {
        self.volumes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store of volume `name` (created empty when it is not there).
    pub fn store(&self, name: &str) -> MemoryStore {
        self.map()
            .entry(name.to_string())
            .or_insert_with(|| MemoryStore::new(name))
            .clone()
    }

    /// Put `store` in as its volume.
    pub fn insert(&self, store: MemoryStore) {
        self.map().insert(store.name().to_string(), store);
    }

    /// Volumes that hold at least one session, sorted.
    pub fn names(&self) -> Vec<String> {
        self.map()
            .iter()
            .filter(|(_, s)| s.exists())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Take volume `name` out; whether it held anything.
    fn remove(&self, name: &str) -> bool {
        self.map().remove(name).is_some_and(|s| s.exists())
    }
}

/// Releases a volume's lock of a [`MemoryDestination`] when dropped.
struct MemoryLock {
    held: Arc<Mutex<BTreeSet<String>>>,
    name: String,
}

impl Drop for MemoryLock {
    fn drop(&mut self) {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

/// An archive held in memory behind the [`Destination`] seam, failing as its
/// [`Faults`] plan says: sessions are written through [`MemorySink`] and read through a
/// [`FaultyStore`] over each volume's [`MemoryStore`]. It has no staging, no tar form
/// and no prune journal; prune is refused (it folds files where they are, which only
/// the local destination does).
#[derive(Debug, Clone)]
pub struct MemoryDestination {
    volumes: MemoryVolumes,
    faults: Faults,
    marker: Arc<Mutex<Option<ArchiveMarker>>>,
    locks: Arc<Mutex<BTreeSet<String>>>,
}

/// The identity of every archive in memory.
pub const MEMORY_ARCHIVE_ID: &str = "00000000-0000-4000-8000-00000000000a";

impl MemoryDestination {
    /// An empty archive (with its marker) failing as `faults` says.
    pub fn new(faults: Faults) -> MemoryDestination {
        MemoryDestination {
            volumes: MemoryVolumes::default(),
            faults,
            marker: Arc::new(Mutex::new(Some(ArchiveMarker::new(MEMORY_ARCHIVE_ID)))),
            locks: Arc::new(Mutex::new(BTreeSet::new())),
        }
    }

    /// The same archive (volumes, marker, locks), failing as `faults` says instead.
    pub fn with_faults(&self, faults: Faults) -> MemoryDestination {
        MemoryDestination {
            faults,
            ..self.clone()
        }
    }

    /// The volumes it holds.
    pub fn stores(&self) -> &MemoryVolumes {
        &self.volumes
    }

    /// Its fault plan (shared with every sink and store it hands out).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    fn marker_slot(&self) -> MutexGuard<'_, Option<ArchiveMarker>> {
        self.marker.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unsupported(&self, what: &str) -> Error {
        Error::Msg(format!(
            "{}: {what} is not supported by an archive in memory",
            self.label()
        ))
    }
}

impl Destination for MemoryDestination {
    fn label(&self) -> String {
        "mem:".to_string()
    }

    fn read_only(&self) -> bool {
        false
    }

    fn marker(&self) -> Result<Option<ArchiveMarker>> {
        Ok(self.marker_slot().clone())
    }

    fn create(&self) -> Result<()> {
        self.marker_slot()
            .get_or_insert_with(|| ArchiveMarker::new(MEMORY_ARCHIVE_ID));
        Ok(())
    }

    fn add_identity(&self) -> Result<String> {
        let mut m = self.marker_slot();
        let m = m.get_or_insert_with(|| ArchiveMarker::new(MEMORY_ARCHIVE_ID));
        Ok(m.id
            .get_or_insert_with(|| MEMORY_ARCHIVE_ID.to_string())
            .clone())
    }

    fn volumes(&self) -> Result<Vec<String>> {
        Ok(self.volumes.names())
    }

    fn volume(&self, name: &str) -> VolumeArchive {
        let store = FaultyStore::new(self.volumes.store(name), self.faults.clone());
        VolumeArchive::from_store(name, Arc::new(store))
    }

    fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<DestLock>> {
        if mode == Mode::Shared {
            return Ok(None);
        }
        let mut held = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        if !held.insert(name.to_string()) {
            return Err(Error::Msg(format!(
                "volume {name} in {}: locked by another run",
                self.label()
            )));
        }
        Ok(Some(DestLock::new(MemoryLock {
            held: self.locks.clone(),
            name: name.to_string(),
        })))
    }

    fn begin_session(
        &self,
        name: &str,
        id: &str,
        _kind: SessionKind,
        _base: Option<&str>,
        _volsize: u64,
    ) -> Result<Box<dyn SessionSink>> {
        let store = self.volumes.store(name);
        Ok(Box::new(MemorySink::new(&store, id, self.faults.clone())))
    }

    fn remove_staging(&self, _name: &str) -> Result<()> {
        // A session is invisible until its commit, and nothing of it stays otherwise.
        Ok(())
    }

    fn sweep_dead_runs(&self) {}

    fn interrupted_prune(&self, _name: &str) -> Result<Option<(String, String)>> {
        Ok(None)
    }

    fn recover(
        &self,
        _name: &str,
        _removed_info: Option<&SessionInfo>,
    ) -> Result<Option<(String, String)>> {
        Ok(None)
    }

    fn check_removal(&self, _name: &str, _targets: &[String]) -> Result<()> {
        Err(self.unsupported("prune"))
    }

    fn fold(
        &self,
        _name: &str,
        _remove: &str,
        _dry_run: bool,
        _removed_info: Option<&SessionInfo>,
    ) -> Result<FoldPlan> {
        Err(self.unsupported("prune"))
    }

    fn end_fold(&self, _name: &str) -> Result<()> {
        Ok(())
    }

    fn check_stored(
        &self,
        name: &str,
        info: &SessionInfo,
        bad_manifest: bool,
    ) -> Result<SessionCheck> {
        let id = &info.session;
        let mut walk = SessionCheck {
            bad_manifest,
            ..Default::default()
        };
        // The listing is the store's own (objects that vanish later are still in
        // it); the manifest is read like every other read, through the faults.
        let Some(listed) = self.volumes.store(name).session(id) else {
            walk.problems
                .push(format!("session {id}: not in {}", self.label()));
            walk.unlisted = true;
            return Ok(walk);
        };
        let mut extra: BTreeSet<u64> = listed.chunks.keys().copied().collect();
        let vol = self.volume(name);
        let manifest = match vol.manifest(id) {
            Ok(m) => m,
            Err(e) => {
                if !walk.bad_manifest {
                    walk.problems.push(session_problem(id, e));
                }
                walk.bad_manifest = true;
                return Ok(walk);
            }
        };
        let mut lines = 0u64;
        for e in manifest {
            let e = match e {
                Ok(e) => e,
                Err(err) => {
                    if !walk.bad_manifest {
                        walk.problems.push(session_problem(id, err));
                    }
                    walk.bad_manifest = true;
                    return Ok(walk);
                }
            };
            lines += 1;
            if e.hash.is_some() && !extra.remove(&e.addr) {
                walk.problems.push(format!(
                    "chunk file {} is missing",
                    vol.chunk_location(id, e.addr)
                ));
                walk.missing.push(e.addr);
            }
        }
        for a in extra {
            walk.problems.push(format!(
                "session {id}: extra chunk x{a:016x} not in its manifest"
            ));
        }
        if lines != info.changed {
            walk.problems.push(format!(
                "session {id}: info says changed={}, manifest has {lines} lines",
                info.changed
            ));
        }
        Ok(walk)
    }

    fn untar(&self, _name: &str, _id: &str) -> Result<bool> {
        // Every session in memory is in one form.
        Ok(false)
    }

    fn delete_sessions(&self, name: &str, ids: &[String]) -> Result<()> {
        let store = self.volumes.store(name);
        for id in ids {
            self.faults
                .call("delete session")
                .map_err(|source| Error::Io {
                    path: PathBuf::from(store.label()).join(format!("S_{id}")),
                    source,
                })?;
            store.remove(id);
        }
        Ok(())
    }

    fn delete_volume(&self, name: &str) -> Result<bool> {
        Ok(self.volumes.remove(name))
    }

    fn volume_is_free(&self, name: &str) -> Result<bool> {
        Ok(!self.volumes.store(name).exists())
    }

    fn rename_volume(&self, old: &str, new: &str) -> Result<bool> {
        let store = self.volumes.store(old);
        if !store.exists() {
            return Ok(false);
        }
        self.volumes.remove(old);
        self.volumes.insert(store.renamed(new));
        Ok(true)
    }

    fn put_session_file(
        &self,
        name: &str,
        id: &str,
        file: SessionFile,
        bytes: &[u8],
    ) -> Result<()> {
        let store = self.volumes.store(name);
        let obj = match file {
            SessionFile::Info => Object::Info(id.to_string()),
            SessionFile::Manifest => Object::Manifest(id.to_string()),
            SessionFile::Chunk(addr) => Object::Chunk(id.to_string(), addr),
        };
        let path = PathBuf::from(store.label()).join(obj.rel_path());
        self.faults
            .call("put session file")
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        let kept = self
            .faults
            .write(&obj, bytes)
            .map_err(|source| Error::Io { path, source })?
            .to_vec();
        if store.session(id).is_none() {
            store.insert(id, MemorySession::default());
        }
        store.edit(id, |s| match file {
            SessionFile::Info => s.info = kept,
            SessionFile::Manifest => s.manifest = kept,
            SessionFile::Chunk(addr) => {
                s.chunks.insert(addr, kept);
            }
        });
        Ok(())
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
