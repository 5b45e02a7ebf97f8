//! `sparsebak tape ...` through the real binary on a virtual library: labels and the
//! inventory, status after a load, positioning over filemarks, the refusal to label a
//! labelled tape, retension, listing the files of a tape, and the commands that work
//! only on archives saying so in one line.

mod common;

use std::path::PathBuf;
use std::process::Output;

use common::*;
use sparsebak::catalog::Catalog;
use sparsebak::tape::changer::Changer;
use sparsebak::tape::drive::TapeDrive;

const BS: usize = 65536;

struct Lib {
    dir: TestDir,
    config: PathBuf,
}

impl Lib {
    fn new() -> Lib {
        let dir = TestDir::new();
        let config = small_virtual_library(dir.path());
        Lib { dir, config }
    }

    fn run(&self, args: &[&str]) -> Output {
        let _spawn = spawning();
        std::process::Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    /// `sparsebak --dest=vt tape ARGS`, which must succeed: its standard output.
    fn tape(&self, args: &[&str]) -> String {
        let mut all = vec!["--dest=vt", "tape"];
        all.extend_from_slice(args);
        let o = self.run(&all);
        assert!(
            o.status.success(),
            "tape {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// A command that must fail with exit 1 and one line on standard error: that line.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        err.trim_end().to_string()
    }

    fn tape_fails(&self, args: &[&str]) -> String {
        let mut all = vec!["--dest=vt", "tape"];
        all.extend_from_slice(args);
        self.fails(&all)
    }

    /// The library itself, while no command runs.
    fn library(&self) -> HeldLibrary {
        HeldLibrary::open(&self.dir.path().join("vtl"), 3, 16 << 20)
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.dir.path().join("meta/catalog.sqlite")).unwrap()
    }
}

/// The uuid in a `labelled NAME in pool P (uuid U)` line.
fn uuid_in(line: &str) -> String {
    let at = line.find("(uuid ").expect("a uuid") + "(uuid ".len();
    line[at..at + 36].to_string()
}

#[test]
fn label_all_then_inventory_shows_every_label() {
    let l = Lib::new();
    // The library is created on first use; nothing is labelled yet.
    assert_eq!(
        l.tape(&["inventory"]),
        "drive 0: empty\n\
         slot 1: VT0001L8 (not labelled in the catalog)\n\
         slot 2: VT0002L8 (not labelled in the catalog)\n\
         slot 3: VT0003L8 (not labelled in the catalog)\n"
    );
    let out = l.tape(&["label", "--all"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    for (i, line) in lines[..3].iter().enumerate() {
        let n = i + 1;
        assert!(
            line.starts_with(&format!(
                "slot {n} (VT000{n}L8): labelled VT000{n}L8 in pool weekly (uuid "
            )),
            "{line}"
        );
    }
    assert_eq!(lines[3], "3 tape(s) labelled in pool weekly, 0 skipped");
    assert_eq!(
        l.tape(&["inventory"]),
        "drive 0: empty\n\
         slot 1: VT0001L8 label VT0001L8 pool weekly appendable\n\
         slot 2: VT0002L8 label VT0002L8 pool weekly appendable\n\
         slot 3: VT0003L8 label VT0003L8 pool weekly appendable\n"
    );
    // The catalog has each tape under the uuid its label got, and its slot.
    let tapes = l.catalog().tapes().unwrap();
    assert_eq!(tapes.len(), 3);
    for (i, t) in tapes.iter().enumerate() {
        assert_eq!(t.uuid, uuid_in(lines[i]));
        assert_eq!(t.barcode.as_deref(), Some(t.name.as_str()));
        assert_eq!((t.pool.as_str(), t.block_size), ("weekly", BS as u64));
        assert_eq!(t.slot, Some(i as u32 + 1));
        assert!(!t.full);
    }
    // Each cartridge starts with that label, at the destination's block size.
    let lib = l.library();
    lib.changer().load(3, 0).unwrap();
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    let label = sparsebak::tape::label::TapeLabel::read(&mut d).unwrap();
    assert_eq!(label.uuid_string(), tapes[2].uuid);
    assert_eq!(
        (label.name.as_str(), label.pool.as_str()),
        ("VT0003L8", "weekly")
    );
    drop(d);
    lib.changer().unload(0, None).unwrap();
    drop(lib);
    // Labelling all again skips every tape: they are labelled.
    let again = l.tape(&["label", "--all"]);
    assert!(
        again.starts_with("slot 1 (VT0001L8): skipped: already labelled VT0001L8 in pool weekly\n"),
        "{again}"
    );
    assert!(
        again.ends_with("0 tape(s) labelled in pool weekly, 3 skipped\n"),
        "{again}"
    );
    assert_eq!(l.catalog().tapes().unwrap(), tapes);
}

#[test]
fn status_after_load_unload_and_eject() {
    let l = Lib::new();
    let drive = format!("drive: virtual:{}/vtl drive 0\n", l.dir.path().display());
    assert_eq!(l.tape(&["status"]), format!("{drive}tape: none loaded\n"));
    assert_eq!(
        l.tape(&["load", "2"]),
        "slot 2 (VT0002L8) loaded into drive 0\n"
    );
    assert_eq!(
        l.tape(&["status"]),
        format!(
            "{drive}tape: VT0002L8 from slot 2\nlabel: none (blank tape)\n\
             position: file 0, block 0 (logical block 0), at the beginning (BOT), at the \
             end of data (EOD)\nblock size: 65536 (destination vt: 65536)\nflags: BOT EOD ONLINE\n"
        )
    );
    let labelled = l.tape(&["label", "--pool=daily"]);
    let uuid = uuid_in(&labelled);
    assert_eq!(
        labelled,
        format!("slot 2 (VT0002L8): labelled VT0002L8 in pool daily (uuid {uuid})\n")
    );
    // After labelling the tape is at the start of file 1; status reads the label and
    // leaves it there.
    let status = format!(
        "{drive}tape: VT0002L8 from slot 2\n\
         label: VT0002L8 pool daily uuid {uuid} blocks of 65536 bytes, in the catalog \
         (appendable)\n\
         position: file 1, block 0 (logical block 2), at the end of data (EOD)\n\
         block size: 65536 (destination vt: 65536)\nflags: EOF EOD ONLINE\n"
    );
    assert_eq!(l.tape(&["status"]), status);
    assert_eq!(l.tape(&["status"]), status);
    // A full drive takes no other tape until it is unloaded.
    let e = l.tape_fails(&["load", "1"]);
    assert!(e.ends_with("drive 0 already holds VT0002L8"), "{e}");
    assert_eq!(
        l.tape(&["unload"]),
        "drive 0: VT0002L8 unloaded into slot 2\n"
    );
    assert_eq!(l.tape(&["status"]), format!("{drive}tape: none loaded\n"));
    let e = l.tape_fails(&["unload"]);
    assert!(e.ends_with("drive 0: no tape in the drive"), "{e}");
    l.tape(&["load", "3"]);
    assert_eq!(
        l.tape(&["eject"]),
        "drive 0: VT0003L8 ejected into slot 3\n"
    );
    assert!(l.tape(&["inventory"]).starts_with("drive 0: empty\n"));
    // Labelling another slot's tape puts the loaded one back first.
    l.tape(&["load", "1"]);
    let out = l.tape(&["label", "--slot=3"]);
    assert!(
        out.starts_with("slot 3 (VT0003L8): labelled VT0003L8 in pool weekly"),
        "{out}"
    );
    let inv = l.tape(&["inventory"]);
    assert!(
        inv.starts_with(
            "drive 0: VT0003L8 label VT0003L8 pool weekly appendable (from slot 3)\n\
             slot 1: VT0001L8 (not labelled in the catalog)\n"
        ),
        "{inv}"
    );
    let e = l.tape_fails(&["load", "9"]);
    assert!(e.ends_with("no slot 9 (slots are 1 to 3)"), "{e}");
}

#[test]
fn label_refuses_a_labelled_tape_without_force() {
    let l = Lib::new();
    let first = l.tape(&["label", "--slot=1"]);
    let uuid = uuid_in(&first);
    let e = l.tape_fails(&["label"]);
    assert_eq!(
        e,
        format!(
            "sparsebak: error: slot 1 (VT0001L8) is already labelled VT0001L8 in pool weekly \
             (uuid {uuid}); `tape label --force` labels it again, and what is on it is lost"
        )
    );
    let e = l.tape_fails(&["label", "--slot=1", "--name=OTHER", "--pool=p2"]);
    assert!(e.contains("is already labelled VT0001L8"), "{e}");
    // Nothing changed: the same label, the same catalog row.
    let tapes = l.catalog().tapes().unwrap();
    assert_eq!(tapes.len(), 1);
    assert_eq!(tapes[0].uuid, uuid);
    // --force labels it again: a new uuid, the old row replaced.
    let again = l.tape(&["label", "--force", "--pool=p2"]);
    let new_uuid = uuid_in(&again);
    assert_ne!(new_uuid, uuid);
    let tapes = l.catalog().tapes().unwrap();
    assert_eq!(tapes.len(), 1);
    assert_eq!(
        (tapes[0].uuid.as_str(), tapes[0].pool.as_str()),
        (new_uuid.as_str(), "p2")
    );
    // A tape holding something else than a label is not blank either.
    {
        let lib = l.library();
        lib.changer().unload(0, None).unwrap();
        lib.changer().load(2, 0).unwrap();
        let mut d = lib.drive();
        d.set_block_size(BS).unwrap();
        d.write_block(&vec![0x55; BS]).unwrap();
        d.write_filemark(1).unwrap();
    }
    let e = l.tape_fails(&["label"]);
    assert!(
        e.starts_with(
            "sparsebak: error: slot 2 (VT0002L8) is not blank and holds no label this \
             destination reads ("
        ),
        "{e}"
    );
    assert!(
        e.ends_with("`tape label --force` labels it, and what is on it is lost"),
        "{e}"
    );
    // --all skips it too, and labels the blank one.
    l.tape(&["unload"]);
    let all = l.tape(&["label", "--all", "--pool=p2"]);
    assert!(
        all.contains("slot 2 (VT0002L8): skipped: not blank ("),
        "{all}"
    );
    assert!(
        all.contains("slot 3 (VT0003L8): labelled VT0003L8 in pool p2"),
        "{all}"
    );
    assert!(
        all.ends_with("1 tape(s) labelled in pool p2, 2 skipped\n"),
        "{all}"
    );
    // A name is needed where no barcode is known; a bad one is refused.
    let e = l.tape_fails(&["label", "--slot=2", "--force", "--name=has space"]);
    assert!(e.contains("tape label name \"has space\""), "{e}");
}

/// Write `files` tape files after the label of the tape in slot 1: file `i` has
/// `sizes[i]` blocks, the first one `first[i]` when given.
fn write_files(l: &Lib, sizes: &[usize], first: &[Vec<u8>]) {
    let lib = l.library();
    let mut d = lib.drive();
    d.set_block_size(BS).unwrap();
    d.eod().unwrap();
    for (i, n) in sizes.iter().enumerate() {
        for b in 0..*n {
            let block = match first.get(i) {
                Some(f) if b == 0 => f.clone(),
                _ => vec![i as u8 + 1; BS],
            };
            d.write_block(&block).unwrap();
        }
        d.write_filemark(1).unwrap();
    }
}

#[test]
fn fsf_bsf_eod_and_retension_positions() {
    let l = Lib::new();
    l.tape(&["label", "--slot=1"]);
    // Label (block 0, filemark 1), then files of 3, 2 and 1 blocks.
    write_files(&l, &[3, 2, 1], &[]);
    let pos = |file: u32, block: u32, logical: u32, tail: &str| {
        format!("position: file {file}, block {block} (logical block {logical}){tail}\n")
    };
    let bot = ", at the beginning (BOT)";
    let eod = ", at the end of data (EOD)";
    assert_eq!(l.tape(&["rewind"]), pos(0, 0, 0, bot));
    assert_eq!(l.tape(&["fsf", "2"]), pos(2, 0, 6, ""));
    // Each run finds the tape where the last one left it.
    assert_eq!(l.tape(&["fsf", "1"]), pos(3, 0, 9, ""));
    assert_eq!(l.tape(&["bsf", "1"]), pos(2, 2, 8, ""));
    // Just before filemark 8, that one is not passed: back over 5 and 1.
    assert_eq!(l.tape(&["bsf", "2"]), pos(0, 1, 1, ""));
    assert_eq!(l.tape(&["eod"]), pos(4, 0, 11, eod));
    let e = l.tape_fails(&["fsf", "1"]);
    assert!(
        e.ends_with("spacing forward 1 filemarks: end of data"),
        "{e}"
    );
    l.tape(&["rewind"]);
    let e = l.tape_fails(&["bsf", "1"]);
    assert!(
        e.ends_with("spacing back 1 filemarks: beginning of tape"),
        "{e}"
    );
    // N is at least 1.
    let o = l.run(&["--dest=vt", "tape", "fsf", "0"]);
    assert_eq!(o.status.code(), Some(2));
    // Retension: rewind, wind to the end, rewind; it ends at the beginning.
    l.tape(&["eod"]);
    assert_eq!(
        l.tape(&["retension"]),
        format!(
            "retensioned: rewound, wound to the end of the data, rewound\n{}",
            pos(0, 0, 0, bot)
        )
    );
    assert!(l
        .tape(&["status"])
        .contains("position: file 0, block 0 (logical block 0), at the beginning (BOT)\n"));
}

#[test]
fn ls_lists_the_files_of_the_loaded_tape() {
    let l = Lib::new();
    let blank = l.tape(&["load", "1"]);
    assert_eq!(blank, "slot 1 (VT0001L8) loaded into drive 0\n");
    assert_eq!(l.tape(&["ls"]), "the tape is blank\n");
    let labelled = l.tape(&["label"]);
    let uuid = uuid_in(&labelled);
    // A real stream of volume v, in blocks of the tape's size, as file 1.
    let stream = l.dir.path().join("v.stream");
    let o = l.run(&[
        "send",
        "--stream",
        stream.to_str().unwrap(),
        "--block-size=64K",
        "v",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&stream).unwrap();
    assert_eq!(bytes.len() % BS, 0);
    let session = {
        let text = &bytes[512..1024];
        let text = String::from_utf8_lossy(text);
        let at = text.find("session=").unwrap() + "session=".len();
        text[at..at + 15].to_string()
    };
    {
        let lib = l.library();
        let mut d = lib.drive();
        d.set_block_size(BS).unwrap();
        d.eod().unwrap();
        for b in bytes.chunks(BS) {
            d.write_block(b).unwrap();
        }
        d.write_filemark(1).unwrap();
    }
    let stream_blocks = bytes.len() / BS;
    // Then a file that is no stream, and the catalog's word on it.
    write_files(&l, &[2], &[vec![0x42; BS]]);
    let mut cat = l.catalog();
    cat.add_tape_file(
        &sparsebak::catalog::TapeFileRecord {
            tape: uuid.clone(),
            file_number: 2,
            dest: "vt".into(),
            volume: "w".into(),
            session: "20260101-000000".into(),
            part: 0,
            first_block: 3 + stream_blocks as u64,
            blocks: 2,
            bytes: 2 * BS as u64,
            sha256: [0; 32],
            stream_id: "x".into(),
            stream_bytes: 2 * BS as u64,
            stream_sha256: [0; 32],
        },
        1,
    )
    .unwrap();
    drop(cat);
    assert_eq!(
        l.tape(&["ls"]),
        format!(
            "tape VT0001L8 pool weekly uuid {uuid} blocks of 65536 bytes\n\
             file 1: first block 2, {stream_blocks} blocks ({} bytes): volume v session \
             {session} (full)\n\
             file 2: first block {}, 2 blocks (131072 bytes): not a sparsebak stream; \
             catalog: vt volume w session 20260101-000000 part 0\n",
            bytes.len(),
            3 + stream_blocks
        )
    );
}

#[test]
fn archive_commands_say_a_tape_destination_is_not_theirs() {
    let l = Lib::new();
    let vtl = format!("virtual:{}/vtl", l.dir.path().display());
    for (args, name) in [
        (vec!["--dest=vt", "diff", "--session=latest", "v"], "diff"),
        (vec!["--dest=vt", "repair", "v"], "repair"),
        (vec!["--dest=vt", "delete", "v"], "delete"),
        (vec!["--dest=vt", "resync", "v"], "resync"),
    ] {
        assert_eq!(
            l.fails(&args),
            format!(
                "sparsebak: error: destination vt is a tape (tape = {vtl}): `{name}` works on \
                 archives, not on tape destinations; `send`, `receive`, `verify`, `list`, \
                 `prune` and `sparsebak tape` work on tapes"
            ),
            "{args:?}"
        );
    }
    // Nothing was made for it: no library, no archive.
    assert!(!l.dir.path().join("vtl").exists());
    assert!(!l.dir.path().join("archive").exists());
    // send --dest=all sends to the archive and skips the tape, saying why.
    let o = l.run(&["--dest=all", "send"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "sparsebak: destination vt skipped: it is a tape (tape = {vtl}); a tape set is \
             written on its own, with --dest=vt"
        )),
        "{err}"
    );
    assert!(l.dir.path().join("archive/v").is_dir());
    let o = l.run(&["-v", "--dest=all", "send"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("send --dest=all: sent to default; skipped (tape): vt"),
        "{err}"
    );
    // The archive destination restores as ever beside a tape destination.
    let out = l.dir.path().join("restored");
    let o = l.run(&["-u", "receive", "--save-to", out.to_str().unwrap(), "v"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(std::fs::read(&out).unwrap() == std::fs::read(l.dir.path().join("img/v")).unwrap());
    // `tape` on an archive destination.
    assert_eq!(
        l.fails(&["tape", "status"]),
        "sparsebak: error: destination default is not a tape destination: `sparsebak tape` \
         needs a [dest:NAME] section with tape = /dev/nstN or virtual:DIR (name it with \
         --dest=NAME)"
    );
    // With only tape destinations nothing is backed up, and that is a failure.
    let text = std::fs::read_to_string(&l.config).unwrap();
    let only_tape = text.replace(
        &format!("destdir = {}/archive\n", l.dir.path().display()),
        "",
    );
    assert_ne!(only_tape, text);
    std::fs::write(&l.config, only_tape).unwrap();
    let o = l.run(&["--dest=all", "send"]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.ends_with(
            "sparsebak: error: send --dest=all: no destination is present, nothing was sent; \
             skipped (tape): vt\n"
        ),
        "{err}"
    );
}

#[test]
fn a_tape_of_another_block_size_is_named_as_such() {
    let l = Lib::new();
    let uuid = uuid_in(&l.tape(&["label", "--slot=1"]));
    let text = std::fs::read_to_string(&l.config).unwrap();
    std::fs::write(
        &l.config,
        text.replace("blocksize = 64K", "blocksize = 32K"),
    )
    .unwrap();
    let why = format!(
        "virtual:{}/vtl drive 0: the tape was labelled with blocks of 65536 bytes but the \
         drive is set to 32768 bytes",
        l.dir.path().display()
    );
    let status = l.tape(&["status"]);
    assert!(
        status.contains(&format!("\nlabel: unreadable: {why}\n")),
        "{status}"
    );
    assert!(
        status.contains("\nblock size: 32768 (destination vt: 32768)\n"),
        "{status}"
    );
    assert_eq!(
        l.tape_fails(&["ls"]),
        format!("sparsebak: error: cannot list the tape: {why}")
    );
    let e = l.tape_fails(&["label"]);
    assert!(
        e.contains(&format!(
            "is not blank and holds no label this destination reads ({why})"
        )),
        "{e}"
    );
    // Nothing was written: the label is still there at its own size.
    assert_eq!(l.catalog().tapes().unwrap()[0].uuid, uuid);
    std::fs::write(&l.config, text).unwrap();
    assert!(l
        .tape(&["status"])
        .contains(&format!("uuid {uuid} blocks of 65536 bytes")));
}
