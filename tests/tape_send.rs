//! Volume sessions on a tape destination through the real binary, on a virtual
//! library: several volumes and sessions sent and restored byte for byte (a middle
//! session by block position), a full send spanning three tapes, a damaged block named
//! and nothing restored, `--verify-tape`, `list`, `verify`, `prune` then reuse of the
//! tape, an encrypted destination with no plaintext on the cartridges.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::*;
use sparsebak::catalog::Catalog;

const BS: usize = 65536;

struct Lib {
    dir: TestDir,
    config: PathBuf,
}

impl Lib {
    /// A library of `slots` cartridges of `capacity` bytes, volumes `v` and `w`.
    fn new(slots: u32, capacity: &str, extra: &str) -> Lib {
        Self::sized(slots, capacity, extra, 20 * BS + 100)
    }

    fn sized(slots: u32, capacity: &str, extra: &str, vsize: usize) -> Lib {
        let dir = TestDir::new();
        let p = dir.path();
        std::fs::create_dir(p.join("img")).unwrap();
        std::fs::write(p.join("img/v"), Rng::new(7).bytes(vsize)).unwrap();
        std::fs::write(p.join("img/w"), Rng::new(8).bytes(9 * BS)).unwrap();
        let config = p.join("c.ini");
        std::fs::write(
            &config,
            format!(
                "[var]\nsource = file\nvoldir = {0}/img\ndestdir = {0}/archive\n\
                 metadir = {0}/meta\nchunksize = 64K\n{extra}\
                 [dest:vt]\ntape = virtual:{0}/vtl\nvirtual_slots = {slots}\n\
                 virtual_capacity = {capacity}\nblocksize = 64K\npool = weekly\nbuffer = 1M\n\
                 [volumes]\nv = enable\nw = enable\n",
                p.display()
            ),
        )
        .unwrap();
        Lib { dir, config }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn run(&self, args: &[&str]) -> Output {
        std::process::Command::new(bin())
            .arg("-v")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap() + &String::from_utf8_lossy(&o.stderr)
    }

    /// Standard output of a command that must succeed.
    fn stdout(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Exit 1 and one error line on standard error: that line.
    fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {o:?}");
        let err = String::from_utf8(o.stderr).unwrap();
        let errors: Vec<&str> = err.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {err}");
        errors[0].to_string()
    }

    fn label_all(&self) {
        self.ok(&["--dest=vt", "tape", "label", "--all"]);
    }

    fn image(&self, v: &str) -> Vec<u8> {
        std::fs::read(self.path().join("img").join(v)).unwrap()
    }

    /// Change `n` chunks of volume `v` at chunk `from`, seeded.
    fn change(&self, v: &str, from: usize, n: usize, seed: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path().join("img").join(v))
            .unwrap();
        f.write_all_at(&Rng::new(seed).bytes(n * BS), (from * BS) as u64)
            .unwrap();
    }

