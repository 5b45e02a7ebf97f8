//! Every kind of restore target, on real objects: block devices of 512- and 4096-byte
//! logical blocks with a volume size that is a multiple of neither, standard output,
//! FIFOs with a reader, symlinks to files and devices, files owned by someone else,
//! and the kinds that must be refused before anything is written. Also: the archive,
//! the metadir and every file sparsebak creates are private whatever the umask. What an
//! existing target holds is replaced only with consent, no writer writes to a
//! terminal, and a writer stopped by SIGINT/SIGTERM leaves no partial file.
//!
//! Each target is written by all four writers: `receive`, `receive --from-stream`,
//! `spbk-assemble -o` and (for files and FIFOs) `send --stream`.

mod common;
#[path = "common/loopdev.rs"]
mod loopdev;

use common::*;
use loopdev::{need_root, Loop};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const MIB: usize = 1 << 20;
/// 4 MiB + 12345 bytes: a multiple of neither 512 nor 4096.
const VOLSIZE: usize = 4 * MIB + 12345;

/// A volume of [`VOLSIZE`] bytes whose last MiB is zero, sent once, and two streams of
/// it: `s1` (full, of an older content) and `s2` (incremental, to the volume's content).
fn setup(seed: u64) -> (Env, Vec<u8>, [PathBuf; 2]) {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(seed);
    let mut img = vec![0u8; VOLSIZE];
    rng.fill(&mut img[..VOLSIZE - MIB]);
    let old: Vec<u8> = img.iter().map(|b| b ^ 0x5A).collect();
    std::fs::write(env.image("v"), &old).unwrap();
    let s1 = env.path().join("s1.tar");
    env.ok(&["send", "v", &format!("--stream={}", s1.display())]);
    std::fs::write(env.image("v"), &img).unwrap();
    let s2 = env.path().join("s2.tar");
    env.ok(&["send", "v", &format!("--stream={}", s2.display())]);
    env.send("v");
    (env, img, [s1, s2])
}

fn streams_arg(s: &[PathBuf; 2]) -> String {
    format!("--from-stream={},{}", s[0].display(), s[1].display())
}

/// `sparsebak -c CONFIG -u ARGS`, run in the test folder.
fn sparsebak(env: &Env, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.arg("-c").arg(&env.config).arg("-u").args(args);
    c.env_remove("SPARSEBAK_FAILPOINT").current_dir(env.path());
    c
}

fn assemble(env: &Env, out: &str) -> Command {
    let mut c = Command::new(assemble_bin());
    c.arg("-f").arg("-o").arg(out).arg(env.vol_dir("v"));
    c.current_dir(env.path());
    c
}

fn with_umask(mut c: Command, mask: u32) -> Command {
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    c
}

/// Run with a time limit (a FIFO target once hung for ever); stdout and stderr captured.
fn run(mut c: Command) -> Output {
    let child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: kill with the pid of our own child.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{c:?} did not finish within 120 s");
        }
    }
}

fn ok(c: Command) -> Output {
    let what = format!("{c:?}");
    let o = run(c);
    assert!(
        o.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn fails(c: Command) -> String {
    let what = format!("{c:?}");
    let o = run(c);
    assert_eq!(o.status.code(), Some(1), "{what} should fail with exit 1");
    assert!(o.stdout.is_empty(), "{what} wrote to stdout");
    String::from_utf8(o.stderr).unwrap()
}

/// The four writers, each into `target`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Writer {
    Receive,
    FromStream,
    Assemble,
    SendStream,
}

const RESTORERS: [Writer; 3] = [Writer::Receive, Writer::FromStream, Writer::Assemble];

fn writer(env: &Env, streams: &[PathBuf; 2], w: Writer, target: &Path) -> Command {
    let save = format!("--save-to={}", target.display());
    match w {
        Writer::Receive => sparsebak(env, &["receive", "v", &save]),
        Writer::FromStream => sparsebak(env, &["receive", &streams_arg(streams), &save]),
        Writer::Assemble => assemble(env, &target.display().to_string()),
        Writer::SendStream => {
            // A new chain each time: a full stream.
            static CHAINS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = CHAINS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            sparsebak(
                env,
                &[
                    "send",
                    "v",
                    &format!("--chain=t{n}"),
                    &format!("--stream={}", target.display()),
                ],
            )
        }
    }
}

/// What a stream written by [`Writer::SendStream`] restores to.
fn stream_volume(env: &Env, stream: &[u8]) -> Vec<u8> {
    let sf = env.path().join("check-stream.tar");
    std::fs::write(&sf, stream).unwrap();
    let out = env.path().join("check-stream.img");
    let _ = std::fs::remove_file(&out);
    env.ok(&[
        "receive",
        &format!("--from-stream={}", sf.display()),
        &format!("--save-to={}", out.display()),
    ]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&sf).unwrap();
    data
}

fn no_partial_files(dir: &Path, what: &str) {
    for e in std::fs::read_dir(dir).unwrap() {
        let n = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!n.contains("partial"), "{what}: {n} left behind");
    }
}

