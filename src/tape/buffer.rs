//! A buffer thread between a producer (the stream writer) and the drive, as
//! `mbuffer` does: a tape drive that runs dry has to stop, back up and start again
//! ("shoe-shining"), which costs time and wears the tape; a buffer that starts the
//! drive only once it holds enough, and keeps it running until it is empty, lets the
//! drive stream at its own speed while the producer varies.
//!
//! - Memory is bounded: the buffer is a fixed pool of `capacity / block_size` blocks
//!   (at least two), recycled between the producer and the drive; the producer waits
//!   when all of them are full.
//! - Only whole blocks go to the drive: the producer's bytes are cut into blocks, and
//!   the last block is padded with zeros (the sink is told how many of its bytes are
//!   data).
//! - The drive starts when the buffer holds its high-water mark (90 % of its blocks) or
//!   when the producer is done, and runs until the buffer is empty. Each time it runs
//!   dry before the producer is done is a *stop*.
//! - An error of the drive stops it and comes back to the producer: its next write
//!   fails, and [`run`] returns the drive's error itself.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Where the buffer's blocks go (run on the buffer's own thread).
pub trait BlockSink {
    type Error: std::error::Error + Send + 'static;
    /// Write one whole block; `data_len` of its bytes are the producer's (the rest is
    /// the padding of the last block).
    fn write_block(&mut self, block: &[u8], data_len: usize) -> Result<(), Self::Error>;
}

/// The size and high-water mark of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct BufferOptions {
    pub block_size: usize,
    /// Bytes of blocks the buffer may hold (rounded down to whole blocks, at least 2).
    pub capacity: usize,
    /// The share of the buffer that must be full before the drive starts (0..=1).
    pub high_water: f64,
}

impl BufferOptions {
    pub fn new(block_size: usize, capacity: usize) -> BufferOptions {
        BufferOptions {
            block_size,
            capacity,
            high_water: 0.9,
        }
    }

    /// Blocks in the pool.
    pub fn blocks(&self) -> usize {
        (self.capacity / self.block_size.max(1)).max(2)
    }

    /// Full blocks that start the drive: at least one, at most all but the one the
    /// producer is filling.
    pub fn high_water_blocks(&self) -> usize {
        let n = self.blocks();
        ((n as f64 * self.high_water).ceil() as usize).clamp(1, n - 1)
    }
}

/// What the buffer measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BufferStats {
    /// Bytes the producer wrote (without the padding).
    pub bytes: u64,
    /// Blocks written to the drive.
    pub blocks: u64,
    /// Time spent inside the drive's writes.
    pub busy: Duration,
    /// From the drive's first start to its last block.
    pub running: Duration,
    /// Times the drive ran dry before the producer was done.
    pub stops: u64,
    /// Times the drive was started (the first start and one after each stop).
    pub starts: u64,
    /// The most blocks that were ever allocated (never more than the pool).
    pub max_blocks_in_use: usize,
    /// Blocks in the pool.
    pub pool_blocks: usize,
}

impl BufferStats {
    /// Bytes per second while the drive was running (from its first start).
    pub fn throughput(&self) -> f64 {
        let s = self.running.as_secs_f64();
        if s > 0.0 {
            self.bytes as f64 / s
        } else {
            0.0
        }
    }

    /// The share of the running time the drive was busy writing (0..=1).
    pub fn busy_fraction(&self) -> f64 {
        let s = self.running.as_secs_f64();
        if s > 0.0 {
            (self.busy.as_secs_f64() / s).min(1.0)
        } else {
            0.0
        }
    }
}

/// What the buffer is doing now, for a progress bar: one buffered tape write runs at
/// a time in a process, and [`run`] keeps these up to date.
#[derive(Debug)]
pub struct Live {
    /// Buffered writes running (one in a real run; tests run several at once).
    active: AtomicU64,
    blocks: AtomicU64,
    stops: AtomicU64,
    buffered: AtomicU64,
    pool: AtomicU64,
    block_size: AtomicU64,
    /// Nanoseconds from [`Live::epoch`] to the drive's first start (0: not started).
    started: AtomicU64,
}

/// The live state of the buffered tape write of this process.
pub static LIVE: Live = Live {
    active: AtomicU64::new(0),
    blocks: AtomicU64::new(0),
    stops: AtomicU64::new(0),
    buffered: AtomicU64::new(0),
    pool: AtomicU64::new(0),
    block_size: AtomicU64::new(0),
    started: AtomicU64::new(0),
};

