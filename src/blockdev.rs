//! Block device helpers: size, zeroing and discarding ranges.

use std::fs::File;
use std::os::fd::AsRawFd;

// From <linux/fs.h>.
nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
// BLKZEROOUT is declared `_IO(0x12, 127)` although it takes a pointer to two u64.
nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);

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

/// Make `[off, off+len)` of a block device read back as zeros (`BLKZEROOUT`: the kernel
/// uses write-zeroes or unmap where the device guarantees zeros, else writes them).
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
