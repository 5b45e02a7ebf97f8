//! Removing sessions without rewriting data: a session S is folded into the session T
//! that follows it. T's manifest becomes the merge of S's and T's (T wins), S's chunk
//! files that are still part of T's view move into T's folder by rename, and S's folder
//! goes. Every view of T and later sessions stays byte-identical; views of sessions
//! before S are untouched.
//!
//! Size changes: data that S cut off by shrinking must not reappear once S is gone. For
//! every address in `[size(S), size(T))` where the view before S holds data and T
//! records nothing, T's new manifest gets a zero line.
//!
//! Crash safety, a journal and idempotent steps:
//! 0. Everything the fold needs is checked first: S's and T's manifests match the hashes
//!    in their infos, and every chunk file that must move from S is there. If anything
//!    is missing the prune refuses, naming the files, and nothing has changed.
//! 1. T's new manifest is written to `<vol>/.prune-<T>.manifest` and synced; nothing is
//!    visible yet (a crash leaves a stray file that the next run removes).
//! 2. The journal `<vol>/.prune-journal` is written atomically: S, T and T's new info.
//!    From here on the prune is rolled forward by whichever run comes next.
//! 3. Chunk files the new manifest takes from S are moved into T (renamed, or re-encoded
//!    when S and T use different codecs); one syncfs. A chunk file that went missing
//!    (or cannot be decoded) since the check is logged and skipped: the prune still
//!    finishes, T's view lacks just that chunk, `verify` reports it and `repair` can
//!    re-create it. A journal never leaves a volume that cannot be read or sent.
//! 4. The new manifest replaces T's, T's info is written from the journal with
//!    `bytes_stored` set to the bytes of the chunk files T now holds.
//! 5. S's folder is renamed to `.trash-…` and removed; the source-side copies follow.
//! 6. The journal is removed.
//!
//! Every command that uses a volume runs [`recover`] first, so a `kill -9` at any
//! step is finished by the next run, and `verify` sees a whole archive.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sparsebak_format::archive_fs::{ArchiveFs, FileWriter, Kind};

use sparsebak_format::chunk::Codec;
use sparsebak_format::codec::ChunkContext;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestReader, ManifestWriter};
use sparsebak_format::view::ViewReader;
use sparsebak_format::volume::Storage;

use super::LocalVol;
use sparsebak_format::{layout, limits};

pub use crate::destination::FoldPlan;
use crate::error::{Error, IoAt, Result};

/// A file being written in the archive folder (through its file operations).
type File = Box<dyn FileWriter>;

const JOURNAL: &str = layout::PRUNE_JOURNAL;
const JOURNAL_MAGIC: &str = "sparsebak-prune 1";

fn journal_path(vol: &LocalVol) -> PathBuf {
    vol.dir().join(JOURNAL)
}

fn new_manifest_path(vol: &LocalVol, t: &str) -> PathBuf {
    vol.dir()
        .join(format!(".prune-{}.manifest", vol.store().session_name(t)))
}

/// What a journal or a new manifest is sealed for, in an encrypted archive.
fn journal_place(vol: &LocalVol) -> sparsebak_format::crypto::Place<'_> {
    sparsebak_format::crypto::Place::PruneJournal { volume: &vol.name }
}

/// A writer of session `t`'s new manifest at `path`: the file, sealed for T's
/// manifest in an encrypted archive.
fn manifest_file_writer(vol: &LocalVol, t: &str, path: &Path) -> Result<Box<dyn Finish>> {
    let bw = BufWriter::new(vol.fs().create(path).at(path)?);
    Ok(match vol.keys() {
        None => Box::new(bw),
        Some(k) => Box::new(SealedOut(Some(
            sparsebak_format::crypto::SealWriter::new(
                k,
                sparsebak_format::crypto::Place::Manifest { session: t },
                bw,
            )
            .map_err(|e| Error::Msg(e.to_string()))?,
        ))),
    })
}

/// A sealing writer that writes its last segment when finished (after the manifest
/// writer's last line).
struct SealedOut(Option<sparsebak_format::crypto::SealWriter<BufWriter<File>>>);

