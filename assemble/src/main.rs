//! `spbk-assemble`: rebuild a raw disk image from a sparsebak archive's volume folder
//! alone: no configuration, no source-side metadata, no `sparsebak` binary. It shares
//! the format code with sparsebak through the `sparsebak-format` crate.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Parser;
use sparsebak_format::layout;
use sparsebak_format::marker::{read_marker, ArchiveMarker};
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
    /// Replace an existing file or block device given with -o (refused without it).
    #[arg(short = 'f', long = "force")]
    force: bool,
    /// An encrypted archive's passphrase: the first line of this file (only its
    /// owner may read it). Else `--passcmd`, SPARSEBAK_PASSPHRASE, or a prompt.
    #[arg(long = "passfile", value_name = "PATH")]
    passfile: Option<PathBuf>,
    /// An encrypted archive's passphrase: the first line this command prints (split
    /// on blanks, run without a shell).
    #[arg(long = "passcmd", value_name = "COMMAND")]
    passcmd: Option<String>,
    /// The volume folder inside the archive (ARCHIVE/VOLUME). In an encrypted archive
    /// VOLUME is the volume's name (its folder's name is a token).
    volume_dir: PathBuf,
}

/// A selector that cannot be understood is bad usage (exit 2), found before anything
/// is read.
fn session_arg(s: &str) -> Result<String, String> {
    selector::parse(s, &chrono::Local::now()).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn main() {
    // Out of the environment before anything else runs (no child ever sees it).
    sparsebak_format::passphrase::take_from_env();
    sparsebak_format::alloc::tune_for_pipelines();
    // Stopped by SIGINT/SIGTERM, it leaves no partial output file behind.
    let _ = sparsebak_format::output::remove_partials_on_signals();
    // `spbk-assemble __man`: the man page, generated from the options below (for
    // packaging); hidden, not an option of the tool.
    if std::env::args_os().nth(1).is_some_and(|a| a == "__man") {
        if let Err(e) = man_page(&mut std::io::stdout().lock()) {
            let _ = writeln!(std::io::stderr(), "spbk-assemble: error: man page: {e}");
            std::process::exit(1);
        }
        return;
    }
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

/// The man page spbk-assemble(8): clap's, with the exit status and references.
fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let page = clap_mangen::Man::new(Args::command())
        .section("8")
        .manual("System Administration");
    page.render(out)?;
    out.write_all(
        br#".SH "EXIT STATUS"
.TP
.B 0
The image was written (and with \fB\-\-check\fR every chunk matched).
.TP
.B 1
Failure, a damaged chunk found by \fB\-\-check\fR included; a one\-line reason
is printed on standard error.
.TP
.B 2
Bad usage.
.SH "SEE ALSO"
\fBsparsebak\fR(8), \fBsparsebak\-receive\fR(8)
"#,
    )?;
    out.flush()
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

/// The volume folder must be a folder; a path that is not there, or is no folder, is
/// said as such (not as a volume with no sessions). The archive's root, given for a
/// volume's folder, is said too.
fn check_volume_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "{} does not exist; give a volume folder of an archive (ARCHIVE/VOLUME)",
                dir.display()
            )
        }
        Err(e) => Err(e).with_context(|| dir.display().to_string()),
        Ok(m) if !m.is_dir() => bail!(
            "{} is not a folder; give a volume folder of an archive (ARCHIVE/VOLUME)",
            dir.display()
        ),
        Ok(_) if dir.join(layout::ARCHIVE_MARKER).exists() => bail!(
            "{} is an archive's root folder; give one of its volume folders (ARCHIVE/VOLUME)",
            dir.display()
        ),
        Ok(_) => Ok(()),
    }
}

/// Refuse a file output inside the archive the volume folder belongs to (its parent,
/// when that holds the archive's marker), or else inside the volume folder itself.
fn refuse_in_archive(out: &output::Output, volume_dir: &Path) -> Result<()> {
    let parent = std::fs::canonicalize(volume_dir)
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
        .filter(|p| p.join(layout::ARCHIVE_MARKER).is_file());
    match parent {
        Some(root) => output::refuse_inside(out, &root, "the archive")?,
        None => output::refuse_inside(out, volume_dir, "the volume folder")?,
    }
    Ok(())
}

