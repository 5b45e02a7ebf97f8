//! Resuming a folder session whose writer went away (a remote archive's link
//! dropped): the chunks it had stored are kept, and the next session on the same base
//! takes them over instead of having them sent again.
//!
//! While a session is written for a remote client, every chunk put is journaled in
//! `<volume>/.tmp-resume-<id>/journal` (swept with the staging folders if the server
//! dies):
//! a line `base=<id|->`, then one line per chunk, `<addr hex> <hash hex>`, the hash
//! of the chunk's data as the client gave it. When the link drops, the server makes
//! the staging folder durable (syncfs) and renames it to `.resume-S_<id>`, with the
//! journal inside as `journal`. The next session of the volume on the same base
//! offers the journaled chunks whose files still decode to data of that hash (each is
//! read, decoded and hashed again: nothing is taken on the journal's word); a session
//! on another base (or a commit) removes such folders.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sparsebak_format::archive_fs::{self, FileWriter, SharedFs};
use sparsebak_format::chunk::Codec;
use sparsebak_format::layout;
use sparsebak_format::Hash;

use crate::error::{IoAt, Result};

/// Prefix of a kept staging folder, `.resume-S_<id>`.
pub const RESUME_PREFIX: &str = ".resume-S_";
/// The journal inside it.
const JOURNAL: &str = "journal";
/// Longest journal line accepted (a chunk line is at most 82 bytes).
const MAX_LINE: u64 = 256;

/// The folder of the journal of a session being written: a staging folder
/// (`.tmp-*`), so the sweep of a dead run's leftovers removes it.
fn journal_dir(vol_dir: &Path, id: &str) -> PathBuf {
    vol_dir.join(format!(".tmp-resume-{id}"))
}

fn journal_path(vol_dir: &Path, id: &str) -> PathBuf {
    journal_dir(vol_dir, id).join(JOURNAL)
}

fn hex32(s: &str) -> Option<Hash> {
    let v = hex::decode(s).ok()?;
    v.try_into().ok()
}

/// The journal of the session being written.
pub struct Journal {
    fs: SharedFs,
    vol_dir: PathBuf,
    id: String,
    w: BufWriter<Box<dyn FileWriter>>,
}

impl Journal {
    /// Start the journal of session `id` of the volume in `vol_dir`, on `base`.
    pub fn create(vol_dir: &Path, id: &str, base: Option<&str>) -> Result<Journal> {
        Journal::create_in(archive_fs::local(), vol_dir, id, base)
    }

    /// [`Journal::create`] in a volume folder reached through `fs`.
    pub fn create_in(
        fs: SharedFs,
        vol_dir: &Path,
        id: &str,
        base: Option<&str>,
    ) -> Result<Journal> {
        let dir = journal_dir(vol_dir, id);
        fs.create_dir_all(&dir).at(&dir)?;
        let path = journal_path(vol_dir, id);
        let mut w = BufWriter::new(fs.create(&path).at(&path)?);
        writeln!(w, "base={}", base.unwrap_or("-")).at(&path)?;
        Ok(Journal {
            fs,
            vol_dir: vol_dir.to_path_buf(),
            id: id.to_string(),
            w,
        })
    }

    /// Record a chunk that was stored.
    pub fn record(&mut self, addr: u64, hash: &Hash) -> Result<()> {
        writeln!(self.w, "{addr:x} {}", hex::encode(hash)).at(journal_path(&self.vol_dir, &self.id))
    }

    /// The session ended (committed or given up): the journal goes.
    pub fn discard(self) {
        let dir = journal_dir(&self.vol_dir, &self.id);
        drop(self.w);
        let _ = self.fs.remove_dir_all(&dir);
    }

    /// The writer went away: keep the staging folder and the journal under the
    /// resumable name. Called before the session's writer is dropped (which would
    /// remove the staging folder).
    pub fn keep(self) -> Result<()> {
        let jpath = journal_path(&self.vol_dir, &self.id);
        let fs = self.fs;
        self.w
            .into_inner()
            .map_err(|e| e.into_error())
            .and_then(|w| w.finish(false))
            .at(&jpath)?;
        let staging = self
            .vol_dir
            .join(format!("{}{}", layout::STAGING_PREFIX, self.id));
        let kept = self.vol_dir.join(format!("{RESUME_PREFIX}{}", self.id));
        fs.syncfs(&staging).at(&staging)?;
        fs.rename(&staging, &kept).at(&kept)?;
        fs.rename(&jpath, &kept.join(JOURNAL)).at(&kept)?;
        let jdir = journal_dir(&self.vol_dir, &self.id);
        fs.remove_dir(&jdir).at(&jdir)?;
        fs.sync_dir(&self.vol_dir).at(&self.vol_dir)?;
        Ok(())
    }
}

/// A kept folder whose chunks a new session on the same base may take over.
pub struct Kept {
    fs: SharedFs,
    dir: PathBuf,
    journal: BufReader<Box<dyn Read + Send>>,
    /// Chunks offered so far and not yet taken: addr → hash.
    page: std::collections::BTreeMap<u64, Hash>,
    done: bool,
}