impl Write for SealedOut {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self.0.as_mut() {
            Some(w) => w.write(b),
            None => Err(std::io::Error::other("manifest already finished")),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self.0.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// A writer that is finished explicitly, so that its last write's failure is seen.
trait Finish: Write {
    fn done(self: Box<Self>) -> std::io::Result<()>;
}

impl Finish for SealedOut {
    fn done(mut self: Box<Self>) -> std::io::Result<()> {
        match self.0.take() {
            Some(w) => Box::new(w.finish()?).done(),
            None => Ok(()),
        }
    }
}

/// The file is written, closed and made durable.
impl Finish for BufWriter<File> {
    fn done(self: Box<Self>) -> std::io::Result<()> {
        self.into_inner().map_err(|e| e.into_error())?.finish(true)
    }
}

impl Finish for std::io::Sink {
    fn done(self: Box<Self>) -> std::io::Result<()> {
        Ok(())
    }
}

/// The lines of session `t`'s manifest file at `path` (opened for its place in an
/// encrypted archive).
fn manifest_file_reader(
    vol: &LocalVol,
    t: &str,
    path: &Path,
) -> Result<ManifestReader<Box<dyn std::io::BufRead + Send>>> {
    let f = vol.fs().open(path).at(path)?;
    let r: Box<dyn std::io::BufRead + Send> = match vol.keys() {
        None => Box::new(std::io::BufReader::new(f)),
        Some(k) => Box::new(std::io::BufReader::new(
            sparsebak_format::crypto::OpenReader::new(
                k,
                sparsebak_format::crypto::Place::Manifest { session: t },
                f,
            ),
        )),
    };
    Ok(ManifestReader::new(r, path))
}

/// How many missing files a refusal names.
const NAMED_MAX: usize = 10;

impl FoldPlan {
    fn note_missing(&mut self, what: String) {
        self.missing_count += 1;
        if self.missing.len() < NAMED_MAX {
            self.missing.push(what);
        }
    }

    /// Note the manifest of session `info` as missing unless it is there and matches
    /// the hash its info records.
    fn check_manifest(&mut self, vol: &LocalVol, info: &SessionInfo) {
        let id = &info.session;
        match vol.session_manifest_sha256(info) {
            Ok(h) if h == info.manifest_sha256 => {}
            Ok(_) => self.note_missing(format!(
                "the manifest of session {id}, which does not match the hash in its info"
            )),
            Err(e) => self.note_missing(format!("the manifest of session {id} ({e})")),
        }
    }

