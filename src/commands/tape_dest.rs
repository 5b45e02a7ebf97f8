//! `send`, `receive`, `verify`, `list` and `prune` on a tape destination
//! (`[dest:NAME]` with `tape = ...`): each volume session is one stream in one tape
//! file, found again by block position through the catalog ([`crate::tape::session`]).

use anyhow::{bail, Context, Result};

use super::{human, prune, Ctx};
use crate::catalog::Catalog;
use crate::progress;
use crate::source;
use crate::stream_send::{check_volume, input_from, receive_streams, stream_unlock};
use crate::tape::session::{session_chain, TapeChain, TapeDest, TapeSent};
use crate::tape::writer::TapeFile;

/// Where a tape file lies, for messages: `tape T file F block B` (and its further
/// parts).
fn place(file: &TapeFile) -> String {
    let mut s = String::new();
    for (i, p) in file.parts.iter().enumerate() {
        if i > 0 {
            s.push_str(", continued on ");
        }
        s.push_str(&format!(
            "tape {} file {} block {}",
            p.tape, p.file_number, p.first_block
        ));
    }
    s
}

pub fn send(ctx: &Ctx, names: &[String], verify: bool) -> Result<()> {
    let config = &ctx.config;
    let vols = config.select_volumes(names)?;
    if vols.is_empty() {
        bail!("no volumes enabled in {}", config.path.display());
    }
    let mut source = source::for_config(config)?;
    let mut dest = TapeDest::open(config)?;
    let mut cat = dest.catalog()?;
    let mut sent: Vec<(String, TapeSent)> = Vec::new();
    for (i, name) in vols.iter().enumerate() {
        let rest = &vols[i + 1..];
        let failed = |e: crate::error::Error| {
            let also = if rest.is_empty() {
                String::new()
            } else {
                format!(" (not sent in this run either: {})", rest.join(", "))
            };
            anyhow::Error::from(e).context(format!(
                "send {name} to tape destination {}{also}",
                config.dest
            ))
        };
        let label = dest.mount_for_append(&mut cat).map_err(failed)?;
        let s = match dest.send_volume(name, source.as_mut(), &label, ctx.unattended) {
            Ok(s) => s,
            Err(e) => {
                if let Err(n) = dest.note_full() {
                    tracing::warn!("after the failed send: {n}");
                }
                return Err(failed(e));
            }
        };
        let i = &s.outcome.info;
        if ctx.json {
            super::json::print(&super::send::sent_json(
                name,
                &config.dest,
                Some(i),
                s.outcome.bytes_written,
                s.outcome.elapsed.as_secs_f64(),
            ));
        }
        progress::summary(&format!(
            "{name} to {}: session {} {} written={} changed={} on {}; drive busy {:.0}% at {}/s, \
             stopped {} time(s) time={:.1}s",
            config.dest,
            i.session,
            if i.previous.is_none() {
                "full"
            } else {
                "incremental"
            },
            human(s.outcome.bytes_written),
            i.changed,
            place(&s.file),
            s.stats.busy_fraction() * 100.0,
            human(s.stats.throughput() as u64),
            s.stats.stops,
            s.outcome.elapsed.as_secs_f64()
        ));
        sent.push((name.clone(), s));
    }
    // The end of the tape set holds a copy of the catalog: it restores with nothing of
    // this machine.
    let copy = dest
        .write_catalog_copy(ctx.unattended)
        .with_context(|| format!("send to tape destination {}", config.dest))?;
    progress::summary(&format!(
        "catalog copy written on {} ({})",
        place(&copy),
        human(copy.bytes)
    ));
    if verify {
        for (name, s) in sent {
            let file = s.file.clone();
            let bytes = dest
                .read_files(vec![file], ctx.unattended, |mut r| {
                    std::io::copy(&mut r, &mut std::io::sink())
                        .map_err(|e| crate::error::Error::Msg(format!("reading it back: {e}")))
                })
                .with_context(|| {
                    format!(
                        "--verify-tape: session {} of {name} ({})",
                        s.outcome.info.session,
                        place(&s.file)
                    )
                })?;
            progress::summary(&format!(
                "{name}: session {} read back from tape: {} bytes, every block and the \
                 SHA-256 as written",
                s.outcome.info.session, bytes
            ));
        }
    }
    Ok(())
}

