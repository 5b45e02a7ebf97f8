//! Loop devices over plain files, for receive targets (needs root; see `need_root`).

#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file, detached on drop (also when the test fails).
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// Attach `backing` with logical blocks of `sector` bytes (512 or 4096). Without a
    /// loop device: `None` after a SKIP line, or a panic when `CI` is set.
    pub fn new(test: &str, backing: &Path, sector: u32) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["--find", "--show", "--sector-size", &sector.to_string()])
            .arg(backing)
            .output();
        match o {
            Ok(o) if o.status.success() => {
                let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
                Some(Loop { dev: dev.into() })
            }
            o => {
                let why = format!("losetup failed: {o:?}");
                if std::env::var_os("CI").is_some() {
                    panic!("{test}: {why}; CI is set, so this is a failure, not a skip");
                }
                eprintln!("SKIP {test}: {why}");
                None
            }
        }
    }

    /// Drop what the page cache holds of the device, so the backing file and the
    /// device agree.
    pub fn flush(&self) {
        let _ = Command::new("blockdev")
            .arg("--flushbufs")
            .arg(&self.dev)
            .status();
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

/// Whether the test may run: root, or (not root) a SKIP line, or a panic under CI.
pub fn need_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs root, and CI runs as root");
        }
        eprintln!("SKIP {test}: needs root (loop devices, chown)");
    }
    root
}
