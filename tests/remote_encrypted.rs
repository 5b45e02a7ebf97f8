//! Encrypted archives on a remote destination, over a real OpenSSH server on
//! 127.0.0.1: the archive code runs on this machine over the far folder's file
//! operations, and the far side holds only sealed files, hidden names and the wrapped
//! key.
//!
//! The far side's `sparsebak serve` runs in a mount namespace of its own where the
//! archive's path is a bind mount of another folder: the folder at that path on this
//! side stays empty, so nothing here can pass by touching the archive's files
//! directly instead of through the far side.

mod common;
use common::*;
#[path = "common/loopfs.rs"]
mod loopfs;
#[path = "common/sshd.rs"]
mod sshd;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sshd::*;

const VOL: &str = "payroll-database-volume";
const PASS: &str = "correct horse battery staple";
const CS: usize = 65536;
const NCHUNKS: usize = 48;
const MARKER: &str = "sparsebak.archive";
const KEY_FILE: &str = "sparsebak.key";

struct Far {
    sshd: Sshd,
    env: Env,
    /// Where the far side keeps the archive (seen there at `env.archive()`).
    real: PathBuf,
}

impl Far {
    fn new() -> Far {
        Far::on(None)
    }

    /// [`Far::new`] whose far side keeps the archive in `disk` (else a folder).
    fn on(disk: Option<PathBuf>) -> Far {
        let sshd = Sshd::start();
        let env = Env::encrypted(&[VOL], PASS);
        let real = match disk {
            Some(d) => d,
            None => {
                let r = env.path().join("far-disk");
                std::fs::create_dir(&r).unwrap();
                r
            }
        };
        serve_from_namespace(&env, &sshd, &real);
        Far { sshd, env, real }
    }

    /// Nothing of the archive on this side: the folder at its path is empty here.
    fn near_is_empty(&self) {
        assert_eq!(names_in(&self.env.archive()), Vec::<String>::new());
    }

    fn label(&self) -> String {
        format!("{}{}", self.sshd.destvm(), self.env.archive().display())
    }
}

/// Every path under `root`, relative to it.
fn paths(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
        }
    }
    out
}

/// Each entry: (mode, size, mtime ns, SHA-256 of a file).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i128, String)> {
    paths(root)
        .into_iter()
        .map(|rel| {
            let p = root.join(&rel);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                hex::encode(sparsebak_format::chunk::hash(&std::fs::read(&p).unwrap()))
            } else {
                String::new()
            };
            let size = if m.is_dir() { 0 } else { m.len() };
            let t = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
            (rel, (m.mode(), size, t, content))
        })
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The chunk files of the far archive (the files in the folders of session folders),
/// the newest first (the last send's: in the latest session's view).
fn chunk_files(real: &Path) -> Vec<PathBuf> {
    let mut v: Vec<(i128, PathBuf)> = paths(real)
        .into_iter()
        .map(|r| real.join(r))
        .filter(|p| p.is_file())
        .filter(|p| p.components().count() >= real.components().count() + 4)
        .map(|p| {
            let m = std::fs::metadata(&p).unwrap();
            (
                m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
                p,
            )
        })
        .collect();
    v.sort_by(|a, b| b.cmp(a));
    v.into_iter().map(|(_, p)| p).collect()
}

