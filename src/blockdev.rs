//! Block device helpers: size, zeroing and discarding ranges.

use std::fs::File;
use std::os::fd::AsRawFd;

// From <linux/fs.h>.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
// BLKZEROOUT is declared `_IO(0x12, 127)` although it takes a pointer to two u64.
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
// BLKSSZGET is `_IO(0x12, 104)` and writes an int.
nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);

/// Whether `f` is a block device.
pub fn is_block_device(f: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileTypeExt;
    Ok(f.metadata()?.file_type().is_block_device())
}

/// Size in bytes of a block device.
pub fn device_size(f: &File) -> std::io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass.
    unsafe { blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    Ok(size)
}

/// Size of a file or block device.
pub fn size_of(f: &File) -> std::io::Result<u64> {
    if is_block_device(f)? {
        device_size(f)
    } else {
        Ok(f.metadata()?.len())
    }
}

/// Logical block size of a block device (`BLKSSZGET`): the unit of `BLKZEROOUT` and
/// `BLKDISCARD` ranges.
pub fn logical_block_size(f: &File) -> std::io::Result<u64> {
    let mut size: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int to the pointer we pass.
    unsafe { blksszget(f.as_raw_fd(), &mut size) }.map_err(std::io::Error::from)?;
    match u64::try_from(size) {
        Ok(s) if s >= 512 && s.is_power_of_two() => Ok(s),
        _ => Err(std::io::Error::other(format!(
            "the device reports a logical block size of {size}"
        ))),
    }
}

/// `[off, off+len)` split at multiples of `block` (a power of two): the unaligned head,
/// the aligned middle and the unaligned tail, each `(offset, length)`, possibly empty.
pub fn split_aligned(off: u64, len: u64, block: u64) -> [(u64, u64); 3] {
    let end = off + len;
    let mid_start = off.next_multiple_of(block).min(end);
    let mid_end = (end / block * block).max(mid_start);
    [
        (off, mid_start - off),
        (mid_start, mid_end - mid_start),
        (mid_end, end - mid_end),
    ]
}

/// Make `[off, off+len)` of a block device of logical block size `block` read back as
/// zeros, at any offset and length: the aligned middle with [`zero_out`], the unaligned
/// head and tail (less than a block each) by writing zeros.
pub fn zero_range(f: &File, block: u64, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let [head, mid, tail] = split_aligned(off, len, block);
    for (o, l) in [head, tail] {
        if l > 0 {
            f.write_all_at(&vec![0u8; l as usize], o)?;
        }
    }
    zero_out(f, mid.0, mid.1)
}

/// Make `[off, off+len)` of a block device read back as zeros (`BLKZEROOUT`: the kernel
/// uses write-zeroes or unmap where the device guarantees zeros, else writes them).
/// `off` and `len` must be multiples of the logical block size (EINVAL otherwise); see
/// [`zero_range`] for any range.
pub fn zero_out(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range = [off, len];
    // SAFETY: BLKZEROOUT reads two u64 (start, length) from the pointer.
    unsafe { blkzeroout(f.as_raw_fd(), &range) }.map_err(std::io::Error::from)?;
    Ok(())
}

// BLKDISCARD is `_IO(0x12, 119)`, taking a pointer to two u64 like BLKZEROOUT.
nix::ioctl_write_ptr_bad!(blkdiscard, nix::request_code_none!(0x12, 119), [u64; 2]);

/// Discard `[off, off+len)` of a block device (`BLKDISCARD`). What a discarded range
/// reads back as depends on the device; see `zeroing` for where it is zeros.
pub fn discard(f: &File, off: u64, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    let range = [off, len];
    // SAFETY: BLKDISCARD reads two u64 (start, length) from the pointer.
    unsafe { blkdiscard(f.as_raw_fd(), &range) }.map_err(std::io::Error::from)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split_aligned;

    #[test]
    fn ranges_split_at_block_boundaries() {
        // 4 MiB + 12345 bytes volume, zero tail from 3 MiB on, 512-byte blocks.
        let (o, l) = (3 << 20, (1 << 20) + 12345);
        assert_eq!(
            split_aligned(o, l, 512),
            [(o, 0), (o, (1 << 20) + 12288), (o + (1 << 20) + 12288, 57)]
        );
        assert_eq!(
            split_aligned(100, 50, 4096),
            [(100, 50), (150, 0), (150, 0)]
        );
        assert_eq!(
            split_aligned(100, 9000, 4096),
            [(100, 3996), (4096, 4096), (8192, 908)]
        );
        assert_eq!(
            split_aligned(4096, 8192, 4096),
            [(4096, 0), (4096, 8192), (12288, 0)]
        );
        assert_eq!(split_aligned(7, 0, 512), [(7, 0), (7, 0), (7, 0)]);
    }
}
