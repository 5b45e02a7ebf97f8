//! The command line: `sparsebak [options] command [volume ...]`.

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, CommandFactory, Parser, Subcommand};

/// Fast, incremental, volume-level backups of Linux disk volumes.
///
/// Volumes come from thin LVM (tick/tock snapshots and thin_delta), reflink image
/// files on Btrfs/XFS, or plain files and block devices; they are stored in a
/// sparsebundle-style archive of compressed chunks with a SHA-256 manifest per session.
#[derive(Debug, Parser)]
#[command(name = "sparsebak", version, about, long_about = None,
    after_help = "Config: -c PATH, else $SPARSEBAK_CONFIG, else /etc/sparsebak/sparsebak.ini.\n\
                  Sessions are named YYYYMMDD-HHMMSS (local time).\n\
                  Options of a command go after it: see `sparsebak COMMAND --help`.\n\
                  Exit status: 0 on success, 1 on failure (one-line reason on stderr), 2 on bad usage,\n\
                  3 when send --dest=all found no destination present, 4 when verify found damage,\n\
                  5 when status finds a volume older than max_age (4 when a last verify found damage).")]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Never prompt: answer yes to overwrite questions (for scripts and cron).
    #[arg(short = 'u', long = "unattended", global = true)]
    pub unattended: bool,
    /// More output (repeat for debug logs); prints summaries even without a terminal.
    #[arg(short = 'v', long = "verbose", global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors: no progress bars, no summaries (for cron).
    #[arg(short = 'q', long = "quiet", global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// The destination (archive) a command works on: `default` (the destination keys
    /// of [var]) unless given, or a [dest:NAME] section of the config. `send
    /// --dest=all` sends to every destination that is present.
    #[arg(long = "dest", global = true, value_name = "NAME", value_parser = dest_arg)]
    pub dest: Option<String>,
    /// Append every line logged on standard error to PATH too, each with its time
    /// (for systems without a journal).
    #[arg(long = "log-file", global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// What the option declarations cannot say: bad usage found here is reported as
    /// clap reports its own (exit 2, with the command's usage).
    pub fn check(&self) -> Result<(), clap::Error> {
        if let Command::Send {
            volumes,
            stream: Some(_),
            ..
        } = &self.command
        {
            if volumes.len() > 1 {
                return Err(usage_error(
                    "send",
                    "send --stream writes one volume; name only one",
                ));
            }
        }
        if let Command::Receive {
            json: true,
            save_to,
            ..
        } = &self.command
        {
            if save_to.as_os_str() == "-" {
                return Err(usage_error(
                    "receive",
                    "--json prints on standard output, where --save-to=- writes the volume",
                ));
            }
        }
        if let Some(dest) = &self.dest {
            let name = self.command.name();
            let archive = self.command.reaches_archive();
            if !archive {
                return Err(usage_error(
                    name,
                    match &self.command {
                        Command::Monitor { .. } => {
                            "monitor marks the delta map of every destination; --dest does not apply"
                        }
                        Command::Send { .. } => {
                            "send --stream writes a stream, not to a destination; --dest does not apply"
                        }
                        Command::Status { .. } => {
                            "status reports on every destination; --dest does not apply"
                        }
                        Command::Serve { .. } => {
                            "serve is the far side of a destination and reads no config; --dest does not apply"
                        }
                        Command::Umount { .. } => {
                            "umount takes down a mount; --dest does not apply"
                        }
                        Command::Mount { .. } => {
                            "mount --archive=DIR reads that archive, with no config; --dest does not apply"
                        }
                        _ => "--from-stream reads streams, not a destination; --dest does not apply",
                    },
                ));
            }
            if dest == crate::config::ALL_DESTS {
                if name != "send" {
                    return Err(usage_error(
                        name,
                        &format!("--dest=all is for send only; {name} works on one destination"),
                    ));
                }
                if let Command::Send {
                    accept_archive: true,
                    ..
                } = &self.command
                {
                    return Err(usage_error(
                        name,
                        "--accept-archive takes one destination's archive: give --dest=NAME, not all",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl Command {
    /// The subcommand's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Send { .. } => "send",
            Command::Monitor { .. } => "monitor",
            Command::Receive { .. } => "receive",
            Command::Verify { .. } => "verify",
            Command::List { .. } => "list",
            Command::Resync { .. } => "resync",
            Command::Prune { .. } => "prune",
            Command::Repair { .. } => "repair",
            Command::Delete { .. } => "delete",
            Command::Rename { .. } => "rename",
            Command::Untar { .. } => "untar",
            Command::Diff { .. } => "diff",
            Command::Serve { .. } => "serve",
            Command::Key { .. } => "key",
            Command::Tape { .. } => "tape",
            Command::Mount { .. } => "mount",
            Command::Umount { .. } => "umount",
            Command::Status { .. } => "status",
        }
    }

    /// Whether `--json` was given to the command.
    pub fn json(&self) -> bool {
        match self {
            Command::Send { json, .. }
            | Command::Receive { json, .. }
            | Command::Verify { json, .. }
            | Command::List { json, .. }
            | Command::Prune { json, .. }
            | Command::Diff { json, .. }
            | Command::Status { json, .. } => *json,
            Command::Tape {
                action: TapeAction::Inventory { json },
            } => *json,
            _ => false,
        }
    }

    /// Whether the command works on a destination's archive (and so on the
    /// destination `--dest` names): all but `monitor` and the stream commands.
    pub fn reaches_archive(&self) -> bool {
        !matches!(
            self,
            Command::Monitor { .. }
                | Command::Serve { .. }
                | Command::Umount { .. }
                | Command::Mount {
                    archive: Some(_),
                    ..
                }
                | Command::Status { .. }
                | Command::Send {
                    stream: Some(_),
                    ..
                }
                | Command::Receive {
                    from_stream: Some(_),
                    ..
                }
                | Command::Verify {
                    from_stream: Some(_),
                    ..
                }
        )
    }
}

/// A usage error of subcommand `name`, shown with its usage.
pub fn usage_error(name: &str, msg: &str) -> clap::Error {
    let mut cli = Cli::command();
    cli.build();
    match cli.find_subcommand_mut(name) {
        Some(sub) => sub.error(clap::error::ErrorKind::ArgumentConflict, msg),
        None => cli.error(clap::error::ErrorKind::ArgumentConflict, msg),
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Back up the enabled volumes, or the named ones. The first send of a volume is
    /// full; later ones store only the chunks that changed.
    Send {
        /// Volumes to send (default: every enabled volume).
        volumes: Vec<String>,
        /// Store the session as one tar file in the archive (also `tarfile = on`).
        #[arg(long, conflicts_with = "stream")]
        tarfile: bool,
        /// Send to the archive found at destdir, or to a new one there, from now on,
        /// although this machine knows another archive there (after replacing a
        /// broken disk; see "Archive identity" in the README).
        #[arg(long = "accept-archive", conflicts_with = "stream")]
        accept_archive: bool,
        /// On a tape destination: read back every tape file just written and check it
        /// (its block digests and SHA-256) before the run ends.
        #[arg(long = "verify-tape", conflicts_with = "stream")]
        verify_tape: bool,
        /// Write the session as a self-contained tar stream to PATH (`-` = stdout)
        /// instead of the archive: full the first time, then incremental on the
        /// chain's last stream. One volume.
        #[arg(long, value_name = "PATH")]
        stream: Option<String>,
        /// Record size of the stream (fixed-block tape drives need theirs), e.g. 64K.
        #[arg(
            long = "block-size",
            value_name = "SIZE",
            default_value = "64K",
            requires = "stream",
            value_parser = block_size_arg
        )]
        block_size: String,
        /// Name of the stream chain: each chain is incremental on its own.
        #[arg(
            long,
            value_name = "NAME",
            default_value = "default",
            requires = "stream",
            value_parser = chain_arg
        )]
        chain: String,
        /// Print one JSON line per volume sent (docs/JSON.md) instead of the human output.
        #[arg(long, conflicts_with = "stream")]
        json: bool,
    },
    /// Record which chunks changed since the last monitor, from the snapshot layer
    /// (cron, several times an hour). Takes seconds.
    Monitor {
        /// Volumes to monitor (default: every enabled volume).
        volumes: Vec<String>,
    },
    /// Rebuild a volume as it was at a session (latest by default) into --save-to.
    Receive {
        /// The volume to restore (with --from-stream: optional, checked if given).
        #[arg(required_unless_present = "from_stream")]
        volume: Option<String>,
        /// Where the volume goes: a file (created 0600, or replaced keeping its owner
        /// and mode; symlinks followed), a block device, a FIFO, or `-` for stdout.
        #[arg(long = "save-to", value_name = "PATH")]
        save_to: PathBuf,
        /// The session to restore (default: the latest).
        /// A selector is an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
        /// (the newest session at or before it), or `3 days ago`, `yesterday`, ...
        #[arg(long, value_name = "SEL", value_parser = one_session_arg, conflicts_with = "from_stream")]
        session: Option<String>,
        /// Rebuild from a full stream and its incrementals, in order (`-` = stdin, or
        /// PATH,PATH,...), with no archive, metadir or config.
        #[arg(long = "from-stream", value_name = "PATH[,PATH...]")]
        from_stream: Option<String>,
        /// On a block device larger than the volume, also zero what lies past the
        /// volume's end (by default it is left as it was).
        #[arg(long = "zero-tail")]
        zero_tail: bool,
        /// Print JSON (docs/JSON.md) instead of the human output.
        #[arg(long)]
        json: bool,
    },
    /// Re-read and re-hash every chunk of a session's view (latest by default) and check
    /// the archive's files and metadata; exits 4 naming every problem found (1 when it
    /// cannot run).
    Verify {
        /// The volume to verify (with --from-stream: optional, checked if given).
        #[arg(required_unless_present = "from_stream")]
        volume: Option<String>,
        /// The session whose view is checked (default: the latest).
        /// A selector is an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
        /// (the newest session at or before it), or `3 days ago`, `yesterday`, ...
        #[arg(long, value_name = "SEL", value_parser = one_session_arg, conflicts_with = "from_stream")]
        session: Option<String>,
        /// Check a chain of streams (`-` = stdin, or PATH,PATH,...) without writing.
        #[arg(long = "from-stream", value_name = "PATH[,PATH...]")]
        from_stream: Option<String>,
        /// Print JSON (docs/JSON.md) instead of the human output.
        #[arg(long)]
        json: bool,
    },
    /// Serve the archive at ROOT (or a folder inside it) on standard input and output
    /// to a sparsebak on another machine (run by ssh or qvm-run; needs no config).
    ///
    /// Of the global options only -v/-q apply (logs go to standard error); -c, -u and
    /// --dest belong to the side that runs the commands. For ssh, force it in
    /// authorized_keys: command="sparsebak serve /backup",restrict ssh-ed25519 ...
    Serve {
        /// The folder the client may use: its `destdir` must be ROOT or inside it.
        root: PathBuf,
    },
    /// List the sessions of the configured volumes, or the named ones, oldest first.
    List {
        /// Volumes to list (default: every configured volume).
        volumes: Vec<String>,
        /// Print JSON (docs/JSON.md) instead of the human output.
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a volume's change tracking by comparing the volume with the archive, when
    /// the delta map or the reference snapshot was lost or is suspect.
    Resync {
        /// Volumes to resync (default: every enabled volume).
        volumes: Vec<String>,
    },
    /// Remove sessions without rewriting the archive: each is folded into the next
    /// newer session. Give --session=SEL or a range SEL,SEL, --all-before=DATE, or
    /// --auto (the config's `keep` schedule, or --keep). The latest session is never
    /// removed.
    #[command(group(ArgGroup::new("selection").required(true).multiple(true)
        .args(["session", "auto", "keep", "all_before"])))]
    Prune {
        /// Volumes to prune (default: every enabled volume).
        volumes: Vec<String>,
        /// The session to remove, or the inclusive range SEL,SEL.
        /// A selector is an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
        /// (the newest session at or before it), or `3 days ago`, `yesterday`, ...
        #[arg(long, value_name = "SEL[,SEL]", value_parser = sessions_arg)]
        session: Option<String>,
        /// Apply the retention schedule (`keep` in the config, or --keep).
        #[arg(long)]
        auto: bool,
        /// Retention schedule, e.g. "hourly:24 daily:14 weekly:8 monthly:12 yearly:5"
        /// (implies --auto).
        #[arg(long, value_name = "SCHEDULE", value_parser = schedule_arg)]
        keep: Option<String>,
        /// Remove every session taken before this date or time (`2026-11-01`,
        /// `3 months ago`).
        #[arg(long = "all-before", value_name = "DATE", value_parser = all_before_arg)]
        all_before: Option<String>,
        /// Only print what would be removed and the bytes it would free.
        #[arg(long = "dry-run")]
        dry_run: bool,
        /// Print one JSON line per volume (docs/JSON.md) instead of the human output.
        #[arg(long)]
        json: bool,
    },
    /// Repair a volume's archive: put back missing or damaged info and manifest files
    /// from the copies this machine kept, and re-create missing or damaged chunk files
    /// from the volume wherever it still holds the recorded data. Exits 1 naming what
    /// could not be repaired.
    Repair {
        /// The volume to repair.
        volume: String,
        /// Only say what would be done (reads the live volume), change nothing.
        #[arg(long = "dry-run")]
        dry_run: bool,
    },
    /// Remove a volume's archive, its source-side metadata and its snapshots.
    Delete {
        /// The volume to delete.
        volume: String,
    },
    /// Carry a renamed volume's history over to its new name: moves its archive
    /// folder, its source-side state and its snapshots, so the next send of NEW is
    /// incremental. Rename the volume itself (lvrename, mv) and the config entry too.
    Rename {
        /// The volume's old name.
        old: String,
        /// Its new name.
        new: String,
    },
    /// Convert tar sessions of a volume (all, or --session=SEL[,SEL]) into folder
    /// sessions, in place and atomically.
    Untar {
        /// The volume.
        volume: String,
        /// The session to convert, or the inclusive range SEL,SEL (default: every
        /// session).
        /// A selector is an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
        /// (the newest session at or before it), or `3 days ago`, `yesterday`, ...
        #[arg(long, value_name = "SEL[,SEL]", value_parser = sessions_arg)]
        session: Option<String>,
    },
    /// Show the byte ranges that differ between two sessions (--session=A,B), or
    /// between a session and the live volume (--session=A).
    Diff {
        /// The volume to compare.
        volume: String,
        /// Two sessions A,B, or one session A to compare with the live volume.
        ///
        /// A selector is an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
        /// (the newest session at or before it), or `3 days ago`, `yesterday`, ...
        #[arg(long, value_name = "A[,B]", value_parser = sessions_arg)]
        session: String,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
        /// Compare files, not bytes: mount both sessions' images (--session=A,B),
        /// loop-mount their filesystems read-only (ext4, XFS, Btrfs; needs root) and
        /// list the files added, removed and changed (size, mode, owner, content).
        #[arg(long)]
        files: bool,
    },
    /// Mount every session of the configured volumes, or the named ones, as read-only
    /// disk image files: MOUNTPOINT/VOLUME/SESSION_ID.img and VOLUME/latest.img, for
    /// restoring single files (loop-mount an image read-only). Returns once mounted
    /// (-f: stays in the foreground); `sparsebak umount MOUNTPOINT` or SIGTERM
    /// unmounts. The volumes stay locked for reading while mounted.
    Mount {
        /// An empty folder to mount on.
        mountpoint: PathBuf,
        /// Volumes to mount (default: every configured volume the archive has; with
        /// --archive, every volume in it).
        volumes: Vec<String>,
        /// Stay in the foreground until unmounted (or SIGTERM/SIGINT).
        #[arg(short = 'f', long = "foreground")]
        foreground: bool,
        /// Bytes of decoded chunks kept in memory, e.g. 64M (the default) or 1G.
        #[arg(long, value_name = "SIZE", default_value = "64M", value_parser = cache_arg)]
        cache: String,
        /// The archive folder to mount from, with no config (as spbk-assemble reads
        /// it): its passphrase from --passfile, --passcmd, SPARSEBAK_PASSPHRASE or a
        /// prompt.
        #[arg(long, value_name = "DIR")]
        archive: Option<PathBuf>,
        /// With --archive: the passphrase is the first line of this file (only its
        /// owner may read it).
        #[arg(long, value_name = "PATH", requires = "archive")]
        passfile: Option<PathBuf>,
        /// With --archive: the passphrase is the first line this command prints (split
        /// on blanks, run without a shell).
        #[arg(long, value_name = "COMMAND", requires = "archive")]
        passcmd: Option<String>,
    },
    /// Unmount a `sparsebak mount` and wait until the process that served it ended.
    Umount {
        /// Where it is mounted.
        mountpoint: PathBuf,
    },
    /// Whether backups are healthy: per volume and destination, the last session and
    /// its age, the changes waiting for the next send, the last verify, the
    /// snapshots, and the space stored and free. Reads only this machine's records, so
    /// it works with destinations away. Exits 0 when every enabled volume has a session
    /// within `max_age` (config, default 26h) and no last verify found damage; 4 when a
    /// last verify found damage, 5 when a volume is older than max_age or was never
    /// sent (one line each on stderr).
    Status {
        /// Volumes to report on (default: every configured volume).
        volumes: Vec<String>,
        /// Print the report as JSON (docs/JSON.md).
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the report as Prometheus text-format metrics (for node_exporter's
        /// textfile collector).
        #[arg(long)]
        prometheus: bool,
    },
    /// The key of an encrypted archive: change its passphrase, print it (to keep a
    /// copy, on paper too), or put it back.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Work the drive and library of a tape destination (`tape = ...` in a
    /// [dest:NAME] section): status, positioning, labels, loading and inventory.
    Tape {
        #[command(subcommand)]
        action: TapeAction,
    },
}

