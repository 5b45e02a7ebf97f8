//! Every parser of the format, as a function of one byte slice, and valid inputs for
//! each made by the real writers: the entry points shared by the property tests
//! (`format/tests/hostile_bytes.rs`) and the `cargo fuzz` targets (`format/fuzz/`).
//!
//! Each `parse_*` function reads its input exactly as the reader of the file or
//! stream does (with the same bounds) and returns the reader's typed error. None may
//! panic, and none may allocate more than [`MAX_ALLOCATION`] at once, whatever the
//! bytes: a fuzz target or property test that finds otherwise has found a bug.

use std::io;
use std::path::{Path, PathBuf};

use chrono::TimeZone;

use crate::chunk::{self, Codec};
use crate::error::{FormatError, IndexFault, IoContext, Result};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::manifest::{Entry, ManifestReader, ManifestWriter};
use crate::selector;
use crate::stream::{self, ChainSummary, StreamError, StreamHeader, StreamWriter, VolumeSink};
use crate::tarsession::{self, TarIndexWriter};

/// The largest single allocation any parser may make for any input: one stored chunk
/// of the largest chunk size, and a little more.
pub const MAX_ALLOCATION: usize = limits::MAX_CHUNKSIZE as usize + (1 << 20);

/// The name parse errors give to the input, as a reader gives the file's path.
pub const INPUT: &str = "fuzz-input";

fn input_path() -> PathBuf {
    PathBuf::from(INPUT)
}

/// An info file's bytes, read as `VolumeArchive::info` reads one.
pub fn parse_info_bytes(data: &[u8]) -> Result<SessionInfo> {
    let path = input_path();
    if data.len() as u64 > limits::MAX_INFO_BYTES {
        return Err(FormatError::TooLarge {
            path,
            what: "info file",
            len: data.len() as u64,
            max: limits::MAX_INFO_BYTES,
        });
    }
    let text = std::str::from_utf8(data).map_err(|_| FormatError::NotText {
        path: path.clone(),
        what: "info file",
    })?;
    SessionInfo::parse(text, &path)
}

/// The session a fuzzed manifest is checked against: 1 GiB in 4 KiB chunks.
pub fn manifest_session() -> SessionInfo {
    SessionInfo {
        volume: "fuzz".into(),
        session: "20260101-000000".into(),
        previous: None,
        time: 0,
        volsize: 1 << 30,
        chunksize: 4096,
        compression: Codec::Zstd,
        changed: 1 << 18,
        chunks: 1 << 18,
        bytes_read: 0,
        bytes_stored: 0,
        manifest_sha256: [0; 32],
        volume_id: None,
    }
}

/// A manifest's bytes, streamed as the view reads one (checked against
/// [`manifest_session`]). Returns the number of entries.
pub fn parse_manifest_bytes(data: &[u8]) -> Result<u64> {
    let info = manifest_session();
    let mut n = 0;
    for e in ManifestReader::new(data, &input_path()).within(&info) {
        e?;
        n += 1;
    }
    Ok(n)
}

/// A tar index: the first 8 bytes (little-endian) are the length of the tar it
/// indexes, the rest is the index file. Returns the number of chunk records, after
/// looking up every record's address as a reader does.
pub fn parse_tar_index_bytes(data: &[u8]) -> std::result::Result<usize, IndexFault> {
    let Some((len, index)) = data.split_first_chunk::<8>() else {
        return Err(IndexFault::TooShort {
            len: data.len() as u64,
        });
    };
    let tar_len = u64::from_le_bytes(*len);
    let n = tarsession::check_index(index, tar_len)?;
    // A checked index can be walked and searched without reading out of bounds.
    for i in 0..n {
        let at = 64 + i * 24;
        let mut a = [0u8; 8];
        a.copy_from_slice(&index[at..at + 8]);
        let addr = u64::from_le_bytes(a);
        let mut o = [0u8; 8];
        o.copy_from_slice(&index[at + 8..at + 16]);
        let mut l = [0u8; 8];
        l.copy_from_slice(&index[at + 16..at + 24]);
        let (off, len) = (u64::from_le_bytes(o), u64::from_le_bytes(l));
        assert!(off + len <= tar_len, "checked record {i} runs past the tar");
        let _ = addr;
    }
    Ok(n)
}

/// A sink that holds nothing and checks that the reader only writes and zeroes inside
/// the volume size it set.
#[derive(Default)]
pub struct BoundsSink {
    size: u64,
    /// Bytes written, zeroed.
    pub written: u64,
    pub zeroed: u64,
}