    /// An error naming what is missing, if anything is.
    fn refuse_if_incomplete(&self, vol: &LocalVol) -> Result<()> {
        if self.missing_count == 0 {
            return Ok(());
        }
        let more = self.missing_count - self.missing.len() as u64;
        let more = if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        };
        Err(Error::Msg(format!(
            "volume {}: cannot remove session {} into {}: it needs {}{more}; nothing was changed \
             (`sparsebak repair {}` re-creates chunk files from the volume where it still \
             holds their data)",
            vol.name,
            self.removed,
            self.into,
            self.missing.join(", "),
            vol.name
        )))
    }
}

/// Whether session `id` holds a stored chunk at `addr` (a file, or a tar member).
fn stored_exists(vol: &LocalVol, id: &str, addr: u64) -> bool {
    match vol.storage(id) {
        Storage::Folder => vol.fs().is_file(&vol.chunk_path(id, addr)),
        Storage::Tar => vol
            .tar(id)
            .and_then(|t| t.index.lookup(addr))
            .is_ok_and(|found| found.is_some()),
    }
}

/// Where a stored chunk of session `id` is, for messages.
fn stored_label(vol: &LocalVol, id: &str, addr: u64) -> String {
    match vol.storage(id) {
        Storage::Folder => vol.chunk_path(id, addr).display().to_string(),
        Storage::Tar => format!("chunk x{addr:016x} in {}", vol.tar_path(id).display()),
    }
}

struct Heads<I: Iterator<Item = sparsebak_format::Result<Entry>>> {
    it: I,
    head: Option<Entry>,
}

impl<I: Iterator<Item = sparsebak_format::Result<Entry>>> Heads<I> {
    fn new(mut it: I) -> Result<Self> {
        let head = it.next().transpose()?;
        Ok(Heads { it, head })
    }
    fn addr(&self) -> Option<u64> {
        self.head.map(|e| e.addr)
    }
    /// Whether the stream has a line for `addr` with `hash` (addresses ascending).
    fn records(&mut self, addr: u64, hash: sparsebak_format::Hash) -> Result<bool> {
        while self.addr().is_some_and(|a| a < addr) {
            self.take()?;
        }
        Ok(self
            .head
            .is_some_and(|o| o.addr == addr && o.hash == Some(hash)))
    }
    fn take(&mut self) -> Result<Option<Entry>> {
        let h = self.head.take();
        self.head = self.it.next().transpose()?;
        Ok(h)
    }
}

fn file_len(fs: &dyn ArchiveFs, p: &Path) -> u64 {
    fs.metadata(p).map(|m| m.len).unwrap_or(0)
}

/// Plan folding session `s` into its successor: write T's new manifest to its
/// temporary name (unless `dry_run`) and return T's new info with the plan.
fn plan(vol: &LocalVol, s: &str, dry_run: bool) -> Result<(FoldPlan, SessionInfo)> {
    let ids = vol.sessions()?;
    let pos = ids
        .iter()
        .position(|x| x == s)
        .ok_or_else(|| Error::Msg(format!("volume {}: no session {s}", vol.name)))?;
    let t = ids.get(pos + 1).ok_or_else(|| {
        Error::Msg(format!(
            "volume {}: {s} is the latest session and is never removed",
            vol.name
        ))
    })?;
    let chain = vol.chain(t)?;
    let si = &chain[pos];
    let ti = &chain[pos + 1];
    let prev = if pos > 0 { Some(&chain[..pos]) } else { None };

    let mut fp = FoldPlan {
        removed: s.to_string(),
        into: t.clone(),
        ..Default::default()
    };
    for info in [si, ti] {
        fp.check_manifest(vol, info);
    }
    if fp.missing_count > 0 {
        return Ok((fp, ti.clone()));
    }
    let mut s_it = Heads::new(vol.session_manifest(si)?)?;
    let mut t_it = Heads::new(vol.session_manifest(ti)?)?;
    // The view before S, only where S's shrink cut it off and T grew back.
    let cut_lo = si.volsize;
    let cut_hi = ti.volsize;
    let cut: Box<dyn Iterator<Item = sparsebak_format::Result<Entry>>> = match prev {
        Some(p) if cut_lo < cut_hi => Box::new(
            ViewReader::open(vol, p)?
                .filter(move |e| match e {
                    Ok(e) => e.addr >= cut_lo && e.addr < cut_hi,
                    Err(_) => true,
                })
                .map(|e| {
                    e.map(|e| Entry {
                        addr: e.addr,
                        hash: None,
                    })
                }),
        ),
        _ => Box::new(std::iter::empty()),
    };
    let mut c_it = Heads::new(cut)?;

    let tmp = new_manifest_path(vol, t);
    let out: Box<dyn Finish> = if dry_run {
        Box::new(std::io::sink())
    } else {
        manifest_file_writer(vol, t, &tmp)?
    };
    let mut mw = ManifestWriter::new(out);
    loop {
        let next = [s_it.addr(), t_it.addr(), c_it.addr()]
            .into_iter()
            .flatten()
            .min();
        let Some(a) = next else { break };
        let te = if t_it.addr() == Some(a) {
            t_it.take()?
        } else {
            None
        };
        let se = if s_it.addr() == Some(a) {
            s_it.take()?
        } else {
            None
        };
        let ce = if c_it.addr() == Some(a) {
            c_it.take()?
        } else {
            None
        };
        let s_file = |e: &Entry| e.hash.map(|_| vol.chunk_path(s, e.addr));
        let emit = match (te, se, ce) {
            (Some(te), se, _) => {
                if let Some(p) = se.as_ref().and_then(s_file) {
                    fp.deleted += 1;
                    fp.freed_bytes += file_len(vol.fs().as_ref(), &p);
                }
                Some(te)
            }
            (None, Some(se), _) if se.addr >= ti.volsize => {
                if let Some(p) = s_file(&se) {
                    fp.deleted += 1;
                    fp.freed_bytes += file_len(vol.fs().as_ref(), &p);
                }
                None
            }
            (None, Some(se), _) if se.hash.is_none() && prev.is_none() => None,
            (None, Some(se), _) => {
                if se.hash.is_some() {
                    fp.moved += 1;
                    if !stored_exists(vol, s, se.addr) {
                        fp.note_missing(stored_label(vol, s, se.addr));
                    }
                }
                Some(se)
            }
            (None, None, ce) => ce,
        };
        if let Some(e) = emit {
            mw.push(&e).at(&tmp)?;
        }
    }
    let lines = mw.count();
    let (w, hash) = mw.finish().at(&tmp)?;
    // Written, closed and (unless a dry run, which writes nothing) made durable.
    w.done().at(&tmp)?;
    let mut new_t = ti.clone();
    new_t.previous = si.previous.clone();
    new_t.changed = lines;
    new_t.manifest_sha256 = hash;
    Ok((fp, new_t))
}

/// Check, before anything changes, that every session of `targets` can be removed:
/// the chunk files of removed sessions that the next surviving session's view takes
/// from them are all there, and the manifests involved match their infos. One walk of
/// that view per run of removed sessions. Refuses naming what is missing.
pub fn check_removal(vol: &LocalVol, targets: &[String]) -> Result<()> {
    let ids = vol.sessions()?;
    let removed: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    let mut fp = FoldPlan::default();
    for (pos, t) in ids.iter().enumerate() {
        if removed.contains(t.as_str()) || pos == 0 || !removed.contains(ids[pos - 1].as_str()) {
            continue;
        }
        let chain = vol.chain(t)?;
        let first = chain
            .iter()
            .rposition(|i| !removed.contains(i.session.as_str()) && i.session != *t)
            .map_or(0, |p| p + 1);
        for info in &chain[first..] {
            fp.check_manifest(vol, info);
        }
        if fp.missing_count > 0 {
            continue;
        }
        for e in ViewReader::open(vol, &chain)? {
            let e = e?;
            let sid = &chain[e.session].session;
            if removed.contains(sid.as_str()) && !stored_exists(vol, sid, e.addr) {
                fp.note_missing(stored_label(vol, sid, e.addr));
            }
        }
    }
    if fp.missing_count == 0 {
        return Ok(());
    }
    let more = fp.missing_count - fp.missing.len() as u64;
    Err(Error::Msg(format!(
        "volume {}: cannot remove {} session(s): they need {}{}; nothing was changed \
         (`sparsebak repair {}` re-creates chunk files from the volume where it still holds \
         their data)",
        vol.name,
        targets.len(),
        fp.missing.join(", "),
        if more > 0 {
            format!(" (and {more} more)")
        } else {
            String::new()
        },
        vol.name
    )))
}

/// The bytes a session's folder holds (a tar session: the members its folder would
/// hold, as the prune converts it to a folder first).
fn session_bytes(vol: &LocalVol, id: &str) -> Result<u64> {
    Ok(match vol.storage(id) {
        Storage::Folder => dir_size(vol.fs().as_ref(), &vol.session_dir(id)),
        Storage::Tar => {
            let t = vol.tar(id)?;
            let mut n = t.index.manifest().1 + t.index.info().1;
            for i in 0..t.index.len() {
                n += t.index.record(i)?.2;
            }
            n
        }
    })
}

/// The stored length of chunk `addr` of session `id` (0 when it is not stored).
fn stored_len(vol: &LocalVol, id: &str, addr: u64) -> u64 {
    match vol.storage(id) {
        Storage::Folder => file_len(vol.fs().as_ref(), &vol.chunk_path(id, addr)),
        Storage::Tar => vol
            .tar(id)
            .and_then(|t| t.index.lookup(addr))
            .ok()
            .flatten()
            .map_or(0, |(_, len)| len),
    }
}

/// What removing all of `targets` frees: every removed session's files, less the
/// chunk files the next surviving session's view takes from them (those are moved
/// into it). Folds run one after another, each moving into the next session what
/// it keeps, so the steps' own figures would count a moved chunk as kept although
/// the next fold frees it.
pub fn removal_frees(vol: &LocalVol, targets: &[String]) -> Result<u64> {
    let ids = vol.sessions()?;
    let removed: std::collections::HashSet<&str> = targets.iter().map(String::as_str).collect();
    let mut freed = 0u64;
    for t in ids.iter().filter(|t| removed.contains(t.as_str())) {
        freed += session_bytes(vol, t)?;
    }
    for (pos, t) in ids.iter().enumerate() {
        if removed.contains(t.as_str()) || pos == 0 || !removed.contains(ids[pos - 1].as_str()) {
            continue;
        }
        let chain = vol.chain(t)?;
        for e in ViewReader::open(vol, &chain)? {
            let e = e?;
            let sid = &chain[e.session].session;
            if removed.contains(sid.as_str()) {
                freed = freed.saturating_sub(stored_len(vol, sid, e.addr));
            }
        }
    }
    Ok(freed)
}

/// Remove session `s` of `vol` by folding it into the next session. With `dry_run`
/// nothing changes and the plan says what would happen. Needs the volume's exclusive
/// lock (and the source-side lock when `local` is given).
pub fn fold(
    vol: &LocalVol,
    removed_info: Option<&SessionInfo>,
    s: &str,
    dry_run: bool,
) -> Result<FoldPlan> {
    // Check everything the fold needs before anything changes: once the journal is
    // written the prune can only go forward.
    let (checked, _) = plan(vol, s, true)?;
    checked.refuse_if_incomplete(vol)?;
    if dry_run {
        return Ok(checked);
    }
    // Folding moves chunk files: both sessions must be folders.
    let ids = vol.sessions()?;
    if let Some(pos) = ids.iter().position(|x| x == s) {
        for id in ids.iter().skip(pos).take(2) {
            super::tar::untar_session(vol, id)?;
        }
    }
    let jp = journal_path(vol);
    let journaled = plan(vol, s, false).and_then(|(fp, new_t)| {
        fp.refuse_if_incomplete(vol)?;
        let mut j = format!("{JOURNAL_MAGIC}\nremove={s}\ninto={}\n", fp.into);
        j.push_str(&new_t.to_text());
        let bytes = match vol.keys() {
            None => j.into_bytes(),
            Some(k) => k
                .seal(&journal_place(vol), j.as_bytes())
                .map_err(|e| Error::Msg(e.to_string()))?,
        };
        vol.fs().write_atomic(&jp, &bytes).at(&jp)?;
        Ok((fp, new_t))
    });
    let (mut fp, new_t) = match journaled {
        Ok(p) => p,
        Err(e) => {
            // Before the journal nothing changed: the new manifest goes, said after
            // a full filesystem is explained (while it still counts).
            let e = crate::space::explain_write_in(
                vol.fs().as_ref(),
                e,
                vol.dir(),
                "free some files",
                "nothing was changed",
            );
            if !vol.fs().exists(&jp) {
                let _ = remove_trash(vol);
            }
            return Err(e);
        }
    };
    crate::failpoint::hit("prune-after-journal");
    let stored = apply(vol, removed_info, s, &new_t)?;
    fp.freed_bytes = fp.freed_bytes.max(stored.0);
    Ok(fp)
}

/// Steps 3 to 6; idempotent. `journal_t` is T's new info as the journal holds it;
/// the installed one gets the real `bytes_stored`.
fn apply(
    vol: &LocalVol,
    removed_info: Option<&SessionInfo>,
    s: &str,
    journal_t: &SessionInfo,
) -> Result<(u64,)> {
    let fs = vol.fs().as_ref();
    let t = &journal_t.session;
    let tmp = new_manifest_path(vol, t);
    let sdir = vol.session_dir(s);
    let mut new_t = journal_t.clone();
    new_t.bytes_stored = if fs.exists(&tmp) {
        let held = move_chunks(vol, removed_info, s, &tmp, journal_t)?;
        fs.syncfs(vol.dir()).at(vol.dir())?;
        crate::failpoint::hit("prune-before-manifest");
        let mpath = vol.manifest_path(t);
        fs.rename(&tmp, &mpath).at(&mpath)?;
        held
    } else {
        held_bytes(vol, t)?
    };
    let ipath = vol.info_path(t);
    let want = new_t.to_text();
    let current = vol.info_bytes(t).ok();
    if current.as_deref() != Some(want.as_bytes()) {
        let bytes =
            vol.seal_session_file(t, crate::destination::SessionFile::Info, want.as_bytes())?;
        fs.write_atomic(&ipath, &bytes).at(&ipath)?;
    }
    fs.sync_dir(&vol.session_dir(t)).at(vol.session_dir(t))?;
    crate::failpoint::hit("prune-before-remove");
    let mut freed = 0u64;
    if fs.exists(&sdir) {
        let trash = vol
            .dir()
            .join(format!(".trash-S_{}", vol.store().session_name(s)));
        fs.rename(&sdir, &trash).at(&sdir)?;
        fs.sync_dir(vol.dir()).at(vol.dir())?;
        freed = dir_size(fs, &trash);
        fs.remove_dir_all(&trash).at(&trash)?;
    }
    remove_trash(vol)?;
    // Step 5's source-side half (the copies follow) runs next, on the source; then
    // [`end`] removes the journal (step 6).
    Ok((freed,))
}

/// Step 6: remove the journal of a fold whose steps are done.
pub fn end(vol: &LocalVol) -> Result<()> {
    let jp = journal_path(vol);
    let fs = vol.fs();
    if fs.exists(&jp) {
        fs.remove_file(&jp).at(&jp)?;
        fs.sync_dir(vol.dir()).at(vol.dir())?;
    }
    Ok(())
}

/// Step 3: move into T the chunk files that T's new manifest (`tmp`) takes from S.
/// Which ones those are comes from T's manifest as it still is (T's own lines); a
/// line T records is never filled from S, whatever T's folder holds. Returns the
/// bytes of the chunk files T holds for the new manifest afterwards.
fn move_chunks(
    vol: &LocalVol,
    removed_info: Option<&SessionInfo>,
    s: &str,
    tmp: &Path,
    new_t: &SessionInfo,
) -> Result<u64> {
    let t = &new_t.session;
    let fs = vol.fs().as_ref();
    // S's codec: its info, else the copy this machine kept; without either, the
    // chunks are taken as they are (verify reports any that do not decode). But an
    // info that failed to read says nothing about it: then stop, and the next run
    // goes on from here.
    let s_info = match vol.info(s).map_err(Error::from) {
        Ok(i) => Some(i),
        Err(e) => match removed_info.filter(|i| i.session == s) {
            Some(copy) => Some(copy.clone()),
            None if read_failed(&e) => return Err(e),
            None => None,
        },
    };
    let s_codec = s_info.map(|i| i.compression).unwrap_or(new_t.compression);
    let warn_t = |e: &dyn std::fmt::Display| {
        tracing::warn!(
            "volume {}: finishing the prune without session {t}'s old manifest ({e})",
            vol.name
        )
    };
    let mut t_own = match vol.manifest(t).map_err(Error::from).and_then(Heads::new) {
        Ok(h) => Some(h),
        Err(e) if read_failed(&e) => return Err(e),
        Err(e) => {
            warn_t(&e);
            None
        }
    };
    let mut held = 0u64;
    let mut n = 0u64;
    let mut made = std::collections::HashSet::new();
    for e in manifest_file_reader(vol, t, tmp)? {
        let e = e?;
        let Some(hash) = e.hash else { continue };
        let dst = vol.chunk_path(t, e.addr);
        let from_t = match t_own.as_mut().map(|h| h.records(e.addr, hash)) {
            Some(Ok(b)) => b,
            Some(Err(err)) if read_failed(&err) => return Err(err),
            Some(Err(err)) => {
                warn_t(&err);
                t_own = None;
                fs.exists(&dst)
            }
            None => fs.exists(&dst),
        };
        if let Ok(m) = fs.metadata(&dst) {
            held += m.len;
            continue;
        }
        if from_t {
            // T's own chunk file is gone: nothing in S may stand in for it.
            lost(vol, t, e.addr, &dst.display().to_string());
            continue;
        }
        let src = vol.chunk_path(s, e.addr);
        if let Some(d) = dst.parent() {
            if made.insert(d.to_path_buf()) {
                fs.create_dir_all(d).at(d)?;
            }
        }
        // Stored bytes move unchanged when both sessions use the same codec and it
        // does not bind them to their session; otherwise they are re-encoded.
        let moved = if s_codec == new_t.compression && vol.codec(new_t).portable() {
            match fs.rename(&src, &dst) {
                Ok(()) => true,
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    lost(vol, t, e.addr, &src.display().to_string());
                    false
                }
                Err(err) => return Err(err).at(&src),
            }
        } else {
            recode(vol, s, e.addr, &src, &dst, s_codec, new_t)?
        };
        if moved {
            held += file_len(fs, &dst);
            n += 1;
            if n == 1 {
                crate::failpoint::hit("prune-mid-move");
            }
        }
    }
    Ok(held)
}

