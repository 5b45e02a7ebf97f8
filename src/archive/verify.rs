//! Checking a session: its chain of info files and manifests, the chunk files each
//! session folder holds (none missing, none extra), every chunk of the view re-read and
//! re-hashed, and agreement with the source side's copies. Every problem found is
//! collected and reported; one bad chunk does not stop the check.

use std::collections::BTreeSet;
use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::restore::read_view;
use sparsebak_format::store::FolderStore;
use sparsebak_format::volume::{Storage, VolumeArchive};
use sparsebak_format::{layout, limits};

use crate::archive::local::LocalCopies;
use crate::error::{Error, IoAt, Result};

/// What a verify found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
    /// Chunk problems found: files missing from a session, chunks of the view that
    /// could not be read or did not match (a missing file counts once).
    pub bad_chunks: u64,
    /// What `sparsebak repair` can do about the problems found, when it can do
    /// something.
    pub hint: Option<String>,
}

/// Verify session `target` of `vol`. `local`: the source side's copies, when this
/// machine has them. `progress` sees the volume offset reached.
pub fn verify(
    vol: &VolumeArchive,
    target: &str,
    local: Option<&LocalCopies>,
    progress: &mut dyn FnMut(u64),
) -> Result<Report> {
    let mut rep = Report::default();
    let chain = match vol.chain(target) {
        Ok(c) => c,
        Err(e) => {
            rep.problems.push(format!("session chain: {e}"));
            rep.hint = hint(vol, local, 0);
            return Ok(rep);
        }
    };
    let mut missing_files = 0u64;
    // Per session of the chain: its manifest is damaged (reported once).
    let mut bad_manifest = Vec::with_capacity(chain.len());
    for info in &chain {
        let walk = check_session_files(vol, info, local, &mut rep.problems)?;
        missing_files += walk.missing;
        bad_manifest.push(walk.bad_manifest);
    }
    let mut view_chunks = 0u64;
    let r = read_view(vol, &chain, true, |batch| {
        for rc in batch {
            view_chunks += 1;
            match rc.data {
                Ok(d) => {
                    rep.chunks_checked += 1;
                    rep.bytes_checked += d.len() as u64;
                }
                Err(reason) => {
                    let id = &chain[rc.entry.session].session;
                    // A missing file was reported by the walk of its session's folder,
                    // and a hash read from a damaged manifest proves nothing: one
                    // damaged file is one problem.
                    if !bad_manifest[rc.entry.session] && stored(vol, id, rc.entry.addr) {
                        rep.bad_chunks += 1;
                        rep.problems.push(chunk_problem(id, rc.entry.addr, reason));
                    }
                }
            }
            progress(rc.entry.addr);
        }
        Ok::<(), Error>(())
    });
    if let Err(e) = r {
        // A damaged manifest was reported once already, by the walk of its session.
        if !bad_manifest.contains(&true) {
            rep.problems.push(format!("reading the view: {e}"));
        }
    } else if let Some(last) = chain.last() {
        if last.chunks != view_chunks {
            rep.problems.push(format!(
                "session {} info says chunks={}, but its view has {view_chunks} non-zero chunks",
                last.session, last.chunks
            ));
        }
    }
    // A missing file of a session of the chain, in its view or not.
    rep.bad_chunks += missing_files;
    if !rep.problems.is_empty() {
        rep.hint = hint(vol, local, rep.bad_chunks);
    }
    Ok(rep)
}

