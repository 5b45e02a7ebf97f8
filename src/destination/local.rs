//! An archive folder on this machine: the one implementation of [`Destination`] that
//! touches an archive's files (with the read side's
//! [`FolderStore`](sparsebak_format::store::FolderStore)). `sparsebak serve` runs one
//! on the far side of a remote destination.
//!
//! Sessions are written by [`writer`], folded by [`prune`], converted from tar by
//! [`tar`]; the rest (locks, leftovers of dead runs, deleting and renaming volumes,
//! the files `repair` puts back) is here.

pub mod check;
mod keyfile;
pub mod marker;
pub mod prune;
pub mod resume;
#[cfg(test)]
mod seam_tests;
pub mod tar;
pub mod writer;

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sparsebak_format::archive_fs::{self, ArchiveFs, SharedFs};
use sparsebak_format::crypto::{ArchiveKeys, Place};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::marker::{read_marker_in, ArchiveMarker};
use sparsebak_format::store::{FolderStore, Storage, VolumeStore};
use sparsebak_format::tarsession::TarSession;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use super::{
    ArchiveError, DestLock, Destination, FoldPlan, Mode, NewSession, SessionCheck, SessionFile,
    SessionKind, SessionSink,
};
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::lock;
use crate::space;

/// How long a command waits for another run to release a volume.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// A volume of a local archive: what readers see ([`VolumeArchive`], through
/// `Deref`) and the paths of its files.
#[derive(Debug, Clone)]
pub struct LocalVol {
    vol: VolumeArchive,
    fs: FolderStore,
}

impl Deref for LocalVol {
    type Target = VolumeArchive;
    fn deref(&self) -> &VolumeArchive {
        &self.vol
    }
}

impl LocalVol {
    /// The volume folder `dir` (which need not exist) of a plain archive.
    pub fn new(dir: &Path) -> LocalVol {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        LocalVol::at(dir, &name, None)
    }

    /// Volume `name` in folder `dir` on this machine, of an archive encrypted with
    /// `keys` (`None`: plain).
    pub fn at(dir: &Path, name: &str, keys: Option<Arc<ArchiveKeys>>) -> LocalVol {
        LocalVol::at_fs(archive_fs::local_in(dir), dir, name, keys)
    }

    /// Volume `name` in folder `dir`, reached through `fsys`, of an archive encrypted
    /// with `keys` (`None`: plain).
    pub fn at_fs(
        fsys: SharedFs,
        dir: &Path,
        name: &str,
        keys: Option<Arc<ArchiveKeys>>,
    ) -> LocalVol {
        let fs = match keys {
            None => FolderStore::with_fs(fsys, dir),
            Some(k) => FolderStore::sealed_with_fs(fsys, dir, name, k),
        };
        LocalVol {
            vol: VolumeArchive::from_store(name, Arc::new(fs.clone())),
            fs,
        }
    }

    /// The archive's keys, when it is encrypted.
    pub fn keys(&self) -> Option<&Arc<ArchiveKeys>> {
        self.fs.keys()
    }

    /// The folder store (how names map to files).
    pub fn store(&self) -> &FolderStore {
        &self.fs
    }

    /// The file operations the volume's files are reached with.
    pub fn fs(&self) -> &SharedFs {
        self.fs.fs()
    }

    /// `bytes`, the plain text of session `id`'s info or manifest, as stored: sealed
    /// for its place in an encrypted archive.
    pub fn seal_session_file(&self, id: &str, file: SessionFile, bytes: &[u8]) -> Result<Vec<u8>> {
        let Some(k) = self.keys() else {
            return Ok(bytes.to_vec());
        };
        let place = match file {
            SessionFile::Info => Place::Info { session: id },
            SessionFile::Manifest => Place::Manifest { session: id },
            SessionFile::Chunk(_) => return Ok(bytes.to_vec()),
        };
        k.seal(&place, bytes).map_err(|e| Error::Msg(e.to_string()))
    }

