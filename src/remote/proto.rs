//! The wire format between a sparsebak that sends or reads and `sparsebak serve` on
//! the machine that holds the archive (see docs/FORMAT.md, "Remote protocol").
//!
//! A connection is a sequence of frames in each direction: a little-endian `u32`
//! length (of what follows it, 1 to [`MAX_FRAME`] bytes), a kind byte, and the
//! payload. Both sides first send a hello ([`Hello`]) whose first fields never change
//! between versions, so that a mismatch is always recognised and reported with both
//! versions. After that the client sends requests and the server answers each one, in
//! the order they were sent, without waiting for the client to read the answers: the
//! client may keep many requests in flight (chunk writes, batches of reads).
//!
//! Every length and count in a payload is checked against the bytes left in its frame
//! before anything is allocated for it, and a frame's length against [`MAX_FRAME`]
//! before its buffer is allocated: neither side trusts the other.

use std::io::{self, Read, Write};

/// The magic at the start of both hellos.
pub const MAGIC: &[u8; 8] = b"SPBKWIRE";
/// The version of this protocol. Both sides must speak the same one.
pub const PROTOCOL_VERSION: u32 = 3;
/// The program's version, sent in the hello so that a mismatch can name it.
pub const PROGRAM_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Largest frame (kind byte and payload): the largest stored chunk of any session
/// plus room for the fields around it.
pub fn max_frame() -> usize {
    sparsebak_format::limits::max_stored_any() as usize + (64 << 10)
}

/// Frame kinds.
pub mod kind {
    /// A hello, the first frame in each direction.
    pub const HELLO: u8 = 1;
    /// A request (the payload starts with the request code).
    pub const REQUEST: u8 = 2;
    /// A successful answer to the oldest request not yet answered.
    pub const OK: u8 = 3;
    /// A failed answer to the oldest request not yet answered: one line of text.
    pub const ERR: u8 = 4;
    /// The hello was refused (version mismatch, folder outside the served root):
    /// one line of text, then the server closes the connection.
    pub const FATAL: u8 = 5;
    /// A failed answer whose cause is that a file is not there: `str` the file,
    /// `str` the line (so the client can tell "missing" from "damaged").
    pub const MISSING: u8 = 6;
    /// A failed answer to a file operation ([`super::freq`]): `u8` the error's kind
    /// ([`super::io_kind_code`]), `u32` its errno (0: none), `str` one line naming
    /// the path over there.
    pub const FS_ERR: u8 = 7;
}

/// Why a frame or payload could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("the connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a frame of {len} bytes, above the limit of {max}")]
    TooLong { len: u64, max: usize },
    #[error("an empty frame")]
    Empty,
    #[error("a malformed frame: {0}")]
    Malformed(String),
}

/// One frame: its kind and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Write one frame (not flushed: the caller flushes when it waits for an answer).
pub fn write_frame(w: &mut impl Write, kind: u8, payload: &[u8]) -> Result<(), WireError> {
    let len = payload.len() + 1;
    if len > max_frame() {
        return Err(WireError::TooLong {
            len: len as u64,
            max: max_frame(),
        });
    }
    w.write_all(&(len as u32).to_le_bytes())?;
    w.write_all(&[kind])?;
    w.write_all(payload)?;
    Ok(())
}

/// Why a frame stopped short: the link ended in its middle.
pub const CLOSED_INSIDE: &str = "the connection closed inside a frame";

/// Read one frame; [`WireError::Closed`] at a clean end between frames.
pub fn read_frame(r: &mut impl Read) -> Result<Frame, WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => return Err(WireError::Malformed(CLOSED_INSIDE.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_le_bytes(len) as u64;
    if len == 0 {
        return Err(WireError::Empty);
    }
    if len > max_frame() as u64 {
        return Err(WireError::TooLong {
            len,
            max: max_frame(),
        });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            WireError::Malformed(CLOSED_INSIDE.into())
        } else {
            WireError::Io(e)
        }
    })?;
    let kind = buf[0];
    buf.remove(0);
    Ok(Frame { kind, payload: buf })
}

/// Builds a payload.
#[derive(Debug, Default)]
pub struct Enc(pub Vec<u8>);

