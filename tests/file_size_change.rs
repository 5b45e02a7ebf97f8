//! A `source = file` volume that grows or shrinks while it is sent: the send (to the
//! archive or to a stream) fails with a clear message, nothing becomes visible, and
//! the next send stores the volume as it is then. The change is made at an exact point
//! of the send: the process stops itself there (`SPARSEBAK_FAILPOINT=NAME:stop`).

mod common;
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const CS: usize = 65536;

/// Run `sparsebak args` until it stops at `send-mid-chunks`, apply `change`, let it go
/// on, and return its output.
fn changed_mid_send(env: &Env, args: &[&str], change: impl FnOnce()) -> Output {
    let child = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .arg("-u")
        .args(args)
        .env("SPARSEBAK_FAILPOINT", "send-mid-chunks:stop")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stat = format!("/proc/{}/stat", child.id());
    let start = Instant::now();
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = s.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        if state == Some('T') {
            break;
        }
        assert!(
            state.is_some() && state != Some('Z'),
            "sparsebak ended before the stop point"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "sparsebak never reached the stop point"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    change();
    // SAFETY: a signal to our own child, which has not been waited for.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGCONT) }, 0);
    child.wait_with_output().unwrap()
}

fn assert_size_error(o: &Output, from: usize, to: usize) {
    assert_eq!(o.status.code(), Some(1), "exit status");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!(
            "changed size during the send, from {from} to {to} bytes; nothing was stored"
        )),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
}

fn s_entries(env: &Env, vol: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(env.vol_dir(vol)) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("S_"))
        .collect();
    v.sort();
    v
}

fn append(env: &Env, vol: &str, data: &[u8]) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(env.image(vol))
        .unwrap();
    f.write_all(data).unwrap();
}

#[test]
fn growing_during_a_full_send() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(18);
    let mut img = rng.bytes(200 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    let more = rng.bytes(16 * CS);
    let o = changed_mid_send(&env, &["send", "v"], || append(&env, "v", &more));
    assert_size_error(&o, 200 * CS, 216 * CS);
    assert_eq!(s_entries(&env, "v"), Vec::<String>::new(), "no session");
    assert!(env.sessions("v").is_empty());
    // The next send stores the volume as it is now.
    img.extend_from_slice(&more);
    env.send("v");
    let s = env.sessions("v");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].size, 216 * CS as u64);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "after the refused send");
}

#[test]
fn truncated_during_an_incremental_send() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(19);
    let mut img = rng.bytes(200 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let first = env.sessions("v");
    rng.fill(&mut img[..120 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    let o = changed_mid_send(&env, &["send", "v"], || {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(env.image("v"))
            .unwrap();
        f.set_len(100 * CS as u64).unwrap();
    });
    assert_size_error(&o, 200 * CS, 100 * CS);
    assert_eq!(env.sessions("v"), first, "only the first session");
    assert_eq!(s_entries(&env, "v"), [format!("S_{}", first[0].id)]);
    env.verify_ok("v", None);
    img.truncate(100 * CS);
    env.send("v");
    let s = env.sessions("v");
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].size, 100 * CS as u64);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "after the refused send");
}

#[test]
fn growing_during_a_stream_send() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(20);
    let mut img = rng.bytes(120 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    let stream = env.path().join("s1.stream");
    let arg = format!("--stream={}", stream.display());
    let more = rng.bytes(CS / 2);
    let o = changed_mid_send(&env, &["send", &arg, "v"], || append(&env, "v", &more));
    assert_size_error(&o, 120 * CS, 120 * CS + CS / 2);
    // No stream, no partial stream, nothing in the archive.
    let left: Vec<String> = std::fs::read_dir(env.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("stream"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    assert!(s_entries(&env, "v").is_empty());
    // The chain did not advance: the next stream is a full one of the grown volume.
    img.extend_from_slice(&more);
    env.ok(&["send", &arg, "v"]);
    let out = env.path().join("restored.img");
    env.ok(&[
        "receive",
        &format!("--from-stream={}", stream.display()),
        &format!("--save-to={}", out.display()),
    ]);
    assert_same(
        &std::fs::read(&out).unwrap(),
        &img,
        "stream after the refused send",
    );
}
