//! Taking a session of one volume: the work behind `sparsebak send`.
//!
//! Order of events, each step durable before the next:
//! 1. lock the volume (source side and archive), clear leftovers of interrupted runs;
//! 2. the source gives a consistent view (snapshot) and the candidate chunks;
//! 3. the pipeline compares candidates with the archive's latest view and hands the
//!    differing chunks to the destination's session sink (a staging folder);
//! 4. the sink makes the session durable, the source side records it as pending, and
//!    the sink commits it (rename): from here it exists;
//! 5. its info and manifest are copied to the source side;
//! 6. the source forgets the changes it stored (delta map cleared).
//!
//! A crash before 4 leaves only a staging folder, removed by the next run. A crash
//! between 4 and 6 is caught up by the next run (the copies are taken then; the map
//! still marks chunks that are now identical to the archive, which costs a re-read
//! but stores nothing).
//!
//! `send --stream` takes the same path ([`take_session`]) with a stream sink.

use std::time::{Duration, Instant};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::view::{ViewCursor, ViewReader};
use sparsebak_format::volume::VolumeArchive;

use crate::archive::local::LocalCopies;
use crate::archive::{lost_session, prepare, Archive, Use};
use crate::config::Config;
use crate::destination::{NewSession, SessionKind, SessionSink};
use crate::error::{Error, Result};
use crate::pipeline::{self, Mode as PipeMode, Record};
use crate::progress::Progress;
use crate::scan::{self, ChunkRun};
use crate::session_id;
use crate::source::{Changes, SendView, Source, VolumeCtx};

/// What a send of one volume did.
#[derive(Debug)]
pub struct SendOutcome {
    pub volume: String,
    /// The new session, or `None` when nothing had changed.
    pub session: Option<SessionInfo>,
    pub bytes_read: u64,
    pub elapsed: Duration,
}

/// Where a new session goes: what differs between sending into an archive and
/// writing a stream. The rest (the source's snapshot, comparing with the base view,
/// the order of the durable steps) is [`take_session`], the one path of both.
pub trait SessionTarget {
    /// Start session `id` (taken at `time`, seconds since the epoch) of a volume of
    /// `volsize` bytes: the sink its chunks go to.
    fn begin(&mut self, id: &str, time: i64, volsize: u64) -> Result<Box<dyn SessionSink>>;
    /// Whether a session is written when nothing changed (a stream is; an archive
    /// gets no new session).
    fn keep_unchanged(&self) -> bool;
    /// Runs once the session is durable and before it appears: the source side
    /// records that it is about to exist.
    fn before_commit(&mut self, info: &SessionInfo) -> Result<()>;
    /// Runs once the session exists: the source side takes its copies.
    fn after_commit(&mut self, info: &SessionInfo) -> Result<()>;
    /// The keys chunks are sealed with, when the target is encrypted and its base
    /// volume does not say so itself (a stream, whose base is the source's copies).
    fn keys(&self) -> Option<std::sync::Arc<sparsebak_format::crypto::ArchiveKeys>> {
        None
    }
}

/// Take a session of volume `ctx` from `source` into `target`, incremental on the
/// view of `chain` (sessions whose manifests `base_vol` holds; empty for a full
/// session): the source's consistent view, the pipeline comparing it with the base
/// view, the sink's prepare, `before_commit`, commit, `after_commit`, and the source
/// told how it ended. Returns the new session (`None` when nothing changed and the
/// target keeps no unchanged session) and the bytes read.
pub fn take_session(
    config: &Config,
    ctx: &VolumeCtx,
    source: &mut dyn Source,
    base_vol: &VolumeArchive,
    chain: &[SessionInfo],
    target: &mut dyn SessionTarget,
    label: &str,
) -> Result<(Option<SessionInfo>, u64)> {
    let view = source.begin_send(ctx, chain.last())?;
    let written = write_session(config, ctx.name, base_vol, chain, &view, target, label);
    let (session, bytes_read) = match written {
        Ok(w) => w,
        Err(e) => {
            if let Err(e2) = source.abort_send(ctx, view) {
                tracing::warn!(
                    "volume {}: releasing the snapshot after a failed send: {e2}",
                    ctx.name
                );
            }
            return Err(e);
        }
    };
    match &session {
        Some(info) => {
            let id = info.session.clone();
            target.after_commit(info)?;
            source.end_send(ctx, view, &id)?;
        }
        None => {
            if let Some(l) = chain.last() {
                source.end_send(ctx, view, &l.session)?;
            }
        }
    }
    Ok((session, bytes_read))
}

