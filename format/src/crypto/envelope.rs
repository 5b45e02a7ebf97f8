//! The envelope of every sealed object, and the place each one is bound to.
//!
//! A sealed object is XChaCha20-Poly1305 in the STREAM construction
//! (`aead::stream::StreamBE32`, as in Hoang, Reyhanitabar, Rogaway and Vizár's online
//! AE): a random 19-byte nonce prefix, then the plaintext cut in segments of
//! [`SEGMENT`] bytes (the last one shorter, possibly empty), each encrypted and followed
//! by its 16-byte tag. Segment `i`'s nonce is the prefix, `i` as a big-endian `u32`,
//! and one byte that is 1 for the last segment and 0 before. So a segment cannot move,
//! and an object cut after a whole segment fails (its last segment says so).
//!
//! Every segment's associated data is the object's [`Place`]: a list of fields, each
//! written as its length (`u32`, little-endian) and its bytes, starting with
//! `sparsebak-object 2`, the kind of object and the archive's id. An object put in
//! another place (another session's manifest, an info of another session, a chunk
//! file of another address or volume) fails to open.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::stream::{NewStream, StreamBE32, StreamPrimitive};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::XChaCha20Poly1305;

use super::keys::ArchiveKeys;
use super::{random_bytes, CryptoError};

/// Plaintext bytes per segment.
pub const SEGMENT: usize = 1 << 20;
/// Bytes of the nonce prefix at the start of every sealed object.
pub const PREFIX: usize = 19;
/// Bytes of each segment's tag.
pub const TAG: usize = 16;
/// Bytes a sealed object adds to its plaintext of `len` bytes.
pub const fn overhead(len: u64) -> u64 {
    PREFIX as u64 + TAG as u64 * (len / SEGMENT as u64 + 1)
}