/// A volume whose size is a multiple of neither 512 nor 4096, with a zero tail, into
/// loop devices full of 0xEE (given directly and through a symlink): the volume's bytes
/// exactly, and nothing past its end touched.
#[test]
fn unaligned_volume_into_block_devices() {
    if !need_root("unaligned_volume_into_block_devices") {
        return;
    }
    let (env, img, streams) = setup(1);
    for sector in [512u32, 4096] {
        for w in RESTORERS {
            for via_link in [false, true] {
                let what = format!("{w:?} into a {sector}-byte-sector device (link: {via_link})");
                let backing = env.path().join("dev.img");
                std::fs::write(&backing, vec![0xEEu8; 8 * MIB]).unwrap();
                let Some(lo) = Loop::new("unaligned_volume_into_block_devices", &backing, sector)
                else {
                    return;
                };
                let link = env.path().join("dev-link");
                let _ = std::fs::remove_file(&link);
                let target = if via_link {
                    std::os::unix::fs::symlink(&lo.dev, &link).unwrap();
                    link.clone()
                } else {
                    lo.dev.clone()
                };
                ok(writer(&env, &streams, w, &target));
                lo.flush();
                let got = std::fs::read(&backing).unwrap();
                assert_same(&got[..VOLSIZE], &img, &what);
                assert!(
                    got[VOLSIZE..].iter().all(|&b| b == 0xEE),
                    "{what}: bytes past the volume changed"
                );
                if via_link {
                    assert_eq!(std::fs::read_link(&link).unwrap(), lo.dev, "{what}: link");
                    no_partial_files(env.path(), &what);
                }
                let ft = std::fs::symlink_metadata(&lo.dev).unwrap().file_type();
                assert!(ft.is_block_device(), "{what}: the device node was replaced");
            }
        }
    }
}

/// `--save-to=-` and `-o -` (and `/dev/stdout`): the volume on standard output, byte
/// for byte, and no file named `-`.
#[test]
fn standard_output_is_the_volume() {
    let (env, img, streams) = setup(2);
    // `/dev/stdout` on a pipe is a symlink to `/proc/self/fd/1`, which leads to no path.
    for target in ["-", "/dev/stdout"] {
        for w in RESTORERS {
            let o = ok(writer(&env, &streams, w, Path::new(target)));
            assert_same(&o.stdout, &img, &format!("{w:?} to {target}"));
            assert!(!env.path().join("-").exists(), "{w:?} made a file named -");
        }
    }
}

/// A FIFO with a reader takes the volume in order, zeros included; `send --stream`
/// writes its stream into one too.
#[test]
fn fifo_with_a_reader() {
    let (env, img, streams) = setup(3);
    let fifo = env.path().join("pipe");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for w in [
        Writer::Receive,
        Writer::FromStream,
        Writer::Assemble,
        Writer::SendStream,
    ] {
        let f = fifo.clone();
        let reader = std::thread::spawn(move || std::fs::read(&f).unwrap());
        ok(writer(&env, &streams, w, &fifo));
        let got = reader.join().unwrap();
        let got = if w == Writer::SendStream {
            stream_volume(&env, &got)
        } else {
            got
        };
        assert_same(&got, &img, &format!("{w:?} into a FIFO"));
        let ft = std::fs::symlink_metadata(&fifo).unwrap().file_type();
        assert!(ft.is_fifo(), "{w:?}: FIFO replaced");
    }
}

