//! Tape files on the virtual library: written through the buffer at the end of data,
//! spanning tapes at the early warning, read back by block position byte for byte;
//! damaged blocks named, other block sizes and pools refused, buffer statistics.

use std::collections::VecDeque;
use std::io::Read;
use std::path::Path;

use sparsebak::tape::changer::Changer;
use sparsebak::tape::drive::{DriveStatus, ReadOutcome, Result as TapeResult, TapeDrive};
use sparsebak::tape::label::TapeLabel;
use sparsebak::tape::reader::{tape_file_error, ChangerMount, LoadedTape, TapeFileReader};
use sparsebak::tape::virtual_drive::VirtualDrive;
use sparsebak::tape::virtual_library::{barcode_for, VirtualLibrary, VirtualLibraryOptions};
use sparsebak::tape::writer::{
    write_tape_file_from, ChangerNextTape, NoNextTape, TapeFile, TapeFileError, TapeFileOptions,
};

const BS: usize = 4096;
const POOL: &str = "weekly";

/// A library of `slots` cartridges, each labelled for `POOL` with blocks of `bs`;
/// slot 1's cartridge is left in the drive.
fn library(dir: &Path, slots: u32, capacity: u64, speed: Option<u64>, bs: usize) -> VirtualLibrary {
    let lib = VirtualLibrary::open(
        dir,
        &VirtualLibraryOptions {
            slots,
            capacity,
            speed,
        },
    )
    .unwrap();
    let mut ch = lib.changer();
    let mut d = lib.drive();
    d.set_block_size(bs).unwrap();
    for slot in (1..=slots).rev() {
        ch.load(slot, 0).unwrap();
        TapeLabel::new(&barcode_for(slot), POOL, bs)
            .unwrap()
            .write(&mut d)
            .unwrap();
        if slot > 1 {
            ch.unload(0, None).unwrap();
        }
    }
    lib
}

fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn opts(id: &str) -> TapeFileOptions {
    TapeFileOptions {
        block_size: BS,
        pool: POOL.into(),
        id: id.into(),
        buffer: 16 * BS,
    }
}

