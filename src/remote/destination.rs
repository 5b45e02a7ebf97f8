//! [`RemoteDestination`]: the destination seam over the protocol, one request per
//! method, mapped by `sparsebak serve` to the same method of the archive folder's
//! local destination over there; and [`RemoteSink`], whose chunk writes are
//! streamed without waiting for their answers (a bounded window).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::marker::ArchiveMarker;
use sparsebak_format::Hash;

use super::client::{Connection, RemoteError};
use super::proto::{dreq, Dec, Enc, WireError};
use super::store::RemoteStore;
use super::transport::RemoteSpec;
use super::wire;
use crate::destination::{
    DestLock, FoldPlan, Mode, NewSession, SessionCheck, SessionFile, SessionKind, SessionSink,
};
use crate::error::{Error, Result};

/// An archive on another machine, reached through `sparsebak serve` there.
#[derive(Debug, Clone)]
pub struct RemoteDestination {
    conn: Arc<Mutex<Connection>>,
    label: String,
    read_only: bool,
}

fn poisoned(label: &str) -> Error {
    Error::Msg(format!(
        "destination {label}: the connection's lock is poisoned"
    ))
}

impl RemoteDestination {
    /// Reach the archive `destdir` (under `destmountpoint`, both paths of the far
    /// side) through `spec`. `writing` says whether the run will change it.
    pub fn open(
        spec: &RemoteSpec,
        destdir: &Path,
        destmountpoint: Option<&Path>,
        writing: bool,
    ) -> Result<RemoteDestination> {
        let mut conn = Connection::open(spec, destdir, destmountpoint, writing)?;
        let (_, read_only) = conn.archive().unwrap_or((None, false));
        Ok(RemoteDestination {
            label: conn.label().to_string(),
            conn: Arc::new(Mutex::new(conn)),
            read_only,
        })
    }

    /// The connection (for the read side's stores, and tests).
    pub fn connection(&self) -> Arc<Mutex<Connection>> {
        self.conn.clone()
    }

    fn call<T>(
        &self,
        payload: &Enc,
        f: impl FnOnce(&mut Dec) -> std::result::Result<T, WireError>,
    ) -> Result<T> {
        let mut c = self.conn.lock().map_err(|_| poisoned(&self.label))?;
        let p = c.call(&payload.0)?;
        Ok(c.decode(&p, f)?)
    }

    /// The read side of volume `name`.
    pub fn store(&self, name: &str) -> RemoteStore {
        RemoteStore::new(self.conn.clone(), name)
    }
}

/// A volume lock held by the far side until this is dropped (or the link goes).
struct RemoteLock {
    conn: Arc<Mutex<Connection>>,
    volume: String,
}

impl Drop for RemoteLock {
    fn drop(&mut self) {
        if let Ok(mut c) = self.conn.lock() {
            if let Err(e) = c.unlock(&self.volume) {
                tracing::debug!("releasing the lock of {}: {e}", self.volume);
            }
        }
    }
}

/// A session being written on the far side. Chunk writes go out without waiting;
/// their answers are read when the window is full and before anything that needs an
/// answer, and the first failure is the error.
pub struct RemoteSink {
    conn: Arc<Mutex<Connection>>,
    label: String,
    volume: String,
    changed: u64,
    bytes_stored: u64,
    /// Chunks the far side kept from an interrupted send on the same base, offered
    /// in address order a page at a time: (address, hash).
    offers: std::collections::VecDeque<(u64, Hash)>,
    /// Whether the far side may offer more after the last page.
    more_offers: bool,
    /// Chunks taken over instead of sent, and their stored bytes.
    resumed: u64,
    resumed_bytes: u64,
}

impl RemoteSink {
    /// Whether the far side kept the chunk at `addr` with this hash: the offers are
    /// read a page at a time, as the session's addresses pass them.
    fn offered(&mut self, addr: u64, hash: &Hash) -> Result<bool> {
        while self.offers.front().is_some_and(|&(a, _)| a < addr) {
            self.offers.pop_front();
        }
        if self.offers.is_empty() && self.more_offers {
            let mut e = Enc::new();
            e.u8(dreq::RESUME_OFFERS)
                .u64(addr)
                .u32(super::proto::MAX_OFFERS);
            let (page, more) = self.with(|c| {
                let p = c.call(&e.0)?;
                c.decode(&p, |d| {
                    let n = d.u32()?;
                    if n > super::proto::MAX_OFFERS {
                        return Err(WireError::Malformed(format!("{n} offers in one answer")));
                    }
                    let mut page = Vec::with_capacity(n as usize);
                    for _ in 0..n {
                        page.push((d.u64()?, d.hash()?));
                    }
                    Ok((page, d.bool()?))
                })
            })?;
            // In address order, from `addr` on, or the far side is not trusted.
            if page.windows(2).any(|w| w[0].0 >= w[1].0) || page.first().is_some_and(|p| p.0 < addr)
            {
                return Err(Error::Msg(format!(
                    "destination {}: the far side offered kept chunks out of order",
                    self.label
                )));
            }
            self.more_offers = more && !page.is_empty();
            self.offers.extend(page);
        }
        Ok(self.offers.front() == Some(&(addr, *hash)))
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> std::result::Result<T, RemoteError>,
    ) -> Result<T> {
        let mut c = self.conn.lock().map_err(|_| poisoned(&self.label))?;
        Ok(f(&mut c)?)
    }

