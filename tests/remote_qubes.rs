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
