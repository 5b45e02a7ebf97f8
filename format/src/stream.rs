//! Self-contained streams (`send --stream`): one session as a standalone tar.
//!
//! A stream carries everything needed to apply one session without the archive: a
//! header member naming the volume and the session it builds on, the session's chunk
//! files, its manifest and info exactly as in an archive, and a trailer whose SHA-256
//! covers every member before it. `docs/FORMAT.md` ("Self-contained streams") is the
//! specification; this module follows it to the byte.
//!
//! An encrypted stream (format 2, `docs/FORMAT.md` "Encrypted streams") carries in
//! plain only its format and its chain's key file (wrapped under the passphrase);
//! header, chunks, manifest, info and trailer are sealed ([`crate::crypto`]), and member
//! names tell neither the volume, the session nor the addresses. The reader asks for
//! the passphrase once per chain ([`read_chain_with`]).
//!
//! Writing goes through [`RecordWriter`], so the output is always whole records of the
//! block size: a tape drive in fixed-block mode, `dd` and `mbuffer` take it unchanged,
//! and streams can be concatenated.
//!
//! Reading ([`ChainReader`], [`read_chain`]) walks the tar blocks itself (with
//! `tar::Header` for the field layout) rather than through `tar::Archive`, because a
//! stream reader must notice things a general tar reader forgives: a member cut short,
//! non-zero member padding, a header that is not exactly the one a sparsebak writer
//! makes. Every byte of a stream is thereby checked: headers against the canonical
//! header, contents by the trailer hash, padding for zeros. Memory stays bounded: one
//! chunk at a time, and the chunk members are matched against the manifest (which
//! comes after them) through running digests, not lists.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::chunk::Codec;
use crate::codec::{self, ChunkCodec, ChunkContext};
use crate::crypto::envelope::{overhead, plain_len};
use crate::crypto::{
    ArchiveKeys, CryptoError, KeyFile, OpenReader, Passphrase, Place, SealWriter, AEAD_NAME,
};
use crate::info::SessionInfo;
use crate::layout;
use crate::limits;
use crate::manifest::Entry;
use crate::Hash;

/// Record size used when none is given: what `--block-size` defaults to.
pub const DEFAULT_BLOCK_SIZE: usize = 65536;
/// A tar block; record sizes must be a multiple of it.
pub const TAR_BLOCK: usize = 512;
/// Name of the first member of every stream.
pub const HEADER_MEMBER: &str = "sparsebak-stream/header";
/// Name of the last member of every stream.
pub const TRAILER_MEMBER: &str = "sparsebak-stream/trailer";
/// Value of the header's `format` key.
pub const STREAM_FORMAT: &str = "sparsebak-stream 1";
/// Value of the `format` key of an encrypted stream (its plain first member and its
/// sealed header).
pub const STREAM_FORMAT_2: &str = "sparsebak-stream 2";
/// Encrypted streams: the member holding the chain's key file (wrapped; no secret).
pub const KEY_MEMBER: &str = "sparsebak-stream/key";
/// Encrypted streams: the sealed header.
pub const SEALED_HEADER_MEMBER: &str = "sparsebak-stream/session";
/// Encrypted streams: the sealed manifest.
pub const SEALED_MANIFEST_MEMBER: &str = "sparsebak-stream/manifest";
/// Encrypted streams: the sealed info.
pub const SEALED_INFO_MEMBER: &str = "sparsebak-stream/info";
/// Encrypted streams: chunk members are this followed by the chunk's name token.
pub const SEALED_CHUNK_PREFIX: &str = "sparsebak-stream/c/";

/// Largest header, info or trailer member a reader accepts: they are a few hundred
/// bytes, and a bound keeps a hostile size field from making us allocate.
const MAX_SMALL_MEMBER: u64 = 64 * 1024;
/// Longest manifest line (a data line is 83 bytes with its newline).
const MAX_MANIFEST_LINE: usize = 128;
/// Piece size for streaming the manifest member.
const COPY_PIECE: usize = 64 * 1024;

// ---------------------------------------------------------------------------------
// Errors

/// Where in a chain something went wrong: the stream's 1-based position, its session
/// once its header was read, and the byte offset (within the input being read) of the
/// block where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamAt {
    pub stream: usize,
    pub session: Option<String>,
    pub offset: u64,
}

impl fmt::Display for StreamAt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "stream {}", self.stream)?;
        if let Some(s) = &self.session {
            write!(f, " (session {s})")?;
        }
        write!(f, " at byte {}", self.offset)
    }
}

/// Errors of writing or reading streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error("block size {0} is not a positive multiple of 512")]
    BlockSize(usize),
    #[error("bad stream header: {0}")]
    Header(String),
    /// The writer was called with data that would make an invalid stream (the stream
    /// written so far has no trailer, so no reader accepts it).
    #[error("stream writer: {0}")]
    Misuse(String),
    #[error("writing the stream: {0}")]
    Write(#[source] io::Error),
    #[error("{at}: reading: {source}")]
    Read {
        at: StreamAt,
        #[source]
        source: io::Error,
    },
    #[error("{at}: truncated stream: {detail}")]
    Truncated { at: StreamAt, detail: String },
    #[error("{at}: not a sparsebak stream: {reason}")]
    NotAStream { at: StreamAt, reason: String },
    #[error("{at}: damaged stream: {reason}")]
    Damaged { at: StreamAt, reason: String },
    #[error("{at}: trailer hash mismatch: the stream was altered")]
    TrailerMismatch { at: StreamAt },
    #[error("{at}: chunk x{addr:016x}: {reason}")]
    Chunk {
        at: StreamAt,
        addr: u64,
        reason: String,
    },
    #[error("{at}: the manifest's SHA-256 differs from manifest_sha256 in the info: the manifest was altered")]
    ManifestHash { at: StreamAt },
    #[error("{at}: the chunk members do not match the manifest: {reason}")]
    ChunksVsManifest { at: StreamAt, reason: String },
    #[error(
        "{at}: foreign stream: it is of volume {found:?}, the chain is of volume {expected:?}"
    )]
    ForeignVolume {
        at: StreamAt,
        expected: String,
        found: String,
    },
    #[error("{at}: chunk size {found} differs from the chain's {expected}")]
    ChunkSize {
        at: StreamAt,
        expected: u64,
        found: u64,
    },
    #[error("{at}: a chain must start with a full stream, but this one builds on session {base}")]
    NotFull { at: StreamAt, base: String },
    #[error("{at}: does not extend the chain (streams out of order, or one missing): {reason}")]
    BrokenChain { at: StreamAt, reason: String },
    #[error("{at}: writing the volume: {source}")]
    Sink {
        at: StreamAt,
        #[source]
        source: io::Error,
    },
    #[error("the input holds no stream")]
    Empty,
    #[error(
        "{at}: foreign stream: it is of stream chain {found}, the streams before it are of chain {expected}"
    )]
    ForeignChain {
        at: StreamAt,
        expected: String,
        found: String,
    },
    #[error("{at}: wrong passphrase: it does not unlock the key of stream chain {chain}")]
    WrongPassphrase { at: StreamAt, chain: String },
    #[error("{at}: {reason}")]
    Locked { at: StreamAt, reason: String },
}

impl StreamError {
    /// Whether the input was read and found damaged (cut short, altered, chunks that
    /// do not match), rather than not readable or not what was asked for.
    pub fn is_damage(&self) -> bool {
        use StreamError::*;
        matches!(
            self,
            Truncated { .. }
                | Damaged { .. }
                | TrailerMismatch { .. }
                | Chunk { .. }
                | ManifestHash { .. }
                | ChunksVsManifest { .. }
        )
    }

    /// Where in the input the error was found, when it was found reading one.
    pub fn at(&self) -> Option<&StreamAt> {
        use StreamError::*;
        match self {
            Read { at, .. }
            | Truncated { at, .. }
            | NotAStream { at, .. }
            | Damaged { at, .. }
            | TrailerMismatch { at }
            | Chunk { at, .. }
            | ManifestHash { at }
            | ChunksVsManifest { at, .. }
            | ForeignVolume { at, .. }
            | ChunkSize { at, .. }
            | NotFull { at, .. }
            | BrokenChain { at, .. }
            | ForeignChain { at, .. }
            | WrongPassphrase { at, .. }
            | Locked { at, .. }
            | Sink { at, .. } => Some(at),
            BlockSize(_) | Header(_) | Misuse(_) | Write(_) | Empty => None,
        }
    }
}

// ---------------------------------------------------------------------------------
// Header member

/// The `sparsebak-stream/header` member: what a reader needs before any chunk arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub volume: String,
    pub session: String,
    pub volsize: u64,
    pub chunksize: u64,
    pub compression: Codec,
    /// Unix seconds when the session was taken; also every member's tar mtime.
    pub time: i64,
    /// The session this one builds on; `None` for a full stream.
    pub base: Option<String>,
    /// `manifest_sha256` of `base`; set exactly when `base` is.
    pub base_manifest_sha256: Option<Hash>,
    /// The stream chain's id, for an encrypted stream (format 2): the id its key file
    /// names and its keys are derived for. `None` for a plain stream (format 1).
    pub volume_id: Option<String>,
}

impl StreamHeader {
    /// The header of a stream carrying `info`'s session, which builds on
    /// `info.previous` (whose manifest hash the caller knows, e.g. from the catalog).
    pub fn for_session(info: &SessionInfo, base_manifest_sha256: Option<Hash>) -> StreamHeader {
        StreamHeader {
            volume: info.volume.clone(),
            session: info.session.clone(),
            volsize: info.volsize,
            chunksize: info.chunksize,
            compression: info.compression,
            time: info.time,
            base: info.previous.clone(),
            base_manifest_sha256,
            volume_id: None,
        }
    }

    /// The member's bytes.
    pub fn to_text(&self) -> String {
        let opt_hash = |h: &Option<Hash>| h.map(hex::encode).unwrap_or_default();
        let (format, id) = match &self.volume_id {
            Some(id) => (STREAM_FORMAT_2, format!("volume_id={id}\n")),
            None => (STREAM_FORMAT, String::new()),
        };
        format!(
            "format={format}\nvolume={}\n{id}session={}\nvolsize={}\nchunksize={}\n\
             compression={}\ntime={}\nbase={}\nbase_manifest_sha256={}\n",
            self.volume,
            self.session,
            self.volsize,
            self.chunksize,
            self.compression.name(),
            self.time,
            self.base.as_deref().unwrap_or(""),
            opt_hash(&self.base_manifest_sha256),
        )
    }

    /// Parse and check the member's bytes (a plain header, or the opened sealed header
    /// of an encrypted stream, which names the chain's `volume_id`). Unknown keys are
    /// ignored (a later version may add some); a different `format` is refused.
    pub fn parse(text: &str) -> Result<StreamHeader, String> {
        if !text.ends_with('\n') {
            return Err("last line has no newline".into());
        }
        let mut kv = std::collections::BTreeMap::new();
        for line in text.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {line:?} is not key=value"))?;
            if kv.insert(k, v).is_some() {
                return Err(format!("key {k} given twice"));
            }
        }
        let get = |k: &str| kv.get(k).copied().ok_or_else(|| format!("missing {k}"));
        let num = |k: &str| -> Result<u64, String> {
            get(k)?.parse::<u64>().map_err(|e| format!("{k}: {e}"))
        };
        let format = get("format")?;
        let volume_id = match format {
            STREAM_FORMAT => None,
            STREAM_FORMAT_2 => {
                let id = get("volume_id")?;
                if !is_chain_id(id) {
                    return Err(format!("bad volume_id {id:?}"));
                }
                Some(id.to_string())
            }
            _ => {
                return Err(format!(
                    "format {format:?} is not supported (this build reads {STREAM_FORMAT:?} \
                     and {STREAM_FORMAT_2:?})"
                ))
            }
        };
        let compression = get("compression")?;
        let compression = Codec::from_name(compression)
            .ok_or_else(|| format!("unknown compression {compression:?}"))?;
        let base = match get("base")? {
            "" => None,
            b => Some(b.to_string()),
        };
        let base_manifest_sha256 = match get("base_manifest_sha256")? {
            "" => None,
            h => Some(parse_hash(h).ok_or_else(|| format!("bad base_manifest_sha256 {h:?}"))?),
        };
        let header = StreamHeader {
            volume: get("volume")?.to_string(),
            session: get("session")?.to_string(),
            volsize: num("volsize")?,
            chunksize: num("chunksize")?,
            compression,
            time: get("time")?.parse().map_err(|e| format!("time: {e}"))?,
            base,
            base_manifest_sha256,
            volume_id,
        };
        header.check()?;
        Ok(header)
    }

    /// The rules both writer and reader hold a header to.
    fn check(&self) -> Result<(), String> {
        if self.volume.is_empty()
            || self.volume.starts_with(['.', '-'])
            || !self
                .volume
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
        {
            return Err(format!("bad volume name {:?}", self.volume));
        }
        if !layout::is_session_id(&self.session) {
            return Err(format!("bad session ID {:?}", self.session));
        }
        if !limits::chunksize_ok(self.chunksize) {
            return Err(format!("bad chunksize {}", self.chunksize));
        }
        if self.volsize > limits::MAX_VOLSIZE {
            return Err(format!(
                "volsize {} is larger than the largest volume ({})",
                self.volsize,
                limits::MAX_VOLSIZE
            ));
        }
        match (&self.base, &self.base_manifest_sha256) {
            (None, None) => {}
            (Some(b), Some(_)) => {
                if !layout::is_session_id(b) || b.as_str() >= self.session.as_str() {
                    return Err(format!(
                        "base {b:?} is not a session ID older than {}",
                        self.session
                    ));
                }
            }
            _ => return Err("base and base_manifest_sha256 must be both set or both empty".into()),
        }
        if let Some(id) = &self.volume_id {
            if !is_chain_id(id) {
                return Err(format!("bad volume_id {id:?}"));
            }
        }
        Ok(())
    }

    /// Whether this is the header of an encrypted stream (format 2).
    pub fn encrypted(&self) -> bool {
        self.volume_id.is_some()
    }

    /// The tar mtime of every member: the session time (0 for a time before 1970,
    /// which tar cannot express; the header keeps the real value). 0 in an encrypted
    /// stream, whose plain bytes must not tell when it was taken.
    fn mtime(&self) -> u64 {
        if self.encrypted() {
            return 0;
        }
        u64::try_from(self.time).unwrap_or(0)
    }

    /// The manifest member's name.
    fn manifest_member(&self) -> String {
        if self.encrypted() {
            SEALED_MANIFEST_MEMBER.to_string()
        } else {
            self.session_member(layout::MANIFEST_FILE)
        }
    }

    /// The info member's name.
    fn info_member(&self) -> String {
        if self.encrypted() {
            SEALED_INFO_MEMBER.to_string()
        } else {
            self.session_member(layout::INFO_FILE)
        }
    }

    fn chunk_member(&self, addr: u64) -> String {
        format!(
            "{}/{}/{}",
            layout::session_dir_name(&self.session),
            layout::prefix_name(addr),
            layout::chunk_name(addr)
        )
    }

    fn session_member(&self, file: &str) -> String {
        format!("{}/{file}", layout::session_dir_name(&self.session))
    }

    /// Largest chunk member this session can hold: a raw chunk, or the worst-case zstd
    /// frame of one (sealed, in an encrypted stream). Bounds what a reader allocates
    /// for a member.
    fn max_payload(&self) -> u64 {
        if self.encrypted() {
            limits::max_sealed(self.compression, self.chunksize)
        } else {
            limits::max_stored(self.compression, self.chunksize)
        }
    }

    /// Checks that `info` describes the session this header announces.
    fn agrees_with(&self, info: &SessionInfo) -> Result<(), String> {
        let mut diffs = Vec::new();
        if info.volume != self.volume {
            diffs.push("volume");
        }
        if info.session != self.session {
            diffs.push("session");
        }
        if info.previous != self.base {
            diffs.push("previous/base");
        }
        if info.time != self.time {
            diffs.push("time");
        }
        if info.volsize != self.volsize {
            diffs.push("volsize");
        }
        if info.chunksize != self.chunksize {
            diffs.push("chunksize");
        }
        if info.compression != self.compression {
            diffs.push("compression");
        }
        if info.volume_id != self.volume_id {
            diffs.push("volume_id");
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the info and the stream header disagree on {}",
                diffs.join(", ")
            ))
        }
    }
}

