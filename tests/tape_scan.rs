//! `sparsebak tape scan` and the catalog copy on a virtual library: streams of
//! several volumes and sessions written as tape files (one spanning two tapes) and
//! recorded as a tape destination records them, a catalog copy at the end; the
//! catalog deleted, then rebuilt by the real binary from the tapes: tapes, tape files
//! and chains equal to what was recorded. A sealed copy leaves no plaintext of the
//! catalog on the cartridges; a damaged copy is reported and the sessions are
//! rebuilt from their streams.

mod common;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Output;

use common::*;
use sparsebak::catalog::{Catalog, SentSession, TapeFileRecord, TapeRecord};
use sparsebak::tape::catalog_copy::{restore_catalog_copy, write_catalog_copy};
use sparsebak::tape::changer::Changer;
use sparsebak::tape::drive::TapeDrive;
use sparsebak::tape::label::TapeLabel;
use sparsebak::tape::reader::{ChangerMount, TapeFileReader};
use sparsebak::tape::virtual_library::barcode_for;
use sparsebak::tape::writer::{write_tape_file_from, ChangerNextTape, TapeFile, TapeFileOptions};
use sparsebak_format::crypto::{ArchiveKeys, KdfParams, KeyFile, MasterKey, Passphrase};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::stream::ChainReader;

const BS: usize = 65536;
const POOL: &str = "weekly";
const SLOTS: u32 = 3;
const CAPACITY: u64 = 4 << 20;
/// A volume name found nowhere on the cartridges when everything is sealed.
const SECRET_VOL: &str = "qzvolumex";
const PASS: &str = "tape scan words";

struct Set {
    dir: TestDir,
    config: PathBuf,
    encrypted: bool,
}

/// What was recorded while writing, to compare the rebuilt catalog with.
#[derive(Debug, PartialEq)]
struct Rows {
    tapes: Vec<TapeRecord>,
    files: Vec<TapeFileRecord>,
    chains: Vec<(String, Vec<SentSession>)>,
}

