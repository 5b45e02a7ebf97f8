//! The chunk codec seam: how a chunk is identified, and how its bytes become the stored
//! bytes of its chunk file (or stream member) and back.
//!
//! Everything that turns chunk data into stored bytes or back goes through
//! [`ChunkCodec`]: the send pipeline (identify, encode), prune's recode (decode, encode),
//! the stream reader and [`crate::volume::VolumeArchive::read_chunk`] (decode, identify),
//! repair (decode, identify, encode). Each call gets the chunk's [`ChunkContext`] (volume,
//! session, address, chunk size), so that a codec which binds the stored bytes to where
//! they belong (an authenticated cipher with the context as associated data) needs no
//! change in those callers.
//!
//! The codecs of format 1 are [`Plain`]: `none` (the raw chunk) and `zstd` (one zstd
//! frame of it), identified by the SHA-256 of the uncompressed bytes. They ignore the
//! context but its chunk size.

use std::cell::RefCell;
use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use crate::chunk::{self, Codec};
use crate::crypto::{ArchiveKeys, Place};
use crate::info::SessionInfo;
use crate::limits;
use crate::Hash;

/// zstd level of chunks encoded where no configuration says otherwise (prune's recode).
pub const DEFAULT_LEVEL: i32 = 3;

/// Where a chunk belongs: what a codec may bind its stored bytes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkContext<'a> {
    pub volume: &'a str,
    /// The session whose chunk file (or stream member) holds the stored bytes.
    pub session: &'a str,
    pub addr: u64,
    /// Bytes of the chunk once decoded (the last chunk of a volume is zero-padded).
    pub chunksize: u64,
}

impl<'a> ChunkContext<'a> {
    /// The chunk at `addr` of the session `info` describes.
    pub fn of(info: &'a SessionInfo, addr: u64) -> ChunkContext<'a> {
        ChunkContext {
            volume: &info.volume,
            session: &info.session,
            addr,
            chunksize: info.chunksize,
        }
    }

    /// Refuse stored bytes longer than `max`, before any work on them.
    fn refuse_longer(&self, stored: &[u8], max: u64) -> Result<(), CodecError> {
        if stored.len() as u64 > max {
            return Err(self.fail(format!(
                "{} stored bytes, more than a chunk can take ({max})",
                stored.len()
            )));
        }
        Ok(())
    }

    fn fail(&self, reason: impl Into<String>) -> CodecError {
        CodecError {
            volume: self.volume.to_string(),
            session: self.session.to_string(),
            addr: self.addr,
            reason: reason.into(),
        }
    }
}

/// A chunk that could not be encoded or decoded. It names the chunk; callers that name
/// its file already (the file path says volume, session and address) use `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume {volume}, session {session}, chunk x{addr:016x}: {reason}")]
pub struct CodecError {
    pub volume: String,
    pub session: String,
    pub addr: u64,
    pub reason: String,
}

/// Identifies, encodes and decodes chunks. Implementations are shared by every thread of
/// a pipeline.
pub trait ChunkCodec: Send + Sync + Debug {
    /// The name written in info files and stream headers (`compression=`).
    fn name(&self) -> &'static str;

    /// The chunk's identity, as written in manifests.
    fn identify(&self, data: &[u8]) -> Hash;

    /// The largest stored chunk of `chunksize` bytes: readers refuse a longer chunk file
    /// or member before reading it.
    fn max_stored(&self, chunksize: u64) -> u64;

    /// The stored bytes of `data` (exactly `ctx.chunksize` bytes).
    fn encode(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<Vec<u8>, CodecError>;

    /// The chunk `stored` holds: exactly `ctx.chunksize` bytes, never allocating more
    /// than one chunk whatever `stored` claims; any other outcome is an error.
    fn decode(&self, ctx: &ChunkContext<'_>, stored: &[u8]) -> Result<Vec<u8>, CodecError>;

    /// [`ChunkCodec::decode`] of a buffer the caller gives away, which a codec may
    /// decode in place (the sealed codec opens it where it lies: no copy).
    fn decode_owned(&self, ctx: &ChunkContext<'_>, stored: Vec<u8>) -> Result<Vec<u8>, CodecError> {
        self.decode(ctx, &stored)
    }

    /// Whether stored bytes stay valid under another session's context. Prune's fold
    /// moves a chunk file from one session to another unchanged only when they do; a
    /// codec that binds the session re-encodes there instead.
    fn portable(&self) -> bool {
        true
    }
}

/// The codecs of format 1: `none` or `zstd` at some level (the level only matters when
/// encoding), identified by plain SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plain {
    codec: Codec,
    level: i32,
}

impl Plain {
    pub const fn new(codec: Codec, level: i32) -> Plain {
        Plain { codec, level }
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }
}

thread_local! {
    static CCTX: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { RefCell::new(None) };
    static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { RefCell::new(None) };
}

/// One zstd frame of `data` at `level`, with one compression context per thread.
fn zstd_compress(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    CCTX.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            *c = Some((level, zstd::bulk::Compressor::new(level)?));
        }
        match c.as_mut() {
            Some((_, comp)) => comp.compress(data),
            None => Err(std::io::Error::other("zstd compressor missing")),
        }
    })
}

