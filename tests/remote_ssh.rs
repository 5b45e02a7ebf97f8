//! Remote archives over a real OpenSSH server on 127.0.0.1 (`common/sshd.rs`): what
//! the far side sends back is byte for byte what the archive holds, and each way of
//! failing to reach it is one clear line.

mod common;
use common::*;
#[path = "common/loopfs.rs"]
mod loopfs;
#[path = "common/sshd.rs"]
mod sshd;

use std::io::Read;
use std::sync::{Arc, Mutex};

use loopfs::{FsKind, LoopFs};
use sparsebak::format::store::{FolderStore, VolumeStore};
use sparsebak::remote::{parse_destvm, Connection, RemoteSpec, RemoteStore};
use sshd::*;

const CS: usize = 65536;

/// A volume with a folder session, an incremental and a tar session.
fn archive_of_three(env: &Env) -> Vec<u8> {
    let mut rng = Rng::new(41);
    let mut img = rng.bytes(40 * CS);
    img[5 * CS..9 * CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[20 * CS..23 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    img[2 * CS + 3] ^= 0x55;
    std::fs::write(env.image("v"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.ok(&["send", "--tarfile", "v"]);
    img
}

fn spec(sshd: &Sshd, destcmd: &str) -> RemoteSpec {
    RemoteSpec {
        transport: parse_destvm(&sshd.destvm()).unwrap(),
        destcmd: destcmd.into(),
        sshopts: sshd
            .sshopts()
            .split_whitespace()
            .map(String::from)
            .collect(),
    }
}

#[test]
fn list_over_ssh_says_what_list_says_here() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    archive_of_three(&env);
    let local = env.ok(&["list"]);
    let remote_cfg = add_to_var(&env.config, &remote_lines(&sshd.destvm(), &sshd.sshopts()));
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&remote_cfg)
        .arg("list")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), local);
    assert_eq!(local.lines().count(), 4, "{local}");
}

#[test]
fn every_read_of_a_remote_volume_is_byte_identical() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    archive_of_three(&env);
    let conn = Connection::open(
        &spec(&sshd, bin().to_str().unwrap()),
        &env.archive(),
        None,
        false,
    )
    .unwrap();
    assert_eq!(conn.far_version(), env!("CARGO_PKG_VERSION"));
    let conn = Arc::new(Mutex::new(conn));
    let remote = RemoteStore::new(conn.clone(), "v");
    let local = FolderStore::new(&env.vol_dir("v"));
    assert!(remote.exists());
    assert!(!RemoteStore::new(conn.clone(), "nosuch").exists());
    assert_eq!(
        remote.label(),
        format!("{}{}/v", sshd.destvm(), env.archive().display())
    );
    let ids = local.sessions().unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(remote.sessions().unwrap(), ids);
    let mut chunks = 0;
    for id in &ids {
        assert_eq!(remote.storage(id), local.storage(id), "{id}");
        assert_eq!(
            remote.info_bytes(id).unwrap(),
            local.info_bytes(id).unwrap()
        );
        assert_eq!(
            remote.manifest_len(id).unwrap(),
            local.manifest_len(id).unwrap()
        );
        let mut a = Vec::new();
        remote
            .manifest_bytes(id)
            .unwrap()
            .read_to_end(&mut a)
            .unwrap();
        let mut b = Vec::new();
        local
            .manifest_bytes(id)
            .unwrap()
            .read_to_end(&mut b)
            .unwrap();
        assert_eq!(a, b, "manifest of {id}");
        let info_text = String::from_utf8(local.info_bytes(id).unwrap()).unwrap();
        let info =
            sparsebak::format::info::SessionInfo::parse(&info_text, std::path::Path::new("info"))
                .unwrap();
        // Every data line's chunk, in one batch, plus an address that has none.
        let addrs: Vec<u64> = String::from_utf8(b)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("0 "))
            .map(|l| {
                u64::from_str_radix(
                    l.split_whitespace().nth(1).unwrap().trim_start_matches('x'),
                    16,
                )
                .unwrap()
            })
            .collect();
        assert!(!addrs.is_empty());
        let r = remote.read_stored(&info, &addrs);
        let l = local.read_stored(&info, &addrs);
        assert_eq!(r.len(), addrs.len());
        for ((a, r), l) in addrs.iter().zip(r).zip(l) {
            assert_eq!(r.unwrap(), l.unwrap(), "chunk {a:#x} of {id}");
            chunks += 1;
        }
        let missing = remote.read_stored(&info, &[39 * CS as u64 + (1 << 30)]);
        assert!(missing[0].is_err());
    }
    assert_eq!(chunks, 36 + 3 + 1);
    drop(remote);
    Arc::try_unwrap(conn)
        .unwrap()
        .into_inner()
        .unwrap()
        .close()
        .unwrap();
}

