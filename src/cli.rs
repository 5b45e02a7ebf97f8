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
    /// Session to use: ID, or ID1,ID2 for a range.
    #[arg(long = "session", global = true, value_name = "ID[,ID]")]
    pub session: Option<String>,
    /// Where `receive` writes the volume: a file (created or replaced) or a block device.
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
    },
    /// Record which chunks changed since the last monitor, from the snapshot layer
    /// (cron, several times an hour). Takes seconds.
    Monitor {
        /// Volumes to monitor (default: every enabled volume).
        volumes: Vec<String>,
    },
    /// Rebuild a volume as it was at a session (latest by default) into --save-to.
    Receive {
        /// The volume to restore.
        volume: String,
    },
    /// Re-read and re-hash every chunk of a session's view (latest by default) and check
    /// the archive's files and metadata; exits 1 naming every problem found.
    Verify {
        /// The volume to verify.
        volume: String,
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
}
