//! `sparsebak repair`: info and manifest files put back from the source side's copies,
//! missing and damaged chunk files re-created from the volume (or its tick snapshot),
//! what cannot be repaired named with the sessions whose views it breaks (exit 1),
//! `--dry-run` changing nothing, and `verify` pointing at repair.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopfs::{FsKind, LoopFs};
use std::path::{Path, PathBuf};

const CS: usize = 65536;

fn session_dir(env: &Env, id: &str) -> PathBuf {
    env.vol_dir("v").join(format!("S_{id}"))
}

fn chunk_path(env: &Env, id: &str, idx: u64) -> PathBuf {
    let addr = idx * CS as u64;
    session_dir(env, id)
        .join(format!("x{:09x}", addr >> 28))
        .join(format!("x{addr:016x}"))
}

fn copy_path(env: &Env, id: &str, file: &str) -> PathBuf {
    env.meta()
        .join("v")
        .join("sessions")
        .join(format!("S_{id}"))
        .join(file)
}

/// Every session verifies and restores byte-identical.
fn all_whole(env: &Env, versions: &[Vec<u8>], ids: &[String]) {
    for (k, id) in ids.iter().enumerate() {
        env.verify_ok("v", Some(id));
        assert_same(&env.receive("v", Some(id)), &versions[k], id);
    }
}

/// Run repair; (exit code, stdout, stderr).
fn repair(env: &Env, dry: bool) -> (i32, String, String) {
    let mut args = vec!["repair", "v"];
    if dry {
        args.insert(1, "--dry-run");
    }
    let o = env.run(&args);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn an_emptied_info_blocks_send_until_repair_puts_it_back() {
    let env = Env::new(&["v"]);
    let (mut versions, mut ids) = three_sessions(&env, 77);
    let info = session_dir(&env, &ids[2]).join("info");
    let good = std::fs::read(&info).unwrap();
    std::fs::write(&info, b"").unwrap();
    // Today's failure: the next send is refused.
    env.write_at("v", 0, b"new data");
    let err = env.fails(&["send", "v"]);
    assert!(err.contains(&info.display().to_string()), "{err}");
    // verify says repair can fix it.
    let err = env.fails(&["verify", "v"]);
    assert!(
        err.contains("hint: `sparsebak repair v` can put back 1 info/manifest file(s)"),
        "{err}"
    );
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "v: put back {} from this machine's copy (it was empty)",
            info.display()
        )),
        "{out}"
    );
    assert!(out.contains("v: repaired 1 file(s)"), "{out}");
    assert_eq!(std::fs::read(&info).unwrap(), good);
    // A second run finds nothing.
    let (code, out, _) = repair(&env, false);
    assert_eq!((code, out.as_str()), (0, "v: nothing to repair\n"));
    // The send now works, and builds on the repaired session.
    env.send("v");
    versions.push(env.read_image("v"));
    ids = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 4);
    all_whole(&env, &versions, &ids);
}

#[test]
fn damaged_and_missing_manifests_and_an_altered_info_are_put_back() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    // A missing manifest, a truncated one, and an info rewritten consistently (its
    // checksum recomputed) that only the copy can tell.
    std::fs::remove_file(session_dir(&env, &ids[0]).join("manifest")).unwrap();
    let m1 = session_dir(&env, &ids[1]).join("manifest");
    let t = std::fs::read(&m1).unwrap();
    std::fs::write(&m1, &t[..t.len() / 2]).unwrap();
    let i2 = session_dir(&env, &ids[2]).join("info");
    let text = std::fs::read_to_string(&i2).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("info_sha256="))
        .map(|l| {
            if l.starts_with("bytes_read=") {
                "bytes_read=1\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let sum = hex::encode(sparsebak_format::chunk::hash(body.as_bytes()));
    std::fs::write(&i2, format!("{body}info_sha256={sum}\n")).unwrap();
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    for (id, f, why) in [
        (&ids[0], "manifest", "it was missing"),
        (
            &ids[1],
            "manifest",
            "it was damaged: it does not match the hash in its info",
        ),
        (
            &ids[2],
            "info",
            "it differed from the copy this machine kept",
        ),
    ] {
        let line = format!(
            "v: put back {} from this machine's copy ({why})",
            session_dir(&env, id).join(f).display()
        );
        assert!(out.contains(&line), "{line}\n{out}");
    }
    assert!(out.contains("v: repaired 3 file(s)"), "{out}");
    for (id, f) in [
        (&ids[0], "manifest"),
        (&ids[1], "manifest"),
        (&ids[2], "info"),
    ] {
        assert_eq!(
            std::fs::read(session_dir(&env, id).join(f)).unwrap(),
            std::fs::read(copy_path(&env, id, f)).unwrap(),
            "{id}/{f}"
        );
    }
    all_whole(&env, &versions, &ids);
}

#[test]
fn missing_and_corrupted_chunks_are_re_created_from_the_volume() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    // A deleted chunk of the oldest session (in every view), and a corrupted one of
    // the latest; the volume still holds both.
    let gone = chunk_path(&env, &ids[0], 5);
    std::fs::remove_file(&gone).unwrap();
    let bad = chunk_path(&env, &ids[2], 9);
    let mut b = std::fs::read(&bad).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let err = env.fails(&["verify", "v"]);
    assert!(
        err.contains("hint: `sparsebak repair v` can re-create missing or damaged chunk files"),
        "{err}"
    );
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "v: re-created chunk x0000000000050000 of session {} from volume v (it was missing)",
            ids[0]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "v: re-created chunk x0000000000090000 of session {} from volume v (it was damaged",
            ids[2]
        )),
        "{out}"
    );
    assert!(out.contains("v: repaired 2 file(s)"), "{out}");
    assert!(gone.is_file());
    // Nothing of the repair's own is left in the volume folder.
    let names: Vec<String> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(names.is_empty(), "{names:?}");
    all_whole(&env, &versions, &ids);
}