/// Where a sealed object belongs: its associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place<'a> {
    /// A chunk file or stream chunk member: the chunk at byte offset `addr` of the
    /// volume `volume_id` (not its session: see the module docs of the crate's codec).
    Chunk { volume_id: &'a str, addr: u64 },
    /// A session's info (it names its volume's id inside).
    Info { session: &'a str },
    /// A session's manifest (its info, which names the volume's id, holds the
    /// manifest's SHA-256).
    Manifest { session: &'a str },
    /// A tar session's member index.
    TarIndex {
        volume_id: &'a str,
        session: &'a str,
    },
    /// The identity file of the volume named `name`: what ties a volume folder to the
    /// volume's id (a rename writes it anew).
    Volume { name: &'a str },
    /// The prune journal of the volume named `volume` (no journal outlives a run
    /// that renames the volume: every run finishes one first).
    PruneJournal { volume: &'a str },
    /// A stream's header (a stream chain's id stands for the archive's).
    StreamHeader { session: &'a str },
    /// A stream's trailer.
    StreamTrailer {
        volume_id: &'a str,
        session: &'a str,
    },
    /// The sealed header of a stream of chain `volume_id`: read before its session is
    /// known (the session is inside; the trailer binds the two).
    StreamHead { volume_id: &'a str },
}

impl Place<'_> {
    fn fields(&self) -> (&'static str, Vec<Vec<u8>>) {
        let s = |x: &str| x.as_bytes().to_vec();
        match *self {
            Place::Chunk { volume_id, addr } => {
                ("chunk", vec![s(volume_id), s(&format!("{addr:016x}"))])
            }
            Place::Info { session } => ("info", vec![s(session)]),
            Place::Manifest { session } => ("manifest", vec![s(session)]),
            Place::TarIndex { volume_id, session } => ("tar-index", vec![s(volume_id), s(session)]),
            Place::PruneJournal { volume } => ("prune-journal", vec![s(volume)]),
            Place::Volume { name } => ("volume", vec![s(name)]),
            Place::StreamHeader { session } => ("stream-header", vec![s(session)]),
            Place::StreamTrailer { volume_id, session } => {
                ("stream-trailer", vec![s(volume_id), s(session)])
            }
            Place::StreamHead { volume_id } => ("stream-head", vec![s(volume_id)]),
        }
    }

    /// What the object is, for messages.
    pub fn what(&self) -> String {
        match *self {
            Place::Chunk { addr, .. } => format!("chunk x{addr:016x}"),
            Place::Info { session } => format!("info of session {session}"),
            Place::Manifest { session, .. } => format!("manifest of session {session}"),
            Place::TarIndex { session, .. } => format!("tar index of session {session}"),
            Place::PruneJournal { .. } => "prune journal".into(),
            Place::Volume { name } => format!("identity file of volume {name}"),
            Place::StreamHeader { session } => format!("stream header of session {session}"),
            Place::StreamTrailer { session, .. } => format!("stream trailer of session {session}"),
            Place::StreamHead { .. } => "stream header".into(),
        }
    }

    /// The associated data of every segment of the object, for archive `archive`.
    pub fn associated_data(&self, archive: &str) -> Vec<u8> {
        let (kind, rest) = self.fields();
        let mut ad = Vec::with_capacity(96);
        for f in [
            b"sparsebak-object 2".as_slice(),
            kind.as_bytes(),
            archive.as_bytes(),
        ]
        .into_iter()
        .chain(rest.iter().map(|v| v.as_slice()))
        {
            ad.extend_from_slice(&(f.len() as u32).to_le_bytes());
            ad.extend_from_slice(f);
        }
        ad
    }
}

/// The plaintext length of a sealed object of `sealed` bytes; `None` when no sealed
/// object has that length.
pub fn plain_len(sealed: u64) -> Option<u64> {
    let body = sealed.checked_sub(PREFIX as u64)?;
    let full = (SEGMENT + TAG) as u64;
    let rem = body % full;
    if rem < TAG as u64 {
        return None;
    }
    Some(body / full * SEGMENT as u64 + rem - TAG as u64)
}

fn stream(keys: &ArchiveKeys, prefix: &[u8; PREFIX]) -> StreamBE32<XChaCha20Poly1305> {
    let aead = XChaCha20Poly1305::new((&keys.data).into());
    StreamBE32::from_aead(aead, prefix.into())
}

/// The tail of a vector from `start` on, as the buffer an AEAD seals or opens in
/// place: the segment being sealed or opened, after what is already done.
struct Tail<'a> {
    v: &'a mut Vec<u8>,
    start: usize,
}

impl AsRef<[u8]> for Tail<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.v[self.start..]
    }
}

impl AsMut<[u8]> for Tail<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.start..]
    }
}

impl chacha20poly1305::aead::Buffer for Tail<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> chacha20poly1305::aead::Result<()> {
        self.v.extend_from_slice(other);
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.v.truncate(self.start + len);
    }
}

impl ArchiveKeys {
    /// `plain` sealed for `place`, in one buffer (no copy of a segment).
    pub fn seal(&self, place: &Place<'_>, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let prefix: [u8; PREFIX] = random_bytes()?;
        let mut out = Vec::with_capacity(plain.len() + overhead(plain.len() as u64) as usize);
        out.extend_from_slice(&prefix);
        let stream = stream(self, &prefix);
        let ad = place.associated_data(self.archive());
        let fail = || CryptoError::Auth {
            what: format!("sealing the {}", place.what()),
        };
        // Full segments, then the last one: always shorter than a segment, maybe empty.
        let full = plain.len() / SEGMENT;
        for i in 0..=full {
            let seg = &plain[i * SEGMENT..((i + 1) * SEGMENT).min(plain.len())];
            let start = out.len();
            out.extend_from_slice(seg);
            let position = u32::try_from(i).map_err(|_| fail())?;
            stream
                .encrypt_in_place(position, i == full, &ad, &mut Tail { v: &mut out, start })
                .map_err(|_| fail())?;
        }
        Ok(out)
    }

