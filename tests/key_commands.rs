//! `sparsebak key passwd|export|import` on an encrypted archive's key file, with the
//! passphrase from each of its sources, on a local archive and through the remote
//! protocol: the real binary, real files, real processes.

mod common;
use common::*;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sparsebak_format::crypto::{ArchiveKeys, KdfParams, KeyFile, MasterKey, Passphrase, KEY_FILE};

const ID: &str = "0f8b8d3e-5c1a-4a7e-9b2d-3c4d5e6f7a8b";
const FAST: KdfParams = KdfParams {
    m_kib: 8192,
    t: 1,
    p: 1,
};

fn pass(s: &str) -> Passphrase {
    Passphrase::new(s.to_string())
}

/// A private file holding `text` (mode `mode`).
fn secret_file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// An encrypted archive at `env.archive()`, made by hand: its marker, its key file
/// (master key `[7; 32]` under `passphrase`) and a volume folder with a file in it.
fn encrypted_archive(env: &Env, id: &str, passphrase: &str) {
    encrypted_archive_at(env, &env.archive(), id, passphrase)
}

/// [`encrypted_archive`] at `root`, for `env`'s config.
fn encrypted_archive_at(env: &Env, root: &Path, id: &str, passphrase: &str) {
    std::fs::create_dir_all(root.join("vAAAA")).unwrap();
    std::fs::write(
        root.join("sparsebak.archive"),
        format!("sparsebak-archive\nformat=2\nid={id}\nencryption=aes-256-gcm\n"),
    )
    .unwrap();
    std::fs::write(root.join("vAAAA").join("some-file"), b"sealed bytes").unwrap();
    let kf = KeyFile::wrap(id, &MasterKey::from_bytes([7; 32]), &pass(passphrase), FAST).unwrap();
    std::fs::write(root.join(KEY_FILE), kf.render()).unwrap();
    // The shared config keeps other tests' archives plain; this one is encrypted.
    let c = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, c.replace("encrypt = off\n", "")).unwrap();
}

/// The identity a master key gives `data`: equal for equal master keys.
fn fingerprint(master: &MasterKey) -> [u8; 32] {
    ArchiveKeys::derive(master, ID).chunk_id(b"which master key")
}

fn installed(env: &Env) -> KeyFile {
    KeyFile::parse(&std::fs::read(env.archive().join(KEY_FILE)).unwrap()).unwrap()
}

/// Every file under `dir` but the key file, with its modification time and bytes.
fn other_files(dir: &Path) -> BTreeMap<PathBuf, (std::time::SystemTime, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let m = e.metadata().unwrap();
            if m.is_dir() {
                todo.push(p.clone());
            }
            if p != dir.join(KEY_FILE) {
                let bytes = if m.is_file() {
                    std::fs::read(&p).unwrap()
                } else {
                    Vec::new()
                };
                out.insert(p, (m.modified().unwrap(), bytes));
            }
        }
    }
    out
}

