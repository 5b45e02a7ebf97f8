//! Checking a session: its chain of info files and manifests, the chunk files each
//! session folder holds (none missing, none extra), every chunk of the view re-read and
//! re-hashed, and agreement with the source side's copies. Every problem found is
//! collected and reported; one bad chunk does not stop the check.

use std::collections::BTreeSet;
use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::manifest::ManifestReader;
use sparsebak_format::restore::read_view;
use sparsebak_format::volume::{Storage, VolumeArchive};

use crate::archive::local::LocalCopies;
use crate::error::{Error, Result};

/// What a verify found.
#[derive(Debug, Default)]
pub struct Report {
    pub problems: Vec<String>,
    pub chunks_checked: u64,
    pub bytes_checked: u64,
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
            return Ok(rep);
        }
    };
    for info in &chain {
        check_session_files(vol, info, local, &mut rep.problems)?;
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
                Err(reason) => rep.problems.push(format!(
                    "chunk x{:016x} (stored by session {}): {reason}",
                    rc.entry.addr, chain[rc.entry.session].session
                )),
            }
            progress(rc.entry.addr);
        }
        Ok::<(), Error>(())
    });
    if let Err(e) = r {
        rep.problems.push(format!("reading the view: {e}"));
    } else if let Some(last) = chain.last() {
        if last.chunks != view_chunks {
            rep.problems.push(format!(
                "session {} info says chunks={}, but its view has {view_chunks} non-zero chunks",
                last.session, last.chunks
            ));
        }
    }
    Ok(rep)
}

/// Manifest hash, local copies, and the chunk files in one session's folder.
fn check_session_files(
    vol: &VolumeArchive,
    info: &SessionInfo,
    local: Option<&LocalCopies>,
    problems: &mut Vec<String>,
) -> Result<()> {
    let id = &info.session;
    match vol.manifest_sha256(id) {
        Ok(h) if h == info.manifest_sha256 => {}
        Ok(_) => problems.push(format!(
            "session {id}: manifest does not match the hash in its info (manifest altered)"
        )),
        Err(e) => problems.push(format!("session {id}: {e}")),
    }
    if let Some(local) = local {
        match std::fs::read(local.info_path(id)) {
            Ok(mine) => {
                let theirs = vol.info_bytes(id).unwrap_or_default();
                if mine != theirs {
                    problems.push(format!(
                        "session {id}: info differs from the copy this machine kept when it sent it"
                    ));
                }
            }
            Err(_) => problems.push(format!(
                "session {id}: this machine has no record of sending it ({} missing)",
                local.info_path(id).display()
            )),
        }
    }
    if vol.storage(id) == Storage::Tar {
        return check_tar_members(vol, info, problems);
    }
    // Walk the manifest (sorted) and the folder prefix by prefix; memory is one prefix
    // folder's listing.
    let mpath = vol.manifest_path(id);
    let sdir = vol.session_dir(id);
    let mut top: BTreeSet<String> = match std::fs::read_dir(&sdir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            problems.push(format!("session {id}: {}: {e}", sdir.display()));
            return Ok(());
        }
    };
    top.remove(layout::INFO_FILE);
    top.remove(layout::MANIFEST_FILE);
    let mut lines = 0u64;
    let mut cur_prefix = String::new();
    let mut cur_files: BTreeSet<String> = BTreeSet::new();
    let flush = |prefix: &str, files: &mut BTreeSet<String>, problems: &mut Vec<String>| {
        for f in std::mem::take(files) {
            problems.push(format!(
                "session {id}: extra file {prefix}/{f} not in its manifest"
            ));
        }
    };
    let reader = match ManifestReader::open(&mpath) {
        Ok(r) => r,
        Err(e) => {
            problems.push(format!("session {id}: {e}"));
            return Ok(());
        }
    };
    for e in reader {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                problems.push(format!("session {id}: {err}"));
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
        if e.hash.is_none() {
            continue;
        }
        let prefix = layout::prefix_name(e.addr);
        if prefix != cur_prefix {
            flush(&cur_prefix, &mut cur_files, problems);
            cur_prefix = prefix.clone();
            cur_files = list_dir(&sdir.join(&prefix));
            top.remove(&prefix);
        }
        let name = layout::chunk_name(e.addr);
        if !cur_files.remove(&name) {
            problems.push(format!(
                "session {id}: chunk x{:016x} missing ({})",
                e.addr,
                sdir.join(&prefix).join(&name).display()
            ));
        }
    }
    flush(&cur_prefix, &mut cur_files, problems);
    for extra in top {
        problems.push(format!("session {id}: extra entry {extra} in its folder"));
    }
    if lines != info.changed {
        problems.push(format!(
            "session {id}: info says changed={}, manifest has {lines} lines",
            info.changed
        ));
    }
    Ok(())
}

/// A tar session: its member index against its manifest (missing and extra members).
fn check_tar_members(
    vol: &VolumeArchive,
    info: &SessionInfo,
    problems: &mut Vec<String>,
) -> Result<()> {
    let id = &info.session;
    let t = match vol.tar(id) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("session {id}: {e}"));
            return Ok(());
        }
    };
    let manifest = match vol.manifest(id) {
        Ok(m) => m,
        Err(e) => {
            problems.push(format!("session {id}: {e}"));
            return Ok(());
        }
    };
    let mut i = 0usize;
    let mut lines = 0u64;
    let extra = |upto: Option<u64>, i: &mut usize, problems: &mut Vec<String>| {
        while *i < t.index.len() {
            let (a, _, _) = t.index.record(*i);
            if upto.is_some_and(|u| a >= u) {
                break;
            }
            problems.push(format!(
                "session {id}: extra member for chunk x{a:016x} not in its manifest"
            ));
            *i += 1;
        }
    };
    for e in manifest {
        let e = match e {
            Ok(e) => e,
            Err(err) => {
                problems.push(format!("session {id}: {err}"));
                return Ok(());
            }
        };
        lines += 1;
        if e.hash.is_none() {
            continue;
        }
        extra(Some(e.addr), &mut i, problems);
        if i < t.index.len() && t.index.record(i).0 == e.addr {
            i += 1;
        } else {
            problems.push(format!(
                "session {id}: chunk x{:016x} missing from {}",
                e.addr,
                vol.tar_path(id).display()
            ));
        }
    }
    extra(None, &mut i, problems);
    if lines != info.changed {
        problems.push(format!(
            "session {id}: info says changed={}, manifest has {lines} lines",
            info.changed
        ));
    }
    Ok(())
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
