//! Reading a tape file back: each part's tape is put in the drive, its label checked
//! (the tape the catalog names, the block size), the drive LOCATEs straight to the
//! part's first block (no counting of filemarks), and the parts' data are joined in
//! order into the original byte stream.
//!
//! Each part's trailer is read first (a LOCATE past the data and one back): it holds
//! the 4-byte digest of every data block, so a damaged block is named (tape, file,
//! block) as it is read, before any of its bytes is handed out. Checks: a
//! continuation part's header (part number, offset, stream), each part's trailer (part
//! number, "continued" on all but the last, offset, length, block count, the filemark
//! after it), every block's digest, each part's SHA-256 once it is read whole, and at
//! the end the stream's length and SHA-256 against both the catalog and the last
//! trailer. A caller takes the stream as good only once it has read it to the end
//! without an error.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use super::changer::Changer;
use super::drive::{ReadOutcome, TapeDrive};
use super::label::TapeLabel;
use super::writer::{
    block_digest, trailer_blocks, Part, PartHeader, PartTrailer, TapeFile, TapeFileError,
    DIGEST_LEN, TRAILER_FIXED,
};

/// Puts the tape holding a part in the drive.
pub trait MountTape {
    fn mount(&mut self, drive: &mut dyn TapeDrive, part: &Part) -> Result<(), TapeFileError>;
}

/// No changer: the right tape must already be in the drive (the label check says
/// which one is wanted when it is not).
#[derive(Debug, Default)]
pub struct LoadedTape;

impl MountTape for LoadedTape {
    fn mount(&mut self, _drive: &mut dyn TapeDrive, _part: &Part) -> Result<(), TapeFileError> {
        Ok(())
    }
}

/// Loads each part's tape by its barcode with a changer.
pub struct ChangerMount<C: Changer> {
    pub changer: C,
    pub drive_number: u32,
}

impl<C: Changer> MountTape for ChangerMount<C> {
    fn mount(&mut self, drive: &mut dyn TapeDrive, part: &Part) -> Result<(), TapeFileError> {
        let inv = self.changer.inventory()?;
        if inv.drive_of(&part.tape) == Some(self.drive_number) {
            return Ok(());
        }
        super::drive::release_tape(&mut *drive)?;
        self.changer.load_barcode(&part.tape, self.drive_number)?;
        Ok(super::drive::take_tape(&mut *drive)?)
    }
}

/// The part being read.
struct Open {
    index: usize,
    /// Data blocks read so far.
    blocks: u64,
    /// Data bytes of the part not yet read.
    left: u64,
    sha: Sha256,
    /// The digest of every data block, from the part's trailer (read first).
    digests: Vec<u8>,
    /// The part's SHA-256 and the stream's, from the trailer.
    trailer_sha256: [u8; 32],
    stream_sha256: [u8; 32],
    /// Position of the part's first data block.
    data_start: u64,
}

/// A tape file as a [`Read`]: the original stream.
pub struct TapeFileReader<'a> {
    drive: &'a mut dyn TapeDrive,
    mount: &'a mut dyn MountTape,
    file: TapeFile,
    open: Option<Open>,
    next_part: usize,
    block: Vec<u8>,
    /// Data bytes of `block` and how many were handed out.
    block_len: usize,
    block_pos: usize,
    stream: Sha256,
    read: u64,
    done: bool,
    failed: bool,
}

fn tape_io(e: TapeFileError) -> io::Error {
    io::Error::other(e)
}

/// The tape file error inside an error of [`TapeFileReader::read`], if it is one.
pub fn tape_file_error(e: &io::Error) -> Option<&TapeFileError> {
    e.get_ref()?.downcast_ref::<TapeFileError>()
}

