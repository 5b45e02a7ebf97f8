//! Sessions stored as one tar file (`S_<id>.tar`) instead of a folder: far fewer
//! inodes and one sequential write. Members carry the folder form's relative names
//! (`S_<id>/x<prefix>/x<addr>`, `S_<id>/manifest`, `S_<id>/info`), so `tar -xf` in the
//! volume folder yields the same session as a folder.
//!
//! Chunks are read by offset through a binary member index kept beside the tar
//! (`S_<id>.tar.index`), memory-mapped, so a read never scans the tar:
//!
//! ```text
//! offset size
//!      0    8  magic "SPBKTIX1" (the 1 is the version)
//!      8    8  number of chunk records, u64 LE
//!     16    8  offset of the manifest member's content in the tar
//!     24    8  its length
//!     32    8  offset of the info member's content
//!     40    8  its length
//!     48   16  reserved, zero
//!     64  24n  records sorted by address: address, content offset, content length (u64 LE)
//! ```

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{FormatError, IoContext, Result};

pub const INDEX_MAGIC: &[u8; 8] = b"SPBKTIX1";
const HEADER: usize = 64;
const RECORD: usize = 24;

fn le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The header of a member written by sparsebak: POSIX ustar, a regular file, mode
/// 0644, owner 0, the given size and time. Names are short (under 100 bytes), so no
/// extension headers are ever needed and a member's content starts 512 bytes after
/// its header.
pub fn ustar_header(name: &str, size: u64, mtime: u64) -> std::io::Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// A memory-mapped member index.
pub struct TarIndex {
    map: Mmap,
    count: usize,
    path: PathBuf,
}

impl TarIndex {
    pub fn open(path: &Path) -> Result<TarIndex> {
        let f = File::open(path).at(path)?;
        let len = f.metadata().at(path)?.len() as usize;
        let bad = |r: &str| FormatError::Other(format!("{}: bad tar index ({r})", path.display()));
        if len < HEADER {
            return Err(bad("too short"));
        }
        // SAFETY: index files are written once and never modified in place.
        let map = unsafe { Mmap::map(&f) }.at(path)?;
        if &map[..8] != INDEX_MAGIC {
            return Err(bad("bad magic"));
        }
        let count = le(&map, 8) as usize;
        if HEADER + count * RECORD != len {
            return Err(bad("length does not match its count"));
        }
        Ok(TarIndex {
            map,
            count,
            path: path.to_path_buf(),
        })
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Record `i`: (address, content offset, length).
    pub fn record(&self, i: usize) -> (u64, u64, u64) {
        let at = HEADER + i * RECORD;
        (
            le(&self.map, at),
            le(&self.map, at + 8),
            le(&self.map, at + 16),
        )
    }

    /// Where the chunk at `addr` is, by binary search.
    pub fn lookup(&self, addr: u64) -> Option<(u64, u64)> {
        let (mut lo, mut hi) = (0usize, self.count);
        while lo < hi {
            let mid = (lo + hi) / 2;
            let (a, off, len) = self.record(mid);
            match a.cmp(&addr) {
                std::cmp::Ordering::Equal => return Some((off, len)),
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
            }
        }
        None
    }

    pub fn manifest(&self) -> (u64, u64) {
        (le(&self.map, 16), le(&self.map, 24))
    }

    pub fn info(&self) -> (u64, u64) {
        (le(&self.map, 32), le(&self.map, 40))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes an index while the tar is written: records as they come, header last.
pub struct TarIndexWriter {
    file: std::io::BufWriter<File>,
    path: PathBuf,
    count: u64,
    last: Option<u64>,
}

impl TarIndexWriter {
    pub fn create(path: &Path) -> Result<TarIndexWriter> {
        let f = File::create(path).at(path)?;
        let mut file = std::io::BufWriter::new(f);
        file.write_all(&[0u8; HEADER]).at(path)?;
        Ok(TarIndexWriter {
            file,
            path: path.to_path_buf(),
            count: 0,
            last: None,
        })
    }

    pub fn push(&mut self, addr: u64, off: u64, len: u64) -> Result<()> {
        if self.last.is_some_and(|l| addr <= l) {
            return Err(FormatError::Other("tar index records out of order".into()));
        }
        self.last = Some(addr);
        let mut rec = [0u8; RECORD];
        rec[..8].copy_from_slice(&addr.to_le_bytes());
        rec[8..16].copy_from_slice(&off.to_le_bytes());
        rec[16..].copy_from_slice(&len.to_le_bytes());
        self.file.write_all(&rec).at(&self.path)?;
        self.count += 1;
        Ok(())
    }

    /// Write the header and sync.
    pub fn finish(self, manifest: (u64, u64), info: (u64, u64)) -> Result<()> {
        let path = self.path;
        let f = self
            .file
            .into_inner()
            .map_err(|e| e.into_error())
            .at(&path)?;
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(INDEX_MAGIC);
        h[8..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&manifest.0.to_le_bytes());
        h[24..32].copy_from_slice(&manifest.1.to_le_bytes());
        h[32..40].copy_from_slice(&info.0.to_le_bytes());
        h[40..48].copy_from_slice(&info.1.to_le_bytes());
        f.write_all_at(&h, 0).at(&path)?;
        f.sync_all().at(&path)
    }
}

/// An open tar session: the tar file and its index.
pub struct TarSession {
    pub file: File,
    pub index: TarIndex,
    pub path: PathBuf,
}

impl TarSession {
    pub fn open(tar: &Path, index: &Path) -> Result<TarSession> {
        Ok(TarSession {
            file: File::open(tar).at(tar)?,
            index: TarIndex::open(index)?,
            path: tar.to_path_buf(),
        })
    }

    /// `len` bytes at `off` of the tar.
    pub fn read_at(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.file.read_exact_at(&mut buf, off).at(&self.path)?;
        Ok(buf)
    }

    /// A reader over the manifest member.
    pub fn manifest_reader(&self) -> Result<Box<dyn std::io::BufRead + Send>> {
        let (off, len) = self.index.manifest();
        let mut f = self.file.try_clone().at(&self.path)?;
        f.seek(SeekFrom::Start(off)).at(&self.path)?;
        Ok(Box::new(BufReader::with_capacity(64 * 1024, f.take(len))))
    }

    pub fn info_bytes(&self) -> Result<Vec<u8>> {
        let (off, len) = self.index.info();
        self.read_at(off, len)
    }
}