fn read_back(drive: &mut dyn TapeDrive, file: &TapeFile) -> std::io::Result<Vec<u8>> {
    let mut mount = LoadedTape;
    let mut r = TapeFileReader::new(drive, &mut mount, file.clone()).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

/// A drive that counts how it was positioned.
struct Counting {
    inner: VirtualDrive,
    fsf: u32,
    bsf: u32,
    locates: Vec<u64>,
}

impl TapeDrive for Counting {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn set_block_size(&mut self, size: usize) -> TapeResult<()> {
        self.inner.set_block_size(size)
    }
    fn write_block(&mut self, block: &[u8]) -> TapeResult<bool> {
        self.inner.write_block(block)
    }
    fn write_filemark(&mut self, n: u32) -> TapeResult<()> {
        self.inner.write_filemark(n)
    }
    fn read_block(&mut self, buf: &mut [u8]) -> TapeResult<ReadOutcome> {
        self.inner.read_block(buf)
    }
    fn rewind(&mut self) -> TapeResult<()> {
        self.inner.rewind()
    }
    fn fsf(&mut self, n: u32) -> TapeResult<()> {
        self.fsf += n;
        self.inner.fsf(n)
    }
    fn bsf(&mut self, n: u32) -> TapeResult<()> {
        self.bsf += n;
        self.inner.bsf(n)
    }
    fn eod(&mut self) -> TapeResult<()> {
        self.inner.eod()
    }
    fn locate(&mut self, block: u64) -> TapeResult<()> {
        self.locates.push(block);
        self.inner.locate(block)
    }
    fn position(&mut self) -> TapeResult<u64> {
        self.inner.position()
    }
    fn status(&mut self) -> TapeResult<DriveStatus> {
        self.inner.status()
    }
}

#[test]
fn a_stream_spans_three_tapes_and_reads_back_byte_for_byte() {
    let t = tempfile::tempdir().unwrap();
    // 64 blocks of room per tape, the early warning about 3 blocks before the end.
    let lib = library(t.path(), 4, 64 * BS as u64, None, BS);
    let mut drive = lib.drive();
    let stream = data(150 * BS + 1234, 1);
    let mut next = ChangerNextTape {
        changer: lib.changer(),
        drive_number: 0,
        barcodes: VecDeque::from([barcode_for(2), barcode_for(3), barcode_for(4)]),
    };
    let (file, stats) =
        write_tape_file_from(&mut drive, &mut next, &opts("vol/S_1"), &mut &stream[..]).unwrap();
    let tapes: Vec<_> = file.parts.iter().map(|p| p.tape.as_str()).collect();
    assert_eq!(tapes, ["VT0001L8", "VT0002L8", "VT0003L8"]);
    assert_eq!(
        next.barcodes,
        [barcode_for(4)],
        "the fourth tape was not needed"
    );
    assert_eq!(file.bytes, stream.len() as u64);
    let sha: [u8; 32] =
        sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&stream)).into();
    assert_eq!(file.sha256, sha);
    // Each part is tape file 1, right after the label and its filemark.
    for p in &file.parts {
        assert_eq!((p.file_number, p.first_block), (1, 2), "{p:?}");
    }
    // The early warning came after block 61 of each full tape (1 label block, then
    // 60 data blocks; the continuation's header takes one more).
    let blocks: Vec<_> = file.parts.iter().map(|p| p.data_blocks).collect();
    assert_eq!(blocks, [60, 59, 32]);
    assert_eq!(file.parts[1].offset, 60 * BS as u64);
    assert_eq!(file.parts[2].bytes, 31 * BS as u64 + 1234);
    assert_eq!(stats.blocks, 151);
    assert_eq!(stats.bytes, stream.len() as u64);

    // Read back from tape 3 in the drive: the changer loads tapes 1, 2, 3 in turn.
    let mut mount = ChangerMount {
        changer: lib.changer(),
        drive_number: 0,
    };
    let mut r = TapeFileReader::new(&mut drive, &mut mount, file.clone()).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(out == stream, "the stream read back differs");
    drop(r);
    assert_eq!(drive.barcode().unwrap(), "VT0003L8");

    // A catalog that names the parts in another order is refused, not joined.
    let mut swapped = file.clone();
    swapped.parts.swap(0, 1);
    let e = TapeFileReader::new(&mut drive, &mut mount, swapped)
        .err()
        .unwrap();
    assert!(e.to_string().contains("part 1 does not follow on"), "{e}");

    // The part on tape 2 read with the uuid of tape 3 names both tapes.
    let mut wrong = file.clone();
    wrong.parts[1].tape_uuid = wrong.parts[2].tape_uuid;
    let mut r = TapeFileReader::new(&mut drive, &mut mount, wrong).unwrap();
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    let e = tape_file_error(&e).unwrap().to_string();
    assert!(
        e.contains("the tape in the drive is VT0002L8")
            && e.contains("part 2 of vol/S_1 is on VT0002L8"),
        "{e}"
    );
}

#[test]
fn without_a_next_tape_a_full_tape_fails_clearly_and_the_part_stays_closed() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 64 * BS as u64, None, BS);
    let mut drive = lib.drive();
    let stream = data(100 * BS, 2);
    let e = write_tape_file_from(
        &mut drive,
        &mut NoNextTape,
        &opts("vol/S_2"),
        &mut &stream[..],
    )
    .unwrap_err();
    assert!(
        matches!(e, TapeFileError::NoNextTape { parts: 1, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string().starts_with(
            "tape VT0001L8 is full and no next tape can be loaded: the destination has no changer"
        ),
        "{e}"
    );
    // Part 1 was closed: 60 data blocks, one trailer block, a filemark.
    drive.eod().unwrap();
    assert_eq!(drive.position().unwrap(), 2 + 60 + 1 + 1);
    drive.locate(2 + 60 + 1).unwrap();
    assert_eq!(
        drive.read_block(&mut vec![0u8; BS]).unwrap(),
        ReadOutcome::Filemark
    );
}

#[test]
fn the_middle_of_three_files_is_read_by_locate() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, BS);
    let mut drive = Counting {
        inner: lib.drive(),
        fsf: 0,
        bsf: 0,
        locates: Vec::new(),
    };
    let streams: Vec<Vec<u8>> = (0..3)
        .map(|i| data(10 * BS + 100 * (i + 1), 10 + i as u64))
        .collect();
    let mut files = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let (f, _) = write_tape_file_from(
            &mut drive,
            &mut NoNextTape,
            &opts(&format!("vol/S_{i}")),
            &mut &s[..],
        )
        .unwrap();
        files.push(f);
    }
    let firsts: Vec<_> = files
        .iter()
        .map(|f| (f.parts[0].file_number, f.parts[0].first_block))
        .collect();
    // 11 data blocks, 1 trailer block and a filemark per file.
    assert_eq!(firsts, [(1, 2), (2, 15), (3, 28)]);
    drive.locates.clear();
    drive.rewind().unwrap();
    let out = read_back(&mut drive, &files[1]).unwrap();
    assert!(out == streams[1]);
    assert_eq!((drive.fsf, drive.bsf), (0, 0), "no spacing over filemarks");
    // To the part (its label checked first), to its trailer (the block digests),
    // back to its data.
    assert_eq!(drive.locates, [15, 15 + 11, 15]);
    // Reading the first file's catalog entry for the second is caught.
    let mut mixed = files[1].clone();
    mixed.parts[0].first_block = files[0].parts[0].first_block;
    let e = read_back(&mut drive, &mixed).unwrap_err();
    let e = tape_file_error(&e).unwrap().to_string();
    assert!(
        e.starts_with("tape VT0001L8, file 2: the part trailer says"),
        "{e}"
    );
}

