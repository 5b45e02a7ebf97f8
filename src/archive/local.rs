//! Copies of each session's `info` and `manifest` kept on the source side
//! (`<metadir>/<volume>/sessions/S_<id>/`), so `verify` can tell when the archive was
//! altered, and so the source knows what it sent even when the destination is away.

use std::path::{Path, PathBuf};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::{layout, limits, FormatError};

use crate::durable;
use crate::error::{IoAt, Result};
use crate::metadir::create_private_dir;

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
        let info = tmp.join(layout::INFO_FILE);
        std::fs::write(&info, vol.info_bytes(id)?).at(&info)?;
        let manifest = tmp.join(layout::MANIFEST_FILE);
        let mut out = std::fs::File::create(&manifest).at(&manifest)?;
        std::io::copy(&mut vol.manifest_bytes(id)?, &mut out).at(&manifest)?;
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

    fn pending_path(&self) -> PathBuf {
        self.dir.join("pending")
    }

    /// Record, durably, that session `info` is about to be published. If the send dies
    /// after publishing and before [`LocalCopies::save`], the next run finds this record
    /// and adopts exactly that session, and no other.
    pub fn mark_pending(&self, info: &SessionInfo) -> Result<()> {
        create_private_dir(&self.dir)?;
        let p = self.pending_path();
        durable::write_atomic(&p, info.to_text().as_bytes()).at(&p)
    }

    /// Clear the pending record once the copies are saved.
    pub fn clear_pending(&self) -> Result<()> {
        let p = self.pending_path();
        match std::fs::remove_file(&p) {
            Ok(()) => durable::sync_dir(&self.dir).at(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).at(&p),
        }
    }

    /// Finish what an interrupted send left: if a session was recorded as pending and
    /// the archive has it with exactly that info, take its copies; if the archive does
    /// not have it, the send died before publishing and the record is dropped. Needs
    /// the volume's source-side lock.
    pub fn catch_up(&self, vol: &VolumeArchive) -> Result<()> {
        let p = self.pending_path();
        let pending = match limits::read_bounded_text(&p, limits::MAX_INFO_BYTES, "info file") {
            Ok(t) => t,
            Err(FormatError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.into()),
        };
        let info = SessionInfo::parse(&pending, &p)?;
        let id = &info.session;
        match vol.info_bytes(id) {
            Ok(theirs) if theirs == pending.as_bytes() => {
                tracing::info!(
                    "volume {}: recording session {id}, committed by a send that was interrupted",
                    vol.name
                );
                self.save(vol, id)?;
            }
            Ok(_) => {
                return Err(crate::error::Error::Msg(format!(
                    "volume {}: session {id} in the archive is not the one this machine was \
                     sending (its info differs from {}); if only its info was damaged, \
                     `sparsebak repair {}` puts it back",
                    vol.name,
                    p.display(),
                    vol.name
                )))
            }
            Err(_) => {}
        }
        self.clear_pending()
    }

    /// The info of the session an interrupted send was publishing, as recorded (the
    /// only copy of it this machine has until [`LocalCopies::catch_up`] saves it).
    pub fn pending_info(&self) -> Option<(Vec<u8>, SessionInfo)> {
        let p = self.pending_path();
        let bytes = std::fs::read(&p).ok()?;
        let info = SessionInfo::parse(std::str::from_utf8(&bytes).ok()?, &p).ok()?;
        Some((bytes, info))
    }

    /// Whether a send was interrupted around publishing a session.
    pub fn has_pending(&self) -> bool {
        self.pending_path().exists()
    }
}
