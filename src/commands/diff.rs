//! `sparsebak diff volume --session=A[,B] [--json]`

use anyhow::{bail, Context, Result};

use super::{human, now, resolve_session, Ctx};
use crate::archive::Archive;
use crate::diff;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, name: &str, json: bool, files: bool) -> Result<()> {
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
    if files {
        let Some((a, b)) = spec.split_once(',') else {
            bail!("diff --files compares two sessions: give --session=A,B");
        };
        let (a, b) = (pick(a)?, pick(b)?);
        return files_diff(name, archive.volume(name), &a, &b, json);
    }
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

/// `diff --files`: both sessions' images mounted here, their filesystems loop-mounted
/// read-only, their trees compared.
fn files_diff(
    name: &str,
    vol: sparsebak_format::volume::VolumeArchive,
    a: &str,
    b: &str,
    json: bool,
) -> Result<()> {
    use crate::mount::files::{self, LoopMount};
    use crate::mount::fs::{volume_for_mount, Access, ImageFs};
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("diff --files loop-mounts the sessions' filesystems, which needs root");
    }
    let tmp = tempfile::Builder::new()
        .prefix("sparsebak-diff-")
        .tempdir()
        .context("making a temporary folder")?;
    let dir = |n: &str| -> Result<std::path::PathBuf> {
        let p = tmp.path().join(n);
        std::fs::create_dir(&p).with_context(|| p.display().to_string())?;
        Ok(p)
    };
    let (images, index, at_a, at_b) = (dir("images")?, dir("index")?, dir("a")?, dir("b")?);
    let mv = volume_for_mount(name, vol)?;
    let fs = ImageFs::new(
        vec![mv],
        crate::mount::DEFAULT_CACHE,
        index,
        Access {
            uid: 0,
            gid: 0,
            everyone: false,
        },
    );
    let mounted = crate::mount::mount_in_background(fs, &images)?;
    let d = {
        let img = |id: &str| images.join(name).join(format!("{id}.img"));
        let la = LoopMount::new(&img(a), &at_a).with_context(|| format!("session {a}"))?;
        let lb = LoopMount::new(&img(b), &at_b).with_context(|| format!("session {b}"))?;
        files::compare(la.dir(), lb.dir())?
    };
    drop(mounted);
    if json {
        let head = format!("\"volume\":\"{name}\",\"from\":\"{a}\",\"to\":\"{b}\",");
        crate::progress::out(&files::render_json(&head, &d));
    } else {
        crate::progress::out(&format!(
            "{name}: {a} -> {b}: {} added, {} removed, {} changed",
            d.added.len(),
            d.removed.len(),
            d.changed.len()
        ));
        let text = files::render_text(&d);
        for l in text.lines() {
            crate::progress::out(l);
        }
    }
    Ok(())
}