impl VolumeSink for BoundsSink {
    fn set_size(&mut self, size: u64) -> io::Result<()> {
        assert!(size <= limits::MAX_VOLSIZE, "set_size({size})");
        self.size = size;
        Ok(())
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        assert!(
            off.checked_add(data.len() as u64)
                .is_some_and(|e| e <= self.size),
            "write of {} bytes at {off} past the volume size {}",
            data.len(),
            self.size
        );
        self.written += data.len() as u64;
        Ok(())
    }
    fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        assert!(
            off.checked_add(len).is_some_and(|e| e <= self.size),
            "zero of {len} bytes at {off} past the volume size {}",
            self.size
        );
        self.zeroed += len;
        Ok(())
    }
    fn finish(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One stream or a chain of concatenated streams, read and applied to a
/// [`BoundsSink`] as `receive --from-stream` does.
pub fn parse_stream_bytes(data: &[u8]) -> std::result::Result<ChainSummary, StreamError> {
    let mut sink = BoundsSink::default();
    stream::read_chain(data, Some(&mut sink))
}

/// A stream's header member.
pub fn parse_stream_header_bytes(data: &[u8]) -> std::result::Result<StreamHeader, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not text".to_string())?;
    StreamHeader::parse(text)
}

/// A stored chunk: the first byte picks the codec (bit 0) and the chunk size (4 KiB
/// shifted by bits 1-3, so up to 512 KiB), the rest is the chunk file.
pub fn decode_chunk_bytes(data: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let Some((&sel, stored)) = data.split_first() else {
        return Err("empty".into());
    };
    let codec = if sel & 1 == 0 {
        Codec::Zstd
    } else {
        Codec::None
    };
    let chunksize = limits::MIN_CHUNKSIZE << ((sel >> 1) & 7);
    if stored.len() as u64 > limits::max_stored(codec, chunksize) {
        return Err("larger than a stored chunk can be".into());
    }
    let ctx = crate::codec::ChunkContext {
        volume: "fuzz",
        session: "20260101-000000",
        addr: 0,
        chunksize,
    };
    crate::codec::for_compression(codec)
        .decode(&ctx, stored)
        .map_err(|e| e.reason)
}

/// A session selector as `--session` takes it, resolved against a few sessions.
pub fn parse_selector_bytes(data: &[u8]) -> std::result::Result<Vec<String>, String> {
    let text = std::str::from_utf8(data).map_err(|_| "not text".to_string())?;
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 11, 29, 12, 0, 0)
        .single()
        .ok_or_else(|| "no such time".to_string())?;
    let sessions: Vec<selector::SessionTime> =
        ["20261101-000000", "20261128-235959", "20261129-115959"]
            .iter()
            .filter_map(|id| selector::SessionTime::from_id(id, &chrono::Utc))
            .collect();
    if text.contains(',') {
        let r = selector::parse_range(text, &now).map_err(|e| e.to_string())?;
        selector::resolve_range(&r, &sessions).map_err(|e| e.to_string())
    } else {
        let s = selector::parse(text, &now).map_err(|e| e.to_string())?;
        selector::resolve(&s, &sessions)
            .map(|s| vec![s])
            .map_err(|e| e.to_string())
    }
}

/// Which parser an input is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Info,
    Manifest,
    TarIndex,
    Stream,
    StreamHeader,
    Chunk,
    Selector,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Info,
        Kind::Manifest,
        Kind::TarIndex,
        Kind::Stream,
        Kind::StreamHeader,
        Kind::Chunk,
        Kind::Selector,
    ];

    /// The fuzz target's name.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::Info => "info",
            Kind::Manifest => "manifest",
            Kind::TarIndex => "tar_index",
            Kind::Stream => "stream",
            Kind::StreamHeader => "stream_header",
            Kind::Chunk => "chunk",
            Kind::Selector => "selector",
        }
    }

    /// Run the parser; `Ok` with a short description, or the error as text. Panics
    /// only where a parser broke its promises.
    pub fn parse(&self, data: &[u8]) -> std::result::Result<String, String> {
        fn text<T: std::fmt::Debug, E: std::fmt::Display>(
            r: std::result::Result<T, E>,
        ) -> std::result::Result<String, String> {
            r.map(|v| format!("{v:?}")).map_err(|e| e.to_string())
        }
        match self {
            Kind::Info => text(parse_info_bytes(data)),
            Kind::Manifest => text(parse_manifest_bytes(data)),
            Kind::TarIndex => text(parse_tar_index_bytes(data)),
            Kind::Stream => text(parse_stream_bytes(data).map(|s| s.streams().len())),
            Kind::StreamHeader => text(parse_stream_header_bytes(data)),
            Kind::Chunk => text(decode_chunk_bytes(data).map(|d| d.len())),
            Kind::Selector => text(parse_selector_bytes(data)),
        }
    }
}

