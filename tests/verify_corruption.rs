//! Every kind of damage to an archive is caught by `verify`, which names the volume,
//! the session and the chunk.

mod common;
use common::*;
use std::path::PathBuf;

const CS: usize = 65536;

/// An archive with two sessions; returns the env and the IDs.
fn setup() -> (Env, String, String) {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(42);
    let mut img = rng.bytes(20 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[3 * CS..5 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let s = env.sessions("v");
    env.verify_ok("v", None);
    (env, s[0].id.clone(), s[1].id.clone())
}

fn chunk(env: &Env, id: &str, chunk_index: u64) -> PathBuf {
    let addr = chunk_index * CS as u64;
    env.vol_dir("v")
        .join(format!("S_{id}"))
        .join(format!("x{:09x}", addr >> 28))
        .join(format!("x{addr:016x}"))
}

fn verify_fails(env: &Env, session: Option<&str>, expect: &[&str]) {
    let mut args = vec!["verify".to_string(), "v".to_string()];
    if let Some(s) = session {
        args.push(format!("--session={s}"));
    }
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    // Damage found: exit 4, told apart from a verify that could not run (1).
    let err = failed(env.run(&a), 4);
    for e in expect {
        assert!(err.contains(e), "verify output lacks {e:?}:\n{err}");
    }
    assert!(
        err.contains("verify v session"),
        "names volume and session:\n{err}"
    );
}

#[test]
fn flipped_byte_in_chunk() {
    let (env, s1, _) = setup();
    let p = chunk(&env, &s1, 7);
    let mut d = std::fs::read(&p).unwrap();
    let mid = d.len() / 2;
    d[mid] ^= 1;
    std::fs::write(&p, d).unwrap();
    verify_fails(&env, None, &["x0000000000070000"]);
    // receive refuses too, and leaves no file behind.
    let out = env.path().join("r.img");
    let err = env.fails(&["receive", "v", &format!("--save-to={}", out.display())]);
    assert!(err.contains("x0000000000070000"), "{err}");
    assert!(!out.exists());
}

#[test]
fn missing_chunk_file() {
    let (env, s1, s2) = setup();
    std::fs::remove_file(chunk(&env, &s1, 0)).unwrap();
    verify_fails(&env, Some(&s2), &["x0000000000000000", "missing"]);
}

#[test]
fn extra_chunk_file() {
    let (env, s1, s2) = setup();
    std::fs::copy(chunk(&env, &s2, 3), chunk(&env, &s2, 9)).unwrap();
    verify_fails(&env, None, &["extra", "x0000000000090000"]);
    let _ = s1;
}

#[test]
fn two_chunk_files_swapped() {
    let (env, s1, _) = setup();
    let (a, b) = (chunk(&env, &s1, 10), chunk(&env, &s1, 11));
    let tmp = a.with_extension("t");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    verify_fails(&env, None, &["x00000000000a0000", "x00000000000b0000"]);
}

#[test]
fn altered_manifest_line() {
    let (env, s1, _) = setup();
    let m = env.vol_dir("v").join(format!("S_{s1}/manifest"));
    let text = std::fs::read_to_string(&m).unwrap();
    // Point line 2's hash at line 1's: syntactically fine, content wrong.
    let lines: Vec<&str> = text.lines().collect();
    let h0 = lines[0].split(' ').next().unwrap();
    let a1 = lines[1].split(' ').nth(1).unwrap();
    let new = text.replacen(lines[1], &format!("{h0} {a1}"), 1);
    std::fs::write(&m, new).unwrap();
    verify_fails(&env, None, &["manifest"]);
}

#[test]
fn altered_info_file() {
    let (env, s1, s2) = setup();
    let i = env.vol_dir("v").join(format!("S_{s1}/info"));
    let text = std::fs::read_to_string(&i).unwrap();
    std::fs::write(&i, text.replace("chunks=20", "chunks=21")).unwrap();
    verify_fails(&env, Some(&s2), &["info"]);
}

#[test]
fn info_rewritten_consistently_is_caught_by_local_copy() {
    // Someone rewrites an info file and fixes its checksum: only the copy kept on the
    // source side can tell.
    let (env, _s1, s2) = setup();
    let i = env.vol_dir("v").join(format!("S_{s2}/info"));
    let text = std::fs::read_to_string(&i).unwrap();
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("info_sha256="))
        .map(|l| {
            if l.starts_with("time=") {
                "time=1\n".to_string()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    use sha2::Digest;
    let sum = hex::encode(sha2::Sha256::digest(body.as_bytes()));
    std::fs::write(&i, format!("{body}info_sha256={sum}\n")).unwrap();
    verify_fails(&env, None, &["copy this machine kept"]);
}

#[test]
fn truncated_chunk_and_garbage_chunk() {
    let (env, s1, s2) = setup();
    let p = chunk(&env, &s1, 12);
    let d = std::fs::read(&p).unwrap();
    std::fs::write(&p, &d[..d.len() / 2]).unwrap();
    std::fs::write(chunk(&env, &s2, 3), b"not zstd at all").unwrap();
    verify_fails(&env, None, &["x00000000000c0000", "x0000000000030000"]);
}

/// stderr of a run that must fail with exit status `code`.
fn failed(o: std::process::Output, code: i32) -> String {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stderr).unwrap()
}

/// The problem lines of a verify's stderr (not its hint nor its last line).
fn problem_lines(err: &str) -> Vec<&str> {
    err.lines()
        .filter(|l| l.starts_with("sparsebak: verify v: ") && !l.contains(": hint: "))
        .collect()
}

/// Each damaged file is one problem, said once: a missing chunk file (which the walk of
/// its session's folder and the read of the view both meet) and two altered ones give
/// exactly three problems, each naming its file once and no session twice; an altered
/// manifest is one problem; receive says its context once.
#[test]
fn each_damage_is_one_problem_said_once() {
    let (env, s1, s2) = setup();
    let missing = chunk(&env, &s1, 7);
    std::fs::remove_file(&missing).unwrap();
    let mut flipped = Vec::new();
    for (id, i) in [(&s1, 9), (&s2, 3)] {
        let p = chunk(&env, id, i);
        let mut d = std::fs::read(&p).unwrap();
        d[5] ^= 1;
        std::fs::write(&p, d).unwrap();
        flipped.push(p);
    }
    let err = failed(env.run(&["verify", "v"]), 4);
    let lines = problem_lines(&err);
    assert_eq!(lines.len(), 3, "{err}");
    assert!(err.contains("FAILED with 3 problem(s)"), "{err}");
    for p in [&missing, &flipped[0], &flipped[1]] {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let session = p.parent().unwrap().parent().unwrap();
        let id = &session.file_name().unwrap().to_string_lossy()[2..];
        assert_eq!(
            err.matches(&*p.to_string_lossy()).count(),
            1,
            "{} said once: {err}",
            p.display()
        );
        let line = lines.iter().find(|l| l.contains(&name)).unwrap();
        assert_eq!(line.matches(&name).count(), 1, "{line}");
        assert_eq!(line.matches(id).count(), 1, "{line}");
    }
    assert!(
        err.contains(&format!("{} is missing", missing.display())),
        "{err}"
    );
    for line in err.lines() {
        for id in [&s1, &s2] {
            assert!(line.matches(id.as_str()).count() <= 1, "{id} twice: {line}");
        }
    }
    // receive: the volume, the session and the target once, then the cause.
    let out = env.path().join("out.img");
    let err = failed(
        env.run(&["receive", "v", &format!("--save-to={}", out.display())]),
        1,
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("receive v").count(), 1, "{err}");
    assert_eq!(err.matches(&*out.to_string_lossy()).count(), 1, "{err}");
    assert!(!out.exists());

    // An altered manifest (one hash changed; then bytes added) is one problem.
    let (env, _, s2) = setup();
    let manifest = env.vol_dir("v").join(format!("S_{s2}")).join("manifest");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let altered = format!(
        "{}{}",
        if text.starts_with('0') { "1" } else { "0" },
        &text[1..]
    );
    std::fs::write(&manifest, altered).unwrap();
    let err = failed(env.run(&["verify", "v"]), 4);
    assert_eq!(problem_lines(&err).len(), 1, "{err}");
    assert!(err.contains("manifest altered"), "{err}");
    assert!(err.contains("FAILED with 1 problem(s)"), "{err}");
    std::fs::write(&manifest, format!("{text}garbage\n")).unwrap();
    let err = failed(env.run(&["verify", "v"]), 4);
    assert_eq!(problem_lines(&err).len(), 1, "{err}");
    assert_eq!(
        err.matches(&*manifest.to_string_lossy()).count(),
        1,
        "{err}"
    );
    assert!(err.contains("FAILED with 1 problem(s)"), "{err}");
}

/// Standard output on `/dev/full` (a memory device: it keeps nothing) is refused before
/// anything is read, and named once, by receive from the archive and from streams.
#[test]
fn standard_output_on_dev_full_is_refused_and_named_once() {
    let (env, _, _) = setup();
    let stream = env.path().join("s.tar");
    env.ok(&["send", "v", &format!("--stream={}", stream.display())]);
    let from = format!("--from-stream={}", stream.display());
    for args in [
        &["receive", "v", "--save-to=-"][..],
        &["receive", &from, "--save-to=-"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&env.config)
            .args(args)
            .stdout(full)
            .output()
            .unwrap();
        let err = failed(o, 1);
        assert!(
            err.contains("standard output is a memory device (character device 1:7), not storage"),
            "{args:?}: {err}"
        );
        assert_eq!(err.matches("standard output").count(), 1, "{args:?}: {err}");
    }
}

/// The volume folder put back as it was before the latest send (an older consistent
/// copy): verify names the lost session; list warns; receive of the latest refuses
/// and a session named by its ID restores byte-identical.
#[test]
fn a_rolled_back_volume_folder_is_noticed_by_verify_list_and_receive() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(43);
    let mut img = rng.bytes(20 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let kept = env.latest("v").id;
    let saved = env.path().join("saved-folder");
    cp_a(&env.vol_dir("v"), &saved);
    rng.fill(&mut img[3 * CS..5 * CS]);
    let want = std::fs::read(env.image("v")).unwrap();
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let lost = env.latest("v").id;
    assert_ne!(lost, kept);
    std::fs::remove_dir_all(env.vol_dir("v")).unwrap();
    cp_a(&saved, &env.vol_dir("v"));
    verify_fails(&env, None, &[&lost, "the archive no longer has it"]);
    rolled_back_list_and_receive(&env, "v", &lost, &kept, &want);
}

fn cp_a(from: &std::path::Path, to: &std::path::Path) {
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The chunk files of an encrypted session, named by tokens in one folder per 256 MiB
/// region, are matched against the manifest by name: a file removed, a file moved into
/// the other region's folder, a stray file and a stray folder are each said once, with
/// their paths; the data of the others is still read and checked.
#[test]
fn encrypted_chunk_files_missing_moved_and_extra_are_each_said_once() {
    let env = Env::encrypted(&["v"], "correct horse battery");
    let mut rng = Rng::new(11);
    // Three chunks in each of the first two regions of a sparse 300 MiB volume.
    env.set_len("v", 300 << 20);
    env.write_at("v", 0, &rng.bytes(3 * CS));
    env.write_at("v", 280 << 20, &rng.bytes(3 * CS));
    env.send("v");
    env.verify_ok("v", None);
    let sdir = env.only_session_dir();
    let folders: Vec<PathBuf> = names_in(&sdir)
        .into_iter()
        .filter(|n| n != "info" && n != "manifest")
        .map(|n| sdir.join(n))
        .collect();
    assert_eq!(folders.len(), 2, "one chunk folder per region: {folders:?}");
    let files =
        |d: &PathBuf| -> Vec<PathBuf> { names_in(d).into_iter().map(|n| d.join(n)).collect() };
    let (a, b) = (files(&folders[0]), files(&folders[1]));
    assert_eq!((a.len(), b.len()), (3, 3));

    std::fs::remove_file(&a[0]).unwrap();
    let moved = folders[1].join(a[1].file_name().unwrap());
    std::fs::rename(&a[1], &moved).unwrap();
    let stray = folders[0].join("stray");
    std::fs::write(&stray, b"not a chunk").unwrap();
    let sub = folders[1].join("zzzz");
    std::fs::create_dir(&sub).unwrap();
    let odd = sdir.join("odd");
    std::fs::write(&odd, b"").unwrap();

    let err = failed(env.run(&["verify", "v"]), 4);
    let lines = problem_lines(&err);
    assert_eq!(lines.len(), 6, "{err}");
    assert!(err.contains("FAILED with 6 problem(s)"), "{err}");
    let id = env.latest("v").id;
    for gone in [&a[0], &a[1]] {
        let l = lines
            .iter()
            .find(|l| l.contains(&*gone.to_string_lossy()))
            .unwrap_or_else(|| panic!("{} not named: {err}", gone.display()));
        assert!(l.contains(&format!("session {id}: chunk file")), "{l}");
        assert!(l.contains("is missing"), "{l}");
        assert_eq!(err.matches(&*gone.to_string_lossy()).count(), 1, "{err}");
    }
    for e in [&stray, &moved, &sub] {
        let want = format!(
            "session {id}: extra file {} not in its manifest",
            e.display()
        );
        assert_eq!(
            lines.iter().filter(|l| l.contains(&want)).count(),
            1,
            "{err}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("extra entry {} in its folder", odd.display()))),
        "{err}"
    );
    // Put back as it was, but for the file removed: that one alone is said.
    std::fs::rename(&moved, &a[1]).unwrap();
    std::fs::remove_file(&stray).unwrap();
    std::fs::remove_dir(&sub).unwrap();
    std::fs::remove_file(&odd).unwrap();
    let err = failed(env.run(&["verify", "v"]), 4);
    assert_eq!(problem_lines(&err).len(), 1, "only the removed file: {err}");
}

/// A manifest emptied, or swapped with another session's, is refused by receive (and
/// by diff), naming it: every chunk such a manifest lists checks out against it, so
/// reading on would restore another session's data without a word. verify still
/// names the damage as one problem per manifest.
#[test]
fn receive_refuses_a_manifest_that_is_not_its_infos() {
    let (env, s1, s2) = setup();
    let m1 = env.vol_dir("v").join(format!("S_{s1}")).join("manifest");
    let m2 = env.vol_dir("v").join(format!("S_{s2}")).join("manifest");
    let (t1, t2) = (std::fs::read(&m1).unwrap(), std::fs::read(&m2).unwrap());
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    for (damage, a, b) in [
        ("emptied", &t1[..], &b""[..]),
        ("swapped", &t2[..], &t1[..]),
    ] {
        std::fs::write(&m1, a).unwrap();
        std::fs::write(&m2, b).unwrap();
        let err = failed(env.run(&["receive", "v", &save]), 1);
        let bad = if damage == "emptied" { &m2 } else { &m1 };
        assert!(
            err.contains(&format!("{}: the manifest of session", bad.display()))
                && err.contains("does not match the hash in its info"),
            "{damage}: {err}"
        );
        assert!(!out.exists(), "{damage}");
        let err = failed(env.run(&["diff", "v", &format!("--session={s1},{s2}")]), 1);
        assert!(
            err.contains("does not match the hash in its info"),
            "{damage}: {err}"
        );
        // One problem per damaged manifest, not also each file it does not list.
        let err = failed(env.run(&["verify", "v"]), 4);
        let want = if damage == "emptied" { 1 } else { 2 };
        assert_eq!(problem_lines(&err).len(), want, "{damage}: {err}");
        assert!(
            err.contains(&format!("session {s2}: manifest"))
                || err.contains(&format!("{}: manifest of", m2.display())),
            "{damage}: {err}"
        );
    }
    std::fs::write(&m1, &t1).unwrap();
    std::fs::write(&m2, &t2).unwrap();
    env.verify_ok("v", None);
    assert_eq!(env.receive("v", None), env.read_image("v"));
}

/// Two sessions' infos swapped: each is the info of the other session, and every
/// command that reads them says so for both, naming the files; nothing shows the
/// history they would make up.
#[test]
fn swapped_infos_are_each_named() {
    let (env, s1, s2) = setup();
    let i1 = env.vol_dir("v").join(format!("S_{s1}")).join("info");
    let i2 = env.vol_dir("v").join(format!("S_{s2}")).join("info");
    let (t1, t2) = (std::fs::read(&i1).unwrap(), std::fs::read(&i2).unwrap());
    std::fs::write(&i1, &t2).unwrap();
    std::fs::write(&i2, &t1).unwrap();
    for args in [vec!["verify", "v"], vec!["list", "v"]] {
        let o = env.run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?}: {err}");
        for (p, other) in [(&i1, &s2), (&i2, &s1)] {
            assert!(
                err.contains(&format!(
                    "{}: bad session info: is the info of session {other}",
                    p.display()
                )),
                "{args:?}: {err}"
            );
        }
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!out.contains(&format!("previous={s1}")), "{args:?}: {out}");
    }
    std::fs::write(&i1, &t1).unwrap();
    std::fs::write(&i2, &t2).unwrap();
    env.verify_ok("v", None);
}