    fn info_answer(&self, payload: &Enc) -> Result<SessionInfo> {
        let label = PathBuf::from(&self.label);
        self.with(|c| {
            let p = c.call(&payload.0)?;
            c.decode(&p, |d| wire::get_info(d, &label))
        })
    }
}

impl SessionSink for RemoteSink {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        if self.offered(addr, &hash)? {
            // The far side has this chunk from an interrupted send: it takes it over
            // (checking it again) instead of receiving it.
            self.offers.pop_front();
            let mut e = Enc::new();
            e.u8(dreq::ADOPT).u64(addr).hash(&hash);
            self.with(|c| {
                c.send(&e.0)?;
                c.make_room()
            })?;
            self.changed += 1;
            self.bytes_stored += payload.len() as u64;
            self.resumed += 1;
            self.resumed_bytes += payload.len() as u64;
            return Ok(());
        }
        let mut e = Enc(Vec::with_capacity(payload.len() + 48));
        e.u8(dreq::PUT_CHUNK).u64(addr).hash(&hash);
        e.0.extend_from_slice(payload);
        self.with(|c| {
            c.send(&e.0)?;
            c.make_room()
        })?;
        self.changed += 1;
        self.bytes_stored += payload.len() as u64;
        Ok(())
    }

    fn put_zero(&mut self, addr: u64) -> Result<()> {
        let mut e = Enc::new();
        e.u8(dreq::PUT_ZERO).u64(addr);
        self.with(|c| {
            c.send(&e.0)?;
            c.make_room()
        })?;
        self.changed += 1;
        Ok(())
    }

    fn changed(&self) -> u64 {
        self.changed
    }

    fn bytes_stored(&self) -> u64 {
        self.bytes_stored
    }

    fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo> {
        let mut e = Enc::new();
        e.u8(dreq::PREPARE);
        wire::put_new_session(&mut e, &fields);
        self.info_answer(&e)
    }

    fn commit(self: Box<Self>) -> Result<SessionInfo> {
        let info = self.info_answer(Enc::new().u8(dreq::COMMIT))?;
        if self.resumed > 0 {
            let line = format!(
                "{}: resumed {} chunk(s), {} byte(s) stored, that an interrupted send had left at {}; they were not sent again",
                self.volume, self.resumed, self.resumed_bytes, self.label
            );
            crate::progress::summary(&line);
        }
        Ok(info)
    }

    fn abort(self: Box<Self>) -> Result<()> {
        self.with(|c| c.call_anyway(&[dreq::ABORT]).map(|_| ()))
    }
}

impl crate::destination::Destination for RemoteDestination {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn marker(&self) -> Result<Option<ArchiveMarker>> {
        self.call(Enc::new().u8(dreq::MARKER), |d| {
            Ok(if d.bool()? {
                Some(ArchiveMarker {
                    format: d.u32()?,
                    id: d.opt_str()?,
                    encryption: d.opt_str()?,
                })
            } else {
                None
            })
        })
    }

    fn create(&self) -> Result<()> {
        self.call(Enc::new().u8(dreq::CREATE), |_| Ok(()))
    }

    fn add_identity(&self) -> Result<String> {
        self.call(Enc::new().u8(dreq::ADD_IDENTITY), |d| d.str())
    }

    fn volumes(&self) -> Result<Vec<String>> {
        self.call(Enc::new().u8(super::proto::req::VOLUMES), |d| d.strs())
    }

    fn volume(&self, name: &str) -> sparsebak_format::volume::VolumeArchive {
        sparsebak_format::volume::VolumeArchive::from_store(name, Arc::new(self.store(name)))
    }

    fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<DestLock>> {
        let held = {
            let mut c = self.conn.lock().map_err(|_| poisoned(&self.label))?;
            c.lock(name, mode == Mode::Exclusive)?
        };
        Ok(held.then(|| {
            DestLock::new(RemoteLock {
                conn: self.conn.clone(),
                volume: name.to_string(),
            })
        }))
    }

    fn begin_session(
        &self,
        name: &str,
        id: &str,
        kind: SessionKind,
        base: Option<&str>,
        volsize: u64,
    ) -> Result<Box<dyn SessionSink>> {
        let mut e = Enc::new();
        e.u8(dreq::BEGIN_SESSION).str(name).str(id);
        wire::put_kind(&mut e, kind);
        e.opt_str(base).u64(volsize);
        let resumable = self.call(&e, |d| d.bool())?;
        Ok(Box::new(RemoteSink {
            conn: self.conn.clone(),
            label: self.label.clone(),
            volume: name.to_string(),
            changed: 0,
            bytes_stored: 0,
            offers: std::collections::VecDeque::new(),
            more_offers: resumable,
            resumed: 0,
            resumed_bytes: 0,
        }))
    }