/// Decode `stored` of codec `codec` into exactly `chunksize` bytes (the reason alone on
/// failure, the caller names the chunk).
pub(crate) fn decode_plain(
    codec: Codec,
    stored: &[u8],
    chunksize: usize,
) -> Result<Vec<u8>, String> {
    if chunksize as u64 > limits::MAX_CHUNKSIZE {
        return Err(format!(
            "chunk size {chunksize} is impossible (at most {})",
            limits::MAX_CHUNKSIZE
        ));
    }
    let data = match codec {
        Codec::None => stored.to_vec(),
        Codec::Zstd => {
            // A frame never decodes to more than one chunk: bound the output so a
            // corrupt or hostile frame cannot make us allocate without limit. One
            // decompression context per thread, reused.
            DCTX.with(|d| -> Result<Vec<u8>, String> {
                let mut d = d.borrow_mut();
                if d.is_none() {
                    *d = Some(zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?);
                }
                match d.as_mut() {
                    Some(dc) => dc
                        .decompress(stored, chunksize)
                        .map_err(|e| format!("zstd: {e}")),
                    None => Err("zstd: no decompression context".into()),
                }
            })?
        }
    };
    if data.len() != chunksize {
        return Err(format!(
            "decodes to {} bytes, expected {chunksize}",
            data.len()
        ));
    }
    Ok(data)
}

impl ChunkCodec for Plain {
    fn name(&self) -> &'static str {
        self.codec.name()
    }

    fn identify(&self, data: &[u8]) -> Hash {
        chunk::hash(data)
    }

    fn max_stored(&self, chunksize: u64) -> u64 {
        limits::max_stored(self.codec, chunksize)
    }

    fn encode(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        if data.len() as u64 != ctx.chunksize {
            return Err(ctx.fail(format!(
                "{} bytes to encode, expected {}",
                data.len(),
                ctx.chunksize
            )));
        }
        match self.codec {
            Codec::None => Ok(data.to_vec()),
            Codec::Zstd => {
                zstd_compress(data, self.level).map_err(|e| ctx.fail(format!("zstd: {e}")))
            }
        }
    }

    fn decode(&self, ctx: &ChunkContext<'_>, stored: &[u8]) -> Result<Vec<u8>, CodecError> {
        ctx.refuse_longer(stored, self.max_stored(ctx.chunksize))?;
        let chunksize = usize::try_from(ctx.chunksize)
            .map_err(|_| ctx.fail(format!("chunk size {} is impossible", ctx.chunksize)))?;
        decode_plain(self.codec, stored, chunksize).map_err(|r| ctx.fail(r))
    }
}

/// The codec of encrypted archives and streams (format 2): [`Plain`]'s encoding, then
/// sealed ([`crate::crypto::envelope`]) for [`Place::Chunk`] of the volume's id and the
/// chunk's address; identified by HMAC-SHA256 under the archive's identity key, never
/// by a plain hash of the content.
///
/// The session is not in the associated data: a prune moves chunk files between
/// sessions unchanged (the codec is [`ChunkCodec::portable`]). A chunk put in the place
/// of another session's chunk at the same address decrypts, and is then refused by the
/// identity the session's manifest (sealed, bound to its session) records: every reader
/// checks a chunk's identity after decoding it.
#[derive(Clone)]
pub struct Sealed {
    keys: Arc<ArchiveKeys>,
    volume_id: String,
    plain: Plain,
}

impl Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("volume_id", &self.volume_id)
            .field("plain", &self.plain)
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// Chunks of volume `volume_id` under `keys`, encoded as `plain` before sealing.
    pub fn new(keys: Arc<ArchiveKeys>, volume_id: &str, plain: Plain) -> Sealed {
        Sealed {
            keys,
            volume_id: volume_id.to_string(),
            plain,
        }
    }

    fn place(&self, addr: u64) -> Place<'_> {
        Place::Chunk {
            volume_id: &self.volume_id,
            addr,
        }
    }
}

