//! Hostile archive bytes: a tar index, chunk file, info, manifest, stream header or
//! catalog row that names an impossible size is an error naming the file, in every
//! command that reads it (exit 1, never an abort on a huge allocation), and nothing in
//! the archive changes.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Output};

const CS: usize = 65536;
const TIB: u64 = 1 << 40;

/// Everything a run printed.
fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The run exited with status 1 (not killed by a signal, not aborted) and said every
/// one of `needles`.
fn exits_1_saying(o: &Output, what: &str, needles: &[&str]) {
    exits_saying(o, 1, what, needles)
}

/// The run exited with status `code` (4: a verify that ran and found damage) and said
/// every one of `needles`.
fn exits_saying(o: &Output, code: i32, what: &str, needles: &[&str]) {
    let t = text(o);
    assert_eq!(o.status.code(), Some(code), "{what}: {:?}\n{t}", o.status);
    for n in needles {
        assert!(t.contains(n), "{what}: {n:?} not in:\n{t}");
    }
}

/// Names and sizes of everything under `dir`, sorted: what a failed command must
/// leave as it was.
fn tree(dir: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            }
            let name = e.path().strip_prefix(dir).unwrap().display().to_string();
            out.push((name, if m.is_dir() { 0 } else { m.len() }));
        }
    }
    out.sort();
    out
}

/// Two sessions of `v` (tar sessions with `tar`), 12 chunks of data changing between.
fn two_sessions(env: &Env, tar: bool) -> Vec<String> {
    let mut rng = Rng::new(5);
    let mut img = vec![0u8; 12 * CS + 100];
    rng.fill(&mut img);
    for round in 0..2 {
        if round == 1 {
            rng.fill(&mut img[3 * CS..5 * CS]);
        }
        std::fs::write(env.image("v"), &img).unwrap();
        if tar {
            env.ok(&["send", "--tarfile", "v"]);
        } else {
            env.send("v");
        }
    }
    env.sessions("v").into_iter().map(|s| s.id).collect()
}

#[test]
fn tar_index_naming_a_huge_chunk_is_an_error_in_every_command() {
    let env = Env::new(&["v"]);
    let ids = two_sessions(&env, true);
    let index = env.vol_dir("v").join(format!("S_{}.tar.index", ids[0]));
    // Record 0's length field (header 64 bytes, then address, offset, length).
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap();
    f.write_all_at(&TIB.to_le_bytes(), 64 + 16).unwrap();
    drop(f);
    let before = tree(&env.archive());
    let ix = index.display().to_string();
    let fault = "bad tar index: record 0 (chunk x0000000000000000): 1099511627776 bytes, \
                 more than it can be";
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    let first = format!("--session={}", ids[0]);
    for (what, args) in [
        ("receive", vec!["receive", "v", &save, &first]),
        ("receive latest", vec!["receive", "v", &save]),
        ("verify", vec!["verify", "v"]),
        ("list", vec!["list", "v"]),
        ("diff", vec!["diff", "v", &first]),
        ("untar", vec!["untar", "v"]),
        ("prune", vec!["prune", "v", &first]),
        ("send", vec!["send", "v"]),
    ] {
        let o = env.run(&args);
        let code = if what == "verify" { 4 } else { 1 };
        exits_saying(&o, code, what, &[&ix, fault]);
        assert!(!out.exists(), "{what} left a target");
        assert_eq!(tree(&env.archive()), before, "{what} changed the archive");
    }
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    exits_1_saying(&o, "spbk-assemble", &[&ix, fault]);
    assert!(!out.exists());

    // An offset + length past the end of the tar, and a count no file can hold.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap();
    f.write_all_at(&1000u64.to_le_bytes(), 64 + 16).unwrap();
    f.write_all_at(&(u64::MAX - 511).to_le_bytes(), 64 + 8)
        .unwrap();
    drop(f);
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(&o, "offset", &[&ix, "run past the end of the tar"]);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&index)
        .unwrap();
    f.write_all_at(&(u64::MAX / 3).to_le_bytes(), 8).unwrap();
    drop(f);
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(
        &o,
        "count",
        &[&ix, "6148914691236517205 records cannot fill"],
    );
    assert!(!out.exists());
}

