//! A real tape drive through the Linux SCSI tape driver `st` (`/dev/nstN`, the
//! non-rewinding device).
//!
//! The ioctls and their structures are those of `linux/mtio.h`. How the driver behaves
//! at the edges, and how it is mapped here:
//!
//! - Fixed-block mode is set with `MTSETBLK` on every open and checked with
//!   `MTIOCGET`. Sizes outside what the drive takes give `EINVAL`
//!   ([`TapeError::InvalidBlockSize`]).
//! - End of medium: at the early-warning point a write returns its full count and
//!   `MTIOCGET` shows `GMT_EOT`; from then on the driver alternates: one write fails
//!   with `ENOSPC`, the next is allowed (to write trailers), until the physical end
//!   where every write fails with `ENOSPC`. [`StDrive::write_block`] checks `GMT_EOT`
//!   after each write until it is seen, retries once on an `ENOSPC` after it, and
//!   reports [`TapeError::EndOfMedium`] when the retry fails too.
//! - A block of another size than the drive's in fixed mode reads as `EIO`, with the
//!   tape not moved.
//! - At the physical end a filemark does not fit: `MTWEOF` fails with `EIO`, mapped
//!   to [`TapeError::EndOfMedium`]. If it was not tried, the next positioning operation
//!   tries that closing filemark itself and fails with `EIO` (and again, until an
//!   explicit `MTWEOF` has failed): the filemark is then tried and the operation
//!   retried.
//! - A filemark reads as a zero-length read; at the end of data the driver also
//!   returns zero and sets `GMT_EOD`, then fails with `EIO`.
//! - After writing, `close()` writes a filemark by itself. Writing the filemark
//!   explicitly with [`TapeDrive::write_filemark`] before dropping the drive avoids an
//!   empty tape file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::drive::{
    check_block_size_value, DriveStatus, ReadOutcome, Result, TapeDrive, TapeError,
};

/// `struct mtop`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtOp {
    pub mt_op: libc::c_short,
    pub mt_count: libc::c_int,
}

/// `struct mtget`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtGet {
    pub mt_type: libc::c_long,
    pub mt_resid: libc::c_long,
    pub mt_dsreg: libc::c_long,
    pub mt_gstat: libc::c_long,
    pub mt_erreg: libc::c_long,
    /// `__kernel_daddr_t` (int).
    pub mt_fileno: libc::c_int,
    pub mt_blkno: libc::c_int,
}

/// `struct mtpos`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct MtPos {
    pub mt_blkno: libc::c_long,
}

nix::ioctl_write_ptr!(mtioctop, b'm', 1, MtOp);
nix::ioctl_read!(mtiocget, b'm', 2, MtGet);
nix::ioctl_read!(mtiocpos, b'm', 3, MtPos);

/// `mt_op` codes.
pub mod op {
    pub const MTFSF: i16 = 1;
    pub const MTBSF: i16 = 2;
    pub const MTWEOF: i16 = 5;
    pub const MTREW: i16 = 6;
    pub const MTOFFL: i16 = 7;
    pub const MTEOM: i16 = 12;
    pub const MTSETBLK: i16 = 20;
    pub const MTSEEK: i16 = 22;
    pub const MTLOAD: i16 = 30;
    pub const MTUNLOAD: i16 = 31;
}

/// `mt_gstat` bits.
pub mod gstat {
    pub const EOF: i64 = 0x8000_0000;
    pub const BOT: i64 = 0x4000_0000;
    pub const EOT: i64 = 0x2000_0000;
    pub const EOD: i64 = 0x0800_0000;
    pub const WR_PROT: i64 = 0x0400_0000;
    pub const ONLINE: i64 = 0x0100_0000;
}

/// `mt_dsreg`: the block size is its low 24 bits.
pub const MT_ST_BLKSIZE_MASK: i64 = 0x00ff_ffff;

/// A drive status from `struct mtget`.
// `c_long` is `i32` on 32-bit targets: the casts are not always no-ops.
#[allow(clippy::unnecessary_cast)]
pub fn decode_status(g: &MtGet) -> DriveStatus {
    let s = g.mt_gstat as i64;
    let known = |v: libc::c_int| (v >= 0).then_some(v as u64);
    DriveStatus {
        file_number: known(g.mt_fileno),
        block_in_file: known(g.mt_blkno),
        block_size: (g.mt_dsreg as i64 & MT_ST_BLKSIZE_MASK) as usize,
        bot: s & gstat::BOT != 0,
        eof: s & gstat::EOF != 0,
        eot: s & gstat::EOT != 0,
        eod: s & gstat::EOD != 0,
        online: s & gstat::ONLINE != 0,
        write_protected: s & gstat::WR_PROT != 0,
    }
}