    /// The volume folder `dir`, read through `store` (a store over the same folder
    /// that fails on purpose, in tests of what reads it).
    #[cfg(test)]
    pub(crate) fn with_store(
        dir: &Path,
        store: Arc<dyn sparsebak_format::store::VolumeStore>,
    ) -> LocalVol {
        let mut v = LocalVol::new(dir);
        v.vol = VolumeArchive::from_store(&v.vol.name, store);
        v
    }

    /// The reader's view of the volume.
    pub fn archive(&self) -> &VolumeArchive {
        &self.vol
    }

    pub fn dir(&self) -> &Path {
        self.fs.dir()
    }
    pub fn session_dir(&self, id: &str) -> PathBuf {
        self.fs.session_dir(id)
    }
    pub fn tar_path(&self, id: &str) -> PathBuf {
        self.fs.tar_path(id)
    }
    pub fn tar_index_path(&self, id: &str) -> PathBuf {
        self.fs.tar_index_path(id)
    }
    pub fn info_path(&self, id: &str) -> PathBuf {
        self.fs.info_path(id)
    }
    pub fn manifest_path(&self, id: &str) -> PathBuf {
        self.fs.manifest_path(id)
    }
    pub fn chunk_path(&self, id: &str, addr: u64) -> PathBuf {
        self.fs.chunk_path(id, addr)
    }
    pub fn tar(&self, id: &str) -> sparsebak_format::Result<Arc<TarSession>> {
        self.fs.tar(id)
    }
}

/// An archive root folder on this machine.
#[derive(Debug, Clone)]
pub struct LocalDestination {
    /// The file operations the archive's files are reached with.
    fs: SharedFs,
    root: PathBuf,
    read_only: bool,
    /// The keys of an encrypted archive, once unlocked ([`Destination::set_keys`]).
    keys: Arc<OnceLock<Arc<ArchiveKeys>>>,
}

impl LocalDestination {
    /// The archive folder `root` on this machine (which need not hold an archive
    /// yet).
    pub fn new(root: &Path) -> LocalDestination {
        LocalDestination::with_fs(archive_fs::local_in(root), root)
    }

    /// The archive folder `root` (which need not hold an archive yet), its files
    /// reached through `fs`: this machine's, or a remote folder's.
    pub fn with_fs(fs: SharedFs, root: &Path) -> LocalDestination {
        let read_only = fs.is_read_only(root);
        if read_only {
            tracing::debug!(
                "archive {} is on a read-only filesystem: reading without locks",
                root.display()
            );
        }
        LocalDestination {
            fs,
            root: root.to_path_buf(),
            read_only,
            keys: Arc::default(),
        }
    }

    fn keys(&self) -> Option<Arc<ArchiveKeys>> {
        self.keys.get().cloned()
    }

    /// The folder of volume `name`: its name, or in an encrypted archive its token.
    fn vol_dir(&self, name: &str) -> PathBuf {
        match self.keys.get() {
            None => self.root.join(name),
            Some(k) => self.root.join(k.volume_dir(name)),
        }
    }

    /// The volume a folder of the root stands for (`None`: not a volume's).
    fn vol_of_dir(&self, dir: &str) -> Option<String> {
        if dir.starts_with('.') {
            return None;
        }
        match self.keys.get() {
            None => Some(dir.to_string()),
            Some(k) => k.volume_of_dir(dir),
        }
    }

    /// The archive's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The file operations the archive's files are reached with.
    pub fn fs(&self) -> &SharedFs {
        &self.fs
    }

    /// Volume `name` with the paths of its files.
    pub fn local_volume(&self, name: &str) -> LocalVol {
        LocalVol::at_fs(self.fs.clone(), &self.vol_dir(name), name, self.keys())
    }

    fn refuse_read_only(&self, action: String) -> Error {
        Error::from(ArchiveError::ReadOnly {
            path: self.root.clone(),
            action,
        })
    }
}