    fn remove_staging(&self, name: &str) -> Result<()> {
        self.call(Enc::new().u8(dreq::REMOVE_STAGING).str(name), |_| Ok(()))
    }

    fn sweep_dead_runs(&self) {
        if let Err(e) = self.call(Enc::new().u8(dreq::SWEEP_DEAD_RUNS), |_| Ok(())) {
            tracing::warn!("{e}");
        }
    }

    fn interrupted_prune(&self, name: &str) -> Result<Option<(String, String)>> {
        self.call(
            Enc::new().u8(dreq::INTERRUPTED_PRUNE).str(name),
            wire::get_opt_pair,
        )
    }

    fn recover(
        &self,
        name: &str,
        removed_info: Option<&SessionInfo>,
    ) -> Result<Option<(String, String)>> {
        let mut e = Enc::new();
        e.u8(dreq::RECOVER).str(name);
        wire::put_opt_info(&mut e, removed_info);
        self.call(&e, wire::get_opt_pair)
    }

    fn check_removal(&self, name: &str, targets: &[String]) -> Result<()> {
        self.call(
            Enc::new().u8(dreq::CHECK_REMOVAL).str(name).strs(targets),
            |_| Ok(()),
        )
    }

    fn fold(
        &self,
        name: &str,
        remove: &str,
        dry_run: bool,
        removed_info: Option<&SessionInfo>,
    ) -> Result<FoldPlan> {
        let mut e = Enc::new();
        e.u8(dreq::FOLD).str(name).str(remove).bool(dry_run);
        wire::put_opt_info(&mut e, removed_info);
        self.call(&e, wire::get_plan)
    }

    fn end_fold(&self, name: &str) -> Result<()> {
        self.call(Enc::new().u8(dreq::END_FOLD).str(name), |_| Ok(()))
    }

    fn check_stored(
        &self,
        name: &str,
        info: &SessionInfo,
        bad_manifest: bool,
    ) -> Result<SessionCheck> {
        let mut e = Enc::new();
        e.u8(dreq::CHECK_STORED).str(name);
        wire::put_info(&mut e, info);
        e.bool(bad_manifest);
        self.call(&e, |d| {
            Ok(SessionCheck {
                problems: d.strs()?,
                missing: d.u64s()?,
                bad_manifest: d.bool()?,
                unlisted: d.bool()?,
            })
        })
    }

    fn untar(&self, name: &str, id: &str) -> Result<bool> {
        self.call(Enc::new().u8(dreq::UNTAR).str(name).str(id), |d| d.bool())
    }

    fn delete_sessions(&self, name: &str, ids: &[String]) -> Result<()> {
        self.call(
            Enc::new().u8(dreq::DELETE_SESSIONS).str(name).strs(ids),
            |_| Ok(()),
        )
    }

    fn delete_volume(&self, name: &str) -> Result<bool> {
        self.call(Enc::new().u8(dreq::DELETE_VOLUME).str(name), |d| d.bool())
    }

    fn volume_is_free(&self, name: &str) -> Result<bool> {
        self.call(Enc::new().u8(dreq::VOLUME_IS_FREE).str(name), |d| d.bool())
    }

    fn rename_volume(&self, old: &str, new: &str) -> Result<bool> {
        self.call(Enc::new().u8(dreq::RENAME_VOLUME).str(old).str(new), |d| {
            d.bool()
        })
    }

    fn put_session_file(
        &self,
        name: &str,
        id: &str,
        file: SessionFile,
        bytes: &[u8],
    ) -> Result<()> {
        let mut e = Enc::new();
        e.u8(dreq::PUT_SESSION_FILE).str(name).str(id);
        wire::put_file(&mut e, file);
        e.bytes(bytes);
        self.call(&e, |_| Ok(()))
    }

    fn key_file(&self) -> Result<Option<Vec<u8>>> {
        use sparsebak_format::crypto::keyfile::MAX_KEY_FILE;
        self.call(Enc::new().u8(dreq::KEY_FILE), |d| {
            if !d.bool()? {
                return Ok(None);
            }
            let b = d.bytes()?;
            if b.len() > MAX_KEY_FILE {
                return Err(WireError::Malformed(format!(
                    "a key file of {} bytes, above the limit of {MAX_KEY_FILE}",
                    b.len()
                )));
            }
            Ok(Some(b.to_vec()))
        })
    }

    fn put_key_file(&self, bytes: &[u8]) -> Result<()> {
        self.call(Enc::new().u8(dreq::PUT_KEY_FILE).bytes(bytes), |_| Ok(()))
    }
}
