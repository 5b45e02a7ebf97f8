//! Putting a damaged volume of the archive back together from what the source side
//! still has: `sparsebak repair`.
//!
//! 1. Info and manifest files: the source side keeps a copy of both for every session
//!    it sent. A copy is trusted when it checks out against the hashes recorded for it
//!    (the info's own `info_sha256`; the manifest's SHA-256 in that info). The archive's
//!    file is put back from the copy when it is missing, empty, damaged, or differs
//!    from it.
//! 2. Chunk files: every stored chunk of every session is read back and hashed. A chunk
//!    file that is missing or does not decode to its recorded hash is re-created in the
//!    session that should hold it, from the volume itself: the source's reference
//!    snapshot where it keeps one (the tick of thin LVM and reflink: the volume as it
//!    was at the last send or monitor), else or then the volume as it is now, but only
//!    where the volume's chunk at that address still has the recorded hash.
//! 3. What cannot be repaired is reported: the chunk addresses, and for each the
//!    sessions whose views it breaks.
//!
//! Every file is written under a temporary name in a staging folder of the volume
//! (`.tmp-repair`, removed by the next run if this one dies), fsynced, and renamed
//! into place; the folder it lands in is fsynced. A tar session that needs a fix is
//! first converted into a folder ([`crate::archive::tar::untar_session`]).
//! A dry run reads the same, and changes nothing.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sparsebak_format::chunk::Codec;
use sparsebak_format::codec::{self, ChunkCodec, ChunkContext, CodecError};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{file_sha256, ManifestReader};
use sparsebak_format::volume::{Storage, VolumeArchive};
use sparsebak_format::Hash;

use crate::archive::local::LocalCopies;
use crate::archive::{prepare, Archive, Use};
use crate::config::Config;
use crate::destination::SessionFile;
use crate::error::{Error, IoAt, Result};
use crate::lock::Mode;
use crate::progress::Progress;
use crate::source::{Source, VolumeCtx};

/// Stored chunks read and hashed per parallel batch.
const BATCH: usize = 64;
/// The largest chunk size a config allows; a bigger one in an info is never read.
const MAX_CHUNKSIZE: u64 = 4 << 20;

/// What a repair did (or, dry, would do), and what it could not do.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per file put back or re-created.
    pub done: Vec<String>,
    /// One line per problem that could not be repaired.
    pub unrepaired: Vec<String>,
}

/// The info and manifest a session should have, and where they are to be had.
#[derive(Debug)]
struct Meta {
    id: String,
    /// The good info (`None`: neither the archive nor the copies have one).
    info: Option<SessionInfo>,
    /// Put back the info from the copy: its bytes, and why.
    info_fix: Option<(Vec<u8>, String)>,
    /// Put back the manifest from the copy at this path, and why.
    manifest_fix: Option<(PathBuf, String)>,
    /// Whether the manifest can be read at all (from the archive or the copy).
    manifest_ok: bool,
}

/// Why a file of the archive is not what it should be, from what reading it gave.
fn why(bytes: &std::result::Result<Vec<u8>, sparsebak_format::FormatError>) -> String {
    match bytes {
        Err(sparsebak_format::FormatError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            "it was missing".into()
        }
        Err(e) => format!("it could not be read: {e}"),
        Ok(b) if b.is_empty() => "it was empty".into(),
        Ok(_) => "it was damaged".into(),
    }
}

