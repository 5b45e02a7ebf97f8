//! `sparsebak status [volume ...] [--json | --prometheus]`: whether backups are
//! healthy, from this machine's records alone (see [`crate::status`]).
//!
//! Exit status: 0 when every enabled volume has a session within `max_age` and no
//! last verify found damage; [`DAMAGE`] when a last verify found damage; [`STALE`]
//! when a volume's newest session is older than `max_age` or it has none (damage wins
//! when both). Each problem is said in one line on standard error.

use std::fmt::Write as _;

use anyhow::Result;

use super::{human, json, Ctx};
use crate::source::{self, VolumeCtx};
use crate::status::{self, age_text, ProblemKind, Report};

/// A last verify found damage (the status `verify` itself exits with on damage).
pub const DAMAGE: i32 = crate::exit::DAMAGE as i32;
/// A volume is older than `max_age`, or was never sent.
pub const STALE: i32 = crate::exit::STALE as i32;

pub fn run(ctx: &Ctx, names: &[String], prometheus: bool) -> Result<()> {
    let config = &ctx.config;
    let vols: Vec<String> = if names.is_empty() {
        config.volumes.iter().map(|(n, _)| n.clone()).collect()
    } else {
        config.select_volumes(names)?
    };
    // The snapshots are a detail: a snapshot layer that cannot be reached (no LVM
    // here) leaves them unknown, not the report undone.
    let mut src = match source::for_config(config) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("status: cannot look at the snapshots: {e}");
            None
        }
    };
    let mut snaps = |name: &str| {
        let s = src.as_mut()?;
        match s.snapshots(&VolumeCtx::new(config, name)) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("status: volume {name}: cannot look at the snapshots: {e}");
                None
            }
        }
    };
    let rep = status::report(config, &vols, super::now().timestamp(), &mut snaps)?;
    if ctx.json {
        json::print(&rep);
    } else if prometheus {
        crate::progress::out(prometheus_text(&rep).trim_end());
    } else {
        for line in human_text(&rep).lines() {
            crate::progress::out(line);
        }
    }
    for p in &rep.problems {
        crate::progress::err_line(&format!("sparsebak: status: {}", p.message));
    }
    if let Some(code) = exit_code(&rep) {
        // The report is out (each line was flushed); the code is the answer.
        std::process::exit(code);
    }
    Ok(())
}