/// `x` is a multiple of `m` (`m` > 0). `u64::is_multiple_of` needs Rust 1.87; the
/// workspace supports 1.85.
#[allow(clippy::manual_is_multiple_of)]
fn multiple_of(x: u64, m: u64) -> bool {
    x % m == 0
}

/// A stream chain's id: what [`crate::crypto::random_uuid`] makes, or any id a key
/// file accepts (letters, digits and `-`, at most 64).
fn is_chain_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
}

fn parse_hash(h: &str) -> Option<Hash> {
    if h.len() != 64 || h.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(h, &mut out).ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------------
// Pieces shared by writer and reader

/// The one header a sparsebak writer makes for a member: ustar, regular file, mode
/// 0644, uid/gid 0, empty owner names. Readers compare headers with it byte for byte.
fn member_header(name: &str, size: u64, mtime: u64) -> io::Result<tar::Header> {
    if name.len() >= 100 {
        return Err(io::Error::other(format!("member name {name:?} too long")));
    }
    let mut h = tar::Header::new_ustar();
    h.set_path(name)?;
    h.set_size(size);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

/// Bytes of zero padding after `size` bytes of content.
fn padding(size: u64) -> usize {
    ((TAR_BLOCK as u64 - size % TAR_BLOCK as u64) % TAR_BLOCK as u64) as usize
}

/// The trailer's hash: for each member, its name, NUL, its size in decimal, `\n`, and
/// its content.
struct TrailerHash(Sha256);

impl TrailerHash {
    fn new() -> Self {
        TrailerHash(Sha256::new())
    }
    fn member(&mut self, name: &str, size: u64) {
        self.0.update(name.as_bytes());
        self.0.update([0u8]);
        self.0.update(size.to_string().as_bytes());
        self.0.update(b"\n");
    }
    fn content(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

fn trailer_text(hash: &Hash) -> String {
    format!("sha256={}\n", hex::encode(hash))
}

/// Splits a manifest that arrives in pieces into lines, without holding more than one.
#[derive(Default)]
struct LineSplitter {
    line: Vec<u8>,
}

impl LineSplitter {
    /// Feed a piece; `f` gets each complete line (without its newline).
    fn feed<E>(
        &mut self,
        mut data: &[u8],
        mut f: impl FnMut(&str) -> Result<(), E>,
        too_long: impl Fn() -> E,
        not_utf8: impl Fn() -> E,
    ) -> Result<(), E> {
        while !data.is_empty() {
            let (part, rest, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], &data[i + 1..], true),
                None => (data, &data[..0], false),
            };
            if self.line.len() + part.len() > MAX_MANIFEST_LINE {
                return Err(too_long());
            }
            self.line.extend_from_slice(part);
            data = rest;
            if complete {
                let s = std::str::from_utf8(&self.line).map_err(|_| not_utf8())?;
                f(s)?;
                self.line.clear();
            }
        }
        Ok(())
    }

    /// Whether the input ended on a line boundary.
    fn is_clean(&self) -> bool {
        self.line.is_empty()
    }
}

/// Checks that two sequences of `(address, hash)` pairs are equal, holding only a few
/// words per sequence.
///
/// `all` is the authority (SHA-256 of the whole sequence). The rest explains a mismatch:
/// `addrs` tells an address difference from a content difference, and three sums modulo
/// the prime 2^61-1 — of `v`, `w*v` and `w*w*v`, where `v` is the hash folded to a number
/// and `w` the address plus one — locate the chunk when exactly one content differs
/// (the usual flipped byte): then the differences are `d`, `w*d` and `w*w*d`, so `w` is
/// the second over the first, and the third confirms it.
#[derive(Clone)]
struct PairDigest {
    all: Sha256,
    addrs: Sha256,
    count: u64,
    sums: [u64; 3],
}

const P61: u64 = (1 << 61) - 1;

fn mulmod(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) % P61 as u128) as u64
}

fn addmod(a: u64, b: u64) -> u64 {
    (a + b) % P61
}

fn submod(a: u64, b: u64) -> u64 {
    (a + P61 - b) % P61
}

fn powmod(mut b: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mulmod(r, b);
        }
        b = mulmod(b, b);
        e >>= 1;
    }
    r
}

/// What differs between the chunk members and the manifest's data lines.
#[derive(Debug, PartialEq, Eq)]
enum PairMismatch {
    Addresses {
        members: u64,
        lines: u64,
    },
    /// Same addresses, different content: at this address if exactly one differs.
    Content(Option<u64>),
}

impl PairDigest {
    fn new() -> Self {
        PairDigest {
            all: Sha256::new(),
            addrs: Sha256::new(),
            count: 0,
            sums: [0; 3],
        }
    }

    fn push(&mut self, addr: u64, hash: &Hash) {
        self.all.update(addr.to_le_bytes());
        self.all.update(hash);
        self.addrs.update(addr.to_le_bytes());
        self.count += 1;
        let mut fold = [0u8; 8];
        fold.copy_from_slice(&hash[..8]);
        let v = u64::from_le_bytes(fold) % P61;
        let w = addmod(addr % P61, 1);
        let wv = mulmod(w, v);
        self.sums[0] = addmod(self.sums[0], v);
        self.sums[1] = addmod(self.sums[1], wv);
        self.sums[2] = addmod(self.sums[2], mulmod(w, wv));
    }

    /// Compare the chunk members' digest (`self`) with the manifest's.
    fn compare(self, manifest: PairDigest) -> Result<(), PairMismatch> {
        if self.all.finalize() == manifest.all.finalize() {
            return Ok(());
        }
        if self.count != manifest.count || self.addrs.finalize() != manifest.addrs.finalize() {
            return Err(PairMismatch::Addresses {
                members: self.count,
                lines: manifest.count,
            });
        }
        let d: Vec<u64> = (0..3)
            .map(|i| submod(self.sums[i], manifest.sums[i]))
            .collect();
        if d[0] == 0 {
            return Err(PairMismatch::Content(None));
        }
        let w = mulmod(d[1], powmod(d[0], P61 - 2));
        if w == 0 || mulmod(mulmod(w, w), d[0]) != d[2] {
            return Err(PairMismatch::Content(None));
        }
        Err(PairMismatch::Content(Some(w - 1)))
    }
}

// ---------------------------------------------------------------------------------
// Writing

/// Writes its input in whole records of `block_size` bytes: every write to the inner
/// writer is exactly one record, so a tape drive in fixed-block mode accepts it, and
/// [`RecordWriter::finish`] pads the last record with zeros.
pub struct RecordWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    block_size: usize,
    written: u64,
}

impl<W: Write> RecordWriter<W> {
    /// `block_size` must be a positive multiple of 512 (the tar block).
    pub fn new(out: W, block_size: usize) -> Result<Self, StreamError> {
        if block_size == 0 || !multiple_of(block_size as u64, TAR_BLOCK as u64) {
            return Err(StreamError::BlockSize(block_size));
        }
        Ok(RecordWriter {
            out,
            buf: Vec::with_capacity(block_size),
            block_size,
            written: 0,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Bytes handed to the inner writer so far (whole records).
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Bytes accepted but not yet written (less than one record).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Pad the last record with zeros, write it, flush, and return the inner writer
    /// with the total bytes written (a multiple of the block size).
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if !self.buf.is_empty() {
            self.buf.resize(self.block_size, 0);
            self.emit()?;
        }
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn emit(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.written += self.buf.len() as u64;
        self.buf.clear();
        Ok(())
    }
}

impl<W: Write> Write for RecordWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(self.block_size - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.block_size {
            self.emit()?;
        }
        Ok(n)
    }

    /// Flushes the inner writer; a partial record stays buffered, since writing it
    /// now would break the record structure. [`RecordWriter::finish`] writes it.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Writes one session as a stream: header member at creation, chunk members with
/// [`StreamWriter::put_chunk`], and manifest, info, trailer and end-of-archive with
/// [`StreamWriter::finish`].
pub struct StreamWriter<W: Write> {
    out: RecordWriter<W>,
    header: StreamHeader,
    trailer: TrailerHash,
    last_addr: Option<u64>,
    /// Addresses of the chunks put, to check the manifest's data lines at the end.
    addrs: Sha256,
    chunks: u64,
    /// The chain's keys, for an encrypted stream.
    crypt: Option<StreamCrypt>,
}

/// What an encrypted stream is written with: the chain's keys and its key file (which
/// every stream of the chain carries, so each one is self-contained).
#[derive(Debug, Clone)]
pub struct StreamCrypt {
    pub keys: Arc<ArchiveKeys>,
    pub key_file: KeyFile,
}

/// The plain first member of an encrypted stream.
fn opening_text() -> String {
    format!("format={STREAM_FORMAT_2}\nencryption={AEAD_NAME}\n")
}

/// The trailer's content, sealed when the stream is encrypted.
fn sealed_or_plain(
    crypt: Option<&StreamCrypt>,
    place: Place<'_>,
    text: &[u8],
) -> Result<Vec<u8>, StreamError> {
    match crypt {
        Some(c) => c
            .keys
            .seal(&place, text)
            .map_err(|e| StreamError::Misuse(e.to_string())),
        None => Ok(text.to_vec()),
    }
}

/// A member's content as it is written: plain, or sealed on the way.
enum Body<'a, W: Write> {
    Plain(Hashed<'a, W>),
    Sealed(SealWriter<Hashed<'a, W>>),
}

impl<W: Write> Body<'_, W> {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Body::Plain(w) => w.write_all(data),
            Body::Sealed(w) => w.write_all(data),
        }
    }
}

/// Writes to a record writer and hashes what it writes into the trailer.
struct Hashed<'a, W: Write> {
    out: &'a mut RecordWriter<W>,
    trailer: &'a mut TrailerHash,
}