/// Check session `id`'s info and manifest against the copies this machine kept.
/// `prev` is the session before it in the archive: a copy that names another one as
/// its previous is out of date (the archive was pruned elsewhere) and is not used.
fn check_meta(
    vol: &VolumeArchive,
    local: Option<&LocalCopies>,
    id: &str,
    prev: Option<&str>,
) -> Meta {
    let mut m = Meta {
        id: id.to_string(),
        info: None,
        info_fix: None,
        manifest_fix: None,
        manifest_ok: false,
    };
    let theirs = vol.info_bytes(id);
    // An info names the volume the session was made as, which `rename` does not
    // change: what ties a session to this volume is where it sits (the copies live
    // under this volume's state) and, in an encrypted archive, the volume's id.
    let own_id = match vol.keys() {
        Some(_) => vol.store().volume_id().ok().flatten(),
        None => None,
    };
    let ours = |i: &SessionInfo| {
        i.session == id
            && own_id
                .as_ref()
                .is_none_or(|o| i.volume_id.as_ref() == Some(o))
    };
    let parse = |b: &[u8], p: &Path| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|t| SessionInfo::parse(t, p).ok())
            .filter(|i| ours(i))
    };
    let mine = local.and_then(|l| {
        let p = l.info_path(id);
        let (b, i) = match std::fs::read(&p)
            .ok()
            .and_then(|b| parse(&b, &p).map(|i| (b, i)))
        {
            Some(c) => c,
            // A send killed between publishing the session and copying it left the
            // info in its pending record: good if the archive's manifest matches it.
            None => l.pending_info().filter(|(_, i)| {
                ours(i)
                    && vol
                        .session_manifest_sha256(i)
                        .is_ok_and(|h| h == i.manifest_sha256)
            })?,
        };
        if i.previous.as_deref() != prev {
            let name = |s: Option<&str>| s.map_or("none".to_string(), |s| format!("session {s}"));
            tracing::warn!(
                "volume {}: the copy {} names {} before it, the archive {}; not using it",
                vol.name,
                p.display(),
                name(i.previous.as_deref()),
                name(prev)
            );
            return None;
        }
        Some((b, i))
    });
    let their_info = theirs
        .as_ref()
        .ok()
        .and_then(|b| parse(b, &vol.info_label(id)));
    match (mine, their_info) {
        (Some((b, i)), _) if theirs.as_ref().ok() == Some(&b) => m.info = Some(i),
        (Some((b, i)), Some(_)) => {
            m.info_fix = Some((b, "it differed from the copy this machine kept".into()));
            m.info = Some(i);
        }
        (Some((b, i)), None) => {
            m.info_fix = Some((b, why(&theirs)));
            m.info = Some(i);
        }
        (None, Some(i)) => m.info = Some(i),
        (None, None) => return m,
    }
    let Some(info) = &m.info else { return m };
    // Bounded by the info's line count: a huge manifest is damaged, not read.
    match vol.session_manifest_sha256(info) {
        Ok(h) if h == info.manifest_sha256 => {
            m.manifest_ok = true;
            return m;
        }
        _ => {}
    }
    let reason = match vol.manifest_bytes(id) {
        Err(e) => why(&Err(e)),
        Ok(mut r) => match r.fill_buf() {
            Ok([]) => "it was empty".into(),
            _ => "it was damaged: it does not match the hash in its info".into(),
        },
    };
    if let Some(l) = local {
        let p = l.manifest_path(id);
        if file_sha256(&p).is_ok_and(|h| h == info.manifest_sha256) {
            m.manifest_fix = Some((p, reason));
            m.manifest_ok = true;
            return m;
        }
    }
    m
}

/// Describe, and unless `dry_run` apply, the info and manifest fixes of `metas`.
fn fix_meta(
    archive: &Archive,
    vol: &VolumeArchive,
    metas: &[Meta],
    dry_run: bool,
    rep: &mut Report,
) -> Result<()> {
    let would = if dry_run {
        "would put back"
    } else {
        "put back"
    };
    for m in metas {
        let id = &m.id;
        if m.info.is_none() {
            rep.unrepaired.push(format!(
                "session {id}: its info is not usable ({}) and this machine has no good copy of it",
                why(&vol.info_bytes(id))
            ));
            continue;
        }
        if !m.manifest_ok {
            rep.unrepaired.push(format!(
                "session {id}: its manifest is missing or damaged and this machine has no copy that matches its info"
            ));
        }
        if m.info_fix.is_none() && m.manifest_fix.is_none() {
            continue;
        }
        if !dry_run {
            if let Err(e) = to_folder(archive, vol, id) {
                rep.unrepaired.push(e.to_string());
                continue;
            }
        }
        if let Some((bytes, reason)) = &m.info_fix {
            rep.done.push(format!(
                "{would} {} from this machine's copy ({reason})",
                file_label(vol, id, SessionFile::Info)
            ));
            if !dry_run {
                archive.put_session_file(&vol.name, id, SessionFile::Info, bytes)?;
            }
        }
        if let Some((copy, reason)) = &m.manifest_fix {
            rep.done.push(format!(
                "{would} {} from this machine's copy ({reason})",
                file_label(vol, id, SessionFile::Manifest)
            ));
            if !dry_run {
                let bytes = std::fs::read(copy).at(copy)?;
                archive.put_session_file(&vol.name, id, SessionFile::Manifest, &bytes)?;
            }
        }
    }
    Ok(())
}

