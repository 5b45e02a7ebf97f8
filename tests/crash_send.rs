//! A send killed with SIGKILL at any point leaves an archive that verifies, and the next
//! send is correct: no partial session is visible, nothing is lost.

mod common;
use common::*;

const CS: usize = 65536;

fn killed_at(point: &str) {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(99);
    let mut img = rng.bytes(200 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let first = env.latest("v");
    rng.fill(&mut img[..120 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    let o = env.run_env(&["send", "v"], &[("SPARSEBAK_FAILPOINT", point)]);
    assert!(
        !o.status.success(),
        "{point}: the send should have been killed"
    );
    // The archive verifies as it is, and has the first session or the complete second.
    env.verify_ok("v", None);
    let sessions = env.sessions("v");
    // Every `S_` entry of the volume folder is a session `list` shows, and each shown
    // session is one folder: a killed send leaves no half-made or unlisted session.
    assert_eq!(
        s_entries(&env),
        sessions
            .iter()
            .map(|s| format!("S_{}", s.id))
            .collect::<Vec<_>>(),
        "{point}: S_ entries of the volume folder"
    );
    match point {
        "send-mid-chunks" | "send-before-commit" | "session-before-rename" => {
            assert_eq!(
                sessions,
                vec![first.clone()],
                "{point}: no new session visible"
            )
        }
        _ => assert_eq!(sessions.len(), 2, "{point}: the committed session stays"),
    }
    // The next send completes the work and everything restores.
    env.send("v");
    let sessions = env.sessions("v");
    assert_eq!(sessions.len(), 2, "{point}");
    assert_eq!(sessions[1].changed, 120, "{point}");
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, point);
    // No staging folder is left behind.
    for e in std::fs::read_dir(env.vol_dir("v")).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.starts_with(".tmp"), "{point}: leftover {n}");
    }
}

/// Names of the volume folder's entries that start with `S_`, sorted.
fn s_entries(env: &Env) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("S_"))
        .collect();
    names.sort();
    names
}

#[test]
fn killed_while_writing_chunks() {
    killed_at("send-mid-chunks");
}

#[test]
fn killed_before_commit() {
    killed_at("send-before-commit");
}

#[test]
fn killed_between_sync_and_rename() {
    killed_at("session-before-rename");
}

#[test]
fn killed_after_commit_before_local_copy() {
    killed_at("send-after-commit");
}

#[test]
fn killed_after_local_copy() {
    killed_at("send-after-local-copy");
}

/// Kills at arbitrary moments of a larger send, by the clock.
#[test]
fn killed_at_random_moments() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(5);
    let mut img = rng.bytes(600 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    for delay_ms in [5u64, 20, 60, 120] {
        rng.fill(&mut img[(delay_ms as usize) * CS..(delay_ms as usize + 200) * CS]);
        std::fs::write(env.image("v"), &img).unwrap();
        let mut child = std::process::Command::new(bin())
            .arg("-c")
            .arg(&env.config)
            .args(["-u", "-q", "send", "v"])
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        env.verify_ok("v", None);
        env.send("v");
        env.verify_ok("v", None);
        assert_same(
            &env.receive("v", None),
            &img,
            &format!("after kill at {delay_ms} ms"),
        );
    }
}

/// A send killed after its commit leaves the record of the session it published.
/// While that session's info cannot be read, the next run cannot tell whether the
/// session exists: it stops, naming the file, and keeps the record (dropping it would
/// leave the session without this machine's copies for good). Once the info reads
/// again, the copies are taken.
#[test]
fn the_pending_record_stays_while_the_published_info_cannot_be_read() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(7);
    let mut img = rng.bytes(40 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[..10 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    let o = env.run_env(
        &["send", "v"],
        &[("SPARSEBAK_FAILPOINT", "send-after-commit")],
    );
    assert!(!o.status.success(), "the send should have been killed");
    // Listing the folder, not the sessions: listing them would take the copies.
    let entries = s_entries(&env);
    assert_eq!(entries.len(), 2, "{entries:?}");
    let id = entries[1].trim_start_matches("S_").to_string();
    let pending = env.meta().join("v/sessions/pending");
    let copy = env.meta().join(format!("v/sessions/S_{id}/info"));
    assert!(pending.exists() && !copy.exists());

    // The info becomes unreadable (a folder stands in its place).
    let info = env.vol_dir("v").join(format!("S_{id}/info"));
    let saved = std::fs::read(&info).unwrap();
    std::fs::remove_file(&info).unwrap();
    std::fs::create_dir(&info).unwrap();
    let err = env.fails(&["send", "v"]);
    assert!(
        err.contains(&format!("{}: Is a directory (os error 21)", info.display())),
        "{err}"
    );
    assert!(pending.exists(), "the record must stay");
    assert!(!copy.exists());

    // Readable again: the next send takes the copies and has nothing new to store.
    std::fs::remove_dir(&info).unwrap();
    std::fs::write(&info, &saved).unwrap();
    env.send("v");
    assert!(!pending.exists());
    assert_eq!(std::fs::read(&copy).unwrap(), saved);
    assert_eq!(s_entries(&env), entries);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "after the catch-up");
}
