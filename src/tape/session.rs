//! Volume sessions on a tape destination.
//!
//! Each volume session sent to a tape destination is one self-contained stream (the
//! `send --stream` format, encrypted when the destination is) written as one tape file
//! at the end of data of an appendable tape of the destination's pool, spanning onto
//! the next one at the early warning. The stream is made on the caller's thread and
//! handed to the tape writer's thread through a bounded [`pipe`]; the catalog records
//! the parts (tape, file number, first block, length, SHA-256) before it records the
//! session in the destination's chain, so a run stopped at any point leaves a chain
//! that builds only on streams that are whole on tape.
//!
//! Reading a session back takes the tape files of its chain (the full stream and every
//! incremental up to it) from the catalog and reads each by LOCATE to its first block
//! ([`super::reader`]), on a thread of its own, into the stream reader.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex};

use crate::catalog::{Catalog, TapeFileRecord, TapeRecord};
use crate::config::{Config, DestConfig, TapeConfig};
use crate::error::{Error, Result};
use crate::source::Source;
use crate::stream_send::{send_stream_to, StreamDone, StreamOpts, StreamOutcome};

use super::buffer::BufferStats;
use super::changer::Changer;
use super::drive::{ReadOutcome, TapeDrive, TapeError};
use super::label::{LabelError, TapeLabel};
use super::open::{self, TapeSet};
use super::pipe::{pipe, PipeReader};
use super::reader::{ChangerMount, LoadedTape, MountTape, TapeFileReader};
use super::writer::{
    write_tape_file_from, ChangerNextTape, NextTape, NoNextTape, Part, TapeFile, TapeFileError,
    TapeFileOptions,
};

/// The changer's number of the drive a destination uses.
pub const DRIVE: u32 = 0;
/// Bytes per buffer through the pipe between the stream and the tape threads, and how
/// many may be in flight (the tape buffer proper is the writer's).
const PIPE_CHUNK: usize = 1 << 20;
const PIPE_DEPTH: usize = 8;

fn msg(e: impl std::fmt::Display) -> Error {
    Error::Msg(e.to_string())
}

/// A tape destination opened for work: its configuration, drive and changer.
pub struct TapeDest<'a> {
    pub config: &'a Config,
    pub dest: &'a DestConfig,
    pub tape: &'a TapeConfig,
    pub set: TapeSet,
}

/// One volume session sent to tape.
#[derive(Debug)]
pub struct TapeSent {
    pub outcome: StreamOutcome,
    pub file: TapeFile,
    pub stats: BufferStats,
}

/// The 16 bytes of a uuid written `8-4-4-4-12`.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    hex::decode(hex).ok()?.try_into().ok()
}

/// A tape file as the catalog records it: the parts of one stream, in order.
pub fn tape_file_of(cat: &Catalog, records: &[TapeFileRecord]) -> Result<TapeFile> {
    let Some(first) = records.first() else {
        return Err(msg("no tape file parts"));
    };
    let mut parts = Vec::with_capacity(records.len());
    let mut offset = 0u64;
    let mut block_size = None;
    for (i, r) in records.iter().enumerate() {
        let tape = cat.tape(&r.tape).map_err(msg)?.ok_or_else(|| {
            msg(format!(
                "the catalog names tape {} but does not know it",
                r.tape
            ))
        })?;
        let uuid = parse_uuid(&tape.uuid).ok_or_else(|| {
            msg(format!(
                "the catalog's tape uuid {:?} is damaged",
                tape.uuid
            ))
        })?;
        if r.part as usize != i || r.stream_id != first.stream_id {
            return Err(msg(format!(
                "the catalog's parts of session {} of volume {} do not follow on",
                r.session, r.volume
            )));
        }
        if *block_size.get_or_insert(tape.block_size) != tape.block_size {
            return Err(msg(format!(
                "session {} of volume {} lies on tapes of different block sizes",
                r.session, r.volume
            )));
        }
        parts.push(Part {
            part: r.part + 1,
            tape: tape.name.clone(),
            tape_uuid: uuid,
            file_number: r.file_number,
            first_block: r.first_block,
            data_blocks: r.blocks,
            offset,
            bytes: r.bytes,
            sha256: r.sha256,
        });
        offset = offset.saturating_add(r.bytes);
    }
    let block_size = usize::try_from(block_size.unwrap_or(0))
        .map_err(|_| msg("the catalog's block size is impossible"))?;
    Ok(TapeFile {
        id: first.stream_id.clone(),
        block_size,
        parts,
        bytes: first.stream_bytes,
        sha256: first.stream_sha256,
    })
}