fn remote_env(
    env: &Env,
    destvm: &str,
    destcmd: &str,
    sshopts: &str,
    destdir: Option<&str>,
) -> std::path::PathBuf {
    let lines = format!("destvm = {destvm}\ndestcmd = {destcmd}\nsshopts = {sshopts}\n");
    let cfg = env.config.clone();
    if let Some(d) = destdir {
        let ini = std::fs::read_to_string(&cfg).unwrap();
        let ini = ini.replace(
            &format!("destdir = {}", env.archive().display()),
            &format!("destdir = {d}"),
        );
        let p = env.path().join("other.ini");
        std::fs::write(&p, ini).unwrap();
        return add_to_var(&p, &lines);
    }
    add_to_var(&cfg, &lines)
}

fn list_fails(cfg: &std::path::Path) -> String {
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(cfg)
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let e = String::from_utf8(o.stderr).unwrap();
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    e
}

#[test]
fn each_way_of_not_reaching_the_archive_is_one_clear_line() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), vec![1u8; 4 * CS]).unwrap();
    env.send("v");
    let me = bin().display().to_string();
    let opts = sshd.sshopts();

    // Nobody listens on the port.
    let port = free_port();
    let e = list_fails(&remote_env(
        &env,
        &format!("ssh://root@127.0.0.1:{port}"),
        &me,
        &opts,
        None,
    ));
    assert!(e.contains(&format!("destination ssh://root@127.0.0.1:{port}{}: cannot reach it: ssh: connect to host 127.0.0.1 port {port}: Connection refused", env.archive().display())), "{e}");

    // The far side has no such command.
    let e = list_fails(&remote_env(
        &env,
        &sshd.destvm(),
        "/nonexistent/sparsebak",
        &opts,
        None,
    ));
    assert!(
        e.contains("the far side has no command \"/nonexistent/sparsebak\" (destcmd)"),
        "{e}"
    );
    assert!(e.contains("No such file or directory"), "{e}");

    // destdir is not there.
    let e = list_fails(&remote_env(
        &env,
        &sshd.destvm(),
        &me,
        &opts,
        Some("/nonexistent/archive"),
    ));
    assert!(
        e.contains(&format!(
            "destination {}/nonexistent/archive: destdir /nonexistent/archive: no such folder",
            sshd.destvm()
        )),
        "{e}"
    );

    // destdir is a folder without an archive.
    let empty = env.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let e = list_fails(&remote_env(
        &env,
        &sshd.destvm(),
        &me,
        &opts,
        Some(empty.to_str().unwrap()),
    ));
    assert!(
        e.contains(&format!("{}: no archive", empty.display())),
        "{e}"
    );

    // destmountpoint is checked over there.
    let mp = env.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let cfg = remote_env(&env, &sshd.destvm(), &me, &opts, None);
    let ini = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("destdir = {}", env.archive().display()),
        &format!("destmountpoint = {}\ndestdir = x", mp.display()),
    );
    std::fs::write(&cfg, ini).unwrap();
    let e = list_fails(&cfg);
    assert!(e.contains(&format!("destmountpoint {} is not a mounted filesystem: the archive's disk is not mounted there", mp.display())), "{e}");

    // A far side of another version: a stand-in that answers with a hello of
    // protocol 99 from sparsebak 9.9.9.
    let mut hello = Vec::new();
    hello.extend_from_slice(b"SPBKWIRE");
    hello.extend_from_slice(&99u32.to_le_bytes());
    hello.extend_from_slice(&5u32.to_le_bytes());
    hello.extend_from_slice(b"9.9.9");
    hello.extend_from_slice(&0u32.to_le_bytes());
    hello.extend_from_slice(&[0, 0]);
    let mut frame = ((hello.len() + 1) as u32).to_le_bytes().to_vec();
    frame.push(1);
    frame.extend_from_slice(&hello);
    std::fs::write(env.path().join("hello99"), &frame).unwrap();
    let fake = env.path().join("future-sparsebak");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncat '{}'\nexec cat >/dev/null\n",
            env.path().join("hello99").display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let e = list_fails(&remote_env(
        &env,
        &sshd.destvm(),
        fake.to_str().unwrap(),
        &opts,
        None,
    ));
    assert!(e.contains(&format!("protocol version mismatch: this side is sparsebak {} (protocol {}), the far side is sparsebak 9.9.9 (protocol 99)", env!("CARGO_PKG_VERSION"), sparsebak::remote::proto::PROTOCOL_VERSION)), "{e}");
}

