//! A send whose archive filesystem fills up, of bytes or of inodes: it fails with the
//! cause said once, how much room the session needed against what was free (or that
//! inodes ran out), leaves nothing visible in the archive, the archive still verifies,
//! and the next send completes once there is room.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::path::{Path, PathBuf};

use common::*;
use loopfs::{FsKind, LoopFs};

const MIB: u64 = 1 << 20;

/// An env whose archive lives in `dest` (on a loop filesystem).
fn env_on(dest: &Path) -> Env {
    let env = Env::new(&["v"]);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let ini = ini.replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", dest.display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    env
}

fn bytes_free(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: statvfs fills the struct it is given; the path is a valid C string.
    unsafe {
        let mut s: libc::statvfs = std::mem::zeroed();
        assert_eq!(libc::statvfs(c.as_ptr(), &mut s), 0);
        s.f_bavail * s.f_frsize
    }
}

/// Names in the volume folder that are not a committed session or the lock.
fn leftovers(vol: &Path) -> Vec<String> {
    std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("S_") && n != ".lock")
        .collect()
}

fn send_fails(env: &Env) -> String {
    let o = env.run(&["send", "v"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "send must fail:\n{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the cause is said once:\n{err}"
    );
    err
}

#[test]
fn send_onto_a_full_filesystem_says_what_it_needed_and_keeps_nothing() {
    let Some(fs) = LoopFs::sized(
        "send_onto_a_full_filesystem",
        FsKind::Ext4,
        "",
        64 * MIB,
        &[],
    ) else {
        return;
    };
    let dest = fs.path().join("archive");
    let env = env_on(&dest);
    let vol: PathBuf = dest.join("v");
    let mut rng = Rng::new(3);
    let v1 = rng.bytes(8 << 20);
    std::fs::write(env.image("v"), &v1).unwrap();
    env.send("v");
    // Leave about 6 MiB free, then change 24 MiB of the volume (random: it does not
    // compress).
    let filler = fs.path().join("filler");
    let room = bytes_free(fs.path());
    std::fs::write(&filler, vec![0x5au8; (room - 6 * MIB) as usize]).unwrap();
    let mut v2 = v1.clone();
    v2.extend(rng.bytes(24 << 20));
    std::fs::write(env.image("v"), &v2).unwrap();

    let err = send_fails(&env);
    assert!(
        err.contains(&vol.display().to_string()),
        "names the archive:\n{err}"
    );
    assert!(
        err.contains("is full: this session needed more than"),
        "says what it needed:\n{err}"
    );
    assert!(err.contains("were free when it started"), "{err}");
    assert!(!err.contains("inodes"), "bytes ran out, not inodes:\n{err}");
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");

    // Nothing visible: one session, no staging folder; it verifies and restores.
    assert_eq!(leftovers(&vol), Vec::<String>::new());
    assert_eq!(env.sessions("v").len(), 1);
    env.verify_ok("v", None);
    assert_same(
        &env.receive("v", None),
        &v1,
        "session 1 after the failed send",
    );

    // Once there is room, the next send completes.
    std::fs::remove_file(&filler).unwrap();
    env.send("v");
    assert_eq!(env.sessions("v").len(), 2);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &v2, "session 2");
    assert_eq!(leftovers(&vol), Vec::<String>::new());
}

#[test]
fn send_out_of_inodes_says_so_and_a_tar_session_fits() {
    // 64 inodes: fewer than the 128 chunk files of the volume, bytes to spare.
    let Some(fs) = LoopFs::sized(
        "send_out_of_inodes",
        FsKind::Ext4,
        "",
        64 * MIB,
        &["-N", "64"],
    ) else {
        return;
    };
    let dest = fs.path().join("archive");
    let env = env_on(&dest);
    let vol = dest.join("v");
    let v1 = Rng::new(4).bytes(8 << 20);
    std::fs::write(env.image("v"), &v1).unwrap();

    let err = send_fails(&env);
    assert!(
        err.contains(&vol.display().to_string()),
        "names the archive:\n{err}"
    );
    assert!(
        err.contains("has no free inodes left") && err.contains("though bytes remain"),
        "says inodes ran out:\n{err}"
    );
    assert!(!err.contains("is full: this session needed"), "{err}");
    assert_eq!(leftovers(&vol), Vec::<String>::new());
    assert_eq!(env.sessions("v").len(), 0);

    // A tar session needs a few files only.
    env.ok(&["send", "--tarfile", "v"]);
    assert_eq!(env.sessions("v").len(), 1);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &v1, "tar session");
}

