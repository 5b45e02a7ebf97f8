//! One session of a volume as a read-only disk image: the bytes `receive` would write,
//! read at any offset, decoding only the chunks a read touches.
//!
//! The session's view (the merge of its chain's manifests, [`ViewReader`]) is walked
//! once, streaming, into an index of fixed-size records sorted by address, kept in an
//! unlinked temporary file: memory holds one address per block of records (the
//! *fences*) and a few blocks, never the whole view, so a 1 TiB volume costs kilobytes.
//! A read looks up the chunks it touches, fetches the missing ones in one batch per
//! session through the store (local, remote, encrypted alike), decodes them with the
//! session's codec, checks their hash against the manifest, and keeps them in a
//! [`ChunkCache`] bounded by bytes. Addresses without a record read as zeros; the same
//! records answer `SEEK_DATA` and `SEEK_HOLE`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;
use sparsebak_format::codec::ChunkCodec;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::view::ViewReader;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::error::{Error, IoAt, Result};

/// Bytes of one index record: address (u64 LE), index of the session in the chain
/// that stores the chunk (u32 LE), 4 bytes of zeros, the chunk's hash (32 bytes).
const REC: usize = 48;
/// Records per block of the index: one fence (an address) in memory per block; a
/// block (48 KiB) is what one lookup reads.
const BLOCK_RECS: usize = 1024;
/// Blocks of the index kept in memory per image.
const BLOCKS_KEPT: usize = 8;
/// Bytes read ahead of a sequential reader: chunks decoded in the background while
/// the reader goes on, so a cold read overlaps the store's reads with decoding.
const READ_AHEAD: u64 = 4 << 20;
/// Chunks fetched together by the read-ahead (one batch per session).
const AHEAD_BATCH: usize = 16;

/// One chunk of the view: where it is and what it must hash to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rec {
    pub addr: u64,
    /// Index into the chain of the session that stores it.
    pub session: u32,
    pub hash: Hash,
}

impl Rec {
    fn encode(&self, out: &mut [u8]) {
        out[0..8].copy_from_slice(&self.addr.to_le_bytes());
        out[8..12].copy_from_slice(&self.session.to_le_bytes());
        out[12..16].fill(0);
        out[16..48].copy_from_slice(&self.hash);
    }

    fn decode(b: &[u8]) -> Rec {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[0..8]);
        let mut s = [0u8; 4];
        s.copy_from_slice(&b[8..12]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&b[16..48]);
        Rec {
            addr: u64::from_le_bytes(a),
            session: u32::from_le_bytes(s),
            hash,
        }
    }
}

/// The sorted records of a view in a temporary file (removed when closed: it is
/// unlinked as it is made).
pub struct Index {
    file: File,
    count: u64,
    /// The first address of each block.
    fences: Vec<u64>,
    blocks: Mutex<Vec<(usize, Arc<Vec<Rec>>)>>,
}

impl Index {
    /// Walk `chain`'s view into a new index in folder `tmpdir`.
    pub fn build(vol: &VolumeArchive, chain: &[SessionInfo], tmpdir: &Path) -> Result<Index> {
        let file = tempfile::tempfile_in(tmpdir).at(tmpdir)?;
        let mut out = BufWriter::with_capacity(1 << 20, file.try_clone().at(tmpdir)?);
        let mut fences = Vec::new();
        let mut count = 0u64;
        let mut rec = [0u8; REC];
        for e in ViewReader::open(vol, chain)? {
            let e = e?;
            if count % BLOCK_RECS as u64 == 0 {
                fences.push(e.addr);
            }
            let session = u32::try_from(e.session)
                .map_err(|_| Error::Msg(format!("{}: too many sessions", vol.label())))?;
            Rec {
                addr: e.addr,
                session,
                hash: e.hash,
            }
            .encode(&mut rec);
            out.write_all(&rec).at(tmpdir)?;
            count += 1;
        }
        out.flush().at(tmpdir)?;
        drop(out);
        Ok(Index {
            file,
            count,
            fences,
            blocks: Mutex::new(Vec::new()),
        })
    }

    /// Records in the index (non-zero chunks of the view).
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn block(&self, b: usize) -> std::io::Result<Arc<Vec<Rec>>> {
        {
            let mut kept = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(i) = kept.iter().position(|(n, _)| *n == b) {
                let hit = kept.remove(i);
                let recs = hit.1.clone();
                kept.push(hit);
                return Ok(recs);
            }
        }
        let first = b as u64 * BLOCK_RECS as u64;
        let n = (self.count - first).min(BLOCK_RECS as u64) as usize;
        let mut buf = vec![0u8; n * REC];
        self.file.read_exact_at(&mut buf, first * REC as u64)?;
        let recs: Arc<Vec<Rec>> = Arc::new(buf.chunks_exact(REC).map(Rec::decode).collect());
        let mut kept = self.blocks.lock().unwrap_or_else(|p| p.into_inner());
        if kept.len() >= BLOCKS_KEPT {
            kept.remove(0);
        }
        kept.push((b, recs.clone()));
        Ok(recs)
    }

