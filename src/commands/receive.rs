//! `sparsebak receive --save-to=PATH volume [--session=ID]`

use anyhow::{bail, Context, Result};

use super::{human, pick_session, Ctx};
use crate::archive::Archive;
use crate::progress::{self, Progress};
use crate::receive::{check_target, receive_to};
use sparsebak_format::output::OutputKind;

pub fn run(ctx: &Ctx, name: &str, zero_tail: bool) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let Some(path) = &ctx.save_to else {
        bail!("receive needs --save-to=PATH (a file, a block device, a FIFO or - for stdout)");
    };
    let archive = Archive::open(&ctx.config)?;
    let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
    let vol = archive.volume(name);
    let sessions = vol.sessions().with_context(|| format!("receive {name}"))?;
    // Sessions this machine sent that the archive lost (an older copy of the volume
    // put back): its "latest" is not the volume's latest. Only a session named by its
    // ID is restored then.
    // Another volume's folder here is said as that, not as lost sessions.
    vol.own_id(&sessions)
        .with_context(|| format!("receive {name}"))?;
    let gone = crate::archive::sessions_gone(&ctx.config, name, &sessions)?;
    if !gone.is_empty() {
        let said = crate::archive::sessions_gone_text(name, &gone, &archive);
        match ctx.session.as_deref().map(str::trim) {
            Some(s) if sessions.iter().any(|id| id == s) => tracing::warn!("{said}"),
            _ => bail!(
                "{said}; refusing to pick a session for you: name the one to restore \
                 with --session=ID (`sparsebak list {name}` shows what the archive has)"
            ),
        }
    }
    let id = pick_session(ctx, &vol, &sessions)?;
    let chain = vol
        .chain(&id)
        .with_context(|| format!("receive {name} session {id}"))?;
    // `/dev/<vg>/<lv>` of an inactive LV: activated for the restore, deactivated after.
    let activated = crate::devpath::activate_named_lv(path)?;
    let path = activated
        .as_ref()
        .map_or(path.as_path(), |a| a.device.as_path());
    let size = chain.last().map(|i| i.volsize).unwrap_or(0);
    let out = check_target(path, size, name)?;
    crate::receive::refuse_in_archives(&out, &ctx.config)?;
    let what = match out.kind {
        OutputKind::File { .. } => Some("file"),
        OutputKind::BlockDevice { .. } => Some("block device"),
        _ => None,
    };
    if let Some(what) = what {
        if !ctx.confirm(&format!(
            "Overwrite {what} {} with volume {name} session {id}?",
            out.describe()
        ))? {
            bail!(
                "{} exists; not overwriting it (confirm at the prompt, or pass -u)",
                out.describe()
            );
        }
    }
    let started = std::time::Instant::now();
    let bar = Progress::new(size, &format!("receive {name}"));
    let stats = receive_to(&vol, &chain, &out, &mut |p| bar.set(p))
        .with_context(|| format!("receive {name} session {id} into {}", out.describe()))?;
    bar.finish();
    if zero_tail {
        crate::receive::zero_tail(path, size)
            .context("--zero-tail: zeroing past the volume's end")?;
    }
    if ctx.json {
        super::json::print(&received_json(
            name,
            Some(&ctx.config.dest),
            &id,
            &out.describe(),
            stats.volsize,
            Some(stats.bytes_written),
            started.elapsed().as_secs_f64(),
        ));
    }
    progress::summary(&format!(
        "{name}: session {id} restored to {} size={} written={} time={:.1}s",
        out.describe(),
        stats.volsize,
        human(stats.bytes_written),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The `--json` document of a restore (from an archive or a tape; `dest` is `None`
/// from streams).
pub fn received_json(
    volume: &str,
    dest: Option<&str>,
    session: &str,
    target: &str,
    size: u64,
    bytes_written: Option<u64>,
    seconds: f64,
) -> serde_json::Value {
    serde_json::json!({
        "version": super::json::VERSION,
        "command": "receive",
        "volume": volume,
        "dest": dest,
        "session": session,
        "target": target,
        "size": size,
        "bytes_written": bytes_written,
        "seconds": seconds,
    })
}
