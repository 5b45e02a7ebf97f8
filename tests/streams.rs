//! Self-contained streams: a chain restored through a pipe with no config, GNU tar
//! reads them, every kind of damage is refused with no result left behind, record
//! sizes are exact, and archive and stream destinations stay incremental side by side.

mod common;
use common::*;
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
    let mut child = bare()
        .args(["-u", "receive", "--from-stream=-"])
        .arg(format!("--save-to={}", out.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for p in inputs {
            let _ = stdin.write_all(&std::fs::read(p).unwrap());
        }
    }
    child.wait_with_output().unwrap()
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
    let st = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "spbk-assemble"])
        .status()
        .unwrap();
    assert!(st.success());
    let out = env.path().join("asm.img");
    let o = Command::new(bin().with_file_name("spbk-assemble"))
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
