//! `spbk-assemble` rebuilds every session from the archive folder alone, equal to
//! `sparsebak receive`, and `-c` catches a flipped byte.

mod common;
use common::*;
use std::path::PathBuf;
use std::process::Command;

const CS: usize = 65536;

fn assemble_bin() -> PathBuf {
    // The workspace member's binary sits next to sparsebak's; build it (a no-op when
    // it is up to date) so the test never runs a stale one.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "spbk-assemble"])
            .status()
            .unwrap();
        assert!(st.success());
    });
    bin().with_file_name("spbk-assemble")
}

#[test]
fn assemble_equals_receive_for_every_session() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(12);
    let mut img = vec![0u8; 30 * CS + 5];
    rng.fill(&mut img[..12 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[20 * CS..22 * CS]);
    img[0..CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    img.truncate(8 * CS + 3);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    // Copy the archive somewhere else: no config, no metadir.
    let copy = env.path().join("elsewhere");
    let st = Command::new("cp")
        .arg("-a")
        .arg(env.vol_dir("v"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    for s in env.sessions("v") {
        let want = env.receive("v", Some(&s.id));
        let out = env.path().join("asm.img");
        let o = Command::new(assemble_bin())
            .args(["-c", &format!("--session={}", s.id), "-o"])
            .arg(&out)
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same(
            &std::fs::read(&out).unwrap(),
            &want,
            &format!("assemble -o {}", s.id),
        );
        // And to stdout.
        let o = Command::new(assemble_bin())
            .arg(format!("--session={}", s.id))
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_same(&o.stdout, &want, &format!("assemble stdout {}", s.id));
    }
}

#[test]
fn check_catches_a_flipped_byte() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(13).bytes(4 * CS)).unwrap();
    env.ok(&["send", "v"]);
    let s = env.latest("v");
    let chunk = env
        .vol_dir("v")
        .join(format!("S_{}/x000000000/x0000000000020000", s.id));
    // Store the chunk uncompressed-equivalent: flip a byte inside the zstd frame's
    // payload, which either fails to decode or decodes to different bytes.
    let mut d = std::fs::read(&chunk).unwrap();
    let i = d.len() - 8;
    d[i] ^= 0x40;
    std::fs::write(&chunk, d).unwrap();
    let out = env.path().join("asm.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("0x0000000000020000") || err.contains("x0000000000020000"),
        "{err}"
    );
    assert!(!out.exists(), "no partial output left");
}

/// Bad usage of `spbk-assemble` (a selector that cannot be understood, an option it
/// does not take, no volume folder) exits 2 before anything is read or written.
#[test]
fn bad_usage_exits_2_before_anything_is_written() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(4).bytes(2 * CS)).unwrap();
    env.send("v");
    let out = env.path().join("out.img");
    let vol = env.vol_dir("v").display().to_string();
    let o_out = out.display().to_string();
    for (args, want) in [
        (
            vec!["--session=bogus", "-o", &o_out, &vol],
            "cannot understand session selector \"bogus\"",
        ),
        (vec!["--save-to=x", &vol], "unexpected argument '--save-to'"),
        (vec!["-o", &o_out], "<VOLUME_DIR>"),
    ] {
        let o = Command::new(assemble_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}
