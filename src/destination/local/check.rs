//! Checking the stored chunks of a session against its manifest, where the files are
//! (`verify`): each data line must have its chunk file (or tar member), and nothing
//! else may be stored. One walk of the manifest (sorted) for both storage forms, in
//! bounded memory.

use std::collections::BTreeSet;
use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::volume::Storage;

use super::LocalVol;
use crate::destination::{session_problem, SessionCheck};
use crate::error::{Error, IoAt, Result};

/// Check the stored chunks of session `info` of `vol` (see the module documentation).
/// `bad_manifest`: the manifest is known to be damaged (then what reading it gives is
/// not reported again).
pub fn check_stored(
    vol: &LocalVol,
    info: &SessionInfo,
    bad_manifest: bool,
) -> Result<SessionCheck> {
    let mut walk = SessionCheck {
        bad_manifest,
        ..Default::default()
    };
    let mut problems = Vec::new();
    let r = walk_members(vol, info, &mut walk, &mut problems);
    walk.problems = problems;
    r.map(|()| walk)
}

fn walk_members(
    vol: &LocalVol,
    info: &SessionInfo,
    walk: &mut SessionCheck,
    problems: &mut Vec<String>,
) -> Result<()> {
    let id = &info.session;
    if walk.bad_manifest {
        // Its manifest does not match its info (said once by the caller): what it
        // lists proves nothing, so matching files against it would only say the same
        // damage again as missing and extra files.
        return Ok(());
    }
    // One walk of the manifest (sorted) for both storage forms; the stored members are
    // matched against it as it goes, in bounded memory.
    let members: Result<Box<dyn Members>> = match vol.storage(id) {
        Storage::Folder => match vol.keys() {
            Some(k) => {
                SealedMembers::open(vol, id, k.clone()).map(|m| Box::new(m) as Box<dyn Members>)
            }
            None => FolderMembers::open(vol, id).map(|m| Box::new(m) as Box<dyn Members>),
        },
        Storage::Tar => TarMembers::open(vol, id).map(|m| Box::new(m) as Box<dyn Members>),
    };
    let (mut members, manifest) = match (members, vol.manifest(id).map_err(Error::from)) {
        (Ok(m), Ok(r)) => (m, r),
        (Err(e), _) => {
            if !walk.bad_manifest {
                problems.push(session_problem(id, e));
            }
            walk.unlisted = true;
            return Ok(());
        }
        (_, Err(e)) => {
            if !walk.bad_manifest {
                problems.push(session_problem(id, e));
            }
            return Ok(());
        }
    };
    let mut lines = 0u64;
    for e in manifest {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                if !walk.bad_manifest {
                    problems.push(session_problem(id, err));
                }
                walk.bad_manifest = true;
                return Ok(());
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
            walk.missing.push(e.addr);
        }
    }
    members.finish(problems);
    if lines != info.changed {
        problems.push(format!(
            "session {id}: info says changed={}, manifest has {lines} lines",
            info.changed
        ));
    }
    Ok(())
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

/// A folder session: read one prefix folder at a time (memory is one folder listing).
struct FolderMembers {
    fs: sparsebak_format::archive_fs::SharedFs,
    id: String,
    sdir: std::path::PathBuf,
    /// Top-level entries not yet accounted for.
    top: BTreeSet<String>,
    prefix: String,
    files: BTreeSet<String>,
    /// The current prefix folder could not be listed (said once).
    unreadable: bool,
}

