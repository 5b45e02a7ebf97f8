//! The one door to lvm2, device-mapper and thin-provisioning-tools.
//!
//! Every `lvm`, `dmsetup` and `thin_delta` invocation goes through [`Lvm`], so there is
//! one place that decides how they are run:
//!
//! - **Exact argv, never a shell string.** Names come from configuration; passing them
//!   as separate arguments (and validating them as LVM names first) means no quoting
//!   bugs and no injection of options.
//! - **Stable, parseable output.** `LC_ALL=C`; reports are requested as
//!   `--reportformat basic --noheadings --nosuffix --units b --separator '|'` so a
//!   user's `lvm.conf` report settings (JSON output, units, alignment) cannot change them.
//! - **No udev where there is none.** In containers, rescue systems and minimal VMs
//!   there is no udev daemon, and lvm would wait for it (or for `dmeventd`) forever or
//!   fail. [`Lvm::new`] detects that (no `/run/udev/control`) and then runs lvm with
//!   `--config` that turns off udev device lists, udev sync and rules, monitoring and
//!   lvmpolld, and sets `DM_DISABLE_UDEV=1` so libdevmapper (lvm's and dmsetup's)
//!   creates device nodes itself. `devices/use_devicesfile` is deliberately left alone:
//!   it works without udev and is the administrator's choice of visible devices.
//! - **Errors that explain themselves.** A failed command is an [`LvmError::Failed`]
//!   carrying the argv, the exit status and what the tool printed on stderr.
//!
//! The thin pool's metadata snapshot (`reserve_metadata_snap`) lets `thin_delta` read
//! a consistent copy of a live pool's metadata. Only one can be held per pool, and a
//! held one pins metadata blocks, so [`MetadataSnapGuard`] releases it when dropped and
//! release is idempotent: safe to call when nothing (or someone else's nothing) is held.
//!
//! `thin_delta` is always run with `-m` and no block number: 0.9 takes an optional
//! block number only glued to the option (`-m123`), and 1.x takes none, so the bare flag
//! (use the held root recorded in the superblock) is the one spelling both understand.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

use crate::delta_map::DeltaMap;
use crate::source::thin_delta::{self, DeltaSummary, DiffSide, ThinDeltaError};

/// The longest name lvm accepts for a VG or LV (its `NAME_LEN` less the NUL).
const MAX_NAME: usize = 127;

/// Keep at most this much of a tool's stderr (the end of it matters less than memory).
const STDERR_CAP: u64 = 64 * 1024;

/// After `thin_delta` output stops parsing, read at most this much more of it hoping
/// the tool exits by itself (so its exit status, not a kill, is what gets reported).
const DRAIN_CAP: u64 = 16 * 1024 * 1024;

/// Settings that let lvm work without a udev daemon; see the module documentation.
const NO_UDEV_CONFIG: &str = "devices { obtain_device_list_from_udev = 0 \
     external_device_info_source = \"none\" } \
     activation { udev_sync = 0 udev_rules = 0 monitoring = 0 } \
     global { use_lvmpolld = 0 }";

/// A program and its arguments, exactly as they are passed to `execve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv {
    program: OsString,
    args: Vec<OsString>,
}

