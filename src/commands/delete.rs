//! `sparsebak delete volume`

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::archive::{meta_dir, Archive};
use crate::durable;
use crate::lock::Mode;
use crate::send::lock_meta;
use crate::source::{self, VolumeCtx};

pub fn run(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let archive = Archive::open_writable(&ctx.config, "delete")?;
    let vol = archive.volume(name);
    let mdir = meta_dir(&ctx.config, name);
    let n = vol.sessions()?.len();
    if !ctx.confirm(&format!(
        "Delete volume {name}: {n} session(s) in {}, its metadata in {} and its snapshots?",
        vol.dir.display(),
        mdir.display()
    ))? {
        bail!("not deleting {name} (confirm at the prompt, or pass -u)");
    }
    let _meta = lock_meta(&ctx.config, name)?;
    let _lock = archive.lock_volume(name, Mode::Exclusive)?;
    let mut src = source::for_config(&ctx.config)?;
    let vctx = VolumeCtx::new(&ctx.config, name);
    src.forget(&vctx)
        .with_context(|| format!("removing the snapshots of {name}"))?;
    if vol.dir.exists() {
        // Rename first: the volume disappears from the archive in one step, then the
        // files go.
        let trash = archive.root.join(format!(".trash-{name}"));
        std::fs::rename(&vol.dir, &trash).with_context(|| format!("{}", vol.dir.display()))?;
        durable::sync_dir(&archive.root)?;
        std::fs::remove_dir_all(&trash).with_context(|| format!("{}", trash.display()))?;
    }
    if mdir.exists() {
        std::fs::remove_dir_all(&mdir).with_context(|| format!("{}", mdir.display()))?;
    }
    crate::progress::summary(&format!("{name}: deleted ({n} sessions)"));
    Ok(())
}
