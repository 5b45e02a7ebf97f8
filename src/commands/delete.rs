//! `sparsebak delete volume`

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::archive::{prepare, Archive, Use};
use crate::lock::Mode;
use crate::metadir::meta_dir;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let archive = Archive::open_writable(&ctx.config, "delete")?;
    let vol = archive.volume(name);
    let mdir = meta_dir(&ctx.config, name);
    let n = vol.sessions()?.len();
    if !ctx.confirm(&format!(
        "Delete volume {name}: {n} session(s) in {}, its metadata in {} and its snapshots?",
        vol.label(),
        mdir.display()
    ))? {
        bail!("not deleting {name} (confirm at the prompt, or pass -u)");
    }
    let _held = prepare(&ctx.config, &archive, name, Use::Lock(Mode::Exclusive))?;
    let mut src = source::for_config(&ctx.config)?;
    let vctx = VolumeCtx::new(&ctx.config, name);
    src.forget(&vctx)
        .with_context(|| format!("removing the snapshots of {name}"))?;
    archive.delete_volume(name)?;
    if mdir.exists() {
        std::fs::remove_dir_all(&mdir).with_context(|| format!("{}", mdir.display()))?;
    }
    crate::progress::summary(&format!("{name}: deleted ({n} sessions)"));
    Ok(())
}