#[test]
fn oversized_files_are_refused_unread() {
    let env = Env::new(&["v"]);
    let ids = two_sessions(&env, false);
    let sdir = env.vol_dir("v").join(format!("S_{}", ids[0]));
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());

    // A chunk file of 1 TiB (sparse): refused from its size, by every reader.
    let chunk = sdir.join("x000000000").join("x0000000000010000");
    let keep = std::fs::read(&chunk).unwrap();
    std::fs::File::create(&chunk).unwrap().set_len(TIB).unwrap();
    let c = chunk.display().to_string();
    let said = "chunk file of 1099511627776 bytes is impossible";
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(&o, "receive", &[&c, said]);
    let o = env.run(&["verify", "v"]);
    exits_saying(&o, 4, "verify", &[&c, said]);
    let o = Command::new(assemble_bin())
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    exits_1_saying(&o, "spbk-assemble", &[&c, said]);
    assert!(!out.exists());
    std::fs::write(&chunk, keep).unwrap();
    env.verify_ok("v", None);

    // A manifest of 1 TiB of zeros: refused from its size (more than the lines its
    // info records can take) before a byte is read or hashed, by every command.
    let manifest = sdir.join("manifest");
    let keep = std::fs::read(&manifest).unwrap();
    std::fs::File::create(&manifest)
        .unwrap()
        .set_len(TIB)
        .unwrap();
    let m = manifest.display().to_string();
    let t = std::time::Instant::now();
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(
        &o,
        "receive",
        &[&m, "manifest of 1099511627776 bytes is impossible"],
    );
    let o = env.run(&["verify", "v"]);
    exits_saying(
        &o,
        4,
        "verify",
        &[&m, "manifest of 1099511627776 bytes is impossible"],
    );
    let o = env.run(&["send", "v"]);
    exits_1_saying(
        &o,
        "send",
        &[&m, "manifest of 1099511627776 bytes is impossible"],
    );
    assert!(t.elapsed().as_secs() < 60, "{:?}", t.elapsed());
    std::fs::write(&manifest, keep).unwrap();

    // An info file of 1 TiB.
    let info = sdir.join("info");
    std::fs::File::create(&info).unwrap().set_len(TIB).unwrap();
    let i = info.display().to_string();
    for args in [
        vec!["list", "v"],
        vec!["receive", "v", &save],
        vec!["verify", "v"],
        vec!["send", "v"],
    ] {
        let o = env.run(&args);
        exits_saying(
            &o,
            if args[0] == "verify" { 4 } else { 1 },
            args[0],
            &[&i, "info file of 1099511627776 bytes is impossible"],
        );
    }
    assert!(!out.exists());
}

/// An info whose numbers are impossible (but whose checksum is right: made, not
/// damaged by chance) is refused naming the file.
#[test]
fn impossible_info_numbers_are_refused() {
    let env = Env::new(&["v"]);
    let ids = two_sessions(&env, false);
    let info = env.vol_dir("v").join(format!("S_{}", ids[1])).join("info");
    let text = std::fs::read_to_string(&info).unwrap();
    let rewrite = |from: &str, to: &str| {
        let t = text.replace(from, to);
        let body = &t[..t.rfind("info_sha256=").unwrap()];
        let sum = sha2::Sha256::digest(body.as_bytes());
        std::fs::write(&info, format!("{body}info_sha256={}\n", hex::encode(sum))).unwrap();
    };
    use sha2::Digest;
    let i = info.display().to_string();
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    rewrite("chunksize=65536", "chunksize=1099511627776");
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(
        &o,
        "chunksize",
        &[
            &i,
            "chunksize 1099511627776 is not a power of two from 4096 to 67108864",
        ],
    );
    rewrite("volsize=786532", "volsize=18446744073709551615");
    let o = env.run(&["receive", "v", &save]);
    exits_1_saying(
        &o,
        "volsize",
        &[&i, "volsize 18446744073709551615 is impossible"],
    );
    let changed = text
        .lines()
        .find_map(|l| l.strip_prefix("changed="))
        .unwrap()
        .to_string();
    rewrite(&format!("changed={changed}\n"), "changed=14\n");
    let o = env.run(&["verify", "v"]);
    exits_saying(
        &o,
        4,
        "changed",
        &[
            &i,
            "changed 14 is impossible: more than the volume's 13 chunks",
        ],
    );
    assert!(!out.exists());
}

