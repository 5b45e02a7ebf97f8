//! Faults found by trying the hardened commands as a new user would. Each test names
//! the fault it shows and fails until the fault is fixed.

mod common;
#[path = "common/loopdev.rs"]
mod loopdev;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopdev::{need_root, Loop};
use loopfs::{FsKind, LoopFs};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

/// One volume `v` of `size` random bytes, sent once.
fn sent(size: usize, seed: u64) -> (Env, Vec<u8>) {
    let env = Env::new(&["v"]);
    let img = Rng::new(seed).bytes(size);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    (env, img)
}

fn session_dir(env: &Env) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("S_"))
        .collect();
    dirs.sort();
    dirs.pop().unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fault: `receive --save-to` accepts a path inside the archive it reads, exits 0 and
/// overwrites the session's own manifest; the archive no longer verifies.
#[test]
fn fault_receive_into_the_archive_destroys_it() {
    let (env, _) = sent(2 * MIB, 1);
    let manifest = session_dir(&env).join("manifest");
    let o = env.run(&["receive", "v", &format!("--save-to={}", manifest.display())]);
    assert!(
        !o.status.success(),
        "receive into the archive's own manifest exited 0"
    );
    env.verify_ok("v", None);
}

/// Fault: a receive error says its context twice ("receive v session ... into T:
/// receive v: chunk ..."), and verify counts one missing chunk file as two problems
/// and says "session ID" twice on one line.
#[test]
fn fault_one_missing_chunk_is_said_more_than_once() {
    let (env, _) = sent(2 * MIB, 3);
    let sdir = session_dir(&env);
    let sub = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let mut chunks: Vec<PathBuf> = std::fs::read_dir(&sub)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    chunks.sort();
    let victim = chunks[5].clone();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&victim).unwrap();

    let target = env.path().join("out.img");
    let err = stderr(&env.run(&["receive", "v", &format!("--save-to={}", target.display())]));
    assert_eq!(err.matches("receive v").count(), 1, "{err}");

    let o = env.run(&["verify", "v"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    let id = sdir.file_name().unwrap().to_string_lossy()[2..].to_string();
    for line in err.lines() {
        assert!(line.matches(&id).count() <= 1, "session said twice: {line}");
    }
    assert_eq!(err.matches(&name).count(), 1, "{err}");
    assert!(err.contains("1 problem"), "{err}");
}

/// Fault: an error inside a stream names only "stream 1", not the file it came from.
#[test]
fn fault_stream_errors_name_no_path() {
    let (env, _) = sent(3 * MIB, 4);
    let s = env.path().join("full.stream");
    env.ok(&["send", "v", &format!("--stream={}", s.display())]);
    let bytes = std::fs::read(&s).unwrap();
    let cut = env.path().join("cut.stream");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let from = format!("--from-stream={}", cut.display());
    let target = env.path().join("r.img");
    let o = env.run(&["receive", &from, &format!("--save-to={}", target.display())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&cut.display().to_string()),
        "{}",
        stderr(&o)
    );
    let o = env.run(&["verify", &from]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(&cut.display().to_string()),
        "{}",
        stderr(&o)
    );
}

/// Fault: `receive --from-stream --save-to=-` spools under $TMPDIR; when that fills up
/// the error says "writing the volume: No space left on device" without naming
/// $TMPDIR, so the user blames standard output.
#[test]
fn fault_full_spool_directory_is_not_named() {
    let Some(fs) = LoopFs::sized("fault_full_spool", FsKind::Ext4, "", 16 << 20, &[]) else {
        return;
    };
    let (env, _) = sent(24 * MIB, 5);
    let s = env.path().join("full.stream");
    env.ok(&["send", "v", &format!("--stream={}", s.display())]);
    let o = env.run_env(
        &[
            "receive",
            &format!("--from-stream={}", s.display()),
            "--save-to=-",
        ],
        &[("TMPDIR", fs.path().to_str().unwrap())],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("No space left"), "{err}");
    assert!(err.contains(&fs.path().display().to_string()), "{err}");
}

/// Fault: a read-only block device is accepted as a target; the first write fails
/// with "Operation not permitted", which does not say the device is read-only.
#[test]
fn fault_read_only_device_is_not_refused_as_such() {
    if !need_root("fault_read_only_device") {
        return;
    }
    let (env, _) = sent(MIB, 6);
    let backing = env.path().join("dev.img");
    std::fs::write(&backing, vec![0u8; 4 * MIB]).unwrap();
    let Some(lo) = Loop::new("fault_read_only_device", &backing, 512) else {
        return;
    };
    // The read-only flag outlives the loop device's detach: clear it before.
    struct SetRwOnDrop(PathBuf);
    impl Drop for SetRwOnDrop {
        fn drop(&mut self) {
            let _ = Command::new("blockdev")
                .arg("--setrw")
                .arg(&self.0)
                .status();
        }
    }
    let _rw = SetRwOnDrop(lo.dev.clone());
    let st = Command::new("blockdev")
        .arg("--setro")
        .arg(&lo.dev)
        .status()
        .unwrap();
    assert!(st.success());
    let o = env.run(&["receive", "v", &format!("--save-to={}", lo.dev.display())]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("read-only"), "{}", stderr(&o));
}

/// Fault: with `destmountpoint` not mounted, commands that only read (list, verify,
/// receive) say "refusing to write the archive under it".
#[test]
fn fault_unmounted_destmountpoint_says_write_for_readers() {
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir_all(p.join("img")).unwrap();
    std::fs::create_dir_all(p.join("mnt")).unwrap();
    std::fs::write(p.join("img/v"), vec![1u8; 65536]).unwrap();
    let ini = p.join("c.ini");
    std::fs::write(
        &ini,
        format!(
            "[var]\nsource = file\nvoldir = {}\ndestmountpoint = {}\ndestdir = sb\nmetadir = {}\n[volumes]\nv = enable\n",
            p.join("img").display(),
            p.join("mnt").display(),
            p.join("meta").display()
        ),
    )
    .unwrap();
    for args in [&["list"][..], &["verify", "v"]] {
        let o = run_with(&ini, args);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains("mounted"), "{err}");
        assert!(!err.contains("write"), "{args:?}: {err}");
    }
}