impl Set {
    fn new(encrypted: bool) -> Set {
        let dir = TestDir::new();
        let p = dir.path();
        std::fs::create_dir(p.join("img")).unwrap();
        let crypt = if encrypted {
            let pass = p.join("passfile");
            std::fs::write(&pass, format!("{PASS}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
            format!("passfile = {}\n", pass.display())
        } else {
            "encrypt = off\n".to_string()
        };
        let config = p.join("c.ini");
        std::fs::write(
            &config,
            format!(
                "[var]\nsource = file\nvoldir = {0}/img\ndestdir = {0}/archive\n\
                 metadir = {0}/meta\n{crypt}\
                 [dest:vt]\ntape = virtual:{0}/vtl\nvirtual_slots = {SLOTS}\n\
                 virtual_capacity = {CAPACITY}\nblocksize = 64K\npool = {POOL}\nbuffer = 1M\n\
                 [volumes]\nalpha = enable\n{SECRET_VOL} = enable\n",
                p.display()
            ),
        )
        .unwrap();
        Set {
            dir,
            config,
            encrypted,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        let _spawn = spawning();
        std::process::Command::new(bin())
            .arg("-c")
            .arg(&self.config)
            .arg("-u")
            .args(args)
            .env_remove("SPARSEBAK_PASSPHRASE")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    fn library(&self) -> HeldLibrary {
        HeldLibrary::open(&self.dir.path().join("vtl"), SLOTS, CAPACITY)
    }

    fn catalog_path(&self) -> PathBuf {
        self.dir.path().join("meta/catalog.sqlite")
    }

    fn catalog(&self) -> Catalog {
        Catalog::open(&self.catalog_path()).unwrap()
    }

    fn delete_catalog(&self) {
        for ext in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{ext}", self.catalog_path().display()));
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("{}: {e}", p.display()),
            }
        }
        assert!(!self.catalog_path().exists());
    }

    /// `send --stream` of `vol` with the image `img`: the stream's bytes.
    fn stream(&self, vol: &str, img: &[u8], n: usize) -> Vec<u8> {
        std::fs::write(self.dir.path().join("img").join(vol), img).unwrap();
        let path = self.dir.path().join(format!("{vol}.{n}.stream"));
        self.ok(&["send", vol, &format!("--stream={}", path.display())]);
        std::fs::read(&path).unwrap()
    }

    fn cartridge(&self, slot: u32) -> PathBuf {
        self.dir
            .path()
            .join(format!("vtl/cartridges/{}.vtape", barcode_for(slot)))
    }

    fn rows(&self) -> Rows {
        let cat = self.catalog();
        let dest = cat.destination("tape", "vt").unwrap();
        let mut files = cat.dest_tape_files("vt").unwrap();
        files.sort_by(|a, b| (&a.tape, a.file_number).cmp(&(&b.tape, b.file_number)));
        Rows {
            tapes: cat.tapes().unwrap(),
            files,
            chains: cat
                .volumes(dest)
                .unwrap()
                .into_iter()
                .map(|v| {
                    let c = cat.chain(dest, &v).unwrap();
                    (v, c)
                })
                .collect(),
        }
    }
}

fn uuid_string(uuid: [u8; 16]) -> String {
    TapeLabel {
        name: "x".into(),
        pool: "x".into(),
        uuid,
        block_size: BS,
        written: 0,
    }
    .uuid_string()
}

fn stream_id(rng: &mut Rng) -> String {
    format!("{:016x}{:016x}", rng.next(), rng.next())
}

/// The session a stream carries (read whole, as a scan would).
fn info_of(stream: &[u8], encrypted: bool) -> SessionInfo {
    let mut r = ChainReader::new(None).starting_incremental();
    if encrypted {
        r = r.with_unlock(Box::new(|| Ok(Passphrase::new(PASS.into()))));
    }
    assert_eq!(r.read(stream).unwrap(), 1);
    r.streams()[0].info.clone()
}

/// Record a tape file as a tape destination does.
fn record(cat: &mut Catalog, file: &TapeFile, info: &SessionInfo) {
    let dest = cat.destination("tape", "vt").unwrap();
    cat.record_session(dest, info, file.bytes).unwrap();
    for p in &file.parts {
        cat.add_tape_file(
            &TapeFileRecord {
                tape: uuid_string(p.tape_uuid),
                file_number: p.file_number,
                dest: "vt".into(),
                volume: info.volume.clone(),
                session: info.session.clone(),
                part: p.part - 1,
                first_block: p.first_block,
                blocks: p.data_blocks,
                bytes: p.bytes,
                sha256: p.sha256,
                stream_id: file.id.clone(),
                stream_bytes: file.bytes,
                stream_sha256: file.sha256,
            },
            chrono::Utc::now().timestamp(),
        )
        .unwrap();
    }
    for p in &file.parts[..file.parts.len() - 1] {
        cat.set_tape_full(&uuid_string(p.tape_uuid), true).unwrap();
    }
}

fn opts(id: &str) -> TapeFileOptions {
    TapeFileOptions {
        block_size: BS,
        pool: POOL.into(),
        id: id.into(),
        buffer: 16 * BS,
    }
}

/// The keys of an encrypted tape destination (its one key file).
fn dest_keys() -> (KeyFile, ArchiveKeys) {
    let master = MasterKey::generate().unwrap();
    let id = "4f1c2a9e-0b7d-4c3e-9a51-6d2e8f0a1b3c";
    let kf = KeyFile::wrap(
        id,
        &master,
        &Passphrase::new(PASS.into()),
        KdfParams {
            m_kib: 8192,
            t: 1,
            p: 1,
        },
    )
    .unwrap();
    (kf, ArchiveKeys::derive(&master, id))
}

/// Label the tapes, send alpha three times and the other volume once (a stream
/// longer than a tape's room after alpha's first two), write them in the order
/// alpha 1, alpha 2, other 1 (spanning tapes 1 and 2), alpha 3, record them, and end
/// the set with a catalog copy (sealed with `keys`). Returns the rows recorded and
/// the copy.
fn write_set(set: &Set, keys: Option<&(KeyFile, ArchiveKeys)>) -> (Rows, TapeFile) {
    let out = set.ok(&["--dest=vt", "tape", "label", "--all"]);
    assert!(out.contains("3 tape(s) labelled in pool weekly"), "{out}");
    let mut rng = Rng::new(11);
    let mut alpha = rng.bytes(16 * BS);
    let mut streams = Vec::new();
    streams.push(set.stream("alpha", &alpha, 1));
    rng.fill(&mut alpha[2 * BS..3 * BS]);
    streams.push(set.stream("alpha", &alpha, 2));
    let other = rng.bytes(70 * BS);
    streams.push(set.stream(SECRET_VOL, &other, 1));
    rng.fill(&mut alpha[9 * BS..10 * BS]);
    streams.push(set.stream("alpha", &alpha, 3));
    let infos: Vec<SessionInfo> = streams.iter().map(|s| info_of(s, set.encrypted)).collect();

    let lib = set.library();
    let mut cat = set.catalog();
    let mut drive = lib.drive();
    lib.changer().load(1, 0).unwrap();
    drive.set_block_size(BS).unwrap();
    let mut next = ChangerNextTape {
        changer: lib.changer(),
        drive_number: 0,
        barcodes: VecDeque::from([barcode_for(2), barcode_for(3)]),
    };
    let mut files = Vec::new();
    for (s, info) in streams.iter().zip(&infos) {
        let (file, _) = write_tape_file_from(
            &mut drive,
            &mut next,
            &opts(&stream_id(&mut rng)),
            &mut &s[..],
        )
        .unwrap();
        record(&mut cat, &file, info);
        files.push(file);
    }
    let tapes: Vec<Vec<&str>> = files
        .iter()
        .map(|f| f.parts.iter().map(|p| p.tape.as_str()).collect())
        .collect();
    assert_eq!(
        tapes,
        [
            vec!["VT0001L8"],
            vec!["VT0001L8"],
            vec!["VT0001L8", "VT0002L8"],
            vec!["VT0002L8"]
        ]
    );
    let copy = write_catalog_copy(
        &mut drive,
        &mut next,
        &opts(&stream_id(&mut rng)),
        &set.catalog_path(),
        keys.map(|(k, a)| (k, a)),
    )
    .unwrap();
    assert_eq!(copy.parts.len(), 1);
    assert_eq!(copy.parts[0].tape, "VT0002L8");
    // The copy reads back into a catalog holding what was recorded.
    let mut mount = ChangerMount {
        changer: lib.changer(),
        drive_number: 0,
    };
    let mut r = TapeFileReader::new(&mut drive, &mut mount, copy.clone()).unwrap();
    let restored = set.dir.path().join("restored.sqlite");
    let (header, key_file) = restore_catalog_copy(&mut r, &restored, &mut |kf| {
        kf.unlock(&Passphrase::new(PASS.into()))
            .map_err(|e| e.to_string())
    })
    .unwrap();
    assert_eq!(header.sealed, keys.is_some());
    assert_eq!(key_file.as_ref(), keys.map(|k| &k.0));
    assert_eq!(header.id, copy.id);
    let back = Catalog::open(&restored).unwrap();
    assert_eq!(back.dest_tape_files("vt").unwrap().len(), 5);
    drop(r);
    drop(drive);
    drop(cat);
    drop(lib);
    (set.rows(), copy)
}

/// The scan's standard output.
fn scan(set: &Set) -> String {
    set.ok(&["--dest=vt", "tape", "scan", "--all"])
}

#[test]
fn a_deleted_catalog_is_rebuilt_from_the_newest_copy() {
    let set = Set::new(false);
    let (recorded, copy) = write_set(&set, None);
    assert_eq!(recorded.files.len(), 5);
    assert_eq!(recorded.chains.len(), 2);
    assert_eq!(recorded.chains[0].1.len(), 3);
    assert!(recorded.tapes[0].full && !recorded.tapes[1].full);
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains(&format!("imported catalog copy {}: 4 session(s)", copy.id)),
        "{out}"
    );
    assert!(!out.contains("problem"), "{out}");
    assert!(
        out.contains(
            "3 tape(s) scanned, 3 added to the catalog; 5 tape file(s) and 4 session(s) added"
        ),
        "{out}"
    );
    let rebuilt = set.rows();
    assert_eq!(rebuilt, recorded);
    // A second scan adds nothing.
    let out = scan(&set);
    assert!(
        out.contains(
            "3 tape(s) scanned, 0 added to the catalog; 0 tape file(s) and 0 session(s) added"
        ),
        "{out}"
    );
    assert_eq!(set.rows(), recorded);
}

/// The cartridge file holding `magic`, and where.
fn find(set: &Set, what: &[u8]) -> Vec<(u32, usize)> {
    let mut at = Vec::new();
    for slot in 1..=SLOTS {
        let bytes = std::fs::read(set.cartridge(slot)).unwrap();
        at.extend(
            bytes
                .windows(what.len())
                .enumerate()
                .filter(|(_, w)| *w == what)
                .map(|(i, _)| (slot, i)),
        );
    }
    at
}

#[test]
fn a_damaged_copy_is_reported_and_the_streams_are_read_instead() {
    let set = Set::new(false);
    let (recorded, copy) = write_set(&set, None);
    // Flip bytes in the snapshot, after the copy's header.
    let at = find(&set, b"SPBKCATC");
    assert_eq!(at.len(), 1, "{at:?}");
    let (slot, off) = at[0];
    let path = set.cartridge(slot);
    let mut bytes = std::fs::read(&path).unwrap();
    for b in &mut bytes[off + 4000..off + 4008] {
        *b ^= 0x55;
    }
    std::fs::write(&path, &bytes).unwrap();
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains(&format!(
            "problem: tape VT0002L8 file 3: catalog copy {}: tape VT0002L8, file 3, block 0 (position 42): damaged: its bytes do not match the digest the part trailer holds; not imported (an older copy, else the streams, read instead)",
            copy.id
        )),
        "{out}"
    );
    assert!(
        out.contains("not imported (an older copy, else the streams, read instead)"),
        "{out}"
    );
    assert!(out.contains("no catalog copy imported"), "{out}");
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("rebuilt from its stream"))
            .count(),
        4,
        "{out}"
    );
    assert!(
        out.contains(
            "3 tape(s) scanned, 3 added to the catalog; 5 tape file(s) and 4 session(s) added"
        ),
        "{out}"
    );
    let rebuilt = set.rows();
    assert_eq!(rebuilt.files, recorded.files);
    assert_eq!(rebuilt.chains, recorded.chains);
    // The tapes as recorded, but for when they were last written: the time of the
    // newest session on each (the tapes do not say when they were written).
    let newest = |uuid: &str| {
        let files = rebuilt.files.iter().filter(|f| f.tape == uuid);
        files
            .filter_map(|f| {
                rebuilt
                    .chains
                    .iter()
                    .flat_map(|(_, c)| c.iter())
                    .find(|s| s.session == f.session)
                    .map(|s| s.time)
            })
            .max()
    };
    let expect: Vec<TapeRecord> = recorded
        .tapes
        .iter()
        .map(|t| TapeRecord {
            last_written: newest(&t.uuid),
            ..t.clone()
        })
        .collect();
    assert_eq!(rebuilt.tapes, expect);
    assert!(rebuilt.tapes[0].last_written.is_some() && rebuilt.tapes[2].last_written.is_none());
}

