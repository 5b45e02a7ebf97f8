//! Taking a session of one volume: the work behind `sparsebak send`.
//!
//! Order of events, each step durable before the next:
//! 1. lock the volume (source side and archive), clear leftovers of interrupted runs;
//! 2. the source gives a consistent view (snapshot) and the candidate chunks;
//! 3. the pipeline compares candidates with the archive's latest view and writes the
//!    differing chunks and the manifest into a staging folder;
//! 4. the session is committed (syncfs, rename): from here it exists;
//! 5. its info and manifest are copied to the source side;
//! 6. the source forgets the changes it stored (delta map cleared).
//!
//! A crash before 4 leaves only a staging folder, removed by the next run. A crash
//! between 4 and 6 is caught up by the next run (the copies are taken then; the map
//! still marks chunks that are now identical to the archive, which costs a re-read
//! but stores nothing).

use std::time::{Duration, Instant};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::view::{ViewCursor, ViewReader};
use sparsebak_format::volume::VolumeArchive;

use crate::archive::local::LocalCopies;
use crate::archive::writer::SessionWriter;
use crate::archive::{create_private_dir, meta_dir, remove_staging, Archive};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::lock::{self, Mode};
use crate::pipeline::{self, Mode as PipeMode, Record};
use crate::progress::Progress;
use crate::scan::{self, ChunkRun};
use crate::session_id;
use crate::source::{Changes, SendView, Source, VolumeCtx};
use crate::space;

/// How long `send` and `monitor` wait for each other on one volume.
pub const META_LOCK_WAIT: Duration = Duration::from_secs(120);

/// What a send of one volume did.
#[derive(Debug)]
pub struct SendOutcome {
    pub volume: String,
    /// The new session, or `None` when nothing had changed.
    pub session: Option<SessionInfo>,
    pub bytes_read: u64,
    pub elapsed: Duration,
}

/// Lock a volume's source-side state (`<metadir>/<volume>/lock`).
pub fn lock_meta(config: &Config, name: &str) -> Result<lock::LockGuard> {
    let dir = meta_dir(config, name);
    create_private_dir(&dir)?;
    lock::lock(
        &dir.join("lock"),
        Mode::Exclusive,
        META_LOCK_WAIT,
        &format!("volume {name} on this machine"),
    )
}

fn lost_session(name: &str, mine: &str, archive: &Archive) -> Error {
    Error::Msg(format!(
        "volume {name}: this machine sent session {mine}, which the archive at {} no longer has; \
         refusing to build on it (restore the archive, or `sparsebak delete {name}` to start over)",
        archive.root.display()
    ))
}

/// Send volume `name` into `archive`.
pub fn send_volume(
    config: &Config,
    archive: &Archive,
    name: &str,
    source: &mut dyn Source,
    as_tar: bool,
) -> Result<SendOutcome> {
    let started = Instant::now();
    let _meta_lock = lock_meta(config, name)?;
    let vol = archive.volume(name);
    let mdir = meta_dir(config, name);
    let local = LocalCopies::new(&mdir);
    if !vol.exists() {
        // Refused below too, but before the volume's folder is made: a refused send
        // leaves nothing behind.
        if let Some(mine) = local.ids()?.last() {
            return Err(lost_session(name, mine, archive));
        }
    }
    let _lock = archive.lock_volume(name, Mode::Exclusive)?;
    remove_staging(&vol)?;
    crate::archive::prune::recover(&vol, Some(&local))?;
    local.catch_up(&vol)?;
    let sessions = vol.sessions()?;
    let latest = sessions.last().cloned();
    if let Some(mine) = local.ids()?.last() {
        if latest.as_ref().is_none_or(|l| l < mine) {
            return Err(lost_session(name, mine, archive));
        }
    }
    let chain = match &latest {
        Some(l) => vol.chain(l)?,
        None => Vec::new(),
    };
    if let Some(prev) = chain.last() {
        if prev.chunksize != config.chunksize {
            return Err(Error::Msg(format!(
                "volume {name}: the archive uses chunk size {} but the config says {}; \
                 the chunk size of a volume cannot change",
                prev.chunksize, config.chunksize
            )));
        }
    }
    let ctx = VolumeCtx::new(config, name);
    let view = source.begin_send(&ctx, chain.last())?;
    let written = write_session(
        config,
        &vol,
        &chain,
        latest.as_deref(),
        &view,
        &local,
        as_tar,
    );
    let (session, bytes_read) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Err(e2) = source.abort_send(&ctx, view) {
                tracing::warn!("volume {name}: releasing the snapshot after a failed send: {e2}");
            }
            return Err(e);
        }
    };
    let Some(info) = session else {
        if let Some(l) = &latest {
            source.end_send(&ctx, view, l)?;
        }
        return Ok(SendOutcome {
            volume: name.to_string(),
            session: None,
            bytes_read,
            elapsed: started.elapsed(),
        });
    };
    let id = info.session.clone();
    crate::failpoint::hit("send-after-commit");
    local.save(&vol, &id)?;
    local.clear_pending()?;
    crate::failpoint::hit("send-after-local-copy");
    source.end_send(&ctx, view, &id)?;
    Ok(SendOutcome {
        volume: name.to_string(),
        session: Some(info),
        bytes_read,
        elapsed: started.elapsed(),
    })
}

