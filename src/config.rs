//! The ini configuration (`sparsebak.ini`), parsed and checked in full before anything
//! is touched: unknown sections or keys, bad values and unknown volumes are errors.

use std::path::{Path, PathBuf};

use sparsebak_format::chunk::Codec;
use sparsebak_format::layout;

use crate::error::{Error, Result};

/// Where volumes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Thin LVM: tick/tock snapshots and `thin_delta`.
    Lvm,
    /// Image files on Btrfs/XFS: reflink snapshots and FIEMAP.
    Reflink,
    /// Plain files or block devices: no snapshot layer, changes found by hashing.
    File,
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Lvm => "lvm",
            SourceKind::Reflink => "reflink",
            SourceKind::File => "file",
        }
    }
}

/// Chunk compression: the codec and, for zstd, its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub source: SourceKind,
    pub voldir: Option<PathBuf>,
    pub vgname: String,
    pub poolname: String,
    pub destmountpoint: Option<PathBuf>,
    pub destdir: PathBuf,
    /// Where the archive is when it is not on this machine (`destvm`, with `destcmd`
    /// and `sshopts`); `destdir` and `destmountpoint` are then paths over there.
    pub remote: Option<crate::remote::RemoteSpec>,
    pub metadir: PathBuf,
    pub chunksize: u64,
    pub compression: Compression,
    /// Store new sessions as tar files (`tarfile = on`).
    pub tarfile: bool,
    /// Retention schedule for `prune --auto` (checked when loading).
    pub keep: Option<String>,
    /// How old a volume's newest session may be before `status` calls it stale
    /// (`max_age`, default 26 hours), in seconds.
    pub max_age: u64,
    /// Volumes in file order, with whether they are enabled.
    pub volumes: Vec<(String, bool)>,
    /// `allow_other = on`: users other than the one who mounted may read the
    /// session images of `sparsebak mount` (off by default: disk images hold secrets).
    pub allow_other: bool,
    /// The far side for a remote destination (`destvm`), as written.
    pub destvm: Option<String>,
    /// The far side's command (`destcmd`), as written.
    pub destcmd: Option<String>,
    /// Extra arguments for the ssh client (`sshopts`), as written.
    pub sshopts: Option<String>,
    /// The chosen destination's `encrypt` (see [`DestConfig::encrypt`]).
    pub encrypt: Option<bool>,
    /// The chosen destination's `passfile`.
    pub passfile: Option<PathBuf>,
    /// The chosen destination's `passcmd`.
    pub passcmd: Option<String>,
    /// The chosen destination's tape settings, when it is a tape destination.
    pub tape: Option<TapeConfig>,
    /// The destination the destination fields above (`destvm`, `destmountpoint`,
    /// `destdir`, `tarfile`, `destcmd`, `sshopts`) are those of: see
    /// [`Config::for_dest`].
    pub dest: String,
    /// Every configured destination: `default` (the destination keys of `[var]`)
    /// first when there is one, then the `[dest:NAME]` sections in file order.
    pub dests: Vec<DestConfig>,
}

/// One destination: the destination keys of `[var]` (named `default`) or of a
/// `[dest:NAME]` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestConfig {
    pub name: String,
    pub destvm: Option<String>,
    pub destmountpoint: Option<PathBuf>,
    /// The archive's folder (under `destmountpoint` when one is set).
    pub destdir: PathBuf,
    pub tarfile: bool,
    pub destcmd: Option<String>,
    pub sshopts: Option<String>,
    /// `encrypt = on|off` as written (`None`: follow the archive; on for a new one).
    pub encrypt: Option<bool>,
    /// `passfile`: a file holding the archive's passphrase.
    pub passfile: Option<PathBuf>,
    /// `passcmd`: a command (split on blanks, run without a shell) printing it.
    pub passcmd: Option<String>,
    /// The far side, when `destvm` names one (parsed from the three keys above).
    pub remote: Option<crate::remote::RemoteSpec>,
    /// A tape destination (`tape = ...` instead of `destdir`); `destdir` is then empty.
    pub tape: Option<TapeConfig>,
}

/// Where a tape destination's drive is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TapeDevice {
    /// A real drive through the Linux `st` driver: a non-rewinding device such as
    /// `/dev/nst0`.
    St(PathBuf),
    /// A virtual library kept in a folder (`virtual:DIR`), created on first use.
    Virtual(PathBuf),
}

/// A tape destination's medium changer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangerDevice {
    /// A real library's changer, an `sg` device driven through `mtx`.
    Mtx(PathBuf),
    /// The changer of the virtual library in this folder.
    Virtual(PathBuf),
}

/// The tape settings of a `[dest:NAME]` section with `tape = ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapeConfig {
    pub device: TapeDevice,
    /// Fixed block size, bytes (a multiple of 512 from 512 to 1M; default 256K).
    pub block_size: usize,
    /// The changer, if any: for a virtual library, the library itself by default.
    pub changer: Option<ChangerDevice>,
    /// The media pool whose tapes this destination writes (default: the destination's
    /// name).
    pub pool: String,
    /// Memory between the pipeline and the drive, bytes (default 256M).
    pub buffer: u64,
    /// Virtual library: slots (each with a cartridge when created), default 8.
    pub virtual_slots: u32,
    /// Virtual library: capacity of each new cartridge, bytes (default 1G).
    pub virtual_capacity: u64,
    /// Virtual library: a throttle in bytes per second (none by default).
    pub virtual_speed: Option<u64>,
}

impl TapeConfig {
    /// The drive as written in the config, for messages.
    pub fn device_label(&self) -> String {
        match &self.device {
            TapeDevice::St(p) => p.display().to_string(),
            TapeDevice::Virtual(d) => format!("virtual:{}", d.display()),
        }
    }
}

/// The keys of a tape destination (`[dest:NAME]` only).
pub const TAPE_KEYS: &[&str] = &[
    "tape",
    "blocksize",
    "changer",
    "pool",
    "buffer",
    "virtual_slots",
    "virtual_capacity",
    "virtual_speed",
];

/// Default tape block size.
pub const DEFAULT_TAPE_BLOCK_SIZE: usize = 256 << 10;
/// Default buffer between the pipeline and the drive.
pub const DEFAULT_TAPE_BUFFER: u64 = 256 << 20;
/// Largest buffer accepted (it is held in memory).
pub const MAX_TAPE_BUFFER: u64 = 64 << 30;
/// Defaults of a virtual library.
pub const DEFAULT_VIRTUAL_SLOTS: u32 = 8;
pub const DEFAULT_VIRTUAL_CAPACITY: u64 = 1 << 30;

/// The keys that describe a destination, in `[var]` or in `[dest:NAME]`.
pub const DEST_KEYS: &[&str] = &[
    "destvm",
    "destmountpoint",
    "destdir",
    "tarfile",
    "destcmd",
    "sshopts",
    "encrypt",
    "passfile",
    "passcmd",
];

/// The destination keys about encryption: in [var] they are also every
/// [dest:NAME]'s default.
const CRYPT_KEYS: &[&str] = &["encrypt", "passfile", "passcmd"];

/// The value of `--dest` that means every configured destination (`send` only); no
/// destination may be named so.
pub const ALL_DESTS: &str = "all";