#[test]
fn stream_header_with_huge_chunks_is_refused_naming_the_input() {
    let env = Env::new(&["v"]);
    let dir = env.path().join("craft");
    std::fs::create_dir_all(dir.join("sparsebak-stream")).unwrap();
    std::fs::write(
        dir.join("sparsebak-stream/header"),
        "format=sparsebak-stream 1\nvolume=v\nsession=20260101-000000\nvolsize=2147483648\n\
         chunksize=1073741824\ncompression=zstd\ntime=1767222000\nbase=\nbase_manifest_sha256=\n",
    )
    .unwrap();
    let s = env.path().join("hostile.stream");
    let st = Command::new("tar")
        .arg("--format=ustar")
        .arg("-cf")
        .arg(&s)
        .arg("-C")
        .arg(&dir)
        .arg("sparsebak-stream/header")
        .status()
        .unwrap();
    assert!(st.success());
    let from = format!("--from-stream={}", s.display());
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    let name = s.display().to_string();
    for args in [vec!["receive", &from, &save], vec!["verify", &from]] {
        let o = env.run(&args);
        exits_1_saying(&o, args[0], &[&name, "bad chunksize 1073741824"]);
    }
    assert!(!out.exists());
}

#[test]
fn damaged_catalog_rows_are_refused_naming_the_catalog() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), vec![7u8; 3 * CS]).unwrap();
    let s1 = env.path().join("s1.tar");
    env.ok(&["send", "v", &format!("--stream={}", s1.display())]);
    let cat = env.meta().join("catalog.sqlite");
    let conn = rusqlite::Connection::open(&cat).unwrap();
    conn.execute("UPDATE sessions SET volsize = -1", [])
        .unwrap();
    drop(conn);
    let s2 = env.path().join("s2.tar");
    let o = env.run(&["send", "v", &format!("--stream={}", s2.display())]);
    exits_1_saying(
        &o,
        "send --stream",
        &[
            &cat.display().to_string(),
            "the chain of volume v is damaged: seq=0: volsize -1 is impossible",
        ],
    );
    assert!(!s2.exists());
}

/// The source side's delta map is a file on disk too: a chunk size or count no
/// volume can have, or another chunk size than the volume's, is refused naming the
/// map, and `resync` (which the message asks for) makes sends work again.
#[test]
fn damaged_delta_map_is_refused_naming_it() {
    let Some(fs) = loopfs::LoopFs::new("damaged_delta_map", loopfs::FsKind::Xfs, "") else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    let mut rng = Rng::new(9);
    std::fs::write(env.image("v"), rng.bytes(16 * CS)).unwrap();
    env.send("v");
    env.ok(&["monitor", "v"]);
    let map = env.meta().join("v").join("deltamap");
    let m = map.display().to_string();
    let good = std::fs::read(&map).unwrap();
    let patch = |at: u64, v: u64| {
        let f = std::fs::OpenOptions::new().write(true).open(&map).unwrap();
        f.write_all_at(&v.to_le_bytes(), at).unwrap();
    };
    let sessions = env.sessions("v").len();
    for (at, v, said) in [
        (
            8,
            1,
            "chunk size 1 is not a power of two from 4096 to 67108864); run `sparsebak resync`",
        ),
        (
            16,
            u64::MAX,
            "18446744073709551615 chunks of 65536 bytes are more than the largest volume",
        ),
        (16, 17, "17 chunks need 67 bytes, the file has 66"),
        (8, 131072, "its chunk size is 131072, the volume's is 65536"),
    ] {
        std::fs::write(&map, &good).unwrap();
        patch(at, v);
        for cmd in ["monitor", "send"] {
            let o = env.run(&[cmd, "v"]);
            exits_1_saying(&o, cmd, &[&m, said]);
        }
    }
    assert_eq!(env.sessions("v").len(), sessions);
    env.ok(&["resync", "v"]);
    std::fs::write(env.image("v"), rng.bytes(16 * CS)).unwrap();
    env.send("v");
    assert_eq!(env.sessions("v").len(), sessions + 1);
    let latest = env.latest("v").id;
    assert_eq!(env.receive("v", Some(&latest)), env.read_image("v"));
}
