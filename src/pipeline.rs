//! The chunk pipeline: read, hash, compare, compress and hand over chunks, with every
//! core busy and memory bounded.
//!
//! Three stages joined by bounded channels:
//! 1. a reader thread walks the runs of candidate chunks in address order, reads data
//!    runs in large blocks (`READ_BYTES`), and looks up, from the streamed view of the
//!    archive's latest session, the hash each chunk had; for runs known to be holes it
//!    reads nothing and only picks out the chunks the archive has as non-zero;
//! 2. the calling thread splits each block into chunks and, on the rayon pool, tests
//!    for zero, hashes (SHA-256) and, for chunks whose hash differs from the archive's,
//!    compresses them;
//! 3. a writer thread hands the resulting records, still in address order, to the sink.
//!
//! At most `READ_QUEUE` and `WRITE_QUEUE` blocks wait between stages, so memory stays a
//! few tens of MiB
//! whatever the volume size.

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use rayon::prelude::*;
use std::sync::Arc;

use sparsebak_format::chunk::{self, Codec};
use sparsebak_format::codec::{self, ChunkCodec, ChunkContext, CodecError};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::view::ViewCursor;
use sparsebak_format::Hash;

use crate::error::{Error, Result};
use crate::scan::ChunkRun;

/// Bytes read per request and processed per batch.
const READ_BYTES: u64 = 4 << 20;
/// Blocks read ahead of the hashing stage. The reader needs little CPU but competes for
/// it with the hashing threads; with only two blocks queued it was often not scheduled
/// in time and the hashing stage waited for data (0.21 s of a 1.4 s send of 1 GiB on
/// two cores); eight blocks (32 MiB) hide that.
const READ_QUEUE: usize = 8;
/// Batches of records waiting for the writer.
const WRITE_QUEUE: usize = 2;
/// Batches hashed and compressed at once.
const IN_FLIGHT: usize = 3;
/// Zero records gathered per batch for hole runs.
const HOLE_BATCH: usize = 4096;
/// How far ahead of the read position the reader announces the data runs it will read
/// (`POSIX_FADV_WILLNEED`), so that scattered chunks (an incremental send) are fetched
/// by the device in parallel instead of one blocking read at a time.
const AHEAD_BYTES: u64 = 32 << 20;

/// What the pipeline decided about one chunk that differs from the archive.
#[derive(Debug)]
pub enum Record {
    /// New data: its hash and the bytes to store (encoded with the session's codec;
    /// empty when the pipeline only compares).
    Data {
        addr: u64,
        hash: Hash,
        payload: Vec<u8>,
        /// The archive had data at this address (so the view's chunk count is unchanged).
        replaces: bool,
    },
    /// The chunk is now all zero and the archive had data there.
    Zero { addr: u64 },
}

/// What the pipeline does with differing chunks. Either way chunks are identified by
/// the codec of the archive they are compared with.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Encode them for storing as chunks of session `session` of volume `volume`.
    Store {
        codec: Arc<dyn ChunkCodec>,
        volume: Arc<str>,
        session: Arc<str>,
    },
    /// Only find them (resync, diff).
    Compare { codec: Arc<dyn ChunkCodec> },
}

impl Mode {
    /// Only compare with volume `vol` of an archive, whose latest session is `latest`
    /// (`None`: empty).
    pub fn compare(
        vol: &sparsebak_format::volume::VolumeArchive,
        latest: Option<&SessionInfo>,
    ) -> Mode {
        Mode::Compare {
            codec: latest.map_or_else(|| codec::for_compression(Codec::Zstd), |i| vol.codec(i)),
        }
    }

    fn codec(&self) -> &dyn ChunkCodec {
        match self {
            Mode::Store { codec, .. } | Mode::Compare { codec } => &**codec,
        }
    }
}

/// Counters of one pipeline run.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub bytes_read: u64,
    pub chunks_read: u64,
    pub records: u64,
}