    /// The block that holds `addr` if any record does: the last whose fence is at or
    /// before it.
    fn block_of(&self, addr: u64) -> Option<usize> {
        self.fences.partition_point(|&f| f <= addr).checked_sub(1)
    }

    /// The record at `addr` exactly.
    pub fn get(&self, addr: u64) -> std::io::Result<Option<Rec>> {
        let Some(b) = self.block_of(addr) else {
            return Ok(None);
        };
        let recs = self.block(b)?;
        Ok(recs
            .binary_search_by_key(&addr, |r| r.addr)
            .ok()
            .map(|i| recs[i]))
    }

    /// The first record at or after `addr`.
    pub fn at_or_after(&self, addr: u64) -> std::io::Result<Option<Rec>> {
        let b = self.block_of(addr).unwrap_or(0);
        for b in b..self.fences.len() {
            let recs = self.block(b)?;
            let i = recs.partition_point(|r| r.addr < addr);
            if let Some(r) = recs.get(i) {
                return Ok(Some(*r));
            }
        }
        Ok(None)
    }

    /// The end of the run of consecutive records (chunks of `cs` bytes) that starts
    /// with the record at `addr`, or `addr` when there is none there.
    pub fn run_end(&self, addr: u64, cs: u64) -> std::io::Result<u64> {
        let Some(first) = self.block_of(addr) else {
            return Ok(addr);
        };
        let mut want = addr;
        for b in first..self.fences.len() {
            let recs = self.block(b)?;
            let start = recs.partition_point(|r| r.addr < want);
            for r in &recs[start..] {
                if r.addr != want {
                    return Ok(want);
                }
                want += cs;
            }
        }
        Ok(want)
    }
}

/// Key of a decoded chunk in the cache: (the image source, the session's index in
/// its volume's chain, the address). Chunks a session stores are the same bytes in
/// every image whose chain holds that session.
pub type CacheKey = (u32, u32, u64);

/// Decoded chunks, least recently used dropped first once their bytes pass the limit.
pub struct ChunkCache {
    limit: u64,
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<CacheKey, (Arc<Vec<u8>>, u64)>,
    order: BTreeMap<u64, CacheKey>,
    bytes: u64,
    tick: u64,
}

impl ChunkCache {
    /// A cache holding at most `limit` bytes of decoded chunks (0: none).
    pub fn new(limit: u64) -> ChunkCache {
        ChunkCache {
            limit,
            inner: Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &CacheKey) -> Option<Arc<Vec<u8>>> {
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        let (data, old) = {
            let (d, t) = c.map.get_mut(key)?;
            let old = *t;
            *t = tick;
            (d.clone(), old)
        };
        c.order.remove(&old);
        c.order.insert(tick, *key);
        Some(data)
    }

    pub fn put(&self, key: CacheKey, data: Arc<Vec<u8>>) {
        let len = data.len() as u64;
        if len > self.limit {
            return;
        }
        let mut c = self.lock();
        c.tick += 1;
        let tick = c.tick;
        if let Some((old, t)) = c.map.insert(key, (data, tick)) {
            c.bytes -= old.len() as u64;
            c.order.remove(&t);
        }
        c.order.insert(tick, key);
        c.bytes += len;
        while c.bytes > self.limit {
            let Some((_, k)) = c.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = c.map.remove(&k) {
                c.bytes -= d.len() as u64;
            }
        }
    }

    /// Bytes of decoded chunks held.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }
}

/// A session of a volume, readable at any offset.
pub struct SessionImage {
    vol: Arc<VolumeArchive>,
    chain: Vec<SessionInfo>,
    codecs: Vec<Arc<dyn ChunkCodec>>,
    index: Index,
    cache: Arc<ChunkCache>,
    /// This image's volume, for cache keys.
    source: u32,
    size: u64,
    chunksize: u64,
    ahead: Mutex<Ahead>,
}

/// Where the sequential reader is, and how far the read-ahead got.
#[derive(Default)]
struct Ahead {
    /// The end of the last read.
    last_end: u64,
    /// Everything before this was fetched (or is being fetched) ahead.
    fetched_to: u64,
    /// A read-ahead is running.
    running: bool,
}

impl SessionImage {
    /// The image of `chain`'s last session (`chain` as [`VolumeArchive::chain`] gives
    /// it). Its index is built now, in `tmpdir`; decoded chunks go in `cache` under
    /// `source` (one number per volume sharing the cache).
    pub fn open(
        vol: Arc<VolumeArchive>,
        chain: Vec<SessionInfo>,
        cache: Arc<ChunkCache>,
        source: u32,
        tmpdir: &Path,
    ) -> Result<SessionImage> {
        let last = chain
            .last()
            .ok_or_else(|| Error::Msg(format!("{}: no session to read", vol.label())))?;
        let size = last.volsize;
        let chunksize = last.chunksize.max(1);
        let index = Index::build(&vol, &chain, tmpdir)?;
        let codecs = chain.iter().map(|i| vol.codec(i)).collect();
        Ok(SessionImage {
            vol,
            chain,
            codecs,
            index,
            cache,
            source,
            size,
            chunksize,
            ahead: Mutex::new(Ahead::default()),
        })
    }

