//! The files an installation brings besides the binaries: the systemd units pass
//! `systemd-analyze verify`, every man page renders with `man -l` without a warning,
//! sparsebak.ini(5) names every config key, and the shell completions complete
//! commands and the config's volume names.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{bin, Env, TestDir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `sparsebak __generate` into a fresh folder, plus spbk-assemble's page.
fn generated() -> (TestDir, PathBuf) {
    let dir = TestDir::new();
    let out = dir.path().join("gen");
    let o = Command::new(bin())
        .arg("__generate")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new(common::assemble_bin())
        .arg("__man")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(out.join("man/spbk-assemble.8"), &o.stdout).unwrap();
    (dir, out)
}

const UNITS: &[&str] = &[
    "sparsebak-monitor.service",
    "sparsebak-monitor.timer",
    "sparsebak-send.service",
    "sparsebak-send.timer",
    "sparsebak-prune.service",
    "sparsebak-prune.timer",
    "sparsebak-verify@.service",
    "sparsebak-verify@.timer",
];

/// The units in a temporary folder, ExecStart pointing at the binary under test, the
/// templates as instance `vol1`; `edit` changes a unit's text first. Returns what
/// `systemd-analyze verify` said about them.
fn analyze(edit: impl Fn(&str, String) -> String) -> Output {
    let dir = TestDir::new();
    let mut args = vec!["verify".to_string(), "--man=no".to_string()];
    for u in UNITS {
        let t = std::fs::read_to_string(repo().join("packaging/systemd").join(u)).unwrap();
        assert!(
            u.ends_with(".timer") || t.contains("/usr/bin/sparsebak"),
            "{u}"
        );
        let t = t.replace("/usr/bin/sparsebak", bin().to_str().unwrap());
        let name = u.replace("@.", "@vol1.");
        let p = dir.path().join(&name);
        std::fs::write(&p, edit(u, t)).unwrap();
        args.push(p.display().to_string());
    }
    Command::new("systemd-analyze")
        .args(&args)
        .output()
        .unwrap()
}

#[test]
fn every_unit_passes_systemd_analyze_verify() {
    let o = analyze(|_, t| t);
    assert!(
        o.status.success() && o.stdout.is_empty() && o.stderr.is_empty(),
        "{}",
        text(&o)
    );
    // The check is not blind: a misspelt key is reported.
    let o = analyze(|u, t| {
        if u == "sparsebak-send.service" {
            t.replace("PrivateTmp=yes", "PrivateTemp=yes")
        } else {
            t
        }
    });
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Unknown key 'PrivateTemp'"),
        "{}",
        text(&o)
    );
}

/// What the schedules and the hardening promise.
#[test]
fn timers_and_services_say_what_they_promise() {
    let read = |u: &str| std::fs::read_to_string(repo().join("packaging/systemd").join(u)).unwrap();
    let has = |u: &str, lines: &[&str]| {
        let t = read(u);
        for l in lines {
            assert!(t.lines().any(|x| x == *l), "{u} lacks {l:?}:\n{t}");
        }
    };
    has("sparsebak-monitor.timer", &["OnCalendar=*:0/15"]);
    has(
        "sparsebak-send.timer",
        &["Persistent=true", "RandomizedDelaySec=45min"],
    );
    has("sparsebak-prune.timer", &["Persistent=true"]);
    has("sparsebak-verify@.timer", &["Persistent=true"]);
    has(
        "sparsebak-verify@.service",
        &[
            "Nice=19",
            "IOSchedulingClass=idle",
            "ExecStart=/usr/bin/sparsebak -q verify %I",
        ],
    );
    for u in UNITS.iter().filter(|u| u.ends_with(".service")) {
        has(
            u,
            &[
                "ProtectSystem=full",
                "PrivateTmp=yes",
                "NoNewPrivileges=yes",
                "RestrictAddressFamilies=AF_UNIX AF_NETLINK",
                "IPAddressDeny=any",
            ],
        );
    }
    // Nothing that would close off the volumes' devices, or the udev events LVM waits
    // for.
    for u in UNITS {
        let t = read(u);
        for k in [
            "DeviceAllow=",
            "PrivateDevices=",
            "ProtectClock=",
            "PrivateNetwork=",
        ] {
            assert!(!t.lines().any(|l| l.starts_with(k)), "{u} sets {k}");
        }
    }
    // Each timer's weekly or nightly schedule parses to what is meant.
    for (u, want) in [
        ("sparsebak-send.timer", "*-*-* 01:30:00"),
        ("sparsebak-prune.timer", "Sun *-*-* 04:00:00"),
        ("sparsebak-verify@.timer", "Sat *-*-* 05:00:00"),
    ] {
        let o = Command::new("systemd-analyze")
            .args(["calendar", want])
            .output()
            .unwrap();
        assert!(o.status.success(), "{u}: {}", text(&o));
        has(u, &[&format!("OnCalendar={want}")]);
    }
}