enum Batch {
    Data {
        first: u64,
        buf: Vec<u8>,
        base: Vec<Option<Hash>>,
    },
    Holes(Vec<u64>),
}

/// Read `[off, off+buf.len())` of `f`, leaving zeros past its end.
fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

struct Reader<'a> {
    file: &'a File,
    size: u64,
    cs: u64,
    base: ViewCursor,
    tx: SyncSender<Result<Batch>>,
    pos: &'a AtomicU64,
    bytes_read: &'a AtomicU64,
}

impl Reader<'_> {
    fn send(&self, b: Batch) -> bool {
        self.tx.send(Ok(b)).is_ok()
    }

    fn run(mut self, runs: impl Iterator<Item = ChunkRun>) {
        // A panic must reach the hashing stage as an error: a reader that just
        // vanished would look like the end of the volume.
        let walked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.walk(runs)))
            .unwrap_or_else(|_| Err(Error::Msg("reading the volume panicked".into())));
        if let Err(e) = walked {
            let _ = self.tx.send(Err(e));
        }
    }

    /// Announce to the kernel the data chunks from `from` up to `AHEAD_BYTES` further:
    /// the rest of `current`, then the runs after it (pulled from `runs` into `pending`
    /// as far as the window reaches). `advised` is the chunk index below which
    /// everything was already announced.
    fn advise(
        &self,
        from: u64,
        current: &ChunkRun,
        pending: &mut VecDeque<ChunkRun>,
        runs: &mut impl Iterator<Item = ChunkRun>,
        advised: &mut u64,
    ) {
        let nchunks = self.size.div_ceil(self.cs);
        let limit = (from + (AHEAD_BYTES / self.cs).max(1)).min(nchunks);
        let mut one = |r: &ChunkRun| {
            let (s, e) = (r.start.max(from).max(*advised), r.end.min(limit));
            if r.data && s < e {
                // Only a hint: errors (e.g. a device without page cache) are ignored.
                // SAFETY: posix_fadvise on a valid descriptor has no memory effects.
                unsafe {
                    libc::posix_fadvise(
                        self.file.as_raw_fd(),
                        (s * self.cs) as libc::off_t,
                        ((e - s) * self.cs) as libc::off_t,
                        libc::POSIX_FADV_WILLNEED,
                    );
                }
                *advised = e;
            }
        };
        one(current);
        for r in pending.iter() {
            if r.start >= limit {
                return;
            }
            one(r);
        }
        for r in runs.by_ref() {
            pending.push_back(r);
            if r.start >= limit {
                return;
            }
            one(&r);
        }
    }

    fn walk(&mut self, runs: impl Iterator<Item = ChunkRun>) -> Result<()> {
        let nchunks = self.size.div_ceil(self.cs);
        let per_read = (READ_BYTES / self.cs).max(1);
        let mut runs = runs.fuse();
        let mut pending: VecDeque<ChunkRun> = VecDeque::new();
        let mut advised = 0u64;
        while let Some(run) = pending.pop_front().or_else(|| runs.next()) {
            let end = run.end.min(nchunks);
            if run.start >= end {
                continue;
            }
            if !run.data {
                let mut addrs = Vec::new();
                let (s, e) = (run.start * self.cs, end * self.cs);
                let mut closed = false;
                self.base.each_in_range(s, e, |a| {
                    addrs.push(a);
                    if addrs.len() >= HOLE_BATCH {
                        closed |= self
                            .tx
                            .send(Ok(Batch::Holes(std::mem::take(&mut addrs))))
                            .is_err();
                    }
                    Ok(())
                })?;
                if closed || (!addrs.is_empty() && !self.send(Batch::Holes(addrs))) {
                    return Ok(());
                }
                self.pos.store(e.min(self.size), Ordering::Relaxed);
                continue;
            }
            let mut c = run.start;
            while c < end {
                self.advise(c, &run, &mut pending, &mut runs, &mut advised);
                let n = per_read.min(end - c);
                let first = c * self.cs;
                let mut buf = vec![0u8; (n * self.cs) as usize];
                let want = (n * self.cs).min(self.size - first) as usize;
                let got = read_full_at(self.file, &mut buf[..want], first)
                    .map_err(|e| Error::Msg(format!("reading the volume at byte {first}: {e}")))?;
                self.bytes_read.fetch_add(got as u64, Ordering::Relaxed);
                let mut base = Vec::with_capacity(n as usize);
                for i in 0..n {
                    base.push(self.base.lookup(first + i * self.cs)?);
                }
                if !self.send(Batch::Data { first, buf, base }) {
                    return Ok(());
                }
                c += n;
                self.pos
                    .store((c * self.cs).min(self.size), Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

/// What [`process`] makes of one batch: the records to hand over, and the chunks read.
type Processed = Result<(Vec<Record>, u64)>;

/// Run [`process`] on the rayon pool; its result (an error if it panicked) arrives on
/// the returned channel.
fn spawn_process(b: Batch, cs: u64, mode: Mode) -> Receiver<Processed> {
    let (tx, rx) = sync_channel(1);
    rayon::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(b, cs, mode)))
            .unwrap_or_else(|_| Err(Error::Msg("hashing and compressing panicked".into())));
        let _ = tx.send(r);
    });
    rx
}

