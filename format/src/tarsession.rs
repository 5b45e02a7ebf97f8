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
//!
//! In an encrypted archive the members are the folder form's sealed files under their
//! hidden names, and the index is sealed ([`sealed`]): it is read a segment at a time.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::archive_fs::{self, ArchiveFs, SharedFs};
use crate::crypto::ArchiveKeys;
use crate::error::{FormatError, IndexFault, IoContext, Result};
use crate::limits;

pub mod sealed;
pub mod walk;
pub use sealed::{SealedTarIndex, SealedTarIndexWriter};

pub const INDEX_MAGIC: &[u8; 8] = b"SPBKTIX1";
pub(crate) const HEADER: usize = 64;
pub(crate) const RECORD: usize = 24;
pub(crate) const TAR_BLOCK: u64 = 512;

pub(crate) fn le(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The index record of the chunk at `addr` (content at `off`, `len` bytes), after the
/// record of `last`: records must come in increasing address order.
pub(crate) fn next_record(
    last: &mut Option<u64>,
    addr: u64,
    off: u64,
    len: u64,
) -> Result<[u8; RECORD]> {
    if last.is_some_and(|l| addr <= l) {
        return Err(FormatError::Other("tar index records out of order".into()));
    }
    *last = Some(addr);
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&addr.to_le_bytes());
    rec[8..16].copy_from_slice(&off.to_le_bytes());
    rec[16..].copy_from_slice(&len.to_le_bytes());
    Ok(rec)
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

/// Check an index's bytes against the tar it indexes (`tar_len` bytes long): the
/// header, the record count against the length, and every member it names (inside the
/// tar, on a tar block, not overlapping the one before it, no larger than a member of
/// its kind can be, chunk addresses strictly increasing). Returns the number of
/// chunk records. Reading through a checked index never reads past the tar nor
/// allocates more than one chunk member.
pub fn check_index(b: &[u8], tar_len: u64) -> std::result::Result<usize, IndexFault> {
    let len = b.len() as u64;
    if b.len() < HEADER {
        return Err(IndexFault::TooShort { len });
    }
    if &b[..8] != INDEX_MAGIC {
        return Err(IndexFault::Magic);
    }
    if b[48..HEADER].iter().any(|&x| x != 0) {
        return Err(IndexFault::Reserved);
    }
    let count = le(b, 8);
    let body = (b.len() - HEADER) as u64;
    if body % RECORD as u64 != 0 || body / RECORD as u64 != count {
        return Err(IndexFault::Count { count, len });
    }
    let count = count as usize;
    let mut members = MemberLayout::new(tar_len, limits::max_stored_any(), limits::MAX_INFO_BYTES);
    for i in 0..count {
        let at = HEADER + i * RECORD;
        members.chunk(i as u64, le(b, at), le(b, at + 8), le(b, at + 16))?;
    }
    members.manifest(le(b, 16), le(b, 24))?;
    members.info(le(b, 32), le(b, 40))?;
    Ok(count)
}

/// The checks of an index's records against its tar, one member at a time in the
/// order they are in the tar: the chunks in address order, then the manifest, then
/// the info; each member's content starts after its 512-byte header.
pub(crate) struct MemberLayout {
    tar_len: u64,
    max_chunk: u64,
    max_info: u64,
    prev_end: u64,
    last_addr: Option<u64>,
}

impl MemberLayout {
    /// Members of a tar of `tar_len` bytes; chunk members of at most `max_chunk`
    /// bytes, the info member at most `max_info`.
    pub(crate) fn new(tar_len: u64, max_chunk: u64, max_info: u64) -> MemberLayout {
        MemberLayout {
            tar_len,
            max_chunk,
            max_info,
            prev_end: 0,
            last_addr: None,
        }
    }

    /// Record `i`: the chunk at `addr`, `mlen` bytes at `off`.
    pub(crate) fn chunk(
        &mut self,
        i: u64,
        addr: u64,
        off: u64,
        mlen: u64,
    ) -> std::result::Result<(), IndexFault> {
        let name = || format!("record {i} (chunk x{addr:016x})");
        if self.last_addr.is_some_and(|l| addr <= l) {
            return Err(IndexFault::Order { member: name() });
        }
        self.last_addr = Some(addr);
        self.member(&name, off, mlen, self.max_chunk)
    }

    pub(crate) fn manifest(&mut self, off: u64, mlen: u64) -> std::result::Result<(), IndexFault> {
        self.member(&|| "manifest member".into(), off, mlen, u64::MAX)
    }

    pub(crate) fn info(&mut self, off: u64, mlen: u64) -> std::result::Result<(), IndexFault> {
        self.member(&|| "info member".into(), off, mlen, self.max_info)
    }

    fn member(
        &mut self,
        name: &dyn Fn() -> String,
        off: u64,
        mlen: u64,
        max: u64,
    ) -> std::result::Result<(), IndexFault> {
        if mlen > max {
            return Err(IndexFault::TooLarge {
                member: name(),
                len: mlen,
                max,
            });
        }
        if off % TAR_BLOCK != 0 {
            return Err(IndexFault::Misaligned {
                member: name(),
                off,
            });
        }
        if off < self.prev_end.saturating_add(TAR_BLOCK) {
            return Err(IndexFault::Overlap { member: name() });
        }
        let end = off.checked_add(mlen).filter(|&e| e <= self.tar_len);
        let Some(end) = end else {
            return Err(IndexFault::PastEnd {
                member: name(),
                off,
                len: mlen,
                tar_len: self.tar_len,
            });
        };
        self.prev_end = end;
        Ok(())
    }
}

/// The bytes of a member index: mapped (a local file), or read whole (a remote one).
enum IndexBytes {
    Map(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for IndexBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            IndexBytes::Map(m) => m,
            IndexBytes::Owned(v) => v,
        }
    }
}