    /// The volume's size at this session: the image's length.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunksize(&self) -> u64 {
        self.chunksize
    }

    /// The session this is the image of.
    pub fn session(&self) -> &SessionInfo {
        // `open` refuses an empty chain.
        &self.chain[self.chain.len() - 1]
    }

    /// Non-zero chunks of the view.
    pub fn chunks(&self) -> u64 {
        self.index.len()
    }

    /// Read `len` bytes at `off` (fewer at the end of the image, none past it). A
    /// reader that goes on where its last read ended gets the chunks after it read
    /// ahead in the background.
    pub fn read_at(self: &Arc<Self>, off: u64, len: usize) -> Result<Vec<u8>> {
        let end = off.saturating_add(len as u64).min(self.size);
        if off >= end {
            return Ok(Vec::new());
        }
        self.read_ahead(off, end);
        let mut out = vec![0u8; (end - off) as usize];
        let cs = self.chunksize;
        let mut want: Vec<(u64, Rec)> = Vec::new();
        let mut have: Vec<(u64, Arc<Vec<u8>>)> = Vec::new();
        let mut addr = off / cs * cs;
        while addr < end {
            if let Some(r) = self.index.get(addr).at("the image's index")? {
                match self.cache.get(&self.key(&r)) {
                    Some(d) => have.push((addr, d)),
                    None => want.push((addr, r)),
                }
            }
            addr += cs;
        }
        have.extend(self.fetch(&want)?);
        for (addr, data) in have {
            // The part of the chunk [addr, addr+len) that falls in [off, end).
            let from = addr.max(off);
            let to = (addr + cs).min(end);
            let (a, b) = ((from - addr) as usize, (to - addr) as usize);
            let b_have = b.min(data.len());
            if a < b_have {
                let dst = (from - off) as usize;
                out[dst..dst + (b_have - a)].copy_from_slice(&data[a..b_have]);
            }
        }
        Ok(out)
    }

    /// After a read of `[off, end)`: when it follows the last one (within the window,
    /// as the kernel's requests may come out of order), fetch the chunks of the next
    /// window in the background unless they are already on their way.
    fn read_ahead(self: &Arc<Self>, off: u64, end: u64) {
        let (from, to) = {
            let mut a = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            let sequential = off <= a.last_end.saturating_add(READ_AHEAD)
                && off.saturating_add(READ_AHEAD) >= a.last_end
                && a.last_end > 0;
            a.last_end = a.last_end.max(end);
            if off < a.last_end.saturating_sub(2 * READ_AHEAD) {
                // Jumped back: start over from here.
                a.last_end = end;
                a.fetched_to = 0;
            }
            if !sequential || a.running || a.fetched_to >= end.saturating_add(READ_AHEAD / 2) {
                return;
            }
            let from = a
                .fetched_to
                .max(end.div_ceil(self.chunksize) * self.chunksize);
            let to = (from + READ_AHEAD).min(self.size);
            if from >= to {
                return;
            }
            a.fetched_to = to;
            a.running = true;
            (from, to)
        };
        let me = self.clone();
        rayon::spawn(move || {
            me.fetch_range(from, to);
            me.ahead.lock().unwrap_or_else(|p| p.into_inner()).running = false;
        });
    }

    /// Fetch into the cache the chunks of `[from, to)` it does not hold. Failures are
    /// left to the read that needs the chunk (it says them).
    fn fetch_range(&self, from: u64, to: u64) {
        let mut want = Vec::new();
        let mut addr = from;
        while addr < to {
            if let Ok(Some(r)) = self.index.get(addr) {
                if self.cache.get(&self.key(&r)).is_none() {
                    want.push((addr, r));
                }
            }
            addr += self.chunksize;
            if want.len() == AHEAD_BATCH || (addr >= to && !want.is_empty()) {
                let _ = self.fetch(&want);
                want.clear();
            }
        }
    }

