//! Reflink images: FICLONE snapshot copies and FIEMAP extent-map comparison.
//!
//! A `reflink` volume is a disk image file on a filesystem with shared extents (Btrfs,
//! XFS). The source keeps a reflink copy of the image, the `tick`, as it was at the last
//! backup. To find what changed, it makes another reflink copy, the `tock`, and compares
//! the extent maps of the two copies instead of reading any data:
//!
//! - Right after the `tick` is made, every written block of the image is shared with it.
//!   Any later write to the image therefore has to go to a newly allocated block
//!   (copy-on-write), and that block cannot be one the `tick` still holds. So a byte whose
//!   physical address is the same in `tick` and `tock` holds the same data, and a byte
//!   whose address differs (or that became or stopped being a hole) may have changed.
//! - Comparing copies, not the live image, gives a stable picture (nobody writes the
//!   copies) and the `tock` becomes the next `tick` once the backup is committed.
//!
//! Some extents have no usable physical address: delayed allocation (the data is still
//! in the page cache), "unknown" locations, data stored inline in metadata (Btrfs puts
//! small files and small file heads there, all reported at address 0) and encoded
//! (compressed or encrypted) extents, whose address is that of the whole encoded extent,
//! not of the byte. [`mark_changes`] treats those conservatively; see [`diff_extents`].
//!
//! The comparison is a linear merge of the two sorted extent lists, so its cost grows
//! with the number of extents, never with the size of the file: a 1 TiB sparse image
//! with a handful of extents is compared in microseconds.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use crate::delta_map::DeltaMap;

/// The last extent of the file.
pub const FIEMAP_EXTENT_LAST: u32 = 0x0000_0001;
/// Data location unknown.
pub const FIEMAP_EXTENT_UNKNOWN: u32 = 0x0000_0002;
/// Location still pending (delayed allocation); comes with `UNKNOWN`.
pub const FIEMAP_EXTENT_DELALLOC: u32 = 0x0000_0004;
/// Data cannot be read while the filesystem is unmounted (compressed, encrypted).
pub const FIEMAP_EXTENT_ENCODED: u32 = 0x0000_0008;
/// Data is encrypted by the filesystem; comes with `ENCODED`.
pub const FIEMAP_EXTENT_DATA_ENCRYPTED: u32 = 0x0000_0080;
/// Extent offsets may not be block aligned.
pub const FIEMAP_EXTENT_NOT_ALIGNED: u32 = 0x0000_0100;
/// Data mixed with metadata; comes with `NOT_ALIGNED`.
pub const FIEMAP_EXTENT_DATA_INLINE: u32 = 0x0000_0200;
/// Several files share one block; comes with `NOT_ALIGNED`.
pub const FIEMAP_EXTENT_DATA_TAIL: u32 = 0x0000_0400;
/// Space allocated but not written: reads as zeros.
pub const FIEMAP_EXTENT_UNWRITTEN: u32 = 0x0000_0800;
/// The filesystem merged block-mapped ranges into this extent.
pub const FIEMAP_EXTENT_MERGED: u32 = 0x0000_1000;
/// Space shared with other files (reflinks, snapshots).
pub const FIEMAP_EXTENT_SHARED: u32 = 0x0000_2000;

/// Ask the kernel to write dirty pages back before mapping.
const FIEMAP_FLAG_SYNC: u32 = 0x0000_0001;

/// Flags whose extent's address tells nothing, even when both sides report the same
/// record: inline data is reported at address 0 whatever it contains, tails share a
/// block with other files, and delayed or unknown locations are not addresses at all.
const NEVER_TRUSTED: u32 = FIEMAP_EXTENT_UNKNOWN
    | FIEMAP_EXTENT_DELALLOC
    | FIEMAP_EXTENT_DATA_INLINE
    | FIEMAP_EXTENT_DATA_TAIL;

/// Flags whose extent's address names a whole encoded extent rather than the byte at
/// `logical` (Btrfs reports a compressed extent's disk start, without the offset into
/// it). Such extents are trusted only when both sides report the very same record.
const RECORD_ONLY: u32 =
    FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED | FIEMAP_EXTENT_NOT_ALIGNED;

/// Flags that say nothing about the data and are left out of record comparisons:
/// `SHARED` (the tick shares with the image by design), `LAST` and `MERGED`.
const IGNORED: u32 = FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST | FIEMAP_EXTENT_MERGED;

/// Extents fetched per FIEMAP call (56 bytes each, so a 28 KiB buffer).
const BATCH: usize = 512;