fn kept_base(fs: &SharedFs, dir: &Path) -> Option<String> {
    let f = fs.open(&dir.join(JOURNAL)).ok()?;
    let mut line = String::new();
    BufReader::new(f).take(MAX_LINE).read_line(&mut line).ok()?;
    line.trim_end().strip_prefix("base=").map(str::to_string)
}

/// The next line of a journal, at most [`MAX_LINE`] bytes (a longer one is cut,
/// and will not parse); `None` at its end.
fn next_line(r: &mut BufReader<Box<dyn Read + Send>>) -> Option<String> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE).read_until(b'\n', &mut buf).ok()?;
    if n == 0 {
        return None;
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

impl Kept {
    /// The kept folder of volume `vol_dir` on `base`, if there is one; every other
    /// kept folder of the volume is removed (its session can no longer be resumed).
    pub fn find(vol_dir: &Path, base: Option<&str>) -> Result<Option<Kept>> {
        Kept::find_in(archive_fs::local(), vol_dir, base)
    }

    /// [`Kept::find`] in a volume folder reached through `fs`.
    pub fn find_in(fs: SharedFs, vol_dir: &Path, base: Option<&str>) -> Result<Option<Kept>> {
        let want = base.unwrap_or("-");
        let mut found: Option<PathBuf> = None;
        let rd = match fs.read_dir(vol_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(vol_dir),
        };
        let mut kept: Vec<PathBuf> = rd
            .iter()
            .filter(|e| e.name.starts_with(RESUME_PREFIX))
            .map(|e| vol_dir.join(&e.name))
            .collect();
        kept.sort();
        // The newest one on the same base is taken; the others go.
        while let Some(dir) = kept.pop() {
            if found.is_none() && kept_base(&fs, &dir).as_deref() == Some(want) {
                found = Some(dir);
            } else {
                tracing::info!("removing {}: no send can resume it", dir.display());
                fs.remove_dir_all(&dir).at(&dir)?;
            }
        }
        let Some(dir) = found else {
            return Ok(None);
        };
        let f = fs.open(&dir.join(JOURNAL)).at(dir.join(JOURNAL))?;
        let mut journal = BufReader::new(f);
        let _ = next_line(&mut journal);
        Ok(Some(Kept {
            fs,
            dir,
            journal,
            page: Default::default(),
            done: false,
        }))
    }

    /// Up to `max` chunks from `from` on whose files still hold the data that was
    /// written: (address, hash), in address order; and whether there may be more.
    pub fn offer(&mut self, from: u64, max: usize) -> (Vec<(u64, Hash)>, bool) {
        self.page.retain(|&a, _| a >= from);
        let mut out: Vec<(u64, Hash)> = self.page.iter().map(|(&a, &h)| (a, h)).collect();
        while out.len() < max && !self.done {
            let Some(line) = next_line(&mut self.journal) else {
                self.done = true;
                break;
            };
            let mut f = line.split(' ');
            let (Some(a), Some(h), None) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(addr), Some(hash)) = (u64::from_str_radix(a, 16), hex32(h)) else {
                continue;
            };
            if addr < from || self.page.contains_key(&addr) {
                continue;
            }
            if self.read_checked(addr, &hash).is_none() {
                continue;
            }
            self.page.insert(addr, hash);
            out.push((addr, hash));
        }
        (out, !self.done)
    }

    /// The stored bytes of the kept chunk at `addr`, if they decode to data with SHA-256
    /// `hash` (zstd when they are a zstd frame, else stored as they are).
    fn read_checked(&self, addr: u64, hash: &Hash) -> Option<Vec<u8>> {
        let p = self.dir.join(layout::chunk_rel_path(addr));
        let max = sparsebak_format::limits::max_stored_any();
        let b = sparsebak_format::limits::read_bounded_in(self.fs.as_ref(), &p, max, "kept chunk")
            .ok()?;
        let plain = match zstd::zstd_safe::get_frame_content_size(&b) {
            Ok(Some(n)) if n <= sparsebak_format::limits::MAX_CHUNKSIZE => {
                Codec::Zstd.decode(&b, n as usize).ok()?
            }
            _ => b.clone(),
        };
        let got: Hash = Sha256::digest(&plain).into();
        (got == *hash).then_some(b)
    }

    /// The stored bytes of an offered chunk with hash `hash`, checked again.
    pub fn take(&mut self, addr: u64, hash: &Hash) -> Option<Vec<u8>> {
        if self.page.remove(&addr)? != *hash {
            return None;
        }
        self.read_checked(addr, hash)
    }

    /// The new session is committed: the kept folder is not needed any more.
    pub fn remove(self) {
        if let Err(e) = self.fs.remove_dir_all(&self.dir) {
            tracing::warn!("removing {}: {e}", self.dir.display());
        }
    }
}