/// The largest index a tar of `tar_len` bytes can have: every record names a member
/// of at least one 512-byte header.
fn max_index_len(tar_len: u64) -> u64 {
    (HEADER as u64).saturating_add((RECORD as u64).saturating_mul(tar_len / TAR_BLOCK + 1))
}

/// A member index (memory-mapped when local), checked against its tar when opened.
pub struct TarIndex {
    map: IndexBytes,
    count: usize,
    path: PathBuf,
}

impl TarIndex {
    /// Open and check the index at `path` of a tar of `tar_len` bytes.
    pub fn open(path: &Path, tar_len: u64) -> Result<TarIndex> {
        TarIndex::open_in(&archive_fs::LocalFs, path, tar_len)
    }

    /// [`TarIndex::open`] of an index reached through `fs`: mapped when it is local,
    /// else read whole (bounded by what a tar of `tar_len` bytes can index).
    pub fn open_in(fs: &dyn ArchiveFs, path: &Path, tar_len: u64) -> Result<TarIndex> {
        let fault = |fault: IndexFault| FormatError::TarIndex {
            path: path.to_path_buf(),
            fault,
        };
        let map = if fs.is_local() {
            // Through the seam first: it refuses a path that passes through a link.
            fs.metadata(path).at(path)?;
            let f = archive_fs::open_read(path).at(path)?;
            let len = f.metadata().at(path)?.len();
            if len < HEADER as u64 {
                return Err(fault(IndexFault::TooShort { len }));
            }
            // SAFETY: index files are written once and never modified in place; a file
            // changed under the map can give wrong numbers, which are all checked below
            // and again on every read of the tar.
            IndexBytes::Map(unsafe { Mmap::map(&f) }.at(path)?)
        } else {
            let max = max_index_len(tar_len);
            let b = match fs.read(path, max) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let len = fs.metadata(path).at(path)?.len;
                    return Err(FormatError::TooLarge {
                        path: path.to_path_buf(),
                        what: "tar index (for the length of its tar)",
                        len,
                        max,
                    });
                }
                Err(e) => return Err(e).at(path),
            };
            if (b.len() as u64) < HEADER as u64 {
                return Err(fault(IndexFault::TooShort {
                    len: b.len() as u64,
                }));
            }
            IndexBytes::Owned(b)
        };
        let count = check_index(&map, tar_len).map_err(fault)?;
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

    /// Record `i` (`i < len()`): (address, content offset, length).
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

