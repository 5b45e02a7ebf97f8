//! prune on a damaged archive: a missing chunk file is found before anything changes
//! (refused, archive identical byte for byte); a chunk lost after the journal was
//! written is skipped by the roll-forward, which leaves a volume that lists, restores
//! and sends; and `stored=` is what each session holds after a prune.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const CS: usize = 65536;

fn chunk_path(env: &Env, id: &str, idx: u64) -> PathBuf {
    let addr = idx * CS as u64;
    env.vol_dir("v")
        .join(format!("S_{id}"))
        .join(format!("x{:09x}", addr >> 28))
        .join(format!("x{addr:016x}"))
}

/// `stored=` of each `list` line, by session.
fn stored(env: &Env) -> BTreeMap<String, u64> {
    let out = env.ok(&["list", "v"]);
    out.lines()
        .skip(1)
        .map(|l| {
            let id = l.split_whitespace().next().unwrap().to_string();
            let v = l
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix("stored="))
                .unwrap()
                .parse()
                .unwrap();
            (id, v)
        })
        .collect()
}

/// Sum of the sizes of the chunk files in a session folder.
fn folder_bytes(dir: &Path) -> u64 {
    tree(dir)
        .iter()
        .filter(|(p, _)| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("x0"))
        })
        .map(|(_, (_, size, _))| size)
        .sum()
}

#[test]
fn prune_refuses_before_its_journal_when_a_needed_chunk_is_missing() {
    let env = Env::new(&["v"]);
    let (_, ids) = three_sessions(&env, 66);
    // Chunk 7 of the oldest session is still part of every later view.
    let gone = chunk_path(&env, &ids[0], 7);
    std::fs::remove_file(&gone).unwrap();
    let archive_before = tree(&env.archive());
    let meta_before = tree(&env.meta());
    let o = env.run_env(
        &["prune", "v", "--auto", "--keep=last:1"],
        &[("SPARSEBAK_NOW", "20991231-000000")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(&gone.display().to_string()), "{err}");
    assert!(err.contains("nothing was changed"), "{err}");
    assert!(err.contains("sparsebak repair v"), "{err}");
    assert_eq!(tree(&env.archive()), archive_before, "archive changed");
    assert_eq!(tree(&env.meta()), meta_before, "metadir changed");
    // No journal: list and send work as before.
    assert_eq!(env.sessions("v").len(), 3);
    env.write_at("v", 0, b"after the refusal");
    env.send("v");
    assert_eq!(env.sessions("v").len(), 4);
    // --dry-run says the same, and changes nothing either.
    let before = tree(&env.archive());
    let o = env.run_env(
        &["prune", "v", "--dry-run", &format!("--session={}", ids[0])],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&gone.display().to_string()));
    assert_eq!(tree(&env.archive()), before);
}

#[test]
fn prune_refuses_when_a_manifest_is_damaged() {
    let env = Env::new(&["v"]);
    let (_, ids) = three_sessions(&env, 66);
    let m = env
        .vol_dir("v")
        .join(format!("S_{}", ids[1]))
        .join("manifest");
    let mut text = std::fs::read(&m).unwrap();
    text.truncate(text.len() - 20);
    std::fs::write(&m, text).unwrap();
    let before = tree(&env.archive());
    let err = env.fails(&["prune", "v", &format!("--session={}", ids[0])]);
    assert!(
        err.contains(&format!("the manifest of session {}", ids[1])),
        "{err}"
    );
    assert_eq!(tree(&env.archive()), before);
}

#[test]
fn a_chunk_lost_after_the_journal_leaves_a_usable_volume() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 66);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-after-journal")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    assert!(env.vol_dir("v").join(".prune-journal").exists());
    // Chunk 9 of the removed session is in the next session's view (not the latest's).
    let gone = chunk_path(&env, &ids[0], 9);
    std::fs::remove_file(&gone).unwrap();
    // list finishes the prune, says what was lost, and lists.
    let o = env.run(&["list", "v"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("chunk x0000000000090000") && err.contains("lost"),
        "{err}"
    );
    assert!(!env.vol_dir("v").join(".prune-journal").exists());
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, ids[1..].to_vec());
    // The latest view does not need the lost chunk: it restores byte-identical,
    // with sparsebak and with spbk-assemble.
    assert_same(&env.receive("v", None), &versions[2], "latest");
    // verify reads every session folder of the chain: the lost file is its one problem.
    let err = env.fails(&["verify", "v"]);
    assert!(err.contains("x0000000000090000 is missing"), "{err}");
    assert!(err.contains("FAILED with 1 problem(s)"), "{err}");
    let out = env.path().join("asm.img");
    let o = Command::new(assemble_bin())
        .args(["-c", "-o"])
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(&std::fs::read(&out).unwrap(), &versions[2], "assembled");
    // The session whose view lacks it: receive and verify name the chunk.
    let save = env.path().join("mid.img");
    let err = env.fails(&[
        "receive",
        "v",
        &format!("--session={}", ids[1]),
        &format!("--save-to={}", save.display()),
    ]);
    assert!(err.contains("x0000000000090000"), "{err}");
    let err = env.fails(&["verify", "v", &format!("--session={}", ids[1])]);
    assert!(
        err.contains("x0000000000090000 is missing"),
        "verify reports the lost chunk: {err}"
    );
    // And the next send works.
    env.write_at("v", 0, b"after the prune");
    env.send("v");
    assert_eq!(env.sessions("v").len(), 3);
    let latest = env.sessions("v").pop().unwrap().id;
    let save = env.path().join("new.img");
    env.ok(&["receive", "v", &format!("--save-to={}", save.display())]);
    assert_same(
        &std::fs::read(&save).unwrap(),
        &env.read_image("v"),
        &format!("new session {latest}"),
    );
}

