//! Throwaway filesystems for integration tests: a sparse image file, formatted, attached
//! to a loop device and mounted under a temporary directory.
//!
//! The [`LoopFs`] guard unmounts and detaches in `Drop`, which also runs while a failed
//! test unwinds, so a panicking assertion leaves no mount or loop device behind.
//!
//! Needs root. Without it (or without the `mkfs` tool, when it cannot be installed, or
//! without loop devices) [`LoopFs::new`] returns `None` after printing a loud `SKIP`
//! line, unless the `CI` environment variable is set: then it panics, so a CI runner
//! that lost its privileges fails instead of silently testing nothing.

#![allow(dead_code)] // each test binary uses its own subset

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// Filesystems the harness can make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    Btrfs,
    /// XFS with reflink enabled.
    Xfs,
    /// ext4: no reflinks, for the error paths.
    Ext4,
}

impl FsKind {
    fn mkfs(self) -> &'static str {
        match self {
            FsKind::Btrfs => "mkfs.btrfs",
            FsKind::Xfs => "mkfs.xfs",
            FsKind::Ext4 => "mkfs.ext4",
        }
    }

    fn package(self) -> &'static str {
        match self {
            FsKind::Btrfs => "btrfs-progs",
            FsKind::Xfs => "xfsprogs",
            FsKind::Ext4 => "e2fsprogs",
        }
    }

    fn mkfs_args(self) -> &'static [&'static str] {
        match self {
            FsKind::Btrfs => &["-q"],
            FsKind::Xfs => &["-q", "-m", "reflink=1"],
            FsKind::Ext4 => &["-q", "-F"],
        }
    }

    fn fstype(self) -> &'static str {
        match self {
            FsKind::Btrfs => "btrfs",
            FsKind::Xfs => "xfs",
            FsKind::Ext4 => "ext4",
        }
    }
}

/// A mounted loop filesystem; unmounted, detached and deleted on drop.
pub struct LoopFs {
    kind: FsKind,
    mnt: PathBuf,
    loopdev: Option<String>,
    mounted: bool,
    // Dropped last (fields drop in order): the image and mount point live here.
    dir: tempfile::TempDir,
}

/// Size of the backing image: sparse, so it costs only what the filesystem writes.
/// XFS refuses filesystems below 300 MiB.
const IMAGE_SIZE: u64 = 512 << 20;

/// apt-get and dpkg take a lock; tests run in parallel threads.
static INSTALL: Mutex<()> = Mutex::new(());

/// Skip (print and return `None`) or, when `CI` is set, fail.
fn skip(test: &str, why: &str) -> Option<LoopFs> {
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
    }
    // Written to the stderr handle, not with eprintln!, which the test harness captures
    // (and shows only for failing tests).
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIP: needs root: {test}: {why} !!!!!!!!\n"
    );
    None
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether `tool` is found in PATH or the sbin directories (often not in a user PATH).
fn have_tool(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/sbin", "/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .any(|d| d.join(tool).is_file())
}

/// Install `package` with apt-get when `tool` is missing. Returns whether `tool` is
/// there afterwards.
fn ensure_tool(tool: &str, package: &str) -> bool {
    if have_tool(tool) {
        return true;
    }
    let _lock = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    if have_tool(tool) {
        return true;
    }
    eprintln!("{tool} missing: apt-get install -y {package}");
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => eprintln!("apt-get install {package}: {s}"),
        Err(e) => eprintln!("apt-get: {e}"),
    }
    have_tool(tool)
}

/// Run a command; on failure, its stderr in the error.
fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl LoopFs {
    /// Make and mount a fresh `kind` filesystem with extra mount `options` (e.g.
    /// `"compress-force=zstd"`, or `""`). `test` names the caller in skip messages.
    ///
    /// Returns `None` when the test must be skipped (see the module documentation).
    /// Panics on unexpected failures once the prerequisites are there.
    pub fn new(test: &str, kind: FsKind, options: &str) -> Option<LoopFs> {
        Self::sized(test, kind, options, IMAGE_SIZE, &[])
    }

    /// Like [`LoopFs::new`], on an image of `size` bytes and with `mkfs_extra` added to
    /// the mkfs arguments (e.g. `["-N", "64"]` for an ext4 with few inodes): small
    /// filesystems for the tests of a full destination.
    pub fn sized(
        test: &str,
        kind: FsKind,
        options: &str,
        size: u64,
        mkfs_extra: &[&str],
    ) -> Option<LoopFs> {
        if !is_root() {
            return skip(test, "not running as root (loop devices and mount)");
        }
        if !ensure_tool(kind.mkfs(), kind.package()) {
            return skip(
                test,
                &format!(
                    "{} missing and `apt-get install {}` failed",
                    kind.mkfs(),
                    kind.package()
                ),
            );
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut fs = LoopFs {
            kind,
            mnt: dir.path().join("mnt"),
            loopdev: None,
            mounted: false,
            dir,
        };
        // From here on, `fs` cleans up whatever was set up if a step fails or panics.
        let image = fs.dir.path().join("fs.img");
        let f = std::fs::File::create(&image).expect("create image file");
        f.set_len(size).expect("size image file");
        drop(f);
        std::fs::create_dir(&fs.mnt).expect("mount point");
        run(Command::new(kind.mkfs())
            .args(kind.mkfs_args())
            .args(mkfs_extra)
            .arg(&image))
        .unwrap_or_else(|e| panic!("{e}"));
        match run(Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&image))
        {
            Ok(dev) if dev.starts_with("/dev/") => fs.loopdev = Some(dev),
            Ok(dev) => panic!("losetup printed {dev:?}"),
            Err(e) => return skip(test, &format!("no loop device: {e}")),
        }
        let dev = fs.loopdev.clone().unwrap_or_default();
        let mut mount = Command::new("mount");
        mount.args(["-t", kind.fstype()]);
        if !options.is_empty() {
            mount.args(["-o", options]);
        }
        run(mount.arg(&dev).arg(&fs.mnt)).unwrap_or_else(|e| panic!("{e}"));
        fs.mounted = true;
        Some(fs)
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    pub fn kind(&self) -> FsKind {
        self.kind
    }

    /// `mount -o remount,OPTIONS` (e.g. `"ro"`, `"rw"`).
    pub fn remount(&self, options: &str) {
        run(Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.mnt))
        .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Unmount, keeping the loop device (as when a backup disk is unplugged): the
    /// mount point stays as an empty folder.
    pub fn unmount(&mut self) {
        run(Command::new("umount").arg(&self.mnt)).unwrap_or_else(|e| panic!("{e}"));
        self.mounted = false;
    }

    /// Mount the filesystem again after [`LoopFs::unmount`].
    pub fn mount(&mut self) {
        let dev = self.loopdev.clone().expect("loop device");
        run(Command::new("mount")
            .args(["-t", self.kind.fstype()])
            .arg(&dev)
            .arg(&self.mnt))
        .unwrap_or_else(|e| panic!("{e}"));
        self.mounted = true;
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        // Never panic here: this may run during a panic, and a second one aborts.
        if self.mounted {
            if let Err(e) = run(Command::new("umount").arg(&self.mnt)) {
                eprintln!("{e}; retrying lazily");
                if let Err(e) = run(Command::new("umount").arg("-l").arg(&self.mnt)) {
                    eprintln!("{e}");
                }
            }
            self.mounted = false;
        }
        if let Some(dev) = self.loopdev.take() {
            if let Err(e) = run(Command::new("losetup").arg("-d").arg(&dev)) {
                eprintln!("{e}");
            }
        }
    }
}
