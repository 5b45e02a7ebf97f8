//! `sparsebak list [volume ...]`: per volume a header line with its name, then one
//! line per session, oldest first:
//! `<ID> size=<bytes> changed=<chunks> chunks=<chunks> stored=<bytes> read=<bytes>
//! previous=<ID|->`. Then one line per volume found here or at the destination that
//! the config no longer names: `<name> (not in the config; found in metadir, ...)`.
//! With `--json`, one JSON line per volume (docs/JSON.md).

use std::io::Write;

use anyhow::Result;

use super::Ctx;
use crate::archive::Archive;

pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let vols: Vec<String> = if names.is_empty() {
        ctx.config.volumes.iter().map(|(n, _)| n.clone()).collect()
    } else {
        ctx.config.select_volumes(names)?
    };
    let archive = Archive::open(&ctx.config)?;
    // A reader that went away (`list | head -1`) is not an error.
    let mut out = crate::progress::Stdout;
    let mut unreadable = 0usize;
    for name in &vols {
        let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
        let vol = archive.volume(name);
        // In an encrypted archive the folder must be this volume's (not another
        // volume's folder moved or copied here).
        let ids = vol.sessions()?;
        let own = vol.own_id(&ids)?;
        crate::archive::warn_sessions_gone(&ctx.config, &archive, name, &ids)?;
        if !ctx.json {
            writeln!(out, "{name}")?;
        }
        let mut rows = Vec::new();
        for id in ids {
            // One session that cannot be read (a lost tar index, a damaged info) is
            // said, and the others are still listed.
            let i = match vol.info(&id) {
                Ok(i) => i,
                Err(e) => {
                    crate::progress::err_line(&format!(
                        "sparsebak: list {name}: session {id}: {e}"
                    ));
                    unreadable += 1;
                    continue;
                }
            };
            vol.check_own(&id, &i, own.as_deref())?;
            if ctx.json {
                rows.push(session_json(&i));
                continue;
            }
            writeln!(
                out,
                "{id} size={} changed={} chunks={} stored={} read={} previous={}",
                i.volsize,
                i.changed,
                i.chunks,
                i.bytes_stored,
                i.bytes_read,
                i.previous.as_deref().unwrap_or("-")
            )?;
        }
        if ctx.json {
            super::json::print(&volume_json(ctx, name, rows, None));
        }
    }
    // Not when volumes were named: then only those are asked about.
    if names.is_empty() {
        for u in crate::status::unconfigured(&ctx.config) {
            if ctx.json {
                super::json::print(&volume_json(ctx, &u.volume, Vec::new(), Some(&u.found_in)));
            } else {
                writeln!(
                    out,
                    "{} (not in the config; found in {})",
                    u.volume,
                    u.found_in.join(", ")
                )?;
            }
        }
    }
    if unreadable > 0 {
        anyhow::bail!("list: {unreadable} session(s) could not be read");
    }
    Ok(())
}

/// One session in `list --json` (archive or tape).
pub fn session_json(i: &sparsebak_format::info::SessionInfo) -> serde_json::Value {
    serde_json::json!({
        "session": i.session,
        "time": i.time,
        "size": i.volsize,
        "changed": i.changed,
        "chunks": i.chunks,
        "stored": i.bytes_stored,
        "read": i.bytes_read,
        "previous": i.previous,
    })
}

/// One volume's line of `list --json`: `found_in` for a volume the config does not
/// name.
pub fn volume_json(
    ctx: &Ctx,
    name: &str,
    sessions: Vec<serde_json::Value>,
    found_in: Option<&[String]>,
) -> serde_json::Value {
    let enabled = ctx
        .config
        .volumes
        .iter()
        .find(|(v, _)| v == name)
        .map(|(_, e)| *e);
    serde_json::json!({
        "version": super::json::VERSION,
        "command": "list",
        "volume": name,
        "dest": ctx.config.dest,
        "configured": enabled.is_some(),
        "enabled": enabled.unwrap_or(false),
        "found_in": found_in,
        "sessions": sessions,
    })
}
