//! Reading one volume's folder in an archive: its sessions, their info and chunks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::manifest::ManifestReader;
use crate::tarsession::TarSession;

/// Check that `root` is a sparsebak archive this build can read.
pub fn check_archive_root(root: &Path) -> Result<()> {
    match crate::marker::read_marker(root)? {
        Some(_) => Ok(()),
        None => Err(FormatError::NotArchive {
            path: root.to_path_buf(),
            reason: format!(
                "no {} in it; is the archive's disk mounted?",
                layout::ARCHIVE_MARKER
            ),
        }),
    }
}

/// A volume's folder in an archive.
#[derive(Clone)]
pub struct VolumeArchive {
    pub name: String,
    pub dir: PathBuf,
    /// Tar sessions opened so far (file and mapped index), shared by clones.
    tars: Arc<Mutex<HashMap<String, Arc<TarSession>>>>,
}

impl std::fmt::Debug for VolumeArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeArchive")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .finish()
    }
}

/// How a session is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    Folder,
    Tar,
}

impl VolumeArchive {
    pub fn new(dir: &Path) -> VolumeArchive {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        VolumeArchive {
            name,
            dir: dir.to_path_buf(),
            tars: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    pub fn exists(&self) -> bool {
        self.dir.is_dir()
    }

    /// Committed session IDs, oldest first. Staging folders are not sessions.
    pub fn sessions(&self) -> Result<Vec<String>> {
        let mut ids = Vec::new();
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
            Err(e) => return Err(e).at(&self.dir),
        };
        for ent in rd {
            let ent = ent.at(&self.dir)?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(rest) = name.strip_prefix(layout::SESSION_PREFIX) {
                let id = rest.strip_suffix(layout::TAR_SUFFIX).unwrap_or(rest);
                if layout::is_session_id(id) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        // A session being converted between forms can briefly exist in both.
        ids.dedup();
        Ok(ids)
    }

    pub fn session_dir(&self, id: &str) -> PathBuf {
        layout::session_dir(&self.dir, id)
    }

    pub fn tar_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{id}{}",
            layout::SESSION_PREFIX,
            layout::TAR_SUFFIX
        ))
    }

    pub fn tar_index_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!(
            "{}{id}{}",
            layout::SESSION_PREFIX,
            layout::TAR_INDEX_SUFFIX
        ))
    }

    /// How session `id` is stored (a folder wins over a tar left by a conversion).
    pub fn storage(&self, id: &str) -> Storage {
        if self.session_dir(id).is_dir() {
            Storage::Folder
        } else {
            Storage::Tar
        }
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
        let t = Arc::new(TarSession::open(
            &self.tar_path(id),
            &self.tar_index_path(id),
        )?);
        cache.insert(id.to_string(), t.clone());
        Ok(t)
    }

    /// Forget opened tar sessions (after they were converted or removed).
    pub fn forget_tars(&self) {
        if let Ok(mut c) = self.tars.lock() {
            c.clear();
        }
    }

    /// The bytes of session `id`'s info file.
    pub fn info_bytes(&self, id: &str) -> Result<Vec<u8>> {
        match self.storage(id) {
            Storage::Folder => std::fs::read(self.info_path(id)).at(self.info_path(id)),
            Storage::Tar => self.tar(id)?.info_bytes(),
        }
    }

    /// A reader of session `id`'s manifest bytes.
    pub fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>> {
        match self.storage(id) {
            Storage::Folder => {
                let p = self.manifest_path(id);
                let f = std::fs::File::open(&p).at(&p)?;
                Ok(Box::new(BufReader::with_capacity(64 * 1024, f)))
            }
            Storage::Tar => self.tar(id)?.manifest_reader(),
        }
    }

    /// Session `id`'s manifest, parsed as it streams.
    pub fn manifest(&self, id: &str) -> Result<ManifestReader<Box<dyn BufRead + Send>>> {
        let label = match self.storage(id) {
            Storage::Folder => self.manifest_path(id),
            Storage::Tar => self.tar_path(id).join(layout::MANIFEST_FILE),
        };
        Ok(ManifestReader::new(self.manifest_bytes(id)?, &label))
    }

    /// SHA-256 of session `id`'s manifest.
    pub fn manifest_sha256(&self, id: &str) -> Result<crate::Hash> {
        use sha2::Digest;
        let mut r = self.manifest_bytes(id)?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf).at(self.dir.clone())?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().into())
    }

    pub fn info_path(&self, id: &str) -> PathBuf {
        self.session_dir(id).join(layout::INFO_FILE)
    }

    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.session_dir(id).join(layout::MANIFEST_FILE)
    }

    pub fn chunk_path(&self, id: &str, addr: u64) -> PathBuf {
        self.session_dir(id).join(layout::chunk_rel_path(addr))
    }

    pub fn info(&self, id: &str) -> Result<SessionInfo> {
        let bytes = self.info_bytes(id)?;
        let text = String::from_utf8(bytes).map_err(|_| FormatError::Info {
            path: self.info_path(id),
            reason: "not UTF-8".into(),
        })?;
        SessionInfo::parse(&text, &self.info_path(id))
    }

    /// The infos of every session up to and including `target`, oldest first, checked
    /// to form one chain (each names the one before it, same chunk size).
    pub fn chain(&self, target: &str) -> Result<Vec<SessionInfo>> {
        let ids = self.sessions()?;
        let end = ids
            .iter()
            .position(|s| s == target)
            .ok_or_else(|| FormatError::NoSession {
                volume: self.name.clone(),
                session: target.to_string(),
            })?;
        let mut chain: Vec<SessionInfo> = Vec::with_capacity(end + 1);
        for id in &ids[..=end] {
            let info = self.info(id)?;
            let path = self.info_path(id);
            if info.session != *id {
                return Err(FormatError::Info {
                    path,
                    reason: format!("names session {} but sits in S_{id}", info.session),
                });
            }
            let expect_prev = chain.last().map(|p| p.session.clone());
            if info.previous != expect_prev {
                return Err(FormatError::Info {
                    path,
                    reason: format!(
                        "previous session is {:?}, but the archive's is {:?}",
                        info.previous, expect_prev
                    ),
                });
            }
            if let Some(first) = chain.first() {
                if first.chunksize != info.chunksize {
                    return Err(FormatError::Info {
                        path,
                        reason: "chunk size differs from the volume's first session".into(),
                    });
                }
            }
            chain.push(info);
        }
        Ok(chain)
    }

    /// The latest session's ID, if any.
    pub fn latest(&self) -> Result<Option<String>> {
        Ok(self.sessions()?.pop())
    }

    /// Read and decode one chunk stored by session `info`.
    pub fn read_chunk(
        &self,
        info: &SessionInfo,
        addr: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let stored = self.read_stored(&info.session, addr)?;
        info.compression.decode(&stored, info.chunksize as usize)
    }

    /// The stored (encoded) bytes of a chunk of session `id`.
    pub fn read_stored(&self, id: &str, addr: u64) -> std::result::Result<Vec<u8>, String> {
        match self.storage(id) {
            Storage::Folder => {
                let path = self.chunk_path(id, addr);
                std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
            }
            Storage::Tar => {
                let t = self.tar(id).map_err(|e| e.to_string())?;
                let (off, len) = t.index.lookup(addr).ok_or_else(|| {
                    format!(
                        "{}: no member for chunk x{addr:016x} in its index",
                        self.tar_path(id).display()
                    )
                })?;
                t.read_at(off, len).map_err(|e| e.to_string())
            }
        }
    }
}
