//! The virtual tape library: its drive keeps blocks, filemarks, positions, the
//! early warning and the end of medium as a real drive does; its changer moves
//! cartridges; a killed writer leaves a readable cartridge; the tape label.

use std::path::Path;
use std::time::{Duration, Instant};

use sparsebak::tape::changer::Changer;
use sparsebak::tape::drive::{ReadOutcome, TapeDrive, TapeError};
use sparsebak::tape::label::{LabelError, TapeLabel, LABEL_MAGIC};
use sparsebak::tape::virtual_drive::VirtualDrive;
use sparsebak::tape::virtual_library::{VirtualLibrary, VirtualLibraryOptions};

const BS: usize = 4096;

fn open(dir: &Path, slots: u32, capacity: u64) -> VirtualLibrary {
    VirtualLibrary::open(
        dir,
        &VirtualLibraryOptions {
            slots,
            capacity,
            speed: None,
        },
    )
    .unwrap()
}

/// A block whose bytes say which block it is.
fn block(tag: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for (i, c) in b.chunks_mut(4).enumerate() {
        c.copy_from_slice(&(tag.wrapping_mul(7919) ^ i as u32).to_le_bytes());
    }
    b
}

/// A library with slot 1's cartridge in the drive, set to `BS`.
fn loaded(dir: &Path, capacity: u64) -> (VirtualLibrary, VirtualDrive) {
    let lib = open(dir, 3, capacity);
    lib.changer().load(1, 0).unwrap();
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    (lib, d)
}

fn read(d: &mut VirtualDrive) -> (ReadOutcome, Vec<u8>) {
    let mut buf = vec![0u8; BS];
    let r = d.read_block(&mut buf).unwrap();
    (r, buf)
}

#[test]
fn blocks_and_filemarks_read_back() {
    let t = tempfile::tempdir().unwrap();
    let (_lib, mut d) = loaded(t.path(), 1 << 20);
    for i in 0..5 {
        assert!(!d.write_block(&block(i)).unwrap());
    }
    d.write_filemark(1).unwrap();
    for i in 5..8 {
        d.write_block(&block(i)).unwrap();
    }
    d.write_filemark(2).unwrap();
    assert_eq!(d.position().unwrap(), 11);
    let s = d.status().unwrap();
    assert_eq!((s.file_number, s.block_in_file), (Some(3), Some(0)));
    assert!(s.eod && s.eof && !s.bot && !s.eot, "{s}");

    d.rewind().unwrap();
    assert!(d.status().unwrap().bot);
    for i in 0..5 {
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(i)));
    }
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    let s = d.status().unwrap();
    assert_eq!(
        (s.file_number, s.block_in_file, s.eof),
        (Some(1), Some(0), true)
    );
    for i in 5..8 {
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(i)));
    }
    let s = d.status().unwrap();
    assert_eq!((s.file_number, s.block_in_file), (Some(1), Some(3)));
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
    assert_eq!(
        d.position().unwrap(),
        11,
        "end of data does not move the tape"
    );
}

#[test]
fn fsf_bsf_locate_and_eod() {
    let t = tempfile::tempdir().unwrap();
    let (_lib, mut d) = loaded(t.path(), 1 << 20);
    // file 0: blocks 0..3 (positions 0..3), mark at 3; file 1: 4..6, mark at 6;
    // file 2: 7..8, mark at 9.
    let mut tag = 0;
    for n in [3, 2, 2] {
        for _ in 0..n {
            d.write_block(&block(tag)).unwrap();
            tag += 1;
        }
        d.write_filemark(1).unwrap();
    }
    d.rewind().unwrap();
    d.fsf(2).unwrap();
    assert_eq!(d.position().unwrap(), 7);
    assert_eq!(read(&mut d).1, block(5));
    d.bsf(1).unwrap();
    assert_eq!(d.position().unwrap(), 6, "before the filemark passed");
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    d.bsf(2).unwrap();
    assert_eq!(d.position().unwrap(), 3);
    d.locate(4).unwrap();
    assert_eq!(read(&mut d).1, block(3));
    d.eod().unwrap();
    assert_eq!(d.position().unwrap(), 10);

    let e = d.fsf(1).unwrap_err();
    assert!(matches!(e, TapeError::Position { .. }), "{e}");
    assert!(e.to_string().contains("end of data"), "{e}");
    d.locate(1).unwrap();
    let e = d.bsf(1).unwrap_err();
    assert!(e.to_string().contains("beginning of tape"), "{e}");
    assert_eq!(d.position().unwrap(), 0);
    let e = d.locate(11).unwrap_err();
    assert!(
        e.to_string().contains("past the end of data (block 10)"),
        "{e}"
    );
    d.rewind().unwrap();
    let e = d.fsf(4).unwrap_err();
    assert!(e.to_string().contains("spacing forward 4 filemarks"), "{e}");
    assert_eq!(d.position().unwrap(), 10);
}