/// A symlink to a file owned by someone else, mode 0640: the file it points to gets the
/// volume and keeps owner, group and mode; the link stays a link; nothing is left over.
#[test]
fn symlink_to_a_file_of_another_owner() {
    if !need_root("symlink_to_a_file_of_another_owner") {
        return;
    }
    let (env, img, streams) = setup(4);
    let dir = env.path().join("other");
    std::fs::create_dir(&dir).unwrap();
    let real = dir.join("real.img");
    let link = env.path().join("link.img");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for w in [
        Writer::Receive,
        Writer::FromStream,
        Writer::Assemble,
        Writer::SendStream,
    ] {
        std::fs::write(&real, b"old content").unwrap();
        std::os::unix::fs::chown(&real, Some(1234), Some(5678)).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        ok(writer(&env, &streams, w, &link));
        let what = format!("{w:?} through a symlink");
        assert_eq!(std::fs::read_link(&link).unwrap(), real, "{what}: link");
        let got = std::fs::read(&real).unwrap();
        let got = if w == Writer::SendStream {
            stream_volume(&env, &got)
        } else {
            got
        };
        assert_same(&got, &img, &what);
        let m = std::fs::metadata(&real).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (1234, 5678, 0o640),
            "{what}: owner, group, mode"
        );
        no_partial_files(&dir, &what);
        no_partial_files(env.path(), &what);
    }
}

/// A new file is 0600 whatever the umask.
#[test]
fn new_files_are_0600_whatever_the_umask() {
    let (env, img, streams) = setup(5);
    for mask in [0o000, 0o022] {
        for w in [
            Writer::Receive,
            Writer::FromStream,
            Writer::Assemble,
            Writer::SendStream,
        ] {
            let target = env.path().join("new.img");
            let _ = std::fs::remove_file(&target);
            ok(with_umask(writer(&env, &streams, w, &target), mask));
            let what = format!("{w:?} into a new file, umask {mask:03o}");
            let m = std::fs::metadata(&target).unwrap();
            assert_eq!(m.mode() & 0o7777, 0o600, "{what}");
            let got = std::fs::read(&target).unwrap();
            if w == Writer::SendStream {
                assert_same(&stream_volume(&env, &got), &img, &what);
            } else {
                assert_same(&got, &img, &what);
            }
        }
    }
}

/// Directories, sockets, character devices, dangling symlinks, missing device nodes and
/// files with several hard links (only one name would get the volume) are refused
/// before anything is written, naming the path; nothing changes.
#[test]
fn unusable_targets_are_refused_before_writing() {
    let (env, _img, streams) = setup(6);
    let dir = env.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("keep"), b"keep").unwrap();
    let sock = env.path().join("sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let dangling = env.path().join("dangling");
    let nowhere = env.path().join("nowhere");
    std::os::unix::fs::symlink(&nowhere, &dangling).unwrap();
    let missing_dev = Path::new("/dev/sparsebak-test-no-such-device");
    let linked = env.path().join("linked.img");
    std::fs::write(&linked, b"old").unwrap();
    std::fs::hard_link(&linked, env.path().join("other-name.img")).unwrap();
    let cases: [(&Path, &str); 6] = [
        (&dir, "is a directory"),
        (&linked, "has 2 hard links"),
        (missing_dev, "is missing from /dev"),
        (&sock, "is a socket"),
        (Path::new("/dev/tty"), "is a character device"),
        (&dangling, "which does not exist"),
    ];
    let sessions = env.sessions("v").len();
    for (target, why) in cases {
        for w in RESTORERS {
            let err = fails(writer(&env, &streams, w, target));
            let what = format!("{w:?} into {}", target.display());
            assert!(err.contains(why), "{what}: {err}");
            assert!(err.contains(&target.display().to_string()), "{what}: {err}");
        }
        if target != Path::new("/dev/tty") {
            // A tape is a character device: send --stream takes those.
            let err = fails(writer(&env, &streams, Writer::SendStream, target));
            assert!(
                err.contains(why),
                "send --stream into {}: {err}",
                target.display()
            );
        }
    }
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep")]);
    assert_eq!(std::fs::read(dir.join("keep")).unwrap(), b"keep");
    assert!(
        !nowhere.exists(),
        "the dangling symlink's target was created"
    );
    assert_eq!(std::fs::read_link(&dangling).unwrap(), nowhere);
    assert!(!missing_dev.exists(), "a file was made in /dev");
    assert_eq!(std::fs::read(&linked).unwrap(), b"old");
    assert_eq!(std::fs::metadata(&linked).unwrap().nlink(), 2);
    assert!(std::fs::symlink_metadata(&sock)
        .map(|m| m.file_type().is_socket())
        .unwrap());
    no_partial_files(env.path(), "refused targets");
    assert_eq!(env.sessions("v").len(), sessions);
}

