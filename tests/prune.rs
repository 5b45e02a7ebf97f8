//! prune: every surviving session restores byte-identical and verifies after removing
//! the first, a middle, and a range of sessions, across grow/shrink and zeroing; the
//! latest is refused; `kill -9` at every step of a prune is finished by the next run.

mod common;
use common::*;

const CS: usize = 65536;

/// A history of 7 sessions with writes, zeroing, a shrink to mid-chunk and a grow.
/// Returns the versions, oldest first.
fn history(env: &Env) -> Vec<Vec<u8>> {
    let mut rng = Rng::new(31);
    let mut cur = vec![0u8; 40 * CS];
    rng.fill(&mut cur[..30 * CS]);
    let mut versions = Vec::new();
    let mut save = |cur: &Vec<u8>| {
        std::fs::write(env.image("v"), cur).unwrap();
        env.send("v");
        versions.push(cur.clone());
    };
    save(&cur);
    rng.fill(&mut cur[2 * CS..5 * CS]); // 2
    save(&cur);
    cur[10 * CS..14 * CS].fill(0); // 3: zeroing
    rng.fill(&mut cur[35 * CS..36 * CS]);
    save(&cur);
    cur.truncate(12 * CS + 100); // 4: shrink mid-chunk
    save(&cur);
    cur.resize(50 * CS, 0); // 5: grow back with zeros, a little data
    rng.fill(&mut cur[45 * CS..45 * CS + 10]);
    save(&cur);
    rng.fill(&mut cur[0..CS]); // 6
    rng.fill(&mut cur[20 * CS..21 * CS]);
    save(&cur);
    rng.fill(&mut cur[3 * CS..4 * CS]); // 7
    save(&cur);
    assert_eq!(env.sessions("v").len(), 7);
    versions
}

fn ids(env: &Env) -> Vec<String> {
    env.sessions("v").into_iter().map(|s| s.id).collect()
}

#[test]
fn prune_first_middle_and_range() {
    let env = Env::new(&["v"]);
    let versions = history(&env);
    let id = ids(&env);
    env.ok(&["prune", "v", &format!("--session={}", id[0])]);
    check_sessions(&env, &versions, &[1, 2, 3, 4, 5, 6], "first");
    // The middle: the shrink session, whose cut data must not come back.
    env.ok(&["prune", "v", &format!("--session={}", id[3])]);
    check_sessions(&env, &versions, &[1, 2, 4, 5, 6], "shrink session");
    // A range.
    env.ok(&["prune", "v", &format!("--session={},{}", id[2], id[4])]);
    check_sessions(&env, &versions, &[1, 5, 6], "range");
    // The latest is refused; the rest proceeds.
    let out = env.run(&["prune", "v", &format!("--session={},{}", id[1], id[6])]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("latest session"));
    check_sessions(&env, &versions, &[6], "all but latest");
}

#[test]
fn prune_each_session_alone() {
    // Removing any single session, in a fresh copy of the history each time.
    let env = Env::new(&["v"]);
    let versions = history(&env);
    let snapshot = env.path().join("snap");
    std::fs::create_dir(&snapshot).unwrap();
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let _ = std::fs::remove_dir_all(to);
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap()
            .success());
    };
    cp(&env.archive(), &snapshot.join("archive"));
    cp(&env.meta(), &snapshot.join("meta"));
    let id = ids(&env);
    for (k, sid) in id.iter().enumerate().take(6) {
        cp(&snapshot.join("archive"), &env.archive());
        cp(&snapshot.join("meta"), &env.meta());
        env.ok(&["prune", "v", &format!("--session={sid}")]);
        let kept: Vec<usize> = (0..7).filter(|&i| i != k).collect();
        check_sessions(&env, &versions, &kept, &format!("without v{k}"));
    }
}

#[test]
fn dry_run_changes_nothing_and_reports() {
    let env = Env::new(&["v"]);
    history(&env);
    let id = ids(&env);
    let out = env.ok(&["prune", "v", "--dry-run", &format!("--session={}", id[1])]);
    assert!(
        out.contains("would remove") && out.contains("would free"),
        "{out}"
    );
    assert_eq!(ids(&env), id);
}

