//! The thin-LVM snapshot layer (`source = lvm`): tick/tock thin snapshots of
//! `vgname/<volume>` in `poolname`, compared with `thin_delta` on a reserved metadata
//! snapshot of the pool.
//!
//! The pool's metadata snapshot is a single, pool-wide resource. It is reserved only
//! while `thin_delta` runs, under a pool lock in `metadir`, and a marker file written
//! *before* the reservation says it is ours: a run killed with SIGKILL leaves the
//! marker, and the next run (holding the pool lock, so no other sparsebak run can be
//! using it) releases the reservation. A reservation without our marker belongs to
//! someone else and is never touched. SIGINT, SIGTERM and SIGHUP are held back while
//! the reservation exists, so an interrupted run still releases it first.

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow, Signal};

use super::lvm::{LvRef, Lvm, MetadataSnapGuard};
use super::snapshot::{Delta, Snap, SnapshotLayer};
use crate::config::Config;
use crate::delta_map::DeltaMap;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, Mode};

/// How long to wait for another run's use of the pool's metadata snapshot.
const POOL_LOCK_WAIT: Duration = Duration::from_secs(60);

pub struct ThinLvm {
    lvm: Lvm,
    vg: String,
    pool: LvRef,
    metadir: PathBuf,
}

fn lvm_err(e: super::lvm::LvmError) -> Error {
    Error::Msg(e.to_string())
}

/// Holds SIGINT/SIGTERM/SIGHUP back until dropped; they are delivered then.
struct SignalsHeld {
    old: SigSet,
}

impl SignalsHeld {
    fn new() -> SignalsHeld {
        let mut set = SigSet::empty();
        set.add(Signal::SIGINT);
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGHUP);
        let mut old = SigSet::empty();
        if let Err(e) = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old)) {
            tracing::warn!("cannot hold signals back: {e}");
        }
        SignalsHeld { old }
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.old), None);
    }
}

impl ThinLvm {
    pub fn new(config: &Config) -> Result<ThinLvm> {
        let pool = LvRef::new(&config.vgname, &config.poolname).map_err(lvm_err)?;
        Ok(ThinLvm {
            lvm: Lvm::new(),
            vg: config.vgname.clone(),
            pool,
            metadir: config.metadir.clone(),
        })
    }

    fn lv(&self, vol: &str, snap: Option<Snap>) -> Result<LvRef> {
        let name = match snap {
            None => vol.to_string(),
            Some(Snap::Tick) => format!("{vol}.tick"),
            Some(Snap::Tock) => format!("{vol}.tock"),
        };
        LvRef::new(&self.vg, &name).map_err(lvm_err)
    }

    fn pool_tag(&self) -> String {
        format!(".pool-{}", self.pool.dm_name())
    }

    fn marker(&self) -> PathBuf {
        self.metadir
            .join(format!("{}.metasnap-reserved", self.pool_tag()))
    }

    fn lock_pool(&self) -> Result<lock::LockGuard> {
        crate::archive::create_private_dir(&self.metadir)?;
        lock::lock(
            &self.metadir.join(format!("{}.lock", self.pool_tag())),
            Mode::Exclusive,
            POOL_LOCK_WAIT,
            &format!("thin pool {}", self.pool),
        )
    }

    /// Release a metadata snapshot a killed run of ours left reserved. Needs the pool
    /// lock.
    fn release_leftover(&self) -> Result<()> {
        let m = self.marker();
        if m.exists() {
            if self
                .lvm
                .release_metadata_snap(&self.pool)
                .map_err(lvm_err)?
            {
                tracing::warn!(
                    "released the metadata snapshot of {} that an interrupted run left reserved",
                    self.pool
                );
            }
            std::fs::remove_file(&m).at(&m)?;
            durable::sync_parent(&m).at(&m)?;
        }
        Ok(())
    }
}

impl SnapshotLayer for ThinLvm {
    fn check_volume(&mut self, vol: &str) -> Result<()> {
        let lv = self.lv(vol, None)?;
        match self.lvm.lv_info(&self.pool).map_err(lvm_err)? {
            Some(p) if p.is_thin_pool() => {}
            Some(_) => return Err(Error::Msg(format!("{} is not a thin pool", self.pool))),
            None => return Err(Error::Msg(format!("thin pool {} not found", self.pool))),
        }
        match self.lvm.lv_info(&lv).map_err(lvm_err)? {
            None => Err(Error::Msg(format!("volume {lv} not found"))),
            Some(i) if !i.is_thin() => Err(Error::Msg(format!(
                "volume {lv} is not a thin volume (segment type {})",
                i.segtype
            ))),
            Some(i) if i.pool_lv.as_deref() != Some(self.pool.lv()) => Err(Error::Msg(format!(
                "volume {lv} is in pool {:?}, not {}",
                i.pool_lv.unwrap_or_default(),
                self.pool
            ))),
            Some(_) => Ok(()),
        }
    }

