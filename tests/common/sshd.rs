//! A real OpenSSH server on 127.0.0.1 for remote-archive tests: its own config, host
//! key and user key made by the test, on a free port; and the client options
//! (`sshopts`) that reach it and nothing else. Also a `qvm-run` stand-in.
#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDir;

pub struct Sshd {
    pub dir: TestDir,
    pub port: u16,
    child: Child,
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "sparsebak-test",
            "-f",
        ])
        .arg(path)
        .status()
        .expect("running ssh-keygen (package openssh-client)");
    assert!(st.success(), "ssh-keygen failed");
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Sshd {
    /// Start sshd; `authorized_line` is written before the key in authorized_keys
    /// (e.g. `command="..." ,restrict `), empty for an unrestricted key.
    pub fn start_with(options: &str) -> Sshd {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.exists(),
            "/usr/sbin/sshd is missing: install openssh-server (scripts/test.sh does)"
        );
        // sshd refuses to start without its privilege separation folder.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = TestDir::new();
        let d = dir.path();
        keygen(&d.join("host"));
        keygen(&d.join("key"));
        let pubkey = std::fs::read_to_string(d.join("key.pub")).unwrap();
        std::fs::write(d.join("authorized_keys"), format!("{options}{pubkey}")).unwrap();
        let port = free_port();
        std::fs::write(
            d.join("sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nPidFile {pid}\n\
                 AuthorizedKeysFile {ak}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\nPrintMotd no\n\
                 AcceptEnv none\nLogLevel ERROR\n",
                host = d.join("host").display(),
                pid = d.join("sshd.pid").display(),
                ak = d.join("authorized_keys").display(),
            ),
        )
        .unwrap();
        let hostkey = std::fs::read_to_string(d.join("host.pub")).unwrap();
        let mut it = hostkey.split_whitespace();
        let (kt, kb) = (it.next().unwrap(), it.next().unwrap());
        std::fs::write(
            d.join("known_hosts"),
            format!("[127.0.0.1]:{port} {kt} {kb}\n"),
        )
        .unwrap();
        std::fs::write(
            d.join("ssh_config"),
            format!(
                "Host *\n  StrictHostKeyChecking yes\n  IdentitiesOnly yes\n  LogLevel ERROR\n  UserKnownHostsFile {}\n",
                d.join("known_hosts").display()
            ),
        )
        .unwrap();
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(d.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(d.join("sshd.log")).unwrap())
            .spawn()
            .expect("starting sshd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on port {port}: {}",
                std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sshd { dir, port, child }
    }

    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// `sshopts` that reach this server with the test's key and host key only.
    pub fn sshopts(&self) -> String {
        let d = self.dir.path();
        format!(
            "-F {} -i {} -o UserKnownHostsFile={}",
            d.join("ssh_config").display(),
            d.join("key").display(),
            d.join("known_hosts").display()
        )
    }

    /// `destvm` for this server.
    pub fn destvm(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The destination lines of a config for a remote archive: `destvm`, `destcmd` (the
/// binary under test) and `sshopts`.
pub fn remote_lines(destvm: &str, sshopts: &str) -> String {
    format!(
        "destvm = {destvm}\ndestcmd = {}\nsshopts = {sshopts}\n",
        super::bin().display()
    )
}

/// Rewrite `config` with `lines` added to its [var] section.
pub fn add_to_var(config: &Path, lines: &str) -> PathBuf {
    let ini = std::fs::read_to_string(config).unwrap();
    let out = config.with_file_name("remote.ini");
    std::fs::write(
        &out,
        ini.replacen(
            "[var]\nencrypt = off\n",
            &format!("[var]\nencrypt = off\n{lines}"),
            1,
        ),
    )
    .unwrap();
    out
}

/// A `qvm-run` stand-in in `bin/` under `dir`: it checks its argv is
/// `--pass-io VM -- COMMAND` for `vm`, logs COMMAND to `qvm-run.log`, and runs
/// COMMAND with the shell, as the VM would. Returns the folder to put first on PATH.
pub fn qvm_run_stand_in(dir: &Path, vm: &str) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("qvm-run.log");
    let script = format!(
        r#"#!/bin/sh
fail() {{ echo "qvm-run stand-in: $*" >&2; exit 2; }}
[ "$#" -eq 4 ] || fail "expected 4 arguments, got $#: $*"
[ "$1" = --pass-io ] || fail "expected --pass-io first, got $1"
[ "$2" = '{vm}' ] || fail "expected the VM {vm}, got $2"
[ "$3" = -- ] || fail "expected -- before the command, got $3"
printf '%s\n' "$4" >> '{log}'
exec sh -c "$4"
"#,
        log = log.display()
    );
    let path = bin.join("qvm-run");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

/// Serve `env`'s archive over `sshd` from a far side in its own mount namespace where
/// the archive's path is bound to `real`, so that nothing of the archive is reachable
/// on this side: creates the (empty) archive folder here, writes the far-side script
/// and puts the remote lines in `env`'s config.
pub fn serve_from_namespace(env: &super::Env, sshd: &Sshd, real: &Path) {
    std::fs::create_dir(env.archive()).unwrap();
    let script = env.path().join("far-side");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private /bin/sh -c \
             'mount --bind \"$0\" \"$1\" && shift && exec \"$@\"' {} {} {} \"$@\"\n",
            real.display(),
            env.archive().display(),
            super::bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let lines = format!(
        "destvm = {}\ndestcmd = {}\nsshopts = {}\n",
        sshd.destvm(),
        script.display(),
        sshd.sshopts()
    );
    std::fs::write(
        &env.config,
        ini.replacen("[var]\n", &format!("[var]\n{lines}"), 1),
    )
    .unwrap();
}
