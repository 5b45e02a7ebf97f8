//! Change tracking shared by every source with a snapshot layer (thin LVM, reflink).
//!
//! A volume has a reference snapshot, `tick`, taken when it was last sent or monitored,
//! and a persistent delta map of the chunks that may differ between `tick` and the
//! archive's latest session. `monitor` takes a new snapshot `tock`, asks the layer which
//! chunks differ between tick and tock, ORs them into the map, makes the map durable,
//! and only then replaces tick with tock. `send` does a monitor step and reads the
//! marked chunks from tick. A crash at any point leaves either the old tick (and the
//! changes will be found again: marking is idempotent) or the new tick with the map
//! already holding its changes.
//!
//! The layers implement [`SnapshotLayer`]; [`Tracked`] turns one into a [`Source`].

use std::fs::File;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::view::ViewCursor;
use sparsebak_format::volume::VolumeArchive;

use super::{Changes, MonitorOutcome, SendView, Source, VolumeCtx};
use crate::delta_map::DeltaMap;
use crate::error::{Error, Result};
use crate::pipeline::{self, Mode, Record};
use crate::progress::Progress;
use crate::scan;

/// Which snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Snap {
    Tick,
    Tock,
}

/// What a layer could say about tick → tock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delta {
    /// The changed chunks were marked in the map.
    Marked,
    /// The layer cannot tell (e.g. the image was replaced by a new file): every chunk
    /// must be compared with the archive by hash at the next send.
    Unknown,
}

/// A snapshot layer: the operations the tracking logic needs, per volume name.
pub trait SnapshotLayer {
    /// Check the volume exists and can be snapshotted here.
    fn check_volume(&mut self, vol: &str) -> Result<()>;
    /// Whether the snapshot exists.
    fn exists(&mut self, vol: &str, snap: Snap) -> Result<bool>;
    /// Size in bytes of the snapshot.
    fn size(&mut self, vol: &str, snap: Snap) -> Result<u64>;
    /// Take the snapshot of the volume now (replacing a stale one).
    fn take(&mut self, vol: &str, snap: Snap) -> Result<()>;
    /// Remove the snapshot if it exists.
    fn remove(&mut self, vol: &str, snap: Snap) -> Result<()>;
    /// Remove tick and make tock the new tick.
    fn rotate(&mut self, vol: &str) -> Result<()>;
    /// Mark the chunks that differ between tick and tock.
    fn delta(&mut self, vol: &str, map: &mut DeltaMap) -> Result<Delta>;
    /// Open a snapshot for reading.
    fn open(&mut self, vol: &str, snap: Snap) -> Result<File>;
    /// Done reading a snapshot (e.g. deactivate it again).
    fn close(&mut self, vol: &str, snap: Snap) -> Result<()>;
    /// Undo what a killed run may have left (reservations, a half-made tock).
    fn recover(&mut self, vol: &str) -> Result<()>;
    /// The live volume, for reading (`diff`).
    fn open_volume(&mut self, vol: &str) -> Result<(File, u64)>;
    /// Move the snapshots of volume `old` to the name `new` (`rename`); done steps are
    /// skipped, so an interrupted rename can be run again.
    fn rename_snapshots(&mut self, old: &str, new: &str) -> Result<()>;
    /// Whether a tick lost after sends is an error (the user runs `resync`) rather
    /// than a fallback to hashing at the next send.
    fn lost_tick_is_error(&self) -> bool {
        false
    }
}

/// A snapshot layer with its delta map: a [`Source`].
pub struct Tracked<L> {
    pub layer: L,
}

fn map_path(vol: &VolumeCtx) -> std::path::PathBuf {
    vol.dest_map.clone()
}

fn open_map(vol: &VolumeCtx) -> Result<DeltaMap> {
    let p = map_path(vol);
    if !p.exists() {
        return Err(Error::Msg(format!(
            "volume {}: no delta map ({}); run `sparsebak resync {}`",
            vol.name,
            p.display(),
            vol.name
        )));
    }
    Ok(DeltaMap::open_for(&p, vol.config.chunksize)?)
}

/// Mark what a size change makes dirty: everything from the chunk holding the smaller
/// end up to the new end.
fn mark_resize(map: &mut DeltaMap, old: u64, new: u64) -> Result<()> {
    let cs = map.chunksize();
    let n = new.div_ceil(cs);
    map.resize(n)?;
    if old != new {
        map.mark_chunks(old.min(new) / cs, n);
    }
    Ok(())
}

