//! A destination's write side held in memory, failing on purpose as a
//! [`Faults`] plan says: for tests of `send` and of what reads its sessions back.
//!
//! [`MemorySink`] writes one session into a [`MemoryStore`] (the read side, in the
//! format crate): chunks and manifest lines as they come, the info at `prepare`, and
//! the session appears whole at `commit`, as a folder destination's rename makes it.
//! Every call is one call of the plan (EIO at the n-th), every byte kept counts
//! against its room (ENOSPC after N bytes), a torn object keeps a prefix only.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::store::VolumeStore;
use sparsebak_format::testing::{Faults, MemorySession, MemoryStore, Object};
use sparsebak_format::Hash;

use crate::destination::{NewSession, SessionSink};
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
    volumes: std::sync::Arc<std::sync::Mutex<BTreeMap<String, MemoryStore>>>,
}

impl MemoryVolumes {
    /// The store of volume `name` (created empty when it is not there).
    pub fn store(&self, name: &str) -> MemoryStore {
        let mut v = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        v.entry(name.to_string())
            .or_insert_with(|| MemoryStore::new(name))
            .clone()
    }

    /// Put `store` in as its volume.
    pub fn insert(&self, store: MemoryStore) {
        let mut v = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        v.insert(store.name().to_string(), store);
    }

    /// Volumes that hold at least one session, sorted.
    pub fn names(&self) -> Vec<String> {
        let v = self.volumes.lock().unwrap_or_else(|p| p.into_inner());
        v.iter()
            .filter(|(_, s)| s.exists())
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
