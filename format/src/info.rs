//! Session info files.
//!
//! Plain `key=value` lines. The last line, `info_sha256=<hex>`, is the SHA-256 of every
//! byte before it, so an altered info file is detected even without the copy the source
//! side keeps. Unknown keys are kept out of the parsed struct but do not fail parsing, so
//! later versions can add fields; a different `format` does fail.

use std::fmt::Write as _;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::chunk::Codec;
use crate::error::{FormatError, Result};
use crate::{layout, limits};
use crate::{Hash, FORMAT_VERSION};

/// What a session's `info` file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub volume: String,
    pub session: String,
    /// The session this one builds on; `None` for a volume's first (full) session.
    pub previous: Option<String>,
    /// Seconds since the Unix epoch when the session was taken.
    pub time: i64,
    /// Volume size in bytes at this session.
    pub volsize: u64,
    pub chunksize: u64,
    pub compression: Codec,
    /// Manifest lines: chunks this session records (new data or newly zero).
    pub changed: u64,
    /// Non-zero chunks in the session's view.
    pub chunks: u64,
    /// Bytes read from the source for this session.
    pub bytes_read: u64,
    /// Bytes of chunk files stored by this session.
    pub bytes_stored: u64,
    pub manifest_sha256: Hash,
    /// The volume's identity in an encrypted archive or stream (format 2): a random
    /// UUID given with its first session and kept by every later one (a rename keeps
    /// it). Chunks are sealed for it. `None` in format 1.
    pub volume_id: Option<String>,
}

/// The info format of encrypted archives: format 1 plus `volume_id`.
pub const SEALED_FORMAT: u32 = 2;

/// Whether `id` can be a volume id (what [`crate::crypto::random_uuid`] makes, or any
/// 1 to 64 lower-case hex digits and dashes).
pub fn volume_id_ok(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || c == b'-')
}