impl<L: SnapshotLayer> Tracked<L> {
    /// The monitor step: tock, delta, OR it into every delta map of the volume (the
    /// archive's and each stream chain's), rotate. Returns the map of the destination
    /// `vol` names. Needs the volume lock.
    fn step(&mut self, vol: &VolumeCtx) -> Result<DeltaMap> {
        let name = vol.name;
        self.layer.check_volume(name)?;
        self.layer.recover(name)?;
        let have_tick = self.layer.exists(name, Snap::Tick)?;
        let cs = vol.config.chunksize;
        let tracked_before =
            crate::metadir::any_copies_in(&vol.meta_dir) || !vol.all_maps().is_empty();
        if !have_tick && tracked_before && self.layer.lost_tick_is_error() {
            return Err(Error::Msg(format!(
                "volume {name}: its tick snapshot is missing, so what changed since the last \
                 send is unknown; run `sparsebak resync {name}` (compares the volume with the \
                 archive and takes a new tick)"
            )));
        }
        if !have_tick {
            // The reference snapshot was lost (deleted by hand, a restored system):
            // start again from a fresh tick and let the next sends compare every chunk
            // by hash. Nothing is missed, and only what really changed is stored.
            if tracked_before {
                tracing::warn!(
                    "volume {name}: the tick snapshot is missing; the next send compares every chunk by hash"
                );
            }
            self.layer.remove(name, Snap::Tock)?;
            self.layer.take(name, Snap::Tick)?;
            let size = self.layer.size(name, Snap::Tick)?;
            let mut paths = vol.all_maps();
            if !paths.contains(&map_path(vol)) {
                paths.push(map_path(vol));
            }
            for p in &paths {
                if let Some(d) = p.parent() {
                    crate::metadir::create_private_dir(d)?;
                }
                let mut m = if p.exists() {
                    DeltaMap::open_for(p, cs)?
                } else {
                    DeltaMap::create(p, cs, size.div_ceil(cs))?
                };
                mark_resize(&mut m, size, size)?;
                // Without the old tick, no map can say what changed.
                m.set_needs_scan(true);
                m.flush()?;
            }
            return open_map(vol);
        }
        self.layer.take(name, Snap::Tock)?;
        let result = (|| -> Result<()> {
            let old = self.layer.size(name, Snap::Tick)?;
            let new = self.layer.size(name, Snap::Tock)?;
            let mut scratch = DeltaMap::scratch(cs, new.div_ceil(cs))?;
            let unknown = self.layer.delta(name, &mut scratch)? == Delta::Unknown;
            if unknown {
                tracing::warn!(
                    "volume {name}: the snapshot layer cannot tell what changed; \
                     the next send compares every chunk by hash"
                );
            }
            for p in vol.all_maps() {
                let mut m = DeltaMap::open_for(&p, cs)?;
                mark_resize(&mut m, old, new)?;
                m.or_from(&scratch);
                if unknown {
                    m.set_needs_scan(true);
                }
                m.flush()?;
            }
            drop(scratch);
            crate::failpoint::hit("monitor-before-rotate");
            self.layer.rotate(name)
        })();
        if result.is_err() {
            let _ = self.layer.remove(name, Snap::Tock);
        }
        result?;
        if !map_path(vol).exists() {
            // This destination has no map yet (lost, or a new stream chain): its next
            // send compares every chunk by hash.
            if let Some(d) = map_path(vol).parent() {
                crate::metadir::create_private_dir(d)?;
            }
            let size = self.layer.size(name, Snap::Tick)?;
            let mut m = DeltaMap::create(&map_path(vol), cs, size.div_ceil(cs))?;
            m.set_needs_scan(true);
            m.flush()?;
        }
        open_map(vol)
    }
}

impl<L: SnapshotLayer> Source for Tracked<L> {
    fn snapshots(&mut self, vol: &VolumeCtx) -> Result<Option<crate::status::Snapshots>> {
        Ok(Some(crate::status::Snapshots {
            tick: self.layer.exists(vol.name, Snap::Tick)?,
            tock: self.layer.exists(vol.name, Snap::Tock)?,
        }))
    }

