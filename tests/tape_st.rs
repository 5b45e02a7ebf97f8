//! The st driver layer without a drive: the decoding of `MTIOCGET`, the mapping of
//! system errors, and what it says when the device is not a tape drive.

use sparsebak::tape::drive::{TapeDrive, TapeError};
use sparsebak::tape::st::{decode_status, gstat, map_errno, MtGet, StDrive};

#[test]
fn status_bits_and_block_size() {
    let g = MtGet {
        mt_type: 0x72,
        mt_dsreg: (0x44 << 24) | 262144,
        mt_gstat: (gstat::EOT | gstat::ONLINE | gstat::EOF) as _,
        mt_fileno: 3,
        mt_blkno: 17,
        ..MtGet::default()
    };
    let s = decode_status(&g);
    assert_eq!((s.file_number, s.block_in_file), (Some(3), Some(17)));
    assert_eq!(s.block_size, 262144, "the density code is not part of it");
    assert!(s.eot && s.online && s.eof && !s.bot && !s.eod && !s.write_protected);
    assert_eq!(
        s.to_string(),
        "file 3 block 17 block size 262144 EOF EOT ONLINE"
    );
    let g = MtGet {
        mt_gstat: (gstat::BOT | gstat::WR_PROT | gstat::EOD) as _,
        mt_fileno: -1,
        mt_blkno: -1,
        ..MtGet::default()
    };
    let s = decode_status(&g);
    assert_eq!(
        (s.file_number, s.block_in_file, s.block_size),
        (None, None, 0)
    );
    assert!(s.bot && s.write_protected && s.eod && !s.online);
    assert_eq!(s.to_string(), "file ? block ? block size 0 BOT EOD WR_PROT");
}

#[test]
fn errno_mapping() {
    let e = map_errno(
        "/dev/nst0",
        "writing a block",
        std::io::Error::from_raw_os_error(libc::ENOSPC),
    );
    assert!(matches!(e, TapeError::EndOfMedium { .. }));
    assert_eq!(
        e.to_string(),
        "/dev/nst0: end of medium while writing a block"
    );
    let e = map_errno(
        "/dev/nst0",
        "reading a block",
        std::io::Error::from_raw_os_error(libc::EIO),
    );
    assert!(
        e.to_string().starts_with("/dev/nst0: reading a block: "),
        "{e}"
    );
    assert!(matches!(e, TapeError::Io { .. }));
    let e = map_errno(
        "/dev/nst0",
        "rewinding",
        std::io::Error::from_raw_os_error(libc::ENOMEDIUM),
    );
    assert_eq!(e.to_string(), "/dev/nst0: no tape in the drive");
    let e = map_errno(
        "/dev/nst0",
        "writing a filemark",
        std::io::Error::from_raw_os_error(libc::EACCES),
    );
    assert_eq!(e.to_string(), "/dev/nst0: the tape is write-protected");
}

#[test]
fn not_a_tape_drive() {
    let t = tempfile::tempdir().unwrap();
    let p = t.path().join("plain");
    std::fs::write(&p, b"").unwrap();
    let mut d = StDrive::open(&p).unwrap();
    let e = d.status().unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!("{}: reading the drive status: ", p.display())),
        "{msg}"
    );
    match e {
        TapeError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOTTY)),
        other => panic!("{other}"),
    }
    let e = d.set_block_size(100).unwrap_err();
    assert!(
        e.to_string().contains("block size 100 is not supported"),
        "{e}"
    );
    let e = d.write_block(&[0u8; 512]).unwrap_err();
    assert!(matches!(e, TapeError::NotFixedMode { .. }), "{e}");
    let e = StDrive::open(&t.path().join("missing")).unwrap_err();
    assert!(e.to_string().contains("opening the drive"), "{e}");
}

// The tests below run against the kernel's real st driver over scsi_debug's tape
// emulation, in a QEMU guest: `tests/vm/tape.sh` boots it and runs each with a fresh
// tape. The emulator keeps only the first 4 bytes of each block, so blocks are told
// apart by a counter there; it takes fixed blocks below 64 KiB only.

const GUEST_BS: usize = 32768;

fn guest_drive() -> StDrive {
    let dev =
        std::env::var_os("SPARSEBAK_ST_DEVICE").expect("run in the guest by tests/vm/tape.sh");
    let mut d = StDrive::open(std::path::Path::new(&dev)).unwrap();
    // Positions are unknown until the first rewind.
    d.rewind().unwrap();
    d.set_block_size(GUEST_BS).unwrap();
    d.check_block_size(GUEST_BS).unwrap();
    d
}

fn tagged(n: u32) -> Vec<u8> {
    let mut b = vec![0u8; GUEST_BS];
    b[..4].copy_from_slice(&n.to_le_bytes());
    b
}

