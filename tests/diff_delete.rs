//! `diff` between sessions and against the live volume, and `delete`.

mod common;
use common::*;

const CS: usize = 65536;

#[test]
fn diff_between_sessions_and_live() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(8);
    let mut img = rng.bytes(30 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[3 * CS..5 * CS]); // chunks 3, 4: one range
    img[10 * CS + 7] ^= 1; // chunk 10
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    let out = env.diff_sessions("v", &ids[0], &ids[1], true);
    let want = format!(
        "\"changed_chunks\":3,\"changed_bytes\":{},\"ranges\":[{{\"start\":{},\"length\":{}}},{{\"start\":{},\"length\":{}}}]",
        3 * CS,
        3 * CS,
        2 * CS,
        10 * CS,
        CS
    );
    assert!(out.contains(&want), "{out}\nwant {want}");
    let human = env.diff_sessions("v", &ids[0], &ids[1], false);
    assert!(human.contains("3 chunk(s) in 2 range(s)"), "{human}");
    // Against the live volume: one more change, not yet sent.
    img[20 * CS] ^= 1;
    std::fs::write(env.image("v"), &img).unwrap();
    let out = env.ok(&["diff", "v", "--session=latest", "--json"]);
    assert!(out.contains("\"changed_chunks\":1,"), "{out}");
    assert!(out.contains(&format!("\"start\":{}", 20 * CS)), "{out}");
    let err = env.fails(&["diff", "v"]);
    assert!(err.contains("--session"), "{err}");
}

#[test]
fn delete_removes_archive_and_metadata_after_confirmation() {
    let env = Env::new(&["v", "w"]);
    std::fs::write(env.image("v"), Rng::new(1).bytes(3 * CS)).unwrap();
    std::fs::write(env.image("w"), Rng::new(2).bytes(3 * CS)).unwrap();
    env.ok(&["send"]);
    // Without -u and without a terminal: refused, nothing touched.
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["delete", "v"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(env.vol_dir("v").exists());
    env.ok(&["delete", "v"]);
    assert!(!env.vol_dir("v").exists());
    assert!(!env.meta().join("v").exists());
    // The other volume is untouched, and v starts over with a full send.
    env.verify_ok("w", None);
    env.send("v");
    assert_eq!(env.sessions("v").len(), 1);
    assert_eq!(env.latest("v").changed, 3);
}