impl<W: Write> Write for Hashed<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.out.write(data)?;
        self.trailer.content(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> StreamWriter<W> {
    /// Start a stream with the default record size.
    pub fn new(out: W, header: StreamHeader) -> Result<Self, StreamError> {
        Self::with_block_size(out, header, DEFAULT_BLOCK_SIZE)
    }

    /// Start a stream written in records of `block_size` bytes.
    pub fn with_block_size(
        out: W,
        header: StreamHeader,
        block_size: usize,
    ) -> Result<Self, StreamError> {
        Self::start(out, header, block_size, None)
    }

    /// Start an encrypted stream (format 2) of the chain `crypt` holds the keys of:
    /// the header's `volume_id` must be that chain's id. Chunks are then put as the
    /// chain's [`crate::codec::Sealed`] codec encodes them.
    pub fn encrypted(
        out: W,
        header: StreamHeader,
        block_size: usize,
        crypt: StreamCrypt,
    ) -> Result<Self, StreamError> {
        let id = crypt.keys.archive();
        if header.volume_id.as_deref() != Some(id) || crypt.key_file.archive != id {
            return Err(StreamError::Misuse(format!(
                "the header's volume_id {:?}, the keys' chain {id} and the key file's {} differ",
                header.volume_id, crypt.key_file.archive
            )));
        }
        Self::start(out, header, block_size, Some(crypt))
    }

    fn start(
        out: W,
        header: StreamHeader,
        block_size: usize,
        crypt: Option<StreamCrypt>,
    ) -> Result<Self, StreamError> {
        header.check().map_err(StreamError::Header)?;
        if header.encrypted() != crypt.is_some() {
            return Err(StreamError::Misuse(
                "an encrypted stream needs keys, a plain one none".into(),
            ));
        }
        let out = RecordWriter::new(out, block_size)?;
        let mut w = StreamWriter {
            out,
            header,
            trailer: TrailerHash::new(),
            last_addr: None,
            addrs: Sha256::new(),
            chunks: 0,
            crypt,
        };
        let text = w.header.to_text();
        match w.crypt.clone() {
            None => w.member(HEADER_MEMBER, text.as_bytes())?,
            Some(c) => {
                w.member(HEADER_MEMBER, opening_text().as_bytes())?;
                w.member(KEY_MEMBER, c.key_file.render().as_bytes())?;
                let place = Place::StreamHead {
                    volume_id: c.keys.archive(),
                };
                let sealed = sealed_or_plain(Some(&c), place, text.as_bytes())?;
                w.member(SEALED_HEADER_MEMBER, &sealed)?;
            }
        }
        Ok(w)
    }

    /// Bytes written to the output so far (whole records).
    pub fn bytes_written(&self) -> u64 {
        self.out.bytes_written()
    }

    /// Add the chunk at `addr`, `payload` encoded as the header's compression says.
    /// Addresses must be strictly increasing multiples of the chunk size inside the
    /// volume.
    pub fn put_chunk(&mut self, addr: u64, payload: &[u8]) -> Result<(), StreamError> {
        if let Some(last) = self.last_addr {
            if addr <= last {
                return Err(StreamError::Misuse(format!(
                    "chunk x{addr:016x} put after x{last:016x}"
                )));
            }
        }
        if !multiple_of(addr, self.header.chunksize) || addr >= self.header.volsize {
            return Err(StreamError::Misuse(format!(
                "chunk address x{addr:016x} is not a chunk of the volume"
            )));
        }
        let raw = match self.crypt {
            Some(_) => self.header.chunksize + overhead(self.header.chunksize),
            None => self.header.chunksize,
        };
        if payload.len() as u64 > self.header.max_payload()
            || (self.header.compression == Codec::None && payload.len() as u64 != raw)
        {
            return Err(StreamError::Misuse(format!(
                "chunk x{addr:016x}: {} bytes cannot be a {} chunk of {} bytes",
                payload.len(),
                self.header.compression.name(),
                self.header.chunksize
            )));
        }
        self.last_addr = Some(addr);
        self.addrs.update(addr.to_le_bytes());
        self.chunks += 1;
        let name = match &self.crypt {
            Some(c) => format!(
                "{SEALED_CHUNK_PREFIX}{}",
                c.keys.chunk_token(&self.header.session, addr)
            ),
            None => self.header.chunk_member(addr),
        };
        self.member(&name, payload)
    }

    /// Write the manifest and info members, the trailer, the end-of-archive blocks and
    /// the padding of the last record. Returns the output and the stream's length.
    ///
    /// `info` must describe the header's session and `manifest` must be its manifest
    /// (hash as in `info`, data lines naming exactly the chunks put): otherwise an
    /// error, and the stream stays without a trailer, so no reader accepts it.
    pub fn finish(self, manifest: &[u8], info: &SessionInfo) -> Result<(W, u64), StreamError> {
        self.finish_from(manifest, manifest.len() as u64, info)
    }

    /// As [`StreamWriter::finish`], with the manifest read from `manifest` (exactly
    /// `len` bytes), so a large manifest need not be in memory.
    pub fn finish_from<R: Read>(
        mut self,
        mut manifest: R,
        len: u64,
        info: &SessionInfo,
    ) -> Result<(W, u64), StreamError> {
        self.header.agrees_with(info).map_err(StreamError::Misuse)?;
        let mtime = self.header.mtime();
        let name = self.header.manifest_member();
        let stored_len = match self.crypt {
            Some(_) => len + overhead(len),
            None => len,
        };
        self.member_header(&name, stored_len, mtime)?;
        let crypt = self.crypt.clone();
        let session = self.header.session.clone();
        let hashed = Hashed {
            out: &mut self.out,
            trailer: &mut self.trailer,
        };
        let mut body = match &crypt {
            Some(c) => Body::Sealed(
                SealWriter::new(&c.keys, Place::Manifest { session: &session }, hashed)
                    .map_err(|e| StreamError::Misuse(e.to_string()))?,
            ),
            None => Body::Plain(hashed),
        };

        let mut sha = Sha256::new();
        let mut split = LineSplitter::default();
        let mut lines = 0u64;
        let mut data_addrs = Sha256::new();
        let mut data_lines = 0u64;
        let mut last: Option<u64> = None;
        let mut buf = vec![0u8; COPY_PIECE];
        let mut left = len;
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match manifest.read(&mut buf[..want]) {
                Ok(0) => {
                    return Err(StreamError::Misuse(format!(
                        "manifest ended {left} bytes early"
                    )))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StreamError::Misuse(format!("reading the manifest: {e}"))),
            };
            let piece = &buf[..n];
            sha.update(piece);
            body.write_all(piece).map_err(StreamError::Write)?;
            left -= n as u64;
            split.feed(
                piece,
                |line| {
                    let e = Entry::parse(line)
                        .map_err(|r| StreamError::Misuse(format!("manifest: {r}")))?;
                    if last.is_some_and(|l| e.addr <= l) {
                        return Err(StreamError::Misuse("manifest out of order".into()));
                    }
                    last = Some(e.addr);
                    lines += 1;
                    if e.hash.is_some() {
                        data_addrs.update(e.addr.to_le_bytes());
                        data_lines += 1;
                    }
                    Ok(())
                },
                || StreamError::Misuse("manifest line too long".into()),
                || StreamError::Misuse("manifest is not text".into()),
            )?;
        }
        if let Body::Sealed(w) = body {
            w.finish().map_err(StreamError::Write)?;
        }
        self.pad(stored_len)?;
        if !split.is_clean() {
            return Err(StreamError::Misuse(
                "manifest's last line has no newline".into(),
            ));
        }
        let sha: Hash = sha.finalize().into();
        if sha != info.manifest_sha256 {
            return Err(StreamError::Misuse(
                "manifest's SHA-256 differs from the info's manifest_sha256".into(),
            ));
        }
        if lines != info.changed {
            return Err(StreamError::Misuse(format!(
                "manifest has {lines} lines, the info says changed={}",
                info.changed
            )));
        }
        let put = std::mem::replace(&mut self.addrs, Sha256::new());
        if data_lines != self.chunks || data_addrs.finalize() != put.finalize() {
            return Err(StreamError::Misuse(format!(
                "the manifest's {data_lines} data lines do not name the {} chunks put",
                self.chunks
            )));
        }

        let info_text = info.to_text();
        let name = self.header.info_member();
        let place = Place::Info { session: &session };
        let info_bytes = sealed_or_plain(crypt.as_ref(), place, info_text.as_bytes())?;
        self.member(&name, &info_bytes)?;

        let hash = std::mem::replace(&mut self.trailer, TrailerHash::new()).finish();
        let volume_id = self.header.volume_id.clone().unwrap_or_default();
        let place = Place::StreamTrailer {
            volume_id: &volume_id,
            session: &session,
        };
        let text = sealed_or_plain(crypt.as_ref(), place, trailer_text(&hash).as_bytes())?;
        self.member_header(TRAILER_MEMBER, text.len() as u64, mtime)?;
        self.out.write_all(&text).map_err(StreamError::Write)?;
        self.pad(text.len() as u64)?;
        // End of archive: two zero blocks; the record writer pads past them.
        self.out
            .write_all(&[0u8; 2 * TAR_BLOCK])
            .map_err(StreamError::Write)?;
        self.out.finish().map_err(StreamError::Write)
    }

    /// A whole member: header, content (hashed for the trailer), padding.
    fn member(&mut self, name: &str, content: &[u8]) -> Result<(), StreamError> {
        let mtime = self.header.mtime();
        self.member_header(name, content.len() as u64, mtime)?;
        self.trailer.content(content);
        self.out.write_all(content).map_err(StreamError::Write)?;
        self.pad(content.len() as u64)
    }

    fn member_header(&mut self, name: &str, size: u64, mtime: u64) -> Result<(), StreamError> {
        let h = member_header(name, size, mtime).map_err(|e| StreamError::Misuse(e.to_string()))?;
        self.out
            .write_all(h.as_bytes())
            .map_err(StreamError::Write)?;
        self.trailer.member(name, size);
        Ok(())
    }

    fn pad(&mut self, size: u64) -> Result<(), StreamError> {
        self.out
            .write_all(&[0u8; TAR_BLOCK][..padding(size)])
            .map_err(StreamError::Write)
    }
}

// ---------------------------------------------------------------------------------
// Sinks

/// Where a chain of streams rebuilds the volume.
///
/// Unlike [`crate::restore::Target`], which fills a fresh target front to back, a sink
/// sees the volume change under it: later streams overwrite chunks, zero them, shrink
/// and grow the volume. So `zero` must really zero, and `set_size` must make bytes cut
/// off read back as zero if the volume grows again.
///
/// A block device sink (in the main crate, which owns `BLKZEROOUT`) would keep the
/// logical size in a field: `set_size(n)` refuses `n` larger than the device and, when
/// growing from `cur` to `n`, zeroes `[cur, n)` with `BLKZEROOUT` (so the first
/// `set_size` from 0 clears the old content and a regrown tail reads as zeros);
/// shrinking only records `n`. `zero` is `BLKZEROOUT`, `write_at` a positioned write,
/// `finish` an fsync.
pub trait VolumeSink {
    /// Make the volume `size` bytes long: cut (bytes past `size` are gone, and read as
    /// zero if a later call grows it again) or extend with zeros.
    fn set_size(&mut self, size: u64) -> io::Result<()>;
    /// Write `data` at byte offset `off` (inside the current size).
    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()>;
    /// Make `[off, off+len)` read back as zeros.
    fn zero(&mut self, off: u64, len: u64) -> io::Result<()>;
    /// Make everything durable; called once, after the whole chain checked out.
    fn finish(&mut self) -> io::Result<()>;
}

/// A regular file as a sparse volume: cut and grow by `set_len`, zero by punching
/// holes (zeros written where the file system cannot punch).
pub struct FileSink {
    file: File,
}

impl FileSink {
    /// Use `file`, emptied first: a chain starts from an empty volume. The caller
    /// should write to a temporary name and rename it into place only when the chain
    /// read succeeded: a failed read leaves the file with unchecked content.
    pub fn new(file: File) -> io::Result<FileSink> {
        file.set_len(0)?;
        Ok(FileSink { file })
    }

    pub fn into_file(self) -> File {
        self.file
    }

    fn write_zeros(&self, mut off: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; COPY_PIECE];
        let end = off + len;
        while off < end {
            let n = (end - off).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], off)?;
            off += n as u64;
        }
        Ok(())
    }
}

impl VolumeSink for FileSink {
    fn set_size(&mut self, size: u64) -> io::Result<()> {
        self.file.set_len(size)
    }

    fn write_at(&mut self, off: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, off)
    }

    fn zero(&mut self, off: u64, len: u64) -> io::Result<()> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if len == 0 {
            return Ok(());
        }
        let (Ok(o), Ok(l)) = (i64::try_from(off), i64::try_from(len)) else {
            return Err(io::Error::other("zero range out of bounds"));
        };
        let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        match fallocate(self.file.as_raw_fd(), flags, o, l) {
            Ok(()) => Ok(()),
            Err(nix::errno::Errno::EOPNOTSUPP) | Err(nix::errno::Errno::ENOSYS) => {
                self.write_zeros(off, len)
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }

    fn finish(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
}

// ---------------------------------------------------------------------------------
// Reading

/// What one stream of a chain held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSummary {
    pub header: StreamHeader,
    pub info: SessionInfo,
    /// Chunk members (data lines of the manifest).
    pub data_chunks: u64,
    /// `0` lines of the manifest.
    pub zero_lines: u64,
    /// Bytes from the stream's first header block to the end of its end-of-archive
    /// blocks (record padding not counted: a reader cannot tell it from the gap before
    /// the next stream).
    pub bytes: u64,
}

/// What a chain held, oldest stream first; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// Never empty: only [`ChainReader::finish`] builds one, after at least one stream.
    streams: Vec<StreamSummary>,
    last: StreamSummary,
}

impl ChainSummary {
    /// Every stream, oldest first.
    pub fn streams(&self) -> &[StreamSummary] {
        &self.streams
    }

    /// The newest stream: the session the rebuilt volume is at. A caller that expects
    /// a given session should compare: a chain cut exactly between two streams is a
    /// valid, shorter chain.
    pub fn last(&self) -> &StreamSummary {
        &self.last
    }
}

/// Reads a chain of streams, from one input or several in turn (`s1`, `s2`, … given
/// as separate files or tapes), checking everything `docs/FORMAT.md` lists and,
/// with a sink, rebuilding the volume.
///
/// The sink is written as chunks arrive, before the stream's trailer is checked: on
/// any error its content is unspecified and must be discarded.
pub struct ChainReader<'a> {
    sink: Option<&'a mut dyn VolumeSink>,
    streams: Vec<StreamSummary>,
    buf: Vec<u8>,
    /// Gives the passphrase of an encrypted chain; asked once, when the first key
    /// member is read.
    unlock: Option<Unlock<'a>>,
    passphrase: Option<Passphrase>,
    /// The key of the chain being read, once its first encrypted stream was.
    chain_key: Option<ChainKey>,
    /// The first stream may be an incremental one (no sink: its session is only
    /// described, see [`ChainReader::starting_incremental`]).
    incremental_start: bool,
}