/// A session of a volume on a tape destination, with the tape files of its chain
/// (its full stream first).
#[derive(Debug, Clone)]
pub struct TapeChain {
    pub session: String,
    pub files: Vec<TapeFile>,
}

/// The chain of tape files that restores `session` (the latest when `None`) of
/// `volume` from tape destination `dest`, from the catalog.
pub fn session_chain(
    cat: &Catalog,
    dest: &str,
    volume: &str,
    session: Option<&str>,
) -> Result<TapeChain> {
    let id = cat.destination("tape", dest).map_err(msg)?;
    let chain = cat.chain(id, volume).map_err(msg)?;
    let Some(last) = chain.last() else {
        return Err(msg(format!(
            "volume {volume} has no session on tape destination {dest} (`sparsebak tape scan \
             --dest={dest}` rebuilds the catalog from the tapes)"
        )));
    };
    let upto = match session {
        None => chain.len() - 1,
        Some(s) => chain.iter().position(|c| c.session == s).ok_or_else(|| {
            msg(format!(
                "volume {volume} has no session {s} on tape destination {dest} (its sessions \
                 there: {}; latest {})",
                chain.len(),
                last.session
            ))
        })?,
    };
    let mut files = Vec::with_capacity(upto + 1);
    for s in &chain[..=upto] {
        let records = cat
            .session_tape_files(dest, volume, &s.session)
            .map_err(msg)?;
        if records.is_empty() {
            return Err(msg(format!(
                "session {} of volume {volume} is in the chain of tape destination {dest} but \
                 the catalog knows no tape file of it (`sparsebak tape scan --dest={dest}`)",
                s.session
            )));
        }
        files.push(tape_file_of(cat, &records)?);
    }
    Ok(TapeChain {
        session: chain[upto].session.clone(),
        files,
    })
}

/// Loads the next appendable tape, or asks on the terminal for one.
struct PromptNextTape {
    pool: String,
}

impl NextTape for PromptNextTape {
    fn next_tape(
        &mut self,
        drive: &mut dyn TapeDrive,
        full: &TapeLabel,
        parts: u32,
    ) -> std::result::Result<(), TapeFileError> {
        super::drive::release_tape(&mut *drive)?;
        eprintln!(
            "tape {} is full. Put in another labelled tape of pool {} and press Enter \
             (an empty line); type q to stop.",
            full.name, self.pool
        );
        let mut line = String::new();
        match io::stdin().read_line(&mut line) {
            Ok(n) if n > 0 && line.trim() != "q" => {}
            _ => {
                return Err(TapeFileError::NoNextTape {
                    tape: full.name.clone(),
                    reason: "no next tape was put in".into(),
                    parts,
                })
            }
        }
        Ok(super::drive::take_tape(&mut *drive)?)
    }
}

/// Without a changer, on a terminal: asks for each part's tape until the right one
/// is in the drive.
struct PromptMount {
    block_size: usize,
}

impl MountTape for PromptMount {
    fn mount(
        &mut self,
        drive: &mut dyn TapeDrive,
        part: &Part,
    ) -> std::result::Result<(), TapeFileError> {
        loop {
            let found = match open::ready(drive, self.block_size) {
                Ok(()) => TapeLabel::read(drive).ok(),
                Err(_) => None,
            };
            if found.as_ref().is_some_and(|l| l.uuid == part.tape_uuid) {
                return Ok(());
            }
            super::drive::release_tape(&mut *drive)?;
            eprintln!(
                "Put tape {} in the drive{} and press Enter (an empty line); type q to stop.",
                part.tape,
                found.map_or_else(String::new, |l| format!(" (it holds {})", l.name))
            );
            let mut line = String::new();
            match io::stdin().read_line(&mut line) {
                Ok(n) if n > 0 && line.trim() != "q" => {}
                _ => return Ok(()), // the label check names the tape wanted
            }
            super::drive::take_tape(&mut *drive)?;
        }
    }
}

