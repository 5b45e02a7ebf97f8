//! The Debian package: `scripts/package.sh` builds it (here from the binaries this
//! test run built, with `--profile dev --no-build`, so no release build is needed),
//! its control fields say what it depends on, and unpacked into an empty root it
//! holds every file it promises and its `sparsebak --version` runs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{assemble_bin, bin, Env, TestDir};

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

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", text(&o));
    String::from_utf8(o.stdout).unwrap()
}

/// Build the package into `out`; returns the .deb.
fn build_package(out: &Path) -> PathBuf {
    // Both binaries of this run, where cargo-deb looks for the dev profile's.
    let target = bin().parent().unwrap().parent().unwrap().to_path_buf();
    assert_eq!(assemble_bin().parent(), bin().parent());
    ok(Command::new("bash")
        .arg(repo().join("scripts/package.sh"))
        .args(["--profile", "dev", "--no-build", "--fast", "--out"])
        .arg(out)
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(repo()));
    let debs: Vec<_> = common::names_in(out)
        .into_iter()
        .filter(|n| n.ends_with(".deb"))
        .collect();
    let version = env!("CARGO_PKG_VERSION");
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(debs, [format!("sparsebak_{version}-1_{}.deb", arch.trim())]);
    out.join(&debs[0])
}

/// The value of control field `name` (`Depends: a, b` gives `a, b`).
fn field(info: &str, name: &str) -> String {
    let prefix = format!(" {name}: ");
    info.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} field in:\n{info}"))
        .to_string()
}

#[test]
fn the_package_installs_every_file_and_runs() {
    let dir = TestDir::new();
    let deb = build_package(&dir.path().join("out"));

    let info = ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    assert_eq!(field(&info, "Package"), "sparsebak");
    assert_eq!(
        field(&info, "Version"),
        format!("{}-1", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(field(&info, "Section"), "admin");
    let depends = field(&info, "Depends");
    assert!(depends.starts_with("libc6 (>= "), "{depends}");
    assert!(
        depends.ends_with(", lvm2, thin-provisioning-tools"),
        "{depends}"
    );
    assert_eq!(
        field(&info, "Recommends"),
        "btrfs-progs | xfsprogs, openssh-client"
    );
    assert_eq!(field(&info, "Suggests"), "mt-st, mtx");

    // Unpacked into an empty root (as dpkg -i would, without running anything).
    let root = dir.path().join("root");
    ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    let mut want: Vec<String> = [
        "usr/bin/sparsebak",
        "usr/bin/spbk-assemble",
        "usr/share/man/man8/sparsebak.8.gz",
        "usr/share/man/man8/sparsebak-send.8.gz",
        "usr/share/man/man8/sparsebak-verify.8.gz",
        "usr/share/man/man8/sparsebak-tape-inventory.8.gz",
        "usr/share/man/man8/spbk-assemble.8.gz",
        "usr/share/man/man5/sparsebak.ini.5.gz",
        "usr/share/bash-completion/completions/sparsebak",
        "usr/share/zsh/vendor-completions/_sparsebak",
        "usr/share/fish/vendor_completions.d/sparsebak.fish",
        "usr/share/doc/sparsebak/sparsebak.ini.example",
        "usr/share/doc/sparsebak/copyright",
        "usr/share/doc/sparsebak/examples/cron.d-sparsebak",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for u in common::names_in(&repo().join("packaging/systemd")) {
        want.push(format!("usr/lib/systemd/system/{u}"));
    }
    assert_eq!(want.iter().filter(|w| w.contains("systemd")).count(), 8);
    for w in &want {
        let p = root.join(w);
        let m = std::fs::metadata(&p).unwrap_or_else(|e| panic!("{w}: {e}"));
        let mode = std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777;
        let exec = w.starts_with("usr/bin/");
        assert_eq!(mode, if exec { 0o755 } else { 0o644 }, "{w}");
        assert!(m.len() > 0, "{w}");
    }
    // The units are the ones in the source tree, the example is the shipped one.
    for u in common::names_in(&repo().join("packaging/systemd")) {
        assert_eq!(
            std::fs::read(root.join("usr/lib/systemd/system").join(&u)).unwrap(),
            std::fs::read(repo().join("packaging/systemd").join(&u)).unwrap(),
            "{u}"
        );
    }
    assert_eq!(
        std::fs::read(root.join("usr/share/doc/sparsebak/sparsebak.ini.example")).unwrap(),
        std::fs::read(repo().join("sparsebak.ini.example")).unwrap()
    );
    // Every man page in it is gzipped and renders.
    let mut pages = common::names_in(&root.join("usr/share/man/man8"));
    assert!(pages.len() > 20, "{pages:?}");
    pages.retain(|p| !p.ends_with(".8.gz"));
    assert_eq!(pages, Vec::<String>::new());
    let o = Command::new("man")
        .args(["--warnings=w", "-l"])
        .arg(root.join("usr/share/man/man8/sparsebak-send.8.gz"))
        .env("MANWIDTH", "80")
        .output()
        .unwrap();
    assert!(o.status.success() && o.stderr.is_empty(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("sparsebak-send(8)"));

    // Stripped of their debug info (the built ones have it).
    for (installed, built) in [("sparsebak", bin()), ("spbk-assemble", assemble_bin())] {
        let small = std::fs::metadata(root.join("usr/bin").join(installed))
            .unwrap()
            .len();
        let big = std::fs::metadata(&built).unwrap().len();
        assert!(small * 2 < big, "{installed}: {small} bytes, built {big}");
    }
    // The installed binaries run.
    let version = format!("sparsebak {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        ok(Command::new(root.join("usr/bin/sparsebak")).arg("--version")),
        version
    );
    assert_eq!(
        ok(Command::new(root.join("usr/bin/spbk-assemble")).arg("--version")),
        format!("spbk-assemble {}\n", env!("CARGO_PKG_VERSION"))
    );
    // And the installed completion completes a volume through the installed binary.
    let env = Env::new(&["installed-vol"]);
    let prog = format!(
        "source '{}'\nCOMP_WORDS=(sparsebak -c '{}' send i)\nCOMP_CWORD=4\n\
         _sparsebak_complete sparsebak i send\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
        root.join("usr/share/bash-completion/completions/sparsebak")
            .display(),
        env.config.display()
    );
    let out = ok(Command::new("bash")
        .args(["--norc", "--noprofile", "-c", &prog])
        .env(
            "PATH",
            format!("{}:/usr/bin:/bin", root.join("usr/bin").display()),
        ));
    assert_eq!(out, "installed-vol\n");
}