#[test]
fn a_sealed_copy_leaves_no_plaintext_and_imports_with_the_passphrase() {
    let set = Set::new(true);
    let keys = dest_keys();
    let (recorded, copy) = write_set(&set, Some(&keys));
    // The copy is there, with the key file; neither the volume name nor the
    // catalog's own text is.
    assert_eq!(find(&set, b"SPBKCATC").len(), 1);
    assert_eq!(find(&set, keys.0.render().as_bytes()).len(), 1);
    assert_eq!(find(&set, SECRET_VOL.as_bytes()), []);
    assert_eq!(find(&set, b"CREATE TABLE tape_files"), []);
    let key_path = set.dir.path().join("meta/@tape/vt/sparsebak.key");
    assert!(!key_path.exists());
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains(&format!("imported catalog copy {}: 4 session(s)", copy.id)),
        "{out}"
    );
    assert_eq!(set.rows(), recorded);
    // The destination's key file comes back from the copy.
    assert!(
        out.contains(&format!(
            "the destination's key file was missing: restored at {} from the tapes",
            key_path.display()
        )),
        "{out}"
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), keys.0.render());

    // With a wrong passphrase the scan stops at the copy, recording nothing: tapes
    // recorded as holding nothing could be taken for empty ones.
    set.delete_catalog();
    std::fs::write(set.dir.path().join("passfile"), "wrong words\n").unwrap();
    let o = set.run(&["--dest=vt", "tape", "scan", "--all"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "tape VT0002L8 file 3: catalog copy {} is sealed and cannot be opened: wrong \
             passphrase",
            copy.id
        )) && err.contains("the scan stopped: give the destination's passphrase"),
        "{err}"
    );
    assert!(set.rows().tapes.is_empty());
}

