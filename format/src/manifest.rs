//! Session manifests.
//!
//! One line per chunk that the session records, sorted by strictly increasing address:
//!
//! ```text
//! <sha256 of the uncompressed chunk, 64 lower-case hex digits> x<address, 16 hex digits>
//! 0 x<address>            (the chunk became all zero: no chunk file is stored)
//! ```
//!
//! The hash of a data chunk covers exactly `chunksize` bytes: a volume's last chunk is
//! padded with zeros. Readers stream the file line by line, so memory does not grow with
//! the volume.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{FormatError, IoContext, Result};
use crate::info::SessionInfo;
use crate::limits::MAX_MANIFEST_LINE;
use crate::Hash;

/// One manifest line: the chunk at `addr` holds data with `hash`, or is all zero (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub addr: u64,
    pub hash: Option<Hash>,
}

impl Entry {
    /// The line as written in the manifest, with its newline.
    pub fn to_line(&self) -> String {
        match &self.hash {
            Some(h) => format!("{} x{:016x}\n", hex::encode(h), self.addr),
            None => format!("0 x{:016x}\n", self.addr),
        }
    }

    /// Parse one line (without its newline).
    pub fn parse(line: &str) -> std::result::Result<Entry, String> {
        let (h, a) = line
            .split_once(' ')
            .ok_or_else(|| "expected '<hash> x<address>'".to_string())?;
        let addr = a
            .strip_prefix('x')
            .filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| format!("bad address {a:?}"))?;
        let hash = if h == "0" {
            None
        } else {
            if h.len() != 64 || h.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(format!("bad hash {h:?}"));
            }
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).map_err(|e| format!("bad hash {h:?}: {e}"))?;
            Some(out)
        };
        Ok(Entry { addr, hash })
    }
}

/// What a session's info says its manifest can hold.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    chunksize: u64,
    volsize: u64,
    lines: u64,
}

/// Streams the entries of a manifest, checking syntax and order. A line longer than
/// any valid one is refused before it is read further, so memory stays one line.
pub struct ManifestReader<R> {
    input: R,
    path: PathBuf,
    line_no: u64,
    last: Option<u64>,
    buf: Vec<u8>,
    bounds: Option<Bounds>,
}

impl ManifestReader<BufReader<File>> {
    pub fn open(path: &Path) -> Result<Self> {
        let f = File::open(path).at(path)?;
        Ok(Self::new(BufReader::with_capacity(64 * 1024, f), path))
    }
}

impl<R: BufRead> ManifestReader<R> {
    pub fn new(input: R, path: &Path) -> Self {
        ManifestReader {
            input,
            path: path.to_path_buf(),
            line_no: 0,
            last: None,
            buf: Vec::with_capacity(MAX_MANIFEST_LINE),
            bounds: None,
        }
    }

    /// Also check each entry against the session `info` describes: its address a
    /// multiple of the chunk size inside the volume, and no more lines than
    /// `changed`.
    pub fn within(mut self, info: &SessionInfo) -> Self {
        self.bounds = Some(Bounds {
            chunksize: info.chunksize.max(1),
            volsize: info.volsize,
            lines: info.changed,
        });
        self
    }

    fn bad(&self, reason: String) -> FormatError {
        FormatError::ManifestLine {
            path: self.path.clone(),
            line: self.line_no,
            reason,
        }
    }

    fn out_of_bounds(&self, field: &str, value: u64, why: String) -> FormatError {
        FormatError::Bounds {
            path: self.path.clone(),
            field: format!("line {}: {field}", self.line_no),
            value,
            why,
        }
    }