/// `/dev/null` keeps nothing: named, through a symlink, or as standard output (also
/// standard output closed, which the runtime turns into `/dev/null` before `main`),
/// every writer refuses it with the same reason, exit 1, before anything is done: no
/// restore seems to succeed, and no stream that was thrown away joins a chain. The
/// other memory devices (`/dev/zero`) are refused as not storage.
#[test]
fn places_that_keep_nothing_are_refused() {
    let (env, _img, streams) = setup(8);
    let link = env.path().join("null-link");
    std::os::unix::fs::symlink("/dev/null", &link).unwrap();
    let link_why = format!("{} is /dev/null, which keeps nothing", link.display());
    let stdout_why = "standard output is /dev/null (or was closed), which keeps nothing";
    let sessions = env.sessions("v");
    let all = [
        Writer::Receive,
        Writer::FromStream,
        Writer::Assemble,
        Writer::SendStream,
    ];
    for w in all {
        for (target, why) in [
            (
                Path::new("/dev/null"),
                "/dev/null keeps nothing written to it; refusing",
            ),
            (&link, &link_why),
            (
                Path::new("/dev/zero"),
                "/dev/zero is a memory device (character device 1:5), not storage",
            ),
        ] {
            let err = fails(writer(&env, &streams, w, target));
            assert!(err.contains(why), "{w:?} into {}: {err}", target.display());
        }
        for closed in [false, true] {
            let mut c = writer(&env, &streams, w, Path::new("-"));
            c.stdin(Stdio::null()).stdout(Stdio::null());
            if closed {
                // SAFETY: close is async-signal-safe and touches no memory.
                unsafe {
                    c.pre_exec(|| {
                        libc::close(1);
                        Ok(())
                    });
                }
            }
            let o = c.output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            let what = format!("{w:?} to standard output (closed: {closed})");
            assert_eq!(o.status.code(), Some(1), "{what}: {err}");
            assert!(err.contains(stdout_why), "{what}: {err}");
        }
    }
    assert_eq!(env.sessions("v"), sessions, "no session was made");
    // A stream thrown away does not join its chain: after refused sends on the default
    // chain, its next stream still follows `s2`, and the three restore.
    std::fs::write(env.image("v"), Rng::new(80).bytes(VOLSIZE)).unwrap();
    let s3 = env.path().join("s3.tar");
    for closed in [false, true] {
        let mut c = sparsebak(&env, &["send", "v", "--stream=-"]);
        c.stdin(Stdio::null()).stdout(Stdio::null());
        if closed {
            // SAFETY: close is async-signal-safe and touches no memory.
            unsafe {
                c.pre_exec(|| {
                    libc::close(1);
                    Ok(())
                });
            }
        }
        assert_eq!(c.output().unwrap().status.code(), Some(1));
    }
    fails(sparsebak(&env, &["send", "v", "--stream=/dev/null"]));
    let o = ok(sparsebak(
        &env,
        &["-v", "send", "v", &format!("--stream={}", s3.display())],
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("incremental stream (default)"), "{err}");
    let back = env.path().join("back.img");
    let from = format!(
        "--from-stream={},{},{}",
        streams[0].display(),
        streams[1].display(),
        s3.display()
    );
    ok(sparsebak(
        &env,
        &["receive", &from, &format!("--save-to={}", back.display())],
    ));
    assert_same(
        &std::fs::read(&back).unwrap(),
        &std::fs::read(env.image("v")).unwrap(),
        "s1,s2,s3",
    );
    no_partial_files(env.path(), "refused targets");
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        if m.is_dir() {
            walk(&e.path(), out);
        }
        out.push((e.path(), m));
    }
}

