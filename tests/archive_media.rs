//! The archive's media: a filesystem mounted read-only (reading works, writing says
//! so), an archive disk that is not mounted or is another disk (refused, nothing
//! created), and two runs creating the same archive at once. Real ext4 filesystems on
//! loop devices (needs root, see `common/loopfs.rs`).

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use loopfs::{FsKind, LoopFs};

const CS: usize = 65536;

/// An env whose archive is `destdir` (no `destmountpoint`).
fn env_with_destdir(volumes: &[&str], destdir: &Path) -> Env {
    let env = Env::new(volumes);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let ini = ini.replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", destdir.display()),
    );
    assert!(ini.contains(&format!("destdir = {}\n", destdir.display())));
    std::fs::write(&env.config, ini).unwrap();
    env
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The run failed with exit status 1 and one line on stderr; returns that line.
fn fails_with_one_line(o: &Output, what: &str) -> String {
    assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(o));
    let err = stderr(o);
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    err.trim_end().to_string()
}

fn archive_id(root: &Path) -> String {
    let m = std::fs::read_to_string(root.join("sparsebak.archive")).unwrap();
    let id = m
        .lines()
        .find_map(|l| l.strip_prefix("id="))
        .unwrap_or_else(|| panic!("no id in {m:?}"));
    assert_eq!(m, format!("sparsebak-archive\nformat=1\nid={id}\n"));
    id.to_string()
}

