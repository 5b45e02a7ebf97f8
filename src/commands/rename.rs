//! `sparsebak rename OLD NEW`

use anyhow::{Context, Result};

use super::Ctx;
use crate::archive::Archive;
use crate::source;

pub fn run(ctx: &Ctx, old: &str, new: &str) -> Result<()> {
    ctx.config.check_destination(true)?;
    let archive = Archive::open_for(&ctx.config, true)?;
    archive.sweep_dead_runs();
    // Every other destination with the volume's history must be there: its state on
    // this machine moves with the rest, so its archive folder must move too.
    let mut others = Vec::new();
    for d in crate::rename::other_destinations(&ctx.config, old, new) {
        let c = ctx.config.for_dest(&d)?;
        if let Some(why) = c.absent_reason() {
            anyhow::bail!(
                "rename {old} to {new}: volume {old} also has history on destination {d}, \
                 which is not present: {why}; make it present and run rename again (its \
                 archive folder must move too); nothing was changed"
            );
        }
        let a = Archive::open_for(&c, true)
            .with_context(|| format!("rename {old} to {new}: destination {d}"))?;
        a.require_writable("rename")?;
        if a.volume(old).exists() && !a.volume_is_free(new)? {
            anyhow::bail!(
                "rename {old} to {new}: volume {new} already has a folder in the archive of \
                 destination {d} ({}); nothing was changed",
                a.volume(new).label()
            );
        }
        others.push((d, a));
    }
    let mut src = source::for_config(&ctx.config)?;
    let done = crate::rename::rename(&ctx.config, &archive, src.as_mut(), old, new)
        .with_context(|| format!("rename {old} to {new}"))?;
    for (d, a) in &others {
        a.sweep_dead_runs();
        if crate::rename::rename_archive_folder(a, old, new)
            .with_context(|| format!("rename {old} to {new} on destination {d}"))?
        {
            tracing::info!("{old}: its folder in the archive of destination {d} moved to {new}");
        }
    }
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