#[test]
fn early_warning_then_end_of_medium() {
    let t = tempfile::tempdir().unwrap();
    // 100 blocks; the early-warning zone is a twentieth: the last 5 blocks.
    let (_lib, mut d) = loaded(t.path(), 100 * BS as u64);
    for i in 0..94 {
        assert!(!d.write_block(&block(i)).unwrap(), "block {i}");
    }
    assert!(!d.status().unwrap().eot);
    for i in 94..100 {
        assert!(d.write_block(&block(i)).unwrap(), "block {i}");
    }
    assert!(d.status().unwrap().eot);
    let e = d.write_block(&block(100)).unwrap_err();
    assert!(matches!(e, TapeError::EndOfMedium { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("end of medium while writing block 100"),
        "{e}"
    );
    assert_eq!(d.position().unwrap(), 100, "nothing written");
    // A filemark still fits, and every block reads back.
    d.write_filemark(1).unwrap();
    d.rewind().unwrap();
    for i in 0..100 {
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(i)));
    }
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
    // Overwriting from the middle gives the room back.
    d.locate(50).unwrap();
    assert!(!d.status().unwrap().eot);
    for i in 0..44 {
        assert!(!d.write_block(&block(1000 + i)).unwrap());
    }
    assert!(d.write_block(&block(2000)).unwrap());
}

#[test]
fn writing_in_the_middle_cuts_off_what_follows() {
    let t = tempfile::tempdir().unwrap();
    let (_lib, mut d) = loaded(t.path(), 1 << 20);
    for i in 0..10 {
        d.write_block(&block(i)).unwrap();
    }
    d.write_filemark(1).unwrap();
    for i in 10..15 {
        d.write_block(&block(i)).unwrap();
    }
    d.locate(3).unwrap();
    d.write_block(&block(99)).unwrap();
    d.eod().unwrap();
    assert_eq!(d.position().unwrap(), 4);
    d.locate(2).unwrap();
    assert_eq!(read(&mut d).1, block(2));
    assert_eq!(read(&mut d).1, block(99));
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
    let len = std::fs::metadata(t.path().join("cartridges/VT0001L8.vtape"))
        .unwrap()
        .len();
    assert_eq!(len, 64 + 4 * (8 + BS as u64), "the file is cut too");
    // A filemark written at a position cuts as well.
    d.locate(1).unwrap();
    d.write_filemark(1).unwrap();
    d.rewind().unwrap();
    assert_eq!(read(&mut d).1, block(0));
    assert_eq!(read(&mut d).0, ReadOutcome::Filemark);
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
}

#[test]
fn block_size_and_mode_are_checked() {
    let t = tempfile::tempdir().unwrap();
    let lib = open(t.path(), 2, 1 << 20);
    lib.changer().load(2, 0).unwrap();
    let mut d = lib.drive();
    let e = d.write_block(&block(0)).unwrap_err();
    assert!(matches!(e, TapeError::NotFixedMode { .. }), "{e}");
    assert!(e.to_string().contains("variable-block mode"), "{e}");
    let e = d.check_block_size(BS).unwrap_err();
    assert!(matches!(e, TapeError::NotFixedMode { .. }), "{e}");
    for bad in [0, 100, 511, 1000, (1 << 20) + 512, 2 << 20] {
        let e = d.set_block_size(bad).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("block size {bad} is not supported")),
            "{e}"
        );
    }
    d.set_block_size(BS).unwrap();
    d.check_block_size(BS).unwrap();
    let e = d.write_block(&[0u8; 100]).unwrap_err();
    assert!(
        e.to_string()
            .contains("a write of 100 bytes, but the block size is 4096 bytes"),
        "{e}"
    );
    d.write_block(&block(1)).unwrap();
    d.write_block(&block(2)).unwrap();

    d.set_block_size(2 * BS).unwrap();
    let e = d.check_block_size(BS).unwrap_err();
    assert!(
        e.to_string().contains("4096") && e.to_string().contains("8192"),
        "{e}"
    );
    d.locate(1).unwrap();
    let mut buf = vec![0u8; 2 * BS];
    let e = d.read_block(&mut buf).unwrap_err();
    match &e {
        TapeError::BlockSizeMismatch {
            expected, found, ..
        } => assert_eq!((*expected, *found), (8192, 4096)),
        other => panic!("{other}"),
    }
    assert!(
        e.to_string()
            .contains("the tape holds blocks of 4096 bytes but the drive is set to 8192 bytes"),
        "{e}"
    );
    assert_eq!(d.position().unwrap(), 1, "position unchanged");
    d.set_block_size(BS).unwrap();
    assert_eq!(read(&mut d).1, block(2));
}

