//! The catalog copy at the end of a tape set: a tape file holding a consistent
//! snapshot of the source's SQLite catalog, so a set of tapes restores with no
//! source-side state (`sparsebak tape scan` imports the newest copy it finds).
//!
//! It is written with the same tape file writer as a stream (part trailers, spanning
//! onto the next tape), and its bytes are (docs/FORMAT.md, "Catalog copy on tape"):
//! a plain header of [`COPY_HEADER_LEN`] bytes, the destination's wrapped key file
//! text when it is encrypted, then the snapshot: as it is, or sealed for
//! [`Place::CatalogCopy`] under the destination's keys.
//!
//! The copy is not recorded in the catalog's tape files (it describes them): a scan
//! recognises it by its first block.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sparsebak_format::crypto::envelope::overhead;
use sparsebak_format::crypto::{ArchiveKeys, CryptoError, KeyFile, OpenReader, Place, SealWriter};

use super::drive::TapeDrive;
use super::writer::{write_tape_file, NextTape, TapeFile, TapeFileError, TapeFileOptions};

pub const COPY_MAGIC: &[u8; 8] = b"SPBKCATC";
pub const COPY_VERSION: u32 = 1;
/// Bytes of the plain header at the start of the copy.
pub const COPY_HEADER_LEN: usize = 200;
/// The largest snapshot a copy may claim (a bound before anything is written).
pub const MAX_CATALOG_BYTES: u64 = 1 << 40;
const FLAG_SEALED: u32 = 1;
const ID_MAX: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CatalogCopyError {
    #[error(transparent)]
    TapeFile(Box<TapeFileError>),
    #[error("catalog {path}: taking a snapshot: {source}")]
    Snapshot {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not a catalog copy header, or a damaged one.
    #[error("catalog copy header: {0}")]
    BadHeader(String),
    /// A copy whose content is not what its header says.
    #[error("catalog copy {id}: {reason}")]
    Bad { id: String, reason: String },
    #[error("catalog copy {id}: {source}")]
    Crypto {
        id: String,
        #[source]
        source: CryptoError,
    },
    #[error("catalog copy {id} is sealed and cannot be opened: {reason}")]
    Locked { id: String, reason: String },
    #[error("catalog copy {id}: reading it: {source}")]
    Read {
        id: String,
        #[source]
        source: io::Error,
    },
}

impl From<TapeFileError> for CatalogCopyError {
    fn from(e: TapeFileError) -> Self {
        CatalogCopyError::TapeFile(Box::new(e))
    }
}

/// The plain header of a catalog copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyHeader {
    /// The snapshot is sealed (the destination is encrypted).
    pub sealed: bool,
    /// When the copy was taken, seconds since 1970 (UTC).
    pub written: i64,
    /// Bytes of the snapshot (its plaintext).
    pub catalog_bytes: u64,
    /// Bytes of the key file text after the header (0 when not sealed).
    pub key_len: u32,
    /// SHA-256 of the snapshot; zeros when sealed (the seal checks it).
    pub sha256: [u8; 32],
    /// The copy's tape file id (as in its part trailers).
    pub id: String,
}

