//! [`RemoteStore`]: the read side of one volume of a remote archive
//! ([`VolumeStore`]), each method one request to `sparsebak serve`.
//!
//! What comes back is bounded here (info and manifest pieces by the protocol's
//! limits, stored chunks by the session's chunk size and compression) and checked by
//! the readers as a local archive's bytes are: manifests against their infos' hashes,
//! chunks against the manifests' hashes (`restore::read_view` with `check`).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::limits;
use sparsebak_format::store::{Storage, VolumeStore};
use sparsebak_format::FormatError;

use super::client::{Connection, RemoteError, RemoteManifest};

/// Addresses per read request: a request frame stays small, and the answers to one
/// are read before the next is sent, so neither side holds more than a batch.
const READ_BATCH: usize = 256;

/// One volume of a remote archive.
#[derive(Debug, Clone)]
pub struct RemoteStore {
    conn: Arc<Mutex<Connection>>,
    volume: String,
    label: String,
}

fn other(e: impl std::fmt::Display) -> FormatError {
    FormatError::Other(e.to_string())
}

/// A file the far side says is not there, as a local reader says it: the readers
/// (verify, repair) tell "missing" from "damaged" by the error's kind.
fn missing(path: &str, message: &str) -> FormatError {
    let reason = message
        .strip_prefix(path)
        .and_then(|r| r.strip_prefix(": "))
        .unwrap_or(message);
    FormatError::Io {
        path: PathBuf::from(path),
        source: std::io::Error::new(std::io::ErrorKind::NotFound, reason.to_string()),
    }
}

fn from_far(e: super::client::FarError) -> FormatError {
    match &e.missing {
        Some(p) => missing(p, &e.message),
        None => FormatError::Other(e.message),
    }
}

fn from_remote(e: RemoteError) -> FormatError {
    match &e {
        RemoteError::Missing { path, message, .. } => missing(path, message),
        _ => other(e),
    }
}

impl RemoteStore {
    pub fn new(conn: Arc<Mutex<Connection>>, volume: &str) -> RemoteStore {
        let label = match conn.lock() {
            Ok(c) => format!("{}/{volume}", c.label()),
            Err(_) => volume.to_string(),
        };
        RemoteStore {
            conn,
            volume: volume.into(),
            label,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, RemoteError>,
    ) -> sparsebak_format::Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| other(format!("{}: the connection's lock is poisoned", self.label)))?;
        f(&mut c).map_err(from_remote)
    }
}

impl VolumeStore for RemoteStore {
    fn label(&self) -> String {
        self.label.clone()
    }

    fn exists(&self) -> bool {
        self.with(|c| c.exists(&self.volume)).unwrap_or(false)
    }

    fn sessions(&self) -> sparsebak_format::Result<Vec<String>> {
        self.with(|c| c.sessions(&self.volume))
    }

    fn storage(&self, id: &str) -> Storage {
        match self.with(|c| c.storage(&self.volume, id)) {
            Ok(1) => Storage::Tar,
            Ok(_) => Storage::Folder,
            Err(e) => {
                tracing::warn!("{e}");
                Storage::Folder
            }
        }
    }

    fn info_bytes(&self, id: &str) -> sparsebak_format::Result<Vec<u8>> {
        self.with(|c| c.info_bytes(&self.volume, id))
    }

    fn manifest_bytes(&self, id: &str) -> sparsebak_format::Result<Box<dyn BufRead + Send>> {
        Ok(Box::new(RemoteManifest::new(
            self.conn.clone(),
            &self.volume,
            id,
        )))
    }

    fn manifest_len(&self, id: &str) -> sparsebak_format::Result<u64> {
        self.with(|c| c.manifest_len(&self.volume, id))
    }

    fn read_stored(
        &self,
        info: &SessionInfo,
        addrs: &[u64],
    ) -> Vec<sparsebak_format::Result<Vec<u8>>> {
        let max = limits::max_stored(info.compression, info.chunksize);
        let mut out = Vec::with_capacity(addrs.len());
        for batch in addrs.chunks(READ_BATCH) {
            match self.with(|c| c.read_stored(&self.volume, &info.session, batch, max)) {
                Ok(rs) => out.extend(rs.into_iter().map(|r| r.map_err(from_far))),
                Err(e) => {
                    let m = e.to_string();
                    out.extend(batch.iter().map(|_| Err(FormatError::Other(m.clone()))));
                }
            }
        }
        out
    }

    fn chunk_location(&self, id: &str, addr: u64) -> String {
        self.with(|c| c.chunk_location(&self.volume, id, addr))
            .map(|l| format!("{}: {l}", self.label))
            .unwrap_or_else(|_| format!("{}/S_{id}/x{addr:016x}", self.label))
    }

    fn manifest_label(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("{}/S_{id}/manifest", self.label))
    }

    fn info_label(&self, id: &str) -> PathBuf {
        PathBuf::from(format!("{}/S_{id}/info", self.label))
    }
}