    fn exists(&mut self, vol: &str, snap: Snap) -> Result<bool> {
        self.lvm
            .lv_exists(&self.lv(vol, Some(snap))?)
            .map_err(lvm_err)
    }

    fn size(&mut self, vol: &str, snap: Snap) -> Result<u64> {
        self.lvm
            .lv_size(&self.lv(vol, Some(snap))?)
            .map_err(lvm_err)
    }

    fn take(&mut self, vol: &str, snap: Snap) -> Result<()> {
        self.remove(vol, snap)?;
        let origin = self.lv(vol, None)?;
        let name = self.lv(vol, Some(snap))?;
        self.lvm
            .create_thin_snapshot(&origin, name.lv(), true)
            .map_err(lvm_err)?;
        Ok(())
    }

    fn remove(&mut self, vol: &str, snap: Snap) -> Result<()> {
        let lv = self.lv(vol, Some(snap))?;
        if self.lvm.lv_exists(&lv).map_err(lvm_err)? {
            self.lvm.remove(&lv).map_err(lvm_err)?;
        }
        Ok(())
    }

    fn rotate(&mut self, vol: &str) -> Result<()> {
        self.remove(vol, Snap::Tick)?;
        crate::failpoint::hit("monitor-mid-rotate");
        let tock = self.lv(vol, Some(Snap::Tock))?;
        let tick = self.lv(vol, Some(Snap::Tick))?;
        self.lvm.rename(&tock, tick.lv()).map_err(lvm_err)?;
        Ok(())
    }

    fn delta(&mut self, vol: &str, map: &mut DeltaMap) -> Result<Delta> {
        let tick = self.lv(vol, Some(Snap::Tick))?;
        let tock = self.lv(vol, Some(Snap::Tock))?;
        let a = self.lvm.thin_id(&tick).map_err(lvm_err)?;
        let b = self.lvm.thin_id(&tock).map_err(lvm_err)?;
        let _pool_lock = self.lock_pool()?;
        self.release_leftover()?;
        let _signals = SignalsHeld::new();
        let m = self.marker();
        durable::write_atomic(&m, self.pool.to_string().as_bytes()).at(&m)?;
        let result = (|| -> Result<()> {
            let guard =
                MetadataSnapGuard::reserve(&self.lvm, &self.pool, false).map_err(lvm_err)?;
            crate::failpoint::hit("monitor-metasnap-reserved");
            let marked = self
                .lvm
                .thin_delta_mark(&guard.metadata_device(), a, b, false, map)
                .map_err(lvm_err);
            let released = guard.release().map_err(lvm_err);
            marked?;
            released
        })();
        if result.is_ok()
            || !self
                .lvm
                .metadata_snap_held(&self.pool)
                .map(|h| h.is_some())
                .unwrap_or(true)
        {
            std::fs::remove_file(&m).at(&m)?;
        }
        result?;
        Ok(Delta::Marked)
    }

    fn open(&mut self, vol: &str, snap: Snap) -> Result<File> {
        let lv = self.lv(vol, Some(snap))?;
        self.lvm.activate(&lv).map_err(lvm_err)?;
        let dev = PathBuf::from("/dev/mapper").join(lv.dm_name());
        File::open(&dev).at(&dev)
    }

    fn close(&mut self, vol: &str, snap: Snap) -> Result<()> {
        let lv = self.lv(vol, Some(snap))?;
        if self.lvm.lv_exists(&lv).map_err(lvm_err)? {
            self.lvm.deactivate(&lv).map_err(lvm_err)?;
        }
        Ok(())
    }

    /// On thin LVM a lost tick is reported (the snapshot layer is the user's to
    /// inspect: a removed LV may mean a restore or a mistake); `resync` starts over.
    fn lost_tick_is_error(&self) -> bool {
        true
    }

    fn open_volume(&mut self, vol: &str) -> Result<(File, u64)> {
        let lv = self.lv(vol, None)?;
        let dev = PathBuf::from("/dev/mapper").join(lv.dm_name());
        let f = File::open(&dev).at(&dev)?;
        let size = crate::blockdev::size_of(&f).at(&dev)?;
        Ok((f, size))
    }

    fn recover(&mut self, vol: &str) -> Result<()> {
        {
            let _pool_lock = self.lock_pool()?;
            self.release_leftover()?;
        }
        // Killed between removing tick and renaming tock: the map already holds tock's
        // changes (it is flushed before the rotation), so tock is the new tick.
        if !self.exists(vol, Snap::Tick)? && self.exists(vol, Snap::Tock)? {
            tracing::warn!("volume {vol}: finishing an interrupted snapshot rotation");
            let tock = self.lv(vol, Some(Snap::Tock))?;
            self.lvm
                .rename(&tock, &format!("{vol}.tick"))
                .map_err(lvm_err)?;
        }
        Ok(())
    }
}