/// Whether `e` is the error of a read-only filesystem.
fn is_erofs(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.raw_os_error() == Some(libc::EROFS))
}

/// Remove the staging folders (`.tmp-*`) interrupted runs left in a volume (never
/// part of a view). Needs the volume's exclusive lock.
pub fn remove_staging(vol: &LocalVol) -> Result<()> {
    let dir = vol.dir();
    let fs = vol.fs();
    let rd = match fs.read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(dir),
    };
    for ent in rd {
        if ent.name.starts_with(".tmp-") {
            let p = dir.join(&ent.name);
            tracing::warn!("removing {} left by an interrupted run", fs.display(&p));
            fs.remove_dir_all(&p).at(&p)?;
        }
    }
    tar::tidy(vol)
}

/// Whether `name`, an entry of a volume folder, is what an unfinished run leaves
/// behind: a staging folder (`.tmp-*`: a send's session, an untar, a repair), the
/// trash or the new manifest of a prune.
fn is_leftover(name: &str) -> bool {
    name.starts_with(".tmp-")
        || name.starts_with(".trash-")
        || (name.starts_with(".prune-") && name.ends_with(".manifest"))
}

impl Destination for LocalDestination {
    fn label(&self) -> String {
        self.fs.display(&self.root)
    }

    fn read_only(&self) -> bool {
        self.read_only
    }

    fn local_root(&self) -> Option<&Path> {
        self.fs.is_local().then_some(self.root.as_path())
    }

    fn marker(&self) -> Result<Option<ArchiveMarker>> {
        Ok(read_marker_in(self.fs.as_ref(), &self.root)?)
    }

    fn create(&self) -> Result<()> {
        marker::create(self.fs.as_ref(), &self.root)
    }

    fn add_identity(&self) -> Result<String> {
        marker::add_id(self.fs.as_ref(), &self.root)
    }

