//! The tape drive seen from above: fixed-size blocks, filemarks and positions.
//!
//! Everything sparsebak writes to tape goes through [`TapeDrive`]. It is implemented
//! by the Linux `st` driver ([`super::st::StDrive`]) and by the file-backed drive of
//! the virtual library ([`super::virtual_drive::VirtualDrive`]), so the layers above
//! (labels, sessions, spanning) are tested on files and run on real drives alike.
//!
//! Only fixed-block mode is used: every block on a sparsebak tape has the size the
//! drive was set to, and a drive found in variable-block mode is refused
//! ([`TapeError::NotFixedMode`]). Positions are logical object numbers as the drive
//! reports them (SCSI READ POSITION, `MTIOCPOS`): blocks and filemarks each count one,
//! counted from the beginning of the tape.

use std::fmt;

/// The smallest and largest block sizes accepted (the `st` driver refuses writes
/// outside this range with `EINVAL`).
pub const MIN_BLOCK_SIZE: usize = 512;
pub const MAX_BLOCK_SIZE: usize = 1 << 20;

/// Everything that can go wrong with a drive, by the kinds a caller acts on.
#[derive(Debug, thiserror::Error)]
pub enum TapeError {
    /// The physical end of the medium: the block was not written (`ENOSPC`).
    #[error("{device}: end of medium while {during}")]
    EndOfMedium { device: String, during: String },
    /// The drive reported an I/O error (`EIO`) or another system error.
    #[error("{device}: {during}: {source}")]
    Io {
        device: String,
        during: String,
        #[source]
        source: std::io::Error,
    },
    /// The tape holds blocks of another size than the drive is set to.
    #[error(
        "{device}: the tape holds blocks of {found} bytes but the drive is set to {expected} bytes"
    )]
    BlockSizeMismatch {
        device: String,
        expected: usize,
        found: usize,
    },
    /// The drive is set to another block size than the one asked for.
    #[error("{device}: the drive is set to blocks of {actual} bytes, expected {expected} bytes")]
    DriveBlockSize {
        device: String,
        expected: usize,
        actual: usize,
    },
    /// The drive is in variable-block mode (block size 0); sparsebak only uses fixed
    /// blocks.
    #[error("{device}: the drive is in variable-block mode; sparsebak needs fixed-block mode (set a block size)")]
    NotFixedMode { device: String },
    /// A block size outside 512 B..1 MiB or not a multiple of 512.
    #[error("{device}: block size {size} is not supported (a multiple of 512 from 512 to 1048576 bytes)")]
    InvalidBlockSize { device: String, size: usize },
    /// A buffer that is not exactly one block.
    #[error("{device}: {what} of {len} bytes, but the block size is {block_size} bytes")]
    WrongLength {
        device: String,
        what: &'static str,
        len: usize,
        block_size: usize,
    },
    #[error("{device}: no tape in the drive")]
    NoTape { device: String },
    #[error("{device}: the tape is write-protected")]
    WriteProtected { device: String },
    /// Positioning went past the beginning or the end of the recorded data.
    #[error("{device}: {during}: {reason}")]
    Position {
        device: String,
        during: String,
        reason: String,
    },
    /// The drive cannot do this at all (e.g. a virtual drive asked to eject).
    #[error("{device}: {what} is not supported by this drive")]
    Unsupported { device: String, what: &'static str },
    /// Another run holds the device or library.
    #[error("{device}: {reason}")]
    Busy { device: String, reason: String },
    /// A request the virtual library cannot take (settings, unknown cartridge).
    #[error("{device}: {reason}")]
    Refused { device: String, reason: String },
    /// A virtual cartridge file that does not hold what it should.
    #[error("{device}: {reason}")]
    Corrupt { device: String, reason: String },
}

pub type Result<T, E = TapeError> = std::result::Result<T, E>;

/// Check that a drive of `device` is in fixed-block mode (`block_size` bytes, 0 for
/// variable) and that `what` (a read or a write) moves exactly one block of `len`
/// bytes. Errors: [`TapeError::NotFixedMode`], [`TapeError::WrongLength`].
pub fn check_fixed(device: &str, block_size: usize, what: &'static str, len: usize) -> Result<()> {
    if block_size == 0 {
        return Err(TapeError::NotFixedMode {
            device: device.to_string(),
        });
    }
    if len != block_size {
        return Err(TapeError::WrongLength {
            device: device.to_string(),
            what,
            len,
            block_size,
        });
    }
    Ok(())
}

/// What one read brought back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// A whole block, now in the buffer.
    Block,
    /// A filemark: the tape is now just after it.
    Filemark,
    /// No more recorded data: the position has not moved.
    EndOfData,
}