/// Make session `id` a folder (a tar cannot be patched in place).
fn to_folder(archive: &Archive, vol: &VolumeArchive, id: &str) -> Result<()> {
    if vol.storage(id) == Storage::Tar {
        tracing::info!(
            "volume {}: converting tar session {id} to a folder",
            vol.name
        );
        archive.untar(&vol.name, id).map_err(|e| {
            Error::Msg(format!(
                "session {id} is a tar that could not be converted into a folder to repair it: {e}"
            ))
        })?;
        vol.forget_tars();
    }
    Ok(())
}

/// The file of session `id` that `file` names, as a folder session holds it, for
/// messages (a tar session becomes a folder before anything is put back).
fn file_label(vol: &VolumeArchive, id: &str, file: SessionFile) -> String {
    let rel = match file {
        SessionFile::Info => PathBuf::from(sparsebak_format::layout::INFO_FILE),
        SessionFile::Manifest => PathBuf::from(sparsebak_format::layout::MANIFEST_FILE),
        SessionFile::Chunk(addr) => sparsebak_format::layout::chunk_rel_path(addr),
    };
    match vol.folder() {
        Some(f) => f.session_dir(id).join(rel).display().to_string(),
        None => format!(
            "{}/{}/{}",
            vol.label(),
            sparsebak_format::layout::session_dir_name(id),
            rel.display()
        ),
    }
}

/// Where a session's good manifest is.
#[derive(Debug, Clone)]
enum ManifestAt {
    /// In the archive.
    Archive,
    /// Only in this machine's copy (a dry run that would put it back).
    Copy(PathBuf),
}

/// One way to read the volume.
struct Reader {
    file: File,
    size: u64,
    label: String,
}

/// The volume, opened for reading back the chunks to re-create: the source's
/// reference snapshot (the volume as it was at the last send or monitor) where it keeps
/// one, then the live volume. Every chunk taken from them is checked against its
/// recorded hash, so either is as good as the other where it matches.
struct Volumes {
    readers: Vec<Reader>,
    /// Why a way to read the volume could not be opened.
    errors: Vec<String>,
    reference: bool,
}

impl Volumes {
    fn open(config: &Config, name: &str, source: &mut dyn Source) -> Volumes {
        let ctx = VolumeCtx::new(config, name);
        let mut v = Volumes {
            readers: Vec::new(),
            errors: Vec::new(),
            reference: false,
        };
        match source.open_reference(&ctx) {
            Ok(Some((file, size))) => {
                v.reference = true;
                v.readers.push(Reader {
                    file,
                    size,
                    label: format!("{name}'s tick snapshot"),
                });
            }
            Ok(None) => {}
            Err(e) => v.errors.push(format!("its snapshot: {e}")),
        }
        match source.open_live(&ctx) {
            Ok((file, size)) => v.readers.push(Reader {
                file,
                size,
                label: format!("volume {name}"),
            }),
            Err(e) => v.errors.push(e.to_string()),
        }
        v
    }

    /// The volume's chunk at `addr` that `codec` identifies as `hash`, from the first
    /// reader that has it, and that reader's label.
    fn find(
        &self,
        codec: &dyn ChunkCodec,
        addr: u64,
        chunksize: u64,
        hash: &Hash,
    ) -> Result<Option<(Vec<u8>, &str)>> {
        for r in &self.readers {
            if addr >= r.size {
                continue;
            }
            let len = chunksize.min(r.size - addr) as usize;
            let mut buf = vec![0u8; chunksize as usize];
            r.file
                .read_exact_at(&mut buf[..len], addr)
                .map_err(|e| Error::Msg(format!("{}: reading at {addr}: {e}", r.label)))?;
            if codec.identify(&buf) == *hash {
                return Ok(Some((buf, &r.label)));
            }
        }
        Ok(None)
    }

    fn close(self, config: &Config, name: &str, source: &mut dyn Source) -> Result<()> {
        let reference = self.reference;
        drop(self.readers);
        if reference {
            source.close_reference(&VolumeCtx::new(config, name))?;
        }
        Ok(())
    }
}