    fn volumes(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match self.fs.read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).at(&self.root),
        };
        for ent in rd {
            if ent.kind != archive_fs::Kind::Dir {
                continue;
            }
            if let Some(name) = self.vol_of_dir(&ent.name) {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn volume(&self, name: &str) -> VolumeArchive {
        self.local_volume(name).archive().clone()
    }

    fn set_keys(&self, keys: Arc<ArchiveKeys>) -> Result<()> {
        if self.keys.set(keys).is_err() {
            tracing::debug!("{}: keys were set already", self.root.display());
        }
        Ok(())
    }

    fn put_volume_id(&self, name: &str, id: &str) -> Result<()> {
        let k = self.keys().ok_or_else(|| {
            Error::Msg(format!(
                "{}: the archive is not encrypted",
                self.root.display()
            ))
        })?;
        let dir = self.vol_dir(name);
        self.fs.create_dir_all(&dir).at(&dir)?;
        write_volume_id(self.fs.as_ref(), &dir, &k, name, id, layout::VOLUME_ID_FILE)
    }

    fn create_sealed(&self, id: &str, key_file: &[u8]) -> Result<()> {
        marker::create_sealed(self.fs.as_ref(), &self.root, id, key_file)
    }

    fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<DestLock>> {
        let dir = self.vol_dir(name);
        if mode == Mode::Exclusive && self.read_only {
            return Err(self.refuse_read_only(format!("changing volume {name}")));
        }
        if !self.fs.is_dir(&dir) {
            if mode == Mode::Shared {
                return Ok(None);
            }
            let made = self
                .fs
                .create_dir_all(&dir)
                .at(&dir)
                .and_then(|()| self.fs.sync_parent(&dir).at(&dir));
            match made {
                Err(e) if is_erofs(&e) => {
                    return Err(self.refuse_read_only(format!("changing volume {name}")))
                }
                r => r?,
            }
        }
        let what = format!("volume {name} in the archive");
        match lock::lock_in(
            self.fs.as_ref(),
            &dir.join(layout::LOCK_FILE),
            mode,
            LOCK_WAIT,
            &what,
        ) {
            Ok(g) => Ok(Some(DestLock::new(g))),
            Err(e) if is_erofs(&e) && mode == Mode::Shared => {
                tracing::debug!("{e}: reading volume {name} without a lock");
                Ok(None)
            }
            Err(e) if is_erofs(&e) => Err(self.refuse_read_only(format!("changing volume {name}"))),
            Err(e) => Err(e),
        }
    }

    fn begin_session(
        &self,
        name: &str,
        id: &str,
        kind: SessionKind,
        _base: Option<&str>,
        volsize: u64,
    ) -> Result<Box<dyn SessionSink>> {
        let vol = self.local_volume(name);
        let room_before = space::room_in(self.fs.as_ref(), vol.dir());
        let progress = space::Progress {
            size: volsize,
            ..Default::default()
        };
        // Any step may meet a full filesystem, creating the staging folder included.
        let writer =
            writer::SessionWriter::create_as(&vol, id, kind == SessionKind::Tar).map_err(|e| {
                space::explain_in(self.fs.as_ref(), e, vol.dir(), room_before, progress)
            })?;
        Ok(Box::new(LocalSink {
            fs: self.fs.clone(),
            dir: vol.dir().to_path_buf(),
            writer,
            room_before,
            progress,
            files: 0,
        }))
    }

    fn remove_staging(&self, name: &str) -> Result<()> {
        remove_staging(&self.local_volume(name))
    }

    fn sweep_dead_runs(&self) {
        if self.read_only {
            return;
        }
        let Ok(rd) = self.fs.read_dir(&self.root) else {
            return;
        };
        for ent in rd {
            if ent.kind != archive_fs::Kind::Dir {
                continue;
            }
            let Some(name) = self.vol_of_dir(&ent.name) else {
                continue;
            };
            let vol = self.local_volume(&name);
            let Ok(entries) = self.fs.read_dir(vol.dir()) else {
                continue;
            };
            let any = entries.iter().any(|e| is_leftover(&e.name));
            if !any {
                continue;
            }
            let lock_path = vol.dir().join(layout::LOCK_FILE);
            let Ok(_lock) = lock::lock_in(
                self.fs.as_ref(),
                &lock_path,
                Mode::Exclusive,
                Duration::ZERO,
                &name,
            ) else {
                tracing::debug!("volume {name} is in use: its staging folders are a live run's");
                continue;
            };
            let swept = remove_staging(&vol).and_then(|()| {
                if prune::interrupted(&vol) {
                    Ok(())
                } else {
                    prune::remove_trash(&vol)
                }
            });
            if let Err(e) = swept {
                tracing::warn!("volume {name}: removing what an interrupted run left: {e}");
            }
        }
    }

    fn interrupted_prune(&self, name: &str) -> Result<Option<(String, String)>> {
        let vol = self.local_volume(name);
        if !prune::interrupted(&vol) {
            return Ok(None);
        }
        prune::journal_sessions(&vol)
    }

    fn recover(
        &self,
        name: &str,
        removed_info: Option<&SessionInfo>,
    ) -> Result<Option<(String, String)>> {
        prune::recover(&self.local_volume(name), removed_info)
    }

    fn check_removal(&self, name: &str, targets: &[String]) -> Result<()> {
        prune::check_removal(&self.local_volume(name), targets)
    }

    fn removal_frees(&self, name: &str, targets: &[String]) -> Result<Option<u64>> {
        prune::removal_frees(&self.local_volume(name), targets).map(Some)
    }

    fn fold(
        &self,
        name: &str,
        remove: &str,
        dry_run: bool,
        removed_info: Option<&SessionInfo>,
    ) -> Result<FoldPlan> {
        prune::fold(&self.local_volume(name), removed_info, remove, dry_run)
    }

    fn end_fold(&self, name: &str) -> Result<()> {
        prune::end(&self.local_volume(name))
    }

    fn check_stored(
        &self,
        name: &str,
        info: &SessionInfo,
        bad_manifest: bool,
    ) -> Result<SessionCheck> {
        check::check_stored(&self.local_volume(name), info, bad_manifest)
    }

    fn untar(&self, name: &str, id: &str) -> Result<bool> {
        tar::untar_session(&self.local_volume(name), id)
    }

    fn delete_sessions(&self, name: &str, ids: &[String]) -> Result<()> {
        let vol = self.local_volume(name);
        for id in ids {
            if vol.storage(id) == Storage::Tar {
                for p in [vol.tar_path(id), vol.tar_index_path(id)] {
                    match self.fs.remove_file(&p) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e).at(&p),
                    }
                }
                vol.forget_tars();
                continue;
            }
            let sdir = vol.session_dir(id);
            if !self.fs.exists(&sdir) {
                continue;
            }
            // Out of the view in one step, then the files go.
            let trash = vol.dir().join(format!(
                ".trash-{}{}",
                layout::SESSION_PREFIX,
                vol.store().session_name(id)
            ));
            self.fs.rename(&sdir, &trash).at(&sdir)?;
            self.fs.sync_dir(vol.dir()).at(vol.dir())?;
            self.fs.remove_dir_all(&trash).at(&trash)?;
        }
        self.fs.sync_dir(vol.dir()).at(vol.dir())
    }

    fn delete_volume(&self, name: &str) -> Result<bool> {
        let dir = self.vol_dir(name);
        if !self.fs.exists(&dir) {
            return Ok(false);
        }
        // Rename first: the volume disappears from the archive in one step, then the
        // files go.
        let folder = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let trash = self.root.join(format!(".trash-{folder}"));
        self.fs.rename(&dir, &trash).at(&dir)?;
        self.fs.sync_dir(&self.root).at(&self.root)?;
        self.fs.remove_dir_all(&trash).at(&trash)?;
        Ok(true)
    }

    fn volume_is_free(&self, name: &str) -> Result<bool> {
        durable::only_lock_in(self.fs.as_ref(), &self.vol_dir(name), LEFTOVERS)
    }

    fn rename_volume(&self, old: &str, new: &str) -> Result<bool> {
        let (from, to) = (self.vol_dir(old), self.vol_dir(new));
        let Some(k) = self.keys() else {
            return durable::move_dir_in(self.fs.as_ref(), &from, &to, LEFTOVERS);
        };
        // The identity file is sealed for the name: the new name's is written beside
        // the old one first (readers take either), then the folder moves, then it
        // replaces the old one.
        let fs = self.fs.as_ref();
        if fs.exists(&from) {
            if let Some(id) = VolumeStore::volume_id(self.local_volume(old).store())? {
                write_volume_id(fs, &from, &k, new, &id, layout::VOLUME_ID_NEXT)?;
            }
        }
        let moved = durable::move_dir_in(fs, &from, &to, LEFTOVERS)?;
        let next = to.join(layout::VOLUME_ID_NEXT);
        if fs.exists(&next) {
            let cur = to.join(layout::VOLUME_ID_FILE);
            fs.rename(&next, &cur).at(&cur)?;
            fs.sync_dir(&to).at(&to)?;
        }
        Ok(moved)
    }

    fn put_session_file(
        &self,
        name: &str,
        id: &str,
        file: SessionFile,
        bytes: &[u8],
    ) -> Result<()> {
        let vol = self.local_volume(name);
        let dst = match file {
            SessionFile::Info => vol.info_path(id),
            SessionFile::Manifest => vol.manifest_path(id),
            SessionFile::Chunk(addr) => vol.chunk_path(id, addr),
        };
        // Info and manifest come as their plain text (the source side's copies).
        let bytes = vol.seal_session_file(id, file, bytes)?;
        install(&vol, &dst, &bytes)
    }

    fn key_file(&self) -> Result<Option<Vec<u8>>> {
        keyfile::read(self.fs.as_ref(), &self.root)
    }

    fn put_key_file(&self, bytes: &[u8]) -> Result<()> {
        keyfile::write(self, bytes)
    }
}

