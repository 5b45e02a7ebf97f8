//! Writing one tape file: a byte stream (a self-contained stream of one volume
//! session) appended at the end of data of the loaded tape, through the buffer
//! thread, spanning onto further tapes at the early warning.
//!
//! Layout (docs/FORMAT.md, "Tape files"): every part of a stream is one tape file.
//! The first part starts straight with the stream's bytes (so GNU tar reads an
//! unencrypted one as it is); a continuation part starts with a header block. The
//! data is cut into whole blocks, the stream's last block padded with zeros. After
//! the data come the trailer blocks (part number, "continued" or final, offset and
//! length, SHA-256 of the part and, in the last part, of the whole stream, and a
//! 4-byte digest of every data block so a damaged block can be named), then a
//! filemark.
//!
//! On the early warning the part is ended after the block that got it (trailer,
//! filemark), the [`NextTape`] callback puts the next tape in the drive, its label is
//! checked (pool, block size) and the stream goes on in a new part at its end of data.

use std::collections::VecDeque;
use std::io;

use sha2::{Digest, Sha256};

use super::buffer::{self, BlockSink, BufferError, BufferOptions, BufferStats, BufferWriter};
use super::changer::{Changer, ChangerError};
use super::drive::{TapeDrive, TapeError};
use super::label::{LabelError, TapeLabel};

pub const HEADER_MAGIC: &[u8; 8] = b"SPBKPBEG";
pub const TRAILER_MAGIC: &[u8; 8] = b"SPBKPEND";
pub const PART_VERSION: u32 = 1;
/// Bytes of a part header that carry data (the block is zero after them).
pub const HEADER_LEN: usize = 336;
/// Bytes of the first trailer block before the block digests.
pub const TRAILER_FIXED: usize = 432;
/// Bytes of each block's digest in the trailer (the start of its SHA-256).
pub const DIGEST_LEN: usize = 4;
/// The longest identity of a stream (volume and session) in a header or trailer.
pub const ID_MAX: usize = 255;
const FLAG_CONTINUED: u32 = 1;

