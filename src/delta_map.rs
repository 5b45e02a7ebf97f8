//! The persistent delta map: one bit per archive chunk of a volume, set when the chunk
//! may differ between the source's reference snapshot (`tick`) and the archive's latest
//! session. `monitor` ORs changes in; `send` reads only marked chunks and clears the map
//! once its session is committed.
//!
//! On disk (one per destination and stream chain: `<metadir>/<volume>/deltamap`,
//! `.../dest/<NAME>/deltamap`, `.../streams/<chain>/deltamap`; see
//! [`crate::metadir`]), memory-mapped:
//!
//! ```text
//! offset size
//!      0    8  magic "SPBKMAP1" (the 1 is the format version)
//!      8    8  chunk size in bytes, u64 little-endian
//!     16    8  number of chunks covered, u64 LE
//!     24   16  session ID the map is relative to, ASCII, NUL padded ("" = none yet)
//!     40    1  flags: bit 0 = "rescan": the snapshot layer could not tell what
//!                changed, so the next send compares every data chunk by hash
//!     41   23  reserved, zero
//!     64    …  bitmap: bit (i % 8) of byte (i / 8) is chunk i
//! ```
//!
//! Setting bits is idempotent, so a crash part way through an update leaves a subset of
//! the marks, and redoing the update (the snapshots were not yet rotated) completes it.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;
use sparsebak_format::limits;