/// Files a volume folder may hold and still be free for a rename to take its name:
/// the lock file, and an encrypted volume's identity files.
const LEFTOVERS: &[&str] = &[
    layout::LOCK_FILE,
    layout::VOLUME_ID_FILE,
    layout::VOLUME_ID_NEXT,
];

/// Write the identity file `file` ([`layout::VOLUME_ID_FILE`] or
/// [`layout::VOLUME_ID_NEXT`]) of the encrypted volume folder `dir`: volume id `id`,
/// sealed for the volume's name `name`; durably.
pub fn write_volume_id(
    fs: &dyn ArchiveFs,
    dir: &Path,
    keys: &ArchiveKeys,
    name: &str,
    id: &str,
    file: &str,
) -> Result<()> {
    let sealed = keys
        .seal(
            &Place::Volume { name },
            layout::volume_id_text(id).as_bytes(),
        )
        .map_err(|e| Error::Msg(e.to_string()))?;
    let p = dir.join(file);
    fs.write_atomic(&p, &sealed).at(&p)?;
    fs.sync_dir(dir).at(dir)
}

/// The staging folder of a repair, inside the volume's folder.
pub const REPAIR_STAGING: &str = ".tmp-repair";

/// Write `dst` durably: built in the repair's staging folder, fsynced, renamed into
/// place, its folder (created if missing) fsynced. A full filesystem is explained.
/// Nothing of the staging folder stays behind, whether the file was put in place or
/// not (a run that dies in between leaves it to the next writer's sweep).
fn install(vol: &LocalVol, dst: &Path, bytes: &[u8]) -> Result<()> {
    let staging = vol.dir().join(REPAIR_STAGING);
    let done = install_in_staging(vol, dst, bytes).map_err(|e| {
        space::explain_write_in(
            vol.fs().as_ref(),
            e,
            vol.dir(),
            "free some files",
            &format!("{} was not repaired", dst.display()),
        )
    });
    match vol.fs().remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => tracing::warn!(
            "{}: removing the staging folder of a repair: {e} (the next run that writes to \
             the archive removes it)",
            staging.display()
        ),
        _ => {}
    }
    done
}