/// Everything that can go wrong writing or reading a tape file.
#[derive(Debug, thiserror::Error)]
pub enum TapeFileError {
    #[error(transparent)]
    Tape(#[from] TapeError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Changer(#[from] ChangerError),
    #[error("tape {tape} belongs to pool {found:?}, this destination writes pool {expected:?}")]
    WrongPool {
        tape: String,
        found: String,
        expected: String,
    },
    #[error("tape {tape} is full and no next tape can be loaded: {reason} (the {parts} part(s) written are not recorded, so nothing of this stream can be restored: label more tapes of the pool and send again)")]
    NoNextTape {
        tape: String,
        reason: String,
        parts: u32,
    },
    #[error("tape {tape} was loaded to continue the stream, but it holds the part before")]
    SameTape { tape: String },
    #[error("the tape in the drive is {found} ({found_uuid}), but part {part} of {id} is on {expected} ({expected_uuid})")]
    WrongTape {
        id: String,
        part: u32,
        found: String,
        found_uuid: String,
        expected: String,
        expected_uuid: String,
    },
    #[error("{device}: the drive does not report its tape file number at the end of data")]
    UnknownFileNumber { device: String },
    /// A block whose bytes are not what was written.
    #[error("tape {tape}, file {file}, block {block} (position {position}): damaged: {reason}")]
    Damaged {
        tape: String,
        file: u64,
        block: u64,
        position: u64,
        reason: String,
    },
    /// A part whose header, trailer or length is not what the catalog says.
    #[error("tape {tape}, file {file}: {reason}")]
    BadPart {
        tape: String,
        file: u64,
        reason: String,
    },
    #[error("tape file {id}: {reason}")]
    Mismatch { id: String, reason: String },
    #[error("stream identity {0:?}: 1 to 255 bytes")]
    BadId(String),
    #[error("producing the stream for the tape: {0}")]
    Producer(#[source] io::Error),
    #[error("the tape buffer thread panicked")]
    Panicked,
}

/// What a tape file writer writes, and where.
#[derive(Debug, Clone)]
pub struct TapeFileOptions {
    pub block_size: usize,
    /// The media pool every tape written must belong to.
    pub pool: String,
    /// What the stream is (e.g. `VOLUME/SESSION`), written into headers and trailers.
    pub id: String,
    /// Bytes of the buffer between the producer and the drive.
    pub buffer: usize,
}

/// One part of a tape file: one tape file on one tape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// 1, 2, ...
    pub part: u32,
    /// The tape's label name (its barcode) and the uuid of its labelling.
    pub tape: String,
    pub tape_uuid: [u8; 16],
    /// Tape file number on that tape.
    pub file_number: u64,
    /// Position (logical object number) of the part's first block: the header of a
    /// continuation part, the first data block of part 1.
    pub first_block: u64,
    /// Data blocks (without header and trailer).
    pub data_blocks: u64,
    /// Offset of the part's first byte in the stream, and its bytes.
    pub offset: u64,
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// A tape file as written (what the catalog records).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeFile {
    pub id: String,
    pub block_size: usize,
    pub parts: Vec<Part>,
    /// Bytes of the whole stream, and its SHA-256.
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Puts the next tape in the drive when the one there is full.
pub trait NextTape: Send {
    /// `full` is the label of the tape that reached its early warning. Leave the next
    /// tape loaded in `drive`, or say why there is none.
    fn next_tape(
        &mut self,
        drive: &mut dyn TapeDrive,
        full: &TapeLabel,
        parts: u32,
    ) -> Result<(), TapeFileError>;
}

/// No changer and nobody to ask: a full tape ends the write, clearly.
#[derive(Debug, Default)]
pub struct NoNextTape;

impl NextTape for NoNextTape {
    fn next_tape(
        &mut self,
        _drive: &mut dyn TapeDrive,
        full: &TapeLabel,
        parts: u32,
    ) -> Result<(), TapeFileError> {
        Err(TapeFileError::NoNextTape {
            tape: full.name.clone(),
            reason: "the destination has no changer and this run cannot ask for a tape".into(),
            parts,
        })
    }
}

/// Loads the next of the given tapes (the pool's appendable tapes, in order) with a
/// changer.
pub struct ChangerNextTape<C: Changer + Send> {
    pub changer: C,
    /// The changer's number for the drive written to.
    pub drive_number: u32,
    pub barcodes: VecDeque<String>,
}

impl<C: Changer + Send> NextTape for ChangerNextTape<C> {
    fn next_tape(
        &mut self,
        drive: &mut dyn TapeDrive,
        full: &TapeLabel,
        parts: u32,
    ) -> Result<(), TapeFileError> {
        let Some(next) = self.barcodes.pop_front() else {
            return Err(TapeFileError::NoNextTape {
                tape: full.name.clone(),
                reason: format!(
                    "{} holds no other appendable tape of the pool",
                    self.changer.name()
                ),
                parts,
            });
        };
        tracing::info!(full = %full.name, next = %next, "tape full, loading the next one");
        // The drive lets go of its tape before the changer takes it.
        super::drive::release_tape(&mut *drive)?;
        self.changer.load_barcode(&next, self.drive_number)?;
        Ok(super::drive::take_tape(&mut *drive)?)
    }
}

fn put_id(b: &mut [u8], at: usize, id: &str) {
    b[at] = id.len() as u8;
    b[at + 1..at + 1 + id.len()].copy_from_slice(id.as_bytes());
}

fn get_id(b: &[u8], at: usize) -> Option<String> {
    let n = b[at] as usize;
    if n == 0 {
        return None;
    }
    std::str::from_utf8(&b[at + 1..at + 1 + n])
        .ok()
        .map(str::to_string)
}

fn u32at(b: &[u8], o: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(x)
}

fn u64at(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(x)
}

fn arr32(b: &[u8], o: usize) -> [u8; 32] {
    let mut x = [0u8; 32];
    x.copy_from_slice(&b[o..o + 32]);
    x
}

/// The header block of a continuation part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartHeader {
    pub part: u32,
    pub block_size: usize,
    pub offset: u64,
    /// The uuid of the tape holding the part before.
    pub previous_tape: [u8; 16],
    pub id: String,
}

impl PartHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; self.block_size];
        b[0..8].copy_from_slice(HEADER_MAGIC);
        b[8..12].copy_from_slice(&PART_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.part.to_le_bytes());
        b[16..20].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..48].copy_from_slice(&self.previous_tape);
        put_id(&mut b, 48, &self.id);
        let sum = Sha256::digest(&b[0..304]);
        b[304..336].copy_from_slice(&sum);
        b
    }

    /// Read a header block; `Err` says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<PartHeader, String> {
        if b.len() < HEADER_LEN || &b[0..8] != HEADER_MAGIC {
            return Err("no part header where the part starts".into());
        }
        if Sha256::digest(&b[0..304]).as_slice() != &b[304..336] {
            return Err("the part header is damaged (checksum mismatch)".into());
        }
        let version = u32at(b, 8);
        if version != PART_VERSION {
            return Err(format!(
                "part header version {version}; this sparsebak reads version {PART_VERSION}"
            ));
        }
        let mut previous_tape = [0u8; 16];
        previous_tape.copy_from_slice(&b[32..48]);
        Ok(PartHeader {
            part: u32at(b, 12),
            block_size: u32at(b, 16) as usize,
            offset: u64at(b, 24),
            previous_tape,
            id: get_id(b, 48).ok_or("the part header names no stream")?,
        })
    }
}

