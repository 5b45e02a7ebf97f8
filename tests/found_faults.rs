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

fn session_dir(env: &Env) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("S_"))
        .collect();
    dirs.sort();
    dirs.pop().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fault: `receive --save-to` accepts a path inside the archive it reads, exits 0 and
/// overwrites the session's own manifest; the archive no longer verifies.
#[test]
fn fault_receive_into_the_archive_destroys_it() {
    let (env, _) = sent(2 * MIB, 1);
    let manifest = session_dir(&env).join("manifest");
    let o = env.run(&["receive", "v", &format!("--save-to={}", manifest.display())]);
    assert!(
        !o.status.success(),
        "receive into the archive's own manifest exited 0"
    );
    env.verify_ok("v", None);
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

/// Fault: a receive error says its context twice ("receive v session ... into T:
/// receive v: chunk ..."), and verify counts one missing chunk file as two problems
/// and says "session ID" twice on one line.
#[test]
fn fault_one_missing_chunk_is_said_more_than_once() {
    let (env, _) = sent(2 * MIB, 3);
    let sdir = session_dir(&env);
    let sub = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    chunks.sort();
    let victim = chunks[5].clone();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&victim).unwrap();

    let target = env.path().join("out.img");
    let err = stderr(&env.run(&["receive", "v", &format!("--save-to={}", target.display())]));
    assert_eq!(err.matches("receive v").count(), 1, "{err}");

    let o = env.run(&["verify", "v"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let id = sdir.file_name().unwrap().to_string_lossy()[2..].to_string();
    for line in err.lines() {
        assert!(line.matches(&id).count() <= 1, "session said twice: {line}");
    }
    assert_eq!(err.matches(&name).count(), 1, "{err}");
    assert!(err.contains("1 problem"), "{err}");
}

/// Fault: a read-only block device is accepted as a target; the first write fails
/// with "Operation not permitted", which does not say the device is read-only.
#[test]
fn fault_read_only_device_is_not_refused_as_such() {
    if !need_root("fault_read_only_device") {
        return;
    }
    let (env, _) = sent(MIB, 6);
    let backing = env.path().join("dev.img");
    std::fs::write(&backing, vec![0u8; 4 * MIB]).unwrap();
    let Some(lo) = Loop::new("fault_read_only_device", &backing, 512) else {
        return;
    };
    // The read-only flag outlives the loop device's detach: clear it before.
    struct SetRwOnDrop(PathBuf);
    impl Drop for SetRwOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("blockdev")
                .arg("--setrw")
                .arg(&self.0)
                .status();
        }
    }
    let _rw = SetRwOnDrop(lo.dev.clone());
    let st = Command::new("blockdev")
        .arg("--setro")
        .arg(&lo.dev)
        .status()
        .unwrap();
    assert!(st.success());
    let o = env.run(&["receive", "v", &format!("--save-to={}", lo.dev.display())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
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

/// Fault: with `destmountpoint` not mounted, commands that only read (list, verify,
/// receive) say "refusing to write the archive under it".
#[test]
fn fault_unmounted_destmountpoint_says_write_for_readers() {
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir_all(p.join("img")).unwrap();
    std::fs::create_dir_all(p.join("mnt")).unwrap();
    std::fs::write(p.join("img/v"), vec![1u8; 65536]).unwrap();
    let ini = p.join("c.ini");
    std::fs::write(
        &ini,
        format!(
            "[var]\nsource = file\nvoldir = {}\ndestmountpoint = {}\ndestdir = sb\nmetadir = {}\n[volumes]\nv = enable\n",
            p.join("img").display(),
            p.join("mnt").display(),
            p.join("meta").display()
        ),
    )
    .unwrap();
    for args in [&["list"][..], &["verify", "v"]] {
        let o = run_with(&ini, args);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains("mounted"), "{err}");
        assert!(!err.contains("write"), "{args:?}: {err}");
    }
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
