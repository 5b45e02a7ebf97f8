//! Medium changers: what is in which slot and drive, and moving cartridges.
//!
//! [`MtxChanger`] drives a real library through `mtx -f /dev/sgN ...` and reads its
//! `status` output; [`VirtualChanger`] moves the cartridges of a virtual library.
//! Slots are numbered from 1 and drives from 0, as `mtx` numbers them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::drive::TapeError;
use super::virtual_library::VirtualLibrary;

#[derive(Debug, thiserror::Error)]
pub enum ChangerError {
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    /// The changer command ran and failed.
    #[error("`{argv}` failed ({status}): {stderr}")]
    Command {
        argv: String,
        status: String,
        stderr: String,
    },
    /// `mtx status` printed something this parser does not know.
    #[error("{changer}: cannot read `mtx status` output, line {line}: {text:?}: {reason}")]
    Parse {
        changer: String,
        line: usize,
        text: String,
        reason: String,
    },
    /// A move the changer's contents do not allow (empty source, full target, no such
    /// element).
    #[error("{changer}: {reason}")]
    Element { changer: String, reason: String },
    #[error(transparent)]
    Tape(#[from] TapeError),
}

/// A drive as the changer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveElement {
    pub number: u32,
    pub full: bool,
    pub barcode: Option<String>,
    /// The slot the cartridge was loaded from, if the changer knows.
    pub from_slot: Option<u32>,
}

/// A storage slot, or an import/export slot (mail slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotElement {
    pub number: u32,
    pub full: bool,
    pub barcode: Option<String>,
    pub import_export: bool,
}

/// What a changer holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub drives: Vec<DriveElement>,
    pub slots: Vec<SlotElement>,
}

impl Inventory {
    /// The storage (not import/export) slot holding `barcode`.
    pub fn slot_of(&self, barcode: &str) -> Option<u32> {
        self.slots
            .iter()
            .find(|s| !s.import_export && s.barcode.as_deref() == Some(barcode))
            .map(|s| s.number)
    }

    /// The drive holding `barcode`.
    pub fn drive_of(&self, barcode: &str) -> Option<u32> {
        self.drives
            .iter()
            .find(|d| d.barcode.as_deref() == Some(barcode))
            .map(|d| d.number)
    }
}

pub trait Changer {
    fn name(&self) -> &str;
    fn inventory(&mut self) -> Result<Inventory, ChangerError>;
    /// Move the cartridge in `slot` into `drive`.
    fn load(&mut self, slot: u32, drive: u32) -> Result<(), ChangerError>;
    /// Move the cartridge in `drive` into `slot`, or back where it came from.
    fn unload(&mut self, drive: u32, slot: Option<u32>) -> Result<(), ChangerError>;
    /// Move a cartridge from one slot to another.
    fn transfer(&mut self, from: u32, to: u32) -> Result<(), ChangerError>;

    /// Put the cartridge `barcode` into `drive`, unloading whatever is there.
    fn load_barcode(&mut self, barcode: &str, drive: u32) -> Result<(), ChangerError> {
        let inv = self.inventory()?;
        if inv.drive_of(barcode) == Some(drive) {
            return Ok(());
        }
        let Some(slot) = inv.slot_of(barcode) else {
            return Err(ChangerError::Element {
                changer: self.name().to_string(),
                reason: format!("no slot holds cartridge {barcode}"),
            });
        };
        if inv.drives.iter().any(|d| d.number == drive && d.full) {
            self.unload(drive, None)?;
        }
        self.load(slot, drive)
    }
}

/// A library driven by `mtx`.
#[derive(Debug, Clone)]
pub struct MtxChanger {
    device: PathBuf,
    program: PathBuf,
    name: String,
}

impl MtxChanger {
    /// The changer at `device` (an sg device such as `/dev/sg1`).
    pub fn new(device: &Path) -> MtxChanger {
        MtxChanger::with_program(device, Path::new("mtx"))
    }

    /// The same with another `mtx` program.
    pub fn with_program(device: &Path, program: &Path) -> MtxChanger {
        MtxChanger {
            device: device.to_path_buf(),
            program: program.to_path_buf(),
            name: device.display().to_string(),
        }
    }