/// Where an index being written goes: a local file (its header written in place at
/// the end), or the records kept in memory and written in one piece at the end (a
/// remote folder, where a file is written front to back).
enum IndexOut {
    Local(std::io::BufWriter<File>),
    Staged { fs: SharedFs, bytes: Vec<u8> },
}

/// Writes an index while the tar is written: records as they come, header last.
pub struct TarIndexWriter {
    file: IndexOut,
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
            file: IndexOut::Local(file),
            path: path.to_path_buf(),
            count: 0,
            last: None,
        })
    }

    /// [`TarIndexWriter::create`] through `fs` (the local file when it is local).
    pub fn create_in(fs: &SharedFs, path: &Path) -> Result<TarIndexWriter> {
        if fs.is_local() {
            return TarIndexWriter::create(path);
        }
        // Created now, so that a folder that cannot take it fails the session early.
        fs.write(path, &[0u8; HEADER]).at(path)?;
        Ok(TarIndexWriter {
            file: IndexOut::Staged {
                fs: fs.clone(),
                bytes: vec![0u8; HEADER],
            },
            path: path.to_path_buf(),
            count: 0,
            last: None,
        })
    }

    pub fn push(&mut self, addr: u64, off: u64, len: u64) -> Result<()> {
        let rec = next_record(&mut self.last, addr, off, len)?;
        match &mut self.file {
            IndexOut::Local(f) => f.write_all(&rec).at(&self.path)?,
            IndexOut::Staged { bytes, .. } => bytes.extend_from_slice(&rec),
        }
        self.count += 1;
        Ok(())
    }

    /// Write the header and sync.
    pub fn finish(self, manifest: (u64, u64), info: (u64, u64)) -> Result<()> {
        let path = self.path;
        let mut h = [0u8; HEADER];
        h[..8].copy_from_slice(INDEX_MAGIC);
        h[8..16].copy_from_slice(&self.count.to_le_bytes());
        h[16..24].copy_from_slice(&manifest.0.to_le_bytes());
        h[24..32].copy_from_slice(&manifest.1.to_le_bytes());
        h[32..40].copy_from_slice(&info.0.to_le_bytes());
        h[40..48].copy_from_slice(&info.1.to_le_bytes());
        match self.file {
            IndexOut::Local(file) => {
                let f = file.into_inner().map_err(|e| e.into_error()).at(&path)?;
                f.write_all_at(&h, 0).at(&path)?;
                f.sync_all().at(&path)
            }
            IndexOut::Staged { fs, mut bytes } => {
                bytes[..HEADER].copy_from_slice(&h);
                let mut w = fs.create(&path).at(&path)?;
                w.write_all(&bytes).at(&path)?;
                w.finish(true).at(&path)
            }
        }
    }
}

/// Where a tar session's bytes are read from: the open file (local), or the file
/// system it is in, by offset.
pub enum TarFile {
    Local(File),
    Fs(SharedFs),
}

/// The member index of an open tar session: mapped (plain archive) or sealed.
pub enum MemberIndex {
    Mapped(TarIndex),
    Sealed(SealedTarIndex),
}

