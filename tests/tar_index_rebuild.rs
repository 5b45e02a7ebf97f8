//! A tar session whose `S_<id>.tar.index` is lost or damaged: every command that
//! needs it says which index it is and that `sparsebak repair` rebuilds it; `repair`
//! (dry first) rebuilds it from the tar's member headers, byte for byte the index the
//! send wrote (sealed, in an encrypted archive), and every session restores as sent.

mod common;

use common::*;
use std::path::{Path, PathBuf};

const CS: usize = 65536;

/// Every `*.tar.index` under `dir`, sorted (the oldest session's first).
fn indexes(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(indexes(&p));
        } else if p.to_string_lossy().ends_with(".tar.index") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// Three tar sessions of `v`; the images sent.
fn three_tar_sessions(env: &Env) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(11);
    let mut img = vec![0u8; 9 * CS + 300];
    rng.fill(&mut img);
    let mut versions = Vec::new();
    for round in 0..3 {
        if round > 0 {
            rng.fill(&mut img[round * 2 * CS..(round * 2 + 1) * CS]);
        }
        std::fs::write(env.image("v"), &img).unwrap();
        env.ok(&["send", "--tarfile", "v"]);
        versions.push(img.clone());
    }
    versions
}

fn lost_or_damaged_index_is_rebuilt(encrypted: bool) {
    let env = if encrypted {
        Env::encrypted(&["v"], "correct horse battery")
    } else {
        Env::new(&["v"])
    };
    let versions = three_tar_sessions(&env);
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    let ix = indexes(&env.archive());
    assert_eq!(ix.len(), 3, "{ix:?}");
    // The sessions' order by ID is not their files' order when the names are tokens:
    // damage the index of the oldest session, found through the session it opens.
    for (k, damage) in [(0usize, "remove"), (1, "overwrite")] {
        let victim = &ix[k];
        let good = std::fs::read(victim).unwrap();
        match damage {
            "remove" => std::fs::remove_file(victim).unwrap(),
            _ => std::fs::write(victim, vec![0x5a; good.len()]).unwrap(),
        }
        let hint = "`sparsebak repair v` rebuilds the index from it";
        // list still lists the other sessions (header line and two), and exits 1.
        let o = env.run(&["list", "v"]);
        assert_eq!(o.status.code(), Some(1));
        let listed = String::from_utf8_lossy(&o.stdout).into_owned();
        assert_eq!(listed.lines().count(), 3, "{listed}");
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(e.contains("list: 1 session(s) could not be read"), "{e}");
        for args in [vec!["list", "v"], vec!["send", "--tarfile", "v"]] {
            let e = env.fails(&args);
            assert!(e.contains(hint), "{args:?}: {e}");
            assert!(e.contains("the index of tar session"), "{args:?}: {e}");
        }
        let e = env.fails(&["verify", "v"]);
        assert!(
            e.contains(
                "hint: `sparsebak repair v` can rebuild the index of 1 tar session(s) from the tar"
            ),
            "verify: {e}"
        );
        assert!(!e.contains("info/manifest file(s)"), "verify: {e}");
        // Dry: says it, changes nothing.
        let out = env.ok(&["repair", "--dry-run", "v"]);
        assert!(out.contains("v: would rebuild the index "), "{out}");
        assert!(out.contains("from the tar's member headers"), "{out}");
        assert!(!out.contains("cannot repair"), "{out}");
        assert_eq!(victim.exists(), damage != "remove");
        let out = env.ok(&["repair", "v"]);
        let why = if damage == "remove" {
            "it was missing"
        } else {
            "it was damaged"
        };
        assert!(
            out.contains(&format!("from the tar's member headers ({why})")),
            "{out}"
        );
        assert!(out.contains("v: repaired 1 file(s)"), "{out}");
        let rebuilt = std::fs::read(victim).unwrap();
        if encrypted {
            // Sealed anew (fresh nonces): the same length, and it opens (below).
            assert_eq!(
                rebuilt.len(),
                good.len(),
                "the rebuilt index differs in length"
            );
            assert_ne!(rebuilt, good);
        } else {
            assert_eq!(rebuilt, good, "the rebuilt index differs");
        }
        assert_eq!(env.ok(&["repair", "v"]), "v: nothing to repair\n");
        env.verify_ok("v", None);
        for (id, want) in ids.iter().zip(&versions) {
            assert_same(&env.receive("v", Some(id)), want, id);
        }
        // Nothing of the rebuild is left in the volume folder.
        let left: Vec<_> = indexes(&env.archive());
        assert_eq!(left.len(), 3);
        for d in std::fs::read_dir(victim.parent().unwrap()).unwrap() {
            let n = d.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!n.starts_with(".tmp-"), "{n} left behind");
        }
    }
}

