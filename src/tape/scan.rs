//! `sparsebak tape scan`: the catalog's tapes, tape files and a tape destination's
//! chains rebuilt from the tapes themselves.
//!
//! Each tape scanned: its label is read (the tape is recorded), then each of its files
//! is walked: the first block says what the file is (the first part of a stream, a
//! continuation part, a catalog copy, or something else), then the drive spaces over
//! the file's filemark, the file's length in blocks says where its trailer starts, and
//! the trailer's first block gives the part's number, offset, bytes, blocks, SHA-256
//! and stream id.
//!
//! Once every tape is walked, the newest catalog copy whose parts were all found is
//! restored and imported (tapes, this destination's tape files and chains); a copy
//! that does not read back whole is reported and the next newest tried. The streams
//! the catalog still does not know are read whole through the stream reader (which
//! checks everything) and their sessions recorded in chain order, each linked to the
//! one before it by its header's base and base manifest SHA-256.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use sparsebak_format::crypto::{ArchiveKeys, KeyFile, Passphrase};
use sparsebak_format::stream::{ChainReader, StreamSummary, HEADER_MEMBER, KEY_MEMBER};

use super::catalog_copy::{restore_catalog_copy, CatalogCopyError, CopyHeader};
use super::changer::{Changer, ChangerError};
use super::drive::{ReadOutcome, TapeDrive, TapeError};
use super::label::{LabelError, TapeLabel};
use super::reader::{MountTape, TapeFileReader};
use super::writer::{trailer_blocks, Part, PartHeader, PartTrailer, TapeFile, TapeFileError};
use crate::catalog::{Catalog, CatalogError, TapeFileRecord, TapeRecord};

/// The destination kind of a tape destination's chains in the catalog.
pub const TAPE_KIND: &str = "tape";

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error(transparent)]
    Tape(#[from] TapeError),
    #[error(transparent)]
    Label(#[from] LabelError),
    #[error(transparent)]
    Changer(#[from] ChangerError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    TapeFile(Box<TapeFileError>),
    #[error("{0}")]
    Refused(String),
    /// An encrypted copy or stream could not be opened for want of the right
    /// passphrase: the scan stops (what it found would look like tapes holding nothing).
    #[error("{0}; the scan stopped: give the destination's passphrase (passfile, passcmd, SPARSEBAK_PASSPHRASE or the prompt) and scan again")]
    Passphrase(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<TapeFileError> for ScanError {
    fn from(e: TapeFileError) -> Self {
        ScanError::TapeFile(Box::new(e))
    }
}

/// Which tapes a scan reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The tape in the drive.
    Loaded,
    /// The tape in this slot (loaded first).
    Slot(u32),
    /// Every tape of the pool in the library.
    All,
}

/// What a scan is about.
pub struct ScanOptions<'a> {
    /// The tape destination's name.
    pub dest: &'a str,
    pub pool: &'a str,
    pub block_size: usize,
    /// The changer's drive number.
    pub drive_number: u32,
    /// The passphrase, asked only when a sealed copy or an encrypted stream is read.
    pub passphrase: Box<dyn FnMut() -> Result<Passphrase, String> + 'a>,
}

/// What a scan found and did.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Each tape read: its name, uuid and the files on it.
    pub tapes: Vec<(String, String, u64)>,
    /// Tapes not read (another pool, no label, another block size): why.
    pub skipped: Vec<String>,
    /// Tapes skipped because their label could not be read (not blank, not of another
    /// pool): what they hold is not in the catalog.
    pub unreadable: usize,
    /// Tapes recorded that the catalog did not know.
    pub tapes_added: usize,
    /// Files that are no sparsebak file (or an empty one): where.
    pub foreign: Vec<String>,
    /// Catalog copies found: their id and time.
    pub copies: Vec<(String, i64)>,
    /// The copy imported, if any.
    pub imported: Option<String>,
    /// Sessions the imported copy added.
    pub sessions_from_copy: usize,
    /// Sessions rebuilt from their streams: volume and session.
    pub sessions_added: Vec<(String, String)>,
    /// Tape file rows added (from the copy and from the streams).
    pub tape_files_added: usize,
    /// What could not be used, each said once with where.
    pub problems: Vec<String>,
    /// The destination's key file, for an encrypted one: the one the imported copy
    /// carries, else the one of the newest encrypted stream read.
    pub key_file: Option<KeyFile>,
}

/// What the first block of a tape file says it is.
#[derive(Debug, Clone)]
enum Kind {
    /// The first part of a stream, and the key file an encrypted one carries when
    /// it is in the first block.
    Stream(Option<KeyFile>),
    /// A part after the first.
    Continuation(PartHeader),
    /// The first part of a catalog copy.
    Copy(CopyHeader),
}

/// One part found on a tape.
#[derive(Debug, Clone)]
struct Found {
    kind: Kind,
    tape: String,
    tape_uuid: [u8; 16],
    tape_uuid_string: String,
    file_number: u64,
    first_block: u64,
    trailer: PartTrailer,
}

/// Puts a part's tape in the drive: with a changer, by its barcode; without one the
/// tape in the drive must be it (its label is checked by the reader).
struct Mount<'a> {
    changer: Option<&'a mut (dyn Changer + Send + 'static)>,
    drive_number: u32,
    block_size: usize,
}