/// Why `name` cannot name a destination, or `None` when it can: the rules of volume
/// names (it becomes a folder name in the metadir), and not `all`.
pub fn dest_name_problem(name: &str) -> Option<String> {
    if name == ALL_DESTS {
        return Some("`all` stands for every destination in --dest=all".into());
    }
    layout::volume_name_problem(name)
}

/// The keys of `[var]`.
pub const VAR_KEYS: &[&str] = &[
    "source",
    "voldir",
    "vgname",
    "poolname",
    "destvm",
    "destmountpoint",
    "destdir",
    "destcmd",
    "sshopts",
    "metadir",
    "chunksize",
    "compression",
    "keep",
    "max_age",
    "tarfile",
    "encrypt",
    "passfile",
    "passcmd",
    "allow_other",
];

/// `max_age` when the config does not give it: a nightly send may run late by hours.
pub const DEFAULT_MAX_AGE: u64 = 26 * 3600;

/// Parse a duration such as `90m`, `26h`, `2d`, `1w` or plain seconds (`30s`, `30`),
/// in seconds. `None` for anything else (or a number too large).
pub fn parse_duration(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, "s"),
    };
    if num.is_empty() {
        return None;
    }
    let n: u64 = num.parse().ok()?;
    let per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        _ => return None,
    };
    n.checked_mul(per)
}

/// Parse a size such as `64K`, `4M`, `1G` or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Whether `name` is acceptable as a volume name: it becomes a folder name in the
/// archive and metadir, and an LV name (see [`layout::volume_name_problem`]).
pub fn valid_volume_name(name: &str) -> bool {
    layout::volume_name_problem(name).is_none()
}

/// Names LVM keeps for its own LVs (lvm(8), "VALID NAMES"): whole names, and parts no
/// LV name may contain.
const LVM_RESERVED_NAMES: &[&str] = &["snapshot", "pvmove"];
const LVM_RESERVED_PARTS: &[&str] = &[
    "_cdata", "_cmeta", "_corig", "_iorig", "_mimage", "_mlog", "_pmspare", "_rimage", "_rmeta",
    "_tdata", "_tmeta", "_vdata", "_vorigin",
];

/// Longest device-mapper name the kernel takes (DM_NAME_LEN less its NUL).
const DM_NAME_MAX: usize = 127;

/// Why `name` cannot be a volume of `source` (with volume group `vg` for LVM), or
/// `None` when it can: the rules of every volume name, and for `source = lvm` LVM's
/// own rules for the volume and its snapshots `<name>.tick`, `<name>.tock`.
pub fn volume_name_problem(name: &str, source: SourceKind, vg: &str) -> Option<String> {
    if let Some(why) = layout::volume_name_problem(name) {
        return Some(why);
    }
    if source != SourceKind::Lvm {
        return None;
    }
    if LVM_RESERVED_NAMES.contains(&name) {
        return Some(format!("LVM reserves the LV name {name}"));
    }
    if let Some(part) = LVM_RESERVED_PARTS.iter().find(|p| name.contains(*p)) {
        return Some(format!("LVM reserves LV names containing {part}"));
    }
    let dm = crate::source::lvm::dm_name(vg, &format!("{name}.tock"), None);
    if dm.len() > DM_NAME_MAX {
        return Some(format!(
            "the device-mapper name of its snapshot, {dm}, would be {} bytes long; \
             the kernel takes at most {DM_NAME_MAX}",
            dm.len()
        ));
    }
    None
}

/// The value of a key as written, less a comment that fills it: rust-ini's
/// `inline-comment` option strips a `;` or `#` that follows a space or a tab, but it
/// skips the blanks after `=` first, so `destvm =   ; empty` reaches us as `; empty`.
/// A `;` or `#` right after other text stays part of the value (`/srv/a#1`).
fn value(raw: &str) -> &str {
    if raw.starts_with([';', '#']) {
        ""
    } else {
        raw
    }
}

/// What rust-ini's syntax error means, with its line.
fn syntax_error(e: &ini::ParseError) -> String {
    if e.msg == "missing key" {
        return format!("line {}: no key before '='", e.line);
    }
    let end = |what: &str| format!("{what} (the file ends at line {} looking for it)", e.line);
    if e.msg.contains("found EOF") {
        if e.msg.contains("'='") {
            return end("a line is neither KEY = VALUE nor [SECTION]: no '='");
        }
        if e.msg.contains("']'") {
            return end("a [SECTION] has no closing ']'");
        }
        if e.msg.contains("'\"'") || e.msg.contains("'\\''") {
            return end("a quoted value has no closing quote");
        }
    }
    format!("line {}, column {}: {}", e.line, e.col, e.msg)
}

/// The first line of `s`, for a message about text rust-ini read across lines.
fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// Read the ini text with rust-ini and refuse what it lets through.
///
/// Syntax: `[section]` lines, `KEY = VALUE` lines, blank lines, and comments: a line
/// whose first character is `;` or `#`, and the rest of a line from a `;` or `#` that
/// follows a space or a tab. A value in double (or single) quotes is taken as written
/// (for a value that must hold ` ;` or ` #`); a value that starts with `;` or `#`,
/// quoted or not, is a comment (see [`value`]). A section or a key given twice is an
/// error, as is anything else.
///
/// rust-ini reads a key up to the next `=` and a section name up to the next `]`, over
/// line ends: a line without `=` (or an indented comment) becomes part of the next key,
/// a `[` without `]` swallows the lines up to the next `]`; a value with an open quote
/// runs to the next quote. Such names and values are refused here, by their first line.
/// It keeps keys and sections given twice (a multimap), so those are found here too.
fn parse_ini(text: &str) -> std::result::Result<ini::Ini, String> {
    let opt = ini::ParseOption {
        enabled_quote: true,
        enabled_escape: false,
        ..Default::default()
    };
    let ini = ini::Ini::load_from_str_opt(text, opt).map_err(|e| syntax_error(&e))?;
    for (sec, props) in ini.iter() {
        for (key, raw) in props.iter() {
            if key.starts_with([';', '#']) {
                return Err(format!(
                    "a comment must start its line, found {:?} indented",
                    first_line(key)
                ));
            }
            if key.contains('\n') {
                return Err(format!(
                    "expected KEY = VALUE or [SECTION], found {:?}",
                    first_line(key)
                ));
            }
            if raw.contains('\n') {
                return Err(format!("value of {key} has no closing quote"));
            }
        }
        let Some(name) = sec else {
            if let Some((key, _)) = props.iter().next() {
                return Err(format!(
                    "{key} is outside any section; settings go inside [var] or [volumes]"
                ));
            }
            continue;
        };
        if name.contains(['\n', '[', ']']) {
            return Err(format!(
                "expected [SECTION], found {:?}",
                format!("[{}", first_line(name))
            ));
        }
        if ini.section_all(sec).count() > 1 {
            return Err(format!("section [{name}] given twice"));
        }
        if let Some((key, _)) = props.iter().find(|(k, _)| props.get_all(k).count() > 1) {
            return Err(format!("key {key:?} given twice in [{name}]"));
        }
    }
    Ok(ini)
}