/// Where a reader gets the passphrase of an encrypted chain: a line saying why not
/// when there is none.
pub type Unlock<'a> = Box<dyn FnMut() -> Result<Passphrase, String> + 'a>;

/// An encrypted chain's key: the key member it came from, the chain's id, the keys.
struct ChainKey {
    text: Vec<u8>,
    id: String,
    keys: Arc<ArchiveKeys>,
}

/// Read every stream of `input` (one or more concatenated) as one chain from a full
/// stream on; with `sink`, rebuild the volume into it (and `finish` it on success).
/// Encrypted streams are refused: see [`read_chain_with`].
pub fn read_chain<R: Read>(
    input: R,
    sink: Option<&mut dyn VolumeSink>,
) -> Result<ChainSummary, StreamError> {
    read_chain_with(input, sink, None)
}

/// As [`read_chain`], with `unlock` to ask for the passphrase of an encrypted chain.
pub fn read_chain_with<'a, R: Read>(
    input: R,
    sink: Option<&'a mut dyn VolumeSink>,
    unlock: Option<Unlock<'a>>,
) -> Result<ChainSummary, StreamError> {
    let mut r = ChainReader::new(sink);
    r.unlock = unlock;
    r.read(input)?;
    r.finish()
}

/// Where in the current stream the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// After the header member: chunk members, then the manifest.
    Chunks,
    /// After the manifest: the info.
    Info,
    /// After the info: the trailer.
    Trailer,
}

/// A reader's position in one input, for exact reads and offsets in messages.
struct Input<R> {
    r: R,
    offset: u64,
}

impl<R: Read> Input<R> {
    /// Fill `buf`; returns the bytes read, less than `buf.len()` only at end of input.
    fn fill(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.offset += got as u64;
        Ok(got)
    }
}

/// Per-stream state while it is being read.
struct Current {
    at: StreamAt,
    header: StreamHeader,
    /// The codec of the header's compression (sealed under the chain's keys in an
    /// encrypted stream): decodes and identifies the chunks.
    codec: Arc<dyn ChunkCodec>,
    /// The chain's keys, for an encrypted stream.
    keys: Option<Arc<ArchiveKeys>>,
    trailer: TrailerHash,
    phase: Phase,
    last_chunk: Option<u64>,
    chunk_pairs: PairDigest,
    manifest_pairs: PairDigest,
    manifest_sha: Option<Hash>,
    manifest_lines: u64,
    zero_lines: u64,
    info: Option<SessionInfo>,
    start: u64,
}

impl<'a> ChainReader<'a> {
    pub fn new(sink: Option<&'a mut dyn VolumeSink>) -> Self {
        ChainReader {
            sink,
            streams: Vec::new(),
            buf: Vec::new(),
            unlock: None,
            passphrase: None,
            chain_key: None,
            incremental_start: false,
        }
    }

    /// Let the first stream be an incremental one, for a reader without a sink that
    /// only describes the sessions it reads (a catalog rebuilt from streams read one
    /// by one: the caller links each session to the one before it with the header's
    /// `base` and `base_manifest_sha256`). Everything else is checked as always.
    /// With a sink the first stream must still be a full one.
    pub fn starting_incremental(mut self) -> Self {
        self.incremental_start = true;
        self
    }

    /// Ask `unlock` for the passphrase when the chain is encrypted.
    pub fn with_unlock(mut self, unlock: Unlock<'a>) -> Self {
        self.unlock = Some(unlock);
        self
    }

    /// Streams read so far, oldest first.
    pub fn streams(&self) -> &[StreamSummary] {
        &self.streams
    }

    /// Read all streams in `input` (zero blocks between them are skipped), extending
    /// the chain. Returns how many streams it held.
    pub fn read<R: Read>(&mut self, input: R) -> Result<usize, StreamError> {
        let mut input = Input {
            r: input,
            offset: 0,
        };
        let mut n = 0;
        let mut block = [0u8; TAR_BLOCK];
        loop {
            let at = self.at_stream(input.offset);
            let got = input.fill(&mut block).map_err(|source| StreamError::Read {
                at: at.clone(),
                source,
            })?;
            if got == 0 {
                return Ok(n);
            }
            if got < TAR_BLOCK {
                return Err(StreamError::Truncated {
                    at,
                    detail: "input ends inside a 512-byte block".into(),
                });
            }
            if block.iter().all(|&b| b == 0) {
                continue;
            }
            let summary = self.read_stream(&mut input, &block, at)?;
            self.streams.push(summary);
            n += 1;
        }
    }

    /// Finish the chain: at least one stream must have been read. The sink is made
    /// durable.
    pub fn finish(self) -> Result<ChainSummary, StreamError> {
        let Some(last) = self.streams.last() else {
            return Err(StreamError::Empty);
        };
        if let Some(sink) = self.sink {
            let at = StreamAt {
                stream: self.streams.len(),
                session: Some(last.header.session.clone()),
                offset: 0,
            };
            sink.finish()
                .map_err(|source| StreamError::Sink { at, source })?;
        }
        Ok(ChainSummary {
            last: last.clone(),
            streams: self.streams,
        })
    }

    fn at_stream(&self, offset: u64) -> StreamAt {
        StreamAt {
            stream: self.streams.len() + 1,
            session: None,
            offset,
        }
    }

    /// Read one stream whose first header block is `first`.
    fn read_stream<R: Read>(
        &mut self,
        input: &mut Input<R>,
        first: &[u8; TAR_BLOCK],
        mut at: StreamAt,
    ) -> Result<StreamSummary, StreamError> {
        let start = at.offset;
        // The header member: proves this is a sparsebak stream at all.
        let not_stream = |at: &StreamAt, reason: String| StreamError::NotAStream {
            at: at.clone(),
            reason,
        };
        let h = tar::Header::from_byte_slice(first);
        if !checksum_ok(first) {
            return Err(not_stream(&at, "no tar header here".into()));
        }
        let name = h.path_bytes();
        if name.as_ref() != HEADER_MEMBER.as_bytes() {
            return Err(not_stream(
                &at,
                format!(
                    "first member is {:?}, not {HEADER_MEMBER}",
                    String::from_utf8_lossy(&name)
                ),
            ));
        }
        let size = h
            .size()
            .ok()
            .filter(|&s| s <= MAX_SMALL_MEMBER)
            .ok_or_else(|| not_stream(&at, "header member of unreasonable size".into()))?;
        let text = self.read_small(input, size, &at)?;
        let mut trailer = TrailerHash::new();
        trailer.member(HEADER_MEMBER, size);
        trailer.content(&text);
        let encrypted = opening_format(&text) == Some(STREAM_FORMAT_2);
        if let Some(prev) = self.streams.last() {
            if prev.header.encrypted() != encrypted {
                return Err(StreamError::BrokenChain {
                    at,
                    reason: if encrypted {
                        "it is encrypted, the streams before it are not".into()
                    } else {
                        "it is not encrypted, the streams before it are".into()
                    },
                });
            }
        }
        let (header, keys) = if encrypted {
            check_canonical(first, HEADER_MEMBER, size, 0, &at)?;
            let (h, k) = self.open_encrypted(input, &text, &mut trailer, &at)?;
            (h, Some(k))
        } else {
            let header = std::str::from_utf8(&text)
                .map_err(|_| "not text".to_string())
                .and_then(StreamHeader::parse)
                .map_err(|r| not_stream(&at, format!("header member: {r}")))?;
            if header.encrypted() {
                return Err(not_stream(
                    &at,
                    "header member: a plain header of format 2".into(),
                ));
            }
            (header, None)
        };
        at.session = Some(header.session.clone());
        if !encrypted {
            check_canonical(first, HEADER_MEMBER, size, header.mtime(), &at)?;
        }
        self.check_link(&header, &at)?;

        let codec: Arc<dyn ChunkCodec> = match (&keys, &header.volume_id) {
            (Some(k), Some(id)) => Arc::new(codec::Sealed::new(
                k.clone(),
                id,
                codec::Plain::new(header.compression, codec::DEFAULT_LEVEL),
            )),
            _ => codec::for_compression(header.compression),
        };
        let mut cur = Current {
            at: at.clone(),
            codec,
            keys,
            header,
            trailer,
            phase: Phase::Chunks,
            last_chunk: None,
            chunk_pairs: PairDigest::new(),
            manifest_pairs: PairDigest::new(),
            manifest_sha: None,
            manifest_lines: 0,
            zero_lines: 0,
            info: None,
            start,
        };
        let volsize = cur.header.volsize;
        self.sink_op(&cur.at, |s| s.set_size(volsize))?;

        loop {
            cur.at.offset = input.offset;
            let (block, name, size) = self.next_member(input, &cur.at)?;
            check_canonical(&block, &name, size, cur.header.mtime(), &cur.at)?;
            if name == TRAILER_MEMBER {
                if cur.phase != Phase::Trailer {
                    return Err(damaged(&cur.at, "trailer before the manifest and info"));
                }
                let stored = self.read_small(input, size, &cur.at)?;
                let text = match &cur.keys {
                    Some(k) => {
                        let place = Place::StreamTrailer {
                            volume_id: k.archive(),
                            session: &cur.header.session,
                        };
                        k.open(&place, &stored)
                            .map_err(|e| damaged(&cur.at, &e.to_string()))?
                    }
                    None => stored,
                };
                let want =
                    trailer_text(&std::mem::replace(&mut cur.trailer, TrailerHash::new()).finish());
                if text != want.as_bytes() {
                    return Err(StreamError::TrailerMismatch { at: cur.at });
                }
                return self.end_of_archive(input, cur);
            }
            cur.trailer.member(&name, size);
            if name == cur.header.info_member() {
                if cur.phase != Phase::Info {
                    return Err(damaged(&cur.at, "info member out of place"));
                }
                let stored = self.read_small(input, size, &cur.at)?;
                cur.trailer.content(&stored);
                let text = match &cur.keys {
                    Some(k) => {
                        let place = Place::Info {
                            session: &cur.header.session,
                        };
                        k.open(&place, &stored)
                            .map_err(|e| damaged(&cur.at, &e.to_string()))?
                    }
                    None => stored,
                };
                self.check_info(&mut cur, &text)?;
                cur.phase = Phase::Trailer;
                continue;
            }
            if name == cur.header.manifest_member() {
                if cur.phase != Phase::Chunks {
                    return Err(damaged(&cur.at, "second manifest member"));
                }
                self.read_manifest(input, &mut cur, size)?;
                cur.phase = Phase::Info;
                continue;
            }
            let addr = match &cur.keys {
                Some(k) => name
                    .strip_prefix(SEALED_CHUNK_PREFIX)
                    .and_then(|t| k.addr_of_chunk_token(&cur.header.session, t)),
                None => parse_chunk_member(&cur.header, &name),
            };
            let Some(addr) = addr else {
                return Err(damaged(&cur.at, &format!("unexpected member {name:?}")));
            };
            if cur.phase != Phase::Chunks {
                return Err(damaged(&cur.at, "chunk member after the manifest"));
            }
            self.read_chunk(input, &mut cur, addr, size)?;
        }
    }

    /// The next member's header block: its name and size (not yet checked against the
    /// canonical header).
    fn next_member<R: Read>(
        &mut self,
        input: &mut Input<R>,
        at: &StreamAt,
    ) -> Result<([u8; TAR_BLOCK], String, u64), StreamError> {
        let mut block = [0u8; TAR_BLOCK];
        let got = input.fill(&mut block).map_err(|source| StreamError::Read {
            at: at.clone(),
            source,
        })?;
        if got < TAR_BLOCK {
            return Err(StreamError::Truncated {
                at: at.clone(),
                detail: "input ends before the trailer".into(),
            });
        }
        if !checksum_ok(&block) {
            return Err(damaged(at, "a member header is damaged (bad checksum)"));
        }
        let h = tar::Header::from_byte_slice(&block);
        let name = String::from_utf8(h.path_bytes().into_owned())
            .map_err(|_| damaged(at, "member name is not UTF-8"))?;
        let size = h
            .size()
            .map_err(|_| damaged(at, "member size unreadable"))?;
        Ok((block, name, size))
    }

    /// After the plain first member `opening` of an encrypted stream: its key member
    /// (the chain's key, unlocked with the passphrase once per chain) and its sealed
    /// header.
    fn open_encrypted<R: Read>(
        &mut self,
        input: &mut Input<R>,
        opening: &[u8],
        trailer: &mut TrailerHash,
        at: &StreamAt,
    ) -> Result<(StreamHeader, Arc<ArchiveKeys>), StreamError> {
        let not_stream = |reason: String| StreamError::NotAStream {
            at: at.clone(),
            reason,
        };
        let enc = std::str::from_utf8(opening)
            .ok()
            .and_then(|t| t.lines().find_map(|l| l.strip_prefix("encryption=")));
        match enc {
            Some(AEAD_NAME) => {}
            Some(other) => {
                return Err(not_stream(format!(
                    "encryption {other:?} is not supported (this build reads {AEAD_NAME})"
                )))
            }
            None => return Err(not_stream("a format 2 header without encryption".into())),
        }
        let mut at = at.clone();
        let mut member = |me: &mut Self,
                          input: &mut Input<R>,
                          at: &mut StreamAt,
                          want: &str|
         -> Result<Vec<u8>, StreamError> {
            at.offset = input.offset;
            let (block, name, size) = me.next_member(input, at)?;
            if name != want {
                return Err(damaged(
                    at,
                    &format!("member {name:?} where {want} belongs"),
                ));
            }
            check_canonical(&block, want, size, 0, at)?;
            let content = me.read_small(input, size, at)?;
            trailer.member(want, size);
            trailer.content(&content);
            Ok(content)
        };
        let key_text = member(self, input, &mut at, KEY_MEMBER)?;
        let key_file =
            KeyFile::parse(&key_text).map_err(|e| damaged(&at, &format!("key member: {e}")))?;
        let keys = self.chain_keys(&key_file, &key_text, &at)?;
        let sealed = member(self, input, &mut at, SEALED_HEADER_MEMBER)?;
        let place = Place::StreamHead {
            volume_id: keys.archive(),
        };
        let text = keys
            .open(&place, &sealed)
            .map_err(|e| damaged(&at, &e.to_string()))?;
        let header = std::str::from_utf8(&text)
            .map_err(|_| "not text".to_string())
            .and_then(StreamHeader::parse)
            .map_err(|r| damaged(&at, &format!("sealed header: {r}")))?;
        if header.volume_id.as_deref() != Some(keys.archive()) {
            return Err(damaged(
                &at,
                &format!(
                    "the sealed header names chain {:?}, its key chain {}",
                    header.volume_id,
                    keys.archive()
                ),
            ));
        }
        Ok((header, keys))
    }

