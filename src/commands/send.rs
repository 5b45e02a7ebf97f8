//! `sparsebak send [volume ...]`

use anyhow::{Context, Result};

use super::{human, Ctx};
use crate::archive::{Archive, ArchiveError};
use crate::config::Config;
use crate::progress;
use crate::send::send_volume;
use crate::source;

pub fn run(ctx: &Ctx, names: &[String], tarfile: bool, accept_archive: bool) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if vols.is_empty() {
        anyhow::bail!("no volumes enabled in {}", ctx.config.path.display());
    }
    if ctx.all_dests {
        return send_all(ctx, &vols, tarfile);
    }
    let labelled = ctx.config.dest != crate::metadir::DEFAULT_DEST;
    send_to(
        &ctx.config,
        &vols,
        tarfile,
        accept_archive,
        labelled,
        ctx.json,
    )
}

/// Send `vols` to the destination `config` was chosen for. `labelled`: summary lines
/// name the destination.
fn send_to(
    config: &Config,
    vols: &[String],
    tarfile: bool,
    accept_archive: bool,
    labelled: bool,
    json: bool,
) -> Result<()> {
    let mut source = source::for_config(config)?;
    let archive = Archive::open_or_create(config, accept_archive)?;
    let as_tar = tarfile || config.tarfile;
    for name in vols {
        let out =
            send_volume(config, &archive, name, source.as_mut(), as_tar).with_context(|| {
                if labelled {
                    format!("send {name} to destination {}", config.dest)
                } else {
                    format!("send {name}")
                }
            })?;
        if json {
            super::json::print(&sent_json(
                name,
                &config.dest,
                out.session.as_ref(),
                out.bytes_read,
                out.elapsed.as_secs_f64(),
            ));
        }
        let who = if labelled {
            format!("{name} to {}", config.dest)
        } else {
            name.clone()
        };
        match &out.session {
            Some(s) => progress::summary(&format!(
                "{who}: session {} {} read={} stored={} changed={} time={:.1}s",
                s.session,
                if s.previous.is_none() {
                    "full"
                } else {
                    "incremental"
                },
                human(out.bytes_read),
                human(s.bytes_stored),
                s.changed,
                out.elapsed.as_secs_f64()
            )),
            None => progress::summary(&format!(
                "{who}: no changes, no new session read={} time={:.1}s",
                human(out.bytes_read),
                out.elapsed.as_secs_f64()
            )),
        }
    }
    Ok(())
}

/// The `--json` line of one volume sent (to an archive or a tape): `session` is
/// `None` when nothing had changed.
pub fn sent_json(
    volume: &str,
    dest: &str,
    session: Option<&sparsebak_format::info::SessionInfo>,
    bytes_read: u64,
    seconds: f64,
) -> serde_json::Value {
    serde_json::json!({
        "version": super::json::VERSION,
        "command": "send",
        "volume": volume,
        "dest": dest,
        "session": session.map(|s| &s.session),
        "full": session.map(|s| s.previous.is_none()),
        "previous": session.and_then(|s| s.previous.as_ref()),
        "changed_chunks": session.map_or(0, |s| s.changed),
        "bytes_read": bytes_read,
        "bytes_stored": session.map_or(0, |s| s.bytes_stored),
        "seconds": seconds,
    })
}

/// Whether `e` says the destination cannot be reached now (rather than that it
/// failed).
fn unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<crate::error::Error>(),
            Some(crate::error::Error::Archive(
                ArchiveError::Unreachable { .. }
            ))
        ) || matches!(
            c.downcast_ref::<ArchiveError>(),
            Some(ArchiveError::Unreachable { .. })
        ) || matches!(
            c.downcast_ref::<crate::error::Error>(),
            Some(crate::error::Error::Remote(
                crate::remote::RemoteError::Unreachable { .. }
            ))
        ) || matches!(
            c.downcast_ref::<crate::remote::RemoteError>(),
            Some(crate::remote::RemoteError::Unreachable { .. })
        )
    })
}

/// `send --dest=all`: send to every configured destination that is present, in
/// order; a destination whose disk is not mounted, or that cannot be reached, is
/// skipped and named. Succeeds when every present destination succeeded; fails when
/// one of them failed, and exits 3 (`exit::NOTHING_DONE`) when none is present
/// (nothing was backed up).
fn send_all(ctx: &Ctx, vols: &[String], tarfile: bool) -> Result<()> {
    let mut sent = Vec::new();
    let mut skipped = Vec::new();
    let mut failed = Vec::new();
    let mut tapes = Vec::new();
    for d in &ctx.config.dests {
        if let Some(t) = &d.tape {
            progress::err_line(&format!(
                "sparsebak: destination {} skipped: it is a tape (tape = {}); a tape set is \
                 written on its own, with --dest={0}",
                d.name,
                t.device_label()
            ));
            tapes.push(d.name.clone());
            continue;
        }
        let config = ctx.config.for_dest(&d.name)?;
        let why = match config.absent_reason() {
            Some(why) => why,
            None => match send_to(&config, vols, tarfile, false, true, ctx.json) {
                Ok(()) => {
                    sent.push(d.name.clone());
                    continue;
                }
                Err(e) if unreachable(&e) => sparsebak_format::error::one_line(e.as_ref()),
                Err(e) => {
                    progress::err_line(&format!(
                        "sparsebak: error: destination {}: {}",
                        d.name,
                        sparsebak_format::error::one_line(e.as_ref())
                    ));
                    failed.push(d.name.clone());
                    continue;
                }
            },
        };
        progress::err_line(&format!("sparsebak: destination {} skipped: {why}", d.name));
        skipped.push(d.name.clone());
    }
    let mut skipped_note = if skipped.is_empty() {
        String::new()
    } else {
        format!("; skipped (not present): {}", skipped.join(", "))
    };
    if !tapes.is_empty() {
        skipped_note.push_str(&format!("; skipped (tape): {}", tapes.join(", ")));
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "send --dest=all: failed on {} of {} present destination(s): {}{skipped_note}",
            failed.len(),
            failed.len() + sent.len(),
            failed.join(", ")
        );
    }
    if sent.is_empty() {
        return Err(crate::exit::Coded::nothing_done(format!(
            "send --dest=all: no destination is present, nothing was sent{skipped_note}"
        ))
        .into());
    }
    progress::summary(&format!(
        "send --dest=all: sent to {}{skipped_note}",
        sent.join(", ")
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_destinations_are_told_from_failing_ones() {
        let far = crate::error::Error::from(ArchiveError::Unreachable {
            dest: "far".into(),
            reason: "ssh: connect to host far port 22: Connection refused".into(),
        });
        assert!(unreachable(
            &anyhow::Error::from(far).context("send v to destination far")
        ));
        let ro = crate::error::Error::from(ArchiveError::ReadOnly {
            path: "/mnt/u/sb".into(),
            action: "send".into(),
        });
        assert!(!unreachable(&anyhow::Error::from(ro).context("send v")));
        assert!(!unreachable(&anyhow::anyhow!(
            "destination far is not reachable"
        )));
    }
}
