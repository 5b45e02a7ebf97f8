//! Remote archives through Qubes qrexec: `qubes://VM` and `qubes-ssh://VM/host`, with a
//! `qvm-run` stand-in first on PATH that checks the argv it is given and runs the
//! command locally, as the VM would.

mod common;
use common::*;
#[path = "common/sshd.rs"]
mod sshd;

use sshd::*;

const CS: usize = 65536;

fn list_with_path(cfg: &std::path::Path, bin_dir: &std::path::Path) -> std::process::Output {
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new(bin())
        .arg("-c")
        .arg(cfg)
        .arg("list")
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn list_through_qvm_run_into_a_vm() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(5).bytes(6 * CS)).unwrap();
    env.send("v");
    let local = env.ok(&["list"]);
    let bin_dir = qvm_run_stand_in(env.path(), "backup-vm");
    let cfg = add_to_var(&env.config, &remote_lines("qubes://backup-vm", ""));
    let o = list_with_path(&cfg, &bin_dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), local);
    let log = std::fs::read_to_string(env.path().join("qvm-run.log")).unwrap();
    assert_eq!(
        log,
        format!("{} serve -- {}\n", bin().display(), env.archive().display())
    );
    // Another VM name reaches the stand-in's check, and its words come back.
    let cfg = add_to_var(&env.config, &remote_lines("qubes://other-vm", ""));
    let o = list_with_path(&cfg, &bin_dir);
    assert_eq!(o.status.code(), Some(1));
    let e = String::from_utf8(o.stderr).unwrap();
    assert!(
        e.contains("qvm-run stand-in: expected the VM backup-vm, got other-vm"),
        "{e}"
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
}

#[test]
fn list_through_a_vm_to_an_ssh_host() {
    let sshd = Sshd::start();
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(6).bytes(6 * CS)).unwrap();
    env.send("v");
    let local = env.ok(&["list"]);
    let bin_dir = qvm_run_stand_in(env.path(), "sys-net");
    let destvm = format!("qubes-ssh://sys-net/root@127.0.0.1:{}", sshd.port);
    let cfg = add_to_var(&env.config, &remote_lines(&destvm, &sshd.sshopts()));
    let o = list_with_path(&cfg, &bin_dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8(o.stdout).unwrap(), local);
    let log = std::fs::read_to_string(env.path().join("qvm-run.log")).unwrap();
    assert!(log.starts_with("ssh -F "), "{log}");
    assert!(
        log.ends_with(&format!(
            " -p {} -- root@127.0.0.1 '{} serve -- {}'\n",
            sshd.port,
            bin().display(),
            env.archive().display()
        )),
        "{log}"
    );
}

/// A far side that speaks the protocol's hello and then lies: `answers` are the
/// frames it sends after accepting the hello.
fn lying_far_side(dir: &std::path::Path, answers: &[u8]) -> std::path::PathBuf {
    let mut out = Vec::new();
    let mut hello = b"SPBKWIRE".to_vec();
    hello.extend_from_slice(&sparsebak::remote::proto::PROTOCOL_VERSION.to_le_bytes());
    let v = env!("CARGO_PKG_VERSION");
    hello.extend_from_slice(&(v.len() as u32).to_le_bytes());
    hello.extend_from_slice(v.as_bytes());
    hello.extend_from_slice(&0u32.to_le_bytes());
    hello.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&((hello.len() + 1) as u32).to_le_bytes());
    out.push(1);
    out.extend_from_slice(&hello);
    out.extend_from_slice(&[1, 0, 0, 0, 3]); // the hello is accepted
    out.extend_from_slice(answers);
    let frames = dir.join("frames");
    std::fs::write(&frames, out).unwrap();
    let script = dir.join("liar");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncat '{}'\nexec cat >/dev/null\n",
            frames.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn liar_spec(script: &std::path::Path) -> sparsebak::remote::RemoteSpec {
    sparsebak::remote::RemoteSpec {
        transport: sparsebak::remote::parse_destvm("qubes://liar-vm").unwrap(),
        destcmd: script.display().to_string(),
        sshopts: vec![],
    }
}

