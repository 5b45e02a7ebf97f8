//! Self-contained streams: a chain restored through a pipe with no config, GNU tar
//! reads them, every kind of damage is refused with no result left behind, record
//! sizes are exact, and archive and stream destinations stay incremental side by side.
//! A stream send that fails or is stopped never leaves its chain broken; errors name
//! the stream file or the spool folder they are about.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopfs::{FsKind, LoopFs};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CS: usize = 65536;

/// Five versions of a volume; after each, a stream (and on even rounds an archive
/// send too). Returns the versions and the stream files.
fn chain(env: &Env, block: Option<&str>) -> (Vec<Vec<u8>>, Vec<PathBuf>) {
    let mut rng = Rng::new(61);
    let mut cur = vec![0u8; 40 * CS + 1000];
    rng.fill(&mut cur[..16 * CS]);
    let mut versions: Vec<Vec<u8>> = Vec::new();
    let mut streams = Vec::new();
    for round in 0..5 {
        let old = cur.clone();
        if round > 0 {
            rng.fill(&mut cur[round * 3 * CS..(round * 3 + 2) * CS]);
            cur[(20 + round) * CS] ^= 1;
            cur[round * CS..(round * CS + CS)].fill(0);
        }
        if round == 3 {
            cur.truncate(30 * CS + 5);
        }
        if round == 4 {
            cur.resize(45 * CS, 0);
            cur[44 * CS] = 7;
        }
        std::fs::write(env.image("v"), &cur).unwrap();
        let s = env.path().join(format!("s{}.tar", round + 1));
        let mut args = vec![
            "send".to_string(),
            "v".into(),
            format!("--stream={}", s.display()),
        ];
        if let Some(b) = block {
            args.push(format!("--block-size={b}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        env.ok(&a);
        if round % 2 == 0 {
            env.send("v");
            if round > 0 {
                // The archive is incremental on its own last session (two rounds ago).
                let prev: &Vec<u8> = &versions[round - 2];
                assert_eq!(
                    env.latest("v").changed,
                    changed_chunks(prev, &cur, CS),
                    "archive round {round}"
                );
            }
        }
        let _ = old;
        versions.push(cur.clone());
        streams.push(s);
    }
    (versions, streams)
}

/// Run sparsebak with no config at all.
fn bare() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("SPARSEBAK_CONFIG")
        .env("SPARSEBAK_CONFIG", "/nonexistent/sparsebak.ini");
    c
}

fn receive_pipe(inputs: &[&Path], out: &Path) -> std::process::Output {
    receive_from_pipe(bare(), inputs, out)
}

#[test]
fn chain_of_five_through_a_pipe() {
    let env = Env::new(&["v"]);
    let (versions, streams) = chain(&env, None);
    // Incremental streams are small; the first is full.
    let sizes: Vec<u64> = streams
        .iter()
        .map(|s| std::fs::metadata(s).unwrap().len())
        .collect();
    assert!(sizes[1] < sizes[0] / 2, "{sizes:?}");
    let out = env.path().join("restored.img");
    for n in 1..=5 {
        let refs: Vec<&Path> = streams[..n].iter().map(PathBuf::as_path).collect();
        let o = receive_pipe(&refs, &out);
        assert!(
            o.status.success(),
            "{n}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_same(
            &std::fs::read(&out).unwrap(),
            &versions[n - 1],
            &format!("chain of {n}"),
        );
    }
    // The same from a list of files, and verify.
    let list = streams
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let o = bare()
        .args(["verify", &format!("--from-stream={list}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = bare()
        .args(["-u", "receive", "v", &format!("--from-stream={list}")])
        .arg(format!("--save-to={}", out.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&std::fs::read(&out).unwrap(), &versions[4], "from a list");
    // And the archive, sent on alternate rounds, restores too.
    assert_same(&env.receive("v", None), &versions[4], "archive");
}

#[test]
fn gnu_tar_reads_streams_and_the_extracted_session_restores() {
    let env = Env::new(&["v"]);
    let (versions, streams) = chain(&env, None);
    let o = Command::new("tar")
        .arg("-tvf")
        .arg(&streams[0])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains("sparsebak-stream/header") && listing.contains("sparsebak-stream/trailer")
    );
    let o = Command::new("tar")
        .arg("-tvf")
        .arg(&streams[2])
        .output()
        .unwrap();
    assert!(o.status.success());
    // Extract the full stream into an archive folder and restore it with spbk-assemble.
    let dir = env.path().join("extracted").join("v");
    std::fs::create_dir_all(&dir).unwrap();
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&streams[0])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::remove_dir_all(dir.join("sparsebak-stream")).unwrap();
    let out = env.path().join("asm.img");
    let o = Command::new(assemble_bin())
        .args(["-c", "-o"])
        .arg(&out)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(
        &std::fs::read(&out).unwrap(),
        &versions[0],
        "extracted stream",
    );
}

#[test]
fn damaged_streams_are_refused_and_leave_nothing() {
    let env = Env::new(&["v"]);
    let (_versions, streams) = chain(&env, None);
    let out = env.path().join("r.img");
    let check_refused = |inputs: Vec<Vec<u8>>, what: &str, want: &str| {
        let paths: Vec<PathBuf> = inputs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let p = env.path().join(format!("bad{i}.tar"));
                std::fs::write(&p, d).unwrap();
                p
            })
            .collect();
        let refs: Vec<&Path> = paths.iter().map(PathBuf::as_path).collect();
        let o = receive_pipe(&refs, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(err.contains(want), "{what}: error {err:?} lacks {want:?}");
        assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
        assert!(!out.exists(), "{what}: a result was left");
    };
    let s: Vec<Vec<u8>> = streams.iter().map(|p| std::fs::read(p).unwrap()).collect();
    // Truncated at many places.
    for cut in [100, 512, 5000, s[1].len() / 2, s[1].len() - 70000] {
        check_refused(
            vec![s[0].clone(), s[1][..cut].to_vec()],
            &format!("truncated at {cut}"),
            "stream 2",
        );
    }
    // A flipped byte anywhere in the content.
    let mut rng = Rng::new(4);
    for _ in 0..12 {
        let mut d = s[1].clone();
        let content_end = d.len() - 65536; // the padding is zeros past the tar end
        let i = 512 + rng.below((content_end - 1024) as u64) as usize;
        d[i] ^= 0x20;
        let o = receive_pipe(
            &[streams[0].as_path(), &{
                let p = env.path().join("flip.tar");
                std::fs::write(&p, &d).unwrap();
                p
            }],
            &out,
        );
        // Every byte counts: headers, content, padding.
        assert!(!o.status.success(), "flip at {i} accepted");
        assert!(!out.exists(), "flip at {i}: a result was left");
    }
    let mut d = s[1].clone();
    d[1024 + 600] ^= 1; // inside the first chunk member of stream 2
    check_refused(vec![s[0].clone(), d], "flipped chunk byte", "stream 2");
    check_refused(
        vec![s[0].clone(), s[2].clone(), s[1].clone()],
        "reordered",
        "out of order",
    );
    check_refused(vec![s[1].clone(), s[2].clone()], "no full stream", "full");
    check_refused(vec![b"hello, not a tar".repeat(100)], "garbage", "stream 1");
    // A stream of another volume.
    let other = Env::new(&["w"]);
    std::fs::write(other.image("w"), Rng::new(9).bytes(3 * CS)).unwrap();
    let ws = other.path().join("w.tar");
    other.ok(&["send", "w", &format!("--stream={}", ws.display())]);
    check_refused(
        vec![s[0].clone(), std::fs::read(&ws).unwrap()],
        "foreign",
        "volume",
    );
    let o = bare()
        .args(["verify", "v", &format!("--from-stream={}", ws.display())])
        .output()
        .unwrap();
    assert!(!o.status.success());
}

#[test]
fn record_size_is_exact() {
    for (block, n) in [(None, 65536u64), (Some("10K"), 10240), (Some("512"), 512)] {
        let env = Env::new(&["v"]);
        let (versions, streams) = chain(&env, block);
        for s in &streams {
            let len = std::fs::metadata(s).unwrap().len();
            assert_eq!(
                len % n,
                0,
                "{s:?} is {len} bytes, not whole {n}-byte records"
            );
        }
        let refs: Vec<&Path> = streams.iter().map(PathBuf::as_path).collect();
        let out = env.path().join("r.img");
        let o = receive_pipe(&refs, &out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same(&std::fs::read(&out).unwrap(), &versions[4], "block size");
    }
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 10]).unwrap();
    let err = env.fails(&["send", "v", "--stream=/dev/null", "--block-size=1000"]);
    assert!(err.contains("512"), "{err}");
}

const MIB: usize = 1 << 20;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The session copies (and temporary copies) the source keeps for stream chain
/// `default` of volume `vol`.
fn stream_copies(env: &Env, vol: &str) -> (PathBuf, Vec<String>) {
    let dir = env.meta().join(vol).join("streams/default/sessions");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    (dir, names)
}

/// Restore the chain of stream files `streams` and require the volume `want`.
fn restores_to(env: &Env, streams: &[PathBuf], want: &[u8]) {
    let list: Vec<String> = streams.iter().map(|p| p.display().to_string()).collect();
    let out = env.path().join("restored.img");
    let _ = std::fs::remove_file(&out);
    env.ok(&[
        "receive",
        &format!("--from-stream={}", list.join(",")),
        &format!("--save-to={}", out.display()),
    ]);
    assert!(
        std::fs::read(&out).unwrap() == want,
        "restored volume differs"
    );
    std::fs::remove_file(&out).unwrap();
}

/// Two volumes sent as streams at the same time, round after round, with an archive
/// the metadir did not know (every send then writes the one catalog): every send
/// succeeds and each chain restores to each volume's last content.
#[test]
fn concurrent_stream_sends_keep_both_chains_whole() {
    let env = Env::new(&["a", "b"]);
    let mut rng = Rng::new(14);
    std::fs::write(env.image("a"), rng.bytes(6 * MIB)).unwrap();
    std::fs::write(env.image("b"), rng.bytes(5 * MIB)).unwrap();
    let out = env.path().join("streams");
    std::fs::create_dir(&out).unwrap();
    let file = |vol: &str, n: u32| out.join(format!("{vol}{n}"));
    // An archive this metadir does not know yet (a new metadir, a reinstalled
    // machine): every stream send then writes the catalog.
    env.send("a");
    std::fs::remove_dir_all(env.meta()).unwrap();
    for vol in ["a", "b"] {
        env.ok(&["send", vol, &format!("--stream={}", file(vol, 0).display())]);
    }
    let rounds = 8u32;
    for round in 1..=rounds {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // The volumes grow a little between sends (as `echo >> image` does).
        for vol in ["a", "b"] {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(env.image(vol))
                .unwrap();
            f.write_all(&rng.bytes(2)).unwrap();
        }
        let spawn = |vol: &str| {
            Command::new(bin())
                .arg("-c")
                .arg(&env.config)
                .args(["-u", "send", vol])
                .arg(format!("--stream={}", file(vol, round).display()))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn("a"), spawn("b"));
        for (vol, c) in [("a", ca), ("b", cb)] {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}, volume {vol}: {}",
                stderr(&o)
            );
        }
    }
    for vol in ["a", "b"] {
        let files: Vec<PathBuf> = (0..=rounds).map(|n| file(vol, n)).collect();
        restores_to(&env, &files, &std::fs::read(env.image(vol)).unwrap());
        assert_eq!(
            stream_copies(&env, vol).1.len(),
            rounds as usize + 1,
            "{vol}"
        );
    }
}