/// How a write goes on when a tape is full: the changer loads the next of `barcodes`;
/// without one a terminal run asks for a tape, an unattended one stops clearly.
fn next_tape<'a>(
    changer: Option<&'a mut (dyn Changer + Send + 'static)>,
    barcodes: VecDeque<String>,
    unattended: bool,
    pool: &str,
) -> Box<dyn NextTape + 'a> {
    match changer {
        Some(c) => Box::new(ChangerNextTape {
            changer: ChangerRef(c),
            drive_number: DRIVE,
            barcodes,
        }),
        None if interactive(unattended) => Box::new(PromptNextTape {
            pool: pool.to_string(),
        }),
        None => Box::new(NoNextTape),
    }
}

/// Whether this run may ask on the terminal.
fn interactive(unattended: bool) -> bool {
    use std::io::IsTerminal;
    !unattended && io::stdin().is_terminal() && io::stderr().is_terminal()
}

impl<'a> TapeDest<'a> {
    /// Open the drive and changer of the destination `config` was chosen for.
    pub fn open(config: &'a Config) -> Result<TapeDest<'a>> {
        let dest = config
            .dests
            .iter()
            .find(|d| d.name == config.dest)
            .ok_or_else(|| msg(format!("no destination {}", config.dest)))?;
        let tape = dest.tape.as_ref().ok_or_else(|| {
            msg(format!(
                "destination {} is not a tape destination",
                dest.name
            ))
        })?;
        let set = open::open(dest).map_err(|e| {
            msg(format!(
                "opening tape destination {} ({}): {e}",
                dest.name,
                tape.device_label()
            ))
        })?;
        Ok(TapeDest {
            config,
            dest,
            tape,
            set,
        })
    }

    /// The catalog (created if new).
    pub fn catalog(&self) -> Result<Catalog> {
        crate::metadir::create_private_dir(&self.config.metadir)?;
        Catalog::open(&crate::metadir::catalog(self.config)).map_err(msg)
    }

    /// The label of the tape in the drive; `None` when there is no tape or it has
    /// no label of this block size.
    fn label_in_drive(&mut self) -> Result<Option<TapeLabel>> {
        let drive = self.set.drive.as_mut();
        match drive.status() {
            Ok(st) if !st.online => return Ok(None),
            Err(TapeError::NoTape { .. }) => return Ok(None),
            Err(e) => return Err(msg(e)),
            Ok(_) => {}
        }
        open::ready(drive, self.tape.block_size).map_err(msg)?;
        match TapeLabel::read(drive) {
            Ok(l) => Ok(Some(l)),
            Err(LabelError::Tape(TapeError::NoTape { .. })) => Ok(None),
            // A tape of another block size is not taken for a blank one.
            Err(e @ LabelError::BlockSizeMismatch { .. }) => Err(msg(format!(
                "{e}; destination {} writes blocks of {} bytes (blocksize): load a tape of \
                 its pool labelled at that size",
                self.dest.name, self.tape.block_size
            ))),
            Err(LabelError::Tape(e)) => Err(msg(e)),
            Err(e) => {
                tracing::info!("the tape in the drive is not usable here: {e}");
                Ok(None)
            }
        }
    }

    /// Put an appendable tape of the destination's pool in the drive: the one there,
    /// else (with a changer) the pool's tape written last, then the others by name.
    /// A tape whose every session was pruned is labelled anew before it is written:
    /// its old files are cut off.
    pub fn mount_for_append(&mut self, cat: &mut Catalog) -> Result<TapeLabel> {
        let pool = self.tape.pool.clone();
        if let Some(l) = self.label_in_drive()? {
            if l.pool == pool {
                match cat.tape(&l.uuid_string()).map_err(msg)? {
                    Some(r) if !r.full => {
                        if let Some(l) = self.ready_for_append(cat, l, &r)? {
                            return Ok(l);
                        }
                    }
                    Some(_) => tracing::info!("tape {} in the drive is full", l.name),
                    None => {
                        return Err(msg(format!(
                            "tape {} in the drive is of pool {pool} but the catalog does not \
                             know it (uuid {}); `sparsebak tape scan --dest={}` records what \
                             is on it",
                            l.name,
                            l.uuid_string(),
                            self.dest.name
                        )))
                    }
                }
            }
        }
        let Some(changer) = self.set.changer.as_deref_mut() else {
            return Err(msg(format!(
                "no appendable tape of pool {pool} is in the drive of destination {}; put one \
                 in (`sparsebak tape label --dest={}` labels a new tape)",
                self.dest.name, self.dest.name
            )));
        };
        let inv = changer.inventory().map_err(msg)?;
        let mut candidates: Vec<TapeRecord> = cat
            .appendable_tapes(&pool)
            .map_err(msg)?
            .into_iter()
            .filter(|t| inv.slot_of(&t.name).is_some() || inv.drive_of(&t.name).is_some())
            .filter(|t| t.block_size == self.tape.block_size as u64)
            .collect();
        candidates.sort_by(|a, b| {
            b.last_written
                .cmp(&a.last_written)
                .then_with(|| a.name.cmp(&b.name))
        });
        for t in candidates {
            self.load(&t.name)?;
            let l = self
                .label_in_drive()?
                .ok_or_else(|| msg(format!("tape {} has no readable label", t.name)))?;
            if l.uuid_string() != t.uuid {
                return Err(msg(format!(
                    "tape {} carries label uuid {}, the catalog says {}: it was labelled \
                     elsewhere; `sparsebak tape scan --dest={}` records what is on it",
                    t.name,
                    l.uuid_string(),
                    t.uuid,
                    self.dest.name
                )));
            }
            cat.set_tape_slot(&t.uuid, None).map_err(msg)?;
            if let Some(l) = self.ready_for_append(cat, l, &t)? {
                return Ok(l);
            }
        }
        Err(msg(format!(
            "the library of destination {} holds no appendable tape of pool {pool}: label \
             new ones (`sparsebak tape label --all --dest={}`) or prune",
            self.dest.name, self.dest.name
        )))
    }

    /// The tape in the drive (`l`, recorded as `rec`), made ready to take a tape file:
    /// labelled anew when every session on it was pruned; `None` when it is past its
    /// early warning at its end of data (it is then marked full).
    fn ready_for_append(
        &mut self,
        cat: &mut Catalog,
        l: TapeLabel,
        rec: &TapeRecord,
    ) -> Result<Option<TapeLabel>> {
        let l = self.recycle_if_pruned(cat, l, rec)?;
        if self.mark_full_if_past_warning(cat, &l)? {
            return Ok(None);
        }
        Ok(Some(l))
    }

    /// Whether the tape in the drive (labelled `l`) is past its early warning at its
    /// end of data; then it is recorded full, and takes nothing more.
    fn mark_full_if_past_warning(&mut self, cat: &Catalog, l: &TapeLabel) -> Result<bool> {
        let drive = self.set.drive.as_mut();
        drive.eod().map_err(msg)?;
        if !drive.status().map_err(msg)?.eot {
            return Ok(false);
        }
        tracing::info!(tape = %l.name, "the tape is past its early warning: marked full");
        if cat.tape(&l.uuid_string()).map_err(msg)?.is_some() {
            cat.set_tape_full(&l.uuid_string(), true).map_err(msg)?;
        }
        Ok(true)
    }

    /// Load the tape `barcode` into the drive with the changer.
    fn load(&mut self, barcode: &str) -> Result<()> {
        let drive = self.set.drive.as_mut();
        let Some(changer) = self.set.changer.as_deref_mut() else {
            return Err(msg("no changer"));
        };
        let inv = changer.inventory().map_err(msg)?;
        if inv.drive_of(barcode) == Some(DRIVE) {
            return Ok(());
        }
        if inv.drives.iter().any(|d| d.number == DRIVE && d.full) {
            super::drive::release_tape(&mut *drive).map_err(msg)?;
            changer.unload(DRIVE, None).map_err(msg)?;
        }
        changer.load_barcode(barcode, DRIVE).map_err(msg)?;
        super::drive::take_tape(&mut *drive).map_err(msg)?;
        open::ready(drive, self.tape.block_size).map_err(msg)
    }

    /// A tape the catalog records no file on but which holds data after its label (all
    /// its sessions pruned) is labelled anew, under the same name: what it held is
    /// cut off and it is written from its start.
    fn recycle_if_pruned(
        &mut self,
        cat: &mut Catalog,
        l: TapeLabel,
        rec: &TapeRecord,
    ) -> Result<TapeLabel> {
        // Only a tape `prune` emptied: one whose files the catalog never knew (a scan
        // that could not read them, a run killed before recording) keeps them.
        if !cat.tape_recycle(&rec.uuid).map_err(msg)?
            || !cat.tape_files(&rec.uuid).map_err(msg)?.is_empty()
        {
            return Ok(l);
        }
        // File 1 starts after the label block and its filemark.
        let mut buf = vec![0u8; self.tape.block_size];
        self.set.drive.locate(2).map_err(msg)?;
        match self.set.drive.read_block(&mut buf) {
            Ok(ReadOutcome::EndOfData) => return Ok(l),
            Ok(_) => {}
            Err(e) => tracing::info!("tape {}: after the label: {e}", l.name),
        }
        let fresh = TapeLabel::new(&l.name, &l.pool, self.tape.block_size).map_err(msg)?;
        fresh.write(self.set.drive.as_mut()).map_err(msg)?;
        cat.add_tape(&TapeRecord {
            uuid: fresh.uuid_string(),
            labelled: fresh.written,
            last_written: None,
            full: false,
            ..rec.clone()
        })
        .map_err(msg)?;
        tracing::info!(
            tape = %fresh.name,
            "every session on the tape was pruned: labelled anew (uuid {})",
            fresh.uuid_string()
        );
        Ok(fresh)
    }

    /// The next tapes a spanning write may load: the pool's other appendable tapes in
    /// the library.
    fn next_barcodes(&mut self, cat: &Catalog, current: &TapeLabel) -> Result<VecDeque<String>> {
        let Some(changer) = self.set.changer.as_deref_mut() else {
            return Ok(VecDeque::new());
        };
        let inv = changer.inventory().map_err(msg)?;
        let mut v: Vec<TapeRecord> = cat
            .appendable_tapes(&self.tape.pool)
            .map_err(msg)?
            .into_iter()
            .filter(|t| t.name != current.name && inv.slot_of(&t.name).is_some())
            .filter(|t| t.block_size == self.tape.block_size as u64)
            .collect();
        // Tapes holding nothing yet first, so a set stays together.
        v.sort_by(|a, b| {
            a.last_written
                .is_some()
                .cmp(&b.last_written.is_some())
                .then_with(|| a.name.cmp(&b.name))
        });
        Ok(v.into_iter().map(|t| t.name).collect())
    }

    /// Send volume `name` as one stream to the tape in the drive (see
    /// [`TapeDest::mount_for_append`]), spanning onto further tapes as needed.
    pub fn send_volume(
        &mut self,
        name: &str,
        source: &mut dyn Source,
        label: &TapeLabel,
        unattended: bool,
    ) -> Result<TapeSent> {
        let mut cat = self.catalog()?;
        let barcodes = self.next_barcodes(&cat, label)?;
        self.forget_broken_chain(&mut cat, name)?;
        drop(cat);
        let stream_id = sparsebak_format::crypto::random_uuid().map_err(msg)?;
        let opts = TapeFileOptions {
            block_size: self.tape.block_size,
            pool: self.tape.pool.clone(),
            id: stream_id,
            buffer: usize::try_from(self.tape.buffer).unwrap_or(usize::MAX),
        };
        let sopts = StreamOpts {
            chain: self.dest.name.clone(),
            block_size: self.tape.block_size,
            dest: None,
            tape: true,
        };
        let config = self.config;
        let dest_name = self.dest.name.clone();
        let catalog_path = crate::metadir::catalog(config);
        let (w, r) = pipe(PIPE_CHUNK, PIPE_DEPTH);
        let flag = w.complete_flag();
        type Written = std::result::Result<(TapeFile, BufferStats), TapeFileError>;
        let (res_tx, res_rx) = mpsc::channel::<Written>();
        let res_rx = Arc::new(Mutex::new(res_rx));
        let recorded: Arc<Mutex<Option<(TapeFile, BufferStats)>>> = Arc::default();
        let done: StreamDone = {
            let res_rx = res_rx.clone();
            let recorded = recorded.clone();
            let volume = name.to_string();
            Box::new(move |out, info, written| {
                flag.store(true, Ordering::SeqCst);
                drop(out);
                let got = res_rx
                    .lock()
                    .map_err(|_| msg("the tape writer's result was lost"))?
                    .recv()
                    .map_err(|_| msg("the tape writer stopped"))?;
                let (file, stats) = got.map_err(msg)?;
                if file.bytes != written {
                    return Err(msg(format!(
                        "the stream is {written} bytes but {} went to tape",
                        file.bytes
                    )));
                }
                record_file(&catalog_path, &dest_name, &volume, &info.session, &file)?;
                if let Ok(mut r) = recorded.lock() {
                    *r = Some((file, stats));
                }
                Ok(())
            })
        };
        let set = &mut self.set;
        crate::progress::set_status(Some(|| super::buffer::LIVE.status()));
        struct NoStatus;
        impl Drop for NoStatus {
            fn drop(&mut self) {
                crate::progress::set_status(None);
            }
        }
        let _no_status = NoStatus;
        let outcome = std::thread::scope(|s| {
            let drive: &mut (dyn TapeDrive + Send) = set.drive.as_mut();
            let changer = set.changer.as_deref_mut();
            let writer = s.spawn(move || {
                let mut r: PipeReader = r;
                let mut next = next_tape(changer, barcodes, unattended, &opts.pool);
                let res = write_tape_file_from(drive, next.as_mut(), &opts, &mut r);
                if let Err(TapeFileError::Producer(_)) = &res {
                    // The stream stopped: close what was written as a file of its own
                    // (it has no trailer, so nothing takes it for a stream).
                    let _ = drive.write_filemark(1);
                }
                let _ = res_tx.send(res);
            });
            let sent = send_stream_to(config, name, source, Box::new(w), None, &sopts, Some(done));
            let joined = writer.join();
            match (sent, joined) {
                (_, Err(_)) => Err(msg("the tape writer thread panicked")),
                (Ok(o), Ok(())) => Ok(o),
                // The tape side's own error is the cause when there is one.
                (Err(e), Ok(())) => match res_rx.lock().ok().and_then(|rx| rx.try_recv().ok()) {
                    Some(Err(te)) if !matches!(te, TapeFileError::Producer(_)) => Err(msg(te)),
                    _ => Err(e),
                },
            }
        })?;
        let (file, stats) = recorded
            .lock()
            .ok()
            .and_then(|mut r| r.take())
            .ok_or_else(|| msg("the tape file was not recorded"))?;
        Ok(TapeSent {
            outcome,
            file,
            stats,
        })
    }

    /// A chain of `volume` here with a session whose tape file the catalog no longer
    /// knows (its tape labelled anew) cannot restore that session or any after it: it
    /// is forgotten, said, and the next stream is full, rather than one more
    /// incremental nobody could restore.
    fn forget_broken_chain(&self, cat: &mut Catalog, volume: &str) -> Result<()> {
        let dest = &self.dest.name;
        let id = cat.destination("tape", dest).map_err(msg)?;
        let chain = cat.chain(id, volume).map_err(msg)?;
        let mut lost = Vec::new();
        for s in &chain {
            if cat
                .session_tape_files(dest, volume, &s.session)
                .map_err(msg)?
                .is_empty()
            {
                lost.push(s.session.clone());
            }
        }
        if lost.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            "volume {volume} on tape destination {dest}: no tape holds session(s) {} any \
             more (a tape labelled anew?): its chain there is forgotten and this send is full",
            lost.join(" ")
        );
        cat.forget_tape_chain(dest, volume).map(drop).map_err(msg)
    }