/// The trailer of a part (its first block; the digests go on in the next ones).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartTrailer {
    pub part: u32,
    /// More parts follow on another tape.
    pub continued: bool,
    pub block_size: usize,
    pub offset: u64,
    pub bytes: u64,
    pub data_blocks: u64,
    pub sha256: [u8; 32],
    /// SHA-256 of the whole stream (the last part; zeros in a continued one).
    pub stream_sha256: [u8; 32],
    pub id: String,
    /// `DIGEST_LEN` bytes per data block.
    pub digests: Vec<u8>,
}

/// Blocks of the trailer of a part of `data_blocks` blocks.
pub fn trailer_blocks(data_blocks: u64, block_size: usize) -> u64 {
    (TRAILER_FIXED as u64 + DIGEST_LEN as u64 * data_blocks).div_ceil(block_size as u64)
}

/// The digest of one block in a trailer.
pub fn block_digest(block: &[u8]) -> [u8; DIGEST_LEN] {
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(&Sha256::digest(block)[..DIGEST_LEN]);
    d
}

impl PartTrailer {
    /// The trailer as whole blocks.
    pub fn encode(&self) -> Vec<u8> {
        let n = trailer_blocks(self.data_blocks, self.block_size) as usize;
        let mut b = vec![0u8; n * self.block_size];
        b[0..8].copy_from_slice(TRAILER_MAGIC);
        b[8..12].copy_from_slice(&PART_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.part.to_le_bytes());
        let flags = if self.continued { FLAG_CONTINUED } else { 0 };
        b[16..20].copy_from_slice(&flags.to_le_bytes());
        b[20..24].copy_from_slice(&(self.block_size as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.bytes.to_le_bytes());
        b[40..48].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[48..80].copy_from_slice(&self.sha256);
        b[80..112].copy_from_slice(&self.stream_sha256);
        b[112..144].copy_from_slice(&Sha256::digest(&self.digests));
        put_id(&mut b, 144, &self.id);
        let sum = Sha256::digest(&b[0..400]);
        b[400..432].copy_from_slice(&sum);
        b[TRAILER_FIXED..TRAILER_FIXED + self.digests.len()].copy_from_slice(&self.digests);
        b
    }

    /// Read the first trailer block: the trailer without its digests, and the
    /// SHA-256 the digests must have.
    pub fn decode_fixed(b: &[u8]) -> Result<(PartTrailer, [u8; 32]), String> {
        if b.len() < TRAILER_FIXED || &b[0..8] != TRAILER_MAGIC {
            return Err("no part trailer after the data".into());
        }
        if Sha256::digest(&b[0..400]).as_slice() != &b[400..432] {
            return Err("the part trailer is damaged (checksum mismatch)".into());
        }
        let version = u32at(b, 8);
        if version != PART_VERSION {
            return Err(format!(
                "part trailer version {version}; this sparsebak reads version {PART_VERSION}"
            ));
        }
        let trailer = PartTrailer {
            part: u32at(b, 12),
            continued: u32at(b, 16) & FLAG_CONTINUED != 0,
            block_size: u32at(b, 20) as usize,
            offset: u64at(b, 24),
            bytes: u64at(b, 32),
            data_blocks: u64at(b, 40),
            sha256: arr32(b, 48),
            stream_sha256: arr32(b, 80),
            id: get_id(b, 144).ok_or("the part trailer names no stream")?,
            digests: Vec::new(),
        };
        Ok((trailer, arr32(b, 112)))
    }
}

/// Set the drive's block size, read the loaded tape's label and check its pool.
pub fn check_tape(
    drive: &mut dyn TapeDrive,
    block_size: usize,
    pool: &str,
) -> Result<TapeLabel, TapeFileError> {
    drive.set_block_size(block_size)?;
    let label = TapeLabel::read(drive)?;
    if label.pool != pool {
        return Err(TapeFileError::WrongPool {
            tape: label.name,
            found: label.pool,
            expected: pool.to_string(),
        });
    }
    Ok(label)
}

struct Current {
    part: Part,
    sha: Sha256,
    digests: Vec<u8>,
}

/// The buffer's sink: writes blocks, ends parts and changes tapes.
struct PartWriter<'a> {
    drive: &'a mut (dyn TapeDrive + Send),
    next: &'a mut dyn NextTape,
    opts: &'a TapeFileOptions,
    label: TapeLabel,
    parts: Vec<Part>,
    current: Option<Current>,
    /// The last block got the early warning: change tapes before the next one.
    switch: bool,
    offset: u64,
}