#[test]
fn read_only_archive_is_read_and_not_written() {
    let Some(fs) = LoopFs::new("read_only_archive", FsKind::Ext4, "") else {
        return;
    };
    let root = fs.path().join("sb");
    let env = env_with_destdir(&["a", "b", "c"], &root);
    let mut rng = Rng::new(7);
    // a: two folder sessions; b: one tar session; c: one session killed after its
    // commit, so this machine still has to record it (pending).
    let mut va = rng.bytes(24 * CS);
    va[5 * CS..9 * CS].fill(0);
    env.write_at("a", 0, &va);
    env.send("a");
    let mut va2 = va.clone();
    rng.fill(&mut va2[2 * CS..3 * CS]);
    rng.fill(&mut va2[17 * CS..17 * CS + 100]);
    env.write_at("a", 0, &va2);
    env.send("a");
    let vb = rng.bytes(10 * CS + 1234);
    env.write_at("b", 0, &vb);
    env.ok(&["send", "--tarfile", "b"]);
    let vc = rng.bytes(6 * CS);
    env.write_at("c", 0, &vc);
    let o = env.run_env(
        &["send", "c"],
        &[("SPARSEBAK_FAILPOINT", "send-after-commit")],
    );
    assert!(!o.status.success(), "the send of c should have been killed");
    assert!(env.meta().join("c/sessions/pending").exists());
    let stream = fs.path().join("a.stream");
    env.ok(&["send", "a", &format!("--stream={}", stream.display())]);
    let ids: Vec<String> = env.sessions("a").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2);
    let diff_rw = env.diff_sessions("a", &ids[0], &ids[1], false);
    let before: Vec<String> = names_in(&root.join("a"));

    fs.remount("ro");
    assert!(
        std::fs::write(root.join("probe"), b"x").is_err(),
        "not read-only"
    );

    // Everything that only reads works, with the same results.
    let list = env.ok(&["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "a");
    assert_eq!(lines.iter().filter(|l| l.contains(" size=")).count(), 4);
    assert!(lines.contains(&"c"), "{list}");
    // The pending session of c was recorded on this machine's side.
    assert!(!env.meta().join("c/sessions/pending").exists());
    let c_id = env.latest("c").id;
    assert!(env
        .meta()
        .join(format!("c/sessions/S_{c_id}/info"))
        .is_file());
    for (vol, want, session) in [
        ("a", &va, Some(ids[0].as_str())),
        ("a", &va2, None),
        ("b", &vb, None),
        ("c", &vc, None),
    ] {
        env.verify_ok(vol, session);
        assert_same(&env.receive(vol, session), want, &format!("receive {vol}"));
    }
    assert_eq!(env.diff_sessions("a", &ids[0], &ids[1], false), diff_rw);
    let dry = env.ok(&["prune", "--dry-run", "a", &format!("--session={}", ids[0])]);
    assert!(
        dry.contains(&format!("a: would remove {}", ids[0])),
        "{dry}"
    );
    let out = env.path().join("assembled.img");
    let o = Command::new(assemble_bin())
        .args(["-c", "-o"])
        .arg(&out)
        .arg(root.join("b"))
        .output()
        .unwrap();
    assert!(o.status.success(), "spbk-assemble: {}", stderr(&o));
    assert_same(&std::fs::read(&out).unwrap(), &vb, "spbk-assemble");
    // Streams on read-only media read too.
    let from = format!("--from-stream={}", stream.display());
    env.ok(&["verify", &from]);
    let restored = env.path().join("from-stream.img");
    env.ok(&[
        "receive",
        &from,
        &format!("--save-to={}", restored.display()),
    ]);
    assert_same(
        &std::fs::read(&restored).unwrap(),
        &va2,
        "receive --from-stream",
    );

    // Writers say the destination is read-only, naming it, and change nothing.
    env.write_at("a", 0, &rng.bytes(CS));
    let want = format!(
        "the archive at {} is on a read-only filesystem",
        root.display()
    );
    for args in [
        vec!["send", "a"].as_slice(),
        &["send"],
        &["send", "--tarfile", "b"],
        &["prune", "a", &format!("--session={}", ids[0])],
        &["prune", "--auto", "--keep=last:1", "a"],
        &["delete", "a"],
        &["untar", "b"],
    ] {
        let line = fails_with_one_line(&env.run(args), &format!("{args:?}"));
        assert!(line.contains(&want), "{args:?}: {line}");
        assert!(line.contains("mount it read-write"), "{args:?}: {line}");
    }
    assert_eq!(names_in(&root.join("a")), before);
    let o = env.run(&[
        "send",
        "a",
        &format!("--stream={}", fs.path().join("b.stream").display()),
    ]);
    let line = fails_with_one_line(&o, "send --stream onto read-only media");
    assert!(
        line.contains(&format!(
            "the stream destination {} is on a read-only filesystem",
            fs.path().join("b.stream").display()
        )),
        "{line}"
    );

    // Writable again: the same archive takes the next send.
    fs.remount("rw");
    env.send("a");
    assert_eq!(env.sessions("a").len(), 3);
}

#[test]
fn interrupted_prune_on_read_only_media_says_what_to_do() {
    let Some(fs) = LoopFs::new("interrupted_prune_read_only", FsKind::Ext4, "") else {
        return;
    };
    let root = fs.path().join("sb");
    let env = env_with_destdir(&["v"], &root);
    let mut rng = Rng::new(9);
    let mut versions = Vec::new();
    let mut v = rng.bytes(8 * CS);
    for i in 0..3 {
        rng.fill(&mut v[i * CS..i * CS + 10]);
        env.write_at("v", 0, &v);
        env.send("v");
        versions.push(v.clone());
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-mid-move")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    fs.remount("ro");
    for args in [
        vec!["list", "v"].as_slice(),
        &["verify", "v"],
        &["receive", "v", "--save-to=/dev/null"],
    ] {
        let line = fails_with_one_line(&env.run(args), &format!("{args:?}"));
        assert!(
            line.contains("volume v: an interrupted prune in")
                && line.contains(&format!(
                    "the archive at {} is on a read-only filesystem; mount it read-write",
                    root.display()
                )),
            "{args:?}: {line}"
        );
    }
    fs.remount("rw");
    check_sessions(&env, &versions, &[1, 2], "after finishing the prune");
}

#[test]
fn concurrent_first_sends_create_one_archive() {
    let mut rng = Rng::new(3);
    for round in 0..6 {
        let env = Env::new(&["a", "b"]);
        let va = rng.bytes(4 * CS);
        let vb = rng.bytes(3 * CS + 17);
        env.write_at("a", 0, &va);
        env.write_at("b", 0, &vb);
        let spawn = |vol: &str| {
            Command::new(bin())
                .arg("-c")
                .arg(&env.config)
                .args(["-u", "send", vol])
                .env_remove("SPARSEBAK_FAILPOINT")
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (pa, pb) = (spawn("a"), spawn("b"));
        for (vol, p) in [("a", pa), ("b", pb)] {
            let o = p.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}: send {vol}: {}",
                stderr(&o)
            );
        }
        env.verify_ok("a", None);
        env.verify_ok("b", None);
        assert_same(&env.receive("a", None), &va, "a");
        assert_same(&env.receive("b", None), &vb, "b");
        archive_id(&env.archive());
        assert_eq!(names_in(&env.archive()), ["a", "b", "sparsebak.archive"]);
    }
}

#[test]
fn unmounted_archive_disk_is_refused_and_nothing_is_created() {
    let Some(mut fs) = LoopFs::new("unmounted_archive_disk", FsKind::Ext4, "") else {
        return;
    };
    let mnt = fs.path().to_path_buf();
    let root = mnt.join("sb");
    let env = env_with_destdir(&["a", "new"], &root);
    let mut rng = Rng::new(11);
    let va = rng.bytes(12 * CS);
    env.write_at("a", 0, &va);
    env.send("a");
    let id = archive_id(&root);
    let first = env.latest("a");

    fs.unmount();
    assert!(names_in(&mnt).is_empty());
    env.write_at("new", 0, &rng.bytes(2 * CS));
    let want = format!(
        "no archive at {}, but this machine sends to archive {id} there: is its disk mounted? Nothing was written",
        root.display()
    );
    for args in [vec!["send", "a"].as_slice(), &["send", "new"], &["send"]] {
        let line = fails_with_one_line(&env.run(args), &format!("{args:?}"));
        assert!(line.contains(&want), "{args:?}: {line}");
        assert!(
            names_in(&mnt).is_empty(),
            "{args:?} created {:?}",
            names_in(&mnt)
        );
    }
    // Reading commands create nothing either, and ask the same question.
    let line = fails_with_one_line(&env.run(&["list", "a"]), "list");
    assert!(line.contains("is the archive's disk mounted?"), "{line}");
    assert!(line.contains(&root.display().to_string()), "{line}");
    // A machine that sent before archives had identities (no record, but session
    // copies) refuses as well.
    let catalog = env.meta().join("catalog.sqlite");
    let mut saved = Vec::new();
    for ext in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{ext}", catalog.display()));
        if let Ok(b) = std::fs::read(&p) {
            std::fs::remove_file(&p).unwrap();
            saved.push((p, b));
        }
    }
    let line = fails_with_one_line(&env.run(&["send", "new"]), "send without a record");
    assert!(
        line.contains(&format!(
            "no archive at {}, but this machine has sent a to this destination: is its disk mounted (or did destdir change)?",
            root.display()
        )),
        "{line}"
    );
    assert!(names_in(&mnt).is_empty());
    for (p, b) in saved {
        std::fs::write(p, b).unwrap();
    }

    // The disk is back: the next send of a is incremental on the first.
    fs.mount();
    let mut va2 = va.clone();
    rng.fill(&mut va2[4 * CS..4 * CS + 10]);
    rng.fill(&mut va2[9 * CS..10 * CS]);
    env.write_at("a", 0, &va2);
    env.send("a");
    let s = env.sessions("a");
    assert_eq!(s.len(), 2);
    assert_eq!(s[0], first);
    assert_eq!(s[1].changed, 2);
    assert_eq!(s[1].read, 12 * CS as u64);
    assert_same(&env.receive("a", None), &va2, "after remount");
    env.verify_ok("a", None);
    assert_eq!(archive_id(&root), id);
}

