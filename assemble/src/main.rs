//! `spbk-assemble`: rebuild a raw disk image from a sparsebak archive's volume folder
//! alone: no configuration, no source-side metadata, no `sparsebak` binary. It shares
//! the format code with sparsebak through the `sparsebak-format` crate.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sparsebak_format::restore::{restore, SparseFileTarget, StreamTarget};
use sparsebak_format::selector;
use sparsebak_format::volume::VolumeArchive;

#[derive(Parser)]
#[command(
    name = "spbk-assemble",
    version,
    about = "Rebuild a raw disk image from a sparsebak archive volume folder",
    long_about = "Rebuild a raw disk image from a sparsebak archive volume folder \
                  (ARCHIVE/VOLUME) alone. Writes a sparse file with -o, else the raw \
                  image to standard output."
)]
struct Args {
    /// Check every chunk's SHA-256 against its manifest; exit 1 on any mismatch.
    #[arg(short = 'c', long = "check")]
    check: bool,
    /// Session to assemble: an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or
    /// date-time (the newest session at or before it), `3 days ago`, ...
    #[arg(long = "session", default_value = "latest")]
    session: String,
    /// Output file (created or replaced, sparse). Without it the image goes to stdout.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The volume folder inside the archive.
    volume_dir: PathBuf,
}

fn main() {
    sparsebak_format::alloc::tune_for_pipelines();
    if let Err(e) = run(Args::parse()) {
        let msg: Vec<String> = e.chain().map(|c| c.to_string()).collect();
        eprintln!("spbk-assemble: error: {}", msg.join(": "));
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let vol = VolumeArchive::new(&args.volume_dir);
    let sessions = vol
        .sessions()
        .with_context(|| format!("reading {}", args.volume_dir.display()))?;
    let now = chrono::Local::now().naive_local();
    let sel = selector::parse(&args.session, now)?;
    let id = selector::resolve(&sel, &sessions)
        .with_context(|| format!("{}", args.volume_dir.display()))?;
    let chain = vol.chain(&id)?;
    let size = chain.last().map(|i| i.volsize).unwrap_or(0);
    match &args.output {
        Some(out) => {
            refuse_dev(out)?;
            let tmp = out.with_file_name(format!(
                ".{}.assemble-partial",
                out.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ));
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut target = SparseFileTarget::new(file, size)?;
            if let Err(e) = restore(&vol, &chain, &mut target, args.check, &mut |_| {}) {
                let _ = std::fs::remove_file(&tmp);
                return Err(e).with_context(|| format!("session {id}"));
            }
            std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write a disk image to a terminal; use -o FILE or a pipe");
            }
            let mut target =
                StreamTarget::new(std::io::BufWriter::with_capacity(1 << 20, stdout.lock()));
            restore(&vol, &chain, &mut target, args.check, &mut |_| {})
                .with_context(|| format!("session {id}"))?;
        }
    }
    Ok(())
}

/// `-o` writes an image file under a temporary name and renames it into place: under
/// /dev that would put a file in devtmpfs (RAM), or rename one over a device node.
fn refuse_dev(out: &std::path::Path) -> Result<()> {
    let abs = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    let parent = abs.parent().unwrap_or(&abs);
    let real = parent
        .canonicalize()
        .unwrap_or_else(|_| parent.to_path_buf());
    if real.starts_with("/dev") || abs.starts_with("/dev") {
        bail!(
            "{}: -o writes an image file, and none is created under /dev; to write a device, \
             send the image to stdout (`spbk-assemble VOLUME > DEVICE`)",
            out.display()
        );
    }
    Ok(())
}