impl Live {
    fn epoch() -> Instant {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    fn begin(&self, pool: usize, block_size: usize) {
        Self::epoch();
        for a in [&self.blocks, &self.stops, &self.buffered, &self.started] {
            a.store(0, Ordering::Relaxed);
        }
        self.pool.store(pool as u64, Ordering::Relaxed);
        self.block_size.store(block_size as u64, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    /// `drive 140 MiB/s, buffer 93 %, 0 stops` while a buffered write runs.
    pub fn status(&self) -> Option<String> {
        if self.active.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let started = self.started.load(Ordering::Relaxed);
        let bytes = self.blocks.load(Ordering::Relaxed) * self.block_size.load(Ordering::Relaxed);
        let secs = Self::epoch().elapsed().as_secs_f64().max(1e-9) - started as f64 / 1e9;
        let rate = if started > 0 && secs > 0.0 {
            bytes as f64 / secs
        } else {
            0.0
        };
        let pool = self.pool.load(Ordering::Relaxed).max(1);
        Some(format!(
            "drive {}/s, buffer {} %, {} stop(s)",
            indicatif::HumanBytes(rate as u64),
            self.buffered.load(Ordering::Relaxed) * 100 / pool,
            self.stops.load(Ordering::Relaxed)
        ))
    }
}

/// Why a buffered write failed.
#[derive(Debug, thiserror::Error)]
pub enum BufferError<E: std::error::Error + 'static> {
    /// The drive (sink) failed; the producer was stopped.
    #[error(transparent)]
    Drive(E),
    /// The producer failed (the drive was stopped, what it wrote stays written).
    #[error("producing the data for the tape: {0}")]
    Producer(#[source] io::Error),
    #[error("the tape buffer thread panicked")]
    Panicked,
}

struct State<E> {
    full: VecDeque<(Vec<u8>, usize)>,
    free: Vec<Vec<u8>>,
    allocated: usize,
    max_allocated: usize,
    /// The producer will send no more blocks.
    done: bool,
    /// Stop now (the producer failed).
    abort: bool,
    error: Option<E>,
    /// The drive's error was already told to the producer as an `io::Error`.
    error_text: Option<String>,
}

struct Shared<E> {
    state: Mutex<State<E>>,
    /// Signalled when a block is queued, or done/abort is set.
    filled: Condvar,
    /// Signalled when a block is freed or the drive failed.
    emptied: Condvar,
}

impl<E> Shared<E> {
    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // A panic on the other side is reported by the join; the state stays usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Stops both sides when one of them panics, so the other does not wait forever.
struct PanicGuard<'a, E>(&'a Shared<E>);

impl<E> Drop for PanicGuard<'_, E> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut st = self.0.lock();
            st.abort = true;
            st.error_text
                .get_or_insert_with(|| "the tape buffer thread panicked".into());
            drop(st);
            self.0.filled.notify_all();
            self.0.emptied.notify_all();
        }
    }
}

/// The producer's side of the buffer: bytes written here go to the drive in blocks.
pub struct BufferWriter<'a, E> {
    shared: &'a Shared<E>,
    block_size: usize,
    pool: usize,
    current: Option<Vec<u8>>,
    bytes: u64,
}

impl<E: std::error::Error> BufferWriter<'_, E> {
    fn failed(&self, st: &State<E>) -> Option<io::Error> {
        st.error_text
            .as_ref()
            .map(|t| io::Error::other(format!("the tape drive failed: {t}")))
    }

    /// A block to fill: a free one, a new one while the pool allows, or wait.
    fn take_block(&mut self) -> io::Result<Vec<u8>> {
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = self.failed(&st) {
                return Err(e);
            }
            if let Some(mut b) = st.free.pop() {
                b.clear();
                return Ok(b);
            }
            if st.allocated < self.pool {
                st.allocated += 1;
                st.max_allocated = st.max_allocated.max(st.allocated);
                return Ok(Vec::with_capacity(self.block_size));
            }
            st = self
                .shared
                .emptied
                .wait(st)
                .unwrap_or_else(|p| p.into_inner());
        }
    }

    fn push(&mut self, mut block: Vec<u8>) -> io::Result<()> {
        let data_len = block.len();
        block.resize(self.block_size, 0);
        let mut st = self.shared.lock();
        if let Some(e) = self.failed(&st) {
            return Err(e);
        }
        st.full.push_back((block, data_len));
        drop(st);
        self.shared.filled.notify_all();
        Ok(())
    }
}

