//! `send --stream`, `receive --from-stream`, `verify --from-stream`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{human, Ctx};
use crate::cli::Cli;
use crate::config::parse_size;
use crate::progress;
use crate::source;
use crate::stream_send::{open_streams, receive_streams, send_stream, StreamOpts};

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
    let opts = StreamOpts {
        chain: chain.to_string(),
        block_size,
    };
    // A regular file is written under a temporary name and renamed when complete;
    // stdout, pipes and tape devices are written directly.
    let target = Path::new(path);
    let is_file = path != "-"
        && std::fs::metadata(target)
            .map(|m| m.is_file())
            .unwrap_or(true);
    if is_file {
        crate::devpath::refuse_regular_file(target)?;
    }
    let tmp = target.with_file_name(format!(
        ".{}.partial",
        target
            .file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    ));
    let out: Box<dyn Write + Send> = if path == "-" {
        Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            std::io::stdout(),
        ))
    } else if is_file {
        Box::new(
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        )
    } else {
        Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(target)
                .with_context(|| format!("opening {path}"))?,
        )
    };
    let res = send_stream(&ctx.config, name, source.as_mut(), out, &opts);
    let (outcome, out) = match res {
        Ok(r) => r,
        Err(e) => {
            if is_file {
                let _ = std::fs::remove_file(&tmp);
            }
            return Err(e).with_context(|| format!("send {name} to stream {path}"));
        }
    };
    drop(out);
    if is_file {
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, target).with_context(|| format!("renaming to {path}"))?;
    }
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

pub fn receive(cli: &Cli, volume: Option<&str>, paths: &str, zero_tail: bool) -> Result<()> {
    let Some(save_to) = &cli.save_to else {
        bail!("receive --from-stream needs --save-to=PATH (a file or a block device)");
    };
    // `/dev/<vg>/<lv>` of an inactive LV: activated for the restore, deactivated after.
    let activated = crate::devpath::activate_named_lv(save_to)?;
    let save_to = &activated
        .as_ref()
        .map_or(save_to.clone(), |a| a.device.clone());
    if save_to.exists() && !cli.unattended {
        bail!(
            "{} exists; not overwriting it (pass -u to replace it)",
            save_to.display()
        );
    }
    let input = open_streams(&split_paths(paths))?;
    let sum = receive_streams(input, save_to, volume)
        .with_context(|| format!("receive from stream into {}", save_to.display()))?;
    if zero_tail {
        crate::receive::zero_tail(save_to, sum.last().info.volsize)
            .with_context(|| format!("zeroing {} past the volume's end", save_to.display()))?;
    }
    progress::summary(&format!(
        "restored session {} from {} stream(s) into {}",
        sum.last().info.session,
        sum.streams().len(),
        save_to.display()
    ));
    Ok(())
}

pub fn verify(volume: Option<&str>, paths: &str) -> Result<()> {
    let input = open_streams(&split_paths(paths))?;
    let sum = sparsebak_format::stream::read_chain(
        std::io::BufReader::with_capacity(1 << 20, input),
        None,
    )
    .context("verify stream")?;
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
    Ok(())
}