impl MemberIndex {
    /// Number of chunk records.
    pub fn len(&self) -> usize {
        match self {
            MemberIndex::Mapped(i) => i.len(),
            MemberIndex::Sealed(i) => i.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Record `i` (`i < len()`): (address, content offset, length). A sealed index
    /// opens the segment that holds it (an error if the file changed since it was
    /// checked).
    pub fn record(&self, i: usize) -> Result<(u64, u64, u64)> {
        match self {
            MemberIndex::Mapped(ix) => Ok(ix.record(i)),
            MemberIndex::Sealed(ix) => ix.record(i),
        }
    }

    /// Where the chunk at `addr` is: content offset and length.
    pub fn lookup(&self, addr: u64) -> Result<Option<(u64, u64)>> {
        match self {
            MemberIndex::Mapped(ix) => Ok(ix.lookup(addr)),
            MemberIndex::Sealed(ix) => ix.lookup(addr),
        }
    }

    pub fn manifest(&self) -> (u64, u64) {
        match self {
            MemberIndex::Mapped(ix) => ix.manifest(),
            MemberIndex::Sealed(ix) => ix.manifest(),
        }
    }

    pub fn info(&self) -> (u64, u64) {
        match self {
            MemberIndex::Mapped(ix) => ix.info(),
            MemberIndex::Sealed(ix) => ix.info(),
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            MemberIndex::Mapped(ix) => ix.path(),
            MemberIndex::Sealed(ix) => ix.path(),
        }
    }
}

/// Writes a tar session's index: plain, or sealed in an encrypted archive.
pub enum IndexWriter {
    Plain(TarIndexWriter),
    Sealed(SealedTarIndexWriter),
}

impl IndexWriter {
    pub fn push(&mut self, addr: u64, off: u64, len: u64) -> Result<()> {
        match self {
            IndexWriter::Plain(w) => w.push(addr, off, len),
            IndexWriter::Sealed(w) => w.push(addr, off, len),
        }
    }

    /// Write the header (footer, sealed) and sync.
    pub fn finish(self, manifest: (u64, u64), info: (u64, u64)) -> Result<()> {
        match self {
            IndexWriter::Plain(w) => w.finish(manifest, info),
            IndexWriter::Sealed(w) => w.finish(manifest, info),
        }
    }
}

/// An open tar session: the tar file and its index.
pub struct TarSession {
    pub file: TarFile,
    pub index: MemberIndex,
    pub path: PathBuf,
    /// The tar's length when it was opened, which every index entry was checked
    /// against.
    len: u64,
}

impl TarSession {
    pub fn open(tar: &Path, index: &Path) -> Result<TarSession> {
        TarSession::open_in(&archive_fs::local(), tar, index)
    }

    /// [`TarSession::open`] of a tar and index reached through `fs` (the file opened
    /// and its index mapped when it is local).
    pub fn open_in(fs: &SharedFs, tar: &Path, index: &Path) -> Result<TarSession> {
        Self::open_with(fs, tar, |len| {
            Ok(MemberIndex::Mapped(TarIndex::open_in(
                fs.as_ref(),
                index,
                len,
            )?))
        })
    }

    /// Tar session `session` of an encrypted archive: its index is sealed.
    pub fn open_sealed(
        tar: &Path,
        index: &Path,
        keys: &ArchiveKeys,
        session: &str,
    ) -> Result<TarSession> {
        Self::open_sealed_in(&archive_fs::local(), tar, index, keys, session)
    }

    /// [`TarSession::open_sealed`] through `fs`.
    pub fn open_sealed_in(
        fs: &SharedFs,
        tar: &Path,
        index: &Path,
        keys: &ArchiveKeys,
        session: &str,
    ) -> Result<TarSession> {
        Self::open_with(fs, tar, |len| {
            Ok(MemberIndex::Sealed(SealedTarIndex::open(
                fs.clone(),
                index,
                keys,
                session,
                len,
            )?))
        })
    }

    fn open_with(
        fs: &SharedFs,
        tar: &Path,
        index: impl FnOnce(u64) -> Result<MemberIndex>,
    ) -> Result<TarSession> {
        let (file, len) = if fs.is_local() {
            fs.metadata(tar).at(tar)?;
            let file = archive_fs::open_read(tar).at(tar)?;
            let len = file.metadata().at(tar)?.len();
            (TarFile::Local(file), len)
        } else {
            let len = fs.metadata(tar).at(tar)?.len;
            (TarFile::Fs(fs.clone()), len)
        };
        Ok(TarSession {
            file,
            index: index(len)?,
            path: tar.to_path_buf(),
            len,
        })
    }

    /// `len` bytes at `off` of the tar, a member of at most `max` bytes.
    pub fn read_at(&self, off: u64, len: u64, max: u64) -> Result<Vec<u8>> {
        let fault = |fault: IndexFault| FormatError::TarIndex {
            path: self.index.path().to_path_buf(),
            fault,
        };
        let member = || format!("member at offset {off}");
        if len > max {
            return Err(fault(IndexFault::TooLarge {
                member: member(),
                len,
                max,
            }));
        }
        if off.checked_add(len).is_none_or(|e| e > self.len) {
            return Err(fault(IndexFault::PastEnd {
                member: member(),
                off,
                len,
                tar_len: self.len,
            }));
        }
        match &self.file {
            TarFile::Local(f) => {
                let mut buf = vec![0u8; len as usize];
                f.read_exact_at(&mut buf, off).at(&self.path)?;
                Ok(buf)
            }
            TarFile::Fs(fs) => {
                let buf = fs.read_at(&self.path, off, len as usize).at(&self.path)?;
                if buf.len() as u64 != len {
                    return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
                        .at(&self.path);
                }
                Ok(buf)
            }
        }
    }

    /// The stored bytes of the chunk at `addr`, at most `max` of them.
    pub fn read_chunk(&self, addr: u64, max: u64) -> Result<Vec<u8>> {
        let (off, len) = self.index.lookup(addr)?.ok_or_else(|| {
            FormatError::Other(format!(
                "{}: no member for chunk x{addr:016x} in its index",
                self.path.display()
            ))
        })?;
        self.read_at(off, len, max).map_err(|e| match e {
            FormatError::TarIndex {
                path,
                fault: IndexFault::TooLarge { len, max, .. },
            } => FormatError::TarIndex {
                path,
                fault: IndexFault::TooLarge {
                    member: format!("chunk x{addr:016x}"),
                    len,
                    max,
                },
            },
            e => e,
        })
    }

    /// A reader over the manifest member.
    pub fn manifest_reader(&self) -> Result<Box<dyn std::io::BufRead + Send>> {
        let (off, len) = self.index.manifest();
        match &self.file {
            TarFile::Local(file) => {
                let mut f = file.try_clone().at(&self.path)?;
                f.seek(SeekFrom::Start(off)).at(&self.path)?;
                Ok(Box::new(BufReader::with_capacity(64 * 1024, f.take(len))))
            }
            TarFile::Fs(fs) => Ok(Box::new(BufReader::with_capacity(
                RANGE_PIECE,
                RangeReader {
                    fs: fs.clone(),
                    path: self.path.clone(),
                    pos: off,
                    end: off.saturating_add(len),
                },
            ))),
        }
    }

    pub fn info_bytes(&self) -> Result<Vec<u8>> {
        self.info_member(limits::MAX_INFO_BYTES)
    }

    /// The info member's bytes as stored (sealed in an encrypted archive), at most
    /// `max`.
    pub fn info_member(&self, max: u64) -> Result<Vec<u8>> {
        let (off, len) = self.index.info();
        self.read_at(off, len, max)
    }
}

/// Bytes asked of a remote file at a time by [`RangeReader`].
const RANGE_PIECE: usize = 1 << 20;

/// A reader of the bytes `pos..end` of a file, by [`ArchiveFs::read_at`].
struct RangeReader {
    fs: SharedFs,
    path: PathBuf,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let got = self.fs.read_at(&self.path, self.pos, want)?;
        if got.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let n = got.len().min(want);
        buf[..n].copy_from_slice(&got[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Index bytes naming `records` (address, offset, length), a manifest and an info.
    fn index(records: &[(u64, u64, u64)], manifest: (u64, u64), info: (u64, u64)) -> Vec<u8> {
        let mut b = vec![0u8; HEADER];
        b[..8].copy_from_slice(INDEX_MAGIC);
        b[8..16].copy_from_slice(&(records.len() as u64).to_le_bytes());
        for (at, v) in [
            (16, manifest.0),
            (24, manifest.1),
            (32, info.0),
            (40, info.1),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        for &(a, o, l) in records {
            for v in [a, o, l] {
                b.extend_from_slice(&v.to_le_bytes());
            }
        }
        b
    }

    /// A valid layout: two chunks of 1000 and 700 bytes, a manifest, an info.
    const TAR_LEN: u64 = 10240;
    fn good() -> Vec<(u64, u64, u64)> {
        vec![(0, 512, 1000), (65536, 2048, 700)]
    }
    const MANIFEST: (u64, u64) = (3584, 166);
    const INFO: (u64, u64) = (4608, 400);

    fn fault(b: &[u8]) -> IndexFault {
        check_index(b, TAR_LEN).unwrap_err()
    }

    #[test]
    fn a_valid_index_passes() {
        assert_eq!(check_index(&index(&good(), MANIFEST, INFO), TAR_LEN), Ok(2));
        assert_eq!(check_index(&index(&[], (512, 0), (1024, 9)), 2048), Ok(0));
    }

    #[test]
    fn the_writer_writes_the_plain_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.tar.index");
        let mut w = TarIndexWriter::create(&p).unwrap();
        for (a, o, l) in good() {
            w.push(a, o, l).unwrap();
        }
        w.finish(MANIFEST, INFO).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), index(&good(), MANIFEST, INFO));
    }

    #[test]
    fn header_faults() {
        assert_eq!(fault(&[0u8; 10]), IndexFault::TooShort { len: 10 });
        let mut b = index(&good(), MANIFEST, INFO);
        b[0] = b'X';
        assert_eq!(fault(&b), IndexFault::Magic);
        let mut b = index(&good(), MANIFEST, INFO);
        b[50] = 1;
        assert_eq!(fault(&b), IndexFault::Reserved);
        // A count that would overflow `64 + 24 * count` on any machine.
        let mut b = index(&good(), MANIFEST, INFO);
        b[8..16].copy_from_slice(&(u64::MAX / 3).to_le_bytes());
        let len = b.len() as u64;
        assert_eq!(
            fault(&b),
            IndexFault::Count {
                count: u64::MAX / 3,
                len
            }
        );
        // A count past the records the file holds, and a torn last record.
        let mut b = index(&good(), MANIFEST, INFO);
        b[8..16].copy_from_slice(&3u64.to_le_bytes());
        assert_eq!(fault(&b), IndexFault::Count { count: 3, len });
        let mut b = index(&good(), MANIFEST, INFO);
        b.pop();
        assert_eq!(
            fault(&b),
            IndexFault::Count {
                count: 2,
                len: len - 1
            }
        );
    }

    #[test]
    fn record_faults() {
        let with = |i: usize, r: (u64, u64, u64)| {
            let mut recs = good();
            recs[i] = r;
            fault(&index(&recs, MANIFEST, INFO))
        };
        let rec1 = |a: u64| format!("record 1 (chunk x{a:016x})");
        // A chunk of 2^40 bytes: refused from the index alone.
        assert_eq!(
            with(1, (65536, 2048, 1 << 40)),
            IndexFault::TooLarge {
                member: rec1(65536),
                len: 1 << 40,
                max: limits::max_stored_any()
            }
        );
        // Past the end of the tar, and an offset + length that overflows.
        assert_eq!(
            with(1, (65536, 9728, 700)),
            IndexFault::PastEnd {
                member: rec1(65536),
                off: 9728,
                len: 700,
                tar_len: TAR_LEN
            }
        );
        let off = u64::MAX - 511;
        assert_eq!(
            with(1, (65536, off, 700)),
            IndexFault::PastEnd {
                member: rec1(65536),
                off,
                len: 700,
                tar_len: TAR_LEN
            }
        );
        assert_eq!(
            with(1, (65536, 2000, 700)),
            IndexFault::Misaligned {
                member: rec1(65536),
                off: 2000
            }
        );
        // Inside the member before it (or its header).
        assert_eq!(
            with(1, (65536, 1024, 700)),
            IndexFault::Overlap {
                member: rec1(65536)
            }
        );
        assert_eq!(
            with(0, (0, 0, 1000)),
            IndexFault::Overlap {
                member: "record 0 (chunk x0000000000000000)".into()
            }
        );
        assert_eq!(
            with(1, (0, 2048, 700)),
            IndexFault::Order { member: rec1(0) }
        );
    }

    #[test]
    fn manifest_and_info_faults() {
        let recs = good();
        assert_eq!(
            fault(&index(&recs, (3584, 1 << 40), INFO)),
            IndexFault::PastEnd {
                member: "manifest member".into(),
                off: 3584,
                len: 1 << 40,
                tar_len: TAR_LEN
            }
        );
        assert_eq!(
            fault(&index(&recs, (1024, 166), INFO)),
            IndexFault::Overlap {
                member: "manifest member".into()
            }
        );
        assert_eq!(
            fault(&index(&recs, MANIFEST, (4608, 1 << 20))),
            IndexFault::TooLarge {
                member: "info member".into(),
                len: 1 << 20,
                max: limits::MAX_INFO_BYTES
            }
        );
        assert_eq!(
            fault(&index(&recs, MANIFEST, (TAR_LEN, 400))),
            IndexFault::PastEnd {
                member: "info member".into(),
                off: TAR_LEN,
                len: 400,
                tar_len: TAR_LEN
            }
        );
    }

    #[test]
    fn open_and_read_check_against_the_tar() {
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("S_20260101-000000.tar");
        let ix = dir.path().join("S_20260101-000000.tar.index");
        std::fs::write(&tar, vec![7u8; TAR_LEN as usize]).unwrap();
        std::fs::write(&ix, index(&good(), MANIFEST, INFO)).unwrap();
        let t = TarSession::open(&tar, &ix).unwrap();
        assert_eq!(t.read_chunk(65536, 700).unwrap(), vec![7u8; 700]);
        // Larger than a chunk of this session can be: refused before reading.
        match t.read_chunk(0, 999) {
            Err(FormatError::TarIndex { path, fault }) => {
                assert_eq!(path, ix);
                assert_eq!(
                    fault,
                    IndexFault::TooLarge {
                        member: "chunk x0000000000000000".into(),
                        len: 1000,
                        max: 999
                    }
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            t.read_at(9728, 1000, 4096),
            Err(FormatError::TarIndex {
                fault: IndexFault::PastEnd { .. },
                ..
            })
        ));
        // The same index against a shorter tar: the error names the index file.
        std::fs::write(&tar, vec![7u8; 4096]).unwrap();
        let e = TarSession::open(&tar, &ix).err().unwrap();
        assert!(
            matches!(
                &e,
                FormatError::TarIndex { path, fault: IndexFault::PastEnd { .. } } if *path == ix
            ),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&ix.display().to_string()), "{e}");
    }

    #[test]
    fn a_folder_that_is_not_local_is_read_by_offset_and_bounded() {
        let fs: SharedFs = std::sync::Arc::new(archive_fs::NotLocal);
        let dir = tempfile::tempdir().unwrap();
        let tar = dir.path().join("S_20260101-000000.tar");
        let ix = dir.path().join("S_20260101-000000.tar.index");
        let mut bytes: Vec<u8> = (0..TAR_LEN).map(|i| (i % 251) as u8).collect();
        bytes[MANIFEST.0 as usize..(MANIFEST.0 + MANIFEST.1) as usize].fill(b'm');
        std::fs::write(&tar, &bytes).unwrap();
        // Written through the file system: the same bytes as the local writer's.
        let mut w = TarIndexWriter::create_in(&fs, &ix).unwrap();
        for (a, o, l) in good() {
            w.push(a, o, l).unwrap();
        }
        w.finish(MANIFEST, INFO).unwrap();
        assert_eq!(std::fs::read(&ix).unwrap(), index(&good(), MANIFEST, INFO));
        let t = TarSession::open_in(&fs, &tar, &ix).unwrap();
        assert!(matches!(t.file, TarFile::Fs(_)));
        assert_eq!(t.read_chunk(65536, 700).unwrap(), &bytes[2048..2748]);
        let mut m = Vec::new();
        t.manifest_reader().unwrap().read_to_end(&mut m).unwrap();
        assert_eq!(m, vec![b'm'; MANIFEST.1 as usize]);
        assert!(matches!(
            t.read_chunk(0, 999),
            Err(FormatError::TarIndex {
                fault: IndexFault::TooLarge { .. },
                ..
            })
        ));
        // An index longer than any index of its tar can be is refused unread.
        let big = ix.with_extension("big");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        match TarIndex::open_in(fs.as_ref(), &big, TAR_LEN) {
            Err(FormatError::TooLarge { len, max, .. }) => {
                assert_eq!(len, 1 << 40);
                assert_eq!(max, max_index_len(TAR_LEN));
            }
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("a 1 TiB index was taken"),
        }
        // The tar shortened under the index: checked as for a local one.
        std::fs::write(&tar, vec![7u8; 4096]).unwrap();
        assert!(matches!(
            TarSession::open_in(&fs, &tar, &ix),
            Err(FormatError::TarIndex {
                fault: IndexFault::PastEnd { .. },
                ..
            })
        ));
    }
}
