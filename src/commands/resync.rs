//! `sparsebak resync [volume ...]`

use anyhow::Result;

use super::Ctx;
use crate::config::SourceKind;

pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if ctx.config.source == SourceKind::File {
        for v in vols {
            tracing::info!("{v}: source = file compares every chunk at send; nothing to resync");
        }
        return Ok(());
    }
    anyhow::bail!(
        "resync for source = {} is not available in this build",
        ctx.config.source.name()
    )
}
