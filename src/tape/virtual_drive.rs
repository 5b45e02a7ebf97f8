//! The drive of a virtual library, and the cartridge files it reads and writes.
//!
//! A cartridge is a file: a 64-byte header (magic, version, capacity, early-warning
//! zone, barcode), then records one after another, each an 8-byte record header (tag
//! `BLK1` and the length, or tag `FMK1` and 0 for a filemark) and, for a block, its
//! bytes. Positions are record numbers, as a real drive counts blocks and filemarks.
//!
//! - Capacity counts block bytes. A write that ends at or past `capacity -
//!   early_warning` succeeds and reports the early warning; a write that would go past
//!   `capacity` fails with [`TapeError::EndOfMedium`] and writes nothing. Filemarks
//!   take no room.
//! - Writing anywhere but at the end of data first cuts off everything after the
//!   position, as on a real tape.
//! - A block is appended with one `pwrite`; a filemark is followed by an `fdatasync`
//!   (as a drive empties its buffer at a filemark). A writer killed mid-record leaves
//!   a short last record: opening the cartridge ignores it, and the next write cuts it
//!   off. Every whole record before it reads back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::drive::{
    check_block_size_value, DriveStatus, ReadOutcome, Result, TapeDrive, TapeError,
};
use super::virtual_library::{valid_barcode, VirtualLibrary};

pub const CARTRIDGE_MAGIC: &[u8; 8] = b"SPBKVTAP";
pub const CARTRIDGE_VERSION: u32 = 1;
pub const HEADER_LEN: u64 = 64;
const REC_HEADER: u64 = 8;
const TAG_BLOCK: &[u8; 4] = b"BLK1";
const TAG_MARK: &[u8; 4] = b"FMK1";

#[derive(Debug, Clone, Copy)]
struct Rec {
    /// File offset of the record header.
    offset: u64,
    /// Block length; 0 for a filemark.
    len: u32,
    mark: bool,
    /// Block bytes before this record.
    bytes_before: u64,
    /// Tape file number of this record (filemarks before it).
    file: u64,
    /// Record number of the first record of its tape file.
    file_start: u64,
}

/// An open cartridge file.
#[derive(Debug)]
pub(crate) struct Cartridge {
    pub barcode: String,
    path: PathBuf,
    file: File,
    capacity: u64,
    early_warning: u64,
    records: Vec<Rec>,
    /// Offset just after the last whole record.
    end: u64,
    /// Length of the file (more than `end` after a torn write).
    file_len: u64,
}

impl Cartridge {
    /// Create an empty cartridge file (temp name, fsync, rename).
    pub fn create(
        device: &str,
        path: &Path,
        barcode: &str,
        capacity: u64,
        early_warning: u64,
    ) -> Result<()> {
        if !valid_barcode(barcode) {
            return Err(TapeError::Refused {
                device: device.to_string(),
                reason: format!("bad barcode {barcode:?}"),
            });
        }
        let mut h = [0u8; HEADER_LEN as usize];
        h[0..8].copy_from_slice(CARTRIDGE_MAGIC);
        h[8..12].copy_from_slice(&CARTRIDGE_VERSION.to_le_bytes());
        h[16..24].copy_from_slice(&capacity.to_le_bytes());
        h[24..32].copy_from_slice(&early_warning.to_le_bytes());
        h[32..32 + barcode.len()].copy_from_slice(barcode.as_bytes());
        let tmp = path.with_extension("vtape.tmp");
        let write = || -> std::io::Result<()> {
            let f = File::create(&tmp)?;
            f.write_all_at(&h, 0)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            crate::durable::sync_parent(path)
        };
        write().map_err(|source| TapeError::Io {
            device: device.to_string(),
            during: format!("creating cartridge {}", path.display()),
            source,
        })
    }

