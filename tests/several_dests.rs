//! Several destinations: two loop-mounted filesystems as rotating USB disks, mounted
//! and unmounted between sends, each incremental on its own (exact `changed=` counts,
//! byte-identical restores from each); `send --dest=all` with a disk absent and with a
//! present destination failing; `--dest` naming nothing; `[var]` alone as before.
//! Needs root (see `common/loopfs.rs`).

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Output;

use common::*;
use loopfs::{FsKind, LoopFs};

const CS: usize = 65536;
const NCHUNKS: usize = 64;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Write `ini` as the env's config (the env's folders stay: img, meta).
fn set_config(env: &Env, ini: &str) {
    std::fs::write(&env.config, ini).unwrap();
}

/// `list --dest=DEST v`.
fn sessions_at(env: &Env, dest: &str, vol: &str) -> Vec<Session> {
    let d = format!("--dest={dest}");
    let out = env.ok(&["list", &d, vol]);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some(vol), "list header");
    lines.map(parse_list_line).collect()
}

/// Receive session `id` of `vol` from destination `dest`.
fn receive_at(env: &Env, dest: &str, vol: &str, id: &str) -> Vec<u8> {
    let out = env.path().join(format!("recv-{dest}-{vol}.img"));
    let d = format!("--dest={dest}");
    let save = format!("--save-to={}", out.display());
    let s = format!("--session={id}");
    env.ok(&["receive", &d, vol, &save, &s]);
    let data = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    data
}

/// Overwrite the chunks `idx` of `vol` with new random bytes (in place: the reflink
/// layer sees exactly these extents change); returns the set changed.
fn change(env: &Env, vol: &str, rng: &mut Rng, idx: &[usize]) -> BTreeSet<usize> {
    for &i in idx {
        env.write_at(vol, (i * CS) as u64, &rng.bytes(CS));
    }
    idx.iter().copied().collect()
}