    /// The keys of the chain whose key file a stream carries: the chain's first
    /// stream sets them (asking for the passphrase), each later one must carry the key
    /// of the same chain.
    fn chain_keys(
        &mut self,
        key_file: &KeyFile,
        text: &[u8],
        at: &StreamAt,
    ) -> Result<Arc<ArchiveKeys>, StreamError> {
        if let Some(ck) = &self.chain_key {
            if key_file.archive != ck.id {
                return Err(StreamError::ForeignChain {
                    at: at.clone(),
                    expected: ck.id.clone(),
                    found: key_file.archive.clone(),
                });
            }
            if ck.text == text {
                return Ok(ck.keys.clone());
            }
        }
        let pass = match &self.passphrase {
            Some(p) => p.clone(),
            None => {
                let unlock = self.unlock.as_mut().ok_or_else(|| StreamError::Locked {
                    at: at.clone(),
                    reason: "no passphrase source was given".into(),
                })?;
                let p = unlock().map_err(|reason| StreamError::Locked {
                    at: at.clone(),
                    reason,
                })?;
                self.passphrase = Some(p.clone());
                p
            }
        };
        let keys = key_file.unlock(&pass).map_err(|e| match e {
            CryptoError::WrongPassphrase => StreamError::WrongPassphrase {
                at: at.clone(),
                chain: key_file.archive.clone(),
            },
            e => damaged(at, &format!("key member: {e}")),
        })?;
        let keys = Arc::new(keys);
        self.chain_key = Some(ChainKey {
            text: text.to_vec(),
            id: key_file.archive.clone(),
            keys: keys.clone(),
        });
        Ok(keys)
    }

    /// The chain rules, checked as soon as a stream's header is known, before it
    /// touches the sink.
    fn check_link(&self, header: &StreamHeader, at: &StreamAt) -> Result<(), StreamError> {
        let Some(prev) = self.streams.last() else {
            return match &header.base {
                None => Ok(()),
                Some(_) if self.incremental_start && self.sink.is_none() => Ok(()),
                Some(base) => Err(StreamError::NotFull {
                    at: at.clone(),
                    base: base.clone(),
                }),
            };
        };
        let p = &prev.header;
        if header.volume != p.volume {
            return Err(StreamError::ForeignVolume {
                at: at.clone(),
                expected: p.volume.clone(),
                found: header.volume.clone(),
            });
        }
        if header.chunksize != p.chunksize {
            return Err(StreamError::ChunkSize {
                at: at.clone(),
                expected: p.chunksize,
                found: header.chunksize,
            });
        }
        let broken = |reason: String| StreamError::BrokenChain {
            at: at.clone(),
            reason,
        };
        match &header.base {
            None => Err(broken(format!(
                "it is a full stream, but follows session {}",
                p.session
            ))),
            Some(base) if *base != p.session => Err(broken(format!(
                "it builds on session {base}, the previous stream is session {}",
                p.session
            ))),
            Some(_) if header.base_manifest_sha256 != Some(prev.info.manifest_sha256) => {
                Err(broken(format!(
                    "it builds on a session {} whose manifest differs from the previous \
                     stream's (a stream of another archive or source?)",
                    p.session
                )))
            }
            Some(_) => Ok(()),
        }
    }

    fn read_chunk<R: Read>(
        &mut self,
        input: &mut Input<R>,
        cur: &mut Current,
        addr: u64,
        size: u64,
    ) -> Result<(), StreamError> {
        let chunk_err = |at: &StreamAt, reason: String| StreamError::Chunk {
            at: at.clone(),
            addr,
            reason,
        };
        if cur.last_chunk.is_some_and(|l| addr <= l) {
            return Err(chunk_err(
                &cur.at,
                "chunk members out of address order".into(),
            ));
        }
        cur.last_chunk = Some(addr);
        let cs = cur.header.chunksize;
        if !multiple_of(addr, cs) || addr >= cur.header.volsize {
            return Err(chunk_err(
                &cur.at,
                "not a chunk address of the volume".into(),
            ));
        }
        if size > cur.codec.max_stored(cur.header.chunksize) {
            return Err(chunk_err(
                &cur.at,
                format!("member of {size} bytes is too large"),
            ));
        }
        let mut payload = std::mem::take(&mut self.buf);
        payload.resize(size as usize, 0);
        self.read_content(input, &mut payload, &cur.at)?;
        cur.trailer.content(&payload);
        let ctx = ChunkContext {
            volume: &cur.header.volume,
            session: &cur.header.session,
            addr,
            chunksize: cs,
        };
        let data = cur
            .codec
            .decode(&ctx, &payload)
            .map_err(|e| chunk_err(&cur.at, e.reason));
        self.buf = payload;
        let data = data?;
        cur.chunk_pairs.push(addr, &cur.codec.identify(&data));
        let len = (cur.header.volsize - addr).min(cs) as usize;
        self.sink_op(&cur.at, |s| s.write_at(addr, &data[..len]))
    }

    /// Stream the manifest member: hash it, check its lines, digest the data lines to
    /// match them with the chunk members, and apply the `0` lines.
    fn read_manifest<R: Read>(
        &mut self,
        input: &mut Input<R>,
        cur: &mut Current,
        size: u64,
    ) -> Result<(), StreamError> {
        let mut sha = Sha256::new();
        let mut split = LineSplitter::default();
        let mut last: Option<u64> = None;
        let mut piece = vec![0u8; COPY_PIECE];
        let at = cur.at.clone();
        let cs = cur.header.chunksize;
        let volsize = cur.header.volsize;
        // The content as it is stored (hashed for the trailer), and opened when sealed.
        let plain_size = match &cur.keys {
            Some(_) => plain_len(size).ok_or_else(|| {
                damaged(&at, "the sealed manifest has a length no sealed object has")
            })?,
            None => size,
        };
        let body = MemberBody {
            input: &mut *input,
            left: size,
            trailer: &mut cur.trailer,
        };
        let mut content: Box<dyn Read + '_> = match &cur.keys {
            Some(k) => Box::new(OpenReader::new(
                k,
                Place::Manifest {
                    session: &cur.header.session,
                },
                body,
            )),
            None => Box::new(body),
        };
        let mut left = plain_size;
        while left > 0 {
            let want = left.min(piece.len() as u64) as usize;
            let n = match content.read(&mut piece[..want]) {
                Ok(0) => return Err(damaged(&at, "the manifest ends early")),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(StreamError::Truncated {
                        at: at.clone(),
                        detail: "input ends inside a member".into(),
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    return Err(damaged(&at, &e.to_string()))
                }
                Err(source) => {
                    return Err(StreamError::Read {
                        at: at.clone(),
                        source,
                    })
                }
            };
            left -= n as u64;
            sha.update(&piece[..n]);
            let sink = &mut self.sink;
            let (lines, zeros, pairs) = (
                &mut cur.manifest_lines,
                &mut cur.zero_lines,
                &mut cur.manifest_pairs,
            );
            split.feed(
                &piece[..n],
                |line| {
                    let line_no = *lines + 1;
                    let bad = |r: String| damaged(&at, &format!("manifest line {line_no}: {r}"));
                    let e = Entry::parse(line).map_err(bad)?;
                    if last.is_some_and(|l| e.addr <= l) {
                        return Err(bad("address out of order".into()));
                    }
                    last = Some(e.addr);
                    if !multiple_of(e.addr, cs) {
                        return Err(bad("address is not a multiple of the chunk size".into()));
                    }
                    *lines += 1;
                    match e.hash {
                        Some(h) => {
                            if e.addr >= volsize {
                                return Err(bad("data chunk past the volume size".into()));
                            }
                            pairs.push(e.addr, &h);
                        }
                        None => {
                            *zeros += 1;
                            // Data and zero addresses of one session are disjoint, so
                            // zeroing now, after the chunks, is the same as in order.
                            if e.addr < volsize {
                                let len = (volsize - e.addr).min(cs);
                                if let Some(s) = sink.as_deref_mut() {
                                    s.zero(e.addr, len).map_err(|source| StreamError::Sink {
                                        at: at.clone(),
                                        source,
                                    })?;
                                }
                            }
                        }
                    }
                    Ok(())
                },
                || damaged(&at, "manifest line too long"),
                || damaged(&at, "manifest is not text"),
            )?;
        }
        if cur.keys.is_some() {
            // The last segment's tag: it says the sealed manifest ends here.
            let mut end = [0u8; 1];
            match content.read(&mut end) {
                Ok(0) => {}
                Ok(_) => return Err(damaged(&at, "the manifest is longer than its member")),
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(StreamError::Truncated {
                        at: at.clone(),
                        detail: "input ends inside a member".into(),
                    })
                }
                Err(e) => return Err(damaged(&at, &e.to_string())),
            }
        }
        drop(content);
        if !split.is_clean() {
            return Err(damaged(&at, "manifest's last line has no newline"));
        }
        self.read_padding(input, size, &at)?;
        cur.manifest_sha = Some(sha.finalize().into());
        Ok(())
    }

    /// The info member: its own checksum, agreement with the header, the manifest's
    /// hash, and then the verdict on chunk members against the manifest (checked after
    /// the manifest's hash, so an altered manifest is reported as such).
    fn check_info(&mut self, cur: &mut Current, text: &[u8]) -> Result<(), StreamError> {
        let at = &cur.at;
        let text = std::str::from_utf8(text).map_err(|_| damaged(at, "info is not text"))?;
        let name = cur.header.info_member();
        let info = SessionInfo::parse(text, std::path::Path::new(&name))
            .map_err(|e| damaged(at, &e.to_string()))?;
        cur.header.agrees_with(&info).map_err(|r| damaged(at, &r))?;
        if cur.manifest_sha != Some(info.manifest_sha256) {
            return Err(StreamError::ManifestHash { at: at.clone() });
        }
        if info.changed != cur.manifest_lines {
            return Err(damaged(
                at,
                &format!(
                    "the manifest has {} lines, the info says changed={}",
                    cur.manifest_lines, info.changed
                ),
            ));
        }
        let what = if cur.header.encrypted() {
            "keyed identity"
        } else {
            "SHA-256"
        };
        let chunks = std::mem::replace(&mut cur.chunk_pairs, PairDigest::new());
        let lines = std::mem::replace(&mut cur.manifest_pairs, PairDigest::new());
        match chunks.compare(lines) {
            Ok(()) => {}
            Err(PairMismatch::Content(Some(addr))) => {
                return Err(StreamError::Chunk {
                    at: at.clone(),
                    addr,
                    reason: format!("{what} differs from its manifest line"),
                })
            }
            Err(PairMismatch::Content(None)) => {
                return Err(StreamError::ChunksVsManifest {
                    at: at.clone(),
                    reason: format!("several chunks' {what} differ from their manifest lines"),
                })
            }
            Err(PairMismatch::Addresses { members, lines }) => {
                return Err(StreamError::ChunksVsManifest {
                    at: at.clone(),
                    reason: format!(
                        "{members} chunk members, {lines} data lines, not the same addresses"
                    ),
                })
            }
        }
        cur.info = Some(info);
        Ok(())
    }

    /// After the trailer: the two zero blocks that end a tar archive.
    fn end_of_archive<R: Read>(
        &mut self,
        input: &mut Input<R>,
        cur: Current,
    ) -> Result<StreamSummary, StreamError> {
        let mut at = cur.at.clone();
        at.offset = input.offset;
        let mut eoa = [0u8; 2 * TAR_BLOCK];
        let got = input.fill(&mut eoa).map_err(|source| StreamError::Read {
            at: at.clone(),
            source,
        })?;
        if got < eoa.len() {
            return Err(StreamError::Truncated {
                at,
                detail: "end-of-archive blocks missing".into(),
            });
        }
        if eoa.iter().any(|&b| b != 0) {
            return Err(damaged(&at, "end-of-archive blocks are not zero"));
        }
        let info = cur
            .info
            .ok_or_else(|| damaged(&at, "no info before the trailer"))?;
        Ok(StreamSummary {
            data_chunks: info.changed.saturating_sub(cur.zero_lines),
            zero_lines: cur.zero_lines,
            bytes: input.offset - cur.start,
            header: cur.header,
            info,
        })
    }

    fn sink_op(
        &mut self,
        at: &StreamAt,
        f: impl FnOnce(&mut dyn VolumeSink) -> io::Result<()>,
    ) -> Result<(), StreamError> {
        match self.sink.as_deref_mut() {
            Some(s) => f(s).map_err(|source| StreamError::Sink {
                at: at.clone(),
                source,
            }),
            None => Ok(()),
        }
    }

    /// A small member's content (header, info, trailer) and its padding.
    fn read_small<R: Read>(
        &mut self,
        input: &mut Input<R>,
        size: u64,
        at: &StreamAt,
    ) -> Result<Vec<u8>, StreamError> {
        if size > MAX_SMALL_MEMBER {
            return Err(damaged(at, &format!("member of {size} bytes is too large")));
        }
        let mut v = vec![0u8; size as usize];
        self.read_content(input, &mut v, at)?;
        Ok(v)
    }

    /// Content and the zero padding after it.
    fn read_content<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut [u8],
        at: &StreamAt,
    ) -> Result<(), StreamError> {
        self.read_exact(input, buf, at)?;
        self.read_padding(input, buf.len() as u64, at)
    }

    fn read_padding<R: Read>(
        &mut self,
        input: &mut Input<R>,
        size: u64,
        at: &StreamAt,
    ) -> Result<(), StreamError> {
        let mut pad = [0u8; TAR_BLOCK];
        let pad = &mut pad[..padding(size)];
        self.read_exact(input, pad, at)?;
        if pad.iter().any(|&b| b != 0) {
            return Err(damaged(at, "member padding is not zero"));
        }
        Ok(())
    }

    fn read_exact<R: Read>(
        &mut self,
        input: &mut Input<R>,
        buf: &mut [u8],
        at: &StreamAt,
    ) -> Result<(), StreamError> {
        let got = input.fill(buf).map_err(|source| StreamError::Read {
            at: at.clone(),
            source,
        })?;
        if got < buf.len() {
            return Err(StreamError::Truncated {
                at: at.clone(),
                detail: "input ends inside a member".into(),
            });
        }
        Ok(())
    }
}

