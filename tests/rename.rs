//! `sparsebak rename OLD NEW` for `source = file` and `source = reflink` (real XFS on a
//! loop device, root): after the image is renamed, the old name's "cannot open" error
//! points to `rename`; `rename` moves the archive folder, the source-side state and the
//! reflink tick; the next send of NEW is an incremental on OLD's history with exactly
//! the chunks written; every session restores byte-identical; running it again is a
//! no-op; a name that has state already is refused; stream chains start again.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use common::*;
use loopfs::{FsKind, LoopFs};

const CS: usize = 65536;
const OLD: &str = "vm-work-private";
const NEW: &str = "vm-play-private";

/// Point the config's [volumes] at `names`.
fn set_volumes(env: &Env, names: &[&str]) {
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let head = &ini[..ini.find("[volumes]").unwrap()];
    let mut ini = format!("{head}[volumes]\n");
    for n in names {
        ini.push_str(&format!("{n} = enable\n"));
    }
    std::fs::write(&env.config, ini).unwrap();
}

fn scenario(env: &Env, reflink: bool) {
    let mut rng = Rng::new(21);
    let mut img = vec![0u8; 40 * CS];
    rng.fill(&mut img[..12 * CS]);
    std::fs::write(env.image(OLD), &img).unwrap();
    env.send(OLD);
    let mut versions = vec![img.clone()];
    env.write_at(OLD, 3 * CS as u64 + 10, b"abc");
    env.send(OLD);
    versions.push(env.read_image(OLD));
    let stream = env.path().join("s1.tar");
    env.ok(&["send", OLD, &format!("--stream={}", stream.display())]);
    let old_last = env.latest(OLD);
    let snaps = env.voldir.join(".sparsebak");
    if reflink {
        assert!(snaps.join(format!("{OLD}.tick")).exists());
    }

    // The image is renamed (as Qubes renames a VM's volumes); the config still names
    // the old one: its error says what to do.
    std::fs::rename(env.image(OLD), env.image(NEW)).unwrap();
    let cmd = if reflink { "monitor" } else { "send" };
    let err = env.fails(&[cmd, OLD]);
    assert!(
        err.contains(&format!("`sparsebak rename {OLD} NEW-NAME`")),
        "{err}"
    );

    let out = env.run(&["-v", "rename", OLD, NEW]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("the configuration still names {OLD}")),
        "{said}"
    );
    assert!(said.contains("1 stream chain(s)"), "{said}");
    assert!(!env.vol_dir(OLD).exists() && env.vol_dir(NEW).is_dir());
    assert!(!env.meta().join(OLD).exists() && env.meta().join(NEW).is_dir());
    if reflink {
        for s in ["tick", "tick.origin"] {
            assert!(!snaps.join(format!("{OLD}.{s}")).exists(), "{s}");
            assert!(snaps.join(format!("{NEW}.{s}")).exists(), "{s}");
        }
    }
    // Again: nothing left to do.
    env.ok(&["rename", OLD, NEW]);

    set_volumes(env, &[NEW]);
    if reflink {
        env.ok(&["monitor"]);
    }
    env.write_at(NEW, 20 * CS as u64, &rng.bytes(2 * CS));
    env.send(NEW);
    versions.push(env.read_image(NEW));
    let s = env.sessions(NEW);
    assert_eq!(s.len(), 3, "the history came along");
    let last = s.last().unwrap();
    assert_eq!(last.changed, 2, "incremental on the old history");
    let list = env.ok(&["list", NEW]);
    assert!(
        list.lines()
            .last()
            .unwrap()
            .ends_with(&format!("previous={}", old_last.id)),
        "{list}"
    );
    if reflink {
        // Only the marked chunks were read: the tick followed the volume.
        assert_eq!(last.read, 2 * CS as u64);
    }
    for (i, v) in versions.iter().enumerate() {
        let got = env.receive(NEW, Some(&s[i].id));
        assert_same(&got, v, &format!("session {i} of {NEW}"));
    }
    env.verify_ok(NEW, None);

    // The stream chain starts again: the next stream is full (restores alone).
    let s2 = env.path().join("s2.tar");
    env.ok(&["send", NEW, &format!("--stream={}", s2.display())]);
    let r = env.path().join("from-stream.img");
    env.ok(&[
        "receive",
        &format!("--from-stream={}", s2.display()),
        &format!("--save-to={}", r.display()),
    ]);
    assert_same(
        &std::fs::read(&r).unwrap(),
        versions.last().unwrap(),
        "stream",
    );

    // A name that has its own history is not overwritten.
    std::fs::write(env.image("other"), rng.bytes(4 * CS)).unwrap();
    set_volumes(env, &[NEW, "other"]);
    env.send("other");
    let err = env.fails(&["rename", NEW, "other"]);
    assert!(
        err.contains("volume other already has sparsebak state"),
        "{err}"
    );
    assert_eq!(env.sessions(NEW).len(), 3);
    // Nothing of that name anywhere.
    let err = env.fails(&["rename", "nothing", "else"]);
    assert!(
        err.contains("volume nothing has no sparsebak state"),
        "{err}"
    );
}