/// Offset in a fresh cartridge file of the block at `position` of tape file 1 (after
/// the label block and its filemark).
fn block_offset(position: u64) -> u64 {
    let blocks_before = position - 1; // the filemark at position 1 is not a block
    64 + blocks_before * (8 + BS as u64) + 8 + 8
}

#[test]
fn a_damaged_block_is_named() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, BS);
    let mut drive = lib.drive();
    let stream = data(20 * BS, 3);
    let (file, _) = write_tape_file_from(
        &mut drive,
        &mut NoNextTape,
        &opts("vol/S_3"),
        &mut &stream[..],
    )
    .unwrap();
    assert!(read_back(&mut drive, &file).unwrap() == stream);
    // Flip bytes in the middle of data block 5 of the file (position 7).
    let path = t.path().join("cartridges/VT0001L8.vtape");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = block_offset(7) as usize + 1000;
    assert_eq!(bytes[at..at + 16], stream[5 * BS + 1000..5 * BS + 1016]);
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let e = read_back(&mut lib.drive(), &file).unwrap_err();
    let e = tape_file_error(&e).unwrap();
    assert!(
        matches!(
            e,
            TapeFileError::Damaged {
                file: 1,
                block: 5,
                position: 7,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("tape VT0001L8, file 1, block 5 (position 7): damaged"),
        "{e}"
    );

    // Damage in the trailer itself is caught too.
    for b in &mut bytes[at..at + 16] {
        *b ^= 0x5a;
    }
    let trailer = block_offset(2 + 20) as usize;
    bytes[trailer + 40] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let e = read_back(&mut lib.drive(), &file).unwrap_err();
    let e = tape_file_error(&e).unwrap().to_string();
    assert_eq!(
        e,
        "tape VT0001L8, file 1: the part trailer is damaged (checksum mismatch)"
    );
}

#[test]
fn a_tape_of_another_block_size_is_refused_naming_both_sizes() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, 2 * BS);
    let mut drive = lib.drive();
    // Writing blocks of 4096 to a tape labelled with 8192.
    let e = write_tape_file_from(
        &mut drive,
        &mut NoNextTape,
        &opts("vol/S_4"),
        &mut &[1u8; 10][..],
    )
    .unwrap_err();
    assert!(
        e.to_string().contains(
            "the tape was labelled with blocks of 8192 bytes but the drive is set to 4096 bytes"
        ),
        "{e}"
    );
    // A file written at 8192, read as 4096 blocks.
    let stream = data(5 * BS, 4);
    let o = TapeFileOptions {
        block_size: 2 * BS,
        ..opts("vol/S_4")
    };
    let (mut file, _) =
        write_tape_file_from(&mut drive, &mut NoNextTape, &o, &mut &stream[..]).unwrap();
    assert!(read_back(&mut drive, &file).unwrap() == stream);
    file.block_size = BS;
    file.parts[0].data_blocks = 5;
    let e = read_back(&mut drive, &file).unwrap_err();
    let e = tape_file_error(&e).unwrap().to_string();
    assert!(
        e.contains(
            "the tape was labelled with blocks of 8192 bytes but the drive is set to 4096 bytes"
        ),
        "{e}"
    );
}

