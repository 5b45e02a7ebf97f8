//! Reading one volume of an archive: its sessions, their info and chunks, from
//! whatever store holds them (see [`crate::store`]).

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::manifest::ManifestReader;
pub use crate::store::{FolderStore, Storage, VolumeStore};

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

/// One volume of an archive, as every reader sees it: a façade over the store that
/// holds it ([`VolumeStore`]), which adds what is the same for every store (parsing and
/// checking infos and manifests, chains of sessions, decoding chunks).
#[derive(Clone)]
pub struct VolumeArchive {
    pub name: String,
    store: Arc<dyn VolumeStore>,
}

impl std::fmt::Debug for VolumeArchive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeArchive")
            .field("name", &self.name)
            .field("store", &self.store)
            .finish()
    }
}

impl VolumeArchive {
    /// The volume folder `dir` of a local archive; the volume's name is the folder's.
    pub fn new(dir: &Path) -> VolumeArchive {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        VolumeArchive::from_store(&name, Arc::new(FolderStore::new(dir)))
    }

    /// Volume `name` held by `store`.
    pub fn from_store(name: &str, store: Arc<dyn VolumeStore>) -> VolumeArchive {
        VolumeArchive {
            name: name.to_string(),
            store,
        }
    }

    /// The store the volume is read from.
    pub fn store(&self) -> &Arc<dyn VolumeStore> {
        &self.store
    }

    /// The local folder, when the volume is one (for the code that must touch its
    /// files).
    pub fn folder(&self) -> Option<&FolderStore> {
        self.store.as_folder()
    }

    /// Where the volume is, for messages.
    pub fn label(&self) -> String {
        self.store.label()
    }

    pub fn exists(&self) -> bool {
        self.store.exists()
    }

    /// Committed session IDs, oldest first. Staging folders are not sessions.
    pub fn sessions(&self) -> Result<Vec<String>> {
        self.store.sessions()
    }

    /// How session `id` is stored (a folder wins over a tar left by a conversion).
    pub fn storage(&self, id: &str) -> Storage {
        self.store.storage(id)
    }

    /// Forget opened tar sessions (after they were converted or removed).
    pub fn forget_tars(&self) {
        self.store.forget_cached()
    }

    /// The bytes of session `id`'s info file.
    pub fn info_bytes(&self, id: &str) -> Result<Vec<u8>> {
        let b = self.store.info_bytes(id)?;
        // Whichever the store, what it gives is checked against the format's bounds.
        if b.len() as u64 > limits::MAX_INFO_BYTES {
            return Err(FormatError::TooLarge {
                path: self.info_label(id),
                what: "info file",
                len: b.len() as u64,
                max: limits::MAX_INFO_BYTES,
            });
        }
        Ok(b)
    }

    /// A reader of session `id`'s manifest bytes.
    pub fn manifest_bytes(&self, id: &str) -> Result<Box<dyn BufRead + Send>> {
        self.store.manifest_bytes(id)
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
        self.store.manifest_label(id)
    }

    /// Where session `id`'s info is, for messages.
    pub fn info_label(&self, id: &str) -> PathBuf {
        self.store.info_label(id)
    }

    /// Length in bytes of session `id`'s manifest.
    pub fn manifest_len(&self, id: &str) -> Result<u64> {
        self.store.manifest_len(id)
    }

