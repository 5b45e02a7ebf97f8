//! `sparsebak diff volume --session=A[,B] [--json]`

use anyhow::{bail, Result};

use super::{human, now, resolve_session, Ctx};
use crate::archive::Archive;
use crate::diff;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, name: &str, json: bool) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let Some(spec) = &ctx.session else {
        bail!("diff needs --session=A,B (two sessions) or --session=A (a session and the live volume)");
    };
    let archive = Archive::open(&ctx.config)?;
    let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
    let vol = archive.volume(name);
    let ids = vol.sessions()?;
    crate::archive::warn_sessions_gone(&ctx.config, &archive, name, &ids)?;
    let now = now();
    let pick = |s: &str| resolve_session(s.trim(), &now, &vol, &ids);
    let (from, to, d, size_from, size_to) = match spec.split_once(',') {
        Some((a, b)) => {
            let (a, b) = (pick(a)?, pick(b)?);
            let d = diff::sessions(&vol, &a, &b)?;
            let (sa, sb) = (vol.info(&a)?.volsize, vol.info(&b)?.volsize);
            (a, b, d, sa, sb)
        }
        None => {
            let a = pick(spec)?;
            let mut src = source::for_config(&ctx.config)?;
            let vctx = VolumeCtx::new(&ctx.config, name);
            let (file, size) = src.open_live(&vctx)?;
            let d = diff::live(&vol, &a, &file, size)?;
            let sa = vol.info(&a)?.volsize;
            (a, "live".to_string(), d, sa, size)
        }
    };
    let cs = vol.info(&from)?.chunksize;
    if json {
        let ranges: Vec<String> = d
            .ranges
            .iter()
            .map(|(s, l)| format!("{{\"start\":{s},\"length\":{l}}}"))
            .collect();
        crate::progress::out(&format!(
            "{{\"version\":{},\"command\":\"diff\",\"volume\":\"{name}\",\"from\":\"{from}\",\"to\":\"{to}\",\"size_from\":{size_from},\"size_to\":{size_to},\"chunksize\":{cs},\"changed_chunks\":{},\"changed_bytes\":{},\"ranges\":[{}]}}",
            super::json::VERSION,
            d.chunks,
            d.bytes(),
            ranges.join(",")
        ));
    } else {
        crate::progress::out(&format!(
            "{name}: {from} -> {to}: {} chunk(s) in {} range(s) differ, {}{}",
            d.chunks,
            d.ranges.len(),
            human(d.bytes()),
            if size_from != size_to {
                format!("; size {size_from} -> {size_to}")
            } else {
                String::new()
            }
        ));
        for (s, l) in &d.ranges {
            crate::progress::out(&format!("  {s:#014x}..{:#014x} ({})", s + l, human(*l)));
        }
    }
    Ok(())
}