    /// The plaintext of `sealed`, which must be the object sealed for `place`, opened
    /// in one buffer.
    pub fn open(&self, place: &Place<'_>, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let bad = || CryptoError::Auth { what: place.what() };
        let len = plain_len(sealed.len() as u64).ok_or_else(bad)?;
        let prefix: &[u8; PREFIX] = sealed[..PREFIX].try_into().map_err(|_| bad())?;
        let stream = stream(self, prefix);
        let ad = place.associated_data(self.archive());
        let mut out = Vec::with_capacity(len as usize + TAG);
        let body = &sealed[PREFIX..];
        let segs: Vec<&[u8]> = body.chunks(SEGMENT + TAG).collect();
        // A body that ends on a whole segment has an empty last segment: its tag.
        let n = segs.len();
        for (i, seg) in segs.iter().enumerate() {
            let start = out.len();
            out.extend_from_slice(seg);
            let position = u32::try_from(i).map_err(|_| bad())?;
            let last = i + 1 == n && seg.len() < SEGMENT + TAG;
            if i + 1 == n && !last {
                return Err(bad());
            }
            stream
                .decrypt_in_place(position, last, &ad, &mut Tail { v: &mut out, start })
                .map_err(|_| bad())?;
        }
        if out.len() as u64 != len {
            return Err(bad());
        }
        Ok(out)
    }
}

/// Seals what is written to it, segment by segment, into `inner`; [`SealWriter::finish`]
/// writes the last segment (dropping it unfinished leaves an object that fails to open).
pub struct SealWriter<W: Write> {
    stream: StreamBE32<XChaCha20Poly1305>,
    ad: Vec<u8>,
    buf: Vec<u8>,
    position: u32,
    inner: W,
}

