//! `sparsebak rename OLD NEW`

use anyhow::{Context, Result};

use super::Ctx;
use crate::archive::Archive;
use crate::source;

pub fn run(ctx: &Ctx, old: &str, new: &str) -> Result<()> {
    ctx.config.check_destination(true)?;
    let archive = Archive::open(&ctx.config)?;
    archive.sweep_dead_runs();
    let mut src = source::for_config(&ctx.config)?;
    let done = crate::rename::rename(&ctx.config, &archive, src.as_mut(), old, new)
        .with_context(|| format!("rename {old} to {new}"))?;
    if done.stream_chains_dropped > 0 {
        tracing::warn!(
            "{new}: {} stream chain(s) of {old} dropped; the next stream of {new} is full",
            done.stream_chains_dropped
        );
    }
    // The configuration is the user's: say what it still needs.
    let listed = |n: &str| ctx.config.select_volumes(&[n.to_string()]).is_ok();
    if listed(old) {
        tracing::warn!("the configuration still names {old}: rename it to {new} in [volumes]");
    } else if !listed(new) {
        tracing::warn!("the configuration does not name {new}: add `{new} = enable` to [volumes]");
    }
    crate::progress::summary(&format!(
        "{old} renamed to {new} (archive folder {}, source-side state {}, snapshots)",
        if done.archive {
            "moved"
        } else {
            "already moved"
        },
        if done.metadir {
            "moved"
        } else {
            "already moved"
        },
    ));
    Ok(())
}
