//! The facts `sparsebak status` reports, gathered from the source side's own records
//! only (the metadir's session copies and delta maps, the catalog, the last-verify
//! records), so it answers with every destination absent or unreachable; and the
//! last-verify record that `verify` leaves per volume and destination.

use std::path::{Path, PathBuf};

use serde::Serialize;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::volume::VolumeArchive;

use crate::archive::local::LocalCopies;
use crate::config::Config;
use crate::delta_map::DeltaMap;
use crate::error::{Error, IoAt, Result};
use crate::metadir;

/// The version of `status`'s JSON document and of the last-verify record.
pub const VERSION: u32 = 1;

/// `<dest_dir>/last-verify`: the outcome of the last `verify` of a volume on a
/// destination (see docs/FORMAT.md).
pub const LAST_VERIFY: &str = "last-verify";

/// The first line of a last-verify record (then its version).
const LAST_VERIFY_MAGIC: &str = "sparsebak-last-verify";

/// No last-verify record is longer than this (it is a few short lines).
const LAST_VERIFY_MAX: u64 = 4096;

/// What the last `verify` of a volume on a destination found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastVerify {
    /// When it ended, seconds since 1970 (UTC).
    pub time: i64,
    /// The session whose view it checked.
    pub session: String,
    /// `true`: no problem found; `false`: it found damage.
    pub ok: bool,
    /// How many problems it named.
    pub problems: u64,
}

impl LastVerify {
    /// The record's path in a destination's state folder of a volume.
    pub fn path(dest_dir: &Path) -> PathBuf {
        dest_dir.join(LAST_VERIFY)
    }

    /// Replace the record in `dest_dir` atomically (the folder is made if missing).
    pub fn write(&self, dest_dir: &Path) -> Result<()> {
        metadir::create_private_dir(dest_dir)?;
        let path = Self::path(dest_dir);
        crate::durable::write_atomic(&path, self.to_text().as_bytes()).at(&path)
    }

    fn to_text(&self) -> String {
        format!(
            "{LAST_VERIFY_MAGIC} {VERSION}\ntime {}\nsession {}\nresult {}\nproblems {}\n",
            self.time,
            self.session,
            if self.ok { "ok" } else { "damaged" },
            self.problems
        )
    }

    /// The record in `dest_dir`, or `None` when there is none.
    pub fn read(dest_dir: &Path) -> Result<Option<LastVerify>> {
        use std::io::Read;
        let path = Self::path(dest_dir);
        let f = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        let mut text = String::new();
        f.take(LAST_VERIFY_MAX + 1)
            .read_to_string(&mut text)
            .at(&path)?;
        Self::parse(&text)
            .map(Some)
            .map_err(|why| Error::Msg(format!("{}: {why}", path.display())))
    }

    fn parse(text: &str) -> std::result::Result<LastVerify, String> {
        if text.len() as u64 > LAST_VERIFY_MAX {
            return Err(format!("longer than {LAST_VERIFY_MAX} bytes"));
        }
        let mut lines = text.lines();
        match lines.next().and_then(|l| l.split_once(' ')) {
            Some((LAST_VERIFY_MAGIC, v)) if v == VERSION.to_string() => {}
            Some((LAST_VERIFY_MAGIC, v)) => {
                return Err(format!("last-verify version {v:?} is not known here"))
            }
            _ => return Err("not a last-verify record".into()),
        }
        let (mut time, mut session, mut ok, mut problems) = (None, None, None, None);
        for l in lines {
            let (k, v) = l.split_once(' ').ok_or_else(|| format!("bad line {l:?}"))?;
            match k {
                "time" => time = v.parse::<i64>().ok(),
                "session" => {
                    session = crate::session_id::parse(v).map(|_| v.to_string());
                }
                "result" => {
                    ok = match v {
                        "ok" => Some(true),
                        "damaged" => Some(false),
                        _ => return Err(format!("result {v:?} is neither ok nor damaged")),
                    }
                }
                "problems" => problems = v.parse::<u64>().ok(),
                // Keys of later versions of the same major version are skipped.
                _ => {}
            }
        }
        match (time, session, ok, problems) {
            (Some(time), Some(session), Some(ok), Some(problems)) => Ok(LastVerify {
                time,
                session,
                ok,
                problems,
            }),
            _ => Err("a key is missing or bad (time, session, result, problems)".into()),
        }
    }
}