/// Errors of reflink copies and extent maps.
///
/// Functions here get open files, not paths; callers add the path when reporting.
#[derive(Debug, thiserror::Error)]
pub enum FiemapError {
    /// The filesystem cannot make reflink copies of this file here. Callers suggest
    /// `source = file` for the volume.
    #[error(
        "reflink copy not possible ({source}): the filesystem does not support reflinks, \
         the copy would cross filesystems, or the files' attributes differ (e.g. nodatacow); \
         use `source = file` for this volume"
    )]
    NoReflink {
        #[source]
        source: io::Error,
    },
    #[error("reflink copy failed: {source}")]
    Reflink {
        #[source]
        source: io::Error,
    },
    #[error("reading the extent map (FIEMAP) failed: {source}")]
    Fiemap {
        #[source]
        source: io::Error,
    },
    #[error("the extent map (FIEMAP) makes no sense: {0}")]
    BadMap(String),
}

impl FiemapError {
    /// True when the filesystem (or the pair of files) cannot share extents at all, as
    /// opposed to a failure of this particular copy.
    pub fn is_no_reflink(&self) -> bool {
        matches!(self, FiemapError::NoReflink { .. })
    }
}

pub type Result<T> = std::result::Result<T, FiemapError>;

// FICLONE is `_IOW(0x94, 9, int)`: the argument is the source file descriptor, passed by
// value.
nix::ioctl_write_int!(ioctl_ficlone, 0x94, 9);

/// Make `dst` a reflink copy of `src`: after the call, `dst` has `src`'s size and
/// shares all of its data blocks; no data is copied.
///
/// `dst` must be open for writing on the same filesystem; its previous contents are
/// replaced. The kernel writes `src`'s dirty pages back first, so the copy includes
/// writes that were still cached. Errors with [`FiemapError::NoReflink`] when reflinks
/// are impossible here (`EOPNOTSUPP`, `EINVAL`, `EXDEV`, or `ENOTTY` from kernels without
/// FICLONE), so the caller can suggest `source = file`.
pub fn reflink_copy(src: &File, dst: &File) -> Result<()> {
    let src_fd = src.as_raw_fd();
    let arg =
        nix::sys::ioctl::ioctl_param_type::try_from(src_fd).map_err(|_| FiemapError::Reflink {
            source: io::Error::from_raw_os_error(libc::EBADF),
        })?;
    // SAFETY: both descriptors are open for the duration of the call (borrowed `File`s);
    // FICLONE reads no memory from us, its argument is the source descriptor by value.
    let res = unsafe { ioctl_ficlone(dst.as_raw_fd(), arg) };
    match res {
        Ok(_) => Ok(()),
        Err(errno) => {
            let source = io::Error::from_raw_os_error(errno as i32);
            match errno {
                nix::errno::Errno::EOPNOTSUPP
                | nix::errno::Errno::EINVAL
                | nix::errno::Errno::EXDEV
                | nix::errno::Errno::ENOTTY => Err(FiemapError::NoReflink { source }),
                _ => Err(FiemapError::Reflink { source }),
            }
        }
    }
}

/// One extent of a file's map, as FIEMAP reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Byte offset in the file.
    pub logical: u64,
    /// Byte address on the filesystem's device (for Btrfs: in its logical address
    /// space); meaningless for some flags, see [`Extent::has_exact_address`].
    pub physical: u64,
    /// Length in bytes. The last extent may reach past the end of the file (rounded up
    /// to the block size, or preallocated space).
    pub length: u64,
    /// `FIEMAP_EXTENT_*` flags.
    pub flags: u32,
}

impl Extent {
    /// First byte past the extent (saturating, so damaged records cannot overflow).
    pub fn end(&self) -> u64 {
        self.logical.saturating_add(self.length)
    }

    pub fn is_last(&self) -> bool {
        self.flags & FIEMAP_EXTENT_LAST != 0
    }

    /// Allocated but never written: reads as zeros.
    pub fn is_unwritten(&self) -> bool {
        self.flags & FIEMAP_EXTENT_UNWRITTEN != 0
    }

    /// Delayed allocation: no address yet.
    pub fn is_delalloc(&self) -> bool {
        self.flags & FIEMAP_EXTENT_DELALLOC != 0
    }

    /// Data stored inline in metadata, or in a block shared with other files' tails.
    pub fn is_inline(&self) -> bool {
        self.flags & (FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_DATA_TAIL) != 0
    }

    /// Compressed or encrypted by the filesystem.
    pub fn is_encoded(&self) -> bool {
        self.flags & (FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_ENCRYPTED) != 0
    }

    /// Location unknown.
    pub fn is_unknown(&self) -> bool {
        self.flags & FIEMAP_EXTENT_UNKNOWN != 0
    }