    /// Open a cartridge file and index its records.
    pub fn open(device: &str, path: &Path, writable: bool) -> Result<Cartridge> {
        let ioe = |during: String| {
            move |source| TapeError::Io {
                device: device.to_string(),
                during,
                source,
            }
        };
        let corrupt = |reason: String| TapeError::Corrupt {
            device: device.to_string(),
            reason: format!("cartridge {}: {reason}", path.display()),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(ioe(format!("opening cartridge {}", path.display())))?;
        let file_len = file
            .metadata()
            .map_err(ioe(format!("reading cartridge {}", path.display())))?
            .len();
        let mut h = [0u8; HEADER_LEN as usize];
        if file_len < HEADER_LEN {
            return Err(corrupt("shorter than its header".into()));
        }
        file.read_exact_at(&mut h, 0)
            .map_err(ioe(format!("reading cartridge {}", path.display())))?;
        if &h[0..8] != CARTRIDGE_MAGIC {
            return Err(corrupt("not a sparsebak virtual cartridge".into()));
        }
        let version = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
        if version != CARTRIDGE_VERSION {
            return Err(corrupt(format!(
                "cartridge format version {version}; this sparsebak reads version {CARTRIDGE_VERSION}"
            )));
        }
        let u64at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&h[o..o + 8]);
            u64::from_le_bytes(b)
        };
        let capacity = u64at(16);
        let early_warning = u64at(24);
        let code_len = h[32..64].iter().position(|&c| c == 0).unwrap_or(32);
        let barcode = String::from_utf8_lossy(&h[32..32 + code_len]).into_owned();
        if early_warning > capacity || !valid_barcode(&barcode) {
            return Err(corrupt("bad header".into()));
        }
        let mut records = Vec::new();
        let mut off = HEADER_LEN;
        let (mut bytes, mut fileno, mut file_start) = (0u64, 0u64, 0u64);
        while off + REC_HEADER <= file_len {
            let mut rh = [0u8; REC_HEADER as usize];
            file.read_exact_at(&mut rh, off)
                .map_err(ioe(format!("reading cartridge {}", path.display())))?;
            let len = u32::from_le_bytes([rh[4], rh[5], rh[6], rh[7]]);
            let mark = match &rh[0..4] {
                t if t == TAG_MARK && len == 0 => true,
                t if t == TAG_BLOCK && len > 0 && len as usize <= super::drive::MAX_BLOCK_SIZE => {
                    false
                }
                _ => {
                    return Err(corrupt(format!(
                        "bad record header at offset {off} (record {})",
                        records.len()
                    )))
                }
            };
            if off + REC_HEADER + len as u64 > file_len {
                break; // a torn last record
            }
            records.push(Rec {
                offset: off,
                len,
                mark,
                bytes_before: bytes,
                file: fileno,
                file_start,
            });
            bytes += len as u64;
            off += REC_HEADER + len as u64;
            if mark {
                fileno += 1;
                file_start = records.len() as u64;
            }
        }
        if off != file_len {
            tracing::warn!(
                cartridge = %path.display(),
                "ignoring {} bytes of a record that was not completely written",
                file_len - off
            );
        }
        Ok(Cartridge {
            barcode,
            path: path.to_path_buf(),
            file,
            capacity,
            early_warning,
            records,
            end: off,
            file_len,
        })
    }

    fn bytes_before(&self, pos: usize) -> u64 {
        match self.records.get(pos) {
            Some(r) => r.bytes_before,
            None => self
                .records
                .last()
                .map_or(0, |r| r.bytes_before + r.len as u64),
        }
    }

    /// Tape file number and block within it at `pos`.
    fn file_at(&self, pos: usize) -> (u64, u64) {
        if let Some(r) = self.records.get(pos) {
            return (r.file, pos as u64 - r.file_start);
        }
        match self.records.last() {
            None => (0, 0),
            Some(r) if r.mark => (r.file + 1, 0),
            Some(r) => (r.file, pos as u64 - r.file_start),
        }
    }

    /// Cut everything from record `pos` on (and any torn tail).
    fn truncate_at(&mut self, device: &str, pos: usize) -> Result<()> {
        let cut = self.records.get(pos).map_or(self.end, |r| r.offset);
        if cut != self.file_len {
            self.file.set_len(cut).map_err(|source| TapeError::Io {
                device: device.to_string(),
                during: format!("truncating cartridge {}", self.path.display()),
                source,
            })?;
            self.file_len = cut;
        }
        self.records.truncate(pos);
        self.end = cut;
        Ok(())
    }

    /// Append one record (header and data in one write).
    fn append(&mut self, device: &str, buf: &[u8], len: u32, mark: bool) -> Result<()> {
        self.file
            .write_all_at(buf, self.end)
            .map_err(|source| TapeError::Io {
                device: device.to_string(),
                during: format!("writing cartridge {}", self.path.display()),
                source,
            })?;
        let pos = self.records.len();
        let (file, block) = self.file_at(pos);
        self.records.push(Rec {
            offset: self.end,
            len,
            mark,
            bytes_before: self.bytes_before(pos),
            file,
            file_start: pos as u64 - block,
        });
        self.end += buf.len() as u64;
        self.file_len = self.end;
        Ok(())
    }
}

