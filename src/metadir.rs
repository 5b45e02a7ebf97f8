//! The source-side state of a volume, `<metadir>/<volume>`: where it is, and its lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, LockGuard, Mode};

/// How long `send` and `monitor` wait for each other on one volume.
pub const META_LOCK_WAIT: Duration = Duration::from_secs(120);

/// `<metadir>/<volume>`.
pub fn meta_dir(config: &Config, name: &str) -> PathBuf {
    config.metadir.join(name)
}

/// Lock a volume's source-side state (`<metadir>/<volume>/lock`; the folder is
/// created if missing).
pub fn lock_meta(config: &Config, name: &str) -> Result<LockGuard> {
    let dir = meta_dir(config, name);
    create_private_dir(&dir)?;
    lock::lock(
        &dir.join("lock"),
        Mode::Exclusive,
        META_LOCK_WAIT,
        &format!("volume {name} on this machine"),
    )
}

/// Create a folder readable only by its owner (metadata can reveal volume layout).
pub fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if p.exists() && !p.is_dir() {
        return Err(Error::Msg(format!(
            "{} exists and is not a folder; move it away",
            p.display()
        )));
    }
    if !p.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .at(p)?;
    }
    Ok(())
}
