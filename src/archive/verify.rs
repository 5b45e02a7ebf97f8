//! Checking a session: its chain of info files and manifests, the chunk files each
//! session folder holds (none missing, none extra), every chunk of the view re-read and
//! re-hashed, and agreement with the source side's copies. Every problem found is
//! collected and reported; one bad chunk does not stop the check.

use sparsebak_format::info::SessionInfo;
use sparsebak_format::restore::read_view_as_recorded;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::{layout, limits};

use crate::archive::local::LocalCopies;
use crate::destination::{session_problem as of_session, Destination};
use crate::error::{Error, Result};

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
    archive: &dyn Destination,
    name: &str,
    target: &str,
    local: Option<&LocalCopies>,
    progress: &mut dyn FnMut(u64),
) -> Result<Report> {
    let mut rep = Report::default();
    let vol = &archive.volume(name);
    // Sessions this machine sent (it keeps their copies) must all still be there: a
    // session removed, or the volume replaced by an older copy of itself, is
    // consistent on its own and is caught only here.
    if let Some(local) = local {
        let have = vol.sessions()?;
        for id in local.ids()? {
            if have.binary_search(&id).is_err() {
                rep.problems.push(format!(
                    "session {id}: this machine sent it (its copy is in the metadir), but \
                     the archive no longer has it: a session was removed, or the volume \
                     was replaced by an older copy"
                ));
            }
        }
    }
    let chain = match vol.chain(target) {
        Ok(c) => c,
        Err(e) => {
            // Each info that cannot be read is one problem (two swapped infos are
            // two); the chain's own error when each reads well alone.
            let bad: Vec<String> = vol
                .sessions()
                .unwrap_or_default()
                .iter()
                .filter_map(|id| vol.info(id).err())
                .map(|e| format!("session chain: {e}"))
                .collect();
            if bad.is_empty() {
                rep.problems.push(format!("session chain: {e}"));
            } else {
                rep.problems.extend(bad);
            }
            rep.hint = hint(vol, local, 0);
            return Ok(rep);
        }
    };
    let mut missing_files = 0u64;
    // Per session of the chain: its manifest is damaged (reported once).
    let mut bad_manifest = Vec::with_capacity(chain.len());
    let mut walks = Vec::with_capacity(chain.len());
    for info in &chain {
        let walk = check_session_files(archive, vol, info, local, &mut rep.problems)?;
        missing_files += walk.missing;
        bad_manifest.push(walk.bad_manifest);
        walks.push(walk);
    }
    let mut view_chunks = 0u64;
    let r = read_view_as_recorded(vol, &chain, true, |batch| {
        // A lost connection: nothing after it can be read; it is the error.
        if let Some(lost) = crate::remote::client::link_lost() {
            return Err(Error::Msg(lost));
        }
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
                    let walk = &walks[rc.entry.session];
                    let stored =
                        !walk.unlisted && walk.missing_addrs.binary_search(&rc.entry.addr).is_err();
                    if !bad_manifest[rc.entry.session] && stored {
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
    if let Some(lost) = crate::remote::client::link_lost() {
        return Err(Error::Msg(lost));
    }
    // A missing file of a session of the chain, in its view or not.
    rep.bad_chunks += missing_files;
    if !rep.problems.is_empty() {
        rep.hint = hint(vol, local, rep.bad_chunks);
    }
    Ok(rep)
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

/// What `repair` can do about what was found: put back info and manifest files from
/// this machine's copies, and try to re-create `bad_chunks` chunk files from the
/// volume.
fn hint(vol: &VolumeArchive, local: Option<&LocalCopies>, bad_chunks: u64) -> Option<String> {
    let meta = crate::archive::repair::meta_fixes(vol, local);
    let mut can = Vec::new();
    let indexes = crate::archive::repair::tar_index_fixes(vol);
    if !indexes.is_empty() {
        can.push(format!(
            "rebuild the index of {} tar session(s) from the tar ({})",
            indexes.len(),
            indexes.join(", ")
        ));
    }
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
    /// Their addresses.
    missing_addrs: Vec<u64>,
    /// Its stored chunks could not be listed (reported): none counts as stored.
    unlisted: bool,
    /// Its manifest is damaged (reported once; nothing read from it is reported again).
    bad_manifest: bool,
}

/// Manifest hash, local copies, and the chunk files in one session's folder.
fn check_session_files(
    archive: &dyn Destination,
    vol: &VolumeArchive,
    info: &SessionInfo,
    local: Option<&LocalCopies>,
    problems: &mut Vec<String>,
) -> Result<Walk> {
    let id = &info.session;
    let mut walk = Walk {
        missing: 0,
        missing_addrs: Vec::new(),
        unlisted: false,
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
    // The stored chunks, matched against the manifest where the files are.
    let found = archive.check_stored(&vol.name, info, walk.bad_manifest)?;
    problems.extend(found.problems);
    walk.missing = found.missing.len() as u64;
    walk.missing_addrs = found.missing;
    walk.unlisted = found.unlisted;
    walk.bad_manifest |= found.bad_manifest;
    Ok(walk)
}