#[test]
fn a_tape_of_another_pool_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, BS);
    let mut drive = lib.drive();
    let o = TapeFileOptions {
        pool: "daily".into(),
        ..opts("vol/S_5")
    };
    let e = write_tape_file_from(&mut drive, &mut NoNextTape, &o, &mut &[1u8; 10][..]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "tape VT0001L8 belongs to pool \"weekly\", this destination writes pool \"daily\""
    );
    drive.eod().unwrap();
    assert_eq!(drive.position().unwrap(), 2, "nothing was written");
}

#[test]
fn a_buffered_write_to_a_throttled_drive_stays_within_its_memory_and_speed() {
    // Whether the drive streams (its busy share, its stops) depends on scheduling: the
    // benchmark measures it (bench/run.sh, tape rows), not this test.
    let t = tempfile::tempdir().unwrap();
    // 4 MiB/s: 1 ms per block.
    let lib = library(t.path(), 1, 1 << 24, Some(1000 * BS as u64), BS);
    let mut drive = lib.drive();
    let stream = data(300 * BS, 5);
    let o = TapeFileOptions {
        buffer: 32 * BS,
        ..opts("vol/S_6")
    };
    let (file, stats) =
        write_tape_file_from(&mut drive, &mut NoNextTape, &o, &mut &stream[..]).unwrap();
    assert_eq!((stats.blocks, stats.bytes), (300, 300 * BS as u64));
    assert_eq!(stats.starts, stats.stops + 1, "{stats:?}");
    assert!(stats.max_blocks_in_use <= 32, "{stats:?}");
    let rate = stats.throughput();
    assert!(rate <= 1000.0 * BS as f64 * 1.05, "{rate}");
    assert!(read_back(&mut drive, &file).unwrap() == stream);
}

#[test]
fn a_drive_sees_a_newly_loaded_tape_at_its_beginning() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 2, 1 << 20, None, BS);
    let mut ch = lib.changer();
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    // Tape 1 at position 5; tape 2 holds only its label and filemark.
    d.eod().unwrap();
    for i in 0..3 {
        d.write_block(&data(BS, i)).unwrap();
    }
    assert_eq!(d.position().unwrap(), 5);
    ch.unload(0, None).unwrap();
    ch.load(2, 0).unwrap();
    let s = d.status().unwrap();
    assert!(s.bot && !s.eof, "{s}");
    assert_eq!((s.file_number, s.block_in_file), (Some(0), Some(0)));
    let mut buf = vec![0u8; BS];
    ch.unload(0, None).unwrap();
    ch.load(1, 0).unwrap();
    ch.unload(0, None).unwrap();
    ch.load(2, 0).unwrap();
    assert_eq!(d.read_block(&mut buf).unwrap(), ReadOutcome::Block);
    assert_eq!(&buf[0..8], b"SPBKLABL");
    ch.unload(0, None).unwrap();
    ch.load(1, 0).unwrap();
    d.fsf(1).unwrap();
    assert_eq!(
        d.position().unwrap(),
        2,
        "spaced from the beginning of tape 1"
    );
}

#[test]
fn gnu_tar_lists_a_tape_file_holding_a_tar_stream() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, BS);
    let mut drive = lib.drive();
    // A tar as a stream is: members, then the end-of-archive blocks.
    let mut b = tar::Builder::new(Vec::new());
    for (name, len) in [
        ("sparsebak-stream/header", 100usize),
        ("S_1/x000/x0000", 9000),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(len as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, &data(len, 7)[..]).unwrap();
    }
    let stream = b.into_inner().unwrap();
    let (file, _) = write_tape_file_from(
        &mut drive,
        &mut NoNextTape,
        &opts("vol/S_7"),
        &mut &stream[..],
    )
    .unwrap();
    // The whole tape file as `dd if=/dev/nst0` gives it: every block up to the filemark.
    drive.locate(file.parts[0].first_block).unwrap();
    let mut whole = Vec::new();
    let mut buf = vec![0u8; BS];
    while drive.read_block(&mut buf).unwrap() == ReadOutcome::Block {
        whole.extend_from_slice(&buf);
    }
    assert_eq!(whole.len(), (file.parts[0].data_blocks as usize + 1) * BS);
    let path = t.path().join("file1.tar");
    std::fs::write(&path, &whole).unwrap();
    let out = std::process::Command::new("tar")
        .arg("-tf")
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "sparsebak-stream/header\nS_1/x000/x0000\n"
    );
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