/// Spaces reads and writes out to a given speed.
#[derive(Debug)]
struct Throttle {
    next: Instant,
}

impl Throttle {
    fn take(&mut self, speed: Option<u64>, bytes: usize) {
        let Some(speed) = speed else { return };
        let now = Instant::now();
        let start = self.next.max(now);
        self.next = start + Duration::from_secs_f64(bytes as f64 / speed as f64);
        if self.next > now {
            std::thread::sleep(self.next - now);
        }
    }
}

/// The drive of a [`VirtualLibrary`]: reads and writes the cartridge the changer put
/// in it. Starts in variable-block mode, like a drive whose mode nobody set.
#[derive(Debug)]
pub struct VirtualDrive {
    lib: VirtualLibrary,
    name: String,
    block_size: usize,
    /// The open cartridge and the library generation it was opened at.
    cart: Option<(u64, Cartridge)>,
    /// The library's load count when the cartridge was opened.
    loads: u64,
    /// No cartridge opened yet: the first one starts where the library says the
    /// drive's tape was left.
    fresh: bool,
    pos: usize,
    write_protected: bool,
    speed: Option<u64>,
    throttle: Throttle,
    buf: Vec<u8>,
}

impl VirtualDrive {
    pub(crate) fn new(lib: VirtualLibrary) -> VirtualDrive {
        let name = format!("{} drive 0", lib.name());
        VirtualDrive {
            lib,
            name,
            block_size: 0,
            cart: None,
            loads: 0,
            fresh: true,
            pos: 0,
            write_protected: false,
            speed: None,
            throttle: Throttle {
                next: Instant::now(),
            },
            buf: Vec::new(),
        }
    }

    /// The barcode of the cartridge in the drive.
    pub fn barcode(&mut self) -> Result<String> {
        Ok(self.cart()?.barcode.clone())
    }

    /// The cartridge in the drive, (re)opened if the changer moved tapes since.
    fn cart(&mut self) -> Result<&mut Cartridge> {
        let (generation, loads, path, barcode, protected, left_at) = {
            let st = self.lib.lock();
            let Some((b, _)) = st.drive.as_ref().filter(|_| st.online) else {
                self.cart = None;
                return Err(TapeError::NoTape {
                    device: self.name.clone(),
                });
            };
            self.speed = st.speed;
            (
                st.generation,
                st.loads,
                st.cartridge_path(b),
                b.clone(),
                st.protected.contains(b),
                st.position,
            )
        };
        if self.cart.as_ref().map(|c| c.0) != Some(generation) {
            let c = Cartridge::open(&self.name, &path, !protected)?;
            if c.barcode != barcode {
                return Err(TapeError::Corrupt {
                    device: self.name.clone(),
                    reason: format!(
                        "cartridge {} says it is {}, the library says {barcode}",
                        path.display(),
                        c.barcode
                    ),
                });
            }
            // A tape just loaded is at its beginning; the first open in a run finds
            // the tape where the last run left it.
            if self.fresh {
                self.pos = usize::try_from(left_at).unwrap_or(usize::MAX);
                self.fresh = false;
            } else if self.cart.is_none() || self.loads != loads {
                self.pos = 0;
            }
            self.loads = loads;
            self.pos = self.pos.min(c.records.len());
            self.write_protected = protected;
            self.cart = Some((generation, c));
        }
        match &mut self.cart {
            Some((_, c)) => Ok(c),
            None => Err(TapeError::NoTape {
                device: self.name.clone(),
            }),
        }
    }

