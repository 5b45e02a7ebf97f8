//! What `repair` says is plain words: no Rust debug text (`Some("…")`, `None`) in a
//! warning about a copy whose previous session is not the archive's.

mod common;

use common::*;

#[test]
fn a_copy_naming_another_previous_session_is_said_in_words() {
    let env = Env::new(&["v"]);
    let mut img = vec![0u8; 4 * 65536];
    Rng::new(1).fill(&mut img);
    for k in 0..2 {
        img[k * 65536] ^= 1;
        std::fs::write(env.image("v"), &img).unwrap();
        env.send("v");
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    // The first session's folder is lost: the second's copy still names it before it.
    std::fs::remove_dir_all(env.vol_dir("v").join(format!("S_{}", ids[0]))).unwrap();
    let o = env.run(&["repair", "--dry-run", "v"]);
    let t = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        t.contains(&format!(
            "names session {} before it, the archive none",
            ids[0]
        )),
        "{t}"
    );
    assert!(!t.contains("Some(") && !t.contains("None"), "{t}");
}