    /// After a failed send: the tape in the drive, when past its early warning, is
    /// recorded full, so the next run does not take it again.
    pub fn note_full(&mut self) -> Result<()> {
        let Some(l) = self.label_in_drive()? else {
            return Ok(());
        };
        let cat = self.catalog()?;
        self.mark_full_if_past_warning(&cat, &l).map(drop)
    }

    /// Read the tape files `files` one after the other (each by LOCATE), handing
    /// their bytes as one input to `consume` on this thread.
    pub fn read_files<T>(
        &mut self,
        files: Vec<TapeFile>,
        unattended: bool,
        consume: impl FnOnce(PipeReader) -> Result<T>,
    ) -> Result<T> {
        let (mut w, r) = pipe(PIPE_CHUNK, PIPE_DEPTH);
        let block_size = self.tape.block_size;
        let set = &mut self.set;
        std::thread::scope(|s| {
            let drive: &mut (dyn TapeDrive + Send) = set.drive.as_mut();
            let changer = set.changer.as_deref_mut();
            let reader = s.spawn(move || {
                let mut mount: Box<dyn MountTape + '_> = match changer {
                    Some(c) => Box::new(ChangerMount {
                        changer: ChangerRef(c),
                        drive_number: DRIVE,
                    }),
                    None if interactive(unattended) => Box::new(PromptMount { block_size }),
                    None => Box::new(LoadedTape),
                };
                // What was read is damaged (not merely unreadable): said as such.
                let damage = TapeFileError::is_damage;
                for f in files {
                    let copied = TapeFileReader::new(&mut *drive, mount.as_mut(), f)
                        .map_err(|e| (damage(&e), e.to_string()))
                        .and_then(|mut rd| {
                            io::copy(&mut rd, &mut w).map(drop).map_err(|e| {
                                match super::reader::tape_file_error(&e) {
                                    Some(te) => (damage(te), te.to_string()),
                                    None => (false, e.to_string()),
                                }
                            })
                        });
                    match copied {
                        Ok(()) => {}
                        Err((true, why)) => return w.fail_damaged(why),
                        Err((false, why)) => return w.fail(why),
                    }
                }
                let _ = w.close();
            });
            let out = consume(r);
            let joined = reader.join();
            match joined {
                Err(_) => Err(msg("the tape reader thread panicked")),
                Ok(()) => out,
            }
        })
    }
}