#[test]
fn a_plain_copy_holds_the_catalog_as_it_is() {
    // The control of the sealed test: unsealed, the names are on the cartridges.
    let set = Set::new(false);
    let (recorded, copy) = write_set(&set, None);
    assert!(!find(&set, SECRET_VOL.as_bytes()).is_empty());
    // `tape ls` of the second tape (left in the drive) names the continuation and
    // the copy.
    let out = set.ok(&["--dest=vt", "tape", "ls"]);
    let spanning = &recorded
        .files
        .iter()
        .find(|f| f.part == 1)
        .unwrap()
        .stream_id;
    let line = out.lines().find(|l| l.starts_with("file 1: ")).unwrap();
    assert!(
        line.starts_with("file 1: first block 2, ")
            && line.contains(&format!(
                "bytes): part 2 of tape file {spanning} (a continuation); catalog: vt volume {SECRET_VOL} session "
            )),
        "{out}"
    );
    let line = out.lines().find(|l| l.starts_with("file 3: ")).unwrap();
    assert!(
        line.contains(": a catalog copy (plain, ")
            && line.ends_with(&format!(" bytes, id {})", copy.id)),
        "{out}"
    );
    assert!(!find(&set, b"CREATE TABLE tape_files").is_empty());
}

#[test]
fn scanning_one_tape_records_what_is_whole_on_it() {
    let set = Set::new(false);
    let (recorded, _) = write_set(&set, None);
    set.delete_catalog();
    // Tape 1 alone: alpha's first two sessions are whole on it; the spanning stream's
    // second part is on tape 2.
    let out = set.ok(&["--dest=vt", "tape", "scan", "--slot=1"]);
    assert!(out.contains("tape VT0001L8 (uuid "), "{out}");
    assert!(out.contains("no catalog copy imported"), "{out}");
    assert!(
        out.contains("part 2 is missing (scan every tape of the set together: --all)"),
        "{out}"
    );
    let rows = set.rows();
    assert_eq!(rows.chains.len(), 1);
    assert_eq!(rows.chains[0].0, "alpha");
    assert_eq!(rows.chains[0].1, recorded.chains[0].1[..2]);
    let first_two: Vec<TapeFileRecord> = recorded
        .files
        .iter()
        .filter(|f| {
            f.volume == "alpha"
                && recorded.chains[0].1[..2]
                    .iter()
                    .any(|s| s.session == f.session)
        })
        .cloned()
        .collect();
    assert_eq!(first_two.len(), 2);
    assert_eq!(rows.files, first_two);
    // Then the rest: everything as recorded.
    let out = scan(&set);
    assert!(out.contains("imported catalog copy"), "{out}");
    assert_eq!(set.rows().files, recorded.files);
    assert_eq!(set.rows().chains, recorded.chains);
}