impl SessionInfo {
    /// The file's bytes, ending with the `info_sha256` line.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        match &self.volume_id {
            None => {
                let _ = writeln!(s, "format={FORMAT_VERSION}");
                let _ = writeln!(s, "volume={}", self.volume);
            }
            Some(id) => {
                let _ = writeln!(s, "format={SEALED_FORMAT}");
                let _ = writeln!(s, "volume={}", self.volume);
                let _ = writeln!(s, "volume_id={id}");
            }
        }
        let _ = writeln!(s, "session={}", self.session);
        let _ = writeln!(s, "previous={}", self.previous.as_deref().unwrap_or(""));
        let _ = writeln!(s, "time={}", self.time);
        let _ = writeln!(s, "volsize={}", self.volsize);
        let _ = writeln!(s, "chunksize={}", self.chunksize);
        let _ = writeln!(s, "compression={}", self.compression.name());
        let _ = writeln!(s, "changed={}", self.changed);
        let _ = writeln!(s, "chunks={}", self.chunks);
        let _ = writeln!(s, "bytes_read={}", self.bytes_read);
        let _ = writeln!(s, "bytes_stored={}", self.bytes_stored);
        let _ = writeln!(s, "manifest_sha256={}", hex::encode(self.manifest_sha256));
        let sum = Sha256::digest(s.as_bytes());
        let _ = writeln!(s, "info_sha256={}", hex::encode(sum));
        s
    }

    pub fn parse(text: &str, path: &Path) -> Result<SessionInfo> {
        let bad = |reason: String| FormatError::Info {
            path: path.to_path_buf(),
            reason,
        };
        let body_end = text
            .rfind("info_sha256=")
            .ok_or_else(|| bad("no info_sha256 line".into()))?;
        let (body, tail) = text.split_at(body_end);
        if !body.is_empty() && !body.ends_with('\n') {
            return Err(bad("info_sha256 is not on a line of its own".into()));
        }
        let want = tail
            .strip_prefix("info_sha256=")
            .and_then(|t| t.strip_suffix('\n'))
            .ok_or_else(|| bad("info_sha256 line is not the last line".into()))?;
        if hex::encode(Sha256::digest(body.as_bytes())) != want {
            return Err(bad("checksum mismatch (info file altered)".into()));
        }
        let mut kv = std::collections::BTreeMap::new();
        for line in body.lines() {
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| bad(format!("line {line:?} is not key=value")))?;
            if kv.insert(k, v).is_some() {
                return Err(bad(format!("key {k} given twice")));
            }
        }
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| bad(format!("missing {k}")))
        };
        let num = |k: &str| -> Result<u64> {
            get(k)?.parse::<u64>().map_err(|e| bad(format!("{k}: {e}")))
        };
        let format = get("format")?;
        let volume_id = if format == FORMAT_VERSION.to_string() {
            None
        } else if format == SEALED_FORMAT.to_string() {
            let id = get("volume_id")?;
            if !volume_id_ok(id) {
                return Err(bad(format!("volume_id {id:?} is not a volume id")));
            }
            Some(id.to_string())
        } else {
            return Err(bad(format!(
                "format {format} is not supported (this build reads {FORMAT_VERSION} and {SEALED_FORMAT})"
            )));
        };
        let compression = Codec::from_name(get("compression")?)
            .ok_or_else(|| bad("unknown compression".into()))?;
        let mut manifest_sha256 = [0u8; 32];
        hex::decode_to_slice(get("manifest_sha256")?, &mut manifest_sha256)
            .map_err(|e| bad(format!("manifest_sha256: {e}")))?;
        let previous = match get("previous")? {
            "" => None,
            p => Some(p.to_string()),
        };
        let chunksize = num("chunksize")?;
        if !limits::chunksize_ok(chunksize) {
            return Err(bad(format!(
                "chunksize {chunksize} is not a power of two from {} to {}",
                limits::MIN_CHUNKSIZE,
                limits::MAX_CHUNKSIZE
            )));
        }
        let session = get("session")?;
        if !layout::is_session_id(session) {
            return Err(bad(format!("session {session:?} is not a session ID")));
        }
        if let Some(p) = &previous {
            if !layout::is_session_id(p) || p.as_str() >= session {
                return Err(bad(format!(
                    "previous {p:?} is not a session ID older than {session}"
                )));
            }
        }
        let out_of_bounds = |field: &str, value: u64, why: String| FormatError::Bounds {
            path: path.to_path_buf(),
            field: field.to_string(),
            value,
            why,
        };
        let volsize = num("volsize")?;
        if volsize > limits::MAX_VOLSIZE {
            return Err(out_of_bounds(
                "volsize",
                volsize,
                format!("larger than the largest volume ({})", limits::MAX_VOLSIZE),
            ));
        }
        let nchunks = volsize.div_ceil(chunksize);
        let changed = num("changed")?;
        let chunks = num("chunks")?;
        for (field, value) in [("changed", changed), ("chunks", chunks)] {
            if value > nchunks {
                return Err(out_of_bounds(
                    field,
                    value,
                    format!("more than the volume's {nchunks} chunks"),
                ));
            }
        }
        Ok(SessionInfo {
            volume: get("volume")?.to_string(),
            session: session.to_string(),
            previous,
            time: get("time")?
                .parse()
                .map_err(|e| bad(format!("time: {e}")))?,
            volsize,
            chunksize,
            compression,
            changed,
            chunks,
            bytes_read: num("bytes_read")?,
            bytes_stored: num("bytes_stored")?,
            manifest_sha256,
            volume_id,
        })
    }

    pub fn read(path: &Path) -> Result<SessionInfo> {
        let text = limits::read_bounded_text(path, limits::MAX_INFO_BYTES, "info file")?;
        Self::parse(&text, path)
    }

    /// Number of chunk addresses in a volume of this size (the last may be partial).
    pub fn nchunks(&self) -> u64 {
        self.volsize.div_ceil(self.chunksize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SessionInfo {
        SessionInfo {
            volume: "vm-a".into(),
            session: "20261123-212200".into(),
            previous: None,
            time: 1_795_000_000,
            volsize: 1 << 30,
            chunksize: 65536,
            compression: Codec::Zstd,
            changed: 5,
            chunks: 4,
            bytes_read: 1 << 20,
            bytes_stored: 1000,
            manifest_sha256: [7; 32],
            volume_id: None,
        }
    }

    #[test]
    fn round_trip_and_tamper() {
        let i = sample();
        let t = i.to_text();
        assert_eq!(SessionInfo::parse(&t, Path::new("i")).unwrap(), i);
        let altered = t.replace("changed=5", "changed=6");
        assert!(SessionInfo::parse(&altered, Path::new("i")).is_err());
        let truncated = &t[..t.len() - 3];
        assert!(SessionInfo::parse(truncated, Path::new("i")).is_err());
    }

    fn parse_err(i: &SessionInfo) -> FormatError {
        SessionInfo::parse(&i.to_text(), Path::new("S_x/info")).unwrap_err()
    }

    fn bounds(i: &SessionInfo) -> (String, u64, String) {
        match parse_err(i) {
            FormatError::Bounds {
                path,
                field,
                value,
                why,
            } => {
                assert_eq!(path, Path::new("S_x/info"));
                (field, value, why)
            }
            other => panic!("{other:?}"),
        }
    }

    fn reason(i: &SessionInfo) -> String {
        match parse_err(i) {
            FormatError::Info { reason, .. } => reason,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn numbers_are_checked_against_what_is_possible() {
        let mut i = sample();
        i.chunksize = 1 << 40;
        assert_eq!(
            reason(&i),
            "chunksize 1099511627776 is not a power of two from 4096 to 67108864"
        );
        i.chunksize = 2048;
        assert!(reason(&i).starts_with("chunksize 2048 "));
        let mut i = sample();
        i.volsize = u64::MAX;
        assert_eq!(
            bounds(&i),
            (
                "volsize".into(),
                u64::MAX,
                "larger than the largest volume (1152921504606846976)".into()
            )
        );
        // 1 GiB in 64 KiB chunks is 16384 chunks.
        let mut i = sample();
        i.changed = 16385;
        assert_eq!(
            bounds(&i),
            (
                "changed".into(),
                16385,
                "more than the volume's 16384 chunks".into()
            )
        );
        let mut i = sample();
        i.chunks = u64::MAX;
        assert_eq!(bounds(&i).0, "chunks");
        let mut i = sample();
        i.changed = 16384;
        i.chunks = 16384;
        assert!(SessionInfo::parse(&i.to_text(), Path::new("i")).is_ok());
        // A number that does not fit at all.
        let t = sample()
            .to_text()
            .replace("volsize=1073741824", "volsize=99999999999999999999");
        let body = &t[..t.rfind("info_sha256=").unwrap()];
        let t = format!("{body}info_sha256={}\n", hex::encode(Sha256::digest(body)));
        assert!(matches!(
            SessionInfo::parse(&t, Path::new("i")),
            Err(FormatError::Info { reason, .. }) if reason.starts_with("volsize: ")
        ));
    }

    #[test]
    fn names_are_session_ids() {
        let mut i = sample();
        i.session = "../../etc".into();
        assert_eq!(reason(&i), "session \"../../etc\" is not a session ID");
        let mut i = sample();
        i.previous = Some("20261123-212200".into());
        assert_eq!(
            reason(&i),
            "previous \"20261123-212200\" is not a session ID older than 20261123-212200"
        );
        i.previous = Some("20261123-212159".into());
        assert!(SessionInfo::parse(&i.to_text(), Path::new("i")).is_ok());
    }

    #[test]
    fn read_refuses_a_huge_file_unread() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("info");
        std::fs::File::create(&p).unwrap().set_len(1 << 40).unwrap();
        assert!(matches!(
            SessionInfo::read(&p),
            Err(FormatError::TooLarge { len, what: "info file", .. }) if len == 1 << 40
        ));
    }
}
