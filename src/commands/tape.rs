//! `sparsebak tape ...`: the drive and library of a tape destination.

use anyhow::{bail, Context, Result};

use super::Ctx;
use crate::catalog::{Catalog, TapeRecord};
use crate::cli::TapeAction;
use crate::config::DestConfig;
use crate::progress::out;
use crate::tape::drive::{ReadOutcome, TapeDrive, TapeError};
use crate::tape::label::{LabelError, TapeLabel};
use crate::tape::open::{ready, TapeSet};

/// The drive number every command uses (the first drive of the library).
const DRIVE: u32 = 0;

pub fn run(ctx: &Ctx, action: &TapeAction) -> Result<()> {
    let config = &ctx.config;
    let dest = config
        .dests
        .iter()
        .find(|d| d.name == config.dest)
        .with_context(|| format!("no destination {}", config.dest))?;
    let Some(t) = &dest.tape else {
        bail!(
            "destination {} is not a tape destination: `sparsebak tape` needs a [dest:NAME] \
             section with tape = /dev/nstN or virtual:DIR (name it with --dest=NAME)",
            dest.name
        );
    };
    let mut set = crate::tape::open::open(dest).with_context(|| {
        format!(
            "opening tape destination {} ({})",
            dest.name,
            t.device_label()
        )
    })?;
    match action {
        TapeAction::Status => status(ctx, dest, &mut set),
        TapeAction::Rewind => {
            set.drive.rewind()?;
            position(&mut set)
        }
        TapeAction::Eod => {
            set.drive.eod()?;
            position(&mut set)
        }
        TapeAction::Fsf { count } => {
            set.drive.fsf(*count)?;
            position(&mut set)
        }
        TapeAction::Bsf { count } => {
            set.drive.bsf(*count)?;
            position(&mut set)
        }
        TapeAction::Label {
            slot,
            all,
            pool,
            name,
            force,
        } => {
            let pool = pool.clone().unwrap_or_else(|| t.pool.clone());
            let mut cat = catalog(ctx)?;
            if *all {
                label_all(dest, &mut set, &mut cat, &pool)
            } else {
                label_one(&mut set, &mut cat, *slot, &pool, name.as_deref(), *force)
            }
        }
        TapeAction::Ls => ls(ctx, &mut set),
        TapeAction::Scan { slot, all } => scan(ctx, dest, &t.pool, &mut set, *slot, *all),
        TapeAction::Load { slot } => {
            let changer = set.changer(&dest.name)?;
            changer.load(*slot, DRIVE)?;
            let barcode = loaded(&mut set)?.0;
            ready(set.drive.as_mut(), set.block_size)?;
            out(&format!(
                "slot {slot} ({}) loaded into drive {DRIVE}",
                barcode.as_deref().unwrap_or("no barcode")
            ));
            Ok(())
        }
        TapeAction::Unload { slot } => {
            let (barcode, from) = loaded(&mut set)?;
            set.drive.unload()?;
            if set.changer.is_none() {
                out("the tape is unloaded (no changer: take it out of the drive)");
                return Ok(());
            }
            let changer = set.changer(&dest.name)?;
            changer.unload(DRIVE, *slot)?;
            out(&format!(
                "drive {DRIVE}: {} unloaded into slot {}",
                barcode.as_deref().unwrap_or("the tape"),
                slot.or(from)
                    .map_or_else(|| "?".to_string(), |s| s.to_string())
            ));
            Ok(())
        }
        TapeAction::Inventory { .. } => inventory(ctx, dest, &mut set),
        TapeAction::Retension => {
            set.drive.rewind()?;
            set.drive.eod()?;
            set.drive.rewind()?;
            out("retensioned: rewound, wound to the end of the data, rewound");
            position(&mut set)
        }
        TapeAction::Eject => {
            let (barcode, from) = loaded(&mut set)?;
            set.drive.eject()?;
            if let Some(changer) = set.changer.as_deref_mut() {
                changer.unload(DRIVE, None)?;
                out(&format!(
                    "drive {DRIVE}: {} ejected into slot {}",
                    barcode.as_deref().unwrap_or("the tape"),
                    from.map_or_else(|| "?".to_string(), |s| s.to_string())
                ));
            } else {
                out("the tape is ejected");
            }
            Ok(())
        }
    }
}

fn catalog(ctx: &Ctx) -> Result<Catalog> {
    crate::metadir::create_private_dir(&ctx.config.metadir)?;
    let path = crate::metadir::catalog(&ctx.config);
    Ok(Catalog::open(&path)?)
}