/// The encrypted archive `volume_dir` is in, if it is in one: (its root, its marker).
fn encrypted_parent(volume_dir: &Path) -> Result<Option<(PathBuf, ArchiveMarker)>> {
    let Some(root) = volume_dir.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(None);
    };
    match read_marker(root)? {
        Some(m) if m.is_sealed() => Ok(Some((root.to_path_buf(), m))),
        _ => Ok(None),
    }
}

/// Volume `volume_dir` of the encrypted archive at `root`: its key file unwrapped
/// with the passphrase, the folder of the volume it names.
fn open_encrypted(args: &Args, root: &Path, marker: &ArchiveMarker) -> Result<VolumeArchive> {
    use sparsebak_format::crypto::{KeyFile, KEY_FILE};
    use sparsebak_format::passphrase::{self, Purpose, Sources};
    let id = marker.id.clone().unwrap_or_default();
    let key_path = root.join(KEY_FILE);
    let bytes = sparsebak_format::limits::read_bounded(
        &key_path,
        sparsebak_format::crypto::keyfile::MAX_KEY_FILE as u64,
        "key file",
    )
    .with_context(|| {
        format!(
            "the archive at {} is encrypted; its key file is needed (`sparsebak key import` \
             puts back a copy)",
            root.display()
        )
    })?;
    let kf = KeyFile::parse(&bytes).with_context(|| key_path.display().to_string())?;
    if kf.archive != id {
        bail!(
            "{}: the key file is archive {}'s, but this archive is {id}",
            key_path.display(),
            kf.archive
        );
    }
    let sources = Sources {
        passfile: args.passfile.clone(),
        passcmd: args.passcmd.clone(),
        what: format!("the archive at {}", root.display()),
        how: "give --passfile=PATH (a file only its owner can read) or --passcmd=COMMAND".into(),
    };
    let pass = passphrase::obtain_from(&sources, Purpose::Unlock)?;
    // The key file is this archive's (checked above): its keys are derived for `id`.
    let keys = std::sync::Arc::new(kf.unlock(&pass).map_err(|e| match e {
        sparsebak_format::crypto::CryptoError::WrongPassphrase => anyhow::anyhow!(
            "wrong passphrase for the encrypted archive at {}; nothing was written",
            root.display()
        ),
        e => anyhow::anyhow!("{}: {e}", key_path.display()),
    })?);
    let given = args
        .volume_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The volume's name, or (copied from a listing) its folder's token.
    let name = keys.volume_of_dir(&given).unwrap_or(given);
    let dir = root.join(keys.volume_dir(&name));
    if !dir.is_dir() {
        bail!(
            "the encrypted archive at {} has no volume {name:?}",
            root.display()
        );
    }
    Ok(VolumeArchive::from_store(
        &name,
        std::sync::Arc::new(sparsebak_format::store::FolderStore::sealed(
            &dir, &name, keys,
        )),
    ))
}

fn run(args: Args) -> Result<()> {
    let vol = match encrypted_parent(&args.volume_dir)? {
        Some((root, marker)) => open_encrypted(&args, &root, &marker)?,
        None => {
            check_volume_dir(&args.volume_dir)?;
            VolumeArchive::new(&args.volume_dir)
        }
    };
    let volume_dir = vol
        .folder()
        .map(|f| f.dir().to_path_buf())
        .unwrap_or_else(|| args.volume_dir.clone());
    let sessions = vol
        .sessions()
        .with_context(|| format!("reading {}", args.volume_dir.display()))?;
    // An unfinished prune may have moved chunk files from the session it removes into
    // the next one: the manifests no longer say where they are. Only a sparsebak run
    // (which writes) finishes it; this tool only reads.
    let journal = volume_dir.join(layout::PRUNE_JOURNAL);
    if journal.exists() {
        let name = args
            .volume_dir
            .file_name()
            .map_or_else(|| "VOLUME".into(), |n| n.to_string_lossy().into_owned());
        bail!(
            "{}: the volume has an interrupted prune ({} exists): chunk files may be half \
             moved between two sessions, so nothing is assembled; run any sparsebak command \
             on the archive's machine (e.g. `sparsebak list {name}`) to finish it, or finish \
             it by hand as the format description says (Prune journal)",
            args.volume_dir.display(),
            journal.display()
        );
    }
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
    refuse_in_archive(&out, &volume_dir)?;
    let exists = matches!(
        out.kind,
        OutputKind::File { .. } | OutputKind::BlockDevice { .. }
    );
    if exists && !args.force {
        bail!(
            "{} exists; not overwriting it (pass --force to replace it)",
            out.describe()
        );
    }
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
