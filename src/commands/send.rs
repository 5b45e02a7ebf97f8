//! `sparsebak send [volume ...]`

use anyhow::{Context, Result};

use super::{human, Ctx};
use crate::archive::Archive;
use crate::progress;
use crate::send::send_volume;
use crate::source;

pub fn run(ctx: &Ctx, names: &[String], tarfile: bool, accept_archive: bool) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if vols.is_empty() {
        anyhow::bail!("no volumes enabled in {}", ctx.config.path.display());
    }
    let mut source = source::for_config(&ctx.config)?;
    let archive = Archive::open_or_create(&ctx.config, accept_archive)?;
    for name in &vols {
        let as_tar = tarfile || ctx.config.tarfile;
        let out = send_volume(&ctx.config, &archive, name, source.as_mut(), as_tar)
            .with_context(|| format!("send {name}"))?;
        match &out.session {
            Some(s) => progress::summary(&format!(
                "{name}: session {} {} read={} stored={} changed={} time={:.1}s",
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
                "{name}: no changes, no new session read={} time={:.1}s",
                human(out.bytes_read),
                out.elapsed.as_secs_f64()
            )),
        }
    }
    Ok(())
}
