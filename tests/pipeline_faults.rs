//! Every stage of every pipeline failing: the writer (a real filesystem that fills
//! up), the reader (a chunk file missing or cut short) and the decoder (a frame that is
//! not zstd). Each command must stop at once with exit 1, one line naming the path and
//! saying the cause once, and leave no partial target behind. The binaries run under a
//! timeout, so a hang fails the test instead of hanging the suite.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopfs::{FsKind, LoopFs};

const MIB: u64 = 1 << 20;
/// A restore reads and decodes 8 MiB batches of chunks and queues two ahead of the
/// writer: a volume of more than four batches keeps the reader busy after the writer
/// stopped, which is what used to hang.
const VOLUME: usize = 40 << 20;
/// Long enough for the debug build on a loaded machine, far shorter than a hang.
const LIMIT: Duration = Duration::from_secs(180);

/// Run `cmd` to its end, or kill it and fail the test after `LIMIT`.
fn run_limited(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{cmd:?}");
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {LIMIT:?}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

fn sparsebak(env: &Env, args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.arg("-c").arg(&env.config).arg("-u").args(args);
    c.env_remove("SPARSEBAK_FAILPOINT");
    run_limited(c)
}

/// The command failed with exit 1 and one error line that names `path` and says
/// `cause` exactly once. Returns stderr.
fn fails_naming(out: &Output, path: &Path, cause: &str) -> String {
    fails_with(out, 1, path, cause)
}

/// As `fails_naming`, with exit status `code` (4: verify found damage).
fn fails_with(out: &Output, code: i32, path: &Path, cause: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "exit status; stderr:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains(&path.display().to_string()),
        "the error must name {}:\n{err}",
        path.display()
    );
    assert_eq!(
        err.matches(cause).count(),
        1,
        "{cause:?} must be said exactly once:\n{err}"
    );
    err
}

/// Names in `dir` other than ext4's lost+found.
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lost+found")
        .collect();
    v.sort();
    v
}

/// An archive of volume `v`: one session of `VOLUME` bytes of random data.
fn archive() -> Env {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(7).bytes(VOLUME)).unwrap();
    env.send("v");
    env
}

/// A 16 MiB ext4, too small for the volume.
fn small_fs(test: &str) -> Option<LoopFs> {
    LoopFs::sized(test, FsKind::Ext4, "", 16 * MIB, &[])
}

/// The chunk file of chunk `index` of the only session.
fn chunk_file(env: &Env, index: u64) -> PathBuf {
    let vol = env.vol_dir("v");
    let id = env.latest("v").id;
    let addr = index * env.chunksize;
    vol.join(format!("S_{id}"))
        .join(format!("x{:09x}", addr >> 28))
        .join(format!("x{addr:016x}"))
}

#[test]
fn receive_save_to_onto_a_full_filesystem_stops_with_the_error() {
    let env = archive();
    let Some(fs) = small_fs("receive_save_to_onto_a_full_filesystem") else {
        return;
    };
    let target = fs.path().join("out.img");
    let save = format!("--save-to={}", target.display());
    let out = sparsebak(&env, &["receive", "v", &save]);
    fails_naming(&out, &target, "No space left on device");
    assert_eq!(
        entries(fs.path()),
        Vec::<String>::new(),
        "partial file left"
    );
}

#[test]
fn receive_from_stream_onto_a_full_filesystem_stops_with_the_error() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(8).bytes(VOLUME)).unwrap();
    let stream = env.path().join("v.stream");
    env.ok(&["send", "v", &format!("--stream={}", stream.display())]);
    let Some(fs) = small_fs("receive_from_stream_onto_a_full_filesystem") else {
        return;
    };
    let target = fs.path().join("out.img");
    let out = sparsebak(
        &env,
        &[
            "receive",
            &format!("--from-stream={}", stream.display()),
            &format!("--save-to={}", target.display()),
        ],
    );
    fails_naming(&out, &target, "No space left on device");
    assert_eq!(
        entries(fs.path()),
        Vec::<String>::new(),
        "partial file left"
    );
}

#[test]
fn assemble_onto_a_full_filesystem_stops_with_the_error() {
    let env = archive();
    let Some(fs) = small_fs("assemble_onto_a_full_filesystem") else {
        return;
    };
    let target = fs.path().join("out.img");
    let mut c = Command::new(assemble_bin());
    c.arg("-o").arg(&target).arg(env.vol_dir("v"));
    let out = run_limited(c);
    fails_naming(&out, &target, "No space left on device");
    assert_eq!(
        entries(fs.path()),
        Vec::<String>::new(),
        "partial file left"
    );
}

/// Every reader of the archive fails on the damaged chunk `bad`, naming it, with
/// `cause` said once, and no restore target is left.
fn readers_fail_on(env: &Env, bad: &Path, cause: &str) {
    let target = env.path().join("out.img");
    let save = format!("--save-to={}", target.display());
    let out = sparsebak(env, &["receive", "v", &save]);
    fails_naming(&out, bad, cause);
    assert!(!target.exists(), "receive left {}", target.display());
    assert_eq!(
        entries(env.path())
            .into_iter()
            .filter(|n| n.contains("out.img"))
            .count(),
        0,
        "receive left a partial file"
    );

    let mut c = Command::new(assemble_bin());
    c.arg("-o").arg(&target).arg(env.vol_dir("v"));
    fails_naming(&run_limited(c), bad, cause);
    assert_eq!(
        entries(env.path())
            .into_iter()
            .filter(|n| n.contains("out.img"))
            .count(),
        0,
        "spbk-assemble left a partial file"
    );

    // verify's walk of the session folder finds a missing file before reading it.
    let out = sparsebak(env, &["verify", "v"]);
    let cause = if cause == "No such file or directory" {
        "is missing"
    } else {
        cause
    };
    let err = fails_with(&out, 4, bad, cause);
    assert!(err.contains("FAILED with 1 problem(s)"), "{err}");
}