impl<W: Write> SealWriter<W> {
    /// Start an object for `place`: writes the nonce prefix.
    pub fn new(keys: &ArchiveKeys, place: Place<'_>, mut inner: W) -> Result<Self, CryptoError> {
        let prefix: [u8; PREFIX] = random_bytes()?;
        inner.write_all(&prefix).map_err(|e| CryptoError::Auth {
            what: e.to_string(),
        })?;
        Ok(SealWriter {
            stream: stream(keys, &prefix),
            ad: place.associated_data(keys.archive()),
            buf: Vec::with_capacity(SEGMENT + TAG),
            position: 0,
            inner,
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        self.stream
            .encrypt_in_place(self.position, last, &self.ad, &mut self.buf)
            .map_err(|_| io::Error::other("sealing a segment failed"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.position = self
            .position
            .checked_add(1)
            .ok_or_else(|| io::Error::other("sealed object longer than 4 PiB"))?;
        Ok(())
    }

    /// Write the last segment; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SEGMENT - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == SEGMENT {
            // A full segment is never the last: the last is always shorter.
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads the plaintext of a sealed object from `inner`, checking each segment before
/// giving any of its bytes. Any failure (altered, cut, moved) is an error of kind
/// `InvalidData`.
pub struct OpenReader<R: Read> {
    stream: Option<StreamBE32<XChaCha20Poly1305>>,
    data_key: [u8; 32],
    ad: Vec<u8>,
    what: String,
    buf: Vec<u8>,
    pos: usize,
    position: u32,
    done: bool,
    inner: R,
}

impl<R: Read> Drop for OpenReader<R> {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.data_key.zeroize();
        self.buf.zeroize();
    }
}

impl<R: Read> OpenReader<R> {
    pub fn new(keys: &ArchiveKeys, place: Place<'_>, inner: R) -> Self {
        OpenReader {
            stream: None,
            data_key: keys.data,
            ad: place.associated_data(keys.archive()),
            what: place.what(),
            buf: Vec::new(),
            pos: 0,
            position: 0,
            done: false,
            inner,
        }
    }

    fn bad(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            CryptoError::Auth {
                what: self.what.clone(),
            },
        )
    }

    fn next_segment(&mut self) -> io::Result<()> {
        if self.stream.is_none() {
            let mut prefix = [0u8; PREFIX];
            self.inner
                .read_exact(&mut prefix)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => self.bad(),
                    _ => e,
                })?;
            let aead = XChaCha20Poly1305::new((&self.data_key).into());
            self.stream = Some(StreamBE32::from_aead(aead, (&prefix).into()));
        }
        self.buf.clear();
        self.buf.resize(SEGMENT + TAG, 0);
        let mut got = 0;
        while got < self.buf.len() {
            match self.inner.read(&mut self.buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.truncate(got);
        // A full-size read is never the last segment; a shorter one is.
        let last = got < SEGMENT + TAG;
        if got < TAG {
            return Err(self.bad());
        }
        let stream = self.stream.as_ref().ok_or_else(|| self.bad())?;
        if stream
            .decrypt_in_place(self.position, last, &self.ad, &mut self.buf)
            .is_err()
        {
            return Err(self.bad());
        }
        self.position = self.position.checked_add(1).ok_or_else(|| self.bad())?;
        self.pos = 0;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for OpenReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            if self.done {
                return Ok(0);
            }
            self.next_segment()?;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ArchiveKeys {
        ArchiveKeys::for_tests("arch")
    }

    #[test]
    fn round_trip_at_segment_edges() {
        let k = keys();
        let p = Place::Manifest {
            session: "20260101-000000",
        };
        for len in [
            0,
            1,
            SEGMENT - 1,
            SEGMENT,
            SEGMENT + 1,
            2 * SEGMENT,
            2 * SEGMENT + 7,
        ] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = k.seal(&p, &plain).unwrap();
            assert_eq!(
                sealed.len() as u64,
                len as u64 + overhead(len as u64),
                "{len}"
            );
            assert_eq!(plain_len(sealed.len() as u64), Some(len as u64));
            assert_eq!(k.open(&p, &sealed).unwrap(), plain, "{len}");
        }
    }

    #[test]
    fn altered_cut_or_moved_objects_fail() {
        let k = keys();
        let p = Place::Chunk {
            volume_id: "v",
            addr: 65536,
        };
        let plain = vec![9u8; 2 * SEGMENT + 100];
        let sealed = k.seal(&p, &plain).unwrap();
        let fails = |b: &[u8], place: &Place<'_>| k.open(place, b).is_err();
        let mut flipped = sealed.clone();
        flipped[SEGMENT + 50] ^= 1;
        assert!(fails(&flipped, &p));
        // Cut after a whole segment: the last segment is missing.
        assert!(fails(&sealed[..PREFIX + SEGMENT + TAG], &p));
        assert!(fails(&sealed[..sealed.len() - 1], &p));
        assert!(fails(&sealed[..10], &p));
        // Another address, volume, kind or archive.
        assert!(fails(
            &sealed,
            &Place::Chunk {
                volume_id: "v",
                addr: 0
            }
        ));
        assert!(fails(
            &sealed,
            &Place::Chunk {
                volume_id: "w",
                addr: 65536
            }
        ));
        assert!(fails(&sealed, &Place::Manifest { session: "x" }));
        assert!(ArchiveKeys::for_tests("other").open(&p, &sealed).is_err());
        // Two sealings of the same bytes differ (random nonces).
        assert_ne!(k.seal(&p, &plain).unwrap(), sealed);
    }

    #[test]
    fn a_reader_gives_nothing_of_a_bad_segment() {
        let k = keys();
        let p = Place::Info { session: "s" };
        let plain = vec![1u8; SEGMENT + 10];
        let mut sealed = k.seal(&p, &plain).unwrap();
        let n = sealed.len();
        sealed[n - 3] ^= 0x80;
        let mut r = OpenReader::new(&k, p, sealed.as_slice());
        let mut first = vec![0u8; SEGMENT];
        r.read_exact(&mut first).unwrap();
        let mut rest = Vec::new();
        let e = r.read_to_end(&mut rest).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(rest.is_empty());
        assert!(e.to_string().contains("info of session s"), "{e}");
    }
}