    pub fn is_shared(&self) -> bool {
        self.flags & FIEMAP_EXTENT_SHARED != 0
    }

    /// True when `physical + (offset - logical)` is the address of the byte at `offset`
    /// for every byte of the extent, so two extents can be compared byte by byte.
    pub fn has_exact_address(&self) -> bool {
        self.flags & (NEVER_TRUSTED | RECORD_ONLY) == 0
    }
}

/// `struct fiemap` from `<linux/fiemap.h>`, without its flexible array of extents.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FiemapHead {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent` from `<linux/fiemap.h>`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct FiemapExtentRaw {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

const _: () = assert!(std::mem::size_of::<FiemapHead>() == 32);
const _: () = assert!(std::mem::size_of::<FiemapExtentRaw>() == 56);

const RAW_ZERO: FiemapExtentRaw = FiemapExtentRaw {
    fe_logical: 0,
    fe_physical: 0,
    fe_length: 0,
    fe_reserved64: [0; 2],
    fe_flags: 0,
    fe_reserved: [0; 3],
};

/// The buffer handed to the kernel: the header directly followed by room for `BATCH`
/// extents, laid out as the kernel expects (`fm_extents[]` right after the header; both
/// structs are 8-byte aligned and the header is 32 bytes, so `repr(C)` adds no padding).
#[repr(C)]
struct FiemapBuf {
    head: FiemapHead,
    extents: [FiemapExtentRaw; BATCH],
}

// FS_IOC_FIEMAP is `_IOWR('f', 11, struct fiemap)`; the size in the request code is that
// of the header alone.
nix::ioctl_readwrite!(ioctl_fiemap, b'f', 11, FiemapHead);

/// The extent map of `file`, sorted by `logical`, without overlaps; holes are the gaps.
///
/// Asks for `FIEMAP_FLAG_SYNC`: without it, data still waiting for delayed allocation
/// (XFS, ext4, Btrfs) shows up as a hole or as a `DELALLOC` extent without an address,
/// and a fresh write would be missed or reported imprecisely. Fetched in batches of
/// 512 extents until the kernel flags the last one, so the buffer stays small
/// whatever the file.
///
/// The map is a snapshot: call it on files nobody writes (the reflink copies).
pub fn extents(file: &File) -> Result<Vec<Extent>> {
    let mut buf = Box::new(FiemapBuf {
        head: FiemapHead {
            fm_start: 0,
            fm_length: 0,
            fm_flags: 0,
            fm_mapped_extents: 0,
            fm_extent_count: 0,
            fm_reserved: 0,
        },
        extents: [RAW_ZERO; BATCH],
    });
    let mut out: Vec<Extent> = Vec::new();
    let mut start = 0u64;
    let mut flags = FIEMAP_FLAG_SYNC;
    loop {
        buf.head = FiemapHead {
            fm_start: start,
            fm_length: u64::MAX - start,
            fm_flags: flags,
            fm_mapped_extents: 0,
            fm_extent_count: BATCH as u32,
            fm_reserved: 0,
        };
        let ptr = std::ptr::addr_of_mut!(*buf).cast::<FiemapHead>();
        // SAFETY: `ptr` points to a live, exclusively borrowed `FiemapBuf`: a `struct
        // fiemap` header followed by `fm_extent_count` (= BATCH) `struct fiemap_extent`
        // slots, which is all the kernel reads or writes. The pointer is derived from
        // the whole buffer, not just the header, so writes to the extents are in bounds.
        let res = unsafe { ioctl_fiemap(file.as_raw_fd(), ptr) };
        if let Err(errno) = res {
            if errno == nix::errno::Errno::EBADR {
                return Err(FiemapError::BadMap(format!(
                    "the filesystem does not support FIEMAP flags {:#x}",
                    buf.head.fm_flags
                )));
            }
            return Err(FiemapError::Fiemap {
                source: io::Error::from_raw_os_error(errno as i32),
            });
        }
        // Writing dirty pages back once, on the first call, is enough: the file is
        // not being written.
        flags = 0;
        let n = buf.head.fm_mapped_extents as usize;
        if n == 0 {
            break;
        }
        if n > BATCH {
            return Err(FiemapError::BadMap(format!(
                "{n} extents returned for {BATCH} slots"
            )));
        }
        let mut last = false;
        for raw in &buf.extents[..n] {
            last |= raw.fe_flags & FIEMAP_EXTENT_LAST != 0;
            push_extent(&mut out, raw);
        }
        if last {
            break;
        }
        let next = out.last().map_or(start, Extent::end);
        if next <= start {
            return Err(FiemapError::BadMap(format!(
                "no progress past offset {start}"
            )));
        }
        start = next;
    }
    Ok(out)
}