#[test]
fn a_forced_command_confines_the_key_to_its_folder() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), vec![3u8; 4 * CS]).unwrap();
    env.send("v");
    // The authorized_keys line the README gives, with the archive's folder.
    let sshd = Sshd::start_with(&format!(
        "command=\"{} serve {}\",restrict ",
        bin().display(),
        env.archive().display()
    ));
    let me = bin().display().to_string();
    let local = env.ok(&["list"]);
    // The client's command line is ignored; its hello names the folder.
    let cfg = remote_env(&env, &sshd.destvm(), "whatever", &sshd.sshopts(), None);
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&cfg)
        .arg("list")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), local);
    // Another folder is refused by the far side.
    let e = list_fails(&remote_env(
        &env,
        &sshd.destvm(),
        &me,
        &sshd.sshopts(),
        Some("/etc"),
    ));
    assert!(
        e.contains(&format!(
            "destdir /etc is outside {}, the folder this server serves",
            env.archive().display()
        )),
        "{e}"
    );
}

/// An env whose archive is reached over ssh: its config names `destvm`, `destcmd` and
/// `sshopts`; destdir is the same folder, so the test can look at the files.
fn over_ssh(sshd: &Sshd, volumes: &[&str], extra: &str) -> Env {
    let env = Env::with_settings(volumes, extra);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replacen(
            "[var]\nencrypt = off\n",
            &format!(
                "[var]\nencrypt = off\n{}",
                remote_lines(&sshd.destvm(), &sshd.sshopts())
            ),
            1,
        ),
    )
    .unwrap();
    env
}

fn chunk_file(env: &Env, id: &str, addr: u64) -> std::path::PathBuf {
    env.vol_dir("v")
        .join(format!("S_{id}"))
        .join(sparsebak::format::layout::chunk_rel_path(addr))
}

fn all_whole(env: &Env, versions: &[Vec<u8>], ids: &[String]) {
    for (k, id) in ids.iter().enumerate() {
        env.verify_ok("v", Some(id));
        assert_same(&env.receive("v", Some(id)), &versions[k], id);
    }
}