#[test]
fn another_archive_at_destdir_is_refused_until_accepted() {
    let env = Env::new(&["a", "c"]);
    let mut rng = Rng::new(5);
    env.write_at("a", 0, &rng.bytes(3 * CS));
    env.send("a");
    let root = env.archive();
    let mine = archive_id(&root);
    // Another disk in its place: an archive made by another machine (config and
    // metadir of its own).
    let disk1 = env.path().join("disk1");
    std::fs::rename(&root, &disk1).unwrap();
    let other = Env::new(&["a", "c"]);
    let ini = std::fs::read_to_string(&other.config).unwrap().replace(
        &format!("destdir = {}", other.archive().display()),
        &format!("destdir = {}", root.display()),
    );
    std::fs::write(&other.config, ini).unwrap();
    other.write_at("a", 0, &rng.bytes(5 * CS));
    other.send("a");
    other.write_at("c", 0, &rng.bytes(2 * CS));
    other.send("c");
    let theirs = archive_id(&root);
    assert_ne!(mine, theirs);

    env.write_at("c", 0, &rng.bytes(2 * CS));
    let before = names_in(&root);
    for args in [
        vec!["send", "c"].as_slice(),
        &["prune", "--auto", "--keep=last:1", "c"],
    ] {
        let line = fails_with_one_line(&env.run(args), &format!("{args:?}"));
        assert!(
            line.contains(&format!(
                "the archive at {} is archive {theirs}, but this machine sends to archive {mine} there: is another disk mounted? Nothing was written",
                root.display()
            )),
            "{args:?}: {line}"
        );
    }
    assert_eq!(names_in(&root), before);
    assert_eq!(names_in(&root.join("c")).len(), 2, "no session added to c");
    // Reading that archive works; verify does not compare it with this machine's
    // copies of the sessions it sent to its own archive (they would all differ).
    let o = env.run(&["verify", "a"]);
    assert!(o.status.success(), "verify: {}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "is archive {theirs}, but this machine sends to archive {mine} there: not comparing"
        )),
        "{}",
        stderr(&o)
    );

    // Accepted: this machine sends to that archive from now on, and refuses the first.
    env.ok(&["send", "--accept-archive", "c"]);
    env.ok(&["send", "c"]);
    assert_eq!(env.sessions("c").len(), 2);
    std::fs::rename(&root, env.path().join("disk2")).unwrap();
    std::fs::rename(&disk1, &root).unwrap();
    let line = fails_with_one_line(&env.run(&["send", "a"]), "first disk back");
    assert!(
        line.contains(&format!(
            "is archive {mine}, but this machine sends to archive {theirs}"
        )),
        "{line}"
    );
}

