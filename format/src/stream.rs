//! Self-contained session streams (`send --stream`): one session as a standalone tar,
//! written in whole fixed-size records, checkable and restorable with no archive,
//! no metadata and no configuration. `docs/FORMAT.md` ("Self-contained streams") is
//! the specification this module implements.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::chunk::{self, Codec};
use crate::info::SessionInfo;
use crate::layout;
use crate::manifest::Entry;
use crate::tarsession::ustar_header;
use crate::Hash;

/// First line of a stream header.
pub const STREAM_FORMAT: &str = "sparsebak-stream 1";
const HEADER_MEMBER: &str = "sparsebak-stream/header";
const TRAILER_MEMBER: &str = "sparsebak-stream/trailer";

/// Errors of writing or reading streams; `stream` is the 1-based position in the input.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("stream {stream}: {reason}")]
    Bad { stream: usize, reason: String },
    #[error("stream {stream} (session {session}) is truncated: {reason}")]
    Truncated {
        stream: usize,
        session: String,
        reason: String,
    },
    #[error("stream {stream} (session {session}): chunk x{addr:016x}: {reason}")]
    Chunk {
        stream: usize,
        session: String,
        addr: u64,
        reason: String,
    },
    #[error("stream {stream} (session {session}) does not follow the previous stream: {reason}")]
    Chain {
        stream: usize,
        session: String,
        reason: String,
    },
    #[error("the input holds no sparsebak stream")]
    Empty,
}

type Result<T> = std::result::Result<T, StreamError>;

/// What a stream's header member says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub volume: String,
    pub session: String,
    pub volsize: u64,
    pub chunksize: u64,
    pub compression: Codec,
    pub time: i64,
    /// The session this stream builds on; `None` for a full stream.
    pub base: Option<String>,
    pub base_manifest_sha256: Option<Hash>,
}

impl StreamHeader {
    pub fn to_text(&self) -> String {
        format!(
            "format={STREAM_FORMAT}\nvolume={}\nsession={}\nvolsize={}\nchunksize={}\ncompression={}\ntime={}\nbase={}\nbase_manifest_sha256={}\n",
            self.volume,
            self.session,
            self.volsize,
            self.chunksize,
            self.compression.name(),
            self.time,
            self.base.as_deref().unwrap_or(""),
            self.base_manifest_sha256.map(hex::encode).unwrap_or_default()
        )
    }

    pub fn parse(text: &str) -> std::result::Result<StreamHeader, String> {
        let mut kv = std::collections::BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("header line {line:?} is not key=value"))?;
            kv.insert(k, v);
        }
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| format!("header lacks {k}"))
        };
        let num = |k: &str| -> std::result::Result<u64, String> {
            get(k)?.parse().map_err(|e| format!("header {k}: {e}"))
        };
        if get("format")? != STREAM_FORMAT {
            return Err(format!("unsupported stream format {:?}", get("format")?));
        }
        let chunksize = num("chunksize")?;
        if !chunksize.is_power_of_two() || chunksize < 4096 {
            return Err(format!("bad chunk size {chunksize}"));
        }
        let base = Some(get("base")?)
            .filter(|b| !b.is_empty())
            .map(str::to_string);
        let base_manifest_sha256 = match get("base_manifest_sha256")? {
            "" => None,
            h => {
                let mut out = [0u8; 32];
                hex::decode_to_slice(h, &mut out)
                    .map_err(|e| format!("base_manifest_sha256: {e}"))?;
                Some(out)
            }
        };
        if base.is_some() != base_manifest_sha256.is_some() {
            return Err("base and base_manifest_sha256 must both be set or both empty".into());
        }
        Ok(StreamHeader {
            volume: get("volume")?.to_string(),
            session: get("session")?.to_string(),
            volsize: num("volsize")?,
            chunksize,
            compression: Codec::from_name(get("compression")?)
                .ok_or_else(|| "unknown compression".to_string())?,
            time: get("time")?
                .parse()
                .map_err(|e| format!("header time: {e}"))?,
            base,
            base_manifest_sha256,
        })
    }
}

