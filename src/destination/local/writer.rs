//! Writing one session: chunk files and manifest into a staging folder, then the info
//! file, one `syncfs`, and a rename that makes the session appear whole or not at all.
//!
//! With `tar`, the chunks go into one tar file in the staging folder instead, with its
//! member index beside it (see `sparsebak_format::tarsession`); at commit the manifest
//! and info members are appended, and the index and then the tar (the commit point)
//! are renamed into the volume folder.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use sparsebak_format::archive_fs::{FileWriter, SharedFs};
use sparsebak_format::crypto::{ArchiveKeys, Place, SealWriter};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::tarsession::{ustar_header, TarIndexWriter};
use sparsebak_format::Hash;

use crate::destination::NewSession;

use super::LocalVol;
use crate::durable;
use crate::error::{IoAt, Result};

/// Where the manifest's lines go: the file, or (encrypted archive) the file through
/// the sealing of [`Place::Manifest`].
enum ManifestOut {
    Plain(BufWriter<File>),
    Sealed(SealWriter<BufWriter<File>>),
}

/// A file being written in the archive folder (through its [`SharedFs`]).
type File = Box<dyn FileWriter>;

impl Write for ManifestOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            ManifestOut::Plain(w) => w.write(b),
            ManifestOut::Sealed(w) => w.write(b),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ManifestOut::Plain(w) => w.flush(),
            ManifestOut::Sealed(w) => w.flush(),
        }
    }
}

impl ManifestOut {
    /// Write what is buffered (and the last sealed segment): the file.
    fn finish(self) -> std::io::Result<File> {
        let bw = match self {
            ManifestOut::Plain(w) => w,
            ManifestOut::Sealed(w) => w.finish()?,
        };
        bw.into_inner().map_err(|e| e.into_error())
    }
}

/// A session being written.
pub struct SessionWriter {
    pub id: String,
    /// The file operations of the archive folder.
    fs: SharedFs,
    staging: PathBuf,
    final_dir: PathBuf,
    vol_dir: PathBuf,
    manifest: Option<ManifestWriter<ManifestOut>>,
    /// The archive's keys when it is encrypted: the info is sealed too.
    keys: Option<std::sync::Arc<ArchiveKeys>>,
    /// How the session's chunk files are named in its folder.
    store: sparsebak_format::store::FolderStore,
    /// Prefix folders made so far.
    made: std::collections::HashSet<String>,
    tar: Option<TarOut>,
    pub changed: u64,
    pub bytes_stored: u64,
    flusher: durable::Flusher,
    /// The info, once [`SessionWriter::prepare`] made the session durable.
    prepared: Option<SessionInfo>,
    committed: bool,
}

/// Bytes of chunk data written between two background flushes of the staging folder's
/// filesystem.
const FLUSH_EVERY: u64 = 64 << 20;

/// A tar session being written.
struct TarOut {
    /// `None` once the tar is finished.
    builder: Option<tar::Builder<BufWriter<File>>>,
    index: Option<TarIndexWriter>,
    /// Bytes written to the tar so far (ustar: a 512-byte header per member, content
    /// padded to 512).
    pos: u64,
    mtime: u64,
    tar_tmp: PathBuf,
    index_tmp: PathBuf,
    tar_final: PathBuf,
    index_final: PathBuf,
}

impl TarOut {
    /// Append a member; returns the offset of its content.
    fn append(&mut self, name: &str, data: &[u8]) -> std::io::Result<u64> {
        let h = ustar_header(name, data.len() as u64, self.mtime)?;
        let b = self
            .builder
            .as_mut()
            .ok_or_else(|| std::io::Error::other("tar session already finished"))?;
        b.append(&h, data)?;
        let off = self.pos + 512;
        self.pos = off + (data.len() as u64).div_ceil(512) * 512;
        Ok(off)
    }
}