#[test]
fn an_encrypted_archive_over_ssh_holds_nothing_plain_on_the_far_side() {
    let far = Far::new();
    let env = &far.env;
    let mut rng = Rng::new(77);
    let mut img = rng.bytes(NCHUNKS * CS);
    img[20 * CS..21 * CS].fill(0);
    let mut versions = Vec::new();
    for k in 0..3 {
        if k == 1 {
            rng.fill(&mut img[3 * CS..4 * CS]);
        }
        if k >= 1 {
            rng.fill(&mut img[9 * CS..10 * CS]);
        }
        std::fs::write(env.image(VOL), &img).unwrap();
        env.send(VOL);
        versions.push(img.clone());
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    far.near_is_empty();
    let top = names_in(&far.real);
    assert!(top.contains(&MARKER.to_string()), "{top:?}");
    assert!(top.contains(&KEY_FILE.to_string()), "{top:?}");
    assert!(!top.contains(&VOL.to_string()), "{top:?}");

    let sessions = env.sessions(VOL);
    assert_eq!(sessions.len(), 3);
    for (s, v) in sessions.iter().zip(&versions) {
        assert_same(&env.receive(VOL, Some(&s.id)), v, &s.id);
    }
    env.verify_ok(VOL, None);
    let list = env.ok(&["list"]);
    assert!(list.starts_with(&format!("{VOL}\n")), "{list}");

    // Prune the middle session: the others still restore and verify.
    env.ok(&["prune", VOL, &format!("--session={}", sessions[1].id)]);
    let left = env.sessions(VOL);
    assert_eq!(
        left.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
        vec![sessions[0].id.clone(), sessions[2].id.clone()]
    );
    assert_same(&env.receive(VOL, Some(&left[0].id)), &versions[0], "first");
    assert_same(&env.receive(VOL, None), &versions[2], "latest");
    env.verify_ok(VOL, None);
    far.near_is_empty();

    // Nothing plain on the far side: no slice of any version, no name, no hash.
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = Vec::new();
    for rel in paths(&far.real) {
        names.extend_from_slice(rel.as_os_str().as_encoded_bytes());
        names.push(b'\n');
        let p = far.real.join(&rel);
        if p.is_file() {
            blobs.push((rel.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    blobs.push(("(the names)".into(), names));
    let total: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    assert!(
        total > NCHUNKS * CS / 2,
        "the far archive holds {total} bytes"
    );
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, off) in [
        (0usize, 0usize),
        (0, 777_777),
        (1, 3 * CS + 5),
        (2, 9 * CS + 1000),
    ] {
        needles.push((
            format!("64 bytes of version {k} at {off}"),
            versions[k][off..off + 64].to_vec(),
        ));
    }
    needles.push(("the volume name".into(), VOL.as_bytes().to_vec()));
    needles.push(("the passphrase".into(), PASS.as_bytes().to_vec()));
    for s in &sessions {
        needles.push((format!("session ID {}", s.id), s.id.as_bytes().to_vec()));
    }
    for (k, c) in [(0usize, 0usize), (2, 9), (1, 3)] {
        let h = sparsebak_format::chunk::hash(&versions[k][c * CS..(c + 1) * CS]);
        needles.push((format!("SHA-256 of chunk {c} of version {k}"), h.to_vec()));
        needles.push((
            format!("hex SHA-256 of chunk {c} of version {k}"),
            hex::encode(h).into_bytes(),
        ));
    }
    for text in ["volume_id", "manifest_sha256", "chunksize="] {
        needles.push((format!("the text {text:?}"), text.as_bytes().to_vec()));
    }
    // The key file is the only key material: its wrapped key appears nowhere else.
    let key = std::fs::read(far.real.join(KEY_FILE)).unwrap();
    let key_text = String::from_utf8(key).unwrap();
    for l in key_text.lines() {
        for field in ["salt=", "nonce=", "wrapped="] {
            if let Some(v) = l.strip_prefix(field) {
                needles.push(("a line of the key file".into(), v.as_bytes().to_vec()));
                let raw = hex::decode(v).unwrap();
                needles.push(("a line of the key file".into(), raw));
            }
        }
    }
    let mut found = Vec::new();
    for (what, needle) in &needles {
        for (file, bytes) in &blobs {
            if file == KEY_FILE && what == "a line of the key file" {
                continue;
            }
            if let Some(at) = find(bytes, needle) {
                found.push(format!("{what} in {file} at {at}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "plain on the far side:\n{}",
        found.join("\n")
    );
    let marker = std::fs::read(far.real.join(MARKER)).unwrap();
    assert!(
        find(&marker, b"format=2").is_some(),
        "the search finds what is there"
    );

    // A flipped byte in a far chunk file: verify finds it.
    let chunk = chunk_files(&far.real).into_iter().next().unwrap();
    let mut b = std::fs::read(&chunk).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&chunk, &b).unwrap();
    let o = env.run(&["verify", VOL]);
    assert!(!o.status.success(), "verify passed a damaged chunk");
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let far_path = env.archive().join(chunk.strip_prefix(&far.real).unwrap());
    assert!(
        out.contains(&format!("{}: chunk x", far_path.display()))
            && out.contains("failed authentication"),
        "{out}"
    );
    assert!(out.contains("FAILED with 1 problem(s)"), "{out}");
    let mid = b.len() / 2;
    b[mid] ^= 0x01;
    std::fs::write(&chunk, &b).unwrap();
    env.verify_ok(VOL, None);

    // A wrong passphrase: one line, and nothing on the far side changes.
    let before = snapshot(&far.real);
    let wrong = env.write_passfile("wrong", "not the passphrase");
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let cfg = env.path().join("wrong.ini");
    std::fs::write(
        &cfg,
        ini.replace(
            &format!("passfile = {}", env.path().join("passfile").display()),
            &format!("passfile = {}", wrong.display()),
        ),
    )
    .unwrap();
    for args in [vec!["list"], vec!["send", VOL], vec!["verify", VOL]] {
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .arg("-u")
            .args(&args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?}");
        let e = String::from_utf8(o.stderr).unwrap();
        assert_eq!(e.trim_end().lines().count(), 1, "{args:?}: {e}");
        assert!(
            e.contains(&format!(
                "wrong passphrase for the encrypted archive at {}; nothing was read or written",
                far.label()
            )),
            "{args:?}: {e}"
        );
    }
    assert_eq!(
        snapshot(&far.real),
        before,
        "a wrong passphrase changed the far side"
    );
    far.near_is_empty();
}

#[test]
fn an_interrupted_encrypted_remote_send_is_finished_by_the_next() {
    let far = Far::new();
    let env = &far.env;
    let mut rng = Rng::new(78);
    let mut img = rng.bytes(96 * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rng.fill(&mut img[10 * CS..70 * CS]);
    std::fs::write(env.image(VOL), &img).unwrap();
    // Killed in the middle of its chunks (at the 50th of 60), after some went over.
    let o = env.run_env(
        &["send", VOL],
        &[("SPARSEBAK_FAILPOINT", "send-mid-chunks")],
    );
    assert!(!o.status.success());
    assert_eq!(
        env.sessions(VOL).len(),
        1,
        "the killed send published nothing"
    );
    env.send(VOL);
    let s = env.sessions(VOL);
    assert_eq!(s.len(), 2);
    assert_same(&env.receive(VOL, None), &img, "after the resumed send");
    env.verify_ok(VOL, None);
    // No staging of the killed send is left on the far side.
    let left: Vec<String> = paths(&far.real)
        .into_iter()
        .map(|p| p.display().to_string())
        .filter(|p| p.contains(".tmp-") || p.contains(".resume-"))
        .collect();
    assert_eq!(left, Vec::<String>::new());
    far.near_is_empty();
}

#[test]
fn key_commands_work_on_an_encrypted_remote_archive() {
    let far = Far::new();
    let env = &far.env;
    std::fs::write(env.image(VOL), Rng::new(79).bytes(8 * CS)).unwrap();
    env.send(VOL);
    let exported = env.ok(&["key", "export"]);
    assert_eq!(
        exported.as_bytes(),
        std::fs::read(far.real.join(KEY_FILE)).unwrap()
    );
    // A new passphrase: only the far key file changes, and the new one opens it.
    let before = snapshot(&far.real);
    let newpass = env.write_passfile("newpass", "a new passphrase for it");
    env.ok(&[
        "key",
        "passwd",
        &format!("--new-passfile={}", newpass.display()),
    ]);
    let after = snapshot(&far.real);
    let changed: Vec<_> = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .collect();
    assert_eq!(changed, vec![KEY_FILE.to_string()]);
    std::fs::copy(&newpass, env.path().join("passfile")).unwrap();
    env.verify_ok(VOL, None);
    far.near_is_empty();
}

#[test]
fn diff_repair_rename_delete_and_key_import_work_remotely() {
    let far = Far::new();
    let env = &far.env;
    let mut img = Rng::new(80).bytes(16 * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    img[5 * CS..6 * CS].fill(0x5A);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    let s = env.sessions(VOL);
    assert_eq!(s.len(), 2);
    let d = env.diff_sessions(VOL, &s[0].id, &s[1].id, true);
    assert!(
        d.contains("327680"),
        "diff names the changed chunk at 5 x 64 KiB: {d}"
    );

    // repair: a far chunk file deleted, put back sealed afresh.
    let chunk = chunk_files(&far.real).into_iter().next().unwrap();
    let len = std::fs::metadata(&chunk).unwrap().len();
    std::fs::remove_file(&chunk).unwrap();
    let o = env.run(&["verify", VOL]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is missing"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    env.ok(&["repair", VOL]);
    assert_eq!(std::fs::metadata(&chunk).unwrap().len(), len);
    env.verify_ok(VOL, None);

    // key import: the exported key file put back after it was lost.
    let exported = env.ok(&["key", "export"]);
    std::fs::remove_file(far.real.join(KEY_FILE)).unwrap();
    let e = env.fails(&["list"]);
    assert!(e.contains("its key file sparsebak.key is missing"), "{e}");
    let kf = env.path().join("exported.key");
    std::fs::write(&kf, &exported).unwrap();
    env.ok(&["key", "import", kf.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(far.real.join(KEY_FILE)).unwrap(),
        exported.as_bytes()
    );

    // rename, then delete: the far volume folder moves, then goes.
    let before: Vec<String> = names_in(&far.real);
    let new = "renamed-payroll-volume";
    std::fs::rename(env.image(VOL), env.image(new)).unwrap();
    env.ok(&["rename", VOL, new]);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replace(&format!("{VOL} = enable"), &format!("{new} = enable")),
    )
    .unwrap();
    let after: Vec<String> = names_in(&far.real);
    assert_eq!(after.len(), before.len());
    assert_ne!(after, before, "the volume's hidden folder name changed");
    assert_same(
        &env.receive(new, Some(&s[0].id)),
        &{
            let mut v = img.clone();
            v[5 * CS..6 * CS].copy_from_slice(&Rng::new(80).bytes(16 * CS)[5 * CS..6 * CS]);
            v
        },
        "renamed, first",
    );
    env.verify_ok(new, None);
    // repair after the rename: the sessions' infos still name the volume they were made
    // as; a damaged chunk is put back (dry run first: nothing changes).
    let chunk = chunk_files(&far.real).into_iter().next().unwrap();
    let good = std::fs::read(&chunk).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xFF;
    std::fs::write(&chunk, &bad).unwrap();
    let e = env.fails(&["verify", new]);
    assert!(e.contains(&format!("sparsebak repair {new}")), "{e}");
    let said = env.ok(&["repair", "--dry-run", new]);
    assert!(said.contains(&format!("{new}: would re-create")), "{said}");
    assert_eq!(std::fs::read(&chunk).unwrap(), bad);
    let said = env.ok(&["repair", new]);
    assert!(
        said.contains(&format!("{new}: repaired 1 file(s)")),
        "{said}"
    );
    env.verify_ok(new, None);
    env.ok(&["delete", new]);
    let mut want = vec![MARKER.to_string(), KEY_FILE.to_string()];
    want.sort();
    assert_eq!(names_in(&far.real), want);
    far.near_is_empty();
}

#[test]
fn a_reader_after_an_interrupted_run_on_an_encrypted_remote_archive() {
    let far = Far::new();
    let env = &far.env;
    let mut img = Rng::new(81).bytes(16 * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    img[2 * CS..3 * CS].fill(7);
    std::fs::write(env.image(VOL), &img).unwrap();
    let o = env.run_env(
        &["send", VOL],
        &[("SPARSEBAK_FAILPOINT", "send-after-commit")],
    );
    assert!(!o.status.success());
    // The committed session is there for a reader, and this side catches up.
    let s = env.sessions(VOL);
    assert_eq!(s.len(), 2);
    assert_same(&env.receive(VOL, None), &img, "after the killed send");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    img[4 * CS..5 * CS].fill(9);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    // A prune killed after its journal: each reader finishes it, as on a local
    // archive (over a second connection that says it writes), and goes on.
    let readers: [&[&str]; 3] = [
        &["list", VOL],
        &["verify", VOL],
        &["prune", VOL, "--dry-run", "--all-before=2000-01-01"],
    ];
    for (round, reader) in readers.iter().enumerate() {
        let s = env.sessions(VOL);
        let n = s.len();
        let o = env.run_env(
            &["prune", VOL, &format!("--session={}", s[n - 2].id)],
            &[("SPARSEBAK_FAILPOINT", "prune-after-journal")],
        );
        assert!(!o.status.success());
        let o = env.run(reader);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{reader:?}: {err}");
        assert!(
            err.contains(&format!(
                "volume {VOL}: finishing the interrupted removal of session {}",
                s[n - 2].id
            )),
            "{reader:?}: {err}"
        );
        assert!(!err.contains("refusing"), "{reader:?}: {err}");
        let after: Vec<String> = env.sessions(VOL).into_iter().map(|x| x.id).collect();
        let mut want: Vec<String> = s.iter().map(|x| x.id.clone()).collect();
        want.remove(n - 2);
        assert_eq!(after, want, "{reader:?}");
        assert_same(&env.receive(VOL, None), &img, "after the finished prune");
        // The next round's prune needs a session to remove.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        img[(5 + round) * CS..(6 + round) * CS].fill(11);
        std::fs::write(env.image(VOL), &img).unwrap();
        env.send(VOL);
    }
    assert_same(&env.receive(VOL, None), &img, "after the last send");
    env.verify_ok(VOL, None);
    far.near_is_empty();
}

#[test]
fn a_link_lost_in_the_middle_of_an_encrypted_remote_run_is_one_line() {
    use std::os::unix::fs::PermissionsExt;
    let far = Far::new();
    let env = &far.env;
    let mut img = Rng::new(91).bytes(NCHUNKS * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    img[..CS].fill(3);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    let s = env.sessions(VOL);
    // The far side's answers end after 1 MB: the link dies in the middle of the run.
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let far_side = env.path().join("far-side");
    let from = format!("destcmd = {}\n", far_side.display());
    assert!(ini.contains(&from), "{ini}");
    let cut = env.path().join("cut-link");
    std::fs::write(
        &cut,
        format!(
            "#!/bin/sh\nf=$(mktemp -u)\nmkfifo \"$f\"\nexec 3<&0\n\"{}\" \"$@\" <&3 >\"$f\" &\n\
             p=$!\nstdbuf -o0 head -c 1000000 <\"$f\"\nkill -9 $p\nrm -f \"$f\"\n",
            far_side.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&cut, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = env.path().join("cut.ini");
    std::fs::write(
        &cfg,
        ini.replacen(&from, &format!("destcmd = {}\n", cut.display()), 1),
    )
    .unwrap();
    assert_eq!(s.len(), 2);
    let save = format!("--save-to={}", env.path().join("restored").display());
    for args in [vec!["verify", VOL], vec!["receive", VOL, save.as_str()]] {
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .arg("-u")
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        let errors: Vec<&str> = e.lines().filter(|l| l.contains("error")).collect();
        assert_eq!(errors.len(), 1, "{args:?}: {e}");
        assert!(
            errors[0].starts_with(&format!(
                "sparsebak: error: destination {}: the connection was lost",
                far.label()
            )),
            "{args:?}: {e}"
        );
        assert!(
            !e.contains("repair") && !e.contains("problem") && !e.contains("need"),
            "{args:?}: {e}"
        );
    }
    // Over a whole link, nothing is damaged.
    env.verify_ok(VOL, None);
    assert_same(&env.receive(VOL, None), &img, "after the lost links");
    far.near_is_empty();
}

#[test]
fn a_full_far_disk_of_an_encrypted_archive_says_where_and_how_much() {
    let Some(fs) = loopfs::LoopFs::sized(
        "a_full_far_disk_of_an_encrypted_archive_says_where_and_how_much",
        loopfs::FsKind::Ext4,
        "",
        16 << 20,
        &[],
    ) else {
        return;
    };
    let disk = fs.path().join("archive");
    std::fs::create_dir(&disk).unwrap();
    let far = Far::on(Some(disk.clone()));
    let env = &far.env;
    let mut rng = Rng::new(97);
    std::fs::write(env.image(VOL), rng.bytes(4 * CS)).unwrap();
    env.send(VOL);
    std::fs::write(env.image(VOL), rng.bytes(32 << 20)).unwrap();
    let o = env.run(&["send", VOL]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("the filesystem of {}/", far.label())),
        "{e}"
    );
    assert!(
        e.contains(" is full: this session needed more than "),
        "{e}"
    );
    assert!(e.contains("nothing of the session was kept"), "{e}");
    // What was free is measured over there.
    assert!(e.contains(" were free when it started"), "{e}");
    assert!(!e.contains("an unknown amount"), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    assert_eq!(e.lines().filter(|l| l.contains("error")).count(), 1, "{e}");
    far.near_is_empty();
}

#[test]
fn verify_names_a_damaged_far_chunk_with_its_host() {
    let far = Far::new();
    let env = &far.env;
    std::fs::write(env.image(VOL), Rng::new(61).bytes(8 * CS)).unwrap();
    env.send(VOL);
    let chunks = chunk_files(&far.real);
    assert_eq!(chunks.len(), 8);
    let bad = &chunks[3];
    let mut b = std::fs::read(bad).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x10;
    std::fs::write(bad, &b).unwrap();
    let e = env.fails(&["verify", VOL]);
    // The far path as it is over there, after the host.
    let far_path = env
        .archive()
        .join(bad.strip_prefix(&far.real).unwrap())
        .display()
        .to_string();
    assert!(
        e.contains(&format!("{}{far_path}", far.sshd.destvm())),
        "{far_path}: {e}"
    );
    assert!(!e.contains(&format!(" {far_path}")), "{e}");
}

/// Two volumes' folders swapped on the far side: list and delete of one refuse the
/// other's backups (every far file stays), as receive and verify do.
#[test]
fn swapped_far_volume_folders_are_refused_by_list_and_delete() {
    const OTHER: &str = "other-volume";
    let far = Far::new();
    let env = &far.env;
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replacen("[volumes]\n", &format!("[volumes]\n{OTHER} = enable\n"), 1),
    )
    .unwrap();
    let top = |x: &Far| -> BTreeSet<String> { names_in(&x.real).into_iter().collect() };
    std::fs::write(env.image(VOL), Rng::new(90).bytes(8 * CS)).unwrap();
    std::fs::write(env.image(OTHER), Rng::new(91).bytes(8 * CS)).unwrap();
    env.send(VOL);
    let after_vol = top(&far);
    env.send(OTHER);
    let b = top(&far).difference(&after_vol).next().unwrap().clone();
    let a = after_vol
        .iter()
        .find(|n| ![MARKER, KEY_FILE].contains(&n.as_str()))
        .unwrap()
        .clone();
    let (a, b) = (far.real.join(a), far.real.join(b));
    let tmp = far.real.join("swap");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();
    let before = snapshot(&far.real);
    let o = env.run(&["list", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "list {VOL}: {err}");
    assert!(err.contains(OTHER), "list {VOL}: {err}");
    let e = env.fails(&["delete", VOL]);
    assert!(
        e.contains(&format!("delete {VOL}: nothing was deleted")),
        "{e}"
    );
    assert!(e.contains(OTHER), "delete {VOL}: {e}");
    assert_eq!(snapshot(&far.real), before, "the far side changed");
    far.near_is_empty();
}
