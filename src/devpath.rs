//! Paths under `/dev` as targets: a restore goes into a device, never into a new
//! regular file in devtmpfs (which lives in RAM and would later hide the device node
//! that belongs there, e.g. an LV's link at its next activation).
//!
//! `/dev/<vg>/<lv>` of an LV that exists but is inactive (as Qubes keeps a stopped VM's
//! volumes) has no node; [`activate_named_lv`] activates it for the restore and puts it
//! back as it was afterwards.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::source::lvm::{LvRef, Lvm};

/// Whether `path` is in `/dev`.
pub fn is_under_dev(path: &Path) -> bool {
    sparsebak_format::output::resolved(path).starts_with("/dev")
}

/// An LV activated for a restore; deactivated again when dropped.
#[derive(Debug)]
pub struct ActivatedLv {
    lvm: Lvm,
    lv: LvRef,
    /// The device node to write.
    pub device: PathBuf,
}

impl Drop for ActivatedLv {
    fn drop(&mut self) {
        match self.lvm.deactivate(&self.lv) {
            Ok(()) => tracing::info!("{}: deactivated again", self.lv),
            Err(e) => tracing::warn!("{}: could not deactivate it again: {e}", self.lv),
        }
    }
}

/// If `path` does not exist and names `/dev/<vg>/<lv>` of an existing, inactive LV,
/// activate the LV and return it (with the node to write); it is deactivated when the
/// result is dropped. `Ok(None)` for every other path.
pub fn activate_named_lv(path: &Path) -> Result<Option<ActivatedLv>> {
    if path.symlink_metadata().is_ok() {
        return Ok(None);
    }
    let full = sparsebak_format::output::resolved(path);
    let Ok(rest) = full.strip_prefix("/dev") else {
        return Ok(None);
    };
    let parts: Vec<&str> = rest.iter().filter_map(|c| c.to_str()).collect();
    let [vg, name] = parts[..] else {
        return Ok(None);
    };
    if vg == "mapper" {
        return Ok(None);
    }
    let Ok(lv) = LvRef::new(vg, name) else {
        return Ok(None);
    };
    let lvm = Lvm::new();
    // No such VG (or no lvm at all): not an LV path.
    let Ok(Some(info)) = lvm.lv_info(&lv) else {
        return Ok(None);
    };
    if info.is_active() {
        return Ok(None);
    }
    let hint = |why: String| {
        Error::Msg(format!(
            "{}: LV {lv} is inactive and {why}; activate it with `lvchange -ay {lv}` (add -K \
             if it skips activation) and receive again",
            path.display()
        ))
    };
    tracing::info!("{lv} is inactive; activating it for the restore");
    lvm.activate(&lv)
        .map_err(|e| hint(format!("could not be activated ({e})")))?;
    let activated = ActivatedLv {
        lvm,
        lv: lv.clone(),
        device: Path::new("/dev/mapper").join(lv.dm_name()),
    };
    if !activated.device.exists() {
        return Err(hint(format!(
            "has no device node {} after activation",
            activated.device.display()
        )));
    }
    Ok(Some(activated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_paths() {
        assert!(is_under_dev(Path::new("/dev/qubes_dom0/vm-x-private")));
        assert!(is_under_dev(Path::new("/dev/nothing-here")));
        assert!(is_under_dev(Path::new("/tmp/../dev/x")));
        assert!(!is_under_dev(Path::new("/devices/x")));
        assert!(!is_under_dev(Path::new("/tmp/dev/x")));
    }

    #[test]
    fn only_dev_vg_lv_paths_are_looked_up() {
        for p in [
            "/tmp/x",
            "/dev/mapper/vg-lv",
            "/dev/a/b/c",
            "/dev/x",
            "/dev/vg/-x",
        ] {
            assert!(activate_named_lv(Path::new(p)).unwrap().is_none(), "{p}");
        }
    }
}