#[test]
fn send_receive_verify_diff_and_untar_over_ssh() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let mut rng = Rng::new(9);
    let mut img = rng.bytes(24 * CS);
    img[4 * CS..8 * CS].fill(0);
    let mut versions = Vec::new();
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    versions.push(img.clone());
    rng.fill(&mut img[10 * CS..12 * CS]);
    img[20 * CS..21 * CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.ok(&["send", "--tarfile", "v"]);
    versions.push(img.clone());
    img[2 * CS] ^= 1;
    std::fs::write(env.image("v"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.send("v");
    versions.push(img.clone());

    let s = env.sessions("v");
    let ids: Vec<String> = s.iter().map(|s| s.id.clone()).collect();
    assert_eq!(
        s.iter().map(|s| s.changed).collect::<Vec<_>>(),
        [20, 3, 1],
        "changed chunks of the full send, the tar session and the last one"
    );
    assert!(env.vol_dir("v").join(format!("S_{}.tar", ids[1])).is_file());
    assert!(env.vol_dir("v").join(format!("S_{}", ids[2])).is_dir());
    all_whole(&env, &versions, &ids);

    // diff between sessions (manifests read over the link) and against the volume.
    let d = env.diff_sessions("v", &ids[0], &ids[2], true);
    assert!(d.contains("655360") && d.contains("131072"), "{d}");
    let live = env.ok(&["diff", "v", &format!("--session={}", ids[2])]);
    assert_eq!(
        live.trim(),
        format!(
            "v: {} -> live: 0 chunk(s) in 0 range(s) differ, 0 B",
            ids[2]
        ),
        "the volume is what the last session holds"
    );

    // untar converts the tar session over there; it restores the same.
    env.ok(&["untar", "v", &format!("--session={}", ids[1])]);
    assert!(!env.vol_dir("v").join(format!("S_{}.tar", ids[1])).exists());
    assert!(env.vol_dir("v").join(format!("S_{}", ids[1])).is_dir());
    all_whole(&env, &versions, &ids);

    // A damaged chunk is found by verify over the link, naming its file over there.
    let bad = chunk_file(&env, &ids[0], 0);
    let mut b = std::fs::read(&bad).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let err = env.fails(&["verify", "v", &format!("--session={}", ids[0])]);
    assert!(err.contains(&bad.display().to_string()), "{err}");
}

#[test]
fn prune_and_prune_auto_over_ssh() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "keep = last:1");
    let (versions, ids) = three_sessions(&env, 21);
    env.ok(&["prune", "v", &format!("--session={}", ids[0])]);
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, ids[1..]);
    all_whole(&env, &versions[1..], &ids[1..]);
    assert!(!env.vol_dir("v").join(format!("S_{}", ids[0])).exists());
    env.ok(&["prune", "--auto", "v"]);
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, ids[2..]);
    all_whole(&env, &versions[2..], &ids[2..]);
    assert!(!env.vol_dir("v").join(".prune-journal").exists());
}

#[test]
fn repair_and_delete_over_ssh() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v", "w"], "");
    let (versions, ids) = three_sessions(&env, 33);
    let gone = chunk_file(&env, &ids[0], 5 * CS as u64);
    std::fs::remove_file(&gone).unwrap();
    std::fs::write(env.vol_dir("v").join(format!("S_{}/info", ids[1])), "").unwrap();
    let err = env.fails(&["verify", "v"]);
    assert!(err.contains("sparsebak repair v"), "{err}");
    let out = env.ok(&["repair", "v"]);
    assert!(
        out.contains(&format!(
            "v: re-created chunk x0000000000050000 of session {} from volume v (it was missing)",
            ids[0]
        )),
        "{out}"
    );
    assert!(out.contains("v: repaired 2 file(s)"), "{out}");
    assert!(gone.is_file());
    all_whole(&env, &versions, &ids);

    std::fs::write(env.image("w"), Rng::new(3).bytes(3 * CS)).unwrap();
    env.send("w");
    env.ok(&["delete", "v"]);
    assert!(!env.vol_dir("v").exists());
    let out = env.ok(&["list", "w"]);
    assert_eq!(out.lines().count(), 2, "{out}");
    assert_eq!(env.receive("w", None), Rng::new(3).bytes(3 * CS));
}

/// The first process for which `is_it(pid)` holds, waiting up to 30 s for it to
/// appear; `what` names it in the failure.
fn wait_for_process(what: &str, is_it: impl Fn(u32) -> bool) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        for ent in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = ent.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if is_it(pid) {
                return pid;
            }
        }
        assert!(std::time::Instant::now() < deadline, "no {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// The pid of the `ssh` child of process `parent`, once it is there.
fn ssh_child(parent: u32) -> u32 {
    wait_for_process(&format!("ssh child of {parent}"), |pid| {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // pid (comm) state ppid ...
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            return false;
        };
        let comm = &stat[open + 1..close];
        let ppid: u32 = stat[close + 2..]
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        ppid == parent && comm == "ssh"
    })
}

