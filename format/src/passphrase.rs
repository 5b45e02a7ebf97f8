//! Where an encrypted archive's passphrase comes from, in this order:
//!
//! 1. `passfile = PATH`: the file's first line. Refused when group or others may read
//!    the file.
//! 2. `passcmd = COMMAND`: the first line the command prints. The command is split on
//!    blanks and run with exactly those words (no shell), standard input empty.
//! 3. The environment variable `SPARSEBAK_PASSPHRASE`: taken out of the environment
//!    when the program starts ([`take_from_env`]), so that no process sparsebak starts
//!    (ssh, qvm-run, lvm, a `passcmd`) ever sees it.
//! 4. A prompt without echo, when standard input is a terminal (asked twice for a new
//!    passphrase).
//!
//! Otherwise one line names these options. An empty passphrase is refused. A
//! passphrase is never put into an error or a log line.
//!
//! Here (not in the `sparsebak` crate) so that every reader of an encrypted archive,
//! `spbk-assemble` too, takes the passphrase the same ways.

use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use zeroize::Zeroizing;

use crate::crypto::Passphrase;

/// The environment variable that may hold the passphrase.
pub const ENV: &str = "SPARSEBAK_PASSPHRASE";

/// The longest passphrase file read, in bytes (only its first line counts).
const MAX_PASSFILE: u64 = 64 << 10;

/// Why the passphrase is asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// To unlock an existing archive or stream chain.
    Unlock,
    /// For a new archive or stream chain (a prompt asks twice).
    Create,
    /// The new passphrase of `key passwd`.
    NewPassphrase,
}

/// Why no passphrase could be had. None of these holds a passphrase.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("passfile {}: group or others may read it (mode {mode:04o}); make it private: chmod 600 {}", path.display(), path.display())]
    Exposed { path: PathBuf, mode: u32 },
    #[error("passfile {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {why}")]
    Bad { what: String, why: String },
    #[error("passcmd: cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("passcmd {program} failed ({status}){}", said(stderr))]
    Failed {
        program: String,
        status: String,
        /// The first line it wrote to standard error.
        stderr: String,
    },
    #[error("the two passphrases typed differ; nothing was changed")]
    Mismatch,
    #[error("reading the passphrase from the terminal: {0} (give it another way: passfile, passcmd or SPARSEBAK_PASSPHRASE)")]
    Terminal(#[source] std::io::Error),
    #[error("{0}")]
    NoSource(String),
}

fn said(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!(": {stderr}")
    }
}

/// What [`take_from_env`] found.
enum FromEnv {
    Unset,
    Set(Passphrase),
    NotUtf8,
}

static FROM_ENV: Mutex<FromEnv> = Mutex::new(FromEnv::Unset);

/// Take `SPARSEBAK_PASSPHRASE` out of the process environment and keep it here, so
/// that no child process inherits it. The binary calls this first thing, before any
/// thread or process is started.
pub fn take_from_env() {
    let Some(v) = std::env::var_os(ENV) else {
        return;
    };
    std::env::remove_var(ENV);
    let got = match v.into_string() {
        Ok(s) => FromEnv::Set(Passphrase::new(s)),
        Err(_) => FromEnv::NotUtf8,
    };
    if let Ok(mut slot) = FROM_ENV.lock() {
        *slot = got;
    }
}

/// The passphrase taken from the environment, if there was one.
fn env_passphrase() -> std::result::Result<Option<Passphrase>, PassError> {
    let slot = FROM_ENV
        .lock()
        .map_err(|_| PassError::NoSource(format!("{ENV}: its store is poisoned")))?;
    match &*slot {
        FromEnv::Unset => Ok(None),
        FromEnv::NotUtf8 => Err(PassError::Bad {
            what: ENV.into(),
            why: "not UTF-8 text".into(),
        }),
        FromEnv::Set(p) => Ok(Some(p.clone())),
    }
}

/// Where a passphrase may come from besides the environment and the terminal.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `passfile`.
    pub passfile: Option<PathBuf>,
    /// `passcmd`, as written.
    pub passcmd: Option<String>,
    /// What the passphrase is for, in prompts: "the archive at /backup".
    pub what: String,
    /// How to give `passfile` or `passcmd` to this program, for the message that
    /// names the options (empty: the config's keys).
    pub how: String,
}