/// With not a single inode free, every kind of send says that inodes ran out, whatever
/// step failed (here the very first: creating the staging folder or the stream file),
/// and leaves nothing behind.
#[test]
fn send_with_no_inode_left_says_inodes_ran_out() {
    let Some(fs) = LoopFs::sized("send_no_inode", FsKind::Ext4, "", 32 * MIB, &["-N", "64"]) else {
        return;
    };
    let dest = fs.path().join("sb");
    let env = env_on(&dest);
    let vol = dest.join("v");
    std::fs::write(env.image("v"), Rng::new(9).bytes(MIB as usize)).unwrap();
    env.send("v");
    let filler = use_every_inode(fs.path());
    env.write_at("v", 0, &[7u8; 100]);
    for args in [&["send", "v"][..], &["send", "--tarfile", "v"]] {
        let err = send_fails_with(&env, args);
        assert!(
            err.contains("has no free inodes left") && err.contains(&vol.display().to_string()),
            "{args:?}: says inodes ran out:\n{err}"
        );
        assert_eq!(leftovers(&vol), Vec::<String>::new(), "{args:?}");
    }
    assert_eq!(env.sessions("v").len(), 1);

    let stream = fs.path().join("v.stream");
    let err = send_fails_with(
        &env,
        &["send", "v", &format!("--stream={}", stream.display())],
    );
    assert!(
        err.contains("has no free inodes left") && err.contains(&fs.path().display().to_string()),
        "stream: says inodes ran out:\n{err}"
    );
    assert!(!stream.exists());
    let names: Vec<String> = std::fs::read_dir(fs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains("v.stream")), "{names:?}");

    // Once inodes are free again, the send works.
    std::fs::remove_dir_all(&filler).unwrap();
    env.ok(&["send", "v"]);
    env.verify_ok("v", None);
}

fn send_fails_with(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?} must fail:\n{err}");
    assert_eq!(
        err.matches("No space left on device").count(),
        1,
        "the cause is said once:\n{err}"
    );
    err
}

/// Creates files under `fs` until not a single inode is left; returns their folder.
fn use_every_inode(fs: &Path) -> PathBuf {
    let filler = fs.join("filler");
    std::fs::create_dir(&filler).unwrap();
    for i in 0.. {
        if std::fs::File::create(filler.join(format!("f{i}"))).is_err() {
            break;
        }
    }
    filler
}

/// `prune` and `repair` with not a single inode free say that inodes ran out, change
/// nothing and leave no staging behind; both work once inodes are free again.
#[test]
fn prune_and_repair_with_no_inode_left_say_so_and_leave_nothing() {
    let Some(fs) = LoopFs::sized("prune_no_inode", FsKind::Ext4, "", 32 * MIB, &["-N", "64"])
    else {
        return;
    };
    let dest = fs.path().join("sb");
    let env = env_on(&dest);
    let vol = dest.join("v");
    let mut rng = Rng::new(31);
    let v = rng.bytes(MIB as usize);
    std::fs::write(env.image("v"), &v).unwrap();
    env.send("v");
    env.write_at("v", 0, &rng.bytes(4096));
    env.send("v");
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2);
    // A chunk file for repair to re-create (the volume still holds its data).
    let chunk = vol.join(format!("S_{}/x000000000/x0000000000000000", ids[1]));
    std::fs::remove_file(&chunk).unwrap();
    let filler = use_every_inode(fs.path());

    let err = send_fails_with(&env, &["prune", "v", &format!("--session={}", ids[0])]);
    assert!(err.contains("has no free inodes left"), "prune:\n{err}");
    assert!(err.contains("nothing was changed"), "prune:\n{err}");
    assert_eq!(leftovers(&vol), Vec::<String>::new());
    assert_eq!(env.sessions("v").len(), 2);

    let err = send_fails_with(&env, &["repair", "v"]);
    assert!(err.contains("has no free inodes left"), "repair:\n{err}");
    assert_eq!(leftovers(&vol), Vec::<String>::new());
    assert!(!chunk.exists());

    std::fs::remove_dir_all(&filler).unwrap();
    env.ok(&["repair", "v"]);
    assert!(chunk.exists());
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    assert_eq!(env.sessions("v").len(), 1);
    env.verify_ok("v", None);
    assert_same(
        &env.receive("v", None),
        &env.read_image("v"),
        "after prune and repair",
    );
}
