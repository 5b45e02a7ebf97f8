//! Tar sessions inside an archive: mixed folder/tar histories restore at every session,
//! GNU tar reads what is written (and `tar -xf` yields a valid folder session), prune
//! and untar work across them, damage is caught.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;
use common::*;
use loopfs::{FsKind, LoopFs};
use std::path::Path;
use std::process::Command;

const CS: usize = 65536;

/// Sessions alternating tar / folder / tar / tar / folder. Returns versions.
fn mixed(env: &Env) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(21);
    let mut cur = vec![0u8; 24 * CS + 333];
    rng.fill(&mut cur[..10 * CS]);
    let mut versions = Vec::new();
    for (round, tar) in [true, false, true, true, false].into_iter().enumerate() {
        if round > 0 {
            let c = (round * 3) % 12;
            rng.fill(&mut cur[c * CS..(c + 2) * CS]);
            cur[(round + 8) * CS..(round + 9) * CS].fill(0);
        }
        if round == 3 {
            cur.truncate(15 * CS + 7);
        }
        if round == 4 {
            cur.resize(20 * CS, 0);
            cur[19 * CS] = 9;
        }
        std::fs::write(env.image("v"), &cur).unwrap();
        if tar {
            env.ok(&["send", "--tarfile", "v"]);
        } else {
            env.send("v");
        }
        versions.push(cur.clone());
    }
    versions
}

#[test]
fn mixed_history_restores_and_verifies() {
    let env = Env::new(&["v"]);
    let versions = mixed(&env);
    let tars: Vec<_> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar"))
        .collect();
    assert_eq!(tars.len(), 3, "{tars:?}");
    check_sessions(&env, &versions, &[0, 1, 2, 3, 4], "mixed");
    // diff between a tar and a folder session works from the views alone.
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    let out = env.diff_sessions("v", &ids[0], &ids[1], true);
    assert!(out.contains("\"changed_chunks\":"), "{out}");
}

#[test]
fn gnu_tar_reads_tar_sessions() {
    let env = Env::new(&["v"]);
    let versions = mixed(&env);
    let id = env.sessions("v")[0].id.clone();
    let tarfile = env.vol_dir("v").join(format!("S_{id}.tar"));
    let o = Command::new("tar")
        .arg("-tvf")
        .arg(&tarfile)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listing = String::from_utf8_lossy(&o.stdout);
    assert!(
        listing.contains(&format!("S_{id}/manifest")) && listing.contains(&format!("S_{id}/info"))
    );
    assert!(
        listing.contains(&format!("S_{id}/x000000000/x0000000000000000")),
        "{listing}"
    );
    // Replace the tar by what GNU tar extracts: a folder session that still restores.
    let o = Command::new("tar")
        .arg("-xf")
        .arg(&tarfile)
        .current_dir(env.vol_dir("v"))
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::remove_file(&tarfile).unwrap();
    std::fs::remove_file(tarfile.with_extension("tar.index")).unwrap();
    assert!(env.vol_dir("v").join(format!("S_{id}")).is_dir());
    check_sessions(&env, &versions, &[0, 1, 2, 3, 4], "after tar -xf");
}

#[test]
fn untar_converts_in_place() {
    let env = Env::new(&["v"]);
    let versions = mixed(&env);
    env.ok(&["untar", "v"]);
    for e in std::fs::read_dir(env.vol_dir("v")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.ends_with(".tar") && !n.ends_with(".index"), "left {n}");
    }
    check_sessions(&env, &versions, &[0, 1, 2, 3, 4], "untar");
}

#[test]
fn untar_killed_before_rename() {
    let env = Env::new(&["v"]);
    let versions = mixed(&env);
    let o = env.run_env(
        &["untar", "v"],
        &[("SPARSEBAK_FAILPOINT", "untar-before-rename")],
    );
    assert!(!o.status.success());
    check_sessions(&env, &versions, &[0, 1, 2, 3, 4], "after a killed untar");
    env.ok(&["untar", "v"]);
    check_sessions(&env, &versions, &[0, 1, 2, 3, 4], "untar again");
}

#[test]
fn prune_across_tar_sessions() {
    let env = Env::new(&["v"]);
    let versions = mixed(&env);
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    env.ok(&["prune", "v", &format!("--session={}", ids[2])]); // tar into tar
    check_sessions(&env, &versions, &[0, 1, 3, 4], "tar into tar");
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]); // tar into folder
    check_sessions(&env, &versions, &[1, 3, 4], "tar into folder");
}

#[test]
fn damage_in_a_tar_session_is_caught() {
    let env = Env::new(&["v"]);
    mixed(&env);
    let id = env.sessions("v")[0].id.clone();
    let tarfile = env.vol_dir("v").join(format!("S_{id}.tar"));
    let mut d = std::fs::read(&tarfile).unwrap();
    // Inside the first chunk member's content (after its 512-byte header).
    d[512 + 100] ^= 0x10;
    std::fs::write(&tarfile, d).unwrap();
    let err = env.fails(&["verify", "v", &format!("--session={id}")]);
    assert!(err.contains("x0000000000000000"), "{err}");
}

