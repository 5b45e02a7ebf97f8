//! A tape destination's drive and changer, opened from its configuration.
//!
//! `tape = /dev/nstN` opens the `st` drive, `tape = virtual:DIR` the virtual library
//! in DIR (created on first use with `virtual_slots` cartridges of
//! `virtual_capacity` bytes, throttled to `virtual_speed`). The drive is put in
//! fixed-block mode with the destination's `blocksize` on every open, and checked;
//! with no tape in it that waits for [`ready`] after a load.
//!
//! A virtual library is held by one handle at a time (an exclusive lock on its
//! folder), so a command that needs both the drive and the changer opens them
//! together with [`open`]; [`open_drive`] and [`open_changer`] are for the commands
//! that need only one of them.

use crate::config::{ChangerDevice, DestConfig, TapeConfig, TapeDevice};

use super::changer::{Changer, ChangerError, MtxChanger};
use super::drive::{TapeDrive, TapeError};
use super::st::StDrive;
use super::virtual_library::{VirtualLibrary, VirtualLibraryOptions};

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("destination {dest} is not a tape destination (it has no `tape = ...`)")]
    NotTape { dest: String },
    #[error(transparent)]
    Tape(#[from] TapeError),
}

/// A tape destination's drive, and its changer when it has one.
pub struct TapeSet {
    pub drive: Box<dyn TapeDrive + Send>,
    pub changer: Option<Box<dyn Changer + Send>>,
    /// The virtual library, for a virtual destination.
    pub library: Option<VirtualLibrary>,
    /// The destination's block size.
    pub block_size: usize,
}

fn tape_config(dest: &DestConfig) -> Result<&TapeConfig, OpenError> {
    dest.tape.as_ref().ok_or_else(|| OpenError::NotTape {
        dest: dest.name.clone(),
    })
}

/// Open the virtual library of a `tape = virtual:DIR` destination (creating it).
pub fn open_library(t: &TapeConfig) -> Result<Option<VirtualLibrary>, TapeError> {
    match &t.device {
        TapeDevice::Virtual(dir) => VirtualLibrary::open(
            dir,
            &VirtualLibraryOptions {
                slots: t.virtual_slots,
                capacity: t.virtual_capacity,
                speed: t.virtual_speed,
            },
        )
        .map(Some),
        TapeDevice::St(_) => Ok(None),
    }
}

/// Set the drive to the destination's block size and check it took. Without a tape
/// in the drive this is left for later (call it again after a load).
pub fn ready(drive: &mut dyn TapeDrive, block_size: usize) -> Result<(), TapeError> {
    match drive.status() {
        Ok(st) if !st.online => return Ok(()),
        Err(TapeError::NoTape { .. }) => return Ok(()),
        _ => {}
    }
    match drive.set_block_size(block_size) {
        Ok(()) => Ok(()),
        Err(TapeError::NoTape { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Open the destination's drive and changer together.
pub fn open(dest: &DestConfig) -> Result<TapeSet, OpenError> {
    let t = tape_config(dest)?;
    let library = open_library(t)?;
    let mut drive: Box<dyn TapeDrive + Send> = match (&t.device, &library) {
        (TapeDevice::Virtual(_), Some(lib)) => Box::new(lib.drive()),
        (TapeDevice::St(path), _) => Box::new(StDrive::open(path)?),
        (TapeDevice::Virtual(dir), None) => {
            return Err(TapeError::Refused {
                device: format!("virtual:{}", dir.display()),
                reason: "the virtual library could not be opened".into(),
            }
            .into())
        }
    };
    ready(drive.as_mut(), t.block_size)?;
    let changer: Option<Box<dyn Changer + Send>> = match (&t.changer, &library) {
        (None, _) => None,
        (Some(ChangerDevice::Virtual(_)), Some(lib)) => Some(Box::new(lib.changer())),
        (Some(ChangerDevice::Virtual(dir)), None) => {
            return Err(TapeError::Refused {
                device: format!("virtual:{}", dir.display()),
                reason: "a virtual changer needs the virtual library as its drive".into(),
            }
            .into())
        }
        (Some(ChangerDevice::Mtx(dev)), _) => Some(Box::new(MtxChanger::new(dev))),
    };
    Ok(TapeSet {
        drive,
        changer,
        library,
        block_size: t.block_size,
    })
}

/// Open the destination's drive alone, in fixed-block mode.
pub fn open_drive(dest: &DestConfig) -> Result<Box<dyn TapeDrive + Send>, OpenError> {
    Ok(open(dest)?.drive)
}

/// Open the destination's changer alone (`None` when it has none).
pub fn open_changer(dest: &DestConfig) -> Result<Option<Box<dyn Changer + Send>>, OpenError> {
    Ok(open(dest)?.changer)
}

impl TapeSet {
    /// The changer, or an error saying the destination has none.
    pub fn changer(&mut self, dest: &str) -> Result<&mut (dyn Changer + Send), ChangerError> {
        match self.changer.as_deref_mut() {
            Some(c) => Ok(c),
            None => Err(ChangerError::Element {
                changer: format!("destination {dest}"),
                reason: "no changer is configured (changer = /dev/sgN)".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn dest(text: &str, name: &str) -> DestConfig {
        let c = Config::parse(text, std::path::Path::new("t.ini")).unwrap();
        c.dests.into_iter().find(|d| d.name == name).unwrap()
    }

    #[test]
    fn opens_a_virtual_library_in_fixed_blocks() {
        let t = tempfile::tempdir().unwrap();
        let text = format!(
            "[var]\ndestdir = /a\n[dest:vt]\ntape = virtual:{}\nvirtual_slots = 2\n\
             virtual_capacity = 4M\nblocksize = 32K\n",
            t.path().display()
        );
        let d = dest(&text, "vt");
        {
            let mut set = open(&d).unwrap();
            assert_eq!(set.block_size, 32768);
            assert!(set.library.is_some());
            // No tape yet: the block size waits for a load.
            let inv = set.changer("vt").unwrap().inventory().unwrap();
            assert_eq!(inv.slots.len(), 2);
            set.changer("vt").unwrap().load(2, 0).unwrap();
            ready(set.drive.as_mut(), set.block_size).unwrap();
            assert_eq!(set.drive.status().unwrap().block_size, 32768);
            // One handle at a time.
            assert!(matches!(
                open_drive(&d),
                Err(OpenError::Tape(TapeError::Busy { .. }))
            ));
        }
        // Opened again with the tape loaded, the drive is set at once.
        let mut drive = open_drive(&d).unwrap();
        assert_eq!(drive.status().unwrap().block_size, 32768);
        drop(drive);
        assert!(open_changer(&d).unwrap().is_some());
        let e = open(&dest(&text, "default")).err().unwrap();
        assert_eq!(
            e.to_string(),
            "destination default is not a tape destination (it has no `tape = ...`)"
        );
    }
}
