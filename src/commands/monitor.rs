//! `sparsebak monitor [volume ...]`

use anyhow::{Context, Result};

use super::Ctx;
use crate::metadir::lock_meta;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    let mut source = source::for_config(&ctx.config)?;
    for name in &vols {
        let _lock = lock_meta(&ctx.config, name)?;
        let vctx = VolumeCtx::new(&ctx.config, name);
        let out = source
            .monitor(&vctx)
            .with_context(|| format!("monitor {name}"))?;
        if out.note.is_empty() {
            tracing::info!("{name}: {} chunks marked for the next send", out.marked);
        } else {
            tracing::info!("{name}: {}", out.note);
        }
    }
    Ok(())
}
