//! The `mtx` changer: its `status` output as libraries print it, and the exact
//! commands run (through a stand-in `mtx` that records its arguments).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use sparsebak::tape::changer::{
    parse_mtx_status, Changer, ChangerError, DriveElement, MtxChanger, SlotElement,
};

/// One drive loaded from slot 3, barcodes, empty slots, one import/export slot.
const ONE_DRIVE: &str = "  Storage Changer /dev/sg1:1 Drives, 8 Slots ( 1 Import/Export )
Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = SPB003L8                        
      Storage Element 1:Full :VolumeTag=SPB001L8                        
      Storage Element 2:Full :VolumeTag=SPB002L8                        
      Storage Element 3:Empty
      Storage Element 4:Full :VolumeTag=SPB004L8                        
      Storage Element 5:Empty
      Storage Element 6:Empty
      Storage Element 7:Full :VolumeTag=CLN001L1                        
      Storage Element 8 IMPORT/EXPORT:Empty
";

/// Two drives (one empty, one loaded from an unknown slot), a library without a
/// barcode reader for one cartridge, alternate tags, two import/export slots.
const TWO_DRIVES: &str = "  Storage Changer /dev/sg4:2 Drives, 6 Slots ( 2 Import/Export )
Data Transfer Element 0:Empty
Data Transfer Element 1:Full (Unknown Storage Element Loaded):VolumeTag = A00007L7:AlternateVolumeTag = X
      Storage Element 1:Full 
      Storage Element 2:Full :VolumeTag=A00002L7:AlternateVolumeTag=Y
      Storage Element 3:Empty:VolumeTag=
      Storage Element 4:Full :VolumeTag=
      Storage Element 5 IMPORT/EXPORT:Full :VolumeTag=A00009L7                        
      Storage Element 6 IMPORT/EXPORT:Empty
";

fn slot(number: u32, barcode: Option<&str>, import_export: bool) -> SlotElement {
    SlotElement {
        number,
        full: barcode.is_some(),
        barcode: barcode.map(String::from),
        import_export,
    }
}

#[test]
fn one_drive_status() {
    let inv = parse_mtx_status("/dev/sg1", ONE_DRIVE).unwrap();
    assert_eq!(
        inv.drives,
        [DriveElement {
            number: 0,
            full: true,
            barcode: Some("SPB003L8".into()),
            from_slot: Some(3),
        }]
    );
    assert_eq!(
        inv.slots,
        [
            slot(1, Some("SPB001L8"), false),
            slot(2, Some("SPB002L8"), false),
            slot(3, None, false),
            slot(4, Some("SPB004L8"), false),
            slot(5, None, false),
            slot(6, None, false),
            slot(7, Some("CLN001L1"), false),
            slot(8, None, true),
        ]
    );
    assert_eq!(inv.slot_of("SPB004L8"), Some(4));
    assert_eq!(inv.drive_of("SPB003L8"), Some(0));
    assert_eq!(inv.slot_of("SPB003L8"), None);
}

#[test]
fn two_drives_status() {
    let inv = parse_mtx_status("/dev/sg4", TWO_DRIVES).unwrap();
    assert_eq!(
        inv.drives,
        [
            DriveElement {
                number: 0,
                full: false,
                barcode: None,
                from_slot: None,
            },
            DriveElement {
                number: 1,
                full: true,
                barcode: Some("A00007L7".into()),
                from_slot: None,
            },
        ]
    );
    let full_no_tag = SlotElement {
        full: true,
        ..slot(1, None, false)
    };
    assert_eq!(
        inv.slots,
        [
            full_no_tag.clone(),
            slot(2, Some("A00002L7"), false),
            slot(3, None, false),
            SlotElement {
                number: 4,
                ..full_no_tag
            },
            slot(5, Some("A00009L7"), true),
            slot(6, None, true),
        ]
    );
    // A cartridge in an import/export slot is not "in the library".
    assert_eq!(inv.slot_of("A00009L7"), None);
}

