//! `sparsebak mount`: every session as a read-only image file over FUSE, read with real
//! filesystems (ext4 and XFS made in image files, loop-mounted from the mount), real
//! readers (pread, lseek SEEK_DATA/SEEK_HOLE, several threads), a prune waiting on the
//! mount's lock, encrypted and remote archives, and `diff --files`.

mod common;
use common::*;
#[path = "common/loopdev.rs"]
mod loopdev;
#[path = "common/sshd.rs"]
mod sshd;

use std::collections::BTreeMap;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CS: usize = 65536;

/// The mount's line in /proc/self/mountinfo, if `mp` is a mount point.
fn mountinfo_line(mp: &Path) -> Option<String> {
    let mp = std::fs::canonicalize(mp).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .rfind(|l| l.split(' ').nth(4) == Some(mp.to_str().unwrap()))
        .map(str::to_string)
}

/// Processes whose command line mentions `needle` (other than this test).
fn processes_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let zombie = stat
            .split_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'));
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !zombie {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

/// Wait until no process mentions `needle` (at most 10 s), else fail naming them.
fn none_left(needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = processes_with(needle);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `sparsebak mount` (daemonized), unmounted when dropped.
struct Mounted {
    mp: PathBuf,
}

impl Mounted {
    /// `sparsebak -c CONFIG mount MP args...`; it must return once mounted.
    fn new(env: &Env, args: &[&str]) -> Mounted {
        let mp = env.path().join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        Self::with(
            Command::new(bin())
                .arg("-c")
                .arg(&env.config)
                .arg("mount")
                .arg(&mp)
                .args(args),
            &mp,
            env.path(),
        )
    }

    /// Run `cmd` (a `mount` of `mp`) with its output in files under `dir`.
    fn with(cmd: &mut Command, mp: &Path, dir: &Path) -> Mounted {
        let err = dir.join("mount.err");
        let st = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("mount.out")).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mount failed: {}",
            std::fs::read_to_string(&err).unwrap()
        );
        // Returned: the mount is there and answers.
        assert!(mountinfo_line(mp).is_some(), "nothing mounted on {mp:?}");
        Mounted {
            mp: mp.to_path_buf(),
        }
    }

    fn image(&self, vol: &str, name: &str) -> PathBuf {
        self.mp.join(vol).join(name)
    }

    fn umount(&mut self) {
        let o = Command::new(bin())
            .arg("umount")
            .arg(&self.mp)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "umount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(mountinfo_line(&self.mp).is_none(), "still mounted");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if mountinfo_line(&self.mp).is_some() {
            let _ = Command::new(bin()).arg("umount").arg(&self.mp).status();
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

/// A filesystem image (or the loop device of one) mounted on a folder; unmounted
/// when dropped.
struct FsMount {
    dir: PathBuf,
}

impl FsMount {
    fn new(image: &Path, dir: &Path, fstype: &str, opts: &str) -> FsMount {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("mount")
            .args(["-t", fstype, "-o", opts])
            .arg(image)
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "mount -t {fstype} -o {opts} {image:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        FsMount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for FsMount {
    fn drop(&mut self) {
        for _ in 0..50 {
            let o = Command::new("umount").arg(&self.dir).output();
            if o.is_ok_and(|o| o.status.success()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Files of a tree: relative path -> (mode, bytes).
type Files = BTreeMap<String, (u32, Vec<u8>)>;

fn write_files(root: &Path, files: &Files, gone: &[&str]) {
    for g in gone {
        std::fs::remove_file(root.join(g)).unwrap();
    }
    for (p, (mode, data)) in files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
}

/// Every regular file under `root` but the filesystem's own (`lost+found`).
fn read_files(root: &Path) -> Files {
    let mut out = Files::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == "lost+found" {
                continue;
            }
            if md.is_dir() {
                stack.push(p);
            } else {
                out.insert(rel, (md.mode() & 0o7777, std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

struct Kind {
    vol: &'static str,
    fstype: &'static str,
    size: u64,
    /// Read-only, without replaying the journal.
    ro: &'static str,
}

const KINDS: [Kind; 3] = [
    Kind {
        vol: "e4",
        fstype: "ext4",
        size: 64 << 20,
        ro: "ro,noload",
    },
    Kind {
        vol: "xf",
        fstype: "xfs",
        size: 320 << 20,
        // nouuid: a lazily unmounted image of the same filesystem (of a reader that
        // had not let go yet) would make the next mount a duplicate.
        ro: "ro,norecovery,nouuid",
    },
    Kind {
        vol: "bt",
        fstype: "btrfs",
        size: 160 << 20,
        ro: "ro",
    },
];

/// The files of the first session, and of the second (after changes, deletes, adds).
fn file_sets(seed: u64) -> (Files, Files, Vec<&'static str>) {
    let mut rng = Rng::new(seed);
    let mut first = Files::new();
    first.insert(
        "etc/passwd".into(),
        (0o644, b"root:x:0:0::/root:/bin/sh\n".to_vec()),
    );
    first.insert("docs/big.bin".into(), (0o600, rng.bytes(3 << 20)));
    first.insert("docs/small.txt".into(), (0o644, b"small\n".to_vec()));
    first.insert("old/going.dat".into(), (0o640, rng.bytes(200_000)));
    first.insert("keep.txt".into(), (0o644, rng.bytes(70_000)));
    first.insert("mode.txt".into(), (0o644, b"mode changes\n".to_vec()));
    let mut second = first.clone();
    second.remove("old/going.dat");
    // Changed in place, same size.
    let big = &mut second.get_mut("docs/big.bin").unwrap().1;
    big[1_000_000..1_000_100].fill(0x5a);
    // Grown.
    second.get_mut("docs/small.txt").unwrap().1 = b"small, and then some\n".to_vec();
    second.insert("new/added.bin".into(), (0o600, rng.bytes(500_000)));
    second.get_mut("mode.txt").unwrap().0 = 0o600;
    (first, second, vec!["old/going.dat"])
}

/// Make an ext4 and an XFS filesystem in image files, write `first`, send; change
/// them into `second`, send again. Returns the two session IDs of each volume.
fn two_filesystem_sessions(env: &Env, first: &Files, second: &Files, gone: &[&str]) {
    for k in &KINDS {
        let img = env.image(k.vol);
        std::fs::File::create(&img)
            .unwrap()
            .set_len(k.size)
            .unwrap();
        let mkfs = format!("mkfs.{}", k.fstype);
        let force = if k.fstype == "ext4" { "-F" } else { "-f" };
        let o = Command::new(&mkfs)
            .args([force, "-q"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{mkfs}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let m = FsMount::new(&img, &env.path().join("w"), k.fstype, "loop");
        write_files(&m.dir, first, &[]);
        drop(m);
    }
    for k in &KINDS {
        env.send(k.vol);
    }
    for k in &KINDS {
        let m = FsMount::new(&env.image(k.vol), &env.path().join("w"), k.fstype, "loop");
        let changed: Files = second
            .iter()
            .filter(|(p, v)| first.get(*p) != Some(v))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        write_files(&m.dir, &changed, gone);
        drop(m);
    }
    std::thread::sleep(Duration::from_millis(1100));
    for k in &KINDS {
        env.send(k.vol);
    }
}

#[test]
fn ext4_xfs_and_btrfs_sessions_read_back_every_file_and_diff_lists_the_changes() {
    if !loopdev::need_root("ext4_xfs_and_btrfs_sessions_read_back_every_file") {
        return;
    }
    let env = Env::new(&["e4", "xf", "bt"]);
    let (first, second, gone) = file_sets(7);
    two_filesystem_sessions(&env, &first, &second, &gone);
    let mut m = Mounted::new(&env, &[]);
    for k in &KINDS {
        let ids: Vec<String> = env.sessions(k.vol).into_iter().map(|s| s.id).collect();
        assert_eq!(ids.len(), 2);
        let mut names: Vec<String> = std::fs::read_dir(m.mp.join(k.vol))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                format!("{}.img", ids[0]),
                format!("{}.img", ids[1]),
                "latest.img".to_string()
            ]
        );
        for (id, want) in [(&ids[0], &first), (&ids[1], &second), (&ids[1], &second)] {
            let img = m.image(k.vol, &format!("{id}.img"));
            assert_eq!(std::fs::metadata(&img).unwrap().len(), k.size);
            let opts = format!("loop,{}", k.ro);
            let fm = FsMount::new(&img, &env.path().join("r"), k.fstype, &opts);
            let got = read_files(&fm.dir);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                want.keys().collect::<Vec<_>>(),
                "{} session {id}",
                k.fstype
            );
            for (p, (mode, data)) in want {
                let (gmode, gdata) = &got[p];
                assert_eq!(gmode, mode, "{} {id} {p}: mode", k.fstype);
                assert!(gdata == data, "{} {id} {p}: content differs", k.fstype);
            }
        }
        let fm = FsMount::new(
            &m.image(k.vol, "latest.img"),
            &env.path().join("r"),
            k.fstype,
            &format!("loop,{}", k.ro),
        );
        assert_eq!(read_files(&fm.dir), second);
    }
    m.umount();
    none_left(env.config.to_str().unwrap());

    // diff --files: exactly what the test changed, on both filesystems.
    for k in &KINDS {
        let ids: Vec<String> = env.sessions(k.vol).into_iter().map(|s| s.id).collect();
        let sel = format!("--session={},{}", ids[0], ids[1]);
        let out = env.ok(&["diff", "--files", k.vol, &sel]);
        let want = format!(
            "{vol}: {a} -> {b}: 2 added, 1 removed, 3 changed\n\
             + /new\n\
             + /new/added.bin\n\
             - /old/going.dat\n\
             M /docs/big.bin (content)\n\
             M /docs/small.txt (size, content)\n\
             M /mode.txt (mode)\n",
            vol = k.vol,
            a = ids[0],
            b = ids[1]
        );
        assert_eq!(out, want, "{}", k.fstype);
        let json = env.ok(&["diff", "--files", k.vol, &sel, "--json"]);
        assert!(
            json.contains(
                "\"added\":[\"/new\",\"/new/added.bin\"],\"removed\":[\"/old/going.dat\"]"
            ),
            "{json}"
        );
        assert!(
            json.contains("{\"path\":\"/docs/small.txt\",\"what\":[\"size\",\"content\"]}"),
            "{json}"
        );
    }
    let err = env.fails(&["diff", "--files", "e4", "--session=latest"]);
    assert!(
        err.contains("diff --files compares two sessions: give --session=A,B"),
        "{err}"
    );
    // Nothing of the comparison is left mounted or running.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!info.contains("sparsebak-diff-"), "{info}");
    none_left(env.config.to_str().unwrap());
}

/// Random reads at many offsets and lengths, from several threads at once, and
/// SEEK_DATA/SEEK_HOLE, against what `receive` gives.
fn check_reads(img: &Path, want: &[u8], cs: usize, seed: u64) {
    let f = std::fs::File::open(img).unwrap();
    assert_eq!(f.metadata().unwrap().len(), want.len() as u64);
    assert!(std::fs::read(img).unwrap() == want, "{img:?}: whole read");
    let mut rng = Rng::new(seed);
    for _ in 0..200 {
        let off = rng.below(want.len() as u64 + 1000) as usize;
        let len = 1 + rng.below(300_000) as usize;
        let mut buf = vec![0xeeu8; len];
        let n = read_full(&f, &mut buf, off as u64);
        let end = (off + len).min(want.len()).max(off.min(want.len()));
        let expect = &want[off.min(want.len())..end];
        assert_eq!(n, expect.len(), "{img:?}: read {len} at {off}");
        assert!(&buf[..n] == expect, "{img:?}: read {len} at {off}");
    }
    // SEEK_DATA / SEEK_HOLE from every chunk boundary and a point inside each chunk.
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let data = |c: usize| {
        want[c * cs..((c + 1) * cs).min(want.len())]
            .iter()
            .any(|&b| b != 0)
    };
    let nchunks = want.len().div_ceil(cs);
    for c in 0..nchunks {
        for off in [c * cs, c * cs + 777] {
            if off >= want.len() {
                continue;
            }
            let next_data = (c..nchunks)
                .find(|&k| data(k))
                .map(|k| if k == c { off } else { k * cs });
            // SAFETY: lseek on an open descriptor.
            let got = unsafe { libc::lseek(fd, off as i64, libc::SEEK_DATA) };
            match next_data {
                Some(d) => assert_eq!(got, d as i64, "SEEK_DATA {off}"),
                None => assert_eq!(
                    (got, std::io::Error::last_os_error().raw_os_error()),
                    (-1, Some(libc::ENXIO)),
                    "SEEK_DATA {off}"
                ),
            }
            let hole = if data(c) {
                ((c..nchunks).find(|&k| !data(k)).unwrap_or(nchunks) * cs).min(want.len())
            } else {
                off
            };
            // SAFETY: as above.
            let got = unsafe { libc::lseek(fd, off as i64, libc::SEEK_HOLE) };
            assert_eq!(got, hole as i64, "SEEK_HOLE {off}");
        }
    }
    // SAFETY: as above.
    let past = unsafe { libc::lseek(fd, want.len() as i64, libc::SEEK_DATA) };
    assert_eq!(past, -1, "SEEK_DATA at the end");
}

fn read_full(f: &std::fs::File, buf: &mut [u8], off: u64) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], off + n as u64).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// A volume with data, holes (whole chunks of zeros) and a partial last chunk, in
/// three sessions: the second changes chunks, the third grows the volume.
fn holey_sessions(env: &Env) -> Vec<String> {
    let mut rng = Rng::new(99);
    let mut img = rng.bytes(40 * CS + 1000);
    img[5 * CS..9 * CS].fill(0);
    img[30 * CS..31 * CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[6 * CS..7 * CS]);
    img[20 * CS..22 * CS].fill(0);
    img[35 * CS + 5] ^= 1;
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    img.resize(48 * CS + 4096, 0);
    rng.fill(&mut img[46 * CS..47 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    ids
}

/// Every session read at random offsets by several threads at once, each equal to
/// `receive` of that session; a small cache (many evictions) changes nothing.
fn reads_equal_receive(env: &Env, mount_args: &[&str]) {
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    let wants: Vec<Vec<u8>> = ids.iter().map(|id| env.receive("v", Some(id))).collect();
    let mut m = Mounted::new(env, mount_args);
    std::thread::scope(|s| {
        for (k, id) in ids.iter().enumerate() {
            for t in 0..2u64 {
                let img = m.image("v", &format!("{id}.img"));
                let want = &wants[k];
                s.spawn(move || check_reads(&img, want, CS, 1000 * k as u64 + t));
            }
        }
        let latest = m.image("v", "latest.img");
        let want = wants.last().unwrap();
        s.spawn(move || check_reads(&latest, want, CS, 77));
    });
    m.umount();
    none_left(env.config.to_str().unwrap());
}

#[test]
fn random_reads_from_several_readers_equal_receive() {
    if !loopdev::need_root("random_reads_from_several_readers_equal_receive") {
        return;
    }
    let env = Env::new(&["v"]);
    holey_sessions(&env);
    reads_equal_receive(&env, &[]);
    // A cache smaller than the chunks one read touches.
    reads_equal_receive(&env, &["--cache=100K"]);
}

#[test]
fn encrypted_archive_mounts_with_its_config_and_with_the_archive_folder_alone() {
    if !loopdev::need_root("encrypted_archive_mounts") {
        return;
    }
    let env = Env::encrypted(&["v"], "mount words");
    holey_sessions(&env);
    reads_equal_receive(&env, &[]);

    // --archive=DIR: no config at all, the passphrase from --passfile.
    let want = env.receive("v", None);
    let pass = env.write_passfile("pf", "mount words");
    let mp = env.path().join("mnt");
    let mut m = Mounted::with(
        Command::new(bin())
            .env("SPARSEBAK_CONFIG", env.path().join("no-such.ini"))
            .arg("mount")
            .arg(format!("--archive={}", env.archive().display()))
            .arg(format!("--passfile={}", pass.display()))
            .arg(&mp),
        &mp,
        env.path(),
    );
    let mut names: Vec<String> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec!["v"],
        "volumes by name, not by hidden folder name"
    );
    check_reads(&m.image("v", "latest.img"), &want, CS, 5);
    m.umount();

    // A wrong passphrase: the mount fails and says so, nothing is mounted.
    let bad = env.write_passfile("bad", "other words");
    let o = Command::new(bin())
        .arg("mount")
        .arg(format!("--archive={}", env.archive().display()))
        .arg(format!("--passfile={}", bad.display()))
        .arg(&mp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    assert!(mountinfo_line(&mp).is_none());
    none_left(env.archive().to_str().unwrap());
}

#[test]
fn remote_archives_mount_over_ssh() {
    if !loopdev::need_root("remote_archives_mount_over_ssh") {
        return;
    }
    // Plain: the far side's own store answers each batch of chunks.
    let sshd = sshd::Sshd::start();
    let env = Env::new(&["v"]);
    holey_sessions(&env);
    let remote = sshd::add_to_var(
        &env.config,
        &sshd::remote_lines(&sshd.destvm(), &sshd.sshopts()),
    );
    std::fs::rename(&remote, &env.config).unwrap();
    reads_equal_receive(&env, &[]);
    none_left(env.archive().to_str().unwrap());

    // Encrypted: this machine runs the archive over the far folder's file operations;
    // the far side's folder is not reachable here.
    let env = Env::encrypted(&["v"], "far words");
    let real = env.path().join("far-disk");
    std::fs::create_dir(&real).unwrap();
    sshd::serve_from_namespace(&env, &sshd, &real);
    holey_sessions(&env);
    assert_eq!(std::fs::read_dir(env.archive()).unwrap().count(), 0);
    reads_equal_receive(&env, &[]);
    none_left(env.archive().to_str().unwrap());
}

#[test]
fn prune_waits_for_the_mount_then_runs() {
    if !loopdev::need_root("prune_waits_for_the_mount_then_runs") {
        return;
    }
    let env = Env::new(&["v"]);
    let ids = holey_sessions(&env);
    let want = env.receive("v", None);
    let mut m = Mounted::new(&env, &[]);
    let mut prune = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["-u", "prune", "v"])
        .arg(format!("--session={}", ids[0]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        prune.try_wait().unwrap().is_none(),
        "prune ran while the volume was mounted"
    );
    // Still readable, all three sessions there.
    check_reads(&m.image("v", "latest.img"), &want, CS, 3);
    assert_eq!(std::fs::read_dir(m.mp.join("v")).unwrap().count(), 4);
    m.umount();
    let o = prune.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, ids[1..].to_vec());
    assert!(env.receive("v", None) == want);
}

#[test]
fn sigterm_unmounts_a_foreground_mount_even_with_a_file_open() {
    if !loopdev::need_root("sigterm_unmounts_a_foreground_mount") {
        return;
    }
    let env = Env::new(&["v"]);
    holey_sessions(&env);
    let want = env.receive("v", None);
    let mp = env.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .arg("mount")
        .arg("-f")
        .arg(&mp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mountinfo_line(&mp).is_none() {
        assert!(Instant::now() < deadline, "not mounted");
        assert!(child.try_wait().unwrap().is_none(), "mount -f ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let f = std::fs::File::open(mp.join("v/latest.img")).unwrap();
    let mut buf = vec![0u8; 4096];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert!(buf[..] == want[..4096]);
    // SAFETY: kill(2) of our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    // Detached at once: the mount point is free...
    let deadline = Instant::now() + Duration::from_secs(10);
    while mountinfo_line(&mp).is_some() {
        assert!(Instant::now() < deadline, "still mounted after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...while the reader that had the file open still reads it to its end.
    let mut rest = vec![0u8; want.len()];
    assert_eq!(read_full(&f, &mut rest, 0), want.len());
    assert!(rest == want);
    assert!(
        child.try_wait().unwrap().is_none(),
        "ended under an open file"
    );
    drop(f);
    let o = child.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{:?} {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    none_left(env.config.to_str().unwrap());
}

#[test]
fn allow_other_only_when_the_config_says_so() {
    if !loopdev::need_root("allow_other_only_when_the_config_says_so") {
        return;
    }
    for (extra, mode, allowed) in [("", 0o400, false), ("allow_other = on", 0o444, true)] {
        let env = Env::with_settings(&["v"], extra);
        env.write_at("v", 0, &Rng::new(1).bytes(3 * CS));
        env.send("v");
        let mut m = Mounted::new(&env, &[]);
        let md = std::fs::metadata(m.image("v", "latest.img")).unwrap();
        assert_eq!(md.mode() & 0o7777, mode, "{extra:?}");
        let line = mountinfo_line(&m.mp).unwrap();
        assert_eq!(line.contains("allow_other"), allowed, "{line}");
        assert!(line.contains(" ro,") || line.contains(" ro "), "{line}");
        m.umount();
    }
    let env = Env::with_settings(&["v"], "allow_other = maybe");
    let err = env.fails(&["list"]);
    assert!(
        err.contains("allow_other = \"maybe\": expected on or off"),
        "{err}"
    );
}

#[test]
fn mount_and_umount_refuse_what_they_cannot_use() {
    if !loopdev::need_root("mount_and_umount_refuse_what_they_cannot_use") {
        return;
    }
    let env = Env::new(&["v", "w"]);
    env.write_at("v", 0, &Rng::new(2).bytes(2 * CS));
    env.send("v");
    let file = env.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = env.fails(&["mount", file.to_str().unwrap()]);
    assert!(err.contains("a-file: not a folder"), "{err}");
    let err = env.fails(&["mount", env.path().to_str().unwrap()]);
    assert!(
        err.contains(": not empty; give an empty folder to mount on"),
        "{err}"
    );
    let mp = env.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    // A volume of the config the archive has nothing of.
    let err = env.fails(&["mount", mp.to_str().unwrap(), "w"]);
    assert!(err.contains("volume w: the archive at"), "{err}");
    assert!(err.contains("has no sessions of it"), "{err}");
    assert!(mountinfo_line(&mp).is_none());
    let err = env.fails(&["umount", mp.to_str().unwrap()]);
    assert!(err.contains("mnt: nothing is mounted there"), "{err}");
    // Mounted: a second mount there is refused, and a plain umount of something
    // else too.
    let mut m = Mounted::new(&env, &[]);
    let err = env.fails(&["mount", mp.to_str().unwrap()]);
    assert!(err.contains("is already mounted there"), "{err}");
    let names: Vec<String> = std::fs::read_dir(&mp)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["v"], "only the volumes the archive has");
    // A file still open: said, and nothing is taken down.
    let open = std::fs::File::open(m.image("v", "latest.img")).unwrap();
    let err = env.fails(&["umount", mp.to_str().unwrap()]);
    assert!(
        err.contains("a file in it is still open (close it, or stop the sparsebak process with SIGTERM to detach it)"),
        "{err}"
    );
    assert!(mountinfo_line(&mp).is_some());
    drop(open);
    m.umount();
    let err = env.fails(&["umount", "/proc"]);
    assert!(
        err.contains("/proc: not a sparsebak mount (proc is mounted there)"),
        "{err}"
    );
    none_left(env.config.to_str().unwrap());
}

/// The library alone, no FUSE: a `SessionImage` of each session reads, at random
/// offsets and lengths, what `receive` writes, and answers SEEK_DATA/SEEK_HOLE from
/// the manifests; with a cache too small for one chunk as well as with one.
#[test]
fn session_image_reads_what_receive_writes() {
    use sparsebak::format::volume::VolumeArchive;
    use sparsebak::mount::image::{ChunkCache, SessionImage};
    use std::sync::Arc;
    let env = Env::new(&["v"]);
    let ids = holey_sessions(&env);
    let vol = Arc::new(VolumeArchive::new(&env.vol_dir("v")));
    let tmp = TestDir::new();
    for (k, id) in ids.iter().enumerate() {
        let want = env.receive("v", Some(id));
        for cache in [0, 64 << 20] {
            let chain = vol.chain(id).unwrap();
            let cache = Arc::new(ChunkCache::new(cache));
            let img =
                Arc::new(SessionImage::open(vol.clone(), chain, cache, 0, tmp.path()).unwrap());
            assert_eq!(img.size(), want.len() as u64);
            assert_eq!(
                img.chunks(),
                nonzero_chunks(&want, CS),
                "session {id}: chunks in the index"
            );
            let whole = img.read_at(0, want.len() + 100).unwrap();
            assert!(whole == want, "session {id}: whole read");
            let mut rng = Rng::new(k as u64);
            for _ in 0..300 {
                let off = rng.below(want.len() as u64 + 500);
                let len = rng.below(200_000) as usize;
                let got = img.read_at(off, len).unwrap();
                let s = (off as usize).min(want.len());
                let e = (s + len).min(want.len());
                assert!(got == want[s..e], "session {id}: {len} at {off}");
            }
            let data = |c: usize| {
                want[c * CS..((c + 1) * CS).min(want.len())]
                    .iter()
                    .any(|&b| b != 0)
            };
            let n = want.len().div_ceil(CS);
            for c in 0..n {
                let off = (c * CS + 100) as u64;
                let nd = (c..n)
                    .find(|&j| data(j))
                    .map(|j| if j == c { off } else { (j * CS) as u64 });
                assert_eq!(img.next_data(off).unwrap(), nd, "SEEK_DATA {off}");
                let nh = if data(c) {
                    ((c..n).find(|&j| !data(j)).unwrap_or(n) * CS).min(want.len()) as u64
                } else {
                    off
                };
                assert_eq!(img.next_hole(off).unwrap(), Some(nh), "SEEK_HOLE {off}");
            }
            assert_eq!(img.next_data(want.len() as u64).unwrap(), None);
            assert_eq!(img.next_hole(want.len() as u64).unwrap(), None);
        }
    }
    // The index is an unlinked file: nothing is left in the folder.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A 1 TiB volume with a few MiB of data: the image is 1 TiB long, its data reads
/// back, SEEK_DATA finds each piece, and the serving process stays far below 128 MiB
/// (its index grows with the data, not with the size).
#[test]
fn a_sparse_terabyte_is_served_in_bounded_memory() {
    if !loopdev::need_root("a_sparse_terabyte_is_served_in_bounded_memory") {
        return;
    }
    const TIB: u64 = 1 << 40;
    let env = Env::new(&["v"]);
    env.set_len("v", TIB);
    let mut rng = Rng::new(12);
    let pieces: Vec<(u64, Vec<u8>)> = (0..8u64)
        .map(|k| (k * (TIB / 8) + 3 * CS as u64, rng.bytes(1 << 20)))
        .collect();
    for (off, data) in &pieces {
        env.write_at("v", *off, data);
    }
    env.send("v");
    let mut m = Mounted::new(&env, &[]);
    let img = m.image("v", "latest.img");
    let f = std::fs::File::open(&img).unwrap();
    assert_eq!(f.metadata().unwrap().len(), TIB);
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut at = 0i64;
    for (off, data) in &pieces {
        // SAFETY: lseek on an open descriptor.
        let d = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        assert_eq!(d, *off as i64, "SEEK_DATA from {at}");
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d, libc::SEEK_HOLE) };
        assert_eq!(h, (*off + data.len() as u64) as i64, "SEEK_HOLE from {d}");
        let mut buf = vec![0u8; data.len()];
        assert_eq!(read_full(&f, &mut buf, *off), data.len());
        assert!(&buf == data, "piece at {off}");
        at = h;
    }
    // SAFETY: as above.
    assert_eq!(unsafe { libc::lseek(fd, at, libc::SEEK_DATA) }, -1);
    drop(f);
    let line = mountinfo_line(&m.mp).unwrap();
    let pid = line
        .split(" - ")
        .nth(1)
        .and_then(|r| r.split(' ').nth(1))
        .and_then(|s| s.strip_prefix("sparsebak:"))
        .unwrap()
        .to_string();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let hwm_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(hwm_kib < 128 * 1024, "peak RSS {hwm_kib} KiB:\n{status}");
    m.umount();
    none_left(env.config.to_str().unwrap());
}
