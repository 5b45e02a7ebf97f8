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