impl TapeDest<'_> {
    /// Write a copy of the catalog at the end of data of an appendable tape of the
    /// pool (spanning as a session does), sealed under the destination's key when it
    /// is encrypted, so the tape set restores with nothing of this machine. The copy
    /// is not recorded in the catalog it copies; `tape scan` finds it.
    pub fn write_catalog_copy(&mut self, unattended: bool) -> Result<TapeFile> {
        let mut cat = self.catalog()?;
        let label = self.mount_for_append(&mut cat)?;
        let barcodes = self.next_barcodes(&cat, &label)?;
        drop(cat);
        let crypt = if crate::metadir::tape_key(self.config, &self.dest.name).exists() {
            crate::stream_send::tape_crypt(self.config, &self.dest.name, Some(true))?
        } else {
            None
        };
        let opts = TapeFileOptions {
            block_size: self.tape.block_size,
            pool: self.tape.pool.clone(),
            id: sparsebak_format::crypto::random_uuid().map_err(msg)?,
            buffer: usize::try_from(self.tape.buffer).unwrap_or(usize::MAX),
        };
        let catalog_path = crate::metadir::catalog(self.config);
        let drive: &mut (dyn TapeDrive + Send) = self.set.drive.as_mut();
        let mut next = next_tape(
            self.set.changer.as_deref_mut(),
            barcodes,
            unattended,
            &opts.pool,
        );
        let file = super::catalog_copy::write_catalog_copy(
            drive,
            next.as_mut(),
            &opts,
            &catalog_path,
            crypt.as_ref().map(|c| (&c.key_file, &*c.keys)),
        )
        .map_err(|e| {
            msg(format!(
                "writing the catalog copy: {e} (the sessions are on tape and recorded; `sparsebak \
                 tape scan` rebuilds a catalog from the tapes)"
            ))
        })?;
        drop(next);
        let cat = self.catalog()?;
        for p in &file.parts[..file.parts.len().saturating_sub(1)] {
            let uuid = super::label::uuid_text(&p.tape_uuid);
            cat.set_tape_full(&uuid, true).map_err(msg)?;
        }
        Ok(file)
    }
}

