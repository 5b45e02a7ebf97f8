//! `spbk-assemble` rebuilds every session from the archive folder alone, equal to
//! `sparsebak receive`, and `-c` catches a flipped byte.

mod common;
use common::*;
use std::process::Command;

const CS: usize = 65536;

#[test]
fn assemble_equals_receive_for_every_session() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(12);
    let mut img = vec![0u8; 30 * CS + 5];
    rng.fill(&mut img[..12 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[20 * CS..22 * CS]);
    img[0..CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    img.truncate(8 * CS + 3);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    // Copy the archive somewhere else: no config, no metadir.
    let copy = env.path().join("elsewhere");
    let st = Command::new("cp")
        .arg("-a")
        .arg(env.vol_dir("v"))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    for s in env.sessions("v") {
        let want = env.receive("v", Some(&s.id));
        let out = env.path().join("asm.img");
        let o = Command::new(assemble_bin())
            .args(["-c", "-f", &format!("--session={}", s.id), "-o"])
            .arg(&out)
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_same(
            &std::fs::read(&out).unwrap(),
            &want,
            &format!("assemble -o {}", s.id),
        );
        // And to stdout.
        let o = Command::new(assemble_bin())
            .arg(format!("--session={}", s.id))
            .arg(&copy)
            .output()
            .unwrap();
        assert!(o.status.success());
        assert_same(&o.stdout, &want, &format!("assemble stdout {}", s.id));
    }
}

#[test]
fn check_catches_a_flipped_byte() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(13).bytes(4 * CS)).unwrap();
    env.ok(&["send", "v"]);
    let s = env.latest("v");
    let chunk = env
        .vol_dir("v")
        .join(format!("S_{}/x000000000/x0000000000020000", s.id));
    // Store the chunk uncompressed-equivalent: flip a byte inside the zstd frame's
    // payload, which either fails to decode or decodes to different bytes.
    let mut d = std::fs::read(&chunk).unwrap();
    let i = d.len() - 8;
    d[i] ^= 0x40;
    std::fs::write(&chunk, d).unwrap();
    let out = env.path().join("asm.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg("-o")
        .arg(&out)
        .arg(env.vol_dir("v"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("0x0000000000020000") || err.contains("x0000000000020000"),
        "{err}"
    );
    assert!(!out.exists(), "no partial output left");
}

/// After an interrupted prune, `spbk-assemble` (which only reads) says the volume has
/// an unfinished prune and how to finish it, rather than blaming a chunk the prune
/// moved; once a sparsebak run finished it, the session assembles whole.
#[test]
fn assemble_after_an_interrupted_prune_says_to_finish_it() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(11);
    let mut v = rng.bytes(8 * CS);
    for i in 0..3 {
        rng.fill(&mut v[i * CS..i * CS + 10]);
        env.write_at("v", 0, &v);
        env.send("v");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let ids: Vec<String> = env.sessions("v").into_iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3);
    let o = env.run_env(
        &["prune", "v", &format!("--session={}", ids[0])],
        &[("SPARSEBAK_FAILPOINT", "prune-mid-move")],
    );
    assert!(!o.status.success(), "the prune should have been killed");
    assert!(env.vol_dir("v").join(".prune-journal").exists());
    let out = env.path().join("a.img");
    let assemble = || {
        Command::new(assemble_bin())
            .arg("-c")
            .arg("-o")
            .arg(&out)
            .arg(env.vol_dir("v"))
            .output()
            .unwrap()
    };
    let o = assemble();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("the volume has an interrupted prune"), "{err}");
    assert!(err.contains("`sparsebak list v`"), "{err}");
    assert!(
        !err.contains("No such file"),
        "no missing chunk is blamed:\n{err}"
    );
    assert!(!out.exists(), "nothing is written");
    // Nothing was changed by the reader: the journal is still there to be finished.
    assert!(env.vol_dir("v").join(".prune-journal").exists());

    env.ok(&["list", "v"]);
    let o = assemble();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(
        &std::fs::read(&out).unwrap(),
        &v,
        "assembled after the prune was finished",
    );
}

