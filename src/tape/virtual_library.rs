//! A tape library kept in a folder: slots holding cartridges with barcodes, one drive.
//!
//! It keeps what a real library would: cartridges are files of blocks and filemarks
//! ([`super::virtual_drive`]), each with its capacity and early-warning zone; the
//! library state (which cartridge is in which slot, which one is in the drive and the
//! slot it came from, write protection) is a small text file replaced atomically. The
//! library is created on first use with `slots` cartridges, one per slot; opening it
//! again with more slots adds slots with new cartridges, fewer is refused.
//!
//! One run uses a library at a time: it holds an exclusive `flock` on the folder's
//! `lock` file for as long as any handle (library, drive, changer) lives.
//!
//! The layout is in docs/FORMAT.md, "Virtual tape library".

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::changer::{ChangerError, DriveElement, Inventory, SlotElement};
use super::drive::TapeError;
use super::virtual_drive::{Cartridge, VirtualDrive};

/// First line of the state file.
const STATE_MAGIC: &str = "sparsebak virtual tape library 1";
const STATE_FILE: &str = "library.state";
const CARTRIDGES: &str = "cartridges";
/// The most slots a virtual library has (a bound on what a state file may claim).
pub const MAX_SLOTS: u32 = 10_000;

/// How a virtual library is set up (from the destination's settings).
#[derive(Debug, Clone)]
pub struct VirtualLibraryOptions {
    /// Number of slots, each holding a cartridge when the library is created.
    pub slots: u32,
    /// Capacity of each new cartridge, in bytes of block data.
    pub capacity: u64,
    /// Throttle reads and writes to this many bytes per second (none when `None`).
    pub speed: Option<u64>,
}

/// The size of the early-warning zone before a cartridge's end: a twentieth of its
/// capacity, at most 256 MiB (real drives warn some tens to hundreds of MB early).
pub fn default_early_warning(capacity: u64) -> u64 {
    (capacity / 20).min(256 << 20)
}

/// The barcode of the `n`th cartridge (1-based) a library creates: LTO-style, six
/// characters and the media type `L8`.
pub fn barcode_for(n: u32) -> String {
    format!("VT{n:04}L8")
}

#[derive(Debug)]
pub(crate) struct State {
    pub dir: PathBuf,
    pub name: String,
    /// Slot `i + 1`: the barcode of the cartridge in it.
    pub slots: Vec<Option<String>>,
    /// The cartridge in the drive and the slot it came from.
    pub drive: Option<(String, Option<u32>)>,
    pub protected: Vec<String>,
    /// Whether the drive's tape is loaded (false after the drive unloaded it).
    pub online: bool,
    /// Changes each time the drive's tape changes, so an open drive reopens.
    pub generation: u64,
    /// Counts loads into the drive: a drive seeing it change starts at the beginning.
    pub loads: u64,
    /// Where the drive's tape is (a record number), kept between runs as a real
    /// drive keeps its position between opens of a non-rewinding device.
    pub position: u64,
    pub speed: Option<u64>,
    _lock: std::fs::File,
}

/// A handle on a virtual library; clones share it.
#[derive(Debug, Clone)]
pub struct VirtualLibrary {
    pub(crate) state: Arc<Mutex<State>>,
    name: String,
}

fn io_err(device: &str, during: String) -> impl FnOnce(std::io::Error) -> TapeError + '_ {
    move |source| TapeError::Io {
        device: device.to_string(),
        during,
        source,
    }
}