/// One destination's keys, read through `get`; `at` prefixes messages (`[dest:NAME]: `).
fn parse_dest<'a>(
    name: &str,
    get: &dyn Fn(&str) -> Option<&'a str>,
    at: &str,
) -> std::result::Result<DestConfig, String> {
    let remote = match get("destvm") {
        None => None,
        Some(vm) => Some(crate::remote::RemoteSpec {
            transport: crate::remote::parse_destvm(vm).map_err(|e| format!("{at}{e}"))?,
            destcmd: get("destcmd").unwrap_or("sparsebak").to_string(),
            sshopts: get("sshopts")
                .map(|o| o.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
        }),
    };
    let tape = parse_tape(name, get, at)?;
    if let Some(t) = &tape {
        for key in [
            "destdir",
            "destmountpoint",
            "destvm",
            "destcmd",
            "sshopts",
            "tarfile",
        ] {
            if get(key).is_some() {
                let why = match key {
                    "destdir" => "a destination is a tape or an archive folder, not both",
                    "tarfile" => "tape files are streams, not tar files",
                    _ => "a tape drive is on this machine",
                };
                return Err(format!(
                    "{at}tape = {} and {key} are both set: {why}",
                    t.device_label()
                ));
            }
        }
        return Ok(DestConfig {
            name: name.to_string(),
            destvm: None,
            destmountpoint: None,
            destdir: PathBuf::new(),
            tarfile: false,
            destcmd: None,
            sshopts: None,
            encrypt: crypt_flag(get, at)?,
            passfile: passfile(get, at)?,
            passcmd: passcmd(get, at)?,
            remote: None,
            tape,
        });
    }
    let destmountpoint = get("destmountpoint").map(PathBuf::from);
    let destdir = PathBuf::from(get("destdir").ok_or_else(|| format!("{at}destdir is required"))?);
    let destdir = match &destmountpoint {
        Some(mp) => {
            if !mp.is_absolute() {
                return Err(format!("{at}destmountpoint must be absolute"));
            }
            mp.join(destdir.strip_prefix("/").unwrap_or(&destdir))
        }
        None if destdir.is_absolute() => destdir,
        None => {
            return Err(format!(
                "{at}destdir {} must be absolute when destmountpoint is empty",
                destdir.display()
            ))
        }
    };
    let tarfile = match get("tarfile").unwrap_or("off") {
        "on" | "yes" | "true" | "enable" => true,
        "off" | "no" | "false" | "disable" => false,
        other => return Err(format!("{at}tarfile = {other:?}: expected on or off")),
    };
    let encrypt = crypt_flag(get, at)?;
    let passfile = passfile(get, at)?;
    let passcmd = passcmd(get, at)?;
    Ok(DestConfig {
        name: name.to_string(),
        destvm: get("destvm").map(str::to_string),
        destmountpoint,
        destdir,
        tarfile,
        destcmd: get("destcmd").map(str::to_string),
        sshopts: get("sshopts").map(str::to_string),
        encrypt,
        passfile,
        passcmd,
        remote,
        tape: None,
    })
}

type Getter<'g, 'a> = &'g dyn Fn(&str) -> Option<&'a str>;

fn crypt_flag(get: Getter, at: &str) -> std::result::Result<Option<bool>, String> {
    match get("encrypt") {
        None => Ok(None),
        Some("on" | "yes" | "true" | "enable") => Ok(Some(true)),
        Some("off" | "no" | "false" | "disable") => Ok(Some(false)),
        Some(other) => Err(format!("{at}encrypt = {other:?}: expected on or off")),
    }
}

fn passfile(get: Getter, at: &str) -> std::result::Result<Option<PathBuf>, String> {
    let passfile = get("passfile").map(PathBuf::from);
    if let Some(p) = &passfile {
        if !p.is_absolute() {
            return Err(format!("{at}passfile {} must be absolute", p.display()));
        }
    }
    Ok(passfile)
}

fn passcmd(get: Getter, at: &str) -> std::result::Result<Option<String>, String> {
    let passcmd = get("passcmd").map(str::to_string);
    if passcmd
        .as_deref()
        .is_some_and(|c| c.split_whitespace().next().is_none())
    {
        return Err(format!("{at}passcmd is empty"));
    }
    Ok(passcmd)
}

/// `virtual:DIR` (an absolute folder) or an absolute device path, for `key`.
fn tape_path(at: &str, key: &str, v: &str) -> std::result::Result<(bool, PathBuf), String> {
    let (virt, p) = match v.strip_prefix("virtual:") {
        Some(dir) => (true, PathBuf::from(dir)),
        None => (false, PathBuf::from(v)),
    };
    if !p.is_absolute() {
        return Err(format!(
            "{at}{key} = {v:?}: expected an absolute device path (/dev/nst0{}) or virtual:/ABSOLUTE/DIR",
            if key == "changer" { ", /dev/sg1" } else { "" }
        ));
    }
    Ok((virt, p))
}

/// The tape keys of a destination, checked; `None` when `tape` is not set (then no
/// other tape key may be).
fn parse_tape(
    name: &str,
    get: Getter,
    at: &str,
) -> std::result::Result<Option<TapeConfig>, String> {
    let Some(dev) = get("tape") else {
        if let Some(k) = TAPE_KEYS.iter().find(|k| get(k).is_some()) {
            return Err(format!(
                "{at}{k} is a tape setting, but tape is not set (tape = /dev/nstN or virtual:DIR)"
            ));
        }
        return Ok(None);
    };
    let (virt, path) = tape_path(at, "tape", dev)?;
    let device = if virt {
        TapeDevice::Virtual(path.clone())
    } else {
        TapeDevice::St(path.clone())
    };
    let size = |key: &str| -> std::result::Result<Option<u64>, String> {
        match get(key) {
            None => Ok(None),
            Some(v) => parse_size(v).map(Some).ok_or_else(|| {
                format!("{at}{key} = {v:?}: expected a size such as 256K, 4M or 1G")
            }),
        }
    };
    let block_size = match get("blocksize") {
        None => DEFAULT_TAPE_BLOCK_SIZE,
        Some(v) if v == "variable" || parse_size(v) == Some(0) => {
            return Err(format!(
                "{at}blocksize = {v:?}: variable-block mode is not supported; give a fixed size \
                 such as 256K"
            ))
        }
        Some(v) => match parse_size(v) {
            Some(n)
                if n % 512 == 0
                    && (crate::tape::drive::MIN_BLOCK_SIZE as u64
                        ..=crate::tape::drive::MAX_BLOCK_SIZE as u64)
                        .contains(&n) =>
            {
                n as usize
            }
            _ => {
                return Err(format!(
                    "{at}blocksize = {v:?}: must be a multiple of 512 from 512 to 1M"
                ))
            }
        },
    };
    let changer = match get("changer") {
        None if virt => Some(ChangerDevice::Virtual(path.clone())),
        None => None,
        Some(v) => match tape_path(at, "changer", v)? {
            (true, _) if !virt => {
                return Err(format!(
                    "{at}changer = {v}: a virtual changer moves the cartridges of a virtual \
                     library, but tape = {dev} is a real drive"
                ))
            }
            (true, dir) if dir != path => {
                return Err(format!(
                    "{at}changer = {v}: a virtual library's changer is the library itself \
                     (changer = virtual:{}, or leave it out)",
                    path.display()
                ))
            }
            (true, dir) => Some(ChangerDevice::Virtual(dir)),
            (false, _) if virt => {
                return Err(format!(
                    "{at}changer = {v}: a real changer cannot move the cartridges of the \
                     virtual library tape = {dev}"
                ))
            }
            (false, dev) => Some(ChangerDevice::Mtx(dev)),
        },
    };
    if !virt {
        if let Some(k) = ["virtual_slots", "virtual_capacity", "virtual_speed"]
            .iter()
            .find(|k| get(k).is_some())
        {
            return Err(format!(
                "{at}{k} is a setting of a virtual library (tape = virtual:DIR), \
                 but tape = {dev} is a real drive"
            ));
        }
    }
    let pool = get("pool").unwrap_or(name).to_string();
    if !(1..=64).contains(&pool.len()) || !pool.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{at}pool = {pool:?}: 1 to 64 printable ASCII characters without spaces"
        ));
    }
    let buffer = size("buffer")?.unwrap_or(DEFAULT_TAPE_BUFFER);
    if buffer < block_size as u64 || buffer > MAX_TAPE_BUFFER {
        return Err(format!(
            "{at}buffer = {:?}: must hold at least one block ({block_size} bytes) and at most 64G",
            get("buffer").unwrap_or_default()
        ));
    }
    let max_slots = crate::tape::virtual_library::MAX_SLOTS;
    let virtual_slots = match get("virtual_slots") {
        None => DEFAULT_VIRTUAL_SLOTS,
        Some(v) => v
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=max_slots).contains(n))
            .ok_or_else(|| format!("{at}virtual_slots = {v:?}: expected 1 to {max_slots}"))?,
    };
    let virtual_capacity = size("virtual_capacity")?.unwrap_or(DEFAULT_VIRTUAL_CAPACITY);
    let min_capacity = 64 * block_size as u64;
    if virtual_capacity < min_capacity {
        return Err(format!(
            "{at}virtual_capacity = {:?}: must hold at least 64 blocks ({min_capacity} bytes)",
            get("virtual_capacity").unwrap_or_default()
        ));
    }
    let virtual_speed = match size("virtual_speed")? {
        Some(0) => {
            return Err(format!(
                "{at}virtual_speed = 0: give bytes per second (e.g. 300M), or leave it out"
            ))
        }
        s => s,
    };
    Ok(Some(TapeConfig {
        device,
        block_size,
        changer,
        pool,
        buffer,
        virtual_slots,
        virtual_capacity,
        virtual_speed,
    }))
}

