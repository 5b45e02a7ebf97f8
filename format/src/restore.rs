//! Rebuilding a volume from a session's view, and reading every chunk of a view in
//! parallel (shared by receive, verify and `spbk-assemble`).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;

use rayon::prelude::*;

use crate::info::SessionInfo;
use crate::view::{ViewEntry, ViewReader};
use crate::volume::VolumeArchive;

/// Bytes of chunks read and decoded together. A batch holds `BATCH_BYTES / chunksize`
/// chunks, but at most `BATCH_MAX` (small chunks) and at least `BATCH_MIN` (large
/// chunks, so that several reader threads still work side by side); at most
/// `QUEUE + FETCHED + 3` batches exist at once (one being read, `FETCHED` read and
/// waiting, one being decoded, `QUEUE` decoded and waiting, one with the consumer). Memory is bounded by bytes, not by a count of
/// chunks: 128 chunks of 4 MiB per batch made a receive hold 800 MiB.
const BATCH_BYTES: u64 = 8 << 20;
const BATCH_MAX: usize = 128;
const BATCH_MIN: usize = 2;
/// Decoded batches waiting for the consumer.
const QUEUE: usize = 2;
/// Batches read (not decoded yet) waiting for the decoder.
const FETCHED: usize = 1;
/// Threads that read and decode chunk files: more than the cores, so that on a cold
/// cache several reads are in flight while others decode.
const READERS: usize = 8;

/// One chunk of a view, read back: its bytes or why they could not be had.
pub struct ReadChunk {
    pub entry: ViewEntry,
    pub data: std::result::Result<Vec<u8>, String>,
}