fn install_in_staging(vol: &LocalVol, dst: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let fs = vol.fs();
    let staging = vol.dir().join(REPAIR_STAGING);
    fs.create_dir_all(&staging).at(&staging)?;
    let name = dst
        .strip_prefix(vol.dir())
        .unwrap_or(dst)
        .to_string_lossy()
        .replace('/', "_");
    let tmp = staging.join(name);
    {
        let mut f = fs.create(&tmp).at(&tmp)?;
        f.write_all(bytes).at(&tmp)?;
        f.finish(true).at(&tmp)?;
    }
    if let Some(parent) = dst.parent() {
        if !fs.is_dir(parent) {
            fs.create_dir_all(parent).at(parent)?;
            fs.sync_parent(parent).at(parent)?;
        }
    }
    fs.rename(&tmp, dst).at(dst)?;
    fs.sync_parent(dst).at(dst)
}

/// A session being written into a local archive: a [`writer::SessionWriter`] whose
/// errors explain a full filesystem with what the session had stored.
struct LocalSink {
    fs: SharedFs,
    dir: PathBuf,
    writer: writer::SessionWriter,
    room_before: Option<space::Room>,
    progress: space::Progress,
    /// Chunk files written.
    files: u64,
}

impl LocalSink {
    /// `e`, explained when the filesystem is full: `chunks` files written, `pos`
    /// the volume offset reached.
    fn explain(&self, e: Error, chunks: u64, pos: u64) -> Error {
        let done = space::Progress {
            stored: self.writer.bytes_stored,
            chunks,
            pos,
            ..self.progress
        };
        space::explain_in(self.fs.as_ref(), e, &self.dir, self.room_before, done)
    }
}