/// Whether the chunk at `addr` of session `id` is stored (its file, or its tar member,
/// exists). A session whose tar cannot be opened was reported as a whole.
/// (A store that is not a local folder cannot be asked: its chunk is taken as stored,
/// and a missing one is reported as unreadable.)
fn stored(vol: &VolumeArchive, id: &str, addr: u64) -> bool {
    let Some(f) = vol.folder() else {
        return true;
    };
    match vol.storage(id) {
        Storage::Folder => !matches!(
            std::fs::symlink_metadata(f.chunk_path(id, addr)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        ),
        Storage::Tar => f.tar(id).is_ok_and(|t| t.index.lookup(addr).is_some()),
    }
}

/// A chunk that could not be read or did not match: the reason names the chunk's
/// file (and so its session) when it can; else they are said before it.
fn chunk_problem(id: &str, addr: u64, reason: String) -> String {
    if reason.contains(&layout::chunk_name(addr)) {
        reason
    } else {
        format!("chunk x{addr:016x} of session {id}: {reason}")
    }
}

/// A problem of session `id`: `e` is said after the session's name unless it already
/// names the session's folder or tar.
fn of_session(id: &str, e: impl std::fmt::Display) -> String {
    let e = e.to_string();
    if e.contains(&layout::session_dir_name(id)) {
        e
    } else {
        format!("session {id}: {e}")
    }
}

/// What `repair` can do about what was found: put back info and manifest files from
/// this machine's copies, and try to re-create `bad_chunks` chunk files from the
/// volume.
fn hint(vol: &VolumeArchive, local: Option<&LocalCopies>, bad_chunks: u64) -> Option<String> {
    let meta = crate::archive::repair::meta_fixes(vol, local);
    let mut can = Vec::new();
    if !meta.is_empty() {
        can.push(format!(
            "put back {} info/manifest file(s) from this machine's copies",
            meta.len()
        ));
    }
    if bad_chunks > 0 {
        can.push(
            "re-create missing or damaged chunk files from the volume wherever it still \
             holds their data"
                .to_string(),
        );
    }
    (!can.is_empty()).then(|| {
        format!(
            "`sparsebak repair {}` can {} (`--dry-run` first says what it would do)",
            vol.name,
            can.join(" and ")
        )
    })
}

/// What the walk of one session's files found.
struct Walk {
    /// Chunk files (or tar members) of its manifest that are missing.
    missing: u64,
    /// Its manifest is damaged (reported once; nothing read from it is reported again).
    bad_manifest: bool,
}

/// Manifest hash, local copies, and the chunk files in one session's folder.
fn check_session_files(
    vol: &VolumeArchive,
    info: &SessionInfo,
    local: Option<&LocalCopies>,
    problems: &mut Vec<String>,
) -> Result<Walk> {
    let id = &info.session;
    let mut walk = Walk {
        missing: 0,
        bad_manifest: true,
    };
    match vol.session_manifest_sha256(info) {
        Ok(h) if h == info.manifest_sha256 => walk.bad_manifest = false,
        Ok(_) => problems.push(format!(
            "session {id}: manifest does not match the hash in its info (manifest altered)"
        )),
        Err(e) => problems.push(of_session(id, e)),
    }
    if let Some(local) = local {
        match limits::read_bounded(&local.info_path(id), limits::MAX_INFO_BYTES, "info file") {
            Ok(mine) => {
                let theirs = vol.info_bytes(id).unwrap_or_default();
                if mine != theirs {
                    problems.push(format!(
                        "session {id}: info differs from the copy this machine kept when it sent it"
                    ));
                }
            }
            Err(sparsebak_format::FormatError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                problems.push(format!(
                    "session {id}: this machine has no record of sending it ({} missing)",
                    local.info_path(id).display()
                ))
            }
            Err(e) => problems.push(of_session(id, e)),
        }
    }
    // One walk of the manifest (sorted) for both storage forms; the stored members are
    // matched against it as it goes, in bounded memory.
    let members: Result<Box<dyn Members>> = match (vol.folder(), vol.storage(id)) {
        (Some(f), Storage::Folder) => {
            FolderMembers::open(f, id).map(|m| Box::new(m) as Box<dyn Members>)
        }
        (Some(f), Storage::Tar) => TarMembers::open(f, id).map(|m| Box::new(m) as Box<dyn Members>),
        // The files of a store that is not a local folder are not listed here; its
        // missing chunks are found reading the view.
        (None, _) => Ok(Box::new(Unlisted)),
    };
    let (mut members, manifest) = match (members, vol.manifest(id).map_err(Error::from)) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(e), _) | (_, Err(e)) => {
            if !walk.bad_manifest {
                problems.push(of_session(id, e));
            }
            return Ok(walk);
        }
    };
    let mut lines = 0u64;
    for e in manifest {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                if !walk.bad_manifest {
                    problems.push(of_session(id, err));
                }
                walk.bad_manifest = true;
                return Ok(walk);
            }
        };
        lines += 1;
        if e.addr % info.chunksize != 0 || e.addr >= info.volsize {
            problems.push(format!(
                "session {id}: manifest address x{:016x} is not a chunk of this volume",
                e.addr
            ));
        }
        if e.hash.is_some() && !members.expect(e.addr, problems) {
            walk.missing += 1;
        }
    }
    members.finish(problems);
    if lines != info.changed {
        problems.push(format!(
            "session {id}: info says changed={}, manifest has {lines} lines",
            info.changed
        ));
    }
    Ok(walk)
}

