//! `sparsebak untar volume [--session=SEL[,SEL]]`

use anyhow::{Context, Result};

use super::{now, timed, Ctx};
use crate::archive::{prepare, Archive, Use};
use crate::selector;

pub fn run(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let archive = Archive::open_writable(&ctx.config, "untar")?;
    let _held = prepare(&ctx.config, &archive, name, Use::Write)?;
    let vol = archive.volume(name);
    vol.check_bound()
        .with_context(|| format!("untar {name}: nothing was changed"))?;
    let ids = vol.sessions()?;
    let targets = match &ctx.session {
        None => ids.clone(),
        Some(s) if s.contains(',') => {
            let r = selector::parse_range(s, &now())?;
            selector::resolve_range(&r, &timed(&vol, &ids, r.needs_times()))?
        }
        Some(s) => {
            let sel = selector::parse(s, &now())?;
            vec![selector::resolve(
                &sel,
                &timed(&vol, &ids, sel.needs_times()),
            )?]
        }
    };
    let mut n = 0;
    for id in &targets {
        if archive
            .untar(name, id)
            .with_context(|| format!("untar {name} session {id}"))?
        {
            n += 1;
            crate::progress::summary(&format!("{name}: session {id} is now a folder"));
        }
    }
    if n == 0 {
        crate::progress::out(&format!(
            "{name}: no tar sessions among the {} selected",
            targets.len()
        ));
    }
    Ok(())
}