impl ChunkCodec for Sealed {
    fn name(&self) -> &'static str {
        self.plain.name()
    }

    fn identify(&self, data: &[u8]) -> Hash {
        self.keys.chunk_id(data)
    }

    fn max_stored(&self, chunksize: u64) -> u64 {
        limits::max_sealed(self.plain.codec, chunksize)
    }

    fn encode(&self, ctx: &ChunkContext<'_>, data: &[u8]) -> Result<Vec<u8>, CodecError> {
        let inner = self.plain.encode(ctx, data)?;
        self.keys
            .seal(&self.place(ctx.addr), &inner)
            .map_err(|e| ctx.fail(e.to_string()))
    }

    fn decode(&self, ctx: &ChunkContext<'_>, stored: &[u8]) -> Result<Vec<u8>, CodecError> {
        ctx.refuse_longer(stored, self.max_stored(ctx.chunksize))?;
        let inner = self
            .keys
            .open(&self.place(ctx.addr), stored)
            .map_err(|e| ctx.fail(e.to_string()))?;
        self.plain.decode(ctx, &inner)
    }

    fn decode_owned(
        &self,
        ctx: &ChunkContext<'_>,
        mut stored: Vec<u8>,
    ) -> Result<Vec<u8>, CodecError> {
        ctx.refuse_longer(&stored, self.max_stored(ctx.chunksize))?;
        let plain = self
            .keys
            .open_in_place(&self.place(ctx.addr), &mut stored)
            .map_err(|e| ctx.fail(e.to_string()))?;
        self.plain.decode(ctx, &stored[plain])
    }
}

/// The codec chunks of compression `codec` are read with (and re-encoded into, at the
/// default level).
pub fn for_compression(codec: Codec) -> Arc<dyn ChunkCodec> {
    static NONE: OnceLock<Arc<dyn ChunkCodec>> = OnceLock::new();
    static ZSTD: OnceLock<Arc<dyn ChunkCodec>> = OnceLock::new();
    let cell = match codec {
        Codec::None => &NONE,
        Codec::Zstd => &ZSTD,
    };
    cell.get_or_init(|| Arc::new(Plain::new(codec, DEFAULT_LEVEL)))
        .clone()
}

/// The codec the chunks of session `info` are stored with.
pub fn for_info(info: &SessionInfo) -> Arc<dyn ChunkCodec> {
    for_compression(info.compression)
}

/// The codec of session `info` in an archive whose keys are `keys` (`None`: not
/// encrypted). A session of an encrypted archive is sealed for its info's
/// `volume_id`; one without (which an authenticated info never is) gets the id `-`,
/// which opens nothing.
pub fn for_session(keys: Option<&Arc<ArchiveKeys>>, info: &SessionInfo) -> Arc<dyn ChunkCodec> {
    match keys {
        None => for_info(info),
        Some(k) => Arc::new(Sealed::new(
            k.clone(),
            info.volume_id.as_deref().unwrap_or("-"),
            Plain::new(info.compression, DEFAULT_LEVEL),
        )),
    }
}

/// The codec a session of volume `volume_id` is written with in an archive whose
/// keys are `keys`: `codec` at `level`, sealed when there are keys.
pub fn for_writing_in(
    keys: Option<&Arc<ArchiveKeys>>,
    volume_id: Option<&str>,
    codec: Codec,
    level: i32,
) -> Arc<dyn ChunkCodec> {
    match keys {
        None => for_writing(codec, level),
        Some(k) => Arc::new(Sealed::new(
            k.clone(),
            volume_id.unwrap_or("-"),
            Plain::new(codec, level),
        )),
    }
}

