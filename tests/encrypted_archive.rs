//! An encrypted local archive (format 2) as a user meets it: sends, restores and checks
//! through the real binary on real files, what the archive's files give away (nothing),
//! a wrong passphrase, damage and substitution of its files, a new machine, the key
//! commands, a config that disagrees with the archive, and every other command on it.

mod common;
use common::*;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sparsebak_format::crypto::{ArchiveKeys, KeyFile, Passphrase, KEY_FILE};

/// A volume name long enough that random bytes never spell it by chance.
const VOL: &str = "payroll-database-volume";
/// A second volume of the same config, not sent unless a test says so.
const OTHER: &str = "other-volume";
const PASS: &str = "correct horse battery staple";
const CS: usize = 65536;
/// 4 MiB volumes.
const NCHUNKS: usize = 64;
/// This chunk of every version is zeros (not stored).
const ZERO_CHUNK: usize = 20;
const MARKER: &str = "sparsebak.archive";

/// An encrypted archive holding three sessions of `VOL`: random data (chunk 20 zeros),
/// then chunks 3 and 9 rewritten, then chunk 9 rewritten again.
struct Fx {
    env: Env,
    keys: ArchiveKeys,
    /// The volume as each session holds it, oldest first.
    versions: Vec<Vec<u8>>,
    /// The session IDs, oldest first.
    ids: Vec<String>,
    /// What each send added to the archive (paths relative to its root).
    added: Vec<BTreeSet<PathBuf>>,
    /// A copy (`cp -a`) of the volume folder as it was before the third send.
    before_third: PathBuf,
}

impl Fx {
    fn new(seed: u64) -> Fx {
        Fx::make(seed, false)
    }

    /// The same three sessions, each sent as a tar session (`send --tarfile`).
    fn tar(seed: u64) -> Fx {
        Fx::make(seed, true)
    }

    fn make(seed: u64, tar: bool) -> Fx {
        let env = Env::encrypted(&[VOL, OTHER], PASS);
        let mut rng = Rng::new(seed);
        let mut img = rng.bytes(NCHUNKS * CS);
        img[ZERO_CHUNK * CS..(ZERO_CHUNK + 1) * CS].fill(0);
        let mut versions = Vec::new();
        let mut added = Vec::new();
        let before_third = env.path().join("volume-before-third-send");
        for k in 0..3 {
            if k == 1 {
                rng.fill(&mut img[3 * CS..4 * CS]);
            }
            if k >= 1 {
                rng.fill(&mut img[9 * CS..10 * CS]);
            }
            if k == 2 {
                let vdir = only_volume_dir(&env.archive());
                cp_a(&vdir, &before_third);
            }
            std::fs::write(env.image(VOL), &img).unwrap();
            let before = paths(&env.archive());
            if tar {
                env.ok(&["send", "--tarfile", VOL]);
            } else {
                env.send(VOL);
            }
            added.push(paths(&env.archive()).difference(&before).cloned().collect());
            versions.push(img.clone());
        }
        let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 3);
        let keys = unlock(&env.archive(), PASS);
        Fx {
            env,
            keys,
            versions,
            ids,
            added,
            before_third,
        }
    }

    fn vdir(&self) -> PathBuf {
        self.env.archive().join(self.keys.volume_dir(VOL))
    }

    /// Session `k`'s folder (0 = oldest).
    fn sdir(&self, k: usize) -> PathBuf {
        self.vdir()
            .join(format!("S_{}", self.keys.session_token(&self.ids[k])))
    }

    /// Session `k`'s tar file (0 = oldest).
    fn tar_file(&self, k: usize) -> PathBuf {
        self.vdir()
            .join(format!("S_{}.tar", self.keys.session_token(&self.ids[k])))
    }

    /// Session `k`'s sealed tar index.
    fn tar_index(&self, k: usize) -> PathBuf {
        self.vdir().join(format!(
            "S_{}.tar.index",
            self.keys.session_token(&self.ids[k])
        ))
    }

    /// The chunk file of chunk `index` in session `k`'s folder.
    fn chunk(&self, k: usize, index: usize) -> PathBuf {
        self.sdir(k)
            .join(self.keys.chunk_rel_path(&self.ids[k], (index * CS) as u64))
    }

    /// The archive as it was when the fixture was made, kept aside, to put back
    /// between damages.
    fn save(&self) -> PathBuf {
        let saved = self.env.path().join("archive-saved");
        cp_a(&self.env.archive(), &saved);
        saved
    }

    fn restore(&self, saved: &Path) {
        std::fs::remove_dir_all(self.env.archive()).unwrap();
        cp_a(saved, &self.env.archive());
    }

    /// `verify VOL` (its latest session) finds damage: exit status 4; its stderr.
    fn verify_fails(&self) -> String {
        let o = self.env.run(&["verify", VOL]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(4),
            "verify should have failed:\n{err}"
        );
        // The session verified is the archive's latest: the third, or the one before
        // it when the third is what went missing.
        assert!(
            [1, 2].iter().any(|&k| err.contains(&format!(
                "verify {VOL} session {}: FAILED with",
                self.ids[k]
            ))),
            "{err}"
        );
        err
    }
}

/// The archive's keys, from its key file and `pass`, as a reader holding both has them.
fn unlock(archive: &Path, pass: &str) -> ArchiveKeys {
    let kf = KeyFile::parse(&std::fs::read(archive.join(KEY_FILE)).unwrap()).unwrap();
    let master = kf.unwrap_key(&Passphrase::new(pass.to_string())).unwrap();
    ArchiveKeys::derive(&master, &kf.archive)
}

/// The one volume folder (`v<token>`) of `archive`.
fn only_volume_dir(archive: &Path) -> PathBuf {
    let v: Vec<String> = names_in(archive)
        .into_iter()
        .filter(|n| n.starts_with('v'))
        .collect();
    assert_eq!(v.len(), 1, "{v:?}");
    archive.join(&v[0])
}