/// Run the binary with `env`'s config, `stdin` fed to it.
fn run_in(env: &Env, args: &[&str], vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    let mut c = Command::new(bin());
    c.arg("-c").arg(&env.config).args(args);
    c.env_remove("SPARSEBAK_PASSPHRASE");
    for (k, v) in vars {
        c.env(k, v);
    }
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    {
        use std::io::Write;
        let mut i = child.stdin.take().unwrap();
        i.write_all(stdin).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn fails(o: &Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "should have failed:\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    e
}

/// `env` with `lines` added to its [var] section.
fn with_var(env: &Env, lines: &str) {
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let ini = ini
        .lines()
        .filter(|l| !l.starts_with("passfile") && !l.starts_with("passcmd"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &env.config,
        ini.replacen("[var]\n", &format!("[var]\n{lines}"), 1) + "\n",
    )
    .unwrap();
}

#[test]
fn passwd_export_paper_and_import_round_trip() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "old words");
    let key_path = env.archive().join(KEY_FILE);
    let old_file = secret_file(env.path(), "old.pass", "old words\nignored\n", 0o600);
    let new_file = secret_file(env.path(), "new.pass", "new words\n", 0o600);
    with_var(&env, &format!("passfile = {}\n", old_file.display()));
    let original = fingerprint(&installed(&env).unwrap_key(&pass("old words")).unwrap());
    let before = other_files(&env.archive());
    let key_before = std::fs::read(&key_path).unwrap();

    // A new passfile others may read is refused, naming it and its mode; nothing changes.
    let exposed = secret_file(env.path(), "exposed.pass", "new words\n", 0o644);
    let e = fails(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", exposed.display()),
        ],
        &[],
        b"",
    ));
    assert!(
        e.contains(&format!(
            "passfile {}: group or others may read it (mode 0644)",
            exposed.display()
        )),
        "{e}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), key_before);

    // A wrong current passphrase is said before anything else; nothing changes.
    let wrong = secret_file(env.path(), "wrong.pass", "not it\n", 0o600);
    with_var(&env, &format!("passfile = {}\n", wrong.display()));
    let e = fails(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[],
        b"",
    ));
    assert!(
        e.contains(&format!(
            "{}: wrong passphrase (it does not unlock the archive's key)",
            key_path.display()
        )),
        "{e}"
    );
    assert!(!e.contains("not it") && !e.contains("new words"), "{e}");
    assert_eq!(std::fs::read(&key_path).unwrap(), key_before);

    // The change: only the key file is rewritten.
    with_var(&env, &format!("passfile = {}\n", old_file.display()));
    ok(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[],
        b"",
    ));
    let kf = installed(&env);
    assert_eq!(kf.archive, ID);
    assert_eq!(kf.kdf, FAST);
    assert!(kf.unwrap_key(&pass("old words")).is_err());
    assert_eq!(
        fingerprint(&kf.unwrap_key(&pass("new words")).unwrap()),
        original
    );
    assert_eq!(other_files(&env.archive()), before);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Export needs no passphrase; the plain form is the file, the paper one types back.
    with_var(&env, "");
    let plain = ok(&run_in(&env, &["key", "export"], &[], b""));
    assert_eq!(plain.as_bytes(), std::fs::read(&key_path).unwrap());
    let paper = ok(&run_in(&env, &["key", "export", "--paper"], &[], b""));
    assert!(paper.starts_with("sparsebak-key-paper 1 lines="), "{paper}");

    // Lost: every command that needs it says how to put it back.
    std::fs::remove_file(&key_path).unwrap();
    let e = fails(&run_in(&env, &["key", "export"], &[], b""));
    assert!(
        e.contains(&format!(
            "the archive at {} is encrypted but has no key file sparsebak.key: put back a copy with `sparsebak key import`",
            env.archive().display()
        )),
        "{e}"
    );

    // Put back from its paper form on standard input, the passphrase from the
    // environment (no passfile or passcmd configured).
    ok(&run_in(
        &env,
        &["key", "import"],
        &[("SPARSEBAK_PASSPHRASE", "new words")],
        paper.as_bytes(),
    ));
    let back = installed(&env);
    assert_eq!(back, kf);
    assert_eq!(
        fingerprint(&back.unwrap_key(&pass("new words")).unwrap()),
        original
    );
    assert_eq!(other_files(&env.archive()), before);
    // The same key again changes nothing.
    ok(&run_in(
        &env,
        &["key", "import"],
        &[("SPARSEBAK_PASSPHRASE", "new words")],
        paper.as_bytes(),
    ));
    assert_eq!(installed(&env), kf);
}

