//! `spbk-assemble`: rebuild a raw disk image from a sparsebak archive's volume folder
//! alone: no configuration, no source-side metadata, no `sparsebak` binary. It shares
//! the format code with sparsebak through the `sparsebak-format` crate.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sparsebak_format::output::{self, OutputKind, PartialFile};
use sparsebak_format::restore::{restore, RestoreError, SparseFileTarget, StreamTarget};
use sparsebak_format::selector;
use sparsebak_format::volume::VolumeArchive;

#[derive(Parser)]
#[command(
    name = "spbk-assemble",
    version,
    about = "Rebuild a raw disk image from a sparsebak archive volume folder",
    long_about = "Rebuild a raw disk image from a sparsebak archive volume folder \
                  (ARCHIVE/VOLUME) alone. Writes a sparse file, a block device or a \
                  FIFO with -o, else the raw image to standard output."
)]
struct Args {
    /// Check every chunk's SHA-256 against its manifest; exit 1 on any mismatch.
    #[arg(short = 'c', long = "check")]
    check: bool,
    /// Session to assemble: an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or
    /// date-time (the newest session at or before it), `3 days ago`, ...
    #[arg(long = "session", default_value = "latest", value_parser = session_arg)]
    session: String,
    /// Output: a file (created 0600, or replaced keeping its owner and mode; sparse), a
    /// block device, a FIFO, or `-`. Without it the image goes to stdout.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// The volume folder inside the archive.
    volume_dir: PathBuf,
}

/// A selector that cannot be understood is bad usage (exit 2), found before anything
/// is read.
fn session_arg(s: &str) -> Result<String, String> {
    selector::parse(s, &chrono::Local::now()).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn main() {
    sparsebak_format::alloc::tune_for_pipelines();
    if let Err(e) = run(Args::parse()) {
        // Written without eprintln!, which panics when stderr is a closed pipe.
        let _ = writeln!(
            std::io::stderr(),
            "spbk-assemble: error: {}",
            sparsebak_format::error::one_line(e.as_ref())
        );
        std::process::exit(1);
    }
}

/// A failure of the target is said with the output the user named; a damaged chunk
/// names its own file.
fn target_error(e: RestoreError, out: &output::Output) -> anyhow::Error {
    match e {
        RestoreError::Target(io) => {
            anyhow::Error::new(io).context(format!("writing {}", out.describe()))
        }
        e => anyhow::Error::new(e),
    }
}

fn run(args: Args) -> Result<()> {
    let vol = VolumeArchive::new(&args.volume_dir);
    let sessions = vol
        .sessions()
        .with_context(|| format!("reading {}", args.volume_dir.display()))?;
    let now = chrono::Local::now();
    let sel = selector::parse(&args.session, &now)?;
    let timed = if sel.needs_times() {
        selector::session_times(&vol, &sessions, &chrono::Local)
    } else {
        sessions
            .iter()
            .filter_map(|id| selector::SessionTime::from_id(id, &chrono::Local))
            .collect()
    };
    let id = selector::resolve(&sel, &timed)
        .with_context(|| format!("{}", args.volume_dir.display()))?;
    let chain = vol.chain(&id)?;
    let size = chain.last().map(|i| i.volsize).unwrap_or(0);
    let out = match &args.output {
        Some(p) => output::inspect(p)?,
        None => output::inspect(Path::new("-"))?,
    };
    let session = || format!("session {id}");
    let sequential = |f: File| StreamTarget::new(BufWriter::with_capacity(1 << 20, f));
    match out.kind {
        OutputKind::File { .. } | OutputKind::New => {
            let partial = PartialFile::create(&out)?;
            let file = partial
                .file()
                .try_clone()
                .with_context(|| partial.tmp_path().display().to_string())?;
            let mut target = SparseFileTarget::new(file, size)
                .with_context(|| partial.tmp_path().display().to_string())?;
            restore(&vol, &chain, &mut target, args.check, &mut |_| {})
                .map_err(|e| target_error(e, &out))
                .with_context(session)?;
            partial.commit()?;
        }
        OutputKind::Stdout => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                bail!("refusing to write a disk image to a terminal; use -o FILE or a pipe");
            }
            let mut target =
                StreamTarget::new(BufWriter::with_capacity(1 << 20, stdout.lock()));
            restore(&vol, &chain, &mut target, args.check, &mut |_| {})
                .map_err(|e| target_error(e, &out))
                .with_context(session)?;
        }
        OutputKind::Fifo => {
            let mut target = sequential(output::open_existing(&out)?);
            restore(&vol, &chain, &mut target, args.check, &mut |_| {})
                .map_err(|e| target_error(e, &out))
                .with_context(session)?;
        }
        // Written front to back, zeros included (this tool has no device ioctls): slower
        // than `sparsebak receive` on a device, the same bytes.
        OutputKind::BlockDevice { size: dev } => {
            if dev < size {
                bail!(
                    "{} is {dev} bytes, smaller than the volume ({size} bytes); refusing",
                    out.describe()
                );
            }
            let mut target = sequential(output::open_existing(&out)?);
            restore(&vol, &chain, &mut target, args.check, &mut |_| {})
                .map_err(|e| target_error(e, &out))
                .with_context(session)?;
            target
                .out
                .into_inner()
                .map_err(|e| e.into_error())
                .and_then(|f| f.sync_all())
                .with_context(|| out.describe())?;
        }
        OutputKind::CharDevice => bail!(
            "{} is a character device; give a file, a block device, a FIFO or - for standard output",
            out.describe()
        ),
    }
    Ok(())
}
