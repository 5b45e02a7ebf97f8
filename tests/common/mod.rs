//! Test harness: run the real `sparsebak` binary on real files in a temporary folder.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sparsebak"))
}

/// The `spbk-assemble` binary. It is another workspace member's, so `cargo test` of
/// this package does not build it: build it once per test binary (a no-op when it is
/// up to date) so a test never runs a stale one. It sits next to sparsebak's.
pub fn assemble_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = std::process::Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "spbk-assemble"])
            .status()
            .expect("running cargo build -p spbk-assemble");
        assert!(st.success(), "cargo build -p spbk-assemble failed");
    });
    bin().with_file_name("spbk-assemble")
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A temporary folder kept (and printed) when the test fails, removed otherwise.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn new() -> TestDir {
        TestDir {
            dir: Some(
                tempfile::Builder::new()
                    .prefix("sparsebak-test-")
                    .tempdir()
                    .unwrap(),
            ),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                eprintln!("test folder kept for inspection: {}", d.keep().display());
            }
        }
    }
}

/// One `list` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub size: u64,
    pub changed: u64,
    pub chunks: u64,
    /// Bytes read from the source to make the session.
    pub read: u64,
}

/// A config, a volume folder, an archive and a metadir, for `source = file`.
pub struct Env {
    pub dir: TestDir,
    pub config: PathBuf,
    pub chunksize: u64,
    /// Where volume images live (`voldir`).
    pub voldir: PathBuf,
}

impl Env {
    pub fn new(volumes: &[&str]) -> Env {
        Self::with_settings(volumes, "")
    }

    /// `extra` lines go into [var] (e.g. "chunksize = 128K").
    pub fn with_settings(volumes: &[&str], extra: &str) -> Env {
        let dir = TestDir::new();
        let p = dir.path();
        std::fs::create_dir_all(p.join("img")).unwrap();
        let mut ini = format!(
            "[var]\nencrypt = off\nsource = file\nvoldir = {}\ndestdir = {}\nmetadir = {}\n{extra}\n[volumes]\n",
            p.join("img").display(),
            p.join("archive").display(),
            p.join("meta").display()
        );
        for v in volumes {
            ini.push_str(&format!("{v} = enable\n"));
        }
        let config = p.join("sparsebak.ini");
        std::fs::write(&config, ini).unwrap();
        let chunksize = extra
            .lines()
            .find_map(|l| l.trim().strip_prefix("chunksize = "))
            .map(|s| s.trim_end_matches('K').parse::<u64>().unwrap() * 1024)
            .unwrap_or(65536);
        let voldir = dir.path().join("img");
        Env {
            dir,
            config,
            chunksize,
            voldir,
        }
    }

    /// An env whose archive is encrypted: the config names a `passfile` (mode 0600)
    /// holding `passphrase` where the plain env says `encrypt = off`.
    pub fn encrypted(volumes: &[&str], passphrase: &str) -> Env {
        let env = Self::new(volumes);
        env.encrypt_with(passphrase);
        env
    }