#[test]
fn import_refuses_other_archives_wrong_passphrases_and_different_keys() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "words");
    let key_path = env.archive().join(KEY_FILE);
    let current = std::fs::read(&key_path).unwrap();
    let dir = env.path();
    with_var(&env, "passcmd = /bin/echo words\n");

    // The key of another archive.
    let other_id = "11111111-2222-4333-8444-555555555555";
    let other = KeyFile::wrap(
        other_id,
        &MasterKey::from_bytes([7; 32]),
        &pass("words"),
        FAST,
    )
    .unwrap()
    .render();
    let other_path = secret_file(dir, "other.key", &other, 0o600);
    let e = fails(&run_in(
        &env,
        &["key", "import", &other_path.display().to_string()],
        &[],
        b"",
    ));
    assert!(
        e.contains(&format!(
            "{}: the key of archive {other_id}, but the archive at {} is archive {ID}",
            other_path.display(),
            env.archive().display()
        )),
        "{e}"
    );

    // A different key of this archive: refused without --force, whatever the passphrase.
    let different = KeyFile::wrap(ID, &MasterKey::from_bytes([9; 32]), &pass("words"), FAST)
        .unwrap()
        .render();
    let different_path = secret_file(dir, "different.key", &different, 0o600);
    let arg = different_path.display().to_string();
    let e = fails(&run_in(&env, &["key", "import", &arg], &[], b""));
    assert!(
        e.contains(&format!(
            "{} exists and differs from the key in {arg}; nothing was changed (--force replaces it",
            key_path.display()
        )),
        "{e}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), current);

    // With --force, still only with the passphrase that opens it.
    with_var(&env, "passcmd = /bin/echo other words\n");
    let e = fails(&run_in(&env, &["key", "import", "--force", &arg], &[], b""));
    assert!(
        e.contains(&format!(
            "{arg}: wrong passphrase (it does not unlock the archive's key)"
        )),
        "{e}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), current);
    with_var(&env, "passcmd = /bin/echo words\n");
    ok(&run_in(&env, &["key", "import", "--force", &arg], &[], b""));
    assert_eq!(std::fs::read(&key_path).unwrap(), different.as_bytes());

    // What is not a key at all, and a paper line typed wrong.
    let junk = secret_file(dir, "junk", "hello\n", 0o600);
    let e = fails(&run_in(
        &env,
        &["key", "import", &junk.display().to_string()],
        &[],
        b"",
    ));
    assert!(e.contains("does not start with `sparsebak-key 1`"), "{e}");
    let paper = ok(&run_in(&env, &["key", "export", "--paper"], &[], b""));
    let mut lines: Vec<String> = paper.lines().map(String::from).collect();
    let c = if lines[2].as_bytes()[3] == b'a' {
        "b"
    } else {
        "a"
    };
    lines[2].replace_range(3..4, c);
    let e = fails(&run_in(
        &env,
        &["key", "import", "--force"],
        &[],
        lines.join("\n").as_bytes(),
    ));
    assert!(
        e.contains("line 02 does not match its checksum; check it for typing errors"),
        "{e}"
    );
    assert_eq!(std::fs::read(&key_path).unwrap(), different.as_bytes());
}

#[test]
fn without_any_passphrase_source_one_line_names_them_all() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "words");
    let new_file = secret_file(env.path(), "new.pass", "new\n", 0o600);
    let before = std::fs::read(env.archive().join(KEY_FILE)).unwrap();
    let e = fails(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[],
        b"",
    ));
    assert!(
        e.contains(&format!(
            "the archive at {} is encrypted and no passphrase was given: set `passfile = PATH`",
            env.archive().display()
        )),
        "{e}"
    );
    for source in ["passfile", "passcmd", "SPARSEBAK_PASSPHRASE"] {
        assert!(e.contains(source), "{source}: {e}");
    }
    // No new passphrase: the config's passfile is never taken for the new one.
    let old_file = secret_file(env.path(), "old.pass", "words\n", 0o600);
    with_var(&env, &format!("passfile = {}\n", old_file.display()));
    let e = fails(&run_in(&env, &["key", "passwd"], &[], b""));
    assert!(
        e.contains("no new passphrase: give --new-passfile=PATH"),
        "{e}"
    );
    // An empty environment variable and a failing passcmd.
    with_var(&env, "");
    let e = fails(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[("SPARSEBAK_PASSPHRASE", "")],
        b"",
    ));
    assert!(
        e.contains("SPARSEBAK_PASSPHRASE: the passphrase is empty"),
        "{e}"
    );
    with_var(&env, "passcmd = /bin/false --quiet\n");
    let e = fails(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[("SPARSEBAK_PASSPHRASE", "words")],
        b"",
    ));
    assert!(
        e.contains("passcmd /bin/false failed (exit status 1)"),
        "{e}"
    );
    assert_eq!(std::fs::read(env.archive().join(KEY_FILE)).unwrap(), before);
}

#[test]
fn an_unencrypted_archive_has_no_key() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(3).bytes(2 * 65536)).unwrap();
    env.send("v");
    for args in [
        &["key", "export"][..],
        &["key", "passwd"][..],
        &["key", "import", "/nonexistent"][..],
    ] {
        let e = fails(&run_in(&env, args, &[], b""));
        assert!(
            e.contains(&format!(
                "the archive at {} is not encrypted (format 1): it has no key",
                env.archive().display()
            )),
            "{args:?}: {e}"
        );
    }
    assert!(!env.archive().join(KEY_FILE).exists());
}