    fn receive(&self, v: &str, session: Option<&str>) -> Vec<u8> {
        let out = self.path().join(format!("restored-{v}"));
        let _ = std::fs::remove_file(&out);
        let mut args = vec![
            "--dest=vt".to_string(),
            "receive".into(),
            format!("--save-to={}", out.display()),
            v.into(),
        ];
        if let Some(s) = session {
            args.push(format!("--session={s}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&a);
        std::fs::read(&out).unwrap()
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.path().join("meta/catalog.sqlite")).unwrap()
    }

    /// The sessions of `v` on the tape destination, oldest first.
    fn sessions(&self, v: &str) -> Vec<String> {
        let c = self.catalog();
        let d = c.destination("tape", "vt").unwrap();
        c.chain(d, v)
            .unwrap()
            .into_iter()
            .map(|s| s.session)
            .collect()
    }

    fn cartridge(&self, barcode: &str) -> PathBuf {
        self.path()
            .join("vtl/cartridges")
            .join(format!("{barcode}.vtape"))
    }
}

#[test]
fn sessions_of_two_volumes_restore_byte_for_byte_a_middle_one_by_block_position() {
    let l = Lib::new(2, "64M", "encrypt = off\n");
    l.label_all();
    let mut images = Vec::new();
    for round in 0..3 {
        if round > 0 {
            l.change("v", round * 3, 2, 100 + round as u64);
            l.change("w", round, 1, 200 + round as u64);
        }
        images.push((l.image("v"), l.image("w")));
        let out = l.ok(&["--dest=vt", "send"]);
        let kind = if round == 0 { "full" } else { "incremental" };
        assert!(out.contains("v to vt: session "), "{out}");
        assert!(out.contains(kind), "{out}");
        assert!(out.contains("on tape VT0001L8 file "), "{out}");
        // Sessions are one second apart at least.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let sv = l.sessions("v");
    assert_eq!(sv.len(), 3);
    assert_eq!(l.sessions("w").len(), 3);
    // Each run: v, w, then a copy of the catalog (not recorded in it).
    let c = l.catalog();
    let t = c.tape_by_name("VT0001L8").unwrap().unwrap();
    let files = c.tape_files(&t.uuid).unwrap();
    assert_eq!(
        files
            .iter()
            .map(|f| (f.file_number, f.volume.as_str(), f.part))
            .collect::<Vec<_>>(),
        [
            (1, "v", 0),
            (2, "w", 0),
            (4, "v", 0),
            (5, "w", 0),
            (7, "v", 0),
            (8, "w", 0)
        ]
    );
    assert_eq!(files[0].first_block, 2);
    drop(c);
    // The middle session, and the latest, of each volume.
    assert!(l.receive("v", Some(&sv[1])) == images[1].0);
    assert!(l.receive("v", None) == images[2].0);
    let sw = l.sessions("w");
    assert!(l.receive("w", Some(&sw[1])) == images[1].1);
    assert!(l.receive("w", Some(&sw[0])) == images[0].1);
    // Selectors work as on an archive.
    assert!(l.receive("w", Some("oldest")) == images[0].1);
    assert!(l.receive("v", Some("latest")) == images[2].0);
    // verify reads the chain back.
    let out = l.ok(&["--dest=vt", "verify", "v"]);
    assert!(
        out.contains(&format!(
            "v: session {} verified from 3 tape file(s)",
            sv[2]
        )),
        "{out}"
    );
    // list says where each session lies.
    let out = l.stdout(&["--dest=vt", "list", "v"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "v");
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].starts_with(&format!("{} size={} ", sv[0], 20 * BS + 100)));
    assert!(
        lines[1].contains("previous=- tape=VT0001L8 file=1 block=2"),
        "{out}"
    );
    assert!(
        lines[2].contains(&format!("previous={} tape=VT0001L8 file=4 ", sv[0])),
        "{out}"
    );
    // `tape ls` tells the copies from the sessions.
    let ls = l.stdout(&["--dest=vt", "tape", "ls"]);
    assert_eq!(ls.matches("a catalog copy (plain").count(), 3, "{ls}");
    // A session that is not there.
    let e = l.fails(&[
        "--dest=vt",
        "receive",
        "--save-to=/dev/null",
        "v",
        "--session=20200101-000000",
    ]);
    assert!(
        e.contains("volume v on tape destination vt: session 20200101-000000 does not exist"),
        "{e}"
    );
}

#[test]
fn a_full_send_spans_three_tapes_and_restores() {
    // 150 chunks of random data (9.4 MiB) on tapes of 4 MiB.
    let l = Lib::sized(4, "4M", "encrypt = off\n", 150 * BS);
    l.label_all();
    let out = l.ok(&["--dest=vt", "send", "v", "--verify-tape"]);
    assert!(out.contains("continued on tape VT0002L8"), "{out}");
    assert!(out.contains("continued on tape VT0003L8"), "{out}");
    assert!(out.contains("read back from tape"), "{out}");
    let c = l.catalog();
    let s = &l.sessions("v")[0];
    let parts = c.session_tape_files("vt", "v", s).unwrap();
    assert_eq!(parts.len(), 3);
    let names: Vec<String> = parts
        .iter()
        .map(|p| c.tape(&p.tape).unwrap().unwrap().name)
        .collect();
    assert_eq!(names, ["VT0001L8", "VT0002L8", "VT0003L8"]);
    // The tapes filled are full; the last one takes more.
    assert!(c.tape_by_name("VT0001L8").unwrap().unwrap().full);
    assert!(c.tape_by_name("VT0002L8").unwrap().unwrap().full);
    assert!(!c.tape_by_name("VT0003L8").unwrap().unwrap().full);
    drop(c);
    assert!(l.receive("v", None) == l.image("v"));
    // The next volume goes to the tape still appendable, after what is there (the
    // rest of v, then the run's catalog copy).
    l.ok(&["--dest=vt", "send", "w"]);
    let c = l.catalog();
    let p = c
        .session_tape_files("vt", "w", &l.sessions("w")[0])
        .unwrap();
    assert_eq!(c.tape(&p[0].tape).unwrap().unwrap().name, "VT0003L8");
    assert_eq!(p[0].file_number, 3);
    drop(c);
    assert!(l.receive("w", None) == l.image("w"));
}

/// The byte offset in a cartridge file of the block at `position` of file 1 (one
/// filemark, the label's, before it): see docs/FORMAT.md "Virtual tape library".
fn block_offset(position: u64) -> u64 {
    64 + (position - 1) * (8 + BS as u64) + 8 + 8
}

#[test]
fn a_damaged_block_is_named_and_nothing_is_restored() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "v"]);
    let path = l.cartridge("VT0001L8");
    let mut bytes = std::fs::read(&path).unwrap();
    // Data block 3 of file 1 (position 2 + 3).
    let at = block_offset(5) as usize + 500;
    for b in &mut bytes[at..at + 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let out = l.path().join("restored");
    let e = l.fails(&[
        "--dest=vt",
        "receive",
        &format!("--save-to={}", out.display()),
        "v",
    ]);
    assert!(
        e.contains("tape VT0001L8, file 1, block 3 (position 5): damaged"),
        "{e}"
    );
    assert!(!out.exists(), "nothing restored");
    // verify says damage with its own exit status.
    let o = l.run(&["--dest=vt", "verify", "v"]);
    assert_eq!(o.status.code(), Some(4), "{o:?}");
    let e = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        e.contains("tape VT0001L8, file 1, block 3 (position 5): damaged"),
        "{e}"
    );
    // The verify's result is kept, and status says it.
    let record = std::fs::read_to_string(l.path().join("meta/v/dest/vt/last-verify")).unwrap();
    assert!(record.contains("\nresult damaged\n"), "{record}");
    let o = l.run(&["status"]);
    assert_eq!(o.status.code(), Some(4));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.starts_with("sparsebak: status: volume v on destination vt: the last verify (session "),
        "{e}"
    );
}