fn read_tag(d: &mut StDrive) -> Result<(ReadOutcome, u32), TapeError> {
    let mut b = vec![0u8; GUEST_BS];
    let r = d.read_block(&mut b)?;
    Ok((r, u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
}

use sparsebak::tape::drive::ReadOutcome;

#[test]
#[ignore = "needs the st driver: run in a QEMU guest by tests/vm/tape.sh"]
fn guest_blocks_filemarks_positions() {
    let mut d = guest_drive();
    assert!(d.status().unwrap().bot);
    for i in 0..5 {
        assert!(!d.write_block(&tagged(i)).unwrap());
    }
    d.write_filemark(1).unwrap();
    for i in 5..8 {
        d.write_block(&tagged(i)).unwrap();
    }
    d.write_filemark(1).unwrap();
    assert_eq!(d.position().unwrap(), 10);
    let s = d.status().unwrap();
    assert_eq!(
        (s.file_number, s.block_in_file, s.block_size),
        (Some(2), Some(0), GUEST_BS)
    );
    assert!(s.online && !s.eot, "{s}");

    d.rewind().unwrap();
    for i in 0..5 {
        assert_eq!(read_tag(&mut d).unwrap(), (ReadOutcome::Block, i));
    }
    assert_eq!(read_tag(&mut d).unwrap().0, ReadOutcome::Filemark);
    for i in 5..8 {
        assert_eq!(read_tag(&mut d).unwrap(), (ReadOutcome::Block, i));
    }
    assert_eq!(read_tag(&mut d).unwrap().0, ReadOutcome::Filemark);
    assert_eq!(read_tag(&mut d).unwrap().0, ReadOutcome::EndOfData);

    d.locate(6).unwrap();
    assert_eq!(d.position().unwrap(), 6);
    assert_eq!(read_tag(&mut d).unwrap(), (ReadOutcome::Block, 5));
    d.rewind().unwrap();
    d.fsf(1).unwrap();
    assert_eq!(d.position().unwrap(), 6);
    let s = d.status().unwrap();
    assert_eq!((s.file_number, s.block_in_file), (Some(1), Some(0)));
    d.bsf(1).unwrap();
    assert_eq!(d.position().unwrap(), 5);
    d.eod().unwrap();
    assert_eq!(d.position().unwrap(), 10);
    // Appending at the end of data, and overwriting in the middle cuts what follows.
    d.write_block(&tagged(8)).unwrap();
    d.write_filemark(1).unwrap();
    d.locate(2).unwrap();
    d.write_block(&tagged(99)).unwrap();
    d.write_filemark(1).unwrap();
    d.rewind().unwrap();
    let mut seen = Vec::new();
    loop {
        match read_tag(&mut d).unwrap() {
            (ReadOutcome::Block, t) => seen.push(t as i64),
            (ReadOutcome::Filemark, _) => seen.push(-1),
            (ReadOutcome::EndOfData, _) => break,
        }
    }
    assert_eq!(seen, [0, 1, 99, -1]);
}

#[test]
#[ignore = "needs the st driver: run in a QEMU guest by tests/vm/tape.sh"]
fn guest_early_warning_then_end_of_medium() {
    fill_to_the_end(false);
}

#[test]
#[ignore = "needs the st driver: run in a QEMU guest by tests/vm/tape.sh"]
fn guest_filemark_at_end_of_medium() {
    fill_to_the_end(true);
}

/// Write until the end of medium (then a filemark if `close_file`), rewind and read
/// every block back.
fn fill_to_the_end(close_file: bool) {
    let mut d = guest_drive();
    let mut written = 0u32;
    let mut first_warning = None;
    loop {
        match d.write_block(&tagged(written)) {
            Ok(warn) => {
                if warn && first_warning.is_none() {
                    first_warning = Some(written);
                    assert!(d.status().unwrap().eot);
                }
                assert_eq!(warn, first_warning.is_some(), "block {written}");
                written += 1;
            }
            Err(TapeError::EndOfMedium { .. }) => break,
            Err(e) => panic!("block {written}: {e}"),
        }
        assert!(written < 20_000, "no end of medium");
    }
    let ew = first_warning.expect("an early warning before the end");
    eprintln!("early warning at block {ew}, end of medium after {written} blocks");
    assert!(written > ew + 1, "blocks fit after the early warning");
    if close_file {
        let e = d.write_filemark(1).unwrap_err();
        assert!(matches!(e, TapeError::EndOfMedium { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "/dev/nst0: end of medium while writing a filemark"
        );
    }
    // Every block reported written is on the tape, in order.
    d.rewind().unwrap();
    for i in 0..written {
        assert_eq!(
            read_tag(&mut d).unwrap(),
            (ReadOutcome::Block, i),
            "block {i}"
        );
    }
}

#[test]
#[ignore = "needs the st driver: run in a QEMU guest by tests/vm/tape.sh"]
fn guest_wrong_block_size() {
    let mut d = guest_drive();
    for i in 0..3 {
        d.write_block(&tagged(i)).unwrap();
    }
    d.write_filemark(1).unwrap();
    d.set_block_size(GUEST_BS / 2).unwrap();
    d.rewind().unwrap();
    let mut half = vec![0u8; GUEST_BS / 2];
    let e = d.read_block(&mut half).unwrap_err();
    assert!(matches!(e, TapeError::Io { .. }), "{e}");
    assert!(
        e.to_string().contains("reading a block of 16384 bytes"),
        "{e}"
    );
    assert_eq!(d.position().unwrap(), 0, "the tape did not move");
    let e = d.check_block_size(GUEST_BS).unwrap_err();
    assert!(
        e.to_string()
            .contains("set to blocks of 16384 bytes, expected 32768"),
        "{e}"
    );
    d.set_block_size(GUEST_BS).unwrap();
    assert_eq!(read_tag(&mut d).unwrap(), (ReadOutcome::Block, 0));
}