impl SessionWriter {
    /// Start session `id` of `vol` in a staging folder, stored as one tar file when
    /// `as_tar`.
    /// A full filesystem is explained (see [`crate::space`]) before the staging folder
    /// is removed, so that the inodes it held still count as used.
    pub fn create_as(vol: &LocalVol, id: &str, as_tar: bool) -> Result<SessionWriter> {
        let fs = vol.fs().as_ref();
        let room = crate::space::room_in(fs, vol.dir());
        let explain = |e| crate::space::explain_in(fs, e, vol.dir(), room, Default::default());
        if as_tar && vol.keys().is_some() {
            return Err(crate::error::Error::Msg(format!(
                "{}: sessions of an encrypted archive are stored as folders; tarfile = on is \
                 not supported with encryption yet",
                vol.dir().display()
            )));
        }
        let mut w = Self::create(vol, id).map_err(explain)?;
        if as_tar {
            let tar_tmp = w.staging.join("session.tar");
            let index_tmp = w.staging.join("session.tar.index");
            let f = fs.create(&tar_tmp).at(&tar_tmp).map_err(explain)?;
            let mut builder = tar::Builder::new(BufWriter::with_capacity(1 << 20, f));
            builder.mode(tar::HeaderMode::Deterministic);
            w.tar = Some(TarOut {
                builder: Some(builder),
                index: Some(
                    TarIndexWriter::create_in(vol.fs(), &index_tmp)
                        .map_err(|e| explain(e.into()))?,
                ),
                pos: 0,
                mtime: chrono::Utc::now().timestamp().max(0) as u64,
                tar_tmp,
                index_tmp,
                tar_final: vol.tar_path(id),
                index_final: vol.tar_index_path(id),
            });
        }
        Ok(w)
    }

    /// Start session `id` of `vol` in a staging folder.
    pub fn create(vol: &LocalVol, id: &str) -> Result<SessionWriter> {
        let staging = vol.dir().join(format!(
            "{}{}",
            layout::STAGING_PREFIX,
            vol.store().session_name(id)
        ));
        let fs = vol.fs().clone();
        fs.create_dir_all(&staging).at(&staging)?;
        let mpath = staging.join(layout::MANIFEST_FILE);
        let opened = fs.create(&mpath).at(&mpath).and_then(|mf| {
            // A remote folder is made durable by the one syncfs at the end only.
            let flusher = if fs.is_local() {
                durable::Flusher::new(&staging, FLUSH_EVERY).at(&staging)?
            } else {
                durable::Flusher::idle()
            };
            Ok((mf, flusher))
        });
        let (mf, flusher) = match opened {
            Ok(o) => o,
            Err(e) => {
                // Nothing of the session may stay behind (on a filesystem out of
                // inodes the empty folder would hold one); said before the folder
                // goes, while its inode still counts.
                let e = crate::space::explain_in(
                    fs.as_ref(),
                    e,
                    vol.dir(),
                    crate::space::room_in(fs.as_ref(), vol.dir()),
                    Default::default(),
                );
                let _ = fs.remove_dir_all(&staging);
                return Err(e);
            }
        };
        let keys = vol.keys().cloned();
        let bw = BufWriter::with_capacity(256 * 1024, mf);
        let out = match &keys {
            None => ManifestOut::Plain(bw),
            Some(k) => ManifestOut::Sealed(
                SealWriter::new(k, Place::Manifest { session: id }, bw)
                    .map_err(|e| crate::error::Error::Msg(e.to_string()))?,
            ),
        };
        Ok(SessionWriter {
            id: id.to_string(),
            fs,
            final_dir: vol.session_dir(id),
            vol_dir: vol.dir().to_path_buf(),
            staging,
            manifest: Some(ManifestWriter::new(out)),
            keys,
            store: vol.store().clone(),
            made: Default::default(),
            tar: None,
            changed: 0,
            bytes_stored: 0,
            flusher,
            prepared: None,
            committed: false,
        })
    }

    /// The volume folder the session goes into.
    pub fn vol_dir(&self) -> &std::path::Path {
        &self.vol_dir
    }

    /// Store a data chunk (already encoded).
    pub fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        if let Some(t) = self.tar.as_mut() {
            let name = format!(
                "{}/{}",
                layout::session_dir_name(&self.id),
                layout::chunk_rel_path(addr).display()
            );
            let off = t.append(&name, payload).at(&t.tar_tmp)?;
            if let Some(ix) = t.index.as_mut() {
                ix.push(addr, off, payload.len() as u64)?;
            }
            self.bytes_stored += payload.len() as u64;
            self.flusher.wrote(payload.len() as u64 + 512);
            return self.push(Entry {
                addr,
                hash: Some(hash),
            });
        }
        let rel = self.store.chunk_rel_path(&self.id, addr);
        let prefix = rel
            .parent()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !self.made.contains(&prefix) {
            let d = self.staging.join(&prefix);
            self.fs.create_dir_all(&d).at(&d)?;
            self.made.insert(prefix);
        }
        let p = self.staging.join(rel);
        self.fs.write(&p, payload).at(&p)?;
        self.flusher.wrote(payload.len() as u64);
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

