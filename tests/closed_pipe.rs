//! Output into a pipe whose reader went away (`sparsebak prune ... | head -1`): no
//! command panics, a prune or send carries on to the end, and the exit status stays
//! 0 (success) or 1 (failure) as documented.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Output, Stdio};

use common::*;

/// The write end of a pipe whose read end is already closed: every write to it fails
/// with EPIPE.
fn closed_pipe() -> Stdio {
    let mut fds = [0; 2];
    // SAFETY: pipe fills two new descriptors, each owned exactly once below.
    let (r, w) = unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
        (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
    };
    drop(r);
    Stdio::from(w)
}

/// Run sparsebak with stdout (`out`) and/or stderr (`err`) into a closed pipe; the
/// other streams are captured.
fn run_closed(env: &Env, args: &[&str], out: bool, err: bool) -> Output {
    let mut c = Command::new(bin());
    c.arg("-c").arg(&env.config).arg("-u").args(args);
    c.env_remove("SPARSEBAK_FAILPOINT").stdin(Stdio::null());
    c.stdout(if out { closed_pipe() } else { Stdio::piped() });
    c.stderr(if err { closed_pipe() } else { Stdio::piped() });
    c.output().unwrap()
}

fn no_panic(o: &Output, code: i32, what: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert_eq!(o.status.code(), Some(code), "{what}: {err}");
}

/// Volume `v` with `n` sessions.
fn sessions(n: usize) -> (Env, Vec<String>) {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(5);
    let mut img = rng.bytes(8 * env.chunksize as usize);
    for i in 0..n {
        img[i * env.chunksize as usize] ^= 0xff;
        std::fs::write(env.image("v"), &img).unwrap();
        env.send("v");
    }
    let ids = env.sessions("v").into_iter().map(|s| s.id).collect();
    (env, ids)
}

#[test]
fn prune_into_a_closed_pipe_removes_every_session_it_was_asked_to() {
    let (env, ids) = sessions(4);
    let range = format!("--session={},{}", ids[0], ids[2]);
    let o = run_closed(&env, &["prune", "v", &range], true, false);
    no_panic(&o, 0, "prune | closed");
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, vec![ids[3].clone()], "all three removals done");
    env.verify_ok("v", None);
}

#[test]
fn prune_with_both_outputs_closed_still_finishes() {
    let (env, ids) = sessions(3);
    let range = format!("--session={},{}", ids[0], ids[1]);
    let o = run_closed(&env, &["-v", "prune", "v", &range], true, true);
    assert_eq!(o.status.code(), Some(0));
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, vec![ids[2].clone()]);
}

#[test]
fn list_and_diff_into_a_closed_pipe_exit_0() {
    let (env, ids) = sessions(2);
    no_panic(&run_closed(&env, &["list"], true, false), 0, "list");
    let sel = format!("--session={},{}", ids[0], ids[1]);
    no_panic(
        &run_closed(&env, &["diff", "v", &sel], true, false),
        0,
        "diff",
    );
    no_panic(
        &run_closed(&env, &["diff", "v", &sel, "--json"], true, false),
        0,
        "diff --json",
    );
}

#[test]
fn send_with_closed_outputs_completes_the_session() {
    let (env, _) = sessions(1);
    let mut img = env.read_image("v");
    img[3] ^= 1;
    std::fs::write(env.image("v"), &img).unwrap();
    let o = run_closed(&env, &["-v", "send", "v"], true, true);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(env.sessions("v").len(), 2);
    assert_same(&env.receive("v", None), &img, "the session sent");
}

#[test]
fn an_error_into_a_closed_stderr_exits_1() {
    let (env, _) = sessions(1);
    let o = run_closed(
        &env,
        &["receive", "v", "--save-to=/nonexistent/x.img"],
        false,
        true,
    );
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "nothing on stdout");
}

#[test]
fn assemble_into_a_closed_pipe_fails_without_panic() {
    let (env, _) = sessions(1);
    let o = Command::new(assemble_bin())
        .arg(env.vol_dir("v"))
        .stdout(closed_pipe())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("Broken pipe").count(), 1, "{err}");
}

#[test]
fn help_and_bad_usage_into_closed_pipes_keep_their_exit_codes() {
    for (args, code) in [(&["--help"][..], 0), (&["--no-such-option"][..], 2)] {
        let o = Command::new(bin())
            .args(args)
            .stdout(closed_pipe())
            .stderr(closed_pipe())
            .status()
            .unwrap();
        assert_eq!(o.code(), Some(code), "{args:?}");
    }
}