#[test]
fn write_protected_cartridge_reads_but_refuses_writes() {
    let t = tempfile::tempdir().unwrap();
    let (lib, mut d) = loaded(t.path(), 1 << 20);
    d.write_block(&block(7)).unwrap();
    d.write_filemark(1).unwrap();
    lib.set_write_protected("VT0001L8", true).unwrap();
    d.rewind().unwrap();
    assert!(d.status().unwrap().write_protected);
    assert_eq!(read(&mut d).1, block(7));
    let e = d.write_block(&block(8)).unwrap_err();
    assert!(matches!(e, TapeError::WriteProtected { .. }), "{e}");
    let e = d.write_filemark(1).unwrap_err();
    assert!(
        e.to_string().ends_with("the tape is write-protected"),
        "{e}"
    );
    lib.set_write_protected("VT0001L8", false).unwrap();
    d.write_block(&block(8)).unwrap();
    assert!(lib.set_write_protected("NOPE01L8", true).is_err());
}

#[test]
fn changer_moves_cartridges_and_remembers() {
    let t = tempfile::tempdir().unwrap();
    {
        let lib = open(t.path(), 3, 1 << 20);
        let mut c = lib.changer();
        let inv = c.inventory().unwrap();
        assert_eq!(inv.drives.len(), 1);
        assert!(!inv.drives[0].full);
        let codes: Vec<_> = inv.slots.iter().map(|s| s.barcode.clone()).collect();
        assert_eq!(
            codes,
            [Some("VT0001L8"), Some("VT0002L8"), Some("VT0003L8")].map(|s| s.map(String::from))
        );
        let mut d = lib.drive();
        d.set_block_size(BS).unwrap();
        let e = d.write_block(&block(0)).unwrap_err();
        assert!(
            e.to_string().ends_with("drive 0: no tape in the drive"),
            "{e}"
        );
        assert!(!d.status().unwrap().online);

        c.load(2, 0).unwrap();
        let inv = c.inventory().unwrap();
        assert_eq!(inv.drives[0].barcode.as_deref(), Some("VT0002L8"));
        assert_eq!(inv.drives[0].from_slot, Some(2));
        assert!(!inv.slots[1].full && inv.slots[1].barcode.is_none());
        assert_eq!(d.barcode().unwrap(), "VT0002L8");
        d.write_block(&block(2)).unwrap();
        d.write_filemark(1).unwrap();

        let e = c.load(1, 0).unwrap_err();
        assert!(
            e.to_string().contains("drive 0 already holds VT0002L8"),
            "{e}"
        );
        let e = c.load(9, 0).unwrap_err();
        assert!(
            e.to_string().contains("no slot 9 (slots are 1 to 3)"),
            "{e}"
        );
        let e = c.load(1, 1).unwrap_err();
        assert!(e.to_string().contains("no drive 1"), "{e}");
        let e = c.transfer(1, 3).unwrap_err();
        assert!(e.to_string().contains("slot 3 is full"), "{e}");
        c.transfer(3, 2).unwrap();
        let e = c.unload(0, None).unwrap_err();
        assert!(
            e.to_string().contains("slot 2 already holds VT0003L8"),
            "{e}"
        );
        c.unload(0, Some(3)).unwrap();
        let e = c.unload(0, None).unwrap_err();
        assert!(e.to_string().contains("drive 0 is empty"), "{e}");

        // Another cartridge in the drive: blank, and read from its start.
        c.load_barcode("VT0001L8", 0).unwrap();
        assert_eq!(d.barcode().unwrap(), "VT0001L8");
        assert_eq!(d.position().unwrap(), 0);
        assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
        // Back to the written one (load_barcode unloads first): at its start.
        c.load_barcode("VT0002L8", 0).unwrap();
        assert_eq!(
            c.inventory().unwrap().slots[0].barcode.as_deref(),
            Some("VT0001L8")
        );
        assert_eq!(d.position().unwrap(), 0);
        assert_eq!(read(&mut d).1, block(2));
        let e = c.load_barcode("NOPE01L8", 0).unwrap_err();
        assert!(
            e.to_string().contains("no slot holds cartridge NOPE01L8"),
            "{e}"
        );

        // The drive unloads its tape; the changer still sees it there.
        d.unload().unwrap();
        assert!(matches!(d.rewind(), Err(TapeError::NoTape { .. })));
        d.load().unwrap();
        assert_eq!(d.position().unwrap(), 0);

        // One run at a time.
        let e = VirtualLibrary::open(
            t.path(),
            &VirtualLibraryOptions {
                slots: 3,
                capacity: 1 << 20,
                speed: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, TapeError::Busy { .. }), "{e}");
    }
    // Reopened: the same contents, and more slots get new cartridges.
    let lib = open(t.path(), 5, 1 << 20);
    let inv = lib.changer().inventory().unwrap();
    assert_eq!(inv.drives[0].barcode.as_deref(), Some("VT0002L8"));
    assert_eq!(inv.drives[0].from_slot, Some(3));
    let codes: Vec<_> = inv.slots.iter().map(|s| s.barcode.as_deref()).collect();
    assert_eq!(
        codes,
        [
            Some("VT0001L8"),
            Some("VT0003L8"),
            None,
            Some("VT0004L8"),
            Some("VT0005L8")
        ]
    );
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    assert_eq!(read(&mut d).1, block(2));
    drop((d, lib));
    let e = VirtualLibrary::open(
        t.path(),
        &VirtualLibraryOptions {
            slots: 4,
            capacity: 1 << 20,
            speed: None,
        },
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("the library has 5 slots; virtual_slots = 4 cannot remove slots"),
        "{e}"
    );
}

