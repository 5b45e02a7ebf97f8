//! Where a received volume goes: a regular file (written under a temporary name beside
//! the real file and renamed into place only when complete and checked), an existing
//! block device (written in place), or standard output and FIFOs (written in order,
//! zeros included). What the path is, symlinks followed, is settled before anything is
//! written ([`sparsebak_format::output`]).

use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::output::{self, Output, OutputKind, PartialFile};
use sparsebak_format::restore::{restore, RestoreStats, SparseFileTarget, StreamTarget, Target};
use sparsebak_format::volume::VolumeArchive;

use crate::blockdev;
use crate::error::{Error, IoAt, Result};
use crate::zeroing::Zeroing;

/// Look at `path` (`-` is standard output) and refuse, before anything is written, what
/// cannot take a volume of `volsize` bytes: character devices, sockets, directories,
/// dangling symlinks, a block device smaller than the volume, a terminal.
pub fn check_target(path: &Path, volsize: u64, volume: &str) -> Result<Output> {
    let out = output::inspect(path).map_err(|e| Error::Msg(e.to_string()))?;
    match out.kind {
        OutputKind::CharDevice => Err(Error::Msg(format!(
            "{} is a character device; give a file, a block device, a FIFO or - for standard output",
            out.describe()
        ))),
        OutputKind::BlockDevice { size } if size < volsize => Err(Error::Msg(format!(
            "{} is {size} bytes, smaller than volume {volume} ({volsize} bytes); refusing",
            out.describe()
        ))),
        OutputKind::Stdout if std::io::stdout().is_terminal() => Err(Error::Msg(
            "refusing to write a disk image to a terminal; redirect standard output".into(),
        )),
        _ => Ok(out),
    }
}

/// Refuse a file target inside the archive of any local destination of `config` or
/// inside its metadata folder (`metadir`): a restore there would replace or add files
/// of them. Checked before anything is written.
pub fn refuse_in_archives(out: &Output, config: &crate::config::Config) -> Result<()> {
    let refused = |e: output::OutputError| Error::Msg(e.to_string());
    // A far side's folder is not on this machine: a path of the same name here is
    // something else.
    // A tape destination has no folder here.
    for d in config
        .dests
        .iter()
        .filter(|d| d.remote.is_none() && d.tape.is_none())
    {
        output::refuse_inside(out, &d.destdir, "the archive").map_err(refused)?;
    }
    if config.remote.is_none() && config.tape.is_none() {
        output::refuse_inside(out, &config.destdir, "the archive").map_err(refused)?;
    }
    output::refuse_inside(out, &config.metadir, "the metadata folder (metadir)").map_err(refused)
}

/// A block device written in place. Zero ranges are made to read as zeros the way the
/// device is best zeroed ([`Zeroing`]: unmapped by pool block on a thin LV, else
/// `BLKZEROOUT`), aligned to the device's logical block size with the unaligned rest
/// written as zeros, so a volume of any size restores.
pub struct DeviceTarget {
    file: File,
    zeroing: Zeroing,
}

impl DeviceTarget {
    /// Open the block device at `path` for reading and writing (zeroing on a thin LV
    /// reads what partial blocks hold), exclusively: a mounted device is refused.
    pub fn open(path: &Path) -> Result<DeviceTarget> {
        let file = output::open_block_device(path).map_err(|e| Error::Msg(e.to_string()))?;
        let zeroing = Zeroing::for_device(&file).at(path)?;
        Ok(DeviceTarget { file, zeroing })
    }

    /// Size of the device in bytes.
    pub fn size(&self) -> std::io::Result<u64> {
        blockdev::device_size(&self.file)
    }

    /// Make `[off, off+len)` read back as zeros, at any offset and length.
    pub fn zero_range(&self, off: u64, len: u64) -> std::io::Result<()> {
        self.zeroing.zero(&self.file, off, len)
    }
}

impl Target for DeviceTarget {
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, off)
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        self.zero_range(off, len)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Rebuild `chain`'s last session into `out` (from [`check_target`]). Every chunk's
/// hash is checked; on any error a file destination is left untouched (a device, a
/// FIFO or standard output holds what was written before the error).
pub fn receive_to(
    vol: &VolumeArchive,
    chain: &[SessionInfo],
    out: &Output,
    progress: &mut dyn FnMut(u64),
) -> Result<RestoreStats> {
    let last = chain
        .last()
        .ok_or_else(|| Error::Msg(format!("volume {} has no sessions", vol.name)))?;
    // The caller says which volume, session and target: the error says what failed.
    let map_err = Error::Restore;
    let oe = |e: output::OutputError| Error::Msg(e.to_string());
    match &out.kind {
        OutputKind::BlockDevice { .. } => {
            let mut t = DeviceTarget::open(&out.path)?;
            restore(vol, chain, &mut t, true, progress).map_err(map_err)
        }
        OutputKind::Stdout => {
            let stdout = std::io::stdout();
            let mut t = StreamTarget::new(BufWriter::with_capacity(1 << 20, stdout.lock()));
            restore(vol, chain, &mut t, true, progress).map_err(map_err)
        }
        OutputKind::Fifo => {
            let f = output::open_existing(out).map_err(oe)?;
            let mut t = StreamTarget::new(BufWriter::with_capacity(1 << 20, f));
            restore(vol, chain, &mut t, true, progress).map_err(map_err)
        }
        OutputKind::File { .. } | OutputKind::New => {
            let partial = PartialFile::create(out).map_err(oe)?;
            let tmp = partial.tmp_path().to_path_buf();
            let file = partial.file().try_clone().at(&tmp)?;
            let mut t = SparseFileTarget::new(file, last.volsize).at(&tmp)?;
            let stats = restore(vol, chain, &mut t, true, progress).map_err(map_err)?;
            partial.commit().map_err(oe)?;
            Ok(stats)
        }
        OutputKind::CharDevice => Err(Error::Msg(format!(
            "{} is a character device; refusing",
            out.describe()
        ))),
    }
}

/// `--zero-tail`: make a block device read as zeros past `volsize` (a restore leaves
/// what lies there as it was), the way the device is best zeroed. Returns the bytes
/// zeroed; a regular file (as long as the volume) has no tail.
pub fn zero_tail(path: &Path, volsize: u64) -> Result<u64> {
    let meta = std::fs::metadata(path).at(path)?;
    if !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
        return Ok(0);
    }
    let dev = DeviceTarget::open(path)?;
    let tail = dev.size().at(path)?.saturating_sub(volsize);
    dev.zero_range(volsize, tail).at(path)?;
    dev.file.sync_all().at(path)?;
    Ok(tail)
}