    fn monitor(&mut self, vol: &VolumeCtx) -> Result<MonitorOutcome> {
        let sent = crate::metadir::any_copies_in(&vol.meta_dir);
        if !sent && !map_path(vol).exists() && !self.layer.exists(vol.name, Snap::Tick)? {
            return Ok(MonitorOutcome {
                marked: 0,
                note: "not sent yet; nothing to monitor".into(),
            });
        }
        // A volume not sent to this destination (only to others, or to stream chains)
        // has no map here: monitor for theirs (the step marks every map anyway).
        let others = vol.all_maps();
        let stream_only = VolumeCtx {
            config: vol.config,
            name: vol.name,
            meta_dir: vol.meta_dir.clone(),
            dest_map: others
                .first()
                .cloned()
                .unwrap_or_else(|| vol.dest_map.clone()),
        };
        let vol = if vol.dest_map.exists() {
            vol
        } else {
            &stream_only
        };
        let map = self.step(vol)?;
        Ok(MonitorOutcome {
            marked: map.count(),
            note: String::new(),
        })
    }

    fn begin_send(&mut self, vol: &VolumeCtx, base: Option<&SessionInfo>) -> Result<SendView> {
        let name = vol.name;
        let Some(base) = base else {
            // First send to this destination: read the tick in full; its map starts
            // empty. If other destinations track the volume, a monitor step first
            // moves the tick forward with their maps updated.
            self.layer.check_volume(name)?;
            self.layer.recover(name)?;
            if self.layer.exists(name, Snap::Tick)? && !vol.all_maps().is_empty() {
                self.step(vol)?;
            } else {
                self.layer.remove(name, Snap::Tock)?;
                self.layer.take(name, Snap::Tick)?;
            }
            let size = self.layer.size(name, Snap::Tick)?;
            crate::metadir::create_private_dir(&vol.meta_dir)?;
            if let Some(d) = map_path(vol).parent() {
                crate::metadir::create_private_dir(d)?;
            }
            let map = DeltaMap::create(
                &map_path(vol),
                vol.config.chunksize,
                size.div_ceil(vol.config.chunksize),
            )?;
            let file = self.layer.open(name, Snap::Tick)?;
            return Ok(SendView {
                file,
                size,
                changes: Changes::Map(map),
                label: format!("{name} (tick snapshot)"),
            });
        };
        let mut map = self.step(vol)?;
        let mb = map.base_session();
        if !map.needs_scan() && mb != base.session && Some(&mb) != base.previous.as_ref() {
            return Err(Error::Msg(format!(
                "volume {name}: the delta map is relative to session {:?} but the archive's latest is {}; \
                 run `sparsebak resync {name}`",
                mb, base.session
            )));
        }
        let size = self.layer.size(name, Snap::Tick)?;
        if size != base.volsize {
            let cs = map.chunksize();
            mark_resize(&mut map, base.volsize, size)?;
            map.mark_chunks(base.volsize.min(size) / cs, size.div_ceil(cs));
        }
        let file = self.layer.open(name, Snap::Tick)?;
        let changes = if map.needs_scan() {
            Changes::MapScan(map)
        } else {
            Changes::Map(map)
        };
        Ok(SendView {
            file,
            size,
            changes,
            label: format!("{name} (tick snapshot)"),
        })
    }

    fn end_send(&mut self, vol: &VolumeCtx, view: SendView, id: &str) -> Result<()> {
        drop(view.file);
        self.layer.close(vol.name, Snap::Tick)?;
        match view.changes {
            Changes::Map(mut map) | Changes::MapScan(mut map) => {
                map.clear();
                map.set_base_session(id);
                map.flush()?;
                Ok(())
            }
            Changes::Scan => Ok(()),
        }
    }

    fn open_live(&mut self, vol: &VolumeCtx) -> Result<(File, u64)> {
        self.layer.check_volume(vol.name)?;
        self.layer.open_volume(vol.name)
    }

    fn open_reference(&mut self, vol: &VolumeCtx) -> Result<Option<(File, u64)>> {
        let name = vol.name;
        if !self.layer.exists(name, Snap::Tick)? {
            return Ok(None);
        }
        let size = self.layer.size(name, Snap::Tick)?;
        Ok(Some((self.layer.open(name, Snap::Tick)?, size)))
    }

    fn close_reference(&mut self, vol: &VolumeCtx) -> Result<()> {
        self.layer.close(vol.name, Snap::Tick)
    }