/// Append `raw` to `out`, keeping `out` sorted and free of overlaps. A batch may start
/// with an extent that began before the requested offset (Btrfs reports whole extents);
/// the part already seen is cut off. Cutting an extent without an exact address would
/// make up a record the filesystem never reported, so such a piece is marked `UNKNOWN`,
/// which [`diff_extents`] always counts as changed.
fn push_extent(out: &mut Vec<Extent>, raw: &FiemapExtentRaw) {
    let mut e = Extent {
        logical: raw.fe_logical,
        physical: raw.fe_physical,
        length: raw.fe_length,
        flags: raw.fe_flags,
    };
    let prev_end = out.last().map_or(0, Extent::end);
    if e.length == 0 || e.end() <= prev_end {
        return;
    }
    if e.logical < prev_end {
        let cut = prev_end - e.logical;
        if e.has_exact_address() {
            e.physical = e.physical.wrapping_add(cut);
        } else {
            e.flags |= FIEMAP_EXTENT_UNKNOWN;
        }
        e.logical = prev_end;
        e.length -= cut;
    }
    out.push(e);
}

/// Why a byte range counts as changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Data on both sides, at different physical addresses.
    Moved,
    /// Became or stopped being a hole, unwritten space or data.
    Kind,
    /// An extent on either side has no exact address (delalloc, unknown, inline,
    /// encoded) and the records are not identical.
    Opaque,
    /// Past the end of the shorter file (the chunk holding the old end included).
    Size,
}

/// What one side maps a segment to.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Hole,
    Unwritten,
    /// Data at `physical - logical` (wrapping): equal offsets mean equal addresses for
    /// every byte of a segment both sides map linearly.
    Data(u64),
    Opaque(&'a Extent),
}

fn classify(e: &Extent) -> Seg<'_> {
    if !e.has_exact_address() {
        Seg::Opaque(e)
    } else if e.is_unwritten() {
        Seg::Unwritten
    } else {
        Seg::Data(e.physical.wrapping_sub(e.logical))
    }
}

/// Same record, flags that carry no meaning for the data left out.
fn same_record(a: &Extent, b: &Extent) -> bool {
    a.logical == b.logical
        && a.physical == b.physical
        && a.length == b.length
        && a.flags & !IGNORED == b.flags & !IGNORED
}

fn compare(a: Seg<'_>, b: Seg<'_>) -> Option<ChangeKind> {
    match (a, b) {
        (Seg::Hole, Seg::Hole) => None,
        // Unwritten space reads as zeros wherever it is allocated.
        (Seg::Unwritten, Seg::Unwritten) => None,
        (Seg::Data(x), Seg::Data(y)) => (x != y).then_some(ChangeKind::Moved),
        (Seg::Opaque(x), Seg::Opaque(y)) => {
            let trusted = x.flags & NEVER_TRUSTED == 0 && same_record(x, y);
            (!trusted).then_some(ChangeKind::Opaque)
        }
        (Seg::Opaque(_), _) | (_, Seg::Opaque(_)) => Some(ChangeKind::Opaque),
        _ => Some(ChangeKind::Kind),
    }
}

/// The segment one side maps at `pos` and where it ends. `i` is advanced past extents
/// that end at or before `pos`; the lists must be sorted (as [`extents`] returns them),
/// and overlapping garbage still terminates, since every segment ends after `pos`.
fn seg_at<'a>(list: &'a [Extent], i: &mut usize, pos: u64) -> (Seg<'a>, u64) {
    while *i < list.len() && list[*i].end() <= pos {
        *i += 1;
    }
    match list.get(*i) {
        Some(e) if e.logical <= pos => (classify(e), e.end()),
        Some(e) => (Seg::Hole, e.logical),
        None => (Seg::Hole, u64::MAX),
    }
}