    fn check(&self, entry: &Entry) -> Result<()> {
        if let Some(last) = self.last {
            if entry.addr <= last {
                return Err(self.bad(format!(
                    "address x{:016x} not after x{last:016x}",
                    entry.addr
                )));
            }
        }
        let Some(b) = self.bounds else {
            return Ok(());
        };
        if self.line_no > b.lines {
            return Err(self.out_of_bounds(
                "line count",
                self.line_no,
                format!("the session's info says changed={}", b.lines),
            ));
        }
        if entry.addr % b.chunksize != 0 {
            return Err(self.out_of_bounds(
                "address",
                entry.addr,
                format!("not a multiple of the chunk size {}", b.chunksize),
            ));
        }
        if entry.addr >= b.volsize {
            return Err(self.out_of_bounds(
                "address",
                entry.addr,
                format!("past the volume size {}", b.volsize),
            ));
        }
        Ok(())
    }

    fn next_entry(&mut self) -> Option<Result<Entry>> {
        self.buf.clear();
        let limit = MAX_MANIFEST_LINE as u64;
        match (&mut self.input)
            .take(limit)
            .read_until(b'\n', &mut self.buf)
        {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => return Some(Err(e).at(&self.path)),
        }
        self.line_no += 1;
        let Some(line) = self.buf.strip_suffix(b"\n") else {
            if self.buf.len() as u64 >= limit {
                return Some(Err(
                    self.bad(format!("longer than {MAX_MANIFEST_LINE} bytes"))
                ));
            }
            return Some(Err(self.bad("last line has no newline (truncated?)".into())));
        };
        let Ok(line) = std::str::from_utf8(line) else {
            return Some(Err(self.bad("not UTF-8 text".into())));
        };
        let entry = match Entry::parse(line) {
            Ok(e) => e,
            Err(reason) => return Some(Err(self.bad(reason))),
        };
        if let Err(e) = self.check(&entry) {
            return Some(Err(e));
        }
        self.last = Some(entry.addr);
        Some(Ok(entry))
    }
}

impl<R: BufRead> Iterator for ManifestReader<R> {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        self.next_entry()
    }
}

/// Writes manifest lines and hashes what it writes, so the session info can record the
/// manifest's SHA-256 without reading it back.
pub struct ManifestWriter<W: Write> {
    out: W,
    hasher: Sha256,
    last: Option<u64>,
    count: u64,
}

impl<W: Write> ManifestWriter<W> {
    pub fn new(out: W) -> Self {
        ManifestWriter {
            out,
            hasher: Sha256::new(),
            last: None,
            count: 0,
        }
    }

    pub fn push(&mut self, entry: &Entry) -> std::io::Result<()> {
        if let Some(last) = self.last {
            if entry.addr <= last {
                return Err(std::io::Error::other(format!(
                    "manifest entries out of order: x{:016x} after x{last:016x}",
                    entry.addr
                )));
            }
        }
        self.last = Some(entry.addr);
        let line = entry.to_line();
        self.hasher.update(line.as_bytes());
        self.out.write_all(line.as_bytes())?;
        self.count += 1;
        Ok(())
    }

    /// Lines written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Flush and return the writer with the SHA-256 of all bytes written.
    pub fn finish(mut self) -> std::io::Result<(W, Hash)> {
        self.out.flush()?;
        Ok((self.out, self.hasher.finalize().into()))
    }
}