    fn key(&self, r: &Rec) -> CacheKey {
        (self.source, r.session, r.addr)
    }

    /// Read, decode and check the chunks `want`, one batch per session, decoded in
    /// parallel; each goes into the cache.
    fn fetch(&self, want: &[(u64, Rec)]) -> Result<Vec<(u64, Arc<Vec<u8>>)>> {
        if want.is_empty() {
            return Ok(Vec::new());
        }
        let mut sessions: Vec<u32> = want.iter().map(|(_, r)| r.session).collect();
        sessions.sort_unstable();
        sessions.dedup();
        let mut stored = Vec::with_capacity(want.len());
        for s in sessions {
            let info = self.chain.get(s as usize).ok_or_else(|| {
                Error::Msg(format!(
                    "{}: session index {s} out of range",
                    self.vol.label()
                ))
            })?;
            let recs: Vec<Rec> = want
                .iter()
                .filter(|(_, r)| r.session == s)
                .map(|(_, r)| *r)
                .collect();
            let addrs: Vec<u64> = recs.iter().map(|r| r.addr).collect();
            for (r, got) in recs
                .into_iter()
                .zip(self.vol.read_stored_batch(info, &addrs))
            {
                stored.push((r, got?));
            }
        }
        let decode = |(r, bytes): (Rec, Vec<u8>)| -> Result<(u64, Arc<Vec<u8>>)> {
            let info = &self.chain[r.session as usize];
            let codec = &*self.codecs[r.session as usize];
            let data = self
                .vol
                .decode_with(codec, info, r.addr, bytes)
                .map_err(Error::Msg)?;
            if codec.identify(&data) != r.hash {
                return Err(Error::Msg(format!(
                    "SHA-256 mismatch in {}",
                    self.vol.chunk_location(&info.session, r.addr)
                )));
            }
            let data = Arc::new(data);
            self.cache.put(self.key(&r), data.clone());
            Ok((r.addr, data))
        };
        if stored.len() == 1 {
            stored.into_iter().map(decode).collect()
        } else {
            stored.into_par_iter().map(decode).collect()
        }
    }

    /// `SEEK_DATA`: the first offset at or after `off` that holds data, or `None`
    /// when only holes follow (or `off` is past the end).
    pub fn next_data(&self, off: u64) -> Result<Option<u64>> {
        if off >= self.size {
            return Ok(None);
        }
        let cs = self.chunksize;
        let chunk = off / cs * cs;
        let next = self.index.at_or_after(chunk).at("the image's index")?;
        Ok(match next {
            Some(r) if r.addr == chunk => Some(off),
            Some(r) if r.addr < self.size => Some(r.addr),
            _ => None,
        })
    }

    /// `SEEK_HOLE`: the first offset at or after `off` in a hole; the end of the image
    /// counts as one. `None` when `off` is past the end.
    pub fn next_hole(&self, off: u64) -> Result<Option<u64>> {
        if off >= self.size {
            return Ok(None);
        }
        let cs = self.chunksize;
        let chunk = off / cs * cs;
        let end = self.index.run_end(chunk, cs).at("the image's index")?;
        Ok(Some(if end == chunk {
            off
        } else {
            end.min(self.size)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_drops_least_recently_used_past_its_limit() {
        let c = ChunkCache::new(300);
        for i in 0..3u64 {
            c.put((0, 0, i), Arc::new(vec![i as u8; 100]));
        }
        assert_eq!(c.bytes(), 300);
        // Touch 0: 1 is now the oldest.
        assert!(c.get(&(0, 0, 0)).is_some());
        c.put((0, 0, 3), Arc::new(vec![3; 100]));
        assert_eq!(c.bytes(), 300);
        assert!(c.get(&(0, 0, 1)).is_none());
        assert!(c.get(&(0, 0, 0)).is_some());
        assert!(c.get(&(0, 0, 2)).is_some());
        // Larger than the whole cache: not kept.
        c.put((0, 0, 9), Arc::new(vec![0; 301]));
        assert!(c.get(&(0, 0, 9)).is_none());
        assert_eq!(c.bytes(), 300);
    }

    #[test]
    fn record_round_trips() {
        let r = Rec {
            addr: 0x1234_5678_9abc,
            session: 7,
            hash: [5; 32],
        };
        let mut b = [0xffu8; REC];
        r.encode(&mut b);
        assert_eq!(Rec::decode(&b), r);
    }
}