/// Chunk files in the staging folders of volume `v` (what the far side has written).
fn staged_chunks(env: &Env) -> usize {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(env.vol_dir("v")) else {
        return 0;
    };
    for ent in rd.flatten() {
        let name = ent.file_name().to_string_lossy().into_owned();
        if !name.starts_with(".tmp-S_") {
            continue;
        }
        for sub in std::fs::read_dir(ent.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if sub.path().is_dir() {
                n += std::fs::read_dir(sub.path())
                    .map(|r| r.count())
                    .unwrap_or(0);
            }
        }
    }
    n
}

/// Start `send v` in the background and return once the far side has staged at least
/// `n` chunks of the new session.
fn send_until_staged(env: &Env, n: usize) -> std::process::Child {
    let child = std::process::Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["send", "v"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while staged_chunks(env) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the send wrote nothing over there"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child
}

#[test]
fn a_dropped_link_fails_the_send_and_the_next_one_completes() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let mut rng = Rng::new(77);
    let first = rng.bytes(8 * CS);
    std::fs::write(env.image("v"), &first).unwrap();
    env.send("v");
    let img = rng.bytes(48 << 20);
    std::fs::write(env.image("v"), &img).unwrap();
    // Cut the link once the far side has written some chunks of the new session.
    let child = send_until_staged(&env, 40);
    let ssh = ssh_child(child.id());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ssh as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    let err = String::from_utf8(o.stderr).unwrap();
    let label = format!("{}{}", sshd.destvm(), env.archive().display());
    assert!(
        err.contains(&format!(
            "destination {label}: the connection was lost (ssh ended: signal: 9 (SIGKILL))"
        )),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // The archive still verifies and holds only the first session.
    assert_eq!(env.sessions("v").len(), 1);
    env.verify_ok("v", None);
    // What the far side had stored is kept, durable, for the next send.
    let kept: Vec<_> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".resume-S_"))
        .map(|e| e.path())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut kept_chunks = 0usize;
    let mut kept_bytes = 0u64;
    for sub in std::fs::read_dir(&kept[0]).unwrap().flatten() {
        if sub.path().is_dir() {
            for f in std::fs::read_dir(sub.path()).unwrap().flatten() {
                kept_chunks += 1;
                kept_bytes += f.metadata().unwrap().len();
            }
        }
    }
    assert!(kept_chunks >= 40, "{kept_chunks}");
    // The next send completes, takes over every kept chunk instead of sending it,
    // says so, and restores byte-identical.
    let o = env.run(&["-v", "send", "v"]);
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "v: resumed {kept_chunks} chunk(s), {kept_bytes} byte(s) stored, that an interrupted send had left at {label}; they were not sent again"
        )),
        "{err}"
    );
    assert!(
        !kept[0].exists(),
        "the kept folder goes once the session is committed"
    );
    let s = env.sessions("v");
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].changed, (48 << 20) / CS as u64);
    env.verify_ok("v", None);
    assert_same(&env.receive("v", None), &img, "after the dropped link");
    let left: Vec<String> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// The pid of the `sparsebak serve` process serving `archive`, once it is there.
fn far_server(archive: &std::path::Path) -> u32 {
    let want = format!("serve\0--\0{}\0", archive.display());
    wait_for_process("far server", |pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmd| String::from_utf8_lossy(&cmd).contains(&want))
    })
}

