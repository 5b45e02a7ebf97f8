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
//! 1. T's new manifest is written to `<vol>/.prune-<T>.manifest` and synced; nothing is
//!    visible yet (a crash leaves a stray file that the next run removes).
//! 2. The journal `<vol>/.prune-journal` is written atomically: S, T and T's new info.
//!    From here on the prune is rolled forward by whichever run comes next.
//! 3. Chunk files named by the new manifest that T lacks are moved from S (renamed, or
//!    re-encoded when S and T use different codecs); one syncfs.
//! 4. The new manifest replaces T's, T's info is written from the journal.
//! 5. S's folder is renamed to `.trash-…` and removed; the source-side copies follow.
//! 6. The journal is removed.
//!
//! Every command that uses a volume runs [`recover`] first, so a `kill -9` at any
//! step is finished by the next run, and `verify` sees a whole archive.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use sparsebak_format::chunk::Codec;
use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestReader, ManifestWriter};
use sparsebak_format::view::ViewReader;
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::{layout, limits};

use crate::archive::local::LocalCopies;
use crate::durable;
use crate::error::{Error, IoAt, Result};

const JOURNAL: &str = ".prune-journal";
const JOURNAL_MAGIC: &str = "sparsebak-prune 1";

fn journal_path(vol: &VolumeArchive) -> PathBuf {
    vol.dir.join(JOURNAL)
}

fn new_manifest_path(vol: &VolumeArchive, t: &str) -> PathBuf {
    vol.dir.join(format!(".prune-{t}.manifest"))
}

/// What folding one session did (or would do).
#[derive(Debug, Default, Clone)]
pub struct FoldPlan {
    pub removed: String,
    pub into: String,
    /// Chunk files that move from the removed session into its successor.
    pub moved: u64,
    /// Chunk files deleted, and their bytes.
    pub deleted: u64,
    pub freed_bytes: u64,
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
    fn take(&mut self) -> Result<Option<Entry>> {
        let h = self.head.take();
        self.head = self.it.next().transpose()?;
        Ok(h)
    }
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Plan folding session `s` into its successor: write T's new manifest to its
/// temporary name (unless `dry_run`) and return T's new info with the plan.
fn plan(vol: &VolumeArchive, s: &str, dry_run: bool) -> Result<(FoldPlan, SessionInfo)> {
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
    let out: Box<dyn Write> = if dry_run {
        Box::new(std::io::sink())
    } else {
        Box::new(BufWriter::new(File::create(&tmp).at(&tmp)?))
    };
    let mut mw = ManifestWriter::new(out);
    let mut fp = FoldPlan {
        removed: s.to_string(),
        into: t.clone(),
        ..Default::default()
    };
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
                    fp.freed_bytes += file_len(&p);
                }
                Some(te)
            }
            (None, Some(se), _) if se.addr >= ti.volsize => {
                if let Some(p) = s_file(&se) {
                    fp.deleted += 1;
                    fp.freed_bytes += file_len(&p);
                }
                None
            }
            (None, Some(se), _) if se.hash.is_none() && prev.is_none() => None,
            (None, Some(se), _) => {
                if se.hash.is_some() {
                    fp.moved += 1;
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
    drop(w);
    if !dry_run {
        let f = File::open(&tmp).at(&tmp)?;
        f.sync_all().at(&tmp)?;
    }
    let mut new_t = ti.clone();
    new_t.previous = si.previous.clone();
    new_t.changed = lines;
    new_t.manifest_sha256 = hash;
    Ok((fp, new_t))
}

/// Remove session `s` of `vol` by folding it into the next session. With `dry_run`
/// nothing changes and the plan says what would happen. Needs the volume's exclusive
/// lock (and the source-side lock when `local` is given).
pub fn fold(
    vol: &VolumeArchive,
    local: Option<&LocalCopies>,
    s: &str,
    dry_run: bool,
) -> Result<FoldPlan> {
    if !dry_run {
        // Folding moves chunk files: both sessions must be folders.
        let ids = vol.sessions()?;
        if let Some(pos) = ids.iter().position(|x| x == s) {
            for id in ids.iter().skip(pos).take(2) {
                crate::archive::tar::untar_session(vol, id)?;
            }
        }
    }
    let (mut fp, new_t) = plan(vol, s, dry_run)?;
    if dry_run {
        return Ok(fp);
    }
    let mut j = format!("{JOURNAL_MAGIC}\nremove={s}\ninto={}\n", fp.into);
    j.push_str(&new_t.to_text());
    let jp = journal_path(vol);
    durable::write_atomic(&jp, j.as_bytes()).at(&jp)?;
    crate::failpoint::hit("prune-after-journal");
    let stored = apply(vol, local, s, &new_t)?;
    fp.freed_bytes = fp.freed_bytes.max(stored.0);
    Ok(fp)
}

/// Steps 3 to 6; idempotent.
fn apply(
    vol: &VolumeArchive,
    local: Option<&LocalCopies>,
    s: &str,
    new_t: &SessionInfo,
) -> Result<(u64,)> {
    let t = &new_t.session;
    let tmp = new_manifest_path(vol, t);
    let sdir = vol.session_dir(s);
    if tmp.exists() {
        let s_info = if sdir.exists() {
            Some(vol.info(s)?)
        } else {
            None
        };
        let mut moved_bytes = 0u64;
        let mut n = 0u64;
        let mut last_prefix = String::new();
        for e in ManifestReader::open(&tmp)? {
            let e = e?;
            if e.hash.is_none() {
                continue;
            }
            let dst = vol.chunk_path(t, e.addr);
            if dst.exists() {
                continue;
            }
            let src = vol.chunk_path(s, e.addr);
            let si = s_info.as_ref().ok_or_else(|| {
                Error::Msg(format!(
                    "volume {}: interrupted prune cannot find chunk x{:016x} (session {s} is gone)",
                    vol.name, e.addr
                ))
            })?;
            let prefix = layout::prefix_name(e.addr);
            if prefix != last_prefix {
                let d = vol.session_dir(t).join(&prefix);
                std::fs::create_dir_all(&d).at(&d)?;
                last_prefix = prefix;
            }
            if si.compression == new_t.compression {
                std::fs::rename(&src, &dst).at(&src)?;
            } else {
                recode(&src, &dst, si, new_t)?;
            }
            moved_bytes += file_len(&dst);
            n += 1;
            if n == 1 {
                crate::failpoint::hit("prune-mid-move");
            }
        }
        durable::syncfs(&vol.dir).at(&vol.dir)?;
        crate::failpoint::hit("prune-before-manifest");
        let mpath = vol.manifest_path(t);
        std::fs::rename(&tmp, &mpath).at(&mpath)?;
        let _ = moved_bytes;
    }
    let ipath = vol.info_path(t);
    let want = new_t.to_text();
    let current = limits::read_bounded(&ipath, limits::MAX_INFO_BYTES, "info file").ok();
    if current.as_deref() != Some(want.as_bytes()) {
        durable::write_atomic(&ipath, want.as_bytes()).at(&ipath)?;
    }
    durable::sync_dir(&vol.session_dir(t)).at(vol.session_dir(t))?;
    crate::failpoint::hit("prune-before-remove");
    let mut freed = 0u64;
    if sdir.exists() {
        let trash = vol.dir.join(format!(".trash-S_{s}"));
        std::fs::rename(&sdir, &trash).at(&sdir)?;
        durable::sync_dir(&vol.dir).at(&vol.dir)?;
        freed = dir_size(&trash);
        std::fs::remove_dir_all(&trash).at(&trash)?;
    }
    remove_trash(vol)?;
    if let Some(l) = local {
        if l.dir.exists() {
            l.save(vol, t)?;
            l.remove(s)?;
        }
    }
    let jp = journal_path(vol);
    if jp.exists() {
        std::fs::remove_file(&jp).at(&jp)?;
        durable::sync_dir(&vol.dir).at(&vol.dir)?;
    }
    Ok((freed,))
}

fn recode(src: &Path, dst: &Path, from: &SessionInfo, to: &SessionInfo) -> Result<()> {
    let stored = limits::read_bounded(
        src,
        limits::max_stored(from.compression, from.chunksize),
        "chunk file",
    )?;
    let data = from
        .compression
        .decode(&stored, from.chunksize as usize)
        .map_err(|e| Error::Msg(format!("{}: {e}", src.display())))?;
    let out = match to.compression {
        Codec::None => data,
        Codec::Zstd => zstd::bulk::compress(&data, 3).at(src)?,
    };
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, out).at(&tmp)?;
    std::fs::rename(&tmp, dst).at(dst)?;
    std::fs::remove_file(src).at(src)
}