/// Sends (folder and tar sessions), a prune, an untar and a stream send under umask 022
/// and 000: every folder of the archive and the metadir is 0700, every file 0600.
#[test]
fn archive_and_metadir_are_private_whatever_the_umask() {
    for mask in [0o022, 0o000] {
        let env = Env::new(&["v", "w"]);
        let mut rng = Rng::new(7);
        let mut img = rng.bytes(40 * 65536);
        let run_ok = |args: &[&str]| {
            ok(with_umask(sparsebak(&env, args), mask));
        };
        std::fs::write(env.image("v"), &img).unwrap();
        std::fs::write(env.image("w"), &img[..8 * 65536]).unwrap();
        run_ok(&["send"]);
        rng.fill(&mut img[..3 * 65536]);
        std::fs::write(env.image("v"), &img).unwrap();
        run_ok(&["send", "--tarfile", "v"]);
        rng.fill(&mut img[5 * 65536..9 * 65536]);
        std::fs::write(env.image("v"), &img).unwrap();
        run_ok(&["send", "--tarfile", "v"]);
        let first = env.sessions("v")[0].id.clone();
        run_ok(&["prune", "v", &format!("--session={first}")]);
        run_ok(&["untar", "v"]);
        let stream = env.path().join("v.stream");
        run_ok(&["send", "v", &format!("--stream={}", stream.display())]);
        assert_eq!(env.sessions("v").len(), 2, "umask {mask:03o}: sessions");
        assert_same(&env.receive("v", None), &img, "after the prune and untar");
        let mut all = Vec::new();
        walk(&env.archive(), &mut all);
        let archive_entries = all.len();
        walk(&env.meta(), &mut all);
        all.push((env.archive(), std::fs::metadata(env.archive()).unwrap()));
        all.push((env.meta(), std::fs::metadata(env.meta()).unwrap()));
        all.push((stream.clone(), std::fs::metadata(&stream).unwrap()));
        assert!(
            archive_entries > 20,
            "umask {mask:03o}: {archive_entries} entries"
        );
        for (p, m) in &all {
            let want = if m.is_dir() { 0o700 } else { 0o600 };
            assert_eq!(
                m.mode() & 0o7777,
                want,
                "umask {mask:03o}: {} is {:o}",
                p.display(),
                m.mode() & 0o7777
            );
        }
    }
}

/// Unmounts on drop (also when the test fails).
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A mounted block device is refused by every writer, and not a byte of it changes.
#[test]
fn mounted_block_device_is_refused() {
    if !need_root("mounted_block_device_is_refused") {
        return;
    }
    let (env, _img, streams) = setup(8);
    let backing = env.path().join("fs.img");
    std::fs::write(&backing, vec![0u8; 8 * MIB]).unwrap();
    let Some(lo) = Loop::new("mounted_block_device_is_refused", &backing, 512) else {
        return;
    };
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&lo.dev)
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4");
    let mnt = env.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args(["-o", "ro"])
        .arg(&lo.dev)
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(st.success(), "mount");
    let _m = Mount(mnt);
    lo.flush();
    let before = std::fs::read(&backing).unwrap();
    for w in [
        Writer::Receive,
        Writer::FromStream,
        Writer::Assemble,
        Writer::SendStream,
    ] {
        let err = fails(writer(&env, &streams, w, &lo.dev));
        assert!(
            err.contains(&format!(
                "{} is in use (mounted, or held by another program)",
                lo.dev.display()
            )),
            "{w:?}: {err}"
        );
    }
    lo.flush();
    assert!(
        std::fs::read(&backing).unwrap() == before,
        "the mounted device changed"
    );
}

/// Run by a user who cannot give the restored file the owner of the file it replaces:
/// refused before anything is written, the file unchanged.
#[test]
fn file_of_an_owner_the_user_cannot_give_is_refused() {
    if !need_root("file_of_an_owner_the_user_cannot_give_is_refused") {
        return;
    }
    let (env, _img, streams) = setup(9);
    let st = Command::new("chown")
        .args(["-R", "65534:65534"])
        .arg(env.path())
        .status()
        .unwrap();
    assert!(st.success(), "chown -R");
    let target = env.path().join("roots.img");
    std::fs::write(&target, b"root's file").unwrap();
    std::os::unix::fs::chown(&target, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    for w in RESTORERS {
        let mut c = writer(&env, &streams, w, &target);
        c.uid(65534).gid(65534);
        let err = fails(c);
        assert!(
            err.contains(&format!("{} belongs to uid 0 gid 0", target.display())),
            "{w:?}: {err}"
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"root's file", "{w:?}");
        let m = std::fs::metadata(&target).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (0, 0, 0o644),
            "{w:?}"
        );
        no_partial_files(env.path(), &format!("{w:?}"));
    }
}

/// The writer `w` into `target` without consent: no `-u` (and stdin not a terminal),
/// no `--force` for spbk-assemble.
fn without_consent(env: &Env, streams: &[PathBuf; 2], w: Writer, target: &Path) -> Command {
    let save = format!("--save-to={}", target.display());
    let plain = |args: &[&str]| {
        let mut c = Command::new(bin());
        c.arg("-c").arg(&env.config).args(args);
        c.env_remove("SPARSEBAK_FAILPOINT").current_dir(env.path());
        c
    };
    match w {
        Writer::Receive => plain(&["receive", "v", &save]),
        Writer::FromStream => plain(&["receive", &streams_arg(streams), &save]),
        Writer::Assemble => {
            let mut c = Command::new(assemble_bin());
            c.arg("-o").arg(target).arg(env.vol_dir("v"));
            c
        }
        Writer::SendStream => plain(&[
            "send",
            "v",
            "--chain=consent",
            &format!("--stream={}", target.display()),
        ]),
    }
}