#[test]
fn torn_last_record_is_ignored_then_cut() {
    let t = tempfile::tempdir().unwrap();
    let cart = t.path().join("cartridges/VT0001L8.vtape");
    {
        let (_lib, mut d) = loaded(t.path(), 1 << 20);
        for i in 0..3 {
            d.write_block(&block(i)).unwrap();
        }
    }
    // What a writer killed in the middle of a block leaves: a record header and
    // part of its bytes.
    let whole = std::fs::metadata(&cart).unwrap().len();
    let mut tail = b"BLK1".to_vec();
    tail.extend_from_slice(&(BS as u32).to_le_bytes());
    tail.extend_from_slice(&[0xaa; 1000]);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&cart)
        .unwrap()
        .write_all(&tail)
        .unwrap();
    let lib = open(t.path(), 3, 1 << 20);
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    // The drive is where the last run left it, at the end of the data.
    assert_eq!(d.position().unwrap(), 3);
    d.rewind().unwrap();
    for i in 0..3 {
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(i)));
    }
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);
    d.write_block(&block(3)).unwrap();
    assert_eq!(
        std::fs::metadata(&cart).unwrap().len(),
        whole + 8 + BS as u64,
        "the torn record was cut before the new one"
    );
    d.rewind().unwrap();
    for i in 0..4 {
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(i)));
    }

    // A damaged record header in the middle is reported, not skipped.
    drop((d, lib));
    let mut bytes = std::fs::read(&cart).unwrap();
    bytes[64 + 8 + BS] = b'X';
    std::fs::write(&cart, &bytes).unwrap();
    let lib = open(t.path(), 3, 1 << 20);
    let e = lib.drive().rewind().unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "bad record header at offset {} (record 1)",
            64 + 8 + BS
        )),
        "{e}"
    );
}

/// Run by `killed_writer_leaves_a_readable_cartridge` in a child process: writes
/// blocks until killed.
#[test]
#[ignore = "run as a child process by killed_writer_leaves_a_readable_cartridge"]
fn child_writer() {
    let dir = std::env::var_os("SPARSEBAK_TAPE_CHILD").expect("run by the parent test");
    let (_lib, mut d) = loaded(Path::new(&dir), 1 << 30);
    let mut i = 0;
    loop {
        d.write_block(&block(i)).unwrap();
        i += 1;
        if i % 50 == 0 {
            d.write_filemark(1).unwrap();
        }
    }
}

