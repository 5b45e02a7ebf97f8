//! What every user meets first: help, bad configs, unknown volumes, exit codes and
//! one-line errors, all before anything is touched.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;

#[test]
fn help_for_every_command() {
    let o = Command::new(bin()).arg("--help").output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for cmd in ["send", "monitor", "receive", "verify", "list", "resync"] {
        assert!(text.contains(cmd), "--help lists {cmd}");
        let o = Command::new(bin()).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd} --help");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("Usage"),
            "{cmd} --help"
        );
    }
}

#[test]
fn bad_usage_is_exit_2() {
    let o = Command::new(bin()).arg("frobnicate").output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}

fn env_with_ini(ini: &str) -> (TestDir, std::path::PathBuf) {
    let d = TestDir::new();
    let p = d.path().join("bad.ini");
    std::fs::write(&p, ini).unwrap();
    (d, p)
}

fn fails_with(config: &std::path::Path, args: &[&str], want: &str) {
    let o = Command::new(bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{args:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(want), "stderr lacks {want:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err}");
}

#[test]
fn bad_configs_are_clear_errors() {
    for (ini, want) in [
        (
            "[var]\nencrypt = off\ndestdir=/x\nsource=file\nvoldir=/y\nbogus=1\n",
            "unknown key \"bogus\"",
        ),
        (
            "[var]\nencrypt = off\ndestdir=/x\nsource=file\nvoldir=/y\nchunksize=3K\n",
            "chunksize",
        ),
        ("[var]\nencrypt = off\ndestdir=/x\nsource=zfs\n", "source"),
        (
            "[var]\nencrypt = off\ndestdir=/x\nsource=file\nvoldir=/y\ncompression=gzip\n",
            "compression",
        ),
        ("[var]\nencrypt = off\nsource=file\nvoldir=/y\n", "destdir"),
        (
            "[var]\nencrypt = off\ndestdir=/x\nsource=file\nvoldir=/y\n[volumes]\nv=perhaps\n",
            "enable",
        ),
    ] {
        let (_d, p) = env_with_ini(ini);
        fails_with(&p, &["list"], want);
    }
    let missing = std::path::Path::new("/nonexistent/sparsebak.ini");
    fails_with(missing, &["list"], "cannot read");
}

#[test]
fn config_from_environment() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 100]).unwrap();
    let o = Command::new(bin())
        .env("SPARSEBAK_CONFIG", &env.config)
        .args(["-u", "send", "v"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn unknown_volume_touches_nothing() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 100]).unwrap();
    for args in [
        vec!["send", "nosuch"],
        vec!["verify", "nosuch"],
        vec!["list", "nosuch"],
        vec!["send", "v", "nosuch"],
    ] {
        let err = env.fails(&args);
        assert!(err.contains("unknown volume \"nosuch\""), "{err}");
    }
    assert!(!env.archive().exists(), "nothing was created");
}

#[test]
fn missing_volume_file_and_destination_checks() {
    let env = Env::new(&["v"]);
    let err = env.fails(&["send", "v"]);
    assert!(err.contains("cannot open"), "{err}");
    let err = env.fails(&["receive", "v"]);
    assert!(err.contains("--save-to"), "{err}");
    let err = env.fails(&["verify", "v"]);
    assert!(err.contains("no sessions"), "{err}");
}

#[test]
fn destmountpoint_must_be_mounted() {
    let d = TestDir::new();
    let mp = d.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let ini = format!(
        "[var]\nencrypt = off\nsource=file\nvoldir={0}\ndestmountpoint={1}\ndestdir=sb\nmetadir={0}/meta\n[volumes]\nv=enable\n",
        d.path().display(),
        mp.display()
    );
    std::fs::write(d.path().join("v"), [1u8; 10]).unwrap();
    let p = d.path().join("c.ini");
    std::fs::write(&p, ini).unwrap();
    fails_with(&p, &["send"], "not a mounted filesystem");
    assert!(!mp.join("sb").exists());
}

#[test]
fn refuses_to_write_into_a_foreign_folder() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 10]).unwrap();
    std::fs::create_dir_all(env.archive()).unwrap();
    std::fs::write(env.archive().join("someone-elses.txt"), b"keep").unwrap();
    let err = env.fails(&["send"]);
    assert!(err.contains("not a sparsebak archive"), "{err}");
}

