//! `prune --dry-run` of several sessions says what the prune then frees: the folds
//! depend on each other (a chunk moved into a session that is removed next is freed
//! by that next fold), so the dry run adds up the removal as a whole.

mod common;

use common::*;
use std::path::Path;

const CS: usize = 65536;

/// Bytes of every file under `dir`.
fn bytes_under(dir: &Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = e.metadata().unwrap();
        n += if m.is_dir() {
            bytes_under(&e.path())
        } else {
            m.len()
        };
    }
    n
}

/// The size on the `would free` / `freed` line.
fn freed_line(out: &str) -> String {
    out.lines()
        .find_map(|l| {
            l.strip_prefix("v: would free ")
                .or(l.strip_prefix("v: freed "))
        })
        .unwrap_or_else(|| panic!("no freed line in:\n{out}"))
        .to_string()
}

/// Bytes of a figure as printed ("1.01 MiB").
fn parse_human(s: &str) -> f64 {
    let (n, unit) = s.split_once(' ').unwrap();
    let k = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1048576.0,
        "GiB" => 1073741824.0,
        u => panic!("unit {u}"),
    };
    n.parse::<f64>().unwrap() * k
}

fn dry_run_of_several(tar: bool, encrypted: bool) {
    let env = if encrypted {
        Env::encrypted(&["v"], "correct horse battery")
    } else {
        Env::new(&["v"])
    };
    // Six sessions, each rewriting a different part of the volume, several of them
    // chunks a later session rewrites again.
    let mut rng = Rng::new(3);
    let mut img = vec![0u8; 24 * CS];
    rng.fill(&mut img);
    let mut versions = Vec::new();
    for round in 0..6 {
        if round > 0 {
            let lo = (round * 3) % 20;
            rng.fill(&mut img[lo * CS..(lo + 4) * CS]);
        }
        std::fs::write(env.image("v"), &img).unwrap();
        if tar {
            env.ok(&["send", "--tarfile", "v"]);
        } else {
            env.send("v");
        }
        versions.push(img.clone());
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    let range = format!("--session={},{}", ids[0], ids[3]);
    let before = bytes_under(&env.archive());
    let dry = env.ok(&["prune", "v", "--dry-run", &range, "-u"]);
    assert_eq!(
        bytes_under(&env.archive()),
        before,
        "the dry run changed the archive"
    );
    let real = env.ok(&["prune", "v", &range, "-u"]);
    let after = bytes_under(&env.archive());
    // The steps alone said much less (each counted chunks the next fold frees as
    // kept); the whole is within the manifest lines the folds add (1%).
    let (d, r) = (
        parse_human(freed_line(&dry).trim_start_matches("about ")),
        parse_human(&freed_line(&real)),
    );
    assert!(
        freed_line(&dry).starts_with("about ") && d <= r && r - d <= r / 100.0,
        "dry:\n{dry}\nreal:\n{real}"
    );
    // And the real figure is what left the archive, within the manifest lines the
    // surviving session gained.
    let gone = before - after;
    let said = freed_line(&real);
    let tol = 4096u64;
    let human = |b: u64| indicatif::HumanBytes(b).to_string();
    // (Tar sessions are converted to folders first, the surviving one too: their
    // headers and indexes go as well, beyond what the folds free.)
    assert!(
        tar || (gone.saturating_sub(tol)..=gone + tol).any(|b| human(b) == said),
        "{gone} bytes left the archive, prune said {said}"
    );
    check_sessions(&env, &versions, &[4, 5], "after the prune");
}

#[test]
fn dry_run_of_several_folder_sessions_says_what_the_prune_frees() {
    dry_run_of_several(false, false);
}

#[test]
fn dry_run_of_several_tar_sessions_says_what_the_prune_frees() {
    dry_run_of_several(true, false);
}

#[test]
fn dry_run_of_several_encrypted_sessions_says_what_the_prune_frees() {
    dry_run_of_several(false, true);
}

/// A prune killed at each step: `repair --dry-run` says it would finish the removal
/// and nothing else (no chunk it would re-create, none it could not): the real repair
/// finishes it and finds nothing to repair, and every kept session restores.
#[test]
fn repair_dry_run_during_an_interrupted_prune_matches_the_repair() {
    for point in [
        "prune-after-journal",
        "prune-mid-move",
        "prune-before-manifest",
        "prune-before-remove",
    ] {
        let env = Env::new(&["v"]);
        let mut rng = Rng::new(9);
        let mut img = vec![0u8; 10 * CS];
        rng.fill(&mut img);
        let mut versions = Vec::new();
        for round in 0..3 {
            if round > 0 {
                rng.fill(&mut img[round * 3 * CS..(round * 3 + 1) * CS + 10]);
            }
            std::fs::write(env.image("v"), &img).unwrap();
            env.send("v");
            versions.push(img.clone());
        }
        let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
        let o = env.run_env(
            &["prune", "v", &format!("--session={}", ids[0]), "-u"],
            &[("SPARSEBAK_FAILPOINT", point)],
        );
        assert!(
            !o.status.success(),
            "{point}: the prune was not interrupted"
        );
        let dry = env.ok(&["repair", "--dry-run", "v"]);
        assert_eq!(
            dry,
            format!(
                "v: would first finish the interrupted removal of session {} (into {})\n",
                ids[0], ids[1]
            ),
            "{point}"
        );
        let real = env.ok(&["repair", "v"]);
        assert_eq!(real, "v: nothing to repair\n", "{point}");
        check_sessions(&env, &versions, &[1, 2], point);
    }
}