/// A small volume's versions (chunks of 4 KiB): data, a zero chunk, a last partial
/// chunk.
pub(crate) fn versions() -> Vec<Vec<u8>> {
    let cs = 4096usize;
    let mut v1 = vec![0u8; 5 * cs + 100];
    for (i, b) in v1.iter_mut().enumerate().take(3 * cs) {
        *b = (i * 7 % 251) as u8;
    }
    v1[5 * cs + 50] = 1;
    let mut v2 = v1.clone();
    v2[..cs].fill(0);
    v2[cs + 5] ^= 0xff;
    v2.resize(4 * cs + 10, 0);
    vec![v1, v2]
}

/// What a writer made for one session: the info, the manifest, the data chunks.
struct Made {
    info: SessionInfo,
    manifest: Vec<u8>,
    chunks: Vec<(u64, Vec<u8>)>,
}

/// Sessions of [`versions`] made as `send` makes them (manifest through the real
/// writer, chunks zstd-compressed, infos with their checksums).
fn sessions(codec: Codec) -> Result<Vec<Made>> {
    let cs = 4096u64;
    let mut out: Vec<Made> = Vec::new();
    let mut prev: Option<Vec<u8>> = None;
    for (k, v) in versions().iter().enumerate() {
        let mut mw = ManifestWriter::new(Vec::new());
        let mut chunks = Vec::new();
        let mut nonzero = 0;
        let n = (v.len() as u64).div_ceil(cs);
        let mut bad = |e: io::Error| FormatError::Other(format!("making seeds: {e}"));
        for i in 0..n {
            let addr = i * cs;
            let mut data = v[addr as usize..v.len().min((addr + cs) as usize)].to_vec();
            data.resize(cs as usize, 0);
            let old = prev.as_ref().map(|p| {
                let mut o =
                    p[p.len().min(addr as usize)..p.len().min((addr + cs) as usize)].to_vec();
                o.resize(cs as usize, 0);
                o
            });
            let zero = chunk::is_zero(&data);
            if !zero {
                nonzero += 1;
            }
            let changed = match &old {
                None => !zero,
                Some(o) => *o != data,
            };
            if !changed {
                continue;
            }
            if zero {
                mw.push(&Entry { addr, hash: None }).map_err(&mut bad)?;
            } else {
                mw.push(&Entry {
                    addr,
                    hash: Some(chunk::hash(&data)),
                })
                .map_err(&mut bad)?;
                let stored = match codec {
                    Codec::None => data,
                    Codec::Zstd => zstd::bulk::compress(&data, 3).map_err(&mut bad)?,
                };
                chunks.push((addr, stored));
            }
        }
        let changed = mw.count();
        let (manifest, hash) = mw.finish().map_err(&mut bad)?;
        let info = SessionInfo {
            volume: "fuzz".into(),
            session: format!("2026010{}-000000", k + 1),
            previous: out.last().map(|m| m.info.session.clone()),
            time: 1_767_225_600 + 86400 * k as i64,
            volsize: v.len() as u64,
            chunksize: cs,
            compression: codec,
            changed,
            chunks: nonzero,
            bytes_read: v.len() as u64,
            bytes_stored: chunks.iter().map(|c| c.1.len() as u64).sum(),
            manifest_sha256: hash,
            volume_id: None,
        };
        out.push(Made {
            info,
            manifest,
            chunks,
        });
        prev = Some(v.clone());
    }
    Ok(out)
}

/// A chain of streams of `made`, as `send --stream` writes them.
fn streams(made: &[Made], block: usize) -> Result<Vec<u8>> {
    let mut all = Vec::new();
    let bad = |e: StreamError| FormatError::Other(format!("making seeds: {e}"));
    for (k, m) in made.iter().enumerate() {
        let base = k.checked_sub(1).map(|p| made[p].info.manifest_sha256);
        let header = StreamHeader::for_session(&m.info, base);
        let mut w = StreamWriter::with_block_size(Vec::new(), header, block).map_err(bad)?;
        for (addr, stored) in &m.chunks {
            w.put_chunk(*addr, stored).map_err(bad)?;
        }
        let (bytes, _) = w.finish(&m.manifest, &m.info).map_err(bad)?;
        all.extend_from_slice(&bytes);
    }
    Ok(all)
}

