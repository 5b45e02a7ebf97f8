//! `send --stream`, `receive --from-stream`, `verify --from-stream`.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{human, Ctx};
use crate::config::parse_size;
use crate::progress;
use crate::source;
use crate::stream_send::{open_streams, receive_streams, send_stream, stream_unlock, StreamOpts};
use sparsebak_format::output::{self, OutputKind, PartialFile};

fn split_paths(spec: &str) -> Vec<String> {
    spec.split(',').map(str::to_string).collect()
}

pub fn send(ctx: &Ctx, names: &[String], path: &str, block: &str, chain: &str) -> Result<()> {
    let vols = ctx.config.select_volumes(names)?;
    let [name] = vols.as_slice() else {
        bail!("send --stream writes one volume; name it (`sparsebak send --stream=PATH VOLUME`)");
    };
    let block_size = parse_size(block)
        .filter(|b| *b > 0 && b % 512 == 0 && *b <= 64 << 20)
        .with_context(|| format!("--block-size {block:?}: a multiple of 512 bytes up to 64M"))?
        as usize;
    if !crate::config::valid_volume_name(chain) {
        bail!("--chain {chain:?}: use letters, digits and + _ . -");
    }
    let mut source = source::for_config(&ctx.config)?;
    // A regular file is written under a temporary name beside the real file (symlinks
    // followed) and renamed when complete, keeping the owner, group and mode of a file
    // it replaces; stdout, pipes, tape and block devices are written directly.
    let target = output::inspect(Path::new(path))?;
    crate::receive::refuse_in_archives(&target, &ctx.config)?;
    if matches!(target.kind, OutputKind::File { .. } | OutputKind::New)
        && crate::durable::is_read_only(&target.path)
    {
        bail!(
            "the stream destination {} is on a read-only filesystem (mount it read-write)",
            target.path.display()
        );
    }
    match &target.kind {
        OutputKind::Stdout if std::io::stdout().is_terminal() => bail!(
            "refusing to write a stream to a terminal; redirect standard output (`--stream=- > FILE` or `| ...`)"
        ),
        // What is there would be lost: ask, as `receive` does.
        OutputKind::File { .. } => overwrite_or_refuse(ctx, "file", &target, name)?,
        OutputKind::BlockDevice { .. } => {
            overwrite_or_refuse(ctx, "block device", &target, name)?
        }
        _ => {}
    }
    let is_file = matches!(target.kind, OutputKind::File { .. } | OutputKind::New);
    let opts = StreamOpts {
        chain: chain.to_string(),
        block_size,
        dest: is_file.then(|| target.path.clone()),
        tape: false,
    };
    // A full filesystem is said as for a session in the archive, whatever step met it
    // (creating the file included).
    let dir = target
        .path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let full = |e: anyhow::Error| {
        if is_file {
            crate::space::explain_any(e, &dir, "free some files", "nothing of the stream was kept")
        } else {
            e
        }
    };
    let partial = match target.kind {
        OutputKind::File { .. } | OutputKind::New => {
            Some(PartialFile::create(&target).map_err(|e| full(e.into()))?)
        }
        _ => None,
    };
    let out: Box<dyn Write + Send> = match (&target.kind, &partial) {
        (_, Some(p)) => Box::new(
            p.file()
                .try_clone()
                .with_context(|| format!("{}", p.tmp_path().display()))?,
        ),
        (OutputKind::Stdout, _) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        )),
        _ => Box::new(output::open_existing(&target)?),
    };
    let outcome = send_stream(&ctx.config, name, source.as_mut(), out, partial, &opts)
        .with_context(|| format!("send {name} to stream {}", target.describe()))
        .map_err(full)?;
    let i = &outcome.info;
    progress::summary(&format!(
        "{name}: session {} {} stream ({}) written={} read={} changed={} time={:.1}s",
        i.session,
        if i.previous.is_none() {
            "full"
        } else {
            "incremental"
        },
        chain,
        human(outcome.bytes_written),
        human(i.bytes_read),
        i.changed,
        outcome.elapsed.as_secs_f64()
    ));
    Ok(())
}

/// Ask before a stream replaces what `target` holds; `-u` answers yes, no terminal
/// answers no.
fn overwrite_or_refuse(ctx: &Ctx, what: &str, target: &output::Output, name: &str) -> Result<()> {
    if !ctx.confirm(&format!(
        "Overwrite {what} {} with a stream of volume {name}?",
        target.describe()
    ))? {
        bail!(
            "{} exists; not overwriting it (confirm at the prompt, or pass -u)",
            target.describe()
        );
    }
    Ok(())
}