#[test]
fn a_chunk_whose_data_changed_since_is_reported_with_the_views_it_breaks() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    // Chunk 9 of the oldest session is in the views of sessions 0 and 1; the volume
    // has new data there since session 2. Chunk 4 of the oldest is in every view and
    // unchanged: it is re-created in the same run.
    std::fs::remove_file(chunk_path(&env, &ids[0], 9)).unwrap();
    std::fs::remove_file(chunk_path(&env, &ids[0], 4)).unwrap();
    // Chunk 3 of the oldest is only in its own view: session 1 rewrote it.
    let c3 = chunk_path(&env, &ids[0], 3);
    std::fs::write(&c3, b"garbage").unwrap();
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains(&format!(
            "sparsebak: repair v: cannot repair chunk x0000000000030000 of session {}: damaged: ",
            ids[0]
        )) && err.contains(&format!("; the view of session {} lacks it\n", ids[0])),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "sparsebak: repair v: cannot repair chunk x0000000000090000 of session {}: missing, \
             and the volume no longer holds its data (changed since that session); \
             the views of sessions {} to {} lack it",
            ids[0], ids[0], ids[1]
        )),
        "{err}"
    );
    assert!(
        err.contains("repair v: 2 problem(s) could not be repaired (1 file(s) were)"),
        "{err}"
    );
    assert!(out.contains("re-created chunk x0000000000040000"), "{out}");
    // Session 2's view is whole (verify still names the file its chain lacks);
    // sessions 0 and 1 lack exactly chunk 9.
    assert_same(&env.receive("v", Some(&ids[2])), &versions[2], "latest");
    let err = env.fails(&["verify", "v"]);
    assert!(err.contains("FAILED with 1 problem(s)"), "{err}");
    for id in &ids {
        let err = env.fails(&["verify", "v", &format!("--session={id}")]);
        assert!(err.contains("x0000000000090000"), "{err}");
        assert!(!err.contains("x0000000000040000"), "{err}");
    }
}

#[test]
fn dry_run_says_what_it_would_do_and_changes_nothing() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    let info = session_dir(&env, &ids[2]).join("info");
    std::fs::write(&info, b"").unwrap();
    std::fs::remove_file(chunk_path(&env, &ids[0], 5)).unwrap();
    let c = chunk_path(&env, &ids[1], 3);
    std::fs::write(&c, b"not a chunk").unwrap();
    let archive = tree(&env.archive());
    let meta = tree(&env.meta());
    let image = env.read_image("v");
    let (code, out, err) = repair(&env, true);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("v: would put back {}", info.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "v: would re-create chunk x0000000000050000 of session {}",
            ids[0]
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "v: would re-create chunk x0000000000030000 of session {}",
            ids[1]
        )),
        "{out}"
    );
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(tree(&env.archive()), archive, "archive changed");
    assert_eq!(tree(&env.meta()), meta, "metadir changed");
    assert_eq!(env.read_image("v"), image);
    // The real run does what the dry run said.
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("v: repaired 3 file(s)"), "{out}");
    all_whole(&env, &versions, &ids);
}

#[test]
fn a_chunk_lost_by_a_prune_roll_forward_is_re_created() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-after-journal")],
    );
    assert!(!o.status.success());
    // Chunk 7 moves into session 1 when the prune is finished; it is lost first.
    std::fs::remove_file(chunk_path(&env, &ids[0], 7)).unwrap();
    let err = env.fails(&["verify", "v"]);
    assert!(err.contains("x0000000000070000"), "{err}");
    assert!(err.contains("hint: `sparsebak repair v`"), "{err}");
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "re-created chunk x0000000000070000 of session {} from volume v",
            ids[1]
        )),
        "{out}"
    );
    all_whole(&env, &versions[1..], &ids[1..]);
}