fn process(batch: Batch, cs: u64, mode: Mode) -> Processed {
    let codec = mode.codec();
    match batch {
        Batch::Holes(addrs) => Ok((
            addrs
                .into_iter()
                .map(|addr| Record::Zero { addr })
                .collect(),
            0,
        )),
        Batch::Data { first, buf, base } => {
            let n = base.len() as u64;
            let out: Vec<std::result::Result<Option<Record>, CodecError>> = buf
                .par_chunks(cs as usize)
                .zip(base.par_iter())
                .enumerate()
                .map(|(i, (data, had))| {
                    let addr = first + i as u64 * cs;
                    if chunk::is_zero(data) {
                        return Ok(had.map(|_| Record::Zero { addr }));
                    }
                    let hash = codec.identify(data);
                    if *had == Some(hash) {
                        return Ok(None);
                    }
                    let payload = match &mode {
                        Mode::Compare { .. } => Vec::new(),
                        Mode::Store {
                            volume, session, ..
                        } => codec.encode(
                            &ChunkContext {
                                volume,
                                session,
                                addr,
                                chunksize: cs,
                            },
                            data,
                        )?,
                    };
                    Ok(Some(Record::Data {
                        addr,
                        hash,
                        payload,
                        replaces: had.is_some(),
                    }))
                })
                .collect();
            let mut recs = Vec::new();
            for r in out {
                if let Some(r) = r.map_err(|e| Error::Msg(format!("encoding {e}")))? {
                    recs.push(r);
                }
            }
            Ok((recs, n))
        }
    }
}

/// The volume the pipeline reads.
#[derive(Clone, Copy)]
pub struct Input<'a> {
    pub file: &'a File,
    /// Volume size in bytes (the last chunk is zero-padded).
    pub size: u64,
    pub chunksize: u64,
}