    /// A file `name` in the test folder holding `passphrase` on its first line, mode 0600.
    pub fn write_passfile(&self, name: &str, passphrase: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path().join(name);
        std::fs::write(&p, format!("{passphrase}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// An env whose volumes are image files in `voldir` with `source = reflink`.
    pub fn reflink(volumes: &[&str], voldir: &Path) -> Env {
        let mut env = Self::new(volumes);
        let ini = std::fs::read_to_string(&env.config).unwrap();
        let ini = ini.replace("source = file", "source = reflink").replace(
            &format!("voldir = {}", env.voldir.display()),
            &format!("voldir = {}", voldir.display()),
        );
        std::fs::write(&env.config, ini).unwrap();
        env.voldir = voldir.to_path_buf();
        env
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn image(&self, vol: &str) -> PathBuf {
        self.voldir.join(vol)
    }

    /// Make this env's archive (not sent to yet) an encrypted one: the config's
    /// `encrypt = off` becomes a `passfile` (mode 0600) holding `words`. Returns the
    /// passfile.
    pub fn encrypt_with(&self, words: &str) -> PathBuf {
        let pass = self.write_passfile("passfile", words);
        let c = std::fs::read_to_string(&self.config).unwrap();
        assert!(c.contains("encrypt = off\n"), "{c}");
        let c = c.replacen(
            "encrypt = off\n",
            &format!("passfile = {}\n", pass.display()),
            1,
        );
        std::fs::write(&self.config, c).unwrap();
        pass
    }
    pub fn archive(&self) -> PathBuf {
        self.path().join("archive")
    }
    pub fn vol_dir(&self, vol: &str) -> PathBuf {
        self.archive().join(vol)
    }
    /// The session folder of an archive holding one volume with one session, whatever
    /// the names (an encrypted archive's are tokens).
    pub fn only_session_dir(&self) -> PathBuf {
        let only = |dir: &Path, keep: &dyn Fn(&str) -> bool| -> PathBuf {
            let found: Vec<String> = names_in(dir).into_iter().filter(|n| keep(n)).collect();
            assert_eq!(
                found.len(),
                1,
                "one entry expected in {}: {found:?}",
                dir.display()
            );
            dir.join(&found[0])
        };
        let archive = self.archive();
        let vdir = only(&archive, &|n| {
            !n.starts_with('.') && archive.join(n).is_dir()
        });
        only(&vdir, &|n| n.starts_with("S_"))
    }
    pub fn meta(&self) -> PathBuf {
        self.path().join("meta")
    }

    /// Run sparsebak with this config; `-u` added.
    pub fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    pub fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut c = Command::new(bin());
        c.arg("-c").arg(&self.config).arg("-u").args(args);
        c.env_remove("SPARSEBAK_FAILPOINT");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    /// Run and require success.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "sparsebak {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stdout).unwrap()
    }

    /// Run and require failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "sparsebak {args:?} should have failed:\n{}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).unwrap()
    }

    pub fn send(&self, vol: &str) {
        self.ok(&["send", vol]);
    }

    pub fn sessions(&self, vol: &str) -> Vec<Session> {
        let out = self.ok(&["list", vol]);
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(vol), "list header");
        lines.map(parse_list_line).collect()
    }

    /// `diff` between two sessions of `vol` (given by ID), human or `--json` output.
    pub fn diff_sessions(&self, vol: &str, a: &str, b: &str, json: bool) -> String {
        let sel = format!("--session={a},{b}");
        let mut args = vec!["diff", vol, sel.as_str()];
        if json {
            args.push("--json");
        }
        self.ok(&args)
    }

    pub fn latest(&self, vol: &str) -> Session {
        self.sessions(vol).pop().expect("no sessions")
    }

    /// Receive a session into a fresh file and return its bytes.
    pub fn receive(&self, vol: &str, session: Option<&str>) -> Vec<u8> {
        let out = self.path().join(format!("recv-{vol}.img"));
        let save = format!("--save-to={}", out.display());
        let mut args = vec!["receive", vol, save.as_str()];
        let s;
        if let Some(id) = session {
            s = format!("--session={id}");
            args.push(&s);
        }
        self.ok(&args);
        let data = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        data
    }

    pub fn verify_ok(&self, vol: &str, session: Option<&str>) {
        let mut args = vec!["verify".to_string(), vol.to_string()];
        if let Some(s) = session {
            args.push(format!("--session={s}"));
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.ok(&a);
    }

    /// The volume image opened for writing, created if missing, never truncated.
    fn open_image(&self, vol: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.image(vol))
            .unwrap()
    }

    /// Write bytes into a volume image at `off` (growing it if needed).
    pub fn write_at(&self, vol: &str, off: u64, data: &[u8]) {
        self.open_image(vol).write_all_at(data, off).unwrap();
    }

    pub fn set_len(&self, vol: &str, len: u64) {
        self.open_image(vol).set_len(len).unwrap();
    }

    pub fn read_image(&self, vol: &str) -> Vec<u8> {
        std::fs::read(self.image(vol)).unwrap()
    }
}

pub fn parse_list_line(l: &str) -> Session {
    let mut it = l.split_whitespace();
    let id = it.next().unwrap().to_string();
    let mut s = Session {
        id,
        size: 0,
        changed: 0,
        chunks: 0,
        read: 0,
    };
    for kv in it {
        let (k, v) = kv.split_once('=').unwrap();
        match k {
            "size" => s.size = v.parse().unwrap(),
            "changed" => s.changed = v.parse().unwrap(),
            "chunks" => s.chunks = v.parse().unwrap(),
            "read" => s.read = v.parse().unwrap(),
            _ => {}
        }
    }
    s
}

/// Number of non-zero chunks of `data` (zero-padded at the end).
pub fn nonzero_chunks(data: &[u8], cs: usize) -> u64 {
    data.chunks(cs)
        .filter(|c| c.iter().any(|&b| b != 0))
        .count() as u64
}

/// Chunks whose content differs between two versions of a volume (the shorter one
/// zero-extended), counting only the chunks of `new`.
pub fn changed_chunks(old: &[u8], new: &[u8], cs: usize) -> u64 {
    let mut n = 0;
    for (i, c) in new.chunks(cs).enumerate() {
        let start = i * cs;
        let mut o = vec![0u8; cs];
        if start < old.len() {
            let end = (start + cs).min(old.len());
            o[..end - start].copy_from_slice(&old[start..end]);
        }
        let mut c2 = vec![0u8; cs];
        c2[..c.len()].copy_from_slice(c);
        if o != c2 {
            n += 1;
        }
    }
    n
}

/// Assert two volumes are byte-identical, saying where they first differ.
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length differs");
    if let Some(i) = got.iter().zip(want).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {i}");
    }
}