impl Config {
    /// Read and check the config file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let ini = parse_ini(text).map_err(bad)?;
        let mut var = None;
        let mut vols = None;
        let mut dest_sections = Vec::new();
        for (sec, props) in ini.iter() {
            match sec {
                None => {}
                Some("var") => var = Some(props),
                Some("volumes") => vols = Some(props),
                Some(other) if other.starts_with("dest:") => {
                    let name = &other["dest:".len()..];
                    if let Some(why) = dest_name_problem(name) {
                        return Err(bad(format!(
                            "[{other}]: destination name {name:?} is not allowed: {why}"
                        )));
                    }
                    for (key, _) in props.iter() {
                        if !DEST_KEYS.contains(&key) && !TAPE_KEYS.contains(&key) {
                            return Err(bad(format!(
                                "unknown key {key:?} in [{other}] (known: {}, {})",
                                DEST_KEYS.join(", "),
                                TAPE_KEYS.join(", ")
                            )));
                        }
                    }
                    dest_sections.push((name.to_string(), props));
                }
                Some(other) => {
                    return Err(bad(format!(
                        "unknown section [{other}] (known: [var], [volumes], [dest:NAME])"
                    )))
                }
            }
        }
        let var = var.ok_or_else(|| bad("no [var] section".into()))?;
        for (key, _) in var.iter() {
            if !VAR_KEYS.contains(&key) {
                return Err(bad(format!(
                    "unknown key {key:?} in [var] (known: {})",
                    VAR_KEYS.join(", ")
                )));
            }
        }
        let get = |k: &str| var.get(k).map(value).filter(|v| !v.is_empty());
        let source = match get("source").unwrap_or("lvm") {
            "lvm" => SourceKind::Lvm,
            "reflink" => SourceKind::Reflink,
            "file" => SourceKind::File,
            other => {
                return Err(bad(format!(
                    "source = {other:?}: expected lvm, reflink or file"
                )))
            }
        };
        let voldir = get("voldir").map(PathBuf::from);
        if matches!(source, SourceKind::File | SourceKind::Reflink) {
            match &voldir {
                None => return Err(bad(format!("source = {} needs voldir", source.name()))),
                Some(d) if !d.is_absolute() => {
                    return Err(bad(format!("voldir {} must be absolute", d.display())))
                }
                _ => {}
            }
        }
        let mut dests = Vec::new();
        // `encrypt`, `passfile` and `passcmd` in [var] are also the defaults of every
        // [dest:NAME]; they alone do not make [var] a destination.
        let var_has_dest = DEST_KEYS
            .iter()
            .filter(|k| !CRYPT_KEYS.contains(k))
            .any(|k| get(k).is_some());
        if var_has_dest || dest_sections.is_empty() {
            dests.push(parse_dest(crate::metadir::DEFAULT_DEST, &get, "").map_err(bad)?);
        }
        for (name, props) in &dest_sections {
            if dests.iter().any(|d: &DestConfig| d.name == *name) {
                return Err(bad(format!(
                    "destination {name} given twice: by the destination keys of [var] \
                     and by [dest:{name}]"
                )));
            }
            let get = |k: &str| {
                props
                    .get(k)
                    .map(value)
                    .filter(|v| !v.is_empty())
                    .or_else(|| CRYPT_KEYS.contains(&k).then(|| get(k)).flatten())
            };
            dests.push(parse_dest(name, &get, &format!("[dest:{name}]: ")).map_err(bad)?);
        }
        let first = dests[0].clone();
        let metadir = PathBuf::from(get("metadir").unwrap_or("/var/lib/sparsebak"));
        if !metadir.is_absolute() {
            return Err(bad("metadir must be absolute".into()));
        }
        let chunksize = match get("chunksize") {
            None => 64 * 1024,
            Some(s) => parse_size(s)
                .filter(|n| n.is_power_of_two() && (64 << 10..=4 << 20).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "chunksize = {s:?}: must be a power of two from 64K to 4M"
                    ))
                })?,
        };
        let compression = match get("compression").unwrap_or("zstd:3") {
            "none" => Compression {
                codec: Codec::None,
                level: 0,
            },
            "zstd" => Compression {
                codec: Codec::Zstd,
                level: 3,
            },
            z => {
                let level = z
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .filter(|l| (-7..=22).contains(l) && *l != 0)
                    .ok_or_else(|| {
                        bad(format!(
                            "compression = {z:?}: expected none, zstd or zstd:LEVEL (-7..22, not 0)"
                        ))
                    })?;
                Compression {
                    codec: Codec::Zstd,
                    level,
                }
            }
        };
        let keep = get("keep").map(str::to_string);
        if let Some(k) = &keep {
            crate::retention::Schedule::parse(k).map_err(|e| bad(format!("keep = {k:?}: {e}")))?;
        }
        let max_age = match get("max_age") {
            None => DEFAULT_MAX_AGE,
            Some(s) => parse_duration(s).filter(|n| *n > 0).ok_or_else(|| {
                bad(format!(
                    "max_age = {s:?}: expected a duration such as 90m, 26h or 2d (s, m, h, d, w)"
                ))
            })?,
        };
        let vgname = get("vgname").unwrap_or("qubes_dom0").to_string();
        let allow_other = match get("allow_other").unwrap_or("off") {
            "on" => true,
            "off" => false,
            other => return Err(bad(format!("allow_other = {other:?}: expected on or off"))),
        };
        let mut volumes = Vec::new();
        if let Some(vols) = vols {
            for (name, raw) in vols.iter() {
                let v = value(raw);
                if let Some(why) = volume_name_problem(name, source, &vgname) {
                    return Err(bad(format!("volume name {name:?} is not allowed: {why}")));
                }
                let enabled = match v {
                    "enable" | "enabled" | "yes" | "on" | "true" => true,
                    "disable" | "disabled" | "no" | "off" | "false" => false,
                    other => {
                        return Err(bad(format!(
                            "volume {name}: {other:?} is not enable or disable"
                        )))
                    }
                };
                volumes.push((name.to_string(), enabled));
            }
        }
        let mut config = Config {
            path: path.to_path_buf(),
            source,
            voldir,
            vgname,
            poolname: get("poolname").unwrap_or("pool00").to_string(),
            destmountpoint: None,
            destdir: PathBuf::new(),
            remote: None,
            metadir,
            chunksize,
            compression,
            keep,
            max_age,
            tarfile: false,
            volumes,
            allow_other,
            destvm: None,
            destcmd: None,
            sshopts: None,
            encrypt: None,
            passfile: None,
            passcmd: None,
            tape: None,
            dest: String::new(),
            dests,
        };
        config.choose(&first);
        Ok(config)
    }

    /// Set the destination fields to those of `d`.
    fn choose(&mut self, d: &DestConfig) {
        self.dest = d.name.clone();
        self.destvm = d.destvm.clone();
        self.destmountpoint = d.destmountpoint.clone();
        self.destdir = d.destdir.clone();
        self.tarfile = d.tarfile;
        self.destcmd = d.destcmd.clone();
        self.sshopts = d.sshopts.clone();
        self.encrypt = d.encrypt;
        self.passfile = d.passfile.clone();
        self.passcmd = d.passcmd.clone();
        self.remote = d.remote.clone();
        self.tape = d.tape.clone();
    }

    /// Where the chosen destination's archive is, for messages: `destdir`, or for a far
    /// side `destvm` and `destdir` together (`ssh://host/backup`), so that a message
    /// never sends the user looking for a far side's folder on this machine.
    pub fn dest_location(&self) -> PathBuf {
        match &self.remote {
            Some(r) => PathBuf::from(r.label(&self.destdir)),
            None => self.destdir.clone(),
        }
    }

    /// The names of the configured destinations, in order.
    pub fn dest_names(&self) -> Vec<&str> {
        self.dests.iter().map(|d| d.name.as_str()).collect()
    }

    /// This configuration for destination `name`: its destination fields are that
    /// destination's, so code that reads `destdir` and the rest works on it.
    pub fn for_dest(&self, name: &str) -> Result<Config> {
        let d = self
            .dests
            .iter()
            .find(|d| d.name == name)
            .ok_or_else(|| Error::Config {
                path: self.path.clone(),
                reason: format!(
                    "no destination named {name:?} (configured: {})",
                    self.dest_names().join(", ")
                ),
            })?;
        let mut c = self.clone();
        c.choose(d);
        Ok(c)
    }

    /// The volumes a command works on: the named ones (each must be configured), or all
    /// enabled ones when none is named.
    pub fn select_volumes(&self, names: &[String]) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(self
                .volumes
                .iter()
                .filter(|(_, e)| *e)
                .map(|(n, _)| n.clone())
                .collect());
        }
        let mut out = Vec::new();
        for n in names {
            if let Some(why) = volume_name_problem(n, self.source, &self.vgname) {
                return Err(Error::Msg(format!(
                    "volume name {n:?} is not allowed: {why}"
                )));
            }
            if !self.volumes.iter().any(|(v, _)| v == n) {
                return Err(Error::Msg(format!(
                    "unknown volume {n:?}: not listed in [volumes] of {}",
                    self.path.display()
                )));
            }
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// Why the chosen destination is not present now, or `None` when it may be: its
    /// disk is not mounted (`destmountpoint` is not a mount point). For `send
    /// --dest=all`, which skips such destinations.
    pub fn absent_reason(&self) -> Option<String> {
        let mp = self.destmountpoint.as_ref()?;
        (!is_mount_point(mp)).then(|| {
            format!(
                "disk not mounted (destmountpoint {} is not a mounted filesystem)",
                mp.display()
            )
        })
    }

    /// Check the destination is reachable: a configured mount point must be mounted.
    /// `writing`: the command would write the archive (else it only reads it), which
    /// the message says.
    pub fn check_destination(&self, writing: bool) -> Result<()> {
        if self.remote.is_some() {
            // destmountpoint is a path over there: the far side checks it.
            return Ok(());
        }
        if let Some(mp) = &self.destmountpoint {
            if !is_mount_point(mp) {
                return Err(Error::Msg(if writing {
                    format!(
                        "destmountpoint {} is not a mounted filesystem; refusing to write the archive under it",
                        mp.display()
                    )
                } else {
                    format!(
                        "destmountpoint {} is not a mounted filesystem: the archive's disk is not mounted there, so there is no archive to read",
                        mp.display()
                    )
                }));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Check the metadata folder can be a folder: neither it nor a folder above it may
    /// be a file (else every command that keeps state fails with a bare "File exists"
    /// or "Not a directory"). A metadir that does not exist yet is made when needed.
    pub fn check_metadir(&self) -> Result<()> {
        for p in self.metadir.ancestors() {
            match std::fs::metadata(p) {
                Ok(m) if m.is_dir() => return Ok(()),
                Ok(_) => {
                    let why = if p == self.metadir {
                        "is a file, not a folder".to_string()
                    } else {
                        format!("cannot be made: {} is a file, not a folder", p.display())
                    };
                    return Err(Error::Config {
                        path: self.path.clone(),
                        reason: format!(
                            "metadir {} {why}; point metadir at a folder, or move the file away",
                            self.metadir.display()
                        ),
                    });
                }
                Err(_) => continue,
            }
        }
        Ok(())
    }
}

/// A path is a mount point when it is a folder on a different device than its parent,
/// or the root.
pub fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    if !m.is_dir() {
        return false;
    }
    let parent = p.join("..");
    match std::fs::metadata(parent) {
        Ok(pm) => pm.dev() != m.dev() || pm.ino() == m.ino(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(t, Path::new("t.ini"))
    }

    #[test]
    fn full_example() {
        let c = parse(
            "[var]\nsource = file\nvoldir = /srv/images\ndestdir = /backup/sb\nmetadir = /var/lib/sb\nchunksize = 128K\ncompression = zstd:5\n[volumes]\na = enable\nb = disable\n",
        )
        .unwrap();
        assert_eq!(c.source, SourceKind::File);
        assert_eq!(c.chunksize, 128 * 1024);
        assert_eq!(c.compression.level, 5);
        assert_eq!(c.select_volumes(&[]).unwrap(), vec!["a".to_string()]);
        assert!(c.select_volumes(&["zz".into()]).is_err());
        assert_eq!(
            c.select_volumes(&["b".into()]).unwrap(),
            vec!["b".to_string()]
        );
    }

    #[test]
    fn max_age_takes_durations_and_says_a_bad_one_in_one_line() {
        let base = "[var]\ndestdir=/x\n";
        assert_eq!(parse(base).unwrap().max_age, 26 * 3600);
        for (v, secs) in [
            ("90m", 5400),
            ("26h", 93600),
            ("2d", 172800),
            ("1w", 604800),
            ("45", 45),
            ("30s", 30),
        ] {
            assert_eq!(
                parse(&format!("{base}max_age = {v}\n")).unwrap().max_age,
                secs,
                "{v}"
            );
        }
        for v in ["1y", "h", "-1h", "0", "1.5h", "99999999999999999999d"] {
            let e = parse(&format!("{base}max_age = {v}\n"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "max_age = {v:?}: expected a duration such as 90m, 26h or 2d"
                )),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn errors() {
        for bad in [
            "[var]\ndestdir=/x\nfoo=1\n",
            "[var]\ndestdir=/x\nchunksize=100K\n",
            "[var]\ndestdir=/x\nchunksize=8M\n",
            "[var]\ndestdir=/x\ncompression=lz4\n",
            "[var]\ndestdir=x\n",
            "[var]\nsource=file\ndestdir=/x\n",
            "[var]\ndestdir=/x\n[volumes]\na=maybe\n",
            "[var]\ndestdir=/x\n[volumes]\n../a=enable\n",
            "[var]\ndestdir=/x\n[other]\n",
            "[var]\ndestdir=/x\ndestvm=backup\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    /// The ```ini block of the README's Configuration section.
    fn readme_example() -> &'static str {
        let readme = include_str!("../README.md");
        let from = readme
            .find("## Configuration")
            .expect("README has a Configuration section");
        let block = &readme[from..];
        let start = block.find("```ini\n").expect("an ini block") + "```ini\n".len();
        let len = block[start..].find("```").expect("the block ends");
        &block[start..start + len]
    }

    #[test]
    fn remote_destination_keys() {
        let c =
            parse("[var]\ndestdir=/b\ndestvm = ssh://bk@h:2222\nsshopts = -F /x  -i /k\n").unwrap();
        let r = c.remote.unwrap();
        assert_eq!(r.transport.to_string(), "ssh://bk@h:2222");
        assert_eq!(r.destcmd, "sparsebak");
        assert_eq!(r.sshopts, ["-F", "/x", "-i", "/k"]);
        let c = parse("[var]\ndestdir=/b\ndestvm = qubes://bk\ndestcmd = /opt/sb\n").unwrap();
        assert_eq!(c.remote.unwrap().destcmd, "/opt/sb");
        assert!(parse("[var]\ndestdir=/b\n").unwrap().remote.is_none());
        let e = parse("[var]\ndestdir=/b\ndestvm = ftp://h\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("destvm = ftp://h: not a destination"), "{e}");
        // A [dest:NAME] section has its own far side; choosing it sets the config's.
        let c = parse(
            "[var]\ndestdir=/b\n[dest:far]\ndestvm = ssh://h\ndestdir = /f\n\
             destcmd = /opt/sb\nsshopts = -p 2\n",
        )
        .unwrap();
        assert!(c.remote.is_none());
        let far = c.for_dest("far").unwrap();
        let r = far.remote.unwrap();
        assert_eq!(r.transport.to_string(), "ssh://h");
        assert_eq!(
            (r.destcmd.as_str(), r.sshopts),
            ("/opt/sb", vec!["-p".to_string(), "2".into()])
        );
        assert!(c.for_dest("default").unwrap().remote.is_none());
    }

    #[test]
    fn readme_example_parses() {
        let text = readme_example();
        assert!(text.contains(';'), "the example has inline comments");
        let c = parse(text).unwrap();
        assert_eq!(c.source, SourceKind::File);
        assert_eq!(c.voldir, Some(PathBuf::from("/srv/images")));
        assert_eq!(c.vgname, "qubes_dom0");
        assert_eq!(c.poolname, "pool00");
        assert_eq!(c.destmountpoint, None);
        assert_eq!(c.destdir, PathBuf::from("/backup/sparsebak"));
        assert_eq!(c.metadir, PathBuf::from("/var/lib/sparsebak"));
        assert_eq!(c.chunksize, 64 * 1024);
        assert_eq!(c.compression.level, 3);
        assert_eq!(c.volumes, vec![("vm-work-private".to_string(), true)]);
    }

    #[test]
    fn shipped_example_parses() {
        let text = include_str!("../sparsebak.ini.example");
        // Encryption works on remote destinations and with tar sessions: the example
        // must not say otherwise.
        for stale in ["needs off", "takes no tarfile", "For now"] {
            assert!(!text.contains(stale), "the example still says {stale:?}");
        }
        let c = parse(text).unwrap();
        assert_eq!(c.source, SourceKind::Lvm);
        assert_eq!(c.destdir, PathBuf::from("/backup/sparsebak"));
        assert_eq!(
            c.volumes,
            vec![
                ("vm-work-private".to_string(), true),
                ("vm-untrusted-private".to_string(), false)
            ]
        );
    }

    #[test]
    fn inline_comments_are_stripped() {
        let c = parse(
            "; top comment\n# another\n[var] ; the main section\nsource = file\t# tab before\n\
             voldir = /srv/img   ; the images\ndestdir = /backup/x   ; the archive\n\
             destvm =   ; empty\nmetadir=/m #c\nkeep = daily:7 weekly:4 ; retention\n\
             [volumes]   # list\nv1 = enable ; yes\nv2 = disable# not a comment\n",
        );
        // `disable#...` is not a comment: the value is wrong, and said so.
        let err = c.unwrap_err().to_string();
        assert!(err.contains("\"disable# not a comment\""), "{err}");
        let c = parse(
            "[var] ; the main section\nsource = file\t# tab before\n\
             voldir = /srv/img   ; the images\ndestdir = /backup/x   ; the archive\n\
             destvm =   ; empty\nmetadir=/m #c\nkeep = daily:7 weekly:4 ; retention\n\
             [volumes]   # list\nv1 = enable ; yes\n",
        )
        .unwrap();
        assert_eq!(c.destdir, PathBuf::from("/backup/x"));
        assert_eq!(c.voldir, Some(PathBuf::from("/srv/img")));
        assert_eq!(c.metadir, PathBuf::from("/m"));
        assert_eq!(c.keep.as_deref(), Some("daily:7 weekly:4"));
        assert_eq!(c.volumes, vec![("v1".to_string(), true)]);
    }

    #[test]
    fn hash_and_semicolon_inside_values_are_kept() {
        let c = parse(
            "[var]\nsource=file\nvoldir=/srv/a#b;c\ndestdir = /backup/x#1;2 ; comment\n\
             metadir = \"/var/lib/sb ;# quoted\"  ; comment\npoolname = 'p ;# q'\t# c\n",
        )
        .unwrap();
        assert_eq!(c.voldir, Some(PathBuf::from("/srv/a#b;c")));
        assert_eq!(c.destdir, PathBuf::from("/backup/x#1;2"));
        assert_eq!(c.metadir, PathBuf::from("/var/lib/sb ;# quoted"));
        assert_eq!(c.poolname, "p ;# q");
    }

    #[test]
    fn keys_and_sections_given_twice_are_errors() {
        for (text, want) in [
            (
                "[var]\ndestdir = /a\nmetadir = /m\ndestdir = /b\n",
                "key \"destdir\" given twice in [var]",
            ),
            (
                "[var]\ndestdir = /a\n[volumes]\nv = enable\nv = disable\n",
                "key \"v\" given twice in [volumes]",
            ),
            (
                "[var]\ndestdir = /a\n[volumes]\na = enable\n[var]\nkeep = last:1\n",
                "section [var] given twice",
            ),
            (
                "[var]\ndestdir = /a\n[volumes]\n[var]\n",
                "section [var] given twice",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert_eq!(err, format!("config t.ini: {want}"), "{text:?}");
        }
    }

    #[test]
    fn syntax_errors_are_explained() {
        for (text, want) in [
            (
                "destdir = /a\n[var]\n",
                "destdir is outside any section; settings go inside [var] or [volumes]",
            ),
            (
                "[var]\ndestdir /a\n",
                "a line is neither KEY = VALUE nor [SECTION]: no '=' \
                 (the file ends at line 3 looking for it)",
            ),
            (
                "[var]\ndestdir /a\nsource = file\n",
                "expected KEY = VALUE or [SECTION], found \"destdir /a\"",
            ),
            (
                "[var\ndestdir = /a\n",
                "a [SECTION] has no closing ']' (the file ends at line 3 looking for it)",
            ),
            (
                "[var\ndestdir = /a\n[volumes]\n",
                "expected [SECTION], found \"[var\"",
            ),
            ("[var]\n = /a\n", "line 2: no key before '='"),
            (
                "[var]\ndestdir = \"/a\n",
                "a quoted value has no closing quote (the file ends at line 3 looking for it)",
            ),
            (
                "[var]\ndestdir = \"/a\nmetadir = \"/m\"\n",
                "value of destdir has no closing quote",
            ),
            (
                "[var]\n  ; indented\ndestdir = /a\n",
                "a comment must start its line, found \"; indented\" indented",
            ),
            ("[var]\ndestdir =   ; none\n", "destdir is required"),
            (
                "[var]\ndestdir = /a\n[volumes]\nv =\n",
                "volume v: \"\" is not enable or disable",
            ),
            (
                "[var]\ndestdir = /a\nbogus = 1\n",
                "unknown key \"bogus\" in [var] (known: source, voldir, vgname, poolname, \
                 destvm, destmountpoint, destdir, destcmd, sshopts, metadir, chunksize, compression, \
                 keep, max_age, tarfile, encrypt, passfile, passcmd, allow_other)",
            ),
            (
                "[var]\ndestdir = /a\n[other]\n",
                "unknown section [other] (known: [var], [volumes], [dest:NAME])",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert_eq!(err, format!("config t.ini: {want}"), "{text:?}");
        }
    }

    #[test]
    fn destinations() {
        let c = parse(
            "[var]\ndestdir = /a\nmetadir = /m\n[dest:usb1]\ndestmountpoint = /mnt/u1\n\
             destdir = sb\ntarfile = on\n[volumes]\nv = enable\n\
             [dest:far]\ndestdir = /srv/sb\ndestcmd = /opt/sparsebak\nsshopts = -F /etc/x\n",
        )
        .unwrap();
        assert_eq!(c.dest_names(), vec!["default", "usb1", "far"]);
        assert_eq!(c.dest, "default");
        assert_eq!(c.destdir, PathBuf::from("/a"));
        assert!(!c.tarfile);
        let u = c.for_dest("usb1").unwrap();
        assert_eq!(u.dest, "usb1");
        assert_eq!(u.destdir, PathBuf::from("/mnt/u1/sb"));
        assert_eq!(u.destmountpoint, Some(PathBuf::from("/mnt/u1")));
        assert!(u.tarfile);
        assert_eq!(u.metadir, PathBuf::from("/m"));
        assert_eq!(u.volumes, c.volumes);
        let f = c.for_dest("far").unwrap();
        assert_eq!(f.destcmd.as_deref(), Some("/opt/sparsebak"));
        assert_eq!(f.sshopts.as_deref(), Some("-F /etc/x"));
        assert_eq!(f.destmountpoint, None);
        assert_eq!(
            c.for_dest("nope").unwrap_err().to_string(),
            "config t.ini: no destination named \"nope\" (configured: default, usb1, far)"
        );
        // Only [dest:NAME] sections: no default destination; the first one fills the
        // destination fields until one is chosen.
        let c =
            parse("[var]\nmetadir = /m\n[dest:b]\ndestdir = /b\n[dest:a]\ndestdir = /a\n").unwrap();
        assert_eq!(c.dest_names(), vec!["b", "a"]);
        assert!(c.for_dest("default").is_err());
        // [dest:default] stands for the destination keys of [var].
        let c = parse("[var]\nmetadir = /m\n[dest:default]\ndestdir = /d\n").unwrap();
        assert_eq!(c.dest, "default");
        assert_eq!(c.destdir, PathBuf::from("/d"));
    }

    #[test]
    fn destination_errors() {
        for (text, want) in [
            (
                "[var]\ndestdir = /a\n[dest:default]\ndestdir = /b\n",
                "destination default given twice: by the destination keys of [var] and by \
                 [dest:default]",
            ),
            (
                "[var]\ndestdir = /a\n[dest:u]\ndestdir = /b\n[dest:u]\ndestdir = /c\n",
                "section [dest:u] given twice",
            ),
            (
                "[var]\ndestdir = /a\n[dest:u]\ndestdir = /b\nmetadir = /m\n",
                "unknown key \"metadir\" in [dest:u] (known: destvm, destmountpoint, destdir, \
                 tarfile, destcmd, sshopts, encrypt, passfile, passcmd, tape, blocksize, changer, \
                 pool, buffer, virtual_slots, virtual_capacity, virtual_speed)",
            ),
            (
                "[var]\ndestdir = /a\n[dest:../u]\ndestdir = /b\n",
                "[dest:../u]: destination name \"../u\" is not allowed: ",
            ),
            (
                "[var]\ndestdir = /a\n[dest:all]\ndestdir = /b\n",
                "[dest:all]: destination name \"all\" is not allowed: `all` stands for every \
                 destination in --dest=all",
            ),
            (
                "[var]\ndestdir = /a\n[dest:]\ndestdir = /b\n",
                "[dest:]: destination name \"\" is not allowed: ",
            ),
            (
                "[var]\ndestdir = /a\n[dest:u]\ndestmountpoint = /mnt/u\n",
                "[dest:u]: destdir is required",
            ),
            (
                "[var]\ndestdir = /a\n[dest:u]\ndestdir = rel\n",
                "[dest:u]: destdir rel must be absolute when destmountpoint is empty",
            ),
            (
                "[var]\ndestdir = /a\n[dest:u]\ndestdir = /b\ntarfile = maybe\n",
                "[dest:u]: tarfile = \"maybe\": expected on or off",
            ),
            (
                "[var]\ntarfile = on\n[dest:u]\ndestdir = /b\n",
                "destdir is required",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config t.ini: {want}")),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn tape_destinations() {
        let c = parse(
            "[var]\nmetadir = /m\n[dest:lto]\ntape = /dev/nst0\nchanger = /dev/sg3\n\
             blocksize = 512K\npool = weekly\nbuffer = 1G\nencrypt = on\n\
             [dest:vt]\ntape = virtual:/srv/vtl\nvirtual_slots = 4\nvirtual_capacity = 64M\n\
             virtual_speed = 300M\n",
        )
        .unwrap();
        let lto = c.for_dest("lto").unwrap();
        let t = lto.tape.unwrap();
        assert_eq!(t.device, TapeDevice::St("/dev/nst0".into()));
        assert_eq!(t.changer, Some(ChangerDevice::Mtx("/dev/sg3".into())));
        assert_eq!(t.block_size, 512 << 10);
        assert_eq!(t.pool, "weekly");
        assert_eq!(t.buffer, 1 << 30);
        assert_eq!(lto.encrypt, Some(true));
        assert_eq!(lto.destdir, PathBuf::new());
        let vt = c.for_dest("vt").unwrap().tape.unwrap();
        assert_eq!(vt.device, TapeDevice::Virtual("/srv/vtl".into()));
        // The library is its own changer; defaults for what is not given.
        assert_eq!(vt.changer, Some(ChangerDevice::Virtual("/srv/vtl".into())));
        assert_eq!(vt.block_size, 256 << 10);
        assert_eq!(vt.pool, "vt");
        assert_eq!(vt.buffer, 256 << 20);
        assert_eq!(
            (vt.virtual_slots, vt.virtual_capacity, vt.virtual_speed),
            (4, 64 << 20, Some(300 << 20))
        );
        // A drive without a changer; the default slots and capacity.
        let c = parse("[var]\n[dest:t]\ntape = /dev/nst1\n[dest:v]\ntape = virtual:/v\n").unwrap();
        let t = c.for_dest("t").unwrap().tape.unwrap();
        assert_eq!(t.changer, None);
        let v = c.for_dest("v").unwrap().tape.unwrap();
        assert_eq!((v.virtual_slots, v.virtual_capacity), (8, 1 << 30));
        // Archive destinations have no tape settings.
        let c = parse("[var]\ndestdir = /a\n").unwrap();
        assert_eq!(c.tape, None);
    }

    #[test]
    fn tape_destination_errors() {
        let at = |body: &str| format!("[var]\nmetadir = /m\n[dest:t]\n{body}");
        for (body, want) in [
            (
                "tape = /dev/nst0\ndestdir = /b\n",
                "[dest:t]: tape = /dev/nst0 and destdir are both set: a destination is a tape \
                 or an archive folder, not both",
            ),
            (
                "tape = /dev/nst0\ntarfile = on\n",
                "[dest:t]: tape = /dev/nst0 and tarfile are both set: tape files are streams, \
                 not tar files",
            ),
            (
                "tape = /dev/nst0\ndestvm = ssh://h\n",
                "[dest:t]: tape = /dev/nst0 and destvm are both set: a tape drive is on this \
                 machine",
            ),
            (
                "destdir = /b\nblocksize = 64K\n",
                "[dest:t]: blocksize is a tape setting, but tape is not set (tape = /dev/nstN \
                 or virtual:DIR)",
            ),
            (
                "tape = nst0\n",
                "[dest:t]: tape = \"nst0\": expected an absolute device path (/dev/nst0) or \
                 virtual:/ABSOLUTE/DIR",
            ),
            (
                "tape = virtual:rel\n",
                "[dest:t]: tape = \"virtual:rel\": expected an absolute device path",
            ),
            (
                "tape = /dev/nst0\nvirtual_slots = 4\n",
                "[dest:t]: virtual_slots is a setting of a virtual library (tape = \
                 virtual:DIR), but tape = /dev/nst0 is a real drive",
            ),
            (
                "tape = /dev/nst0\nvirtual_capacity = 1G\n",
                "[dest:t]: virtual_capacity is a setting of a virtual library",
            ),
            (
                "tape = /dev/nst0\nblocksize = 0\n",
                "[dest:t]: blocksize = \"0\": variable-block mode is not supported; give a \
                 fixed size such as 256K",
            ),
            (
                "tape = /dev/nst0\nblocksize = variable\n",
                "[dest:t]: blocksize = \"variable\": variable-block mode is not supported",
            ),
            (
                "tape = /dev/nst0\nblocksize = 1000\n",
                "[dest:t]: blocksize = \"1000\": must be a multiple of 512 from 512 to 1M",
            ),
            (
                "tape = /dev/nst0\nblocksize = 256\n",
                "[dest:t]: blocksize = \"256\": must be a multiple of 512 from 512 to 1M",
            ),
            (
                "tape = /dev/nst0\nblocksize = 2M\n",
                "[dest:t]: blocksize = \"2M\": must be a multiple of 512 from 512 to 1M",
            ),
            (
                "tape = /dev/nst0\nblocksize = big\n",
                "[dest:t]: blocksize = \"big\": must be a multiple of 512 from 512 to 1M",
            ),
            (
                "tape = /dev/nst0\nchanger = virtual:/v\n",
                "[dest:t]: changer = virtual:/v: a virtual changer moves the cartridges of a \
                 virtual library, but tape = /dev/nst0 is a real drive",
            ),
            (
                "tape = virtual:/v\nchanger = /dev/sg1\n",
                "[dest:t]: changer = /dev/sg1: a real changer cannot move the cartridges of \
                 the virtual library tape = virtual:/v",
            ),
            (
                "tape = virtual:/v\nchanger = virtual:/w\n",
                "[dest:t]: changer = virtual:/w: a virtual library's changer is the library \
                 itself (changer = virtual:/v, or leave it out)",
            ),
            (
                "tape = /dev/nst0\nchanger = sg1\n",
                "[dest:t]: changer = \"sg1\": expected an absolute device path (/dev/nst0, \
                 /dev/sg1) or virtual:/ABSOLUTE/DIR",
            ),
            (
                "tape = /dev/nst0\nbuffer = 4K\n",
                "[dest:t]: buffer = \"4K\": must hold at least one block (262144 bytes) and at \
                 most 64G",
            ),
            (
                "tape = /dev/nst0\nbuffer = lots\n",
                "[dest:t]: buffer = \"lots\": expected a size such as 256K, 4M or 1G",
            ),
            (
                "tape = virtual:/v\nvirtual_slots = 0\n",
                "[dest:t]: virtual_slots = \"0\": expected 1 to 10000",
            ),
            (
                "tape = virtual:/v\nvirtual_capacity = 1M\n",
                "[dest:t]: virtual_capacity = \"1M\": must hold at least 64 blocks (16777216 \
                 bytes)",
            ),
            (
                "tape = virtual:/v\nvirtual_speed = 0\n",
                "[dest:t]: virtual_speed = 0: give bytes per second (e.g. 300M), or leave it out",
            ),
            (
                "tape = /dev/nst0\npool = \"a b\"\n",
                "[dest:t]: pool = \"a b\": 1 to 64 printable ASCII characters without spaces",
            ),
        ] {
            let err = parse(&at(body)).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("config t.ini: {want}")),
                "{body:?}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
        // Tape keys belong to [dest:NAME] sections only.
        let err = parse("[var]\nmetadir = /m\ntape = /dev/nst0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key \"tape\" in [var]"), "{err}");
    }

    #[test]
    fn mountpoint_joins() {
        let c = parse("[var]\ndestmountpoint=/mnt/b\ndestdir=sb\n").unwrap();
        assert_eq!(c.destdir, PathBuf::from("/mnt/b/sb"));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("x"), None);
    }
}
