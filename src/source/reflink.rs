//! The reflink snapshot layer (`source = reflink`): disk-image files `voldir/NAME` on
//! Btrfs or XFS. Snapshots are reflink copies (FICLONE) kept in `voldir/.sparsebak/`
//! (created mode 0700, on the same filesystem as the images, as reflinks require); the
//! delta between tick and tock comes from their extent maps (FIEMAP), see
//! [`super::fiemap`].
//!
//! Each snapshot has a small sidecar `NAME.tick.origin` holding the device and inode of
//! the image it was copied from. When the image is replaced by a new file (a VM
//! template reinstalled, a restore by copy), or the tick shares no extent with the new
//! copy, the extent maps say nothing useful: the delta is reported as unknown and the
//! next send compares every data chunk with the archive by hash, so nothing is missed
//! and nothing unchanged is stored again.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::fiemap::{self, extents, mark_changes, reflink_copy};
use super::snapshot::{Delta, Snap, SnapshotLayer};
use crate::config::Config;
use crate::delta_map::DeltaMap;
use crate::durable;
use crate::error::{Error, IoAt, Result};

/// Hidden folder for snapshots inside `voldir`.
pub const SNAP_DIR: &str = ".sparsebak";

pub struct Reflink {
    voldir: PathBuf,
}

fn fiemap_err(e: fiemap::FiemapError) -> Error {
    Error::Msg(e.to_string())
}

impl Reflink {
    pub fn new(config: &Config) -> Result<Reflink> {
        let voldir = config
            .voldir
            .clone()
            .ok_or_else(|| Error::Msg("source = reflink needs voldir".into()))?;
        Ok(Reflink { voldir })
    }

    fn image(&self, vol: &str) -> PathBuf {
        self.voldir.join(vol)
    }

    fn snap_dir(&self) -> PathBuf {
        self.voldir.join(SNAP_DIR)
    }

    fn snap(&self, vol: &str, snap: Snap) -> PathBuf {
        let s = match snap {
            Snap::Tick => "tick",
            Snap::Tock => "tock",
        };
        self.snap_dir().join(format!("{vol}.{s}"))
    }

    fn origin(&self, vol: &str, snap: Snap) -> PathBuf {
        let mut p = self.snap(vol, snap).into_os_string();
        p.push(".origin");
        PathBuf::from(p)
    }

    fn identity(p: &Path) -> Result<String> {
        let m = std::fs::metadata(p).at(p)?;
        Ok(format!("{} {}", m.dev(), m.ino()))
    }
}

impl SnapshotLayer for Reflink {
    fn rename_snapshots(&mut self, old: &str, new: &str) -> Result<()> {
        self.remove(old, Snap::Tock)?;
        let pairs = [
            (self.snap(old, Snap::Tick), self.snap(new, Snap::Tick)),
            (self.origin(old, Snap::Tick), self.origin(new, Snap::Tick)),
        ];
        for (from, to) in &pairs {
            if from.exists() && to.exists() {
                return Err(Error::Msg(format!(
                    "both {} and {} exist; remove the one that is not wanted",
                    from.display(),
                    to.display()
                )));
            }
        }
        // The sidecar first: a tick without its origin file is taken as lost (the next
        // send compares by hash), never as another image's tick.
        for (from, to) in pairs.iter().rev() {
            if from.exists() {
                std::fs::rename(from, to).at(from)?;
            }
        }
        if self.snap_dir().is_dir() {
            durable::sync_dir(&self.snap_dir()).at(self.snap_dir())?;
        }
        Ok(())
    }