/// A `qvm-run` stand-in that records its environment, then runs the far side's
/// command as a VM would.
fn qvm_run_recording_env(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = format!(
        "#!/bin/sh\necho '--- qvm-run' >> '{0}'\n/usr/bin/env >> '{0}'\nexec sh -c \"$4\"\n",
        dir.join("child-env").display()
    );
    let path = bin.join("qvm-run");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn over_the_remote_protocol_and_no_child_sees_the_passphrase() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "old words");
    let local_paper = ok(&run_in(&env, &["key", "export", "--paper"], &[], b""));
    let bin_dir = qvm_run_recording_env(env.path());
    with_var(
        &env,
        &format!(
            "destvm = qubes://backup-vm\ndestcmd = {}\n",
            bin().display()
        ),
    );
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let new_file = secret_file(env.path(), "new.pass", "new words\n", 0o600);
    let remote = |args: &[&str], stdin: &[u8]| {
        run_in(
            &env,
            args,
            &[("PATH", &path), ("SPARSEBAK_PASSPHRASE", "old words")],
            stdin,
        )
    };
    assert_eq!(ok(&remote(&["key", "export", "--paper"], b"")), local_paper);
    let before = other_files(&env.archive());
    ok(&remote(
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        b"",
    ));
    let kf = installed(&env);
    assert!(kf.unwrap_key(&pass("old words")).is_err());
    kf.unwrap_key(&pass("new words")).unwrap();
    assert_eq!(other_files(&env.archive()), before);
    // Put back over there, from a file here.
    std::fs::remove_file(env.archive().join(KEY_FILE)).unwrap();
    let saved = secret_file(env.path(), "saved.key", &kf.render(), 0o600);
    let e = fails(&remote(&["key", "export"], b""));
    assert!(e.contains("has no key file sparsebak.key"), "{e}");
    ok(&run_in(
        &env,
        &["key", "import", &saved.display().to_string()],
        &[("PATH", &path), ("SPARSEBAK_PASSPHRASE", "new words")],
        b"",
    ));
    assert_eq!(installed(&env), kf);
    // The far side's process (and its transport) never had the passphrase.
    let seen = std::fs::read_to_string(env.path().join("child-env")).unwrap();
    assert_eq!(seen.matches("--- qvm-run").count(), 4, "{seen}");
    assert!(!seen.contains("SPARSEBAK_PASSPHRASE"), "{seen}");
    assert!(!seen.contains("words"), "{seen}");
}

/// Run the binary with `env`'s config at a terminal (`script` gives it one), typing
/// each line of `typed` there after the next prompt shows.
fn at_terminal(env: &Env, args: &str, typed: &str) -> (Option<i32>, String) {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let cmd = format!("{} -c {} {args}", bin().display(), env.config.display());
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &cmd, "/dev/null"])
        .env_remove("SPARSEBAK_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let mut input = child.stdin.take().unwrap();
    for (i, line) in typed.split('\n').enumerate() {
        // Each answer once its prompt is there, as a person types.
        let t0 = std::time::Instant::now();
        while seen.lock().unwrap().matches("assphrase").count() <= i {
            assert!(
                t0.elapsed().as_secs() < 30,
                "no prompt {i}: {}",
                seen.lock().unwrap()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        input.write_all(format!("{line}\r").as_bytes()).unwrap();
        input.flush().unwrap();
    }
    // The end of input: a prompt still waiting gets an end of file, not a hang.
    drop(input);
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let out = seen.lock().unwrap().clone();
    (status.code(), out)
}

#[test]
fn at_a_terminal_the_passphrase_is_asked_and_a_new_one_twice() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "old words");
    let before = std::fs::read(env.archive().join(KEY_FILE)).unwrap();
    let what = format!("the archive at {}", env.archive().display());
    // An empty one is refused.
    let (code, out) = at_terminal(&env, "key passwd", "");
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("an empty passphrase is refused; nothing was changed"),
        "{out}"
    );
    // Two different new passphrases: refused, nothing changed.
    let (code, out) = at_terminal(&env, "key passwd", "old words\nnew words\nnew wordz");
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("Passphrase of {what}: ")), "{out}");
    assert!(
        out.contains(&format!("New passphrase of {what}: ")),
        "{out}"
    );
    assert!(out.contains("The same passphrase again: "), "{out}");
    assert!(
        out.contains("the two passphrases typed differ; nothing was changed"),
        "{out}"
    );
    assert!(!out.contains("words"), "nothing typed is echoed: {out}");
    assert_eq!(std::fs::read(env.archive().join(KEY_FILE)).unwrap(), before);
    // The same twice: changed.
    let (code, out) = at_terminal(&env, "key passwd", "old words\nnew words\nnew words");
    assert_eq!(code, Some(0), "{out}");
    let kf = installed(&env);
    kf.unwrap_key(&pass("new words")).unwrap();
    assert!(kf.unwrap_key(&pass("old words")).is_err());
}