#[test]
fn a_tar_session_is_repaired_as_a_folder() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(8);
    let img = rng.bytes(6 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.ok(&["send", "--tarfile", "v"]);
    let id = env.latest("v").id;
    // Flip a byte inside chunk 2's member (found through the index).
    let ix = std::fs::read(env.vol_dir("v").join(format!("S_{id}.tar.index"))).unwrap();
    let rec = 64 + 24 * 2;
    let off = u64::from_le_bytes(ix[rec + 8..rec + 16].try_into().unwrap());
    let tar = env.vol_dir("v").join(format!("S_{id}.tar"));
    let mut t = std::fs::read(&tar).unwrap();
    t[off as usize + 100] ^= 1;
    std::fs::write(&tar, t).unwrap();
    env.fails(&["verify", "v"]);
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-created chunk x0000000000020000"), "{out}");
    assert!(session_dir(&env, &id).is_dir() && !tar.exists());
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "tar session");
}

/// `source = reflink`: the tick snapshot still holds a chunk that the live image has
/// overwritten since the last send; repair takes it from there.
#[test]
fn reflink_chunks_come_from_the_tick_snapshot() {
    let Some(fs) = LoopFs::new(
        "reflink_chunks_come_from_the_tick_snapshot",
        FsKind::Xfs,
        "",
    ) else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    let mut rng = Rng::new(9);
    let mut img = rng.bytes(16 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let s0 = env.latest("v").id;
    rng.fill(&mut img[2 * CS..3 * CS]);
    env.write_at("v", 2 * CS as u64, &img[2 * CS..3 * CS]);
    env.send("v");
    let s1 = env.latest("v").id;
    // After the send, the live image changes at chunks 6 and 7 (not monitored).
    env.write_at("v", 6 * CS as u64, &rng.bytes(2 * CS));
    std::fs::remove_file(chunk_path(&env, &s0, 6)).unwrap();
    std::fs::remove_file(chunk_path(&env, &s1, 2)).unwrap();
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "re-created chunk x0000000000060000 of session {s0} from v's tick snapshot"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "re-created chunk x0000000000020000 of session {s1}"
        )),
        "{out}"
    );
    env.verify_ok("v", Some(&s0));
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "latest");
    // The live change is still found by the next send.
    env.send("v");
    assert_eq!(env.latest("v").changed, 2);
}

/// Copies made before a prune this machine did not see (another metadir) are out of
/// date, not a sign of damage: repair must not put the old session back.
#[test]
fn copies_older_than_a_prune_are_not_put_back() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 77);
    let old_meta = env.path().join("meta-before");
    let cp = |from: &Path, to: &Path| {
        let _ = std::fs::remove_dir_all(to);
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success());
    };
    cp(&env.meta(), &old_meta);
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    cp(&old_meta, &env.meta());
    let before = tree(&env.archive());
    let (code, out, err) = repair(&env, false);
    assert_eq!((code, out.as_str()), (0, "v: nothing to repair\n"), "{err}");
    assert!(err.contains("not using it"), "{err}");
    assert_eq!(tree(&env.archive()), before);
    for k in 1..3 {
        assert_same(&env.receive("v", Some(&ids[k])), &versions[k], &ids[k]);
    }
}

/// A send killed after publishing its session, before copying it: the only copy of the
/// info is the pending record. With the archive's info emptied, every command stops
/// and points at repair, which puts it back from that record.
#[test]
fn the_pending_record_of_a_killed_send_serves_as_the_copy() {
    let env = Env::new(&["v"]);
    let (mut versions, _) = three_sessions(&env, 77);
    env.write_at("v", 0, b"the fourth session");
    let o = env.run_env(
        &["send", "v"],
        &[("SPARSEBAK_FAILPOINT", "send-after-commit")],
    );
    assert!(!o.status.success());
    versions.push(env.read_image("v"));
    let ids: Vec<String> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter_map(|n| n.strip_prefix("S_").map(str::to_string))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(ids.len(), 4);
    let info = session_dir(&env, &ids[3]).join("info");
    std::fs::write(&info, b"").unwrap();
    let err = env.fails(&["list", "v"]);
    assert!(err.contains("`sparsebak repair v` puts it back"), "{err}");
    let (code, out, err) = repair(&env, false);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "v: put back {} from this machine's copy (it was empty)",
            info.display()
        )),
        "{out}"
    );
    assert_eq!(env.sessions("v").len(), 4);
    all_whole(&env, &versions, &ids);
    env.write_at("v", 0, b"the fifth session");
    env.send("v");
}