fn reader_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        let n = READERS.max(rayon::current_num_threads());
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .thread_name(|i| format!("sparsebak-read-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// One batch of a view with the stored bytes of its chunks, as the store returned
/// them (not decoded yet).
struct Fetched {
    batch: Vec<ViewEntry>,
    stored: Vec<Option<crate::Result<Vec<u8>>>>,
}

/// Run `f` on the pool of reader threads (or here when it could not be made).
fn on_readers<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match reader_pool() {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// Run `f` on the pool of reader threads that `read_view` uses: more threads than
/// cores, so that a [`crate::store::VolumeStore::read_stored`] of a local store has
/// several reads in flight on a cold cache (the far side of a remote archive reads
/// its batches here too).
pub fn with_readers<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    on_readers(f)
}

fn fetch_batch(vol: &VolumeArchive, chain: &[SessionInfo], batch: Vec<ViewEntry>) -> Fetched {
    on_readers(|| {
        // One batched read per session the batch takes chunks from (a remote store
        // sends all of a batch's requests before reading a reply).
        let mut stored: Vec<Option<crate::Result<Vec<u8>>>> = Vec::new();
        stored.resize_with(batch.len(), || None);
        let mut sessions: Vec<usize> = batch.iter().map(|e| e.session).collect();
        sessions.sort_unstable();
        sessions.dedup();
        for s in sessions {
            let (idx, addrs): (Vec<usize>, Vec<u64>) = batch
                .iter()
                .enumerate()
                .filter(|(_, e)| e.session == s)
                .map(|(i, e)| (i, e.addr))
                .unzip();
            for (i, r) in idx
                .into_iter()
                .zip(vol.read_stored_batch(&chain[s], &addrs))
            {
                stored[i] = Some(r);
            }
        }
        Fetched { batch, stored }
    })
}

fn decode_batch(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    check: bool,
    fetched: Fetched,
) -> Vec<ReadChunk> {
    // One codec per session of the chain, looked up once per batch.
    let codecs: Vec<_> = chain.iter().map(|i| vol.codec(i)).collect();
    let Fetched { batch, stored } = fetched;
    on_readers(|| {
        batch
            .into_par_iter()
            .zip(stored.into_par_iter())
            .map(|(entry, stored)| {
                let info = &chain[entry.session];
                let codec = &*codecs[entry.session];
                let data = match stored {
                    Some(Ok(b)) => vol.decode_with(codec, info, entry.addr, b),
                    Some(Err(e)) => Err(e.to_string()),
                    None => Err(format!(
                        "{}: not read",
                        vol.chunk_location(&info.session, entry.addr)
                    )),
                };
                let data = data.and_then(|d| {
                    if check && codec.identify(&d) != entry.hash {
                        Err(format!(
                            "SHA-256 mismatch in {}",
                            vol.chunk_location(&info.session, entry.addr)
                        ))
                    } else {
                        Ok(d)
                    }
                });
                ReadChunk { entry, data }
            })
            .collect()
    })
}

/// Read every non-zero chunk of the view of `chain`'s last session, in address order.
/// A producer thread reads and decodes batches on a pool of reader threads while `f`
/// consumes the previous batch (writes it out), so reading and writing overlap. With
/// `check`, a chunk whose SHA-256 differs from the manifest comes back as an error.
/// `f` sees each batch in order; an `Err` from `f` stops the walk.
pub fn read_view<E: From<crate::FormatError> + Send>(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    check: bool,
    f: impl FnMut(Vec<ReadChunk>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    read_view_of(ViewReader::open(vol, chain)?, vol, chain, check, f)
}

/// [`read_view`] of the manifests as they are, not checked against their infos (see
/// [`ViewReader::open_as_recorded`]): for `verify`.
pub fn read_view_as_recorded<E: From<crate::FormatError> + Send>(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    check: bool,
    f: impl FnMut(Vec<ReadChunk>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    read_view_of(
        ViewReader::open_as_recorded(vol, chain)?,
        vol,
        chain,
        check,
        f,
    )
}

fn read_view_of<E: From<crate::FormatError> + Send>(
    view: ViewReader,
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    check: bool,
    mut f: impl FnMut(Vec<ReadChunk>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let chunksize = chain.iter().map(|i| i.chunksize).max().unwrap_or(1).max(1);
    let batch_len = ((BATCH_BYTES / chunksize) as usize).clamp(BATCH_MIN, BATCH_MAX);
    // Two stages before the consumer: a fetcher walks the view and reads the stored
    // bytes of one batch while a decoder decodes (and hashes) the previous one, so
    // that a store's reads (over a link, the far side's reading and the transfer)
    // overlap with decoding instead of waiting for it.
    let (ftx, frx) =
        std::sync::mpsc::sync_channel::<std::result::Result<Fetched, crate::FormatError>>(FETCHED);
    let (tx, rx) = std::sync::mpsc::sync_channel::<
        std::result::Result<Vec<ReadChunk>, crate::FormatError>,
    >(QUEUE);
    std::thread::scope(|s| {
        s.spawn(move || {
            let mut view = view;
            loop {
                let mut batch = Vec::with_capacity(batch_len);
                for e in view.by_ref().take(batch_len) {
                    match e {
                        Ok(e) => batch.push(e),
                        Err(err) => {
                            let _ = ftx.send(Err(err));
                            return;
                        }
                    }
                }
                if batch.is_empty() {
                    return;
                }
                // A panic while reading must reach the consumer as an error: a
                // producer that just vanished would look like the end of the view.
                let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    fetch_batch(vol, chain, batch)
                }))
                .map_err(|_| crate::FormatError::Other("reading chunks panicked".into()));
                let failed = read.is_err();
                if ftx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        s.spawn(move || {
            // Ends when the fetcher does (its sender dropped) or the consumer does.
            for fetched in frx.iter() {
                let read = fetched.and_then(|f| {
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        decode_batch(vol, chain, check, f)
                    }))
                    .map_err(|_| crate::FormatError::Other("decoding chunks panicked".into()))
                });
                let failed = read.is_err();
                if tx.send(read).is_err() || failed {
                    return;
                }
            }
        });
        // The receiver is moved in and dropped before the scope joins the producer:
        // when `f` or a batch fails, a producer blocked in `send` then sees the
        // channel closed and returns, instead of waiting for ever (the scope would
        // never join, and the error would never be reported).
        let rx = rx;
        let res = (|| {
            for batch in rx.iter() {
                f(batch?)?;
            }
            Ok(())
        })();
        drop(rx);
        res
    })
}

/// Where a restored volume goes.
pub trait Target {
    /// Write `data` at byte offset `off`.
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()>;
    /// Make `[off, off+len)` read back as zeros.
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()>;
    /// Make everything durable.
    fn finish(&mut self) -> std::io::Result<()>;
}

/// A regular file that was just truncated to zero length and then extended to the volume
/// size: it reads as zeros already, so zero ranges stay holes.
pub struct SparseFileTarget {
    pub file: File,
}

impl SparseFileTarget {
    pub fn new(file: File, size: u64) -> std::io::Result<SparseFileTarget> {
        file.set_len(0)?;
        file.set_len(size)?;
        Ok(SparseFileTarget { file })
    }
}

impl Target for SparseFileTarget {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, off)
    }
    fn zero(&mut self, _off: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// A sequential stream (stdout, a pipe): zero ranges are written out as zeros.
pub struct StreamTarget<W: Write> {
    pub out: W,
    pos: u64,
}

impl<W: Write> StreamTarget<W> {
    pub fn new(out: W) -> Self {
        StreamTarget { out, pos: 0 }
    }
}

impl<W: Write> Target for StreamTarget<W> {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        if off != self.pos {
            return Err(std::io::Error::other("stream target written out of order"));
        }
        self.out.write_all(data)?;
        self.pos += data.len() as u64;
        Ok(())
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        if off != self.pos {
            return Err(std::io::Error::other("stream target written out of order"));
        }
        let zeros = [0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            self.out.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        self.pos += len;
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// What a restore did.
#[derive(Debug, Default, Clone, Copy)]
pub struct RestoreStats {
    pub chunks: u64,
    pub bytes_written: u64,
    pub volsize: u64,
}

/// Errors of a restore: the format, or the target.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Format(#[from] crate::FormatError),
    /// `reason` names the chunk's file (or tar member) when it can; the chunk is
    /// said before it only when it does not.
    #[error("{}", chunk_reason(*addr, reason))]
    Chunk { addr: u64, reason: String },
    #[error("writing the target: {0}")]
    Target(#[source] std::io::Error),
}

fn chunk_reason(addr: u64, reason: &str) -> String {
    if reason.contains(&crate::layout::chunk_name(addr)) {
        reason.to_string()
    } else {
        format!("chunk x{addr:016x}: {reason}")
    }
}

/// Rebuild the view of `chain`'s last session into `target`, checking every chunk's
/// hash. `progress` is called with the volume offset reached.
pub fn restore(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    target: &mut dyn Target,
    check: bool,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<RestoreStats, RestoreError> {
    let last = chain.last().ok_or_else(|| crate::FormatError::NoSessions {
        volume: vol.name.clone(),
    })?;
    let size = last.volsize;
    let mut stats = RestoreStats {
        volsize: size,
        ..Default::default()
    };
    let mut pos = 0u64;
    read_view(vol, chain, check, |batch| {
        for rc in batch {
            let addr = rc.entry.addr;
            let data = rc
                .data
                .map_err(|reason| RestoreError::Chunk { addr, reason })?;
            if addr > pos {
                target.zero(pos, addr - pos).map_err(RestoreError::Target)?;
            }
            let len = (size - addr).min(data.len() as u64) as usize;
            target
                .write_at(addr, &data[..len])
                .map_err(RestoreError::Target)?;
            pos = addr + len as u64;
            stats.chunks += 1;
            stats.bytes_written += len as u64;
        }
        progress(pos);
        // A test stops a restore here, its target partly written.
        crate::failpoint::hit("restore-mid-chunks");
        Ok::<(), RestoreError>(())
    })?;
    if size > pos {
        target.zero(pos, size - pos).map_err(RestoreError::Target)?;
    }
    target.finish().map_err(RestoreError::Target)?;
    progress(size);
    Ok(stats)
}
