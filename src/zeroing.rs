//! How a block device's ranges are made to read as zeros when a volume is restored
//! into it.
//!
//! The default is `BLKZEROOUT`: the kernel unmaps where the device promises zeros after
//! an unmap (write-zeroes with unmap) and writes zeros otherwise. dm-thin offers no
//! write-zeroes, so there every zeroed range would be *written*, and a restore would
//! provision the whole thin LV (and could run an overprovisioned pool out of space).
//! A dm-thin device unmaps whole pool blocks on discard, and an unmapped block reads as
//! zeros; so on a thin LV whose pool passes discards, whole pool blocks are discarded
//! (`BLKDISCARD`, a no-op on blocks never provisioned) and only the partial blocks at
//! the edges are zeroed, and only where they do not read as zeros already (which they
//! do on a fresh LV).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::blockdev;

/// How to make a range of a device read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroing {
    /// `BLKZEROOUT` every range (aligned to the `logical` block size, the unaligned
    /// rest written as zeros).
    ZeroOut { logical: u64 },
    /// Discard whole blocks of `block` bytes (aligned to the device start); zero
    /// only what does not read as zeros in the partial blocks at the edges.
    Unmap { block: u64, logical: u64 },
}

/// Ranges read back before zeroing them are read in pieces of this size.
const READ_PIECE: u64 = 1 << 20;

impl Zeroing {
    /// The way for `f` (a block device): [`Zeroing::Unmap`] on a dm-thin device whose
    /// pool passes discards, else [`Zeroing::ZeroOut`].
    ///
    /// Errors: the device's logical block size cannot be read.
    pub fn for_device(f: &File) -> std::io::Result<Zeroing> {
        let logical = if blockdev::is_block_device(f)? {
            blockdev::logical_block_size(f)?
        } else {
            512
        };
        Ok(match thin_block_size(f) {
            Some(block) => {
                tracing::debug!(block, "thin device: unmapping zero ranges by pool block");
                Zeroing::Unmap { block, logical }
            }
            None => Zeroing::ZeroOut { logical },
        })
    }

    /// Make `[off, off+len)` of `f` read as zeros. `f` must be open for reading too
    /// (partial blocks are read before they are zeroed).
    pub fn zero(&self, f: &File, off: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (block, logical) = match *self {
            Zeroing::ZeroOut { logical } => return blockdev::zero_range(f, logical, off, len),
            Zeroing::Unmap { block, logical } => (block, logical),
        };
        let end = off + len;
        let first = off.div_ceil(block) * block;
        let last = end / block * block;
        if first >= last {
            return zero_where_needed(f, logical, off, len, READ_PIECE);
        }
        zero_where_needed(f, logical, off, first - off, READ_PIECE)?;
        // One request for every whole block: the kernel splits it where the device
        // needs, on granularity boundaries.
        blockdev::discard(f, first, last - first)?;
        if !block.is_power_of_two() {
            // Except where it rounds with power-of-two arithmetic (`round_up` in the
            // discard path of recent kernels): with a pool block like 192 KiB a request
            // can then be cut off a block boundary, and dm-thin leaves a block it got
            // only part of mapped. Check each block; zero the ones that kept data.
            zero_where_needed(f, logical, first, last - first, block)?;
        }
        zero_where_needed(f, logical, last, end - last, READ_PIECE)
    }
}

/// Zero `[off, off+len)` only in the pieces of `unit` bytes that do not read as zeros
/// already, so blocks a thin device never provisioned stay unprovisioned.
fn zero_where_needed(f: &File, logical: u64, off: u64, len: u64, unit: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; unit.min(len) as usize];
    let mut pos = off;
    while pos < off + len {
        let n = unit.min(off + len - pos);
        let piece = &mut buf[..n as usize];
        f.read_exact_at(piece, pos)?;
        if piece.iter().any(|&b| b != 0) {
            blockdev::zero_range(f, logical, pos, n)?;
        }
        pos += n;
    }
    Ok(())
}

/// For a dm-thin device whose discards unmap: its pool's block size in bytes.
fn thin_block_size(f: &File) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    if !blockdev::is_block_device(f).ok()? {
        return None;
    }
    let rdev = f.metadata().ok()?.rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let sys = Path::new("/sys/dev/block").join(format!("{major}:{minor}"));
    let name = std::fs::read_to_string(sys.join("dm/name")).ok()?;
    // A pool that ignores discards reports no discard support on its thin devices.
    let max_discard: u64 = std::fs::read_to_string(sys.join("queue/discard_max_bytes"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    if max_discard == 0 {
        return None;
    }
    // `0 <len> thin <pool major:minor> <dev id>`: one line for a thin device.
    let table = dm_table(&["--", name.trim_end()])?;
    let mut lines = table.lines();
    let f: Vec<&str> = lines.next()?.split_whitespace().collect();
    if lines.next().is_some() || f.get(2) != Some(&"thin") {
        return None;
    }
    let (pmaj, pmin) = f.get(3)?.split_once(':')?;
    // `0 <len> thin-pool <meta> <data> <block size in sectors> ...`
    let pool = dm_table(&["-j", pmaj, "-m", pmin])?;
    let p: Vec<&str> = pool.lines().next()?.split_whitespace().collect();
    if p.get(2) != Some(&"thin-pool") {
        return None;
    }
    let sectors: u64 = p.get(5)?.parse().ok()?;
    (sectors > 0).then_some(sectors * 512)
}

/// `dmsetup table ARGS`, or `None` if it cannot say.
fn dm_table(args: &[&str]) -> Option<String> {
    let out = Command::new("dmsetup")
        .arg("table")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_not_thin() {
        let f = tempfile::tempfile().unwrap();
        assert_eq!(
            Zeroing::for_device(&f).unwrap(),
            Zeroing::ZeroOut { logical: 512 }
        );
    }
}