/// The typed error for a system error met while `during`.
pub fn map_errno(device: &str, during: &str, e: std::io::Error) -> TapeError {
    let device = device.to_string();
    match e.raw_os_error() {
        Some(libc::ENOSPC) => TapeError::EndOfMedium {
            device,
            during: during.to_string(),
        },
        Some(libc::ENOMEDIUM) => TapeError::NoTape { device },
        Some(libc::EROFS) | Some(libc::EACCES) if during.starts_with("writ") => {
            TapeError::WriteProtected { device }
        }
        _ => TapeError::Io {
            device,
            during: during.to_string(),
            source: e,
        },
    }
}

/// A drive at a Linux `st` device.
#[derive(Debug)]
pub struct StDrive {
    file: File,
    path: PathBuf,
    name: String,
    block_size: usize,
    /// The early warning was seen since the last positioning.
    early_warning: bool,
    /// A write met the physical end of the medium since the last positioning.
    at_end: bool,
}

impl StDrive {
    /// Open the drive (use the non-rewinding device, `/dev/nstN`). Opening does not
    /// need a tape; operations without one fail with [`TapeError::NoTape`].
    pub fn open(path: &Path) -> Result<StDrive> {
        let name = path.display().to_string();
        // O_NONBLOCK lets the open succeed without a tape; it is cleared at once.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .or_else(|e| {
                if matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)) {
                    OpenOptions::new()
                        .read(true)
                        .custom_flags(libc::O_NONBLOCK)
                        .open(path)
                } else {
                    Err(e)
                }
            })
            .map_err(|e| map_errno(&name, "opening the drive", e))?;
        // SAFETY: fcntl on a valid, owned descriptor.
        let rc = unsafe {
            let fl = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
            if fl < 0 {
                fl
            } else {
                libc::fcntl(file.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK)
            }
        };
        if rc < 0 {
            return Err(map_errno(
                &name,
                "opening the drive",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(StDrive {
            file,
            path: path.to_path_buf(),
            name,
            block_size: 0,
            early_warning: false,
            at_end: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn op(&mut self, code: i16, count: i32, during: &str) -> Result<()> {
        let m = MtOp {
            mt_op: code,
            mt_count: count,
        };
        // SAFETY: MTIOCTOP with a valid mtop on a valid descriptor.
        unsafe { mtioctop(self.file.as_raw_fd(), &m) }
            .map(drop)
            .map_err(|e| map_errno(&self.name, during, std::io::Error::from(e)))
    }

    /// A positioning operation. After the end of medium, st first tries to write the
    /// filemark that closes the tape file, which does not fit: that fails with EIO
    /// once, and the operation then works.
    fn position_op(&mut self, code: i16, count: i32, during: &str) -> Result<()> {
        let r = match self.op(code, count, during) {
            Err(TapeError::Io { source, .. })
                if self.at_end && source.raw_os_error() == Some(libc::EIO) =>
            {
                tracing::debug!(device = %self.name, "the closing filemark did not fit; {during} again");
                // An explicit filemark, failing as well, ends st's writing state.
                let _ = self.op(op::MTWEOF, 1, "writing a filemark");
                self.op(code, count, during)
            }
            r => r,
        };
        self.early_warning = false;
        self.at_end = false;
        r
    }

    fn get(&self) -> Result<MtGet> {
        let mut g = MtGet::default();
        // SAFETY: MTIOCGET into a valid mtget on a valid descriptor.
        unsafe { mtiocget(self.file.as_raw_fd(), &mut g) }
            .map_err(|e| map_errno(&self.name, "reading the drive status", e.into()))?;
        Ok(g)
    }

    fn write_once(&mut self, block: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.file.write(block) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }
}

impl TapeDrive for StDrive {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_block_size(&mut self, size: usize) -> Result<()> {
        check_block_size_value(&self.name, size)?;
        match self.op(op::MTSETBLK, size as i32, "setting the block size") {
            Err(TapeError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                return Err(TapeError::InvalidBlockSize {
                    device: self.name.clone(),
                    size,
                })
            }
            r => r?,
        }
        self.block_size = size;
        self.check_block_size(size)
    }

    fn write_block(&mut self, block: &[u8]) -> Result<bool> {
        super::drive::check_fixed(&self.name, self.block_size, "a write", block.len())?;
        let mut retried = false;
        loop {
            match self.write_once(block) {
                Ok(n) if n == block.len() => break,
                Ok(_) => {
                    // A short write only happens at the physical end.
                    self.at_end = true;
                    return Err(TapeError::EndOfMedium {
                        device: self.name.clone(),
                        during: "writing a block (short write)".into(),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !retried => {
                    // Past the early warning the driver refuses every other write.
                    if !self.early_warning {
                        self.early_warning = decode_status(&self.get()?).eot;
                    }
                    if !self.early_warning {
                        self.at_end = true;
                        return Err(map_errno(&self.name, "writing a block", e));
                    }
                    retried = true;
                }
                Err(e) => {
                    let e = map_errno(&self.name, "writing a block", e);
                    self.at_end |= matches!(e, TapeError::EndOfMedium { .. });
                    return Err(e);
                }
            }
        }
        if !self.early_warning {
            self.early_warning = decode_status(&self.get()?).eot;
        }
        Ok(self.early_warning)
    }

    fn write_filemark(&mut self, n: u32) -> Result<()> {
        let during = "writing a filemark";
        match self.op(op::MTWEOF, n as i32, during) {
            Err(TapeError::EndOfMedium { .. }) if self.early_warning && !self.at_end => {
                self.op(op::MTWEOF, n as i32, during)
            }
            // At the physical end a filemark does not fit either: st says EIO.
            Err(TapeError::Io { source, .. })
                if self.at_end && source.raw_os_error() == Some(libc::EIO) =>
            {
                Err(TapeError::EndOfMedium {
                    device: self.name.clone(),
                    during: during.into(),
                })
            }
            r => r,
        }
    }

    fn read_block(&mut self, buf: &mut [u8]) -> Result<ReadOutcome> {
        super::drive::check_fixed(&self.name, self.block_size, "a read", buf.len())?;
        let r = loop {
            match self.file.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match r {
            Ok(n) if n == buf.len() => Ok(ReadOutcome::Block),
            Ok(0) => {
                if decode_status(&self.get()?).eod {
                    Ok(ReadOutcome::EndOfData)
                } else {
                    Ok(ReadOutcome::Filemark)
                }
            }
            Ok(n) => Err(TapeError::BlockSizeMismatch {
                device: self.name.clone(),
                expected: buf.len(),
                found: n,
            }),
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                if decode_status(&self.get()?).eod {
                    return Ok(ReadOutcome::EndOfData);
                }
                Err(TapeError::Io {
                    device: self.name.clone(),
                    during: format!(
                        "reading a block of {} bytes (a block of another size reads as this error too)",
                        buf.len()
                    ),
                    source: e,
                })
            }
            Err(e) => Err(map_errno(&self.name, "reading a block", e)),
        }
    }

    fn rewind(&mut self) -> Result<()> {
        self.position_op(op::MTREW, 1, "rewinding")
    }

    fn fsf(&mut self, n: u32) -> Result<()> {
        self.position_op(
            op::MTFSF,
            n as i32,
            &format!("spacing forward {n} filemarks"),
        )
    }

    fn bsf(&mut self, n: u32) -> Result<()> {
        self.position_op(op::MTBSF, n as i32, &format!("spacing back {n} filemarks"))
    }

    fn eod(&mut self) -> Result<()> {
        self.position_op(op::MTEOM, 1, "going to the end of data")
    }

    fn locate(&mut self, block: u64) -> Result<()> {
        let b = i32::try_from(block).map_err(|_| TapeError::Position {
            device: self.name.clone(),
            during: format!("locating block {block}"),
            reason: "block number too large for MTSEEK".into(),
        })?;
        self.position_op(op::MTSEEK, b, &format!("locating block {block}"))
    }

    fn position(&mut self) -> Result<u64> {
        let mut p = MtPos::default();
        // SAFETY: MTIOCPOS into a valid mtpos on a valid descriptor.
        unsafe { mtiocpos(self.file.as_raw_fd(), &mut p) }
            .map_err(|e| map_errno(&self.name, "reading the position", e.into()))?;
        u64::try_from(p.mt_blkno).map_err(|_| TapeError::Position {
            device: self.name.clone(),
            during: "reading the position".into(),
            reason: "the drive does not know its position (rewind first)".into(),
        })
    }

    fn status(&mut self) -> Result<DriveStatus> {
        Ok(decode_status(&self.get()?))
    }

    fn load(&mut self) -> Result<()> {
        self.position_op(op::MTLOAD, 1, "loading the tape")
    }

    fn unload(&mut self) -> Result<()> {
        self.position_op(op::MTUNLOAD, 1, "unloading the tape")
    }

    fn eject(&mut self) -> Result<()> {
        self.position_op(op::MTOFFL, 1, "ejecting the tape")
    }
}
