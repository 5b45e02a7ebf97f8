//! The label every sparsebak tape starts with: file 0, one block, then a filemark.
//!
//! Layout of the block (little-endian; the rest of the block is zeros):
//!
//! ```text
//! 0    8  magic "SPBKLABL"
//! 8    4  format version (1)
//! 12   4  block size of every block on the tape
//! 16  16  uuid of this labelling of the tape
//! 32   8  written, seconds since 1970 (UTC)
//! 40   1  length of the name (1..=64), then 64 bytes: barcode or name, zero-padded
//! 105  1  length of the pool name (1..=64), then 64 bytes, zero-padded
//! 170 32  SHA-256 of bytes 0..170
//! ```
//!
//! Reading a label refuses another magic (not a sparsebak tape, or a blank one), a
//! newer version, a damaged checksum and a block size other than the drive's.

use sha2::{Digest, Sha256};

use super::drive::{ReadOutcome, TapeDrive, TapeError};

pub const LABEL_MAGIC: &[u8; 8] = b"SPBKLABL";
pub const LABEL_VERSION: u32 = 1;
/// Bytes of the label that carry data (the block is padded with zeros).
pub const LABEL_LEN: usize = 202;
const NAME_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum LabelError {
    #[error(transparent)]
    Tape(#[from] TapeError),
    #[error("{device}: the tape has no sparsebak label (it is blank or holds something else)")]
    NotLabelled { device: String },
    #[error("{device}: the tape label is format version {found}; this sparsebak reads version {supported} and older")]
    FutureVersion {
        device: String,
        found: u32,
        supported: u32,
    },
    #[error("{device}: the tape label is damaged ({reason})")]
    Damaged { device: String, reason: String },
    #[error("{device}: the tape was labelled with blocks of {label} bytes but the drive is set to {drive} bytes")]
    BlockSizeMismatch {
        device: String,
        label: usize,
        drive: usize,
    },
    #[error("tape label {what} {value:?}: 1 to 64 printable ASCII characters without spaces")]
    BadName { what: &'static str, value: String },
    #[error("the system's random number generator failed: {0}")]
    Random(String),
}

/// A label uuid written `8-4-4-4-12` in hex, as the catalog keys tapes.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let h = hex::encode(uuid);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A tape label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeLabel {
    /// The cartridge's barcode, or a name for a tape without one.
    pub name: String,
    pub pool: String,
    pub uuid: [u8; 16],
    pub block_size: usize,
    /// Seconds since 1970, UTC.
    pub written: i64,
}

fn check_name(what: &'static str, value: &str) -> Result<(), LabelError> {
    if (1..=NAME_MAX).contains(&value.len()) && value.bytes().all(|c| c.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(LabelError::BadName {
            what,
            value: value.to_string(),
        })
    }
}

impl TapeLabel {
    /// A new label with a fresh uuid, written now.
    pub fn new(name: &str, pool: &str, block_size: usize) -> Result<TapeLabel, LabelError> {
        check_name("name", name)?;
        check_name("pool", pool)?;
        let uuid = sparsebak_format::crypto::random_bytes::<16>()
            .map_err(|e| LabelError::Random(e.to_string()))?;
        Ok(TapeLabel {
            name: name.to_string(),
            pool: pool.to_string(),
            uuid,
            block_size,
            written: chrono::Utc::now().timestamp(),
        })
    }

    /// The uuid as `8-4-4-4-12` hex.
    pub fn uuid_string(&self) -> String {
        uuid_text(&self.uuid)
    }

    /// The label as one block of `self.block_size` bytes.
    pub fn encode(&self) -> Result<Vec<u8>, LabelError> {
        check_name("name", &self.name)?;
        check_name("pool", &self.pool)?;
        let mut b = vec![0u8; self.block_size.max(LABEL_LEN)];
        b[0..8].copy_from_slice(LABEL_MAGIC);
        b[8..12].copy_from_slice(&LABEL_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        b[16..32].copy_from_slice(&self.uuid);
        b[32..40].copy_from_slice(&self.written.to_le_bytes());
        b[40] = self.name.len() as u8;
        b[41..41 + self.name.len()].copy_from_slice(self.name.as_bytes());
        b[105] = self.pool.len() as u8;
        b[106..106 + self.pool.len()].copy_from_slice(self.pool.as_bytes());
        let sum = Sha256::digest(&b[0..170]);
        b[170..202].copy_from_slice(&sum);
        Ok(b)
    }

    /// Read a label block; `drive_block_size` is what the drive is set to.
    pub fn decode(
        device: &str,
        b: &[u8],
        drive_block_size: usize,
    ) -> Result<TapeLabel, LabelError> {
        if b.len() < LABEL_LEN || &b[0..8] != LABEL_MAGIC {
            return Err(LabelError::NotLabelled {
                device: device.to_string(),
            });
        }
        let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let version = u32at(8);
        if version > LABEL_VERSION || version == 0 {
            return Err(LabelError::FutureVersion {
                device: device.to_string(),
                found: version,
                supported: LABEL_VERSION,
            });
        }
        let damaged = |reason: &str| LabelError::Damaged {
            device: device.to_string(),
            reason: reason.to_string(),
        };
        if Sha256::digest(&b[0..170]).as_slice() != &b[170..202] {
            return Err(damaged("checksum mismatch"));
        }
        let block_size = u32at(12) as usize;
        if block_size != drive_block_size {
            return Err(LabelError::BlockSizeMismatch {
                device: device.to_string(),
                label: block_size,
                drive: drive_block_size,
            });
        }
        let text = |at: usize, what: &str| -> Result<String, LabelError> {
            let n = b[at] as usize;
            let s = std::str::from_utf8(&b[at + 1..at + 1 + n.min(NAME_MAX)])
                .ok()
                .filter(|s| (1..=NAME_MAX).contains(&n) && s.bytes().all(|c| c.is_ascii_graphic()))
                .ok_or_else(|| damaged(&format!("bad {what}")))?;
            Ok(s.to_string())
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[16..32]);
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[32..40]);
        Ok(TapeLabel {
            name: text(40, "name")?,
            pool: text(105, "pool")?,
            uuid,
            block_size,
            written: i64::from_le_bytes(w),
        })
    }

    /// Rewind and write the label as file 0 (cutting off everything on the tape).
    pub fn write(&self, drive: &mut dyn TapeDrive) -> Result<(), LabelError> {
        drive.check_block_size(self.block_size)?;
        let block = self.encode()?;
        drive.rewind()?;
        drive.write_block(&block)?;
        drive.write_filemark(1)?;
        Ok(())
    }

    /// Rewind and read the label; the drive must already be set to its block size.
    /// The tape is left at the start of file 1.
    pub fn read(drive: &mut dyn TapeDrive) -> Result<TapeLabel, LabelError> {
        let status = drive.status()?;
        let device = drive.name().to_string();
        if status.block_size == 0 {
            return Err(TapeError::NotFixedMode { device }.into());
        }
        drive.rewind()?;
        let mut buf = vec![0u8; status.block_size];
        match drive.read_block(&mut buf) {
            Ok(ReadOutcome::Block) => {}
            Ok(_) => return Err(LabelError::NotLabelled { device }),
            Err(TapeError::BlockSizeMismatch {
                expected, found, ..
            }) => {
                // Say what the label says, if the drive let us see it.
                return Err(LabelError::BlockSizeMismatch {
                    device,
                    label: found,
                    drive: expected,
                });
            }
            Err(e) => return Err(e.into()),
        }
        let label = TapeLabel::decode(&device, &buf, status.block_size)?;
        match drive.read_block(&mut buf)? {
            ReadOutcome::Filemark => Ok(label),
            _ => Err(LabelError::Damaged {
                device,
                reason: "no filemark after the label".into(),
            }),
        }
    }
}