impl<E: std::error::Error> Write for BufferWriter<'_, E> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let mut block = match self.current.take() {
                Some(b) => b,
                None => self.take_block()?,
            };
            let take = (self.block_size - block.len()).min(data.len());
            block.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.bytes += take as u64;
            if block.len() == self.block_size {
                self.push(block)?;
            } else {
                self.current = Some(block);
            }
        }
        Ok(n)
    }

    /// Blocks go to the drive when whole; a partial block waits for more data or for
    /// the end.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Run `produce` on this thread, writing into a buffer that a second thread empties
/// into `sink`. The last partial block is padded and written when `produce` returns
/// `Ok`; the call returns once every block is in the sink.
pub fn run<S, T>(
    opts: BufferOptions,
    sink: &mut S,
    produce: impl FnOnce(&mut BufferWriter<'_, S::Error>) -> io::Result<T>,
) -> Result<(T, BufferStats), BufferError<S::Error>>
where
    S: BlockSink + Send,
{
    let pool = opts.blocks();
    let high_water = opts.high_water_blocks();
    LIVE.begin(pool, opts.block_size);
    struct Inactive;
    impl Drop for Inactive {
        fn drop(&mut self) {
            LIVE.active.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _inactive = Inactive;
    let shared: Shared<S::Error> = Shared {
        state: Mutex::new(State {
            full: VecDeque::new(),
            free: Vec::new(),
            allocated: 0,
            max_allocated: 0,
            done: false,
            abort: false,
            error: None,
            error_text: None,
        }),
        filled: Condvar::new(),
        emptied: Condvar::new(),
    };
    std::thread::scope(|scope| {
        let drive = scope.spawn(|| {
            let _guard = PanicGuard(&shared);
            drive_loop(&shared, sink, high_water)
        });
        let _guard = PanicGuard(&shared);
        let mut w = BufferWriter {
            shared: &shared,
            block_size: opts.block_size,
            pool,
            current: None,
            bytes: 0,
        };
        let produced = produce(&mut w).and_then(|t| {
            if let Some(b) = w.current.take() {
                w.push(b)?;
            }
            Ok(t)
        });
        let bytes = w.bytes;
        {
            let mut st = shared.lock();
            st.done = true;
            st.abort = produced.is_err();
        }
        shared.filled.notify_all();
        let joined = drive.join();
        let mut st = shared.lock();
        let Ok(mut stats) = joined else {
            return Err(BufferError::Panicked);
        };
        if let Some(e) = st.error.take() {
            return Err(BufferError::Drive(e));
        }
        let t = produced.map_err(BufferError::Producer)?;
        stats.bytes = bytes;
        stats.max_blocks_in_use = st.max_allocated;
        stats.pool_blocks = pool;
        Ok((t, stats))
    })
}

/// The drive's side: wait for the high-water mark, then write until empty.
fn drive_loop<S: BlockSink>(
    shared: &Shared<S::Error>,
    sink: &mut S,
    high_water: usize,
) -> BufferStats {
    let mut stats = BufferStats::default();
    let mut first_start: Option<Instant> = None;
    let mut last_end = None;
    let mut st = shared.lock();
    'outer: loop {
        while !(st.abort || st.done || st.full.len() >= high_water) {
            st = shared.filled.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        if st.abort || (st.done && st.full.is_empty()) {
            break;
        }
        stats.starts += 1;
        first_start.get_or_insert_with(|| {
            let now = Instant::now();
            let since = now.duration_since(Live::epoch()).as_nanos() as u64;
            LIVE.started.store(since.max(1), Ordering::Relaxed);
            now
        });
        // Running: write until the buffer is empty.
        loop {
            if st.abort {
                break 'outer;
            }
            let Some((block, data_len)) = st.full.pop_front() else {
                if st.done {
                    break 'outer;
                }
                stats.stops += 1;
                LIVE.stops.store(stats.stops, Ordering::Relaxed);
                tracing::debug!(stops = stats.stops, "the tape buffer ran dry");
                continue 'outer;
            };
            drop(st);
            let t = Instant::now();
            let r = sink.write_block(&block, data_len);
            let now = Instant::now();
            stats.busy += now - t;
            last_end = Some(now);
            st = shared.lock();
            st.free.push(block);
            LIVE.buffered.store(st.full.len() as u64, Ordering::Relaxed);
            shared.emptied.notify_all();
            match r {
                Ok(()) => {
                    stats.blocks += 1;
                    LIVE.blocks.store(stats.blocks, Ordering::Relaxed);
                }
                Err(e) => {
                    st.error_text = Some(e.to_string());
                    st.error = Some(e);
                    st.abort = true;
                    shared.emptied.notify_all();
                    break 'outer;
                }
            }
        }
    }
    if let (Some(a), Some(b)) = (first_start, last_end) {
        stats.running = b - a;
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tape::drive::{TapeDrive, TapeError};
    use crate::tape::virtual_drive::VirtualDrive;
    use crate::tape::virtual_library::{VirtualLibrary, VirtualLibraryOptions};
    use crate::tape::Changer;

    #[test]
    fn the_live_status_is_said_while_a_write_runs() {
        struct Null;
        impl BlockSink for Null {
            type Error = TapeError;
            fn write_block(&mut self, _b: &[u8], _n: usize) -> Result<(), TapeError> {
                Ok(())
            }
        }
        let (said, _) = run(BufferOptions::new(512, 512 * 8), &mut Null, |w| {
            w.write_all(&[1u8; 512 * 20])?;
            Ok(LIVE.status())
        })
        .unwrap();
        let said = said.unwrap();
        assert!(said.starts_with("drive "), "{said}");
        assert!(
            said.contains(" %, ") && said.ends_with(" stop(s)"),
            "{said}"
        );
    }

    const BS: usize = 4096;

    struct DriveSink {
        drive: VirtualDrive,
        data: Vec<u8>,
        /// Fail at this block.
        fail_at: Option<u64>,
        written: u64,
    }

    impl BlockSink for DriveSink {
        type Error = TapeError;
        fn write_block(&mut self, block: &[u8], data_len: usize) -> Result<(), TapeError> {
            if Some(self.written) == self.fail_at {
                return Err(TapeError::EndOfMedium {
                    device: "test drive".into(),
                    during: format!("writing block {}", self.written),
                });
            }
            self.drive.write_block(block)?;
            self.data.extend_from_slice(&block[..data_len]);
            self.written += 1;
            Ok(())
        }
    }

    fn sink(dir: &std::path::Path, speed: Option<u64>) -> (VirtualLibrary, DriveSink) {
        let lib = VirtualLibrary::open(
            dir,
            &VirtualLibraryOptions {
                slots: 1,
                capacity: 1 << 30,
                speed,
            },
        )
        .unwrap();
        lib.changer().load(1, 0).unwrap();
        let mut drive = lib.drive();
        drive.set_block_size(BS).unwrap();
        (
            lib,
            DriveSink {
                drive,
                data: Vec::new(),
                fail_at: None,
                written: 0,
            },
        )
    }

    fn pattern(n: usize, seed: u32) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8)
            .collect()
    }

    #[test]
    fn options_round_to_blocks() {
        let o = BufferOptions::new(BS, 10 * BS + 100);
        assert_eq!((o.blocks(), o.high_water_blocks()), (10, 9));
        let o = BufferOptions::new(BS, 1);
        assert_eq!((o.blocks(), o.high_water_blocks()), (2, 1));
    }

    #[test]
    fn fast_producer_never_stops_the_drive_and_pads_the_last_block() {
        let t = tempfile::tempdir().unwrap();
        // 100 blocks per second: 40 ms per block.
        let (_lib, mut s) = sink(t.path(), Some(100 * BS as u64));
        let data = pattern(20 * BS + 123, 1);
        let opts = BufferOptions::new(BS, 8 * BS);
        let ((), stats) = run(opts, &mut s, |w| {
            for c in data.chunks(1000) {
                w.write_all(c)?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(s.data, data);
        assert_eq!(stats.bytes, data.len() as u64);
        assert_eq!(stats.blocks, 21);
        assert_eq!((stats.stops, stats.starts), (0, 1));
        assert!(stats.max_blocks_in_use <= 8, "{stats:?}");
        assert_eq!(stats.pool_blocks, 8);
        assert!(stats.busy_fraction() > 0.9, "{stats:?}");
        // 21 blocks at 100 blocks/s: about 210 ms of drive time.
        assert!(stats.busy >= Duration::from_millis(200), "{stats:?}");
        let rate = stats.throughput();
        assert!(
            rate > 50.0 * BS as f64 && rate < 110.0 * BS as f64,
            "{rate}"
        );
        // The padding is on the tape: 21 whole blocks.
        assert_eq!(s.drive.position().unwrap(), 21);
    }

    #[test]
    fn a_producer_pausing_longer_than_the_buffer_lasts_stops_the_drive_each_time() {
        let t = tempfile::tempdir().unwrap();
        // 10 ms per block; a buffer of 8 blocks lasts 80 ms.
        let (_lib, mut s) = sink(t.path(), Some(100 * BS as u64));
        let opts = BufferOptions::new(BS, 8 * BS);
        let pauses = 3;
        let burst = pattern(8 * BS, 2);
        let ((), stats) = run(opts, &mut s, |w| {
            for i in 0..=pauses {
                w.write_all(&burst)?;
                if i < pauses {
                    // Four times as long as the buffer lasts.
                    std::thread::sleep(Duration::from_millis(320));
                }
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(stats.stops, pauses as u64, "{stats:?}");
        assert_eq!(stats.starts, pauses as u64 + 1, "{stats:?}");
        assert_eq!(stats.blocks, 8 * (pauses as u64 + 1));
        assert!(stats.max_blocks_in_use <= 8, "{stats:?}");
        // The drive idled through most of the pauses.
        assert!(stats.busy_fraction() < 0.5, "{stats:?}");
        assert_eq!(s.data.len(), 32 * BS);
    }

    #[test]
    fn the_drive_waits_for_the_high_water_mark() {
        let t = tempfile::tempdir().unwrap();
        let (_lib, mut s) = sink(t.path(), None);
        let opts = BufferOptions::new(BS, 10 * BS);
        let ((), stats) = run(opts, &mut s, |w| {
            // 8 blocks, below the mark of 9: nothing reaches the drive yet.
            w.write_all(&pattern(8 * BS, 3))?;
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        })
        .unwrap();
        // Started once, at the end, and never ran dry.
        assert_eq!((stats.starts, stats.stops, stats.blocks), (1, 0, 8));
    }

    #[test]
    fn a_drive_error_comes_back_to_the_producer() {
        let t = tempfile::tempdir().unwrap();
        let (_lib, mut s) = sink(t.path(), None);
        s.fail_at = Some(5);
        let opts = BufferOptions::new(BS, 4 * BS);
        let mut producer_saw = None;
        let r = run(opts, &mut s, |w| {
            for i in 0..1000u32 {
                if let Err(e) = w.write_all(&pattern(BS, i)) {
                    producer_saw = Some(e.to_string());
                    return Err(e);
                }
            }
            Ok(())
        });
        match r {
            Err(BufferError::Drive(TapeError::EndOfMedium { during, .. })) => {
                assert_eq!(during, "writing block 5")
            }
            other => panic!("{other:?}"),
        }
        let seen = producer_saw.expect("the producer saw the error");
        assert!(seen.contains("writing block 5"), "{seen}");
        assert_eq!(s.written, 5);
    }

    #[test]
    fn a_panicking_producer_does_not_leave_the_drive_waiting() {
        let t = tempfile::tempdir().unwrap();
        let (_lib, mut s) = sink(t.path(), None);
        let opts = BufferOptions::new(BS, 4 * BS);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run(opts, &mut s, |w| -> io::Result<()> {
                w.write_all(&pattern(BS, 1))?;
                panic!("producer bug");
            })
        }));
        assert!(r.is_err());
    }

    #[test]
    fn a_producer_error_stops_the_drive() {
        let t = tempfile::tempdir().unwrap();
        let (_lib, mut s) = sink(t.path(), None);
        let opts = BufferOptions::new(BS, 4 * BS);
        let r = run(opts, &mut s, |w| {
            w.write_all(&pattern(BS + 7, 9))?;
            Err::<(), _>(io::Error::other("source volume went away"))
        });
        match r {
            Err(BufferError::Producer(e)) => assert_eq!(e.to_string(), "source volume went away"),
            other => panic!("{other:?}"),
        }
        // The partial block was never padded and written.
        assert!(s.written <= 1);
    }
}