#[test]
fn a_read_only_archive_keeps_its_key_and_still_exports_it() {
    let Some(fs) = loopfs::LoopFs::new("key_read_only", loopfs::FsKind::Ext4, "") else {
        return;
    };
    let env = Env::new(&["v"]);
    let root = fs.path().join("archive");
    encrypted_archive_at(&env, &root, ID, "words");
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", root.display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    with_var(&env, "passcmd = /bin/echo words\n");
    let plain = ok(&run_in(&env, &["key", "export"], &[], b""));
    let saved = secret_file(env.path(), "saved.key", &plain, 0o600);
    let new_file = secret_file(env.path(), "new.pass", "new\n", 0o600);
    fs.remount("ro");
    for (args, action) in [
        (
            vec![
                "key".to_string(),
                "passwd".into(),
                format!("--new-passfile={}", new_file.display()),
            ],
            "key passwd",
        ),
        (
            vec![
                "key".to_string(),
                "import".into(),
                "--force".into(),
                saved.display().to_string(),
            ],
            "key import",
        ),
    ] {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let e = fails(&run_in(&env, &a, &[], b""));
        assert!(
            e.contains(&format!(
                "the archive at {} is on a read-only filesystem; {action} needs to write to it (mount it read-write)",
                root.display()
            )),
            "{e}"
        );
    }
    assert_eq!(ok(&run_in(&env, &["key", "export"], &[], b"")), plain);
    fs.remount("rw");
    assert_eq!(std::fs::read_to_string(root.join(KEY_FILE)).unwrap(), plain);
}

#[test]
fn key_usage_errors_exit_2_before_anything_is_read() {
    let env = Env::new(&["v"]);
    encrypted_archive(&env, ID, "words");
    let before = std::fs::read(env.archive().join(KEY_FILE)).unwrap();
    for args in [
        &["key"][..],
        &["key", "rotate"][..],
        &["key", "export", "--new-passfile=/x"][..],
        &["key", "passwd", "--paper"][..],
        &["key", "import", "a", "b"][..],
    ] {
        let o = run_in(&env, args, &[], b"");
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Usage: sparsebak key"),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let o = run_in(&env, &["key", "--help"], &[], b"");
    let help = String::from_utf8(o.stdout).unwrap();
    for sub in ["passwd", "export", "import"] {
        assert!(help.contains(sub), "{help}");
    }
    assert_eq!(std::fs::read(env.archive().join(KEY_FILE)).unwrap(), before);
}

/// `env`'s config with `encrypt = on` and `passfile = PATH`.
fn encrypt_with(env: &Env, passfile: &Path) {
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let ini = ini
        .lines()
        .filter(|l| !l.starts_with("encrypt") && !l.starts_with("passfile"))
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(
        &env.config,
        ini.replacen(
            "[var]\n",
            &format!("[var]\nencrypt = on\npassfile = {}\n", passfile.display()),
            1,
        ) + "\n",
    )
    .unwrap();
}

#[test]
fn an_archive_sent_encrypted_reads_back_after_passwd_and_after_its_key_is_put_back() {
    let env = Env::new(&["v"]);
    let data = Rng::new(11).bytes(6 * 65536 + 1000);
    std::fs::write(env.image("v"), &data).unwrap();
    let old_file = secret_file(env.path(), "old.pass", "old words\n", 0o600);
    let new_file = secret_file(env.path(), "new.pass", "new words\n", 0o600);
    encrypt_with(&env, &old_file);
    env.send("v");
    let marker = std::fs::read_to_string(env.archive().join("sparsebak.archive")).unwrap();
    assert!(marker.contains("format=2\n"), "{marker}");
    assert_eq!(env.receive("v", None), data);

    ok(&run_in(
        &env,
        &[
            "key",
            "passwd",
            &format!("--new-passfile={}", new_file.display()),
        ],
        &[],
        b"",
    ));
    // The old passphrase opens nothing any more; the new one opens everything.
    let save = format!("--save-to={}", env.path().join("out.img").display());
    let e = fails(&run_in(&env, &["-u", "receive", "v", &save], &[], b""));
    assert!(e.contains("wrong passphrase"), "{e}");
    encrypt_with(&env, &new_file);
    assert_eq!(env.receive("v", None), data);
    env.verify_ok("v", None);

    // The key lost and put back from paper.
    let paper = ok(&run_in(&env, &["key", "export", "--paper"], &[], b""));
    std::fs::remove_file(env.archive().join(KEY_FILE)).unwrap();
    let e = fails(&run_in(&env, &["-u", "receive", "v", &save], &[], b""));
    assert!(e.contains("sparsebak key import"), "{e}");
    ok(&run_in(&env, &["key", "import"], &[], paper.as_bytes()));
    assert_eq!(env.receive("v", None), data);
}