#[test]
fn prune_forgets_whole_chains_and_a_tape_with_nothing_left_is_reused() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "v"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    l.change("v", 0, 1, 5);
    l.ok(&["--dest=vt", "send", "v"]);
    let sv = l.sessions("v");
    // One session of a chain alone is refused: the other builds on it.
    let e = l.fails(&["--dest=vt", "prune", "v", &format!("--session={}", sv[0])]);
    assert!(
        e.contains(&format!(
            "session {} cannot be forgotten alone: session(s) {} build on it",
            sv[0], sv[1]
        )),
        "{e}"
    );
    assert_eq!(l.sessions("v").len(), 2);
    let c = l.catalog();
    let t = c.tape_by_name("VT0001L8").unwrap().unwrap();
    c.set_tape_full(&t.uuid, true).unwrap();
    drop(c);
    let out = l.ok(&["--dest=vt", "prune", "v", "--all-before=2999-01-01"]);
    assert!(
        out.contains("v: 2 session(s) forgotten on tape destination vt"),
        "{out}"
    );
    assert!(
        out.contains("tape VT0001L8: every session on it is forgotten"),
        "{out}"
    );
    assert!(l.sessions("v").is_empty());
    // The next send is full, on the same tape labelled anew, from file 1.
    let out = l.ok(&["--dest=vt", "send", "v"]);
    assert!(out.contains("full"), "{out}");
    let c = l.catalog();
    let t2 = c.tape_by_name("VT0001L8").unwrap().unwrap();
    assert_ne!(t2.uuid, t.uuid, "labelled anew");
    let files = c.tape_files(&t2.uuid).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!((files[0].file_number, files[0].first_block), (1, 2));
    drop(c);
    assert!(l.receive("v", None) == l.image("v"));
}

