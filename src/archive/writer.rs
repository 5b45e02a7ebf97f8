//! Writing one session: chunk files and manifest into a staging folder, then the info
//! file, one `syncfs`, and a rename that makes the session appear whole or not at all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::durable;
use crate::error::{IoAt, Result};

/// A session being written.
pub struct SessionWriter {
    pub id: String,
    staging: PathBuf,
    final_dir: PathBuf,
    vol_dir: PathBuf,
    manifest: Option<ManifestWriter<BufWriter<File>>>,
    last_prefix: String,
    pub changed: u64,
    pub bytes_stored: u64,
    committed: bool,
}

impl SessionWriter {
    /// Start session `id` of `vol` in a staging folder.
    pub fn create(vol: &VolumeArchive, id: &str) -> Result<SessionWriter> {
        let staging = vol.dir.join(format!("{}{id}", layout::STAGING_PREFIX));
        std::fs::create_dir_all(&staging).at(&staging)?;
        let mpath = staging.join(layout::MANIFEST_FILE);
        let mf = File::create(&mpath).at(&mpath)?;
        Ok(SessionWriter {
            id: id.to_string(),
            final_dir: vol.session_dir(id),
            vol_dir: vol.dir.clone(),
            staging,
            manifest: Some(ManifestWriter::new(BufWriter::with_capacity(
                256 * 1024,
                mf,
            ))),
            last_prefix: String::new(),
            changed: 0,
            bytes_stored: 0,
            committed: false,
        })
    }

    /// Store a data chunk (already encoded).
    pub fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        let prefix = layout::prefix_name(addr);
        if prefix != self.last_prefix {
            let d = self.staging.join(&prefix);
            std::fs::create_dir_all(&d).at(&d)?;
            self.last_prefix = prefix;
        }
        let p = self.staging.join(layout::chunk_rel_path(addr));
        let mut f = File::create(&p).at(&p)?;
        f.write_all(payload).at(&p)?;
        self.bytes_stored += payload.len() as u64;
        self.push(Entry {
            addr,
            hash: Some(hash),
        })
    }

    /// Record that the chunk at `addr` became all zero.
    pub fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.push(Entry { addr, hash: None })
    }

    fn push(&mut self, e: Entry) -> Result<()> {
        let mpath = self.staging.join(layout::MANIFEST_FILE);
        let m = self
            .manifest
            .as_mut()
            .ok_or_else(|| crate::error::Error::Msg("session already committed".into()))?;
        m.push(&e).at(&mpath)?;
        self.changed += 1;
        Ok(())
    }

    /// Finish the manifest, write the info file that `make_info` builds from the
    /// manifest's hash, make everything durable, and publish the session.
    ///
    /// `before_publish` runs once the session is durable but before it appears: the
    /// source side records there that this session is about to exist.
    pub fn commit(
        mut self,
        make_info: impl FnOnce(Hash, &SessionWriter) -> SessionInfo,
        before_publish: impl FnOnce(&SessionInfo) -> Result<()>,
    ) -> Result<SessionInfo> {
        let mpath = self.staging.join(layout::MANIFEST_FILE);
        let mw = self
            .manifest
            .take()
            .ok_or_else(|| crate::error::Error::Msg("session already committed".into()))?;
        let (bw, hash) = mw.finish().at(&mpath)?;
        bw.into_inner().map_err(|e| e.into_error()).at(&mpath)?;
        let info = make_info(hash, &self);
        let ipath = self.staging.join(layout::INFO_FILE);
        std::fs::write(&ipath, info.to_text()).at(&ipath)?;
        // One syncfs covers every chunk file and folder, the manifest and the info;
        // only then may the session appear under its final name.
        durable::syncfs(&self.staging).at(&self.staging)?;
        before_publish(&info)?;
        crate::failpoint::hit("session-before-rename");
        std::fs::rename(&self.staging, &self.final_dir).at(&self.final_dir)?;
        durable::sync_dir(&self.vol_dir).at(&self.vol_dir)?;
        self.committed = true;
        Ok(info)
    }

    pub fn staging_dir(&self) -> &PathBuf {
        &self.staging
    }
}

impl Drop for SessionWriter {
    fn drop(&mut self) {
        if !self.committed {
            // An abandoned session never becomes visible; remove what it wrote.
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}
