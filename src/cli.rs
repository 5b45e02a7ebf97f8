//! The command line: `sparsebak [options] command [volume ...]`.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand};

/// Fast, incremental, volume-level backups of Linux disk volumes.
///
/// Volumes come from thin LVM (tick/tock snapshots and thin_delta), reflink image
/// files on Btrfs/XFS, or plain files and block devices; they are stored in a
/// sparsebundle-style archive of compressed chunks with a SHA-256 manifest per session.
#[derive(Debug, Parser)]
#[command(name = "sparsebak", version, about, long_about = None,
    after_help = "Config: -c PATH, else $SPARSEBAK_CONFIG, else /etc/sparsebak/sparsebak.ini.\n\
                  Sessions are named YYYYMMDD-HHMMSS (local time).\n\
                  Exit status: 0 on success, 1 on failure (one-line reason on stderr), 2 on bad usage.")]
pub struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Never prompt: answer yes to overwrite questions (for scripts and cron).
    #[arg(short = 'u', long = "unattended", global = true)]
    pub unattended: bool,
    /// Session to use: an ID (YYYYMMDD-HHMMSS), `latest`, `oldest`, a date or date-time
    /// (`2026-11-20`, `2026-11-20 14:00`: the newest session at or before it), or
    /// `3 days ago`, `yesterday`, ...; `A,B` is an inclusive range (prune, diff).
    #[arg(long = "session", global = true, value_name = "SEL[,SEL]")]
    pub session: Option<String>,
    /// Where `receive` writes the volume: a file (created 0600, or replaced keeping its
    /// owner and mode; symlinks followed), a block device, a FIFO, or `-` for stdout.
    #[arg(long = "save-to", global = true, value_name = "PATH")]
    pub save_to: Option<PathBuf>,
    /// More output (repeat for debug logs); prints summaries even without a terminal.
    #[arg(short = 'v', long = "verbose", global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors: no progress bars, no summaries (for cron).
    #[arg(short = 'q', long = "quiet", global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
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
            requires = "stream"
        )]
        block_size: String,
        /// Name of the stream chain: each chain is incremental on its own.
        #[arg(
            long,
            value_name = "NAME",
            default_value = "default",
            requires = "stream"
        )]
        chain: String,
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
        volume: Option<String>,
        /// Rebuild from a full stream and its incrementals, in order (`-` = stdin, or
        /// PATH,PATH,...), with no archive, metadir or config.
        #[arg(long = "from-stream", value_name = "PATH[,PATH...]")]
        from_stream: Option<String>,
        /// On a block device larger than the volume, also zero what lies past the
        /// volume's end (by default it is left as it was).
        #[arg(long = "zero-tail")]
        zero_tail: bool,
    },
    /// Re-read and re-hash every chunk of a session's view (latest by default) and check
    /// the archive's files and metadata; exits 1 naming every problem found.
    Verify {
        /// The volume to verify (with --from-stream: optional, checked if given).
        volume: Option<String>,
        /// Check a chain of streams (`-` = stdin, or PATH,PATH,...) without writing.
        #[arg(long = "from-stream", value_name = "PATH[,PATH...]")]
        from_stream: Option<String>,
    },
    /// List the sessions of the configured volumes, or the named ones, oldest first.
    List {
        /// Volumes to list (default: every configured volume).
        volumes: Vec<String>,
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
    Prune {
        /// Volumes to prune (default: every enabled volume).
        volumes: Vec<String>,
        /// Apply the retention schedule (`keep` in the config, or --keep).
        #[arg(long)]
        auto: bool,
        /// Retention schedule, e.g. "hourly:24 daily:14 weekly:8 monthly:12 yearly:5".
        #[arg(long, value_name = "SCHEDULE")]
        keep: Option<String>,
        /// Remove every session taken before this date or selector.
        #[arg(long = "all-before", value_name = "SEL")]
        all_before: Option<String>,
        /// Only print what would be removed and the bytes it would free.
        #[arg(long = "dry-run")]
        dry_run: bool,
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
    },
    /// Show the byte ranges that differ between two sessions (--session=A,B), or
    /// between a session and the live volume (--session=A).
    Diff {
        /// The volume to compare.
        volume: String,
        /// Print JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}