/// One stored chunk that does not check out.
struct Bad {
    addr: u64,
    hash: Hash,
    reason: String,
}

/// An encrypted volume's identity file, missing or not this volume's: put back from
/// the volume id this machine's copies of its sessions carry.
fn fix_volume_id(
    archive: &Archive,
    vol: &VolumeArchive,
    name: &str,
    local: Option<&LocalCopies>,
    dry_run: bool,
    rep: &mut Report,
) -> Result<()> {
    if !archive.sealed {
        return Ok(());
    }
    let why = match vol.store().volume_id() {
        Ok(Some(_)) => return Ok(()),
        Ok(None) => "it was missing".to_string(),
        Err(e) => format!("it was damaged: {e}"),
    };
    let copied = local
        .map(|l| l.ids())
        .transpose()?
        .and_then(|ids| ids.last().cloned())
        .and_then(|id| SessionInfo::read(&local?.info_path(&id)).ok())
        .and_then(|i| i.volume_id);
    let Some(id) = copied else {
        rep.unrepaired.push(format!(
            "volume {name}: its identity file cannot be put back ({why}): this machine has \
             no copy of its sessions"
        ));
        return Ok(());
    };
    if dry_run {
        rep.done.push(format!(
            "would put back the identity file of volume {name} ({why})"
        ));
    } else {
        archive.put_volume_id(name, &id)?;
        rep.done.push(format!(
            "put back the identity file of volume {name} ({why})"
        ));
    }
    Ok(())
}

/// Read back every stored chunk of session `info` (manifest from `manifest`), in
/// parallel batches; the ones that are missing or damaged.
fn bad_chunks(
    vol: &VolumeArchive,
    info: &SessionInfo,
    manifest: &ManifestAt,
    progress: &Progress,
    done: &mut u64,
) -> Result<Vec<Bad>> {
    let mut bad = Vec::new();
    let codec = vol.codec(info);
    let codec = &*codec;
    let mut reader = open_manifest(vol, &info.session, manifest)?;
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        for e in reader.by_ref() {
            let e = e?;
            if let Some(h) = e.hash {
                batch.push((e.addr, h));
                if batch.len() == BATCH {
                    break;
                }
            }
        }
        if batch.is_empty() {
            return Ok(bad);
        }
        let addrs: Vec<u64> = batch.iter().map(|(a, _)| *a).collect();
        let stored = vol.read_stored_batch(info, &addrs);
        let checked: Vec<(u64, Option<Bad>)> = batch
            .into_par_iter()
            .zip(stored.into_par_iter())
            .map(|((addr, hash), stored)| {
                let len = stored.as_ref().map(|s| s.len() as u64).unwrap_or(0);
                let reason = match stored {
                    Err(sparsebak_format::FormatError::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        Some("missing".to_string())
                    }
                    Err(e) => Some(format!("unreadable: {e}")),
                    Ok(s) => match codec.decode(&ChunkContext::of(info, addr), &s) {
                        Ok(d) if codec.identify(&d) == hash => None,
                        Ok(_) => Some("damaged: its SHA-256 does not match the manifest".into()),
                        Err(e) => Some(format!("damaged: {}", e.reason)),
                    },
                };
                (len, reason.map(|reason| Bad { addr, hash, reason }))
            })
            .collect();
        for (len, b) in checked {
            *done += len;
            bad.extend(b);
        }
        progress.set(*done);
    }
}

/// Session `id`'s manifest: the archive's or the copy.
fn open_manifest(
    vol: &VolumeArchive,
    id: &str,
    manifest: &ManifestAt,
) -> Result<ManifestReader<Box<dyn BufRead + Send>>> {
    match manifest {
        ManifestAt::Archive => Ok(vol.manifest(id)?),
        ManifestAt::Copy(p) => {
            let f = File::open(p).at(p)?;
            let r: Box<dyn BufRead + Send> = Box::new(std::io::BufReader::new(f));
            Ok(ManifestReader::new(r, p))
        }
    }
}