#[test]
fn an_encrypted_tape_destination_holds_no_plaintext() {
    let l = Lib::new(1, "64M", "");
    let pass = l.path().join("pass");
    std::fs::write(&pass, "tape words\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = std::fs::read_to_string(&l.config).unwrap();
    std::fs::write(
        &l.config,
        c.replacen(
            "[var]\n",
            &format!("[var]\npassfile = {}\n", pass.display()),
            1,
        ),
    )
    .unwrap();
    l.label_all();
    l.ok(&["--dest=vt", "send"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    l.change("v", 2, 1, 9);
    l.ok(&["--dest=vt", "send", "v"]);
    // One key file for the destination.
    assert!(l.path().join("meta/@tape/vt/sparsebak.key").is_file());
    let tape = std::fs::read(l.cartridge("VT0001L8")).unwrap();
    let v = l.image("v");
    for needle in [
        &v[BS..BS + 32],
        &l.image("w")[..32],
        l.sessions("v")[0].as_bytes(),
    ] {
        assert!(
            !tape.windows(needle.len()).any(|w| w == needle),
            "plaintext {:?} found on the tape",
            String::from_utf8_lossy(&needle[..needle.len().min(24)])
        );
    }
    assert!(l.receive("v", None) == v);
    assert!(l.receive("w", None) == l.image("w"));
    // A wrong passphrase is one clear line.
    std::fs::write(&pass, "other words\n").unwrap();
    let e = l.fails(&["--dest=vt", "verify", "v"]);
    assert!(e.contains("passphrase"), "{e}");
}

#[test]
fn a_tape_of_another_block_size_is_refused_naming_both_sizes() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "w"]);
    let c = std::fs::read_to_string(&l.config).unwrap();
    std::fs::write(&l.config, c.replace("blocksize = 64K", "blocksize = 32K")).unwrap();
    // The tape in the drive is refused, naming both sizes.
    let e = l.fails(&["--dest=vt", "send", "w"]);
    assert!(
        e.contains(
            "the tape was labelled with blocks of 65536 bytes but the drive is set to \
             32768 bytes; destination vt writes blocks of 32768 bytes (blocksize)"
        ),
        "{e}"
    );
    // What is on it still reads back at its own block size (the catalog knows it).
    l.ok(&["--dest=vt", "verify", "w"]);
}

#[test]
fn a_send_killed_on_the_way_leaves_the_tape_and_the_catalog_usable() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "w"]);
    // Killed in the middle of the tape file, then after the tape file is whole but
    // before the chain records the session.
    for point in ["tape-mid-file", "stream-before-record"] {
        let o = std::process::Command::new(bin())
            .args(["-c", l.config.to_str().unwrap(), "--dest=vt", "send", "v"])
            .env("SPARSEBAK_FAILPOINT", point)
            .output()
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(9),
            "{point}: {o:?}"
        );
        assert!(l.sessions("v").is_empty(), "{point}");
    }
    let out = l.ok(&["--dest=vt", "send", "v"]);
    assert!(out.contains("full"), "{out}");
    let c = l.catalog();
    let sv = l.sessions("v");
    assert_eq!(sv.len(), 1);
    let p = c.session_tape_files("vt", "v", &sv[0]).unwrap();
    // w is file 1 and the catalog copy file 2; the cut file 3 was closed; the whole
    // but unrecorded one is file 4.
    assert_eq!(p[0].file_number, 5, "{p:?}");
    drop(c);
    assert!(l.receive("v", None) == l.image("v"));
    assert!(l.receive("w", None) == l.image("w"));
    let ls = l.stdout(&["--dest=vt", "tape", "ls"]);
    assert!(ls.contains("file 5: "), "{ls}");
    assert!(ls.contains("file 6: first block"), "{ls}");
}

#[test]
fn without_an_appendable_tape_send_says_what_to_do() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    let e = l.fails(&["--dest=vt", "send", "v"]);
    assert!(
        e.contains("holds no appendable tape of pool weekly: label new ones (`sparsebak tape label --all --dest=vt`)"),
        "{e}"
    );
    let e = l.fails(&["--dest=vt", "receive", "--save-to=/dev/null", "v"]);
    assert!(
        e.contains("volume v has no session on tape destination vt"),
        "{e}"
    );
}

#[test]
fn a_tape_whose_files_the_catalog_does_not_know_is_never_labelled_anew() {
    let l = Lib::new(1, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "w"]);
    // The catalog loses the tape's files (not a prune: a lost or partial catalog).
    let c = l.catalog();
    let t = c.tape_by_name("VT0001L8").unwrap().unwrap();
    for f in c.tape_files(&t.uuid).unwrap() {
        c.forget_session_tape_files("vt", &f.volume, &f.session)
            .unwrap();
    }
    drop(c);
    let before = std::fs::read(l.cartridge("VT0001L8")).unwrap();
    l.ok(&["--dest=vt", "send", "v"]);
    let after = std::fs::read(l.cartridge("VT0001L8")).unwrap();
    // Appended after what was there, not written over it.
    assert!(after.len() > before.len());
    assert_eq!(after[..before.len() - 64], before[..before.len() - 64]);
    let c = l.catalog();
    assert_eq!(c.tape_by_name("VT0001L8").unwrap().unwrap().uuid, t.uuid);
    let files = c.tape_files(&t.uuid).unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(
        files[0].file_number, 3,
        "after w (1) and its run's catalog copy (2)"
    );
}