/// Change `n` chunks of volume `vol` at chunk `from`.
fn change(set: &Set, vol: &str, from: usize, n: usize, rng: &mut Rng) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(set.dir.path().join("img").join(vol))
        .unwrap();
    f.write_all_at(&rng.bytes(n * BS), (from * BS) as u64)
        .unwrap();
}

fn receive(set: &Set, vol: &str, session: &str) -> Vec<u8> {
    let out = set.dir.path().join(format!("restored-{vol}"));
    let _ = std::fs::remove_file(&out);
    set.ok(&[
        "--dest=vt",
        "receive",
        &format!("--save-to={}", out.display()),
        vol,
        &format!("--session={session}"),
    ]);
    std::fs::read(&out).unwrap()
}

/// Three rounds of `send --dest=vt` of two volumes (the first round spanning two
/// tapes), the catalog deleted, `tape scan --all`, then a middle session of each
/// volume restored byte for byte from the rebuilt catalog.
fn sends_then_scan_then_receive(encrypted: bool) {
    let set = Set::new(encrypted);
    set.ok(&["--dest=vt", "tape", "label", "--all"]);
    let mut rng = Rng::new(21);
    let img = set.dir.path().join("img");
    std::fs::write(img.join("alpha"), rng.bytes(40 * BS)).unwrap();
    std::fs::write(img.join(SECRET_VOL), rng.bytes(20 * BS + 100)).unwrap();
    let mut images = Vec::new();
    for round in 0..3 {
        if round > 0 {
            change(&set, "alpha", round * 5, 2, &mut rng);
            change(&set, SECRET_VOL, round, 1, &mut rng);
        }
        images.push((
            std::fs::read(img.join("alpha")).unwrap(),
            std::fs::read(img.join(SECRET_VOL)).unwrap(),
        ));
        set.ok(&["--dest=vt", "send"]);
        // Sessions are one second apart at least.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let recorded = set.rows();
    assert_eq!(recorded.chains.len(), 2);
    assert!(recorded.chains.iter().all(|(_, c)| c.len() == 3));
    // The first round's second stream went on onto the second tape.
    assert_eq!(recorded.files.len(), 7, "{:#?}", recorded.files);
    assert!(recorded.files.iter().any(|f| f.part == 1));
    if encrypted {
        assert_eq!(find(&set, SECRET_VOL.as_bytes()), []);
    }
    // The catalog is lost, and so is the key file of an encrypted destination.
    let key_path = set.dir.path().join("meta/@tape/vt/sparsebak.key");
    let key = std::fs::read(&key_path).ok();
    assert_eq!(key.is_some(), encrypted);
    let _ = std::fs::remove_file(&key_path);
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains(
            "3 tape(s) scanned, 3 added to the catalog; 7 tape file(s) and 6 session(s) added"
        ),
        "{out}"
    );
    assert_eq!(std::fs::read(&key_path).ok(), key, "{out}");
    assert!(!out.contains("problem"), "{out}");
    let rebuilt = set.rows();
    assert_eq!(rebuilt.chains, recorded.chains);
    assert_eq!(rebuilt.files, recorded.files);
    // The tapes as recorded, but for the slot (where the scan found each: a send
    // forgets the slot of the tape it loads) and when they were last written.
    let strip = |t: &TapeRecord| TapeRecord {
        slot: None,
        last_written: None,
        ..t.clone()
    };
    assert_eq!(
        rebuilt.tapes.iter().map(strip).collect::<Vec<_>>(),
        recorded.tapes.iter().map(strip).collect::<Vec<_>>()
    );
    assert_eq!(
        rebuilt.tapes.iter().map(|t| t.slot).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    let alpha = &recorded.chains[0];
    assert_eq!(alpha.0, "alpha");
    assert!(receive(&set, "alpha", &alpha.1[1].session) == images[1].0);
    let other = &recorded.chains[1];
    assert_eq!(other.0, SECRET_VOL);
    assert!(receive(&set, SECRET_VOL, &other.1[1].session) == images[1].1);
    assert!(receive(&set, SECRET_VOL, &other.1[0].session) == images[0].1);
    // The chains go on from the rebuilt catalog: the next send is incremental.
    change(&set, "alpha", 30, 1, &mut rng);
    let now = std::fs::read(img.join("alpha")).unwrap();
    set.ok(&["--dest=vt", "send", "alpha"]);
    let chains = set.rows().chains;
    assert_eq!(chains[0].1.len(), 4);
    assert_eq!(
        chains[0].1[3].previous,
        Some(chains[0].1[2].session.clone())
    );
    assert_eq!(chains[0].1[..3], recorded.chains[0].1[..]);
    assert!(receive(&set, "alpha", &chains[0].1[3].session) == now);
}

#[test]
fn sessions_sent_to_tape_restore_after_the_catalog_is_rebuilt_by_a_scan() {
    sends_then_scan_then_receive(false);
}

#[test]
fn encrypted_sessions_sent_to_tape_restore_after_the_catalog_is_rebuilt_by_a_scan() {
    sends_then_scan_then_receive(true);
}

#[test]
fn a_damaged_stream_is_named_and_the_sessions_after_it_are_not_recorded() {
    let set = Set::new(false);
    let (recorded, _) = write_set(&set, None);
    // The first place `what` is found (a stream names its session in its header
    // first, then in its info).
    let flip = |what: &[u8], by: usize| {
        let at = find(&set, what);
        assert!(
            !at.is_empty() && at.iter().all(|a| a.0 == at[0].0),
            "{at:?}"
        );
        let (slot, off) = at[0];
        let path = set.cartridge(slot);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[off + by] ^= 0x20;
        std::fs::write(&path, &bytes).unwrap();
    };
    // The copy, then alpha's second stream (its header names its session).
    flip(b"SPBKCATC", 4000);
    let alpha = &recorded.chains[0].1;
    flip(
        format!("volume=alpha\nsession={}\n", alpha[1].session).as_bytes(),
        8,
    );
    set.delete_catalog();
    let out = scan(&set);
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 3, "{out}");
    assert!(
        problems[0].starts_with("problem: tape VT0002L8 file 3: catalog copy "),
        "{out}"
    );
    assert!(
        problems[1].contains("(tape VT0001L8 file 2): unreadable, not recorded: ")
            && problems[1].contains("tape VT0001L8, file 2, block 0 (position "),
        "{out}"
    );
    assert_eq!(
        problems[2],
        format!(
            "problem: volume alpha session {} (stream {}): builds on {}, not on the chain \
             rebuilt, which ends at {}; not recorded (a tape of the set missing, a chain \
             pruned, or a send that did not finish)",
            alpha[2].session,
            recorded
                .files
                .iter()
                .find(|f| f.session == alpha[2].session && f.volume == "alpha")
                .unwrap()
                .stream_id,
            alpha[1].session,
            alpha[0].session
        )
    );
    let rebuilt = set.rows();
    assert_eq!(
        rebuilt.chains[0],
        ("alpha".to_string(), alpha[..1].to_vec())
    );
    assert_eq!(rebuilt.chains[1], recorded.chains[1]);
    assert_eq!(rebuilt.files.len(), 3);
}

