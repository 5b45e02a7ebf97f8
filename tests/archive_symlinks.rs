//! A symbolic link planted in a plain archive is never followed: not as the lock file
//! (no file is created where it points), not as a volume or session folder, not as a
//! chunk file. Each is reported as "is a symbolic link, not a sparsebak file", with
//! exit 1, and what it points to is left as it was.

mod common;

use common::*;
use std::os::unix::fs::symlink;

const LINK: &str = "is a symbolic link, not a sparsebak file";

fn one_session(env: &Env, vol: &str) -> String {
    let mut img = vec![0u8; 4 * 65536];
    Rng::new(7).fill(&mut img);
    std::fs::write(env.image(vol), &img).unwrap();
    env.send(vol);
    env.latest(vol).id
}

#[test]
fn a_lock_link_creates_nothing_outside_the_archive() {
    let env = Env::new(&["v"]);
    one_session(&env, "v");
    let outside = TestDir::new();
    let target = outside.path().join("planted");
    let mut planted = 0;
    for lock in [env.archive().join(".lock"), env.vol_dir("v").join(".lock")] {
        if lock.exists() || std::fs::symlink_metadata(&lock).is_ok() {
            std::fs::remove_file(&lock).unwrap();
            symlink(&target, &lock).unwrap();
            planted += 1;
        }
    }
    assert!(planted > 0, "no lock file found to replace");
    let e = env.fails(&["send", "v"]);
    assert!(e.contains(LINK), "{e}");
    assert!(
        !target.exists(),
        "send created the file a lock link points to"
    );
}

#[test]
fn a_volume_folder_linked_outside_is_not_read() {
    let env = Env::new(&["v", "w"]);
    one_session(&env, "v");
    let outside = TestDir::new();
    let moved = outside.path().join("w");
    // Another archive's volume folder, linked in as `w`.
    std::fs::rename(env.vol_dir("v"), &moved).unwrap();
    symlink(&moved, env.vol_dir("w")).unwrap();
    let e = env.fails(&["list", "w"]);
    assert!(e.contains(LINK), "list: {e}");
    let e = env.fails(&["verify", "w"]);
    assert!(e.contains(LINK), "verify: {e}");
    let e = env.fails(&["receive", "w", "--save-to", "/dev/null"]);
    assert!(e.contains(LINK), "receive: {e}");
}

#[test]
fn a_chunk_linked_to_a_system_file_is_never_read() {
    let env = Env::new(&["v"]);
    let id = one_session(&env, "v");
    let sdir = env.vol_dir("v").join(format!("S_{id}"));
    let mut chunk = None;
    for e in walk(&sdir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        if n.starts_with('x') && e.is_file() {
            chunk = Some(e);
            break;
        }
    }
    let chunk = chunk.expect("a chunk file");
    std::fs::remove_file(&chunk).unwrap();
    symlink("/etc/passwd", &chunk).unwrap();
    let e = env.fails(&["verify", "v"]);
    assert!(e.contains(LINK), "verify: {e}");
    assert!(
        !e.contains("Unknown frame descriptor"),
        "verify read the link: {e}"
    );
    let out = env.dir.path().join("restored");
    let e = env.fails(&["receive", "v", "--save-to", out.to_str().unwrap()]);
    assert!(e.contains(LINK), "receive: {e}");
    assert!(
        !e.contains("Unknown frame descriptor"),
        "receive read the link: {e}"
    );
}

