//! Volume sources: where a volume's bytes come from and how its changes are found.
//!
//! Every source gives `send` a read-only, consistent view of the volume (a snapshot
//! where the source has one) and says which chunks may have changed since the archive's
//! latest session: all of them (compare by hashing) or the ones marked in the delta map.

pub mod fiemap;
pub mod file;
pub mod lvm;
pub mod reflink;
pub mod snapshot;
pub mod thin_delta;
pub mod thin_lvm;

use std::fs::File;
use std::path::PathBuf;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::volume::VolumeArchive;

use crate::config::{Config, SourceKind};
use crate::delta_map::DeltaMap;
use crate::error::{Error, Result};

/// One volume as a source sees it.
pub struct VolumeCtx<'a> {
    pub config: &'a Config,
    pub name: &'a str,
    /// `<metadir>/<volume>`: the source side's state for this volume.
    pub meta_dir: PathBuf,
    /// The delta map of the destination this operation serves: `meta_dir/deltamap`
    /// for the archive destination `default`, `meta_dir/dest/<NAME>/deltamap` for
    /// another, `meta_dir/streams/<chain>/deltamap` for a stream chain.
    pub dest_map: PathBuf,
}

impl<'a> VolumeCtx<'a> {
    /// The volume, for the archive destination `config` was chosen for.
    pub fn new(config: &'a Config, name: &'a str) -> VolumeCtx<'a> {
        let meta_dir = crate::metadir::volume_dir(config, name);
        let dest_map = crate::metadir::delta_map(config, name);
        VolumeCtx {
            config,
            name,
            meta_dir,
            dest_map,
        }
    }

    /// The volume, for stream chain `chain`.
    pub fn for_stream(config: &'a Config, name: &'a str, chain: &str) -> VolumeCtx<'a> {
        let mut v = Self::new(config, name);
        v.dest_map = crate::metadir::delta_map_in(&stream_dir(&v.meta_dir, chain));
        v
    }

    /// Every delta map this volume has: each destination's and each stream chain's.
    pub fn all_maps(&self) -> Vec<PathBuf> {
        let mut v = crate::metadir::all_maps_in(&self.meta_dir);
        if !v.contains(&self.dest_map) && self.dest_map.exists() {
            v.push(self.dest_map.clone());
        }
        v
    }
}

/// `<metadir>/<volume>/streams/<chain>`: a stream chain's state.
pub fn stream_dir(meta_dir: &std::path::Path, chain: &str) -> PathBuf {
    crate::metadir::stream_dir_in(meta_dir, chain)
}

/// Appended to a "volume not found" error: a renamed volume keeps its history only
/// through `rename`.
pub fn renamed_hint(vol: &str) -> String {
    format!(
        "; if it was renamed, `sparsebak rename {vol} NEW-NAME` carries its history over \
         to the new name"
    )
}

/// Which chunks a send must look at.
pub enum Changes {
    /// Any chunk may have changed: read every data chunk (holes skipped) and compare its
    /// hash with the archive.
    Scan,
    /// Only chunks marked in the map may have changed.
    Map(DeltaMap),
    /// The map lost track (its rescan flag is set): compare every chunk like `Scan`,
    /// and clear the map after the session is committed.
    MapScan(DeltaMap),
}

/// What a send reads from.
pub struct SendView {
    pub file: File,
    pub size: u64,
    pub changes: Changes,
    /// What is read, for messages.
    pub label: String,
}

/// What `monitor` did for a volume.
#[derive(Debug, Default)]
pub struct MonitorOutcome {
    /// Chunks marked in the delta map after this monitor.
    pub marked: u64,
    /// A human note (e.g. "no snapshot layer: nothing to do").
    pub note: String,
}

/// A kind of volume source.
pub trait Source {
    /// Record changes since the last monitor into the delta map.
    fn monitor(&mut self, vol: &VolumeCtx) -> Result<MonitorOutcome>;
    /// Give a consistent view to read, and the chunks that may differ from `base` (the
    /// archive's latest session; `None` for a first, full send).
    fn begin_send(&mut self, vol: &VolumeCtx, base: Option<&SessionInfo>) -> Result<SendView>;
    /// The session `id` holding this view's changes is committed: forget them.
    fn end_send(&mut self, vol: &VolumeCtx, view: SendView, id: &str) -> Result<()>;
    /// The send failed: release the view, keep the changes.
    fn abort_send(&mut self, _vol: &VolumeCtx, view: SendView) -> Result<()> {
        drop(view);
        Ok(())
    }
    /// The volume as it is now, for `diff` against a session: the file and its size.
    fn open_live(&mut self, vol: &VolumeCtx) -> Result<(File, u64)>;
    /// The reference snapshot (tick) opened for reading, where the source keeps one:
    /// the volume as it was at the last send or monitor (`repair` reads chunks back
    /// from it). Nothing is taken or rotated; [`Source::close_reference`] releases it.
    fn open_reference(&mut self, _vol: &VolumeCtx) -> Result<Option<(File, u64)>> {
        Ok(None)
    }
    /// Done reading what [`Source::open_reference`] gave.
    fn close_reference(&mut self, _vol: &VolumeCtx) -> Result<()> {
        Ok(())
    }
    /// Whether the reference (tick) and working (tock) snapshots of the volume exist
    /// now; `None` for a source that keeps no snapshots (`status`).
    fn snapshots(&mut self, _vol: &VolumeCtx) -> Result<Option<crate::status::Snapshots>> {
        Ok(None)
    }
    /// Remove everything this source keeps for the volume (snapshots); `delete`.
    fn forget(&mut self, _vol: &VolumeCtx) -> Result<()> {
        Ok(())
    }
    /// Move what this source keeps for volume `old` (snapshots) to the name `new`;
    /// `rename`. Steps already done are skipped.
    fn rename(&mut self, _old: &str, _new: &str) -> Result<()> {
        Ok(())
    }
    /// Rebuild change tracking by comparing the volume with `archive`'s latest session.
    /// Returns the number of chunks marked for the next send.
    fn resync(&mut self, vol: &VolumeCtx, _archive: &VolumeArchive) -> Result<u64> {
        Err(Error::Msg(format!(
            "volume {}: this source compares every chunk at send; nothing to resync",
            vol.name
        )))
    }
}

/// The source the config names.
pub fn for_config(config: &Config) -> Result<Box<dyn Source>> {
    match config.source {
        SourceKind::File => Ok(Box::new(file::FileSource)),
        SourceKind::Lvm => Ok(Box::new(snapshot::Tracked {
            layer: thin_lvm::ThinLvm::new(config)?,
        })),
        SourceKind::Reflink => Ok(Box::new(snapshot::Tracked {
            layer: reflink::Reflink::new(config)?,
        })),
    }
}