/// The `format` of a stream's first member, if it has one.
fn opening_format(text: &[u8]) -> Option<&str> {
    std::str::from_utf8(text)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("format="))
}

/// A member's stored content, read from the input exactly, hashed for the trailer on
/// the way. Ends early only with an error of kind `UnexpectedEof`.
struct MemberBody<'i, R> {
    input: &'i mut Input<R>,
    left: u64,
    trailer: &'i mut TrailerHash,
}

impl<R: Read> Read for MemberBody<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.left) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = self.input.fill(&mut buf[..n])?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "input ends inside a member",
            ));
        }
        self.trailer.content(&buf[..got]);
        self.left -= got as u64;
        Ok(got)
    }
}

fn damaged(at: &StreamAt, reason: &str) -> StreamError {
    StreamError::Damaged {
        at: at.clone(),
        reason: reason.to_string(),
    }
}

/// The ustar checksum: the sum of the header's bytes with the checksum field taken as
/// spaces, stored as octal.
fn checksum_ok(block: &[u8; TAR_BLOCK]) -> bool {
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                b as u32
            }
        })
        .sum();
    tar::Header::from_byte_slice(block)
        .cksum()
        .is_ok_and(|c| c == sum)
}

/// A member header must be exactly the one the writer makes for its name, size and
/// the session time; any other byte there means the stream was altered.
fn check_canonical(
    block: &[u8; TAR_BLOCK],
    name: &str,
    size: u64,
    mtime: u64,
    at: &StreamAt,
) -> Result<(), StreamError> {
    match member_header(name, size, mtime) {
        Ok(h) if h.as_bytes() == block => Ok(()),
        _ => Err(damaged(
            at,
            &format!("header of member {name:?} is not as a sparsebak writer makes it"),
        )),
    }
}