/// Compare, store, commit. Returns the new session (`None` when nothing changed) and
/// the bytes read.
fn write_session(
    config: &Config,
    name: &str,
    base_vol: &VolumeArchive,
    chain: &[SessionInfo],
    view: &SendView,
    target: &mut dyn SessionTarget,
    label: &str,
) -> Result<(Option<SessionInfo>, u64)> {
    let size = view.size;
    let latest = chain.last().map(|i| i.session.as_str());
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
    // An encrypted target seals chunks for the volume's id: the one its sessions
    // carry, or a new one for its first.
    let keys = target.keys().or_else(|| base_vol.keys());
    let volume_id = match &keys {
        None => None,
        Some(_) => match chain.last().and_then(|i| i.volume_id.clone()) {
            Some(v) => Some(v),
            None => Some(
                sparsebak_format::crypto::random_uuid().map_err(|e| Error::Msg(e.to_string()))?,
            ),
        },
    };
    let mut sink = target.begin(&id, time, size)?;
    let mode = PipeMode::Store {
        codec: sparsebak_format::codec::for_writing_in(
            keys.as_ref(),
            volume_id.as_deref(),
            config.compression.codec,
            config.compression.level,
        ),
        volume: name.into(),
        session: id.as_str().into(),
    };
    // Everything up to the commit: on any failure the destination is told to give the
    // session up (a far side keeps the chunks of a session only when its link
    // dropped, for the next send to take over; a full disk must not stay full). Over
    // a dead link that fails too, which is what keeps them. A write's failure may
    // only show at `prepare`: a far side's answers to chunks come later.
    let staged = (|| -> Result<(Option<SessionInfo>, u64)> {
        let c = compare_and_store(config, base_vol, chain, view, sink.as_mut(), mode, label)?;
        if sink.changed() == 0
            && chain.last().is_some_and(|p| p.volsize == size)
            && !target.keep_unchanged()
        {
            return Ok((None, c.bytes_read));
        }
        crate::failpoint::hit("send-before-commit");
        let info = sink.prepare(NewSession {
            volume: name.to_string(),
            session: id.clone(),
            previous: latest.map(str::to_string),
            time,
            volsize: size,
            chunksize: config.chunksize,
            compression: config.compression.codec,
            chunks: c.chunks,
            bytes_read: c.bytes_read,
            volume_id: volume_id.clone(),
        })?;
        target.before_commit(&info)?;
        Ok((Some(info), c.bytes_read))
    })();
    let bytes_read = match staged {
        Ok((Some(_), bytes_read)) => bytes_read,
        Ok((None, bytes_read)) => {
            sink.abort()?;
            return Ok((None, bytes_read));
        }
        Err(e) => {
            if let Err(e2) = sink.abort() {
                tracing::debug!("volume {name}: giving up the session after a failure: {e2}");
            }
            return Err(e);
        }
    };
    let info = sink.commit()?;
    Ok((Some(info), bytes_read))
}

/// A session of the archive: its sink is the destination's, the source side keeps
/// the pending record and the copies.
struct ArchiveTarget<'a> {
    archive: &'a Archive,
    name: &'a str,
    kind: SessionKind,
    base: Option<String>,
    local: &'a LocalCopies,
}

impl SessionTarget for ArchiveTarget<'_> {
    fn begin(&mut self, id: &str, _time: i64, volsize: u64) -> Result<Box<dyn SessionSink>> {
        self.archive
            .begin_session(self.name, id, self.kind, self.base.as_deref(), volsize)
    }
    fn keep_unchanged(&self) -> bool {
        false
    }
    fn before_commit(&mut self, info: &SessionInfo) -> Result<()> {
        self.local.mark_pending(info)
    }
    fn after_commit(&mut self, info: &SessionInfo) -> Result<()> {
        crate::failpoint::hit("send-after-commit");
        self.local
            .save(&self.archive.volume(self.name), &info.session)?;
        self.local.clear_pending()?;
        crate::failpoint::hit("send-after-local-copy");
        Ok(())
    }
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
    let _held = prepare(config, archive, name, Use::Send)?;
    let vol = archive.volume(name);
    let local = LocalCopies::for_dest(config, name);
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
    let mut target = ArchiveTarget {
        archive,
        name,
        kind: if as_tar {
            SessionKind::Tar
        } else {
            SessionKind::Folder
        },
        base: latest,
        local: &local,
    };
    let (session, bytes_read) = take_session(
        config,
        &ctx,
        source,
        &vol,
        &chain,
        &mut target,
        &format!("send {name}"),
    )?;
    Ok(SendOutcome {
        volume: name.to_string(),
        session,
        bytes_read,
        elapsed: started.elapsed(),
    })
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
/// `mode` says, to `sink`, in address order. A sink reports a full filesystem itself.
pub fn compare_and_store(
    config: &Config,
    base_vol: &VolumeArchive,
    chain: &[SessionInfo],
    view: &SendView,
    sink: &mut dyn SessionSink,
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
                sink.put_chunk(addr, hash, &payload)?;
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