/// The exit status for a report with problems.
fn exit_code(rep: &Report) -> Option<i32> {
    if rep.problems.iter().any(|p| p.kind == ProblemKind::Damaged) {
        Some(DAMAGE)
    } else if rep.problems.is_empty() {
        None
    } else {
        Some(STALE)
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// The report for people: per volume a line, then one line per destination.
pub fn human_text(rep: &Report) -> String {
    let mut s = String::new();
    for v in &rep.volumes {
        let _ = write!(s, "{}", v.volume);
        if !v.enabled {
            s.push_str(" (disabled)");
        }
        match (&v.newest_session, v.newest_session_age) {
            (Some(id), Some(age)) => {
                let _ = write!(s, ": newest session {id}, {} ago", age_text(age));
            }
            _ => s.push_str(": no session yet"),
        }
        if let Some(sn) = &v.snapshots {
            let _ = write!(s, "; snapshots tick={} tock={}", yes(sn.tick), yes(sn.tock));
        }
        s.push('\n');
        for d in &v.destinations {
            let _ = write!(s, "  {} ({} {}): ", d.dest, d.kind, d.location);
            match (&d.last_session, d.last_session_age) {
                (Some(id), Some(age)) => {
                    let _ = write!(
                        s,
                        "last session {id}, {} ago, {} session(s), stored {}",
                        age_text(age),
                        d.sessions,
                        human(d.stored_bytes)
                    );
                }
                _ => s.push_str("no session"),
            }
            if let (Some(c), Some(b)) = (d.pending_chunks, d.pending_bytes) {
                let _ = write!(s, "; waiting {c} chunk(s), {}", human(b));
            }
            if d.needs_scan {
                s.push_str(" (every chunk compared at the next send)");
            }
            match (&d.last_verify, d.last_verify_age) {
                (Some(lv), Some(age)) => {
                    let _ = write!(
                        s,
                        "; verified {} {} ago: {}",
                        lv.session,
                        age_text(age),
                        if lv.ok {
                            "ok".to_string()
                        } else {
                            format!("DAMAGED ({} problem(s))", lv.problems)
                        }
                    );
                }
                _ => s.push_str("; never verified"),
            }
            if let Some(f) = d.free_bytes {
                let _ = write!(s, "; free {}", human(f));
            }
            if let Some(why) = &d.absent {
                let _ = write!(s, "; absent: {why}");
            }
            s.push('\n');
        }
    }
    for u in &rep.unconfigured {
        let _ = writeln!(
            s,
            "{}: not in the config (found in {})",
            u.volume,
            u.found_in.join(", ")
        );
    }
    let _ = writeln!(
        s,
        "{}",
        if rep.ok {
            format!(
                "status: ok (every enabled volume within max_age {})",
                age_text(rep.max_age as i64)
            )
        } else {
            format!("status: {} problem(s)", rep.problems.len())
        }
    );
    s
}

/// A Prometheus label value, escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// One metric family: name, help, and its samples (labels, value).
type Family = (&'static str, &'static str, Vec<(String, f64)>);

/// The metrics of the text format, in one family per name.
struct Metrics {
    families: Vec<Family>,
}

impl Metrics {
    fn add(&mut self, name: &'static str, help: &'static str, labels: &[(&str, &str)], v: f64) {
        let l = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect::<Vec<_>>()
            .join(",");
        let l = if l.is_empty() { l } else { format!("{{{l}}}") };
        match self.families.iter_mut().find(|f| f.0 == name) {
            Some(f) => f.2.push((l, v)),
            None => self.families.push((name, help, vec![(l, v)])),
        }
    }
}

/// The report as Prometheus text-format gauges.
pub fn prometheus_text(rep: &Report) -> String {
    let mut m = Metrics {
        families: Vec::new(),
    };
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    m.add(
        "sparsebak_status_ok",
        "1 when every enabled volume is within max_age and no last verify found damage.",
        &[],
        b(rep.ok),
    );
    m.add(
        "sparsebak_status_timestamp_seconds",
        "When the report was made.",
        &[],
        rep.time as f64,
    );
    m.add(
        "sparsebak_max_age_seconds",
        "The configured max_age.",
        &[],
        rep.max_age as f64,
    );
    for v in &rep.volumes {
        let vl = [("volume", v.volume.as_str())];
        m.add(
            "sparsebak_volume_enabled",
            "1 for an enabled volume, 0 for a disabled one.",
            &vl,
            b(v.enabled),
        );
        if let Some(age) = v.newest_session_age {
            m.add(
                "sparsebak_volume_newest_session_age_seconds",
                "Age of the volume's newest session over all destinations.",
                &vl,
                age as f64,
            );
        }
        if let Some(sn) = &v.snapshots {
            for (name, present) in [("tick", sn.tick), ("tock", sn.tock)] {
                m.add(
                    "sparsebak_snapshot_present",
                    "1 when the volume's snapshot exists.",
                    &[("volume", v.volume.as_str()), ("snapshot", name)],
                    b(present),
                );
            }
        }
        for d in &v.destinations {
            let l = [("volume", v.volume.as_str()), ("dest", d.dest.as_str())];
            m.add(
                "sparsebak_sessions",
                "Sessions of the volume recorded for the destination.",
                &l,
                d.sessions as f64,
            );
            if let (Some(t), Some(age)) = (d.last_session_time, d.last_session_age) {
                m.add(
                    "sparsebak_last_session_timestamp_seconds",
                    "When the last session sent to the destination was taken.",
                    &l,
                    t as f64,
                );
                m.add(
                    "sparsebak_last_session_age_seconds",
                    "Age of the last session sent to the destination.",
                    &l,
                    age as f64,
                );
            }
            if let (Some(c), Some(bytes)) = (d.pending_chunks, d.pending_bytes) {
                m.add(
                    "sparsebak_pending_chunks",
                    "Changed chunks waiting in the destination's delta map.",
                    &l,
                    c as f64,
                );
                m.add(
                    "sparsebak_pending_bytes",
                    "Waiting chunks times the chunk size.",
                    &l,
                    bytes as f64,
                );
            }
            if let Some(lv) = &d.last_verify {
                m.add(
                    "sparsebak_last_verify_timestamp_seconds",
                    "When the last verify on the destination ended.",
                    &l,
                    lv.time as f64,
                );
                m.add(
                    "sparsebak_last_verify_ok",
                    "1 when the last verify found no damage, 0 when it found some.",
                    &l,
                    b(lv.ok),
                );
            }
            m.add(
                "sparsebak_stored_bytes",
                "Bytes stored on the destination by the volume's recorded sessions.",
                &l,
                d.stored_bytes as f64,
            );
        }
    }
    // Per destination, once: whether it is present and its free space.
    let mut seen = Vec::new();
    for d in rep.volumes.iter().flat_map(|v| &v.destinations) {
        if seen.contains(&d.dest) {
            continue;
        }
        seen.push(d.dest.clone());
        let l = [("dest", d.dest.as_str())];
        m.add(
            "sparsebak_dest_absent",
            "1 when the destination is known to be absent (disk not mounted).",
            &l,
            b(d.absent.is_some()),
        );
        if let Some(f) = d.free_bytes {
            m.add(
                "sparsebak_dest_free_bytes",
                "Bytes free on a local destination's filesystem.",
                &l,
                f as f64,
            );
        }
    }
    for u in &rep.unconfigured {
        m.add(
            "sparsebak_unconfigured_volume",
            "A volume found here or at a destination that the config does not name.",
            &[("volume", u.volume.as_str())],
            1.0,
        );
    }
    for (kind, name) in [
        (ProblemKind::NeverSent, "never_sent"),
        (ProblemKind::Stale, "stale"),
        (ProblemKind::Damaged, "damaged"),
    ] {
        m.add(
            "sparsebak_problems",
            "Problems found, by kind.",
            &[("kind", name)],
            rep.problems.iter().filter(|p| p.kind == kind).count() as f64,
        );
    }
    let mut s = String::new();
    for (name, help, samples) in &m.families {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} gauge");
        for (l, v) in samples {
            let _ = writeln!(s, "{name}{l} {v}");
        }
    }
    s
}
