//! Faults found by trying the hardened commands as a new user would. Each test names
//! the fault it shows and fails until the fault is fixed.

mod common;
#[path = "common/loopdev.rs"]
mod loopdev;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopdev::{need_root, Loop};
use loopfs::{FsKind, LoopFs};
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

/// Fault: `untar` that runs out of inodes leaves its `.tmp-untar-S_*` folder behind,
/// holding every inode; sends of other volumes then fail until a send of that same
/// volume happens to clean it up. Its error does not say that inodes ran out.
#[test]
fn fault_failed_untar_leaves_the_archive_full() {
    let Some(fs) = LoopFs::sized(
        "fault_untar_full",
        FsKind::Ext4,
        "",
        64 << 20,
        &["-N", "64"],
    ) else {
        return;
    };
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir_all(p.join("img")).unwrap();
    let mut rng = Rng::new(8);
    std::fs::write(p.join("img/big"), rng.bytes(24 * MIB)).unwrap();
    std::fs::write(p.join("img/small"), rng.bytes(MIB)).unwrap();
    let ini = p.join("c.ini");
    let archive = fs.path().join("sb");
    std::fs::write(
        &ini,
        format!(
            "[var]\nsource = file\nvoldir = {}\ndestdir = {}\nmetadir = {}\n[volumes]\nbig = enable\nsmall = enable\n",
            p.join("img").display(),
            archive.display(),
            p.join("meta").display()
        ),
    )
    .unwrap();
    assert!(run_with(&ini, &["send", "--tarfile", "big"])
        .status
        .success());
    let o = run_with(&ini, &["-u", "untar", "big"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "untar of 384 chunks into ~180 inodes"
    );
    let err = stderr(&o);
    assert!(err.contains("inode"), "{err}");
    let left: Vec<String> = std::fs::read_dir(archive.join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let o = run_with(&ini, &["send", "small"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Fault: a send into an archive whose filesystem has no free inode at all fails at
/// its first folder with a bare "No space left on device": no word of inodes, though
/// the README promises it.
#[test]
fn fault_send_with_no_inode_left_is_not_explained() {
    let Some(fs) = LoopFs::sized("fault_no_inode", FsKind::Ext4, "", 32 << 20, &["-N", "64"])
    else {
        return;
    };
    let env = Env::new(&["v"]);
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", fs.path().join("sb").display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    std::fs::write(env.image("v"), Rng::new(9).bytes(MIB)).unwrap();
    env.send("v");
    let filler = fs.path().join("filler");
    std::fs::create_dir(&filler).unwrap();
    for i in 0.. {
        if std::fs::File::create(filler.join(format!("f{i}"))).is_err() {
            break;
        }
    }
    env.write_at("v", 0, &[7u8; 100]);
    let o = env.run(&["send", "v"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("No space left"), "{err}");
    assert!(err.contains("inode"), "{err}");
}

fn assemble_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "spbk-assemble"])
            .status()
            .unwrap();
        assert!(st.success());
    });
    bin().with_file_name("spbk-assemble")
}

/// Fault: after a prune was interrupted (power cut), `spbk-assemble` of the latest
/// session fails with a bare "chunk ...: No such file or directory" on a chunk the
/// journal moved; it says nothing of the interrupted prune or how to finish it,
/// though `sparsebak list` would finish it and the session is whole.
#[test]
fn fault_assemble_after_interrupted_prune_blames_a_missing_chunk() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(11);
    let mut v = rng.bytes(8 * 65536);
    for i in 0..3 {
        rng.fill(&mut v[i * 65536..i * 65536 + 10]);
        env.write_at("v", 0, &v);
        env.send("v");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-mid-move")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    let out = env.path().join("a.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    if o.status.success() {
        assert_eq!(std::fs::read(&out).unwrap(), v, "assembled image");
    } else {
        let err = stderr(&o);
        assert!(err.contains("prune"), "{err}");
    }
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
