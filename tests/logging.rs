//! Logging without a terminal through the real binary: one plain line per event (no
//! colours, no progress bars), `--log-file` appending the same lines with their time,
//! and syslog priorities only when standard error is the journal's stream.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::*;

const CS: usize = 65536;

/// The lines of a log file with their time (`2026-11-29T22:07:10.893+00:00 `) taken
/// off; each must have one.
fn untimed(log: &str) -> Vec<String> {
    log.lines()
        .map(|l| {
            let (t, rest) = l.split_once(' ').unwrap();
            assert!(
                chrono::DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.3f%:z").is_ok(),
                "no time in front of {l:?}"
            );
            rest.to_string()
        })
        .collect()
}

#[test]
fn log_file_gets_the_lines_of_stderr_appended() {
    let env = Env::new(&["a", "b"]);
    std::fs::write(env.image("a"), Rng::new(1).bytes(40 * CS)).unwrap();
    std::fs::write(env.image("b"), Rng::new(2).bytes(CS)).unwrap();
    let log = env.path().join("sparsebak.log");
    let l = format!("--log-file={}", log.display());
    let o = env.run(&["-v", &l, "send"]);
    assert!(o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    // One line per event, and nothing a terminal would be needed for.
    assert!(!err.contains('\x1b') && !err.contains('\r'), "{err:?}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 4, "{err}");
    assert!(lines[0].starts_with("INFO created archive "), "{err}");
    assert!(lines[1].starts_with("INFO archive "), "{err}");
    assert!(lines[2].starts_with("a: session ") && lines[2].contains(" full read="));
    assert!(lines[3].starts_with("b: session "));
    assert_eq!(untimed(&std::fs::read_to_string(&log).unwrap()), lines);

    // A second run appends; its error is logged as said.
    let o = env.run(&[&l, "verify", "zz"]);
    assert_eq!(o.status.code(), Some(1));
    let err2 = String::from_utf8(o.stderr).unwrap();
    assert_eq!(
        err2,
        format!(
            "sparsebak: error: unknown volume \"zz\": not listed in [volumes] of {}\n",
            env.config.display()
        )
    );
    let all = untimed(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(all.len(), 5);
    assert_eq!(all[..4], lines[..]);
    assert_eq!(all[4], err2.trim_end());
    // tracing's events go there too (here a debug line of the pipeline).
    let o = env.run(&["-vv", &l, "send", "a"]);
    assert!(o.status.success());
    let err3 = String::from_utf8(o.stderr).unwrap();
    assert!(err3.lines().any(|x| x.starts_with("DEBUG ")), "{err3}");
    let all = untimed(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(all[5..], err3.lines().collect::<Vec<_>>()[..]);
}

#[test]
fn a_log_file_that_cannot_be_opened_is_said_in_one_line() {
    let env = Env::new(&["a"]);
    let bad = env.path().join("no/such/dir/log");
    let o = env.run(&[&format!("--log-file={}", bad.display()), "list"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(o.stderr).unwrap(),
        format!(
            "sparsebak: error: --log-file {}: No such file or directory (os error 2)\n",
            bad.display()
        )
    );
}

#[test]
fn priorities_only_for_the_journal_stream() {
    let env = Env::new(&["a"]);
    let run = |journal: &dyn Fn(&std::fs::Metadata) -> String| {
        let path = env.path().join("stderr");
        let f = std::fs::File::create(&path).unwrap();
        let m = f.metadata().unwrap();
        let o = Command::new(bin())
            .arg("-c")
            .arg(&env.config)
            .args(["verify", "zz"])
            .env("JOURNAL_STREAM", journal(&m))
            .stdout(Stdio::null())
            .stderr(f)
            .status()
            .unwrap();
        assert_eq!(o.code(), Some(1));
        std::fs::read_to_string(&path).unwrap()
    };
    let said = run(&|m| format!("{}:{}", m.dev(), m.ino()));
    assert!(
        said.starts_with("<3>sparsebak: error: unknown volume \"zz\""),
        "{said}"
    );
    // Another stream (stderr redirected by hand from a service): no prefixes.
    let said = run(&|m| format!("{}:{}", m.dev(), m.ino() + 1));
    assert!(
        said.starts_with("sparsebak: error: unknown volume"),
        "{said}"
    );
}
