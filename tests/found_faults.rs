//! Faults found by trying the hardened commands as a new user would. Each test names
//! the fault it shows and fails until the fault is fixed.

mod common;
#[path = "common/loopdev.rs"]
mod loopdev;

use common::*;
use loopdev::{need_root, Loop};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// One volume `v` of `size` random bytes, sent once.
fn sent(size: usize, seed: u64) -> (Env, Vec<u8>) {
    let env = Env::new(&["v"]);
    let img = Rng::new(seed).bytes(size);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    (env, img)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fault: bad usage (a required option missing, an option of another command, a
/// selector that cannot be understood) exits 1 or 0, though 2 is documented for it.
#[test]
fn fault_bad_usage_does_not_exit_2() {
    let (env, _) = sent(MIB, 2);
    for args in [
        &["receive", "v"][..],
        &["prune", "v"],
        &["diff", "v"],
        &["send", "--save-to=x", "v"],
        &["list", "--session=bogus"],
        &["send", "--session=bogus", "v"],
    ] {
        let o = env.run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    }
}

/// Fault: `-v` log lines carry ANSI colour escapes into files and cron mail when
/// stderr is not a terminal.
#[test]
fn fault_log_lines_have_colour_escapes_off_a_terminal() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(7).bytes(MIB)).unwrap();
    let o = env.run(&["-v", "send", "v"]);
    assert!(o.status.success());
    assert!(!o.stderr.contains(&0x1b), "{:?}", stderr(&o));
}

fn run_with(ini: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("-c")
        .arg(ini)
        .args(args)
        .output()
        .unwrap()
}

/// Fault: `verify` without a volume answers with an example of another command:
/// "name the volume (e.g. `sparsebak receive --save-to=PATH VOLUME`)".
#[test]
fn fault_verify_without_volume_shows_a_receive_example() {
    let (env, _) = sent(MIB, 15);
    let err = stderr(&env.run(&["verify"]));
    assert!(err.contains("sparsebak verify"), "{err}");
    assert!(!err.contains("receive"), "{err}");
}