impl Argv {
    pub fn new(program: impl Into<OsString>) -> Argv {
        Argv {
            program: program.into(),
            args: Vec::new(),
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Argv {
        self.args.push(arg.into());
        self
    }

    pub fn program(&self) -> &OsStr {
        &self.program
    }

    pub fn args(&self) -> &[OsString] {
        &self.args
    }
}

/// Shell-like rendering, for messages only: arguments with unusual characters are
/// single-quoted so the line can be pasted to retry by hand.
impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for word in std::iter::once(&self.program).chain(&self.args) {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            let s = word.to_string_lossy();
            let plain = !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-+=./:,@%".contains(&b));
            if plain {
                f.write_str(&s)?;
            } else {
                write!(f, "'{}'", s.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// Why an lvm / device-mapper / thin_delta operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: &'static str,
    },
    #[error("cannot run `{argv}`: {source}")]
    Spawn {
        argv: Argv,
        #[source]
        source: std::io::Error,
    },
    /// Said reason first: lvm's argv (with its `--config` settings) is long, and what
    /// the tool printed is what the user needs to read.
    #[error("{}", failed_message(.argv, .status, .stderr))]
    Failed {
        argv: Argv,
        status: ExitStatus,
        stderr: String,
    },
    #[error("`{argv}`: reading its output: {source}")]
    Io {
        argv: Argv,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` printed something unexpected ({reason}): {output:?}")]
    BadOutput {
        argv: Argv,
        reason: String,
        output: String,
    },
    #[error("`{argv}`: {source}{}", stderr_suffix(.stderr))]
    ThinDelta {
        argv: Argv,
        stderr: String,
        #[source]
        source: Box<ThinDeltaError>,
    },
    #[error("thin pool {pool} has failed (device-mapper status {status:?}); it needs repair")]
    PoolFailed { pool: String, status: String },
    #[error(
        "thin pool {pool} holds a metadata snapshot (root block {root}) that sparsebak did \
         not reserve: another tool (thin_ls, another backup tool) is probably using it, or a \
         run of another sparsebak configuration was killed before a reboot (that \
         configuration's next run releases it). Only when you are sure nothing uses it: \
         `dmsetup message {dm_name} 0 release_metadata_snap`"
    )]
    MetadataSnapHeld {
        pool: String,
        dm_name: String,
        root: u64,
    },
}

/// `<tool>: <what it printed> (`argv` failed, status)`, or only the argv and status
/// when it printed nothing.
fn failed_message(argv: &Argv, status: &ExitStatus, stderr: &str) -> String {
    let said: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if said.is_empty() {
        return format!("`{argv}` failed ({status})");
    }
    let program = Path::new(argv.program())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `lvm lvcreate ...` is named by its subcommand.
    let tool = match argv.args().first() {
        Some(sub) if program == "lvm" => sub.to_string_lossy().into_owned(),
        _ => program,
    };
    format!("{tool}: {} (`{argv}` failed, {status})", said.join("; "))
}

fn stderr_suffix(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!(": {s}")
    }
}

type Result<T> = std::result::Result<T, LvmError>;

fn check_name(what: &'static str, name: &str) -> Result<()> {
    let bad = |reason| LvmError::InvalidName {
        what,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("longer than 127 characters"));
    }
    if name == "." || name == ".." {
        return Err(bad("reserved"));
    }
    if name.starts_with('-') {
        return Err(bad("starts with '-'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
    {
        return Err(bad("only letters, digits and + _ . - are allowed"));
    }
    Ok(())
}

/// The device-mapper name lvm gives `vg/lv` (with an optional layer such as `tpool`):
/// hyphens inside the names are doubled so the single hyphens that join the parts stay
/// unambiguous (`my-vg/pool` → `my--vg-pool`).
pub fn dm_name(vg: &str, lv: &str, layer: Option<&str>) -> String {
    let mut s = format!("{}-{}", vg.replace('-', "--"), lv.replace('-', "--"));
    if let Some(layer) = layer {
        s.push('-');
        s.push_str(layer);
    }
    s
}

/// A logical volume `vg/lv` whose names have been checked against lvm's rules, so they
/// can be passed as arguments without being mistaken for options.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LvRef {
    vg: String,
    lv: String,
}

impl LvRef {
    pub fn new(vg: &str, lv: &str) -> Result<LvRef> {
        check_name("volume group", vg)?;
        check_name("logical volume", lv)?;
        Ok(LvRef {
            vg: vg.to_string(),
            lv: lv.to_string(),
        })
    }

    /// Parse `vg/lv`.
    pub fn parse(s: &str) -> Result<LvRef> {
        match s.split_once('/') {
            Some((vg, lv)) => LvRef::new(vg, lv),
            None => Err(LvmError::InvalidName {
                what: "logical volume",
                name: s.to_string(),
                reason: "expected VG/LV",
            }),
        }
    }

    pub fn vg(&self) -> &str {
        &self.vg
    }

    pub fn lv(&self) -> &str {
        &self.lv
    }

    /// Another LV of the same VG.
    pub fn sibling(&self, lv: &str) -> Result<LvRef> {
        LvRef::new(&self.vg, lv)
    }

    /// This LV's device-mapper name.
    pub fn dm_name(&self) -> String {
        dm_name(&self.vg, &self.lv, None)
    }

    /// For a thin pool: the device that carries the `thin-pool` target, which takes the
    /// metadata snapshot messages and reports the pool status.
    pub fn tpool_dm_name(&self) -> String {
        dm_name(&self.vg, &self.lv, Some("tpool"))
    }

    /// For a thin pool: its metadata device (the hidden `<pool>_tmeta` LV), which
    /// `thin_delta -m` reads.
    pub fn pool_metadata_device(&self) -> PathBuf {
        let tmeta = format!("{}_tmeta", self.lv);
        Path::new("/dev/mapper").join(dm_name(&self.vg, &tmeta, None))
    }

    fn arg(&self) -> OsString {
        OsString::from(self.to_string())
    }
}

impl fmt::Display for LvRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.vg, self.lv)
    }
}

/// One LV as `lvs` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LvInfo {
    pub name: String,
    /// The ten-character `lv_attr` string (`V` type for thin, `t` for pools, `a` when
    /// active in the fifth place, `k` for activation skip in the tenth).
    pub attr: String,
    pub size_bytes: u64,
    /// `thin`, `thin-pool`, `linear`, ...
    pub segtype: String,
    /// For a thin LV: its pool.
    pub pool_lv: Option<String>,
    /// For a thin LV: its device id inside the pool (what `thin_delta --snap1` takes).
    pub thin_id: Option<u64>,
}

impl LvInfo {
    pub fn is_thin(&self) -> bool {
        self.segtype == "thin"
    }

    pub fn is_thin_pool(&self) -> bool {
        self.segtype == "thin-pool"
    }

    pub fn is_active(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'a')
    }

    pub fn skips_activation(&self) -> bool {
        self.attr.as_bytes().get(9) == Some(&b'k')
    }
}

const LVS_FIELDS: &str = "lv_name,lv_attr,lv_size,segtype,pool_lv,thin_id";

/// Parse one line of `lvs` output in the [`LVS_FIELDS`] order.
fn parse_lvs_line(line: &str) -> std::result::Result<LvInfo, String> {
    let fields: Vec<&str> = line.trim().split('|').map(str::trim).collect();
    let [name, attr, size, segtype, pool_lv, thin_id] = fields[..] else {
        return Err(format!("expected 6 fields, got {}", fields.len()));
    };
    let size_bytes = size
        .parse::<u64>()
        .map_err(|_| format!("size {size:?} is not a number of bytes"))?;
    let thin_id = match thin_id {
        "" => None,
        s => Some(
            s.parse::<u64>()
                .map_err(|_| format!("thin_id {s:?} is not a number"))?,
        ),
    };
    Ok(LvInfo {
        name: name.to_string(),
        attr: attr.to_string(),
        size_bytes,
        segtype: segtype.to_string(),
        pool_lv: (!pool_lv.is_empty()).then(|| pool_lv.to_string()),
        thin_id,
    })
}

/// A thin pool's state as its `thin-pool` target reports it (`dmsetup status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStatus {
    pub transaction_id: u64,
    pub used_metadata_blocks: u64,
    pub total_metadata_blocks: u64,
    pub used_data_blocks: u64,
    pub total_data_blocks: u64,
    /// Root block of the held metadata snapshot; `None` when none is held (`-`).
    pub held_metadata_root: Option<u64>,
    /// `rw`, `ro` or `out_of_data_space`.
    pub mode: String,
    pub needs_check: bool,
}

/// Why a status line could not be used.
#[derive(Debug, PartialEq, Eq)]
enum StatusProblem {
    /// The kernel put the pool in failure mode (`Fail`) or could not read it (`Error`).
    Failed,
    Unparsable(String),
}

/// Parse the `thin-pool` status line:
/// `<start> <len> thin-pool <transaction> <used>/<total meta> <used>/<total data>
/// <held root|-> <rw|ro|out_of_data_space> <discard> <no-space> <needs_check|-> ...`.
fn parse_pool_status(line: &str) -> std::result::Result<PoolStatus, StatusProblem> {
    let bad = |s: &str| StatusProblem::Unparsable(s.to_string());
    let f: Vec<&str> = line.split_whitespace().collect();
    match f.get(2) {
        Some(&"thin-pool") => {}
        Some(other) => return Err(bad(&format!("target is {other:?}, not thin-pool"))),
        None => return Err(bad("too few fields")),
    }
    if matches!(f.get(3), Some(&"Fail") | Some(&"Error")) {
        return Err(StatusProblem::Failed);
    }
    if f.len() < 8 {
        return Err(bad("too few fields"));
    }
    let num = |s: &str, what: &str| {
        s.parse::<u64>()
            .map_err(|_| bad(&format!("{what} {s:?} is not a number")))
    };
    let pair = |s: &str, what: &str| match s.split_once('/') {
        Some((a, b)) => Ok((num(a, what)?, num(b, what)?)),
        None => Err(bad(&format!("{what} {s:?} is not used/total"))),
    };
    let (used_metadata_blocks, total_metadata_blocks) = pair(f[4], "metadata usage")?;
    let (used_data_blocks, total_data_blocks) = pair(f[5], "data usage")?;
    let held_metadata_root = match f[6] {
        "-" => None,
        s => Some(num(s, "held metadata root")?),
    };
    Ok(PoolStatus {
        transaction_id: num(f[3], "transaction id")?,
        used_metadata_blocks,
        total_metadata_blocks,
        used_data_blocks,
        total_data_blocks,
        held_metadata_root,
        mode: f[7].to_string(),
        needs_check: f.get(10) == Some(&"needs_check"),
    })
}

/// Runs lvm, dmsetup and thin_delta. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Lvm {
    lvm: PathBuf,
    dmsetup: PathBuf,
    thin_delta: PathBuf,
    no_udev: bool,
}

impl Default for Lvm {
    fn default() -> Self {
        Lvm::new()
    }
}

impl Lvm {
    /// Tools from `PATH`; udev use decided by whether a udev daemon is running.
    pub fn new() -> Lvm {
        let no_udev = !Path::new("/run/udev/control").exists();
        if no_udev {
            tracing::debug!("no udev daemon: running lvm without udev");
        }
        Lvm {
            lvm: "lvm".into(),
            dmsetup: "dmsetup".into(),
            thin_delta: "thin_delta".into(),
            no_udev,
        }
    }

    /// Force running with (`true`) or without (`false`) udev.
    pub fn with_udev(mut self, udev: bool) -> Lvm {
        self.no_udev = !udev;
        self
    }

    pub fn with_lvm_binary(mut self, path: impl Into<PathBuf>) -> Lvm {
        self.lvm = path.into();
        self
    }

    pub fn with_dmsetup_binary(mut self, path: impl Into<PathBuf>) -> Lvm {
        self.dmsetup = path.into();
        self
    }

    pub fn with_thin_delta_binary(mut self, path: impl Into<PathBuf>) -> Lvm {
        self.thin_delta = path.into();
        self
    }

    /// `lvm <subcommand>` plus, without udev, the settings that make it work.
    fn lvm_argv(&self, subcommand: &str) -> Argv {
        let argv = Argv::new(&self.lvm).arg(subcommand);
        if self.no_udev {
            argv.arg("--config").arg(NO_UDEV_CONFIG)
        } else {
            argv
        }
    }

    fn command(&self, argv: &Argv) -> Command {
        let mut cmd = Command::new(&argv.program);
        cmd.args(&argv.args)
            .stdin(Stdio::null())
            .env("LC_ALL", "C")
            // Our own descriptors are close-on-exec; silence lvm's check anyway, it
            // would turn an inherited descriptor into noise on stderr.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1");
        if self.no_udev {
            cmd.env("DM_DISABLE_UDEV", "1");
        }
        cmd
    }

    /// Run `argv` to completion, capturing its output; a non-zero exit is an error
    /// carrying the argv, status and stderr.
    pub fn run(&self, argv: &Argv) -> Result<Output> {
        tracing::debug!(%argv, "running");
        let out = self
            .command(argv)
            .output()
            .map_err(|source| LvmError::Spawn {
                argv: argv.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(LvmError::Failed {
                argv: argv.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(out)
    }

    /// Run `argv` and return its stdout as text.
    fn run_stdout(&self, argv: &Argv) -> Result<String> {
        let out = self.run(argv)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn lvs_argv(&self, vg: &str) -> Argv {
        self.lvm_argv("lvs")
            .arg("--reportformat")
            .arg("basic")
            .arg("--noheadings")
            .arg("--nosuffix")
            .arg("--units")
            .arg("b")
            .arg("--separator")
            .arg("|")
            .arg("-o")
            .arg(LVS_FIELDS)
            .arg(vg)
    }

    /// What `lvs` says about `lv`, or `None` when its VG has no such LV. (A missing VG
    /// is an error: it means a configuration or activation problem, not a missing LV.)
    pub fn lv_info(&self, lv: &LvRef) -> Result<Option<LvInfo>> {
        let argv = self.lvs_argv(lv.vg());
        let out = self.run_stdout(&argv)?;
        for line in out.lines().filter(|l| !l.trim().is_empty()) {
            let info = parse_lvs_line(line).map_err(|reason| LvmError::BadOutput {
                argv: argv.clone(),
                reason,
                output: line.to_string(),
            })?;
            if info.name == lv.lv() {
                return Ok(Some(info));
            }
        }
        Ok(None)
    }

    pub fn lv_exists(&self, lv: &LvRef) -> Result<bool> {
        Ok(self.lv_info(lv)?.is_some())
    }

    fn existing(&self, lv: &LvRef) -> Result<LvInfo> {
        let argv = self.lvs_argv(lv.vg());
        self.lv_info(lv)?.ok_or_else(|| LvmError::BadOutput {
            argv,
            reason: format!("no logical volume {lv}"),
            output: String::new(),
        })
    }

    /// Size of `lv` in bytes.
    pub fn lv_size(&self, lv: &LvRef) -> Result<u64> {
        Ok(self.existing(lv)?.size_bytes)
    }

    /// Whether `lv` is a thin volume (segment type `thin`).
    pub fn is_thin(&self, lv: &LvRef) -> Result<bool> {
        Ok(self.existing(lv)?.is_thin())
    }

    /// Whether `pool` exists and is a thin pool.
    pub fn pool_exists(&self, pool: &LvRef) -> Result<bool> {
        Ok(self.lv_info(pool)?.is_some_and(|i| i.is_thin_pool()))
    }

    /// The thin device id of a thin `lv` (what `thin_delta --snap1/--snap2` take).
    pub fn thin_id(&self, lv: &LvRef) -> Result<u64> {
        let argv = self
            .lvm_argv("lvs")
            .arg("--reportformat")
            .arg("basic")
            .arg("--noheadings")
            .arg("-o")
            .arg("thin_id")
            .arg(lv.arg());
        let out = self.run_stdout(&argv)?;
        out.trim().parse::<u64>().map_err(|_| LvmError::BadOutput {
            argv,
            reason: format!("no thin id: is {lv} a thin volume?"),
            output: out.clone(),
        })
    }

    fn snapshot_argv(&self, origin: &LvRef, name: &str, read_only: bool) -> Argv {
        let argv = self
            .lvm_argv("lvcreate")
            .arg("--snapshot")
            .arg("--name")
            .arg(name)
            // Explicit, not left to lvm.conf: snapshots must not be activated at boot
            // or by `vgchange -ay`; we activate them with -K only when reading them.
            .arg("--setactivationskip")
            .arg("y");
        let argv = if read_only {
            argv.arg("--permission").arg("r")
        } else {
            argv
        };
        argv.arg(origin.arg())
    }

    /// Create a thin snapshot `name` of the thin volume `origin` (no size: a thin
    /// snapshot shares the pool). It skips activation; `read_only` makes it read-only,
    /// which is right for snapshots only ever read as backup references.
    pub fn create_thin_snapshot(
        &self,
        origin: &LvRef,
        name: &str,
        read_only: bool,
    ) -> Result<LvRef> {
        let snap = origin.sibling(name)?;
        self.run(&self.snapshot_argv(origin, name, read_only))?;
        tracing::info!(%origin, %snap, "created thin snapshot");
        Ok(snap)
    }

    fn activate_argv(&self, lv: &LvRef) -> Argv {
        self.lvm_argv("lvchange")
            .arg("--activate")
            .arg("y")
            .arg("--ignoreactivationskip")
            .arg(lv.arg())
    }

    fn deactivate_argv(&self, lv: &LvRef) -> Argv {
        self.lvm_argv("lvchange")
            .arg("--activate")
            .arg("n")
            .arg(lv.arg())
    }

    /// Activate `lv` even though it skips activation (as snapshots do).
    pub fn activate(&self, lv: &LvRef) -> Result<()> {
        self.run(&self.activate_argv(lv)).map(drop)
    }

    pub fn deactivate(&self, lv: &LvRef) -> Result<()> {
        self.run(&self.deactivate_argv(lv)).map(drop)
    }

    fn remove_argv(&self, lv: &LvRef) -> Argv {
        self.lvm_argv("lvremove").arg("--force").arg(lv.arg())
    }

    /// Remove `lv` without asking.
    pub fn remove(&self, lv: &LvRef) -> Result<()> {
        self.run(&self.remove_argv(lv))?;
        tracing::info!(%lv, "removed");
        Ok(())
    }

    fn rename_argv(&self, lv: &LvRef, new_name: &str) -> Argv {
        self.lvm_argv("lvrename")
            .arg(lv.vg())
            .arg(lv.lv())
            .arg(new_name)
    }

    /// Rename `lv` within its VG; returns the new reference.
    pub fn rename(&self, lv: &LvRef, new_name: &str) -> Result<LvRef> {
        let new = lv.sibling(new_name)?;
        self.run(&self.rename_argv(lv, new_name))?;
        tracing::info!(from = %lv, to = %new, "renamed");
        Ok(new)
    }

    fn pool_status_argv(&self, pool: &LvRef) -> Argv {
        Argv::new(&self.dmsetup)
            .arg("status")
            .arg(pool.tpool_dm_name())
    }

    fn pool_message_argv(&self, pool: &LvRef, message: &str) -> Argv {
        Argv::new(&self.dmsetup)
            .arg("message")
            .arg(pool.tpool_dm_name())
            .arg("0")
            .arg(message)
    }

    /// The pool's status from its `thin-pool` target. The pool must be active.
    pub fn pool_status(&self, pool: &LvRef) -> Result<PoolStatus> {
        let argv = self.pool_status_argv(pool);
        let out = self.run_stdout(&argv)?;
        let line = out.lines().next().unwrap_or("");
        parse_pool_status(line).map_err(|p| match p {
            StatusProblem::Failed => LvmError::PoolFailed {
                pool: pool.to_string(),
                status: line.to_string(),
            },
            StatusProblem::Unparsable(reason) => LvmError::BadOutput {
                argv: argv.clone(),
                reason,
                output: out.clone(),
            },
        })
    }

    /// Root block of the pool's held metadata snapshot, if one is held.
    pub fn metadata_snap_held(&self, pool: &LvRef) -> Result<Option<u64>> {
        Ok(self.pool_status(pool)?.held_metadata_root)
    }

    /// Ask the kernel to reserve a metadata snapshot of `pool` (committing first, so it
    /// includes every thin snapshot already created). Fails if one is already held.
    pub fn reserve_metadata_snap(&self, pool: &LvRef) -> Result<()> {
        self.run(&self.pool_message_argv(pool, "reserve_metadata_snap"))?;
        tracing::debug!(%pool, "reserved metadata snapshot");
        Ok(())
    }

    /// Release `pool`'s metadata snapshot if the one held is `root` (ours). Returns
    /// `Ok(false)` when none is held, or another one: the pool holds one metadata snapshot
    /// at a time, and one with another root was reserved by someone else, so it is left
    /// alone. Idempotent, including when it disappears between the check and the message.
    pub fn release_metadata_snap(&self, pool: &LvRef, root: u64) -> Result<bool> {
        match self.metadata_snap_held(pool)? {
            Some(held) if held == root => {}
            Some(other) => {
                tracing::debug!(%pool, root, other, "the held metadata snapshot is not ours");
                return Ok(false);
            }
            None => return Ok(false),
        }
        match self.run(&self.pool_message_argv(pool, "release_metadata_snap")) {
            Ok(_) => {
                tracing::debug!(%pool, root, "released metadata snapshot");
                Ok(true)
            }
            Err(e @ LvmError::Failed { .. }) => match self.metadata_snap_held(pool) {
                Ok(None) => Ok(false),
                _ => Err(e),
            },
            Err(e) => Err(e),
        }
    }

    /// Whether the pool's `thin-pool` device (`<vg>-<pool>-tpool`) is active, from
    /// sysfs (no tool output to interpret): an inactive pool takes no messages.
    pub fn pool_is_active(&self, pool: &LvRef) -> bool {
        dm_device_exists(&pool.tpool_dm_name())
    }

    fn thin_delta_argv(&self, metadata: &Path, snap1: u64, snap2: u64, verbose: bool) -> Argv {
        let argv = Argv::new(&self.thin_delta).arg("-m");
        let argv = if verbose { argv.arg("--verbose") } else { argv };
        argv.arg("--snap1")
            .arg(snap1.to_string())
            .arg("--snap2")
            .arg(snap2.to_string())
            .arg(metadata)
    }

    /// Run `thin_delta -m --snap1 <snap1> --snap2 <snap2> <metadata>` and mark what
    /// changed from thin device `snap1` to `snap2` in `map`, streaming the tool's output
    /// into the parser as it is printed.
    ///
    /// `metadata` is the pool's metadata device ([`LvRef::pool_metadata_device`]) with
    /// a metadata snapshot held ([`MetadataSnapGuard`]). `verbose` only changes the
    /// output form (both are understood); it exists for testing.
    ///
    /// A non-zero exit of the tool is reported as [`LvmError::Failed`] even if its
    /// output parsed, and takes precedence over a parse error (which is then only a
    /// symptom). On error `map` may hold some of the marks; see
    /// [`thin_delta::mark_map`].
    pub fn thin_delta_mark(
        &self,
        metadata: &Path,
        snap1: u64,
        snap2: u64,
        verbose: bool,
        map: &mut DeltaMap,
    ) -> Result<DeltaSummary> {
        let argv = self.thin_delta_argv(metadata, snap1, snap2, verbose);
        tracing::debug!(%argv, "running");
        let mut child = self
            .command(&argv)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| LvmError::Spawn {
                argv: argv.clone(),
                source,
            })?;
        // Drain stderr on its own thread: a tool blocked writing a full stderr pipe
        // would stop writing stdout, and reading stdout would then wait forever.
        let stderr_reader = child.stderr.take().map(|pipe| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                let mut pipe = pipe;
                let _ = (&mut pipe).take(STDERR_CAP).read_to_end(&mut kept);
                let _ = std::io::copy(&mut pipe, &mut std::io::sink());
                String::from_utf8_lossy(&kept).into_owned()
            })
        });

        let parsed = match child.stdout.take() {
            Some(pipe) => {
                let mut out = BufReader::with_capacity(64 * 1024, pipe);
                let parsed = thin_delta::mark_map(&mut out, map);
                if parsed.is_err() && !drained(&mut out) {
                    // Still printing after DRAIN_CAP of unusable output: stop it. It is
                    // our child, killed by its own handle.
                    let _ = child.kill();
                }
                Some(parsed)
            }
            None => None,
        };
        let status = child.wait().map_err(|source| LvmError::Io {
            argv: argv.clone(),
            source,
        })?;
        let stderr = stderr_reader
            .and_then(|t| t.join().ok())
            .unwrap_or_default();

        if !status.success() {
            return Err(LvmError::Failed {
                argv,
                status,
                stderr,
            });
        }
        match parsed {
            Some(Ok(summary)) => {
                // The document names the devices it compared; a mismatch means the tool
                // did something other than what was asked, and its delta is unusable.
                let h = &summary.header;
                let named =
                    |side: Option<DiffSide>, id: u64| side.is_none_or(|s| s == DiffSide::Thin(id));
                if !named(h.left, snap1) || !named(h.right, snap2) {
                    return Err(LvmError::BadOutput {
                        argv,
                        reason: format!("it compared {:?} with {:?}", h.left, h.right),
                        output: String::new(),
                    });
                }
                if !stderr.trim().is_empty() {
                    tracing::warn!(%argv, stderr = stderr.trim(), "thin_delta succeeded with messages");
                }
                Ok(summary)
            }
            Some(Err(source)) => Err(LvmError::ThinDelta {
                argv,
                stderr,
                source: Box::new(source),
            }),
            None => Err(LvmError::Io {
                argv,
                source: std::io::Error::other("no stdout pipe"),
            }),
        }
    }
}

/// Read and discard what is left of `out`, up to [`DRAIN_CAP`]; true if it ended.
fn drained(out: &mut impl BufRead) -> bool {
    let mut limited = out.take(DRAIN_CAP);
    match std::io::copy(&mut limited, &mut std::io::sink()) {
        Ok(n) => n < DRAIN_CAP,
        Err(_) => false,
    }
}

/// Whether a device-mapper device called `name` exists (`/sys/block/dm-*/dm/name`).
pub fn dm_device_exists(name: &str) -> bool {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return false;
    };
    rd.flatten().any(|e| {
        std::fs::read_to_string(e.path().join("dm/name")).is_ok_and(|n| n.trim_end() == name)
    })
}

/// A metadata snapshot of a thin pool that this process reserved, released when
/// dropped.
///
/// Hold it only while `thin_delta -m` runs: while held, the pool keeps the snapshot's
/// metadata blocks allocated. It is identified by its root block (the seventh field
/// of the pool's status), and released only while the pool still holds that root, so
/// a reservation someone else made is never released. Release errors on drop are
/// logged, not raised; call [`MetadataSnapGuard::release`] to see them.
#[derive(Debug)]
pub struct MetadataSnapGuard {
    lvm: Lvm,
    pool: LvRef,
    root: u64,
    held: bool,
}

impl MetadataSnapGuard {
    /// Reserve a metadata snapshot of `pool`.
    ///
    /// If one is already held it is someone else's (the caller has already released
    /// what its own interrupted runs left), and a metadata snapshot from some earlier
    /// moment must not be diffed: this fails with [`LvmError::MetadataSnapHeld`] and
    /// leaves it alone.
    pub fn reserve(lvm: &Lvm, pool: &LvRef) -> Result<MetadataSnapGuard> {
        if let Some(root) = lvm.metadata_snap_held(pool)? {
            return Err(LvmError::MetadataSnapHeld {
                pool: pool.to_string(),
                dm_name: pool.tpool_dm_name(),
                root,
            });
        }
        lvm.reserve_metadata_snap(pool)?;
        let argv = lvm.pool_status_argv(pool);
        let root = lvm
            .metadata_snap_held(pool)?
            .ok_or_else(|| LvmError::BadOutput {
                argv,
                reason: "no metadata snapshot held right after reserving one".into(),
                output: String::new(),
            })?;
        Ok(MetadataSnapGuard {
            lvm: lvm.clone(),
            pool: pool.clone(),
            root,
            held: true,
        })
    }

    pub fn pool(&self) -> &LvRef {
        &self.pool
    }

    /// The root block of this reservation, as `dmsetup status` shows it.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// The pool's metadata device, for `thin_delta -m`.
    pub fn metadata_device(&self) -> PathBuf {
        self.pool.pool_metadata_device()
    }

    /// Release now, reporting failure.
    pub fn release(mut self) -> Result<()> {
        self.held = false;
        self.lvm
            .release_metadata_snap(&self.pool, self.root)
            .map(drop)
    }
}

impl Drop for MetadataSnapGuard {
    fn drop(&mut self) {
        if self.held {
            self.held = false;
            if let Err(e) = self.lvm.release_metadata_snap(&self.pool, self.root) {
                tracing::warn!(pool = %self.pool, error = %e, "could not release the metadata snapshot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn lv(s: &str) -> LvRef {
        LvRef::parse(s).unwrap()
    }

    fn words(argv: &Argv) -> Vec<String> {
        std::iter::once(argv.program())
            .chain(argv.args().iter().map(|a| a.as_os_str()))
            .map(|w| w.to_string_lossy().into_owned())
            .collect()
    }

    fn udev() -> Lvm {
        Lvm::new().with_udev(true)
    }

    #[test]
    fn names_are_checked() {
        assert_eq!(lv("vg0/root").to_string(), "vg0/root");
        assert_eq!(lv("my-vg/a+b_c.d-e").lv(), "a+b_c.d-e");
        for bad in [
            "vg", "/lv", "vg/", "vg/-x", "-vg/x", "vg/a b", "vg/a/b", "vg/..", "vg/$(x)", "vg/é",
        ] {
            let e = LvRef::parse(bad).unwrap_err();
            assert!(matches!(e, LvmError::InvalidName { .. }), "{bad}: {e}");
        }
        let long = format!("vg/{}", "x".repeat(128));
        assert!(LvRef::parse(&long).is_err());
        assert!(LvRef::parse(&long[..long.len() - 1]).is_ok());
        let e = LvRef::parse("vg/-rf").unwrap_err().to_string();
        assert_eq!(e, "invalid logical volume name \"-rf\": starts with '-'");
    }

    #[test]
    fn dm_names_double_hyphens() {
        assert_eq!(dm_name("vg", "lv", None), "vg-lv");
        assert_eq!(
            dm_name("my-vg", "thin-pool", Some("tpool")),
            "my--vg-thin--pool-tpool"
        );
        let pool = lv("data-vg/pool--x");
        assert_eq!(pool.dm_name(), "data--vg-pool----x");
        assert_eq!(pool.tpool_dm_name(), "data--vg-pool----x-tpool");
        assert_eq!(
            pool.pool_metadata_device(),
            Path::new("/dev/mapper/data--vg-pool----x_tmeta")
        );
        assert_eq!(
            lv("vg/pool").pool_metadata_device(),
            Path::new("/dev/mapper/vg-pool_tmeta")
        );
    }

    #[test]
    fn argv_display_quotes_what_a_shell_would_split() {
        let a = Argv::new("lvm")
            .arg("lvs")
            .arg("--separator")
            .arg("|")
            .arg("a b")
            .arg("it's")
            .arg("")
            .arg("vg/lv-1");
        assert_eq!(
            a.to_string(),
            r"lvm lvs --separator '|' 'a b' 'it'\''s' '' vg/lv-1"
        );
    }

    #[test]
    fn lvm_argv_with_and_without_udev() {
        let l = udev();
        let v = lv("vg/thin-1");
        assert_eq!(
            words(&l.activate_argv(&v)),
            [
                "lvm",
                "lvchange",
                "--activate",
                "y",
                "--ignoreactivationskip",
                "vg/thin-1"
            ]
        );
        let cmd = l.command(&l.activate_argv(&v));
        let envs: Vec<_> = cmd.get_envs().collect();
        assert!(envs.contains(&(OsStr::new("LC_ALL"), Some(OsStr::new("C")))));
        assert!(!envs.iter().any(|(k, _)| *k == "DM_DISABLE_UDEV"));

        let l = udev().with_udev(false);
        let w = words(&l.activate_argv(&v));
        assert_eq!(&w[..3], ["lvm", "lvchange", "--config"]);
        for setting in [
            "obtain_device_list_from_udev = 0",
            "external_device_info_source = \"none\"",
            "udev_sync = 0",
            "udev_rules = 0",
            "monitoring = 0",
            "use_lvmpolld = 0",
        ] {
            assert!(w[3].contains(setting), "{setting}");
        }
        assert_eq!(
            &w[4..],
            ["--activate", "y", "--ignoreactivationskip", "vg/thin-1"]
        );
        let cmd = l.command(&l.activate_argv(&v));
        assert!(cmd
            .get_envs()
            .any(|(k, v)| k == "DM_DISABLE_UDEV" && v == Some(OsStr::new("1"))));
        // dmsetup takes no lvm config, only the environment.
        assert_eq!(
            words(&l.pool_status_argv(&lv("vg/pool"))),
            ["dmsetup", "status", "vg-pool-tpool"]
        );
    }

    #[test]
    fn helper_argvs() {
        let l = udev()
            .with_lvm_binary("/opt/lvm")
            .with_dmsetup_binary("dms")
            .with_thin_delta_binary("td");
        let origin = lv("vg/root");
        assert_eq!(
            words(&l.snapshot_argv(&origin, "root.tick", true)),
            [
                "/opt/lvm",
                "lvcreate",
                "--snapshot",
                "--name",
                "root.tick",
                "--setactivationskip",
                "y",
                "--permission",
                "r",
                "vg/root"
            ]
        );
        assert!(!words(&l.snapshot_argv(&origin, "s", false)).contains(&"--permission".into()));
        assert_eq!(
            words(&l.deactivate_argv(&origin)),
            ["/opt/lvm", "lvchange", "--activate", "n", "vg/root"]
        );
        assert_eq!(
            words(&l.remove_argv(&origin)),
            ["/opt/lvm", "lvremove", "--force", "vg/root"]
        );
        assert_eq!(
            words(&l.rename_argv(&origin, "root.old")),
            ["/opt/lvm", "lvrename", "vg", "root", "root.old"]
        );
        assert_eq!(
            words(&l.lvs_argv("vg")),
            [
                "/opt/lvm",
                "lvs",
                "--reportformat",
                "basic",
                "--noheadings",
                "--nosuffix",
                "--units",
                "b",
                "--separator",
                "|",
                "-o",
                LVS_FIELDS,
                "vg"
            ]
        );
        let pool = lv("my-vg/pool");
        assert_eq!(
            words(&l.pool_message_argv(&pool, "reserve_metadata_snap")),
            [
                "dms",
                "message",
                "my--vg-pool-tpool",
                "0",
                "reserve_metadata_snap"
            ]
        );
        assert_eq!(
            words(&l.thin_delta_argv(&pool.pool_metadata_device(), 5, 7, false)),
            [
                "td",
                "-m",
                "--snap1",
                "5",
                "--snap2",
                "7",
                "/dev/mapper/my--vg-pool_tmeta"
            ]
        );
        assert_eq!(
            words(&l.thin_delta_argv(Path::new("m"), 1, 2, true))[..3],
            ["td", "-m", "--verbose"]
        );
        // A bad snapshot name is refused before anything runs.
        assert!(matches!(
            l.create_thin_snapshot(&origin, "--yes", false),
            Err(LvmError::InvalidName { .. })
        ));
    }

    #[test]
    fn lvs_lines() {
        let i = parse_lvs_line("  root|Vwi-a-tz--|10737418240|thin|pool|1").unwrap();
        assert_eq!(
            i,
            LvInfo {
                name: "root".into(),
                attr: "Vwi-a-tz--".into(),
                size_bytes: 10737418240,
                segtype: "thin".into(),
                pool_lv: Some("pool".into()),
                thin_id: Some(1),
            }
        );
        assert!(i.is_thin() && i.is_active() && !i.skips_activation() && !i.is_thin_pool());
        let s = parse_lvs_line("  root.tick|Vri---tz-k|10737418240|thin|pool|3 ").unwrap();
        assert!(s.skips_activation() && !s.is_active());
        let p = parse_lvs_line("pool|twi-aotz--|21474836480|thin-pool||").unwrap();
        assert!(p.is_thin_pool());
        assert_eq!((p.pool_lv, p.thin_id), (None, None));
        assert!(parse_lvs_line("root|x|12.00g|thin|pool|1").is_err());
        assert!(parse_lvs_line("root|x|12|thin").is_err());
        assert!(parse_lvs_line("root|x|12|thin|pool|one").is_err());
    }

    #[test]
    fn pool_status_lines() {
        let s = parse_pool_status(
            "0 41943040 thin-pool 3 157/4096 3/327680 - rw no_discard_passdown queue_if_no_space - 1024",
        )
        .unwrap();
        assert_eq!(
            s,
            PoolStatus {
                transaction_id: 3,
                used_metadata_blocks: 157,
                total_metadata_blocks: 4096,
                used_data_blocks: 3,
                total_data_blocks: 327680,
                held_metadata_root: None,
                mode: "rw".into(),
                needs_check: false,
            }
        );
        let s = parse_pool_status(
            "0 41943040 thin-pool 3 160/4096 3/327680 158 ro discard_passdown error_if_no_space needs_check 1024",
        )
        .unwrap();
        assert_eq!(s.held_metadata_root, Some(158));
        assert_eq!(s.mode, "ro");
        assert!(s.needs_check);
        // Older kernels print fewer trailing fields.
        let s = parse_pool_status("0 8 thin-pool 0 1/2 0/4 7 rw discard_passdown").unwrap();
        assert_eq!(s.held_metadata_root, Some(7));

        assert_eq!(
            parse_pool_status("0 41943040 thin-pool Fail"),
            Err(StatusProblem::Failed)
        );
        assert_eq!(
            parse_pool_status("0 41943040 thin-pool Error"),
            Err(StatusProblem::Failed)
        );
        for bad in [
            "",
            "0 8 linear",
            "0 8 thin 3 100",
            "0 8 thin-pool 3 1/2 0/4",
            "0 8 thin-pool 3 12 0/4 - rw",
            "0 8 thin-pool 3 1/2 0/4 x rw",
        ] {
            assert!(
                matches!(parse_pool_status(bad), Err(StatusProblem::Unparsable(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn runner_reports_argv_status_and_stderr() {
        let l = udev();
        let ok = l.run(&Argv::new("sh").arg("-c").arg("echo out")).unwrap();
        assert_eq!(ok.stdout, b"out\n");

        let argv = Argv::new("sh")
            .arg("-c")
            .arg("echo '  Volume group \"nope\" not found' >&2; exit 5");
        let e = l.run(&argv).unwrap_err();
        let LvmError::Failed {
            ref status,
            ref stderr,
            ..
        } = e
        else {
            panic!("{e:?}")
        };
        assert_eq!(status.code(), Some(5));
        assert!(stderr.contains("not found"));
        assert_eq!(
            e.to_string(),
            "sh: Volume group \"nope\" not found (`sh -c 'echo '\\''  Volume group \"nope\" \
             not found'\\'' >&2; exit 5'` failed, exit status: 5)"
        );
        // lvm is named by its subcommand, and every line it printed is kept.
        let e = LvmError::Failed {
            argv: Argv::new("lvm").arg("lvcreate").arg("--config").arg("x"),
            status: e_status(5),
            stderr: "  WARNING: Sum of all thin volume sizes exceeds pool.\n  Cannot create new thin volume, free metadata space in thin pool vg/pool reached threshold.\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "lvcreate: WARNING: Sum of all thin volume sizes exceeds pool.; Cannot create new \
             thin volume, free metadata space in thin pool vg/pool reached threshold. \
             (`lvm lvcreate --config x` failed, exit status: 5)"
        );

        let e = l
            .run(&Argv::new("/nonexistent/dmsetup").arg("status"))
            .unwrap_err();
        assert!(matches!(e, LvmError::Spawn { .. }));
        assert!(e
            .to_string()
            .starts_with("cannot run `/nonexistent/dmsetup status`: "));
    }

    fn e_status(code: i32) -> ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        ExitStatus::from_raw(code << 8)
    }

    /// A stand-in tool: a shell script in a temporary directory.
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn map(dir: &Path) -> DeltaMap {
        DeltaMap::create(&dir.join("deltamap"), 65536, 1024).unwrap()
    }

    const DELTA: &str = "<superblock uuid=\"\" time=\"1\" transaction=\"2\" data_block_size=\"128\" nr_data_blocks=\"0\">\n  <diff left=\"1\" right=\"2\">\n    <different begin=\"3\" length=\"2\"/>\n    <right_only begin=\"50\" length=\"2\"/>\n  </diff>\n</superblock>\n";

    #[test]
    fn thin_delta_streams_into_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("delta.xml");
        std::fs::write(&out, DELTA).unwrap();
        // The script checks it got the argv it should, then prints the document.
        let td = script(
            dir.path(),
            "thin_delta",
            &format!(
                "[ \"$*\" = \"-m --snap1 1 --snap2 2 /dev/mapper/vg-pool_tmeta\" ] || \
                 {{ echo \"bad args: $*\" >&2; exit 64; }}\ncat '{}'",
                out.display()
            ),
        );
        let l = udev().with_thin_delta_binary(&td);
        let mut m = map(dir.path());
        let s = l
            .thin_delta_mark(&lv("vg/pool").pool_metadata_device(), 1, 2, false, &mut m)
            .unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(3, 5), (50, 52)]);
        assert_eq!(s.changed_blocks(), 4);
    }

    #[test]
    fn thin_delta_failures() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = map(dir.path());
        let md = Path::new("md");

        // The tool fails: its status and stderr are the error, not the empty output.
        let td = script(
            dir.path(),
            "td-fail",
            "echo 'no current metadata snap' >&2; exit 1",
        );
        let e = udev()
            .with_thin_delta_binary(&td)
            .thin_delta_mark(md, 1, 2, false, &mut m)
            .unwrap_err();
        assert!(matches!(e, LvmError::Failed { .. }), "{e:?}");
        assert!(e.to_string().contains("no current metadata snap"), "{e}");

        // Exit 0 but truncated output: a parse error naming the problem.
        let td = script(
            dir.path(),
            "td-trunc",
            "printf '<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\">'; echo warning >&2",
        );
        let e = udev()
            .with_thin_delta_binary(&td)
            .thin_delta_mark(md, 1, 2, false, &mut m)
            .unwrap_err();
        assert!(
            matches!(
                e,
                LvmError::ThinDelta { ref source, .. }
                    if matches!(**source, ThinDeltaError::Truncated { .. })
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("truncated") && e.to_string().ends_with("warning"),
            "{e}"
        );

        // Garbage first, then far more output than the drain cap and a lot of stderr:
        // must neither deadlock nor read it all.
        let td = script(
            dir.path(),
            "td-garbage",
            "head -c 300000 /dev/zero | tr '\\0' e >&2; echo garbage; exec cat /dev/zero",
        );
        let e = udev()
            .with_thin_delta_binary(&td)
            .thin_delta_mark(md, 1, 2, false, &mut m)
            .unwrap_err();
        // Killed by us: reported as the tool failing (by a signal), with its stderr.
        let LvmError::Failed { status, stderr, .. } = e else {
            panic!("{e:?}")
        };
        assert_eq!(status.code(), None);
        assert_eq!(stderr.len() as u64, STDERR_CAP);

        // Output about other devices than asked for.
        let td = script(
            dir.path(),
            "td-other",
            &format!(
                "cat <<'EOF'\n{}EOF",
                DELTA.replace("right=\"2\"", "right=\"3\"")
            ),
        );
        let e = udev()
            .with_thin_delta_binary(&td)
            .thin_delta_mark(md, 1, 2, false, &mut m)
            .unwrap_err();
        assert!(matches!(e, LvmError::BadOutput { .. }), "{e:?}");
        m.clear();

        // Missing tool.
        let e = udev()
            .with_thin_delta_binary(dir.path().join("absent"))
            .thin_delta_mark(md, 1, 2, false, &mut m)
            .unwrap_err();
        assert!(matches!(e, LvmError::Spawn { .. }));
        assert_eq!(m.count(), 0);
    }

    /// A fake `dmsetup` keeping the held root in a file, as the kernel would.
    fn fake_dmsetup(dir: &Path) -> (PathBuf, PathBuf) {
        let state = dir.join("held");
        std::fs::write(&state, "-").unwrap();
        let log = dir.join("log");
        let body = format!(
            r#"S='{s}'; echo "$*" >> '{l}'
case "$1 $2 $4" in
  "status vg-pool-tpool ") echo "0 8 thin-pool 1 10/100 0/50 $(cat "$S") rw discard_passdown queue_if_no_space - 10" ;;
  "message vg-pool-tpool reserve_metadata_snap") [ "$(cat "$S")" = - ] || {{ echo 'device-mapper: message ioctl failed: Device or resource busy' >&2; exit 1; }}; echo 42 > "$S" ;;
  "message vg-pool-tpool release_metadata_snap") [ "$(cat "$S")" != - ] || {{ echo 'device-mapper: message ioctl failed: Invalid argument' >&2; exit 1; }}; echo - > "$S" ;;
  *) echo "Device does not exist." >&2; exit 1 ;;
esac"#,
            s = state.display(),
            l = log.display()
        );
        (script(dir, "dmsetup", &body), state)
    }

    #[test]
    fn metadata_snapshot_guard() {
        let dir = tempfile::tempdir().unwrap();
        let (dms, state) = fake_dmsetup(dir.path());
        let l = udev().with_dmsetup_binary(&dms);
        let pool = lv("vg/pool");
        let held = || std::fs::read_to_string(&state).unwrap().trim().to_string();

        assert_eq!(l.metadata_snap_held(&pool).unwrap(), None);
        // Release with nothing held: a no-op, no message sent.
        assert!(!l.release_metadata_snap(&pool, 42).unwrap());
        {
            let g = MetadataSnapGuard::reserve(&l, &pool).unwrap();
            assert_eq!(held(), "42");
            assert_eq!(g.root(), 42);
            assert_eq!(g.metadata_device(), Path::new("/dev/mapper/vg-pool_tmeta"));
            // A second reservation is refused, naming the reason before the command.
            let e = MetadataSnapGuard::reserve(&l, &pool)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("(root block 42) that sparsebak did not reserve"),
                "{e}"
            );
            assert!(
                e.find("is probably using it")
                    < e.find("dmsetup message vg-pool-tpool 0 release_metadata_snap"),
                "{e}"
            );
            assert_eq!(held(), "42");
        }
        assert_eq!(held(), "-", "dropping the guard releases");

        // Someone else's reservation: refused, and a release for another root leaves it.
        std::fs::write(&state, "7").unwrap();
        assert!(MetadataSnapGuard::reserve(&l, &pool).is_err());
        assert!(!l.release_metadata_snap(&pool, 42).unwrap());
        assert_eq!(held(), "7");
        std::fs::write(&state, "-").unwrap();

        // Explicit release; releasing twice is fine.
        let g = MetadataSnapGuard::reserve(&l, &pool).unwrap();
        g.release().unwrap();
        assert_eq!(held(), "-");
        assert!(!l.release_metadata_snap(&pool, 42).unwrap());

        // Someone else releases ours and reserves their own under our feet: the guard's
        // drop leaves theirs alone and does not complain.
        let g = MetadataSnapGuard::reserve(&l, &pool).unwrap();
        std::fs::write(&state, "9").unwrap();
        drop(g);
        assert_eq!(held(), "9");

        let messages = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert_eq!(
            messages
                .lines()
                .filter(|l| l.contains("release_metadata_snap"))
                .count(),
            2,
            "{messages}"
        );

        // A pool that is not active.
        let e = l.pool_status(&lv("vg/other")).unwrap_err();
        assert!(e.to_string().contains("Device does not exist"), "{e}");
    }
}