/// Where the chunks of a new session go: an archive session (folder or tar) or a
/// stream.
pub trait ChunkSink: Send {
    /// Store a data chunk (already encoded).
    fn put_chunk(&mut self, addr: u64, hash: sparsebak_format::Hash, payload: &[u8]) -> Result<()>;
    /// Record that the chunk at `addr` became all zero.
    fn put_zero(&mut self, addr: u64) -> Result<()>;
    /// Manifest lines so far.
    fn changed(&self) -> u64;
    /// The folder whose filesystem receives the chunks, when there is one: a full
    /// filesystem is then reported with what the session needed.
    fn dest_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
}

impl ChunkSink for SessionWriter {
    fn put_chunk(&mut self, addr: u64, hash: sparsebak_format::Hash, payload: &[u8]) -> Result<()> {
        SessionWriter::put_chunk(self, addr, hash, payload)
    }
    fn put_zero(&mut self, addr: u64) -> Result<()> {
        SessionWriter::put_zero(self, addr)
    }
    fn changed(&self) -> u64 {
        self.changed
    }
    fn dest_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.vol_dir().to_path_buf())
    }
}

/// What comparing a volume with a base view found.
#[derive(Debug, Clone, Copy)]
pub struct Compared {
    pub bytes_read: u64,
    /// Non-zero chunks in the new session's view.
    pub chunks: u64,
}

/// Compare the volume `view` with the base view of `chain` (sessions whose manifests
/// `base_vol` holds; empty for a full send) and hand every differing chunk, encoded as
/// `mode` says, to `sink`, in address order. Shared by archive sessions and streams.
pub fn compare_and_store(
    config: &Config,
    base_vol: &VolumeArchive,
    chain: &[SessionInfo],
    view: &SendView,
    sink: &mut dyn ChunkSink,
    mode: PipeMode,
    label: &str,
) -> Result<Compared> {
    let size = view.size;
    let cs = config.chunksize;
    let first = chain.is_empty();
    let scan_runs;
    let runs: Box<dyn Iterator<Item = ChunkRun> + Send + '_> = match (&view.changes, first) {
        (Changes::Map(m), false) => Box::new(m.runs().map(|(start, end)| ChunkRun {
            start,
            end,
            data: true,
        })),
        _ => {
            scan_runs = scan::chunk_runs(&view.file, size, cs)
                .map_err(|e| Error::Msg(format!("{label}: scanning {}: {e}", view.label)))?;
            Box::new(scan_runs.iter().copied())
        }
    };
    let base = ViewCursor::open(base_vol, chain)?;
    let dest = sink.dest_dir();
    let room_before = dest.as_deref().and_then(space::room);
    let mut done = space::Progress {
        size,
        ..Default::default()
    };
    let mut added: i64 = 0;
    let progress = Progress::new(size, label);
    let input = pipeline::Input {
        file: &view.file,
        size,
        chunksize: cs,
    };
    let stats = pipeline::run(
        input,
        runs,
        base,
        mode,
        |pos| progress.set(pos),
        |rec| match rec {
            Record::Data {
                addr,
                hash,
                payload,
                replaces,
            } => {
                if !replaces {
                    added += 1;
                }
                sink.put_chunk(addr, hash, &payload)
                    .map_err(|e| match &dest {
                        Some(d) => {
                            space::explain(e, d, room_before, space::Progress { pos: addr, ..done })
                        }
                        None => e,
                    })?;
                done.stored += payload.len() as u64;
                done.chunks += 1;
                if sink.changed() == 50 {
                    crate::failpoint::hit("send-mid-chunks");
                }
                Ok(())
            }
            Record::Zero { addr } => {
                added -= 1;
                sink.put_zero(addr)
            }
        },
    );
    // A volume read live (source = file) that changed size while it was read would
    // make a session that never existed; that is the cause even when the read failed
    // on it (a truncated file).
    crate::source::file::check_size_unchanged(view)?;
    let stats = stats?;
    progress.finish();
    let prev = chain.last();
    let mut chunks = prev.map(|p| p.chunks as i64).unwrap_or(0) + added;
    if let Some(p) = prev {
        if size < p.volsize {
            // Chunks cut off by a shrink leave the view.
            let mut cut = 0i64;
            for e in ViewReader::open(base_vol, chain)? {
                if e?.addr >= size {
                    cut += 1;
                }
            }
            chunks -= cut;
        }
    }
    Ok(Compared {
        bytes_read: stats.bytes_read,
        chunks: chunks.max(0) as u64,
    })
}