/// A file holding data and a loop device holding data are kept by every writer
/// without consent ("not overwriting"), byte for byte; with consent (`-u`, or
/// `--force` for spbk-assemble) they are replaced.
#[test]
fn existing_targets_are_replaced_only_with_consent() {
    if !need_root("existing_targets_are_replaced_only_with_consent") {
        return;
    }
    let (env, img, streams) = setup(31);
    let file = env.path().join("precious");
    let backing = env.path().join("dev.img");
    let data = Rng::new(13).bytes(8 * MIB);
    std::fs::write(&backing, &data).unwrap();
    let Some(lo) = Loop::new("existing_targets_are_replaced", &backing, 512) else {
        return;
    };
    let all = [
        Writer::Receive,
        Writer::FromStream,
        Writer::Assemble,
        Writer::SendStream,
    ];
    for w in all {
        std::fs::write(&file, b"keep me").unwrap();
        for target in [&file, &lo.dev] {
            let err = fails(without_consent(&env, &streams, w, target));
            assert!(
                err.contains(&format!("{} exists; not overwriting it", target.display())),
                "{w:?} into {}: {err}",
                target.display()
            );
        }
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me", "{w:?}");
        lo.flush();
        assert!(
            std::fs::read(&backing).unwrap() == data,
            "{w:?}: device written"
        );
        no_partial_files(env.path(), &format!("{w:?}"));

        // With consent, replaced.
        ok(writer(&env, &streams, w, &file));
        let got = std::fs::read(&file).unwrap();
        let got = if w == Writer::SendStream {
            stream_volume(&env, &got)
        } else {
            got
        };
        assert!(got == img, "{w:?}: replaced file differs");

        // Even an empty file is asked about, as receive does.
        std::fs::write(&file, b"").unwrap();
        let err = fails(without_consent(&env, &streams, w, &file));
        assert!(err.contains("not overwriting"), "{w:?}: {err}");
        std::fs::remove_file(&file).unwrap();
    }
}

/// Open a pseudo-terminal: (master, slave).
fn pty() -> (std::fs::File, std::os::fd::OwnedFd) {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two descriptors we then own; the other arguments may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty");
    // SAFETY: both descriptors were just opened and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    (std::fs::File::from(master), slave)
}

/// `send --stream=-` with standard output a terminal is refused before anything is
/// written to it or recorded in the chain; `receive --from-stream=-` with standard
/// input a terminal is refused rather than waiting for a stream nobody types.
#[test]
fn streams_are_neither_written_to_nor_read_from_a_terminal() {
    use std::io::Read;
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(10).bytes(MIB)).unwrap();
    let (mut master, slave) = pty();
    let child = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["-u", "send", "--stream=-", "v"])
        .stdout(Stdio::from(slave))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        // Ends with EIO once the child has exited and closed the terminal.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), 0, "the stream went to the terminal");
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to write a stream to a terminal"),
        "{err}"
    );
    // Nothing recorded: the first stream to a file is a full one.
    assert!(
        !env.meta().join("v/streams/default/sessions").exists()
            || std::fs::read_dir(env.meta().join("v/streams/default/sessions"))
                .unwrap()
                .count()
                == 0
    );

    let (_master, slave) = pty();
    let o = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["-u", "receive", "--from-stream=-", "--save-to=-"])
        .stdin(Stdio::from(slave))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refusing to read a stream from a terminal"),
        "{err}"
    );
    assert!(o.stdout.is_empty());
}