/// A stream send killed after the catalog recorded its stream but before its session
/// copy got its name: the next send puts the copy in place and the chain goes on.
#[test]
fn stream_send_killed_after_recording_continues_the_chain() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(21);
    let mut img = rng.bytes(2 * MIB);
    std::fs::write(env.image("v"), &img).unwrap();
    let s: Vec<PathBuf> = (0..3).map(|n| env.path().join(format!("s{n}"))).collect();
    env.ok(&["send", "v", &format!("--stream={}", s[0].display())]);
    img[100..200].fill(7);
    std::fs::write(env.image("v"), &img).unwrap();
    let o = env.run_env(
        &["send", "v", &format!("--stream={}", s[1].display())],
        &[("SPARSEBAK_FAILPOINT", "stream-after-record")],
    );
    assert_eq!(o.status.code(), None, "killed: {}", stderr(&o));
    let (_, names) = stream_copies(&env, "v");
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names[0].starts_with(".tmp-S_"), "{names:?}");
    img[MIB..MIB + 10].fill(9);
    std::fs::write(env.image("v"), &img).unwrap();
    env.ok(&["send", "v", &format!("--stream={}", s[2].display())]);
    let (_, names) = stream_copies(&env, "v");
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.starts_with("S_")), "{names:?}");
    restores_to(&env, &s, &img);
}