impl MountTape for Mount<'_> {
    fn mount(&mut self, drive: &mut dyn TapeDrive, part: &Part) -> Result<(), TapeFileError> {
        let Some(changer) = self.changer.as_deref_mut() else {
            return Ok(());
        };
        let inv = changer.inventory()?;
        if inv.drive_of(&part.tape) == Some(self.drive_number) {
            return Ok(());
        }
        release(drive, changer, self.drive_number)?;
        changer.load_barcode(&part.tape, self.drive_number)?;
        super::drive::take_tape(&mut *drive)?;
        super::open::ready(drive, self.block_size)?;
        Ok(())
    }
}

/// Unload the drive's tape, if any, into the slot it came from.
fn release(
    drive: &mut dyn TapeDrive,
    changer: &mut (dyn Changer + Send + 'static),
    drive_number: u32,
) -> Result<(), TapeFileError> {
    let inv = changer.inventory()?;
    if !inv
        .drives
        .iter()
        .any(|d| d.number == drive_number && d.full)
    {
        return Ok(());
    }
    super::drive::release_tape(&mut *drive)?;
    changer.unload(drive_number, None)?;
    Ok(())
}

/// The number of data blocks `d` of a part of `n` blocks (header included when
/// `header`): `header + d + trailer_blocks(d) == n`, or `None`.
fn data_blocks_of(n: u64, header: bool, bs: usize) -> Option<u64> {
    let n = n.checked_sub(u64::from(header))?;
    // d + trailer_blocks(d) grows strictly with d: search.
    let (mut lo, mut hi) = (0u64, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if mid + trailer_blocks(mid, bs) < n {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (lo + trailer_blocks(lo, bs) == n).then_some(lo)
}

/// Whether `block` starts a sparsebak stream (its first tar header is the stream's
/// header member).
fn starts_stream(block: &[u8]) -> bool {
    if block.len() < 512 {
        return false;
    }
    let h = tar::Header::from_byte_slice(&block[..512]);
    let sum = block[..148]
        .iter()
        .chain([b' '; 8].iter())
        .chain(block[156..512].iter())
        .map(|&b| u64::from(b))
        .sum::<u64>();
    h.cksum().ok().map(u64::from) == Some(sum)
        && h.path_bytes().as_ref() == HEADER_MEMBER.as_bytes()
}

/// The key file an encrypted stream carries as its second member, when it lies in
/// `block` (its first block). Every length is bounded by the block.
fn stream_key(block: &[u8]) -> Option<KeyFile> {
    let first = tar::Header::from_byte_slice(block.get(..512)?);
    let size = usize::try_from(first.size().ok()?).ok()?;
    let next = size.checked_next_multiple_of(512)?.checked_add(512)?;
    let second = tar::Header::from_byte_slice(block.get(next..next.checked_add(512)?)?);
    if second.path_bytes().as_ref() != KEY_MEMBER.as_bytes() {
        return None;
    }
    let len = usize::try_from(second.size().ok()?).ok()?;
    if len > sparsebak_format::crypto::keyfile::MAX_KEY_FILE {
        return None;
    }
    KeyFile::parse(block.get(next + 512..next + 512 + len)?).ok()
}

/// Walk the files of the loaded tape (its label already read, the tape at file 1).
fn walk(
    drive: &mut dyn TapeDrive,
    label: &TapeLabel,
    report: &mut ScanReport,
    found: &mut Vec<Found>,
) -> Result<u64, ScanError> {
    let bs = label.block_size;
    let mut block = vec![0u8; bs];
    let mut trailer = vec![0u8; bs];
    let mut file = 1u64;
    let here = |file: u64| format!("tape {} file {file}", label.name);
    loop {
        let start = drive.position()?;
        match drive.read_block(&mut block)? {
            ReadOutcome::EndOfData => return Ok(file - 1),
            ReadOutcome::Filemark => {
                report.foreign.push(format!("{}: empty", here(file)));
                file += 1;
                continue;
            }
            ReadOutcome::Block => {}
        }
        let kind = if CopyHeader::is_copy(&block) {
            match CopyHeader::decode(&block) {
                Ok(h) => Some(Kind::Copy(h)),
                Err(e) => {
                    report.problems.push(format!("{}: {e}", here(file)));
                    None
                }
            }
        } else if &block[0..8] == super::writer::HEADER_MAGIC {
            match PartHeader::decode(&block) {
                Ok(h) => Some(Kind::Continuation(h)),
                Err(e) => {
                    report.problems.push(format!("{}: {e}", here(file)));
                    None
                }
            }
        } else if starts_stream(&block) {
            Some(Kind::Stream(stream_key(&block)))
        } else {
            report
                .foreign
                .push(format!("{}: not a sparsebak file", here(file)));
            None
        };
        // Over the file's filemark: its length is then known.
        match drive.fsf(1) {
            Ok(()) => {}
            Err(TapeError::Position { .. }) => {
                report.problems.push(format!(
                    "{}: no filemark ends it (an interrupted write?)",
                    here(file)
                ));
                return Ok(file);
            }
            Err(e @ TapeError::NoTape { .. }) => return Err(e.into()),
            // A drive that cannot space past the file: the rest of the tape is not
            // walked, what was found stays.
            Err(e) => {
                report
                    .problems
                    .push(format!("{}: spacing to its filemark: {e}", here(file)));
                return Ok(file);
            }
        }
        let after = drive.position()?;
        if let Some(kind) = kind {
            let n = after.saturating_sub(start + 1);
            let header = matches!(kind, Kind::Continuation(_));
            match part_of(drive, &mut trailer, kind, start, n, header, bs) {
                Ok((kind, t)) => found.push(Found {
                    kind,
                    tape: label.name.clone(),
                    tape_uuid: label.uuid,
                    tape_uuid_string: label.uuid_string(),
                    file_number: file,
                    first_block: start,
                    trailer: t,
                }),
                Err(why) => report.problems.push(format!("{}: {why}", here(file))),
            }
            drive.locate(after)?;
        }
        file += 1;
    }
}

/// Read and check the trailer of a part of `n` blocks starting at `start`.
fn part_of(
    drive: &mut dyn TapeDrive,
    buf: &mut [u8],
    kind: Kind,
    start: u64,
    n: u64,
    header: bool,
    bs: usize,
) -> Result<(Kind, PartTrailer), String> {
    let d = data_blocks_of(n, header, bs)
        .ok_or_else(|| format!("{n} blocks are no part of data and trailer blocks"))?;
    drive
        .locate(start + u64::from(header) + d)
        .map_err(|e| e.to_string())?;
    match drive.read_block(buf).map_err(|e| e.to_string())? {
        ReadOutcome::Block => {}
        _ => return Err("no part trailer after the data".into()),
    }
    let (t, _) = PartTrailer::decode_fixed(buf)?;
    if t.data_blocks != d || t.block_size != bs {
        return Err(format!(
            "the part trailer says {} blocks of {} bytes, the file holds {d} blocks of {bs}",
            t.data_blocks, t.block_size
        ));
    }
    let room = d * bs as u64;
    if t.bytes > room || t.bytes + bs as u64 <= room && d > 0 {
        return Err(format!(
            "the part trailer says {} bytes in {d} blocks",
            t.bytes
        ));
    }
    match &kind {
        Kind::Continuation(h) if h.part != t.part || h.offset != t.offset || h.id != t.id => {
            return Err(format!(
                "the part header says part {} at offset {} of {:?}, the trailer part {} at offset {} of {:?}",
                h.part, h.offset, h.id, t.part, t.offset, t.id
            ));
        }
        Kind::Stream(_) | Kind::Copy(_) if t.part != 1 || t.offset != 0 => {
            return Err(format!(
                "a first part whose trailer says part {} at offset {}",
                t.part, t.offset
            ));
        }
        Kind::Copy(h) if h.id != t.id => {
            return Err(format!(
                "a catalog copy {:?} whose trailer names {:?}",
                h.id, t.id
            ));
        }
        _ => {}
    }
    Ok((kind, t))
}

/// The parts of one tape file, joined: `Err` says what is missing.
fn join(id: &str, parts: &[&Found], bs: usize) -> Result<TapeFile, String> {
    let mut sorted: Vec<&Found> = parts.to_vec();
    sorted.sort_by_key(|f| f.trailer.part);
    let mut out = Vec::new();
    let mut offset = 0u64;
    for (i, f) in sorted.iter().enumerate() {
        let t = &f.trailer;
        let last = i + 1 == sorted.len();
        if t.part as usize != i + 1 || t.offset != offset {
            return Err(format!(
                "part {} is missing (scan every tape of the set together: --all)",
                i + 1
            ));
        }
        if t.continued == last {
            return Err(if last {
                format!(
                    "part {} is missing (scan every tape of the set together: --all)",
                    i + 2
                )
            } else {
                format!("part {} says it is the last, more parts follow", t.part)
            });
        }
        out.push(Part {
            part: t.part,
            tape: f.tape.clone(),
            tape_uuid: f.tape_uuid,
            file_number: f.file_number,
            first_block: f.first_block,
            data_blocks: t.data_blocks,
            offset: t.offset,
            bytes: t.bytes,
            sha256: t.sha256,
        });
        offset += t.bytes;
    }
    let Some(last) = sorted.last() else {
        return Err(format!("no part of {id} was found"));
    };
    Ok(TapeFile {
        id: id.to_string(),
        block_size: bs,
        parts: out,
        bytes: offset,
        sha256: last.trailer.stream_sha256,
    })
}

/// Whether a reading error says the passphrase was missing or wrong.
fn passphrase_problem(why: &str) -> bool {
    why.contains("passphrase")
}

/// The passphrase, asked once.
struct Pass<'a> {
    source: Box<dyn FnMut() -> Result<Passphrase, String> + 'a>,
    got: Option<Result<Passphrase, String>>,
}

impl Pass<'_> {
    fn get(&mut self) -> Result<Passphrase, String> {
        if self.got.is_none() {
            self.got = Some((self.source)());
        }
        match &self.got {
            Some(r) => r.clone(),
            None => Err("no passphrase".into()),
        }
    }
}

/// Scan the tapes `which` names and rebuild the catalog `cat` (at `catalog_path`)
/// from them.
pub fn scan(
    drive: &mut dyn TapeDrive,
    mut changer: Option<&mut (dyn Changer + Send + 'static)>,
    which: Which,
    cat: &mut Catalog,
    catalog_path: &Path,
    opts: ScanOptions<'_>,
) -> Result<ScanReport, ScanError> {
    let mut report = ScanReport::default();
    let mut found: Vec<Found> = Vec::new();
    let bs = opts.block_size;
    let dn = opts.drive_number;
    // Tapes read, with their barcode, slot and whether they are full.
    let mut tapes: Vec<(TapeLabel, Option<String>, Option<u32>, bool)> = Vec::new();
    let mut read_one = |drive: &mut dyn TapeDrive,
                        barcode: Option<String>,
                        slot: Option<u32>,
                        report: &mut ScanReport,
                        found: &mut Vec<Found>|
     -> Result<(), ScanError> {
        let where_ = match (&barcode, slot) {
            (Some(b), Some(s)) => format!("slot {s} ({b})"),
            (Some(b), None) => b.clone(),
            _ => "the tape in the drive".into(),
        };
        super::open::ready(drive, bs)?;
        let label = match TapeLabel::read(drive) {
            Ok(l) => l,
            Err(LabelError::Tape(e)) => return Err(e.into()),
            Err(e) => {
                if !matches!(e, LabelError::NotLabelled { .. }) {
                    report.unreadable += 1;
                }
                report.skipped.push(format!("{where_}: {e}"));
                return Ok(());
            }
        };
        if label.pool != opts.pool {
            report.skipped.push(format!(
                "{where_}: tape {} belongs to pool {:?}, this destination's is {:?}",
                label.name, label.pool, opts.pool
            ));
            return Ok(());
        }
        let before = found.len();
        let files = walk(drive, &label, report, found)?;
        drive.eod()?;
        let full = drive.status()?.eot || found[before..].iter().any(|f| f.trailer.continued);
        report
            .tapes
            .push((label.name.clone(), label.uuid_string(), files));
        tapes.push((label, barcode, slot, full));
        Ok(())
    };
    match (which, changer.as_deref_mut()) {
        (Which::Loaded, ch) => {
            let (barcode, slot) = match ch {
                Some(c) => c
                    .inventory()?
                    .drives
                    .iter()
                    .find(|d| d.number == dn && d.full)
                    .map_or((None, None), |d| (d.barcode.clone(), d.from_slot)),
                None => (None, None),
            };
            read_one(drive, barcode, slot, &mut report, &mut found)?;
        }
        (Which::Slot(_) | Which::All, None) => {
            return Err(ScanError::Refused(
                "--slot and --all need a changer (changer = /dev/sgN)".into(),
            ))
        }
        (Which::Slot(n), Some(c)) => {
            let inv = c.inventory()?;
            let drv = inv.drives.iter().find(|d| d.number == dn);
            let barcode = if drv.is_some_and(|d| d.full && d.from_slot == Some(n)) {
                drv.and_then(|d| d.barcode.clone())
            } else {
                let Some(s) = inv.slots.iter().find(|s| s.number == n) else {
                    return Err(ScanError::Refused(format!("{} has no slot {n}", c.name())));
                };
                let barcode = s.barcode.clone();
                release(drive, c, dn)?;
                c.load(n, dn)?;
                super::drive::take_tape(&mut *drive)?;
                barcode
            };
            read_one(drive, barcode, Some(n), &mut report, &mut found)?;
        }
        (Which::All, Some(c)) => {
            release(drive, c, dn)?;
            let inv = c.inventory()?;
            for s in inv.slots.iter().filter(|s| s.full && !s.import_export) {
                c.load(s.number, dn)?;
                super::drive::take_tape(&mut *drive)?;
                read_one(
                    drive,
                    s.barcode.clone(),
                    Some(s.number),
                    &mut report,
                    &mut found,
                )?;
                release(drive, c, dn)?;
            }
        }
    }

    let mut pass = Pass {
        source: opts.passphrase,
        got: None,
    };
    let mut mount = Mount {
        changer,
        drive_number: dn,
        block_size: bs,
    };

    // Group the parts by tape file id.
    let mut by_id: BTreeMap<String, Vec<&Found>> = BTreeMap::new();
    for f in &found {
        by_id.entry(f.trailer.id.clone()).or_default().push(f);
    }

    // The catalog copies, newest first.
    let mut copies: Vec<(&CopyHeader, &Found)> = found
        .iter()
        .filter_map(|f| match &f.kind {
            Kind::Copy(h) => Some((h, f)),
            _ => None,
        })
        .collect();
    copies.sort_by_key(|(h, f)| {
        std::cmp::Reverse((h.written, f.tape_uuid_string.clone(), f.file_number))
    });
    for (h, _) in &copies {
        report.copies.push((h.id.clone(), h.written));
    }
    let dir = catalog_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut copy_written: Option<i64> = None;
    for (h, first) in &copies {
        let at = format!("tape {} file {}", first.tape, first.file_number);
        let file = match join(&h.id, &by_id[&h.id], bs) {
            Ok(f) => f,
            Err(why) => {
                report
                    .problems
                    .push(format!("{at}: catalog copy {}: {why}", h.id));
                continue;
            }
        };
        let tmp = tempfile::Builder::new()
            .prefix(".catalog.scan.")
            .tempdir_in(dir)
            .map_err(|source| ScanError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        let restored = tmp.path().join("catalog.sqlite");
        let result = (|| -> Result<Option<KeyFile>, String> {
            let mut r = TapeFileReader::new(&mut *drive, &mut mount, file)
                .map_err(|e| format!("catalog copy {}: {e}", h.id))?;
            let mut unlock = |kf: &KeyFile| -> Result<ArchiveKeys, String> {
                let p = pass.get()?;
                kf.unlock(&p).map_err(|e| e.to_string())
            };
            let (_, key_file) =
                restore_catalog_copy(&mut r, &restored, &mut unlock).map_err(|e| match e {
                    // Where on tape, not which copy: say which copy.
                    CatalogCopyError::TapeFile(e) => format!("catalog copy {}: {e}", h.id),
                    e => e.to_string(),
                })?;
            Ok(key_file)
        })();
        let key_file = match result {
            Ok(k) => k,
            Err(why) if passphrase_problem(&why) => {
                return Err(ScanError::Passphrase(format!("{at}: {why}")))
            }
            Err(why) => {
                report.problems.push(format!(
                    "{at}: {why}; {}",
                    "not imported (an older copy, else the streams, read instead)"
                ));
                continue;
            }
        };
        // A copy of a newer schema is refused here, like any catalog.
        let copy = match Catalog::open(&restored) {
            Ok(c) => c,
            Err(e) => {
                report.problems.push(format!(
                    "{at}: catalog copy {}: {e}; not imported (an older copy, else the streams, read instead)",
                    h.id
                ));
                continue;
            }
        };
        import(cat, &copy, opts.dest, &mut report)?;
        report.key_file = key_file;
        copy_written = Some(h.written);
        report.imported = Some(h.id.clone());
        break;
    }

    // The tapes read.
    for (label, barcode, slot, full) in &tapes {
        let uuid = label.uuid_string();
        match cat.tape(&uuid)? {
            Some(t) => {
                if slot.is_some() && t.slot != *slot {
                    cat.set_tape_slot(&uuid, *slot)?;
                }
                if *full && !t.full && !cat.tape_recycle(&uuid)? {
                    cat.set_tape_full(&uuid, true)?;
                }
            }
            None => {
                cat.add_tape(&TapeRecord {
                    uuid,
                    name: label.name.clone(),
                    barcode: barcode.clone(),
                    pool: label.pool.clone(),
                    block_size: label.block_size as u64,
                    full: *full,
                    labelled: label.written,
                    last_written: None,
                    slot: *slot,
                })?;
                report.tapes_added += 1;
            }
        }
    }

    // The streams: known ones get their missing parts recorded, the others are read.
    let dest_id = cat.destination(TAPE_KIND, opts.dest)?;
    let mut summaries: Vec<(StreamSummary, TapeFile)> = Vec::new();
    for (id, parts) in &by_id {
        if parts.iter().any(|f| matches!(f.kind, Kind::Copy(_))) {
            continue;
        }
        let Some(first) = parts.iter().find(|f| matches!(f.kind, Kind::Stream(_))) else {
            let known = cat.stream_tape_files(opts.dest, id)?;
            if let Some(k) = known.first() {
                // A continuation whose session the catalog knows.
                for f in parts {
                    let rec = record_of(
                        f,
                        opts.dest,
                        &k.volume,
                        &k.session,
                        k.stream_bytes,
                        k.stream_sha256,
                    );
                    if cat.insert_tape_file(&rec)? {
                        report.tape_files_added += 1;
                    }
                }
            } else {
                report.problems.push(format!(
                    "stream {id} (tape {} file {}): its first part was not found (scan every tape of the set together: --all)",
                    parts[0].tape, parts[0].file_number
                ));
            }
            continue;
        };
        let at = format!(
            "stream {id} (tape {} file {})",
            first.tape, first.file_number
        );
        let file = match join(id, parts, bs) {
            Ok(f) => f,
            Err(why) => {
                report.problems.push(format!("{at}: {why}"));
                continue;
            }
        };
        let known = cat.stream_tape_files(opts.dest, id)?;
        if let Some(k) = known.first() {
            if k.stream_bytes != file.bytes || k.stream_sha256 != file.sha256 {
                report.problems.push(format!(
                    "{at}: the catalog records this stream with another length or SHA-256; left as recorded"
                ));
                continue;
            }
            let (volume, session) = (k.volume.clone(), k.session.clone());
            for f in parts {
                let rec = record_of(f, opts.dest, &volume, &session, file.bytes, file.sha256);
                if cat.insert_tape_file(&rec)? {
                    report.tape_files_added += 1;
                }
            }
            continue;
        }
        // Read the whole stream: its header and info, everything checked.
        let result = (|| -> Result<StreamSummary, String> {
            let r = TapeFileReader::new(&mut *drive, &mut mount, file.clone())
                .map_err(|e| e.to_string())?;
            let pass_ref = &mut pass;
            let mut reader = ChainReader::new(None)
                .starting_incremental()
                .with_unlock(Box::new(move || pass_ref.get()));
            let n = reader.read(r).map_err(|e| e.to_string())?;
            if n != 1 {
                return Err(format!("it holds {n} streams, not one"));
            }
            reader
                .streams()
                .first()
                .cloned()
                .ok_or_else(|| "it holds no stream".to_string())
        })();
        match result {
            Ok(s) => summaries.push((s, file)),
            // Without the right passphrase every encrypted stream is unreadable: stop,
            // rather than record a set of tapes as holding nothing.
            Err(why) if passphrase_problem(&why) => {
                return Err(ScanError::Passphrase(format!("{at}: {why}")))
            }
            Err(why) => report
                .problems
                .push(format!("{at}: unreadable, not recorded: {why}")),
        }
    }

    // Record the sessions read, per volume in chain order.
    let mut by_volume: BTreeMap<String, Vec<(StreamSummary, TapeFile)>> = BTreeMap::new();
    for (s, f) in summaries {
        by_volume
            .entry(s.info.volume.clone())
            .or_default()
            .push((s, f));
    }
    let parts_of: HashMap<&str, &Vec<&Found>> =
        by_id.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut newest_key: Option<(i64, KeyFile)> = None;
    for (volume, list) in by_volume {
        let chain = cat.chain(dest_id, &volume)?;
        let at = |s: &StreamSummary, f: &TapeFile| {
            format!(
                "volume {volume} session {} (stream {})",
                s.info.session, f.id
            )
        };
        // Streams of sessions the chain holds get their tape files; the others are
        // candidates to extend it.
        let mut linked: Vec<(&StreamSummary, &TapeFile)> = Vec::new();
        let mut candidates: Vec<(&StreamSummary, &TapeFile)> = Vec::new();
        // In the order they were written as far as the tapes tell (the tapes in the
        // order scanned, then by file number): of two streams of the same session
        // (a send run again after one killed before the chain recorded it) the one
        // written last is taken.
        let rank = |f: &TapeFile| {
            let p = &f.parts[0];
            (
                tapes.iter().position(|t| t.0.uuid == p.tape_uuid),
                p.file_number,
            )
        };
        let mut list: Vec<&(StreamSummary, TapeFile)> = list.iter().collect();
        list.sort_by(|a, b| (&a.0.info.session, rank(&a.1)).cmp(&(&b.0.info.session, rank(&b.1))));
        for (s, f) in list {
            match chain.iter().find(|c| c.session == s.info.session) {
                Some(c) if c.manifest_sha256 == s.info.manifest_sha256 => linked.push((s, f)),
                Some(_) => report.problems.push(format!(
                    "{}: the catalog holds this session with another manifest; not recorded",
                    at(s, f)
                )),
                // A session of the copy's own second it does not know is of a later
                // run: a copy is written after every session of its run.
                None => match copy_written {
                    Some(w) if s.info.time < w => report.problems.push(format!(
                        "{}: older than the catalog copy imported, which does not know it (a session pruned, or a send that did not finish); not recorded",
                        at(s, f)
                    )),
                    _ => candidates.push((s, f)),
                },
            }
        }
        let mut end = chain
            .last()
            .map(|c| (c.session.as_str(), c.manifest_sha256));
        let summaries: Vec<&StreamSummary> = candidates.iter().map(|c| c.0).collect();
        let mut path = chain_order(end, &summaries);
        // Nothing builds on the chain's end, but a full stream newer than it was read:
        // the chain was pruned and a new one begun after the copy imported was written.
        // The newer chain is the volume's.
        if let (true, Some((end_session, _))) = (path.is_empty(), end) {
            let newer = chain_order(None, &summaries);
            if newer
                .first()
                .is_some_and(|&i| summaries[i].info.session.as_str() > end_session)
            {
                report.problems.push(format!(
                    "volume {volume}: a full stream newer than the end of its chain in the \
                     catalog ({end_session}) begins a new chain (the old one was pruned after \
                     the copy imported was written): the old chain ({} session(s)) is forgotten",
                    chain.len()
                ));
                cat.forget_tape_chain(opts.dest, &volume)?;
                linked.clear();
                end = None;
                path = newer;
            }
        }
        for &i in &path {
            let (s, f) = candidates[i];
            cat.record_session(dest_id, &s.info, f.bytes)?;
            report
                .sessions_added
                .push((volume.clone(), s.info.session.clone()));
            linked.push((s, f));
        }
        let new_end = path
            .last()
            .map(|&i| candidates[i].0.info.session.as_str())
            .or(end.map(|e| e.0));
        for (i, (s, f)) in candidates.iter().enumerate() {
            let twin = path
                .iter()
                .map(|&j| candidates[j])
                .find(|c| c.0.info.session == s.info.session);
            if let (false, Some((_, t))) = (path.contains(&i), twin) {
                report.problems.push(format!(
                    "{}: stream {} of the same session, written after it, is on the chain \
                     (a send run again after one that did not finish); not recorded",
                    at(s, f),
                    t.id
                ));
            } else if !path.contains(&i) {
                report.problems.push(format!(
                    "{}: builds on {}, not on the chain rebuilt, which ends at {}; not recorded (a tape of the set missing, a chain pruned, or a send that did not finish)",
                    at(s, f),
                    s.header.base.as_deref().unwrap_or("nothing (a full stream)"),
                    new_end.unwrap_or("nothing")
                ));
            }
        }
        for (s, file) in linked {
            let info = &s.info;
            let Some(parts) = parts_of.get(file.id.as_str()) else {
                continue;
            };
            let key = parts.iter().find_map(|f| match &f.kind {
                Kind::Stream(Some(k)) => Some(k),
                _ => None,
            });
            if let Some(k) = key {
                if newest_key.as_ref().is_none_or(|(t, _)| info.time >= *t) {
                    newest_key = Some((info.time, k.clone()));
                }
            }
            for f in parts.iter() {
                let rec = record_of(
                    f,
                    opts.dest,
                    &volume,
                    &info.session,
                    file.bytes,
                    file.sha256,
                );
                if cat.insert_tape_file(&rec)? {
                    report.tape_files_added += 1;
                }
            }
        }
    }

    if report.key_file.is_none() {
        report.key_file = newest_key.map(|(_, k)| k);
    }

    // A tape no copy told about was last written when its newest session was taken.
    for (label, ..) in &tapes {
        let uuid = label.uuid_string();
        if let Some(t) = cat.tape(&uuid)? {
            if t.last_written.is_none() {
                let newest = cat
                    .tape_files(&uuid)?
                    .iter()
                    .filter_map(|f| {
                        cat.chain(dest_id, &f.volume)
                            .ok()
                            .and_then(|c| c.iter().find(|s| s.session == f.session).map(|s| s.time))
                    })
                    .max();
                if newest.is_some() {
                    cat.set_tape_last_written(&uuid, newest)?;
                }
            }
        }
    }
    Ok(report)
}

/// The order in which `candidates` (streams of one volume) extend a chain ending at
/// `end` (its last session and manifest SHA-256; `None`: an empty chain): the indices
/// of the longest run of streams each building on the one before, from the chain's
/// end (an empty chain starts at the newest full stream: an older one began a chain
/// since pruned). Among runs as long, the newest session is taken, and of equals the
/// last in `candidates`.
fn chain_order(end: Option<(&str, [u8; 32])>, candidates: &[&StreamSummary]) -> Vec<usize> {
    let links = |parent: Option<(&str, [u8; 32])>, s: &StreamSummary| match parent {
        None => s.header.base.is_none(),
        Some((session, manifest)) => {
            s.header.base.as_deref() == Some(session)
                && s.header.base_manifest_sha256 == Some(manifest)
        }
    };
    // Children by base session; a stream builds only on an older session, so the
    // depths are known from the newest stream back.
    let mut order: Vec<usize> = (0..candidates.len()).collect();
    order.sort_by(|&a, &b| candidates[a].info.session.cmp(&candidates[b].info.session));
    let mut by_base: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &order {
        if let Some(b) = candidates[i].header.base.as_deref() {
            by_base.entry(b).or_default().push(i);
        }
    }
    let node = |i: usize| {
        (
            candidates[i].info.session.as_str(),
            candidates[i].info.manifest_sha256,
        )
    };
    let mut depth = vec![0usize; candidates.len()];
    for &i in order.iter().rev() {
        let (session, _) = node(i);
        let best = by_base
            .get(session)
            .into_iter()
            .flatten()
            .filter(|&&j| links(Some(node(i)), candidates[j]))
            .map(|&j| depth[j])
            .max()
            .unwrap_or(0);
        depth[i] = best + 1;
    }
    // The best next step from `parent`: deepest, then newest.
    let pick = |parent: Option<(&str, [u8; 32])>, newest_root: bool| -> Option<usize> {
        order
            .iter()
            .copied()
            .filter(|&j| links(parent, candidates[j]))
            .max_by(|&a, &b| {
                let key = |j: usize| if newest_root { 0 } else { depth[j] };
                key(a)
                    .cmp(&key(b))
                    .then_with(|| candidates[a].info.session.cmp(&candidates[b].info.session))
            })
    };
    let mut path = Vec::new();
    let mut next = pick(end, end.is_none());
    while let Some(i) = next {
        path.push(i);
        next = pick(Some(node(i)), false);
    }
    path
}

fn record_of(
    f: &Found,
    dest: &str,
    volume: &str,
    session: &str,
    stream_bytes: u64,
    stream_sha256: [u8; 32],
) -> TapeFileRecord {
    TapeFileRecord {
        tape: f.tape_uuid_string.clone(),
        file_number: f.file_number,
        dest: dest.to_string(),
        volume: volume.to_string(),
        session: session.to_string(),
        part: f.trailer.part - 1,
        first_block: f.first_block,
        blocks: f.trailer.data_blocks,
        bytes: f.trailer.bytes,
        sha256: f.trailer.sha256,
        stream_id: f.trailer.id.clone(),
        stream_bytes,
        stream_sha256,
    }
}

/// Import from the restored copy `copy`: its tapes, the tape files of `dest`, and
/// `dest`'s chains (sessions the catalog's chains do not hold yet, where they follow
/// on).
fn import(
    cat: &mut Catalog,
    copy: &Catalog,
    dest: &str,
    report: &mut ScanReport,
) -> Result<(), ScanError> {
    for t in copy.tapes()? {
        let by_name = cat.tape_by_name(&t.name)?;
        match (cat.tape(&t.uuid)?, by_name) {
            (Some(_), _) => {}
            (None, Some(other)) => report.problems.push(format!(
                "catalog copy: tape {} is labelled {} in it, {} in the catalog; kept as the catalog has it",
                t.name, t.uuid, other.uuid
            )),
            (None, None) => {
                cat.add_tape(&t)?;
                // A tape `prune` emptied stays to be reused, though it is at its end.
                if copy.tape_recycle(&t.uuid)? {
                    cat.set_tape_recycle(&t.uuid, true)?;
                }
                report.tapes_added += 1;
            }
        }
    }
    for f in copy.dest_tape_files(dest)? {
        if cat.tape(&f.tape)?.is_some() && cat.insert_tape_file(&f)? {
            report.tape_files_added += 1;
        }
    }
    let from = copy.destination(TAPE_KIND, dest)?;
    let to = cat.destination(TAPE_KIND, dest)?;
    for volume in copy.volumes(from)? {
        let theirs = copy.chain(from, &volume)?;
        let ours = cat.chain(to, &volume)?;
        let common = ours.len().min(theirs.len());
        if ours[..common] != theirs[..common] {
            report.problems.push(format!(
                "catalog copy: the chain of volume {volume} differs from the catalog's; kept as the catalog has it"
            ));
            continue;
        }
        for s in &theirs[common..] {
            cat.record_sent(to, &volume, s)?;
            report.sessions_from_copy += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_blocks_follow_from_a_files_length() {
        for bs in [512usize, 4096, 65536] {
            for d in [0u64, 1, 2, 100, 113, 127, 128, 129, 5000, 1 << 20] {
                for header in [false, true] {
                    let n = u64::from(header) + d + trailer_blocks(d, bs);
                    assert_eq!(data_blocks_of(n, header, bs), Some(d), "{bs} {d} {header}");
                }
            }
        }
        // 432 + 4 d bytes of trailer in blocks of 512: d = 20 takes 1 block, 21 takes
        // 2, so no part is 22 blocks long... but 23 is (21 + 2).
        assert_eq!(trailer_blocks(20, 512), 1);
        assert_eq!(trailer_blocks(21, 512), 2);
        assert_eq!(data_blocks_of(21, false, 512), Some(20));
        assert_eq!(data_blocks_of(22, false, 512), None);
        assert_eq!(data_blocks_of(23, false, 512), Some(21));
        assert_eq!(data_blocks_of(0, false, 512), None);
        assert_eq!(data_blocks_of(0, true, 512), None);
        assert_eq!(data_blocks_of(1, true, 512), None);
    }

    fn summary(session: &str, base: Option<(&str, u8)>, manifest: u8) -> StreamSummary {
        use sparsebak_format::chunk::Codec;
        use sparsebak_format::info::SessionInfo;
        use sparsebak_format::stream::StreamHeader;
        let info = SessionInfo {
            volume: "v".into(),
            session: session.into(),
            previous: base.map(|b| b.0.to_string()),
            time: 1,
            volsize: 100,
            chunksize: 65536,
            compression: Codec::Zstd,
            changed: 1,
            chunks: 1,
            bytes_read: 1,
            bytes_stored: 1,
            manifest_sha256: [manifest; 32],
            volume_id: None,
        };
        let mut header = StreamHeader::for_session(&info, base.map(|b| [b.1; 32]));
        header.base = base.map(|b| b.0.to_string());
        StreamSummary {
            header,
            info,
            data_chunks: 0,
            zero_lines: 0,
            bytes: 0,
        }
    }

    fn sessions(c: &[StreamSummary], path: &[usize]) -> Vec<String> {
        path.iter().map(|&i| c[i].info.session.clone()).collect()
    }

    #[test]
    fn the_longest_newest_run_of_streams_extends_a_chain() {
        let c = [
            // A chain since pruned: a full stream and one on it.
            summary("20260101-000001", None, 1),
            summary("20260101-000002", Some(("20260101-000001", 1)), 2),
            // The chain of now, with a stream of a send that did not finish (older,
            // building on the same base as the one recorded after it).
            summary("20260102-000001", None, 3),
            summary("20260102-000003", Some(("20260102-000001", 3)), 5),
            summary("20260102-000002", Some(("20260102-000001", 3)), 4),
            summary("20260102-000004", Some(("20260102-000003", 5)), 6),
            // Names the right base but another manifest: not on it.
            summary("20260102-000005", Some(("20260102-000004", 9)), 7),
        ];
        let refs: Vec<&StreamSummary> = c.iter().collect();
        assert_eq!(
            sessions(&c, &chain_order(None, &refs)),
            ["20260102-000001", "20260102-000003", "20260102-000004"]
        );
        // From a chain ending at the full stream of now (a catalog copy's).
        let refs2: Vec<&StreamSummary> = c[3..].iter().collect();
        let path: Vec<usize> = chain_order(Some(("20260102-000001", [3; 32])), &refs2)
            .into_iter()
            .map(|i| i + 3)
            .collect();
        assert_eq!(sessions(&c, &path), ["20260102-000003", "20260102-000004"]);
        // Runs as long: the newest.
        let refs3: Vec<&StreamSummary> = [&c[3], &c[4]].into_iter().collect();
        let path = chain_order(Some(("20260102-000001", [3; 32])), &refs3);
        assert_eq!(path, [0]);
        // Nothing follows a chain whose end no stream builds on.
        assert_eq!(
            chain_order(Some(("20260103-000000", [0; 32])), &refs),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_stream_is_known_by_its_first_tar_header() {
        let mut block = vec![0u8; 4096];
        let mut h = tar::Header::new_ustar();
        h.set_path(HEADER_MEMBER).unwrap();
        h.set_size(10);
        h.set_cksum();
        block[..512].copy_from_slice(h.as_bytes());
        assert!(starts_stream(&block));
        block[100] ^= 1;
        assert!(!starts_stream(&block), "a bad checksum");
        let mut h = tar::Header::new_ustar();
        h.set_path("other/file").unwrap();
        h.set_cksum();
        block[..512].copy_from_slice(h.as_bytes());
        assert!(!starts_stream(&block));
        assert!(!starts_stream(&[0u8; 100]));
    }
}