/// SHA-256 of a whole file, streamed.
pub fn file_sha256(path: &Path) -> Result<Hash> {
    let mut f = File::open(path).at(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).at(path)?;
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let e = Entry {
            addr: 0x10000,
            hash: Some([0xab; 32]),
        };
        let l = e.to_line();
        assert_eq!(l.len(), 64 + 1 + 17 + 1);
        assert_eq!(Entry::parse(l.trim_end()).unwrap(), e);
        let z = Entry {
            addr: 0x20000,
            hash: None,
        };
        assert_eq!(z.to_line(), "0 x0000000000020000\n");
        assert_eq!(Entry::parse("0 x0000000000020000").unwrap(), z);
    }

    #[test]
    fn reader_rejects_disorder_and_garbage() {
        let text = "0 x0000000000020000\n0 x0000000000010000\n";
        let r = ManifestReader::new(text.as_bytes(), Path::new("m"));
        let v: Vec<_> = r.collect();
        assert!(v[0].is_ok());
        assert!(v[1].is_err());
        for bad in [
            "zz x0000000000010000\n",
            "0 x10000\n",
            "0 x0000000000010000",
        ] {
            let mut r = ManifestReader::new(bad.as_bytes(), Path::new("m"));
            assert!(r.next().unwrap().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn writer_hash_matches_bytes() {
        let mut w = ManifestWriter::new(Vec::new());
        w.push(&Entry {
            addr: 0,
            hash: None,
        })
        .unwrap();
        w.push(&Entry {
            addr: 65536,
            hash: Some([1; 32]),
        })
        .unwrap();
        assert!(w
            .push(&Entry {
                addr: 65536,
                hash: None
            })
            .is_err());
        let (bytes, h) = w.finish().unwrap();
        let expect: Hash = Sha256::digest(&bytes).into();
        assert_eq!(h, expect);
    }

    fn info(volsize: u64, changed: u64) -> SessionInfo {
        SessionInfo {
            volume: "v".into(),
            session: "20260101-000000".into(),
            previous: None,
            time: 0,
            volsize,
            chunksize: 65536,
            compression: crate::chunk::Codec::Zstd,
            changed,
            chunks: changed,
            bytes_read: 0,
            bytes_stored: 0,
            manifest_sha256: [0; 32],
            volume_id: None,
        }
    }

    fn first_error(text: &[u8], within: Option<&SessionInfo>) -> FormatError {
        let mut r = ManifestReader::new(text, Path::new("m"));
        if let Some(i) = within {
            r = r.within(i);
        }
        r.find_map(|e| e.err()).expect("an error")
    }

    #[test]
    fn a_line_longer_than_any_valid_one_is_refused_unread() {
        // 64 MiB without a newline: refused after 128 bytes, and the reader's buffer
        // never grows past one line.
        let big = vec![b'a'; 64 << 20];
        let mut r = ManifestReader::new(&big[..], Path::new("m"));
        match r.next() {
            Some(Err(FormatError::ManifestLine { path, line, reason })) => {
                assert_eq!(path, Path::new("m"));
                assert_eq!(line, 1);
                assert_eq!(reason, "longer than 128 bytes");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            r.buf.capacity() <= 2 * MAX_MANIFEST_LINE,
            "{}",
            r.buf.capacity()
        );
        assert!(matches!(
            first_error(b"0 x0000000000000000\n\xff\xfe x0000000000010000\n", None),
            FormatError::ManifestLine { line: 2, ref reason, .. } if reason == "not UTF-8 text"
        ));
    }

    #[test]
    fn entries_are_checked_against_the_session() {
        let i = info(4 * 65536 + 1, 3);
        let ok = "0 x0000000000000000\n0 x0000000000040000\n";
        let r = ManifestReader::new(ok.as_bytes(), Path::new("m")).within(&i);
        assert_eq!(r.map(|e| e.unwrap().addr).collect::<Vec<_>>(), [0, 0x40000]);
        let bounds = |e: FormatError| match e {
            FormatError::Bounds {
                field, value, why, ..
            } => (field, value, why),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bounds(first_error(b"0 x0000000000000100\n", Some(&i))),
            (
                "line 1: address".to_string(),
                0x100,
                "not a multiple of the chunk size 65536".to_string()
            )
        );
        assert_eq!(
            bounds(first_error(b"0 x0000000000050000\n", Some(&i))),
            (
                "line 1: address".to_string(),
                0x50000,
                "past the volume size 262145".to_string()
            )
        );
        assert_eq!(
            bounds(first_error(b"0 xffffffffffff0000\n", Some(&i))).1,
            0xffff_ffff_ffff_0000
        );
        let four =
            "0 x0000000000000000\n0 x0000000000010000\n0 x0000000000020000\n0 x0000000000030000\n";
        assert_eq!(
            bounds(first_error(four.as_bytes(), Some(&i))),
            (
                "line 4: line count".to_string(),
                4,
                "the session's info says changed=3".to_string()
            )
        );
    }
}