#[test]
fn nothing_the_far_side_sends_is_trusted() {
    let dir = TestDir::new();
    let bin_dir = qvm_run_stand_in(dir.path(), "liar-vm");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);
    let archive = std::path::Path::new("/backup");

    // A chunk longer than a chunk of the session can be stored in.
    let mut answer = (5001u32).to_le_bytes().to_vec();
    answer.push(3);
    answer.extend_from_slice(&[7u8; 5000]);
    let liar = lying_far_side(dir.path(), &answer);
    let mut c =
        sparsebak::remote::Connection::open(&liar_spec(&liar), archive, None, false).unwrap();
    let e = c
        .read_stored("v", "20260101-000000", &[0], 4096)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "destination qubes://liar-vm/backup: the far side answered with a malformed frame: \
         a chunk of 5000 bytes, above the 4096 a chunk of this session can take"
    );
    drop(c);

    // A frame length above the limit is refused before anything is allocated.
    let liar = lying_far_side(dir.path(), &[0xff, 0xff, 0xff, 0xff, 3]);
    let mut c =
        sparsebak::remote::Connection::open(&liar_spec(&liar), archive, None, false).unwrap();
    let e = c.sessions("v").unwrap_err().to_string();
    assert!(
        e.starts_with(
            "destination qubes://liar-vm/backup: the connection failed: a frame of 4294967295 bytes, above the limit of "
        ),
        "{e}"
    );
    drop(c);

    // A count larger than its frame can hold.
    let mut answer = 5u32.to_le_bytes().to_vec();
    answer.push(3);
    answer.extend_from_slice(&u32::MAX.to_le_bytes());
    let liar = lying_far_side(dir.path(), &answer);
    let mut c =
        sparsebak::remote::Connection::open(&liar_spec(&liar), archive, None, false).unwrap();
    let e = c.sessions("v").unwrap_err().to_string();
    assert_eq!(
        e,
        "destination qubes://liar-vm/backup: the far side answered with a malformed frame: \
         a count of 4294967295 items, more than the 0 bytes left can hold"
    );
}

/// Two sends through the qvm-run stand-in (16 chunks, then 1 changed), list,
/// verify and a byte-identical receive; `env`'s config is made to name the VM.
/// Returns the qvm-run log.
fn round_trip_through_qvm_run(env: &Env, seed: u64) -> String {
    let bin_dir = qvm_run_stand_in(env.path(), "backup-vm");
    // The env's own config now names the VM: every helper goes through qvm-run.
    let ini = std::fs::read_to_string(&env.config).unwrap();
    assert!(ini.contains("[var]\n"), "{ini}");
    std::fs::write(
        &env.config,
        ini.replacen(
            "[var]\n",
            &format!("[var]\n{}", remote_lines("qubes://backup-vm", "")),
            1,
        ),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&env.config)
            .arg("-u")
            .args(args)
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let mut rng = Rng::new(seed);
    let mut img = rng.bytes(16 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    run(&["send", "v"]);
    rng.fill(&mut img[5 * CS..6 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    run(&["send", "v"]);
    let list = run(&["list", "v"]);
    let changed: Vec<u64> = list
        .lines()
        .skip(1)
        .map(|l| parse_list_line(l).changed)
        .collect();
    assert_eq!(changed, [16, 1], "{list}");
    run(&["verify", "v"]);
    let out = env.path().join("restored");
    run(&["receive", "v", &format!("--save-to={}", out.display())]);
    assert_same(&std::fs::read(&out).unwrap(), &img, "through qvm-run");
    let log = std::fs::read_to_string(env.path().join("qvm-run.log")).unwrap();
    assert!(log.lines().count() >= 5, "{log}");
    log
}

#[test]
fn send_and_receive_through_qvm_run() {
    let env = Env::new(&["v"]);
    let log = round_trip_through_qvm_run(&env, 12);
    assert!(log
        .lines()
        .all(|l| l == format!("{} serve -- {}", bin().display(), env.archive().display())));
}

#[test]
fn an_encrypted_archive_through_qvm_run() {
    let env = Env::encrypted(&["v"], "a passphrase for the vm");
    round_trip_through_qvm_run(&env, 13);
    // The archive the VM holds is encrypted: format 2, its key file, no folder `v`.
    let marker = std::fs::read_to_string(env.archive().join("sparsebak.archive")).unwrap();
    assert!(marker.contains("format=2\n"), "{marker}");
    assert!(env.archive().join("sparsebak.key").is_file());
    assert!(!env.archive().join("v").exists());
}