fn dir_size(p: &Path) -> u64 {
    let mut n = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => n += dir_size(&e.path()),
                Ok(_) => n += e.metadata().map(|m| m.len()).unwrap_or(0),
                Err(_) => {}
            }
        }
    }
    n
}

fn remove_trash(vol: &VolumeArchive) -> Result<()> {
    let Ok(rd) = std::fs::read_dir(&vol.dir) else {
        return Ok(());
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".trash-") {
            std::fs::remove_dir_all(e.path()).at(e.path())?;
        } else if name.starts_with(".prune-")
            && name.ends_with(".manifest")
            && !journal_path(vol).exists()
        {
            // Written before the journal: the prune never started.
            std::fs::remove_file(e.path()).at(e.path())?;
        }
    }
    Ok(())
}

/// Whether a prune of `vol` was interrupted.
pub fn interrupted(vol: &VolumeArchive) -> bool {
    journal_path(vol).exists()
}

/// Finish an interrupted prune of `vol` (roll forward), and clear leftovers of one that
/// never reached its journal. Needs the volume's exclusive lock.
pub fn recover(vol: &VolumeArchive, local: Option<&LocalCopies>) -> Result<()> {
    let jp = journal_path(vol);
    // A journal is three short lines and an info file.
    let max = limits::MAX_INFO_BYTES + 1024;
    let text = match limits::read_bounded_text(&jp, max, "prune journal") {
        Ok(t) => t,
        Err(sparsebak_format::FormatError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return remove_trash(vol)
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
    let _t = lines
        .next()
        .and_then(|l| l.strip_prefix("into="))
        .ok_or_else(|| bad("no into= line"))?;
    let info_text = lines.next().ok_or_else(|| bad("no info"))?;
    let new_t = SessionInfo::parse(info_text, &jp)?;
    tracing::warn!(
        "volume {}: finishing the interrupted removal of session {s}",
        vol.name
    );
    apply(vol, local, &s, &new_t)?;
    Ok(())
}