fn run_with(ini: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .arg("-c")
        .arg(ini)
        .args(args)
        .output()
        .unwrap()
}

/// Fault: `untar` that runs out of inodes leaves its `.tmp-untar-S_*` folder behind,
/// holding every inode; sends of other volumes then fail until a send of that same
/// volume happens to clean it up. Its error does not say that inodes ran out.
#[test]
fn fault_failed_untar_leaves_the_archive_full() {
    let Some(fs) = LoopFs::sized(
        "fault_untar_full",
        FsKind::Ext4,
        "",
        64 << 20,
        &["-N", "64"],
    ) else {
        return;
    };
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir_all(p.join("img")).unwrap();
    let mut rng = Rng::new(8);
    std::fs::write(p.join("img/big"), rng.bytes(24 * MIB)).unwrap();
    std::fs::write(p.join("img/small"), rng.bytes(MIB)).unwrap();
    let ini = p.join("c.ini");
    let archive = fs.path().join("sb");
    std::fs::write(
        &ini,
        format!(
            "[var]\nsource = file\nvoldir = {}\ndestdir = {}\nmetadir = {}\n[volumes]\nbig = enable\nsmall = enable\n",
            p.join("img").display(),
            archive.display(),
            p.join("meta").display()
        ),
    )
    .unwrap();
    assert!(run_with(&ini, &["send", "--tarfile", "big"])
        .status
        .success());
    let o = run_with(&ini, &["-u", "untar", "big"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "untar of 384 chunks into ~180 inodes"
    );
    let err = stderr(&o);
    assert!(err.contains("inode"), "{err}");
    let left: Vec<String> = std::fs::read_dir(archive.join("big"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let o = run_with(&ini, &["send", "small"]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Fault: a send into an archive whose filesystem has no free inode at all fails at
/// its first folder with a bare "No space left on device": no word of inodes, though
/// the README promises it.
#[test]
fn fault_send_with_no_inode_left_is_not_explained() {
    let Some(fs) = LoopFs::sized("fault_no_inode", FsKind::Ext4, "", 32 << 20, &["-N", "64"])
    else {
        return;
    };
    let env = Env::new(&["v"]);
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destdir = {}", fs.path().join("sb").display()),
    );
    std::fs::write(&env.config, ini).unwrap();
    std::fs::write(env.image("v"), Rng::new(9).bytes(MIB)).unwrap();
    env.send("v");
    let filler = fs.path().join("filler");
    std::fs::create_dir(&filler).unwrap();
    for i in 0.. {
        if std::fs::File::create(filler.join(format!("f{i}"))).is_err() {
            break;
        }
    }
    env.write_at("v", 0, &[7u8; 100]);
    let o = env.run(&["send", "v"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("No space left"), "{err}");
    assert!(err.contains("inode"), "{err}");
}

/// Fault: `send --stream=-` with standard output a terminal writes the binary stream
/// to the terminal (and records it in the chain), where `receive --save-to=-`
/// refuses a terminal.
#[test]
fn fault_stream_send_writes_binary_to_a_terminal() {
    use std::io::Read;
    use std::os::fd::{FromRawFd, OwnedFd};
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(10).bytes(MIB)).unwrap();
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
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["-u", "send", "--stream=-", "v"])
        .stdout(std::process::Stdio::from(slave))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(master);
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("send --stream=- onto a terminal did not finish");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let got = reader.join().unwrap();
    let needle = b"sparsebak-stream/header";
    let wrote = got.windows(needle.len()).any(|w| w == needle);
    assert!(
        !wrote,
        "the stream went to the terminal ({} bytes)",
        got.len()
    );
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("terminal"), "{err}");
}

fn assemble_bin() -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-q", "-p", "spbk-assemble"])
            .status()
            .unwrap();
        assert!(st.success());
    });
    bin().with_file_name("spbk-assemble")
}