#[test]
fn sessions_the_newest_copy_does_not_know_are_not_brought_back() {
    let set = Set::new(false);
    let (recorded, first) = write_set(&set, None);
    // Alpha's chain forgotten (pruned), then a newer copy at the end of the set, in
    // a later second than every session (a session of the copy's own second counts
    // as newer than the copy; sends in one second take the seconds after it as their
    // IDs, so the newest session may be ahead of the clock by two).
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let second = {
        let lib = set.library();
        let cat = set.catalog();
        let dest = cat.destination("tape", "vt").unwrap();
        cat.forget(dest, "alpha").unwrap();
        for s in &recorded.chains[0].1 {
            cat.forget_session_tape_files("vt", "alpha", &s.session)
                .unwrap();
        }
        drop(cat);
        let mut drive = lib.drive();
        drive.set_block_size(BS).unwrap();
        write_catalog_copy(
            &mut drive,
            &mut sparsebak::tape::writer::NoNextTape,
            &opts("second-copy"),
            &set.catalog_path(),
            None,
        )
        .unwrap()
    };
    assert_eq!(second.parts[0].file_number, 4);
    let kept = set.rows();
    assert_eq!(kept.chains.len(), 1);
    assert_eq!(kept.files.len(), 2);
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains(&format!("catalog copy {} of ", first.id))
            && out.contains("catalog copy second-copy of "),
        "{out}"
    );
    assert!(
        out.contains("imported catalog copy second-copy: 1 session(s)"),
        "{out}"
    );
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 3, "{out}");
    for (p, s) in problems.iter().zip(&recorded.chains[0].1) {
        assert!(
            p.starts_with(&format!(
                "problem: volume alpha session {} (stream ",
                s.session
            )) && p.ends_with(
                "older than the catalog copy imported, which does not know it (a session \
                     pruned, or a send that did not finish); not recorded"
            ),
            "{out}"
        );
    }
    assert_eq!(set.rows(), kept);
}