/// The codec a session is written with: `codec` at `level`.
pub fn for_writing(codec: Codec, level: i32) -> Arc<dyn ChunkCodec> {
    if level == DEFAULT_LEVEL || codec == Codec::None {
        for_compression(codec)
    } else {
        Arc::new(Plain::new(codec, level))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(chunksize: u64) -> ChunkContext<'static> {
        ChunkContext {
            volume: "vm-a",
            session: "20260101-000000",
            addr: 0x30000,
            chunksize,
        }
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn every_plain_codec_round_trips() {
        let data = sample(65536);
        for codec in [
            for_compression(Codec::None),
            for_compression(Codec::Zstd),
            for_writing(Codec::Zstd, 19),
            for_writing(Codec::Zstd, -3),
        ] {
            let c = ctx(65536);
            let stored = codec.encode(&c, &data).unwrap();
            assert!(stored.len() as u64 <= codec.max_stored(65536), "{codec:?}");
            assert_eq!(codec.decode(&c, &stored).unwrap(), data, "{codec:?}");
            assert_eq!(codec.identify(&data), chunk::hash(&data));
            assert!(codec.portable());
        }
        // The bytes on disk are those of format 1: the raw chunk, or a zstd frame that
        // plain zstd decodes.
        let c = ctx(65536);
        assert_eq!(
            for_compression(Codec::None).encode(&c, &data).unwrap(),
            data
        );
        let z = for_compression(Codec::Zstd).encode(&c, &data).unwrap();
        assert_eq!(zstd::bulk::decompress(&z, 65536).unwrap(), data);
        assert_eq!(for_compression(Codec::Zstd).name(), "zstd");
        assert_eq!(for_compression(Codec::None).name(), "none");
    }

    #[test]
    fn a_wrong_context_is_an_error_naming_the_chunk() {
        let data = sample(4096);
        for codec in [for_compression(Codec::None), for_compression(Codec::Zstd)] {
            let stored = codec.encode(&ctx(4096), &data).unwrap();
            // Read as a chunk of another size.
            let e = codec.decode(&ctx(8192), &stored).unwrap_err();
            assert_eq!(e.addr, 0x30000);
            assert_eq!(e.session, "20260101-000000");
            assert_eq!(e.volume, "vm-a");
            let text = e.to_string();
            assert!(
                text.starts_with("volume vm-a, session 20260101-000000, chunk x0000000000030000: "),
                "{text}"
            );
            // Data that is not one chunk is not encoded.
            let e = codec.encode(&ctx(8192), &data).unwrap_err();
            assert_eq!(e.reason, "4096 bytes to encode, expected 8192");
        }
    }

    #[test]
    fn a_corrupt_payload_is_an_error_naming_the_chunk() {
        let data = sample(4096);
        let zstd = for_compression(Codec::Zstd);
        let mut stored = zstd.encode(&ctx(4096), &data).unwrap();
        // Cut short.
        let e = zstd
            .decode(&ctx(4096), &stored[..stored.len() - 1])
            .unwrap_err();
        assert!(e.reason.starts_with("zstd: "), "{e}");
        assert!(e.to_string().contains("chunk x0000000000030000"), "{e}");
        // Not zstd at all.
        stored[0] ^= 0xff;
        let e = zstd.decode(&ctx(4096), &stored).unwrap_err();
        assert!(e.reason.starts_with("zstd: "), "{e}");
        // Raw chunks one byte short or long.
        let none = for_compression(Codec::None);
        let e = none.decode(&ctx(4096), &data[1..]).unwrap_err();
        assert_eq!(e.reason, "decodes to 4095 bytes, expected 4096");
        let mut long = data.clone();
        long.push(0);
        let e = none.decode(&ctx(4096), &long).unwrap_err();
        assert_eq!(
            e.reason,
            "4097 stored bytes, more than a chunk can take (4096)"
        );
    }

    #[test]
    fn decoding_is_bounded() {
        // A small frame of 256 MiB of zeros stops at the chunk size.
        let bomb = crate::chunk::zstd_bomb();
        let t = std::time::Instant::now();
        let e = for_compression(Codec::Zstd)
            .decode(&ctx(65536), &bomb)
            .unwrap_err();
        assert!(e.reason.starts_with("zstd: "), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
        // A context that claims an impossible chunk size allocates nothing.
        let e = for_compression(Codec::None)
            .decode(&ctx(limits::MAX_CHUNKSIZE * 2), &[0u8; 16])
            .unwrap_err();
        assert!(e.reason.starts_with("chunk size "), "{e}");
        // Stored bytes longer than any frame of one chunk are refused unread.
        let big = vec![0u8; limits::max_stored(Codec::Zstd, 4096) as usize + 1];
        let e = for_compression(Codec::Zstd)
            .decode(&ctx(4096), &big)
            .unwrap_err();
        assert!(e.reason.contains("more than a chunk can take"), "{e}");
    }

    #[test]
    fn sealed_chunks_round_trip_and_are_bound_to_volume_and_address() {
        let keys = Arc::new(ArchiveKeys::for_tests("arch"));
        let c = Sealed::new(keys.clone(), "vol-1", Plain::new(Codec::Zstd, 3));
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 7) as u8).collect();
        let cx = ctx(65536);
        let stored = c.encode(&cx, &data).unwrap();
        assert!(stored.len() as u64 <= c.max_stored(65536));
        assert_eq!(c.decode(&cx, &stored).unwrap(), data);
        // Portable across sessions (prune moves files unchanged) ...
        let other_session = ChunkContext {
            session: "20270101-000000",
            ..cx
        };
        assert_eq!(c.decode(&other_session, &stored).unwrap(), data);
        // ... but not across addresses or volumes.
        let other_addr = ChunkContext { addr: 0, ..cx };
        assert!(c.decode(&other_addr, &stored).is_err());
        let w = Sealed::new(keys, "vol-2", Plain::new(Codec::Zstd, 3));
        assert!(w
            .decode(&cx, &stored)
            .unwrap_err()
            .reason
            .contains("authentication"));
        // Keyed identity, not SHA-256.
        assert_ne!(c.identify(&data), chunk::hash(&data));
    }
}