    /// Finish the manifest, write the info file that `fields` make with what was
    /// counted, and make everything durable. The session is not visible yet:
    /// [`SessionWriter::publish`] does that, once the source side has recorded that
    /// it is about to exist.
    pub fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo> {
        let mpath = self.staging.join(layout::MANIFEST_FILE);
        let mw = self
            .manifest
            .take()
            .ok_or_else(|| crate::error::Error::Msg("session already committed".into()))?;
        let (out, hash) = mw.finish().at(&mpath)?;
        out.finish().and_then(|f| f.finish(false)).at(&mpath)?;
        self.flusher.finish().at(&self.staging)?;
        let info = fields.info(self.changed, self.bytes_stored, hash);
        self.claim_volume(&info)?;
        if let Some(t) = self.tar.as_mut() {
            let sdir = layout::session_dir_name(&self.id);
            // This run's own file, just written: a line per chunk at most.
            let most = (self.changed + 1) * sparsebak_format::limits::MAX_MANIFEST_LINE as u64;
            let most = most + sparsebak_format::crypto::envelope::overhead(most);
            let manifest = self.fs.read(&mpath, most).at(&mpath)?;
            let moff = t
                .append(&format!("{sdir}/{}", layout::MANIFEST_FILE), &manifest)
                .at(&t.tar_tmp)?;
            let text = info.to_text();
            let ioff = t
                .append(&format!("{sdir}/{}", layout::INFO_FILE), text.as_bytes())
                .at(&t.tar_tmp)?;
            let builder = t
                .builder
                .take()
                .ok_or_else(|| crate::error::Error::Msg("tar session already finished".into()))?;
            let bw = builder.into_inner().at(&t.tar_tmp)?;
            let f = bw.into_inner().map_err(|e| e.into_error()).at(&t.tar_tmp)?;
            f.finish(true).at(&t.tar_tmp)?;
            if let Some(ix) = t.index.take() {
                ix.finish((moff, manifest.len() as u64), (ioff, text.len() as u64))?;
            }
        } else {
            let ipath = self.staging.join(layout::INFO_FILE);
            let text = info.to_text().into_bytes();
            let bytes = match &self.keys {
                None => text,
                Some(k) => k
                    .seal(&Place::Info { session: &self.id }, &text)
                    .map_err(|e| crate::error::Error::Msg(e.to_string()))?,
            };
            self.fs.write(&ipath, &bytes).at(&ipath)?;
            // One syncfs covers every chunk file and folder, the manifest and the
            // info; only then may the session appear under its final name.
            self.fs.syncfs(&self.staging).at(&self.staging)?;
        }
        self.prepared = Some(info.clone());
        Ok(info)
    }

    /// In an encrypted archive, tie the volume folder to the session's volume id: its
    /// identity file is written with the volume's first session, and a folder whose
    /// file names another id is not written into.
    fn claim_volume(&self, info: &SessionInfo) -> Result<()> {
        let (Some(k), Some(id)) = (&self.keys, &info.volume_id) else {
            return Ok(());
        };
        match sparsebak_format::store::VolumeStore::volume_id(&self.store)? {
            Some(have) if have == *id => Ok(()),
            Some(have) => Err(crate::error::Error::Msg(format!(
                "{}: the folder of volume {} belongs to volume id {have}, but the session \
                 builds on volume id {id}; nothing was written",
                self.vol_dir.display(),
                self.store.volume_name()
            ))),
            None => super::write_volume_id(
                self.fs.as_ref(),
                &self.vol_dir,
                k,
                self.store.volume_name(),
                id,
                layout::VOLUME_ID_FILE,
            ),
        }
    }

    /// Publish the prepared session: it appears under its final name in one step.
    pub fn publish(mut self) -> Result<SessionInfo> {
        let info = self.prepared.take().ok_or_else(|| {
            crate::error::Error::Msg("session committed before it was prepared".into())
        })?;
        crate::failpoint::hit("session-before-rename");
        if let Some(t) = self.tar.take() {
            self.fs
                .rename(&t.index_tmp, &t.index_final)
                .at(&t.index_final)?;
            self.fs.rename(&t.tar_tmp, &t.tar_final).at(&t.tar_final)?;
            self.fs.sync_dir(&self.vol_dir).at(&self.vol_dir)?;
            self.committed = true;
            let _ = self.fs.remove_dir_all(&self.staging);
            return Ok(info);
        }
        self.fs
            .rename(&self.staging, &self.final_dir)
            .at(&self.final_dir)?;
        self.fs.sync_dir(&self.vol_dir).at(&self.vol_dir)?;
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
            let _ = self.fs.remove_dir_all(&self.staging);
        }
    }
}