/// Run the pipeline over `runs` (chunk index runs, ascending, not overlapping) of a
/// volume of `size` bytes read from `file`, comparing with `base` (the archive's latest
/// view; an empty cursor for a first send). Every chunk that differs is handed to `sink`
/// in address order. `on_pos` sees the volume offset reached, from the calling thread.
pub fn run<I, S>(
    input: Input<'_>,
    runs: I,
    base: ViewCursor,
    mode: Mode,
    mut on_pos: impl FnMut(u64),
    sink: S,
) -> Result<Stats>
where
    I: Iterator<Item = ChunkRun> + Send,
    S: FnMut(Record) -> Result<()> + Send,
{
    let Input {
        file,
        size,
        chunksize,
    } = input;
    let pos = AtomicU64::new(0);
    let bytes_read = AtomicU64::new(0);
    let (tx_read, rx_read) = sync_channel::<Result<Batch>>(READ_QUEUE);
    let (tx_write, rx_write) = sync_channel::<Vec<Record>>(WRITE_QUEUE);
    let mut stats = Stats::default();
    // Set when the hashing stage fails, so the writer stops at its next batch instead
    // of storing what is still queued.
    let failed = AtomicBool::new(false);
    let (main_res, writer_res) = std::thread::scope(|s| {
        let reader = Reader {
            file,
            size,
            cs: chunksize,
            base,
            tx: tx_read,
            pos: &pos,
            bytes_read: &bytes_read,
        };
        s.spawn(move || reader.run(runs));
        let failed = &failed;
        let writer = s.spawn(move || write_stage(rx_write, sink, failed));
        let main_res = (|| -> Result<()> {
            // Where the hashing stage spent its time, for profiling (`-vv`).
            let mut waits = [std::time::Duration::ZERO; 3];
            let mut t = std::time::Instant::now();
            let mut lap = |i: usize| {
                waits[i] += t.elapsed();
                t = std::time::Instant::now();
            };
            // Batches being hashed and compressed on the pool, oldest first: up to
            // IN_FLIGHT at once, so that a batch of one large chunk (4 MiB chunks) or
            // the last chunks of a batch do not leave the other cores idle. Results
            // still leave in address order.
            let mut in_flight: VecDeque<Receiver<Processed>> = VecDeque::new();
            let mut reading = true;
            loop {
                // Start another batch when there is room: wait for the reader only
                // when nothing else is in flight.
                let next = if !reading || in_flight.len() >= IN_FLIGHT {
                    None
                } else if in_flight.is_empty() {
                    rx_read.recv().ok()
                } else {
                    match rx_read.try_recv() {
                        Ok(b) => Some(b),
                        Err(TryRecvError::Empty) => None,
                        Err(TryRecvError::Disconnected) => {
                            reading = false;
                            None
                        }
                    }
                };
                if let Some(b) = next {
                    lap(0);
                    in_flight.push_back(spawn_process(b?, chunksize, mode.clone()));
                    continue;
                }
                let Some(done) = in_flight.pop_front() else {
                    if reading {
                        // The reader hung up while nothing was in flight.
                        reading = false;
                        continue;
                    }
                    break;
                };
                let (recs, n) = done
                    .recv()
                    .unwrap_or_else(|_| Err(Error::Msg("a hashing task was lost".into())))?;
                lap(1);
                stats.chunks_read += n;
                stats.records += recs.len() as u64;
                on_pos(pos.load(Ordering::Relaxed));
                if tx_write.send(recs).is_err() {
                    // The writer stopped: its error is reported below.
                    break;
                }
                lap(2);
            }
            let [read, work, write] = waits.map(|d| d.as_secs_f64());
            tracing::debug!(
                "pipeline: {read:.3} s waiting for the reader, {work:.3} s hashing and \
                 compressing, {write:.3} s waiting for the writer"
            );
            Ok(())
        })();
        if main_res.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        // Every stage stops when a neighbour fails: dropping the sender ends the
        // writer's loop, and dropping the receiver unblocks a reader waiting to send.
        drop(tx_write);
        drop(rx_read);
        let writer_res = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Msg("writer thread panicked".into())));
        (main_res, writer_res)
    });
    writer_res?;
    main_res?;
    stats.bytes_read = bytes_read.load(Ordering::Relaxed);
    on_pos(size);
    Ok(stats)
}

fn write_stage<S>(rx: Receiver<Vec<Record>>, mut sink: S, failed: &AtomicBool) -> Result<()>
where
    S: FnMut(Record) -> Result<()>,
{
    for recs in rx.iter() {
        if failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        for r in recs {
            sink(r)?;
        }
    }
    Ok(())
}
