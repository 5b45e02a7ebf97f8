//! `sparsebak verify volume [--session=ID]`

use anyhow::Result;

use super::{human, pick_session, Ctx};
use crate::archive::local::LocalCopies;
use crate::archive::{verify, Archive};
use crate::progress::{self, Progress};

pub fn run(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let archive = Archive::open(&ctx.config)?;
    let vol = archive.volume(name);
    let mdir = crate::metadir::dest_dir(&ctx.config, name);
    let local = LocalCopies::new(&mdir);
    let _lock = crate::archive::lock_for_reading(&ctx.config, &archive, name)?;
    let sessions = vol.sessions()?;
    let id = pick_session(ctx, &vol, &sessions)?;
    let local = (mdir.is_dir() && !another_archive(ctx, &archive)).then_some(&local);
    let size = vol.info(&id).map(|i| i.volsize).unwrap_or(0);
    let started = std::time::Instant::now();
    let bar = Progress::new(size, &format!("verify {name}"));
    let rep = verify::verify(&*archive, name, &id, local, &mut |p| bar.set(p))?;
    bar.finish();
    record(
        &mdir,
        name,
        &crate::status::LastVerify {
            time: super::now().timestamp(),
            session: id.clone(),
            ok: rep.problems.is_empty(),
            problems: rep.problems.len() as u64,
        },
    );
    if ctx.json {
        print_json(
            ctx,
            name,
            &id,
            &Found {
                ok: rep.problems.is_empty(),
                chunks_checked: rep.chunks_checked,
                bytes_checked: Some(rep.bytes_checked),
                problems: &rep.problems,
                hint: rep.hint.as_deref(),
                seconds: Some(started.elapsed().as_secs_f64()),
            },
        );
    }
    if !rep.problems.is_empty() {
        // Each problem names its session (or the file, which does) once; the last
        // line names the session verified.
        for p in &rep.problems {
            crate::progress::err_line(&format!("sparsebak: verify {name}: {p}"));
        }
        if let Some(h) = &rep.hint {
            crate::progress::err_line(&format!("sparsebak: verify {name}: hint: {h}"));
        }
        return Err(crate::exit::Coded::damage(format!(
            "verify {name} session {id}: FAILED with {} problem(s)",
            rep.problems.len()
        ))
        .into());
    }
    progress::summary(&format!(
        "{name}: session {id} verified: {} chunks, {} checked, time={:.1}s",
        rep.chunks_checked,
        human(rep.bytes_checked),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// What a verify found, as its `--json` document says it (docs/json/verify.schema.json):
/// of an archive, or of a chain of streams on tape (which knows no byte count, hint or
/// time).
pub struct Found<'a> {
    pub ok: bool,
    pub chunks_checked: u64,
    pub bytes_checked: Option<u64>,
    pub problems: &'a [String],
    pub hint: Option<&'a str>,
    pub seconds: Option<f64>,
}

/// Print the `--json` document of a verify of volume `name`'s session `session`.
pub fn print_json(ctx: &Ctx, name: &str, session: &str, f: &Found<'_>) {
    super::json::print(&serde_json::json!({
        "version": super::json::VERSION,
        "command": "verify",
        "volume": name,
        "dest": ctx.config.dest,
        "session": session,
        "ok": f.ok,
        "chunks_checked": f.chunks_checked,
        "bytes_checked": f.bytes_checked,
        "problems": f.problems,
        "hint": f.hint,
        "seconds": f.seconds,
    }));
}

/// Leave what a verify that ran to the end found in the volume's state folder for the
/// destination (`status` reads it); a failure to write it is said, not fatal. Only
/// where that folder exists: a machine that never sent the volume there (another
/// machine verifying the archive) gets none, for an existing folder is what tells
/// the commands that this machine kept copies of the sessions.
pub fn record(dest_dir: &std::path::Path, name: &str, v: &crate::status::LastVerify) {
    if !dest_dir.is_dir() {
        tracing::debug!(
            "verify {name}: {} does not exist: result not recorded",
            dest_dir.display()
        );
        return;
    }
    if let Err(e) = v.write(dest_dir) {
        tracing::warn!("verify {name}: cannot record the result for status: {e}");
    }
}

/// Whether the archive is not the one this machine sends to at `destdir` (another
/// disk): then its sessions are not the ones this machine kept copies of, and
/// comparing with them would only report false damage.
fn another_archive(ctx: &Ctx, archive: &Archive) -> bool {
    let path = crate::metadir::catalog(&ctx.config);
    if !path.exists() {
        return false;
    }
    match crate::archive::identity::known(&ctx.config) {
        Ok(Some(known)) if archive.id.as_ref().is_some_and(|id| *id != known) => {
            tracing::warn!(
                "the archive at {} is archive {}, but this machine sends to archive {known} there: \
                 not comparing it with this machine's copies of its sessions",
                archive.root.display(),
                archive.id.as_deref().unwrap_or_default()
            );
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!("{e}");
            false
        }
    }
}