/// The passphrase from `sources`, the environment, or the terminal, in that order.
pub fn obtain_from(
    sources: &Sources,
    purpose: Purpose,
) -> std::result::Result<Passphrase, PassError> {
    if purpose == Purpose::NewPassphrase {
        return obtain_new(None, &sources.what);
    }
    if let Some(path) = &sources.passfile {
        return read_passfile(path);
    }
    if let Some(cmd) = &sources.passcmd {
        return run_passcmd(cmd);
    }
    if let Some(p) = env_passphrase()? {
        return nonempty(p, ENV);
    }
    if std::io::stdin().is_terminal() {
        return prompt(&sources.what, purpose == Purpose::Create);
    }
    let how = if sources.how.is_empty() {
        "set `passfile = PATH` (a file only its owner can read) or `passcmd = COMMAND` in \
         the config ([var] or the destination's [dest:NAME])"
    } else {
        &sources.how
    };
    Err(PassError::NoSource(format!(
        "{} is encrypted and no passphrase was given: {how}, or {ENV} in the environment, \
         or run at a terminal to be asked",
        if sources.what.is_empty() {
            "the archive"
        } else {
            &sources.what
        }
    )))
}

/// The new passphrase of `key passwd`: the first line of `new_passfile` (with the
/// same mode check as a passfile), else asked twice at the terminal.
pub fn obtain_new(
    new_passfile: Option<&Path>,
    what: &str,
) -> std::result::Result<Passphrase, PassError> {
    if let Some(path) = new_passfile {
        return read_passfile(path);
    }
    if std::io::stdin().is_terminal() {
        return prompt(what, true);
    }
    Err(PassError::NoSource(
        "no new passphrase: give --new-passfile=PATH (a file only its owner can read), or \
         run at a terminal to be asked"
            .into(),
    ))
}

fn nonempty(p: Passphrase, what: &str) -> std::result::Result<Passphrase, PassError> {
    if p.is_empty() {
        Err(PassError::Bad {
            what: what.to_string(),
            why: "the passphrase is empty".into(),
        })
    } else {
        Ok(p)
    }
}

/// The first line of `bytes` as a passphrase (`what` names where it came from).
fn first_line(bytes: &[u8], what: &str) -> std::result::Result<Passphrase, PassError> {
    let line = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = std::str::from_utf8(line).map_err(|_| PassError::Bad {
        what: what.to_string(),
        why: "its first line is not UTF-8 text".into(),
    })?;
    let p = Passphrase::new(text.to_string());
    if p.is_empty() {
        return Err(PassError::Bad {
            what: what.to_string(),
            why: "its first line is empty".into(),
        });
    }
    Ok(p)
}

/// The first line of the passphrase file `path`, which only its owner may read.
pub fn read_passfile(path: &Path) -> std::result::Result<Passphrase, PassError> {
    use std::os::unix::fs::PermissionsExt;
    let unreadable = |source| PassError::Unreadable {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(unreadable)?;
    let meta = f.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(PassError::Bad {
            what: format!("passfile {}", path.display()),
            why: "not a regular file".into(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PassError::Exposed {
            path: path.to_path_buf(),
            mode,
        });
    }
    let mut bytes = Zeroizing::new(Vec::new());
    (&mut f)
        .take(MAX_PASSFILE)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    first_line(&bytes, &format!("passfile {}", path.display()))
}

/// The first line `passcmd` prints: run with exactly its words, no shell, standard
/// input empty, and an environment without [`ENV`].
pub fn run_passcmd(passcmd: &str) -> std::result::Result<Passphrase, PassError> {
    let argv: Vec<&str> = passcmd.split_whitespace().collect();
    let Some((program, args)) = argv.split_first() else {
        return Err(PassError::Bad {
            what: "passcmd".into(),
            why: "it is empty".into(),
        });
    };
    let program = program.to_string();
    let out = Command::new(&program)
        .args(args)
        .env_remove(ENV)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map_err(|source| PassError::Spawn {
            program: program.clone(),
            source,
        })?;
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(PassError::Failed {
            program,
            status: describe(out.status),
            stderr: stderr.lines().next().unwrap_or("").trim().to_string(),
        });
    }
    first_line(&stdout, &format!("passcmd {program}"))
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => status.to_string(),
    }
}