/// Tick and tock, whether each exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Snapshots {
    pub tick: bool,
    pub tock: bool,
}

/// A volume on one destination.
#[derive(Debug, Clone, Serialize)]
pub struct DestStatus {
    /// `default` or a `[dest:NAME]`.
    pub dest: String,
    /// `archive` or `tape`.
    pub kind: &'static str,
    /// Where it is (a folder, `ssh://host/folder`, or the tape device).
    pub location: String,
    /// Why it is not present now (a disk not mounted, a folder missing), when this
    /// machine can tell without reaching it.
    pub absent: Option<String>,
    /// Sessions sent there (this machine's records).
    pub sessions: u64,
    pub last_session: Option<String>,
    /// When the last session was taken, seconds since 1970 (UTC).
    pub last_session_time: Option<i64>,
    /// Its age in seconds at the time of the report.
    pub last_session_age: Option<i64>,
    /// Chunks marked in this destination's delta map, waiting for the next send.
    pub pending_chunks: Option<u64>,
    /// Those chunks × the chunk size.
    pub pending_bytes: Option<u64>,
    /// The delta map asks for every chunk to be compared at the next send.
    pub needs_scan: bool,
    pub last_verify: Option<LastVerify>,
    /// Seconds since the last verify ended.
    pub last_verify_age: Option<i64>,
    /// Bytes stored there by the sessions still recorded (the sum of their
    /// `bytes_stored`, or for a tape the bytes of their tape files).
    pub stored_bytes: u64,
    /// Bytes free on the filesystem of a local destination that is present.
    pub free_bytes: Option<u64>,
}

/// A configured volume.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeStatus {
    pub volume: String,
    pub enabled: bool,
    /// `None` for a source without snapshots (`source = file`), or when the snapshot
    /// layer cannot say.
    pub snapshots: Option<Snapshots>,
    /// Its newest session over all destinations.
    pub newest_session: Option<String>,
    pub newest_session_age: Option<i64>,
    pub destinations: Vec<DestStatus>,
}

/// A volume with state here or at a local destination that the config no longer
/// names.
#[derive(Debug, Clone, Serialize)]
pub struct Unconfigured {
    pub volume: String,
    /// `metadir`, or `destination NAME`.
    pub found_in: Vec<String>,
}

/// What kind of problem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// An enabled volume with no session anywhere.
    NeverSent,
    /// An enabled volume whose newest session is older than `max_age`.
    Stale,
    /// The last verify of a volume on a destination found damage.
    Damaged,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub kind: ProblemKind,
    pub volume: String,
    pub dest: Option<String>,
    /// One line, for people.
    pub message: String,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub version: u32,
    /// `status`.
    pub command: &'static str,
    /// When it was made, seconds since 1970 (UTC).
    pub time: i64,
    pub max_age: u64,
    pub volumes: Vec<VolumeStatus>,
    pub unconfigured: Vec<Unconfigured>,
    pub problems: Vec<Problem>,
    /// No problem.
    pub ok: bool,
}

/// `90061` seconds as `1d 1h 1m`; under a minute as seconds.
pub fn age_text(secs: i64) -> String {
    if secs < 0 {
        return format!("{}s in the future", -secs);
    }
    if secs < 60 {
        return format!("{secs}s");
    }
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d}d"));
    }
    if h > 0 {
        parts.push(format!("{h}h"));
    }
    if m > 0 && d == 0 {
        parts.push(format!("{m}m"));
    }
    parts.join(" ")
}