/// What `sparsebak tape` does (on the destination --dest names).
#[derive(Debug, Clone, Subcommand)]
pub enum TapeAction {
    /// The drive's state and position, its block size, and the loaded tape's label
    /// and slot (the tape is put back where it was after reading the label).
    Status,
    /// Rewind to the beginning of the tape.
    Rewind,
    /// Go to the end of recorded data, where the next tape file is appended.
    Eod,
    /// Forward past N filemarks (to the first block of a later tape file).
    Fsf {
        #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// Back past N filemarks (to just before the last one passed).
    Bsf {
        #[arg(value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        count: u32,
    },
    /// Write a label (file 0) on a tape, cutting off everything on it, and record the
    /// tape in the catalog: the loaded tape, the one in --slot, or every unlabelled
    /// tape of the library (--all). A labelled tape is refused without --force.
    Label {
        /// Load the tape in this slot first.
        #[arg(long, value_name = "N", conflicts_with = "all")]
        slot: Option<u32>,
        /// Label every unlabelled tape in the library (labelled ones are skipped).
        #[arg(long, conflicts_with = "force")]
        all: bool,
        /// The media pool (default: the destination's `pool`).
        #[arg(long, value_name = "P")]
        pool: Option<String>,
        /// The tape's name (default: its barcode; needed for a tape without one).
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        name: Option<String>,
        /// Label a tape that already has a label (what is on it is lost).
        #[arg(long)]
        force: bool,
    },
    /// The files on the loaded tape: number, first block, size, and what the catalog
    /// knows of each.
    Ls,
    /// Rebuild the catalog's tapes, tape files and this destination's chains from the
    /// tapes themselves: the loaded tape, the one in --slot, or every tape of the
    /// destination's pool in the library (--all). The newest catalog copy found on
    /// them is imported first; sessions it does not know are read whole from their
    /// streams (an encrypted destination needs its passphrase, from the same sources
    /// as receive).
    Scan {
        /// Load the tape in this slot and scan it.
        #[arg(long, value_name = "N", conflicts_with = "all")]
        slot: Option<u32>,
        /// Scan every tape of the pool in the library (needs a changer).
        #[arg(long)]
        all: bool,
    },
    /// Load the tape in SLOT into the drive.
    Load {
        #[arg(value_name = "SLOT")]
        slot: u32,
    },
    /// Unload the drive's tape into SLOT, or back into the slot it came from.
    Unload {
        #[arg(value_name = "SLOT")]
        slot: Option<u32>,
    },
    /// The library's slots and drive: barcodes, and labels and pools from the catalog.
    Inventory {
        /// Print JSON (docs/JSON.md) instead of the human output.
        #[arg(long)]
        json: bool,
    },
    /// Rewind, wind to the end of the data, rewind.
    Retension,
    /// Eject the tape (back into its slot in a library).
    Eject,
}

/// What `sparsebak key` does.
#[derive(Debug, Subcommand)]
pub enum KeyAction {
    /// Change the passphrase: the master key is wrapped again under the new one
    /// (only the key file `sparsebak.key` is rewritten). The current passphrase comes
    /// from the usual sources; the new one from --new-passfile, else it is asked
    /// twice at the terminal.
    Passwd {
        /// Read the new passphrase from the first line of PATH (a file only its
        /// owner can read).
        #[arg(long = "new-passfile", value_name = "PATH")]
        new_passfile: Option<PathBuf>,
    },
    /// Print the archive's key file (the master key wrapped under the passphrase):
    /// keep a copy apart from the archive; without it, and the passphrase, nothing
    /// in the archive can be read.
    Export {
        /// Print it as short numbered lines, each with its own checksum, to write
        /// down or print and type back with `key import`.
        #[arg(long)]
        paper: bool,
    },
    /// Put a key file back (as `key export` printed it, or its paper form), from
    /// FILE or standard input. It must belong to this archive and open with the
    /// passphrase.
    Import {
        /// The exported key (default: standard input).
        file: Option<PathBuf>,
        /// Replace a different key file the archive has.
        #[arg(long)]
        force: bool,
    },
}

// Option values are checked while the command line is parsed, so a value that cannot
// be understood is bad usage (exit 2, with the command's usage) before anything is
// opened. Each parser returns the text unchanged; the commands read it again.

/// `--session` where one session is meant.
fn one_session_arg(s: &str) -> Result<String, String> {
    crate::selector::parse(s, &crate::commands::now()).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `--session` where one session or an inclusive range `A,B` is meant.
fn sessions_arg(s: &str) -> Result<String, String> {
    let now = crate::commands::now();
    if s.contains(',') {
        crate::selector::parse_range(s, &now).map_err(|e| e.to_string())?;
    } else {
        crate::selector::parse(s, &now).map_err(|e| e.to_string())?;
    }
    Ok(s.to_string())
}

/// `--all-before`: a date or a time, not a session ID or `latest`.
fn all_before_arg(s: &str) -> Result<String, String> {
    match crate::selector::parse(s, &crate::commands::now()) {
        Ok(crate::selector::Selector::AtOrBefore(_)) => Ok(s.to_string()),
        Ok(_) => Err("takes a date or time, e.g. 2026-11-01 or \"3 months ago\"".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// `--keep`: a retention schedule.
fn schedule_arg(s: &str) -> Result<String, String> {
    crate::retention::Schedule::parse(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

/// `--cache`: a size such as 64M, at most 64G.
fn cache_arg(s: &str) -> Result<String, String> {
    match crate::config::parse_size(s) {
        Some(b) if b <= 64 << 30 => Ok(s.to_string()),
        _ => Err("a size such as 64M or 1G (at most 64G)".into()),
    }
}

/// `--block-size`: a multiple of 512 bytes up to 64M.
fn block_size_arg(s: &str) -> Result<String, String> {
    match crate::config::parse_size(s) {
        Some(b) if b > 0 && b % 512 == 0 && b <= 64 << 20 => Ok(s.to_string()),
        _ => Err("a multiple of 512 bytes up to 64M, e.g. 64K".into()),
    }
}

/// `--chain`: a name made of letters, digits and `+ _ . -`.
fn chain_arg(s: &str) -> Result<String, String> {
    if crate::config::valid_volume_name(s) {
        Ok(s.to_string())
    } else {
        Err("use letters, digits and + _ . -".into())
    }
}

/// `--dest`: a destination name (letters, digits and `+ _ . -`), or `all`.
fn dest_arg(s: &str) -> Result<String, String> {
    if s == crate::config::ALL_DESTS || crate::config::dest_name_problem(s).is_none() {
        Ok(s.to_string())
    } else {
        Err("a destination name (letters, digits and + _ . -), or all".into())
    }
}