    fn forget(&mut self, vol: &VolumeCtx) -> Result<()> {
        self.layer.recover(vol.name)?;
        self.layer.remove(vol.name, Snap::Tock)?;
        self.layer.remove(vol.name, Snap::Tick)
    }

    fn rename(&mut self, old: &str, new: &str) -> Result<()> {
        self.layer.rename_snapshots(old, new)
    }

    fn abort_send(&mut self, vol: &VolumeCtx, view: SendView) -> Result<()> {
        drop(view);
        self.layer.close(vol.name, Snap::Tick)
    }

    fn resync(&mut self, vol: &VolumeCtx, archive: &VolumeArchive) -> Result<u64> {
        let name = vol.name;
        self.layer.check_volume(name)?;
        self.layer.recover(name)?;
        self.layer.remove(name, Snap::Tock)?;
        let sessions = archive.sessions()?;
        let Some(latest) = sessions.last() else {
            return Err(Error::Msg(format!(
                "volume {name} has no sessions in the archive; `sparsebak send {name}` makes the first"
            )));
        };
        let chain = archive.chain(latest)?;
        // Compare the volume as it is now (a fresh tick) with the archive's latest view.
        // Other destinations and stream chains keep what changed for them: with a tick,
        // a monitor step carries the changes up to now into their maps and moves the
        // tick (this destination's map, rebuilt here, is left out of it: it may be the
        // damaged one); without one, they compare every chunk at their next send.
        let mine = map_path(vol);
        let others: Vec<_> = vol.all_maps().into_iter().filter(|p| *p != mine).collect();
        let stepped = match others.first() {
            Some(first) if self.layer.exists(name, Snap::Tick)? => {
                if mine.exists() {
                    std::fs::remove_file(&mine).map_err(|e| Error::Io {
                        path: mine.clone(),
                        source: e,
                    })?;
                }
                let theirs = VolumeCtx {
                    config: vol.config,
                    name,
                    meta_dir: vol.meta_dir.clone(),
                    dest_map: first.clone(),
                };
                self.step(&theirs)?;
                true
            }
            _ => {
                for p in &others {
                    let mut m = DeltaMap::open_for(p, vol.config.chunksize)?;
                    m.set_needs_scan(true);
                    m.flush()?;
                }
                false
            }
        };
        if !stepped {
            self.layer.remove(name, Snap::Tick)?;
            self.layer.take(name, Snap::Tick)?;
        }
        let size = self.layer.size(name, Snap::Tick)?;
        let cs = vol.config.chunksize;
        let map_dir = mine
            .parent()
            .map(|d| d.to_path_buf())
            .unwrap_or_else(|| vol.meta_dir.clone());
        crate::metadir::create_private_dir(&map_dir)?;
        let tmp = crate::metadir::delta_map_resync(&mine);
        let mut map = DeltaMap::create(&tmp, cs, size.div_ceil(cs))?;
        let file = self.layer.open(name, Snap::Tick)?;
        let base_size = chain.last().map(|i| i.volsize).unwrap_or(0);
        let result = (|| -> Result<()> {
            let runs = scan::chunk_runs(&file, size, cs)
                .map_err(|e| Error::Msg(format!("volume {name}: scanning the snapshot: {e}")))?;
            let base = ViewCursor::open(archive, &chain)?;
            let progress = Progress::new(size, &format!("resync {name}"));
            pipeline::run(
                pipeline::Input {
                    file: &file,
                    size,
                    chunksize: cs,
                },
                runs.into_iter(),
                base,
                Mode::compare(archive, chain.last()),
                |p| progress.set(p),
                |rec| {
                    let addr = match rec {
                        Record::Data { addr, .. } | Record::Zero { addr } => addr,
                    };
                    map.mark(addr / cs);
                    Ok(())
                },
            )?;
            if size != base_size {
                map.mark_chunks(size.min(base_size) / cs, size.div_ceil(cs));
            }
            map.set_base_session(latest);
            map.flush()?;
            Ok(())
        })();
        drop(file);
        self.layer.close(name, Snap::Tick)?;
        result?;
        let marked = map.count();
        drop(map);
        std::fs::rename(&tmp, map_path(vol)).map_err(|e| Error::Io {
            path: map_path(vol),
            source: e,
        })?;
        crate::durable::sync_dir(&map_dir).map_err(|e| Error::Io {
            path: map_dir.clone(),
            source: e,
        })?;
        Ok(marked)
    }
}