/// The report for `volumes` (configured ones) at time `now` (seconds since 1970).
/// `snapshots` says a volume's tick and tock (`None` where it cannot).
pub fn report(
    config: &Config,
    volumes: &[String],
    now: i64,
    snapshots: &mut dyn FnMut(&str) -> Option<Snapshots>,
) -> Result<Report> {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for name in volumes {
        let enabled = config.volumes.iter().any(|(v, e)| v == name && *e);
        let mut dests = Vec::new();
        for d in &config.dests {
            let cfg = config.for_dest(&d.name)?;
            dests.push(dest_status(&cfg, name, now)?);
        }
        let newest = dests
            .iter()
            .filter_map(|d| Some((d.last_session_time?, d.last_session.clone()?)))
            .max();
        for d in &dests {
            if let Some(v) = d.last_verify.as_ref().filter(|v| !v.ok) {
                problems.push(Problem {
                    kind: ProblemKind::Damaged,
                    volume: name.clone(),
                    dest: Some(d.dest.clone()),
                    message: format!(
                        "volume {name} on destination {}: the last verify (session {}, {} ago) \
                         found damage ({} problem(s))",
                        d.dest,
                        v.session,
                        age_text(now - v.time),
                        v.problems
                    ),
                });
            }
        }
        if enabled {
            match &newest {
                None => problems.push(Problem {
                    kind: ProblemKind::NeverSent,
                    volume: name.clone(),
                    dest: None,
                    message: format!("volume {name}: no session on any destination yet"),
                }),
                Some((t, id)) if now - t > config.max_age as i64 => problems.push(Problem {
                    kind: ProblemKind::Stale,
                    volume: name.clone(),
                    dest: None,
                    message: format!(
                        "volume {name}: newest session {id} is {} old (max_age {})",
                        age_text(now - t),
                        age_text(config.max_age as i64)
                    ),
                }),
                Some(_) => {}
            }
        }
        out.push(VolumeStatus {
            volume: name.clone(),
            enabled,
            snapshots: snapshots(name),
            newest_session_age: newest.as_ref().map(|(t, _)| now - t),
            newest_session: newest.map(|(_, id)| id),
            destinations: dests,
        });
    }
    let ok = problems.is_empty();
    Ok(Report {
        version: VERSION,
        command: "status",
        time: now,
        max_age: config.max_age,
        volumes: out,
        unconfigured: unconfigured(config),
        problems,
        ok,
    })
}

fn dest_status(cfg: &Config, name: &str, now: i64) -> Result<DestStatus> {
    let dir = metadir::dest_dir(cfg, name);
    let last_verify = LastVerify::read(&dir)?;
    let (kind, location, map, absent) = match &cfg.tape {
        Some(t) => (
            "tape",
            t.device_label(),
            metadir::delta_map_in(&metadir::stream_dir_in(
                &metadir::volume_dir(cfg, name),
                &cfg.dest,
            )),
            None,
        ),
        None => {
            let absent = if cfg.remote.is_some() {
                None
            } else {
                cfg.absent_reason().or_else(|| {
                    (!cfg.destdir.is_dir())
                        .then(|| format!("destdir {} does not exist", cfg.destdir.display()))
                })
            };
            (
                "archive",
                cfg.dest_location().display().to_string(),
                metadir::delta_map_in(&dir),
                absent,
            )
        }
    };
    // (session, time, bytes) of every session recorded, oldest first.
    let sessions: Vec<(String, i64, u64)> = if cfg.tape.is_some() {
        let path = metadir::catalog(cfg);
        if path.exists() {
            let cat =
                crate::catalog::Catalog::open(&path).map_err(|e| Error::Msg(e.to_string()))?;
            let id = cat
                .destination("tape", &cfg.dest)
                .map_err(|e| Error::Msg(e.to_string()))?;
            cat.chain(id, name)
                .map_err(|e| Error::Msg(e.to_string()))?
                .into_iter()
                .map(|s| (s.session, s.time, s.bytes))
                .collect()
        } else {
            Vec::new()
        }
    } else {
        let copies = LocalCopies::new(&dir);
        let ids = if copies.dir.is_dir() {
            copies.ids()?
        } else {
            Vec::new()
        };
        let mut v = Vec::new();
        for id in ids {
            // A copy that cannot be read is counted by its ID's time and no bytes.
            match SessionInfo::read(&copies.info_path(&id)) {
                Ok(i) => v.push((id, i.time, i.bytes_stored)),
                Err(e) => {
                    tracing::warn!("volume {name} destination {}: {e}", cfg.dest);
                    if let Some(t) = crate::selector::SessionTime::from_id(&id, &chrono::Local) {
                        v.push((id, t.time.timestamp(), 0));
                    }
                }
            }
        }
        v
    };
    let (pending_chunks, pending_bytes, needs_scan) = if map.exists() {
        match DeltaMap::open(&map) {
            Ok(m) => (
                Some(m.count()),
                Some(m.count().saturating_mul(m.chunksize())),
                m.needs_scan(),
            ),
            Err(e) => {
                tracing::warn!("volume {name} destination {}: {e}", cfg.dest);
                (None, None, false)
            }
        }
    } else {
        (None, None, false)
    };
    let free_bytes = if cfg.tape.is_none() && cfg.remote.is_none() && absent.is_none() {
        crate::space::room(&cfg.destdir).map(|r| r.bytes_free)
    } else {
        None
    };
    let last = sessions.last();
    Ok(DestStatus {
        dest: cfg.dest.clone(),
        kind,
        location,
        absent,
        sessions: sessions.len() as u64,
        last_session: last.map(|s| s.0.clone()),
        last_session_time: last.map(|s| s.1),
        last_session_age: last.map(|s| now - s.1),
        pending_chunks,
        pending_bytes,
        needs_scan,
        last_verify_age: last_verify.as_ref().map(|v| now - v.time),
        last_verify,
        stored_bytes: sessions.iter().map(|s| s.2).sum(),
        free_bytes,
    })
}