#[test]
fn all_before_and_selectors() {
    let env = Env::new(&["v"]);
    let versions = history(&env);
    let id = ids(&env);
    // Selectors on receive: oldest, latest, and a date-time at or before.
    assert_same(&env.receive("v", Some("oldest")), &versions[0], "oldest");
    assert_same(&env.receive("v", Some("latest")), &versions[6], "latest");
    let t = sparsebak::selector::id_to_time(&id[2]).unwrap();
    let sel = t.format("%Y-%m-%d %H:%M:%S").to_string();
    assert_same(&env.receive("v", Some(&sel)), &versions[2], "date-time");
    // --all-before the third session's time removes the first two.
    env.ok(&["prune", "v", &format!("--all-before={sel}")]);
    check_sessions(&env, &versions, &[2, 3, 4, 5, 6], "all-before");
}

#[test]
fn auto_with_schedule() {
    let env = Env::new(&["v"]);
    let versions = history(&env);
    // All sessions were taken within a few seconds: `last:2` keeps the newest two.
    // Sends within one second take IDs a little ahead of the clock; judge from later.
    let o = env.run_env(
        &["prune", "v", "--auto", "--keep=last:2"],
        &[("SPARSEBAK_NOW", "20991231-000000")],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_sessions(&env, &versions, &[5, 6], "keep last:2");
    let err = env.fails(&["prune", "v", "--auto"]);
    assert!(err.contains("keep"), "{err}");
}

/// The one volume folder of `env`'s archive, whatever its name.
fn the_volume_folder(env: &Env) -> std::path::PathBuf {
    let dirs: Vec<_> = std::fs::read_dir(env.archive())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// `kill -9` at each step of a prune: the archive is whole for the next command;
/// plain and encrypted (whose journal and new manifest are sealed).
#[test]
fn killed_during_prune() {
    for (point, sealed) in [
        "prune-after-journal",
        "prune-mid-move",
        "prune-before-manifest",
        "prune-before-remove",
    ]
    .into_iter()
    .flat_map(|p| [(p, false), (p, true)])
    {
        let env = Env::new(&["v"]);
        if sealed {
            env.encrypt_with("prune words");
        }
        let versions = history(&env);
        let id = ids(&env);
        let o = env.run_env(
            &["prune", "v", &format!("--session={}", id[1])],
            &[("SPARSEBAK_FAILPOINT", point)],
        );
        assert!(
            !o.status.success(),
            "{point}: prune should have been killed"
        );
        // verify finishes the prune first, then everything checks out.
        env.verify_ok("v", None);
        check_sessions(&env, &versions, &[0, 2, 3, 4, 5, 6], point);
        for e in std::fs::read_dir(the_volume_folder(&env)).unwrap() {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            assert!(
                !n.starts_with(".prune") && !n.starts_with(".trash"),
                "{point}: leftover {n}"
            );
        }
        // And the next send still works.
        env.write_at("v", 0, b"after");
        env.send("v");
        env.verify_ok("v", None);
    }
}

#[test]
fn a_session_named_for_two_volumes_that_only_one_has() {
    let env = Env::new(&["v", "w"]);
    std::fs::write(env.image("v"), Rng::new(1).bytes(2 * CS)).unwrap();
    std::fs::write(env.image("w"), Rng::new(2).bytes(2 * CS)).unwrap();
    env.send("v");
    let old_v = env.latest("v").id;
    std::fs::write(env.image("v"), Rng::new(3).bytes(2 * CS)).unwrap();
    env.ok(&["send"]); // v gets a second session, w its first
    let o = env.run(&["prune", &format!("--session={old_v}")]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(env.sessions("v").len(), 1);
    assert_eq!(env.sessions("w").len(), 1);
    // A session that exists nowhere is an error.
    let err = env.fails(&["prune", "--session=20000101-000000"]);
    assert!(err.contains("no volume"), "{err}");
}