impl CopyHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; COPY_HEADER_LEN];
        b[0..8].copy_from_slice(COPY_MAGIC);
        b[8..12].copy_from_slice(&COPY_VERSION.to_le_bytes());
        let flags = if self.sealed { FLAG_SEALED } else { 0 };
        b[12..16].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.written.to_le_bytes());
        b[24..32].copy_from_slice(&self.catalog_bytes.to_le_bytes());
        b[32..36].copy_from_slice(&self.key_len.to_le_bytes());
        b[40..72].copy_from_slice(&self.sha256);
        b[72] = self.id.len() as u8;
        b[73..73 + self.id.len()].copy_from_slice(self.id.as_bytes());
        let sum = Sha256::digest(&b[0..168]);
        b[168..200].copy_from_slice(&sum);
        b
    }

    /// Whether `block` (the first block of a tape file) starts a catalog copy.
    pub fn is_copy(block: &[u8]) -> bool {
        block.len() >= 8 && &block[0..8] == COPY_MAGIC
    }

    /// Read and check a header; every length is bounded.
    pub fn decode(b: &[u8]) -> Result<CopyHeader, CatalogCopyError> {
        let bad = |r: &str| CatalogCopyError::BadHeader(r.to_string());
        if b.len() < COPY_HEADER_LEN || !Self::is_copy(b) {
            return Err(bad("no catalog copy header"));
        }
        if Sha256::digest(&b[0..168]).as_slice() != &b[168..200] {
            return Err(bad("the header is damaged (checksum mismatch)"));
        }
        let u32at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            x
        };
        let version = u32at(8);
        if version != COPY_VERSION {
            return Err(CatalogCopyError::BadHeader(format!(
                "header version {version}; this sparsebak reads version {COPY_VERSION}"
            )));
        }
        let flags = u32at(12);
        if flags & !FLAG_SEALED != 0 {
            return Err(CatalogCopyError::BadHeader(format!(
                "unknown flags {flags:#x}"
            )));
        }
        let sealed = flags & FLAG_SEALED != 0;
        let catalog_bytes = u64::from_le_bytes(u64at(24));
        if catalog_bytes > MAX_CATALOG_BYTES {
            return Err(CatalogCopyError::BadHeader(format!(
                "a snapshot of {catalog_bytes} bytes is more than the {MAX_CATALOG_BYTES} a copy may hold"
            )));
        }
        let key_len = u32at(32);
        if sealed != (key_len > 0)
            || key_len as usize > sparsebak_format::crypto::keyfile::MAX_KEY_FILE
        {
            return Err(CatalogCopyError::BadHeader(format!(
                "a key file of {key_len} bytes in a {} copy",
                if sealed { "sealed" } else { "plain" }
            )));
        }
        let n = b[72] as usize;
        let id = std::str::from_utf8(&b[73..73 + n.min(ID_MAX)])
            .ok()
            .filter(|s| (1..=ID_MAX).contains(&n) && s.bytes().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| bad("the header names no id"))?
            .to_string();
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[40..72]);
        Ok(CopyHeader {
            sealed,
            written: i64::from_le_bytes(u64at(16)),
            catalog_bytes,
            key_len,
            sha256,
            id,
        })
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> CatalogCopyError + '_ {
    move |source| CatalogCopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A consistent snapshot of the catalog at `catalog_path` (`VACUUM INTO` a new file in
/// `dir`), while other runs may be writing it.
fn snapshot(catalog_path: &Path, dir: &Path) -> Result<PathBuf, CatalogCopyError> {
    let snap = dir.join("catalog.snapshot");
    let err = |source| CatalogCopyError::Snapshot {
        path: catalog_path.to_path_buf(),
        source,
    };
    let conn = rusqlite::Connection::open_with_flags(
        catalog_path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(err)?;
    conn.busy_timeout(std::time::Duration::from_secs(30))
        .map_err(err)?;
    let target = snap.to_str().ok_or_else(|| CatalogCopyError::Io {
        path: snap.clone(),
        source: io::Error::other("not a UTF-8 path"),
    })?;
    conn.execute("VACUUM INTO ?1", [target]).map_err(err)?;
    Ok(snap)
}

/// Write a copy of the catalog at `catalog_path` as one tape file at the end of data
/// of the loaded tape (spanning onto the tapes `next` loads). With `keys` (the
/// destination's key file and the keys it unlocks) the snapshot is sealed and the key
/// file travels with it. `opts.id` (1 to 64 printable characters) names the copy.
pub fn write_catalog_copy(
    drive: &mut (dyn TapeDrive + Send),
    next: &mut dyn NextTape,
    opts: &TapeFileOptions,
    catalog_path: &Path,
    keys: Option<(&KeyFile, &ArchiveKeys)>,
) -> Result<TapeFile, CatalogCopyError> {
    if opts.id.is_empty()
        || opts.id.len() > ID_MAX
        || !opts.id.bytes().all(|c| c.is_ascii_graphic())
    {
        return Err(TapeFileError::BadId(opts.id.clone()).into());
    }
    let parent = catalog_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".catalog-copy.")
        .tempdir_in(parent)
        .map_err(io_at(parent))?;
    let snap = snapshot(catalog_path, tmp.path())?;
    let (catalog_bytes, sha256) = {
        let mut f = std::fs::File::open(&snap).map_err(io_at(&snap))?;
        let mut h = Sha256::new();
        let n = io::copy(&mut f, &mut h).map_err(io_at(&snap))?;
        (n, <[u8; 32]>::from(h.finalize()))
    };
    let key_text = keys.map(|(kf, _)| kf.render()).unwrap_or_default();
    let header = CopyHeader {
        sealed: keys.is_some(),
        written: chrono::Utc::now().timestamp(),
        catalog_bytes,
        key_len: key_text.len() as u32,
        sha256: if keys.is_some() { [0; 32] } else { sha256 },
        id: opts.id.clone(),
    };
    let mut file = std::fs::File::open(&snap).map_err(io_at(&snap))?;
    let ((), tape_file, stats) = write_tape_file(drive, next, opts, |w| {
        w.write_all(&header.encode())?;
        w.write_all(key_text.as_bytes())?;
        let mut src = (&mut file).take(catalog_bytes);
        match keys {
            Some((_, k)) => {
                let place = Place::CatalogCopy {
                    id: &header.id,
                    written: header.written,
                };
                let mut s = SealWriter::new(k, place, w).map_err(io::Error::other)?;
                io::copy(&mut src, &mut s)?;
                s.finish()?;
            }
            None => {
                io::copy(&mut src, w)?;
            }
        }
        Ok(())
    })?;
    tracing::info!(
        id = %header.id,
        bytes = tape_file.bytes,
        parts = tape_file.parts.len(),
        stops = stats.stops,
        "catalog copy written"
    );
    Ok(tape_file)
}

/// Read a catalog copy from `input` (the copy's bytes, e.g. a
/// [`TapeFileReader`](super::reader::TapeFileReader)) and restore its snapshot into a
/// catalog file at `out` (temp name, fsync, rename; `out` is replaced). A sealed copy
/// is opened with the keys `unlock` gives for the key file it carries. The input must
/// end right after the snapshot (reading it to its end lets a tape reader check the
/// part trailers). Returns the copy's header, and the key file a sealed copy carries.
pub fn restore_catalog_copy(
    input: &mut dyn Read,
    out: &Path,
    unlock: &mut dyn FnMut(&KeyFile) -> Result<ArchiveKeys, String>,
) -> Result<(CopyHeader, Option<KeyFile>), CatalogCopyError> {
    let mut hb = vec![0u8; COPY_HEADER_LEN];
    input.read_exact(&mut hb).map_err(|source| {
        tape_error(source).unwrap_or_else(|source| CatalogCopyError::Read {
            id: "(its header)".into(),
            source,
        })
    })?;
    let header = CopyHeader::decode(&hb)?;
    let id = header.id.clone();
    // A damaged block or part of the tape file says where it is on its own.
    let read_err = |source: io::Error| {
        tape_error(source).unwrap_or_else(|source| CatalogCopyError::Read {
            id: id.clone(),
            source,
        })
    };
    let mut key_file = None;
    let keys = if header.sealed {
        let mut kt = vec![0u8; header.key_len as usize];
        input.read_exact(&mut kt).map_err(read_err)?;
        let kf = KeyFile::parse(&kt).map_err(|source| CatalogCopyError::Crypto {
            id: id.clone(),
            source,
        })?;
        let keys = unlock(&kf).map_err(|reason| CatalogCopyError::Locked {
            id: id.clone(),
            reason,
        })?;
        key_file = Some(kf);
        Some(keys)
    } else {
        None
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".catalog.restore.")
        .tempfile_in(parent)
        .map_err(io_at(parent))?;
    let mut plain_sha = None;
    let copied = match &keys {
        Some(k) => {
            let place = Place::CatalogCopy {
                id: &header.id,
                written: header.written,
            };
            let sealed = (&mut *input).take(header.catalog_bytes + overhead(header.catalog_bytes));
            let mut r = OpenReader::new(k, place, sealed);
            io::copy(&mut r, tmp.as_file_mut()).map_err(read_err)?
        }
        None => {
            let mut h = Hashing {
                inner: tmp.as_file_mut(),
                sha: Sha256::new(),
            };
            let n = io::copy(&mut (&mut *input).take(header.catalog_bytes), &mut h)
                .map_err(read_err)?;
            plain_sha = Some(<[u8; 32]>::from(h.sha.finalize()));
            n
        }
    };
    if copied != header.catalog_bytes {
        return Err(CatalogCopyError::Bad {
            id,
            reason: format!(
                "the snapshot ends after {copied} of its {} bytes",
                header.catalog_bytes
            ),
        });
    }
    // The end of the input: a tape reader checks the last trailer there.
    let mut more = [0u8; 1];
    if input.read(&mut more).map_err(read_err)? != 0 {
        return Err(CatalogCopyError::Bad {
            id,
            reason: "bytes follow the snapshot".into(),
        });
    }
    if plain_sha.is_some_and(|s| s != header.sha256) {
        return Err(CatalogCopyError::Bad {
            id,
            reason: "the snapshot's SHA-256 does not match its header".into(),
        });
    }
    tmp.as_file().sync_all().map_err(io_at(tmp.path()))?;
    check_sqlite(tmp.path(), &id)?;
    tmp.persist(out).map_err(|e| CatalogCopyError::Io {
        path: out.to_path_buf(),
        source: e.error,
    })?;
    crate::durable::sync_parent(out).map_err(io_at(out))?;
    Ok((header, key_file))
}

/// The tape file error inside a read error of a tape file reader, as itself.
fn tape_error(e: io::Error) -> Result<CatalogCopyError, io::Error> {
    if e.get_ref()
        .is_some_and(|i| i.downcast_ref::<TapeFileError>().is_some())
    {
        if let Some(inner) = e.into_inner() {
            if let Ok(t) = inner.downcast::<TapeFileError>() {
                return Ok(CatalogCopyError::TapeFile(t));
            }
        }
        return Err(io::Error::other("a tape file error"));
    }
    Err(e)
}

/// The restored snapshot must be an intact SQLite catalog.
fn check_sqlite(path: &Path, id: &str) -> Result<(), CatalogCopyError> {
    let bad = |reason: String| CatalogCopyError::Bad {
        id: id.to_string(),
        reason,
    };
    let conn = rusqlite::Connection::open(path)
        .map_err(|e| bad(format!("the snapshot is not a SQLite database: {e}")))?;
    let ok: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| bad(format!("the snapshot is not a SQLite database: {e}")))?;
    if ok != "ok" {
        return Err(bad(format!("the snapshot fails its integrity check: {ok}")));
    }
    let version: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .ok();
    if version.is_none() {
        return Err(bad("the snapshot is not a sparsebak catalog".into()));
    }
    Ok(())
}