#[test]
fn a_missing_chunk_file_stops_every_reader() {
    let env = archive();
    let bad = chunk_file(&env, 1);
    std::fs::remove_file(&bad).unwrap();
    readers_fail_on(&env, &bad, "No such file or directory");
}

#[test]
fn a_truncated_chunk_file_stops_every_reader() {
    let env = archive();
    let bad = chunk_file(&env, 2);
    let len = std::fs::metadata(&bad).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&bad)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    readers_fail_on(&env, &bad, "zstd");
}

#[test]
fn a_corrupt_zstd_frame_stops_every_reader() {
    let env = archive();
    let bad = chunk_file(&env, 3);
    let len = std::fs::metadata(&bad).unwrap().len() as usize;
    // Not a zstd frame at all: the decoder itself fails (not only the hash check).
    std::fs::write(&bad, vec![0xA5u8; len]).unwrap();
    readers_fail_on(&env, &bad, "zstd");
}

#[test]
fn a_failed_create_says_its_cause_once_with_the_path() {
    let env = archive();
    let target = env.path().join("no-such-folder").join("out.img");
    let save = format!("--save-to={}", target.display());
    let out = sparsebak(&env, &["receive", "v", &save]);
    let err = fails_naming(
        &out,
        &target.with_file_name(""),
        "No such file or directory",
    );
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
}

#[test]
fn send_stream_onto_a_full_filesystem_stops_and_records_nothing() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(9).bytes(VOLUME)).unwrap();
    let Some(fs) = small_fs("send_stream_onto_a_full_filesystem") else {
        return;
    };
    let target = fs.path().join("v.stream");
    let out = sparsebak(
        &env,
        &["send", "v", &format!("--stream={}", target.display())],
    );
    let err = fails_naming(&out, &target, "No space left on device");
    assert!(
        err.contains("is full: this session needed more than")
            && err.contains("were free when it started"),
        "says the room the stream needed:\n{err}"
    );
    assert_eq!(
        entries(fs.path()),
        Vec::<String>::new(),
        "partial stream left"
    );
    // The chain was not extended: the next stream is a full one, restorable alone.
    let next = env.path().join("v.stream");
    env.ok(&["send", "v", &format!("--stream={}", next.display())]);
    let back = env.path().join("back.img");
    env.ok(&[
        "receive",
        &format!("--from-stream={}", next.display()),
        &format!("--save-to={}", back.display()),
    ]);
    assert_same(
        &std::fs::read(&back).unwrap(),
        &env.read_image("v"),
        "stream",
    );
}

/// Rewrite the plain info at `info` so that it records `manifest` as its manifest
/// (its own checksum made again): what a plain archive cannot tell from its own.
fn rehash_info(info: &Path, manifest: &[u8]) {
    use sha2::Digest;
    let text = std::fs::read_to_string(info).unwrap();
    let mut body = String::new();
    for l in text.lines() {
        if l.starts_with("info_sha256=") {
            continue;
        }
        if l.starts_with("manifest_sha256=") {
            body.push_str(&format!(
                "manifest_sha256={}\n",
                hex::encode(sha2::Sha256::digest(manifest))
            ));
        } else {
            body.push_str(l);
            body.push('\n');
        }
    }
    let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    std::fs::write(info, format!("{body}info_sha256={sum}\n")).unwrap();
}

/// The send pipeline's reader also walks the archive's latest view: a manifest line
/// damaged half-way fails it while the writer is busy storing (the manifest matching
/// its info: a damaged one that does not is refused before anything is read).
#[test]
fn a_damaged_base_manifest_stops_send_and_diff() {
    let env = archive();
    let id = env.latest("v").id;
    let manifest = env.vol_dir("v").join(format!("S_{id}")).join("manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[400] = format!("not-a-hash {}", &lines[400][65..]);
    let damaged = lines.join("\n") + "\n";
    std::fs::write(&manifest, &damaged).unwrap();
    // Its info rewritten to match (a plain info can be): the damage is then met only
    // when the reader comes to the line, not when the view is opened.
    rehash_info(&manifest.with_file_name("info"), damaged.as_bytes());
    // Every chunk changes, so the writer stores chunks while the reader runs into the
    // damaged line.
    std::fs::write(env.image("v"), Rng::new(10).bytes(VOLUME)).unwrap();
    let out = sparsebak(&env, &["send", "v"]);
    let err = fails_naming(&out, &manifest, "bad manifest line");
    assert!(err.contains(":401:"), "names the line:\n{err}");
    assert_eq!(env.sessions("v").len(), 1, "no session made");
    let staging: Vec<String> = entries(&env.vol_dir("v"))
        .into_iter()
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert_eq!(staging, Vec::<String>::new(), "staging folder left");

    let out = sparsebak(&env, &["diff", "v", &format!("--session={id}")]);
    fails_naming(&out, &manifest, "bad manifest line");
}