#[test]
fn stored_is_what_each_session_holds_after_a_prune() {
    let env = Env::new(&["v"]);
    let (versions, ids) = three_sessions(&env, 66);
    let before = stored(&env);
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    let after = stored(&env);
    assert_eq!(after.len(), 2);
    for (id, n) in &after {
        let dir = env.vol_dir("v").join(format!("S_{id}"));
        assert_eq!(*n, folder_bytes(&dir), "stored= of {id}");
    }
    // The session the first was folded into now holds 19 of its 20 chunks (one was
    // replaced by its own), the latest is untouched.
    assert!(
        after[&ids[1]] > 10 * before[&ids[1]],
        "{before:?} {after:?}"
    );
    assert_eq!(after[&ids[2]], before[&ids[2]]);
    // The info changed consistently with the copies this machine keeps.
    env.verify_ok("v", None);
    env.verify_ok("v", Some(&ids[1]));
    assert_same(&env.receive("v", Some(&ids[1])), &versions[1], "folded");
}

/// A volume of 12 chunks, each half random and half zeros (compressible, so sizes
/// really change with the codec): a first session stored raw (`compression = none`),
/// then one chunk changed and a second session stored with zstd:3. Returns the two
/// session IDs and the volume's latest content.
fn raw_then_zstd(seed: u64) -> (Env, Vec<String>, Vec<u8>) {
    let env = Env::with_settings(&["v"], "compression = none");
    let mut rng = Rng::new(seed);
    let mut img = vec![0u8; 12 * CS];
    for c in img.chunks_mut(CS) {
        rng.fill(&mut c[..CS / 2]);
    }
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replace("compression = none", "compression = zstd:3"),
    )
    .unwrap();
    rng.fill(&mut img[..CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    (env, ids, img)
}

#[test]
fn stored_is_exact_when_a_prune_re_encodes() {
    // The removed session stored its chunks raw, the next one with zstd: the fold
    // re-encodes what it moves, and stored= counts the re-encoded files.
    let (env, ids, img) = raw_then_zstd(5);
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    let dir = env.vol_dir("v").join(format!("S_{}", ids[1]));
    let n = stored(&env)[&ids[1]];
    assert_eq!(n, folder_bytes(&dir));
    assert!(
        n < 12 * CS as u64 * 3 / 4,
        "moved chunks were re-encoded: {n}"
    );
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "latest");
}

#[test]
fn a_prune_of_several_sessions_checks_them_all_before_the_first_fold() {
    let env = Env::new(&["v"]);
    let (_, ids) = three_sessions(&env, 66);
    // Chunk 3 of the middle session is in the latest view. Folding the oldest into it
    // alone would work; removing both must be refused before the first fold.
    let gone = chunk_path(&env, &ids[1], 3);
    std::fs::remove_file(&gone).unwrap();
    let before = tree(&env.archive());
    let meta = tree(&env.meta());
    let o = env.run_env(
        &["prune", "v", "--auto", "--keep=last:1"],
        &[("SPARSEBAK_NOW", "20991231-000000")],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot remove 2 session(s): they need")
            && err.contains(&gone.display().to_string())
            && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(tree(&env.archive()), before, "archive changed");
    assert_eq!(tree(&env.meta()), meta, "metadir changed");
    // Removing only the oldest does not need the lost file.
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    assert_eq!(env.sessions("v").len(), 2);
}

#[test]
fn a_prune_that_cannot_read_the_removed_info_after_its_journal_stops_until_it_can() {
    // The removed session stored its chunks raw, the next one with zstd: finishing the
    // fold needs the removed session's codec. Its info cannot be read and this
    // machine's copy of it is gone: the prune must not guess (moving raw chunks into
    // a zstd session would break its view), it stops and keeps its journal.
    let (env, ids, img) = raw_then_zstd(9);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-after-journal")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    let journal = env.vol_dir("v").join(".prune-journal");
    assert!(journal.exists());
    // This machine's copy of the removed session goes, and its info in the archive
    // cannot be read (a folder stands in its place).
    std::fs::remove_dir_all(env.meta().join(format!("v/sessions/S_{}", ids[0]))).unwrap();
    let info = env.vol_dir("v").join(format!("S_{}/info", ids[0]));
    let saved = std::fs::read(&info).unwrap();
    std::fs::remove_file(&info).unwrap();
    std::fs::create_dir(&info).unwrap();
    let err = env.fails(&["list", "v"]);
    assert!(
        err.contains(&format!("{}: Is a directory (os error 21)", info.display())),
        "{err}"
    );
    assert!(journal.exists(), "the journal must stay");
    // Readable again: the next run finishes the fold, re-encoding what it moves.
    std::fs::remove_dir(&info).unwrap();
    std::fs::write(&info, &saved).unwrap();
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, ids[1..].to_vec());
    assert!(!journal.exists());
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "latest");
}
