//! The exit status tells outcomes apart: 0 ok, 1 failure, 2 bad usage, 3 nothing done
//! (`send --dest=all` with no destination present; see tests/several_dests.rs), 4
//! `verify` found damage, told from a verify that could not run (1).

mod common;

use std::os::unix::fs::FileExt;
use std::process::Output;

use common::*;

const CS: usize = 65536;

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A volume sent once: the env and the session.
fn sent() -> (Env, String) {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(7).bytes(8 * CS)).unwrap();
    env.send("v");
    let id = env.latest("v").id;
    (env, id)
}

#[test]
fn verify_exits_4_for_damage_and_1_when_it_cannot_run() {
    let (env, id) = sent();
    let o = env.run(&["verify", "v"]);
    assert_eq!(code(&o), Some(0), "{}", err(&o));

    // A chunk altered: the run ends, names it, exits 4.
    let chunk = env
        .vol_dir("v")
        .join(format!("S_{id}"))
        .join("x000000000")
        .join(format!("x{:016x}", 2 * CS));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&chunk)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_at(&mut b, 20).unwrap();
    f.write_at(&[b[0] ^ 0x40], 20).unwrap();
    drop(f);
    let o = env.run(&["verify", "v"]);
    assert_eq!(code(&o), Some(4), "{}", err(&o));
    assert!(
        err(&o).trim_end().ends_with(&format!(
            "sparsebak: error: verify v session {id}: FAILED with 1 problem(s)"
        )),
        "{}",
        err(&o)
    );
    assert!(
        err(&o).contains(&chunk.display().to_string()),
        "{}",
        err(&o)
    );

    // Could not run: a volume with no session, an archive that is not there.
    let o = env.run(&["verify", "w"]);
    assert_eq!(code(&o), Some(1), "{}", err(&o));
    std::fs::rename(env.archive(), env.path().join("moved")).unwrap();
    let o = env.run(&["verify", "v"]);
    assert_eq!(code(&o), Some(1), "{}", err(&o));
    assert!(!err(&o).contains("FAILED"), "{}", err(&o));
}

#[test]
fn verify_from_stream_exits_4_for_damage_and_1_when_it_cannot_read() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(8).bytes(8 * CS)).unwrap();
    let s = env.path().join("full.stream");
    env.ok(&["send", "v", &format!("--stream={}", s.display())]);
    let from = format!("--from-stream={}", s.display());
    let o = env.run(&["verify", &from]);
    assert_eq!(code(&o), Some(0), "{}", err(&o));

    // A byte of chunk data altered in the middle of the stream.
    let len = std::fs::metadata(&s).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_at(&mut b, len / 2).unwrap();
    f.write_at(&[b[0] ^ 0x01], len / 2).unwrap();
    drop(f);
    let o = env.run(&["verify", &from]);
    assert_eq!(code(&o), Some(4), "{}", err(&o));
    assert!(
        err(&o).starts_with(&format!("sparsebak: error: verify: {}: ", s.display())),
        "{}",
        err(&o)
    );

    // Cut short: damage too.
    let cut = env.path().join("cut.stream");
    std::fs::write(&cut, &std::fs::read(&s).unwrap()[..(len / 3) as usize]).unwrap();
    let o = env.run(&["verify", &format!("--from-stream={}", cut.display())]);
    assert_eq!(code(&o), Some(4), "{}", err(&o));

    // Not there, or not a stream at all: it could not run.
    let gone = env.path().join("gone.stream");
    let o = env.run(&["verify", &format!("--from-stream={}", gone.display())]);
    assert_eq!(code(&o), Some(1), "{}", err(&o));
    let junk = env.path().join("junk");
    std::fs::write(&junk, Rng::new(9).bytes(8192)).unwrap();
    let o = env.run(&["verify", &format!("--from-stream={}", junk.display())]);
    assert_eq!(code(&o), Some(1), "{}", err(&o));
    assert!(err(&o).contains("not a sparsebak stream"), "{}", err(&o));
}

#[test]
fn bad_usage_exits_2_and_help_names_every_status() {
    let env = Env::new(&["v"]);
    for args in [
        &["--no-such-option", "list"][..],
        &["verify"],
        &["send", "--dest=all", "--stream=-", "v"],
        &["prune", "v"],
    ] {
        let o = env.run(args);
        assert_eq!(code(&o), Some(2), "{args:?}: {}", err(&o));
    }
    let help = env.ok(&["--help"]);
    assert!(
        help.contains("2 on bad usage,\n3 when send --dest=all found no destination present, 4 when verify found damage,\n5 when status finds a volume older than max_age (4 when a last verify found damage)."),
        "{help}"
    );
}