impl PartWriter<'_> {
    /// Start a part at the end of data of the loaded tape.
    fn begin(&mut self, previous_tape: Option<[u8; 16]>) -> Result<(), TapeFileError> {
        self.drive.eod()?;
        let mut first_block = self.drive.position()?;
        // A write cut short (a crash, a pulled cable) leaves blocks with no filemark
        // after them: close them as a file of their own (it has no trailer, so
        // nothing takes it for a stream), so this tape file starts a file.
        if first_block > 0 {
            self.drive.locate(first_block - 1)?;
            let mut probe = vec![0u8; self.opts.block_size];
            let last = self.drive.read_block(&mut probe);
            self.drive.eod()?;
            if !matches!(last, Ok(super::drive::ReadOutcome::Filemark)) {
                tracing::warn!(
                    tape = %self.label.name,
                    "the tape's last file has no filemark after it (a write was cut short): \
                     closing it"
                );
                self.drive.write_filemark(1)?;
                first_block = self.drive.position()?;
            }
        }
        let file_number =
            self.drive
                .status()?
                .file_number
                .ok_or_else(|| TapeFileError::UnknownFileNumber {
                    device: self.drive.name().to_string(),
                })?;
        let part = self.parts.len() as u32 + 1;
        if let Some(previous_tape) = previous_tape {
            let h = PartHeader {
                part,
                block_size: self.opts.block_size,
                offset: self.offset,
                previous_tape,
                id: self.opts.id.clone(),
            };
            // A header past the early warning is fine: there is room until the end.
            self.drive.write_block(&h.encode())?;
        }
        tracing::debug!(part, tape = %self.label.name, file_number, first_block, "tape file part begins");
        self.current = Some(Current {
            part: Part {
                part,
                tape: self.label.name.clone(),
                tape_uuid: self.label.uuid,
                file_number,
                first_block,
                data_blocks: 0,
                offset: self.offset,
                bytes: 0,
                sha256: [0; 32],
            },
            sha: Sha256::new(),
            digests: Vec::new(),
        });
        Ok(())
    }

    /// Trailer and filemark; the part goes to the list.
    fn end(&mut self, continued: bool, stream_sha256: [u8; 32]) -> Result<(), TapeFileError> {
        let Some(cur) = self.current.take() else {
            return Ok(());
        };
        let mut part = cur.part;
        part.sha256 = cur.sha.finalize().into();
        let t = PartTrailer {
            part: part.part,
            continued,
            block_size: self.opts.block_size,
            offset: part.offset,
            bytes: part.bytes,
            data_blocks: part.data_blocks,
            sha256: part.sha256,
            stream_sha256,
            id: self.opts.id.clone(),
            digests: cur.digests,
        };
        for b in t.encode().chunks(self.opts.block_size) {
            self.drive.write_block(b)?;
        }
        self.drive.write_filemark(1)?;
        tracing::debug!(part = part.part, tape = %part.tape, continued, bytes = part.bytes, "tape file part ends");
        self.parts.push(part);
        Ok(())
    }

    fn change_tape(&mut self) -> Result<(), TapeFileError> {
        self.end(true, [0; 32])?;
        let full = self.label.clone();
        loop {
            self.next
                .next_tape(&mut *self.drive, &full, self.parts.len() as u32)?;
            let label = check_tape(&mut *self.drive, self.opts.block_size, &self.opts.pool)?;
            if label.uuid == full.uuid || self.parts.iter().any(|p| p.tape_uuid == label.uuid) {
                return Err(TapeFileError::SameTape { tape: label.name });
            }
            // A tape already past its early warning (its record of being full lost in
            // a failed run) takes nothing: the next one.
            self.drive.eod()?;
            if self.drive.status()?.eot {
                tracing::info!(tape = %label.name, "the tape is past its early warning: the next one");
                continue;
            }
            self.label = label;
            break;
        }
        self.begin(Some(full.uuid))?;
        self.switch = self.drive.status()?.eot;
        Ok(())
    }
}

