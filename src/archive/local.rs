//! Copies of each session's `info` and `manifest` kept on the source side
//! (`<metadir>/<volume>/sessions/S_<id>/`), so `verify` can tell when the archive was
//! altered, and so the source knows what it sent even when the destination is away.

use std::path::{Path, PathBuf};

use sparsebak_format::layout;
use sparsebak_format::volume::VolumeArchive;

use crate::archive::create_private_dir;
use crate::durable;
use crate::error::{IoAt, Result};

/// The source-side copies for one volume.
#[derive(Debug, Clone)]
pub struct LocalCopies {
    pub dir: PathBuf,
}

impl LocalCopies {
    pub fn new(meta_dir: &Path) -> LocalCopies {
        LocalCopies {
            dir: meta_dir.join("sessions"),
        }
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

    /// Session IDs with copies, oldest first.
    pub fn ids(&self) -> Result<Vec<String>> {
        VolumeArchive::new(&self.dir).sessions().map_err(Into::into)
    }

    /// Copy session `id`'s info and manifest from the archive, atomically.
    pub fn save(&self, vol: &VolumeArchive, id: &str) -> Result<()> {
        create_private_dir(&self.dir)?;
        let tmp = self.dir.join(format!("{}{id}", layout::STAGING_PREFIX));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).at(&tmp)?;
        for name in [layout::INFO_FILE, layout::MANIFEST_FILE] {
            let src = vol.session_dir(id).join(name);
            let dst = tmp.join(name);
            std::fs::copy(&src, &dst).at(&src)?;
        }
        durable::syncfs(&tmp).at(&tmp)?;
        let fin = self.session_dir(id);
        if fin.exists() {
            std::fs::remove_dir_all(&fin).at(&fin)?;
        }
        std::fs::rename(&tmp, &fin).at(&fin)?;
        durable::sync_dir(&self.dir).at(&self.dir)?;
        Ok(())
    }

    /// Remove the copies of session `id`.
    pub fn remove(&self, id: &str) -> Result<()> {
        let d = self.session_dir(id);
        if d.exists() {
            std::fs::remove_dir_all(&d).at(&d)?;
            durable::sync_dir(&self.dir).at(&self.dir)?;
        }
        Ok(())
    }

    /// After a crash between publishing a session and copying it here, the archive's
    /// latest session is one step ahead of the copies: take its copy now. Anything else
    /// that differs is left for `verify` to report.
    pub fn catch_up(&self, vol: &VolumeArchive) -> Result<()> {
        let remote = vol.sessions()?;
        let Some(latest) = remote.last() else {
            return Ok(());
        };
        let local = self.ids()?;
        if local.contains(latest) {
            return Ok(());
        }
        let info = vol.info(latest)?;
        if info.previous.as_ref() == local.last() {
            tracing::info!(
                "volume {}: recording session {latest} whose send was interrupted after it was committed",
                vol.name
            );
            self.save(vol, latest)?;
        }
        Ok(())
    }
}