impl Enc {
    pub fn new() -> Enc {
        Enc(Vec::new())
    }
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(v as u8)
    }
    pub fn bytes(&mut self, v: &[u8]) -> &mut Self {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
        self
    }
    pub fn str(&mut self, v: &str) -> &mut Self {
        self.bytes(v.as_bytes())
    }
    pub fn opt_str(&mut self, v: Option<&str>) -> &mut Self {
        match v {
            None => self.u8(0),
            Some(s) => self.u8(1).str(s),
        }
    }
    pub fn strs<S: AsRef<str>>(&mut self, v: &[S]) -> &mut Self {
        self.u32(v.len() as u32);
        for s in v {
            self.str(s.as_ref());
        }
        self
    }
    pub fn u64s(&mut self, v: &[u64]) -> &mut Self {
        self.u32(v.len() as u32);
        for x in v {
            self.u64(*x);
        }
        self
    }
}

/// Reads a payload; every length and count is checked against what is left.
#[derive(Debug)]
pub struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Malformed(format!(
                "{what} needs {n} bytes, {} are left",
                self.buf.len()
            )));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1, "a byte")?[0])
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4, "a u32")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, "a u64")?);
        Ok(u64::from_le_bytes(a))
    }
    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            b => Err(WireError::Malformed(format!("{b} is not a boolean"))),
        }
    }
    pub fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let n = self.u32()? as usize;
        self.take(n, "a byte string")
    }
    pub fn str(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| WireError::Malformed("a string that is not UTF-8".into()))
    }
    pub fn opt_str(&mut self) -> Result<Option<String>, WireError> {
        Ok(if self.bool()? {
            Some(self.str()?)
        } else {
            None
        })
    }
    /// A count of items each at least `min` bytes long, checked against what is left.
    fn count(&mut self, min: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.buf.len() {
            return Err(WireError::Malformed(format!(
                "a count of {n} items, more than the {} bytes left can hold",
                self.buf.len()
            )));
        }
        Ok(n)
    }
    pub fn strs(&mut self) -> Result<Vec<String>, WireError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.str()).collect()
    }
    pub fn u64s(&mut self) -> Result<Vec<u64>, WireError> {
        let n = self.count(8)?;
        (0..n).map(|_| self.u64()).collect()
    }
    /// The end of the payload: anything left over is an error.
    pub fn end(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed(format!(
                "{} bytes after the last field",
                self.buf.len()
            )))
        }
    }
}

/// The first frame in each direction. Its first three fields are the same in every
/// protocol version; the rest is this version's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol: u32,
    pub program: String,
    /// From the client: the archive folder and its mount point, and whether the run
    /// will write. From the server: empty.
    pub destdir: String,
    pub destmountpoint: Option<String>,
    pub writing: bool,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.0.extend_from_slice(MAGIC);
        e.u32(self.protocol)
            .str(&self.program)
            .str(&self.destdir)
            .opt_str(self.destmountpoint.as_deref())
            .bool(self.writing);
        e.0
    }

    /// Read the version fields only: what every version can read.
    pub fn decode_versions(payload: &[u8]) -> Result<(u32, String), WireError> {
        let mut d = Dec::new(payload);
        if d.take(8, "the magic")? != MAGIC {
            return Err(WireError::Malformed(
                "the first frame does not start with the protocol's magic".into(),
            ));
        }
        let protocol = d.u32()?;
        let program = d.str()?;
        if program.len() > 64 {
            return Err(WireError::Malformed(
                "a program version of over 64 bytes".into(),
            ));
        }
        Ok((protocol, program))
    }

    pub fn decode(payload: &[u8]) -> Result<Hello, WireError> {
        let (protocol, program) = Self::decode_versions(payload)?;
        let mut d = Dec::new(&payload[8 + 4 + 4 + program.len()..]);
        let h = Hello {
            protocol,
            program,
            destdir: d.str()?,
            destmountpoint: d.opt_str()?,
            writing: d.bool()?,
        };
        d.end()?;
        Ok(h)
    }
}