/// Ask at the terminal, without echo; twice when `twice` (the two must match).
fn prompt(what: &str, twice: bool) -> std::result::Result<Passphrase, PassError> {
    let of = if what.is_empty() {
        String::new()
    } else {
        format!(" of {what}")
    };
    let ask = |q: &str| -> std::result::Result<Passphrase, PassError> {
        rpassword::prompt_password(q)
            .map(Passphrase::new)
            .map_err(PassError::Terminal)
    };
    let first = ask(&if twice {
        format!("New passphrase{of}: ")
    } else {
        format!("Passphrase{of}: ")
    })?;
    if first.is_empty() {
        return Err(PassError::NoSource(
            "an empty passphrase is refused; nothing was changed".into(),
        ));
    }
    if twice && ask("The same passphrase again: ")? != first {
        return Err(PassError::Mismatch);
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn passfile(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("pass");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn secret_of(p: &Passphrase) -> bool {
        *p == Passphrase::new("s3cret words".into())
    }

    #[test]
    fn a_passfile_others_may_read_is_refused_naming_it_and_its_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = passfile(d.path(), "s3cret words\nsecond line\n", 0o640);
        let e = read_passfile(&p).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "passfile {0}: group or others may read it (mode 0640); make it private: chmod 600 {0}",
                p.display()
            )
        );
        assert!(!e.contains("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(read_passfile(&p)
            .unwrap_err()
            .to_string()
            .contains("(mode 0604)"));
        // Private: its first line only.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(secret_of(&read_passfile(&p).unwrap()));
        let sources = Sources {
            passfile: Some(p.clone()),
            passcmd: Some("/bin/false".into()),
            what: String::new(),
            how: String::new(),
        };
        // The passfile comes before the passcmd.
        assert!(secret_of(&obtain_from(&sources, Purpose::Unlock).unwrap()));
    }

    #[test]
    fn a_missing_or_empty_passfile_is_refused_naming_it() {
        let d = tempfile::tempdir().unwrap();
        let missing = d.path().join("nope");
        let e = read_passfile(&missing).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "passfile {}: No such file or directory (os error 2)",
                missing.display()
            )
        );
        let p = passfile(d.path(), "\nsecond line\n", 0o600);
        assert_eq!(
            read_passfile(&p).unwrap_err().to_string(),
            format!("passfile {}: its first line is empty", p.display())
        );
        let p = passfile(d.path(), "", 0o400);
        assert!(read_passfile(&p)
            .unwrap_err()
            .to_string()
            .ends_with("its first line is empty"));
        // A CRLF line ending is not part of the passphrase.
        let p = passfile(d.path(), "s3cret words\r\nx", 0o600);
        assert!(secret_of(&read_passfile(&p).unwrap()));
    }

    #[test]
    fn passcmd_runs_its_exact_words_without_a_shell() {
        // A shell would run `b` after `;`; echo prints the words as they are.
        let p = run_passcmd("/bin/echo a;b   $HOME").unwrap();
        assert_eq!(p, Passphrase::new("a;b $HOME".into()));
        // Only the first line counts.
        let p = run_passcmd("/usr/bin/printf first\\nsecond").unwrap();
        assert_eq!(p, Passphrase::new("first".into()));
        // Standard input is empty, not the terminal: cat ends at once, printing nothing.
        assert_eq!(
            run_passcmd("/bin/cat").unwrap_err().to_string(),
            "passcmd /bin/cat: its first line is empty"
        );
    }

    #[test]
    fn a_failing_passcmd_says_its_program_status_and_first_stderr_line() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("getpass");
        std::fs::write(
            &script,
            "#!/bin/sh\necho 'vault is sealed' >&2\necho 'more detail' >&2\necho s3cret\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = run_passcmd(&format!("{} --entry backup", script.display()))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "passcmd {} failed (exit status 3): vault is sealed",
                script.display()
            )
        );
        assert!(!e.contains("s3cret"));
        let e = run_passcmd("/nonexistent/getpass x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "passcmd: cannot run /nonexistent/getpass: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn the_environment_variable_is_taken_out_and_no_child_sees_it() {
        std::env::set_var(ENV, "s3cret words");
        take_from_env();
        assert!(std::env::var_os(ENV).is_none());
        let out = Command::new("/usr/bin/env").output().unwrap();
        assert!(out.status.success());
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(!env.contains(ENV), "{env}");
        assert!(!env.contains("s3cret"), "{env}");
        // A passcmd never gets it, even if something put it back into the environment.
        std::env::set_var(ENV, "leaked");
        let e = run_passcmd(&format!("/usr/bin/printenv {ENV}"));
        std::env::remove_var(ENV);
        assert_eq!(
            e.unwrap_err().to_string(),
            "passcmd /usr/bin/printenv failed (exit status 1)"
        );
        // It is still the passphrase when neither passfile nor passcmd is set (and
        // comes after them).
        let none = Sources::default();
        assert!(secret_of(&obtain_from(&none, Purpose::Unlock).unwrap()));
        let cmd = Sources {
            passcmd: Some("/bin/echo other".into()),
            ..Sources::default()
        };
        assert_eq!(
            obtain_from(&cmd, Purpose::Unlock).unwrap(),
            Passphrase::new("other".into())
        );
        // Other tests of this process see no passphrase from the environment.
        *FROM_ENV.lock().unwrap() = FromEnv::Unset;
    }
}