    /// SHA-256 of the manifest of session `info`, refused unread when it is longer
    /// than `changed` lines can be.
    pub fn session_manifest_sha256(&self, info: &SessionInfo) -> Result<crate::Hash> {
        let max = info.changed.saturating_mul(MAX_LINE_BYTES);
        let len = self.manifest_len(&info.session)?;
        if len > max {
            return Err(FormatError::TooLarge {
                path: self.manifest_label(&info.session),
                // A sealed manifest's length is that of its plaintext.
                what: if self.store.keys().is_some() {
                    "manifest's plaintext"
                } else {
                    "manifest"
                },
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
            let n = r.read(&mut buf).at(self.manifest_label(id))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(h.finalize().into())
    }

    pub fn info(&self, id: &str) -> Result<SessionInfo> {
        let bytes = self.info_bytes(id)?;
        let text = String::from_utf8(bytes).map_err(|_| FormatError::Info {
            path: self.info_label(id),
            reason: "not UTF-8".into(),
        })?;
        let info = SessionInfo::parse(&text, &self.info_label(id))?;
        // An info moved or copied into another session's folder would give that
        // session another history (a sealed one fails authentication before this).
        if info.session != id {
            return Err(FormatError::Info {
                path: self.info_label(id),
                reason: format!(
                    "is the info of session {}, not of session {id} (moved or copied from \
                     another session's folder)",
                    info.session
                ),
            });
        }
        // An encrypted archive's infos are format 2 (they name the volume's id): a
        // plain one in it was not written by the archive. (A plain store may hold
        // format 2 infos: the source side's copies of an encrypted archive's sessions.)
        if self.store.keys().is_some() && info.volume_id.is_none() {
            return Err(FormatError::Info {
                path: self.info_label(id),
                reason: "is a plain (format 1) info in an encrypted archive".into(),
            });
        }
        Ok(info)
    }

    /// The archive's keys, when it is encrypted.
    pub fn keys(&self) -> Option<Arc<crate::crypto::ArchiveKeys>> {
        self.store.keys()
    }

    /// The codec the chunks of session `info` are stored with.
    pub fn codec(&self, info: &SessionInfo) -> Arc<dyn crate::codec::ChunkCodec> {
        self.store.codec(info)
    }

    /// The codec a new session of this volume is written with: `codec` at `level`,
    /// sealed for `volume_id` when the archive is encrypted.
    pub fn writing_codec(
        &self,
        volume_id: Option<&str>,
        codec: crate::chunk::Codec,
        level: i32,
    ) -> Arc<dyn crate::codec::ChunkCodec> {
        crate::codec::for_writing_in(self.keys().as_ref(), volume_id, codec, level)
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
        let own_id = self.own_id(&ids)?;
        for id in &ids[..=end] {
            let info = self.info(id)?;
            let path = self.info_label(id);
            self.check_own(id, &info, own_id.as_deref())?;
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
                        "names {} as the session before it, but the archive's is {}",
                        info.previous.as_deref().unwrap_or("none"),
                        expect_prev.as_deref().unwrap_or("none")
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
                if first.volume_id != info.volume_id {
                    return Err(FormatError::Info {
                        path,
                        reason: format!(
                            "belongs to another volume (volume_id {} where the volume's first session says {})",
                            info.volume_id.as_deref().unwrap_or("-"),
                            first.volume_id.as_deref().unwrap_or("-")
                        ),
                    });
                }
            }
            chain.push(info);
        }
        Ok(chain)
    }

    /// The id every session of this folder must carry (encrypted archives: what the
    /// volume's identity file, sealed for the volume's name, says); `None` for a plain
    /// archive, or an encrypted folder with no sessions and no identity file. An error
    /// when the identity file is another volume's or damaged, or missing while the
    /// folder holds sessions (`ids`): nothing then ties them to this volume.
    pub fn own_id(&self, ids: &[String]) -> Result<Option<String>> {
        if self.store.keys().is_none() {
            return Ok(None);
        }
        let id = self
            .store
            .volume_id()
            .map_err(|e| self.name_the_other(e, ids))?;
        if id.is_none() && !ids.is_empty() {
            return Err(FormatError::Info {
                path: PathBuf::from(self.label()).join(layout::VOLUME_ID_FILE),
                reason: format!(
                    "is missing: nothing ties this folder's sessions to volume {} \
                     (`sparsebak repair {}` puts it back from this machine's copies)",
                    self.name, self.name
                ),
            });
        }
        Ok(id)
    }

    /// Refuse a folder that is not this volume's (encrypted archives): its identity
    /// file is another volume's, damaged, or missing beside sessions, or a session's
    /// info names another volume id. Infos that cannot be read are left to the
    /// commands that need them. A plain archive passes.
    pub fn check_bound(&self) -> Result<()> {
        if self.store.keys().is_none() {
            return Ok(());
        }
        let ids = self.sessions()?;
        let own = self.own_id(&ids)?;
        for id in &ids {
            if let Ok(info) = self.info(id) {
                self.check_own(id, &info, own.as_deref())?;
            }
        }
        Ok(())
    }

    /// Refuse session `id`'s `info` when it is not of the volume whose id is `own`
    /// (see [`VolumeArchive::own_id`]).
    pub fn check_own(&self, id: &str, info: &SessionInfo, own: Option<&str>) -> Result<()> {
        match own {
            Some(own) if info.volume_id.as_deref() != Some(own) => Err(FormatError::Info {
                path: self.info_label(id),
                reason: format!(
                    "is a session of another volume (made as volume {}), not of volume {}",
                    info.volume, self.name
                ),
            }),
            _ => Ok(()),
        }
    }

    /// `e`, a volume identity file that is not this volume's, said with the volume
    /// the folder's first session was made as, when that can be read.
    fn name_the_other(&self, e: FormatError, ids: &[String]) -> FormatError {
        let made_as = ids
            .first()
            .and_then(|id| self.info(id).ok())
            .map(|i| i.volume);
        match (e, made_as) {
            (FormatError::Info { path, reason }, Some(other)) if other != self.name => {
                FormatError::Info {
                    path,
                    reason: format!("{reason} (its sessions were made as volume {other})"),
                }
            }
            (e, _) => e,
        }
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
        self.decode(info, addr, stored)
    }

    /// Decode the stored bytes of the chunk at `addr` of session `info` with the
    /// session's codec. The error names where the chunk is stored.
    pub fn decode(
        &self,
        info: &SessionInfo,
        addr: u64,
        stored: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, String> {
        self.decode_with(&*self.codec(info), info, addr, stored)
    }

    /// [`Self::decode`] with `codec`, the session's, looked up once by a caller that
    /// decodes many chunks.
    pub fn decode_with(
        &self,
        codec: &dyn crate::codec::ChunkCodec,
        info: &SessionInfo,
        addr: u64,
        stored: Vec<u8>,
    ) -> std::result::Result<Vec<u8>, String> {
        codec
            .decode_owned(&crate::codec::ChunkContext::of(info, addr), stored)
            .map_err(|e| format!("{}: {}", self.chunk_location(&info.session, addr), e.reason))
    }

    /// Where the chunk at `addr` of session `id` is stored, for messages.
    pub fn chunk_location(&self, id: &str, addr: u64) -> String {
        self.store.chunk_location(id, addr)
    }

    /// The stored (encoded) bytes of a chunk of session `info`: never more than a
    /// chunk of its size and compression can take, whatever the file's size.
    pub fn read_stored(&self, info: &SessionInfo, addr: u64) -> Result<Vec<u8>> {
        self.read_stored_batch(info, &[addr])
            .pop()
            .unwrap_or_else(|| Err(FormatError::Other("the store returned no chunk".into())))
    }

    /// The stored bytes of the chunks at `addrs` of session `info`, one result per
    /// address in order (see [`VolumeStore::read_stored`]). A store that answers with
    /// the wrong number of results is an error for every chunk.
    pub fn read_stored_batch(&self, info: &SessionInfo, addrs: &[u64]) -> Vec<Result<Vec<u8>>> {
        let got = self.store.read_stored(info, addrs);
        if got.len() == addrs.len() {
            // Whichever the store, no chunk is longer than its session can store.
            let max = self.codec(info).max_stored(info.chunksize);
            return got
                .into_iter()
                .zip(addrs)
                .map(|(r, &addr)| match r {
                    Ok(b) if b.len() as u64 > max => Err(FormatError::TooLarge {
                        path: PathBuf::from(self.chunk_location(&info.session, addr)),
                        what: "chunk file",
                        len: b.len() as u64,
                        max,
                    }),
                    r => r,
                })
                .collect();
        }
        let why = format!(
            "{}: {} chunks asked, {} returned",
            self.label(),
            addrs.len(),
            got.len()
        );
        addrs
            .iter()
            .map(|_| Err(FormatError::Other(why.clone())))
            .collect()
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
            volume_id: None,
        }
    }

    #[test]
    fn a_huge_chunk_file_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let vol = VolumeArchive::new(&dir.path().join("v"));
        let i = info(Codec::Zstd);
        let p = vol.folder().unwrap().chunk_path(&i.session, 0x10000);
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
        let p = vol.folder().unwrap().info_path("20260101-000000");
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

    /// A store that answers with too many bytes or too few chunks.
    #[derive(Debug)]
    struct Liar {
        chunks: usize,
        len: usize,
    }

    impl VolumeStore for Liar {
        fn label(&self) -> String {
            "liar://v".into()
        }
        fn exists(&self) -> bool {
            true
        }
        fn sessions(&self) -> Result<Vec<String>> {
            Ok(vec!["20260101-000000".into()])
        }
        fn storage(&self, _id: &str) -> Storage {
            Storage::Folder
        }
        fn info_bytes(&self, _id: &str) -> Result<Vec<u8>> {
            Ok(vec![b'x'; self.len])
        }
        fn manifest_bytes(&self, _id: &str) -> Result<Box<dyn BufRead + Send>> {
            Ok(Box::new(std::io::Cursor::new(Vec::new())))
        }
        fn manifest_len(&self, _id: &str) -> Result<u64> {
            Ok(0)
        }
        fn read_stored(&self, _info: &SessionInfo, _addrs: &[u64]) -> Vec<Result<Vec<u8>>> {
            (0..self.chunks).map(|_| Ok(vec![0; self.len])).collect()
        }
        fn chunk_location(&self, id: &str, addr: u64) -> String {
            format!("liar://v/{id}/{addr:x}")
        }
        fn manifest_label(&self, id: &str) -> PathBuf {
            PathBuf::from(format!("liar://v/{id}/manifest"))
        }
        fn info_label(&self, id: &str) -> PathBuf {
            PathBuf::from(format!("liar://v/{id}/info"))
        }
    }

    #[test]
    fn what_any_store_returns_is_bounded_by_the_facade() {
        let i = info(Codec::None);
        let liar = |chunks, len| VolumeArchive::from_store("v", Arc::new(Liar { chunks, len }));
        // A chunk longer than the session can store.
        let got = liar(1, 65537).read_stored_batch(&i, &[0]);
        assert!(
            matches!(&got[..], [Err(FormatError::TooLarge { path, what: "chunk file", len: 65537, max: 65536 })]
                if path == Path::new("liar://v/20260101-000000/0")),
            "{got:?}"
        );
        assert_eq!(liar(1, 65536).read_stored(&i, 0).unwrap().len(), 65536);
        // Fewer (or more) results than chunks asked: every one is an error.
        let got = liar(1, 10).read_stored_batch(&i, &[0, 65536]);
        assert_eq!(got.len(), 2);
        for r in got {
            let e = r.unwrap_err().to_string();
            assert_eq!(e, "liar://v: 2 chunks asked, 1 returned");
        }
        assert!(liar(3, 10)
            .read_stored_batch(&i, &[0, 65536])
            .iter()
            .all(|r| r.is_err()));
        // An info longer than any info.
        let too_long = limits::MAX_INFO_BYTES as usize + 1;
        let e = liar(0, too_long).info("20260101-000000").unwrap_err();
        assert!(
            matches!(&e, FormatError::TooLarge { path, what: "info file", len, max }
                if *len == too_long as u64 && *max == limits::MAX_INFO_BYTES
                    && path == Path::new("liar://v/20260101-000000/info")),
            "{e}"
        );
    }
}