fn sha(b: &[u8]) -> Vec<u8> {
    <sha2::Sha256 as sha2::Digest>::digest(b).to_vec()
}

/// The header and trailer blocks on tape are what FORMAT.md ("Tape files") says.
#[test]
fn part_headers_and_trailers_are_as_documented() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 2, 64 * BS as u64, None, BS);
    let mut drive = lib.drive();
    let stream = data(70 * BS + 5, 8);
    let mut next = ChangerNextTape {
        changer: lib.changer(),
        drive_number: 0,
        barcodes: VecDeque::from([barcode_for(2)]),
    };
    let (file, _) =
        write_tape_file_from(&mut drive, &mut next, &opts("vol/S_8"), &mut &stream[..]).unwrap();
    assert_eq!(file.parts.len(), 2);
    let mut buf = vec![0u8; BS];
    // Part 2, on tape 2 (in the drive): the header block.
    let p2 = &file.parts[1];
    drive.locate(p2.first_block).unwrap();
    drive.read_block(&mut buf).unwrap();
    assert_eq!(&buf[0..8], b"SPBKPBEG");
    assert_eq!(
        (u32_at(&buf, 8), u32_at(&buf, 12), u32_at(&buf, 16)),
        (1, 2, BS as u32)
    );
    assert_eq!(u64_at(&buf, 24), 60 * BS as u64);
    assert_eq!(buf[32..48], file.parts[0].tape_uuid);
    assert_eq!((buf[48], &buf[49..56]), (7, &b"vol/S_8"[..]));
    assert_eq!(buf[304..336], sha(&buf[0..304])[..]);
    assert!(buf[336..].iter().all(|&b| b == 0));
    // Its data blocks, the last one padded with zeros.
    assert_eq!(p2.data_blocks, 11);
    for i in 0..11 {
        drive.read_block(&mut buf).unwrap();
        let from = (60 + i) * BS;
        let to = stream.len().min(from + BS);
        assert_eq!(buf[..to - from], stream[from..to]);
        assert!(buf[to - from..].iter().all(|&b| b == 0));
    }
    // The trailer of the last part.
    let mut digests = Vec::new();
    drive.locate(p2.first_block + 1).unwrap();
    for _ in 0..11 {
        drive.read_block(&mut buf).unwrap();
        digests.extend_from_slice(&sha(&buf)[..4]);
    }
    drive.read_block(&mut buf).unwrap();
    assert_eq!(&buf[0..8], b"SPBKPEND");
    assert_eq!(
        (u32_at(&buf, 8), u32_at(&buf, 12), u32_at(&buf, 16)),
        (1, 2, 0)
    );
    assert_eq!(u32_at(&buf, 20), BS as u32);
    assert_eq!(
        (u64_at(&buf, 24), u64_at(&buf, 32), u64_at(&buf, 40)),
        (60 * BS as u64, 10 * BS as u64 + 5, 11)
    );
    assert_eq!(buf[48..80], sha(&stream[60 * BS..])[..]);
    assert_eq!(buf[80..112], sha(&stream)[..]);
    assert_eq!(buf[112..144], sha(&digests)[..]);
    assert_eq!((buf[144], &buf[145..152]), (7, &b"vol/S_8"[..]));
    assert_eq!(buf[400..432], sha(&buf[0..400])[..]);
    assert_eq!(buf[432..432 + 44], digests[..]);
    assert!(buf[432 + 44..].iter().all(|&b| b == 0));
    assert_eq!(drive.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
    assert_eq!(drive.read_block(&mut buf).unwrap(), ReadOutcome::EndOfData);

    // Part 1's trailer, on tape 1: continued, no stream SHA-256.
    lib.changer().load_barcode("VT0001L8", 0).unwrap();
    drive.locate(2 + 60).unwrap();
    drive.read_block(&mut buf).unwrap();
    assert_eq!(&buf[0..8], b"SPBKPEND");
    assert_eq!((u32_at(&buf, 12), u32_at(&buf, 16)), (1, 1));
    assert_eq!(
        (u64_at(&buf, 24), u64_at(&buf, 32), u64_at(&buf, 40)),
        (0, 60 * BS as u64, 60)
    );
    assert_eq!(buf[48..80], sha(&stream[..60 * BS])[..]);
    assert!(buf[80..112].iter().all(|&b| b == 0));
    assert_eq!(drive.read_block(&mut buf).unwrap(), ReadOutcome::Filemark);
}

