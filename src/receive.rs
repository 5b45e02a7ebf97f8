//! Where a received volume goes: a regular file (written under a temporary name and
//! renamed into place only when complete and checked) or an existing block device.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::restore::{restore, RestoreError, RestoreStats, SparseFileTarget, Target};
use sparsebak_format::volume::VolumeArchive;

use crate::blockdev;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::zeroing::Zeroing;

/// What is at the `--save-to` path now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestKind {
    /// Nothing: a new file will be made.
    New,
    /// A regular file that will be replaced.
    ExistingFile,
    /// A block device that will be overwritten.
    BlockDevice { size: u64 },
}

/// Look at `path` before receiving into it.
pub fn inspect(path: &Path) -> Result<DestKind> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::devpath::refuse_regular_file(path)?;
            Ok(DestKind::New)
        }
        Err(e) => Err(e).at(path),
        Ok(m) if m.is_file() => {
            crate::devpath::refuse_regular_file(path)?;
            Ok(DestKind::ExistingFile)
        }
        Ok(_) => {
            let f = File::open(path).at(path)?;
            if blockdev::is_block_device(&f).at(path)? {
                Ok(DestKind::BlockDevice {
                    size: blockdev::device_size(&f).at(path)?,
                })
            } else {
                Err(Error::Msg(format!(
                    "{} is neither a regular file nor a block device",
                    path.display()
                )))
            }
        }
    }
}

/// A block device: data written in place, every other range zeroed the way the device
/// is best zeroed (unmapped on a thin LV, see [`Zeroing`]).
struct DeviceTarget {
    file: File,
    zeroing: Zeroing,
}

impl Target for DeviceTarget {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, off)
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        self.zeroing.zero(&self.file, off, len)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Rebuild `chain`'s last session into `path`. Every chunk's hash is checked; on any
/// error a file destination is left untouched.
pub fn receive_to(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    path: &Path,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreStats> {
    let last = chain
        .last()
        .ok_or_else(|| Error::Msg(format!("volume {} has no sessions", vol.name)))?;
    let map_err = |e: RestoreError| Error::Msg(format!("receive {}: {e}", vol.name));
    match inspect(path)? {
        DestKind::BlockDevice { size } => {
            if size < last.volsize {
                return Err(Error::Msg(format!(
                    "{} is {size} bytes, smaller than volume {} ({} bytes); refusing",
                    path.display(),
                    vol.name,
                    last.volsize
                )));
            }
            // Read too: zeroing on a thin LV reads what partial blocks hold.
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .at(path)?;
            let zeroing = Zeroing::for_device(&file);
            let mut t = DeviceTarget { file, zeroing };
            restore(vol, chain, &mut t, true, progress).map_err(map_err)
        }
        DestKind::New | DestKind::ExistingFile => durable::replace_with(path, |tmp| {
            let file = File::create(tmp).at(tmp)?;
            let mut t = SparseFileTarget::new(file, last.volsize).at(tmp)?;
            restore(vol, chain, &mut t, true, progress).map_err(map_err)
        }),
    }
}

/// `--zero-tail`: make a block device read as zeros past `volsize` (a restore leaves
/// what lies there as it was), the way the device is best zeroed. Returns the bytes
/// zeroed; a regular file (as long as the volume) has no tail.
pub fn zero_tail(path: &Path, volsize: u64) -> Result<u64> {
    let file = OpenOptions::new()
        .write(true)
        .read(true)
        .open(path)
        .at(path)?;
    if !blockdev::is_block_device(&file).at(path)? {
        return Ok(0);
    }
    let size = blockdev::device_size(&file).at(path)?;
    let tail = size.saturating_sub(volsize);
    Zeroing::for_device(&file)
        .zero(&file, volsize, tail)
        .at(path)?;
    file.sync_all().at(path)?;
    Ok(tail)
}
