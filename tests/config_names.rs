//! The config file's syntax (inline comments, keys and sections given twice) and the
//! rules for volume names, through the real binary: a refused config or name touches
//! nothing, and a long but valid name works end to end.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopfs::{FsKind, LoopFs};

const CS: usize = 65536;

#[test]
fn inline_comments_do_not_reach_the_values() {
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir(p.join("img")).unwrap();
    std::fs::write(p.join("img/v"), Rng::new(1).bytes(3 * CS)).unwrap();
    let ini = format!(
        "; sparsebak test config\n[var]   ; settings\nencrypt = off\nsource = file       ; plain files\n\
         voldir = {0}/img\t# the images\ndestdir = {0}/archive   ; the archive\n\
         destvm =                   ; must be empty\nmetadir = {0}/meta ; source side\n\
         chunksize = 64K ; fixed\ncompression = zstd:3 ; level\n[volumes] # the list\n\
         v = enable   ; backed up\n",
        p.display()
    );
    let config = p.join("c.ini");
    std::fs::write(&config, ini).unwrap();
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&config)
        .args(["-u", "send", "v"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The archive and metadir are exactly where the values say, nothing else was made.
    assert_eq!(names_in(p), ["archive", "c.ini", "img", "meta"]);
    assert!(names_in(&p.join("archive")).contains(&"v".to_string()));
    let sessions: Vec<String> = names_in(&p.join("archive/v"))
        .into_iter()
        .filter(|n| n.starts_with("S_"))
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert!(p.join("meta/v").is_dir());
}

#[test]
fn readme_example_is_accepted() {
    // The README's example, pointed at temporary folders, loads and lists.
    let readme = include_str!("../README.md");
    let from = readme.find("## Configuration").unwrap();
    let start = readme[from..].find("```ini\n").unwrap() + from + "```ini\n".len();
    let end = readme[start..].find("```").unwrap() + start;
    let d = TestDir::new();
    let p = d.path();
    std::fs::create_dir(p.join("img")).unwrap();
    std::fs::write(p.join("img/vm-work-private"), [7u8; 1000]).unwrap();
    let ini = readme[start..end]
        .replace("/srv/images", &p.join("img").display().to_string())
        .replace(
            "/backup/sparsebak",
            &p.join("archive").display().to_string(),
        )
        .replace("/var/lib/sparsebak", &p.join("meta").display().to_string());
    let config = p.join("c.ini");
    std::fs::write(&config, ini).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(bin())
            .arg("-c")
            .arg(&config)
            .args(args)
            .env("SPARSEBAK_PASSPHRASE", "readme words")
            .output()
            .unwrap()
    };
    let o = run(&["-u", "send"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Encrypted (the default): the volume's folder does not show its name.
    assert!(!p.join("archive/vm-work-private").exists());
    assert!(p.join("archive/sparsebak.key").is_file());
    let o = run(&["list"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("vm-work-private"),
        "list names the volume"
    );
}

#[test]
fn keys_and_sections_given_twice_are_refused() {
    for (ini, want) in [
        (
            "[var]\nencrypt = off\nsource=file\nvoldir={img}\ndestdir={arch}\nmetadir={meta}\ndestdir={arch}2\n[volumes]\nv=enable\n",
            "key \"destdir\" given twice in [var]",
        ),
        (
            "[var]\nencrypt = off\nsource=file\nvoldir={img}\ndestdir={arch}\nmetadir={meta}\n[volumes]\nv=enable\nv=disable\n",
            "key \"v\" given twice in [volumes]",
        ),
        (
            "[var]\nencrypt = off\nsource=file\nvoldir={img}\ndestdir={arch}\n[volumes]\nv=enable\n[var]\nencrypt = off\nmetadir={meta}\n",
            "section [var] given twice",
        ),
    ] {
        let d = TestDir::new();
        let p = d.path();
        std::fs::create_dir(p.join("img")).unwrap();
        std::fs::write(p.join("img/v"), [1u8; 100]).unwrap();
        let ini = ini
            .replace("{img}", &p.join("img").display().to_string())
            .replace("{arch}", &p.join("archive").display().to_string())
            .replace("{meta}", &p.join("meta").display().to_string());
        let config = p.join("twice.ini");
        std::fs::write(&config, ini).unwrap();
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&config)
            .args(["-u", "send"])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{err}");
        assert!(err.contains(&config.display().to_string()), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert_eq!(names_in(p), ["img", "twice.ini"], "nothing was created");
    }
}

/// Each reserved or malformed name, with a fragment of the reason it is refused.
const REFUSED: &[(&str, &str)] = &[
    (".lock", "starts with '.'"),
    (".tmp-S_20261123-212200", ".tmp-*"),
    (".prune-journal", ".prune-journal"),
    (".sparsebak", ".sparsebak"),
    ("..", "starts with '.'"),
    ("-v", "read as an option"),
    ("S_20261123-212200", "prefix of session folders"),
    ("S_data", "prefix of session folders"),
    ("sparsebak.archive", "archive's own files"),
    ("catalog.sqlite", "catalog"),
    ("catalog.sqlite-journal", "journal files"),
    ("vm.tick", "snapshots of another volume"),
    ("vm.tock", "snapshots of another volume"),
    ("a;b", "only letters, digits"),
];

#[test]
fn reserved_volume_names_are_refused_in_the_config() {
    let too_long = "v".repeat(121);
    let mut cases: Vec<(&str, &str)> = REFUSED.to_vec();
    cases.push((&too_long, "121 bytes long; at most 120"));
    for &(name, why) in &cases {
        let env = Env::new(&["ok"]);
        std::fs::write(env.image("ok"), [1u8; 100]).unwrap();
        let ini = std::fs::read_to_string(&env.config).unwrap();
        std::fs::write(&env.config, format!("{ini}{name} = enable\n")).unwrap();
        for args in [vec!["send"], vec!["list"], vec!["send", "ok"]] {
            let err = env.fails(&args);
            assert!(
                err.contains(&format!("volume name {name:?} is not allowed: "))
                    && err.contains(why),
                "{name:?}: {err}"
            );
            assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        }
        assert!(!env.archive().exists(), "{name:?}: nothing was created");
        assert!(!env.meta().exists(), "{name:?}: nothing was created");
    }
}

#[test]
fn reserved_volume_names_are_refused_on_the_command_line() {
    let env = Env::new(&["ok"]);
    std::fs::write(env.image("ok"), [1u8; 100]).unwrap();
    let receive_to = format!("--save-to={}", env.path().join("out").display());
    for &(name, why) in REFUSED.iter().chain([("../ok", "contains '/'")].iter()) {
        // `--` so that a name starting with '-' reaches the check as a name.
        for a in [
            vec!["send", "--", name],
            vec!["verify", "--", name],
            vec!["receive", &receive_to, "--", name],
            vec!["prune", "--auto", "--keep=last:1", "--", name],
            vec!["delete", "--", name],
        ] {
            let err = env.fails(&a);
            assert!(
                err.contains(&format!("volume name {name:?} is not allowed: "))
                    && err.contains(why),
                "{a:?}: {err}"
            );
        }
    }
    assert!(!env.archive().exists(), "nothing was created");
    assert!(!env.path().join("out").exists());
}

#[test]
fn lvm_names_follow_lvm_rules() {
    for (name, vg, why) in [
        ("snapshot", "vg", "LVM reserves the LV name snapshot"),
        ("data_tmeta", "vg", "containing _tmeta"),
        ("a-b-c", &"g-".repeat(40), "device-mapper name"),
    ] {
        let d = TestDir::new();
        let config = d.path().join("lvm.ini");
        std::fs::write(
            &config,
            format!(
                "[var]\nencrypt = off\nsource = lvm\nvgname = {vg}\ndestdir = {0}/archive\nmetadir = {0}/meta\n[volumes]\n{name} = enable\n",
                d.path().display()
            ),
        )
        .unwrap();
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&config)
            .arg("list")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(why), "{name}: {err}");
    }
}

/// A name of the full 120 bytes on `source = file`: send, incremental send, list,
/// verify, receive, a stream chain and its restore, prune.
#[test]
fn longest_name_works_end_to_end_on_files() {
    let name = format!("{}-{}", "long.name_", "x".repeat(109));
    assert_eq!(name.len(), 120);
    let env = Env::new(&[&name]);
    let mut rng = Rng::new(120);
    let mut img = rng.bytes(40 * CS);
    std::fs::write(env.image(&name), &img).unwrap();
    env.send(&name);
    // A second send within the same second gets an ID a second ahead of the clock, a
    // session "after now" that retention keeps besides `last:1`: send in the next one.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    rng.fill(&mut img[5 * CS..9 * CS]);
    std::fs::write(env.image(&name), &img).unwrap();
    env.send(&name);
    let s = env.sessions(&name);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].changed, 4);
    env.verify_ok(&name, None);
    assert_same(&env.receive(&name, None), &img, "receive");
    let stream = env.path().join("full.stream");
    env.ok(&["send", &format!("--stream={}", stream.display()), &name]);
    let out = env.path().join("from-stream.img");
    env.ok(&[
        "receive",
        &format!("--from-stream={}", stream.display()),
        &format!("--save-to={}", out.display()),
    ]);
    assert_same(&std::fs::read(&out).unwrap(), &img, "from stream");
    env.ok(&["prune", "--auto", "--keep=last:1", &name]);
    assert_eq!(env.sessions(&name).len(), 1);
    assert_same(&env.receive(&name, None), &img, "after prune");
}