/// Whether `e` is a read that failed without saying anything about what is stored (an
/// I/O error other than "not found"). After its journal a prune stops at one, rather
/// than guess; the journal stays and the next run goes on from there.
fn read_failed(e: &Error) -> bool {
    match e {
        Error::Format(sparsebak_format::FormatError::Io { source, .. })
        | Error::Io { source, .. } => source.kind() != std::io::ErrorKind::NotFound,
        _ => false,
    }
}

/// A chunk the new manifest needs is not there: say so and go on. T's view lacks it
/// until `repair` re-creates it.
fn lost(vol: &LocalVol, t: &str, addr: u64, what: &str) {
    tracing::warn!(
        "volume {}: chunk x{addr:016x} of session {t} is lost ({what}); its view lacks it \
         until `sparsebak repair {}` re-creates it",
        vol.name,
        vol.name
    );
}

/// Bytes of the chunk files session `t` holds for the lines of its manifest.
fn held_bytes(vol: &LocalVol, t: &str) -> Result<u64> {
    let mut held = 0u64;
    for e in vol.manifest(t)? {
        let e = e?;
        if e.hash.is_some() {
            held += file_len(vol.fs().as_ref(), &vol.chunk_path(t, e.addr));
        }
    }
    Ok(held)
}

/// Re-encode the chunk at `addr` that session `s` stored in `src` (in codec `from`)
/// into `dst` in `to`'s codec. A chunk that is missing or does not decode is lost
/// (logged, `false`); a failure to write is an error, so the next run tries again.
fn recode(
    vol: &LocalVol,
    s: &str,
    addr: u64,
    src: &Path,
    dst: &Path,
    from: Codec,
    to: &SessionInfo,
) -> Result<bool> {
    // S's codec: T's (the same volume, the same keys) with S's compression.
    let mut from_info = to.clone();
    from_info.compression = from;
    let (from_codec, to_codec) = (vol.codec(&from_info), vol.codec(to));
    let max = from_codec.max_stored(to.chunksize);
    let fs = vol.fs().as_ref();
    let stored = match limits::read_bounded_in(fs, src, max, "chunk file") {
        Ok(b) => b,
        Err(sparsebak_format::FormatError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            lost(vol, &to.session, addr, &src.display().to_string());
            return Ok(false);
        }
        Err(e) => {
            lost(vol, &to.session, addr, &e.to_string());
            return Ok(false);
        }
    };
    let from_ctx = ChunkContext {
        volume: &to.volume,
        session: s,
        addr,
        chunksize: to.chunksize,
    };
    let data = match from_codec.decode(&from_ctx, &stored) {
        Ok(d) => d,
        Err(e) => {
            lost(
                vol,
                &to.session,
                addr,
                &format!("{}: {}", src.display(), e.reason),
            );
            return Ok(false);
        }
    };
    let out = to_codec
        .encode(&ChunkContext::of(to, addr), &data)
        .map_err(|e| Error::Msg(format!("{}: {}", dst.display(), e.reason)))?;
    let tmp = dst.with_extension("tmp");
    fs.write(&tmp, &out).at(&tmp)?;
    fs.rename(&tmp, dst).at(dst)?;
    fs.remove_file(src).at(src)?;
    Ok(true)
}