/// The barcode of the tape in the drive and the slot it came from, as the changer
/// knows them (both `None` without a changer).
fn loaded(set: &mut TapeSet) -> Result<(Option<String>, Option<u32>)> {
    let Some(changer) = set.changer.as_deref_mut() else {
        return Ok((None, None));
    };
    let inv = changer.inventory()?;
    Ok(inv
        .drives
        .iter()
        .find(|d| d.number == DRIVE && d.full)
        .map_or((None, None), |d| (d.barcode.clone(), d.from_slot)))
}

/// The position line: tape file, block in it, and the logical block.
fn position_line(drive: &mut dyn TapeDrive) -> Result<String> {
    let st = drive.status()?;
    let opt = |v: Option<u64>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
    let logical = drive.position()?;
    Ok(format!(
        "position: file {}, block {} (logical block {logical}){}{}",
        opt(st.file_number),
        opt(st.block_in_file),
        if st.bot {
            ", at the beginning (BOT)"
        } else {
            ""
        },
        if st.eod {
            ", at the end of data (EOD)"
        } else {
            ""
        },
    ))
}

fn position(set: &mut TapeSet) -> Result<()> {
    let line = position_line(set.drive.as_mut())?;
    out(&line);
    Ok(())
}

/// What the start of the tape holds.
enum Probe {
    Blank,
    Labelled(TapeLabel),
    /// Something else (another block size, another format, a damaged label).
    Other(String),
}

