//! Reading one volume's folder in an archive: its sessions, their info and chunks.

use std::path::{Path, PathBuf};

use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::FORMAT_VERSION;

/// Check that `root` is a sparsebak archive this build can read.
pub fn check_archive_root(root: &Path) -> Result<()> {
    let marker = root.join(layout::ARCHIVE_MARKER);
    let text = std::fs::read_to_string(&marker).map_err(|e| FormatError::NotArchive {
        path: root.to_path_buf(),
        reason: format!("{}: {e}", marker.display()),
    })?;
    let want = archive_marker_text();
    if text != want {
        return Err(FormatError::NotArchive {
            path: root.to_path_buf(),
            reason: format!("unexpected {} content {text:?}", layout::ARCHIVE_MARKER),
        });
    }
    Ok(())
}

/// Content of the archive root marker file.
pub fn archive_marker_text() -> String {
    format!("sparsebak-archive\nformat={FORMAT_VERSION}\n")
}

/// A volume's folder in an archive.
#[derive(Debug, Clone)]
pub struct VolumeArchive {
    pub name: String,
    pub dir: PathBuf,
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
            if let Some(id) = name.strip_prefix(layout::SESSION_PREFIX) {
                if layout::is_session_id(id) {
                    ids.push(id.to_string());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    pub fn session_dir(&self, id: &str) -> PathBuf {
        layout::session_dir(&self.dir, id)
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
        SessionInfo::read(&self.info_path(id))
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
        let path = self.chunk_path(&info.session, addr);
        let stored = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        info.compression.decode(&stored, info.chunksize as usize)
    }
}