#[test]
fn an_empty_stream_is_a_tape_file_of_its_trailer() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 1, 1 << 20, None, BS);
    let mut drive = lib.drive();
    let (file, stats) =
        write_tape_file_from(&mut drive, &mut NoNextTape, &opts("vol/S_9"), &mut &[][..]).unwrap();
    assert_eq!(
        (file.bytes, file.parts[0].data_blocks, stats.blocks),
        (0, 0, 0)
    );
    drive.eod().unwrap();
    assert_eq!(drive.position().unwrap(), 2 + 1 + 1);
    assert!(read_back(&mut drive, &file).unwrap().is_empty());
}

#[test]
fn a_producer_pausing_longer_than_the_buffer_lasts_stops_the_drive_each_time() {
    let t = tempfile::tempdir().unwrap();
    // 200 blocks per second: 5 ms per block; 16 blocks of buffer last 80 ms.
    let lib = library(t.path(), 1, 1 << 24, Some(200 * BS as u64), BS);
    let mut drive = lib.drive();
    let stream = data(64 * BS, 9);
    let (n, file, stats) = sparsebak::tape::writer::write_tape_file(
        &mut drive,
        &mut NoNextTape,
        &opts("vol/S_10"),
        |w| {
            let mut pauses = 0;
            for (i, c) in stream.chunks(16 * BS).enumerate() {
                if i > 0 {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    pauses += 1;
                }
                w.write_all(c)?;
            }
            Ok(pauses)
        },
    )
    .unwrap();
    assert_eq!(n, 3);
    assert_eq!(
        (stats.stops, stats.starts, stats.blocks),
        (3, 4, 64),
        "{stats:?}"
    );
    assert_eq!(stats.pool_blocks, 16);
    assert!(stats.max_blocks_in_use <= 16, "{stats:?}");
    assert!(stats.busy_fraction() < 0.6, "{stats:?}");
    assert!(read_back(&mut drive, &file).unwrap() == stream);
}

#[test]
fn a_damaged_block_in_a_continuation_part_names_its_tape() {
    let t = tempfile::tempdir().unwrap();
    let lib = library(t.path(), 2, 64 * BS as u64, None, BS);
    let mut drive = lib.drive();
    let stream = data(80 * BS, 11);
    let mut next = ChangerNextTape {
        changer: lib.changer(),
        drive_number: 0,
        barcodes: VecDeque::from([barcode_for(2)]),
    };
    let (file, _) =
        write_tape_file_from(&mut drive, &mut next, &opts("vol/S_11"), &mut &stream[..]).unwrap();
    assert_eq!(file.parts.len(), 2);
    // Position 5 on tape 2: label 0, filemark 1, part header 2, data blocks from 3.
    let path = t.path().join("cartridges/VT0002L8.vtape");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = block_offset(5) as usize;
    assert_eq!(bytes[at..at + 64], stream[62 * BS..62 * BS + 64]);
    bytes[at + 7] ^= 0x80;
    std::fs::write(&path, &bytes).unwrap();
    let mut mount = ChangerMount {
        changer: lib.changer(),
        drive_number: 0,
    };
    let mut r = TapeFileReader::new(&mut drive, &mut mount, file).unwrap();
    let mut out = Vec::new();
    let e = r.read_to_end(&mut out).unwrap_err();
    assert_eq!(
        tape_file_error(&e).unwrap().to_string(),
        "tape VT0002L8, file 1, block 3 (position 5): damaged: its bytes do not match the digest the part trailer holds"
    );
    // Part 1 came through whole before the damage was found.
    assert!(out[..60 * BS] == stream[..60 * BS]);
}