#[test]
fn changing_chunk_size_of_a_volume_is_refused() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 10]).unwrap();
    env.send("v");
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replace(
            "[var]\nencrypt = off\n",
            "[var]\nencrypt = off\nchunksize = 128K\n",
        ),
    )
    .unwrap();
    std::fs::write(env.image("v"), [2u8; 10]).unwrap();
    let err = env.fails(&["send", "v"]);
    assert!(err.contains("chunk size"), "{err}");
}

#[test]
fn lock_keeps_two_runs_apart() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 10]).unwrap();
    env.send("v");
    // Hold the volume's lock from this process, as another run would.
    let lock = env.vol_dir("v").join(".lock");
    let f = std::fs::File::open(&lock).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    let start = std::time::Instant::now();
    let mut child = Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["-u", "send", "v"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "send waits for the lock"
    );
    drop(f);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(start.elapsed().as_millis() >= 500);
}

/// stderr of `sparsebak -c CONFIG -u ARGS`, which must fail with exit 1.
fn error_of(config: &std::path::Path, args: &[&str]) -> String {
    let o = Command::new(bin())
        .arg("-c")
        .arg(config)
        .arg("-u")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
    err
}

/// With `destmountpoint` not mounted, the commands that only read the archive say its
/// disk is not mounted, not that they refuse to write; those that write say so.
#[test]
fn unmounted_destmountpoint_is_said_as_readers_and_writers_see_it() {
    let d = TestDir::new();
    let mp = d.path().join("mnt");
    std::fs::create_dir(&mp).unwrap();
    std::fs::write(d.path().join("v"), [1u8; 10]).unwrap();
    let p = d.path().join("c.ini");
    std::fs::write(
        &p,
        format!(
            "[var]\nencrypt = off\nsource=file\nvoldir={0}\ndestmountpoint={1}\ndestdir=sb\nmetadir={0}/meta\n[volumes]\nv=enable\n",
            d.path().display(),
            mp.display()
        ),
    )
    .unwrap();
    let save = format!("--save-to={}", d.path().join("out.img").display());
    let empty = d.path().join("images");
    std::fs::create_dir(&empty).unwrap();
    let at = empty.display().to_string();
    let readers: [&[&str]; 7] = [
        &["list"],
        &["mount", &at, "v"],
        &["verify", "v"],
        &["receive", "v", &save],
        &["diff", "v", "--session=latest"],
        &["prune", "v", "--auto", "--keep=last:1", "--dry-run"],
        &["repair", "v", "--dry-run"],
    ];
    for args in readers {
        let err = error_of(&p, args);
        assert!(
            err.contains(&format!(
                "destmountpoint {} is not a mounted filesystem: the archive's disk is not mounted there",
                mp.display()
            )),
            "{args:?}: {err}"
        );
        assert!(!err.contains("write"), "{args:?}: {err}");
    }
    let writers: [&[&str]; 6] = [
        &["send", "v"],
        &["prune", "v", "--auto", "--keep=last:1"],
        &["delete", "v"],
        &["untar", "v"],
        &["repair", "v"],
        &["rename", "v", "w"],
    ];
    for args in writers {
        let err = error_of(&p, args);
        assert!(
            err.contains("is not a mounted filesystem; refusing to write the archive under it"),
            "{args:?}: {err}"
        );
    }
    assert!(!d.path().join("out.img").exists());
    assert!(!mp.join("sb").exists());
}

/// A metadir that is a file (or under a file) is said as such by every command, not
/// as a bare "File exists" or "Not a directory"; the file is left alone.
#[test]
fn a_metadir_that_is_a_file_is_said_as_such() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), [1u8; 10]).unwrap();
    env.send("v");
    let file = env.path().join("metafile");
    std::fs::write(&file, b"not a folder").unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let meta = env.meta().display().to_string();
    let save = format!("--save-to={}", env.path().join("out.img").display());
    let stream = format!("--stream={}", env.path().join("s.tar").display());
    for (metadir, why) in [
        (file.clone(), "is a file, not a folder".to_string()),
        (
            file.join("sub"),
            format!("cannot be made: {} is a file, not a folder", file.display()),
        ),
    ] {
        std::fs::write(
            &env.config,
            ini.replace(&meta, &metadir.display().to_string()),
        )
        .unwrap();
        let commands: [&[&str]; 9] = [
            &["send", "v"],
            &["send", "v", &stream],
            &["list"],
            &["verify", "v"],
            &["receive", "v", &save],
            &["resync", "v"],
            &["prune", "v", "--auto", "--keep=last:1"],
            &["delete", "v"],
            &["monitor", "v"],
        ];
        for args in commands {
            let err = env.fails(args);
            assert!(
                err.contains(&format!("metadir {} {why}", metadir.display())),
                "{args:?}: {err}"
            );
            assert!(!err.contains("os error"), "{args:?}: {err}");
        }
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not a folder");
    assert!(!env.path().join("out.img").exists());
    assert!(!env.path().join("s.tar").exists());
}