/// The words for a version mismatch, the same on both sides.
pub fn mismatch(here: (u32, &str), there: (u32, &str)) -> String {
    format!(
        "protocol version mismatch: this side is sparsebak {} (protocol {}), the far side is sparsebak {} (protocol {}); install the same version on both",
        here.1, here.0, there.1, there.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_lengths_are_bounded() {
        let mut buf = Vec::new();
        write_frame(&mut buf, kind::OK, b"abc").unwrap();
        write_frame(&mut buf, kind::ERR, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Frame {
                kind: kind::OK,
                payload: b"abc".to_vec()
            }
        );
        assert_eq!(
            read_frame(&mut r).unwrap(),
            Frame {
                kind: kind::ERR,
                payload: vec![]
            }
        );
        assert!(matches!(read_frame(&mut r), Err(WireError::Closed)));
        // A length above the limit is refused before anything is allocated.
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        assert!(matches!(
            read_frame(&mut r),
            Err(WireError::TooLong {
                len: 0xffff_ffff,
                ..
            })
        ));
        let mut r: &[u8] = &[0, 0, 0, 0];
        assert!(matches!(read_frame(&mut r), Err(WireError::Empty)));
        // A frame cut short.
        let mut r: &[u8] = &[5, 0, 0, 0, 1, 2];
        assert!(matches!(read_frame(&mut r), Err(WireError::Malformed(_))));
    }

    #[test]
    fn counts_and_lengths_in_a_payload_are_checked_against_what_is_left() {
        let mut e = Enc::new();
        e.u32(1_000_000_000);
        assert!(Dec::new(&e.0)
            .strs()
            .unwrap_err()
            .to_string()
            .contains("count of 1000000000"));
        assert!(Dec::new(&e.0)
            .bytes()
            .unwrap_err()
            .to_string()
            .contains("needs 1000000000 bytes"));
        let mut e = Enc::new();
        e.strs(&["a", "bc"])
            .u64s(&[1, 2, 3])
            .opt_str(None)
            .opt_str(Some("x"));
        let mut d = Dec::new(&e.0);
        assert_eq!(d.strs().unwrap(), vec!["a", "bc"]);
        assert_eq!(d.u64s().unwrap(), vec![1, 2, 3]);
        assert_eq!(d.opt_str().unwrap(), None);
        assert_eq!(d.opt_str().unwrap(), Some("x".into()));
        d.end().unwrap();
    }

    #[test]
    fn a_hello_of_another_version_is_still_read_for_its_versions() {
        let h = Hello {
            protocol: 7,
            program: "9.9.9".into(),
            destdir: "/b".into(),
            destmountpoint: Some("/m".into()),
            writing: true,
        };
        let bytes = h.encode();
        assert_eq!(Hello::decode(&bytes).unwrap(), h);
        let mut future = bytes[..8 + 4 + 4 + 5].to_vec();
        future.extend_from_slice(b"fields of a later version");
        assert_eq!(
            Hello::decode_versions(&future).unwrap(),
            (7, "9.9.9".into())
        );
        assert!(Hello::decode_versions(b"SSH-2.0-OpenSSH").is_err());
        assert_eq!(
            mismatch((1, "0.1.0"), (7, "9.9.9")),
            "protocol version mismatch: this side is sparsebak 0.1.0 (protocol 1), the far side is sparsebak 9.9.9 (protocol 7); install the same version on both"
        );
    }
}

/// Request codes: the first byte of a request's payload. One per method of the
/// destination and volume-store seams; the far side maps each to the local method.
pub mod req {
    /// `()` → `strs`: the volumes of the archive.
    pub const VOLUMES: u8 = 1;
    /// `(volume)` → `bool`: whether the volume has a folder.
    pub const EXISTS: u8 = 2;
    /// `(volume)` → `strs`: its committed sessions, oldest first.
    pub const SESSIONS: u8 = 3;
    /// `(volume, id)` → `bytes`: the session's info file.
    pub const INFO: u8 = 4;
    /// `(volume, id)` → `u64`: the length of the session's manifest.
    pub const MANIFEST_LEN: u8 = 5;
    /// `(volume, id, offset u64, len u32)` → `bytes`: up to `len` (at most
    /// [`super::MANIFEST_PIECE`]) bytes of the manifest from `offset`; short only at its end.
    pub const MANIFEST_READ: u8 = 6;
    /// `(volume, id, addrs)` → one answer frame per address, in order: the stored
    /// bytes of that chunk of session `id` (bounded by the session's chunk size and
    /// compression), or an error naming its file.
    pub const READ_STORED: u8 = 7;
    /// `(volume, id)` → `u8`: 0 folder, 1 tar.
    pub const STORAGE: u8 = 8;
    /// `(volume, id, addr)` → `str`: where a chunk is stored, for messages.
    pub const CHUNK_LOCATION: u8 = 9;
    /// `()` → `opt_str` identity and `bool` read-only: the archive's marker.
    pub const ARCHIVE: u8 = 10;
    /// `(volume, exclusive bool)` → `()`: take the volume's lock, held by the server
    /// until `UNLOCK` or the end of the connection.
    pub const LOCK: u8 = 11;
    /// `(volume)` → `()`: release the volume's lock.
    pub const UNLOCK: u8 = 12;
}

/// Most chunks one RESUME_OFFERS answer names.
pub const MAX_OFFERS: u32 = 4096;

/// Largest piece of a manifest one request reads.
pub const MANIFEST_PIECE: u32 = 1 << 20;

/// Request codes of the destination's write and maintenance side (see
/// docs/FORMAT.md, "Remote protocol", for each one's fields).
pub mod dreq {
    pub const MARKER: u8 = 32;
    pub const CREATE: u8 = 33;
    pub const ADD_IDENTITY: u8 = 34;
    pub const BEGIN_SESSION: u8 = 35;
    pub const PUT_CHUNK: u8 = 36;
    pub const PUT_ZERO: u8 = 37;
    pub const PREPARE: u8 = 38;
    pub const COMMIT: u8 = 39;
    pub const ABORT: u8 = 40;
    pub const REMOVE_STAGING: u8 = 41;
    pub const SWEEP_DEAD_RUNS: u8 = 42;
    pub const INTERRUPTED_PRUNE: u8 = 43;
    pub const RECOVER: u8 = 44;
    pub const CHECK_REMOVAL: u8 = 45;
    pub const FOLD: u8 = 46;
    pub const END_FOLD: u8 = 47;
    pub const UNTAR: u8 = 48;
    pub const DELETE_SESSIONS: u8 = 49;
    pub const DELETE_VOLUME: u8 = 50;
    pub const RENAME_VOLUME: u8 = 51;
    pub const PUT_SESSION_FILE: u8 = 52;
    pub const VOLUME_IS_FREE: u8 = 53;
    pub const RESUME_OFFERS: u8 = 54;
    pub const ADOPT: u8 = 55;
    pub const CHECK_STORED: u8 = 56;
    /// `()` → `bool` present, then `bytes` the key file (at most
    /// `crypto::keyfile::MAX_KEY_FILE`) if present.
    pub const KEY_FILE: u8 = 57;
    /// `(bytes)` → `()`: put the key file in place (checked, atomically).
    pub const PUT_KEY_FILE: u8 = 58;
}

impl Enc {
    pub fn hash(&mut self, h: &[u8; 32]) -> &mut Self {
        self.0.extend_from_slice(h);
        self
    }
}

impl<'a> Dec<'a> {
    pub fn hash(&mut self) -> Result<[u8; 32], WireError> {
        let mut h = [0u8; 32];
        h.copy_from_slice(self.take(32, "a hash")?);
        Ok(h)
    }
    /// How many bytes are left.
    pub fn rest_len(&self) -> usize {
        self.buf.len()
    }
    /// Whatever is left, for a payload that ends in raw bytes.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Request codes of the file operations of an archive folder (the `ArchiveFs` seam),
/// for an archive whose far side must not hold its keys: the near side runs the
/// archive code and the far side only performs these, confined to the served folder.
/// Paths are relative to the folder the hello named (`""` is the folder itself).
pub mod freq {
    /// `(path)` → `u8` kind (0 file, 1 folder, 2 other), `u64` len, `u64` mtime.
    pub const METADATA: u8 = 64;
    /// `(path, opt_str after)` → `u32` n, n × (`str` name, `u8` kind, `u64` len),
    /// `bool` more: the entries sorted by name, after `after`.
    pub const READ_DIR: u8 = 65;
    /// `(path, u64 max)` → `u64` length, `bytes` its first [`super::FS_PIECE`] bytes.
    pub const READ: u8 = 66;
    /// `(path, u64 offset, u32 len)` → `bytes` (len at most [`super::FS_PIECE`]).
    pub const READ_AT: u8 = 67;
    /// `(path, bytes)` → `()`.
    pub const WRITE: u8 = 68;
    /// `(path, bytes)` → `()`: a new file, mode 0600, durably.
    pub const WRITE_NEW: u8 = 69;
    /// `(path, bytes)` → `()`: temporary name, fsync, rename, fsync of the folder.
    pub const WRITE_ATOMIC: u8 = 70;
    /// `(path, u32 handle)` → `()`: create or truncate, open under `handle`.
    pub const CREATE: u8 = 71;
    /// `(u32 handle, rest: bytes)` → `()`.
    pub const APPEND: u8 = 72;
    /// `(u32 handle, bool sync)` → `()`: flush, fsync when asked, close.
    pub const FINISH: u8 = 73;
    /// `(u32 handle)` → `()`: close without flushing further (a dropped writer).
    pub const CLOSE: u8 = 74;
    pub const CREATE_DIR: u8 = 75;
    pub const CREATE_DIR_ALL: u8 = 76;
    /// `(from, to)` → `()`.
    pub const RENAME: u8 = 77;
    pub const RENAME_NOREPLACE: u8 = 78;
    pub const HARD_LINK: u8 = 79;
    pub const REMOVE_FILE: u8 = 80;
    pub const REMOVE_DIR: u8 = 81;
    pub const REMOVE_DIR_ALL: u8 = 82;
    pub const SYNC_FILE: u8 = 83;
    pub const SYNC_DIR: u8 = 84;
    pub const SYNCFS: u8 = 85;
    /// `(path)` → `bool`.
    pub const IS_READ_ONLY: u8 = 86;
    /// `(path, u32 handle, bool exclusive)` → `bool` taken (false: held elsewhere).
    pub const LOCK: u8 = 87;
    /// `(u32 handle)` → `()`.
    pub const UNLOCK: u8 = 88;
    /// `(path)` → `u64` bytes free, `u64` inodes free, `u64` inodes in all.
    pub const ROOM: u8 = 89;

    /// Whether `code` is one of these.
    pub fn is_fs(code: u8) -> bool {
        (METADATA..=ROOM).contains(&code)
    }
}

/// Largest piece of a file one file request reads or writes.
pub const FS_PIECE: usize = 1 << 20;
/// Most files open for writing ([`freq::CREATE`]) and locks held at once by one
/// connection.
pub const FS_MAX_HANDLES: usize = 256;

const IO_KINDS: &[io::ErrorKind] = &[
    io::ErrorKind::Other,
    io::ErrorKind::NotFound,
    io::ErrorKind::AlreadyExists,
    io::ErrorKind::WouldBlock,
    io::ErrorKind::PermissionDenied,
    io::ErrorKind::InvalidData,
    io::ErrorKind::ReadOnlyFilesystem,
    io::ErrorKind::InvalidInput,
    io::ErrorKind::Unsupported,
    io::ErrorKind::DirectoryNotEmpty,
    io::ErrorKind::NotADirectory,
    io::ErrorKind::IsADirectory,
    io::ErrorKind::StorageFull,
    io::ErrorKind::UnexpectedEof,
    io::ErrorKind::CrossesDevices,
    io::ErrorKind::QuotaExceeded,
];

/// The code of an `io::ErrorKind` on the wire (0, other, for a kind not listed).
pub fn io_kind_code(k: io::ErrorKind) -> u8 {
    IO_KINDS.iter().position(|x| *x == k).unwrap_or(0) as u8
}

/// The `io::ErrorKind` of a code (other for an unknown one).
pub fn io_kind(code: u8) -> io::ErrorKind {
    IO_KINDS
        .get(code as usize)
        .copied()
        .unwrap_or(io::ErrorKind::Other)
}
