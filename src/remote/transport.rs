//! Where a remote archive is and how to reach it: the `destvm` forms, and the exact
//! argv of the ssh or qvm-run process that runs `sparsebak serve` on the far side.
//!
//! No local shell is involved: the process is started with its argv. The far side
//! does run its command through a shell (ssh hands the command line to the far user's
//! login shell, qvm-run to the VM's shell), so every far-side word is quoted for a
//! POSIX shell, and the archive folder also travels in the protocol's hello.

use std::fmt;
use std::path::Path;
use std::process::Command;

/// An ssh host with its optional user and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshHost {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

/// How the archive is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `ssh://[user@]host[:port]`
    Ssh(SshHost),
    /// `qubes://VM`: from dom0 into a Qubes VM through `qvm-run --pass-io`.
    Qubes { vm: String },
    /// `qubes-ssh://VM/[user@]host[:port]`: through a Qubes VM that has the network,
    /// to an ssh host.
    QubesSsh { vm: String, ssh: SshHost },
}

/// A remote destination: the transport and the config keys that shape the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub transport: Transport,
    /// The far side's command (`destcmd`, default `sparsebak`).
    pub destcmd: String,
    /// Extra arguments for OpenSSH, before the host (`sshopts`, split on whitespace).
    pub sshopts: Vec<String>,
}

impl fmt::Display for SshHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Ssh(h) => write!(f, "ssh://{h}"),
            Transport::Qubes { vm } => write!(f, "qubes://{vm}"),
            Transport::QubesSsh { vm, ssh } => write!(f, "qubes-ssh://{vm}/{ssh}"),
        }
    }
}

fn name_ok(s: &str, extra: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c) || extra.contains(c))
}

fn parse_ssh(s: &str) -> Result<SshHost, String> {
    let (user, rest) = match s.rsplit_once('@') {
        Some((u, r)) => (Some(u), r),
        None => (None, s),
    };
    if let Some(u) = user {
        if !name_ok(u, "") {
            return Err(format!(
                "user {u:?} is not a user name (letters, digits, . _ -)"
            ));
        }
    }
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("{rest:?} opens '[' without closing it"))?;
        match after {
            "" => (h, None),
            p => (
                h,
                Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("{after:?} after the address: only :PORT may follow")
                })?),
            ),
        }
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        }
    };
    let v6 = rest.starts_with('[');
    if !name_ok(host, if v6 { ":" } else { "" }) {
        return Err(format!(
            "host {host:?} is not a host name or address (letters, digits, . _ -; an IPv6 address in [ ])"
        ));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("port {p:?} is not a port number (1 to 65535)"))?,
        ),
    };
    Ok(SshHost {
        user: user.map(str::to_string),
        host: host.to_string(),
        port,
    })
}

fn parse_vm(vm: &str) -> Result<String, String> {
    if vm.len() > 31 || !name_ok(vm, "") {
        return Err(format!(
            "{vm:?} is not a Qubes VM name (1 to 31 letters, digits, . _ -, not starting with -)"
        ));
    }
    Ok(vm.to_string())
}

/// Parse a non-empty `destvm`.
pub fn parse_destvm(s: &str) -> Result<Transport, String> {
    let what = |e: String| format!("destvm = {s}: {e}");
    if let Some(r) = s.strip_prefix("ssh://") {
        return parse_ssh(r.trim_end_matches('/'))
            .map(Transport::Ssh)
            .map_err(what);
    }
    if let Some(r) = s.strip_prefix("qubes-ssh://") {
        let (vm, host) = r
            .split_once('/')
            .ok_or_else(|| what("the form is qubes-ssh://VM/[user@]host[:port]".into()))?;
        return Ok(Transport::QubesSsh {
            vm: parse_vm(vm).map_err(what)?,
            ssh: parse_ssh(host.trim_end_matches('/')).map_err(what)?,
        });
    }
    if let Some(r) = s.strip_prefix("qubes://") {
        return Ok(Transport::Qubes {
            vm: parse_vm(r.trim_end_matches('/')).map_err(what)?,
        });
    }
    Err(what(
        "not a destination: leave it empty for a local archive, or use ssh://[user@]host[:port], \
         qubes://VM or qubes-ssh://VM/[user@]host[:port]"
            .into(),
    ))
}