#[test]
fn a_far_side_killed_mid_send_leaves_nothing_the_next_send_trips_on() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let mut rng = Rng::new(78);
    std::fs::write(env.image("v"), rng.bytes(4 * CS)).unwrap();
    env.send("v");
    let img = rng.bytes(32 << 20);
    std::fs::write(env.image("v"), &img).unwrap();
    let child = send_until_staged(&env, 20);
    let far = far_server(&env.archive());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(far as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8(o.stderr).unwrap();
    let label = format!("{}{}", sshd.destvm(), env.archive().display());
    assert!(
        err.contains(&format!("destination {label}: the connection was lost")),
        "{err}"
    );
    // A crashed far side keeps nothing: its staging and journal are swept by the
    // next writer, which completes.
    env.send("v");
    env.verify_ok("v", None);
    assert_same(
        &env.receive("v", None),
        &img,
        "after the far side was killed",
    );
    let left: Vec<String> = std::fs::read_dir(env.vol_dir("v"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// `send --dest=all` with a far side among the destinations: a host that does not
/// answer is skipped and named (the run succeeds when the present ones did), a host
/// that answers but fails is a failure, and a working one gets its own session.
#[test]
fn dest_all_skips_a_host_that_does_not_answer_and_fails_one_that_does() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), vec![3u8; 4 * CS]).unwrap();
    let far_dir = env.path().join("far-archive");
    std::fs::create_dir(&far_dir).unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let with = |far: &str, destcmd: &str| {
        let p = env.path().join("dests.ini");
        std::fs::write(
            &p,
            format!(
                "{ini}\n[dest:far]\ndestvm = {far}\ndestdir = {}\ndestcmd = {destcmd}\nsshopts = {}\n",
                far_dir.display(),
                sshd.sshopts()
            ),
        )
        .unwrap();
        p
    };
    let send_all = |cfg: &std::path::Path| {
        std::process::Command::new(bin())
            .arg("-c")
            .arg(cfg)
            .args(["send", "--dest=all"])
            .output()
            .unwrap()
    };
    let me = bin().display().to_string();

    // Nobody listens where the far host should be: skipped, named, exit 0.
    let port = free_port();
    let o = send_all(&with(&format!("ssh://root@127.0.0.1:{port}"), &me));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert!(e.contains("destination far skipped: "), "{e}");
    assert!(e.contains("Connection refused"), "{e}");
    let sessions = |dir: &std::path::Path| -> Vec<String> {
        names_in(dir)
            .into_iter()
            .filter(|n| n.starts_with("S_"))
            .collect()
    };
    assert_eq!(sessions(&env.archive().join("v")).len(), 1, "{e}");
    assert!(!far_dir.join("v").exists(), "{e}");

    // The host answers but the far side cannot run: a failure, exit 1, while the
    // local destination still got its (unchanged, so no new) session.
    let o = send_all(&with(&sshd.destvm(), "/nonexistent/sparsebak"));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains("send --dest=all: failed on 1 of 2 present destination(s): far"),
        "{e}"
    );

    // Both present and working: the far archive gets its own full session.
    let o = send_all(&with(&sshd.destvm(), &me));
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{e}");
    assert_eq!(sessions(&far_dir.join("v")).len(), 1, "{e}");
    assert_eq!(sessions(&env.archive().join("v")).len(), 1, "{e}");
}

/// A far side that does not speak the protocol (a login banner, garbage, silence) ends
/// the command in seconds with one line saying what came, never a hang: a nightly job
/// must not wait for ever on a misconfigured host.
#[test]
fn a_far_side_that_does_not_speak_the_protocol_never_holds_the_run() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), vec![1u8; 4 * CS]).unwrap();
    env.send("v");
    let opts = sshd.sshopts();
    let script = |name: &str, body: &str| {
        let p = env.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        p.display().to_string()
    };
    let list = |destcmd: &str, timeout: &str| {
        let cfg = remote_env(&env, &sshd.destvm(), destcmd, &opts, None);
        let t = std::time::Instant::now();
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .args(["list", "v"])
            .env("SPARSEBAK_REMOTE_TIMEOUT", timeout)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let e = String::from_utf8(o.stderr).unwrap();
        assert_eq!(o.status.code(), Some(1), "{e}");
        assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
        (e, t.elapsed())
    };
    let me = bin().display().to_string();

    // A banner before the real program (a wrapper, a login script).
    let banner = script(
        "banner.sh",
        &format!("echo 'Welcome to backup host'; exec {me} \"$@\""),
    );
    let (e, took) = list(&banner, "60");
    assert!(
        e.contains(
            "the far side does not speak sparsebak's protocol; it sent \"Welcome to backup host\""
        ),
        "{e}"
    );
    assert!(took < std::time::Duration::from_secs(15), "{took:?}: {e}");

    // Bytes that are not text, from a far side that goes on reading its input.
    let garbage = script(
        "garbage.sh",
        "head -c 100000 /dev/urandom | tr -d '\\000-\\037'; head -c 5000 /dev/urandom; exec cat >/dev/null",
    );
    let (e, took) = list(&garbage, "60");
    assert!(
        e.contains("the far side does not speak sparsebak's protocol"),
        "{e}"
    );
    assert!(took < std::time::Duration::from_secs(15), "{took:?}: {e}");

    // Silence: nothing ever comes back.
    let silent = script("silent.sh", "exec sleep 600");
    let (e, took) = list(&silent, "2");
    assert!(
        e.contains("the far side did not answer within 2 s (its greeting never came)"),
        "{e}"
    );
    assert!(took < std::time::Duration::from_secs(15), "{took:?}: {e}");
    assert!(took >= std::time::Duration::from_secs(2), "{took:?}: {e}");
}