/// A tar session of `m` as `send --tarfile` writes it, with its index written by the
/// real index writer into `dir`. Returns the tar's length and the index.
fn tar_session(m: &Made, dir: &Path) -> Result<(u64, Vec<u8>)> {
    let sdir = layout::session_dir_name(&m.info.session);
    let ix_path = dir.join(format!("{sdir}{}", layout::TAR_INDEX_SUFFIX));
    let mut ix = TarIndexWriter::create(&ix_path)?;
    let mut tar = Vec::new();
    let mut append = |name: &str, data: &[u8]| -> Result<u64> {
        let h = tarsession::ustar_header(name, data.len() as u64, 0).at(&ix_path)?;
        tar.extend_from_slice(h.as_bytes());
        let off = tar.len() as u64;
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
        Ok(off)
    };
    for (addr, stored) in &m.chunks {
        let name = format!("{sdir}/{}", layout::chunk_rel_path(*addr).display());
        let off = append(&name, stored)?;
        ix.push(*addr, off, stored.len() as u64)?;
    }
    let moff = append(&format!("{sdir}/{}", layout::MANIFEST_FILE), &m.manifest)?;
    let text = m.info.to_text();
    let ioff = append(&format!("{sdir}/{}", layout::INFO_FILE), text.as_bytes())?;
    tar.resize(tar.len() + 1024, 0);
    ix.finish((moff, m.manifest.len() as u64), (ioff, text.len() as u64))?;
    let index = std::fs::read(&ix_path).at(&ix_path)?;
    std::fs::remove_file(&ix_path).at(&ix_path)?;
    Ok((tar.len() as u64, index))
}

/// Valid inputs for each parser, made by the real writers (`dir` is scratch space for
/// the tar index writer, which writes a file).
pub fn seeds(dir: &Path) -> Result<Vec<(Kind, Vec<u8>)>> {
    let mut out = Vec::new();
    for codec in [Codec::Zstd, Codec::None] {
        let made = sessions(codec)?;
        for (k, m) in made.iter().enumerate() {
            out.push((Kind::Info, m.info.to_text().into_bytes()));
            out.push((Kind::Manifest, m.manifest.clone()));
            let (tar_len, index) = tar_session(m, dir)?;
            let mut t = tar_len.to_le_bytes().to_vec();
            t.extend_from_slice(&index);
            out.push((Kind::TarIndex, t));
            let base = k.checked_sub(1).map(|p| made[p].info.manifest_sha256);
            let header = StreamHeader::for_session(&m.info, base);
            out.push((Kind::StreamHeader, header.to_text().into_bytes()));
            for (_, stored) in m.chunks.iter().take(2) {
                let sel = match codec {
                    Codec::Zstd => 0u8,
                    Codec::None => 1u8,
                };
                let mut c = vec![sel];
                c.extend_from_slice(stored);
                out.push((Kind::Chunk, c));
            }
        }
        out.push((Kind::Stream, streams(&made[..1], 512)?));
        out.push((Kind::Stream, streams(&made, 512)?));
    }
    for s in [
        "latest",
        "oldest",
        "20261128-235959",
        "2026-11-28",
        "2026-11-29 11:00",
        "yesterday",
        "3 days ago",
        "an hour ago",
        "oldest,latest",
        "2026-11-01,yesterday",
    ] {
        out.push((Kind::Selector, s.as_bytes().to_vec()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_parses() {
        let dir = tempfile::tempdir().unwrap();
        let seeds = seeds(dir.path()).unwrap();
        for kind in Kind::ALL {
            assert!(
                seeds.iter().any(|(k, _)| *k == kind),
                "no seed for {kind:?}"
            );
        }
        for (kind, data) in &seeds {
            assert!(kind.parse(data).is_ok(), "{kind:?}: {:?}", kind.parse(data));
        }
        // The streams restore their sessions: two chunks of data written, and so on.
        let two = seeds
            .iter()
            .filter(|(k, _)| *k == Kind::Stream)
            .nth(1)
            .unwrap();
        let sum = parse_stream_bytes(&two.1).unwrap();
        assert_eq!(sum.streams().len(), 2);
        assert_eq!(sum.last().info.session, "20260102-000000");
        assert_eq!(parse_manifest_bytes(&seeds[1].1).unwrap(), 4);
        // Seeds made under the fuzzing names parse with the readers' own names too.
        assert!(matches!(
            parse_info_bytes(b"garbage"),
            Err(FormatError::Info { path, .. }) if path == Path::new(INPUT)
        ));
    }
}
