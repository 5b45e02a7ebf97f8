//! An encrypted archive on a remote host (run by this machine over `serve`): a lost
//! sealed tar index is named by the commands that need it, and `repair` rebuilds it
//! from the far tar's member headers, sealed here; every session then restores.

mod common;
use common::*;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::{Path, PathBuf};

use sshd::*;

const VOL: &str = "v";
const PASS: &str = "correct horse battery staple";
const CS: usize = 65536;

/// Every `*.tar.index` under `dir`, sorted.
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

#[test]
fn a_lost_sealed_tar_index_on_a_remote_archive_is_rebuilt() {
    let sshd = Sshd::start();
    let env = Env::encrypted(&[VOL], PASS);
    let real = env.path().join("far-disk");
    std::fs::create_dir(&real).unwrap();
    serve_from_namespace(&env, &sshd, &real);

    let mut rng = Rng::new(17);
    let mut img = rng.bytes(12 * CS);
    let mut versions = Vec::new();
    for k in 0..2 {
        if k > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
            rng.fill(&mut img[4 * CS..6 * CS]);
        }
        std::fs::write(env.image(VOL), &img).unwrap();
        env.ok(&["send", "--tarfile", VOL]);
        versions.push(img.clone());
    }
    let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
    let ix = indexes(&real);
    assert_eq!(ix.len(), 2, "{ix:?}");
    let len = std::fs::metadata(&ix[0]).unwrap().len();
    std::fs::remove_file(&ix[0]).unwrap();
    let e = env.fails(&["verify", VOL]);
    assert!(
        e.contains("can rebuild the index of 1 tar session(s) from the tar"),
        "{e}"
    );
    let out = env.ok(&["repair", "--dry-run", VOL]);
    assert!(out.contains("would rebuild the index "), "{out}");
    assert!(!ix[0].exists());
    let out = env.ok(&["repair", VOL]);
    assert!(
        out.contains("from the tar's member headers (it was missing)"),
        "{out}"
    );
    assert_eq!(std::fs::metadata(&ix[0]).unwrap().len(), len);
    env.verify_ok(VOL, None);
    for (id, want) in ids.iter().zip(&versions) {
        assert_same(&env.receive(VOL, Some(id)), want, id);
    }
}