/// Volumes with state in the metadir, or a folder of sessions at a local destination
/// that is present, which the config does not name; sorted.
pub fn unconfigured(config: &Config) -> Vec<Unconfigured> {
    let mut found: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let known = |n: &str| config.volumes.iter().any(|(v, _)| v == n);
    let names_in = |dir: &Path| -> Vec<(String, PathBuf)> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
            .filter(|(n, _)| crate::config::valid_volume_name(n) && !known(n))
            .collect()
    };
    for (n, p) in names_in(&config.metadir) {
        if metadir::any_copies_in(&p) || !metadir::all_maps_in(&p).is_empty() {
            found.entry(n).or_default().push("metadir".into());
        }
    }
    for d in &config.dests {
        if d.tape.is_some() || d.remote.is_some() {
            continue;
        }
        let Ok(cfg) = config.for_dest(&d.name) else {
            continue;
        };
        if cfg.absent_reason().is_some() {
            continue;
        }
        for (n, p) in names_in(&cfg.destdir) {
            if VolumeArchive::new(&p)
                .sessions()
                .is_ok_and(|s| !s.is_empty())
            {
                found
                    .entry(n)
                    .or_default()
                    .push(format!("destination {}", d.name));
            }
        }
    }
    found
        .into_iter()
        .map(|(volume, found_in)| Unconfigured { volume, found_in })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_verify_round_trips_and_refuses_what_it_does_not_know() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(LastVerify::read(d.path()).unwrap(), None);
        let v = LastVerify {
            time: 1_764_000_000,
            session: "20261129-120000".into(),
            ok: false,
            problems: 3,
        };
        v.write(&d.path().join("sub")).unwrap();
        assert_eq!(LastVerify::read(&d.path().join("sub")).unwrap(), Some(v));
        let p = LastVerify::path(d.path());
        for (text, why) in [
            ("sparsebak-last-verify 2\n", "version \"2\" is not known"),
            ("hello\n", "not a last-verify record"),
            (
                "sparsebak-last-verify 1\ntime 5\nsession ../x\nresult ok\nproblems 0\n",
                "a key is missing or bad",
            ),
            (
                "sparsebak-last-verify 1\ntime 5\nsession 20261129-120000\nresult maybe\nproblems 0\n",
                "result \"maybe\" is neither ok nor damaged",
            ),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = LastVerify::read(d.path()).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(&p.display().to_string()), "{e}");
        }
        std::fs::write(&p, "x".repeat(5000)).unwrap();
        let e = LastVerify::read(d.path()).unwrap_err().to_string();
        assert!(e.contains("longer than 4096 bytes"), "{e}");
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age_text(5), "5s");
        assert_eq!(age_text(5400), "1h 30m");
        assert_eq!(age_text(26 * 3600), "1d 2h");
        assert_eq!(age_text(2 * 86400), "2d");
    }
}