/// Volume `v` has exactly the sessions holding `versions[k]` for each `k` in `kept`,
/// oldest first: each restores byte-identical, verifies, and lists the right `chunks=`.
pub fn check_sessions(env: &Env, versions: &[Vec<u8>], kept: &[usize], what: &str) {
    let sessions = env.sessions("v");
    assert_eq!(sessions.len(), kept.len(), "{what}: sessions left");
    for (s, &k) in sessions.iter().zip(kept) {
        assert_same(
            &env.receive("v", Some(&s.id)),
            &versions[k],
            &format!("{what}: session {} (v{k})", s.id),
        );
        env.verify_ok("v", Some(&s.id));
        assert_eq!(
            s.chunks,
            nonzero_chunks(&versions[k], env.chunksize as usize),
            "{what}: chunks= of v{k}"
        );
    }
}

/// Volume `v` sent three times (64 KiB chunks): 20 random chunks from `seed`, then
/// chunk 3 rewritten, then chunk 9 rewritten. Returns each session's image and the
/// session IDs, oldest first.
pub fn three_sessions(env: &Env, seed: u64) -> (Vec<Vec<u8>>, Vec<String>) {
    const CS: usize = 65536;
    let mut rng = Rng::new(seed);
    let mut img = rng.bytes(20 * CS);
    let mut versions = Vec::new();
    for k in 0..3 {
        if k == 1 {
            rng.fill(&mut img[3 * CS..4 * CS]);
        }
        if k == 2 {
            rng.fill(&mut img[9 * CS..10 * CS]);
        }
        std::fs::write(env.image("v"), &img).unwrap();
        env.send("v");
        versions.push(img.clone());
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    (versions, ids)
}

/// Every entry under `root`: relative path -> (mode, size, SHA-256 of the content or
/// the link target), to show that a command changed nothing.
pub fn tree(root: &Path) -> std::collections::BTreeMap<PathBuf, (u32, u64, String)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_dir() {
                stack.push(p.clone());
                String::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else {
                hex::encode(sparsebak_format::chunk::hash(&std::fs::read(&p).unwrap()))
            };
            let size = if m.is_dir() { 0 } else { m.len() };
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                (m.mode(), size, content),
            );
        }
    }
    out
}