/// The stored chunk at `addr` of `info` for `data`, encoded in the session's codec (at
/// the configured zstd level when the configuration compresses with zstd).
fn encode(
    config: &Config,
    vol: &VolumeArchive,
    info: &SessionInfo,
    addr: u64,
    data: &[u8],
) -> std::result::Result<Vec<u8>, CodecError> {
    let level = if config.compression.codec == Codec::Zstd {
        config.compression.level
    } else {
        codec::DEFAULT_LEVEL
    };
    // Sealed for the session's volume id in an encrypted archive.
    vol.writing_codec(info.volume_id.as_deref(), info.compression, level)
        .encode(&ChunkContext::of(info, addr), data)
}

/// For each address of `lost` (sorted, all stored by session `k`), the last session
/// whose view takes the chunk from `k`: the views of `k` up to it lack the chunk. A
/// later session stops it by recording the address itself, or by a shrink that cuts
/// it off (it never comes back), so the sessions form one run.
fn broken_views(
    vol: &VolumeArchive,
    metas: &[Meta],
    manifests: &[Option<ManifestAt>],
    k: usize,
    lost: &[u64],
) -> Result<Vec<usize>> {
    let mut last = vec![k; lost.len()];
    let mut live: Vec<usize> = (0..lost.len()).collect();
    for m in k + 1..metas.len() {
        if live.is_empty() {
            break;
        }
        if let Some(info) = &metas[m].info {
            live.retain(|&i| lost[i] < info.volsize);
        }
        if let Some(path) = &manifests[m] {
            let mut recorded = open_manifest(vol, &metas[m].id, path)?.peekable();
            let mut keep = Vec::with_capacity(live.len());
            for &i in &live {
                let a = lost[i];
                let mut hit = false;
                while let Some(e) = recorded.peek() {
                    match e {
                        Ok(e) if e.addr < a => {
                            recorded.next();
                        }
                        Ok(e) => {
                            hit = e.addr == a;
                            break;
                        }
                        Err(_) => {
                            if let Some(Err(err)) = recorded.next() {
                                return Err(err.into());
                            }
                        }
                    }
                }
                if !hit {
                    keep.push(i);
                }
            }
            live = keep;
        }
        for &i in &live {
            last[i] = m;
        }
    }
    Ok(last)
}

/// Rebuild, from its tar's member headers, the index of every tar session of `vol`
/// whose index is missing or does not open (dry: say which would be). Returns the
/// sessions whose index is (or would be) rebuilt, and those whose index cannot be
/// (reported). Only an archive whose files this
/// machine reaches (local, or encrypted through `serve`) is walked here.
fn fix_tar_indexes(
    vol: &VolumeArchive,
    dry_run: bool,
    rep: &mut Report,
) -> Result<(HashSet<String>, HashSet<String>)> {
    let (mut done, mut failed) = (HashSet::new(), HashSet::new());
    let Some(store) = vol.folder() else {
        return Ok((done, failed));
    };
    let fs = store.fs();
    for id in vol.sessions()? {
        if vol.storage(&id) != Storage::Tar || !fs.exists(&store.tar_path(&id)) {
            continue;
        }
        let index = store.tar_index_path(&id);
        let label = fs.display(&index);
        let reason = match store.tar(&id) {
            Ok(_) => continue,
            Err(e) if !store.is_index_fault(&id, &e) => continue,
            Err(_) if !fs.exists(&index) => "it was missing".to_string(),
            Err(_) => "it was damaged".to_string(),
        };
        let res = if dry_run {
            store.walk_tar(&id).map(drop)
        } else {
            store.rebuild_tar_index(&id)
        };
        match res {
            Ok(()) => {
                rep.done.push(format!(
                    "{} the index {label} of tar session {id} from the tar's member headers ({reason})",
                    if dry_run { "would rebuild" } else { "rebuilt" }
                ));
                done.insert(id);
            }
            // A tar that does not read either: what it holds is checked (and
            // reported) with the rest of the session.
            Err(e) => {
                rep.unrepaired.push(format!(
                    "session {id}: its tar index {label} cannot be rebuilt ({reason}): {e}"
                ));
                failed.insert(id);
            }
        }
    }
    vol.forget_tars();
    Ok((done, failed))
}

