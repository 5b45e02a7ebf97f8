//! Relative selectors and retention across a daylight-saving change, with the real
//! binary in the Europe/Berlin time zone: sessions are picked by the instant each was
//! taken (`time` in its info), not by the local clock time of its ID.

mod common;
use common::*;

use sparsebak_format::info::SessionInfo;
use std::path::Path;

const CS: usize = 65536;

/// Rewrite the info of session `old` in the folder `dir` as session `id` taken at `time`
/// after `previous`, under its new name.
fn retime_in(dir: &Path, old: &str, id: &str, previous: Option<&str>, time: i64) {
    let from = dir.join(format!("S_{old}"));
    let info_path = from.join("info");
    let text = std::fs::read_to_string(&info_path).unwrap();
    let mut info = SessionInfo::parse(&text, &info_path).unwrap();
    info.session = id.to_string();
    info.previous = previous.map(str::to_string);
    info.time = time;
    std::fs::write(&info_path, info.to_text()).unwrap();
    std::fs::rename(&from, dir.join(format!("S_{id}"))).unwrap();
}

/// Give the sessions of `vol` (oldest first) the IDs and times of `plan`, in the
/// archive and in the source side's copies, as if they had been taken then.
fn retime(env: &Env, vol: &str, plan: &[(&str, i64)]) {
    let old: Vec<String> = env.sessions(vol).into_iter().map(|s| s.id).collect();
    assert_eq!(old.len(), plan.len());
    let copies = env.meta().join(vol).join("sessions");
    for (i, (o, &(id, time))) in old.iter().zip(plan).enumerate() {
        let previous = i.checked_sub(1).map(|p| plan[p].0);
        retime_in(&env.vol_dir(vol), o, id, previous, time);
        retime_in(&copies, o, id, previous, time);
    }
}

/// Seconds since the epoch of a UTC `YYYY-MM-DD HH:MM`.
fn utc(s: &str) -> i64 {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M")
        .unwrap()
        .and_utc()
        .timestamp()
}

/// The night the clocks go back in Berlin (2026-10-25, 03:00 CEST -> 02:00 CET): the
/// sessions taken in the second pass of 02:00-03:00 got IDs moved on past the first.
const NIGHT: &[(&str, &str)] = &[
    ("20261024-233000", "2026-10-24 21:30"), // 23:30 CEST
    ("20261025-015000", "2026-10-24 23:50"), // 01:50 CEST
    ("20261025-022000", "2026-10-25 00:20"), // 02:20 CEST
    ("20261025-024000", "2026-10-25 00:40"), // 02:40 CEST
    ("20261025-024001", "2026-10-25 01:10"), // 02:10 CET
    ("20261025-025000", "2026-10-25 01:50"), // 02:50 CET
    ("20261025-030000", "2026-10-25 02:00"), // 03:00 CET
];

/// An archive with the sessions of [`NIGHT`]; session `k` holds image version `k`.
fn night() -> (Env, Vec<Vec<u8>>) {
    assert!(
        Path::new("/usr/share/zoneinfo/Europe/Berlin").exists(),
        "tzdata is needed (scripts/test.sh installs it)"
    );
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(17);
    let mut img = rng.bytes(8 * CS);
    let mut versions = Vec::new();
    for k in 0..NIGHT.len() {
        rng.fill(&mut img[k * CS..k * CS + 100]);
        std::fs::write(env.image("v"), &img).unwrap();
        env.send("v");
        versions.push(img.clone());
    }
    let plan: Vec<(&str, i64)> = NIGHT.iter().map(|&(id, t)| (id, utc(t))).collect();
    retime(&env, "v", &plan);
    env.verify_ok("v", None);
    (env, versions)
}