/// Session copies the catalog never recorded (a send that failed after keeping its
/// copy, or was stopped before naming it) are removed by the next send, which builds
/// on the recorded chain.
#[test]
fn unrecorded_session_copies_are_removed_by_the_next_send() {
    let env = Env::new(&["v"]);
    let mut img = Rng::new(22).bytes(2 * MIB);
    std::fs::write(env.image("v"), &img).unwrap();
    let s: Vec<PathBuf> = (0..2).map(|n| env.path().join(format!("s{n}"))).collect();
    env.ok(&["send", "v", &format!("--stream={}", s[0].display())]);
    let (dir, names) = stream_copies(&env, "v");
    assert_eq!(names.len(), 1, "{names:?}");
    // A newer copy based on the recorded one, as a failed send used to keep, and a
    // temporary copy of another run.
    let later = dir.join("S_29991231-235959");
    std::fs::create_dir(&later).unwrap();
    for f in ["info", "manifest"] {
        std::fs::copy(dir.join(&names[0]).join(f), later.join(f)).unwrap();
    }
    let info = std::fs::read_to_string(later.join("info")).unwrap();
    let id = names[0].trim_start_matches("S_");
    let info = info.replace(&format!("session={id}"), "session=29991231-235959");
    assert!(info.contains("session=29991231-235959"), "{info}");
    std::fs::write(later.join("info"), info).unwrap();
    std::fs::create_dir(dir.join(".tmp-S_20000101-000000")).unwrap();
    img[5..9].fill(1);
    std::fs::write(env.image("v"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.ok(&["send", "v", &format!("--stream={}", s[1].display())]);
    let (_, after) = stream_copies(&env, "v");
    assert_eq!(after.len(), 2, "{after:?}");
    assert_eq!(after[0], names[0]);
    assert!(after[1].starts_with("S_") && after[1] != "S_29991231-235959");
    restores_to(&env, &s, &img);
}

/// Errors found in a stream name the file they were found in (among several, with
/// the byte of that file), for `receive` and `verify --from-stream`; standard input
/// on a terminal is refused.
#[test]
fn stream_errors_name_the_file() {
    let env = Env::new(&["v"]);
    let mut img = Rng::new(4).bytes(3 * MIB);
    std::fs::write(env.image("v"), &img).unwrap();
    let s0 = env.path().join("full.stream");
    env.ok(&["send", "v", &format!("--stream={}", s0.display())]);
    img[0] ^= 1;
    std::fs::write(env.image("v"), &img).unwrap();
    let s1 = env.path().join("incr.stream");
    env.ok(&["send", "v", &format!("--stream={}", s1.display())]);
    let cut_of = |s: &Path, name: &str| {
        let bytes = std::fs::read(s).unwrap();
        let cut = env.path().join(name);
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        cut
    };

    // One file, cut short.
    let cut = cut_of(&s0, "cut0.stream");
    let from = format!("--from-stream={}", cut.display());
    let target = env.path().join("r.img");
    let save = format!("--save-to={}", target.display());
    let err = env.fails(&["receive", &from, &save]);
    assert!(
        err.contains(&format!("{}: stream 1", cut.display())),
        "{err}"
    );
    assert!(err.contains("truncated"), "{err}");
    assert!(!target.exists());
    let err = env.fails(&["verify", &from]);
    assert!(
        err.contains(&format!("{}: stream 1", cut.display())),
        "{err}"
    );

    // The second of two files: named, with the byte of that file.
    let cut = cut_of(&s1, "cut1.stream");
    let two = format!("--from-stream={},{}", s0.display(), cut.display());
    let err = env.fails(&["verify", &two]);
    assert!(
        err.contains(&format!("{} (byte ", cut.display())) && err.contains("stream 2"),
        "{err}"
    );
    assert!(!err.contains(&s0.display().to_string()), "{err}");
    let err = env.fails(&["receive", &two, &save]);
    assert!(err.contains(&format!("{} (byte ", cut.display())), "{err}");

    // A directory given as a stream.
    let dir = env.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    let err = env.fails(&["verify", &format!("--from-stream={}", dir.display())]);
    assert!(
        err.contains(&format!(
            "{}: stream 1 at byte 0: reading: Is a directory",
            dir.display()
        )),
        "{err}"
    );
}

/// `receive --from-stream --save-to=-` rebuilds the volume in the temporary folder
/// first; when that folder fills up, the error names it (not standard output).
#[test]
fn full_spool_folder_is_named() {
    let Some(fs) = LoopFs::sized(
        "full_spool_folder_is_named",
        FsKind::Ext4,
        "",
        16 << 20,
        &[],
    ) else {
        return;
    };
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(5).bytes(24 * MIB)).unwrap();
    let s = env.path().join("full.stream");
    env.ok(&["send", "v", &format!("--stream={}", s.display())]);
    let o = env.run_env(
        &[
            "receive",
            &format!("--from-stream={}", s.display()),
            "--save-to=-",
        ],
        &[("TMPDIR", fs.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty(), "wrote to stdout");
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "spooling the volume in the temporary folder {}",
            fs.path().display()
        )) && err.contains("No space left on device"),
        "{err}"
    );
    assert_eq!(err.matches("No space left").count(), 1, "{err}");
    assert_eq!(
        std::fs::read_dir(fs.path())
            .unwrap()
            .filter(|e| { e.as_ref().unwrap().file_name() != "lost+found" })
            .count(),
        0
    );
}