/// The address of a chunk member `S_<id>/x<prefix>/x<addr>` of this session.
fn parse_chunk_member(header: &StreamHeader, name: &str) -> Option<u64> {
    let rest = name
        .strip_prefix(&layout::session_dir_name(&header.session))?
        .strip_prefix('/')?;
    let (prefix, file) = rest.split_once('/')?;
    let addr = layout::parse_chunk_name(file)?;
    (prefix == layout::prefix_name(addr)).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk;
    use crate::manifest::ManifestWriter;
    use std::process::Command;

    const CS: u64 = 4096;

    fn sid(i: usize) -> String {
        format!("20260101-0000{i:02}")
    }

    /// The chunk at `addr` of a volume image, zero-padded to the chunk size.
    fn padded(v: &[u8], addr: u64) -> Vec<u8> {
        let mut c = vec![0u8; CS as usize];
        if addr < v.len() as u64 {
            let end = (addr + CS).min(v.len() as u64);
            c[..(end - addr) as usize].copy_from_slice(&v[addr as usize..end as usize]);
        }
        c
    }

    /// Turn successive versions of a volume into streams: stream i records what
    /// differs between the view of version i-1 and version i, as a send would.
    fn make_streams(vol: &str, versions: &[Vec<u8>], codec: Codec, block: usize) -> Vec<Vec<u8>> {
        make_streams_with(vol, versions, codec, block, None)
    }

    fn make_streams_with(
        vol: &str,
        versions: &[Vec<u8>],
        codec: Codec,
        block: usize,
        crypt: Option<&StreamCrypt>,
    ) -> Vec<Vec<u8>> {
        let sealed = crypt.map(|c| {
            codec::Sealed::new(
                c.keys.clone(),
                c.keys.archive(),
                codec::Plain::new(codec, 3),
            )
        });
        let mut out = Vec::new();
        let mut prev: Option<(&Vec<u8>, SessionInfo)> = None;
        for (i, v) in versions.iter().enumerate() {
            let volsize = v.len() as u64;
            let mut mw = ManifestWriter::new(Vec::new());
            let mut payloads = Vec::new();
            let mut in_view = 0;
            let mut stored = 0;
            for addr in (0..volsize).step_by(CS as usize) {
                let cur = padded(v, addr);
                let zero = chunk::is_zero(&cur);
                in_view += u64::from(!zero);
                let changed = match &prev {
                    None => !zero,
                    Some((p, _)) => padded(p, addr) != cur,
                };
                if !changed {
                    continue;
                }
                let hash = (!zero).then(|| match &sealed {
                    Some(c) => c.identify(&cur),
                    None => chunk::hash(&cur),
                });
                mw.push(&Entry { addr, hash }).unwrap();
                if !zero {
                    let ctx = ChunkContext {
                        volume: vol,
                        session: &sid(i + 1),
                        addr,
                        chunksize: CS,
                    };
                    let enc = match (&sealed, codec) {
                        (Some(c), _) => c.encode(&ctx, &cur).unwrap(),
                        (None, Codec::None) => cur.clone(),
                        (None, Codec::Zstd) => zstd::bulk::compress(&cur, 3).unwrap(),
                    };
                    stored += enc.len() as u64;
                    payloads.push((addr, enc));
                }
            }
            let changed = mw.count();
            let (manifest, msha) = mw.finish().unwrap();
            let info = SessionInfo {
                volume: vol.into(),
                session: sid(i + 1),
                previous: prev.as_ref().map(|(_, p)| p.session.clone()),
                time: 1_767_225_600 + i as i64,
                volsize,
                chunksize: CS,
                compression: codec,
                changed,
                chunks: in_view,
                bytes_read: volsize,
                bytes_stored: stored,
                manifest_sha256: msha,
                volume_id: crypt.map(|c| c.keys.archive().to_string()),
            };
            let mut header =
                StreamHeader::for_session(&info, prev.as_ref().map(|(_, p)| p.manifest_sha256));
            let mut w = match crypt {
                Some(c) => {
                    header.volume_id = Some(c.keys.archive().to_string());
                    StreamWriter::encrypted(Vec::new(), header, block, c.clone()).unwrap()
                }
                None => StreamWriter::with_block_size(Vec::new(), header, block).unwrap(),
            };
            for (addr, p) in &payloads {
                w.put_chunk(*addr, p).unwrap();
            }
            let (bytes, n) = w.finish(&manifest, &info).unwrap();
            assert_eq!(n, bytes.len() as u64);
            out.push(bytes);
            prev = Some((v, info));
        }
        out
    }

    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed.wrapping_mul(2_654_435_761) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect()
    }

    /// Versions exercising every rule: partial last chunk, data becoming zero, growth,
    /// a shrink then a grow (the regrown part must be zeros), and no change at all.
    fn versions() -> Vec<Vec<u8>> {
        let cs = CS as usize;
        let mut v1 = pattern(10 * cs + 1000, 1);
        v1[4 * cs..5 * cs].fill(0);
        let mut v2 = v1.clone();
        v2[2 * cs + 7] ^= 0xff;
        v2[3 * cs..4 * cs].fill(0);
        v2.resize(14 * cs + 17, 0);
        v2[12 * cs..14 * cs + 17].copy_from_slice(&pattern(2 * cs + 17, 2));
        let mut v3 = v2.clone();
        v3.truncate(5 * cs + 100);
        let mut v4 = v3.clone();
        v4.resize(12 * cs, 0);
        v4[9 * cs..10 * cs].copy_from_slice(&pattern(cs, 3));
        let v5 = v4.clone();
        vec![v1, v2, v3, v4, v5]
    }

    /// Small versions for the byte-by-byte tests.
    fn small_versions() -> Vec<Vec<u8>> {
        let cs = CS as usize;
        let v1 = pattern(3 * cs + 10, 7);
        let mut v2 = v1.clone();
        v2[cs..2 * cs].fill(0);
        v2[10] ^= 1;
        vec![v1, v2]
    }

    fn rebuild(input: &[u8]) -> Result<(ChainSummary, Vec<u8>), StreamError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut sink = FileSink::new(f.reopen().unwrap()).unwrap();
        let sum = read_chain(input, Some(&mut sink))?;
        Ok((sum, std::fs::read(f.path()).unwrap()))
    }

    fn cat(parts: &[&Vec<u8>]) -> Vec<u8> {
        parts.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn chains_rebuild_every_version() {
        let vs = versions();
        for codec in [Codec::None, Codec::Zstd] {
            let streams = make_streams("vm-a", &vs, codec, 10240);
            for k in 1..=vs.len() {
                let all: Vec<u8> = streams[..k].concat();
                let (sum, bytes) = rebuild(&all).unwrap();
                assert_eq!(bytes, vs[k - 1], "{codec:?} after {k} streams");
                assert_eq!(sum.streams.len(), k);
                assert_eq!(sum.last().header.session, sid(k));
                assert_eq!(sum.last().info.volsize, vs[k - 1].len() as u64);
                // Verify only: no sink.
                assert_eq!(read_chain(&all[..], None).unwrap(), sum);
            }
            // The same chain from separate inputs.
            let f = tempfile::NamedTempFile::new().unwrap();
            let mut sink = FileSink::new(f.reopen().unwrap()).unwrap();
            let mut r = ChainReader::new(Some(&mut sink));
            for s in &streams {
                assert_eq!(r.read(&s[..]).unwrap(), 1);
            }
            assert_eq!(r.finish().unwrap().streams().len(), vs.len());
            assert_eq!(std::fs::read(f.path()).unwrap(), vs[vs.len() - 1]);
        }
    }

    #[test]
    fn summary_counts() {
        let vs = versions();
        let streams = make_streams("vm-a", &vs, Codec::Zstd, 10240);
        let (sum, _) = rebuild(&streams.concat()).unwrap();
        // v2: chunk 2 changed, chunk 3 zeroed, chunks 12..=14 new; chunk 10 keeps v1's
        // partial tail and 11 grew as zeros, so neither is recorded.
        let s2 = &sum.streams[1];
        assert_eq!(s2.zero_lines, 1);
        assert_eq!(s2.data_chunks, 4);
        assert_eq!(sum.streams[4].info.changed, 0);
        for (s, bytes) in sum.streams.iter().zip(&streams) {
            assert!(s.bytes <= bytes.len() as u64);
            assert_eq!(s.bytes % TAR_BLOCK as u64, 0);
        }
    }

    /// Records the length of every write it gets.
    struct WriteSizes(Vec<usize>);
    impl Write for WriteSizes {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.push(b.len());
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn whole_records_only() {
        let vs = versions();
        for block in [DEFAULT_BLOCK_SIZE, 10240, 512] {
            for s in make_streams("vm-a", &vs, Codec::Zstd, block) {
                assert_eq!(s.len() % block, 0, "block {block}");
            }
        }
        // Through `new` (the default record size), every write is exactly one record.
        let info = {
            let s = make_streams("vm-a", &vs[..1], Codec::None, 512);
            read_chain(&s[0][..], None).unwrap().last().info.clone()
        };
        let header = StreamHeader::for_session(&info, None);
        let mut w = StreamWriter::new(WriteSizes(Vec::new()), header).unwrap();
        let mut mw = ManifestWriter::new(Vec::new());
        for addr in (0..info.volsize).step_by(CS as usize) {
            let c = padded(&vs[0], addr);
            if !chunk::is_zero(&c) {
                mw.push(&Entry {
                    addr,
                    hash: Some(chunk::hash(&c)),
                })
                .unwrap();
                w.put_chunk(addr, &c).unwrap();
            }
        }
        let (m, _) = mw.finish().unwrap();
        let (sizes, n) = w.finish(&m, &info).unwrap();
        assert!(sizes.0.iter().all(|&s| s == DEFAULT_BLOCK_SIZE));
        assert_eq!(n, (sizes.0.len() * DEFAULT_BLOCK_SIZE) as u64);

        for bad in [0, 1000, 511] {
            assert!(matches!(
                RecordWriter::new(Vec::new(), bad),
                Err(StreamError::BlockSize(_))
            ));
        }
        let mut r = RecordWriter::new(Vec::new(), 1024).unwrap();
        r.write_all(&[1; 1500]).unwrap();
        assert_eq!((r.bytes_written(), r.pending()), (1024, 476));
        let (v, n) = r.finish().unwrap();
        assert_eq!((v.len(), n), (2048, 2048));
        assert!(v[1500..].iter().all(|&b| b == 0));
        let (v, n) = RecordWriter::new(Vec::new(), 1024)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!((v.len(), n), (0, 0));
    }

    /// Offsets worth testing in `len` bytes: around every 512-byte block boundary
    /// (where headers, padding and member ends lie), plus a stride through the rest.
    fn probe_offsets(len: usize) -> Vec<usize> {
        let mut v: Vec<usize> = (0..len)
            .filter(|o| {
                matches!(o % 512, 0 | 1 | 2 | 100 | 124 | 148 | 155 | 257 | 511) || o % 37 == 0
            })
            .collect();
        v.dedup();
        v
    }

    #[test]
    fn truncation_fails_or_yields_an_earlier_session_exactly() {
        let vs = small_versions();
        for codec in [Codec::None, Codec::Zstd] {
            let streams = make_streams("vm-a", &vs, codec, 2048);
            let all = cat(&[&streams[0], &streams[1]]);
            let (sum, _) = rebuild(&all).unwrap();
            // Where each stream's end-of-archive blocks end.
            let end1 = sum.streams[0].bytes as usize;
            let end2 = streams[0].len() + sum.streams[1].bytes as usize;
            let mut ok = 0;
            for cut in probe_offsets(all.len()).into_iter().chain([end1, end2]) {
                match rebuild(&all[..cut]) {
                    Err(e) => {
                        if cut > 0 {
                            assert!(e.to_string().starts_with("stream "), "{e}");
                        }
                        assert!(
                            cut < end1 || (cut >= streams[0].len() && cut < end2) || cut % 512 != 0,
                            "cut {cut} failed: {e}"
                        );
                    }
                    Ok((s, bytes)) => {
                        ok += 1;
                        let n = s.streams.len();
                        assert!(cut >= if n == 1 { end1 } else { end2 }, "cut {cut}");
                        assert_eq!(bytes, vs[n - 1], "cut {cut}");
                    }
                }
            }
            assert!(ok > 0);
            // Everything before the last stream's end-of-archive is required.
            for cut in [end2 - 1, end2 - 512, end2 - 1024, streams[0].len() + 1] {
                assert!(rebuild(&all[..cut]).is_err(), "cut {cut}");
            }
            assert!(matches!(rebuild(&[]), Err(StreamError::Empty)));
        }
    }

    #[test]
    fn truncation_error_names_stream_and_session() {
        let vs = small_versions();
        let streams = make_streams("vm-a", &vs, Codec::None, 512);
        let all = cat(&[&streams[0], &streams[1]]);
        let cut = streams[0].len() + 3000;
        let e = rebuild(&all[..cut]).unwrap_err();
        assert!(matches!(e, StreamError::Truncated { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("stream 2 (session 20260101-000002)"), "{msg}");
    }

    #[test]
    fn any_flipped_byte_fails() {
        let vs = small_versions();
        for codec in [Codec::None, Codec::Zstd] {
            let streams = make_streams("vm-a", &vs, codec, 2048);
            let all = cat(&[&streams[0], &streams[1]]);
            for off in probe_offsets(all.len()) {
                for x in [0x01u8, 0x80, 0x20] {
                    let mut bad = all.clone();
                    bad[off] ^= x;
                    let r = rebuild(&bad);
                    assert!(r.is_err(), "{codec:?}: flip {x:#x} at {off} accepted");
                }
            }
        }
    }

    // -----------------------------------------------------------------------------
    // Encrypted streams (format 2)

    const FAST: crate::crypto::KdfParams = crate::crypto::KdfParams {
        m_kib: 8192,
        t: 1,
        p: 1,
    };

    fn chain_crypt(id: &str, pass: &str) -> StreamCrypt {
        let master = crate::crypto::MasterKey::generate().unwrap();
        let key_file = KeyFile::wrap(id, &master, &Passphrase::new(pass.into()), FAST).unwrap();
        StreamCrypt {
            keys: Arc::new(ArchiveKeys::derive(&master, id)),
            key_file,
        }
    }

    fn rebuild_with(
        input: &[u8],
        pass: &str,
        asked: &std::cell::Cell<u32>,
    ) -> Result<(ChainSummary, Vec<u8>), StreamError> {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut sink = FileSink::new(f.reopen().unwrap()).unwrap();
        let unlock: Unlock<'_> = Box::new(|| {
            asked.set(asked.get() + 1);
            Ok(Passphrase::new(pass.to_string()))
        });
        let sum = read_chain_with(input, Some(&mut sink), Some(unlock))?;
        Ok((sum, std::fs::read(f.path()).unwrap()))
    }

    /// The tar members of one stream: (name, offset of its header block, size).
    fn members(stream: &[u8]) -> Vec<(String, usize, usize)> {
        let mut v = Vec::new();
        let mut off = 0;
        while off + TAR_BLOCK <= stream.len() {
            let block: &[u8; TAR_BLOCK] = stream[off..off + TAR_BLOCK].try_into().unwrap();
            if block.iter().all(|&b| b == 0) {
                break;
            }
            let h = tar::Header::from_byte_slice(block);
            let name = String::from_utf8(h.path_bytes().into_owned()).unwrap();
            let size = h.size().unwrap() as usize;
            v.push((name, off, size));
            off += TAR_BLOCK + size + padding(size as u64);
        }
        v
    }

    #[test]
    fn encrypted_chains_rebuild_every_version_and_ask_once() {
        let vs = versions();
        for codec in [Codec::None, Codec::Zstd] {
            let c = chain_crypt("5f1c2a9e-0000-4000-8000-000000000001", "pw");
            let streams = make_streams_with("vm-a", &vs, codec, 4096, Some(&c));
            for n in 1..=streams.len() {
                let parts: Vec<&Vec<u8>> = streams[..n].iter().collect();
                let asked = std::cell::Cell::new(0);
                let (sum, got) = rebuild_with(&cat(&parts), "pw", &asked).unwrap();
                assert_eq!(asked.get(), 1, "the passphrase is asked once per chain");
                assert_eq!(got, vs[n - 1], "{codec:?}: chain of {n}");
                assert_eq!(sum.last().info.session, sid(n));
                assert_eq!(
                    sum.last().header.volume_id.as_deref(),
                    Some(c.keys.archive())
                );
            }
        }
    }

    #[test]
    fn encrypted_streams_hide_names_times_and_hashes() {
        let vs = versions();
        let c = chain_crypt("5f1c2a9e-0000-4000-8000-000000000002", "pw");
        let streams = make_streams_with("secret-volume", &vs, Codec::Zstd, 4096, Some(&c));
        let plain = make_streams("secret-volume", &vs, Codec::Zstd, 4096);
        let found = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        // The plain stream shows them (so the search below can find them at all).
        assert!(found(&plain[0], b"secret-volume"));
        assert!(found(&plain[0], sid(1).as_bytes()));
        for (i, s) in streams.iter().enumerate() {
            assert!(!found(s, b"secret-volume"), "stream {i}");
            assert!(!found(s, sid(i + 1).as_bytes()), "stream {i}");
            assert!(!found(s, b"x0000000000001000"), "stream {i}");
            let chunk = padded(&vs[i], 0);
            let sha = chunk::hash(&chunk);
            assert!(!found(s, &sha));
            assert!(!found(s, hex::encode(sha).as_bytes()));
            assert!(!found(s, &chunk[..64]), "stream {i}: plain chunk bytes");
            let names: Vec<String> = members(s).into_iter().map(|m| m.0).collect();
            assert_eq!(
                names[..3],
                [HEADER_MEMBER, KEY_MEMBER, SEALED_HEADER_MEMBER]
            );
            let n = names.len();
            assert_eq!(
                names[n - 3..],
                [SEALED_MANIFEST_MEMBER, SEALED_INFO_MEMBER, TRAILER_MEMBER]
            );
            for name in &names[3..n - 3] {
                let tok = name.strip_prefix(SEALED_CHUNK_PREFIX).unwrap();
                assert!(crate::crypto::keys::looks_like_token(tok), "{name}");
            }
            // Every member's tar time is 0: the session time does not show.
            for (_, off, _) in members(s) {
                let block: &[u8; TAR_BLOCK] = s[off..off + TAR_BLOCK].try_into().unwrap();
                assert_eq!(tar::Header::from_byte_slice(block).mtime().unwrap(), 0);
            }
        }
        // The first member says what the stream is, in plain.
        let (_, off, size) = members(&streams[0])[0].clone();
        assert_eq!(
            &streams[0][off + TAR_BLOCK..off + TAR_BLOCK + size],
            b"format=sparsebak-stream 2\nencryption=aes-256-gcm\n"
        );
    }

    #[test]
    fn encrypted_streams_refuse_wrong_keys_other_chains_and_damage() {
        let vs = small_versions();
        let c = chain_crypt("5f1c2a9e-0000-4000-8000-000000000003", "pw");
        let streams = make_streams_with("vm-a", &vs, Codec::Zstd, 512, Some(&c));
        let asked = std::cell::Cell::new(0);
        match rebuild_with(&streams[0], "wrong", &asked) {
            Err(StreamError::WrongPassphrase { chain, .. }) => {
                assert_eq!(chain, c.keys.archive())
            }
            other => panic!("{other:?}"),
        }
        // No passphrase source at all.
        match rebuild(&streams[0]) {
            Err(StreamError::Locked { reason, .. }) => assert!(reason.contains("passphrase")),
            other => panic!("{other:?}"),
        }
        // A stream of another chain (same volume, same sessions) is refused naming both.
        let other = chain_crypt("5f1c2a9e-0000-4000-8000-000000000004", "pw");
        let foreign = make_streams_with("vm-a", &vs, Codec::Zstd, 512, Some(&other));
        match rebuild_with(&cat(&[&streams[0], &foreign[1]]), "pw", &asked) {
            Err(StreamError::ForeignChain {
                at,
                expected,
                found,
            }) => {
                assert_eq!(at.stream, 2);
                assert_eq!(expected, c.keys.archive());
                assert_eq!(found, other.keys.archive());
            }
            other => panic!("{other:?}"),
        }
        // Plain and encrypted streams do not mix in one chain.
        let plain = make_streams("vm-a", &vs, Codec::Zstd, 512);
        let e = rebuild_with(&cat(&[&streams[0], &plain[1]]), "pw", &asked).unwrap_err();
        assert!(matches!(e, StreamError::BrokenChain { .. }), "{e:?}");
        // Any flipped byte fails: in a header block, in a member's content, in
        // padding (each probe unwraps the key again, so a few per block).
        let all = cat(&[&streams[0], &streams[1]]);
        let spots = |len: usize| -> Vec<usize> {
            (0..len)
                .filter(|o| matches!(o % 512, 0 | 124 | 148 | 300 | 511))
                .collect()
        };
        for off in spots(all.len()) {
            let mut bad = all.clone();
            bad[off] ^= 0x20;
            assert!(
                rebuild_with(&bad, "pw", &asked).is_err(),
                "flip at {off} accepted"
            );
        }
        // Two chunk members swapped (names with their contents): the order is wrong.
        let raw = make_streams_with("vm-a", &vs, Codec::None, 512, Some(&c));
        let s = &raw[0];
        let m = members(s);
        let chunks: Vec<&(String, usize, usize)> = m
            .iter()
            .filter(|x| x.0.starts_with(SEALED_CHUNK_PREFIX))
            .collect();
        let (a, b) = (chunks[0], chunks[1]);
        assert_eq!(a.2, b.2, "same-size members");
        let len = TAR_BLOCK + a.2 + padding(a.2 as u64);
        let mut swapped = s.clone();
        swapped[a.1..a.1 + len].copy_from_slice(&s[b.1..b.1 + len]);
        swapped[b.1..b.1 + len].copy_from_slice(&s[a.1..a.1 + len]);
        let e = rebuild_with(&swapped, "pw", &asked).unwrap_err();
        assert!(e.to_string().contains("out of address order"), "{e}");
        // Contents swapped, names kept: each is sealed for its own address.
        let mut swapped = s.clone();
        let (ca, cb) = (a.1 + TAR_BLOCK, b.1 + TAR_BLOCK);
        swapped[ca..ca + a.2].copy_from_slice(&s[cb..cb + b.2]);
        swapped[cb..cb + b.2].copy_from_slice(&s[ca..ca + a.2]);
        let e = rebuild_with(&swapped, "pw", &asked).unwrap_err();
        assert!(e.to_string().contains("authentication"), "{e}");
        // Truncated anywhere: never a wrong volume.
        for cut in (0..streams[0].len()).filter(|o| matches!(o % 512, 0 | 300)) {
            let r = rebuild_with(&streams[0][..cut], "pw", &asked);
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn flipped_chunk_byte_names_the_chunk() {
        let vs = small_versions();
        let streams = make_streams("vm-a", &vs, Codec::None, 512);
        // Stream 1: header member (2 blocks), then chunk 0 (1 + 8 blocks), chunk 1.
        let chunk1_content = 512 * 2 + 512 * 9 + 512;
        let mut bad = streams[0].clone();
        bad[chunk1_content + 100] ^= 4;
        match rebuild(&bad) {
            Err(StreamError::Chunk { at, addr, reason }) => {
                assert_eq!(addr, CS);
                assert_eq!(at.stream, 1);
                assert_eq!(at.session.as_deref(), Some(sid(1).as_str()));
                assert!(reason.contains("SHA-256"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chain_rules() {
        let vs = versions();
        let s = make_streams("vm-a", &vs, Codec::Zstd, 512);
        // Reordered.
        let e = rebuild(&cat(&[&s[0], &s[2], &s[1]])).unwrap_err();
        assert!(
            matches!(&e, StreamError::BrokenChain { at, .. } if at.stream == 2),
            "{e}"
        );
        assert!(e.to_string().contains(&sid(2)), "{e}");
        // Repeated.
        let e = rebuild(&cat(&[&s[0], &s[1], &s[1]])).unwrap_err();
        assert!(
            matches!(&e, StreamError::BrokenChain { at, .. } if at.stream == 3),
            "{e}"
        );
        // A full stream in the middle.
        let e = rebuild(&cat(&[&s[0], &s[0]])).unwrap_err();
        assert!(matches!(e, StreamError::BrokenChain { .. }), "{e}");
        // Missing the full stream.
        let e = rebuild(&cat(&[&s[1], &s[2]])).unwrap_err();
        assert!(
            matches!(&e, StreamError::NotFull { at, base } if at.stream == 1 && *base == sid(1)),
            "{e}"
        );
        let mut r = ChainReader::new(None);
        r.read(&s[0][..]).unwrap();
        assert!(matches!(
            r.read(&s[2][..]),
            Err(StreamError::BrokenChain { .. })
        ));
        // A reader that only describes sessions may start at an incremental stream,
        // and still holds the streams after it to the chain rules.
        let mut r = ChainReader::new(None).starting_incremental();
        assert_eq!(r.read(&s[1][..]).unwrap(), 1);
        assert_eq!(r.streams()[0].header.base.as_deref(), Some(sid(1).as_str()));
        assert_eq!(r.read(&s[2][..]).unwrap(), 1);
        assert!(matches!(
            r.read(&s[1][..]),
            Err(StreamError::BrokenChain { .. })
        ));
        // With a sink the first stream must be a full one whatever was asked.
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut sink = FileSink::new(f.reopen().unwrap()).unwrap();
        let mut r = ChainReader::new(Some(&mut sink)).starting_incremental();
        assert!(matches!(
            r.read(&s[1][..]),
            Err(StreamError::NotFull { .. })
        ));

        // Foreign: another volume with the same session IDs.
        let b = make_streams("vm-b", &vs, Codec::Zstd, 512);
        let e = rebuild(&cat(&[&s[0], &b[1]])).unwrap_err();
        assert!(
            matches!(&e, StreamError::ForeignVolume { at, .. } if at.stream == 2),
            "{e}"
        );
        // Same volume name, other content: the base's manifest differs.
        let mut other = vs.clone();
        other[0][5] ^= 1;
        let o = make_streams("vm-a", &other, Codec::Zstd, 512);
        let e = rebuild(&cat(&[&s[0], &o[1]])).unwrap_err();
        assert!(matches!(e, StreamError::BrokenChain { .. }), "{e}");
        // Another chunk size: a stream's beginning made by hand suffices, the reader
        // refuses it at its header.
        let first = read_chain(&s[0][..], None).unwrap();
        let mut h =
            StreamHeader::for_session(&first.last().info, Some(first.last().info.manifest_sha256));
        h.session = sid(2);
        h.base = Some(sid(1));
        h.chunksize = 2 * CS;
        let text = h.to_text();
        let mut t = member_header(HEADER_MEMBER, text.len() as u64, h.mtime())
            .unwrap()
            .as_bytes()
            .to_vec();
        t.extend_from_slice(text.as_bytes());
        t.resize(t.len() + padding(text.len() as u64), 0);
        let e = rebuild(&cat(&[&s[0], &t])).unwrap_err();
        assert!(
            matches!(&e, StreamError::ChunkSize { at, expected, found }
            if at.stream == 2 && *expected == CS && *found == 2 * CS),
            "{e}"
        );
    }

    #[test]
    fn header_numbers_are_bounded() {
        let h = StreamHeader {
            volume: "vm-a".into(),
            session: sid(1),
            volsize: 1 << 20,
            chunksize: 65536,
            compression: Codec::Zstd,
            time: 1_767_225_601,
            base: None,
            base_manifest_sha256: None,
            volume_id: None,
        };
        let t = h.to_text();
        assert_eq!(
            StreamHeader::parse(&t.replace("chunksize=65536", "chunksize=1099511627776")),
            Err("bad chunksize 1099511627776".into())
        );
        assert_eq!(
            StreamHeader::parse(&t.replace("volsize=1048576", "volsize=18446744073709551615")),
            Err(
                "volsize 18446744073709551615 is larger than the largest volume \
                 (1152921504606846976)"
                    .into()
            )
        );
        // A stream whose header announces 1 GiB chunks, then a chunk member of 1 GiB:
        // refused at the header, before the member could make the reader allocate.
        let text = t
            .replace("chunksize=65536", "chunksize=1073741824")
            .replace("volsize=1048576", "volsize=2147483648");
        let mut s = Vec::new();
        let hh = member_header(HEADER_MEMBER, text.len() as u64, h.mtime()).unwrap();
        s.extend_from_slice(hh.as_bytes());
        s.extend_from_slice(text.as_bytes());
        s.resize(s.len() + padding(text.len() as u64), 0);
        let ch = member_header(&h.chunk_member(0), 1 << 30, h.mtime()).unwrap();
        s.extend_from_slice(ch.as_bytes());
        let e = rebuild(&s).unwrap_err();
        assert!(
            matches!(&e, StreamError::NotAStream { reason, .. }
                if reason == "header member: bad chunksize 1073741824"),
            "{e}"
        );
    }

    #[test]
    fn not_a_stream() {
        let e = rebuild(&pattern(4096, 9)).unwrap_err();
        assert!(
            matches!(&e, StreamError::NotAStream { at, .. } if at.stream == 1),
            "{e}"
        );
        // A plain tar archive.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("hello").unwrap();
        h.set_size(5);
        h.set_cksum();
        b.append(&h, &b"world"[..]).unwrap();
        let t = b.into_inner().unwrap();
        let e = rebuild(&t).unwrap_err();
        assert!(e.to_string().contains("\"hello\""), "{e}");
        // Zeros only: no stream.
        assert!(matches!(rebuild(&[0; 4096]), Err(StreamError::Empty)));
        // A stream followed by garbage.
        let s = make_streams("vm-a", &small_versions()[..1], Codec::None, 512);
        let mut g = s[0].clone();
        g.extend_from_slice(&pattern(512, 3));
        let e = rebuild(&g).unwrap_err();
        assert!(
            matches!(&e, StreamError::NotAStream { at, .. } if at.stream == 2),
            "{e}"
        );
    }

    #[test]
    fn writer_refuses_misuse() {
        let vs = small_versions();
        let s = make_streams("vm-a", &vs[..1], Codec::None, 512);
        let info = read_chain(&s[0][..], None).unwrap().last().info.clone();
        let header = StreamHeader::for_session(&info, None);
        let c = vec![1u8; CS as usize];
        let mut w = StreamWriter::new(Vec::new(), header.clone()).unwrap();
        w.put_chunk(CS, &c).unwrap();
        assert!(matches!(w.put_chunk(CS, &c), Err(StreamError::Misuse(_))));
        assert!(matches!(w.put_chunk(0, &c), Err(StreamError::Misuse(_))));
        assert!(matches!(
            w.put_chunk(3 * CS + 1, &c),
            Err(StreamError::Misuse(_))
        ));
        assert!(matches!(
            w.put_chunk(2 * CS, &c[1..]),
            Err(StreamError::Misuse(_))
        ));
        // The manifest does not name the chunk put.
        let e = w.finish(b"", &info).unwrap_err();
        assert!(matches!(e, StreamError::Misuse(_)), "{e}");

        let mut bad = header.clone();
        bad.volume = "../x".into();
        assert!(matches!(
            StreamWriter::new(Vec::new(), bad),
            Err(StreamError::Header(_))
        ));
        let mut bad = header.clone();
        bad.base = Some(sid(0));
        assert!(matches!(
            StreamWriter::new(Vec::new(), bad),
            Err(StreamError::Header(_))
        ));
        let mut bad = header;
        bad.base = Some(sid(2));
        bad.base_manifest_sha256 = Some([0; 32]);
        assert!(StreamWriter::new(Vec::new(), bad).is_err());
    }

    #[test]
    fn header_text() {
        let h = StreamHeader {
            volume: "vm-a".into(),
            session: sid(2),
            volsize: 12345,
            chunksize: 65536,
            compression: Codec::Zstd,
            time: 1_767_225_601,
            base: Some(sid(1)),
            base_manifest_sha256: Some([0xab; 32]),
            volume_id: None,
        };
        let t = h.to_text();
        assert!(t.starts_with("format=sparsebak-stream 1\nvolume=vm-a\n"));
        assert_eq!(StreamHeader::parse(&t).unwrap(), h);
        let extra = format!("{t}later_key=1\n");
        assert_eq!(StreamHeader::parse(&extra).unwrap(), h);
        assert!(StreamHeader::parse(&t.replace("stream 1", "stream 2")).is_err());
        assert!(StreamHeader::parse(&t[..t.len() - 1]).is_err());
        assert!(StreamHeader::parse(&format!("{t}volume=x\n")).is_err());
        let full = StreamHeader {
            base: None,
            base_manifest_sha256: None,
            ..h
        };
        assert!(full.to_text().contains("\nbase=\nbase_manifest_sha256=\n"));
        assert_eq!(StreamHeader::parse(&full.to_text()).unwrap(), full); // Format 2 (the sealed header of an encrypted stream) names the chain.
        let enc = StreamHeader {
            volume_id: Some("5f1c2a9e-0000-4000-8000-000000000009".into()),
            ..full.clone()
        };
        let t2 = enc.to_text();
        assert!(t2.starts_with(
            "format=sparsebak-stream 2\nvolume=vm-a\nvolume_id=5f1c2a9e-0000-4000-8000-000000000009\n"
        ));
        assert_eq!(StreamHeader::parse(&t2).unwrap(), enc);
        assert!(StreamHeader::parse(&t2.replace("volume_id=5f1c", "volume_id=5f/c")).is_err());
    }

    #[test]
    fn pair_digest_locates_one_mismatch() {
        let h = |i: u8| [i; 32];
        let mk = |pairs: &[(u64, u8)]| {
            let mut d = PairDigest::new();
            for &(a, i) in pairs {
                d.push(a, &h(i));
            }
            d
        };
        let base = [(0, 1), (4096, 2), (8192, 3), (1 << 40, 4)];
        assert_eq!(mk(&base).compare(mk(&base)), Ok(()));
        for k in 0..base.len() {
            let mut alt = base;
            alt[k].1 = 99;
            assert_eq!(
                mk(&alt).compare(mk(&base)),
                Err(PairMismatch::Content(Some(base[k].0)))
            );
        }
        let mut two = base;
        two[0].1 = 50;
        two[2].1 = 60;
        assert_eq!(
            mk(&two).compare(mk(&base)),
            Err(PairMismatch::Content(None))
        );
        assert!(matches!(
            mk(&base[..3]).compare(mk(&base)),
            Err(PairMismatch::Addresses {
                members: 3,
                lines: 4
            })
        ));
        // Same pairs, other order.
        let swapped = [base[1], base[0], base[2], base[3]];
        assert!(mk(&swapped).compare(mk(&base)).is_err());
    }

    #[test]
    fn file_sink_cut_and_zero() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), b"old content").unwrap();
        let mut s = FileSink::new(f.reopen().unwrap()).unwrap();
        s.set_size(3 * CS).unwrap();
        s.write_at(0, &vec![7u8; 3 * CS as usize]).unwrap();
        s.zero(CS, CS).unwrap();
        s.set_size(CS + 10).unwrap();
        s.set_size(4 * CS).unwrap();
        s.finish().unwrap();
        let got = std::fs::read(f.path()).unwrap();
        let mut want = vec![0u8; 4 * CS as usize];
        want[..CS as usize].fill(7);
        assert_eq!(got, want);
    }

    #[test]
    fn gnu_tar_reads_streams() {
        let vs = versions();
        let streams = make_streams("vm-a", &vs, Codec::Zstd, DEFAULT_BLOCK_SIZE);
        let dir = tempfile::tempdir().unwrap();
        let one = dir.path().join("s1.tar");
        std::fs::write(&one, &streams[0]).unwrap();
        let out = Command::new("tar").arg("-tvf").arg(&one).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        assert!(listing.contains("-rw-r--r--"), "{listing}");
        assert!(listing.contains("sparsebak-stream/header"), "{listing}");
        assert!(
            listing.contains("S_20260101-000001/x000000000/x0000000000001000"),
            "{listing}"
        );
        assert!(
            listing.trim_end().ends_with("sparsebak-stream/trailer"),
            "{listing}"
        );

        // Extract the whole chain (GNU tar needs -i to go past the first stream) and
        // compare every file with what the writer was given.
        let all = dir.path().join("all.tar");
        std::fs::write(&all, streams.concat()).unwrap();
        let x = dir.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let st = Command::new("tar")
            .arg("-xif")
            .arg(&all)
            .arg("-C")
            .arg(&x)
            .status()
            .unwrap();
        assert!(st.success());
        let sum = read_chain(&streams.concat()[..], None).unwrap();
        for (k, s) in sum.streams.iter().enumerate() {
            let sd = x.join(layout::session_dir_name(&sid(k + 1)));
            let info = std::fs::read_to_string(sd.join("info")).unwrap();
            assert_eq!(info, s.info.to_text());
            let m = std::fs::read(sd.join("manifest")).unwrap();
            assert_eq!(crate::chunk::hash(&m), s.info.manifest_sha256);
            let mut n = 0;
            for line in std::str::from_utf8(&m).unwrap().lines() {
                let e = Entry::parse(line).unwrap();
                let Some(h) = e.hash else { continue };
                let stored = std::fs::read(sd.join(layout::chunk_rel_path(e.addr))).unwrap();
                let data = Codec::Zstd.decode(&stored, CS as usize).unwrap();
                assert_eq!(chunk::hash(&data), h);
                assert_eq!(data, padded(&vs[k], e.addr));
                n += 1;
            }
            assert_eq!(n, s.data_chunks);
        }
        // Only the last stream's header and trailer remain (each overwrote the last).
        let h = std::fs::read_to_string(x.join(HEADER_MEMBER)).unwrap();
        assert_eq!(h, sum.last().header.to_text());
        assert!(std::fs::read_to_string(x.join(TRAILER_MEMBER))
            .unwrap()
            .starts_with("sha256="));
        // Members carry the session time.
        let meta = std::fs::metadata(x.join(HEADER_MEMBER)).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(meta.mtime(), sum.last().header.time);
    }
}