/// Wait until `child` is stopped (state T) or until `ready` holds, at most 120 s.
fn wait_until(child: &std::process::Child, ready: &dyn Fn(char) -> bool) {
    let stat = format!("/proc/{}/stat", child.id());
    let start = std::time::Instant::now();
    loop {
        let s = std::fs::read_to_string(&stat).unwrap_or_default();
        // The state follows the parenthesised command name.
        let state = s.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
        assert!(
            state.is_some() && state != Some('Z'),
            "the writer ended too early"
        );
        if ready(state.unwrap_or('?')) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn partial_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect()
}

/// A writer stopped by SIGTERM or SIGINT in the middle of its output removes its
/// partial file and exits with 128 + the signal (143, 130): `send --stream` stopped
/// mid-send, `receive --from-stream` waiting on a FIFO, `receive` and spbk-assemble
/// stopped after their first batch of chunks.
#[test]
fn a_writer_stopped_by_a_signal_leaves_no_partial_file() {
    // More than 50 chunks of data, so that a send reaches `send-mid-chunks`.
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(41).bytes(8 * MIB)).unwrap();
    env.send("v");
    let s0 = env.path().join("s0.tar");
    env.ok(&["send", "v", &format!("--stream={}", s0.display())]);
    let out_dir = env.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let target = out_dir.join("x.img");
    let signal = |child: std::process::Child, sig: i32, code: i32, what: &str| {
        // SAFETY: signals to our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        let o = child.wait_with_output().unwrap();
        assert_eq!(
            o.status.code(),
            Some(code),
            "{what}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(partial_files(&out_dir), Vec::<String>::new(), "{what}");
        assert!(!target.exists(), "{what}");
    };

    // send --stream, stopped mid-send (a full stream of more than 50 chunks).
    let mut c = Command::new(bin());
    c.arg("-c").arg(&env.config).args([
        "-u",
        "send",
        "v",
        "--chain=signalled",
        &format!("--stream={}", target.display()),
    ]);
    let child = c
        .env("SPARSEBAK_FAILPOINT", "send-mid-chunks:stop")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(&child, &|s| s == 'T');
    assert_eq!(
        partial_files(&out_dir).len(),
        1,
        "no partial file while sending"
    );
    signal(child, libc::SIGTERM, 143, "send --stream");

    // receive --from-stream from a FIFO that gives half a stream, then nothing.
    let fifo = env.path().join("fifo");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());
    let child = sparsebak(
        &env,
        &[
            "receive",
            &format!("--from-stream={}", fifo.display()),
            &format!("--save-to={}", target.display()),
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let half = std::fs::read(&s0).unwrap();
    let feeder = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
            let _ = f.write_all(&half[..half.len() / 2]);
            f
        })
    };
    wait_until(&child, &|_| partial_files(&out_dir).len() == 1);
    let held = feeder.join().unwrap();
    signal(child, libc::SIGINT, 130, "receive --from-stream");
    drop(held);

    // receive and spbk-assemble, stopped with their target partly written.
    let save = format!("--save-to={}", target.display());
    for (what, mut c) in [
        ("receive", sparsebak(&env, &["receive", "v", &save])),
        (
            "spbk-assemble",
            assemble(&env, &target.display().to_string()),
        ),
    ] {
        let child = c
            .env("SPARSEBAK_FAILPOINT", "restore-mid-chunks:stop")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until(&child, &|s| s == 'T');
        assert_eq!(partial_files(&out_dir).len(), 1, "{what}: no partial file");
        signal(child, libc::SIGTERM, 143, what);
    }
}