#[test]
fn rotating_disks_each_get_their_own_incrementals() {
    let Some(src) = LoopFs::new("rotating_disks", FsKind::Xfs, "") else {
        return;
    };
    let Some(usb_a) = LoopFs::new("rotating_disks", FsKind::Ext4, "") else {
        return;
    };
    let Some(mut usb_b) = LoopFs::new("rotating_disks", FsKind::Ext4, "") else {
        return;
    };
    let voldir = src.path().join("img");
    std::fs::create_dir(&voldir).unwrap();
    let env = Env::reflink(&["v"], &voldir);
    // No destination keys in [var]: two rotating disks, no `default`.
    set_config(
        &env,
        &format!(
            "[var]\nencrypt = off\nsource = reflink\nvoldir = {}\nmetadir = {}\n\
             [dest:usbA]\ndestmountpoint = {}\ndestdir = sb\n\
             [dest:usbB]\ndestmountpoint = {}\ndestdir = sb\n\
             [volumes]\nv = enable\n",
            voldir.display(),
            env.meta().display(),
            usb_a.path().display(),
            usb_b.path().display()
        ),
    );
    let mut rng = Rng::new(41);
    env.write_at("v", 0, &rng.bytes(NCHUNKS * CS));
    let mut versions = vec![env.read_image("v")];

    // Both disks present: a full session on each.
    let out = env.run(&["-v", "send", "--dest=all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("v to usbA: session "), "{err}");
    assert!(err.contains("v to usbB: session "), "{err}");
    assert!(err.contains("send --dest=all: sent to usbA, usbB"), "{err}");
    for d in ["usbA", "usbB"] {
        let s = sessions_at(&env, d, "v");
        assert_eq!(s.len(), 1, "{d}");
        assert_eq!(s[0].changed, NCHUNKS as u64, "{d}: full");
    }
    // Each named destination keeps its own map and copies; nothing at the old paths.
    let m = env.meta().join("v");
    for d in ["usbA", "usbB"] {
        assert!(m.join("dest").join(d).join("deltamap").is_file(), "{d}");
        assert!(m.join("dest").join(d).join("sessions").is_dir(), "{d}");
    }
    assert!(!m.join("deltamap").exists());
    assert!(!m.join("sessions").exists());

    // Disk B goes offsite; A gets three nightly sends with k chunks changed each.
    usb_b.unmount();
    let nightly: [&[usize]; 3] = [&[1, 2, 3], &[3, 10, 11, 12, 40], &[0, 63]];
    let mut union = BTreeSet::new();
    for idx in nightly {
        union.extend(change(&env, "v", &mut rng, idx));
        versions.push(env.read_image("v"));
        env.ok(&["monitor"]);
        let out = env.run(&["-v", "send", "--dest=all"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "sparsebak: destination usbB skipped: disk not mounted (destmountpoint {} is \
                 not a mounted filesystem)",
                usb_b.path().display()
            )),
            "{err}"
        );
        assert!(
            err.contains("send --dest=all: sent to usbA; skipped (not present): usbB"),
            "{err}"
        );
        let s = sessions_at(&env, "usbA", "v");
        assert_eq!(s.last().unwrap().changed, idx.len() as u64, "usbA {idx:?}");
    }
    assert_eq!(sessions_at(&env, "usbA", "v").len(), 4);
    // Nothing was created under B's empty mount point.
    assert_eq!(names_in(usb_b.path()), Vec::<String>::new());

    // B comes back: one incremental holding exactly the union of the three weeks,
    // found through its own delta map (it reads only those chunks, not the volume).
    usb_b.mount();
    let out = env.run(&["-v", "send", "--dest=usbB"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let b = sessions_at(&env, "usbB", "v");
    assert_eq!(b.len(), 2);
    assert_eq!(
        b[1].changed,
        union.len() as u64,
        "usbB: the union {union:?}"
    );
    assert_eq!(union.len(), 9);
    assert!(
        b[1].read <= (union.len() * CS) as u64,
        "usbB read {} bytes for {} chunks",
        b[1].read,
        union.len()
    );

    // Byte-identical restores of every session from each disk.
    let a = sessions_at(&env, "usbA", "v");
    for (s, want) in a.iter().zip(&versions) {
        assert_same(&receive_at(&env, "usbA", "v", &s.id), want, "usbA");
    }
    assert_same(
        &receive_at(&env, "usbB", "v", &b[0].id),
        &versions[0],
        "usbB 1",
    );
    assert_same(
        &receive_at(&env, "usbB", "v", &b[1].id),
        &versions[3],
        "usbB 2",
    );
    for d in ["--dest=usbA", "--dest=usbB"] {
        env.ok(&["verify", d, "v"]);
    }

    // Both present again: each gets the same next incremental.
    change(&env, "v", &mut rng, &[20, 21]);
    let last = env.read_image("v");
    let out = env.run(&["-v", "send", "--dest=all"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for d in ["usbA", "usbB"] {
        let s = sessions_at(&env, d, "v");
        assert_eq!(s.last().unwrap().changed, 2, "{d}");
        assert_same(&receive_at(&env, d, "v", &s.last().unwrap().id), &last, d);
    }

    // Pruning one disk leaves the other alone, and keeps this machine's copies of that
    // disk's sessions in step with it (verify compares them).
    let a = sessions_at(&env, "usbA", "v");
    assert_eq!(a.len(), 5);
    let s = format!("--session={}", a[1].id);
    env.ok(&["prune", "--dest=usbA", "v", &s]);
    let a2 = sessions_at(&env, "usbA", "v");
    assert_eq!(
        a2.iter().map(|s| &s.id).collect::<Vec<_>>(),
        [&a[0].id, &a[2].id, &a[3].id, &a[4].id]
    );
    let folded = format!("--session={}", a[2].id);
    env.ok(&["verify", "--dest=usbA", "v", &folded]);
    assert_same(
        &receive_at(&env, "usbA", "v", &a[2].id),
        &versions[2],
        "usbA folded",
    );
    assert_eq!(
        names_in(&env.meta().join("v/dest/usbA/sessions")),
        a2.iter().map(|s| format!("S_{}", s.id)).collect::<Vec<_>>()
    );
    assert_eq!(sessions_at(&env, "usbB", "v").len(), 3);
    assert_eq!(names_in(&env.meta().join("v/dest/usbB/sessions")).len(), 3);

    // Disk A mounted where B belongs is refused for B: each disk is known by its
    // destination's name, not by where it is mounted.
    let a_root = usb_a.path().join("sb");
    let ini = std::fs::read_to_string(&env.config).unwrap();
    set_config(
        &env,
        &ini.replace(
            &format!(
                "destmountpoint = {}\ndestdir = sb\n[volumes]",
                usb_b.path().display()
            ),
            &format!(
                "destmountpoint = {}\ndestdir = sb\n[volumes]",
                usb_a.path().display()
            ),
        ),
    );
    let err = env.fails(&["send", "--dest=usbB", "v"]);
    assert!(
        err.contains(&format!("the archive at {} is archive ", a_root.display()))
            && err.contains("is another disk mounted?")
            && err.contains("`sparsebak send --dest=usbB --accept-archive`"),
        "{err}"
    );
    set_config(&env, &ini);

    // Without --dest the destination `default` is meant, and there is none here.
    let o = env.run(&["list", "v"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "no destination named \"default\" in {} (configured: usbA, usbB); name one with \
             --dest=NAME",
            env.config.display()
        )),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dest_all_fails_when_a_present_destination_fails() {
    let Some(usb) = LoopFs::new("dest_all_fails", FsKind::Ext4, "") else {
        return;
    };
    let env = Env::new(&["v"]);
    let gone = env.path().join("gone-mnt");
    std::fs::create_dir(&gone).unwrap();
    // `default` in [var], a disk that is mounted, one that is not.
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        "[volumes]\n",
        &format!(
            "[dest:usb]\ndestmountpoint = {}\ndestdir = sb\n\
             [dest:gone]\ndestmountpoint = {}\ndestdir = sb\n[volumes]\n",
            usb.path().display(),
            gone.display()
        ),
    );
    set_config(&env, &ini);
    let mut rng = Rng::new(5);
    env.write_at("v", 0, &rng.bytes(8 * CS));
    let v1 = env.read_image("v");
    let o = env.run(&["send", "--dest=all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("sparsebak: destination gone skipped: disk not mounted"),
        "{}",
        stderr(&o)
    );

    // The disk goes read-only: the present destination `usb` fails, `default` still
    // gets its session, `gone` is skipped; exit 1.
    usb.remount("ro");
    env.write_at("v", 3 * CS as u64, &rng.bytes(CS));
    let v2 = env.read_image("v");
    let o = env.run(&["send", "--dest=all"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "sparsebak: error: destination usb: the archive at {} is on a read-only filesystem",
            usb.path().join("sb").display()
        )),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with(
            "sparsebak: error: send --dest=all: failed on 1 of 2 present destination(s): usb; \
             skipped (not present): gone"
        ),
        "{err}"
    );
    let d = env.sessions("v");
    assert_eq!(d.len(), 2);
    assert_eq!(d[1].changed, 1);
    assert_eq!(sessions_at(&env, "usb", "v").len(), 1);
    assert_same(&env.receive("v", None), &v2, "default");

    // Writable again: its one incremental catches up; exit 0.
    usb.remount("rw");
    let o = env.run(&["send", "--dest=all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let u = sessions_at(&env, "usb", "v");
    assert_eq!(u.len(), 2);
    assert_eq!(u[1].changed, 1);
    assert_same(&receive_at(&env, "usb", "v", &u[0].id), &v1, "usb 1");
    assert_same(&receive_at(&env, "usb", "v", &u[1].id), &v2, "usb 2");
    // `default` had no change: no new session there.
    assert_eq!(env.sessions("v").len(), 2);

    // No destination present at all: nothing backed up, exit 3 (nothing done).
    let only_gone = format!(
        "[var]\nencrypt = off\nsource = file\nvoldir = {}\nmetadir = {}\n\
         [dest:gone]\ndestmountpoint = {}\ndestdir = sb\n[volumes]\nv = enable\n",
        env.voldir.display(),
        env.meta().display(),
        gone.display()
    );
    set_config(&env, &only_gone);
    let o = env.run(&["send", "--dest=all"]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(
        stderr(&o).trim_end().ends_with(
            "sparsebak: error: send --dest=all: no destination is present, nothing was sent; \
             skipped (not present): gone"
        ),
        "{}",
        stderr(&o)
    );
    assert_eq!(names_in(&gone), Vec::<String>::new());
}

#[test]
fn dest_usage_errors() {
    let env = Env::new(&["v"]);
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        "[volumes]\n",
        &format!(
            "[dest:usb]\ndestdir = {}\n[volumes]\n",
            env.path().join("usb").display()
        ),
    );
    set_config(&env, &ini);
    env.write_at("v", 0, &Rng::new(1).bytes(2 * CS));
    for (args, want) in [
        (
            vec!["list", "--dest=nope"],
            format!(
                "no destination named \"nope\" in {} (configured: default, usb)",
                env.config.display()
            ),
        ),
        (
            vec!["send", "--dest=nope", "v"],
            "no destination named \"nope\"".to_string(),
        ),
        (
            vec!["verify", "--dest=all", "v"],
            "--dest=all is for send only; verify works on one destination".to_string(),
        ),
        (
            vec!["monitor", "--dest=usb"],
            "monitor marks the delta map of every destination; --dest does not apply".into(),
        ),
        (
            vec!["send", "--dest=all", "--accept-archive"],
            "--accept-archive takes one destination's archive".into(),
        ),
        (
            vec!["send", "--dest=../x"],
            "a destination name (letters, digits and + _ . -), or all".into(),
        ),
    ] {
        let o = env.run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(&want), "{args:?}: {}", stderr(&o));
        // Bad usage found after the config is read is shown with the command's usage,
        // as clap shows its own (a bad value says where --help is instead).
        let usage = if args[1].starts_with("--dest=../") {
            "For more information, try '--help'."
        } else {
            "Usage: sparsebak"
        };
        assert!(stderr(&o).contains(usage), "{args:?}: {}", stderr(&o));
    }
    // Nothing was sent anywhere by the refused runs.
    assert!(!env.archive().exists());
    assert!(!env.path().join("usb").exists());
    // `--dest=default` is the same destination as no --dest.
    env.ok(&["send", "--dest=default", "v"]);
    assert_eq!(env.sessions("v").len(), 1);
    assert!(!env.path().join("usb").exists());
    // A restore or a stream into another destination's archive is refused too.
    env.ok(&["send", "--dest=usb", "v"]);
    let inside = env.path().join("usb/v/restored.img");
    let err = env.fails(&["receive", "v", &format!("--save-to={}", inside.display())]);
    assert!(err.contains("is inside the archive"), "{err}");
    let err = env.fails(&["send", "v", &format!("--stream={}", inside.display())]);
    assert!(err.contains("is inside the archive"), "{err}");
    assert!(!inside.exists());
}

#[test]
fn var_alone_works_as_before() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(9);
    env.write_at("v", 0, &rng.bytes(6 * CS));
    env.send("v");
    env.write_at("v", 2 * CS as u64, &rng.bytes(10));
    let v2 = env.read_image("v");
    env.send("v");
    let s = env.sessions("v");
    assert_eq!(s.iter().map(|s| s.changed).collect::<Vec<_>>(), vec![6, 1]);
    assert_same(&env.receive("v", None), &v2, "restore");
    // The layout of before: copies right under the volume's folder, no dest/.
    let m = env.meta().join("v");
    assert_eq!(
        names_in(&m),
        vec!["lock".to_string(), "sessions".to_string()]
    );
    assert_eq!(
        names_in(&m.join("sessions")),
        s.iter().map(|s| format!("S_{}", s.id)).collect::<Vec<_>>()
    );
    // The catalog knows the archive by its path, as before.
    let cat = rusqlite_archives(&env.meta().join("catalog.sqlite"));
    assert_eq!(cat, vec![env.archive().display().to_string()]);
    // `--dest=all` with only `default`: the same as a plain send.
    env.write_at("v", 5 * CS as u64, &rng.bytes(10));
    let o = env.run(&["send", "--dest=all"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(env.latest("v").changed, 1);
    assert_eq!(
        names_in(&m),
        vec!["lock".to_string(), "sessions".to_string()]
    );
}

/// The keys of the catalog's `archives` table, read with the sqlite3 tool's
/// equivalent: the catalog is SQLite, and the test reads it without the library.
fn rusqlite_archives(path: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut st = conn
        .prepare("SELECT path FROM archives ORDER BY path")
        .unwrap();
    let rows = st.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.map(|r| r.unwrap()).collect()
}

/// `resync` of one destination keeps what the others still have to send (it moves the
/// snapshot forward only after marking their maps), and `delete` from one destination
/// leaves the other's history and the snapshots alone.
#[test]
fn resync_and_delete_of_one_destination_leave_the_other_alone() {
    let Some(src) = LoopFs::new("resync_one_dest", FsKind::Xfs, "") else {
        return;
    };
    let voldir = src.path().join("img");
    std::fs::create_dir(&voldir).unwrap();
    let env = Env::reflink(&["v"], &voldir);
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        "[volumes]\n",
        &format!(
            "[dest:b]\ndestdir = {}\n[volumes]\n",
            env.path().join("b").display()
        ),
    );
    set_config(&env, &ini);
    let mut rng = Rng::new(77);
    env.write_at("v", 0, &rng.bytes(16 * CS));
    env.ok(&["send", "--dest=all"]);
    // Changed since the last monitor, then the default destination's map is lost and
    // resync rebuilds it: b's map must get these changes before the tick moves.
    change(&env, "v", &mut rng, &[1, 2]);
    std::fs::remove_file(env.meta().join("v/deltamap")).unwrap();
    env.ok(&["resync", "v"]);
    change(&env, "v", &mut rng, &[9]);
    let now = env.read_image("v");
    env.ok(&["send", "--dest=b", "v"]);
    let b = sessions_at(&env, "b", "v");
    assert_eq!(
        b.last().unwrap().changed,
        3,
        "b keeps the changes before the resync"
    );
    assert_same(&receive_at(&env, "b", "v", &b[1].id), &now, "b");
    env.ok(&["send", "v"]);
    assert_eq!(env.latest("v").changed, 3);
    assert_same(&env.receive("v", None), &now, "default");

    // Delete v from b: b's archive folder and state go; default's stay, and so do the
    // snapshots it needs (its next send is incremental and exact).
    env.ok(&["delete", "--dest=b", "v"]);
    assert!(!env.path().join("b/v").exists());
    assert!(!env.meta().join("v/dest/b").exists());
    assert!(env.meta().join("v/deltamap").is_file());
    change(&env, "v", &mut rng, &[4]);
    env.ok(&["send", "v"]);
    assert_eq!(env.latest("v").changed, 1);
    assert_same(
        &env.receive("v", None),
        &env.read_image("v"),
        "default after",
    );
}

/// `rename` moves the volume's folder in every destination holding its history, and
/// refuses, changing nothing, while one of them is away.
#[test]
fn rename_follows_every_destination() {
    let Some(mut usb) = LoopFs::new("rename_dests", FsKind::Ext4, "") else {
        return;
    };
    let env = Env::new(&["old"]);
    let ini = std::fs::read_to_string(&env.config).unwrap().replace(
        "[volumes]\n",
        &format!(
            "[dest:usb]\ndestmountpoint = {}\ndestdir = sb\n[volumes]\n",
            usb.path().display()
        ),
    );
    set_config(&env, &ini);
    let mut rng = Rng::new(3);
    env.write_at("old", 0, &rng.bytes(5 * CS));
    env.ok(&["send", "--dest=all"]);
    std::fs::rename(env.image("old"), env.image("new")).unwrap();
    usb.unmount();
    let err = env.fails(&["rename", "old", "new"]);
    assert!(
        err.contains(
            "volume old also has history on destination usb, which is not present: disk not \
             mounted"
        ) && err.contains("nothing was changed"),
        "{err}"
    );
    assert!(env.vol_dir("old").is_dir() && env.meta().join("old").is_dir());
    usb.mount();
    env.ok(&["rename", "old", "new"]);
    let usb_root = usb.path().join("sb");
    assert!(!usb_root.join("old").exists() && usb_root.join("new").is_dir());
    assert!(!env.vol_dir("old").exists() && env.vol_dir("new").is_dir());
    assert!(env.meta().join("new/dest/usb/sessions").is_dir());
    let ini = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("old = enable", "new = enable");
    set_config(&env, &ini);
    env.write_at("new", CS as u64, &rng.bytes(7));
    let now = env.read_image("new");
    env.ok(&["send", "--dest=all"]);
    for d in ["default", "usb"] {
        let s = sessions_at(&env, d, "new");
        assert_eq!(s.len(), 2, "{d}: the history came along");
        assert_eq!(s[1].changed, 1, "{d}");
        assert_same(&receive_at(&env, d, "new", &s[1].id), &now, d);
    }
}