impl VirtualLibrary {
    /// Open the library in `dir`, creating it on first use.
    pub fn open(dir: &Path, opts: &VirtualLibraryOptions) -> Result<VirtualLibrary, TapeError> {
        let name = format!("virtual:{}", dir.display());
        if opts.slots == 0 || opts.slots > MAX_SLOTS {
            return Err(TapeError::Refused {
                device: name,
                reason: format!("virtual_slots = {} (must be 1 to {MAX_SLOTS})", opts.slots),
            });
        }
        std::fs::create_dir_all(dir.join(CARTRIDGES))
            .map_err(io_err(&name, format!("creating {}", dir.display())))?;
        let lock_path = dir.join("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&name, format!("opening {}", lock_path.display())))?;
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a valid, owned file descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(TapeError::Busy {
                    device: name,
                    reason: format!(
                        "another run uses this library (it holds {})",
                        lock_path.display()
                    ),
                });
            }
            return Err(io_err(&name, format!("locking {}", lock_path.display()))(e));
        }
        let mut state = State {
            dir: dir.to_path_buf(),
            name: name.clone(),
            slots: Vec::new(),
            drive: None,
            protected: Vec::new(),
            online: true,
            generation: 0,
            loads: 0,
            position: 0,
            speed: opts.speed.filter(|s| *s > 0),
            _lock: lock,
        };
        let state_path = dir.join(STATE_FILE);
        let existed = match std::fs::read_to_string(&state_path) {
            Ok(text) => {
                parse_state(&name, &text, &mut state)?;
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => {
                return Err(io_err(&name, format!("reading {}", state_path.display()))(
                    e,
                ))
            }
        };
        let have = state.slots.len() as u32;
        if opts.slots < have {
            return Err(TapeError::Refused {
                device: name,
                reason: format!(
                    "the library has {have} slots; virtual_slots = {} cannot remove slots",
                    opts.slots
                ),
            });
        }
        if !existed || opts.slots > have {
            // New slots get new cartridges, numbered after every barcode in use.
            let mut next = 1 + state.all_barcodes().len() as u32;
            for _ in have..opts.slots {
                let mut code = barcode_for(next);
                while state.all_barcodes().contains(&code) {
                    next += 1;
                    code = barcode_for(next);
                }
                Cartridge::create(
                    &name,
                    &state.cartridge_path(&code),
                    &code,
                    opts.capacity,
                    default_early_warning(opts.capacity),
                )?;
                state.slots.push(Some(code));
                next += 1;
            }
            state.save()?;
            tracing::info!(library = %name, slots = opts.slots, "virtual tape library ready");
        }
        Ok(VirtualLibrary {
            state: Arc::new(Mutex::new(state)),
            name,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while the state was held cannot leave it half-changed on disk (saves
        // are atomic), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The library's drive.
    pub fn drive(&self) -> VirtualDrive {
        VirtualDrive::new(self.clone())
    }

    /// The library's changer.
    pub fn changer(&self) -> super::changer::VirtualChanger {
        super::changer::VirtualChanger::new(self.clone())
    }

    /// Write-protect a cartridge (or lift it), like the tab on a real one.
    pub fn set_write_protected(&self, barcode: &str, on: bool) -> Result<(), TapeError> {
        let mut st = self.lock();
        if !st.all_barcodes().iter().any(|b| b == barcode) {
            return Err(TapeError::Refused {
                device: st.name.clone(),
                reason: format!("no cartridge {barcode} in the library"),
            });
        }
        st.protected.retain(|b| b != barcode);
        if on {
            st.protected.push(barcode.to_string());
        }
        st.generation += 1;
        st.save()
    }

    pub fn inventory(&self) -> Inventory {
        let st = self.lock();
        Inventory {
            drives: vec![DriveElement {
                number: 0,
                barcode: st.drive.as_ref().map(|d| d.0.clone()),
                full: st.drive.is_some(),
                from_slot: st.drive.as_ref().and_then(|d| d.1),
            }],
            slots: st
                .slots
                .iter()
                .enumerate()
                .map(|(i, b)| SlotElement {
                    number: i as u32 + 1,
                    barcode: b.clone(),
                    full: b.is_some(),
                    import_export: false,
                })
                .collect(),
        }
    }

    fn element_err(&self, reason: String) -> ChangerError {
        ChangerError::Element {
            changer: self.name.clone(),
            reason,
        }
    }

    fn slot_index(&self, st: &State, slot: u32) -> Result<usize, ChangerError> {
        if slot == 0 || slot as usize > st.slots.len() {
            return Err(self.element_err(format!(
                "no slot {slot} (slots are 1 to {})",
                st.slots.len()
            )));
        }
        Ok(slot as usize - 1)
    }

    fn check_drive(&self, drive: u32) -> Result<(), ChangerError> {
        if drive != 0 {
            return Err(self.element_err(format!("no drive {drive} (the only drive is 0)")));
        }
        Ok(())
    }

    pub(crate) fn load(&self, slot: u32, drive: u32) -> Result<(), ChangerError> {
        self.check_drive(drive)?;
        let mut st = self.lock();
        let i = self.slot_index(&st, slot)?;
        if let Some((b, _)) = &st.drive {
            return Err(self.element_err(format!("drive {drive} already holds {b}")));
        }
        let Some(code) = st.slots[i].take() else {
            return Err(self.element_err(format!("slot {slot} is empty")));
        };
        st.drive = Some((code, Some(slot)));
        st.position = 0;
        st.online = true;
        st.generation += 1;
        st.loads += 1;
        st.save().map_err(ChangerError::from)
    }

    pub(crate) fn unload(&self, drive: u32, slot: Option<u32>) -> Result<(), ChangerError> {
        self.check_drive(drive)?;
        let mut st = self.lock();
        let Some((code, from)) = st.drive.clone() else {
            return Err(self.element_err(format!("drive {drive} is empty")));
        };
        let Some(slot) = slot.or(from) else {
            return Err(self.element_err(format!("the slot {code} came from is unknown; name one")));
        };
        let i = self.slot_index(&st, slot)?;
        if let Some(b) = &st.slots[i] {
            return Err(self.element_err(format!("slot {slot} already holds {b}")));
        }
        st.slots[i] = Some(code);
        st.drive = None;
        st.position = 0;
        st.generation += 1;
        st.save().map_err(ChangerError::from)
    }

    pub(crate) fn transfer(&self, from: u32, to: u32) -> Result<(), ChangerError> {
        let mut st = self.lock();
        let i = self.slot_index(&st, from)?;
        let j = self.slot_index(&st, to)?;
        if st.slots[j].is_some() {
            return Err(self.element_err(format!("slot {to} is full")));
        }
        let Some(code) = st.slots[i].take() else {
            return Err(self.element_err(format!("slot {from} is empty")));
        };
        st.slots[j] = Some(code);
        st.save().map_err(ChangerError::from)
    }
}

impl State {
    pub(crate) fn cartridge_path(&self, barcode: &str) -> PathBuf {
        self.dir.join(CARTRIDGES).join(format!("{barcode}.vtape"))
    }

    fn all_barcodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.slots.iter().flatten().cloned().collect();
        if let Some((b, _)) = &self.drive {
            v.push(b.clone());
        }
        v
    }

    /// Write the state file: temp name, fsync, rename, fsync the folder.
    pub(crate) fn save(&self) -> Result<(), TapeError> {
        let mut text = format!("{STATE_MAGIC}\n");
        for (i, s) in self.slots.iter().enumerate() {
            text.push_str(&format!("slot {} {}\n", i + 1, s.as_deref().unwrap_or("-")));
        }
        match &self.drive {
            Some((b, Some(from))) => text.push_str(&format!("drive 0 {b} {from}\n")),
            Some((b, None)) => text.push_str(&format!("drive 0 {b} -\n")),
            None => text.push_str("drive 0 - -\n"),
        }
        if self.drive.is_some() && self.position > 0 {
            text.push_str(&format!("position {}\n", self.position));
        }
        for b in &self.protected {
            text.push_str(&format!("protected {b}\n"));
        }
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let during = format!("writing {}", path.display());
        let write = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            crate::durable::sync_dir(&self.dir)
        };
        write().map_err(io_err(&self.name, during))
    }
}

/// A barcode as a library takes it: 1 to 32 printable ASCII characters, no spaces.
pub fn valid_barcode(b: &str) -> bool {
    (1..=32).contains(&b.len()) && b.bytes().all(|c| c.is_ascii_graphic() && c != b'/')
}

fn parse_state(name: &str, text: &str, st: &mut State) -> Result<(), TapeError> {
    let bad = |n: usize, line: &str, why: &str| TapeError::Corrupt {
        device: name.to_string(),
        reason: format!("{STATE_FILE} line {}: {why}: {line:?}", n + 1),
    };
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l == STATE_MAGIC => {}
        Some((n, l)) => {
            return Err(bad(
                n,
                l,
                "not a sparsebak virtual tape library (version 1)",
            ))
        }
        None => return Err(bad(0, "", "empty")),
    }
    let code = |n: usize, line: &str, s: &str| -> Result<Option<String>, TapeError> {
        match s {
            "-" => Ok(None),
            b if valid_barcode(b) => Ok(Some(b.to_string())),
            _ => Err(bad(n, line, "bad barcode")),
        }
    };
    for (n, line) in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            [] => {}
            ["slot", num, b] => {
                let want = st.slots.len() + 1;
                if num.parse::<usize>().ok() != Some(want) || want > MAX_SLOTS as usize {
                    return Err(bad(n, line, &format!("expected slot {want}")));
                }
                st.slots.push(code(n, line, b)?);
            }
            ["drive", "0", b, from] => {
                let from = match *from {
                    "-" => None,
                    s => Some(s.parse::<u32>().map_err(|_| bad(n, line, "bad slot"))?),
                };
                st.drive = code(n, line, b)?.map(|b| (b, from));
            }
            ["position", num] => {
                st.position = num.parse().map_err(|_| bad(n, line, "bad position"))?;
            }
            ["protected", b] => {
                if let Some(b) = code(n, line, b)? {
                    st.protected.push(b);
                }
            }
            _ => return Err(bad(n, line, "unknown line")),
        }
    }
    Ok(())
}