#[test]
fn killed_tar_send_leaves_no_session() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(3).bytes(100 * CS)).unwrap();
    for point in ["send-mid-chunks", "session-before-rename"] {
        let o = env.run_env(
            &["send", "--tarfile", "v"],
            &[("SPARSEBAK_FAILPOINT", point)],
        );
        assert!(!o.status.success());
        let o = env.run(&["list", "v"]);
        let text = String::from_utf8_lossy(&o.stdout);
        assert_eq!(
            text.lines().count(),
            1,
            "{point}: no session visible: {text}"
        );
    }
    env.ok(&["send", "--tarfile", "v"]);
    env.verify_ok("v", None);
    for e in std::fs::read_dir(env.vol_dir("v")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(".tmp"), "leftover {n}");
    }
}

/// Names in a volume folder that a run leaves only while it works (staging folders).
fn staging_left(vol: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(vol)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    v.sort();
    v
}

/// An untar that runs out of inodes says so, keeps the tar session as it was and
/// leaves no staging folder to hold the inodes: another volume's send then works.
#[test]
fn untar_out_of_inodes_says_so_and_leaves_the_archive_usable() {
    // 64 inodes: far fewer than the 384 chunk files a folder of `big` needs.
    let Some(fs) = LoopFs::sized(
        "untar_out_of_inodes",
        FsKind::Ext4,
        "",
        64 << 20,
        &["-N", "64"],
    ) else {
        return;
    };
    let env = Env::new(&["big", "small"]);
    let dest = fs.path().join("sb");
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", dest.display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    let mut rng = Rng::new(8);
    let big = rng.bytes(24 << 20);
    std::fs::write(env.image("big"), &big).unwrap();
    std::fs::write(env.image("small"), rng.bytes(1 << 20)).unwrap();
    env.ok(&["send", "--tarfile", "big"]);

    let o = env.run(&["untar", "big"]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("has no free inodes left")
            && err.contains(&dest.join("big").display().to_string()),
        "says inodes ran out, and where:\n{err}"
    );
    assert!(err.contains("kept as a tar"), "{err}");
    assert_eq!(err.matches("No space left on device").count(), 1, "{err}");
    assert_eq!(staging_left(&dest.join("big")), Vec::<String>::new());
    env.verify_ok("big", None);
    assert_same(
        &env.receive("big", None),
        &big,
        "the tar session after a failed untar",
    );

    env.ok(&["send", "small"]);
    env.verify_ok("small", None);
}

/// Staging folders of a run that died (any command's: a send's session, an untar, a
/// repair) are removed by the next command of any volume that writes to the archive,
/// while those of a volume whose lock a live run holds are left alone.
#[test]
fn staging_of_a_dead_run_is_removed_by_any_volumes_next_writer() {
    let env = Env::new(&["a", "b", "c"]);
    let mut rng = Rng::new(21);
    for v in ["a", "b", "c"] {
        std::fs::write(env.image(v), rng.bytes(1 << 20)).unwrap();
        env.send(v);
    }
    let plant = |vol: &str| {
        for name in [
            ".tmp-S_20200101-000000",
            ".tmp-untar-S_20200101-000001",
            ".tmp-repair",
        ] {
            let d = env.vol_dir(vol).join(name).join("x000000000");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("x0000000000000000"), b"chunk").unwrap();
        }
    };
    plant("a");
    plant("c");
    // A live run holds c's lock: its staging is its own.
    let lock = std::fs::File::open(env.vol_dir("c").join(".lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor owned here.
    assert_eq!(
        unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) },
        0
    );

    env.write_at("b", 0, &[9u8; 4096]);
    env.ok(&["send", "b"]);
    assert_eq!(staging_left(&env.vol_dir("a")), Vec::<String>::new());
    assert_eq!(
        staging_left(&env.vol_dir("c")),
        vec![
            ".tmp-S_20200101-000000",
            ".tmp-repair",
            ".tmp-untar-S_20200101-000001"
        ]
    );
    drop(lock);

    // Every writing command sweeps, not only send.
    plant("a");
    env.ok(&["untar", "b"]);
    assert_eq!(staging_left(&env.vol_dir("a")), Vec::<String>::new());
    assert_eq!(staging_left(&env.vol_dir("c")), Vec::<String>::new());
    plant("a");
    env.ok(&["repair", "b"]);
    assert_eq!(staging_left(&env.vol_dir("a")), Vec::<String>::new());
    for v in ["a", "b", "c"] {
        env.verify_ok(v, None);
    }
}