fn walk(d: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A chunk file of the archive's only session (in a chunk folder under the session
/// folder).
fn a_chunk_file(env: &Env) -> std::path::PathBuf {
    let sdir = env.only_session_dir();
    walk(&sdir)
        .into_iter()
        .find(|p| p.parent().unwrap() != sdir)
        .unwrap()
}

/// A chunk file replaced by a link is one problem, in a plain session and in an
/// encrypted one: the link is matched by its name, then refused by the read.
#[test]
fn a_chunk_link_is_one_problem_not_missing_and_extra() {
    for env in [
        Env::new(&["v"]),
        Env::encrypted(&["v"], "correct horse battery"),
    ] {
        one_session(&env, "v");
        let chunk = a_chunk_file(&env);
        let saved = env.dir.path().join("saved-chunk");
        std::fs::rename(&chunk, &saved).unwrap();
        symlink(&saved, &chunk).unwrap();
        let e = env.fails(&["verify", "v"]);
        assert!(e.contains(&format!("{}: {LINK}", chunk.display())), "{e}");
        assert!(e.contains("FAILED with 1 problem(s)"), "{e}");
        assert!(!e.contains("extra") && !e.contains("is missing"), "{e}");
    }
}

#[test]
fn a_session_folder_link_is_refused_as_one() {
    let env = Env::new(&["v"]);
    let id = one_session(&env, "v");
    let sdir = env.vol_dir("v").join(format!("S_{id}"));
    let outside = TestDir::new();
    let moved = outside.path().join("S");
    std::fs::rename(&sdir, &moved).unwrap();
    symlink(&moved, &sdir).unwrap();
    let want = format!("{} {LINK}", sdir.display());
    for args in [
        vec!["verify", "v"],
        vec!["list", "v"],
        vec!["receive", "v", "--save-to=/dev/null"],
    ] {
        let e = env.fails(&args);
        assert!(e.contains(&want), "{args:?}: {e}");
        assert!(!e.contains("No such file"), "{args:?}: {e}");
    }
}

#[test]
fn extra_chunk_files_of_an_encrypted_session_are_named() {
    let env = Env::encrypted(&["v"], "correct horse battery");
    one_session(&env, "v");
    let chunk = a_chunk_file(&env);
    let stray = chunk.parent().unwrap().join("stray");
    std::fs::write(&stray, b"not a chunk of this session").unwrap();
    let e = env.fails(&["verify", "v"]);
    assert!(
        e.contains(&format!(
            "extra file {} not in its manifest",
            stray.display()
        )) && e.contains("FAILED with 1 problem(s)"),
        "{e}"
    );
}

#[test]
fn a_tar_session_linked_outside_is_not_read() {
    let env = Env::new(&["v"]);
    let mut img = vec![0u8; 4 * 65536];
    Rng::new(4).fill(&mut img);
    std::fs::write(env.image("v"), &img).unwrap();
    env.ok(&["send", "--tarfile", "v"]);
    let id = env.latest("v").id;
    let outside = TestDir::new();
    for suffix in [".tar", ".tar.index"] {
        let p = env.vol_dir("v").join(format!("S_{id}{suffix}"));
        let moved = outside.path().join(suffix.trim_start_matches('.'));
        std::fs::copy(&p, &moved).unwrap();
        std::fs::remove_file(&p).unwrap();
        symlink(&moved, &p).unwrap();
        for args in [
            vec!["verify", "v"],
            vec!["receive", "v", "--save-to=/dev/null"],
        ] {
            let e = env.fails(&args);
            assert!(
                e.contains(&format!("{}: {LINK}", p.display())),
                "{suffix} {args:?}: {e}"
            );
        }
        std::fs::remove_file(&p).unwrap();
        std::fs::copy(&moved, &p).unwrap();
    }
    env.verify_ok("v", None);
}

/// Run sparsebak under `timeout 60`: a command that waits on a FIFO for ever fails
/// the test instead of hanging it.
fn run_bounded(env: &Env, args: &[&str]) -> std::process::Output {
    let o = std::process::Command::new("timeout")
        .arg("60")
        .arg(bin())
        .arg("-c")
        .arg(&env.config)
        .arg("-u")
        .args(args)
        .output()
        .unwrap();
    assert_ne!(o.status.code(), Some(124), "{args:?} hung");
    o
}

/// A FIFO or a device node put in the place of an archive file (a chunk file, a
/// manifest, an info) is refused, never opened for reading and waited on: verify
/// says so with the path (exit 4, or 1 where nothing can be verified), receive
/// fails and leaves no file, list does not hang. Plain and encrypted.
#[test]
fn a_fifo_or_device_in_the_archive_is_refused_not_waited_on() {
    const SPECIAL: &str = "is a FIFO, a socket or a device node, not a sparsebak file";
    for env in [
        Env::new(&["v"]),
        Env::encrypted(&["v"], "correct horse battery"),
    ] {
        one_session(&env, "v");
        let sdir = env.only_session_dir();
        for victim in [a_chunk_file(&env), sdir.join("manifest"), sdir.join("info")] {
            let saved = env.dir.path().join("saved");
            std::fs::rename(&victim, &saved).unwrap();
            for special in ["fifo", "null"] {
                if special == "fifo" {
                    nix::unistd::mkfifo(&victim, nix::sys::stat::Mode::from_bits_truncate(0o600))
                        .unwrap();
                } else {
                    // The same device as /dev/null (char 1:3).
                    nix::sys::stat::mknod(
                        &victim,
                        nix::sys::stat::SFlag::S_IFCHR,
                        nix::sys::stat::Mode::from_bits_truncate(0o600),
                        nix::sys::stat::makedev(1, 3),
                    )
                    .unwrap();
                }
                let want = format!("{}: {SPECIAL}", victim.display());
                let o = run_bounded(&env, &["verify", "v"]);
                let e = String::from_utf8_lossy(&o.stderr);
                assert!(matches!(o.status.code(), Some(1) | Some(4)), "{e}");
                assert!(
                    e.contains(&want),
                    "verify, {special} at {}: {e}",
                    victim.display()
                );
                let out = env.path().join("out.img");
                let save = format!("--save-to={}", out.display());
                let o = run_bounded(&env, &["receive", "v", &save]);
                let e = String::from_utf8_lossy(&o.stderr);
                assert_eq!(o.status.code(), Some(1), "{e}");
                assert!(
                    e.contains(SPECIAL),
                    "receive, {special} at {}: {e}",
                    victim.display()
                );
                assert!(!out.exists());
                run_bounded(&env, &["list", "v"]);
                std::fs::remove_file(&victim).unwrap();
            }
            std::fs::rename(&saved, &victim).unwrap();
        }
        env.verify_ok("v", None);
    }
}

/// A chunk folder replaced by a link (to a copy of itself) is one problem naming the
/// folder, not one per chunk file in it, plain and encrypted; receive refuses it.
#[test]
fn a_chunk_folder_link_is_one_problem() {
    for env in [
        Env::new(&["v"]),
        Env::encrypted(&["v"], "correct horse battery"),
    ] {
        one_session(&env, "v");
        let folder = a_chunk_file(&env).parent().unwrap().to_path_buf();
        let copy = env.dir.path().join("folder-copy");
        std::fs::rename(&folder, &copy).unwrap();
        symlink(&copy, &folder).unwrap();
        let e = env.fails(&["verify", "v"]);
        assert!(e.contains(&format!("{}: {LINK}", folder.display())), "{e}");
        assert!(e.contains("FAILED with 1 problem(s)"), "{e}");
        assert!(!e.contains("is missing") && !e.contains("extra"), "{e}");
        let out = env.path().join("out.img");
        let e = env.fails(&["receive", "v", &format!("--save-to={}", out.display())]);
        assert!(e.contains(LINK), "{e}");
        assert!(!out.exists());
    }
}

/// In an encrypted session folder, a link named as a chunk folder that no region of
/// the session draws is still said, once, for what it is.
#[test]
fn an_undrawn_chunk_folder_link_in_an_encrypted_session_is_said() {
    let env = Env::encrypted(&["v"], "correct horse battery");
    one_session(&env, "v");
    let sdir = env.only_session_dir();
    let outside = TestDir::new();
    let link = sdir.join("zzzz");
    symlink(outside.path(), &link).unwrap();
    let e = env.fails(&["verify", "v"]);
    assert!(e.contains(&format!("{}: {LINK}", link.display())), "{e}");
    assert!(e.contains("FAILED with 1 problem(s)"), "{e}");
}
