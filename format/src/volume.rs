//! Reading one volume's folder in an archive: its sessions, their info and chunks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::manifest::ManifestReader;
use crate::tarsession::TarSession;

/// Bytes of the longest manifest line as written: a data line (64 + 1 + 17 + 1).
const MAX_LINE_BYTES: u64 = 83;

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

pub use crate::store::Storage;

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
            Storage::Folder => {
                limits::read_bounded(&self.info_path(id), limits::MAX_INFO_BYTES, "info file")
            }
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
        Ok(ManifestReader::new(
            self.manifest_bytes(id)?,
            &self.manifest_label(id),
        ))
    }

    /// The manifest of session `info`, checked against it as it streams: every address
    /// a multiple of the chunk size inside the volume, no more lines than `changed`.
    pub fn session_manifest(
        &self,
        info: &SessionInfo,
    ) -> Result<ManifestReader<Box<dyn BufRead + Send>>> {
        Ok(self.manifest(&info.session)?.within(info))
    }

    /// Where session `id`'s manifest is, for messages.
    pub fn manifest_label(&self, id: &str) -> PathBuf {
        match self.storage(id) {
            Storage::Folder => self.manifest_path(id),
            Storage::Tar => self.tar_path(id).join(layout::MANIFEST_FILE),
        }
    }

    /// Length in bytes of session `id`'s manifest.
    pub fn manifest_len(&self, id: &str) -> Result<u64> {
        match self.storage(id) {
            Storage::Folder => {
                let p = self.manifest_path(id);
                Ok(std::fs::metadata(&p).at(&p)?.len())
            }
            Storage::Tar => Ok(self.tar(id)?.index.manifest().1),
        }
    }

    /// SHA-256 of the manifest of session `info`, refused unread when it is longer
    /// than `changed` lines can be.
    pub fn session_manifest_sha256(&self, info: &SessionInfo) -> Result<crate::Hash> {
        let max = info.changed.saturating_mul(MAX_LINE_BYTES);
        let len = self.manifest_len(&info.session)?;
        if len > max {
            return Err(FormatError::TooLarge {
                path: self.manifest_label(&info.session),
                what: "manifest",
                len,
                max,
            });
        }
        self.manifest_sha256(&info.session)
    }

    /// SHA-256 of session `id`'s manifest, however long it is: only behind the bound
    /// of [`Self::session_manifest_sha256`].
    fn manifest_sha256(&self, id: &str) -> Result<crate::Hash> {
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

    /// Read and decode one chunk stored by session `info`. The error names the file.
    pub fn read_chunk(
        &self,
        info: &SessionInfo,
        addr: u64,
    ) -> std::result::Result<Vec<u8>, String> {
        let stored = self.read_stored(info, addr).map_err(|e| e.to_string())?;
        info.compression
            .decode(&stored, info.chunksize as usize)
            .map_err(|e| format!("{}: {e}", self.chunk_location(&info.session, addr)))
    }

    /// Where the chunk at `addr` of session `id` is stored, for messages.
    pub fn chunk_location(&self, id: &str, addr: u64) -> String {
        match self.storage(id) {
            Storage::Folder => self.chunk_path(id, addr).display().to_string(),
            Storage::Tar => format!(
                "{} (member for chunk x{addr:016x})",
                self.tar_path(id).display()
            ),
        }
    }

    /// The stored (encoded) bytes of a chunk of session `info`: never more than a
    /// chunk of its size and compression can take, whatever the file's size.
    pub fn read_stored(&self, info: &SessionInfo, addr: u64) -> Result<Vec<u8>> {
        let id = &info.session;
        let max = limits::max_stored(info.compression, info.chunksize);
        match self.storage(id) {
            Storage::Folder => limits::read_bounded(&self.chunk_path(id, addr), max, "chunk file"),
            Storage::Tar => self.tar(id)?.read_chunk(addr, max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::Codec;

    fn info(compression: Codec) -> SessionInfo {
        SessionInfo {
            volume: "v".into(),
            session: "20260101-000000".into(),
            previous: None,
            time: 0,
            volsize: 1 << 20,
            chunksize: 65536,
            compression,
            changed: 1,
            chunks: 1,
            bytes_read: 0,
            bytes_stored: 0,
            manifest_sha256: [0; 32],
        }
    }

    #[test]
    fn a_huge_chunk_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let vol = VolumeArchive::new(&dir.path().join("v"));
        let i = info(Codec::Zstd);
        let p = vol.chunk_path(&i.session, 0x10000);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p).unwrap().set_len(1 << 40).unwrap();
        match vol.read_stored(&i, 0x10000) {
            Err(FormatError::TooLarge {
                path,
                what,
                len,
                max,
            }) => {
                assert_eq!(path, p);
                assert_eq!(what, "chunk file");
                assert_eq!(len, 1 << 40);
                assert_eq!(max, limits::max_stored(Codec::Zstd, 65536));
            }
            other => panic!("{other:?}"),
        }
        let e = vol.read_chunk(&i, 0x10000).unwrap_err();
        assert!(e.starts_with(&p.display().to_string()), "{e}");
        // Uncompressed: exactly one chunk, not a byte more.
        let i = info(Codec::None);
        std::fs::File::create(&p).unwrap().set_len(65537).unwrap();
        assert!(matches!(
            vol.read_stored(&i, 0x10000),
            Err(FormatError::TooLarge {
                len: 65537,
                max: 65536,
                ..
            })
        ));
        // A chunk that does not decode names its file.
        std::fs::write(&p, b"not zstd").unwrap();
        let e = vol.read_chunk(&info(Codec::Zstd), 0x10000).unwrap_err();
        assert!(e.starts_with(&format!("{}: zstd: ", p.display())), "{e}");
    }

    #[test]
    fn a_huge_info_or_marker_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let vol = VolumeArchive::new(&dir.path().join("v"));
        let p = vol.info_path("20260101-000000");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::File::create(&p).unwrap().set_len(1 << 40).unwrap();
        assert!(matches!(
            vol.info("20260101-000000"),
            Err(FormatError::TooLarge { path, what: "info file", .. }) if path == p
        ));
        let marker = dir.path().join(layout::ARCHIVE_MARKER);
        std::fs::File::create(&marker)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let e = check_archive_root(dir.path()).unwrap_err();
        assert!(
            matches!(&e, FormatError::NotArchive { reason, .. } if reason.contains("longer than 4096 bytes")),
            "{e}"
        );
    }
}