    fn writable(&mut self) -> Result<()> {
        self.cart()?;
        if self.write_protected {
            return Err(TapeError::WriteProtected {
                device: self.name.clone(),
            });
        }
        Ok(())
    }

    fn position_err(&self, during: String, reason: &str) -> TapeError {
        TapeError::Position {
            device: self.name.clone(),
            during,
            reason: reason.to_string(),
        }
    }
}

impl Drop for VirtualDrive {
    /// Leave the position in the library state, so the next run finds the tape where
    /// this one left it (a real drive does not move between opens either).
    fn drop(&mut self) {
        let Some((generation, _)) = &self.cart else {
            return;
        };
        let mut st = self.lib.lock();
        if st.generation != *generation || st.drive.is_none() || st.position == self.pos as u64 {
            return;
        }
        st.position = self.pos as u64;
        if let Err(e) = st.save() {
            tracing::warn!("{}: cannot keep the tape position: {e}", self.name);
        }
    }
}

impl TapeDrive for VirtualDrive {
    fn name(&self) -> &str {
        &self.name
    }

    fn set_block_size(&mut self, size: usize) -> Result<()> {
        check_block_size_value(&self.name, size)?;
        self.block_size = size;
        Ok(())
    }

    fn write_block(&mut self, block: &[u8]) -> Result<bool> {
        super::drive::check_fixed(&self.name, self.block_size, "a write", block.len())?;
        self.writable()?;
        let name = self.name.clone();
        let pos = self.pos;
        let speed = self.speed;
        let mut buf = std::mem::take(&mut self.buf);
        let Some((_, c)) = self.cart.as_mut() else {
            return Err(TapeError::NoTape { device: name });
        };
        let used = c.bytes_before(pos) + block.len() as u64;
        if used > c.capacity {
            self.buf = buf;
            return Err(TapeError::EndOfMedium {
                device: name,
                during: format!("writing block {pos}"),
            });
        }
        c.truncate_at(&name, pos)?;
        buf.clear();
        buf.extend_from_slice(TAG_BLOCK);
        buf.extend_from_slice(&(block.len() as u32).to_le_bytes());
        buf.extend_from_slice(block);
        let r = c.append(&name, &buf, block.len() as u32, false);
        let warn = used >= c.capacity - c.early_warning;
        self.buf = buf;
        r?;
        self.pos += 1;
        self.throttle.take(speed, block.len());
        Ok(warn)
    }

    fn write_filemark(&mut self, n: u32) -> Result<()> {
        self.writable()?;
        let name = self.name.clone();
        let pos = self.pos;
        let Some((_, c)) = self.cart.as_mut() else {
            return Err(TapeError::NoTape { device: name });
        };
        c.truncate_at(&name, pos)?;
        let mut rec = Vec::with_capacity(8);
        rec.extend_from_slice(TAG_MARK);
        rec.extend_from_slice(&0u32.to_le_bytes());
        for _ in 0..n {
            c.append(&name, &rec, 0, true)?;
        }
        c.file.sync_data().map_err(|source| TapeError::Io {
            device: name,
            during: format!("syncing cartridge {}", c.path.display()),
            source,
        })?;
        self.pos += n as usize;
        Ok(())
    }