impl<'a> TapeFileReader<'a> {
    pub fn new(
        drive: &'a mut dyn TapeDrive,
        mount: &'a mut dyn MountTape,
        file: TapeFile,
    ) -> Result<TapeFileReader<'a>, TapeFileError> {
        let mismatch = |reason: String| TapeFileError::Mismatch {
            id: file.id.clone(),
            reason,
        };
        super::drive::check_block_size_value(drive.name(), file.block_size)?;
        // The catalog's numbers bound what is read and allocated.
        let mut offset = 0u64;
        for (i, p) in file.parts.iter().enumerate() {
            let room = p.data_blocks.checked_mul(file.block_size as u64);
            if p.part as usize != i + 1
                || p.offset != offset
                || room.is_none_or(|r| p.bytes > r || p.bytes + file.block_size as u64 <= r)
            {
                return Err(mismatch(format!("part {} does not follow on", i + 1)));
            }
            offset += p.bytes;
        }
        if file.parts.is_empty() || offset != file.bytes {
            return Err(mismatch(format!(
                "its parts hold {offset} bytes, the stream {} bytes",
                file.bytes
            )));
        }
        let block = vec![0u8; file.block_size];
        Ok(TapeFileReader {
            drive,
            mount,
            file,
            open: None,
            next_part: 0,
            block,
            block_len: 0,
            block_pos: 0,
            stream: Sha256::new(),
            read: 0,
            done: false,
            failed: false,
        })
    }

    fn part(&self, index: usize) -> &Part {
        &self.file.parts[index]
    }

    fn bad(&self, part: &Part, reason: String) -> TapeFileError {
        TapeFileError::BadPart {
            tape: part.tape.clone(),
            file: part.file_number,
            reason,
        }
    }

    /// Read one block; anything but a block is an error naming where.
    fn read_one(&mut self, index: usize, what: &str) -> Result<(), TapeFileError> {
        let pos = self.drive.position()?;
        match self.drive.read_block(&mut self.block)? {
            ReadOutcome::Block => Ok(()),
            other => {
                let part = self.part(index).clone();
                let first = part.first_block;
                Err(self.bad(
                    &part,
                    format!(
                        "{} at block {} (position {pos}) where {what} should be",
                        if other == ReadOutcome::Filemark {
                            "a filemark"
                        } else {
                            "the end of data"
                        },
                        pos.saturating_sub(first)
                    ),
                ))
            }
        }
    }

    /// Mount the part's tape, check its label, locate and check the header.
    fn open_part(&mut self, index: usize) -> Result<(), TapeFileError> {
        let part = self.part(index).clone();
        self.mount.mount(&mut *self.drive, &part)?;
        self.drive.set_block_size(self.file.block_size)?;
        let label = TapeLabel::read(&mut *self.drive)?;
        if label.uuid != part.tape_uuid {
            return Err(TapeFileError::WrongTape {
                id: self.file.id.clone(),
                part: part.part,
                found: label.name.clone(),
                found_uuid: label.uuid_string(),
                expected: part.tape.clone(),
                expected_uuid: TapeLabel {
                    uuid: part.tape_uuid,
                    ..label
                }
                .uuid_string(),
            });
        }
        self.drive.locate(part.first_block)?;
        let mut data_start = part.first_block;
        if part.part > 1 {
            self.read_one(index, "the part header")?;
            let h = PartHeader::decode(&self.block).map_err(|r| self.bad(&part, r))?;
            if h.part != part.part
                || h.offset != part.offset
                || h.id != self.file.id
                || h.block_size != self.file.block_size
            {
                return Err(self.bad(
                    &part,
                    format!(
                        "the part header says part {} at offset {} of {:?} in blocks of {}, expected part {} at offset {} of {:?} in blocks of {}",
                        h.part, h.offset, h.id, h.block_size, part.part, part.offset, self.file.id, self.file.block_size
                    ),
                ));
            }
            data_start += 1;
        }
        // The trailer first: it holds the digest of every data block, so a damaged
        // block is named as it is read, before any of its bytes is handed out.
        let (t, digests) = self.read_trailer(index, data_start)?;
        self.drive.locate(data_start)?;
        tracing::debug!(part = part.part, tape = %part.tape, first_block = part.first_block, "reading tape file part");
        self.open = Some(Open {
            index,
            blocks: 0,
            left: part.bytes,
            sha: Sha256::new(),
            digests,
            trailer_sha256: t.sha256,
            stream_sha256: t.stream_sha256,
            data_start,
        });
        Ok(())
    }

    /// Read and check the trailer of part `index` (data from `data_start`) and the
    /// filemark after it; returns it with its block digests.
    fn read_trailer(
        &mut self,
        index: usize,
        data_start: u64,
    ) -> Result<(PartTrailer, Vec<u8>), TapeFileError> {
        let part = self.part(index).clone();
        let last = index + 1 == self.file.parts.len();
        let bs = self.file.block_size;
        self.drive.locate(data_start + part.data_blocks)?;
        let n = trailer_blocks(part.data_blocks, bs);
        // `n` follows from the block count, which [`TapeFileReader::new`] bounded.
        let mut raw = Vec::with_capacity((n as usize).min(64) * bs);
        for _ in 0..n {
            self.read_one(index, "the part trailer")?;
            raw.extend_from_slice(&self.block);
        }
        match self.drive.read_block(&mut self.block)? {
            ReadOutcome::Filemark => {}
            _ => return Err(self.bad(&part, "no filemark after the part trailer".into())),
        }
        let (t, digests_sha) = PartTrailer::decode_fixed(&raw).map_err(|r| self.bad(&part, r))?;
        let expect = (
            part.part,
            !last,
            bs,
            part.offset,
            part.bytes,
            part.data_blocks,
        );
        let found = (
            t.part,
            t.continued,
            t.block_size,
            t.offset,
            t.bytes,
            t.data_blocks,
        );
        if found != expect || t.id != self.file.id {
            return Err(self.bad(
                &part,
                format!("the part trailer says (part, continued, block size, offset, bytes, blocks) = {found:?} of {:?}, expected {expect:?} of {:?}", t.id, self.file.id),
            ));
        }
        raw.truncate(TRAILER_FIXED + DIGEST_LEN * part.data_blocks as usize);
        let digests = raw.split_off(TRAILER_FIXED);
        if Sha256::digest(&digests).as_slice() != digests_sha {
            return Err(self.bad(&part, "the part trailer's block digests are damaged".into()));
        }
        Ok((t, digests))
    }

    /// Check the part just read whole against its trailer and the catalog.
    fn close_part(&mut self, open: Open) -> Result<(), TapeFileError> {
        let part = self.part(open.index).clone();
        let last = open.index + 1 == self.file.parts.len();
        let sha: [u8; 32] = open.sha.finalize().into();
        if sha != part.sha256 || sha != open.trailer_sha256 {
            return Err(self.bad(&part, "the part's SHA-256 does not match".into()));
        }
        if last {
            let sha: [u8; 32] = std::mem::take(&mut self.stream).finalize().into();
            if self.read != self.file.bytes || sha != self.file.sha256 || sha != open.stream_sha256
            {
                return Err(TapeFileError::Mismatch {
                    id: self.file.id.clone(),
                    reason: format!(
                        "{} bytes read with SHA-256 {}; the catalog says {} bytes with SHA-256 {}",
                        self.read,
                        hex::encode(sha),
                        self.file.bytes,
                        hex::encode(self.file.sha256)
                    ),
                });
            }
            self.done = true;
        }
        Ok(())
    }

    /// Bring the next data block in; `false` at the end of the stream.
    fn fill(&mut self) -> Result<bool, TapeFileError> {
        loop {
            if self.done {
                return Ok(false);
            }
            let Some(open) = self.open.take() else {
                let i = self.next_part;
                self.next_part += 1;
                self.open_part(i)?;
                continue;
            };
            let part_blocks = self.part(open.index).data_blocks;
            if open.blocks == part_blocks {
                self.close_part(open)?;
                continue;
            }
            let mut open = open;
            self.read_one(open.index, "a data block")?;
            let len = (self.file.block_size as u64).min(open.left) as usize;
            let at = open.blocks as usize * DIGEST_LEN;
            if open.digests.get(at..at + DIGEST_LEN) != Some(&block_digest(&self.block)[..]) {
                let part = self.part(open.index);
                let position = open.data_start + open.blocks;
                return Err(TapeFileError::Damaged {
                    tape: part.tape.clone(),
                    file: part.file_number,
                    block: position - part.first_block,
                    position,
                    reason: "its bytes do not match the digest the part trailer holds".into(),
                });
            }
            open.sha.update(&self.block[..len]);
            self.stream.update(&self.block[..len]);
            open.blocks += 1;
            open.left -= len as u64;
            self.read += len as u64;
            self.block_len = len;
            self.block_pos = 0;
            self.open = Some(open);
            return Ok(true);
        }
    }
}

impl Read for TapeFileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(io::Error::other(
                "the tape file could not be read (see the error before)",
            ));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        while self.block_pos == self.block_len {
            match self.fill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => {
                    self.failed = true;
                    return Err(tape_io(e));
                }
            }
        }
        let n = (self.block_len - self.block_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.block[self.block_pos..self.block_pos + n]);
        self.block_pos += n;
        Ok(n)
    }
}