/// `man -l` renders `page` with warnings on; returns the text.
fn render(page: &Path) -> String {
    let o = Command::new("man")
        .args(["--warnings=w", "-l"])
        .arg(page)
        .env("MANWIDTH", "80")
        .env("LC_ALL", "C.UTF-8")
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{}: {}",
        page.display(),
        text(&o)
    );
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn every_man_page_renders_without_warnings() {
    let (_dir, gen) = generated();
    // One page per visible command (and per command of key and tape), none for the
    // hidden helpers.
    let mut want = vec!["sparsebak.8".to_string(), "spbk-assemble.8".to_string()];
    let mut cli =
        <sparsebak::cli::Cli as clap::CommandFactory>::command().disable_help_subcommand(true);
    cli.build();
    for c in cli.get_subcommands().filter(|c| !c.is_hide_set()) {
        want.push(format!("sparsebak-{}.8", c.get_name()));
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            want.push(format!("sparsebak-{}-{}.8", c.get_name(), s.get_name()));
        }
    }
    want.sort();
    let got = common::names_in(&gen.join("man"));
    assert_eq!(got, want);
    assert!(want.len() > 20, "{want:?}");
    for p in &got {
        let t = render(&gen.join("man").join(p));
        let name = p.trim_end_matches(".8");
        assert!(t.contains(&format!("{name}(8)")), "{p}:\n{t}");
        assert!(t.contains("EXIT STATUS"), "{p}:\n{t}");
    }
    // Words as rendered, whatever the line breaks and the justification.
    let top = render(&gen.join("man/sparsebak.8"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for s in [
        "EXIT STATUS 0 Success. 1 Failure:",
        "3 Nothing to do: send --dest=all found no destination present",
        "4 verify ran to the end and found damage",
        "/etc/sparsebak/sparsebak.ini The configuration",
        "sparsebak-send(8) Back up the enabled volumes",
    ] {
        assert!(top.contains(s), "sparsebak(8) lacks {s:?}:\n{top}");
    }
    let send = render(&gen.join("man/sparsebak-send.8"));
    assert!(send.contains("--tarfile"), "{send}");
    let ini = render(&repo().join("packaging/man/sparsebak.ini.5"));
    assert!(ini.contains("SPARSEBAK.INI(5)"), "{ini}");
    // The check is not blind: an unknown macro is a warning.
    let dir = TestDir::new();
    let bad = dir.path().join("bad.8");
    std::fs::write(&bad, ".TH BAD 8\n.SH NAME\nbad \\- a page\n.XYZ foo\n").unwrap();
    let o = Command::new("man")
        .args(["--warnings=w", "-l"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("macro 'XYZ' not defined"),
        "{}",
        text(&o)
    );
}

/// sparsebak.ini(5) is written by hand: it must keep naming every key the config
/// reader takes.
#[test]
fn the_config_page_names_every_key() {
    let page = std::fs::read_to_string(repo().join("packaging/man/sparsebak.ini.5")).unwrap();
    let keys = sparsebak::config::VAR_KEYS
        .iter()
        .chain(sparsebak::config::DEST_KEYS)
        .chain(sparsebak::config::TAPE_KEYS);
    for k in keys {
        let listed = page.lines().any(|l| {
            (l.starts_with(".B ") || l.starts_with(".BR "))
                && l.split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .any(|w| w == *k)
        });
        assert!(listed, "sparsebak.ini(5) has no entry for {k}");
    }
    // And the example config shipped with it is one the reader accepts.
    let o = Command::new(bin())
        .arg("-c")
        .arg(repo().join("sparsebak.ini.example"))
        .arg("__complete-volumes")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "vm-work-private\nvm-untrusted-private\n"
    );
    // So is it with every commented-out key and section in it switched on.
    let example = std::fs::read_to_string(repo().join("sparsebak.ini.example")).unwrap();
    let mut enabled = String::new();
    let mut switched = 0;
    for l in example.lines() {
        let on = l.strip_prefix(';').filter(|r| {
            (r.starts_with("[dest:") && r.ends_with(']'))
                || r.split_once(" = ").is_some_and(|(k, _)| {
                    !k.is_empty() && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                })
        });
        match on {
            Some(r) => {
                enabled.push_str(r);
                switched += 1;
            }
            None => enabled.push_str(l),
        }
        enabled.push('\n');
    }
    assert!(switched >= 20, "{switched}");
    let dir = TestDir::new();
    let all = dir.path().join("all.ini");
    std::fs::write(&all, enabled).unwrap();
    let o = Command::new(bin())
        .arg("-c")
        .arg(&all)
        .arg("__complete-volumes")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Run the bash completion for `words` (the last is the word being completed) with
/// the binary under test first on PATH; returns COMPREPLY, one a line.
fn complete_bash(script: &Path, words: &[&str]) -> Vec<String> {
    let mut arr = String::new();
    for w in words {
        arr.push_str(&format!("'{w}' "));
    }
    let cword = words.len() - 1;
    let prog = format!(
        "source '{}'\nCOMP_WORDS=({arr})\nCOMP_CWORD={cword}\nCOMP_LINE=\"${{COMP_WORDS[*]}}\"\nCOMP_POINT=${{#COMP_LINE}}\n\
         _sparsebak_complete sparsebak \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
         printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        script.display()
    );
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let o = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .env("PATH", path)
        .env_remove("SPARSEBAK_CONFIG")
        .output()
        .unwrap();
    assert!(
        o.status.success() && o.stderr.is_empty(),
        "{words:?}: {}",
        text(&o)
    );
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completion_completes_commands_and_volume_names() {
    let (_dir, gen) = generated();
    let script = gen.join("completions/sparsebak.bash");
    let env = Env::new(&["alpha", "beta", "web"]);
    let cfg = env.config.display().to_string();
    assert_eq!(complete_bash(&script, &["sparsebak", "sen"]), ["send"]);
    assert_eq!(
        complete_bash(&script, &["sparsebak", "-q", "ver"]),
        ["verify"]
    );
    // Hidden helpers are never offered.
    assert_eq!(
        complete_bash(&script, &["sparsebak", "__"]),
        Vec::<String>::new()
    );
    assert_eq!(
        complete_bash(&script, &["sparsebak", "-c", &cfg, "send", ""]),
        ["alpha", "beta", "web"]
    );
    assert_eq!(
        complete_bash(
            &script,
            &["sparsebak", &format!("--config={cfg}"), "verify", "b"]
        ),
        ["beta"]
    );
    assert_eq!(
        complete_bash(
            &script,
            &[
                "sparsebak",
                "-c",
                &cfg,
                "--dest",
                "default",
                "prune",
                "--auto",
                "w"
            ]
        ),
        ["web"]
    );
    // Options still complete as clap says; an option's value is not a volume.
    assert!(
        complete_bash(&script, &["sparsebak", "-c", &cfg, "send", "--tar"])
            .contains(&"--tarfile".to_string())
    );
    let after_value_opt = complete_bash(
        &script,
        &["sparsebak", "-c", &cfg, "receive", "--save-to", "a"],
    );
    assert!(
        !after_value_opt.contains(&"alpha".to_string()),
        "{after_value_opt:?}"
    );
    // Commands without volumes get none.
    let tape = complete_bash(&script, &["sparsebak", "-c", &cfg, "tape", ""]);
    assert!(tape.contains(&"inventory".to_string()), "{tape:?}");
    assert!(!tape.contains(&"alpha".to_string()), "{tape:?}");
}

/// The zsh and fish scripts are valid for their shells, and complete volume names
/// from the config (zsh: its helper called as the completion system would, with
/// `compadd` replaced by a printer; fish: `complete -C`, as at the prompt).
#[test]
fn zsh_and_fish_completions_parse_and_complete_volumes() {
    let (_dir, gen) = generated();
    let env = Env::new(&["alpha", "beta"]);
    let cfg = env.config.display().to_string();
    let path = format!(
        "{}:{}",
        bin().parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let zsh = gen.join("completions/_sparsebak");
    let o = Command::new("zsh").arg("-n").arg(&zsh).output().unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
    let z = std::fs::read_to_string(&zsh).unwrap();
    // send monitor receive verify list resync prune repair delete rename untar diff
    // mount status
    assert_eq!(z.matches(":_sparsebak_volumes' \\").count(), 14, "{z}");
    let prog = format!(
        "compdef() {{ : }}\ncompadd() {{ [[ $1 == -a ]] && print -l -- \"${{(@P)2}}\" }}\n\
         source '{}'\nwords=(sparsebak -c '{cfg}' send '')\nCURRENT=5\n_sparsebak_volumes\n",
        zsh.display()
    );
    let o = Command::new("zsh")
        .args(["-f", "-c", &prog])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alpha\nbeta\n");

    let fish = gen.join("completions/sparsebak.fish");
    let o = Command::new("fish").arg("-n").arg(&fish).output().unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
    let fish_complete = |line: &str| {
        let prog = format!("source '{}'\ncomplete -C \"{line}\"\n", fish.display());
        let o = Command::new("fish")
            .args(["--no-config", "-c", &prog])
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            o.status.success() && o.stderr.is_empty(),
            "{line}: {}",
            text(&o)
        );
        String::from_utf8(o.stdout)
            .unwrap()
            .lines()
            .map(|l| l.split('\t').next().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(fish_complete("sparsebak sen"), ["send"]);
    assert_eq!(
        fish_complete(&format!("sparsebak -c {cfg} verify ")),
        ["alpha", "beta"]
    );
    assert_eq!(
        fish_complete(&format!("sparsebak --config={cfg} send b")),
        ["beta"]
    );
    let tape = fish_complete(&format!("sparsebak -c {cfg} tape "));
    assert!(tape.contains(&"inventory".to_string()), "{tape:?}");
    assert!(!tape.contains(&"alpha".to_string()), "{tape:?}");
}