/// Steps 3 and 4: compare, store, commit. Returns the new session (`None` when
/// nothing changed) and the bytes read.
fn write_session(
    config: &Config,
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    latest: Option<&str>,
    view: &SendView,
    local: &LocalCopies,
    as_tar: bool,
) -> Result<(Option<SessionInfo>, u64)> {
    let name = vol.name.as_str();
    let size = view.size;
    // `time` is when the session was taken; when its ID had to move on past the
    // latest one (several sends in a second), the moment the ID names, so IDs and times
    // agree. (IDs moved on across a clock change name a moment in the past; then the
    // clock's time stays.)
    let taken = chrono::Local::now();
    let id = session_id::next_id(taken.naive_local(), latest);
    let time = crate::selector::SessionTime::from_id(&id, &chrono::Local)
        .map_or(taken.timestamp(), |s| {
            s.time.timestamp().max(taken.timestamp())
        });
    let room_before = space::room(&vol.dir);
    let started = space::Progress {
        size,
        ..Default::default()
    };
    // Any step may meet a full filesystem, creating the staging folder included.
    let mut writer = SessionWriter::create_as(vol, &id, as_tar)
        .map_err(|e| space::explain(e, &vol.dir, room_before, started))?;
    let c = compare_and_store(
        config,
        vol,
        chain,
        view,
        &mut writer,
        PipeMode::store(config.compression, name, &id),
        &format!("send {name}"),
    )
    .map_err(|e| {
        let done = space::Progress {
            stored: writer.bytes_stored,
            chunks: writer.changed,
            ..started
        };
        space::explain(e, &vol.dir, room_before, done)
    })?;
    if writer.changed == 0 && chain.last().is_some_and(|p| p.volsize == size) {
        drop(writer);
        return Ok((None, c.bytes_read));
    }
    crate::failpoint::hit("send-before-commit");
    let done = space::Progress {
        stored: writer.bytes_stored,
        chunks: writer.changed,
        pos: size,
        size,
    };
    let info = writer
        .commit(
            |manifest_sha256, w| SessionInfo {
                volume: name.to_string(),
                session: id.clone(),
                previous: latest.map(str::to_string),
                time,
                volsize: size,
                chunksize: config.chunksize,
                compression: config.compression.codec,
                changed: w.changed,
                chunks: c.chunks,
                bytes_read: c.bytes_read,
                bytes_stored: w.bytes_stored,
                manifest_sha256,
            },
            |info| local.mark_pending(info),
        )
        .map_err(|e| space::explain(e, &vol.dir, room_before, done))?;
    Ok((Some(info), c.bytes_read))
}