impl SessionSink for LocalSink {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        self.writer
            .put_chunk(addr, hash, payload)
            .map_err(|e| self.explain(e, self.files, addr))?;
        self.files += 1;
        Ok(())
    }

    fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.writer
            .put_zero(addr)
            .map_err(|e| self.explain(e, self.writer.changed, 0))
    }

    fn changed(&self) -> u64 {
        self.writer.changed
    }

    fn bytes_stored(&self) -> u64 {
        self.writer.bytes_stored
    }

    fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo> {
        let size = self.progress.size;
        self.writer
            .prepare(fields)
            .map_err(|e| self.explain(e, self.writer.changed, size))
    }

    fn commit(self: Box<Self>) -> Result<SessionInfo> {
        let size = self.progress.size;
        let LocalSink {
            fs,
            dir,
            writer,
            room_before,
            progress,
            ..
        } = *self;
        let (stored, chunks) = (writer.bytes_stored, writer.changed);
        writer.publish().map_err(|e| {
            let done = space::Progress {
                stored,
                chunks,
                pos: size,
                ..progress
            };
            space::explain_in(fs.as_ref(), e, &dir, room_before, done)
        })
    }

    fn abort(self: Box<Self>) -> Result<()> {
        // Dropping the writer removes its staging folder.
        drop(self);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparsebak_format::chunk::{self, Codec};

    const CS: u64 = 65536;

    fn fields(id: &str, previous: Option<&str>) -> NewSession {
        NewSession {
            volume: "v".into(),
            session: id.into(),
            previous: previous.map(str::to_string),
            time: 0,
            volsize: 4 * CS,
            chunksize: CS,
            compression: Codec::None,
            chunks: 2,
            bytes_read: 4 * CS,
            volume_id: None,
        }
    }

    /// A session of volume `v` with data chunks at `addrs` (each filled with its
    /// index + 1), committed.
    fn send(d: &LocalDestination, id: &str, prev: Option<&str>, addrs: &[u64], kind: SessionKind) {
        let mut s = d.begin_session("v", id, kind, prev, 4 * CS).unwrap();
        for (i, a) in addrs.iter().enumerate() {
            let data = vec![i as u8 + 1; CS as usize];
            s.put_chunk(*a, chunk::hash(&data), &data).unwrap();
        }
        let info = s.prepare(fields(id, prev)).unwrap();
        assert_eq!(info.changed, addrs.len() as u64);
        assert_eq!(info.bytes_stored, addrs.len() as u64 * CS);
        // Durable but not visible until committed.
        assert!(!d.volume("v").sessions().unwrap().contains(&id.to_string()));
        assert_eq!(s.commit().unwrap(), info);
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn sessions_commit_whole_or_leave_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = LocalDestination::new(t.path());
        d.create().unwrap();
        assert!(d.marker().unwrap().unwrap().id.is_some());
        let _l = d.lock_volume("v", Mode::Exclusive).unwrap().unwrap();
        send(
            &d,
            "20260101-000000",
            None,
            &[0, 2 * CS],
            SessionKind::Folder,
        );
        send(
            &d,
            "20260102-000000",
            Some("20260101-000000"),
            &[CS],
            SessionKind::Tar,
        );
        let vol = d.volume("v");
        assert_eq!(
            vol.sessions().unwrap(),
            ["20260101-000000", "20260102-000000"]
        );
        let chain = vol.chain("20260102-000000").unwrap();
        // The batched read returns one result per address, in order, across forms.
        let got = vol.read_stored_batch(&chain[0], &[2 * CS, 0]);
        assert_eq!(got[0].as_ref().unwrap()[0], 2);
        assert_eq!(got[1].as_ref().unwrap()[0], 1);
        assert_eq!(vol.read_stored(&chain[1], CS).unwrap()[0], 1);
        // An aborted session and a dropped one leave nothing in the volume's folder.
        let before = entries(&t.path().join("v"));
        let mut s = d
            .begin_session("v", "20260103-000000", SessionKind::Folder, None, 4 * CS)
            .unwrap();
        s.put_zero(0).unwrap();
        s.abort().unwrap();
        let s = d
            .begin_session("v", "20260103-000000", SessionKind::Tar, None, 4 * CS)
            .unwrap();
        drop(s);
        assert_eq!(entries(&t.path().join("v")), before);
        assert_eq!(d.volumes().unwrap(), ["v"]);
    }

    #[test]
    fn check_stored_names_missing_and_extra_chunks() {
        let t = tempfile::tempdir().unwrap();
        let d = LocalDestination::new(t.path());
        d.create().unwrap();
        send(
            &d,
            "20260101-000000",
            None,
            &[0, CS, 3 * CS],
            SessionKind::Folder,
        );
        let lv = d.local_volume("v");
        let info = d.volume("v").info("20260101-000000").unwrap();
        assert_eq!(
            d.check_stored("v", &info, false).unwrap(),
            SessionCheck::default()
        );
        std::fs::remove_file(lv.chunk_path("20260101-000000", CS)).unwrap();
        let extra = lv.chunk_path("20260101-000000", 2 * CS);
        std::fs::write(&extra, b"x").unwrap();
        let c = d.check_stored("v", &info, false).unwrap();
        assert_eq!(c.missing, [CS]);
        assert!(!c.unlisted && !c.bad_manifest);
        assert_eq!(c.problems.len(), 2, "{:?}", c.problems);
        assert!(c.problems[0].contains("is missing"), "{:?}", c.problems);
        assert!(c.problems[1].contains("extra file"), "{:?}", c.problems);
    }

    #[test]
    fn delete_rename_and_put_back() {
        let t = tempfile::tempdir().unwrap();
        let d = LocalDestination::new(t.path());
        d.create().unwrap();
        send(&d, "20260101-000000", None, &[0], SessionKind::Folder);
        send(
            &d,
            "20260102-000000",
            Some("20260101-000000"),
            &[CS],
            SessionKind::Tar,
        );
        send(
            &d,
            "20260103-000000",
            Some("20260102-000000"),
            &[0],
            SessionKind::Folder,
        );
        let ids = |n: &str| d.volume(n).sessions().unwrap();
        d.delete_sessions("v", &["20260101-000000".into(), "20260102-000000".into()])
            .unwrap();
        assert_eq!(ids("v"), ["20260103-000000"]);
        assert_eq!(entries(&t.path().join("v")), ["S_20260103-000000"]);
        // Put back a chunk file: durable, in place, no staging left.
        let data = vec![9u8; CS as usize];
        d.put_session_file("v", "20260103-000000", SessionFile::Chunk(0), &data)
            .unwrap();
        let info = d.volume("v").info("20260103-000000").unwrap();
        assert_eq!(d.volume("v").read_stored(&info, 0).unwrap(), data);
        assert!(!t.path().join("v").join(REPAIR_STAGING).exists());
        // Rename: only into a free name.
        std::fs::create_dir(t.path().join("w")).unwrap();
        std::fs::write(t.path().join("w/.lock"), b"").unwrap();
        assert!(d.volume_is_free("w").unwrap());
        assert!(!d.volume_is_free("v").unwrap());
        assert!(d.rename_volume("v", "w").unwrap());
        assert!(!d.rename_volume("v", "w").unwrap());
        assert_eq!(ids("w"), ["20260103-000000"]);
        assert!(d.delete_volume("w").unwrap());
        assert!(!d.delete_volume("w").unwrap());
        assert_eq!(entries(t.path()), ["sparsebak.archive"]);
    }
}