#[test]
fn resync_reads_a_read_only_archive_and_refuses_another() {
    let Some(images) = LoopFs::new("resync_read_only (images)", FsKind::Xfs, "") else {
        return;
    };
    let Some(fs) = LoopFs::new("resync_read_only (archive)", FsKind::Ext4, "") else {
        return;
    };
    let root = fs.path().join("sb");
    let env = Env::reflink(&["v"], images.path());
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", root.display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    let mut rng = Rng::new(13);
    let v1 = rng.bytes(32 * CS);
    env.write_at("v", 0, &v1);
    env.send("v");
    let mut v2 = v1.clone();
    rng.fill(&mut v2[3 * CS..3 * CS + 7]);
    rng.fill(&mut v2[20 * CS..22 * CS]);
    env.write_at("v", 0, &v2);

    fs.remount("ro");
    let o = env.run(&["-v", "resync", "v"]);
    assert!(o.status.success(), "resync: {}", stderr(&o));
    assert!(
        stderr(&o).contains("v: resynced with the archive;"),
        "{}",
        stderr(&o)
    );
    fs.remount("rw");
    env.send("v");
    let s = env.sessions("v");
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].changed, 3);
    assert_same(&env.receive("v", None), &v2, "after resync");

    // Another archive in its place (same path, another identity): refused.
    let marker = root.join("sparsebak.archive");
    let text = std::fs::read_to_string(&marker).unwrap();
    let mine = archive_id(&root);
    let theirs = "00000000-0000-4000-8000-000000000000";
    std::fs::write(&marker, text.replace(&mine, theirs)).unwrap();
    let line = fails_with_one_line(&env.run(&["resync", "v"]), "resync on another archive");
    assert!(
        line.contains(&format!(
            "the archive at {} is archive {theirs}, but this machine sends to archive {mine} there",
            root.display()
        )),
        "{line}"
    );
}