/// The same name on `source = reflink` (XFS), whose snapshots are named after it with
/// suffixes: `.sparsebak/<name>.tick.origin`, written as
/// `.<name>.tick.origin.sparsebak-partial`.
#[test]
fn longest_name_works_end_to_end_on_reflink() {
    let Some(fs) = LoopFs::new("longest_name_works_end_to_end_on_reflink", FsKind::Xfs, "") else {
        return;
    };
    let name = "r".repeat(120);
    let env = Env::reflink(&[&name], fs.path());
    let mut rng = Rng::new(7);
    let mut img = rng.bytes(32 * CS);
    std::fs::write(env.image(&name), &img).unwrap();
    env.send(&name);
    let snaps = names_in(&fs.path().join(".sparsebak"));
    assert!(
        snaps.contains(&format!("{name}.tick")) && snaps.contains(&format!("{name}.tick.origin")),
        "{snaps:?}"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(env.image(&name))
        .unwrap();
    let change = rng.bytes(2 * CS);
    use std::os::unix::fs::FileExt;
    f.write_all_at(&change, 3 * CS as u64).unwrap();
    f.sync_all().unwrap();
    drop(f);
    img[3 * CS..5 * CS].copy_from_slice(&change);
    env.ok(&["monitor", &name]);
    env.send(&name);
    let s = env.sessions(&name);
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].changed, 2);
    env.verify_ok(&name, None);
    assert_same(&env.receive(&name, None), &img, "reflink receive");
}
