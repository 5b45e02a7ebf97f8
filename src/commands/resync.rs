//! `sparsebak resync [volume ...]`

use anyhow::{Context, Result};

use super::Ctx;
use crate::archive::{prepare, Archive, Use};
use crate::config::SourceKind;
use crate::lock::Mode;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if ctx.config.source == SourceKind::File {
        for v in vols {
            tracing::info!("{v}: source = file compares every chunk at send; nothing to resync");
        }
        return Ok(());
    }
    let mut source = source::for_config(&ctx.config)?;
    // It clears what interrupted sends left on the archive: a far side is told so.
    let archive = Archive::open_for(&ctx.config, true)?;
    // Tracking rebuilt against another disk's archive would be wrong for this one.
    crate::archive::identity::check_same(&ctx.config, &archive)?;
    for name in &vols {
        // Resync only reads the archive; on a read-only one nobody can be sending.
        let mode = if archive.read_only {
            Mode::Shared
        } else {
            Mode::Exclusive
        };
        let _held = prepare(&ctx.config, &archive, name, Use::Lock(mode))?;
        let vol = archive.volume(name);
        if !archive.read_only {
            archive.remove_staging(name)?;
        }
        let vctx = VolumeCtx::new(&ctx.config, name);
        let marked = source
            .resync(&vctx, &vol)
            .with_context(|| format!("resync {name}"))?;
        crate::progress::summary(&format!(
            "{name}: resynced with the archive; {marked} chunks marked for the next send"
        ));
    }
    Ok(())
}
