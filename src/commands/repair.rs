//! `sparsebak repair [--dry-run] VOLUME`

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::archive::{repair, Archive};
use crate::source;

pub fn run(ctx: &Ctx, name: &str, dry_run: bool) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    ctx.config.check_destination(!dry_run)?;
    let archive = Archive::open_for(&ctx.config, !dry_run)?;
    if !dry_run {
        archive.sweep_dead_runs();
    }
    let mut source = source::for_config(&ctx.config)?;
    let rep = repair::repair(&ctx.config, &archive, name, source.as_mut(), dry_run)
        .with_context(|| format!("repair {name}"))?;
    for line in &rep.done {
        println!("{name}: {line}");
    }
    for line in &rep.unrepaired {
        crate::progress::err_line(&format!("sparsebak: repair {name}: cannot repair {line}"));
    }
    if !rep.unrepaired.is_empty() {
        bail!(
            "repair {name}: {} problem(s) could not be repaired{}",
            rep.unrepaired.len(),
            if rep.done.is_empty() {
                String::new()
            } else if dry_run {
                format!(" ({} file(s) could be)", rep.done.len())
            } else {
                format!(" ({} file(s) were)", rep.done.len())
            }
        );
    }
    if rep.done.is_empty() {
        println!("{name}: nothing to repair");
    } else if !dry_run {
        println!("{name}: repaired {} file(s)", rep.done.len());
    }
    Ok(())
}