/// Call `changed(offset, len, why)` for each byte range, in increasing order, whose
/// contents may differ between a file of `tick_size` bytes mapped by `tick` and one of
/// `tock_size` bytes mapped by `tock`. Extent lists must be sorted by `logical` and not
/// overlap, as [`extents`] returns them.
///
/// Within `[0, min(tick_size, tock_size))`, a byte has changed when:
/// - it is data on both sides at different physical addresses;
/// - it is a hole, unwritten space or data on one side and another of these on the
///   other (hole to unwritten included: cheap to be strict about);
/// - either side's extent has no exact address ([`Extent::has_exact_address`]), unless
///   both sides report the identical record (flags `SHARED`, `LAST`, `MERGED` aside)
///   and it is neither inline, tail, delalloc nor unknown. Identical encoded records
///   name the same encoded extent at the same file range, which the `tick` keeps
///   allocated; inline data is always reported at address 0, so it is never trusted.
///
/// Unwritten space is equal to unwritten space wherever it lies: both read as zeros.
/// The `SHARED` flag is ignored: the `tick` shares with the image by design.
///
/// When the sizes differ, `[min, max)` is reported as [`ChangeKind::Size`]; callers
/// round its start down to the chunk holding `min`.
///
/// Runs in time proportional to the number of extents.
pub fn diff_extents(
    tick: &[Extent],
    tick_size: u64,
    tock: &[Extent],
    tock_size: u64,
    mut changed: impl FnMut(u64, u64, ChangeKind),
) {
    let end = tick_size.min(tock_size);
    let (mut i, mut j) = (0usize, 0usize);
    let mut pos = 0u64;
    // A pending range, so that neighbouring segments of one kind are reported once.
    let mut pending: Option<(u64, u64, ChangeKind)> = None;
    while pos < end {
        let (a, a_end) = seg_at(tick, &mut i, pos);
        let (b, b_end) = seg_at(tock, &mut j, pos);
        let seg_end = a_end.min(b_end).min(end);
        if let Some(kind) = compare(a, b) {
            match &mut pending {
                Some((_, p_end, p_kind)) if *p_end == pos && *p_kind == kind => *p_end = seg_end,
                _ => {
                    if let Some((s, e, k)) = pending {
                        changed(s, e - s, k);
                    }
                    pending = Some((pos, seg_end, kind));
                }
            }
        }
        pos = seg_end;
    }
    if let Some((s, e, k)) = pending {
        changed(s, e - s, k);
    }
    if tick_size != tock_size {
        let max = tick_size.max(tock_size);
        changed(end, max - end, ChangeKind::Size);
    }
}

/// What [`mark_changes`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    pub tick_extents: usize,
    pub tock_extents: usize,
    /// Bytes whose data moved ([`ChangeKind::Moved`]), before rounding to chunks.
    pub moved_bytes: u64,
    /// Bytes that changed between hole, unwritten and data.
    pub kind_bytes: u64,
    /// Bytes counted as changed because an address was not exact.
    pub opaque_bytes: u64,
    /// Bytes between the two sizes.
    pub size_bytes: u64,
    /// Distinct chunks this call marked (whether or not they were marked before),
    /// within the map's coverage.
    pub marked_chunks: u64,
}