#[test]
fn files_of_other_kinds_are_reported_and_the_rest_is_scanned() {
    let set = Set::new(false);
    let (recorded, _) = write_set(&set, None);
    // On the third tape: something else (a block of text, then a filemark), an empty
    // file, then two blocks and no filemark.
    {
        let lib = set.library();
        let mut ch = lib.changer();
        let mut drive = lib.drive();
        drive.unload().ok();
        ch.unload(0, None).unwrap();
        ch.load(3, 0).unwrap();
        drive.set_block_size(BS).unwrap();
        drive.eod().unwrap();
        let mut block = vec![b'x'; BS];
        drive.write_block(&block).unwrap();
        drive.write_filemark(2).unwrap();
        block.fill(b'y');
        drive.write_block(&block).unwrap();
        drive.write_block(&block).unwrap();
    }
    set.delete_catalog();
    let out = scan(&set);
    assert!(
        out.contains("tape VT0003L8 (uuid ") && out.contains("): 3 file(s)\n"),
        "{out}"
    );
    assert!(
        out.contains("not a sparsebak file: tape VT0003L8 file 1: not a sparsebak file\n"),
        "{out}"
    );
    assert!(
        out.contains("not a sparsebak file: tape VT0003L8 file 2: empty\n"),
        "{out}"
    );
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(
        problems,
        ["problem: tape VT0003L8 file 3: no filemark ends it (an interrupted write?)"],
        "{out}"
    );
    let rebuilt = set.rows();
    assert_eq!(rebuilt.files, recorded.files);
    assert_eq!(rebuilt.chains, recorded.chains);
}