    fn read_block(&mut self, buf: &mut [u8]) -> Result<ReadOutcome> {
        super::drive::check_fixed(&self.name, self.block_size, "a read", buf.len())?;
        // Open the cartridge first: a tape just loaded is read from its beginning.
        self.cart()?;
        let pos = self.pos;
        let name = self.name.clone();
        let expected = self.block_size;
        let c = self.cart()?;
        let Some(r) = c.records.get(pos).copied() else {
            return Ok(ReadOutcome::EndOfData);
        };
        if r.mark {
            self.pos += 1;
            return Ok(ReadOutcome::Filemark);
        }
        if r.len as usize != expected {
            return Err(TapeError::BlockSizeMismatch {
                device: name,
                expected,
                found: r.len as usize,
            });
        }
        c.file
            .read_exact_at(buf, r.offset + REC_HEADER)
            .map_err(|source| TapeError::Io {
                device: name,
                during: format!("reading block {pos}"),
                source,
            })?;
        self.pos += 1;
        let speed = self.speed;
        self.throttle.take(speed, buf.len());
        Ok(ReadOutcome::Block)
    }

    fn rewind(&mut self) -> Result<()> {
        self.cart()?;
        self.pos = 0;
        Ok(())
    }

    fn fsf(&mut self, n: u32) -> Result<()> {
        // Open first: a run's first open sets where the tape is.
        self.cart()?;
        let mut pos = self.pos;
        let c = self.cart()?;
        let mut left = n;
        while left > 0 {
            match c.records.get(pos) {
                None => {
                    let e = format!("spacing forward {n} filemarks");
                    self.pos = pos;
                    return Err(self.position_err(e, "end of data"));
                }
                Some(r) => {
                    if r.mark {
                        left -= 1;
                    }
                    pos += 1;
                }
            }
        }
        self.pos = pos;
        Ok(())
    }

    fn bsf(&mut self, n: u32) -> Result<()> {
        // Open first: a run's first open sets where the tape is.
        self.cart()?;
        let mut pos = self.pos;
        let c = self.cart()?;
        let mut left = n;
        while left > 0 {
            if pos == 0 {
                self.pos = 0;
                return Err(
                    self.position_err(format!("spacing back {n} filemarks"), "beginning of tape")
                );
            }
            pos -= 1;
            if c.records[pos].mark {
                left -= 1;
            }
        }
        self.pos = pos;
        Ok(())
    }

    fn eod(&mut self) -> Result<()> {
        self.pos = self.cart()?.records.len();
        Ok(())
    }

    fn locate(&mut self, block: u64) -> Result<()> {
        let len = self.cart()?.records.len();
        if block > len as u64 {
            return Err(self.position_err(
                format!("locating block {block}"),
                &format!("past the end of data (block {len})"),
            ));
        }
        self.pos = block as usize;
        Ok(())
    }

    fn position(&mut self) -> Result<u64> {
        self.cart()?;
        Ok(self.pos as u64)
    }

    fn status(&mut self) -> Result<DriveStatus> {
        let block_size = self.block_size;
        match self.cart() {
            Ok(_) => {}
            Err(TapeError::NoTape { .. }) => {
                return Ok(DriveStatus {
                    block_size,
                    ..DriveStatus::default()
                })
            }
            Err(e) => return Err(e),
        };
        // After the cartridge is (re)opened: a tape just loaded is at its beginning.
        let pos = self.pos;
        let c = self.cart()?;
        let (file, block) = c.file_at(pos);
        let status = DriveStatus {
            file_number: Some(file),
            block_in_file: Some(block),
            block_size,
            bot: pos == 0,
            eof: pos > 0 && c.records[pos - 1].mark,
            eot: c.bytes_before(pos) >= c.capacity - c.early_warning,
            eod: pos == c.records.len(),
            online: true,
            write_protected: false,
        };
        let wp = self.write_protected;
        Ok(DriveStatus {
            write_protected: wp,
            ..status
        })
    }

    fn load(&mut self) -> Result<()> {
        {
            let mut st = self.lib.lock();
            if st.drive.is_none() {
                return Err(TapeError::NoTape {
                    device: self.name.clone(),
                });
            }
            st.online = true;
        }
        self.cart()?;
        Ok(())
    }

    fn unload(&mut self) -> Result<()> {
        self.cart()?;
        self.pos = 0;
        self.cart = None;
        self.lib.lock().online = false;
        Ok(())
    }
}