/// Repair volume `name` of `archive` (see the module documentation). With `dry_run`
/// nothing changes and the report says what would be done.
pub fn repair(
    config: &Config,
    archive: &Archive,
    name: &str,
    source: &mut dyn Source,
    dry_run: bool,
) -> Result<Report> {
    let mut rep = Report::default();
    let vol = archive.volume(name);
    if !vol.exists() {
        return Err(Error::Msg(format!(
            "volume {name} has no folder in the archive at {}",
            archive.root.display()
        )));
    }
    let local_copies = LocalCopies::for_dest(config, name);
    let local = local_copies.dir.is_dir().then_some(&local_copies);
    // The source side's lock also keeps `monitor` from moving the snapshot we read.
    // Nothing is recovered first: that may need what only the repair puts back.
    let mode = if dry_run {
        Mode::Shared
    } else {
        Mode::Exclusive
    };
    let _held = prepare(config, archive, name, Use::Lock(mode))?;
    fix_volume_id(archive, &vol, name, local, dry_run, &mut rep)?;
    // A lost or damaged tar index hides its whole session (info, manifest, chunks)
    // although the tar holds all of it: rebuilt first, from the tar's headers.
    let (reindexed, unindexed) = fix_tar_indexes(&vol, dry_run, &mut rep)?;
    // A prune under way is finished first: the manifest of the session it folds into
    // is new in the archive and not yet in the copies.
    let folding = archive.interrupted_prune(name)?;
    if dry_run {
        if let Some((s, t)) = &folding {
            rep.done.push(format!(
                "would first finish the interrupted removal of session {s} (into {t})"
            ));
        }
    } else {
        archive.remove_staging(name)?;
        if folding.is_some() && crate::archive::recover(archive, name, local).is_err() {
            // The roll-forward may need an info or manifest that only the copies have.
            let ids = vol.sessions()?;
            let metas: Vec<Meta> = ids
                .iter()
                .enumerate()
                .filter(|(_, id)| folding.as_ref().is_none_or(|(_, t)| t != *id))
                .map(|(k, id)| check_meta(&vol, local, id, before(&ids, k)))
                .collect();
            fix_meta(archive, &vol, &metas, false, &mut rep)?;
            crate::archive::recover(archive, name, local)?;
        }
    }
    let ids = vol.sessions()?;
    let metas: Vec<Meta> = ids
        .iter()
        .enumerate()
        .map(|(k, id)| {
            let mut m = check_meta(&vol, local, id, before(&ids, k));
            if dry_run && folding.as_ref().is_some_and(|(_, t)| t == id) {
                // Its copies are updated when the prune finishes.
                m.info_fix = None;
                m.manifest_fix = None;
            }
            m
        })
        // A dry run cannot read a session whose index it would rebuild: what else
        // it needs is known after the rebuild (a run checks it then).
        // One whose index cannot be rebuilt was reported: nothing of it reads.
        .filter(|m| !(unindexed.contains(&m.id) || (dry_run && reindexed.contains(&m.id))))
        .collect();
    fix_meta(archive, &vol, &metas, dry_run, &mut rep)?;
    if !dry_run {
        if let Some(l) = local {
            if let Err(e) = l.catch_up(&vol) {
                rep.unrepaired.push(e.to_string());
            }
        }
    }
    // Where each session's good manifest is now.
    let manifests: Vec<Option<ManifestAt>> = metas
        .iter()
        .map(|m| match (&m.info, m.manifest_ok, &m.manifest_fix) {
            (Some(_), true, Some((copy, _))) if dry_run => Some(ManifestAt::Copy(copy.clone())),
            (Some(_), true, _) => Some(ManifestAt::Archive),
            _ => None,
        })
        .collect();

    let total: u64 = metas
        .iter()
        .filter_map(|m| m.info.as_ref().map(|i| i.bytes_stored))
        .sum();
    let progress = Progress::new(total, &format!("repair {name}"));
    let mut read = 0u64;
    let mut volumes: Option<Volumes> = None;
    let would = if dry_run {
        "would re-create"
    } else {
        "re-created"
    };
    for (k, m) in metas.iter().enumerate() {
        let (Some(info), Some(manifest)) = (&m.info, &manifests[k]) else {
            continue;
        };
        // Mid-fold, the removed session's chunks are partly moved into the session
        // it folds into, and what either holds is known once the removal is
        // finished (the run does that first): a dry run does not guess.
        if dry_run
            && folding
                .as_ref()
                .is_some_and(|(s, t)| *s == m.id || *t == m.id)
        {
            continue;
        }
        if info.chunksize > MAX_CHUNKSIZE {
            rep.unrepaired.push(format!(
                "session {}: its info names chunk size {}, more than sparsebak ever uses",
                m.id, info.chunksize
            ));
            continue;
        }
        let bad = bad_chunks(&vol, info, manifest, &progress, &mut read)?;
        if bad.is_empty() {
            continue;
        }
        let vols = volumes.get_or_insert_with(|| Volumes::open(config, name, source));
        let mut lost: Vec<(u64, String)> = Vec::new();
        for b in bad {
            match vols.find(&*vol.codec(info), b.addr, info.chunksize, &b.hash)? {
                Some((data, from)) => {
                    let dst = file_label(&vol, &m.id, SessionFile::Chunk(b.addr));
                    if !dry_run {
                        if let Err(e) = to_folder(archive, &vol, &m.id) {
                            lost.push((b.addr, e.to_string()));
                            continue;
                        }
                    }
                    rep.done.push(format!(
                        "{would} chunk x{:016x} of session {} from {from} (it was {})",
                        b.addr, m.id, b.reason
                    ));
                    if !dry_run {
                        let stored = encode(config, &vol, info, b.addr, &data)
                            .map_err(|e| Error::Msg(format!("{dst}: encoding: {}", e.reason)))?;
                        archive.put_session_file(
                            name,
                            &m.id,
                            SessionFile::Chunk(b.addr),
                            &stored,
                        )?;
                    }
                }
                None if vols.readers.is_empty() => lost.push((
                    b.addr,
                    format!(
                        "{}, and the volume cannot be read ({})",
                        b.reason,
                        vols.errors.join("; ")
                    ),
                )),
                None => lost.push((
                    b.addr,
                    format!(
                        "{}, and the volume no longer holds its data (changed since that session)",
                        b.reason
                    ),
                )),
            }
        }
        if lost.is_empty() {
            continue;
        }
        let addrs: Vec<u64> = lost.iter().map(|(a, _)| *a).collect();
        let views = broken_views(&vol, &metas, &manifests, k, &addrs)?;
        for ((addr, reason), last) in lost.into_iter().zip(views) {
            let views = if last == k {
                format!("the view of session {} lacks it", m.id)
            } else {
                format!(
                    "the views of sessions {} to {} lack it",
                    m.id, metas[last].id
                )
            };
            rep.unrepaired.push(format!(
                "chunk x{addr:016x} of session {}: {reason}; {views}",
                m.id
            ));
        }
    }
    progress.finish();
    if let Some(v) = volumes {
        v.close(config, name, source)?;
    }
    // Every file put back was made durable as it was written.
    Ok(rep)
}