/// Rewind and look at file 0.
fn probe(drive: &mut dyn TapeDrive) -> Result<Probe> {
    let bs = drive.status()?.block_size;
    drive.rewind()?;
    let mut buf = vec![0u8; bs.max(512)];
    match drive.read_block(&mut buf) {
        Ok(ReadOutcome::EndOfData) => return Ok(Probe::Blank),
        Ok(_) | Err(TapeError::BlockSizeMismatch { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(match TapeLabel::read(drive) {
        Ok(l) => Probe::Labelled(l),
        Err(LabelError::Tape(e)) => return Err(e.into()),
        Err(e) => Probe::Other(e.to_string()),
    })
}

fn status(ctx: &Ctx, dest: &DestConfig, set: &mut TapeSet) -> Result<()> {
    out(&format!("drive: {}", set.drive.name()));
    let (barcode, slot) = loaded(set)?;
    let st = match set.drive.status() {
        Ok(st) => st,
        Err(TapeError::NoTape { .. }) => {
            out("tape: none loaded");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    if !st.online {
        out("tape: none loaded");
        return Ok(());
    }
    out(&format!(
        "tape: {}{}",
        barcode.as_deref().unwrap_or("loaded (barcode unknown)"),
        slot.map(|s| format!(" from slot {s}")).unwrap_or_default()
    ));
    // Read the label, then go back where the tape was.
    let here = set.drive.position()?;
    let label = probe(set.drive.as_mut());
    set.drive.locate(here)?;
    let known = |uuid: &str| -> String {
        match catalog(ctx).and_then(|c| Ok(c.tape(uuid)?)) {
            Ok(Some(t)) => format!(
                ", in the catalog ({})",
                if t.full { "full" } else { "appendable" }
            ),
            Ok(None) => ", not in the catalog".into(),
            Err(e) => format!(", catalog unreadable: {e}"),
        }
    };
    out(&match label? {
        Probe::Blank => "label: none (blank tape)".to_string(),
        Probe::Labelled(l) => format!(
            "label: {} pool {} uuid {} blocks of {} bytes{}",
            l.name,
            l.pool,
            l.uuid_string(),
            l.block_size,
            known(&l.uuid_string())
        ),
        Probe::Other(why) => format!("label: unreadable: {why}"),
    });
    out(&position_line(set.drive.as_mut())?);
    let st = set.drive.status()?;
    out(&format!(
        "block size: {} (destination {}: {})",
        st.block_size, dest.name, set.block_size
    ));
    let flags: Vec<&str> = [
        (st.bot, "BOT"),
        (st.eof, "EOF"),
        (st.eot, "EOT"),
        (st.eod, "EOD"),
        (st.online, "ONLINE"),
        (st.write_protected, "WR_PROT"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    out(&format!("flags: {}", flags.join(" ")));
    Ok(())
}

/// Write a label on the loaded tape and record it.
fn write_label(
    set: &mut TapeSet,
    cat: &mut Catalog,
    name: &str,
    barcode: Option<String>,
    slot: Option<u32>,
    pool: &str,
) -> Result<TapeLabel> {
    let label = TapeLabel::new(name, pool, set.block_size)?;
    label.write(set.drive.as_mut())?;
    cat.add_tape(&TapeRecord {
        uuid: label.uuid_string(),
        name: label.name.clone(),
        barcode,
        pool: pool.to_string(),
        block_size: label.block_size as u64,
        full: false,
        labelled: label.written,
        last_written: None,
        slot,
    })?;
    Ok(label)
}

fn label_one(
    set: &mut TapeSet,
    cat: &mut Catalog,
    slot: Option<u32>,
    pool: &str,
    name: Option<&str>,
    force: bool,
) -> Result<()> {
    if let Some(slot) = slot {
        if set.changer.is_none() {
            bail!("--slot needs a changer (changer = /dev/sgN)");
        }
        let (_, from) = loaded(set)?;
        if from != Some(slot) {
            let inv = set.changer("")?.inventory()?;
            if inv.drives.iter().any(|d| d.number == DRIVE && d.full) {
                // The drive lets go of its tape before the changer takes it.
                set.drive.unload()?;
                set.changer("")?.unload(DRIVE, None)?;
            }
            set.changer("")?.load(slot, DRIVE)?;
        }
        ready(set.drive.as_mut(), set.block_size)?;
    }
    let (barcode, from) = loaded(set)?;
    let where_ = match (&barcode, from) {
        (Some(b), Some(s)) => format!("slot {s} ({b})"),
        (Some(b), None) => b.clone(),
        _ => "the tape in the drive".to_string(),
    };
    let Some(name) = name.map(str::to_string).or_else(|| barcode.clone()) else {
        bail!("{where_} has no barcode known; give it a name with --name=NAME");
    };
    let probed = probe(set.drive.as_mut())?;
    // The tape this one would replace in the catalog: its own old label, or (a name
    // already given to another tape) another tape, which is refused.
    let here = match &probed {
        Probe::Labelled(l) => Some(l.uuid_string()),
        _ => None,
    };
    if let Some(other) = cat.tape_by_name(&name)? {
        // The same cartridge (its barcode) whose label cannot be read is not another
        // tape: labelled anew with --force, it loses what the catalog has on it.
        let same_cartridge = barcode.is_some() && other.barcode == barcode;
        if same_cartridge && force && here.is_none() {
            forget_chains_on(cat, &other.uuid, &other.name)?;
        } else if Some(&other.uuid) != here.as_ref() && !same_cartridge {
            bail!(
                "the catalog already knows a tape named {name} (uuid {}, pool {}, {} tape \
                 file(s)): labelling {where_} so would lose it; give another --name",
                other.uuid,
                other.pool,
                cat.tape_files(&other.uuid)?.len()
            );
        }
    }
    match probed {
        Probe::Blank => {}
        Probe::Labelled(l) if force => {
            // What the catalog holds on it goes: each chain that loses a session is
            // forgotten, so its next send is full (an incremental on a session no tape
            // holds could never be restored).
            forget_chains_on(cat, &l.uuid_string(), &l.name)?;
        }
        _ if force => {}
        Probe::Labelled(l) => bail!(
            "{where_} is already labelled {} in pool {} (uuid {}); `tape label --force` \
             labels it again, and what is on it is lost",
            l.name,
            l.pool,
            l.uuid_string()
        ),
        Probe::Other(why) => bail!(
            "{where_} is not blank and holds no label this destination reads ({why}); `tape \
             label --force` labels it, and what is on it is lost"
        ),
    }
    let label = write_label(set, cat, &name, barcode, from, pool)?;
    out(&format!(
        "{where_}: labelled {} in pool {} (uuid {})",
        label.name,
        label.pool,
        label.uuid_string()
    ));
    Ok(())
}

/// Forget every chain with a session on the tape `uuid` (about to be labelled anew),
/// saying which, so the next send of each volume to its destination is full.
fn forget_chains_on(cat: &mut Catalog, uuid: &str, name: &str) -> Result<()> {
    let files = cat.tape_files(uuid)?;
    let mut chains: std::collections::BTreeMap<(String, String), Vec<String>> =
        std::collections::BTreeMap::new();
    for f in &files {
        chains
            .entry((f.dest.clone(), f.volume.clone()))
            .or_default()
            .push(f.session.clone());
    }
    for ((dest, volume), sessions) in chains {
        let id = cat.destination("tape", &dest)?;
        let chain = cat.chain(id, &volume)?;
        cat.forget_tape_chain(&dest, &volume)?;
        out(&format!(
            "tape {name}: volume {volume} on destination {dest} loses session(s) {}: its \
             chain there ({} session(s)) is forgotten and its next send there is full",
            sessions.join(" "),
            chain.len()
        ));
    }
    Ok(())
}

fn label_all(dest: &DestConfig, set: &mut TapeSet, cat: &mut Catalog, pool: &str) -> Result<()> {
    let inv = set.changer(&dest.name)?.inventory()?;
    if inv.drives.iter().any(|d| d.number == DRIVE && d.full) {
        set.drive.unload()?;
        set.changer(&dest.name)?.unload(DRIVE, None)?;
    }
    let (mut labelled, mut skipped) = (0, 0);
    for slot in inv.slots.iter().filter(|s| s.full && !s.import_export) {
        let n = slot.number;
        let Some(barcode) = slot.barcode.clone() else {
            out(&format!(
                "slot {n}: skipped: no barcode (label it with --slot={n} --name=NAME)"
            ));
            skipped += 1;
            continue;
        };
        set.changer(&dest.name)?.load(n, DRIVE)?;
        ready(set.drive.as_mut(), set.block_size)?;
        let result = match probe(set.drive.as_mut())? {
            Probe::Blank => {
                let l = write_label(set, cat, &barcode, Some(barcode.clone()), Some(n), pool)?;
                labelled += 1;
                format!(
                    "labelled {} in pool {pool} (uuid {})",
                    l.name,
                    l.uuid_string()
                )
            }
            Probe::Labelled(l) => {
                skipped += 1;
                format!("skipped: already labelled {} in pool {}", l.name, l.pool)
            }
            Probe::Other(why) => {
                skipped += 1;
                format!("skipped: not blank ({why})")
            }
        };
        out(&format!("slot {n} ({barcode}): {result}"));
        set.drive.unload()?;
        set.changer(&dest.name)?.unload(DRIVE, Some(n))?;
    }
    out(&format!(
        "{labelled} tape(s) labelled in pool {pool}, {skipped} skipped"
    ));
    Ok(())
}

/// What the first block of a tape file says: the stream's volume and session.
fn describe_first_block(block: &[u8]) -> String {
    use crate::tape::catalog_copy::CopyHeader;
    use crate::tape::writer::{PartHeader, HEADER_MAGIC};
    use sparsebak_format::stream::{StreamHeader, HEADER_MEMBER, STREAM_FORMAT_2};
    if CopyHeader::is_copy(block) {
        return match CopyHeader::decode(block) {
            Ok(h) => format!(
                "a catalog copy ({}, {} bytes, id {})",
                if h.sealed { "sealed" } else { "plain" },
                h.catalog_bytes,
                h.id
            ),
            Err(e) => e.to_string(),
        };
    }
    if block.starts_with(HEADER_MAGIC) {
        return match PartHeader::decode(block) {
            Ok(h) => format!("part {} of tape file {} (a continuation)", h.part, h.id),
            Err(e) => format!("a damaged part header ({e})"),
        };
    }
    let Ok(h) = tar::Header::from_byte_slice(&block[..512.min(block.len())])
        .path()
        .map(|p| p.to_string_lossy().into_owned())
    else {
        return "not a sparsebak stream".into();
    };
    if h != HEADER_MEMBER {
        return "not a sparsebak stream".into();
    }
    let size = tar::Header::from_byte_slice(&block[..512])
        .size()
        .unwrap_or(u64::MAX);
    let Some(text) = usize::try_from(size)
        .ok()
        .and_then(|n| block.get(512..512 + n))
        .and_then(|b| std::str::from_utf8(b).ok())
    else {
        return "a sparsebak stream (its header is past the first block)".into();
    };
    if text.starts_with(&format!("format={STREAM_FORMAT_2}\n")) {
        return "an encrypted sparsebak stream".into();
    }
    match StreamHeader::parse(text) {
        Ok(h) => format!(
            "volume {} session {}{}",
            h.volume,
            h.session,
            h.base
                .map(|b| format!(" (incremental on {b})"))
                .unwrap_or_else(|| " (full)".into())
        ),
        Err(why) => format!("a damaged sparsebak stream header ({why})"),
    }
}

fn ls(ctx: &Ctx, set: &mut TapeSet) -> Result<()> {
    let label = match probe(set.drive.as_mut())? {
        Probe::Blank => {
            out("the tape is blank");
            return Ok(());
        }
        Probe::Other(why) => bail!("cannot list the tape: {why}"),
        Probe::Labelled(l) => l,
    };
    let uuid = label.uuid_string();
    out(&format!(
        "tape {} pool {} uuid {} blocks of {} bytes",
        label.name, label.pool, uuid, label.block_size
    ));
    let known = catalog(ctx)?.tape_files(&uuid)?;
    let bs = label.block_size;
    let mut buf = vec![0u8; bs];
    let mut first = vec![0u8; bs];
    let mut file = 1u64;
    loop {
        let start = set.drive.position()?;
        let mut blocks = 0u64;
        let end = loop {
            match set.drive.read_block(&mut buf)? {
                ReadOutcome::Block => {
                    if blocks == 0 {
                        first.copy_from_slice(&buf);
                    }
                    blocks += 1;
                }
                other => break other,
            }
        };
        if blocks == 0 && end == ReadOutcome::EndOfData {
            break;
        }
        let what = if blocks == 0 {
            "empty".to_string()
        } else {
            describe_first_block(&first)
        };
        let cat = known
            .iter()
            .find(|k| k.file_number == file)
            .map(|k| {
                format!(
                    "; catalog: {} volume {} session {} part {}",
                    k.dest, k.volume, k.session, k.part
                )
            })
            .unwrap_or_default();
        out(&format!(
            "file {file}: first block {start}, {blocks} blocks ({} bytes): {what}{cat}{}",
            blocks * bs as u64,
            if end == ReadOutcome::EndOfData {
                " (no filemark after it)"
            } else {
                ""
            }
        ));
        if end == ReadOutcome::EndOfData {
            break;
        }
        file += 1;
    }
    Ok(())
}

fn inventory(ctx: &Ctx, dest: &DestConfig, set: &mut TapeSet) -> Result<()> {
    let inv = set.changer(&dest.name)?.inventory()?;
    let cat = catalog(ctx)?;
    let tapes = cat.tapes()?;
    let describe = |barcode: &Option<String>| -> String {
        let Some(b) = barcode else {
            return "no barcode".into();
        };
        match tapes
            .iter()
            .find(|t| t.barcode.as_deref() == Some(b.as_str()) || t.name == *b)
        {
            Some(t) => format!(
                "{b} label {} pool {} {}",
                t.name,
                t.pool,
                if t.full { "full" } else { "appendable" }
            ),
            None => format!("{b} (not labelled in the catalog)"),
        }
    };
    let known = |barcode: &Option<String>| {
        barcode.as_ref().and_then(|b| {
            tapes
                .iter()
                .find(|t| t.barcode.as_deref() == Some(b.as_str()) || t.name == *b)
        })
    };
    let tape_json = |barcode: &Option<String>| match known(barcode) {
        Some(t) => serde_json::json!({
            "label": t.name,
            "pool": t.pool,
            "full": t.full,
        }),
        None => serde_json::Value::Null,
    };
    let doc = ctx.json.then(|| {
        serde_json::json!({
            "version": super::json::VERSION,
            "command": "tape inventory",
            "dest": dest.name,
            "drives": inv.drives.iter().map(|d| serde_json::json!({
                "number": d.number,
                "full": d.full,
                "barcode": d.barcode,
                "from_slot": d.from_slot,
                "tape": tape_json(&d.barcode),
            })).collect::<Vec<_>>(),
            "slots": inv.slots.iter().map(|s| serde_json::json!({
                "number": s.number,
                "full": s.full,
                "barcode": s.barcode,
                "import_export": s.import_export,
                "tape": tape_json(&s.barcode),
            })).collect::<Vec<_>>(),
        })
    });
    let out = |line: &str| {
        if !ctx.json {
            out(line);
        }
    };
    for d in &inv.drives {
        if d.full {
            out(&format!(
                "drive {}: {}{}",
                d.number,
                describe(&d.barcode),
                d.from_slot
                    .map(|s| format!(" (from slot {s})"))
                    .unwrap_or_default()
            ));
        } else {
            out(&format!("drive {}: empty", d.number));
        }
    }
    for s in &inv.slots {
        let kind = if s.import_export {
            " (import/export)"
        } else {
            ""
        };
        if s.full {
            out(&format!(
                "slot {}{kind}: {}",
                s.number,
                describe(&s.barcode)
            ));
            // Remember where each known tape was seen.
            if let Some(t) = s.barcode.as_ref().and_then(|b| {
                tapes
                    .iter()
                    .find(|t| t.barcode.as_deref() == Some(b.as_str()))
            }) {
                if !s.import_export && t.slot != Some(s.number) {
                    cat.set_tape_slot(&t.uuid, Some(s.number))?;
                }
            }
        } else {
            out(&format!("slot {}{kind}: empty", s.number));
        }
    }
    if let Some(doc) = doc {
        super::json::print(&doc);
    }
    Ok(())
}

fn scan(
    ctx: &Ctx,
    dest: &DestConfig,
    pool: &str,
    set: &mut TapeSet,
    slot: Option<u32>,
    all: bool,
) -> Result<()> {
    use crate::tape::scan::{scan, ScanOptions, Which};
    let which = match (slot, all) {
        (Some(n), _) => Which::Slot(n),
        (None, true) => Which::All,
        (None, false) => Which::Loaded,
    };
    let mut cat = catalog(ctx)?;
    let path = crate::metadir::catalog(&ctx.config);
    let config = ctx.config.clone();
    let what = format!("tape destination {}", dest.name);
    let passphrase = Box::new(move || {
        let sources = crate::passphrase::Sources {
            what: what.clone(),
            ..crate::passphrase::sources_of(&config)
        };
        crate::passphrase::obtain_from(&sources, crate::passphrase::Purpose::Unlock)
            .map_err(|e| e.to_string())
    });
    let opts = ScanOptions {
        dest: &dest.name,
        pool,
        block_size: set.block_size,
        drive_number: DRIVE,
        passphrase,
    };
    let r = scan(
        set.drive.as_mut(),
        set.changer.as_deref_mut(),
        which,
        &mut cat,
        &path,
        opts,
    )
    .with_context(|| format!("scanning the tapes of destination {}", dest.name))?;
    for (name, uuid, files) in &r.tapes {
        out(&format!("tape {name} (uuid {uuid}): {files} file(s)"));
    }
    for s in &r.skipped {
        out(&format!("skipped {s}"));
    }
    for f in &r.foreign {
        out(&format!("not a sparsebak file: {f}"));
    }
    for (id, written) in &r.copies {
        let when = chrono::DateTime::from_timestamp(*written, 0).map_or_else(
            || written.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        );
        out(&format!("catalog copy {id} of {when}"));
    }
    let mut problems = r.problems.clone();
    if let Some(k) = &r.key_file {
        // The destination's key file, for the next sends to keep its key.
        let path = crate::metadir::tape_key(&ctx.config, &dest.name);
        match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent() {
                    crate::metadir::create_private_dir(dir)?;
                }
                crate::durable::write_atomic(&path, k.render().as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                out(&format!(
                    "the destination's key file was missing: restored at {} from the tapes",
                    path.display()
                ));
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            Ok(bytes) => {
                if sparsebak_format::crypto::KeyFile::parse(&bytes)
                    .ok()
                    .as_ref()
                    != Some(k)
                {
                    problems.push(format!(
                        "the key file {} is not the one on the tapes (key id {}); it is kept",
                        path.display(),
                        k.archive
                    ));
                }
            }
        }
    }
    for p in &problems {
        out(&format!("problem: {p}"));
    }
    match &r.imported {
        Some(id) => out(&format!(
            "imported catalog copy {id}: {} session(s)",
            r.sessions_from_copy
        )),
        None => out("no catalog copy imported"),
    };
    for (volume, session) in &r.sessions_added {
        out(&format!(
            "volume {volume} session {session}: rebuilt from its stream"
        ));
    }
    out(&format!(
        "{} tape(s) scanned, {} added to the catalog; {} tape file(s) and {} session(s) added",
        r.tapes.len(),
        r.tapes_added,
        r.tape_files_added,
        r.sessions_from_copy + r.sessions_added.len()
    ));
    // A tape that could not be scanned (its label unreadable, another pool) leaves the
    // catalog without what it holds: not a success.
    if r.tapes.is_empty() || r.unreadable > 0 {
        bail!(
            "tape scan: {} tape(s) scanned, {} with a label that could not be read (see \
             above): what is on those is not in the catalog",
            r.tapes.len(),
            r.unreadable
        );
    }
    Ok(())
}