/// The regular files under `dir` with their content, lock files left out (readers
/// create those).
fn contents(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut all = Vec::new();
    walk(dir, &mut all);
    let mut out: Vec<(PathBuf, Vec<u8>)> = all
        .into_iter()
        .filter(|(p, m)| m.is_file() && !p.ends_with(".lock"))
        .map(|(p, _)| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    out.sort();
    out
}

/// A file target inside the archive (a session's manifest, the archive's marker, a new
/// file in a volume folder; given directly, through a symlink or through `..`) or
/// inside the metadir, and a stream being read, are refused by every writer before
/// anything is written: the archive is byte-identical after, verifies, and restores.
#[test]
fn targets_inside_the_archive_or_the_metadir_are_refused() {
    let (env, img, streams) = setup(9);
    let arch = env.archive();
    let sdir = env.vol_dir("v").join(format!("S_{}", env.latest("v").id));
    let link = env.path().join("to-manifest");
    std::os::unix::fs::symlink(sdir.join("manifest"), &link).unwrap();
    let dotdot = env.vol_dir("v").join("../v/new.img");
    let in_arch = "is inside the archive";
    let in_meta = "is inside the metadata folder (metadir)";
    let cases: [(PathBuf, &str); 7] = [
        (sdir.join("manifest"), in_arch),
        (arch.join("sparsebak.archive"), in_arch),
        (env.vol_dir("v").join("new.img"), in_arch),
        (link.clone(), in_arch),
        (dotdot, in_arch),
        (env.meta().join("new.img"), in_meta),
        (env.meta().join("v").join("new.img"), in_meta),
    ];
    let before = contents(&arch);
    let meta_before: Vec<PathBuf> = contents(&env.meta()).into_iter().map(|c| c.0).collect();
    let sessions = env.sessions("v").len();
    for (target, why) in &cases {
        for w in [
            Writer::Receive,
            Writer::FromStream,
            Writer::Assemble,
            Writer::SendStream,
        ] {
            if w == Writer::Assemble && *why == in_meta {
                continue; // spbk-assemble knows no metadir
            }
            let err = fails(writer(&env, &streams, w, target));
            let what = format!("{w:?} into {}", target.display());
            assert!(err.contains(why), "{what}: {err}");
            assert!(err.contains(&target.display().to_string()), "{what}: {err}");
        }
    }
    // A restore from streams onto one of the streams it reads.
    let err = fails(writer(&env, &streams, Writer::FromStream, &streams[1]));
    assert!(err.contains("is one of the streams being read"), "{err}");
    let stream_before = std::fs::read(&streams[0]).unwrap();
    let err = fails(writer(&env, &streams, Writer::FromStream, &streams[0]));
    assert!(err.contains("is one of the streams being read"), "{err}");
    assert!(std::fs::read(&streams[0]).unwrap() == stream_before);

    assert!(contents(&arch) == before, "the archive changed");
    let meta_after: Vec<PathBuf> = contents(&env.meta()).into_iter().map(|c| c.0).collect();
    assert_eq!(meta_after, meta_before, "files appeared in the metadir");
    assert_eq!(env.sessions("v").len(), sessions);
    no_partial_files(&sdir, "refused targets");
    no_partial_files(&env.vol_dir("v"), "refused targets");
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "after the refusals");

    // Another path to the archive's folder (a bind mount) is the same folder.
    if need_root("targets_inside_the_archive_or_the_metadir_are_refused") {
        let bind = env.path().join("bind");
        std::fs::create_dir(&bind).unwrap();
        let st = Command::new("mount")
            .arg("--bind")
            .arg(&arch)
            .arg(&bind)
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind");
        let _m = Mount(bind.clone());
        let target = bind.join("v").join("new.img");
        for w in [Writer::Receive, Writer::FromStream, Writer::SendStream] {
            let err = fails(writer(&env, &streams, w, &target));
            assert!(err.contains(in_arch), "{w:?} through a bind mount: {err}");
        }
        assert!(!env.vol_dir("v").join("new.img").exists());
    }
}

/// A block device set read-only (`blockdev --setro`, `losetup -r`) is refused by every
/// writer as read-only, before anything is written.
#[test]
fn read_only_block_devices_are_refused_as_such() {
    if !need_root("read_only_block_devices_are_refused_as_such") {
        return;
    }
    let (env, _img, streams) = setup(10);
    let backing = env.path().join("dev.img");
    std::fs::write(&backing, vec![0xEEu8; 8 * MIB]).unwrap();
    // The read-only flag outlives a loop device's detach: cleared on drop.
    struct SetRw(PathBuf);
    impl Drop for SetRw {
        fn drop(&mut self) {
            let _ = Command::new("blockdev")
                .arg("--setrw")
                .arg(&self.0)
                .status();
        }
    }
    let Some(lo) = Loop::new("read_only_block_devices_are_refused_as_such", &backing, 512) else {
        return;
    };
    let _rw = SetRw(lo.dev.clone());
    let st = Command::new("blockdev")
        .arg("--setro")
        .arg(&lo.dev)
        .status()
        .unwrap();
    assert!(st.success(), "blockdev --setro");
    let o = Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&backing)
        .output()
        .unwrap();
    assert!(o.status.success(), "losetup --read-only");
    let ro = Loop {
        dev: String::from_utf8_lossy(&o.stdout).trim().into(),
    };
    let _rw2 = SetRw(ro.dev.clone());
    for dev in [&lo.dev, &ro.dev] {
        for w in [
            Writer::Receive,
            Writer::FromStream,
            Writer::Assemble,
            Writer::SendStream,
        ] {
            let err = fails(writer(&env, &streams, w, dev));
            assert!(
                err.contains(&format!("{} is a read-only block device", dev.display())),
                "{w:?} into {}: {err}",
                dev.display()
            );
        }
    }
    lo.flush();
    assert!(
        std::fs::read(&backing).unwrap() == vec![0xEEu8; 8 * MIB],
        "the read-only device changed"
    );
}
