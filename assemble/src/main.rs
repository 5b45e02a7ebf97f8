//! `spbk-assemble`: rebuild a raw disk image from a sparsebak archive's volume folder
//! alone, with no configuration, no source metadata and no `sparsebak` binary.
//!
//! This is the skeleton: it restores the latest session to a file. Session selection,
//! stdout output and `-c` checks follow.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use sparsebak_format::restore::{restore, SparseFileTarget};
use sparsebak_format::volume::VolumeArchive;

#[derive(Parser)]
#[command(
    version,
    about = "Rebuild a raw disk image from a sparsebak volume folder"
)]
struct Args {
    /// Write the image here.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// The volume folder inside the archive (archive-dir/volume-name).
    volume_dir: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let vol = VolumeArchive::new(&args.volume_dir);
    let Some(latest) = vol.latest()? else {
        bail!("{}: no sessions", args.volume_dir.display());
    };
    let chain = vol.chain(&latest)?;
    let file = std::fs::File::create(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let size = chain.last().map(|i| i.volsize).unwrap_or(0);
    let mut target = SparseFileTarget::new(file, size)?;
    restore(&vol, &chain, &mut target, true, &mut |_| {})?;
    Ok(())
}