fn dir_size(fs: &dyn ArchiveFs, p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = fs.read_dir(p) {
        for e in rd {
            match e.kind {
                Kind::Dir => n += dir_size(fs, &p.join(&e.name)),
                _ => n += e.len,
            }
        }
    }
    n
}

pub(crate) fn remove_trash(vol: &LocalVol) -> Result<()> {
    let fs = vol.fs();
    let Ok(rd) = fs.read_dir(vol.dir()) else {
        return Ok(());
    };
    for e in rd {
        let name = e.name;
        let path = vol.dir().join(&name);
        if name.starts_with(".trash-") {
            fs.remove_dir_all(&path).at(&path)?;
        } else if name.starts_with(".prune-")
            && name.ends_with(".manifest")
            && !fs.exists(&journal_path(vol))
        {
            // Written before the journal: the prune never started.
            fs.remove_file(&path).at(&path)?;
        }
    }
    Ok(())
}

/// Whether a prune of `vol` was interrupted.
pub fn interrupted(vol: &LocalVol) -> bool {
    vol.fs().exists(&journal_path(vol))
}

/// The interrupted prune's journal, if there is one: the session it removes, and the
/// new info of the session it folds into.
fn read_journal(vol: &LocalVol) -> Result<Option<(String, SessionInfo)>> {
    let jp = journal_path(vol);
    // A journal is three short lines and an info file.
    let max = limits::MAX_INFO_BYTES + 1024;
    let max = max + sparsebak_format::crypto::envelope::overhead(max);
    let read = limits::read_bounded_in(vol.fs().as_ref(), &jp, max, "prune journal").and_then(
        |b| match vol.keys() {
            None => Ok(b),
            Some(k) => k.open(&journal_place(vol), &b).map_err(|e| {
                sparsebak_format::FormatError::Other(format!("{}: {e}", jp.display()))
            }),
        },
    );
    let text = match read.and_then(|b| {
        String::from_utf8(b).map_err(|_| {
            sparsebak_format::FormatError::Other(format!("{}: not UTF-8", jp.display()))
        })
    }) {
        Ok(t) => t,
        Err(sparsebak_format::FormatError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(None)
        }
        Err(e) => return Err(e.into()),
    };
    let bad = |r: &str| Error::Msg(format!("{}: damaged prune journal ({r})", jp.display()));
    let mut lines = text.splitn(4, '\n');
    if lines.next() != Some(JOURNAL_MAGIC) {
        return Err(bad("unknown header"));
    }
    let s = lines
        .next()
        .and_then(|l| l.strip_prefix("remove="))
        .ok_or_else(|| bad("no remove= line"))?
        .to_string();
    let t = lines
        .next()
        .and_then(|l| l.strip_prefix("into="))
        .ok_or_else(|| bad("no into= line"))?;
    let info_text = lines.next().ok_or_else(|| bad("no info"))?;
    let new_t = SessionInfo::parse(info_text, &jp)?;
    if new_t.session != t {
        return Err(bad("into= and the info name different sessions"));
    }
    Ok(Some((s, new_t)))
}

/// The sessions an interrupted prune removes and folds into, if one was interrupted.
pub fn journal_sessions(vol: &LocalVol) -> Result<Option<(String, String)>> {
    Ok(read_journal(vol)?.map(|(s, t)| (s, t.session)))
}

/// Finish an interrupted prune of `vol` (roll forward), and clear leftovers of one that
/// never reached its journal. Needs the volume's exclusive lock. Returns the sessions
/// the prune removed and folded into; its journal stays until [`end`].
pub fn recover(
    vol: &LocalVol,
    removed_info: Option<&SessionInfo>,
) -> Result<Option<(String, String)>> {
    let Some((s, new_t)) = read_journal(vol)? else {
        remove_trash(vol)?;
        return Ok(None);
    };
    tracing::warn!(
        "volume {}: finishing the interrupted removal of session {s}",
        vol.name
    );
    apply(vol, removed_info, &s, &new_t)?;
    Ok(Some((s, new_t.session)))
}