/// A send that fails because the far side's disk is full gives its session up over
/// there: nothing is kept for a resume (only a dropped link keeps chunks), so the
/// disk is not left full and the next send has the room it had before.
#[test]
fn a_full_far_disk_keeps_nothing_for_a_resume() {
    let Some(fs) = LoopFs::sized(
        "a_full_far_disk_keeps_nothing_for_a_resume",
        FsKind::Ext4,
        "",
        16 << 20,
        &[],
    ) else {
        return;
    };
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let mut rng = Rng::new(79);
    std::fs::write(env.image("v"), rng.bytes(4 * CS)).unwrap();
    env.send("v");
    // The archive moves onto a small filesystem (the config names it through a link).
    let small = fs.path().join("archive");
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(env.archive())
        .arg(&small)
        .status()
        .unwrap();
    assert!(o.success());
    std::fs::remove_dir_all(env.archive()).unwrap();
    std::os::unix::fs::symlink(&small, env.archive()).unwrap();
    let free_before = free_bytes(fs.path());
    std::fs::write(env.image("v"), rng.bytes(32 << 20)).unwrap();
    let o = env.run(&["send", "v"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("No space left on device"), "{e}");
    let left: Vec<String> = names_in(&small.join("v"))
        .into_iter()
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(left.is_empty(), "{left:?}: {e}");
    let free_after = free_bytes(fs.path());
    assert!(
        free_after + (256 << 10) >= free_before,
        "{free_after} < {free_before}"
    );
}

/// Bytes free for an unprivileged writer on the filesystem holding `p`.
fn free_bytes(p: &std::path::Path) -> u64 {
    let s = nix::sys::statvfs::statvfs(p).unwrap();
    s.blocks_available() as u64 * s.fragment_size() as u64
}

/// Over ssh (plain archive): after `rename`, `repair` of the new name puts back a
/// damaged chunk of a session sent before it (the infos still name the old name);
/// then the far folder put back to an older copy: list warns, receive of the latest
/// refuses, a session named by its ID restores.
#[test]
fn repair_after_rename_and_a_rolled_back_far_side_over_ssh() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let mut img = Rng::new(41).bytes(8 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let kept = env.latest("v").id;
    std::fs::rename(env.image("v"), env.image("v2")).unwrap();
    env.ok(&["rename", "v", "v2"]);
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replacen("[volumes]\nv = enable\n", "[volumes]\nv2 = enable\n", 1),
    )
    .unwrap();
    let bad = env
        .vol_dir("v2")
        .join(format!("S_{kept}"))
        .join(sparsebak::format::layout::chunk_rel_path(2 * CS as u64));
    let mut b = std::fs::read(&bad).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&bad, &b).unwrap();
    let err = env.fails(&["verify", "v2"]);
    assert!(err.contains("sparsebak repair v2"), "{err}");
    let out = env.ok(&["repair", "--dry-run", "v2"]);
    assert!(
        out.contains("v2: would re-create chunk x0000000000020000"),
        "{out}"
    );
    assert_eq!(std::fs::read(&bad).unwrap(), b, "a dry run changes nothing");
    let out = env.ok(&["repair", "v2"]);
    assert!(out.contains("v2: repaired 1 file(s)"), "{out}");
    env.verify_ok("v2", None);

    let saved = env.path().join("saved-folder");
    let cp = |from: &std::path::Path, to: &std::path::Path| {
        let o = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    cp(&env.vol_dir("v2"), &saved);
    let want = img.clone();
    img[CS..2 * CS].fill(0x77);
    std::fs::write(env.image("v2"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    env.send("v2");
    let lost = env.latest("v2").id;
    assert_ne!(lost, kept);
    std::fs::remove_dir_all(env.vol_dir("v2")).unwrap();
    cp(&saved, &env.vol_dir("v2"));
    rolled_back_list_and_receive(&env, "v2", &lost, &kept, &want);
}

/// `env`'s config with its far side's answers cut after `bytes` (the link dies in the
/// middle of the run, as when ssh is killed): a config file beside it.
fn cut_link(env: &Env, bytes: usize) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let script = env.path().join("cut-link");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf=$(mktemp -u)\nmkfifo \"$f\"\nexec 3<&0\n\"{}\" \"$@\" <&3 >\"$f\" &\n\
             p=$!\nstdbuf -o0 head -c {bytes} <\"$f\"\nkill -9 $p\nrm -f \"$f\"\n",
            bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let from = format!("destcmd = {}\n", bin().display());
    assert!(ini.contains(&from), "{ini}");
    let cfg = env.path().join("cut.ini");
    std::fs::write(
        &cfg,
        ini.replacen(&from, &format!("destcmd = {}\n", script.display()), 1),
    )
    .unwrap();
    cfg
}

#[test]
fn a_link_lost_in_the_middle_is_one_line_not_damage() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "keep = last:1");
    let (versions, ids) = three_sessions(&env, 57);
    let cfg = cut_link(&env, 400_000);
    for args in [vec!["verify", "v"], vec!["receive", "v", "--save-to"]] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args[0] == "receive" {
            let out = env.path().join("restored");
            let last = args.pop().unwrap();
            args.push(format!("{last}={}", out.display()));
        }
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&cfg)
            .arg("-u")
            .args(&args)
            .output()
            .unwrap();
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {e}");
        let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {e}");
        assert!(
            lines[0].starts_with(&format!(
                "sparsebak: error: destination {}{}: the connection was lost",
                sshd.destvm(),
                env.archive().display()
            )),
            "{args:?}: {e}"
        );
        assert!(
            !e.contains("repair") && !e.contains("chunk"),
            "{args:?}: {e}"
        );
    }
    // Nothing was damaged: over a whole link, all is there.
    all_whole(&env, &versions, &ids);
}