#[test]
fn killed_writer_leaves_a_readable_cartridge() {
    let t = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--ignored", "--nocapture"])
        .env("SPARSEBAK_TAPE_CHILD", t.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let cart = t.path().join("cartridges/VT0001L8.vtape");
    let start = Instant::now();
    while std::fs::metadata(&cart).map_or(0, |m| m.len()) < 4 << 20 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer wrote nothing"
        );
        assert!(child.try_wait().unwrap().is_none(), "the writer died");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The library is busy while the writer runs.
    let e = VirtualLibrary::open(
        t.path(),
        &VirtualLibraryOptions {
            slots: 3,
            capacity: 1 << 30,
            speed: None,
        },
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("another run uses this library"),
        "{e}"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let lib = open(t.path(), 3, 1 << 30);
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    let mut n = 0u32;
    let mut marks = 0;
    loop {
        match read(&mut d) {
            (ReadOutcome::Block, b) => {
                assert_eq!(b, block(n), "block {n}");
                n += 1;
            }
            (ReadOutcome::Filemark, _) => {
                marks += 1;
                assert_eq!(n, marks * 50, "a filemark after every 50 blocks");
            }
            (ReadOutcome::EndOfData, _) => break,
        }
    }
    assert!(n >= 1000, "only {n} blocks");
    // And it takes more.
    d.write_block(&block(n)).unwrap();
}

#[test]
fn speed_is_throttled() {
    let t = tempfile::tempdir().unwrap();
    let lib = VirtualLibrary::open(
        t.path(),
        &VirtualLibraryOptions {
            slots: 1,
            capacity: 1 << 20,
            speed: Some(1 << 20),
        },
    )
    .unwrap();
    lib.changer().load(1, 0).unwrap();
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    let start = Instant::now();
    for i in 0..64 {
        d.write_block(&block(i)).unwrap();
    }
    let el = start.elapsed();
    assert!(
        el >= Duration::from_millis(240),
        "256 KiB at 1 MiB/s in {el:?}"
    );
}

#[test]
fn label_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (_lib, mut d) = loaded(t.path(), 1 << 20);
    let label = TapeLabel::new("VT0001L8", "weekly", BS).unwrap();
    label.write(&mut d).unwrap();
    d.write_block(&block(1)).unwrap();
    let back = TapeLabel::read(&mut d).unwrap();
    assert_eq!(back, label);
    assert_eq!(d.position().unwrap(), 2, "at the start of file 1");
    assert_eq!(read(&mut d).1, block(1));
    assert_eq!(back.uuid_string().len(), 36);
    // A second labelling has another uuid.
    assert_ne!(
        TapeLabel::new("VT0001L8", "weekly", BS).unwrap().uuid,
        label.uuid
    );
    // Relabelling cuts off the old contents.
    let label2 = TapeLabel::new("VT0001L8", "monthly", BS).unwrap();
    label2.write(&mut d).unwrap();
    assert_eq!(TapeLabel::read(&mut d).unwrap().pool, "monthly");
    assert_eq!(read(&mut d).0, ReadOutcome::EndOfData);

    for bad in ["", "with space", &"x".repeat(65)] {
        let e = TapeLabel::new(bad, "p", BS).unwrap_err();
        assert!(matches!(e, LabelError::BadName { .. }), "{e}");
    }
}

#[test]
fn label_refusals() {
    let t = tempfile::tempdir().unwrap();
    let (_lib, mut d) = loaded(t.path(), 1 << 20);
    // Blank tape.
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(matches!(e, LabelError::NotLabelled { .. }), "{e}");
    // Something else on it.
    d.write_block(&block(0)).unwrap();
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(e.to_string().contains("has no sparsebak label"), "{e}");

    let label = TapeLabel::new("TAPE01", "pool", BS).unwrap();
    let good = label.encode().unwrap();
    assert_eq!(&good[..8], LABEL_MAGIC);
    let write_raw = |d: &mut VirtualDrive, b: &[u8]| {
        d.rewind().unwrap();
        d.write_block(b).unwrap();
        d.write_filemark(1).unwrap();
    };
    // A future version (with a valid checksum).
    let mut b = good.clone();
    b[8..12].copy_from_slice(&2u32.to_le_bytes());
    let sum = <sha2::Sha256 as sha2::Digest>::digest(&b[0..170]);
    b[170..202].copy_from_slice(&sum);
    write_raw(&mut d, &b);
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(
        e.to_string()
            .contains("the tape label is format version 2; this sparsebak reads version 1"),
        "{e}"
    );
    // A flipped bit.
    let mut b = good.clone();
    b[50] ^= 1;
    write_raw(&mut d, &b);
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(e.to_string().contains("damaged (checksum mismatch)"), "{e}");
    // No filemark after the label.
    d.rewind().unwrap();
    d.write_block(&good).unwrap();
    d.write_block(&good).unwrap();
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(e.to_string().contains("no filemark after the label"), "{e}");

    // The label says another block size than the drive's.
    label.write(&mut d).unwrap();
    d.set_block_size(2 * BS).unwrap();
    let e = TapeLabel::read(&mut d).unwrap_err();
    assert!(
        e.to_string().contains(
            "the tape was labelled with blocks of 4096 bytes but the drive is set to 8192 bytes"
        ),
        "{e}"
    );
    // ... also when the block itself has the drive's size (decoded directly).
    let big = TapeLabel {
        block_size: 2 * BS,
        ..label.clone()
    }
    .encode()
    .unwrap();
    let e = TapeLabel::decode("dev", &big, BS).unwrap_err();
    assert!(
        matches!(
            e,
            LabelError::BlockSizeMismatch {
                label: 8192,
                drive: 4096,
                ..
            }
        ),
        "{e}"
    );
    // Writing a label checks the drive's block size first.
    let e = label.write(&mut d).unwrap_err();
    assert!(
        e.to_string()
            .contains("the drive is set to blocks of 8192 bytes, expected 4096 bytes"),
        "{e}"
    );
}

