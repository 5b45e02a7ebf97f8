//! The member index of a tar session in an encrypted archive: sealed (kind
//! `tar-index`, bound to the session), and read without opening it whole.
//!
//! Its plaintext is the records of the plain index, then a footer (the writer learns
//! the counts and the offsets of the manifest and info members last, and a sealed file
//! cannot be patched at its start):
//!
//! ```text
//! offset size
//!      0  24n  records sorted by address: address, content offset, content length (u64 LE)
//!    24n    8  magic "SPBKTIX2"
//!  24n+8    8  number n of chunk records, u64 LE
//! 24n+16    8  offset of the manifest member's content in the tar
//! 24n+24    8  its length
//! 24n+32    8  offset of the info member's content
//! 24n+40    8  its length
//! 24n+48   16  reserved, zero
//! ```
//!
//! Opening the index reads it once, front to back, opening each segment in turn: every
//! record is checked against the tar as a plain index is, and only the first address
//! of each 1 MiB segment is kept (the fences: 8 bytes per MiB of index). A lookup
//! binary-searches the fences and opens the one segment (two, for a record across a
//! boundary) that holds the record; the last few segments opened are kept, so a walk
//! in address order opens each segment about once.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{le, MemberLayout, HEADER, RECORD};
use crate::archive_fs::{ArchiveFs, FileWriter, SharedFs};
use crate::crypto::envelope::{overhead, SegmentOpener, PREFIX, SEGMENT};
use crate::crypto::{ArchiveKeys, Place, SealWriter};
use crate::error::{FormatError, IndexFault, IoContext, Result};
use crate::limits;

/// Magic of a sealed index's footer (the 2 is format 2).
pub const SEALED_MAGIC: &[u8; 8] = b"SPBKTIX2";
/// Bytes of the footer (the plain index's header, at the end).
const FOOTER: usize = HEADER;
/// Segments kept opened.
const CACHE: usize = 4;
/// The smallest room a chunk member takes in a tar: its header and one block.
const MIN_MEMBER: u64 = 1024;

/// The record index of the first record that starts in segment `k`.
fn first_record_in(k: u64) -> u64 {
    (k * SEGMENT as u64).div_ceil(RECORD as u64)
}

/// A sealed member index, checked against its tar when opened.
pub struct SealedTarIndex {
    fs: SharedFs,
    path: PathBuf,
    opener: SegmentOpener,
    count: usize,
    manifest: (u64, u64),
    info: (u64, u64),
    /// The address of the first record that starts in each segment that holds one.
    fences: Vec<u64>,
    /// Segments opened recently, the most recent last.
    cache: Mutex<Vec<(u64, Arc<Vec<u8>>)>>,
    /// Segments opened since the index was (for tests of the cache).
    opened: AtomicU64,
}

impl std::fmt::Debug for SealedTarIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedTarIndex")
            .field("path", &self.path)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