#[test]
fn a_reader_of_a_plain_remote_archive_finishes_an_interrupted_prune() {
    let sshd = Sshd::start();
    let env = over_ssh(&sshd, &["v"], "");
    let (versions, ids) = three_sessions(&env, 63);
    // The prune is interrupted by a run on the archive's own machine (a far side
    // does not take this side's environment).
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let here = env.path().join("here.ini");
    std::fs::write(
        &here,
        ini.replacen(&remote_lines(&sshd.destvm(), &sshd.sshopts()), "", 1),
    )
    .unwrap();
    assert_ne!(std::fs::read_to_string(&here).unwrap(), ini);
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&here)
        .arg("-u")
        .arg("prune")
        .arg("v")
        .arg(format!("--session={}", ids[1]))
        .env("SPARSEBAK_FAILPOINT", "prune-after-journal")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(env.vol_dir("v").join(".prune-journal").exists());
    // The reader's own connection says it only reads; the prune is finished over a
    // second one that says it writes.
    let o = env.run(&["list", "v"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{e}");
    assert!(!e.contains("refusing"), "{e}");
    assert!(!env.vol_dir("v").join(".prune-journal").exists());
    let left: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(left, [ids[0].clone(), ids[2].clone()]);
    all_whole(&env, &[versions[0].clone(), versions[2].clone()], &left);
}
