//! `source = reflink` end to end on real Btrfs and XFS (loop mounts, root): writes at
//! known offsets between sends, `changed=` equal to exactly the chunks touched, every
//! session restored byte-identical; the image replaced by a copy; the tick deleted by
//! hand; a 1 TiB sparse image.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopfs::{FsKind, LoopFs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

const CS: usize = 65536;

fn open_rw(env: &Env, vol: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.image(vol))
        .unwrap()
}

fn punch(env: &Env, vol: &str, off: u64, len: u64) {
    let f = open_rw(env, vol);
    // SAFETY: fallocate on a valid descriptor.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(rc, 0, "punch hole");
}

/// Apply a change to the image in place, then monitor (twice: the map accumulates)
/// and send; check `changed=` against the content and keep the version.
fn step(env: &Env, what: &str, change: impl FnOnce(&Env), versions: &mut Vec<Vec<u8>>) {
    step_reading(env, what, change, versions, true)
}

/// With `incremental`, the send must read no more than the chunks it stores plus a
/// little (the map marks what the extents say, not more).
fn step_reading(
    env: &Env,
    what: &str,
    change: impl FnOnce(&Env),
    versions: &mut Vec<Vec<u8>>,
    incremental: bool,
) {
    let old = versions.last().cloned().unwrap_or_default();
    change(env);
    env.ok(&["monitor", "v"]);
    env.ok(&["monitor", "v"]);
    let before = env.sessions("v").len();
    env.send("v");
    let cur = env.read_image("v");
    let expect = changed_chunks(&old, &cur, CS);
    let sessions = env.sessions("v");
    if expect == 0 && old.len() == cur.len() {
        assert_eq!(sessions.len(), before, "{what}: no change, no session");
        return;
    }
    let s = sessions.last().unwrap();
    assert_eq!(
        s.changed, expect,
        "{what}: changed= must equal the chunks touched"
    );
    assert_eq!(s.size, cur.len() as u64, "{what}");
    if incremental {
        // A grow marks the new space too (it reads as zeros, stores nothing).
        let grown = (cur.len().saturating_sub(old.len()) / CS) as u64 + 1;
        assert!(
            s.read <= (s.changed + 2 + grown) * CS as u64,
            "{what}: read {} bytes for {} changed chunks",
            s.read,
            s.changed
        );
    }
    versions.push(cur);
}

fn scenario(kind: FsKind, test: &str) {
    let Some(fs) = LoopFs::new(test, kind, "") else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    let mut rng = Rng::new(kind as u64 + 1);
    // 8 MiB: random data, a hole, and more data.
    let f = std::fs::File::create(env.image("v")).unwrap();
    f.set_len(8 << 20).unwrap();
    f.write_all_at(&rng.bytes(3 << 20), 0).unwrap();
    f.write_all_at(&rng.bytes(2 << 20), 5 << 20).unwrap();
    drop(f);
    env.send("v");
    let first = env.latest("v");
    let mut versions = vec![env.read_image("v")];
    assert_eq!(first.chunks, nonzero_chunks(&versions[0], CS));

    let mut r2 = Rng::new(99);
    step(
        &env,
        "single byte",
        |e| e.write_at("v", 100 * 1024 + 3, b"Z"),
        &mut versions,
    );
    step(
        &env,
        "whole chunks",
        |e| e.write_at("v", 10 * CS as u64, &r2.bytes(3 * CS)),
        &mut versions,
    );
    let mut r3 = Rng::new(98);
    step(
        &env,
        "straddling",
        |e| e.write_at("v", 20 * CS as u64 - 100, &r3.bytes(200)),
        &mut versions,
    );
    step(
        &env,
        "punch hole",
        |e| punch(e, "v", 30 * CS as u64, 2 * CS as u64),
        &mut versions,
    );
    let mut r4 = Rng::new(97);
    step(
        &env,
        "many small writes",
        |e| {
            for i in 0..40u64 {
                let off = (i * 7919 * 4096) % (8 << 20);
                e.write_at("v", off, &r4.bytes(16));
            }
        },
        &mut versions,
    );
    let mut r5 = Rng::new(96);
    step(
        &env,
        "write into the hole",
        |e| e.write_at("v", (3 << 20) + 5000, &r5.bytes(70000)),
        &mut versions,
    );
    step(
        &env,
        "grow",
        |e| e.set_len("v", (8 << 20) + 5 * CS as u64 + 77),
        &mut versions,
    );
    let mut r6 = Rng::new(95);
    step(
        &env,
        "write past the old end",
        |e| e.write_at("v", (8 << 20) + CS as u64, &r6.bytes(CS)),
        &mut versions,
    );
    step(
        &env,
        "shrink mid-chunk",
        |e| e.set_len("v", (6 << 20) + 1234),
        &mut versions,
    );
    step(&env, "nothing", |_| {}, &mut versions);

    // The image replaced by a copy (new inode) with one chunk changed.
    let mut r7 = Rng::new(94);
    step_reading(
        &env,
        "image replaced by a copy",
        |e| {
            let img = e.image("v");
            let tmp = img.with_extension("new");
            let mut data = std::fs::read(&img).unwrap();
            data[40 * CS..41 * CS].copy_from_slice(&r7.bytes(CS));
            std::fs::write(&tmp, data).unwrap();
            std::fs::rename(&tmp, &img).unwrap();
        },
        &mut versions,
        false,
    );
    // The tick deleted by hand.
    let mut r8 = Rng::new(93);
    step_reading(
        &env,
        "tick deleted by hand",
        |e| {
            std::fs::remove_file(e.voldir.join(".sparsebak/v.tick")).unwrap();
            e.write_at("v", 2 * CS as u64, &r8.bytes(10));
        },
        &mut versions,
        false,
    );
    // And a normal incremental after the fallbacks.
    let mut r9 = Rng::new(92);
    step(
        &env,
        "after fallback",
        |e| e.write_at("v", 7 * CS as u64, &r9.bytes(CS)),
        &mut versions,
    );

    let all: Vec<usize> = (0..versions.len()).collect();
    check_sessions(&env, &versions, &all, &format!("{kind:?}"));
    // Snapshots live in the hidden folder, private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(env.voldir.join(".sparsebak"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn reflink_btrfs() {
    scenario(FsKind::Btrfs, "reflink_btrfs");
}