/// Volume `v` of 1 MiB, sent once.
fn sent_once(seed: u64) -> Env {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(seed).bytes(1 << 20)).unwrap();
    env.send("v");
    env
}

/// Every kind of bad usage, in every command, exits 2 with clap's one error, before
/// the configuration or the archive is looked at: a required option or volume missing,
/// an option the command does not take (also where another command takes it, or before
/// the command), and a value that cannot be understood.
#[test]
fn bad_usage_in_every_command_exits_2_before_anything_is_done() {
    let env = sent_once(2);
    let before = env.sessions("v");
    let out = env.path().join("out.img");
    let save = format!("--save-to={}", out.display());
    let stream = format!("--stream={}", env.path().join("s.tar").display());
    let cases: &[(&[&str], &str)] = &[
        // Required options and volumes.
        (&["receive", "v"], "--save-to <PATH>"),
        (&["receive", &save], "<VOLUME>"),
        (&["verify"], "<VOLUME>"),
        (&["prune", "v"], "--session"),
        (&["diff", "v"], "--session"),
        (&["diff", "--session=latest"], "<VOLUME>"),
        (&["untar"], "<VOLUME>"),
        (&["repair"], "<VOLUME>"),
        (&["delete"], "<VOLUME>"),
        (&["rename", "v"], "<NEW>"),
        // Options of other commands, or of none.
        (&["send", "--save-to=x", "v"], "--save-to"),
        (&["send", "--session=latest", "v"], "--session"),
        (&["list", "--session=bogus"], "--session"),
        (&["monitor", "--session=bogus"], "--session"),
        (&["resync", "--session=latest"], "--session"),
        (&["verify", "v", &save], "--save-to"),
        (&["repair", "v", "--session=latest"], "--session"),
        (&["delete", "v", "--session=latest"], "--session"),
        (&["rename", "v", "w", "--session=latest"], "--session"),
        (&["untar", "v", &save], "--save-to"),
        (&["diff", "v", "--session=latest", "--dry-run"], "--dry-run"),
        (&["monitor", "--json"], "--json"),
        (&["send", "v", &stream, "--json"], "cannot be used with"),
        (&["status", "--json", "--prometheus"], "cannot be used with"),
        (
            &["--dest=default", "status"],
            "status reports on every destination; --dest does not apply",
        ),
        (
            &["receive", "v", "--save-to=-", "--json"],
            "--json prints on standard output, where --save-to=- writes the volume",
        ),
        (&["send", "v", "--zero-tail"], "--zero-tail"),
        (&["send", "v", "--block-size=64K"], "--stream"),
        (&["--session=latest", "receive", "v", &save], "--session"),
        (&["--save-to=x", "receive", "v"], "--save-to"),
        // A session given where the streams decide.
        (
            &["receive", "--from-stream=x", "--session=latest", &save],
            "cannot be used with",
        ),
        (
            &["verify", "--from-stream=x", "--session=latest"],
            "cannot be used with",
        ),
        // Values that cannot be understood.
        (
            &["receive", "v", &save, "--session=bogus"],
            "cannot understand session selector \"bogus\"",
        ),
        (&["verify", "v", "--session=2026-13-01"], "not a valid date"),
        (
            &["verify", "v", "--session=latest,oldest"],
            "a single session is expected",
        ),
        (
            &["prune", "v", "--session=bogus"],
            "cannot understand session selector",
        ),
        (
            &["prune", "v", "--session=a,b,c"],
            "cannot understand session range",
        ),
        (
            &["prune", "v", "--all-before=latest"],
            "takes a date or time",
        ),
        (&["prune", "v", "--keep=hourly"], "--keep"),
        (
            &["untar", "v", "--session=bogus"],
            "cannot understand session selector",
        ),
        (
            &["diff", "v", "--session=bogus,latest"],
            "cannot understand session selector",
        ),
        (
            &["send", "v", &stream, "--block-size=1000"],
            "a multiple of 512 bytes",
        ),
        (
            &["send", "v", &stream, "--chain=a/b"],
            "use letters, digits",
        ),
        (
            &["send", "v", "v", &stream],
            "send --stream writes one volume",
        ),
    ];
    for (args, want) in cases {
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?} lacks {want:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
    // Nothing was done: no session added or removed, no file written.
    assert_eq!(env.sessions("v"), before);
    assert!(!out.exists() && !env.path().join("s.tar").exists() && !Path::new("x").exists());
    // Bad usage is found before the configuration is read.
    let o = Command::new(bin())
        .args(["-c", "/nonexistent/sparsebak.ini", "prune", "v"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A missing volume is asked for with the usage of the command that was given, never an
/// example of another command.
#[test]
fn a_missing_volume_is_asked_for_with_the_commands_own_usage() {
    let env = sent_once(15);
    for (args, usage) in [
        (&["verify"][..], "Usage: sparsebak verify "),
        (&["receive", "--save-to=x"], "Usage: sparsebak receive "),
        (&["diff", "--session=latest"], "Usage: sparsebak diff "),
        (&["untar"], "Usage: sparsebak untar "),
    ] {
        let o = env.run(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(usage), "{args:?}: {err}");
        let others = ["send", "receive", "verify", "prune", "diff", "untar"];
        for other in others.iter().filter(|c| **c != args[0]) {
            assert!(
                !err.contains(&format!("sparsebak {other}")),
                "{args:?}: {err}"
            );
        }
    }
    // With several enabled volumes, `send --stream` names its own usage too.
    let two = Env::new(&["a", "b"]);
    let err = two.fails(&["send", "--stream=x"]);
    assert!(
        err.contains("`sparsebak send --stream=PATH VOLUME`"),
        "{err}"
    );
}

/// Each command's `--help` lists the options it takes and no other (besides the
/// global -c, -u, -v, -q).
#[test]
fn each_help_lists_only_the_options_of_its_command() {
    let takes: &[(&str, &[&str])] = &[
        (
            "--session",
            &["receive", "verify", "prune", "untar", "diff"],
        ),
        ("--save-to", &["receive"]),
        ("--from-stream", &["receive", "verify"]),
        ("--zero-tail", &["receive"]),
        ("--stream", &["send"]),
        ("--tarfile", &["send"]),
        ("--accept-archive", &["send"]),
        ("--block-size", &["send"]),
        ("--chain", &["send"]),
        ("--auto", &["prune"]),
        ("--keep", &["prune"]),
        ("--all-before", &["prune"]),
        ("--dry-run", &["prune", "repair"]),
        (
            "--json",
            &[
                "diff", "send", "receive", "verify", "list", "prune", "status",
            ],
        ),
        ("--prometheus", &["status"]),
        ("--log-file", ALL),
        ("--files", &["diff"]),
        ("--foreground", &["mount"]),
        ("--cache", &["mount"]),
        ("--archive", &["mount"]),
        ("--passfile", &["mount"]),
        ("--passcmd", &["mount"]),
        ("--config", ALL),
        ("--unattended", ALL),
        ("--verbose", ALL),
        ("--quiet", ALL),
    ];
    for cmd in ALL {
        let o = Command::new(bin()).args([cmd, "--help"]).output().unwrap();
        assert!(o.status.success(), "{cmd} --help");
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(help.contains(&format!("Usage: sparsebak {cmd}")), "{help}");
        for (opt, cmds) in takes {
            // `--stream` is also the start of `--from-stream`: match whole words.
            let listed = help
                .split(|c: char| c.is_whitespace() || c == ',' || c == '=')
                .any(|w| w.trim_end_matches('.') == *opt);
            assert_eq!(
                listed,
                cmds.contains(cmd),
                "{cmd} --help and {opt}:\n{help}"
            );
        }
    }
}

const ALL: &[&str] = &[
    "send", "monitor", "receive", "verify", "list", "resync", "prune", "repair", "delete",
    "rename", "untar", "diff", "mount", "umount", "status",
];

/// Log lines (`-v`) carry no colour escapes into files, pipes and cron mail.
#[test]
fn log_lines_have_no_colour_off_a_terminal() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(7).bytes(1 << 20)).unwrap();
    let o = env.run(&["-v", "send", "v"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("INFO created archive ")),
        "{err}"
    );
    assert!(!o.stderr.contains(&0x1b), "{err:?}");
}