/// A drive's state, as `MTIOCGET` gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriveStatus {
    /// Tape file number (filemarks passed since the beginning), if known.
    pub file_number: Option<u64>,
    /// Block number within the file, if known.
    pub block_in_file: Option<u64>,
    /// The drive's block size; 0 is variable-block mode.
    pub block_size: usize,
    /// At the beginning of the tape.
    pub bot: bool,
    /// Just after a filemark.
    pub eof: bool,
    /// Past the early-warning point near the end of the medium.
    pub eot: bool,
    /// At the end of recorded data.
    pub eod: bool,
    /// A tape is loaded and ready.
    pub online: bool,
    pub write_protected: bool,
}

impl fmt::Display for DriveStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
        write!(
            f,
            "file {} block {} block size {}",
            opt(self.file_number),
            opt(self.block_in_file),
            self.block_size
        )?;
        for (on, name) in [
            (self.bot, "BOT"),
            (self.eof, "EOF"),
            (self.eot, "EOT"),
            (self.eod, "EOD"),
            (self.online, "ONLINE"),
            (self.write_protected, "WR_PROT"),
        ] {
            if on {
                write!(f, " {name}")?;
            }
        }
        Ok(())
    }
}

/// Check that `size` is a block size sparsebak can use.
pub fn check_block_size_value(device: &str, size: usize) -> Result<()> {
    if !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&size) || size % 512 != 0 {
        return Err(TapeError::InvalidBlockSize {
            device: device.to_string(),
            size,
        });
    }
    Ok(())
}

/// Let the drive give up its tape so a changer (or a person) can take it: an unload
/// where the drive has one; a drive without one, or without a tape, is fine as it is.
pub fn release_tape(drive: &mut dyn TapeDrive) -> Result<()> {
    match drive.unload() {
        Ok(()) | Err(TapeError::Unsupported { .. }) | Err(TapeError::NoTape { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Take in the tape just put in the drive: a load where the drive has one.
pub fn take_tape(drive: &mut dyn TapeDrive) -> Result<()> {
    match drive.load() {
        Ok(()) | Err(TapeError::Unsupported { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A tape drive with a tape in it.
pub trait TapeDrive {
    /// The device's name for messages (`/dev/nst0`, `virtual:/srv/vtl drive`).
    fn name(&self) -> &str;

    /// Put the drive in fixed-block mode with blocks of `size` bytes.
    fn set_block_size(&mut self, size: usize) -> Result<()>;

    /// Check the drive is in fixed-block mode with blocks of `size` bytes.
    fn check_block_size(&mut self, size: usize) -> Result<()> {
        let found = self.status()?.block_size;
        if found == 0 {
            return Err(TapeError::NotFixedMode {
                device: self.name().to_string(),
            });
        }
        if found != size {
            return Err(TapeError::DriveBlockSize {
                device: self.name().to_string(),
                expected: size,
                actual: found,
            });
        }
        Ok(())
    }

    /// Write one block (exactly the block size). `Ok(true)` once the early-warning
    /// point near the end of the medium is reached: the block was written, and a
    /// little room is left for closing the tape file. At the physical end the block
    /// is not written and the error is [`TapeError::EndOfMedium`].
    fn write_block(&mut self, block: &[u8]) -> Result<bool>;

    /// Write `n` filemarks (and make what was written before them durable).
    fn write_filemark(&mut self, n: u32) -> Result<()>;

    /// Read one block into `buf` (exactly the block size).
    fn read_block(&mut self, buf: &mut [u8]) -> Result<ReadOutcome>;

    fn rewind(&mut self) -> Result<()>;
    /// Forward past `n` filemarks: the tape is then at the first block of a file.
    fn fsf(&mut self, n: u32) -> Result<()>;
    /// Back past `n` filemarks: the tape is then just before the last one passed.
    fn bsf(&mut self, n: u32) -> Result<()>;
    /// To the end of recorded data, where the next write appends.
    fn eod(&mut self) -> Result<()>;
    /// To logical object `block` (as [`TapeDrive::position`] counts).
    fn locate(&mut self, block: u64) -> Result<()>;
    /// The logical object number the next read or write is at.
    fn position(&mut self) -> Result<u64>;
    fn status(&mut self) -> Result<DriveStatus>;

    /// Load the tape in the drive (after an unload).
    fn load(&mut self) -> Result<()> {
        Err(TapeError::Unsupported {
            device: self.name().to_string(),
            what: "load",
        })
    }
    /// Rewind and unload the tape, so a changer can take it.
    fn unload(&mut self) -> Result<()> {
        Err(TapeError::Unsupported {
            device: self.name().to_string(),
            what: "unload",
        })
    }
    /// Eject the tape out of a stand-alone drive.
    fn eject(&mut self) -> Result<()> {
        self.unload()
    }
}