fn cp_a(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// Every path under `root`, relative to it.
fn paths(root: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    if !root.exists() {
        return out;
    }
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

/// Every entry under `root`: (mode, size, mtime in ns, SHA-256 of a file's content), to
/// show that a command wrote nothing (no file, no folder entry, no timestamp changed).
type Snap = BTreeMap<PathBuf, (u32, u64, i128, String)>;

fn snapshot(root: &Path) -> Snap {
    let mut out = Snap::new();
    for rel in paths(root) {
        let p = root.join(&rel);
        let m = std::fs::symlink_metadata(&p).unwrap();
        let mtime = m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128;
        let content = if m.is_file() {
            hex::encode(sparsebak_format::chunk::hash(&std::fs::read(&p).unwrap()))
        } else {
            String::new()
        };
        let size = if m.is_dir() { 0 } else { m.len() };
        out.insert(rel, (m.mode(), size, mtime, content));
    }
    out
}

/// Two snapshots are the same; else the entries that differ, and only those.
#[track_caller]
fn same_snap(got: &Snap, want: &Snap, what: &str) {
    if got == want {
        return;
    }
    let mut diff = Vec::new();
    for (p, w) in want {
        match got.get(p) {
            None => diff.push(format!("gone: {}", p.display())),
            Some(g) if g != w => diff.push(format!("changed: {} {w:?} -> {g:?}", p.display())),
            Some(_) => {}
        }
    }
    for p in got.keys().filter(|p| !want.contains_key(*p)) {
        diff.push(format!("new: {}", p.display()));
    }
    panic!("{what}: written to:\n{}", diff.join("\n"));
}

/// A copy of `env`'s config, as `name` in its folder, changed by `f`.
fn config_variant(env: &Env, name: &str, f: impl Fn(String) -> String) -> PathBuf {
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let p = env.path().join(name);
    std::fs::write(&p, f(ini)).unwrap();
    p
}

/// `config` with its `passfile = ...` line replaced by `line`.
fn replace_passfile(ini: String, line: &str) -> String {
    ini.lines()
        .map(|l| {
            if l.starts_with("passfile = ") {
                line
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Run the binary with `config` (`-u`), no passphrase in its environment.
fn run_cfg(config: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .arg("-c")
        .arg(config)
        .arg("-u")
        .args(args)
        .env_remove("SPARSEBAK_FAILPOINT")
        .env_remove("SPARSEBAK_PASSPHRASE")
        .output()
        .unwrap()
}

fn ok_out(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8(o.stdout.clone()).unwrap()
}

/// The command failed with status 1 and said so in exactly one line on stderr.
fn one_line_failure(o: &Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} should have failed with status 1:\n{err}\n{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    err
}

/// Receive session `id` of `vol` with `config` into a fresh file; its bytes.
fn receive_cfg(config: &Path, dir: &Path, vol: &str, id: &str) -> Vec<u8> {
    let out = dir.join("received.img");
    let o = run_cfg(
        config,
        &[
            "receive",
            vol,
            &format!("--save-to={}", out.display()),
            &format!("--session={id}"),
        ],
    );
    ok_out(&o, &format!("receive {vol} {id}"));
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let mut from = 0;
    while let Some(i) = hay[from..].iter().position(|&b| b == first) {
        let at = from + i;
        if hay[at..].starts_with(needle) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// `path` and its parents up to (not including) `root`, relative to `root`.
fn with_parents(root: &Path, path: &Path) -> Vec<PathBuf> {
    let rel = path.strip_prefix(root).unwrap();
    rel.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .collect()
}

#[test]
fn three_sends_list_receive_and_verify_every_session() {
    let fx = Fx::new(1);
    let env = &fx.env;

    // `list` says the volume's real name and the real session IDs, with exact counts.
    let out = env.ok(&["list", VOL]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], VOL);
    let sessions: Vec<Session> = lines[1..].iter().map(|l| parse_list_line(l)).collect();
    let changed = [(NCHUNKS - 1) as u64, 2, 1];
    for (k, s) in sessions.iter().enumerate() {
        assert_eq!(s.size, (NCHUNKS * CS) as u64, "{out}");
        assert_eq!(s.changed, changed[k], "session {k}: {out}");
        assert_eq!(s.chunks, (NCHUNKS - 1) as u64, "session {k}: {out}");
        let prev = if k == 0 { "-" } else { fx.ids[k - 1].as_str() };
        assert!(
            lines[k + 1].ends_with(&format!(" previous={prev}")),
            "{out}"
        );
    }
    // The IDs are this machine's records of its sends.
    let recorded = names_in(&env.meta().join(VOL).join("sessions"));
    let want: Vec<String> = fx.ids.iter().map(|id| format!("S_{id}")).collect();
    assert_eq!(recorded, want);
    // All volumes: the one sent, by name.
    assert!(env.ok(&["list"]).lines().any(|l| l == VOL));

    // Each session restores byte-identical and verifies.
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &env.receive(VOL, Some(id)),
            &fx.versions[k],
            &format!("session {id}"),
        );
        env.verify_ok(VOL, Some(id));
    }
    env.verify_ok(VOL, None);

    // The layout: each send added exactly its session folder with its info, manifest
    // and one file per changed chunk, under names only the key can make or read.
    let root = env.archive();
    let vdir_name = fx.vdir().file_name().unwrap().to_str().unwrap().to_string();
    assert_eq!(fx.keys.volume_of_dir(&vdir_name).as_deref(), Some(VOL));
    let changed_chunks: [Vec<usize>; 3] = [
        (0..NCHUNKS).filter(|&c| c != ZERO_CHUNK).collect(),
        vec![3, 9],
        vec![9],
    ];
    for (k, chunks) in changed_chunks.iter().enumerate() {
        let mut want = BTreeSet::new();
        if k == 0 {
            want.insert(PathBuf::from(MARKER));
            want.insert(PathBuf::from(KEY_FILE));
            want.insert(PathBuf::from(&vdir_name));
            want.insert(PathBuf::from(&vdir_name).join(".lock"));
            // The volume's identity file, written with its first session.
            want.insert(PathBuf::from(&vdir_name).join("volume"));
        }
        for f in ["info", "manifest"] {
            want.extend(with_parents(&root, &fx.sdir(k).join(f)));
        }
        for &c in chunks {
            want.extend(with_parents(&root, &fx.chunk(k, c)));
        }
        if k > 0 {
            want.remove(Path::new(&vdir_name));
        }
        assert_eq!(fx.added[k], want, "what send {k} added");
    }
    let marker = std::fs::read_to_string(root.join(MARKER)).unwrap();
    assert!(
        marker.contains("format=2\n") && marker.contains("encryption=aes-256-gcm\n"),
        "{marker}"
    );
}

#[test]
fn nothing_in_the_archive_is_plain() {
    assert_nothing_plain(&Fx::new(2));
}

/// No file or name of `fx`'s archive holds its data, names, times or hashes in the
/// clear.
fn assert_nothing_plain(fx: &Fx) {
    let root = fx.env.archive();

    // Every byte of every file, and every name.
    let mut blobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut names = Vec::new();
    for rel in paths(&root) {
        names.extend_from_slice(rel.as_os_str().as_encoded_bytes());
        names.push(b'\n');
        let p = root.join(&rel);
        if p.is_file() {
            blobs.push((rel.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    blobs.push(("(the names)".to_string(), names));
    let total: usize = blobs.iter().map(|(_, b)| b.len()).sum();
    assert!(total > NCHUNKS * CS - CS, "the archive holds {total} bytes");

    // What a reader without the key must not find.
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    let v = &fx.versions;
    for (k, off) in [
        (0usize, 0usize),
        (0, (1 << 20) + 17),
        (0, (2 << 20) + 4095),
        (0, NCHUNKS * CS - 64),
        (1, 3 * CS),
        (1, 9 * CS + 333),
        (2, 9 * CS + 1000),
    ] {
        needles.push((
            format!("64 bytes of version {k} at {off}"),
            v[k][off..off + 64].to_vec(),
        ));
    }
    needles.push(("the volume name".into(), VOL.as_bytes().to_vec()));
    for id in &fx.ids {
        needles.push((format!("session ID {id}"), id.as_bytes().to_vec()));
        needles.push((format!("date of {id}"), id.as_bytes()[..8].to_vec()));
        needles.push((format!("time of {id}"), id.as_bytes()[9..].to_vec()));
    }
    for (k, c) in [(0usize, 0usize), (2, 9), (1, 3)] {
        let h = sparsebak_format::chunk::hash(&v[k][c * CS..(c + 1) * CS]);
        needles.push((format!("SHA-256 of chunk {c} of version {k}"), h.to_vec()));
        needles.push((
            format!("hex SHA-256 of chunk {c} of version {k}"),
            hex::encode(h).into_bytes(),
        ));
    }
    // The session's info as this machine keeps it in plain: its volume_id and time.
    let info = std::fs::read_to_string(
        fx.env
            .meta()
            .join(VOL)
            .join("sessions")
            .join(format!("S_{}", fx.ids[2]))
            .join("info"),
    )
    .unwrap();
    for key in ["volume_id=", "time=", "manifest_sha256="] {
        let value = info
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in {info}"));
        needles.push((format!("{key} of the info"), value.as_bytes().to_vec()));
    }
    // The session's time as a tar header would hold it (octal seconds).
    let time: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("time="))
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no time= in {info}"));
    needles.push((
        "the session time in octal".into(),
        format!("{time:o}").into_bytes(),
    ));
    for text in [
        "volume_id",
        "manifest_sha256",
        "chunksize=",
        "x0000000000090000",
    ] {
        needles.push((format!("the text {text:?}"), text.as_bytes().to_vec()));
    }

    // A tar header's numeric fields are octal text (mode 0644, owner 0, sizes,
    // checksums): a session time of day such as 00:06:44 can be their text too. Those
    // fields are masked for the time-of-day needles only (the names and every other
    // byte are searched; the mtime has its own needle above, unmasked).
    let masked: Vec<Vec<u8>> = blobs
        .iter()
        .map(|(file, bytes)| {
            let mut b = bytes.clone();
            if file.ends_with(".tar") {
                for h in b.chunks_mut(512) {
                    if h.len() == 512 && &h[257..262] == b"ustar" {
                        h[100..156].fill(0xff);
                        h[329..345].fill(0xff);
                    }
                }
            }
            b
        })
        .collect();
    let mut found = Vec::new();
    for (what, needle) in &needles {
        for ((file, bytes), masked) in blobs.iter().zip(&masked) {
            let bytes = if what.starts_with("time of ") {
                masked
            } else {
                bytes
            };
            if let Some(at) = find(bytes, needle) {
                found.push(format!("{what} in {file} at {at}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "plain text in the archive:\n{}",
        found.join("\n")
    );
    // The search itself finds what is there.
    let marker = std::fs::read(root.join(MARKER)).unwrap();
    assert_eq!(find(&marker, b"format=2"), Some(18));
}

#[test]
fn a_wrong_passphrase_is_one_line_and_writes_nothing() {
    let fx = Fx::new(3);
    let env = &fx.env;
    let wrong_words = "incorrect mule cell paperclip";
    let wrong = env.write_passfile("wrong.pass", wrong_words);
    let cfg = config_variant(env, "wrong.ini", |ini| {
        replace_passfile(ini, &format!("passfile = {}", wrong.display()))
    });
    let target = env.path().join("restored.img");
    let save = format!("--save-to={}", target.display());
    let sel = format!("--session={},{}", fx.ids[0], fx.ids[2]);
    let first = format!("--session={}", fx.ids[0]);
    let archive_before = snapshot(&env.archive());
    let meta_before = snapshot(&env.meta());
    let cases: Vec<Vec<&str>> = vec![
        vec!["list", VOL],
        vec!["list"],
        vec!["send", VOL],
        vec!["send", OTHER],
        vec!["receive", VOL, &save],
        vec!["verify", VOL],
        vec!["diff", VOL, &sel],
        vec!["delete", VOL],
        vec!["rename", VOL, "renamed-volume"],
        vec!["repair", VOL],
        vec!["untar", VOL],
        vec!["prune", VOL, &first],
    ];
    for args in &cases {
        let what = format!("{args:?} with a wrong passphrase");
        let err = one_line_failure(&run_cfg(&cfg, args), &what);
        assert!(
            err.contains(&format!(
                "wrong passphrase for the encrypted archive at {}",
                env.archive().display()
            )),
            "{what}: {err}"
        );
        assert!(!err.contains(wrong_words) && !err.contains(PASS), "{err}");
        same_snap(
            &snapshot(&env.archive()),
            &archive_before,
            &format!("{what}: archive"),
        );
        same_snap(
            &snapshot(&env.meta()),
            &meta_before,
            &format!("{what}: metadir"),
        );
        assert!(!target.exists(), "{what}: {} written", target.display());
    }
    // The right one still opens everything.
    assert_same(
        &env.receive(VOL, Some(&fx.ids[2])),
        &fx.versions[2],
        "after the wrong passphrases",
    );
}

#[test]
fn damage_and_substitution_are_caught_by_verify() {
    let fx = Fx::new(4);
    let saved = fx.save();
    let vdir = fx.vdir();
    let (id2, id3) = (&fx.ids[1], &fx.ids[2]);
    let problems = |err: &str| {
        err.lines()
            .filter(|l| {
                l.starts_with(&format!("sparsebak: verify {VOL}: ")) && !l.contains("hint:")
            })
            .count()
    };
    let failed_auth = |path: &Path, index: usize| {
        format!(
            "{}: chunk x{:016x} failed authentication: altered, truncated, or not the one that belongs here",
            path.display(),
            index * CS
        )
    };

    // A byte flipped in a chunk file of the first session (chunk 5, in every view).
    let c5 = fx.chunk(0, 5);
    let mut bytes = std::fs::read(&c5).unwrap();
    bytes[100] ^= 0x01;
    std::fs::write(&c5, bytes).unwrap();
    let err = fx.verify_fails();
    assert!(err.contains(&failed_auth(&c5, 5)), "flipped byte: {err}");
    assert_eq!(problems(&err), 1, "{err}");
    fx.restore(&saved);

    // Two chunk files of the same session swapped.
    let (c5, c6) = (fx.chunk(0, 5), fx.chunk(0, 6));
    let tmp = fx.env.path().join("swap");
    std::fs::rename(&c5, &tmp).unwrap();
    std::fs::rename(&c6, &c5).unwrap();
    std::fs::rename(&tmp, &c6).unwrap();
    let err = fx.verify_fails();
    assert!(err.contains(&failed_auth(&c5, 5)), "swapped: {err}");
    assert!(err.contains(&failed_auth(&c6, 6)), "swapped: {err}");
    assert_eq!(problems(&err), 2, "{err}");
    fx.restore(&saved);

    // Session 2's chunk 9 moved into session 3's place for chunk 9: same volume and
    // address, so it opens; the keyed identity session 3's manifest records differs.
    // The files are the ones the sends added.
    let (c9_s2, c9_s3) = (fx.chunk(1, 9), fx.chunk(2, 9));
    let rel = |p: &Path| p.strip_prefix(fx.env.archive()).unwrap().to_path_buf();
    assert!(fx.added[1].contains(&rel(&c9_s2)) && fx.added[2].contains(&rel(&c9_s3)));
    std::fs::rename(&c9_s2, &c9_s3).unwrap();
    let err = fx.verify_fails();
    assert!(
        err.contains(&format!(
            "chunk file {} (chunk x{:016x}) is missing",
            c9_s2.display(),
            9 * CS
        )),
        "moved chunk: {err}"
    );
    let line = err
        .lines()
        .find(|l| l.contains(&format!("x{:016x}", 9 * CS)) && !l.contains("is missing"))
        .unwrap_or_else(|| panic!("moved chunk: nothing said of session 3's chunk 9: {err}"));
    assert!(
        line.contains(&c9_s3.display().to_string()) || line.contains(id3.as_str()),
        "moved chunk: {line}"
    );
    assert_eq!(problems(&err), 2, "{err}");
    fx.restore(&saved);

    // Session 2's info copied over session 3's.
    std::fs::copy(fx.sdir(1).join("info"), fx.sdir(2).join("info")).unwrap();
    let err = fx.verify_fails();
    assert!(
        err.contains(&format!(
            "{}: bad session info: info of session {id3} failed authentication",
            fx.sdir(2).join("info").display()
        )),
        "info copied: {err}"
    );
    fx.restore(&saved);

    // Session 2's manifest copied over session 3's.
    std::fs::copy(fx.sdir(1).join("manifest"), fx.sdir(2).join("manifest")).unwrap();
    // (It is longer than session 3's manifest can be, which is said before any
    // authentication.)
    let err = fx.verify_fails();
    assert!(
        err.contains(&format!(
            "session {id3}: {}: manifest's plaintext of 166 bytes is impossible (at most 83)",
            fx.sdir(2).join("manifest").display()
        )),
        "manifest copied: {err}"
    );
    assert_eq!(problems(&err), 1, "{err}");
    fx.restore(&saved);

    // A manifest cut short: by one byte, and to 30 bytes.
    for cut in [1u64, 0] {
        let m = fx.sdir(2).join("manifest");
        let len = std::fs::metadata(&m).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&m).unwrap();
        f.set_len(if cut == 1 { len - 1 } else { 30 }).unwrap();
        drop(f);
        let err = fx.verify_fails();
        let line = err
            .lines()
            .find(|l| l.contains(&m.display().to_string()))
            .unwrap_or_else(|| panic!("truncated manifest not named: {err}"));
        assert!(line.contains(&format!("session {id3}")), "{line}");
        assert_eq!(problems(&err), 1, "{err}");
        fx.restore(&saved);
    }

    // A chunk file deleted.
    std::fs::remove_file(&c9_s3).unwrap();
    let err = fx.verify_fails();
    assert!(
        err.contains(&format!(
            "chunk file {} (chunk x{:016x}) is missing",
            c9_s3.display(),
            9 * CS
        )),
        "deleted chunk: {err}"
    );
    assert_eq!(problems(&err), 1, "{err}");
    fx.restore(&saved);

    // The middle session's folder deleted: session 3's chain misses it.
    std::fs::remove_dir_all(fx.sdir(1)).unwrap();
    let err = fx.verify_fails();
    let line = err
        .lines()
        .find(|l| l.contains("session chain"))
        .unwrap_or_else(|| panic!("deleted session: {err}"));
    assert!(line.contains(id2.as_str()), "deleted session: {line}");
    fx.restore(&saved);

    // Nothing was left changed by the checks.
    assert_eq!(paths(&vdir), paths(&saved.join(vdir.file_name().unwrap())));
    fx.env.verify_ok(VOL, None);
}

/// The latest session's folder deleted: the source side recorded sending it, so the
/// archive is missing it. `verify VOL` checks the archive's latest session and passes.
#[test]
fn a_deleted_latest_session_is_caught_by_verify() {
    let fx = Fx::new(5);
    let saved = fx.save();
    std::fs::remove_dir_all(fx.sdir(2)).unwrap();
    let err = fx.verify_fails();
    assert!(err.contains(fx.ids[2].as_str()), "{err}");
    fx.restore(&saved);
    // The same when its folder's name is damaged (one character changed): the name no
    // longer opens with the key, and the session is as good as gone.
    let s3 = fx.sdir(2);
    let mut name = s3.file_name().unwrap().to_str().unwrap().to_string();
    let last = name.pop().unwrap();
    name.push(if last == 'a' { 'b' } else { 'a' });
    std::fs::rename(&s3, s3.with_file_name(&name)).unwrap();
    let err = fx.verify_fails();
    assert!(err.contains(fx.ids[2].as_str()), "{err}");
    rolled_back_list_and_receive(&fx.env, VOL, &fx.ids[2], &fx.ids[1], &fx.versions[1]);
}

/// The volume folder put back as it was before the third send (a rollback): the
/// source side's records name a session the archive no longer has.
#[test]
fn a_rolled_back_volume_folder_is_caught_by_verify() {
    let fx = Fx::new(6);
    let vdir = fx.vdir();
    std::fs::remove_dir_all(&vdir).unwrap();
    cp_a(&fx.before_third, &vdir);
    assert_eq!(fx.env.sessions(VOL).len(), 2);
    let err = fx.verify_fails();
    assert!(err.contains(fx.ids[2].as_str()), "{err}");
}

#[test]
fn a_new_machine_restores_and_verifies_with_the_archive_and_the_passphrase() {
    let fx = Fx::new(7);
    let env = &fx.env;
    let fresh = env.path().join("new-machine-meta");
    let cfg = config_variant(env, "new-machine.ini", |ini| {
        ini.replace(
            &format!("metadir = {}", env.meta().display()),
            &format!("metadir = {}", fresh.display()),
        )
    });
    assert!(std::fs::read_to_string(&cfg)
        .unwrap()
        .contains(&fresh.display().to_string()));
    let before = snapshot(&env.archive());
    let out = ok_out(&run_cfg(&cfg, &["list", VOL]), "list");
    let ids: Vec<String> = out.lines().skip(1).map(|l| parse_list_line(l).id).collect();
    assert_eq!(ids, fx.ids);
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &receive_cfg(&cfg, env.path(), VOL, id),
            &fx.versions[k],
            &format!("new machine: session {id}"),
        );
        ok_out(
            &run_cfg(&cfg, &["verify", VOL, &format!("--session={id}")]),
            "verify on a new machine",
        );
    }
    same_snap(&snapshot(&env.archive()), &before, "the archive");
}

#[test]
fn passwd_rewrites_only_the_key_file() {
    let fx = Fx::new(8);
    let env = &fx.env;
    let root = env.archive();
    let key = root.join(KEY_FILE);
    let others = |s: Snap| -> Snap {
        s.into_iter()
            .filter(|(p, _)| p != Path::new(KEY_FILE))
            .collect()
    };
    let before = others(snapshot(&root));
    let key_before = std::fs::read(&key).unwrap();

    let new_words = "new passphrase for the archive";
    let new_file = env.write_passfile("new.pass", new_words);
    ok_out(
        &run_cfg(
            &env.config,
            &[
                "key",
                "passwd",
                &format!("--new-passfile={}", new_file.display()),
            ],
        ),
        "key passwd",
    );
    assert_ne!(std::fs::read(&key).unwrap(), key_before);
    // Only the key file was rewritten: no chunk, info or manifest file, no folder.
    same_snap(&others(snapshot(&root)), &before, "all but the key file");

    // The old passphrase is refused, the new one opens every session.
    let err = one_line_failure(&env.run(&["list", VOL]), "list with the old passphrase");
    assert!(err.contains("wrong passphrase"), "{err}");
    let new_cfg = config_variant(env, "new.ini", |ini| {
        replace_passfile(ini, &format!("passfile = {}", new_file.display()))
    });
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &receive_cfg(&new_cfg, env.path(), VOL, id),
            &fx.versions[k],
            &format!("after passwd: session {id}"),
        );
    }
    ok_out(&run_cfg(&new_cfg, &["verify", VOL]), "verify after passwd");
    same_snap(&others(snapshot(&root)), &before, "all but the key file");
}

/// A key file lost and typed back in from its paper form: `key import` must not need
/// the key it puts back.
#[test]
fn a_paper_copy_brings_a_lost_key_file_back() {
    let fx = Fx::new(19);
    let env = &fx.env;
    let root = env.archive();
    let key = root.join(KEY_FILE);
    let new_cfg = env.config.clone();
    let others = |s: Snap| -> Snap {
        s.into_iter()
            .filter(|(p, _)| p != Path::new(KEY_FILE))
            .collect()
    };
    let before = others(snapshot(&root));
    let paper = ok_out(&run_cfg(&new_cfg, &["key", "export", "--paper"]), "export");
    assert!(paper.starts_with("sparsebak-key-paper 1 lines="), "{paper}");
    let key_now = std::fs::read(&key).unwrap();
    std::fs::remove_file(&key).unwrap();
    let o = run_cfg(&new_cfg, &["receive", VOL, "--save-to=/dev/null"]);
    let err = one_line_failure(&o, "receive without the key file");
    assert!(
        err.contains(&format!(
            "the archive at {} is encrypted but its key file {KEY_FILE} is missing",
            root.display()
        )),
        "{err}"
    );
    let paper_file = env.path().join("paper.txt");
    std::fs::write(&paper_file, &paper).unwrap();
    ok_out(
        &run_cfg(
            &new_cfg,
            &["key", "import", &paper_file.display().to_string()],
        ),
        "key import",
    );
    assert_eq!(std::fs::read(&key).unwrap(), key_now);
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &receive_cfg(&new_cfg, env.path(), VOL, id),
            &fx.versions[k],
            &format!("after import: session {id}"),
        );
    }
    ok_out(&run_cfg(&new_cfg, &["verify", VOL]), "verify after import");
    same_snap(&others(snapshot(&root)), &before, "all but the key file");
}

#[test]
fn a_config_that_disagrees_with_the_archive_is_refused_and_nothing_is_written() {
    // `encrypt = on` against a format 1 archive.
    let plain = Env::new(&[VOL]);
    std::fs::write(plain.image(VOL), Rng::new(9).bytes(16 * CS)).unwrap();
    plain.send(VOL);
    let pf = plain.write_passfile("passfile", PASS);
    let on = config_variant(&plain, "on.ini", |ini| {
        ini.replace(
            "encrypt = off\n",
            &format!("encrypt = on\npassfile = {}\n", pf.display()),
        )
    });
    std::fs::write(plain.image(VOL), Rng::new(10).bytes(16 * CS)).unwrap();
    let id = plain.latest(VOL).id;
    // And the same with encrypt = off against an encrypted archive.
    let fx = Fx::new(11);
    let off = config_variant(&fx.env, "off.ini", |ini| {
        ini.replace("[var]\n", "[var]\nencrypt = off\n")
    });
    std::fs::write(fx.env.image(VOL), Rng::new(12).bytes(NCHUNKS * CS)).unwrap();
    for (env, cfg, id, says) in [
        (
            &plain,
            &on,
            id.as_str(),
            format!(
                "the archive at {} is not encrypted (format 1), but the config says encrypt = on for it",
                plain.archive().display()
            ),
        ),
        (
            &fx.env,
            &off,
            fx.ids[2].as_str(),
            format!(
                "the archive at {} is encrypted, but the config says encrypt = off for it",
                fx.env.archive().display()
            ),
        ),
    ] {
        let archive = snapshot(&env.archive());
        let meta = snapshot(&env.meta());
        let target = env.path().join("restored.img");
        let save = format!("--save-to={}", target.display());
        for args in [
            &["send", VOL][..],
            &["list", VOL],
            &["receive", VOL, &save],
            &["verify", VOL],
            &["diff", VOL, &format!("--session={id}")],
            &["delete", VOL],
        ] {
            let what = format!("{args:?} with {}", cfg.display());
            let err = one_line_failure(&run_cfg(cfg, args), &what);
            assert!(err.contains(&says), "{what}: {err}");
            same_snap(&snapshot(&env.archive()), &archive, &what);
            same_snap(&snapshot(&env.meta()), &meta, &what);
            assert!(!target.exists(), "{what}");
        }
    }
}

#[test]
fn diff_resync_and_untar_on_an_encrypted_archive() {
    let fx = Fx::new(13);
    let env = &fx.env;
    let before = snapshot(&env.archive());
    let (a, b, c) = (&fx.ids[0], &fx.ids[1], &fx.ids[2]);
    assert_eq!(
        env.diff_sessions(VOL, a, c, false),
        format!(
            "{VOL}: {a} -> {c}: 2 chunk(s) in 2 range(s) differ, 128.00 KiB\n  \
             0x000000030000..0x000000040000 (64.00 KiB)\n  \
             0x000000090000..0x0000000a0000 (64.00 KiB)\n"
        )
    );
    // One session against the live volume, changed at chunk 30 since.
    env.write_at(VOL, 30 * CS as u64 + 5, b"changed since");
    let out = env.ok(&["diff", VOL, &format!("--session={b}")]);
    assert_eq!(
        out,
        format!(
            "{VOL}: {b} -> live: 2 chunk(s) in 2 range(s) differ, 128.00 KiB\n  \
             0x000000090000..0x0000000a0000 (64.00 KiB)\n  \
             0x0000001e0000..0x0000001f0000 (64.00 KiB)\n"
        )
    );
    // source = file: resync has nothing to do, and does nothing.
    let o = env.run(&["-v", "resync", VOL]);
    ok_out(&o, "resync");
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(
        said.contains(&format!(
            "{VOL}: source = file compares every chunk at send; nothing to resync"
        )),
        "{said}"
    );
    // No tar sessions to unpack.
    assert_eq!(
        env.ok(&["untar", VOL]),
        format!("{VOL}: no tar sessions among the 3 selected\n")
    );
    same_snap(&snapshot(&env.archive()), &before, "the archive");
}

#[test]
fn rename_then_delete_a_volume_of_an_encrypted_archive() {
    let fx = Fx::new(14);
    let env = &fx.env;
    let root = env.archive();
    // A second volume, which neither command may touch.
    let other = Rng::new(15).bytes(8 * CS);
    std::fs::write(env.image(OTHER), &other).unwrap();
    env.send(OTHER);
    let other_dir = root.join(fx.keys.volume_dir(OTHER));
    let other_before = snapshot(&other_dir);

    let new = "renamed-payroll-volume";
    env.ok(&["rename", VOL, new]);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replace(&format!("{VOL} = enable"), &format!("{new} = enable")),
    )
    .unwrap();
    assert!(!fx.vdir().exists());
    let new_dir = root.join(fx.keys.volume_dir(new));
    assert!(new_dir.is_dir(), "{}", new_dir.display());
    let ids: Vec<String> = env.sessions(new).into_iter().map(|s| s.id).collect();
    assert_eq!(ids, fx.ids);
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &env.receive(new, Some(id)),
            &fx.versions[k],
            &format!("renamed: {id}"),
        );
    }
    env.verify_ok(new, None);
    let err = one_line_failure(&env.run(&["list", VOL]), "list of the old name");
    assert!(err.contains(VOL), "{err}");
    // Sending under the new name continues the chain.
    std::fs::rename(env.image(VOL), env.image(new)).unwrap();
    env.write_at(new, 0, &[0xA5; 100]);
    env.send(new);
    let s = env.sessions(new);
    assert_eq!(s.len(), 4);
    assert_eq!(s[3].changed, 1);
    assert_same(
        &env.receive(new, None),
        &env.read_image(new),
        "the send after the rename",
    );

    env.ok(&["delete", new]);
    assert!(!new_dir.exists());
    let mut want = vec![
        MARKER.to_string(),
        KEY_FILE.to_string(),
        other_dir.file_name().unwrap().to_str().unwrap().to_string(),
    ];
    want.sort();
    assert_eq!(names_in(&root), want);
    assert!(!env.meta().join(new).exists());
    // Still configured, it has no sessions.
    assert_eq!(env.ok(&["list", new]), format!("{new}\n"));
    same_snap(&snapshot(&other_dir), &other_before, "the other volume");
    assert_same(&env.receive(OTHER, None), &other, "the other volume");
    env.verify_ok(OTHER, None);
}

#[test]
fn repair_puts_back_a_deleted_chunk_file_and_an_info() {
    let fx = Fx::new(16);
    let env = &fx.env;
    let c9 = fx.chunk(2, 9);
    let sealed = std::fs::read(&c9).unwrap();
    std::fs::remove_file(&c9).unwrap();
    let err = fx.verify_fails();
    assert!(err.contains("is missing"), "{err}");
    env.ok(&["repair", VOL]);
    // Back where it was (sealed afresh: a new random nonce, the same length).
    assert_eq!(std::fs::metadata(&c9).unwrap().len(), sealed.len() as u64);
    env.verify_ok(VOL, None);
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &env.receive(VOL, Some(id)),
            &fx.versions[k],
            &format!("repaired: {id}"),
        );
    }

    // An info replaced by another session's: put back from this machine's copy,
    // sealed again (no plain text in the archive).
    let info = fx.sdir(2).join("info");
    std::fs::copy(fx.sdir(1).join("info"), &info).unwrap();
    fx.verify_fails();
    env.ok(&["repair", VOL]);
    let back = std::fs::read(&info).unwrap();
    assert_eq!(find(&back, b"volume="), None);
    assert_eq!(find(&back, fx.ids[2].as_bytes()), None);
    env.verify_ok(VOL, None);
}