impl FolderMembers {
    fn open(vol: &LocalVol, id: &str) -> Result<FolderMembers> {
        let sdir = vol.session_dir(id);
        let mut top: BTreeSet<String> = vol
            .fs()
            .read_dir(&sdir)
            .at(&sdir)?
            .into_iter()
            .map(|e| e.name)
            .collect();
        top.remove(layout::INFO_FILE);
        top.remove(layout::MANIFEST_FILE);
        Ok(FolderMembers {
            fs: vol.fs().clone(),
            id: id.to_string(),
            sdir,
            top,
            prefix: String::new(),
            files: BTreeSet::new(),
            unreadable: false,
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
            let was_there = self.top.remove(&prefix);
            self.unreadable = false;
            self.files = match list_folder(self.fs.as_ref(), &self.sdir.join(&prefix)) {
                Ok(files) => files,
                Err(why) => {
                    // Not there at all: each of its chunks is said missing.
                    if was_there {
                        problems.push(format!("session {}: {why}", self.id));
                        self.unreadable = true;
                    }
                    BTreeSet::new()
                }
            };
            self.prefix = prefix;
        }
        let name = layout::chunk_name(addr);
        let found = self.files.remove(&name);
        if !found && !self.unreadable {
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

/// A folder session of an encrypted archive: chunk files are named by tokens, in one
/// chunk folder per region of `2^PREFIX_SHIFT` bytes of the volume (a name drawn per
/// session, so two regions may share a folder). The manifest comes in address order,
/// so its regions come one after the other: each folder is listed once, when its first
/// region comes, and each line's token is taken out of that listing. What is left in
/// the listings at the end, and the folders no region drew, is extra. One listing per
/// folder, not a lookup per chunk file: on a session of 12,000 chunks, the lookups
/// (four `stat`s each, with the checks for symbolic links) cost a fifth of a verify.
struct SealedMembers {
    id: String,
    store: sparsebak_format::store::FolderStore,
    keys: std::sync::Arc<sparsebak_format::crypto::ArchiveKeys>,
    sdir: std::path::PathBuf,
    /// Chunk folders of the session folder no region has drawn yet.
    unlisted: BTreeSet<String>,
    /// The region of the last manifest line, and its folder.
    region: Option<(u64, String)>,
    /// The files of each listed folder not matched to a manifest line yet (a folder
    /// is dropped once nothing is left in it).
    left: std::collections::BTreeMap<String, BTreeSet<String>>,
    /// Entries of the session folder that are neither its info, its manifest nor a
    /// chunk folder, and chunk folders that cannot be listed, named.
    extra: Vec<String>,
    /// Chunk folders that cannot be listed (said once, in `extra`): their chunks are
    /// not each said missing.
    unreadable: BTreeSet<String>,
    /// Extra chunk files: their labels, those whose token names an address of the
    /// session first, each kind in order.
    extra_files: Vec<(Option<u64>, String)>,
}

impl SealedMembers {
    fn open(
        vol: &LocalVol,
        id: &str,
        keys: std::sync::Arc<sparsebak_format::crypto::ArchiveKeys>,
    ) -> Result<SealedMembers> {
        let sdir = vol.session_dir(id);
        let fs = vol.fs();
        let mut unlisted = BTreeSet::new();
        let mut extra = Vec::new();
        for e in fs.read_dir(&sdir).at(&sdir)? {
            let name = e.name;
            if name == layout::INFO_FILE || name == layout::MANIFEST_FILE {
                continue;
            }
            // A link or other odd entry with a chunk folder's name is met as one
            // when its region comes (and said for what it is).
            if name.len() == sparsebak_format::crypto::keys::CHUNK_FOLDER_LEN
                && e.kind != sparsebak_format::archive_fs::Kind::File
            {
                unlisted.insert(name);
            } else {
                extra.push(format!(
                    "session {id}: extra entry {} in its folder",
                    fs.display(&sdir.join(&name))
                ));
            }
        }
        Ok(SealedMembers {
            id: id.to_string(),
            store: vol.store().clone(),
            keys,
            sdir,
            unlisted,
            region: None,
            left: Default::default(),
            extra,
            unreadable: BTreeSet::new(),
            extra_files: Vec::new(),
        })
    }

    /// List chunk folder `folder` into `left` (nothing when the session folder has
    /// none of that name). Every entry counts by its name, as in a plain session: one
    /// that is not a file (a link, a folder) is then met by the read, which says what
    /// it is, or is left over as extra.
    fn list(&mut self, folder: &str) {
        let files = if self.unlisted.remove(folder) {
            match list_folder(self.store.fs().as_ref(), &self.sdir.join(folder)) {
                Ok(files) => files,
                Err(why) => {
                    self.extra.push(format!("session {}: {why}", self.id));
                    self.unreadable.insert(folder.to_string());
                    BTreeSet::new()
                }
            }
        } else {
            BTreeSet::new()
        };
        self.left.insert(folder.to_string(), files);
    }

    /// Record the files of `folder` left in `files` as extra.
    fn left_over(&mut self, folder: &str, files: BTreeSet<String>) {
        let fs = self.store.fs();
        for f in files {
            let label = fs.display(&self.sdir.join(folder).join(&f));
            let addr = self.store.addr_of_chunk(&self.id, folder, &f);
            self.extra_files.push((addr, label));
        }
    }
}

impl Members for SealedMembers {
    fn expect(&mut self, addr: u64, problems: &mut Vec<String>) -> bool {
        let region = addr >> layout::PREFIX_SHIFT;
        let folder = match &self.region {
            Some((r, f)) if *r == region => f.clone(),
            _ => {
                // The folder of the region before is dropped once empty (it stays
                // when another region shares it, or holds extra files).
                if let Some((_, f)) = self.region.take() {
                    if self.left.get(&f).is_some_and(|s| s.is_empty()) {
                        self.left.remove(&f);
                    }
                }
                let f = self.keys.chunk_folder(&self.id, addr);
                if !self.left.contains_key(&f) {
                    self.list(&f);
                }
                self.region = Some((region, f.clone()));
                f
            }
        };
        let token = self.keys.chunk_token(&self.id, addr);
        let found = self
            .left
            .get_mut(&folder)
            .is_some_and(|files| files.remove(&token));
        if !found && !self.unreadable.contains(&folder) {
            // The path does not name the session: its folder's name is a token.
            problems.push(format!(
                "session {}: chunk file {} (chunk x{addr:016x}) is missing",
                self.id,
                self.store
                    .fs()
                    .display(&self.sdir.join(&folder).join(&token))
            ));
        }
        found
    }

    fn finish(&mut self, problems: &mut Vec<String>) {
        // The folders no region drew are listed as the drawn ones were (one that
        // cannot be, a link for instance, said once), and all they hold is extra.
        let never_drawn: Vec<String> = self.unlisted.iter().cloned().collect();
        for folder in never_drawn {
            self.list(&folder);
        }
        for (folder, files) in std::mem::take(&mut self.left) {
            self.left_over(&folder, files);
        }
        // One problem per extra file, as in a plain session: files of no address of
        // the session first, then by address.
        let mut names = std::mem::take(&mut self.extra_files);
        names.sort();
        for (_, label) in names {
            problems.push(format!(
                "session {}: extra file {label} not in its manifest",
                self.id
            ));
        }
        problems.append(&mut self.extra);
    }
}

/// A tar session: walk its member index (sorted by address) alongside the manifest.
struct TarMembers {
    id: String,
    tar: std::sync::Arc<sparsebak_format::tarsession::TarSession>,
    tar_path: std::path::PathBuf,
    next: usize,
    store: sparsebak_format::store::FolderStore,
}

impl TarMembers {
    fn open(vol: &LocalVol, id: &str) -> Result<TarMembers> {
        Ok(TarMembers {
            id: id.to_string(),
            tar: vol.tar(id)?,
            tar_path: vol.tar_path(id),
            next: 0,
            store: vol.store().clone(),
        })
    }

    /// Check every member header of the tar (checksum, ustar magic, type, name, size,
    /// order) against the index: the index lets sparsebak read past a damaged header,
    /// but `tar -xf` (the archive's promise of a plain tar) cannot.
    fn check_headers(&self, problems: &mut Vec<String>) {
        let label = self.store.fs().display(&self.tar_path);
        let walked = match self.store.walk_tar(&self.id) {
            Ok(w) => w,
            Err(e) => {
                problems.push(format!(
                    "session {}: {e} (sparsebak reads the session through its index, but \
                     tar cannot read this tar)",
                    self.id
                ));
                return;
            }
        };
        let index = &self.tar.index;
        let mut differs = None;
        if walked.chunks.len() != index.len() {
            differs = Some(format!(
                "its headers name {} chunk member(s), its index {}",
                walked.chunks.len(),
                index.len()
            ));
        } else if walked.manifest != index.manifest() || walked.info != index.info() {
            differs = Some("the manifest or info member is not where its index says".into());
        } else {
            for (i, &w) in walked.chunks.iter().enumerate() {
                match index.record(i) {
                    Ok(r) if r == w => {}
                    Ok((a, _, _)) => {
                        differs = Some(format!(
                            "the header of chunk member {} (chunk x{:016x}) is not the index's \
                             (chunk x{a:016x})",
                            i + 1,
                            w.0
                        ));
                        break;
                    }
                    // Said by the walk of the index.
                    Err(_) => break,
                }
            }
        }
        if let Some(d) = differs {
            problems.push(format!(
                "session {}: the member headers of {label} do not match its index: {d}",
                self.id
            ));
        }
    }

    /// The address of record `next`; `None` past the last one, or when the record
    /// cannot be read (said once in `problems`; the walk ends there).
    fn next_addr(&mut self, problems: &mut Vec<String>) -> Option<u64> {
        if self.next >= self.tar.index.len() {
            return None;
        }
        match self.tar.index.record(self.next) {
            Ok((a, _, _)) => Some(a),
            Err(e) => {
                problems.push(session_problem(&self.id, e));
                self.next = self.tar.index.len();
                None
            }
        }
    }

    /// Report index records before `upto` (all of them with `None`) as extra.
    fn extra_until(&mut self, upto: Option<u64>, problems: &mut Vec<String>) {
        while let Some(a) = self.next_addr(problems) {
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
        if self.next_addr(problems) == Some(addr) {
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
        self.check_headers(problems);
    }
}

/// The names in chunk folder `p`, or why it cannot be listed (a link, a file, no
/// access), said once with its path: its chunks are then not each said missing.
fn list_folder(
    fs: &dyn sparsebak_format::archive_fs::ArchiveFs,
    p: &Path,
) -> std::result::Result<BTreeSet<String>, String> {
    match fs.read_dir(p) {
        Ok(rd) => Ok(rd.into_iter().map(|e| e.name).collect()),
        Err(e) => Err(format!("{}: {e}", fs.display(p))),
    }
}