/// Folders and files directly in `dir`, sorted.
/// In `dir`: a volume `v` (5 chunks of 64 KiB and 100 bytes, seed 7) in `img/`, and
/// a config that backs it up to an archive and to a virtual tape library `vt` (3
/// slots of 16 MiB, blocks of 64 KiB, media pool `weekly`), not encrypted. Returns
/// the config's path.
pub fn small_virtual_library(dir: &Path) -> PathBuf {
    std::fs::create_dir(dir.join("img")).unwrap();
    std::fs::write(dir.join("img/v"), Rng::new(7).bytes(5 * 65536 + 100)).unwrap();
    let config = dir.join("c.ini");
    std::fs::write(
        &config,
        format!(
            "[var]\nsource = file\nvoldir = {0}/img\ndestdir = {0}/archive\n\
             metadir = {0}/meta\nencrypt = off\n\
             [dest:vt]\ntape = virtual:{0}/vtl\nvirtual_slots = 3\n\
             virtual_capacity = 16M\nblocksize = 64K\npool = weekly\n\
             [volumes]\nv = enable\n",
            dir.display()
        ),
    )
    .unwrap();
    config
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// `cat inputs | cmd receive --from-stream=- --save-to=out`, where `cmd` is the
/// sparsebak command to run (with whatever environment the caller set).
pub fn receive_from_pipe(
    mut cmd: std::process::Command,
    inputs: &[&Path],
    out: &Path,
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .args(["-u", "receive", "--from-stream=-"])
        .arg(format!("--save-to={}", out.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        for p in inputs {
            // A reader that stops early (a refused stream) closes the pipe.
            let _ = stdin.write_all(&std::fs::read(p).unwrap());
        }
    }
    child.wait_with_output().unwrap()
}

/// Volume `vol`'s archive was put back to an older copy that lacks session `lost`
/// (this machine sent it): `list` warns naming it (exit 0); `receive` of the latest
/// (no --session, or `--session=latest`) refuses, names it and writes nothing; a
/// session named by its ID (`kept`) restores byte-identical to `want`, with the
/// warning.
pub fn rolled_back_list_and_receive(env: &Env, vol: &str, lost: &str, kept: &str, want: &[u8]) {
    let o = env.run(&["list", vol]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "list {vol}: {err}");
    assert!(
        err.contains(&format!(
            "{} no longer has ({lost}): a session was removed, or the volume was replaced by an older copy",
            env.archive().display()
        )),
        "list {vol}: {err}"
    );
    assert!(
        err.contains(&format!(
            "volume {vol}: this machine sent 1 session(s) that the archive at "
        )),
        "list {vol}: {err}"
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains(kept));
    // diff and prune --dry-run work on what the archive has, with the same warning.
    for args in [
        vec!["diff", vol, &format!("--session={kept}")],
        vec!["prune", "--dry-run", vol, &format!("--session={kept}")],
    ] {
        let o = env.run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            err.contains(&format!("no longer has ({lost})")),
            "{args:?}: {err}"
        );
    }
    let out = env.path().join("rolled-back.img");
    let to = format!("--save-to={}", out.display());
    for extra in [None, Some("--session=latest")] {
        let mut args = vec!["receive", vol, to.as_str()];
        args.extend(extra);
        let o = env.run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("({lost})")), "{args:?}: {err}");
        assert!(
            err.contains(
                "refusing to pick a session for you: name the one to restore with --session=ID"
            ),
            "{args:?}: {err}"
        );
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    let o = env.run(&["receive", vol, &to, &format!("--session={kept}")]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(0), "receive {kept}: {err}");
    assert!(err.contains(&format!("({lost})")), "receive {kept}: {err}");
    assert_same(
        &std::fs::read(&out).unwrap(),
        want,
        "named session after rollback",
    );
    std::fs::remove_file(&out).unwrap();
}

/// A virtual library held by a test process keeps an exclusive lock on an open file.
/// A child spawned by another test thread in the meantime holds a copy of that
/// descriptor until it execs, and a command run right after the library is dropped
/// could find it still locked. So spawning (read, [`spawning`]) and holding a library
/// (write, [`HeldLibrary::open`]) exclude each other.
static SPAWN: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Hold while spawning a child that may open a virtual library.
pub fn spawning() -> std::sync::RwLockReadGuard<'static, ()> {
    SPAWN.read().unwrap_or_else(|p| p.into_inner())
}

/// A virtual library, held while no child process is being spawned.
pub struct HeldLibrary {
    lib: sparsebak::tape::virtual_library::VirtualLibrary,
    _spawn: std::sync::RwLockWriteGuard<'static, ()>,
}

impl HeldLibrary {
    /// Open (creating) the virtual library in `dir` with `slots` cartridges of
    /// `capacity` bytes.
    pub fn open(dir: &Path, slots: u32, capacity: u64) -> HeldLibrary {
        let spawn = SPAWN.write().unwrap_or_else(|p| p.into_inner());
        let lib = sparsebak::tape::virtual_library::VirtualLibrary::open(
            dir,
            &sparsebak::tape::virtual_library::VirtualLibraryOptions {
                slots,
                capacity,
                speed: None,
            },
        )
        .unwrap();
        HeldLibrary { lib, _spawn: spawn }
    }
}

impl std::ops::Deref for HeldLibrary {
    type Target = sparsebak::tape::virtual_library::VirtualLibrary;
    fn deref(&self) -> &Self::Target {
        &self.lib
    }
}