/// Mark in `map` every chunk that may differ between the `tick` copy (`tick_size`
/// bytes, extent map `tick`) and the `tock` copy: every chunk holding a byte that
/// [`diff_extents`] reports, and when the size changed, everything from the chunk that
/// holds the shorter size up to the longer one. Chunks past the map's end are ignored
/// (the caller resizes the map for a grown volume first).
///
/// Marking only ever sets bits, so redoing it after a crash is safe. Cost: linear in
/// the number of extents, plus the marked chunks divided by 8 (whole bytes of the
/// bitmap are filled at once).
pub fn mark_changes(
    tick: &[Extent],
    tick_size: u64,
    tock: &[Extent],
    tock_size: u64,
    map: &mut DeltaMap,
) -> ChangeSummary {
    let chunk = map.chunksize();
    let nchunks = map.nchunks();
    let mut sum = ChangeSummary {
        tick_extents: tick.len(),
        tock_extents: tock.len(),
        ..ChangeSummary::default()
    };
    // Ranges come in increasing order, so chunks marked twice are adjacent.
    let mut marked_to = 0u64;
    diff_extents(tick, tick_size, tock, tock_size, |offset, len, kind| {
        // `offset + len` is at most the larger size: no overflow.
        let (first, last) = (offset / chunk, (offset + len).div_ceil(chunk));
        match kind {
            ChangeKind::Moved => sum.moved_bytes += len,
            ChangeKind::Kind => sum.kind_bytes += len,
            ChangeKind::Opaque => sum.opaque_bytes += len,
            ChangeKind::Size => sum.size_bytes += len,
        }
        map.mark_chunks(first, last);
        let from = first.max(marked_to);
        let to = last.min(nchunks);
        if to > from {
            sum.marked_chunks += to - from;
        }
        marked_to = marked_to.max(last);
    });
    tracing::debug!(?sum, "reflink extent maps compared");
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = 65536;
    const K: u64 = 4096;

    fn data(logical: u64, physical: u64, length: u64) -> Extent {
        Extent {
            logical,
            physical,
            length,
            flags: 0,
        }
    }

    fn with(mut e: Extent, flags: u32) -> Extent {
        e.flags |= flags;
        e
    }

    fn new_map(dir: &tempfile::TempDir, nchunks: u64) -> DeltaMap {
        DeltaMap::create(&dir.path().join("deltamap"), C, nchunks).unwrap()
    }

    /// Marked chunk runs after comparing; the map covers `nchunks`.
    fn runs(
        tick: &[Extent],
        tick_size: u64,
        tock: &[Extent],
        tock_size: u64,
        nchunks: u64,
    ) -> (Vec<(u64, u64)>, ChangeSummary) {
        let dir = tempfile::tempdir().unwrap();
        let mut map = new_map(&dir, nchunks);
        let sum = mark_changes(tick, tick_size, tock, tock_size, &mut map);
        assert_eq!(
            sum.marked_chunks,
            map.count(),
            "summary count of a fresh map"
        );
        (map.runs().collect(), sum)
    }

    /// A 16-chunk file: data in chunks 0..6 (one extent), a hole 6..8, unwritten 8..10,
    /// data 10..16 (two extents, the second one shared).
    fn base() -> Vec<Extent> {
        vec![
            data(0, 1 << 30, 6 * C),
            with(data(8 * C, 2 << 30, 2 * C), FIEMAP_EXTENT_UNWRITTEN),
            data(10 * C, 3 << 30, 3 * C),
            with(
                data(13 * C, 4 << 30, 3 * C),
                FIEMAP_EXTENT_SHARED | FIEMAP_EXTENT_LAST,
            ),
        ]
    }

    /// Replace `[off, off+len)` of `list` by `new` (None = hole), splitting extents the
    /// way a copy-on-write filesystem does.
    fn remap(list: &[Extent], off: u64, len: u64, new: Option<Extent>) -> Vec<Extent> {
        let end = off + len;
        let mut out = Vec::new();
        for e in list {
            if e.end() <= off || e.logical >= end {
                out.push(*e);
                continue;
            }
            if e.logical < off {
                out.push(Extent {
                    length: off - e.logical,
                    ..*e
                });
            }
            if e.end() > end {
                let cut = end - e.logical;
                out.push(Extent {
                    logical: end,
                    physical: e.physical + cut,
                    length: e.end() - end,
                    flags: e.flags,
                });
            }
        }
        out.extend(new);
        out.sort_by_key(|e| e.logical);
        out
    }

    #[test]
    fn identical_maps_mark_nothing() {
        let (r, sum) = runs(&base(), 16 * C, &base(), 16 * C, 16);
        assert_eq!(r, vec![]);
        assert_eq!(sum.marked_chunks, 0);
    }

    #[test]
    fn shared_flag_is_ignored() {
        let tock: Vec<Extent> = base()
            .into_iter()
            .map(|e| with(e, FIEMAP_EXTENT_SHARED))
            .collect();
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![]);
    }

    #[test]
    fn one_block_rewritten() {
        let tock = remap(&base(), 3 * C + K, K, Some(data(3 * C + K, 7 << 30, K)));
        let (r, sum) = runs(&base(), 16 * C, &tock, 16 * C, 16);
        assert_eq!(r, vec![(3, 4)]);
        assert_eq!(sum.moved_bytes, K);
    }

    #[test]
    fn chunk_straddling_write() {
        let tock = remap(
            &base(),
            5 * C - K,
            2 * K,
            Some(data(5 * C - K, 7 << 30, 2 * K)),
        );
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![(4, 6)]);
        // Straddling an extent boundary (chunk 12/13, extents 10..13 and 13..16).
        let tock = remap(
            &base(),
            13 * C - K,
            2 * K,
            Some(data(13 * C - K, 7 << 30, 2 * K)),
        );
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![(12, 14)]);
    }

    #[test]
    fn hole_punched() {
        let tock = remap(&base(), 2 * C + 8 * K, 4 * K, None);
        let (r, sum) = runs(&base(), 16 * C, &tock, 16 * C, 16);
        assert_eq!(r, vec![(2, 3)]);
        assert_eq!(sum.kind_bytes, 4 * K);
        // Punching a hole into a hole changes nothing.
        let tock = remap(&base(), 6 * C, 2 * C, None);
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![]);
    }

    #[test]
    fn became_unwritten_or_written() {
        let tock = remap(
            &base(),
            C,
            C,
            Some(with(data(C, 1 << 30, C), FIEMAP_EXTENT_UNWRITTEN)),
        );
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![(1, 2)]);
        // Written into unwritten space in place (same address, flag gone).
        let tock = remap(&base(), 9 * C, K, Some(data(9 * C, (2 << 30) + C, K)));
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![(9, 10)]);
        // Unwritten moved elsewhere still reads as zeros.
        let tock = remap(
            &base(),
            8 * C,
            2 * C,
            Some(with(data(8 * C, 9 << 30, 2 * C), FIEMAP_EXTENT_UNWRITTEN)),
        );
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![]);
        // Hole became unwritten.
        let tock = remap(
            &base(),
            6 * C,
            K,
            Some(with(data(6 * C, 9 << 30, K), FIEMAP_EXTENT_UNWRITTEN)),
        );
        assert_eq!(runs(&base(), 16 * C, &tock, 16 * C, 16).0, vec![(6, 7)]);
    }

    #[test]
    fn grow_and_shrink() {
        // Grown by 3.5 chunks, the new tail a hole: chunks from 16 up to the new end.
        let (r, sum) = runs(&base(), 16 * C, &base(), 19 * C + C / 2, 32);
        assert_eq!(r, vec![(16, 20)]);
        assert_eq!(sum.size_bytes, 3 * C + C / 2);
        // Grown from an unaligned size: the chunk holding the old end is included.
        let (r, _) = runs(&base(), 15 * C + 100, &base(), 17 * C, 32);
        assert_eq!(r, vec![(15, 17)]);
        // Shrunk to mid-chunk: from the chunk holding the new end to the old end.
        let (r, _) = runs(&base(), 16 * C, &base(), 11 * C + 5, 16);
        assert_eq!(r, vec![(11, 16)]);
        // Shrunk to a chunk boundary: the first chunk past the new end is marked, so a
        // map still covering the old size knows every chunk that went away.
        let (r, _) = runs(&base(), 16 * C, &base(), 12 * C, 16);
        assert_eq!(r, vec![(12, 16)]);
        // Grown from empty.
        let (r, _) = runs(&[], 0, &base(), 16 * C, 16);
        assert_eq!(r, vec![(0, 16)]);
    }

    #[test]
    fn extents_not_aligned_to_chunks() {
        // One extent per 12 KiB, all crossing chunk boundaries at odd places.
        let tick: Vec<Extent> = (0..80)
            .map(|n| data(n * 3 * K, (100 + n * 7) * C, 3 * K))
            .collect();
        let size = 80 * 3 * K; // 15 chunks exactly
        assert_eq!(runs(&tick, size, &tick, size, 15).0, vec![]);
        // Replace extent 21 ([252K, 264K): chunks 3 and 4).
        let mut tock = tick.clone();
        tock[21].physical = 999 * C;
        assert_eq!(runs(&tick, size, &tock, size, 15).0, vec![(3, 5)]);
        // The same bytes described by differently cut extents are unchanged.
        let merged = vec![data(0, 5 << 30, size)];
        let cut: Vec<Extent> = (0..80)
            .map(|n| data(n * 3 * K, (5 << 30) + n * 3 * K, 3 * K))
            .collect();
        assert_eq!(runs(&merged, size, &cut, size, 15).0, vec![]);
        // File size not a multiple of the block size: the last extent runs past it.
        let tick = vec![with(data(0, 1 << 30, 2 * K), FIEMAP_EXTENT_LAST)];
        let tock = vec![
            data(0, 1 << 30, K),
            with(data(K, 2 << 30, K), FIEMAP_EXTENT_LAST),
        ];
        assert_eq!(runs(&tick, 5000, &tock, 5000, 1).0, vec![(0, 1)]);
        assert_eq!(runs(&tick, 4096, &tock, 4096, 1).0, vec![]);
    }

    #[test]
    fn opaque_extents() {
        let enc = |l, p, n| with(data(l, p, n), FIEMAP_EXTENT_ENCODED);
        // Identical compressed records are trusted, SHARED and LAST aside.
        let tick = vec![enc(0, 1 << 30, 2 * C), enc(2 * C, 2 << 30, 2 * C)];
        let tock = vec![
            with(enc(0, 1 << 30, 2 * C), FIEMAP_EXTENT_SHARED),
            with(enc(2 * C, 2 << 30, 2 * C), FIEMAP_EXTENT_LAST),
        ];
        assert_eq!(runs(&tick, 4 * C, &tock, 4 * C, 4).0, vec![]);
        // Same start address, shorter: part of the extent was rewritten; the whole
        // overlap of differing records is changed.
        let tock = vec![
            enc(0, 1 << 30, C),
            data(C, 7 << 30, K),
            enc(C + K, 1 << 30, C - K),
            enc(2 * C, 2 << 30, 2 * C),
        ];
        let (r, sum) = runs(&tick, 4 * C, &tock, 4 * C, 4);
        assert_eq!(r, vec![(0, 2)]);
        assert_eq!(sum.opaque_bytes, 2 * C);
        // Compressed on one side, plain on the other.
        let tock = vec![data(0, 1 << 30, 2 * C), enc(2 * C, 2 << 30, 2 * C)];
        assert_eq!(runs(&tick, 4 * C, &tock, 4 * C, 4).0, vec![(0, 2)]);
        // Inline data (Btrfs: address 0 whatever it holds) is never trusted.
        let inline = vec![with(
            data(0, 0, 3000),
            FIEMAP_EXTENT_DATA_INLINE | FIEMAP_EXTENT_NOT_ALIGNED | FIEMAP_EXTENT_LAST,
        )];
        assert_eq!(runs(&inline, 3000, &inline, 3000, 1).0, vec![(0, 1)]);
        // Nor is delayed allocation or an unknown location.
        let delalloc = vec![with(
            data(C, 0, K),
            FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_UNKNOWN,
        )];
        assert_eq!(runs(&delalloc, 4 * C, &delalloc, 4 * C, 4).0, vec![(1, 2)]);
        let unknown = vec![with(data(3 * C, 5 << 30, K), FIEMAP_EXTENT_UNKNOWN)];
        assert_eq!(runs(&unknown, 4 * C, &unknown, 4 * C, 4).0, vec![(3, 4)]);
    }

    #[test]
    fn garbage_terminates() {
        // Overlapping, unsorted, zero-length and overflowing records: no panic, no hang.
        let bad = vec![
            data(5 * C, 0, 3 * C),
            data(C, 1, 0),
            data(0, 2, 2 * C),
            data(u64::MAX - 5, 3, 100),
            data(6 * C, 4, C),
        ];
        let (_, sum) = runs(&bad, 8 * C, &base(), 8 * C, 8);
        assert!(sum.marked_chunks <= 8);
        let (r, _) = runs(&bad, u64::MAX, &bad, u64::MAX, 8);
        assert_eq!(r, vec![]);
    }

    #[test]
    fn push_extent_cuts_overlaps() {
        let raw = |l, p, n, f| FiemapExtentRaw {
            fe_logical: l,
            fe_physical: p,
            fe_length: n,
            fe_flags: f,
            ..RAW_ZERO
        };
        let mut out = Vec::new();
        push_extent(&mut out, &raw(0, 1000, 100, 0));
        push_extent(&mut out, &raw(0, 1000, 100, 0)); // repeated: dropped
        push_extent(&mut out, &raw(50, 2050, 100, 0)); // overlaps: cut
        push_extent(&mut out, &raw(100, 3000, 200, FIEMAP_EXTENT_ENCODED)); // cut, opaque
        push_extent(&mut out, &raw(400, 4000, 0, 0)); // empty: dropped
        assert_eq!(
            out,
            vec![
                data(0, 1000, 100),
                data(100, 2100, 50),
                with(
                    data(150, 3000, 150),
                    FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_UNKNOWN
                ),
            ]
        );
    }

    /// A 1 TiB image with 10,000 scattered 1 MiB extents, a few of them rewritten: the
    /// comparison never walks the file, only the lists.
    #[test]
    fn one_tib_sparse_list_is_quick() {
        const TIB: u64 = 1 << 40;
        let nchunks = TIB / C;
        let step = 1600 * C; // 100 MiB
        let tick: Vec<Extent> = (0..10_000u64)
            .map(|n| data(n * step, (1 << 42) + n * (1 << 20), 1 << 20))
            .collect();
        let mut tock = tick.clone();
        for n in [7usize, 5000, 9999] {
            tock[n].physical += 1 << 41; // moved
        }
        tock.remove(1234); // punched out
        let t = std::time::Instant::now();
        let (r, sum) = runs(&tick, TIB, &tock, TIB, nchunks);
        let took = t.elapsed();
        eprintln!("1 TiB, 10000 extents: {took:?} (including the 2 MiB map)");
        let first = |n: u64| n * step / C;
        let expect: Vec<(u64, u64)> = [7u64, 1234, 5000, 9999]
            .iter()
            .map(|&n| (first(n), first(n) + 16))
            .collect();
        assert_eq!(r, expect);
        assert_eq!(sum.moved_bytes, 3 << 20);
        assert_eq!(sum.kind_bytes, 1 << 20);
        // Growing a 1 TiB file by another TiB marks 16M chunks by filling bytes.
        let (r, _) = runs(&tick, TIB, &tick, 2 * TIB, 2 * nchunks);
        assert_eq!(r, vec![(nchunks, 2 * nchunks)]);
    }
}
