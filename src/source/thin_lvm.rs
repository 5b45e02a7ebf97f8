//! The thin-LVM snapshot layer (`source = lvm`): tick/tock thin snapshots of
//! `vgname/<volume>` in `poolname`, compared with `thin_delta` on a reserved metadata
//! snapshot of the pool.
//!
//! The pool's metadata snapshot is a single, pool-wide resource that persists in the
//! pool's metadata (across deactivation and reboot) until released. It is reserved only
//! while `thin_delta` runs, under a lock per pool shared by every configuration
//! (`/run/lock/sparsebak-pool-<dm name>.lock`), so two configurations on one pool take
//! turns instead of refusing each other.
//!
//! Ownership: a reservation is ours only if a marker says so, and a marker is written
//! only once our `reserve_metadata_snap` succeeded. It records the root block the pool
//! then reports as held (`dmsetup status`, seventh field), the boot it was made in and
//! a random token. Two copies: one beside the pool lock in `/run/lock` (seen by every
//! configuration, gone at reboot) and one in `metadir` (persistent). A run holding the
//! pool lock releases a held snapshot only when its root equals the root of the
//! `/run/lock` marker (a run of any configuration was killed since boot) or of its own
//! `metadir` marker made in an earlier boot (killed, then rebooted); a `metadir` marker
//! of the current boot without the `/run/lock` one means another run of ours already
//! released it. Any other held snapshot belongs to someone else and is never touched;
//! markers that no longer match what is held are removed. SIGINT, SIGTERM and SIGHUP
//! are held back while the reservation exists, so an interrupted run still releases it
//! first.
//!
//! An inactive pool takes no messages: it is activated for the reservation and
//! deactivated again afterwards, as the tick is activated only while it is read.

use std::fs::File;
use std::path::{Path, PathBuf};
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
const POOL_LOCK_WAIT: Duration = Duration::from_secs(300);

/// Where the pool locks and the boot-lived markers live.
const RUN_LOCK_DIR: &str = "/run/lock";

/// First line of a marker file (format version 1).
const MARKER_MAGIC: &str = "sparsebak-metasnap 1";

/// What a marker says about a reservation we made.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    root: u64,
    boot: String,
    token: String,
}

impl Marker {
    fn render(&self, pool: &LvRef) -> String {
        format!(
            "{MARKER_MAGIC}\npool {pool}\nroot {}\nboot {}\ntoken {}\n",
            self.root, self.boot, self.token
        )
    }

    fn parse(text: &str) -> Option<Marker> {
        let mut lines = text.lines();
        if lines.next()? != MARKER_MAGIC {
            return None;
        }
        let (mut root, mut boot, mut token) = (None, None, None);
        for line in lines {
            match line.split_once(' ') {
                Some(("root", v)) => root = v.parse::<u64>().ok(),
                Some(("boot", v)) => boot = Some(v.to_string()),
                Some(("token", v)) => token = Some(v.to_string()),
                _ => {}
            }
        }
        Some(Marker {
            root: root?,
            boot: boot?,
            token: token?,
        })
    }
}

/// This boot's id (`unknown` if the kernel does not say: markers of an unknown boot are
/// then never taken for an earlier boot's).
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && !s.contains(char::is_whitespace))
        .unwrap_or_else(|| "unknown".into())
}

/// Whether the held metadata snapshot `root` is one a killed run of ours left: the
/// boot-lived marker (any configuration, this boot) names it, or this configuration's
/// persistent marker names it and was written in an earlier boot. A persistent marker
/// of this boot without a matching boot-lived one was already dealt with by another
/// run of ours (which removed the boot-lived one when it released it).
fn is_ours(root: u64, run: Option<&Marker>, meta: Option<&Marker>, boot: &str) -> bool {
    run.is_some_and(|m| m.root == root)
        || meta.is_some_and(|m| m.root == root && m.boot != boot && m.boot != "unknown")
}

fn new_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos:x}", std::process::id())
}

pub struct ThinLvm {
    lvm: Lvm,
    vg: String,
    pool: LvRef,
    metadir: PathBuf,
    /// The pool was inactive when a snapshot was activated for reading.
    pool_was_inactive: bool,
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
            pool_was_inactive: false,
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

    /// The persistent marker, in this configuration's metadir.
    fn meta_marker(&self) -> PathBuf {
        self.metadir
            .join(format!("{}.metasnap-reserved", self.pool_tag()))
    }

    /// The marker every configuration sees, beside the pool lock (gone at reboot).
    fn run_marker(&self) -> PathBuf {
        Path::new(RUN_LOCK_DIR).join(format!("sparsebak-pool-{}.metasnap", self.pool.dm_name()))
    }