#[test]
fn streams_of_killed_sends_are_reported_and_the_rerun_is_recorded() {
    let set = Set::new(false);
    set.ok(&["--dest=vt", "tape", "label", "--all"]);
    let img = set.dir.path().join("img");
    std::fs::write(img.join("alpha"), Rng::new(5).bytes(20 * BS)).unwrap();
    std::fs::write(img.join(SECRET_VOL), Rng::new(6).bytes(9 * BS)).unwrap();
    set.ok(&["--dest=vt", "send", SECRET_VOL]);
    // Killed in the middle of the tape file, then after the tape file is whole but
    // before the chain records the session; then sent whole.
    for point in ["tape-mid-file", "stream-before-record"] {
        let o = {
            let _spawn = spawning();
            std::process::Command::new(bin())
                .args([
                    "-c",
                    set.config.to_str().unwrap(),
                    "--dest=vt",
                    "send",
                    "alpha",
                ])
                .env("SPARSEBAK_FAILPOINT", point)
                .output()
                .unwrap()
        };
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(9),
            "{point}: {o:?}"
        );
    }
    set.ok(&["--dest=vt", "send", "alpha"]);
    // VT0001L8 was past its early warning, so the newest catalog copy went on
    // VT0002L8. Labelled anew, that copy is gone: the scan reads the streams after the
    // first run's copy (file 2), as for a run that died before its copy.
    set.ok(&["--dest=vt", "tape", "label", "--slot=2", "--force"]);
    let mut recorded = set.rows();
    recorded.tapes.retain(|t| t.name != "VT0002L8");
    assert_eq!(recorded.chains.len(), 2);
    // The session recorded is the rerun's, tape file 5 (the first send's catalog copy
    // is file 2, the cut file 3, the killed run's whole but unrecorded stream file 4).
    let alpha = &recorded.chains[0];
    assert_eq!((alpha.0.as_str(), alpha.1.len()), ("alpha", 1));
    let session = &alpha.1[0].session;
    let chained: Vec<TapeFileRecord> = recorded
        .files
        .iter()
        .filter(|f| {
            recorded
                .chains
                .iter()
                .any(|(v, c)| *v == f.volume && c.iter().any(|s| s.session == f.session))
        })
        .cloned()
        .collect();
    let rerun = chained.iter().find(|f| f.volume == "alpha").unwrap();
    assert_eq!(rerun.file_number, 5);
    // The rows of the killed runs' tape files are forgotten by the rerun: the catalog
    // names only tape files the chains hold.
    assert_eq!(recorded.files, chained);
    set.delete_catalog();
    let out = scan(&set);
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 2, "{out}");
    // The cut file has no trailer; the whole one is not on the chain.
    assert_eq!(
        problems[0], "problem: tape VT0001L8 file 3: no part trailer after the data",
        "{out}"
    );
    let twin = format!(
        ": stream {} of the same session, written after it, is on the chain (a send run \
         again after one that did not finish); not recorded",
        rerun.stream_id
    );
    let older = format!(
        ": builds on nothing (a full stream), not on the chain rebuilt, which ends at \
         {session}; not recorded (a tape of the set missing, a chain pruned, or a send that \
         did not finish)"
    );
    assert!(
        problems[1].starts_with("problem: volume alpha session ")
            && (problems[1].ends_with(&twin) || problems[1].ends_with(&older)),
        "{out}"
    );
    let rebuilt = set.rows();
    assert_eq!(rebuilt.chains, recorded.chains);
    assert_eq!(rebuilt.files, chained);
    let out = set.dir.path().join("restored");
    set.ok(&[
        "--dest=vt",
        "receive",
        &format!("--save-to={}", out.display()),
        "alpha",
    ]);
    assert!(std::fs::read(&out).unwrap() == std::fs::read(img.join("alpha")).unwrap());
}

#[test]
fn a_copy_of_a_newer_catalog_is_refused_and_the_one_before_imported() {
    let set = Set::new(false);
    let (recorded, first) = write_set(&set, None);
    // A later copy of a catalog a newer sparsebak wrote.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    {
        let lib = set.library();
        let conn = rusqlite::Connection::open(set.catalog_path()).unwrap();
        conn.execute(
            "UPDATE meta SET value = '99' WHERE key = 'schema_version'",
            [],
        )
        .unwrap();
        drop(conn);
        let mut drive = lib.drive();
        drive.set_block_size(BS).unwrap();
        write_catalog_copy(
            &mut drive,
            &mut sparsebak::tape::writer::NoNextTape,
            &opts("newer-schema"),
            &set.catalog_path(),
            None,
        )
        .unwrap();
    }
    set.delete_catalog();
    let out = scan(&set);
    let problems: Vec<&str> = out.lines().filter(|l| l.starts_with("problem: ")).collect();
    assert_eq!(problems.len(), 1, "{out}");
    assert!(
        problems[0]
            .starts_with("problem: tape VT0002L8 file 4: catalog copy newer-schema: catalog ")
            && problems[0].ends_with(
                "has schema version 99, newer than this sparsebak (5); upgrade sparsebak; not \
                 imported (an older copy, else the streams, read instead)"
            ),
        "{out}"
    );
    assert!(
        out.contains(&format!("imported catalog copy {}: 4 session(s)", first.id)),
        "{out}"
    );
    assert_eq!(set.rows(), recorded);
}