#[test]
fn status_output_that_does_not_add_up_is_refused() {
    let missing = ONE_DRIVE.replace("      Storage Element 6:Empty\n", "");
    let e = parse_mtx_status("/dev/sg1", &missing).unwrap_err();
    assert!(
        e.to_string().contains(
            "the header says 1 drives, 8 slots (1 import/export) but 1 drives, 7 slots (1 import/export) are listed"
        ),
        "{e}"
    );
    let odd = ONE_DRIVE.replace("Storage Element 5:Empty", "Storage Element 5:Jammed");
    let e = parse_mtx_status("/dev/sg1", &odd).unwrap_err();
    assert!(matches!(e, ChangerError::Parse { line: 7, .. }), "{e}");
    assert!(e.to_string().contains("bad slot state"), "{e}");
    let e = parse_mtx_status("/dev/sg1", "mtx: cannot open SCSI device\n").unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    let e = parse_mtx_status("/dev/sg1", "").unwrap_err();
    assert!(
        e.to_string().contains("no \"Storage Changer\" header"),
        "{e}"
    );
}

/// A stand-in `mtx` that appends its arguments to `log` and prints `status` for
/// `status`; with a `fail` file present it fails as mtx does.
fn fake_mtx(dir: &Path, status: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("status.txt"), status).unwrap();
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{d}/log'\nif [ -e '{d}/fail' ]; then echo 'Loading media from Storage Element 5 into drive 0...Source Element Address 1004 is Empty' >&2; exit 1; fi\nif [ \"$3\" = status ]; then cat '{d}/status.txt'; fi\n",
        d = dir.display()
    );
    let p = dir.join("mtx");
    std::fs::write(&p, script).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn log(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

#[test]
fn mtx_commands_have_exact_arguments() {
    let t = tempfile::tempdir().unwrap();
    let prog = fake_mtx(t.path(), ONE_DRIVE);
    let mut c = MtxChanger::with_program(Path::new("/dev/sg1"), &prog);
    assert_eq!(c.inventory().unwrap().slots.len(), 8);
    c.load(4, 0).unwrap();
    c.unload(0, Some(5)).unwrap();
    c.unload(0, None).unwrap(); // back to slot 3, from the status
    c.transfer(1, 6).unwrap();
    c.load_barcode("SPB002L8", 0).unwrap(); // drive full: unload first
    assert_eq!(
        log(t.path()),
        [
            "-f /dev/sg1 status",
            "-f /dev/sg1 load 4 0",
            "-f /dev/sg1 unload 5 0",
            "-f /dev/sg1 status",
            "-f /dev/sg1 unload 3 0",
            "-f /dev/sg1 transfer 1 6",
            "-f /dev/sg1 status",
            "-f /dev/sg1 status",
            "-f /dev/sg1 unload 3 0",
            "-f /dev/sg1 load 2 0",
        ]
    );
}

#[test]
fn mtx_failures_say_the_command_and_its_message() {
    let t = tempfile::tempdir().unwrap();
    let prog = fake_mtx(t.path(), TWO_DRIVES);
    let mut c = MtxChanger::with_program(Path::new("/dev/sg4"), &prog);
    // The drive's origin is unknown: unload needs a slot.
    let e = c.unload(1, None).unwrap_err();
    assert!(
        e.to_string()
            .contains("the slot the cartridge in drive 1 came from is unknown"),
        "{e}"
    );
    std::fs::write(t.path().join("fail"), "").unwrap();
    let e = c.load(5, 0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("-f /dev/sg4 load 5 0` failed (exit status: 1)"),
        "{msg}"
    );
    assert!(
        msg.ends_with("Source Element Address 1004 is Empty"),
        "{msg}"
    );
    let mut c = MtxChanger::with_program(Path::new("/dev/sg4"), &t.path().join("nope"));
    let e = c.inventory().unwrap_err();
    assert!(matches!(e, ChangerError::Spawn { .. }), "{e}");
    assert!(e.to_string().contains("nope"), "{e}");
}