/// The stored chunks of one session, matched against its manifest's data lines in
/// address order: each line must have its chunk, and nothing else may be stored.
trait Members {
    /// The manifest has a data line for `addr` (addresses increase); whether the
    /// chunk is stored.
    fn expect(&mut self, addr: u64, problems: &mut Vec<String>) -> bool;
    /// The manifest ended: report whatever is left over.
    fn finish(&mut self, problems: &mut Vec<String>);
}

/// The members of a session whose files cannot be listed here: every chunk counts as
/// stored.
struct Unlisted;

impl Members for Unlisted {
    fn expect(&mut self, _addr: u64, _problems: &mut Vec<String>) -> bool {
        true
    }
    fn finish(&mut self, _problems: &mut Vec<String>) {}
}

/// A folder session: read one prefix folder at a time (memory is one folder listing).
struct FolderMembers {
    id: String,
    sdir: std::path::PathBuf,
    /// Top-level entries not yet accounted for.
    top: BTreeSet<String>,
    prefix: String,
    files: BTreeSet<String>,
}

impl FolderMembers {
    fn open(vol: &FolderStore, id: &str) -> Result<FolderMembers> {
        let sdir = vol.session_dir(id);
        let mut top: BTreeSet<String> = std::fs::read_dir(&sdir)
            .at(&sdir)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        top.remove(layout::INFO_FILE);
        top.remove(layout::MANIFEST_FILE);
        Ok(FolderMembers {
            id: id.to_string(),
            sdir,
            top,
            prefix: String::new(),
            files: BTreeSet::new(),
        })
    }

    fn flush(&mut self, problems: &mut Vec<String>) {
        for f in std::mem::take(&mut self.files) {
            problems.push(format!(
                "session {}: extra file {}/{f} not in its manifest",
                self.id, self.prefix
            ));
        }
    }
}

impl Members for FolderMembers {
    fn expect(&mut self, addr: u64, problems: &mut Vec<String>) -> bool {
        let prefix = layout::prefix_name(addr);
        if prefix != self.prefix {
            self.flush(problems);
            self.files = list_dir(&self.sdir.join(&prefix));
            self.top.remove(&prefix);
            self.prefix = prefix;
        }
        let name = layout::chunk_name(addr);
        let found = self.files.remove(&name);
        if !found {
            problems.push(format!(
                "chunk file {} is missing",
                self.sdir.join(&self.prefix).join(&name).display()
            ));
        }
        found
    }

    fn finish(&mut self, problems: &mut Vec<String>) {
        self.flush(problems);
        for extra in std::mem::take(&mut self.top) {
            problems.push(format!(
                "session {}: extra entry {extra} in its folder",
                self.id
            ));
        }
    }
}

/// A tar session: walk its member index (sorted by address) alongside the manifest.
struct TarMembers {
    id: String,
    tar: std::sync::Arc<sparsebak_format::tarsession::TarSession>,
    tar_path: std::path::PathBuf,
    next: usize,
}

impl TarMembers {
    fn open(vol: &FolderStore, id: &str) -> Result<TarMembers> {
        Ok(TarMembers {
            id: id.to_string(),
            tar: vol.tar(id)?,
            tar_path: vol.tar_path(id),
            next: 0,
        })
    }

    /// Report index records before `upto` (all of them with `None`) as extra.
    fn extra_until(&mut self, upto: Option<u64>, problems: &mut Vec<String>) {
        while self.next < self.tar.index.len() {
            let (a, _, _) = self.tar.index.record(self.next);
            if upto.is_some_and(|u| a >= u) {
                break;
            }
            problems.push(format!(
                "session {}: extra member for chunk x{a:016x} not in its manifest",
                self.id
            ));
            self.next += 1;
        }
    }
}

impl Members for TarMembers {
    fn expect(&mut self, addr: u64, problems: &mut Vec<String>) -> bool {
        self.extra_until(Some(addr), problems);
        if self.next < self.tar.index.len() && self.tar.index.record(self.next).0 == addr {
            self.next += 1;
            true
        } else {
            problems.push(format!(
                "chunk x{addr:016x} is missing from {}",
                self.tar_path.display()
            ));
            false
        }
    }

    fn finish(&mut self, problems: &mut Vec<String>) {
        self.extra_until(None, problems);
    }
}

fn list_dir(p: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(p) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}
