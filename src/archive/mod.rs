//! The archive on the destination: opening or creating it, the per-volume lock,
//! writing sessions ([`writer`]), checking them ([`verify`]), and the copies of each
//! session's info and manifest that the source side keeps ([`local`]).

pub mod local;
pub mod prune;
pub mod repair;
pub mod tar;
pub mod verify;
pub mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

use sparsebak_format::layout;
use sparsebak_format::volume::{archive_marker_text, check_archive_root, VolumeArchive};

use crate::config::Config;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, LockGuard, Mode};

/// How long a command waits for another run to release a volume.
pub const LOCK_WAIT: Duration = Duration::from_secs(60);

/// An archive root folder.
#[derive(Debug, Clone)]
pub struct Archive {
    pub root: PathBuf,
}

impl Archive {
    /// Open the configured archive, which must exist.
    pub fn open(config: &Config) -> Result<Archive> {
        config.check_destination()?;
        let root = config.destdir.clone();
        check_archive_root(&root)?;
        Ok(Archive { root })
    }

    /// Open the configured archive, creating an empty one if the folder has none yet.
    pub fn open_or_create(config: &Config) -> Result<Archive> {
        config.check_destination()?;
        let root = config.destdir.clone();
        let marker = root.join(layout::ARCHIVE_MARKER);
        if !marker.exists() {
            std::fs::create_dir_all(&root).at(&root)?;
            let non_empty = std::fs::read_dir(&root).at(&root)?.any(|e| {
                e.map(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .unwrap_or(true)
            });
            if non_empty {
                return Err(Error::Msg(format!(
                    "{} is not empty and is not a sparsebak archive; refusing to write into it",
                    root.display()
                )));
            }
            durable::write_atomic(&marker, archive_marker_text().as_bytes()).at(&marker)?;
            tracing::info!("created archive {}", root.display());
        }
        check_archive_root(&root)?;
        Ok(Archive { root })
    }

    pub fn volume(&self, name: &str) -> VolumeArchive {
        VolumeArchive::new(&self.root.join(name))
    }

    /// Lock a volume's folder (created if needed for exclusive use).
    pub fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<LockGuard>> {
        let dir = self.root.join(name);
        if !dir.is_dir() {
            if mode == Mode::Shared {
                return Ok(None);
            }
            std::fs::create_dir_all(&dir).at(&dir)?;
            durable::sync_parent(&dir).at(&dir)?;
        }
        let what = format!("volume {name} in the archive");
        lock::lock(&dir.join(layout::LOCK_FILE), mode, LOCK_WAIT, &what).map(Some)
    }
}

/// Open volume `name` for reading: finish what interrupted runs left on it
/// ([`settle`]), then hold its shared lock while the guard lives.
pub fn lock_for_reading(
    config: &Config,
    archive: &Archive,
    name: &str,
) -> Result<Option<LockGuard>> {
    settle(config, archive, name)?;
    archive.lock_volume(name, Mode::Shared)
}

/// Remove session folders an interrupted send left behind (never part of a view).
pub fn remove_staging(vol: &VolumeArchive) -> Result<()> {
    let rd = match std::fs::read_dir(&vol.dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).at(&vol.dir),
    };
    for ent in rd {
        let ent = ent.at(&vol.dir)?;
        if ent.file_name().to_string_lossy().starts_with(".tmp-") {
            let p = ent.path();
            tracing::warn!("removing {} left by an interrupted run", p.display());
            std::fs::remove_dir_all(&p).at(&p)?;
        }
    }
    tar::tidy(vol)
}

/// Finish what interrupted runs left on a volume (a prune's journal, a send's pending
/// session) before a command reads it. Cheap when there is nothing to do: two stats.
pub fn settle(config: &Config, archive: &Archive, name: &str) -> Result<()> {
    let vol = archive.volume(name);
    let mdir = meta_dir(config, name);
    let local = local::LocalCopies::new(&mdir);
    if !prune::interrupted(&vol) && !local.has_pending() {
        return Ok(());
    }
    let _meta = crate::send::lock_meta(config, name)?;
    let _lock = archive.lock_volume(name, Mode::Exclusive)?;
    let local = mdir.is_dir().then_some(&local);
    prune::recover(&vol, local)?;
    if let Some(l) = local {
        l.catch_up(&vol)?;
    }
    Ok(())
}

/// `<metadir>/<volume>`.
pub fn meta_dir(config: &Config, name: &str) -> PathBuf {
    config.metadir.join(name)
}

/// Create a folder readable only by its owner (metadata can reveal volume layout).
pub fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !p.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .at(p)?;
    }
    Ok(())
}