#[test]
fn reflink_xfs() {
    scenario(FsKind::Xfs, "reflink_xfs");
}

#[test]
fn reflink_1tib_sparse_image() {
    let Some(fs) = LoopFs::new("reflink_1tib_sparse_image", FsKind::Xfs, "") else {
        return;
    };
    let env = Env::reflink(&["big"], fs.path());
    let mut rng = Rng::new(5);
    env.set_len("big", 1 << 40);
    for i in 0..16u64 {
        env.write_at("big", i * (64 << 30) + 12345, &rng.bytes(2 * CS));
    }
    let t = std::time::Instant::now();
    env.send("big");
    eprintln!("full send of a 1 TiB sparse image: {:?}", t.elapsed());
    let s = env.latest("big");
    assert_eq!(s.chunks, 16 * 3);
    assert!(
        s.read <= 64 * CS as u64,
        "a full send reads only data extents: {}",
        s.read
    );
    // 10 MiB changed in a few places.
    let mut expect = 0;
    for i in 0..5u64 {
        env.write_at("big", i * (200 << 30), &rng.bytes(2 << 20));
        expect += 32;
    }
    let t = std::time::Instant::now();
    env.ok(&["monitor", "big"]);
    eprintln!("monitor of a 1 TiB sparse image: {:?}", t.elapsed());
    let t = std::time::Instant::now();
    env.send("big");
    eprintln!(
        "incremental send of a 1 TiB sparse image: {:?}",
        t.elapsed()
    );
    let s = env.latest("big");
    assert_eq!(s.changed, expect);
    assert!(
        s.read <= (expect + 8) * CS as u64,
        "incremental read {} bytes",
        s.read
    );
    assert_eq!(s.size, 1 << 40);
    env.verify_ok("big", None);
}

#[test]
fn reflink_on_a_filesystem_without_reflink_suggests_file() {
    let Some(fs) = LoopFs::new("reflink_on_ext4", FsKind::Ext4, "") else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    std::fs::write(env.image("v"), [1u8; 1000]).unwrap();
    let err = env.fails(&["send", "v"]);
    assert!(err.contains("source = file"), "{err}");
}

/// Archive sends and stream sends alternate on a reflink volume: each destination has
/// its own delta map, both stay incremental and exact.
#[test]
fn reflink_archive_and_stream_destinations() {
    let Some(fs) = LoopFs::new("reflink_archive_and_stream", FsKind::Btrfs, "") else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    let mut rng = Rng::new(77);
    let f = std::fs::File::create(env.image("v")).unwrap();
    f.write_all_at(&rng.bytes(40 * CS), 0).unwrap();
    drop(f);
    env.send("v");
    let s1 = env.path().join("s1.tar");
    env.ok(&["send", "v", &format!("--stream={}", s1.display())]);
    let mut streams = vec![s1];
    let mut archive_base = env.read_image("v");
    let mut stream_base = archive_base.clone();
    for round in 0..4u64 {
        env.write_at("v", (round * 5 + 1) * CS as u64, &rng.bytes(CS + 10));
        env.ok(&["monitor", "v"]);
        let cur = env.read_image("v");
        if round % 2 == 0 {
            env.send("v");
            let s = env.latest("v");
            assert_eq!(
                s.changed,
                changed_chunks(&archive_base, &cur, CS),
                "archive round {round}"
            );
            assert!(
                s.read <= (s.changed + 2) * CS as u64,
                "archive read {}",
                s.read
            );
            archive_base = cur;
        } else {
            let p = env.path().join(format!("s{}.tar", streams.len() + 1));
            env.ok(&["send", "v", &format!("--stream={}", p.display())]);
            // Incremental: the chunks written since the last stream (two rounds, a few
            // chunks each), not the 40-chunk volume.
            let len = std::fs::metadata(&p).unwrap().len();
            assert!(len < 12 * CS as u64, "stream {p:?} is {len} bytes");
            streams.push(p);
            stream_base = cur;
        }
    }
    // The last stream covers everything since the previous stream, including the
    // rounds that went to the archive; the chain restores to the latest stream state.
    let list = streams
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let out = env.path().join("r.img");
    env.ok(&[
        "receive",
        &format!("--from-stream={list}"),
        &format!("--save-to={}", out.display()),
    ]);
    assert_same(&std::fs::read(&out).unwrap(), &stream_base, "stream chain");
    assert_same(&env.receive("v", None), &archive_base, "archive");
}