    fn check_volume(&mut self, vol: &str) -> Result<()> {
        let p = self.image(vol);
        let m = std::fs::metadata(&p).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => super::renamed_hint(vol),
                _ => String::new(),
            };
            Error::Msg(format!("volume {vol}: {}: {e}{hint}", p.display()))
        })?;
        if !m.is_file() {
            return Err(Error::Msg(format!(
                "volume {vol}: {} is not a regular file (source = reflink takes image files)",
                p.display()
            )));
        }
        crate::metadir::create_private_dir(&self.snap_dir())
    }

    fn exists(&mut self, vol: &str, snap: Snap) -> Result<bool> {
        Ok(self.snap(vol, snap).exists())
    }

    fn size(&mut self, vol: &str, snap: Snap) -> Result<u64> {
        let p = self.snap(vol, snap);
        Ok(std::fs::metadata(&p).at(&p)?.len())
    }

    fn take(&mut self, vol: &str, snap: Snap) -> Result<()> {
        let img = self.image(vol);
        let dst = self.snap(vol, snap);
        let tmp = dst.with_extension("partial");
        let src = File::open(&img).at(&img)?;
        let identity = Self::identity(&img)?;
        {
            let out = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .at(&tmp)?;
            if let Err(e) = reflink_copy(&src, &out) {
                drop(out);
                let _ = std::fs::remove_file(&tmp);
                if e.is_no_reflink() {
                    return Err(Error::Msg(format!(
                        "volume {vol}: {} cannot be reflinked ({e}); source = reflink needs Btrfs or XFS with reflink=1, use source = file otherwise",
                        img.display()
                    )));
                }
                return Err(fiemap_err(e));
            }
            out.sync_all().at(&tmp)?;
        }
        let origin = self.origin(vol, snap);
        durable::write_atomic(&origin, identity.as_bytes()).at(&origin)?;
        std::fs::rename(&tmp, &dst).at(&dst)?;
        durable::sync_dir(&self.snap_dir()).at(self.snap_dir())
    }

    fn remove(&mut self, vol: &str, snap: Snap) -> Result<()> {
        for p in [self.snap(vol, snap), self.origin(vol, snap)] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&p),
            }
        }
        Ok(())
    }

    fn rotate(&mut self, vol: &str) -> Result<()> {
        // Each rename replaces atomically; a crash between them leaves tick data with
        // the newer origin, which at worst makes the next delta fall back to hashing.
        let (to, tt) = (self.origin(vol, Snap::Tock), self.origin(vol, Snap::Tick));
        std::fs::rename(&to, &tt).at(&to)?;
        let (a, b) = (self.snap(vol, Snap::Tock), self.snap(vol, Snap::Tick));
        std::fs::rename(&a, &b).at(&a)?;
        durable::sync_dir(&self.snap_dir()).at(self.snap_dir())
    }

    fn delta(&mut self, vol: &str, map: &mut DeltaMap) -> Result<Delta> {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let tick_origin = read(&self.origin(vol, Snap::Tick));
        let tock_origin = read(&self.origin(vol, Snap::Tock));
        if tick_origin.is_empty() || tick_origin != tock_origin {
            tracing::warn!(
                "volume {vol}: the image is not the file the last snapshot was copied from \
                 (replaced?); comparing by hash instead"
            );
            return Ok(Delta::Unknown);
        }
        let (tp, np) = (self.snap(vol, Snap::Tick), self.snap(vol, Snap::Tock));
        let tick = File::open(&tp).at(&tp)?;
        let tock = File::open(&np).at(&np)?;
        let a = extents(&tick).map_err(fiemap_err)?;
        let b = extents(&tock).map_err(fiemap_err)?;
        let has_data = |v: &[fiemap::Extent]| v.iter().any(|e| !e.is_unwritten());
        if has_data(&a) && has_data(&b) && !a.iter().any(|e| e.is_shared()) {
            tracing::warn!(
                "volume {vol}: the tick snapshot shares no data with the image any more; \
                 comparing by hash instead"
            );
            return Ok(Delta::Unknown);
        }
        let sa = tick.metadata().at(&tp)?.len();
        let sb = tock.metadata().at(&np)?.len();
        let summary = mark_changes(&a, sa, &b, sb, map);
        tracing::debug!("volume {vol}: {summary:?}");
        Ok(Delta::Marked)
    }

    fn open(&mut self, vol: &str, snap: Snap) -> Result<File> {
        let p = self.snap(vol, snap);
        File::open(&p).at(&p)
    }

    fn close(&mut self, _vol: &str, _snap: Snap) -> Result<()> {
        Ok(())
    }

    fn open_volume(&mut self, vol: &str) -> Result<(File, u64)> {
        let p = self.image(vol);
        let f = File::open(&p).at(&p)?;
        let size = f.metadata().at(&p)?.len();
        Ok((f, size))
    }

    fn recover(&mut self, vol: &str) -> Result<()> {
        for snap in [Snap::Tick, Snap::Tock] {
            let partial = self.snap(vol, snap).with_extension("partial");
            if partial.exists() {
                std::fs::remove_file(&partial).at(&partial)?;
            }
        }
        if !self.snap(vol, Snap::Tick).exists() && self.snap(vol, Snap::Tock).exists() {
            tracing::warn!("volume {vol}: finishing an interrupted snapshot rotation");
            self.rotate(vol)?;
        }
        Ok(())
    }
}