/// `receive --from-stream`: `config_path` is the configuration the command line names
/// (it need not exist; when it does, its archive and metadir are not written into).
pub fn receive(
    save_to: &Path,
    unattended: bool,
    config_path: &Path,
    volume: Option<&str>,
    paths: &str,
    zero_tail: bool,
    json: bool,
) -> Result<()> {
    let started = std::time::Instant::now();
    // `/dev/<vg>/<lv>` of an inactive LV: activated for the restore, deactivated after.
    let activated = crate::devpath::activate_named_lv(save_to)?;
    let save_to = activated.as_ref().map_or(save_to, |a| a.device.as_path());
    // The volume size is known only from the streams: a block device too small for it
    // is refused at the first stream's header, before anything is written.
    let out = crate::receive::check_target(save_to, 0, volume.unwrap_or(""))?;
    for p in split_paths(paths).iter().filter(|p| *p != "-") {
        output::refuse_same_file(&out, Path::new(p))?;
    }
    // No configuration is needed here; when there is one, its archive and metadata
    // folder are not written into either, and it says where an encrypted chain's
    // passphrase comes from.
    let config = optional_config(config_path);
    if let Some(c) = &config {
        crate::receive::refuse_in_archives(&out, c)?;
    }
    if matches!(
        out.kind,
        OutputKind::File { .. } | OutputKind::BlockDevice { .. }
    ) && !unattended
    {
        bail!(
            "{} exists; not overwriting it (pass -u to replace it)",
            out.describe()
        );
    }
    let input = open_streams(&split_paths(paths))?;
    let sum = receive_streams(input, &out, volume, stream_unlock(config))
        .with_context(|| format!("receive from streams into {}", out.describe()))?;
    if zero_tail {
        crate::receive::zero_tail(&out.path, sum.last().info.volsize)
            .context("--zero-tail: zeroing past the volume's end")?;
    }
    progress::summary(&format!(
        "restored session {} from {} stream(s) into {}",
        sum.last().info.session,
        sum.streams().len(),
        out.describe()
    ));
    if json {
        super::json::print(&super::receive::received_json(
            &sum.last().info.volume,
            None,
            &sum.last().info.session,
            &out.describe(),
            sum.last().info.volsize,
            None,
            started.elapsed().as_secs_f64(),
        ));
    }
    Ok(())
}

/// The configuration at `path` when there is one that loads (the stream-reading
/// commands need none).
fn optional_config(path: &Path) -> Option<crate::config::Config> {
    if !path.exists() {
        return None;
    }
    match crate::config::Config::load(path) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::debug!("{e}: reading the streams without a configuration");
            None
        }
    }
}

/// `verify --from-stream`: `config_path` as for [`receive`] (it need not exist; when
/// it does, it says where an encrypted chain's passphrase comes from).
pub fn verify(config_path: &Path, volume: Option<&str>, paths: &str, json: bool) -> Result<()> {
    let started = std::time::Instant::now();
    let (input, map) = open_streams(&split_paths(paths))?;
    let sum = sparsebak_format::stream::read_chain_with(
        std::io::BufReader::with_capacity(1 << 20, input),
        None,
        Some(stream_unlock(optional_config(config_path))),
    )
    .map_err(|e| {
        // Damage found exits 4 (`exit::DAMAGE`), an input that could not be read 1.
        if e.is_damage() {
            anyhow::Error::from(crate::exit::Coded::damage(format!(
                "verify: {}",
                map.locate(e)
            )))
        } else {
            anyhow::Error::from(map.locate(e)).context("verify")
        }
    })?;
    crate::stream_send::check_volume(&sum, volume)?;
    progress::summary(&format!(
        "{} stream(s) verified: {} chunks, sessions {}",
        sum.streams().len(),
        sum.streams().iter().map(|s| s.data_chunks).sum::<u64>(),
        sum.streams()
            .iter()
            .map(|s| s.info.session.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    if json {
        // Damage ends the command with its error before this: a document is printed
        // for a chain verified whole.
        super::json::print(&serde_json::json!({
            "version": super::json::VERSION,
            "command": "verify",
            "volume": sum.last().info.volume,
            "dest": null,
            "session": sum.last().info.session,
            "ok": true,
            "chunks_checked": sum.streams().iter().map(|s| s.data_chunks).sum::<u64>(),
            "bytes_checked": null,
            "problems": Vec::<String>::new(),
            "hint": null,
            "seconds": started.elapsed().as_secs_f64(),
        }));
    }
    Ok(())
}