/// The members of the tar at `path`: (name, offset of the content, size), in order.
fn tar_members(path: &Path) -> Vec<(String, u64, u64)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.path().unwrap().display().to_string(),
                e.raw_file_position(),
                e.size(),
            )
        })
        .collect()
}

/// Every file under `root` (relative path) with its bytes.
fn contents(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    paths(root)
        .into_iter()
        .filter(|p| root.join(p).is_file())
        .map(|p| {
            let b = std::fs::read(root.join(&p)).unwrap();
            (p, b)
        })
        .collect()
}

#[test]
fn tar_sessions_round_trip_and_verify() {
    let fx = Fx::tar(17);
    let env = &fx.env;
    // Each send added its tar and its sealed index, nothing else (the first also the
    // archive's files and the volume's folder).
    let vdir_name = fx.vdir().file_name().unwrap().to_str().unwrap().to_string();
    for k in 0..3 {
        let mut want: BTreeSet<PathBuf> = [fx.tar_file(k), fx.tar_index(k)]
            .iter()
            .map(|p| p.strip_prefix(env.archive()).unwrap().to_path_buf())
            .collect();
        if k == 0 {
            for p in [MARKER, KEY_FILE, &vdir_name] {
                want.insert(PathBuf::from(p));
            }
            for f in [".lock", "volume"] {
                want.insert(PathBuf::from(&vdir_name).join(f));
            }
        }
        assert_eq!(fx.added[k], want, "what send {k} added");
    }
    // Full and incremental sessions restore byte-identical and verify.
    for (k, id) in fx.ids.iter().enumerate() {
        assert_same(
            &env.receive(VOL, Some(id)),
            &fx.versions[k],
            &format!("tar session {id}"),
        );
        env.verify_ok(VOL, Some(id));
    }
    let changed = [(NCHUNKS - 1) as u64, 2, 1];
    for (s, want) in env.sessions(VOL).iter().zip(changed) {
        assert_eq!(s.changed, want, "{}", s.id);
    }
    // A folder session after tar ones, and a tar after it.
    env.write_at(VOL, 5 * CS as u64, b"folder");
    env.send(VOL);
    env.write_at(VOL, 6 * CS as u64, b"tar again");
    env.ok(&["send", "--tarfile", VOL]);
    let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 5);
    assert_same(
        &env.receive(VOL, None),
        &env.read_image(VOL),
        "the latest session",
    );
    env.verify_ok(VOL, None);
    let tok = fx.keys.session_token(&ids[3]);
    assert!(fx.vdir().join(format!("S_{tok}")).is_dir());
    let tok = fx.keys.session_token(&ids[4]);
    assert!(fx.vdir().join(format!("S_{tok}.tar")).is_file());
}

