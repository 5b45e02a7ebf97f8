//! `sparsebak list [volume ...]`: per volume a header line with its name, then one
//! line per session, oldest first:
//! `<ID> size=<bytes> changed=<chunks> chunks=<chunks> stored=<bytes> read=<bytes>
//! previous=<ID|->`.

use std::io::Write;

use anyhow::Result;

use super::Ctx;
use crate::archive::Archive;

pub fn run(ctx: &Ctx, names: &[String]) -> Result<()> {
    let vols: Vec<String> = if names.is_empty() {
        ctx.config.volumes.iter().map(|(n, _)| n.clone()).collect()
    } else {
        ctx.config.select_volumes(names)?
    };
    if let Some(spec) = &ctx.config.remote {
        return run_remote(ctx, spec, &vols);
    }
    let archive = Archive::open(&ctx.config)?;
    // A reader that went away (`list | head -1`) is not an error.
    let mut out = crate::progress::Stdout;
    for name in &vols {
        let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
        let vol = archive.volume(name);
        writeln!(out, "{name}")?;
        for id in vol.sessions()? {
            let i = vol.info(&id)?;
            writeln!(
                out,
                "{id} size={} changed={} chunks={} stored={} read={} previous={}",
                i.volsize,
                i.changed,
                i.chunks,
                i.bytes_stored,
                i.bytes_read,
                i.previous.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(())
}

/// `list` of an archive on another machine: the same lines, read through
/// `sparsebak serve` there (each volume under its shared lock, held by the far side).
fn run_remote(ctx: &Ctx, spec: &crate::remote::RemoteSpec, vols: &[String]) -> Result<()> {
    use sparsebak_format::info::SessionInfo;
    let c = &ctx.config;
    let mut conn =
        crate::remote::Connection::open(spec, &c.destdir, c.destmountpoint.as_deref(), false)?;
    let mut out = crate::progress::Stdout;
    for name in vols {
        conn.lock(name, false)?;
        writeln!(out, "{name}")?;
        for id in conn.sessions(name)? {
            let bytes = conn.info_bytes(name, &id)?;
            let label = std::path::PathBuf::from(format!("{}/{name}/S_{id}/info", conn.label()));
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{}: not UTF-8", label.display()))?;
            let i = SessionInfo::parse(&text, &label)?;
            writeln!(
                out,
                "{id} size={} changed={} chunks={} stored={} read={} previous={}",
                i.volsize,
                i.changed,
                i.chunks,
                i.bytes_stored,
                i.bytes_read,
                i.previous.as_deref().unwrap_or("-")
            )?;
        }
        conn.unlock(name)?;
    }
    conn.close()?;
    Ok(())
}