/// What `repair` could do about the problems of volume `vol`, for `verify`'s hint:
/// the info and manifest files it would put back from this machine's copies.
pub fn meta_fixes(vol: &VolumeArchive, local: Option<&LocalCopies>) -> Vec<String> {
    let Ok(ids) = vol.sessions() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let broken = tar_index_fixes(vol);
    for (k, id) in ids.iter().enumerate() {
        if broken.contains(id) {
            // Its info and manifest are in the tar: they read once the index is back.
            continue;
        }
        let m = check_meta(vol, local, id, before(&ids, k));
        if m.info_fix.is_some() {
            out.push(file_label(vol, id, SessionFile::Info));
        }
        if m.manifest_fix.is_some() {
            out.push(file_label(vol, id, SessionFile::Manifest));
        }
    }
    out
}

/// The tar sessions of `vol` whose index is missing or damaged while the tar is
/// there: `repair` rebuilds their index from the tar.
pub fn tar_index_fixes(vol: &VolumeArchive) -> Vec<String> {
    let (Some(store), Ok(ids)) = (vol.folder(), vol.sessions()) else {
        return Vec::new();
    };
    ids.into_iter()
        .filter(|id| {
            vol.storage(id) == Storage::Tar
                && store.tar(id).is_err_and(|e| store.is_index_fault(id, &e))
        })
        .collect()
}

/// The session before the `k`th of `ids`.
fn before(ids: &[String], k: usize) -> Option<&str> {
    k.checked_sub(1).map(|p| ids[p].as_str())
}
