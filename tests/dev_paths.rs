//! Nothing is ever created under /dev: a `--save-to`, `--stream` or `-o` path there that
//! is not an existing device is refused before anything is written (a regular file in
//! devtmpfs lives in RAM and would hide the device node that later belongs there).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const CS: usize = 65536;

fn gone(p: &Path) {
    assert!(p.symlink_metadata().is_err(), "{} was created", p.display());
}

#[test]
fn no_file_is_created_under_dev() {
    let env = Env::new(&["v"]);
    let mut img = vec![0u8; 8 * CS];
    Rng::new(5).fill(&mut img[..3 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let name = format!("sparsebak-test-{}", std::process::id());
    let target = PathBuf::from("/dev").join(&name);
    // The same place reached through `..`.
    let dotted = format!(
        "{}/../../../../../../../../dev/{name}",
        env.path().display()
    );

    for p in [target.to_str().unwrap(), dotted.as_str()] {
        let err = env.fails(&["receive", "v", &format!("--save-to={p}")]);
        assert!(err.contains("no regular files under /dev"), "{err}");
        gone(&target);
    }

    // Streams: written to a new file under /dev, or restored into one.
    let err = env.fails(&["send", "v", &format!("--stream={}", target.display())]);
    assert!(err.contains("no regular files under /dev"), "{err}");
    gone(&target);
    let stream = env.path().join("s1.tar");
    env.ok(&["send", "v", &format!("--stream={}", stream.display())]);
    let err = env.fails(&[
        "receive",
        &format!("--from-stream={}", stream.display()),
        &format!("--save-to={}", target.display()),
    ]);
    assert!(err.contains("no regular files under /dev"), "{err}");
    gone(&target);
    // Dot files of an interrupted write neither.
    gone(&PathBuf::from("/dev").join(format!(".{name}.partial")));

    // spbk-assemble -o.
    let out = Command::new(assemble_bin())
        .arg("-o")
        .arg(&target)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no regular files under /dev"),
        "{err}"
    );
    gone(&target);
    gone(&PathBuf::from("/dev").join(format!(".{name}.assemble-partial")));

    // Elsewhere the same commands work.
    let ok = env.path().join("r.img");
    env.ok(&["receive", "v", &format!("--save-to={}", ok.display())]);
    assert_same(&std::fs::read(&ok).unwrap(), &img, "restore outside /dev");
}