#[test]
fn bad_settings_and_a_damaged_state_file_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let opts = |slots| VirtualLibraryOptions {
        slots,
        capacity: 1 << 20,
        speed: None,
    };
    let e = VirtualLibrary::open(t.path(), &opts(0)).unwrap_err();
    assert!(matches!(e, TapeError::Refused { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("virtual_slots = 0 (must be 1 to 10000)"),
        "{e}"
    );
    drop(open(t.path(), 2, 1 << 20));
    let state = t.path().join("library.state");
    let text = std::fs::read_to_string(&state).unwrap();
    assert_eq!(
        text,
        "sparsebak virtual tape library 1\nslot 1 VT0001L8\nslot 2 VT0002L8\ndrive 0 - -\n"
    );
    std::fs::write(&state, text.replace("slot 2", "slot 3")).unwrap();
    let e = VirtualLibrary::open(t.path(), &opts(2)).unwrap_err();
    assert!(matches!(e, TapeError::Corrupt { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("library.state line 3: expected slot 2: \"slot 3 VT0002L8\""),
        "{e}"
    );
    std::fs::write(&state, "something else\n").unwrap();
    let e = VirtualLibrary::open(t.path(), &opts(2)).unwrap_err();
    assert!(
        e.to_string()
            .contains("not a sparsebak virtual tape library"),
        "{e}"
    );
    // A cartridge file that is not one.
    std::fs::write(&state, &text).unwrap();
    std::fs::write(t.path().join("cartridges/VT0001L8.vtape"), b"hello").unwrap();
    let lib = open(t.path(), 2, 1 << 20);
    lib.changer().load(1, 0).unwrap();
    let e = lib.drive().rewind().unwrap_err();
    assert!(
        e.to_string()
            .contains("VT0001L8.vtape: shorter than its header"),
        "{e}"
    );
}

#[test]
fn position_is_kept_between_runs_until_the_tape_moves() {
    let t = tempfile::tempdir().unwrap();
    {
        let (_lib, mut d) = loaded(t.path(), 1 << 20);
        for i in 0..4 {
            d.write_block(&block(i)).unwrap();
        }
        d.write_filemark(1).unwrap();
        d.write_block(&block(4)).unwrap();
        d.locate(2).unwrap();
    }
    // As a non-rewinding device: the next run finds the tape where this one left it.
    {
        let lib = open(t.path(), 3, 1 << 20);
        let mut d = lib.drive();
        d.set_block_size(BS).unwrap();
        assert_eq!(d.position().unwrap(), 2);
        assert_eq!(read(&mut d), (ReadOutcome::Block, block(2)));
        d.fsf(1).unwrap();
        assert_eq!(d.position().unwrap(), 5);
    }
    // Unloading and loading again starts at the beginning.
    let lib = open(t.path(), 3, 1 << 20);
    {
        let mut d = lib.drive();
        assert_eq!(d.position().unwrap(), 5);
        d.unload().unwrap();
    }
    lib.changer().unload(0, None).unwrap();
    lib.changer().load(1, 0).unwrap();
    let mut d = lib.drive();
    assert_eq!(d.position().unwrap(), 0);
    let state = std::fs::read_to_string(t.path().join("library.state")).unwrap();
    assert!(!state.contains("position"), "{state}");
}