#[test]
fn running_out_of_tapes_records_the_full_one_and_the_next_send_takes_another() {
    // v is 150 chunks of random data (9.4 MiB) on tapes of 4 MiB.
    let l = Lib::sized(4, "4M", "encrypt = off\n", 150 * BS);
    l.ok(&["--dest=vt", "tape", "label", "--slot=1"]);
    let e = l.fails(&["--dest=vt", "send", "-u", "v", "w"]);
    assert!(
        e.contains("tape VT0001L8 is full and no next tape can be loaded")
            && e.contains("not recorded, so nothing of this stream can be restored")
            && e.contains("(not sent in this run either: w)"),
        "{e}"
    );
    assert!(l.sessions("v").is_empty());
    let c = l.catalog();
    assert!(c.tape_by_name("VT0001L8").unwrap().unwrap().full);
    drop(c);
    // Three more tapes: the send goes on them, not on the full one.
    for slot in ["--slot=2", "--slot=3", "--slot=4"] {
        l.ok(&["--dest=vt", "tape", "label", slot]);
    }
    l.ok(&["--dest=vt", "send", "v"]);
    let c = l.catalog();
    let parts = c
        .session_tape_files("vt", "v", &l.sessions("v")[0])
        .unwrap();
    let names: Vec<String> = parts
        .iter()
        .map(|p| c.tape(&p.tape).unwrap().unwrap().name)
        .collect();
    // The tape left in the drive by the last label first, then the others by name.
    assert_eq!(names, ["VT0004L8", "VT0002L8", "VT0003L8"]);
    drop(c);
    assert!(l.receive("v", None) == l.image("v"));
}

#[test]
fn labelling_a_tape_anew_forgets_the_chains_it_held_and_their_next_send_is_full() {
    let l = Lib::new(2, "64M", "encrypt = off\n");
    l.label_all();
    l.ok(&["--dest=vt", "send", "w"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    l.change("w", 1, 1, 3);
    l.ok(&["--dest=vt", "send", "w"]);
    let sw = l.sessions("w");
    assert_eq!(sw.len(), 2);
    // A name the catalog gives another tape is refused.
    let e = l.fails(&[
        "--dest=vt",
        "tape",
        "label",
        "--slot=2",
        "--force",
        "--name=VT0001L8",
    ]);
    assert!(
        e.contains("the catalog already knows a tape named VT0001L8")
            && e.contains("2 tape file(s)"),
        "{e}"
    );
    let out = l.stdout(&["--dest=vt", "tape", "label", "--slot=1", "--force"]);
    assert!(
        out.contains(&format!(
            "tape VT0001L8: volume w on destination vt loses session(s) {} {}: its chain \
             there (2 session(s)) is forgotten and its next send there is full",
            sw[0], sw[1]
        )),
        "{out}"
    );
    assert!(l.sessions("w").is_empty());
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = l.ok(&["--dest=vt", "send", "w"]);
    assert!(out.contains("full"), "{out}");
    assert!(l.receive("w", None) == l.image("w"));
}

#[test]
fn a_scan_takes_a_new_full_chain_begun_after_the_copy_it_imports() {
    let l = Lib::new(2, "64M", "encrypt = off\n");
    l.label_all();
    // v stays on the tape, so the prune of w does not free it.
    l.ok(&["--dest=vt", "send", "v", "w"]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    l.ok(&["--dest=vt", "prune", "w", "--all-before=2999-01-01"]);
    l.change("w", 0, 2, 11);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    l.ok(&["--dest=vt", "send", "w"]);
    let newest = l.sessions("w");
    assert_eq!(newest.len(), 1);
    // The newest copy (the last file) damaged: the scan imports the first run's.
    let path = l.cartridge("VT0001L8");
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    for b in &mut bytes[n - 2 * BS..n - 2 * BS + 8] {
        *b ^= 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    std::fs::remove_file(l.path().join("meta/catalog.sqlite")).unwrap();
    let out = l.stdout(&["--dest=vt", "tape", "scan", "--all"]);
    assert!(out.contains("begins a new chain"), "{out}");
    assert_eq!(l.sessions("w"), newest, "{out}");
    assert!(l.receive("w", None) == l.image("w"));
    assert!(l.receive("v", None) == l.image("v"));
}