#[test]
fn plain_tar_index_lost_or_damaged_is_rebuilt_from_the_tar() {
    lost_or_damaged_index_is_rebuilt(false);
}

#[test]
fn sealed_tar_index_lost_or_damaged_is_rebuilt_from_the_tar() {
    lost_or_damaged_index_is_rebuilt(true);
}

#[test]
fn an_index_whose_tar_headers_are_damaged_is_not_rebuilt() {
    let env = Env::new(&["v"]);
    three_tar_sessions(&env);
    let ix = indexes(&env.archive());
    let tar = PathBuf::from(ix[0].to_string_lossy().trim_end_matches(".index"));
    std::fs::remove_file(&ix[0]).unwrap();
    let mut b = std::fs::read(&tar).unwrap();
    b[150] ^= 0x11;
    std::fs::write(&tar, &b).unwrap();
    let e = env.fails(&["repair", "v"]);
    assert!(e.contains("cannot be rebuilt (it was missing)"), "{e}");
    assert!(
        e.contains("member header at byte 0: its checksum does not match"),
        "{e}"
    );
    assert!(!ix[0].exists());
}

/// verify reads every member header of a tar session: one damaged (tar -xf can no
/// longer read the tar) is a problem even though every chunk still reads through the
/// index. Plain and encrypted.
fn damaged_member_headers_fail_verify(encrypted: bool) {
    let env = if encrypted {
        Env::encrypted(&["v"], "correct horse battery")
    } else {
        Env::new(&["v"])
    };
    three_tar_sessions(&env);
    env.verify_ok("v", None);
    let ix = indexes(&env.archive());
    let tar = PathBuf::from(ix[0].to_string_lossy().trim_end_matches(".index"));
    let good = std::fs::read(&tar).unwrap();
    // The tester's case: bytes 10 (name) and 150 (checksum) of the first header; then
    // the size field of the second member's header.
    let second = 512
        + good[124..136]
            .iter()
            .take_while(|b| (b'0'..=b'7').contains(b))
            .fold(0usize, |n, &b| n * 8 + usize::from(b - b'0'))
            .div_ceil(512)
            * 512;
    for (flips, at) in [(vec![10usize, 150], 0usize), (vec![second + 130], second)] {
        let mut b = good.clone();
        for &f in &flips {
            b[f] ^= 0x04;
        }
        std::fs::write(&tar, &b).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&tar)
            .output()
            .unwrap();
        assert!(
            !out.status.success() || !out.stderr.is_empty(),
            "tar still reads it"
        );
        let e = env.fails(&["verify", "v"]);
        assert!(
            e.contains(&format!(
                "member header at byte {at}: its checksum does not match"
            )),
            "{e}"
        );
        assert!(e.contains("tar cannot read this tar"), "{e}");
        std::fs::write(&tar, &good).unwrap();
        env.verify_ok("v", None);
    }
}

#[test]
fn plain_tar_with_damaged_member_headers_fails_verify() {
    damaged_member_headers_fail_verify(false);
}

#[test]
fn sealed_tar_with_damaged_member_headers_fails_verify() {
    damaged_member_headers_fail_verify(true);
}