impl BlockSink for PartWriter<'_> {
    type Error = TapeFileError;

    fn write_block(&mut self, block: &[u8], data_len: usize) -> Result<(), TapeFileError> {
        if self.switch {
            self.switch = false;
            self.change_tape()?;
        }
        let warn = self.drive.write_block(block)?;
        let Some(cur) = self.current.as_mut() else {
            return Err(TapeFileError::Panicked);
        };
        cur.sha.update(&block[..data_len]);
        cur.digests.extend_from_slice(&block_digest(block));
        cur.part.data_blocks += 1;
        cur.part.bytes += data_len as u64;
        if cur.part.data_blocks == 3 {
            crate::failpoint::hit("tape-mid-file");
        }
        self.offset += data_len as u64;
        self.switch = warn;
        Ok(())
    }
}

/// Hashes what goes through it.
struct Hashing<'a, 'b> {
    inner: &'a mut BufferWriter<'b, TapeFileError>,
    sha: &'a mut Sha256,
}

impl io::Write for Hashing<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write one tape file at the end of data of the loaded tape: `produce` writes the
/// stream into the buffer. Spans onto the tapes `next` loads when the early warning
/// comes. The tape in the drive must carry a label of `opts.pool`.
pub fn write_tape_file<T>(
    drive: &mut (dyn TapeDrive + Send),
    next: &mut dyn NextTape,
    opts: &TapeFileOptions,
    produce: impl FnOnce(&mut dyn io::Write) -> io::Result<T>,
) -> Result<(T, TapeFile, BufferStats), TapeFileError> {
    if opts.id.is_empty() || opts.id.len() > ID_MAX {
        return Err(TapeFileError::BadId(opts.id.clone()));
    }
    let label = check_tape(drive, opts.block_size, &opts.pool)?;
    let mut w = PartWriter {
        drive,
        next,
        opts,
        label,
        parts: Vec::new(),
        current: None,
        switch: false,
        offset: 0,
    };
    // A tape already past its early warning takes nothing of the stream (not even an
    // empty first part, which no reader would know for one): start on the next one.
    w.drive.eod()?;
    if w.drive.status()?.eot {
        let full = w.label.clone();
        tracing::info!(tape = %full.name, "the tape is past its early warning: starting on the next one");
        w.next.next_tape(&mut *w.drive, &full, 0)?;
        let label = check_tape(&mut *w.drive, opts.block_size, &opts.pool)?;
        if label.uuid == full.uuid {
            return Err(TapeFileError::SameTape { tape: label.name });
        }
        w.label = label;
    }
    w.begin(None)?;
    let bopts = BufferOptions::new(opts.block_size, opts.buffer);
    // The stream's SHA-256 is taken on the producer's thread, leaving the drive's
    // thread the part's hashes.
    let mut stream = Sha256::new();
    let (t, stats) = match buffer::run(bopts, &mut w, |b| {
        produce(&mut Hashing {
            inner: b,
            sha: &mut stream,
        })
    }) {
        Ok(r) => r,
        Err(BufferError::Drive(e)) => return Err(e),
        Err(BufferError::Producer(e)) => return Err(TapeFileError::Producer(e)),
        Err(BufferError::Panicked) => return Err(TapeFileError::Panicked),
    };
    let sha256: [u8; 32] = stream.finalize().into();
    // The last part ends here, even right after an early warning: its trailer fits
    // in the room left before the end.
    w.end(false, sha256)?;
    let file = TapeFile {
        id: opts.id.clone(),
        block_size: opts.block_size,
        parts: w.parts,
        bytes: w.offset,
        sha256,
    };
    Ok((t, file, stats))
}

/// [`write_tape_file`] from a reader.
pub fn write_tape_file_from(
    drive: &mut (dyn TapeDrive + Send),
    next: &mut dyn NextTape,
    opts: &TapeFileOptions,
    src: &mut dyn io::Read,
) -> Result<(TapeFile, BufferStats), TapeFileError> {
    let ((), file, stats) = write_tape_file(drive, next, opts, |w| {
        io::copy(src, w)?;
        Ok(())
    })?;
    Ok((file, stats))
}

impl TapeFileError {
    /// Whether a tape file was read and found damaged (a block, a part's header or
    /// trailer, or the whole stream not as written), rather than not readable or not
    /// there.
    pub fn is_damage(&self) -> bool {
        matches!(
            self,
            TapeFileError::Damaged { .. }
                | TapeFileError::BadPart { .. }
                | TapeFileError::Mismatch { .. }
        )
    }
}
