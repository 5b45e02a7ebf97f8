//! `sparsebak delete volume`

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::archive::{prepare, Archive, Use};
use crate::lock::Mode;
use crate::metadir::meta_dir;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let archive = Archive::open_writable(&ctx.config, "delete")?;
    let vol = archive.volume(name);
    // Never delete another volume's backups: in an encrypted archive the folder must
    // be this volume's.
    check_is_ours(&ctx.config, &vol, name).with_context(|| {
        format!(
            "delete {name}: nothing was deleted; if this folder is not volume {name}'s, \
             move it back where it belongs"
        )
    })?;
    // The volume's whole state and its snapshots go only when no other destination
    // tracks it; else only this destination's state (its map and copies) goes.
    let others = other_dests_tracking(&ctx.config, name);
    let mdir = if others.is_empty() {
        meta_dir(&ctx.config, name)
    } else {
        crate::metadir::dest_dir(&ctx.config, name)
    };
    let n = vol.sessions()?.len();
    if !ctx.confirm(&format!(
        "Delete volume {name}: {n} session(s) in {}, its metadata in {} and its snapshots?",
        vol.label(),
        mdir.display()
    ))? {
        bail!("not deleting {name} (confirm at the prompt, or pass -u)");
    }
    let _held = prepare(&ctx.config, &archive, name, Use::Lock(Mode::Exclusive))?;
    if others.is_empty() {
        let mut src = source::for_config(&ctx.config)?;
        let vctx = VolumeCtx::new(&ctx.config, name);
        src.forget(&vctx)
            .with_context(|| format!("removing the snapshots of {name}"))?;
    } else {
        tracing::info!(
            "{name}: keeping its snapshots and the state of destination(s) {}",
            others.join(", ")
        );
    }
    archive.delete_volume(name)?;
    if others.is_empty() {
        if mdir.exists() {
            std::fs::remove_dir_all(&mdir).with_context(|| format!("{}", mdir.display()))?;
        }
    } else {
        let map = crate::metadir::delta_map(&ctx.config, name);
        let copies = crate::metadir::copies_dir(&ctx.config, name);
        if copies.exists() {
            std::fs::remove_dir_all(&copies).with_context(|| format!("{}", copies.display()))?;
        }
        if map.exists() {
            std::fs::remove_file(&map).with_context(|| format!("{}", map.display()))?;
        }
        if ctx.config.dest != crate::metadir::DEFAULT_DEST && mdir.exists() {
            std::fs::remove_dir_all(&mdir).with_context(|| format!("{}", mdir.display()))?;
        }
    }
    crate::progress::summary(&format!("{name}: deleted ({n} sessions)"));
    Ok(())
}

/// The other destinations (not the one `config` was chosen for) that hold state of
/// volume `name`: a delta map or session copies.
fn other_dests_tracking(config: &crate::config::Config, name: &str) -> Vec<String> {
    let vdir = meta_dir(config, name);
    config
        .dest_names()
        .into_iter()
        .filter(|d| *d != config.dest)
        .filter(|d| {
            let dir = crate::metadir::dest_dir_in(&vdir, d);
            crate::metadir::delta_map_in(&dir).exists()
                || crate::metadir::copies_dir_in(&dir).exists()
        })
        .map(str::to_string)
        .collect()
}

/// Refuse a folder that is not volume `name`'s (encrypted archives: see
/// `VolumeArchive::check_bound`). One whose identity file is missing still passes when
/// this machine's copies of its sessions name the volume's id and every session in
/// the folder that can be read carries it (at least one).
fn check_is_ours(
    config: &crate::config::Config,
    vol: &sparsebak_format::volume::VolumeArchive,
    name: &str,
) -> Result<()> {
    let Err(e) = vol.check_bound() else {
        return Ok(());
    };
    if matches!(vol.store().volume_id(), Ok(None)) {
        let local = crate::archive::local::LocalCopies::for_dest(config, name);
        let copied = local
            .ids()
            .ok()
            .and_then(|ids| ids.last().cloned())
            .and_then(|id| sparsebak_format::info::SessionInfo::read(&local.info_path(&id)).ok())
            .and_then(|i| i.volume_id);
        if let Some(own) = copied {
            let (mut ours, mut theirs) = (0u64, 0u64);
            for id in vol.sessions()? {
                if let Ok(i) = vol.info(&id) {
                    match vol.check_own(&id, &i, Some(&own)) {
                        Ok(()) => ours += 1,
                        Err(_) => theirs += 1,
                    }
                }
            }
            if ours > 0 && theirs == 0 {
                tracing::warn!(
                    "{name}: its identity file is missing; this machine's copies tie its \
                     {ours} session(s) to it"
                );
                return Ok(());
            }
        }
    }
    Err(e.into())
}