    /// The argument vector (without the program) for `args`.
    pub fn argv(&self, args: &[String]) -> Vec<std::ffi::OsString> {
        let mut v = vec!["-f".into(), self.device.clone().into_os_string()];
        v.extend(args.iter().map(Into::into));
        v
    }

    fn run(&self, args: &[String]) -> Result<String, ChangerError> {
        let argv = self.argv(args);
        let shown = std::iter::once(self.program.display().to_string())
            .chain(argv.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::debug!(command = %shown, "running changer command");
        let out = Command::new(&self.program)
            .args(&argv)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| ChangerError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(ChangerError::Command {
                argv: shown,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Changer for MtxChanger {
    fn name(&self) -> &str {
        &self.name
    }

    fn inventory(&mut self) -> Result<Inventory, ChangerError> {
        let out = self.run(&["status".into()])?;
        parse_mtx_status(&self.name, &out)
    }

    fn load(&mut self, slot: u32, drive: u32) -> Result<(), ChangerError> {
        self.run(&["load".into(), slot.to_string(), drive.to_string()])
            .map(drop)
    }

    fn unload(&mut self, drive: u32, slot: Option<u32>) -> Result<(), ChangerError> {
        let slot = match slot {
            Some(s) => s,
            None => {
                let inv = self.inventory()?;
                let from = inv
                    .drives
                    .iter()
                    .find(|d| d.number == drive)
                    .and_then(|d| d.from_slot);
                from.ok_or_else(|| ChangerError::Element {
                    changer: self.name.clone(),
                    reason: format!(
                        "the slot the cartridge in drive {drive} came from is unknown; name one"
                    ),
                })?
            }
        };
        self.run(&["unload".into(), slot.to_string(), drive.to_string()])
            .map(drop)
    }

    fn transfer(&mut self, from: u32, to: u32) -> Result<(), ChangerError> {
        self.run(&["transfer".into(), from.to_string(), to.to_string()])
            .map(drop)
    }
}

/// Read `mtx status` output.
///
/// ```text
///   Storage Changer /dev/sg1:2 Drives, 8 Slots ( 1 Import/Export )
/// Data Transfer Element 0:Full (Storage Element 3 Loaded):VolumeTag = SPB003L8
/// Data Transfer Element 1:Empty
///       Storage Element 1:Full :VolumeTag=SPB001L8
///       Storage Element 2:Empty
///       Storage Element 8 IMPORT/EXPORT:Empty
/// ```
///
/// The counts in the first line are checked against the elements listed.
pub fn parse_mtx_status(changer: &str, text: &str) -> Result<Inventory, ChangerError> {
    let mut inv = Inventory::default();
    let mut counts = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let err = |reason: &str| ChangerError::Parse {
            changer: changer.to_string(),
            line: i + 1,
            text: raw.to_string(),
            reason: reason.to_string(),
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("Storage Changer ") {
            counts = Some(parse_header(rest).ok_or_else(|| err("bad header"))?);
        } else if let Some(rest) = line.strip_prefix("Data Transfer Element ") {
            let (num, state) = rest.split_once(':').ok_or_else(|| err("no ':'"))?;
            let number = num.trim().parse().map_err(|_| err("bad drive number"))?;
            let (full, from_slot, barcode) =
                parse_drive_state(state).ok_or_else(|| err("bad drive state"))?;
            inv.drives.push(DriveElement {
                number,
                full,
                barcode,
                from_slot,
            });
        } else if let Some(rest) = line.strip_prefix("Storage Element ") {
            let (head, state) = rest.split_once(':').ok_or_else(|| err("no ':'"))?;
            let (num, import_export) = match head.trim().strip_suffix("IMPORT/EXPORT") {
                Some(n) => (n.trim(), true),
                None => (head.trim(), false),
            };
            let number = num.parse().map_err(|_| err("bad slot number"))?;
            let (full, barcode) = parse_full(state).ok_or_else(|| err("bad slot state"))?;
            inv.slots.push(SlotElement {
                number,
                full,
                barcode,
                import_export,
            });
        } else {
            return Err(err("unknown line"));
        }
    }
    let Some((drives, slots, ie)) = counts else {
        return Err(ChangerError::Parse {
            changer: changer.to_string(),
            line: 0,
            text: String::new(),
            reason: "no \"Storage Changer\" header".into(),
        });
    };
    let ie_seen = inv.slots.iter().filter(|s| s.import_export).count();
    if inv.drives.len() != drives || inv.slots.len() != slots || ie_seen != ie {
        return Err(ChangerError::Parse {
            changer: changer.to_string(),
            line: 1,
            text: String::new(),
            reason: format!(
                "the header says {drives} drives, {slots} slots ({ie} import/export) but {} drives, {} slots ({ie_seen} import/export) are listed",
                inv.drives.len(),
                inv.slots.len()
            ),
        });
    }
    Ok(inv)
}

/// `/dev/sg1:2 Drives, 8 Slots ( 1 Import/Export )` → (2, 8, 1).
fn parse_header(rest: &str) -> Option<(usize, usize, usize)> {
    let (_, counts) = rest.rsplit_once(':')?;
    let words: Vec<&str> = counts
        .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
        .filter(|w| !w.is_empty())
        .collect();
    match words.as_slice() {
        [d, "Drives", s, "Slots", i, "Import/Export"] => {
            Some((d.parse().ok()?, s.parse().ok()?, i.parse().ok()?))
        }
        [d, "Drives", s, "Slots"] => Some((d.parse().ok()?, s.parse().ok()?, 0)),
        _ => None,
    }
}

/// `Full :VolumeTag=X`, `Full`, `Empty` (and `:AlternateVolumeTag` after the tag).
fn parse_full(state: &str) -> Option<(bool, Option<String>)> {
    let state = state.trim();
    if state == "Empty" || state.starts_with("Empty:") || state.starts_with("Empty ") {
        return Some((false, None));
    }
    let rest = state.strip_prefix("Full")?.trim_start();
    Some((true, volume_tag(rest)?))
}

fn volume_tag(rest: &str) -> Option<Option<String>> {
    if rest.is_empty() {
        return Some(None);
    }
    let rest = rest.strip_prefix(':')?.trim_start();
    let tag = rest.strip_prefix("VolumeTag")?.trim_start();
    let tag = tag.strip_prefix('=')?;
    let tag = tag.split(":AlternateVolumeTag").next().unwrap_or("").trim();
    Some((!tag.is_empty()).then(|| tag.to_string()))
}

/// `Full (Storage Element 3 Loaded):VolumeTag = X`, `Empty`.
fn parse_drive_state(state: &str) -> Option<(bool, Option<u32>, Option<String>)> {
    let state = state.trim();
    if state == "Empty" {
        return Some((false, None, None));
    }
    let mut rest = state.strip_prefix("Full")?.trim_start();
    let mut from = None;
    if let Some(r) = rest.strip_prefix('(') {
        let (inner, after) = r.split_once(')')?;
        rest = after.trim_start();
        let inner = inner.trim();
        if inner != "Unknown Storage Element Loaded" {
            let n = inner
                .strip_prefix("Storage Element ")?
                .strip_suffix("Loaded")?
                .trim();
            from = Some(n.parse().ok()?);
        }
    }
    Some((true, from, volume_tag(rest)?))
}

/// The changer of a [`VirtualLibrary`]: one drive (0) and its slots.
#[derive(Debug, Clone)]
pub struct VirtualChanger {
    lib: VirtualLibrary,
}

impl VirtualChanger {
    pub(crate) fn new(lib: VirtualLibrary) -> VirtualChanger {
        VirtualChanger { lib }
    }
}

impl Changer for VirtualChanger {
    fn name(&self) -> &str {
        self.lib.name()
    }

    fn inventory(&mut self) -> Result<Inventory, ChangerError> {
        Ok(self.lib.inventory())
    }

    fn load(&mut self, slot: u32, drive: u32) -> Result<(), ChangerError> {
        self.lib.load(slot, drive)
    }

    fn unload(&mut self, drive: u32, slot: Option<u32>) -> Result<(), ChangerError> {
        self.lib.unload(drive, slot)
    }

    fn transfer(&mut self, from: u32, to: u32) -> Result<(), ChangerError> {
        self.lib.transfer(from, to)
    }
}
