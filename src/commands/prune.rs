//! `sparsebak prune [--session=SEL[,SEL] | --all-before=DATE | --auto [--keep=...]]
//! [--dry-run] [volume ...]`

use anyhow::{bail, Context, Result};

use super::{human, now, timed, Ctx};
use crate::archive::local::LocalCopies;
use crate::archive::{copies_follow_fold, prepare, Archive, Use};
use crate::retention::{self, Schedule};
use crate::selector;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::volume::VolumeArchive;

/// Options of `prune`.
pub struct Opts {
    pub auto: bool,
    pub keep: Option<String>,
    pub all_before: Option<String>,
    pub dry_run: bool,
    /// What `--auto --dry-run --json` decided for each session, for its document
    /// (the human output prints them as they come).
    pub decisions: std::cell::RefCell<Vec<serde_json::Value>>,
}

/// Which sessions of one volume the options name, oldest first, and a note for each
/// that is kept despite being named.
fn select(ctx: &Ctx, opts: &Opts, vol: &VolumeArchive, ids: &[String]) -> Result<Vec<String>> {
    select_in(ctx, opts, &vol.name, &|needed| timed(vol, ids, needed))
}

/// [`select`] for volume `name` whose sessions (with their times when `needed`)
/// `times` gives: for an archive, or a tape destination's chain.
pub fn select_in(
    ctx: &Ctx,
    opts: &Opts,
    name: &str,
    times: &dyn Fn(bool) -> Vec<selector::SessionTime>,
) -> Result<Vec<String>> {
    let now = now();
    let mut out: Vec<String> = Vec::new();
    if let Some(s) = &ctx.session {
        if s.contains(',') {
            let r = selector::parse_range(s, &now)?;
            let sessions = times(r.needs_times());
            out.extend(
                selector::resolve_range(&r, &sessions).with_context(|| format!("volume {name}"))?,
            );
        } else {
            let sel = selector::parse(s, &now)?;
            let sessions = times(sel.needs_times());
            out.push(selector::resolve(&sel, &sessions).with_context(|| format!("volume {name}"))?);
        }
    }
    if let Some(b) = &opts.all_before {
        let r = selector::parse_range(&format!("oldest,{b}"), &now)?;
        let end = match &r.end {
            selector::Bound::Time(t) => *t,
            _ => bail!("--all-before takes a date or time, e.g. 2026-11-01"),
        };
        // "Before" a day means before its first second.
        let start_of = selector::parse_range(&format!("{b},{b}"), &now)?;
        let cut = match start_of.start {
            selector::Bound::Time(t) => t,
            _ => end,
        };
        for s in times(true) {
            if s.time < cut {
                out.push(s.id);
            }
        }
    }
    if opts.auto || opts.keep.is_some() {
        let text = opts
            .keep
            .clone()
            .or_else(|| ctx.config.keep.clone())
            .context("prune --auto needs a schedule: `keep = ...` in [var] or --keep=...")?;
        let schedule = Schedule::parse(&text).with_context(|| format!("schedule {text:?}"))?;
        let sessions = times(true);
        let plan = retention::plan_sessions(&sessions, now, &schedule);
        for (s, p) in sessions.iter().zip(&plan) {
            if opts.dry_run && ctx.json {
                opts.decisions.borrow_mut().push(serde_json::json!({
                    "session": s.id,
                    "keep": p.keep(),
                    "reason": p.to_string(),
                }));
            } else if opts.dry_run {
                crate::progress::out(&format!("{name} {} {p}", s.id));
            }
            if !p.keep() {
                out.push(s.id.clone());
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub fn run(ctx: &Ctx, names: &[String], opts: &Opts) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if ctx.session.is_none() && opts.all_before.is_none() && !opts.auto && opts.keep.is_none() {
        bail!("prune needs --session=SEL[,SEL], --all-before=DATE or --auto");
    }
    // A dry run only reads, so it works on a read-only archive too.
    let archive = if opts.dry_run {
        Archive::open(&ctx.config)?
    } else {
        Archive::open_writable(&ctx.config, "prune")?
    };
    let mut total = 0u64;
    let mut matched = 0;
    let mut unmatched: Vec<anyhow::Error> = Vec::new();
    for name in &vols {
        // A dry run only reads (an interrupted prune is finished first, as by every
        // reader); a prune changes the volume.
        let _held = prepare(
            &ctx.config,
            &archive,
            name,
            if opts.dry_run { Use::Read } else { Use::Write },
        )?;
        let vol = archive.volume(name);
        let mdir = crate::metadir::dest_dir(&ctx.config, name);
        let local = LocalCopies::new(&mdir);
        let local = mdir.is_dir().then_some(&local);
        let ids = vol.sessions()?;
        crate::archive::warn_sessions_gone(&ctx.config, &archive, name, &ids)?;
        // A session named for several volumes may exist in only some of them: report
        // the others and go on; fail only if it matches in none.
        let mut targets = match select(ctx, opts, &vol, &ids) {
            Ok(t) => {
                matched += 1;
                t
            }
            Err(e) if vols.len() > 1 => {
                crate::progress::err_line(&format!(
                    "sparsebak: prune {name}: {}",
                    sparsebak_format::error::one_line(e.as_ref())
                ));
                unmatched.push(e);
                continue;
            }
            Err(e) => return Err(e),
        };
        if let Some(latest) = ids.last() {
            if targets.contains(latest) {
                crate::progress::err_line(&format!(
                    "sparsebak: prune {name}: {latest} is the latest session and is never removed"
                ));
                targets.retain(|t| t != latest);
            }
        }
        if targets.is_empty() {
            if ctx.json {
                super::json::print(&volume_json(ctx, opts, name, Vec::new(), 0, false));
            } else {
                crate::progress::out(&format!("{name}: nothing to remove"));
            }
            continue;
        }
        if !opts.dry_run
            && !ctx.confirm(&format!(
                "Remove {} session(s) of volume {name} ({} .. {})?",
                targets.len(),
                targets[0],
                targets[targets.len() - 1]
            ))?
        {
            bail!("not removing sessions of {name} (confirm at the prompt, or pass -u)");
        }
        archive
            .check_removal(name, &targets)
            .with_context(|| format!("prune {name}"))?;
        let mut freed = 0u64;
        let mut removed = Vec::new();
        for t in &targets {
            let hint = local.and_then(|l| SessionInfo::read(&l.info_path(t)).ok());
            let plan = archive
                .fold(name, t, opts.dry_run, hint.as_ref())
                .and_then(|plan| {
                    if !opts.dry_run {
                        copies_follow_fold(&archive, name, local, t, &plan.into)?;
                        archive.end_fold(name)?;
                    }
                    Ok(plan)
                })
                .with_context(|| format!("prune {name} session {t}"))?;
            let verb = if opts.dry_run {
                "would remove"
            } else {
                "removed"
            };
            if ctx.json {
                removed.push(serde_json::json!({
                    "session": t,
                    "into": plan.into,
                    "moved_chunks": plan.moved,
                    "deleted_chunks": plan.deleted,
                    "freed_bytes": plan.freed_bytes,
                }));
            } else {
                crate::progress::out(&format!(
                    "{name}: {verb} {t} (into {}: {} chunks kept by moving, {} deleted, {})",
                    plan.into,
                    plan.moved,
                    plan.deleted,
                    human(plan.freed_bytes)
                ));
            }
            freed += plan.freed_bytes;
            if opts.dry_run {
                // Later folds depend on this one; a dry run describes each step alone.
                continue;
            }
        }
        let mut about = "";
        if opts.dry_run && targets.len() > 1 {
            // Each step was described alone; together they free what the removal of
            // all of them does (but for the manifest lines each fold adds to the
            // session removed next: "about").
            if let Some(all) = archive
                .removal_frees(name, &targets)
                .with_context(|| format!("prune {name}"))?
            {
                freed = all;
                about = "about ";
            }
        }
        if ctx.json {
            super::json::print(&volume_json(
                ctx,
                opts,
                name,
                removed,
                freed,
                !about.is_empty(),
            ));
        } else {
            crate::progress::out(&format!(
                "{name}: {} {about}{}",
                if opts.dry_run { "would free" } else { "freed" },
                human(freed)
            ));
        }
        total += freed;
    }
    if vols.len() > 1 && !ctx.json {
        crate::progress::out(&format!(
            "total {}: {}",
            if opts.dry_run { "would free" } else { "freed" },
            human(total)
        ));
    }
    if matched == 0 {
        if let Some(e) = unmatched.into_iter().next() {
            return Err(e.context("the sessions named match in no volume"));
        }
    }
    Ok(())
}

/// One volume's line of `prune --json`: the sessions removed (or that would be), the
/// bytes freed (`about`: a dry run's estimate for several sessions together), and
/// for `--auto --dry-run` the schedule's decision for every session.
pub fn volume_json(
    ctx: &Ctx,
    opts: &Opts,
    name: &str,
    removed: Vec<serde_json::Value>,
    freed: u64,
    about: bool,
) -> serde_json::Value {
    serde_json::json!({
        "version": super::json::VERSION,
        "command": "prune",
        "volume": name,
        "dest": ctx.config.dest,
        "dry_run": opts.dry_run,
        "removed": removed,
        "freed_bytes": freed,
        "freed_is_estimate": about,
        "decisions": opts.decisions.take(),
    })
}