struct Hashing<'a> {
    inner: &'a mut std::fs::File,
    sha: Sha256,
}

impl Write for Hashing<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> CopyHeader {
        CopyHeader {
            sealed: true,
            written: 1_790_000_000,
            catalog_bytes: 123_456,
            key_len: 300,
            sha256: [0; 32],
            id: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    /// `h` encoded, with bytes changed by `f` and the checksum made right again.
    fn forged(h: &CopyHeader, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = h.encode();
        f(&mut b);
        let sum = Sha256::digest(&b[0..168]);
        b[168..200].copy_from_slice(&sum);
        b
    }

    fn refused(b: &[u8]) -> String {
        CopyHeader::decode(b).unwrap_err().to_string()
    }

    #[test]
    fn the_header_reads_back_and_every_length_is_bounded() {
        let h = header();
        let b = h.encode();
        assert_eq!(b.len(), COPY_HEADER_LEN);
        assert_eq!(CopyHeader::decode(&b).unwrap(), h);
        let mut d = b.clone();
        d[30] ^= 1;
        assert_eq!(
            refused(&d),
            "catalog copy header: the header is damaged (checksum mismatch)"
        );
        assert_eq!(
            refused(&b[..199]),
            "catalog copy header: no catalog copy header"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[24..32].copy_from_slice(&(1u64 << 41).to_le_bytes()))),
            "catalog copy header: a snapshot of 2199023255552 bytes is more than the 1099511627776 a copy may hold"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[32..36].copy_from_slice(&5000u32.to_le_bytes()))),
            "catalog copy header: a key file of 5000 bytes in a sealed copy"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[12] = 0)),
            "catalog copy header: a key file of 300 bytes in a plain copy"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[12] = 3)),
            "catalog copy header: unknown flags 0x3"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[8] = 2)),
            "catalog copy header: header version 2; this sparsebak reads version 1"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[72] = 65)),
            "catalog copy header: the header names no id"
        );
        assert_eq!(
            refused(&forged(&h, |b| b[72] = 0)),
            "catalog copy header: the header names no id"
        );
    }

    #[test]
    fn a_plain_copy_restores_and_a_changed_one_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let cat = t.path().join("catalog.sqlite");
        {
            let c = crate::catalog::Catalog::open(&cat).unwrap();
            c.destination("tape", "vt").unwrap();
        }
        let tmp = t.path().join("snap");
        std::fs::create_dir(&tmp).unwrap();
        let snap = std::fs::read(snapshot(&cat, &tmp).unwrap()).unwrap();
        let h = CopyHeader {
            sealed: false,
            key_len: 0,
            catalog_bytes: snap.len() as u64,
            sha256: Sha256::digest(&snap).into(),
            ..header()
        };
        let mut bytes = h.encode();
        bytes.extend_from_slice(&snap);
        let out = t.path().join("restored.sqlite");
        let mut never = |_: &KeyFile| -> Result<ArchiveKeys, String> { panic!("not sealed") };
        let got = restore_catalog_copy(&mut &bytes[..], &out, &mut never).unwrap();
        assert_eq!(got, (h.clone(), None));
        let c = crate::catalog::Catalog::open(&out).unwrap();
        assert_eq!(c.destination("tape", "vt").unwrap().0, 1);

        // A byte changed in the snapshot, a byte more, a byte less.
        let id = &h.id;
        let mut changed = bytes.clone();
        let last = changed.len() - 1;
        changed[last] ^= 1;
        let e = restore_catalog_copy(&mut &changed[..], &out, &mut never).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("catalog copy {id}: the snapshot's SHA-256 does not match its header")
        );
        let mut longer = bytes.clone();
        longer.push(0);
        let e = restore_catalog_copy(&mut &longer[..], &out, &mut never).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("catalog copy {id}: bytes follow the snapshot")
        );
        let e = restore_catalog_copy(&mut &bytes[..bytes.len() - 1], &out, &mut never).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "catalog copy {id}: the snapshot ends after {} of its {} bytes",
                snap.len() - 1,
                snap.len()
            )
        );
        // Something that is no SQLite database, with a header that says so right.
        let junk = vec![7u8; 4096];
        let h2 = CopyHeader {
            catalog_bytes: junk.len() as u64,
            sha256: Sha256::digest(&junk).into(),
            ..h.clone()
        };
        let mut b2 = h2.encode();
        b2.extend_from_slice(&junk);
        let e = restore_catalog_copy(&mut &b2[..], &out, &mut never).unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "catalog copy {id}: the snapshot is not a SQLite database"
            )),
            "{e}"
        );
        // The catalog restored before is still there, whole.
        crate::catalog::Catalog::open(&out).unwrap();
    }
}