/// Record the parts of a tape file of session `session` of `volume` in the catalog;
/// the tapes it filled (all but the last part's) are marked full.
fn record_file(
    catalog_path: &std::path::Path,
    dest: &str,
    volume: &str,
    session: &str,
    file: &TapeFile,
) -> Result<()> {
    let mut cat = Catalog::open(catalog_path).map_err(msg)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // Rows of runs stopped before the chain recorded their session (this session ID,
    // or another) are of tape files nobody builds on: forgotten, so the catalog names
    // only what the chain holds.
    let id = cat.destination("tape", dest).map_err(msg)?;
    let chained: std::collections::HashSet<String> = cat
        .chain(id, volume)
        .map_err(msg)?
        .into_iter()
        .map(|s| s.session)
        .collect();
    let stale: std::collections::BTreeSet<String> = cat
        .dest_tape_files(dest)
        .map_err(msg)?
        .into_iter()
        .filter(|f| f.volume == volume && !chained.contains(&f.session))
        .map(|f| f.session)
        .collect();
    for s in stale.iter().map(String::as_str).chain([session]) {
        cat.forget_session_tape_files(dest, volume, s)
            .map_err(msg)?;
    }
    for p in &file.parts {
        let uuid = super::label::uuid_text(&p.tape_uuid);
        cat.add_tape_file(
            &TapeFileRecord {
                tape: uuid.clone(),
                file_number: p.file_number,
                dest: dest.to_string(),
                volume: volume.to_string(),
                session: session.to_string(),
                part: p.part - 1,
                first_block: p.first_block,
                blocks: p.data_blocks,
                bytes: p.bytes,
                sha256: p.sha256,
                stream_id: file.id.clone(),
                stream_bytes: file.bytes,
                stream_sha256: file.sha256,
            },
            now,
        )
        .map_err(msg)?;
        if p.part as usize != file.parts.len() {
            cat.set_tape_full(&uuid, true).map_err(msg)?;
        }
    }
    Ok(())
}

/// A borrowed changer as a [`Changer`] (the spanning writer and the part reader take
/// theirs by value).
struct ChangerRef<'a>(&'a mut (dyn Changer + Send));

impl Changer for ChangerRef<'_> {
    fn name(&self) -> &str {
        self.0.name()
    }
    fn inventory(&mut self) -> std::result::Result<super::Inventory, super::ChangerError> {
        self.0.inventory()
    }
    fn load(&mut self, slot: u32, drive: u32) -> std::result::Result<(), super::ChangerError> {
        self.0.load(slot, drive)
    }
    fn unload(
        &mut self,
        drive: u32,
        slot: Option<u32>,
    ) -> std::result::Result<(), super::ChangerError> {
        self.0.unload(drive, slot)
    }
    fn transfer(&mut self, from: u32, to: u32) -> std::result::Result<(), super::ChangerError> {
        self.0.transfer(from, to)
    }
    fn load_barcode(
        &mut self,
        barcode: &str,
        drive: u32,
    ) -> std::result::Result<(), super::ChangerError> {
        self.0.load_barcode(barcode, drive)
    }
}