/// Quote one word for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn shell_join(words: &[String]) -> String {
    words
        .iter()
        .map(|w| shell_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The ciphers offered over ssh, in order of preference (see [`ssh_argv`]).
const SSH_CIPHERS: &str = "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,\
chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

fn ssh_argv(ssh: &SshHost, sshopts: &[String], far: &str) -> Vec<String> {
    let mut a = vec!["ssh".to_string()];
    a.extend(sshopts.iter().cloned());
    // After sshopts: OpenSSH takes the first value given for an option, so the
    // user's options win. No password prompt can stall a backup; no escape character
    // may eat a byte of the stream; no terminal.
    // The ciphers: AES-GCM first (hardware AES makes it several times cheaper than
    // ChaCha20-Poly1305, OpenSSH's first choice, and both sides of a backup also
    // compress or decompress on the same cores); the rest of OpenSSH's default set
    // after it, so a server that has no AES-GCM is still reached. A list, not
    // "^...", which older clients refuse. `-c` or `-o Ciphers=` in sshopts wins.
    for o in [
        "BatchMode=yes",
        "ConnectTimeout=30",
        "ServerAliveInterval=30",
        SSH_CIPHERS,
    ] {
        a.push("-o".into());
        a.push(o.into());
    }
    a.extend(["-T".into(), "-e".into(), "none".into()]);
    if let Some(p) = ssh.port {
        a.push("-p".into());
        a.push(p.to_string());
    }
    a.push("--".into());
    a.push(match &ssh.user {
        Some(u) => format!("{u}@{}", ssh.host),
        None => ssh.host.clone(),
    });
    a.push(far.to_string());
    a
}

impl RemoteSpec {
    /// The far side's command line, quoted for its shell: `destcmd serve DESTDIR`.
    /// `destcmd` is split on blanks, like `sshopts` (`sudo -n sparsebak`), and each
    /// word quoted on its own.
    pub fn far_command(&self, destdir: &Path) -> String {
        let mut words: Vec<String> = self
            .destcmd
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if words.is_empty() {
            words.push("sparsebak".into());
        }
        words.extend([
            "serve".into(),
            "--".into(),
            destdir.to_string_lossy().into_owned(),
        ]);
        shell_join(&words)
    }

    /// The argv that reaches the far side's `sparsebak serve` for `destdir`.
    pub fn argv(&self, destdir: &Path) -> Vec<String> {
        let far = self.far_command(destdir);
        match &self.transport {
            Transport::Ssh(h) => ssh_argv(h, &self.sshopts, &far),
            Transport::Qubes { vm } => {
                vec![
                    "qvm-run".into(),
                    "--pass-io".into(),
                    vm.clone(),
                    "--".into(),
                    far,
                ]
            }
            Transport::QubesSsh { vm, ssh } => vec![
                "qvm-run".into(),
                "--pass-io".into(),
                vm.clone(),
                "--".into(),
                shell_join(&ssh_argv(ssh, &self.sshopts, &far)),
            ],
        }
    }

    pub fn command(&self, destdir: &Path) -> Command {
        let argv = self.argv(destdir);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    }

    /// The destination in messages: `ssh://user@host:port/backup`.
    pub fn label(&self, destdir: &Path) -> String {
        format!("{}{}", self.transport, destdir.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(t: &str) -> RemoteSpec {
        RemoteSpec {
            transport: parse_destvm(t).unwrap(),
            destcmd: "sparsebak".into(),
            sshopts: vec!["-F".into(), "/etc/x cfg".into()],
        }
    }

    #[test]
    fn destvm_forms() {
        assert_eq!(
            parse_destvm("ssh://bk@host.example:2222").unwrap(),
            Transport::Ssh(SshHost {
                user: Some("bk".into()),
                host: "host.example".into(),
                port: Some(2222)
            })
        );
        assert_eq!(
            parse_destvm("ssh://[::1]:22").unwrap().to_string(),
            "ssh://[::1]:22"
        );
        assert_eq!(
            parse_destvm("qubes-ssh://sys-backup/u@h")
                .unwrap()
                .to_string(),
            "qubes-ssh://sys-backup/u@h"
        );
        assert_eq!(
            parse_destvm("qubes://backup").unwrap().to_string(),
            "qubes://backup"
        );
        for bad in [
            "backup",
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://h:0",
            "ssh://h:99999",
            "ssh://a b",
            "qubes://-x",
            "qubes://a;b",
            "qubes-ssh://vm",
            "ssh://u;x@h",
        ] {
            assert!(parse_destvm(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_destvm("backup").unwrap_err().lines().count(), 1);
    }

    #[test]
    fn destcmd_is_split_on_blanks_and_each_word_quoted() {
        let mut s = spec("ssh://h");
        s.destcmd = "sudo -n  /opt/sparse bak".into();
        assert_eq!(
            s.far_command(Path::new("/b")),
            "sudo -n /opt/sparse bak serve -- /b"
        );
        s.destcmd = "/opt/my sb".replace(' ', "\t");
        assert_eq!(
            s.far_command(Path::new("/b c")),
            "/opt/my sb serve -- '/b c'"
        );
        s.destcmd = "  ".into();
        assert_eq!(s.far_command(Path::new("/b")), "sparsebak serve -- /b");
    }

    #[test]
    fn a_cipher_in_sshopts_comes_before_the_preferred_ones() {
        // OpenSSH takes the first value of an option: the user's must come first.
        let opts = vec!["-o".to_string(), "Ciphers=aes256-ctr".to_string()];
        let host = SshHost {
            user: None,
            host: "h".into(),
            port: None,
        };
        let a = ssh_argv(&host, &opts, "x");
        let pos = |w: &str| a.iter().position(|x| x == w);
        assert_eq!(pos("Ciphers=aes256-ctr"), Some(2));
        assert!(pos(SSH_CIPHERS).is_some_and(|p| p > 2), "{a:?}");
    }

    #[test]
    fn argv_is_exact_and_far_words_are_quoted() {
        let s = spec("ssh://bk@h:2222");
        assert_eq!(
            s.argv(Path::new("/backup/it's here")),
            [
                "ssh",
                "-F",
                "/etc/x cfg",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=30",
                "-o",
                "ServerAliveInterval=30",
                "-o",
                SSH_CIPHERS,
                "-T",
                "-e",
                "none",
                "-p",
                "2222",
                "--",
                "bk@h",
                r"sparsebak serve -- '/backup/it'\''s here'"
            ]
        );
        assert_eq!(
            spec("qubes://backup").argv(Path::new("/b")),
            [
                "qvm-run",
                "--pass-io",
                "backup",
                "--",
                "sparsebak serve -- /b"
            ]
        );
        let q = spec("qubes-ssh://netvm/h").argv(Path::new("/b c"));
        assert_eq!(&q[..4], ["qvm-run", "--pass-io", "netvm", "--"]);
        assert_eq!(
            q[4],
            r#"ssh -F '/etc/x cfg' -o BatchMode=yes -o ConnectTimeout=30 -o ServerAliveInterval=30 -o Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr -T -e none -- h 'sparsebak serve -- '\''/b c'\'''"#
        );
        assert_eq!(s.label(Path::new("/b")), "ssh://bk@h:2222/b");
    }
}