/// The plaintext of a sealed object, segment after segment, from a sequential reader
/// of it.
struct Segments<'a> {
    r: Box<dyn Read + Send>,
    opener: &'a SegmentOpener,
    next: u64,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for Segments<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            let Some((_, len)) = self.opener.segment_range(self.next) else {
                return Ok(0);
            };
            let mut sealed = vec![0u8; len];
            self.r.read_exact(&mut sealed).map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is cut (segment {})", self.opener.what(), self.next),
                ),
                _ => e,
            })?;
            self.buf = self
                .opener
                .open_segment(self.next, sealed)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            self.pos = 0;
            self.next += 1;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl SealedTarIndex {
    /// Open, authenticate and check the sealed index at `path` of tar session
    /// `session`, whose tar is `tar_len` bytes long, read through `fs`.
    pub fn open(
        fs: SharedFs,
        path: &Path,
        keys: &ArchiveKeys,
        session: &str,
        tar_len: u64,
    ) -> Result<SealedTarIndex> {
        let fault = |fault: IndexFault| FormatError::TarIndex {
            path: path.to_path_buf(),
            fault,
        };
        let sealed_len = fs.metadata(path).at(path)?.len;
        let prefix = fs.read_at(path, 0, PREFIX).at(path)?;
        let opener = SegmentOpener::new(keys, Place::TarIndex { session }, &prefix, sealed_len)
            .map_err(|e| fault(IndexFault::Sealed(e.to_string())))?;
        let plen = opener.plain_len();
        if plen < FOOTER as u64 {
            return Err(fault(IndexFault::TooShort { len: plen }));
        }
        let body = plen - FOOTER as u64;
        let count = body / RECORD as u64;
        if body % RECORD as u64 != 0 {
            return Err(fault(IndexFault::Count { count, len: plen }));
        }
        if count > tar_len / MIN_MEMBER {
            return Err(fault(IndexFault::TooMany { count, tar_len }));
        }
        let read_fault = |e: io::Error| match e.kind() {
            io::ErrorKind::InvalidData => fault(IndexFault::Sealed(e.to_string())),
            _ => FormatError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        };
        let mut r = fs.open(path).at(path)?;
        let mut skip = [0u8; PREFIX];
        r.read_exact(&mut skip).map_err(read_fault)?;
        let mut seq = Segments {
            r,
            opener: &opener,
            next: 0,
            buf: Vec::new(),
            pos: 0,
        };
        let max_info = limits::MAX_INFO_BYTES + overhead(limits::MAX_INFO_BYTES);
        let mut layout = MemberLayout::new(tar_len, limits::max_stored_any(), max_info);
        let mut fences = Vec::new();
        let mut rec = [0u8; RECORD];
        for i in 0..count {
            seq.read_exact(&mut rec).map_err(read_fault)?;
            let (addr, off, len) = (le(&rec, 0), le(&rec, 8), le(&rec, 16));
            layout.chunk(i, addr, off, len).map_err(fault)?;
            if i * RECORD as u64 / SEGMENT as u64 == fences.len() as u64 {
                fences.push(addr);
            }
        }
        let mut foot = [0u8; FOOTER];
        seq.read_exact(&mut foot).map_err(read_fault)?;
        if &foot[..8] != SEALED_MAGIC {
            return Err(fault(IndexFault::Magic));
        }
        if foot[48..].iter().any(|&x| x != 0) {
            return Err(fault(IndexFault::Reserved));
        }
        if le(&foot, 8) != count {
            return Err(fault(IndexFault::Count {
                count: le(&foot, 8),
                len: plen,
            }));
        }
        let manifest = (le(&foot, 16), le(&foot, 24));
        let info = (le(&foot, 32), le(&foot, 40));
        layout.manifest(manifest.0, manifest.1).map_err(fault)?;
        layout.info(info.0, info.1).map_err(fault)?;
        let count =
            usize::try_from(count).map_err(|_| fault(IndexFault::TooMany { count, tar_len }))?;
        Ok(SealedTarIndex {
            fs,
            path: path.to_path_buf(),
            opener,
            count,
            manifest,
            info,
            fences,
            cache: Mutex::new(Vec::with_capacity(CACHE)),
            opened: AtomicU64::new(0),
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn manifest(&self) -> (u64, u64) {
        self.manifest
    }

    pub fn info(&self) -> (u64, u64) {
        self.info
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Segments opened by lookups and record reads so far (the pass that checked the
    /// index when it was opened not counted).
    pub fn segments_opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// Bytes of the fence list kept in memory.
    pub fn fence_bytes(&self) -> usize {
        self.fences.len() * 8
    }

    fn fault(&self, fault: IndexFault) -> FormatError {
        FormatError::TarIndex {
            path: self.path.clone(),
            fault,
        }
    }

    /// The plaintext of segment `k`, from the cache or opened.
    fn segment(&self, k: u64) -> Result<Arc<Vec<u8>>> {
        let poisoned = || FormatError::Other("tar index cache poisoned".into());
        {
            let mut c = self.cache.lock().map_err(|_| poisoned())?;
            if let Some(at) = c.iter().position(|(i, _)| *i == k) {
                let hit = c.remove(at);
                let seg = hit.1.clone();
                c.push(hit);
                return Ok(seg);
            }
        }
        let (off, len) = self.opener.segment_range(k).ok_or_else(|| {
            self.fault(IndexFault::Sealed(format!(
                "{}: no segment {k}",
                self.opener.what()
            )))
        })?;
        let sealed = self.fs.read_at(&self.path, off, len).at(&self.path)?;
        if sealed.len() != len {
            return Err(self.fault(IndexFault::Sealed(format!(
                "{} was cut since it was opened (segment {k})",
                self.opener.what()
            ))));
        }
        let plain = self
            .opener
            .open_segment(k, sealed)
            .map_err(|e| self.fault(IndexFault::Sealed(e.to_string())))?;
        self.opened.fetch_add(1, Ordering::Relaxed);
        let seg = Arc::new(plain);
        let mut c = self.cache.lock().map_err(|_| poisoned())?;
        if c.len() >= CACHE {
            c.remove(0);
        }
        c.push((k, seg.clone()));
        Ok(seg)
    }

    /// The 24 bytes of record `i`, from segment `first` (already opened: the one
    /// where the record starts) and the next one when it runs across.
    fn record_bytes(&self, i: u64, first: Option<(u64, &[u8])>) -> Result<[u8; RECORD]> {
        let mut out = [0u8; RECORD];
        let mut at = i * RECORD as u64;
        let mut got = 0;
        while got < RECORD {
            let k = at / SEGMENT as u64;
            let within = (at % SEGMENT as u64) as usize;
            let held;
            let seg: &[u8] = match first {
                Some((fk, s)) if fk == k => s,
                _ => {
                    held = self.segment(k)?;
                    &held[..]
                }
            };
            if within >= seg.len() {
                return Err(self.fault(IndexFault::Sealed(format!(
                    "{}: record {i} is past its end",
                    self.opener.what()
                ))));
            }
            let n = (RECORD - got).min(seg.len() - within);
            out[got..got + n].copy_from_slice(&seg[within..within + n]);
            got += n;
            at += n as u64;
        }
        Ok(out)
    }

    fn record_in(&self, i: u64, first: Option<(u64, &[u8])>) -> Result<(u64, u64, u64)> {
        let b = self.record_bytes(i, first)?;
        Ok((le(&b, 0), le(&b, 8), le(&b, 16)))
    }

    /// Record `i` (`i < len()`): (address, content offset, length).
    pub fn record(&self, i: usize) -> Result<(u64, u64, u64)> {
        if i >= self.count {
            return Err(FormatError::Other(format!(
                "{}: no record {i} (it holds {})",
                self.path.display(),
                self.count
            )));
        }
        self.record_in(i as u64, None)
    }

    /// Where the chunk at `addr` is: the fences say which segment holds its record,
    /// a binary search in that segment finds it.
    pub fn lookup(&self, addr: u64) -> Result<Option<(u64, u64)>> {
        let k = self.fences.partition_point(|&f| f <= addr);
        let Some(k) = k.checked_sub(1) else {
            return Ok(None);
        };
        let k = k as u64;
        let mut lo = first_record_in(k);
        let mut hi = if k + 1 < self.fences.len() as u64 {
            first_record_in(k + 1)
        } else {
            self.count as u64
        };
        let seg = self.segment(k)?;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let (a, off, len) = self.record_in(mid, Some((k, &seg)))?;
            match a.cmp(&addr) {
                std::cmp::Ordering::Equal => return Ok(Some((off, len))),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        Ok(None)
    }
}

/// Writes a sealed index while the tar is written: records as they come, the footer
/// last, sealed as it goes (nothing of it is ever on disk in the clear).
pub struct SealedTarIndexWriter {
    out: SealWriter<Box<dyn FileWriter>>,
    path: PathBuf,
    count: u64,
    last: Option<u64>,
}

impl SealedTarIndexWriter {
    /// Create the index of tar session `session` at `path` through `fs`.
    pub fn create(
        fs: &dyn ArchiveFs,
        path: &Path,
        keys: &ArchiveKeys,
        session: &str,
    ) -> Result<SealedTarIndexWriter> {
        let f = fs.create(path).at(path)?;
        let out = SealWriter::new(keys, Place::TarIndex { session }, f)
            .map_err(|e| FormatError::Other(format!("{}: {e}", path.display())))?;
        Ok(SealedTarIndexWriter {
            out,
            path: path.to_path_buf(),
            count: 0,
            last: None,
        })
    }

    pub fn push(&mut self, addr: u64, off: u64, len: u64) -> Result<()> {
        let rec = super::next_record(&mut self.last, addr, off, len)?;
        self.out.write_all(&rec).at(&self.path)?;
        self.count += 1;
        Ok(())
    }

    /// Write the footer and the last segment, and sync.
    pub fn finish(mut self, manifest: (u64, u64), info: (u64, u64)) -> Result<()> {
        let mut f = [0u8; FOOTER];
        f[..8].copy_from_slice(SEALED_MAGIC);
        f[8..16].copy_from_slice(&self.count.to_le_bytes());
        f[16..24].copy_from_slice(&manifest.0.to_le_bytes());
        f[24..32].copy_from_slice(&manifest.1.to_le_bytes());
        f[32..40].copy_from_slice(&info.0.to_le_bytes());
        f[40..48].copy_from_slice(&info.1.to_le_bytes());
        self.out.write_all(&f).at(&self.path)?;
        let w = self.out.finish().at(&self.path)?;
        w.finish(true).at(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::TAG;
    use crate::tarsession::TarSession;
    use std::os::unix::fs::FileExt;

    const SESSION: &str = "20260101-000000";
    /// Records enough for an index of a little more than 3 MiB: four segments.
    const N: u64 = 140_000;

    fn keys() -> ArchiveKeys {
        ArchiveKeys::for_tests("arch")
    }

    /// Chunk `i` is at address 4096·i·3 (every third chunk), its member 512 bytes
    /// at 512 + 1024·i; then the manifest and the info.
    fn rec(i: u64) -> (u64, u64, u64) {
        (i * 3 * 4096, 512 + i * 1024, 512)
    }
    const MANIFEST: (u64, u64) = (512 + N * 1024, 100);
    const INFO: (u64, u64) = (1536 + N * 1024, 200);
    const TAR_LEN: u64 = 2048 + N * 1024;

    /// A sparse tar whose members hold their address in their first 8 bytes, and its
    /// sealed index, in `dir`.
    fn session(dir: &Path, k: &ArchiveKeys) -> (PathBuf, PathBuf) {
        let tar = dir.join("s.tar");
        let ix = dir.join("s.tar.index");
        let f = std::fs::File::create(&tar).unwrap();
        f.set_len(TAR_LEN).unwrap();
        let mut w =
            SealedTarIndexWriter::create(&crate::archive_fs::LocalFs, &ix, k, SESSION).unwrap();
        for i in 0..N {
            let (a, o, l) = rec(i);
            f.write_all_at(&a.to_le_bytes(), o).unwrap();
            w.push(a, o, l).unwrap();
        }
        w.finish(MANIFEST, INFO).unwrap();
        (tar, ix)
    }

    fn open(ix: &Path, k: &ArchiveKeys) -> Result<SealedTarIndex> {
        SealedTarIndex::open(crate::archive_fs::local(), ix, k, SESSION, TAR_LEN)
    }

    fn fault_of(r: Result<SealedTarIndex>) -> IndexFault {
        match r {
            Err(FormatError::TarIndex { fault, .. }) => fault,
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn lookups_across_four_segments() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let (tar, ixp) = session(dir.path(), &k);
        let plain = N * RECORD as u64 + FOOTER as u64;
        assert_eq!(
            std::fs::metadata(&ixp).unwrap().len(),
            plain + overhead(plain)
        );
        let ix = open(&ixp, &k).unwrap();
        assert_eq!(ix.len(), N as usize);
        assert_eq!((ix.manifest(), ix.info()), (MANIFEST, INFO));
        assert_eq!(ix.opener.segments(), 4);
        assert_eq!(ix.fence_bytes(), 4 * 8);
        assert_eq!(ix.segments_opened(), 0);
        // Every record where it is, in order: each segment opened once (records that
        // run across a boundary included).
        for i in 0..N {
            let (a, o, l) = rec(i);
            assert_eq!(ix.lookup(a).unwrap(), Some((o, l)), "record {i}");
        }
        assert_eq!(ix.segments_opened(), 4);
        for i in (0..N).step_by(997) {
            assert_eq!(ix.record(i as usize).unwrap(), rec(i));
        }
        // The records on each boundary, read alone.
        for seg in 1..4u64 {
            let i = seg * SEGMENT as u64 / RECORD as u64;
            assert_eq!(ix.record(i as usize).unwrap(), rec(i), "boundary {seg}");
            assert_eq!(ix.lookup(rec(i).0).unwrap(), Some((rec(i).1, rec(i).2)));
        }
        // Addresses that are not there: between records, before, after.
        for a in [1, 4096, 3 * 4096 * 50_000 + 4096, 3 * 4096 * N, u64::MAX] {
            assert_eq!(ix.lookup(a).unwrap(), None, "{a}");
        }
        assert!(ix.record(N as usize).is_err());
        // Far apart lookups open what they need, no more than one segment each.
        let before = ix.segments_opened();
        for i in [N - 1, 0, N / 2, 3, N - 2] {
            assert_eq!(ix.lookup(rec(i).0).unwrap(), Some((rec(i).1, rec(i).2)));
        }
        assert!(ix.segments_opened() - before <= 5);

        // Through the tar session: each chunk member read by its lookup holds its
        // address.
        let t = TarSession::open_sealed(&tar, &ixp, &k, SESSION).unwrap();
        for i in (0..N).step_by(101).chain([N - 1]) {
            let (a, _, l) = rec(i);
            let b = t.read_chunk(a, l).unwrap();
            assert_eq!(b.len() as u64, l);
            assert_eq!(
                u64::from_le_bytes(b[..8].try_into().unwrap()),
                a,
                "chunk {i}"
            );
        }
        assert!(t.read_chunk(4096, 512).is_err());
        // Another session's key, and a tar shorter than the index says.
        assert!(TarSession::open_sealed(&tar, &ixp, &k, "20260101-000001").is_err());
        std::fs::OpenOptions::new()
            .write(true)
            .open(&tar)
            .unwrap()
            .set_len(INFO.0 + 100)
            .unwrap();
        match TarSession::open_sealed(&tar, &ixp, &k, SESSION) {
            Err(FormatError::TarIndex {
                fault: IndexFault::PastEnd { member, .. },
                ..
            }) => assert_eq!(member, "info member"),
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn a_damaged_sealed_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let (_, ixp) = session(dir.path(), &k);
        let good = std::fs::read(&ixp).unwrap();
        let put = |b: &[u8]| std::fs::write(&ixp, b).unwrap();
        let seg = SEGMENT + TAG;
        // A byte flipped in the third segment.
        let mut b = good.clone();
        b[PREFIX + 2 * seg + 77] ^= 1;
        put(&b);
        let f = fault_of(open(&ixp, &k));
        assert!(
            f.to_string().contains(&format!(
                "tar index of session {SESSION} (segment 2) failed"
            )),
            "{f}"
        );
        // Two segments swapped.
        let mut b = good.clone();
        b[PREFIX..PREFIX + 2 * seg].rotate_left(seg);
        put(&b);
        assert!(matches!(fault_of(open(&ixp, &k)), IndexFault::Sealed(_)));
        // Cut after a whole segment (no sealed length), and inside one.
        put(&good[..PREFIX + 3 * seg]);
        assert!(matches!(fault_of(open(&ixp, &k)), IndexFault::Sealed(_)));
        // (104 bytes: a plaintext length that records and footer could fill.)
        put(&good[..PREFIX + 3 * seg + 104]);
        assert!(matches!(fault_of(open(&ixp, &k)), IndexFault::Sealed(_)));
        put(&good[..PREFIX + 3 * seg + 100]);
        assert!(matches!(fault_of(open(&ixp, &k)), IndexFault::Count { .. }));
        put(&good[..10]);
        assert!(open(&ixp, &k).is_err());
        // Whole again: opens; then changed under an open index, a later lookup fails
        // rather than giving another index's numbers.
        put(&good);
        let ix = open(&ixp, &k).unwrap();
        let mut b = good.clone();
        b[PREFIX + 3 * seg + 5] ^= 1;
        put(&b);
        assert!(ix.lookup(rec(N - 1).0).is_err());
        assert!(ix.record(0).is_ok());
        put(&good[..PREFIX + 2 * seg]);
        assert!(ix.record(N as usize - 1).is_err());
    }

    #[test]
    fn sealed_records_are_checked_against_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let k = keys();
        let ixp = dir.path().join("x.tar.index");
        let write = |recs: &[(u64, u64, u64)], m: (u64, u64), i: (u64, u64)| {
            let mut w =
                SealedTarIndexWriter::create(&crate::archive_fs::LocalFs, &ixp, &k, SESSION)
                    .unwrap();
            for &(a, o, l) in recs {
                w.push(a, o, l).unwrap();
            }
            w.finish(m, i).unwrap();
        };
        let open =
            |tar_len| SealedTarIndex::open(crate::archive_fs::local(), &ixp, &k, SESSION, tar_len);
        write(
            &[(0, 512, 1000), (65536, 2048, 700)],
            (3584, 166),
            (4608, 400),
        );
        assert_eq!(open(10240).unwrap().len(), 2);
        assert_eq!(
            fault_of(open(3700)),
            IndexFault::PastEnd {
                member: "manifest member".into(),
                off: 3584,
                len: 166,
                tar_len: 3700
            }
        );
        // More records than the tar can hold members.
        assert_eq!(
            fault_of(open(1500)),
            IndexFault::TooMany {
                count: 2,
                tar_len: 1500
            }
        );
        write(
            &[(0, 512, 1000), (65536, 1024, 700)],
            (3584, 166),
            (4608, 400),
        );
        assert_eq!(
            fault_of(open(10240)),
            IndexFault::Overlap {
                member: "record 1 (chunk x0000000000010000)".into()
            }
        );
        // An info larger than a sealed info can be.
        write(&[], (512, 10), (1024, 1 << 20));
        assert!(matches!(
            fault_of(open(1 << 21)),
            IndexFault::TooLarge { .. }
        ));
        // The writer refuses records out of order.
        let mut w =
            SealedTarIndexWriter::create(&crate::archive_fs::LocalFs, &ixp, &k, SESSION).unwrap();
        w.push(5, 512, 1).unwrap();
        assert!(w.push(5, 2048, 1).is_err());
    }
}
