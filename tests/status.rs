//! `sparsebak status` through the real binary: the exit status against `max_age`
//! (the clock moved with `SPARSEBAK_NOW`, and for real with a 1 s max_age), a last
//! verify that found damage, volumes never sent and volumes the config no longer
//! names, a destination whose disk is not mounted, the Prometheus text, and the
//! changes waiting in a reflink volume's delta map with its snapshots.

mod common;
#[path = "common/loopfs.rs"]
mod loopfs;

use std::process::Output;

use common::*;
use loopfs::{FsKind, LoopFs};
use serde_json::Value;

const CS: usize = 65536;

fn status(env: &Env, args: &[&str], now: Option<i64>) -> Output {
    let mut all = vec!["status"];
    all.extend_from_slice(args);
    match now {
        Some(t) => env.run_env(&all, &[("SPARSEBAK_NOW", &format!("@{t}"))]),
        None => env.run(&all),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// The time the latest session of `vol` was taken (seconds since 1970).
fn session_time(env: &Env, vol: &str) -> i64 {
    let v: Value = serde_json::from_str(env.ok(&["list", vol, "--json"]).trim()).unwrap();
    v["sessions"].as_array().unwrap().last().unwrap()["time"]
        .as_i64()
        .unwrap()
}

#[test]
fn exit_status_follows_max_age() {
    let env = Env::with_settings(&["a"], "max_age = 90m");
    std::fs::write(env.image("a"), Rng::new(1).bytes(3 * CS)).unwrap();
    env.send("a");
    let t = session_time(&env, "a");
    let id = env.latest("a").id;

    let o = status(&env, &[], Some(t + 89 * 60));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    let out = text(&o.stdout);
    assert!(
        out.starts_with(&format!("a: newest session {id}, 1h 29m ago\n")),
        "{out}"
    );
    assert!(out.ends_with("status: ok (every enabled volume within max_age 1h 30m)\n"));

    let o = status(&env, &[], Some(t + 91 * 60));
    assert_eq!(o.status.code(), Some(5), "{}", text(&o.stdout));
    assert_eq!(
        text(&o.stderr),
        format!(
            "sparsebak: status: volume a: newest session {id} is 1h 31m old (max_age 1h 30m)\n"
        )
    );
    assert!(text(&o.stdout).ends_with("status: 1 problem(s)\n"));

    // The default is 26 hours.
    let env2 = Env::new(&["a"]);
    std::fs::write(env2.image("a"), Rng::new(1).bytes(CS)).unwrap();
    env2.send("a");
    let t = session_time(&env2, "a");
    assert_eq!(
        status(&env2, &[], Some(t + 26 * 3600)).status.code(),
        Some(0)
    );
    assert_eq!(
        status(&env2, &[], Some(t + 26 * 3600 + 1)).status.code(),
        Some(5)
    );
}

#[test]
fn a_session_goes_stale_in_real_time() {
    let env = Env::with_settings(&["a"], "max_age = 1s");
    std::fs::write(env.image("a"), Rng::new(2).bytes(CS)).unwrap();
    env.send("a");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let o = status(&env, &[], None);
    assert_eq!(o.status.code(), Some(5));
    assert!(
        text(&o.stderr).contains("(max_age 1s)"),
        "{}",
        text(&o.stderr)
    );
}

#[test]
fn a_bad_max_age_is_said_in_one_line() {
    let env = Env::with_settings(&["a"], "max_age = 3 days");
    let e = env.fails(&["status"]);
    assert!(
        e.contains("max_age = \"3 days\": expected a duration such as 90m, 26h or 2d"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}

#[test]
fn never_sent_and_unconfigured_volumes_are_shown() {
    let env = Env::new(&["a", "b", "off"]);
    let ini = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("off = enable", "off = disable");
    std::fs::write(&env.config, &ini).unwrap();
    for v in ["a", "b", "old"] {
        std::fs::write(env.image(v), Rng::new(3).bytes(CS)).unwrap();
    }
    env.send("a");
    // b is enabled and never sent: a problem; the disabled one is not.
    let o = status(&env, &[], None);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(
        text(&o.stderr),
        "sparsebak: status: volume b: no session on any destination yet\n"
    );
    let out = text(&o.stdout);
    assert!(out.contains("\nb: no session yet\n"), "{out}");
    assert!(out.contains("\noff (disabled): no session yet\n"), "{out}");
    // Named volumes only: a is fine.
    assert_eq!(status(&env, &["a"], None).status.code(), Some(0));

    // A volume sent, then dropped from the config.
    std::fs::write(&env.config, ini.replace("b = enable\n", "old = enable\n")).unwrap();
    env.send("old");
    std::fs::write(&env.config, &ini).unwrap();
    let o = status(&env, &[], None);
    let out = text(&o.stdout);
    assert!(
        out.contains("\nold: not in the config (found in metadir, destination default)\n"),
        "{out}"
    );
    let v: Value = serde_json::from_slice(&status(&env, &["--json"], None).stdout).unwrap();
    assert_eq!(
        v["unconfigured"],
        serde_json::json!([{"volume": "old", "found_in": ["metadir", "destination default"]}])
    );
    let list = env.ok(&["list"]);
    assert!(
        list.ends_with("old (not in the config; found in metadir, destination default)\n"),
        "{list}"
    );
    // Naming volumes lists only those.
    assert!(!env.ok(&["list", "a"]).contains("old"));
}

#[test]
fn a_verify_that_found_damage_makes_status_fail() {
    let env = Env::new(&["a"]);
    std::fs::write(env.image("a"), Rng::new(4).bytes(3 * CS)).unwrap();
    env.send("a");
    env.verify_ok("a", None);
    let v: Value = serde_json::from_slice(&status(&env, &["--json"], None).stdout).unwrap();
    let d = &v["volumes"][0]["destinations"][0];
    assert_eq!(d["last_verify"]["ok"], true);
    assert_eq!(d["last_verify"]["problems"], 0);
    let record = std::fs::read_to_string(env.meta().join("a/last-verify")).unwrap();
    assert!(record.starts_with("sparsebak-last-verify 1\n"), "{record}");
    assert!(record.contains("\nresult ok\n"), "{record}");

    // Damage one chunk file; verify fails, and status says so from then on.
    let id = env.latest("a").id;
    let dir = env.vol_dir("a").join(format!("S_{id}"));
    let sub = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().is_dir())
        .unwrap()
        .path();
    let chunk = std::fs::read_dir(&sub)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(&chunk, b"not a chunk").unwrap();
    env.fails(&["verify", "a"]);
    let o = status(&env, &[], None);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o.stderr));
    let e = text(&o.stderr);
    assert!(
        e.starts_with(&format!(
            "sparsebak: status: volume a on destination default: the last verify (session {id}, "
        )) && e.ends_with("found damage (1 problem(s))\n"),
        "{e}"
    );
    assert!(
        text(&o.stdout).contains(&format!("; verified {id} ")),
        "{}",
        text(&o.stdout)
    );
    assert!(text(&o.stdout).contains(": DAMAGED (1 problem(s))"));
    let p = text(&status(&env, &["--prometheus"], None).stdout);
    assert!(
        p.contains("\nsparsebak_last_verify_ok{volume=\"a\",dest=\"default\"} 0\n"),
        "{p}"
    );
    assert!(
        p.contains("\nsparsebak_problems{kind=\"damaged\"} 1\n"),
        "{p}"
    );
    // Stale and damaged at once: damage is the status.
    let t = session_time(&env, "a");
    assert_eq!(
        status(&env, &[], Some(t + 30 * 3600)).status.code(),
        Some(4)
    );
}

#[test]
fn prometheus_text_has_the_metrics() {
    let env = Env::new(&["a"]);
    std::fs::write(env.image("a"), Rng::new(5).bytes(3 * CS)).unwrap();
    env.send("a");
    let t = session_time(&env, "a");
    let o = status(&env, &["--prometheus"], Some(t + 100));
    assert_eq!(o.status.code(), Some(0));
    let p = text(&o.stdout);
    for line in [
        "# HELP sparsebak_status_ok 1 when every enabled volume is within max_age and no last verify found damage.",
        "# TYPE sparsebak_status_ok gauge",
        "sparsebak_status_ok 1",
        &format!("sparsebak_status_timestamp_seconds {}", t + 100),
        "sparsebak_max_age_seconds 93600",
        "sparsebak_volume_enabled{volume=\"a\"} 1",
        "sparsebak_volume_newest_session_age_seconds{volume=\"a\"} 100",
        "sparsebak_sessions{volume=\"a\",dest=\"default\"} 1",
        &format!("sparsebak_last_session_timestamp_seconds{{volume=\"a\",dest=\"default\"}} {t}"),
        "sparsebak_last_session_age_seconds{volume=\"a\",dest=\"default\"} 100",
        "# TYPE sparsebak_stored_bytes gauge",
        "sparsebak_dest_absent{dest=\"default\"} 0",
        "sparsebak_problems{kind=\"stale\"} 0",
    ] {
        assert!(p.lines().any(|l| l == line), "no line {line:?} in\n{p}");
    }
    // Each metric has its HELP and TYPE once, before its samples.
    for l in p.lines().filter(|l| !l.starts_with('#')) {
        let name = l.split(['{', ' ']).next().unwrap();
        assert_eq!(
            p.matches(&format!("# TYPE {name} gauge\n")).count(),
            1,
            "{name}"
        );
        assert!(p.find(&format!("# HELP {name} ")).unwrap() < p.find(l).unwrap());
    }
    let free = p
        .lines()
        .find_map(|l| l.strip_prefix("sparsebak_dest_free_bytes{dest=\"default\"} "))
        .unwrap();
    assert!(free.parse::<f64>().unwrap() > 0.0, "{free}");
}

#[test]
fn an_absent_destination_is_said_and_the_others_count() {
    let env = Env::new(&["a"]);
    let mnt = env.path().join("usb");
    std::fs::create_dir(&mnt).unwrap();
    let mut ini = std::fs::read_to_string(&env.config).unwrap();
    ini = ini.replace(
        "[volumes]",
        &format!(
            "[dest:usb]\ndestmountpoint = {0}\ndestdir = sb\n[volumes]",
            mnt.display()
        ),
    );
    std::fs::write(&env.config, ini).unwrap();
    std::fs::write(env.image("a"), Rng::new(6).bytes(CS)).unwrap();
    env.send("a");
    let o = status(&env, &[], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!(
            "  usb (archive {}/sb): no session; never verified; absent: disk not mounted \
             (destmountpoint {} is not a mounted filesystem)\n",
            mnt.display(),
            mnt.display()
        )),
        "{out}"
    );
    let p = text(&status(&env, &["--prometheus"], None).stdout);
    assert!(
        p.contains("\nsparsebak_dest_absent{dest=\"usb\"} 1\n"),
        "{p}"
    );
    assert!(
        !p.contains("sparsebak_dest_free_bytes{dest=\"usb\"}"),
        "{p}"
    );
}