    /// The lock of the pool, shared by every sparsebak configuration on this machine.
    fn lock_pool(&self) -> Result<lock::LockGuard> {
        let dir = Path::new(RUN_LOCK_DIR);
        if !dir.is_dir() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(dir)
                .at(dir)?;
        }
        let path = dir.join(format!("sparsebak-pool-{}.lock", self.pool.dm_name()));
        lock::lock_announced(
            &path,
            Mode::Exclusive,
            POOL_LOCK_WAIT,
            &format!("thin pool {}", self.pool),
            || {
                tracing::warn!(
                    "thin pool {}: another sparsebak run is using its metadata snapshot; \
                     waiting for it (at most {}s)",
                    self.pool,
                    POOL_LOCK_WAIT.as_secs()
                )
            },
        )
    }

    fn read_marker(&self, path: &Path) -> Option<Marker> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("{}: {e}; ignoring it", path.display());
                return None;
            }
        };
        let m = Marker::parse(&text);
        if m.is_none() {
            tracing::warn!(
                "{}: not a marker this version understands; ignoring it",
                path.display()
            );
        }
        m
    }

    fn remove_markers(&self) -> Result<()> {
        for m in [self.meta_marker(), self.run_marker()] {
            match std::fs::remove_file(&m) {
                Ok(()) => durable::sync_parent(&m).at(&m)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&m),
            }
        }
        Ok(())
    }

    fn write_markers(&self, root: u64) -> Result<()> {
        let text = Marker {
            root,
            boot: boot_id(),
            token: new_token(),
        }
        .render(&self.pool);
        // The one every configuration sees first (tmpfs: nothing to wait for), then the
        // one that survives a reboot.
        let run = self.run_marker();
        durable::write_atomic(&run, text.as_bytes()).at(&run)?;
        crate::metadir::create_private_dir(&self.metadir)?;
        let meta = self.meta_marker();
        durable::write_atomic(&meta, text.as_bytes()).at(&meta)
    }

    fn markers_exist(&self) -> bool {
        self.meta_marker().exists() || self.run_marker().exists()
    }

    /// Activate the pool if it is not active (it takes no messages then). Returns
    /// whether it was activated here, so it can be put back as it was.
    fn pool_up(&self) -> Result<bool> {
        if self.lvm.pool_is_active(&self.pool) {
            return Ok(false);
        }
        tracing::info!(
            "thin pool {} is inactive; activating it for its metadata snapshot",
            self.pool
        );
        self.lvm.activate(&self.pool).map_err(|e| {
            Error::Msg(format!(
                "thin pool {} is inactive and could not be activated ({e}); activate it with \
                 `lvchange -ay {}`",
                self.pool, self.pool
            ))
        })?;
        if !self.lvm.pool_is_active(&self.pool) {
            return Err(Error::Msg(format!(
                "thin pool {} is inactive (no device {}); activate it with `lvchange -ay {}`",
                self.pool,
                self.pool.tpool_dm_name(),
                self.pool
            )));
        }
        Ok(true)
    }

    /// Deactivate the pool again if `pool_up` activated it.
    fn pool_down(&self, activated: bool) {
        if activated {
            if let Err(e) = self.lvm.deactivate(&self.pool) {
                tracing::warn!(
                    "thin pool {}: could not deactivate it again: {e}",
                    self.pool
                );
            }
        }
    }

    /// Release a metadata snapshot that a killed run of ours left held, and remove
    /// markers that no longer describe what is held. Needs the pool lock and an active
    /// pool. Returns the root still held afterwards (someone else's), if any.
    fn settle_leftover(&self) -> Result<Option<u64>> {
        let held = self.lvm.metadata_snap_held(&self.pool).map_err(lvm_err)?;
        let run = self.read_marker(&self.run_marker());
        let meta = self.read_marker(&self.meta_marker());
        let ours = held.filter(|&root| is_ours(root, run.as_ref(), meta.as_ref(), &boot_id()));
        let mut still = held;
        if let Some(root) = ours {
            if self
                .lvm
                .release_metadata_snap(&self.pool, root)
                .map_err(lvm_err)?
            {
                tracing::warn!(
                    "released the metadata snapshot of {} (root block {root}) that an \
                     interrupted sparsebak run left reserved",
                    self.pool
                );
            }
            still = self.lvm.metadata_snap_held(&self.pool).map_err(lvm_err)?;
        } else if let (Some(root), true) = (held, run.is_some() || meta.is_some()) {
            tracing::debug!(
                "thin pool {}: held root {root} is not the one our markers name; leaving it",
                self.pool
            );
        }
        // Whatever the markers named is gone now, or was never what is held.
        self.remove_markers()?;
        Ok(still)
    }

    /// Reserve the metadata snapshot, run `thin_delta` on it, release it. Needs the pool
    /// lock and an active pool.
    fn delta_reserved(&self, a: u64, b: u64, map: &mut DeltaMap) -> Result<()> {
        if let Some(root) = self.settle_leftover()? {
            return Err(lvm_err(super::lvm::LvmError::MetadataSnapHeld {
                pool: self.pool.to_string(),
                dm_name: self.pool.tpool_dm_name(),
                root,
            }));
        }
        let guard = MetadataSnapGuard::reserve(&self.lvm, &self.pool).map_err(lvm_err)?;
        let root = guard.root();
        let result = (|| -> Result<()> {
            self.write_markers(root)?;
            crate::failpoint::hit("monitor-metasnap-reserved");
            self.lvm
                .thin_delta_mark(&guard.metadata_device(), a, b, false, map)
                .map_err(lvm_err)?;
            Ok(())
        })();
        let released = guard.release().map_err(lvm_err);
        // Markers go once what they name is no longer held (a release that failed leaves
        // them, so the next run retries it).
        if self.lvm.metadata_snap_held(&self.pool).ok() != Some(Some(root)) {
            self.remove_markers()?;
        }
        result?;
        released
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
            None => Err(Error::Msg(format!(
                "volume {lv} not found{}",
                super::renamed_hint(vol)
            ))),
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
        let _signals = SignalsHeld::new();
        let activated = self.pool_up()?;
        let result = self.delta_reserved(a, b, map);
        self.pool_down(activated);
        result?;
        Ok(Delta::Marked)
    }

    fn open(&mut self, vol: &str, snap: Snap) -> Result<File> {
        let lv = self.lv(vol, Some(snap))?;
        // Activating a snapshot of an inactive pool activates the pool too: put it back
        // as it was when the snapshot is closed.
        self.pool_was_inactive |= !self.lvm.pool_is_active(&self.pool);
        self.lvm.activate(&lv).map_err(lvm_err)?;
        let dev = PathBuf::from("/dev/mapper").join(lv.dm_name());
        File::open(&dev).at(&dev)
    }

    fn close(&mut self, vol: &str, snap: Snap) -> Result<()> {
        let lv = self.lv(vol, Some(snap))?;
        if self.lvm.lv_exists(&lv).map_err(lvm_err)? {
            self.lvm.deactivate(&lv).map_err(lvm_err)?;
        }
        let was_inactive = std::mem::take(&mut self.pool_was_inactive);
        self.pool_down(was_inactive && self.lvm.pool_is_active(&self.pool));
        Ok(())
    }

    fn rename_snapshots(&mut self, old: &str, new: &str) -> Result<()> {
        // The tock only lives during a monitor step: drop it rather than carry it.
        self.remove(old, Snap::Tock)?;
        let from = self.lv(old, Some(Snap::Tick))?;
        let to = self.lv(new, Some(Snap::Tick))?;
        let have_old = self.lvm.lv_exists(&from).map_err(lvm_err)?;
        let have_new = self.lvm.lv_exists(&to).map_err(lvm_err)?;
        match (have_old, have_new) {
            (true, true) => Err(Error::Msg(format!(
                "both {from} and {to} exist; remove the one that is not wanted"
            ))),
            (true, false) => {
                self.lvm.rename(&from, to.lv()).map_err(lvm_err)?;
                Ok(())
            }
            _ => Ok(()),
        }
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
        if self.markers_exist() {
            let _pool_lock = self.lock_pool()?;
            let _signals = SignalsHeld::new();
            let activated = self.pool_up()?;
            let result = self.settle_leftover();
            self.pool_down(activated);
            result?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn m(root: u64, boot: &str) -> Marker {
        Marker {
            root,
            boot: boot.into(),
            token: "1-a".into(),
        }
    }

    #[test]
    fn markers_round_trip() {
        let pool = LvRef::new("qubes_dom0", "vm-pool").unwrap();
        let mk = m(1234, "b1");
        let text = mk.render(&pool);
        assert_eq!(
            text,
            "sparsebak-metasnap 1\npool qubes_dom0/vm-pool\nroot 1234\nboot b1\ntoken 1-a\n"
        );
        assert_eq!(Marker::parse(&text), Some(mk));
        // The old marker (the pool's name alone) and damaged ones are not markers.
        assert_eq!(Marker::parse("qubes_dom0/vm-pool"), None);
        assert_eq!(
            Marker::parse("sparsebak-metasnap 1\nroot x\nboot b\ntoken t\n"),
            None
        );
        assert_eq!(
            Marker::parse("sparsebak-metasnap 1\nboot b\ntoken t\n"),
            None
        );
        assert_eq!(Marker::parse(""), None);
    }

    #[test]
    fn only_our_own_root_is_ours() {
        let now = "b2";
        // Killed this boot, by any configuration: the boot-lived marker names the root.
        assert!(is_ours(7, Some(&m(7, now)), None, now));
        assert!(is_ours(7, Some(&m(7, now)), Some(&m(7, now)), now));
        // Another root is held: someone else's, whatever the markers say.
        assert!(!is_ours(8, Some(&m(7, now)), Some(&m(7, "b1")), now));
        assert!(!is_ours(8, None, None, now));
        // Killed, then rebooted: only this configuration's persistent marker is left.
        assert!(is_ours(7, None, Some(&m(7, "b1")), now));
        // Same boot, boot-lived marker gone: another run of ours released it already;
        // the root held now (even the same block number) is someone else's.
        assert!(!is_ours(7, None, Some(&m(7, now)), now));
        // A boot that could not be told is never taken for an earlier one.
        assert!(!is_ours(7, None, Some(&m(7, "unknown")), "unknown"));
    }
}
