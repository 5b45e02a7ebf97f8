//! docs/FORMAT.md promises a volume can be restored with shell tools alone: run its
//! script on a real archive and compare with the volume.

mod common;
use common::*;

fn doc_script() -> String {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/FORMAT.md")).unwrap();
    let start = doc.find("```sh\n").expect("FORMAT.md has a sh block") + 6;
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end].to_string()
}

#[test]
fn shell_restore_from_format_doc() {
    if std::process::Command::new("zstd")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("zstd (the command) is needed; scripts/test.sh installs it");
        }
        eprintln!("SKIP shell_restore_from_format_doc: zstd command not installed");
        return;
    }
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(77);
    let cs = 65536usize;
    let mut img = vec![0u8; 40 * cs + 999];
    rng.fill(&mut img[..10 * cs]);
    rng.fill(&mut img[30 * cs..]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let v1 = img.clone();
    rng.fill(&mut img[5 * cs..6 * cs + 3]);
    img[32 * cs..33 * cs].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let script = doc_script();
    for (s, want) in env.sessions("v").iter().zip([&v1, &img]) {
        let out = env.path().join("shell.img");
        let o = std::process::Command::new("bash")
            .args(["-e", "-c", &script])
            .env("A", env.archive())
            .env("V", "v")
            .env("S", &s.id)
            .env("OUT", &out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same(
            &std::fs::read(&out).unwrap(),
            want,
            &format!("shell restore {}", s.id),
        );
    }
}