/// Run in Berlin at the UTC time `now`; require success.
fn at(env: &Env, now: &str, args: &[&str]) -> String {
    let now = format!("@{}", utc(now));
    let o = env.run_env(args, &[("TZ", "Europe/Berlin"), ("SPARSEBAK_NOW", &now)]);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The session `sel` picks at `now` (UTC), by `diff SEL,latest`.
fn picked(env: &Env, now: &str, sel: &str) -> String {
    let out = at(env, now, &["diff", "v", &format!("--session={sel},latest")]);
    out.strip_prefix("v: ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or_else(|| panic!("diff said {out:?}"))
        .to_string()
}

#[test]
fn relative_selectors_across_the_clocks_going_back() {
    let (env, versions) = night();
    // 03:05 CET. An hour ago was 02:05 CET = 01:05 UTC: the session of 02:40 CEST
    // (00:40 UTC). By the local clock of the IDs, 02:05 would pick 01:50 CEST.
    let now = "2026-10-25 02:05";
    assert_eq!(picked(&env, now, "1 hour ago"), "20261025-024000");
    assert_eq!(picked(&env, now, "60 minutes ago"), "20261025-024000");
    assert_eq!(picked(&env, now, "30 minutes ago"), "20261025-024001");
    assert_eq!(picked(&env, now, "2 hours ago"), "20261025-015000");
    assert_eq!(picked(&env, now, "yesterday"), "20261024-233000");
    // Both passes of 02:30: the last session of the second one.
    assert_eq!(picked(&env, now, "2026-10-25 02:30"), "20261025-024001");
    // The session restored is the one picked.
    let out = env.path().join("hour-ago.img");
    at(
        &env,
        now,
        &[
            "receive",
            "v",
            "--session=1 hour ago",
            &format!("--save-to={}", out.display()),
        ],
    );
    assert_same(&std::fs::read(&out).unwrap(), &versions[3], "1 hour ago");
    // A day later, `yesterday` is the 25-hour day of the change.
    assert_eq!(
        picked(&env, "2026-10-26 08:00", "yesterday"),
        "20261025-030000"
    );
}

/// `prune --auto --dry-run` lines: `v <id> keep (...)` or `v <id> remove`.
fn plan(env: &Env, now: &str, keep: &str) -> Vec<String> {
    at(
        env,
        now,
        &[
            "prune",
            "--auto",
            &format!("--keep={keep}"),
            "--dry-run",
            "v",
        ],
    )
    .lines()
    .filter(|l| l.starts_with("v 2026"))
    .map(str::to_string)
    .collect()
}

#[test]
fn retention_buckets_across_the_clocks_going_back() {
    let (env, _) = night();
    // 03:05 CET: the last three real hours are 03h CET, 02h CET and 02h CEST.
    assert_eq!(
        plan(&env, "2026-10-25 02:05", "hourly:3"),
        [
            "v 20261024-233000 remove",
            "v 20261025-015000 remove",
            "v 20261025-022000 remove",
            "v 20261025-024000 keep (hourly 2026-10-25 02h +02:00)",
            "v 20261025-024001 remove",
            "v 20261025-025000 keep (hourly 2026-10-25 02h +01:00)",
            "v 20261025-030000 keep (latest, hourly 2026-10-25 03h)",
        ]
    );
    // 00:30 CET on the 26th (23:30 UTC on the 25th): local calendar days.
    assert_eq!(
        plan(&env, "2026-10-25 23:30", "daily:3"),
        [
            "v 20261024-233000 keep (daily 2026-10-24)",
            "v 20261025-015000 remove",
            "v 20261025-022000 remove",
            "v 20261025-024000 remove",
            "v 20261025-024001 remove",
            "v 20261025-025000 remove",
            "v 20261025-030000 keep (latest, daily 2026-10-25)",
        ]
    );
    let two = plan(&env, "2026-10-25 23:30", "daily:2");
    assert_eq!(two[0], "v 20261024-233000 remove");
    assert_eq!(two[6], "v 20261025-030000 keep (latest, daily 2026-10-25)");
    assert!(two[1..6].iter().all(|l| l.ends_with(" remove")), "{two:?}");
}