/// The chain of tape files for `--session` (an ID or a selector such as `latest`,
/// `oldest` or a date: see `--help`) or the latest session of `name`.
fn chain_for(ctx: &Ctx, cat: &Catalog, name: &str) -> Result<TapeChain> {
    let dest = &ctx.config.dest;
    let id = match ctx.session.as_deref().map(str::trim) {
        None => None,
        Some(spec) => {
            let d = cat.destination("tape", dest)?;
            let sessions: Vec<_> = cat
                .chain(d, name)?
                .iter()
                .filter_map(|s| crate::selector::SessionTime::from_id(&s.session, &chrono::Local))
                .collect();
            let sel = crate::selector::parse(spec, &super::now())?;
            Some(
                crate::selector::resolve(&sel, &sessions)
                    .with_context(|| format!("volume {name} on tape destination {dest}"))?,
            )
        }
    };
    Ok(session_chain(cat, dest, name, id.as_deref())?)
}

pub fn receive(ctx: &Ctx, name: &str, zero_tail: bool) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let Some(path) = &ctx.save_to else {
        bail!("receive needs --save-to=PATH (a file, a block device, a FIFO or - for stdout)");
    };
    let mut dest = TapeDest::open(&ctx.config)?;
    let cat = dest.catalog()?;
    let chain = chain_for(ctx, &cat, name)?;
    drop(cat);
    let activated = crate::devpath::activate_named_lv(path)?;
    let path = activated
        .as_ref()
        .map_or(path.as_path(), |a| a.device.as_path());
    let out = crate::receive::check_target(path, 0, name)?;
    crate::receive::refuse_in_archives(&out, &ctx.config)?;
    let what = match out.kind {
        sparsebak_format::output::OutputKind::File { .. } => Some("file"),
        sparsebak_format::output::OutputKind::BlockDevice { .. } => Some("block device"),
        _ => None,
    };
    if let Some(what) = what {
        if !ctx.confirm(&format!(
            "Overwrite {what} {} with volume {name} session {}?",
            out.describe(),
            chain.session
        ))? {
            bail!(
                "{} exists; not overwriting it (confirm at the prompt, or pass -u)",
                out.describe()
            );
        }
    }
    let started = std::time::Instant::now();
    let streams = chain.files.len();
    let label = format!("tape destination {}", ctx.config.dest);
    let config = ctx.config.clone();
    let sum = dest
        .read_files(chain.files.clone(), ctx.unattended, |r| {
            receive_streams(
                input_from(label, Box::new(r)),
                &out,
                Some(name),
                stream_unlock(Some(config)),
            )
        })
        .with_context(|| {
            format!(
                "receive {name} session {} from tape destination {} into {}",
                chain.session,
                ctx.config.dest,
                out.describe()
            )
        })?;
    if sum.last().info.session != chain.session {
        bail!(
            "the tapes hold session {} of {name} where the catalog says {}",
            sum.last().info.session,
            chain.session
        );
    }
    if zero_tail {
        crate::receive::zero_tail(path, sum.last().info.volsize)
            .context("--zero-tail: zeroing past the volume's end")?;
    }
    if ctx.json {
        super::json::print(&super::receive::received_json(
            name,
            Some(&ctx.config.dest),
            &chain.session,
            &out.describe(),
            sum.last().info.volsize,
            None,
            started.elapsed().as_secs_f64(),
        ));
    }
    progress::summary(&format!(
        "{name}: session {} restored from {streams} tape file(s) ({}) to {} size={} time={:.1}s",
        chain.session,
        place(&chain.files[chain.files.len() - 1]),
        out.describe(),
        sum.last().info.volsize,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn verify(ctx: &Ctx, name: &str) -> Result<()> {
    ctx.config.select_volumes(&[name.to_string()])?;
    let mut dest = TapeDest::open(&ctx.config)?;
    let cat = dest.catalog()?;
    let chain = chain_for(ctx, &cat, name)?;
    drop(cat);
    let label = format!("tape destination {}", ctx.config.dest);
    let config = ctx.config.clone();
    let what = format!(
        "verify {name} session {} on tape destination {}",
        chain.session, ctx.config.dest
    );
    // Set when the tape files were read and found damaged (a block, a part, a chunk),
    // not when they could not be read: the last-verify record and the exit status
    // (damage has its own) say which.
    let damaged = std::cell::Cell::new(false);
    let r = dest
        .read_files(chain.files.clone(), ctx.unattended, |r| {
            let (input, map) = input_from(label, Box::new(r));
            let sum = sparsebak_format::stream::read_chain_with(
                std::io::BufReader::with_capacity(1 << 20, input),
                None,
                Some(stream_unlock(Some(config))),
            )
            .map_err(|e| {
                damaged.set(stream_damage(&e));
                map.locate(e)
            })?;
            check_volume(&sum, Some(name))?;
            Ok(sum)
        })
        .with_context(|| what.clone());
    let ok = r.is_ok();
    if ok || damaged.get() {
        super::verify::record(
            &crate::metadir::dest_dir(&ctx.config, name),
            name,
            &crate::status::LastVerify {
                time: super::now().timestamp(),
                session: chain.session.clone(),
                ok,
                problems: u64::from(!ok),
            },
        );
    }
    if ctx.json {
        let problems = match &r {
            Ok(_) => Vec::new(),
            Err(e) => vec![sparsebak_format::error::one_line(e.as_ref())],
        };
        super::verify::print_json(
            ctx,
            name,
            &chain.session,
            &super::verify::Found {
                ok,
                chunks_checked: r.as_ref().map_or(0, |s| {
                    s.streams().iter().map(|s| s.data_chunks).sum::<u64>()
                }),
                bytes_checked: None,
                problems: &problems,
                hint: None,
                seconds: None,
            },
        );
    }
    let sum = match r {
        Ok(sum) => sum,
        Err(e) if damaged.get() => {
            return Err(anyhow::Error::from(crate::exit::Coded::damage(
                sparsebak_format::error::one_line(e.as_ref()),
            )))
        }
        Err(e) => return Err(e),
    };
    progress::summary(&format!(
        "{name}: session {} verified from {} tape file(s): {} chunks, sessions {}",
        chain.session,
        sum.streams().len(),
        sum.streams().iter().map(|s| s.data_chunks).sum::<u64>(),
        sum.streams()
            .iter()
            .map(|s| s.info.session.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(())
}

/// Whether a stream read from tape was found damaged (cut short, altered, chunks that
/// do not match), rather than not readable.
fn stream_damage(e: &sparsebak_format::stream::StreamError) -> bool {
    // A tape block, part or stream found damaged comes through the pipe as a read
    // error of kind `InvalidData`.
    e.is_damage()
        || matches!(e, sparsebak_format::stream::StreamError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::InvalidData)
}

/// Per volume a header line, then one line per session on the tape destination,
/// oldest first: `<ID> size=<bytes> stored=<bytes> previous=<ID|-> tape=<NAME>
/// file=<N> block=<B> [parts=<K>]`. Needs no drive: it is the catalog's word.
pub fn list(ctx: &Ctx, names: &[String]) -> Result<()> {
    use std::io::Write;
    let vols: Vec<String> = if names.is_empty() {
        ctx.config.volumes.iter().map(|(n, _)| n.clone()).collect()
    } else {
        ctx.config.select_volumes(names)?
    };
    crate::metadir::create_private_dir(&ctx.config.metadir)?;
    let cat = Catalog::open(&crate::metadir::catalog(&ctx.config))?;
    let dest = &ctx.config.dest;
    let id = cat.destination("tape", dest)?;
    let mut out = progress::Stdout;
    for name in &vols {
        if ctx.json {
            let rows = cat
                .chain(id, name)?
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "session": s.session,
                        "time": s.time,
                        "size": s.volsize,
                        "stored": s.bytes,
                        "previous": s.previous,
                    })
                })
                .collect();
            super::json::print(&super::list::volume_json(ctx, name, rows, None));
            continue;
        }
        writeln!(out, "{name}")?;
        for s in cat.chain(id, name)? {
            let parts = cat.session_tape_files(dest, name, &s.session)?;
            let at = match parts.first() {
                Some(p) => {
                    let tape = cat
                        .tape(&p.tape)?
                        .map_or_else(|| p.tape.clone(), |t| t.name);
                    format!("tape={tape} file={} block={}", p.file_number, p.first_block)
                }
                None => "tape=? (no tape file in the catalog)".into(),
            };
            let more = if parts.len() > 1 {
                format!(" parts={}", parts.len())
            } else {
                String::new()
            };
            writeln!(
                out,
                "{} size={} stored={} previous={} {at}{more}",
                s.session,
                s.volsize,
                s.bytes,
                s.previous.as_deref().unwrap_or("-")
            )?;
        }
    }
    Ok(())
}

/// `prune` on a tape destination forgets sessions in the catalog (the tapes are not
/// touched). Each session on tape builds on the one before, back to its chain's full
/// stream, so only a volume's whole chain there can be forgotten; its next send is
/// full again. A tape left with no recorded session is appendable again and is
/// labelled anew when next written.
pub fn prune(ctx: &Ctx, names: &[String], opts: &prune::Opts) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    if ctx.session.is_none() && opts.all_before.is_none() && !opts.auto && opts.keep.is_none() {
        bail!("prune needs --session=SEL[,SEL], --all-before=DATE or --auto");
    }
    crate::metadir::create_private_dir(&ctx.config.metadir)?;
    let mut cat = Catalog::open(&crate::metadir::catalog(&ctx.config))?;
    let dest = ctx.config.dest.clone();
    let id = cat.destination("tape", &dest)?;
    let mut forgotten = 0usize;
    // Tapes that held a tape file of a forgotten session.
    let mut emptied = std::collections::BTreeSet::new();
    for name in &vols {
        let _lock = crate::metadir::lock_meta(&ctx.config, name)?;
        let chain = cat.chain(id, name)?;
        let ids: Vec<String> = chain.iter().map(|s| s.session.clone()).collect();
        let times = |_needed: bool| {
            ids.iter()
                .filter_map(|s| crate::selector::SessionTime::from_id(s, &chrono::Local))
                .collect::<Vec<_>>()
        };
        let chosen = prune::select_in(ctx, opts, name, &times)?;
        if chosen.is_empty() {
            continue;
        }
        if chosen.len() != ids.len() {
            let first = chosen.first().map(String::as_str).unwrap_or("?");
            let needs = ids
                .iter()
                .filter(|s| !chosen.contains(s) && s.as_str() > first)
                .cloned()
                .collect::<Vec<_>>();
            let needed = if needs.is_empty() {
                "the next send builds on it".to_string()
            } else {
                format!("session(s) {} build on it", needs.join(" "))
            };
            bail!(
                "{name} on tape destination {dest}: session {first} cannot be forgotten alone: \
                 {needed} (each session on tape builds on the one before, back to the full \
                 one); prune all {} sessions of {name} there (e.g. --all-before=now)",
                ids.len()
            );
        }
        let removed = || {
            chosen
                .iter()
                .map(|s| serde_json::json!({ "session": s }))
                .collect::<Vec<_>>()
        };
        if opts.dry_run {
            if ctx.json {
                super::json::print(&prune::volume_json(ctx, opts, name, removed(), 0, false));
                continue;
            }
            for s in &chosen {
                progress::out(&format!("{name} {s}: would be forgotten"));
            }
            continue;
        }
        // The whole chain (checked above): its tape files go with it.
        for f in cat.forget_tape_chain(&dest, name)? {
            emptied.insert(f.tape);
        }
        // The next send there is full: the copies of the forgotten chain go.
        let sdir = crate::metadir::dest_dir(&ctx.config, name);
        let copies = crate::archive::local::LocalCopies::new(&sdir);
        for s in &chosen {
            let d = copies.session_dir(s);
            if d.exists() {
                std::fs::remove_dir_all(&d).with_context(|| format!("{}", d.display()))?;
            }
        }
        forgotten += chosen.len();
        if ctx.json {
            super::json::print(&prune::volume_json(ctx, opts, name, removed(), 0, false));
        }
        progress::summary(&format!(
            "{name}: {} session(s) forgotten on tape destination {dest}; the next send there is full",
            chosen.len()
        ));
    }
    // Tapes of the pool no recorded session is on are appendable again.
    let pool = &ctx
        .config
        .tape
        .as_ref()
        .context("not a tape destination")?
        .pool;
    for t in cat.tapes()? {
        if t.pool == *pool && emptied.contains(&t.uuid) && cat.tape_files(&t.uuid)?.is_empty() {
            cat.set_tape_full(&t.uuid, false)?;
            cat.set_tape_recycle(&t.uuid, true)?;
            progress::summary(&format!(
                "tape {}: every session on it is forgotten; the next send labels it anew and \
                 reuses it",
                t.name
            ));
        }
    }
    if forgotten == 0 && !opts.dry_run {
        progress::summary("nothing to prune");
    }
    Ok(())
}
