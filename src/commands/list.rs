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
    let archive = Archive::open(&ctx.config)?;
    // A reader that went away (`list | head -1`) is not an error.
    let mut out = crate::progress::Stdout;
    let mut unreadable = 0usize;
    for name in &vols {
        let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
        let vol = archive.volume(name);
        // In an encrypted archive the folder must be this volume's (not another
        // volume's folder moved or copied here).
        let ids = vol.sessions()?;
        let own = vol.own_id(&ids)?;
        crate::archive::warn_sessions_gone(&ctx.config, &archive, name, &ids)?;
        writeln!(out, "{name}")?;
        for id in ids {
            // One session that cannot be read (a lost tar index, a damaged info) is
            // said, and the others are still listed.
            let i = match vol.info(&id) {
                Ok(i) => i,
                Err(e) => {
                    eprintln!("sparsebak: list {name}: session {id}: {e}");
                    unreadable += 1;
                    continue;
                }
            };
            vol.check_own(&id, &i, own.as_deref())?;
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
    if unreadable > 0 {
        anyhow::bail!("list: {unreadable} session(s) could not be read");
    }
    Ok(())
}