#[test]
fn rename_file_source() {
    let env = Env::new(&[OLD]);
    scenario(&env, false);
}

#[test]
fn rename_reflink_source() {
    let Some(fs) = LoopFs::new("rename_reflink_source", FsKind::Xfs, "") else {
        return;
    };
    let env = Env::reflink(&[OLD], fs.path());
    scenario(&env, true);
}

/// Every file under `dir` at least `depth` folders below it (chunk files: the volume
/// folder, the session folder, the address prefix folder), oldest first.
fn files_below(dir: &std::path::Path, depth: usize) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, level: usize, depth: usize, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                walk(&p, level + 1, depth, out);
            } else if level >= depth {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, 0, depth, &mut out);
    out.sort();
    out
}

/// After `rename`, the infos (and this machine's copies of them) still name the volume
/// the sessions were made as: `repair` of the new name uses them and puts back a
/// damaged chunk of a session sent before the rename, plain and encrypted.
fn repair_after_rename(env: &Env) {
    let mut rng = Rng::new(33);
    let mut img = vec![0u8; 16 * CS];
    rng.fill(&mut img[..8 * CS]);
    std::fs::write(env.image(OLD), &img).unwrap();
    env.send(OLD);
    std::fs::rename(env.image(OLD), env.image(NEW)).unwrap();
    env.ok(&["rename", OLD, NEW]);
    set_volumes(env, &[NEW]);
    let id = env.latest(NEW).id;
    // A chunk file of the session sent before the rename, damaged in place.
    let chunks = files_below(&env.archive(), 3);
    assert_eq!(chunks.len(), 8, "{chunks:?}");
    let victim = &chunks[3];
    let good = std::fs::read(victim).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xFF;
    std::fs::write(victim, &bad).unwrap();
    let err = env.fails(&["verify", NEW]);
    assert!(err.contains(&format!("sparsebak repair {NEW}")), "{err}");

    let out = env.run(&["repair", "--dry-run", NEW]);
    let (said, told) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{said}\n{told}");
    assert!(!told.contains("not usable"), "{told}");
    assert!(said.contains(&format!("{NEW}: would re-create")), "{said}");
    assert_eq!(
        std::fs::read(victim).unwrap(),
        bad,
        "a dry run changes nothing"
    );

    let said = env.ok(&["repair", NEW]);
    assert!(
        said.contains(&format!("{NEW}: repaired 1 file(s)")),
        "{said}"
    );
    env.verify_ok(NEW, None);
    assert_same(&env.receive(NEW, Some(&id)), &img, "restored after repair");
}

#[test]
fn repair_after_rename_plain() {
    repair_after_rename(&Env::new(&[OLD]));
}

#[test]
fn repair_after_rename_encrypted() {
    repair_after_rename(&Env::encrypted(&[OLD], "rename repair words"));
}