/// Fault: after a prune was interrupted (power cut), `spbk-assemble` of the latest
/// session fails with a bare "chunk ...: No such file or directory" on a chunk the
/// journal moved; it says nothing of the interrupted prune or how to finish it,
/// though `sparsebak list` would finish it and the session is whole.
#[test]
fn fault_assemble_after_interrupted_prune_blames_a_missing_chunk() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(11);
    let mut v = rng.bytes(8 * 65536);
    for i in 0..3 {
        rng.fill(&mut v[i * 65536..i * 65536 + 10]);
        env.write_at("v", 0, &v);
        env.send("v");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-mid-move")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    let out = env.path().join("a.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    if o.status.success() {
        assert_eq!(std::fs::read(&out).unwrap(), v, "assembled image");
    } else {
        let err = stderr(&o);
        assert!(err.contains("prune"), "{err}");
    }
}

/// Fault: `send --stream=PATH` overwrites an existing file, or a block device holding
/// data, without asking and without `-u`, where `receive --save-to` refuses both
/// ("exists; not overwriting it"), and the README says stream files are handled "as
/// for receive".
#[test]
fn fault_stream_send_overwrites_without_asking() {
    if !need_root("fault_stream_send_overwrites") {
        return;
    }
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(12).bytes(MIB)).unwrap();
    let file = env.path().join("precious");
    std::fs::write(&file, b"keep me").unwrap();
    let backing = env.path().join("dev.img");
    let data = Rng::new(13).bytes(4 * MIB);
    std::fs::write(&backing, &data).unwrap();
    let Some(lo) = Loop::new("fault_stream_send_overwrites", &backing, 512) else {
        return;
    };
    for target in [file.clone(), lo.dev.clone()] {
        let o = Command::new(bin())
            .arg("-c")
            .arg(&env.config)
            .args(["send", "v", &format!("--stream={}", target.display())])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(1),
            "{}: {}",
            target.display(),
            stderr(&o)
        );
        assert!(stderr(&o).contains("not overwriting"), "{}", stderr(&o));
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    lo.flush();
    assert_eq!(std::fs::read(&backing).unwrap(), data);
}

/// Fault: with an archive at destdir that the metadir does not know, two `send
/// --stream` runs of two volumes at the same time (one catalog) fail with "catalog ...: database is locked"; the failed run
/// has already kept its session copy, so the next sends of that volume fail with
/// "S_<id>: Directory not empty", and later the chain is declared damaged ("start a
/// new chain with --chain").
#[test]
fn fault_concurrent_stream_sends_break_the_chain() {
    let env = Env::new(&["a", "b"]);
    let mut rng = Rng::new(14);
    std::fs::write(env.image("a"), rng.bytes(6 * MIB)).unwrap();
    std::fs::write(env.image("b"), rng.bytes(5 * MIB)).unwrap();
    let out = env.path().join("streams");
    std::fs::create_dir(&out).unwrap();
    let stream = |vol: &str, n: u32| format!("--stream={}/{vol}{n}", out.display());
    // An archive this metadir does not know yet (a new metadir, a reinstalled
    // machine): every stream send then writes the catalog.
    env.send("a");
    std::fs::remove_dir_all(env.meta()).unwrap();
    env.ok(&["send", "a", &stream("a", 0)]);
    env.ok(&["send", "b", &stream("b", 0)]);
    for round in 1..=6u32 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // The volumes grow a little between sends (as `echo >> image` does).
        for vol in ["a", "b"] {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(env.image(vol))
                .unwrap();
            f.write_all(&rng.bytes(2)).unwrap();
        }
        let spawn = |vol: &str| {
            Command::new(bin())
                .arg("-c")
                .arg(&env.config)
                .args(["-u", "send", vol, &stream(vol, round)])
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (ca, cb) = (spawn("a"), spawn("b"));
        for (vol, c) in [("a", ca), ("b", cb)] {
            let o = c.wait_with_output().unwrap();
            assert!(
                o.status.success(),
                "round {round}, volume {vol}: {}",
                stderr(&o)
            );
        }
    }
}