#[test]
fn changes_waiting_and_snapshots_of_a_reflink_volume() {
    let Some(fs) = LoopFs::new("status_reflink", FsKind::Btrfs, "") else {
        return;
    };
    let env = Env::reflink(&["v"], fs.path());
    std::fs::write(env.image("v"), Rng::new(8).bytes(16 * CS)).unwrap();
    env.send("v");
    let v: Value = serde_json::from_slice(&status(&env, &["--json"], None).stdout).unwrap();
    assert_eq!(
        v["volumes"][0]["snapshots"],
        serde_json::json!({"tick": true, "tock": false})
    );
    assert_eq!(v["volumes"][0]["destinations"][0]["pending_chunks"], 0);
    // Three chunks touched, then monitor: they wait in the delta map.
    env.write_at("v", 2 * CS as u64 + 5, b"1");
    env.write_at("v", 7 * CS as u64, &Rng::new(9).bytes(2 * CS));
    env.ok(&["monitor"]);
    let o = status(&env, &["--json"], None);
    assert_eq!(o.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let d = &v["volumes"][0]["destinations"][0];
    assert_eq!(d["pending_chunks"], 3, "{d}");
    assert_eq!(d["pending_bytes"], 3 * CS);
    let out = text(&status(&env, &[], None).stdout);
    assert!(out.contains("; waiting 3 chunk(s), 192.00 KiB"), "{out}");
    assert!(out.contains("; snapshots tick=yes tock=no\n"), "{out}");
    env.send("v");
    let v: Value = serde_json::from_slice(&status(&env, &["--json"], None).stdout).unwrap();
    assert_eq!(v["volumes"][0]["destinations"][0]["pending_chunks"], 0);
    assert_eq!(v["volumes"][0]["destinations"][0]["sessions"], 2);
}

/// Another machine verifying the archive (a new metadir) keeps no record: the
/// volume's state folder would tell the next verify that this machine sent the
/// sessions, and it would then miss their copies.
#[test]
fn a_verify_on_another_machine_records_nothing_and_runs_again() {
    let env = Env::new(&["a"]);
    std::fs::write(env.image("a"), Rng::new(10).bytes(2 * CS)).unwrap();
    env.send("a");
    let other = env.path().join("other.ini");
    let new_meta = env.path().join("other-meta");
    std::fs::write(
        &other,
        std::fs::read_to_string(&env.config).unwrap().replace(
            &format!("metadir = {}", env.meta().display()),
            &format!("metadir = {}", new_meta.display()),
        ),
    )
    .unwrap();
    for _ in 0..2 {
        let o = std::process::Command::new(bin())
            .arg("-c")
            .arg(&other)
            .args(["verify", "a"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o.stderr));
    }
    assert!(!new_meta.join("a").exists());
    // This machine's verify is recorded.
    env.verify_ok("a", None);
    assert!(env.meta().join("a/last-verify").is_file());
}