const MAGIC: &[u8; 8] = b"SPBKMAP1";
const HEADER: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum DeltaMapError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a delta map or damaged ({reason}); run `sparsebak resync`")]
    Bad { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, DeltaMapError>;

/// A memory-mapped delta map.
pub struct DeltaMap {
    path: PathBuf,
    /// `None` for a scratch map in anonymous memory.
    file: Option<File>,
    mmap: MmapMut,
    chunksize: u64,
    nchunks: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DeltaMapError + '_ {
    move |source| DeltaMapError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl DeltaMap {
    fn map_len(nchunks: u64) -> u64 {
        HEADER as u64 + nchunks.div_ceil(8)
    }

    /// An empty map in anonymous memory, for one monitor step's delta before it is ORed
    /// into the persistent maps: it never needs to be durable, so no file and no sync.
    pub fn scratch(chunksize: u64, nchunks: u64) -> Result<DeltaMap> {
        let path = PathBuf::from("(scratch delta map)");
        let len = Self::map_len(nchunks) as usize;
        let mut mmap = MmapMut::map_anon(len).map_err(io(&path))?;
        mmap[..8].copy_from_slice(MAGIC);
        mmap[8..16].copy_from_slice(&chunksize.to_le_bytes());
        mmap[16..24].copy_from_slice(&nchunks.to_le_bytes());
        Ok(DeltaMap {
            path,
            file: None,
            mmap,
            chunksize,
            nchunks,
        })
    }

    /// Create (or replace) an empty map at `path`, durably.
    pub fn create(path: &Path, chunksize: u64, nchunks: u64) -> Result<DeltaMap> {
        let tmp = path.with_extension("tmp");
        {
            let f = File::create(&tmp).map_err(io(&tmp))?;
            f.set_len(Self::map_len(nchunks)).map_err(io(&tmp))?;
            let mut head = [0u8; HEADER];
            head[..8].copy_from_slice(MAGIC);
            head[8..16].copy_from_slice(&chunksize.to_le_bytes());
            head[16..24].copy_from_slice(&nchunks.to_le_bytes());
            std::os::unix::fs::FileExt::write_all_at(&f, &head, 0).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        std::fs::rename(&tmp, path).map_err(io(path))?;
        crate::durable::sync_parent(path).map_err(io(path))?;
        Self::open(path)
    }

    /// Open an existing map, checking its header.
    pub fn open(path: &Path) -> Result<DeltaMap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        let bad = |reason: &str| DeltaMapError::Bad {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        };
        if len < HEADER as u64 {
            return Err(bad("shorter than its header"));
        }
        // SAFETY: the file is ours (metadir, under the volume lock); nobody truncates it
        // while mapped.
        let mmap = unsafe { MmapMut::map_mut(&file) }.map_err(io(path))?;
        if &mmap[..8] != MAGIC {
            return Err(bad("bad magic"));
        }
        let chunksize = u64::from_le_bytes(mmap[8..16].try_into().unwrap_or_default());
        let nchunks = u64::from_le_bytes(mmap[16..24].try_into().unwrap_or_default());
        if !limits::chunksize_ok(chunksize) {
            return Err(bad(&format!(
                "chunk size {chunksize} is not a power of two from {} to {}",
                limits::MIN_CHUNKSIZE,
                limits::MAX_CHUNKSIZE
            )));
        }
        if nchunks > limits::MAX_VOLSIZE / chunksize {
            return Err(bad(&format!(
                "{nchunks} chunks of {chunksize} bytes are more than the largest volume"
            )));
        }
        if len != Self::map_len(nchunks) {
            return Err(bad(&format!(
                "{nchunks} chunks need {} bytes, the file has {len}",
                Self::map_len(nchunks)
            )));
        }
        Ok(DeltaMap {
            path: path.to_path_buf(),
            file: Some(file),
            mmap,
            chunksize,
            nchunks,
        })
    }

    /// Open an existing map of `chunksize`-byte chunks; a map of another chunk size
    /// (made under another config, or damaged) is refused.
    pub fn open_for(path: &Path, chunksize: u64) -> Result<DeltaMap> {
        let m = Self::open(path)?;
        if m.chunksize != chunksize {
            return Err(DeltaMapError::Bad {
                path: path.to_path_buf(),
                reason: format!(
                    "its chunk size is {}, the volume's is {chunksize}",
                    m.chunksize
                ),
            });
        }
        Ok(m)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn chunksize(&self) -> u64 {
        self.chunksize
    }

    pub fn nchunks(&self) -> u64 {
        self.nchunks
    }

    /// Session the map is relative to ("" before the first send).
    pub fn base_session(&self) -> String {
        let raw = &self.mmap[24..40];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        String::from_utf8_lossy(&raw[..end]).into_owned()
    }

    pub fn set_base_session(&mut self, id: &str) {
        let raw = &mut self.mmap[24..40];
        raw.fill(0);
        let n = id.len().min(16);
        raw[..n].copy_from_slice(&id.as_bytes()[..n]);
    }

    /// Whether the next send must compare every chunk by hash (the snapshot layer lost
    /// track, e.g. an image file was replaced).
    pub fn needs_scan(&self) -> bool {
        self.mmap[40] & 1 != 0
    }

    pub fn set_needs_scan(&mut self, on: bool) {
        if on {
            self.mmap[40] |= 1;
        } else {
            self.mmap[40] &= !1;
        }
    }

    fn bits(&self) -> &[u8] {
        &self.mmap[HEADER..]
    }

    fn bits_mut(&mut self) -> &mut [u8] {
        &mut self.mmap[HEADER..]
    }

    /// Mark chunk `i`. Chunks past the end are ignored (see [`DeltaMap::resize`]).
    pub fn mark(&mut self, i: u64) {
        if i < self.nchunks {
            self.bits_mut()[(i / 8) as usize] |= 1 << (i % 8);
        }
    }

    /// Mark chunks `[start, end)`, whole bytes at a time where possible.
    pub fn mark_chunks(&mut self, start: u64, end: u64) {
        let end = end.min(self.nchunks);
        let mut i = start;
        while i < end && i % 8 != 0 {
            self.mark(i);
            i += 1;
        }
        if i < end {
            let full_end = end - end % 8;
            if full_end > i {
                self.bits_mut()[(i / 8) as usize..(full_end / 8) as usize].fill(0xff);
                i = full_end;
            }
        }
        while i < end {
            self.mark(i);
            i += 1;
        }
    }

    /// Mark every chunk that overlaps the byte range `[offset, offset+len)`.
    pub fn mark_bytes(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let first = offset / self.chunksize;
        let last = (offset + len).div_ceil(self.chunksize);
        self.mark_chunks(first, last);
    }

    pub fn is_marked(&self, i: u64) -> bool {
        i < self.nchunks && self.bits()[(i / 8) as usize] & (1 << (i % 8)) != 0
    }

    /// Number of marked chunks.
    pub fn count(&self) -> u64 {
        self.bits().iter().map(|b| b.count_ones() as u64).sum()
    }

    /// Runs of marked chunks `[start, end)`, in order; skips unmarked bytes and words
    /// quickly, so a sparse map of a huge volume is walked fast.
    pub fn runs(&self) -> Runs<'_> {
        Runs { map: self, next: 0 }
    }

    /// Change the number of chunks covered (volume grown or shrunk). New chunks start
    /// unmarked; callers mark what a size change makes dirty.
    pub fn resize(&mut self, nchunks: u64) -> Result<()> {
        if nchunks == self.nchunks {
            return Ok(());
        }
        self.mmap.flush().map_err(io(&self.path))?;
        // Clear bits past the new end inside the last byte, so a later grow starts clean.
        if nchunks < self.nchunks {
            for i in nchunks..(nchunks.div_ceil(8) * 8).min(self.nchunks) {
                self.bits_mut()[(i / 8) as usize] &= !(1 << (i % 8));
            }
        }
        let Some(file) = self.file.as_ref() else {
            return Err(DeltaMapError::Bad {
                path: self.path.clone(),
                reason: "a scratch map cannot be resized".into(),
            });
        };
        file.set_len(Self::map_len(nchunks))
            .map_err(io(&self.path))?;
        // SAFETY: as in open().
        self.mmap = unsafe { MmapMut::map_mut(file) }.map_err(io(&self.path))?;
        self.mmap[16..24].copy_from_slice(&nchunks.to_le_bytes());
        self.nchunks = nchunks;
        Ok(())
    }

    /// Mark every chunk marked in `other` (same chunk size; chunks past either end are
    /// ignored).
    pub fn or_from(&mut self, other: &DeltaMap) {
        let n = self.nchunks.min(other.nchunks);
        let full = (n / 8) as usize;
        {
            let src = &other.bits()[..full];
            let dst = &mut self.mmap[HEADER..HEADER + full];
            for (d, s) in dst.iter_mut().zip(src) {
                *d |= *s;
            }
        }
        for i in (full as u64 * 8)..n {
            if other.is_marked(i) {
                self.mark(i);
            }
        }
    }

    /// Unmark everything (and drop the rescan flag).
    pub fn clear(&mut self) {
        self.bits_mut().fill(0);
        self.set_needs_scan(false);
    }

    /// Make the map durable.
    pub fn flush(&self) -> Result<()> {
        let Some(file) = self.file.as_ref() else {
            return Ok(());
        };
        self.mmap.flush().map_err(io(&self.path))?;
        file.sync_all().map_err(io(&self.path))
    }
}

/// Iterator over runs of marked chunks.
pub struct Runs<'a> {
    map: &'a DeltaMap,
    next: u64,
}

impl Iterator for Runs<'_> {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        let bits = self.map.bits();
        let n = self.map.nchunks;
        let mut i = self.next;
        // Find the first marked chunk, skipping zero bytes (and 8-byte words).
        while i < n {
            if i % 64 == 0 && i + 64 <= n {
                let b = (i / 8) as usize;
                if bits[b..b + 8].iter().all(|&x| x == 0) {
                    i += 64;
                    continue;
                }
            }
            if i % 8 == 0 && bits[(i / 8) as usize] == 0 {
                i += 8;
                continue;
            }
            if self.map.is_marked(i) {
                break;
            }
            i += 1;
        }
        if i >= n {
            self.next = n;
            return None;
        }
        let start = i;
        while i < n {
            if i % 8 == 0 && i + 8 <= n && bits[(i / 8) as usize] == 0xff {
                i += 8;
                continue;
            }
            if !self.map.is_marked(i) {
                break;
            }
            i += 1;
        }
        self.next = i;
        Some((start, i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_runs_resize_persist() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deltamap");
        let mut m = DeltaMap::create(&p, 65536, 1000).unwrap();
        m.mark_bytes(65536 * 3 + 5, 1); // chunk 3
        m.mark_bytes(65536 * 10 - 1, 2); // chunks 9 and 10
        m.mark_chunks(100, 300);
        m.mark(999);
        m.mark(1000); // ignored: past the end
        assert_eq!(
            m.runs().collect::<Vec<_>>(),
            vec![(3, 4), (9, 11), (100, 300), (999, 1000)]
        );
        assert_eq!(m.count(), 1 + 2 + 200 + 1);
        m.set_base_session("20261123-010203");
        m.flush().unwrap();
        drop(m);
        let mut m = DeltaMap::open(&p).unwrap();
        assert_eq!(m.base_session(), "20261123-010203");
        assert_eq!(m.count(), 204);
        m.resize(200).unwrap();
        assert_eq!(
            m.runs().collect::<Vec<_>>(),
            vec![(3, 4), (9, 11), (100, 200)]
        );
        m.resize(2000).unwrap();
        assert_eq!(m.count(), 1 + 2 + 100);
        m.clear();
        assert_eq!(m.runs().next(), None);
    }

    #[test]
    fn or_from_merges() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = DeltaMap::create(&dir.path().join("a"), 65536, 100).unwrap();
        let mut b = DeltaMap::create(&dir.path().join("b"), 65536, 90).unwrap();
        a.mark(3);
        b.mark_chunks(10, 30);
        b.mark(89);
        a.or_from(&b);
        assert_eq!(
            a.runs().collect::<Vec<_>>(),
            vec![(3, 4), (10, 30), (89, 90)]
        );
    }

    #[test]
    fn rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deltamap");
        std::fs::write(&p, vec![1u8; 100]).unwrap();
        assert!(DeltaMap::open(&p).is_err());
    }

    fn header(chunksize: u64, nchunks: u64) -> Vec<u8> {
        let mut h = vec![0u8; HEADER];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&chunksize.to_le_bytes());
        h[16..24].copy_from_slice(&nchunks.to_le_bytes());
        h
    }

    fn bad_reason(p: &Path) -> String {
        match DeltaMap::open(p) {
            Err(DeltaMapError::Bad { path, reason }) => {
                assert_eq!(path, p);
                reason
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn header_numbers_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("deltamap");
        std::fs::write(&p, header(1, 0)).unwrap();
        assert_eq!(
            bad_reason(&p),
            "chunk size 1 is not a power of two from 4096 to 67108864"
        );
        std::fs::write(&p, header(1 << 40, 0)).unwrap();
        assert!(bad_reason(&p).starts_with("chunk size 1099511627776 "));
        // A count whose bitmap length would overflow, or that no volume can have.
        std::fs::write(&p, header(65536, u64::MAX)).unwrap();
        assert_eq!(
            bad_reason(&p),
            format!(
                "{} chunks of 65536 bytes are more than the largest volume",
                u64::MAX
            )
        );
        // A count the file's length does not hold.
        let mut b = header(65536, 1000);
        b.extend_from_slice(&[0u8; 100]);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            bad_reason(&p),
            "1000 chunks need 189 bytes, the file has 164"
        );
        b.extend_from_slice(&[0u8; 25]);
        std::fs::write(&p, &b).unwrap();
        assert_eq!(DeltaMap::open(&p).unwrap().nchunks(), 1000);
        // Another chunk size than the volume's.
        match DeltaMap::open_for(&p, 131072) {
            Err(DeltaMapError::Bad { reason, .. }) => {
                assert_eq!(reason, "its chunk size is 65536, the volume's is 131072")
            }
            _ => panic!("accepted"),
        }
        assert!(DeltaMap::open_for(&p, 65536).is_ok());
    }
}