#[test]
fn nothing_in_an_encrypted_tar_session_is_plain() {
    let fx = Fx::tar(18);
    assert_nothing_plain(&fx);
    // The sealed index is a sealed object: its length is one, and it opens only as
    // its session's tar index.
    for k in 0..3 {
        let b = std::fs::read(fx.tar_index(k)).unwrap();
        let plain = fx
            .keys
            .open(
                &sparsebak_format::crypto::Place::TarIndex {
                    session: &fx.ids[k],
                },
                &b,
            )
            .unwrap();
        assert_eq!(&plain[plain.len() - 64..plain.len() - 56], b"SPBKTIX2");
        let other = (k + 1) % 3;
        assert!(fx
            .keys
            .open(
                &sparsebak_format::crypto::Place::TarIndex {
                    session: &fx.ids[other],
                },
                &b,
            )
            .is_err());
    }
}

#[test]
fn gnu_tar_extracts_an_encrypted_tar_session_into_a_folder_session() {
    let fx = Fx::tar(19);
    let env = &fx.env;
    let vdir = fx.vdir();
    let changed_chunks: [Vec<usize>; 3] = [
        (0..NCHUNKS).filter(|&c| c != ZERO_CHUNK).collect(),
        vec![3, 9],
        vec![9],
    ];
    // GNU tar lists the members under the folder form's hidden names, owner 0, mode
    // 0644 and time 0.
    for (k, chunks) in changed_chunks.iter().enumerate() {
        let o = Command::new("tar")
            .args(["--numeric-owner", "--utc", "-tvf"])
            .arg(fx.tar_file(k))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let listing = String::from_utf8(o.stdout).unwrap();
        let mut names = BTreeSet::new();
        for l in listing.lines() {
            assert!(l.starts_with("-rw-r--r-- 0/0 "), "{l}");
            assert!(l.contains(" 1970-01-01 00:00 "), "{l}");
            names.insert(PathBuf::from(l.rsplit(' ').next().unwrap()));
        }
        let mut want = BTreeSet::new();
        for f in ["info", "manifest"] {
            want.insert(
                fx.sdir(k)
                    .join(f)
                    .strip_prefix(&vdir)
                    .unwrap()
                    .to_path_buf(),
            );
        }
        for &c in chunks {
            want.insert(fx.chunk(k, c).strip_prefix(&vdir).unwrap().to_path_buf());
        }
        assert_eq!(names, want, "members of session {k}");
    }
    // `tar -xf` in the volume folder gives what `sparsebak untar` gives, byte for byte.
    let saved = fx.save();
    env.ok(&["untar", VOL]);
    let untarred = contents(&vdir);
    fx.restore(&saved);
    for k in 0..3 {
        let o = Command::new("tar")
            .arg("-xf")
            .arg(fx.tar_file(k))
            .current_dir(&vdir)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    // The folder wins over a tar of the same session; the next run that writes to
    // the volume removes the tars (found by their tokens).
    assert_same(
        &env.receive(VOL, Some(&fx.ids[2])),
        &fx.versions[2],
        "folder beside its tar",
    );
    assert!(fx.tar_file(1).exists() && fx.tar_index(1).exists());
    env.ok(&["untar", VOL, &format!("--session={}", fx.ids[0])]);
    for k in 0..3 {
        assert!(!fx.tar_file(k).exists() && !fx.tar_index(k).exists(), "{k}");
    }
    let extracted = contents(&vdir);
    assert_eq!(
        extracted.keys().collect::<Vec<_>>(),
        untarred.keys().collect::<Vec<_>>()
    );
    assert!(extracted == untarred, "tar -xf and untar differ in content");
    // The extracted folders are sessions that restore and verify.
    for (k, id) in fx.ids.iter().enumerate() {
        assert!(fx.sdir(k).is_dir());
        assert_same(
            &env.receive(VOL, Some(id)),
            &fx.versions[k],
            &format!("extracted {id}"),
        );
        env.verify_ok(VOL, Some(id));
    }
}

#[test]
fn damage_in_an_encrypted_tar_session_is_named() {
    let fx = Fx::tar(21);
    let env = &fx.env;
    let saved = fx.save();
    let verify_fails = |k: usize| -> String {
        let o = env.run(&["verify", VOL, &format!("--session={}", fx.ids[k])]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(
            o.status.code(),
            Some(4),
            "verify should have failed:\n{err}"
        );
        err
    };
    let flip = |p: &Path, at: u64| {
        let mut b = std::fs::read(p).unwrap();
        b[at as usize] ^= 0x20;
        std::fs::write(p, b).unwrap();
    };

    // A byte of a chunk member: the chunk, in the tar.
    let tar2 = fx.tar_file(2);
    let members = tar_members(&tar2);
    assert_eq!(members.len(), 3, "{members:?}");
    flip(&tar2, members[0].1 + 100);
    let err = verify_fails(2);
    assert!(
        err.contains(&format!(
            "{} (member for chunk x0000000000090000)",
            tar2.display()
        )) && err.contains("failed authentication"),
        "{err}"
    );
    fx.restore(&saved);

    // A byte of the sealed index: the index, and what failed in it.
    flip(&fx.tar_index(2), 40);
    let err = verify_fails(2);
    assert!(
        err.contains(&format!("{}: bad tar index", fx.tar_index(2).display()))
            && err.contains(&format!(
                "tar index of session {} (segment 0) failed authentication",
                fx.ids[2]
            )),
        "{err}"
    );
    fx.restore(&saved);

    // Another session's index in its place, and an index cut short.
    std::fs::copy(fx.tar_index(1), fx.tar_index(2)).unwrap();
    let err = verify_fails(2);
    assert!(
        err.contains(&format!("tar index of session {}", fx.ids[2])),
        "{err}"
    );
    fx.restore(&saved);
    let b = std::fs::read(fx.tar_index(2)).unwrap();
    std::fs::write(fx.tar_index(2), &b[..b.len() - 1]).unwrap();
    let err = verify_fails(2);
    assert!(
        err.contains(&format!("{}: bad tar index", fx.tar_index(2).display())),
        "{err}"
    );
    fx.restore(&saved);

    // Two chunk members of the same size swapped: both chunks are named.
    let tar0 = fx.tar_file(0);
    let members = tar_members(&tar0);
    let (a, b) = (&members[1], &members[2]);
    assert_eq!(a.2, b.2, "{members:?}");
    let mut bytes = std::fs::read(&tar0).unwrap();
    let (ao, bo, n) = (a.1 as usize, b.1 as usize, a.2 as usize);
    let first = bytes[ao..ao + n].to_vec();
    bytes.copy_within(bo..bo + n, ao);
    bytes[bo..bo + n].copy_from_slice(&first);
    std::fs::write(&tar0, bytes).unwrap();
    let err = verify_fails(0);
    let addr = |m: &(String, u64, u64)| {
        let tok = m.0.rsplit('/').next().unwrap();
        fx.keys.addr_of_chunk_token(&fx.ids[0], tok).unwrap()
    };
    for m in [a, b] {
        assert!(
            err.contains(&format!("member for chunk x{:016x})", addr(m))),
            "{err}"
        );
    }
    fx.restore(&saved);

    // The manifest member altered.
    let members = tar_members(&tar2);
    flip(&tar2, members[1].1 + 10);
    let err = verify_fails(2);
    assert!(
        err.contains(&format!("manifest of session {}", fx.ids[2])),
        "{err}"
    );
    fx.restore(&saved);
    env.verify_ok(VOL, None);
}

#[test]
fn prune_repair_diff_and_delete_on_encrypted_tar_sessions() {
    let fx = Fx::tar(22);
    let env = &fx.env;
    let (a, b, c) = (&fx.ids[0], &fx.ids[1], &fx.ids[2]);
    assert_eq!(
        env.diff_sessions(VOL, a, c, false),
        format!(
            "{VOL}: {a} -> {c}: 2 chunk(s) in 2 range(s) differ, 128.00 KiB\n  \
             0x000000030000..0x000000040000 (64.00 KiB)\n  \
             0x000000090000..0x0000000a0000 (64.00 KiB)\n"
        )
    );
    // A chunk member damaged in the latest tar: repair makes the session a folder
    // and puts the chunk back from the volume.
    let tar2 = fx.tar_file(2);
    let members = tar_members(&tar2);
    let mut bytes = std::fs::read(&tar2).unwrap();
    bytes[members[0].1 as usize + 7] ^= 1;
    std::fs::write(&tar2, bytes).unwrap();
    fx.verify_fails();
    env.ok(&["repair", VOL]);
    assert!(!tar2.exists() && !fx.tar_index(2).exists());
    assert!(fx.chunk(2, 9).is_file());
    env.verify_ok(VOL, None);

    // Prune the middle session into the (now folder) last one, then the first (a
    // tar) into it: both restore as they were.
    env.ok(&["prune", VOL, &format!("--session={b}")]);
    let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
    assert_eq!(ids, [a.clone(), c.clone()]);
    assert!(fx.tar_file(0).is_file(), "the first session stays a tar");
    for (k, id) in [(0, a), (2, c)] {
        assert_same(&env.receive(VOL, Some(id)), &fx.versions[k], id);
        env.verify_ok(VOL, Some(id));
    }
    env.ok(&["prune", VOL, &format!("--session={a}")]);
    assert_eq!(env.sessions(VOL).len(), 1);
    assert_same(&env.receive(VOL, Some(c)), &fx.versions[2], c);
    env.verify_ok(VOL, None);
    // Nothing left of the tar sessions, no name that is not hidden.
    let left = names_in(&fx.vdir());
    assert_eq!(
        left,
        [
            ".lock".to_string(),
            format!("S_{}", fx.keys.session_token(c)),
            "volume".into()
        ]
    );

    // A tar session of the other volume, deleted with its volume.
    std::fs::write(env.image(OTHER), Rng::new(23).bytes(8 * CS)).unwrap();
    env.ok(&["send", "--tarfile", OTHER]);
    let odir = env.archive().join(fx.keys.volume_dir(OTHER));
    assert!(names_in(&odir).iter().any(|n| n.ends_with(".tar.index")));
    env.ok(&["delete", "-u", OTHER]);
    assert!(!odir.exists());
    assert_eq!(env.sessions(VOL).len(), 1);
}

#[test]
fn a_killed_tar_send_leaves_nothing_and_the_next_one_works() {
    let fx = Fx::new(24);
    let env = &fx.env;
    let cfg = config_variant(env, "tar.ini", |ini| {
        ini.replace("[var]\n", "[var]\ntarfile = on\n")
    });
    env.write_at(VOL, 0, b"a change to send");
    let archive = snapshot(&env.archive());
    for point in ["send-before-commit", "session-before-rename"] {
        let o = Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .args(["-u", "send", VOL])
            .env("SPARSEBAK_FAILPOINT", point)
            .env_remove("SPARSEBAK_PASSPHRASE")
            .output()
            .unwrap();
        assert!(
            !o.status.success(),
            "{point}: the send should have been killed"
        );
        assert_eq!(env.sessions(VOL).len(), 3, "{point}");
        env.verify_ok(VOL, None);
    }
    // The next send sweeps the staging folder and sends a tar session.
    ok_out(&run_cfg(&cfg, &["send", VOL]), "send after the kill");
    let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 4);
    let tok = fx.keys.session_token(&ids[3]);
    let mut want = archive.keys().cloned().collect::<BTreeSet<_>>();
    let rel = fx.vdir().strip_prefix(env.archive()).unwrap().to_path_buf();
    want.insert(rel.join(format!("S_{tok}.tar")));
    want.insert(rel.join(format!("S_{tok}.tar.index")));
    assert_eq!(paths(&env.archive()), want);
    assert_same(
        &env.receive(VOL, None),
        &env.read_image(VOL),
        "after the kill",
    );
    env.verify_ok(VOL, None);
}

/// `VOL` and `OTHER` sent once each, `OTHER` first and a second earlier (so their
/// session IDs differ), 1 MiB of random data each. Their images, and `OTHER`'s session ID.
fn two_volumes(env: &Env) -> (Vec<u8>, Vec<u8>, String) {
    let vol = Rng::new(30).bytes(16 * CS);
    let other = Rng::new(31).bytes(16 * CS);
    std::fs::write(env.image(VOL), &vol).unwrap();
    std::fs::write(env.image(OTHER), &other).unwrap();
    env.send(OTHER);
    let other_id = env.latest(OTHER).id;
    while session_id_now() <= other_id {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    env.send(VOL);
    assert!(env.latest(VOL).id > other_id);
    (vol, other, other_id)
}

/// The session ID a send would take now (UTC, second resolution).
fn session_id_now() -> String {
    let o = Command::new("date")
        .args(["-u", "+%Y%m%d-%H%M%S"])
        .output()
        .unwrap();
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// The folders of two volumes swapped (each renamed to the other's name): every
/// file still opens, since info and manifest are bound to their session only. The
/// sealed info says which volume it is; a reader asked for `VOL` must not hand out
/// `OTHER`'s data, on this machine or on a new one.
#[test]
fn swapped_volume_folders_are_refused() {
    let env = Env::encrypted(&[VOL, OTHER], PASS);
    let (_, other, _) = two_volumes(&env);
    let keys = unlock(&env.archive(), PASS);
    let a = env.archive().join(keys.volume_dir(VOL));
    let b = env.archive().join(keys.volume_dir(OTHER));
    let tmp = env.archive().join("swap");
    std::fs::rename(&a, &tmp).unwrap();
    std::fs::rename(&b, &a).unwrap();
    std::fs::rename(&tmp, &b).unwrap();

    let out = env.path().join("restored.img");
    let o = env.run(&["receive", VOL, &format!("--save-to={}", out.display())]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if let Ok(got) = std::fs::read(&out) {
        assert!(got != other, "receive {VOL} restored {OTHER}'s data");
    }
    assert_eq!(o.status.code(), Some(1), "receive {VOL}: {err}");
    assert!(err.contains(OTHER), "receive {VOL}: {err}");
    // On a new machine there is no record to compare with: the archive alone says it.
    let fresh = env.path().join("new-machine-meta");
    let cfg = config_variant(&env, "new-machine.ini", |ini| {
        ini.replace(
            &format!("metadir = {}", env.meta().display()),
            &format!("metadir = {}", fresh.display()),
        )
    });
    let o = run_cfg(&cfg, &["verify", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(
        o.status.code(),
        Some(4),
        "verify {VOL} on a new machine: {err}"
    );
    assert!(err.contains(OTHER), "verify {VOL} on a new machine: {err}");
    refused_by_list_and_delete(&env, &a, &b);
}

/// `list VOL` and `delete VOL` refuse a folder of `VOL` (at `a`) that holds another
/// volume's backups, and nothing is deleted: `a` and `b` (the other volume's folder)
/// keep every file.
fn refused_by_list_and_delete(env: &Env, a: &Path, b: &Path) {
    let o = env.run(&["list", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "list {VOL}: {err}");
    assert!(err.contains(OTHER), "list {VOL}: {err}");
    assert!(
        !String::from_utf8_lossy(&o.stdout).contains("size="),
        "list {VOL} listed sessions: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = env.run(&["list"]);
    assert_eq!(o.status.code(), Some(1), "list of every volume");
    let before = (paths(a), paths(b));
    let o = env.run(&["delete", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "delete {VOL}: {err}");
    assert!(
        err.contains(&format!("delete {VOL}: nothing was deleted")),
        "delete {VOL}: {err}"
    );
    assert!(err.contains(OTHER), "delete {VOL}: {err}");
    let e = env.fails(&["untar", VOL]);
    assert!(
        e.contains(&format!("untar {VOL}: nothing was changed")),
        "{e}"
    );
    assert!(e.contains(OTHER), "untar {VOL}: {e}");
    assert_eq!((paths(a), paths(b)), before, "delete {VOL} changed files");
}

/// `OTHER`'s folder copied over `VOL`'s: list and delete of `VOL` refuse it.
#[test]
fn another_volumes_folder_copied_over_is_refused_by_list_and_delete() {
    let env = Env::encrypted(&[VOL, OTHER], PASS);
    two_volumes(&env);
    let keys = unlock(&env.archive(), PASS);
    let a = env.archive().join(keys.volume_dir(VOL));
    let b = env.archive().join(keys.volume_dir(OTHER));
    std::fs::remove_dir_all(&a).unwrap();
    cp_a(&b, &a);
    refused_by_list_and_delete(&env, &a, &b);
    // OTHER's own folder is untouched and still lists.
    assert!(env.ok(&["list", OTHER]).contains("size="));
}

/// A missing identity file: nothing ties the folder's sessions to the volume; list
/// says so (and what puts it back) instead of listing them.
#[test]
fn a_missing_volume_identity_file_is_refused_by_list_and_by_delete_on_a_new_machine() {
    let env = Env::encrypted(&[VOL, OTHER], PASS);
    two_volumes(&env);
    let keys = unlock(&env.archive(), PASS);
    let a = env.archive().join(keys.volume_dir(VOL));
    std::fs::remove_file(a.join("volume")).unwrap();
    let o = env.run(&["list", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "list {VOL}: {err}");
    assert!(
        err.contains(&format!(
            "is missing: nothing ties this folder's sessions to volume {VOL} \
             (`sparsebak repair {VOL}` puts it back"
        )),
        "list {VOL}: {err}"
    );
    // On a new machine nothing ties the folder to the volume: delete refuses.
    let fresh = env.path().join("new-machine-meta");
    let cfg = config_variant(&env, "new-machine.ini", |ini| {
        ini.replace(
            &format!("metadir = {}", env.meta().display()),
            &format!("metadir = {}", fresh.display()),
        )
    });
    let o = run_cfg(&cfg, &["delete", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "delete on a new machine: {err}");
    assert!(
        err.contains(&format!("delete {VOL}: nothing was deleted")),
        "{err}"
    );
    assert!(a.is_dir());
    env.ok(&["repair", VOL]);
    assert!(env.ok(&["list", VOL]).contains("size="));
    // Here this machine's copies tie the sessions to the volume: delete works.
    std::fs::remove_file(a.join("volume")).unwrap();
    env.ok(&["delete", VOL]);
    assert!(!a.exists());
    assert!(env.ok(&["list", OTHER]).contains("size="));
}

/// `OTHER`'s session folder copied into `VOL`'s folder, where it is the oldest session:
/// `VOL`'s chain check has nothing older to compare its volume_id with.
#[test]
fn another_volumes_session_copied_in_is_refused() {
    let env = Env::encrypted(&[VOL, OTHER], PASS);
    let (_, other, other_id) = two_volumes(&env);
    let keys = unlock(&env.archive(), PASS);
    let s = format!("S_{}", keys.session_token(&other_id));
    cp_a(
        &env.archive().join(keys.volume_dir(OTHER)).join(&s),
        &env.archive().join(keys.volume_dir(VOL)).join(&s),
    );
    let out = env.path().join("restored.img");
    let o = env.run(&[
        "receive",
        VOL,
        &format!("--save-to={}", out.display()),
        &format!("--session={other_id}"),
    ]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    if let Ok(got) = std::fs::read(&out) {
        assert!(got != other, "receive {VOL} restored {OTHER}'s data");
    }
    assert_eq!(o.status.code(), Some(1), "receive {VOL} {other_id}: {err}");
    assert!(err.contains(OTHER), "receive {VOL} {other_id}: {err}");
    let o = env.run(&["list", VOL]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "list {VOL}: {err}");
    assert!(
        err.contains(&format!(
            "is a session of another volume (made as volume {OTHER})"
        )),
        "list {VOL}: {err}"
    );
    let e = env.fails(&["delete", VOL]);
    assert!(
        e.contains(&format!("delete {VOL}: nothing was deleted")),
        "{e}"
    );
    assert!(env.archive().join(keys.volume_dir(VOL)).join(&s).is_dir());
}

/// spbk-assemble given an encrypted volume's folder as it is on the disk (its token
/// name, copied from a listing) reads it with the passphrase, like by its name.
#[test]
fn spbk_assemble_reads_an_encrypted_volume_folder_by_its_token_name() {
    let env = Env::encrypted(&[VOL], PASS);
    let data = Rng::new(32).bytes(8 * CS);
    std::fs::write(env.image(VOL), &data).unwrap();
    env.send(VOL);
    let vdir = only_volume_dir(&env.archive());
    let out = env.path().join("assembled.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(&vdir)
        .env("SPARSEBAK_PASSPHRASE", PASS)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_same(&std::fs::read(&out).unwrap(), &data, "assembled by token");
}

/// The same for tar sessions: the sealed index is read by spbk-assemble too.
#[test]
fn spbk_assemble_reads_encrypted_tar_sessions() {
    let fx = Fx::tar(33);
    let out = fx.env.path().join("assembled.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(fx.vdir())
        .env("SPARSEBAK_PASSPHRASE", PASS)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_same(
        &std::fs::read(&out).unwrap(),
        &fx.versions[2],
        "assembled tars",
    );
}

/// A send killed (SIGKILL) at each of its crash points leaves an encrypted archive that
/// verifies, shows no half-made session, and the next send completes the work: the
/// staging folder (`.tmp-S_<token>`) is gone and every `S_` folder is a listed session.
#[test]
fn a_killed_send_leaves_an_encrypted_archive_that_verifies() {
    for point in [
        "send-mid-chunks",
        "send-before-commit",
        "session-before-rename",
        "send-after-commit",
        "send-after-local-copy",
    ] {
        let env = Env::encrypted(&[VOL], PASS);
        let mut rng = Rng::new(40);
        // More than 50 changed chunks: `send-mid-chunks` is reached at the 50th.
        let mut img = rng.bytes(80 * CS);
        std::fs::write(env.image(VOL), &img).unwrap();
        env.send(VOL);
        let first = env.latest(VOL);
        let key = std::fs::read(env.archive().join(KEY_FILE)).unwrap();
        rng.fill(&mut img[..60 * CS]);
        std::fs::write(env.image(VOL), &img).unwrap();
        let o = env.run_env(&["send", VOL], &[("SPARSEBAK_FAILPOINT", point)]);
        assert!(
            !o.status.success(),
            "{point}: the send should have been killed"
        );
        env.verify_ok(VOL, None);
        let sessions = env.sessions(VOL);
        let keys = unlock(&env.archive(), PASS);
        let vdir = env.archive().join(keys.volume_dir(VOL));
        let s_entries = |what: &str| {
            let listed: Vec<String> = env
                .sessions(VOL)
                .iter()
                .map(|s| format!("S_{}", keys.session_token(&s.id)))
                .collect();
            let mut listed = listed;
            listed.sort();
            let found: Vec<String> = names_in(&vdir)
                .into_iter()
                .filter(|n| n.starts_with("S_"))
                .collect();
            assert_eq!(found, listed, "{point}: S_ folders {what}");
        };
        s_entries("after the kill");
        match point {
            "send-mid-chunks" | "send-before-commit" | "session-before-rename" => {
                assert_eq!(sessions, vec![first.clone()], "{point}: no new session")
            }
            _ => assert_eq!(sessions.len(), 2, "{point}: the committed session stays"),
        }
        env.send(VOL);
        let sessions = env.sessions(VOL);
        assert_eq!(sessions.len(), 2, "{point}");
        assert_eq!(sessions[1].changed, 60, "{point}");
        env.verify_ok(VOL, None);
        assert_same(&env.receive(VOL, None), &img, point);
        s_entries("after the next send");
        let leftovers: Vec<String> = names_in(&vdir)
            .into_iter()
            .filter(|n| n.starts_with(".tmp") || n.starts_with(".trash"))
            .collect();
        assert!(leftovers.is_empty(), "{point}: {leftovers:?}");
        assert_eq!(std::fs::read(env.archive().join(KEY_FILE)).unwrap(), key);
    }
}

/// The very first send to a new encrypted archive killed while writing chunks: the
/// archive and its key exist; the next send uses that key and completes.
#[test]
fn a_killed_first_send_keeps_the_new_archives_key() {
    let env = Env::encrypted(&[VOL], PASS);
    let img = Rng::new(41).bytes(80 * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    let o = env.run_env(
        &["send", VOL],
        &[("SPARSEBAK_FAILPOINT", "send-mid-chunks")],
    );
    assert!(!o.status.success(), "the send should have been killed");
    let key = std::fs::read(env.archive().join(KEY_FILE)).unwrap();
    assert_eq!(env.ok(&["list", VOL]), format!("{VOL}\n"));
    env.send(VOL);
    assert_eq!(std::fs::read(env.archive().join(KEY_FILE)).unwrap(), key);
    let s = env.sessions(VOL);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].changed, 80);
    assert_same(&env.receive(VOL, None), &img, "after the killed first send");
    env.verify_ok(VOL, None);
    let vdir = only_volume_dir(&env.archive());
    let names = names_in(&vdir);
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], ".lock");
    assert!(names[1].starts_with("S_"), "{names:?}");
    assert_eq!(names[2], "volume", "the volume's identity file");
}

/// Each passphrase source opens the archive for `send` and `receive`; a passfile others
/// may read and no source at all are one line each, and nothing is written.
#[test]
fn every_passphrase_source_works_for_send_and_receive() {
    let env = Env::encrypted(&[VOL], PASS);
    let mut img = Rng::new(50).bytes(8 * CS);
    std::fs::write(env.image(VOL), &img).unwrap();
    env.send(VOL);
    let no_source = config_variant(&env, "none.ini", |ini| replace_passfile(ini, ""));
    let exposed = env.write_passfile("exposed.pass", PASS);
    std::fs::set_permissions(
        &exposed,
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let exposed_cfg = config_variant(&env, "exposed.ini", |ini| {
        replace_passfile(ini, &format!("passfile = {}", exposed.display()))
    });
    let passcmd = config_variant(&env, "passcmd.ini", |ini| {
        replace_passfile(ini, &format!("passcmd = /bin/echo {PASS}"))
    });

    // Refused: nothing written.
    img[..CS].copy_from_slice(&Rng::new(51).bytes(CS));
    std::fs::write(env.image(VOL), &img).unwrap();
    let archive = snapshot(&env.archive());
    let meta = snapshot(&env.meta());
    let err = one_line_failure(&run_cfg(&exposed_cfg, &["send", VOL]), "exposed passfile");
    assert!(
        err.contains(&format!(
            "passfile {}: group or others may read it (mode 0640)",
            exposed.display()
        )),
        "{err}"
    );
    let err = one_line_failure(&run_cfg(&no_source, &["send", VOL]), "no passphrase");
    assert!(
        err.contains(&format!(
            "the archive at {} is encrypted and no passphrase was given",
            env.archive().display()
        )),
        "{err}"
    );
    same_snap(&snapshot(&env.archive()), &archive, "refused sends");
    same_snap(&snapshot(&env.meta()), &meta, "refused sends");

    // passcmd, then the environment (with no passfile or passcmd in the config).
    ok_out(&run_cfg(&passcmd, &["send", VOL]), "send with passcmd");
    let ids: Vec<String> = env.sessions(VOL).into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 2);
    assert_same(
        &receive_cfg(&passcmd, env.path(), VOL, &ids[1]),
        &img,
        "passcmd",
    );
    let out = env.path().join("from-env.img");
    let o = Command::new(bin())
        .arg("-c")
        .arg(&no_source)
        .args(["-u", "receive", VOL])
        .arg(format!("--save-to={}", out.display()))
        .env("SPARSEBAK_PASSPHRASE", PASS)
        .output()
        .unwrap();
    ok_out(&o, "receive with SPARSEBAK_PASSPHRASE");
    assert_same(&std::fs::read(&out).unwrap(), &img, "SPARSEBAK_PASSPHRASE");
}

/// Another archive's key file put in place of this one's: named, and nothing is read
/// or written (even with the passphrase that opens it).
#[test]
fn another_archives_key_file_is_refused() {
    let env = Env::encrypted(&[VOL], PASS);
    std::fs::write(env.image(VOL), Rng::new(60).bytes(8 * CS)).unwrap();
    env.send(VOL);
    let second = Env::encrypted(&[VOL], PASS);
    std::fs::write(second.image(VOL), Rng::new(61).bytes(8 * CS)).unwrap();
    second.send(VOL);
    let id = |e: &Env| {
        KeyFile::parse(&std::fs::read(e.archive().join(KEY_FILE)).unwrap())
            .unwrap()
            .archive
    };
    let (mine, theirs) = (id(&env), id(&second));
    assert_ne!(mine, theirs);
    std::fs::copy(
        second.archive().join(KEY_FILE),
        env.archive().join(KEY_FILE),
    )
    .unwrap();
    let archive = snapshot(&env.archive());
    let meta = snapshot(&env.meta());
    for args in [&["list", VOL][..], &["send", VOL], &["verify", VOL]] {
        let err = one_line_failure(&env.run(args), &format!("{args:?}"));
        assert!(
            err.contains(&format!(
                "{}: the key file is archive {theirs}'s, but this archive is {mine}",
                env.archive().join(KEY_FILE).display()
            )),
            "{args:?}: {err}"
        );
    }
    same_snap(&snapshot(&env.archive()), &archive, "another key file");
    same_snap(&snapshot(&env.meta()), &meta, "another key file");
}