/// Writes everything in whole records of `block` bytes; `finish` zero-pads the last.
pub struct RecordWriter<W: Write> {
    out: W,
    block: usize,
    buf: Vec<u8>,
    written: u64,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(out: W, block: usize) -> std::io::Result<RecordWriter<W>> {
        if block == 0 || block % 512 != 0 {
            return Err(std::io::Error::other(format!(
                "block size {block} is not a positive multiple of 512"
            )));
        }
        Ok(RecordWriter {
            out,
            block,
            buf: Vec::with_capacity(block),
            written: 0,
        })
    }

    /// Pad to a whole record, flush, and return the output and the bytes written.
    pub fn finish(mut self) -> std::io::Result<(W, u64)> {
        if !self.buf.is_empty() {
            self.buf.resize(self.block, 0);
            self.out.write_all(&self.buf)?;
            self.written += self.block as u64;
            self.buf.clear();
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let n = (self.block - self.buf.len()).min(rest.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == self.block {
                self.out.write_all(&self.buf)?;
                self.written += self.block as u64;
                self.buf.clear();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        // Only whole records ever reach the output.
        Ok(())
    }
}

/// The running hash a stream's trailer carries.
#[derive(Clone, Default)]
struct MemberHash(Sha256);

impl MemberHash {
    fn add_header(&mut self, name: &str, size: u64) {
        self.0.update(name.as_bytes());
        self.0.update([0u8]);
        self.0.update(size.to_string().as_bytes());
        self.0.update(b"\n");
    }
    fn add(&mut self, name: &str, data: &[u8]) {
        self.add_header(name, data.len() as u64);
        self.0.update(data);
    }
    fn hex(&self) -> String {
        hex::encode(self.0.clone().finalize())
    }
}

/// Writes one stream.
pub struct StreamWriter<W: Write> {
    tar: tar::Builder<RecordWriter<W>>,
    hash: MemberHash,
    session_dir: String,
    mtime: u64,
    last: Option<u64>,
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream on `out`, in records of `block` bytes, with its header member.
    pub fn new(out: W, block: usize, header: &StreamHeader) -> std::io::Result<StreamWriter<W>> {
        let mut w = StreamWriter {
            tar: tar::Builder::new(RecordWriter::new(out, block)?),
            hash: MemberHash::default(),
            session_dir: layout::session_dir_name(&header.session),
            mtime: header.time.max(0) as u64,
            last: None,
        };
        w.member(HEADER_MEMBER, header.to_text().as_bytes())?;
        Ok(w)
    }

    fn member(&mut self, name: &str, data: &[u8]) -> std::io::Result<()> {
        let h = ustar_header(name, data.len() as u64, self.mtime)?;
        self.tar.append(&h, data)?;
        self.hash.add(name, data);
        Ok(())
    }

    /// Add the encoded chunk at `addr` (addresses strictly increasing).
    pub fn put_chunk(&mut self, addr: u64, payload: &[u8]) -> std::io::Result<()> {
        if self.last.is_some_and(|l| addr <= l) {
            return Err(std::io::Error::other("stream chunks out of order"));
        }
        self.last = Some(addr);
        let name = format!(
            "{}/{}",
            self.session_dir,
            layout::chunk_rel_path(addr).display()
        );
        self.member(&name, payload)
    }

    /// Add the manifest (`len` bytes from `manifest`), the info and the trailer, end
    /// the tar, pad the last record. Returns the output and the stream's length.
    pub fn finish(
        mut self,
        manifest: &mut dyn Read,
        len: u64,
        info: &SessionInfo,
    ) -> std::io::Result<(W, u64)> {
        let m = format!("{}/{}", self.session_dir, layout::MANIFEST_FILE);
        let h = ustar_header(&m, len, self.mtime)?;
        self.hash.add_header(&m, len);
        let mut hashing = HashingReader {
            inner: manifest.take(len),
            hash: &mut self.hash.0,
        };
        self.tar.append(&h, &mut hashing)?;
        let i = format!("{}/{}", self.session_dir, layout::INFO_FILE);
        self.member(&i, info.to_text().as_bytes())?;
        let trailer = format!("sha256={}\n", self.hash.hex());
        let h = ustar_header(TRAILER_MEMBER, trailer.len() as u64, self.mtime)?;
        self.tar.append(&h, trailer.as_bytes())?;
        let rw = self.tar.into_inner()?;
        rw.finish()
    }
}

struct HashingReader<'a, R: Read> {
    inner: R,
    hash: &'a mut Sha256,
}

impl<R: Read> Read for HashingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// Where a chain of streams is rebuilt.
pub trait StreamSink {
    /// Cut or extend the volume to `size` bytes; bytes past a cut read as zeros later.
    fn set_size(&mut self, size: u64) -> std::io::Result<()>;
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()>;
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()>;
    fn finish(&mut self) -> std::io::Result<()>;
}

/// A sink that keeps nothing: reading a chain only to check it.
pub struct NullSink;

impl StreamSink for NullSink {
    fn set_size(&mut self, _size: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn write_at(&mut self, _off: u64, _data: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn zero(&mut self, _off: u64, _len: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A regular file as a stream sink (sparse: zero ranges become holes).
pub struct FileSink {
    pub file: std::fs::File,
}

impl StreamSink for FileSink {
    fn set_size(&mut self, size: u64) -> std::io::Result<()> {
        self.file.set_len(size)
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, off)
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: fallocate on a valid descriptor; punching keeps the size.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        // No hole punching here: write zeros.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut pos = off;
        while pos < off + len {
            let n = (off + len - pos).min(zeros.len() as u64) as usize;
            self.write_at(pos, &zeros[..n])?;
            pos += n as u64;
        }
        Ok(())
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// What reading a chain found.
#[derive(Debug, Default)]
pub struct ChainSummary {
    /// The info of each stream, in order.
    pub sessions: Vec<SessionInfo>,
    pub chunks: u64,
    pub bytes: u64,
}

struct Current {
    index: usize,
    header: StreamHeader,
    hash: MemberHash,
    /// SHA-256 over (address, hash) of the chunk members as they came.
    chunk_digest: Sha256,
    manifest: Option<(Hash, Sha256)>,
    info: Option<SessionInfo>,
}

/// Read one or more concatenated streams from `input`, check everything
/// `docs/FORMAT.md` lists, and rebuild the volume into `sink` ([`NullSink`] to only
/// check).
/// Memory stays bounded: chunks and manifest lines are streamed.
pub fn read_chain<R: Read>(
    input: R,
    sink: &mut dyn StreamSink,
    expect_volume: Option<&str>,
) -> Result<ChainSummary> {
    let mut ar = tar::Archive::new(input);
    ar.set_ignore_zeros(true);
    let mut sum = ChainSummary::default();
    let mut cur: Option<Current> = None;
    let mut count = 0usize;
    let entries = ar.entries()?;
    for entry in entries {
        let mut entry = match entry {
            Ok(e) => e,
            Err(e) => {
                return Err(match &cur {
                    Some(c) => StreamError::Truncated {
                        stream: c.index,
                        session: c.header.session.clone(),
                        reason: e.to_string(),
                    },
                    None => StreamError::Bad {
                        stream: count + 1,
                        reason: format!("not a tar stream: {e}"),
                    },
                })
            }
        };
        let name = entry
            .path()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let size = entry.header().size().unwrap_or(0);
        let trunc = |c: &Current, e: std::io::Error| StreamError::Truncated {
            stream: c.index,
            session: c.header.session.clone(),
            reason: e.to_string(),
        };
        if name == HEADER_MEMBER {
            if let Some(c) = &cur {
                return Err(StreamError::Truncated {
                    stream: c.index,
                    session: c.header.session.clone(),
                    reason: "the next stream starts before this one's trailer".into(),
                });
            }
            count += 1;
            let text = read_small(&mut entry, 64 << 10).map_err(|e| StreamError::Bad {
                stream: count,
                reason: format!("header: {e}"),
            })?;
            let header =
                StreamHeader::parse(&String::from_utf8_lossy(&text)).map_err(|reason| {
                    StreamError::Bad {
                        stream: count,
                        reason,
                    }
                })?;
            check_link(count, &header, sum.sessions.last())?;
            if let Some(v) = expect_volume {
                if header.volume != v {
                    return Err(StreamError::Bad {
                        stream: count,
                        reason: format!("it holds volume {}, not {v}", header.volume),
                    });
                }
            }
            sink.set_size(header.volsize)?;
            let mut hash = MemberHash::default();
            hash.add(HEADER_MEMBER, &text);
            cur = Some(Current {
                index: count,
                header,
                hash,
                chunk_digest: Sha256::new(),
                manifest: None,
                info: None,
            });
            continue;
        }
        let Some(c) = cur.as_mut() else {
            return Err(StreamError::Bad {
                stream: count + 1,
                reason: format!(
                    "member {name:?} before any sparsebak stream header (not a sparsebak stream?)"
                ),
            });
        };
        let sdir = layout::session_dir_name(&c.header.session);
        if name == TRAILER_MEMBER {
            let text = read_small(&mut entry, 4096).map_err(|e| trunc(c, e))?;
            let want = format!("sha256={}\n", c.hash.hex());
            if text != want.as_bytes() {
                return Err(StreamError::Bad {
                    stream: c.index,
                    reason: format!(
                        "session {}: trailer hash does not match the stream's content (altered)",
                        c.header.session
                    ),
                });
            }
            let info = c.info.take().ok_or_else(|| StreamError::Truncated {
                stream: c.index,
                session: c.header.session.clone(),
                reason: "no info member".into(),
            })?;
            sum.sessions.push(info);
            cur = None;
            continue;
        }
        if let Some(rest) = name.strip_prefix(&format!("{sdir}/")) {
            if rest == layout::MANIFEST_FILE {
                c.hash.add_header(&name, size);
                let (mhash, data_digest) =
                    read_manifest(&mut entry, c, &mut *sink).map_err(|e| match e {
                        StreamError::Io(io) => trunc(c, io),
                        other => other,
                    })?;
                let chunk_digest = std::mem::take(&mut c.chunk_digest).finalize();
                if data_digest.clone().finalize() != chunk_digest {
                    return Err(StreamError::Bad {
                        stream: c.index,
                        reason: format!(
                            "session {}: the chunks do not match the manifest (missing, extra or altered)",
                            c.header.session
                        ),
                    });
                }
                c.manifest = Some((mhash, data_digest));
                continue;
            }
            if rest == layout::INFO_FILE {
                let text = read_small(&mut entry, 64 << 10).map_err(|e| trunc(c, e))?;
                c.hash.add(&name, &text);
                let info = SessionInfo::parse(&String::from_utf8_lossy(&text), Path::new(&name))
                    .map_err(|e| StreamError::Bad {
                        stream: c.index,
                        reason: e.to_string(),
                    })?;
                let (mhash, _) = c.manifest.as_ref().ok_or_else(|| StreamError::Bad {
                    stream: c.index,
                    reason: "info member before the manifest".into(),
                })?;
                if info.manifest_sha256 != *mhash {
                    return Err(StreamError::Bad {
                        stream: c.index,
                        reason: format!(
                            "session {}: manifest does not match its info (altered)",
                            c.header.session
                        ),
                    });
                }
                if info.session != c.header.session
                    || info.volume != c.header.volume
                    || info.volsize != c.header.volsize
                    || info.chunksize != c.header.chunksize
                    || info.previous != c.header.base
                {
                    return Err(StreamError::Bad {
                        stream: c.index,
                        reason: "info and header disagree".into(),
                    });
                }
                c.info = Some(info);
                continue;
            }
            let addr = rest
                .rsplit('/')
                .next()
                .and_then(layout::parse_chunk_name)
                .ok_or_else(|| StreamError::Bad {
                    stream: c.index,
                    reason: format!("unexpected member {name:?}"),
                })?;
            if c.manifest.is_some() {
                return Err(StreamError::Bad {
                    stream: c.index,
                    reason: format!("chunk member {name:?} after the manifest"),
                });
            }
            let cs = c.header.chunksize;
            if size > 2 * cs + 4096 {
                return Err(StreamError::Chunk {
                    stream: c.index,
                    session: c.header.session.clone(),
                    addr,
                    reason: format!("member of {size} bytes is too large"),
                });
            }
            let stored = read_small(&mut entry, 2 * cs + 4096).map_err(|e| trunc(c, e))?;
            c.hash.add(&name, &stored);
            let data = c
                .header
                .compression
                .decode(&stored, cs as usize)
                .map_err(|reason| StreamError::Chunk {
                    stream: c.index,
                    session: c.header.session.clone(),
                    addr,
                    reason,
                })?;
            let h = chunk::hash(&data);
            c.chunk_digest.update(addr.to_le_bytes());
            c.chunk_digest.update(h);
            if addr >= c.header.volsize || addr % cs != 0 {
                return Err(StreamError::Chunk {
                    stream: c.index,
                    session: c.header.session.clone(),
                    addr,
                    reason: "address outside the volume".into(),
                });
            }
            let len = (c.header.volsize - addr).min(cs) as usize;
            sink.write_at(addr, &data[..len])?;
            sum.chunks += 1;
            sum.bytes += data.len() as u64;
            continue;
        }
        return Err(StreamError::Bad {
            stream: c.index,
            reason: format!("unexpected member {name:?}"),
        });
    }
    if let Some(c) = cur {
        return Err(StreamError::Truncated {
            stream: c.index,
            session: c.header.session,
            reason: "it ends before its trailer".into(),
        });
    }
    if sum.sessions.is_empty() {
        return Err(StreamError::Empty);
    }
    sink.finish()?;
    Ok(sum)
}

/// Stream the manifest member: its SHA-256, the digest of its data lines (to compare
/// with the chunks that came), and its zero lines applied to the sink.
fn read_manifest(
    entry: &mut dyn Read,
    c: &mut Current,
    sink: &mut dyn StreamSink,
) -> Result<(Hash, Sha256)> {
    let mut r = BufReader::with_capacity(64 << 10, entry);
    let mut sha = Sha256::new();
    let mut data = Sha256::new();
    let mut line = String::new();
    let mut last: Option<u64> = None;
    let cs = c.header.chunksize;
    loop {
        line.clear();
        let n = r.read_line(&mut line)?;
        if n == 0 {
            break;
        }
        sha.update(line.as_bytes());
        c.hash.0.update(line.as_bytes());
        let bad = |reason: String| StreamError::Bad {
            stream: c.index,
            reason: format!("manifest: {reason}"),
        };
        let e = Entry::parse(line.trim_end_matches('\n')).map_err(bad)?;
        if last.is_some_and(|l| e.addr <= l) || e.addr % cs != 0 || e.addr >= c.header.volsize {
            return Err(StreamError::Bad {
                stream: c.index,
                reason: format!(
                    "manifest: address x{:016x} out of order or outside the volume",
                    e.addr
                ),
            });
        }
        last = Some(e.addr);
        match e.hash {
            Some(h) => {
                data.update(e.addr.to_le_bytes());
                data.update(h);
            }
            None => {
                let len = (c.header.volsize - e.addr).min(cs);
                sink.zero(e.addr, len)?;
            }
        }
    }
    Ok((sha.finalize().into(), data))
}

fn check_link(index: usize, h: &StreamHeader, prev: Option<&SessionInfo>) -> Result<()> {
    let chain_err = |reason: String| StreamError::Chain {
        stream: index,
        session: h.session.clone(),
        reason,
    };
    match prev {
        None => {
            if let Some(b) = &h.base {
                return Err(chain_err(format!(
                    "it is incremental (builds on {b}); the first stream must be a full one"
                )));
            }
        }
        Some(p) => {
            if h.volume != p.volume {
                return Err(chain_err(format!(
                    "it belongs to volume {}, not {}",
                    h.volume, p.volume
                )));
            }
            if h.chunksize != p.chunksize {
                return Err(chain_err("different chunk size".into()));
            }
            if h.base.as_deref() != Some(p.session.as_str())
                || h.base_manifest_sha256 != Some(p.manifest_sha256)
            {
                return Err(chain_err(format!(
                    "it builds on {}, but the previous stream is session {}",
                    h.base.as_deref().unwrap_or("nothing (a full stream)"),
                    p.session
                )));
            }
        }
    }
    Ok(())
}

fn read_small(r: &mut dyn Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    r.take(limit + 1).read_to_end(&mut v)?;
    if v.len() as u64 > limit {
        return Err(std::io::Error::other("member larger than allowed"));
    }
    Ok(v)
}