/// A path that is not a volume folder is said as such, not as "there are no
/// sessions": one that does not exist, a file, and an archive's root folder.
#[test]
fn assemble_says_what_a_wrong_path_is() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(19).bytes(CS)).unwrap();
    env.send("v");
    let nowhere = env.path().join("no-such-folder");
    let file = env.image("v");
    let out = env.path().join("asm.img");
    for (dir, why) in [
        (
            &nowhere,
            "does not exist; give a volume folder of an archive",
        ),
        (&file, "is not a folder; give a volume folder of an archive"),
        (
            &env.archive(),
            "is an archive's root folder; give one of its volume folders",
        ),
    ] {
        let o = Command::new(assemble_bin())
            .arg("-o")
            .arg(&out)
            .arg(dir)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(&format!("{} {why}", dir.display())),
            "{}: {err}",
            dir.display()
        );
        assert!(!err.contains("no sessions"), "{err}");
        assert!(!out.exists());
    }
    assert!(!nowhere.exists());
}

/// Bad usage of `spbk-assemble` (a selector that cannot be understood, an option it
/// does not take, no volume folder) exits 2 before anything is read or written.
#[test]
fn bad_usage_exits_2_before_anything_is_written() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(4).bytes(2 * CS)).unwrap();
    env.send("v");
    let out = env.path().join("out.img");
    let vol = env.vol_dir("v").display().to_string();
    let o_out = out.display().to_string();
    for (args, want) in [
        (
            vec!["--session=bogus", "-o", &o_out, &vol],
            "cannot understand session selector \"bogus\"",
        ),
        (vec!["--save-to=x", &vol], "unexpected argument '--save-to'"),
        (vec!["-o", &o_out], "<VOLUME_DIR>"),
    ] {
        let o = Command::new(assemble_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
}

#[test]
fn an_encrypted_archive_is_assembled_by_volume_name_with_its_passphrase() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new(&["v"]);
    let pass = env.path().join("pass");
    std::fs::write(&pass, "assemble words\n").unwrap();
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let c = std::fs::read_to_string(&env.config).unwrap().replace(
        "encrypt = off\n",
        &format!("passfile = {}\n", pass.display()),
    );
    std::fs::write(&env.config, c).unwrap();
    let mut rng = Rng::new(31);
    let mut img = vec![0u8; 20 * CS + 7];
    rng.fill(&mut img[..9 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    rng.fill(&mut img[15 * CS..17 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let want = env.receive("v", None);
    assert_same(&want, &img, "receive of the encrypted archive");
    // The whole archive somewhere else: no config, no metadir.
    let copy = env.path().join("elsewhere");
    let st = Command::new("cp")
        .arg("-a")
        .arg(env.archive())
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    assert!(
        !copy.join("v").exists(),
        "the folder does not show the name"
    );
    let out = env.path().join("asm.img");
    let o = Command::new(assemble_bin())
        .arg("-c")
        .arg(format!("--passfile={}", pass.display()))
        .arg("-o")
        .arg(&out)
        .arg(copy.join("v"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_same(
        &std::fs::read(&out).unwrap(),
        &want,
        "assemble of the latest session",
    );
    // A wrong passphrase: one line, and no output file.
    let out2 = env.path().join("asm2.img");
    let o = Command::new(assemble_bin())
        .env("SPARSEBAK_PASSPHRASE", "not these words")
        .arg("-o")
        .arg(&out2)
        .arg(copy.join("v"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert_eq!(
        err.trim_end(),
        format!(
            "spbk-assemble: error: wrong passphrase for the encrypted archive at {}; nothing was written",
            copy.display()
        )
    );
    assert!(!out2.exists());
    // No passphrase at all, no terminal: the options are named.
    let o = Command::new(assemble_bin())
        .env_remove("SPARSEBAK_PASSPHRASE")
        .stdin(std::process::Stdio::null())
        .arg("-o")
        .arg(&out2)
        .arg(copy.join("v"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("give --passfile=PATH"), "{err}");
    assert!(!out2.exists());
}
