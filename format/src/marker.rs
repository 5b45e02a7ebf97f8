//! The archive root marker `sparsebak.archive`: what makes a folder an archive, the
//! format version it is written in, and the archive's identity.
//!
//! ```text
//! sparsebak-archive
//! format=1
//! id=<uuid>
//! ```
//!
//! The first line is fixed; then `key=value` lines. `format` is required; `id` (a
//! random UUID given when the archive is created) is absent in archives made before
//! identities existed. Readers ignore keys they do not know.

use std::path::Path;

use crate::archive_fs::{ArchiveFs, LocalFs};
use crate::error::{FormatError, Result};
use crate::layout;
use crate::FORMAT_VERSION;

/// First line of the marker.
pub const MAGIC: &str = "sparsebak-archive";
/// A marker is a few lines; anything longer is not one.
pub const MAX_BYTES: u64 = 4096;

/// What an archive's root marker says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveMarker {
    pub format: u32,
    /// The archive's identity, when it has one.
    pub id: Option<String>,
    /// The AEAD of an encrypted archive (format 2): `aes-256-gcm`.
    pub encryption: Option<String>,
}

/// The format of encrypted archives.
pub const SEALED_FORMAT: u32 = 2;

/// Whether `s` is an archive identity: a UUID in its lower-case 8-4-4-4-12 hex form.
pub fn is_archive_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
        })
}

impl ArchiveMarker {
    /// A marker of this build's format with identity `id`.
    pub fn new(id: &str) -> ArchiveMarker {
        ArchiveMarker {
            format: FORMAT_VERSION,
            id: Some(id.to_string()),
            encryption: None,
        }
    }

    /// The marker of a new encrypted archive (format 2) with identity `id`.
    pub fn sealed(id: &str) -> ArchiveMarker {
        ArchiveMarker {
            format: SEALED_FORMAT,
            id: Some(id.to_string()),
            encryption: Some(crate::crypto::AEAD_NAME.to_string()),
        }
    }

    /// Whether the archive is encrypted.
    pub fn is_sealed(&self) -> bool {
        self.format == SEALED_FORMAT
    }

    /// The marker's bytes.
    pub fn to_text(&self) -> String {
        let mut s = format!("{MAGIC}\nformat={}\n", self.format);
        if let Some(id) = &self.id {
            s.push_str(&format!("id={id}\n"));
        }
        if let Some(e) = &self.encryption {
            s.push_str(&format!("encryption={e}\n"));
        }
        s
    }

    /// Parse the marker of the archive at `root` from `text`.
    pub fn parse(text: &str, root: &Path) -> Result<ArchiveMarker> {
        let bad = |reason: String| FormatError::NotArchive {
            path: root.to_path_buf(),
            reason: format!("{}: {reason}", layout::ARCHIVE_MARKER),
        };
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(format!("does not start with {MAGIC:?}")));
        }
        let mut format = None;
        let mut id = None;
        let mut encryption = None;
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!("bad line {line:?}")));
            };
            let slot = match k {
                "format" => &mut format,
                "id" => &mut id,
                "encryption" => &mut encryption,
                _ => continue,
            };
            if slot.replace(v).is_some() {
                return Err(bad(format!("{k} given twice")));
            }
        }
        let format = format.ok_or_else(|| bad("no format line".into()))?;
        let format = if format == FORMAT_VERSION.to_string() {
            FORMAT_VERSION
        } else if format == SEALED_FORMAT.to_string() {
            SEALED_FORMAT
        } else {
            return Err(bad(format!(
                "format {format:?} is not supported (this build reads {FORMAT_VERSION} and {SEALED_FORMAT})"
            )));
        };
        if let Some(id) = id {
            if !is_archive_id(id) {
                return Err(bad(format!("bad id {id:?}")));
            }
        }
        if format == SEALED_FORMAT {
            if id.is_none() {
                return Err(bad("an encrypted archive's marker has no id".into()));
            }
            if encryption != Some(crate::crypto::AEAD_NAME) {
                return Err(bad(format!(
                    "encryption {:?} is not supported (this build knows {})",
                    encryption.unwrap_or(""),
                    crate::crypto::AEAD_NAME
                )));
            }
        }
        Ok(ArchiveMarker {
            format,
            id: id.map(str::to_string),
            encryption: if format == SEALED_FORMAT {
                encryption.map(str::to_string)
            } else {
                None
            },
        })
    }
}

/// Read the marker of the archive at `root`: `None` when there is none (no marker
/// file, or no folder at all); an error when it cannot be read or is not a marker.
pub fn read_marker(root: &Path) -> Result<Option<ArchiveMarker>> {
    read_marker_in(&LocalFs, root)
}

/// [`read_marker`] of an archive folder reached through `fs`.
pub fn read_marker_in(fs: &dyn ArchiveFs, root: &Path) -> Result<Option<ArchiveMarker>> {
    let path = root.join(layout::ARCHIVE_MARKER);
    let not_archive = |reason: String| FormatError::NotArchive {
        path: root.to_path_buf(),
        reason,
    };
    let bytes = match fs.read(&path, MAX_BYTES) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(not_archive(format!(
                "{} is longer than {MAX_BYTES} bytes",
                layout::ARCHIVE_MARKER
            )))
        }
        Err(e) => return Err(not_archive(format!("{}: {e}", path.display()))),
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(not_archive(format!(
            "{} is longer than {MAX_BYTES} bytes",
            layout::ARCHIVE_MARKER
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| not_archive(format!("{} is not UTF-8", layout::ARCHIVE_MARKER)))?;
    ArchiveMarker::parse(&text, root).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0f8b8d3e-5c1a-4a7e-9b2d-3c4d5e6f7a8b";

    #[test]
    fn round_trip_and_old_markers() {
        let root = Path::new("/a");
        let m = ArchiveMarker::new(ID);
        assert_eq!(
            m.to_text(),
            format!("sparsebak-archive\nformat=1\nid={ID}\n")
        );
        assert_eq!(ArchiveMarker::parse(&m.to_text(), root).unwrap(), m);
        // Archives made before identities: no id, still an archive.
        let old = ArchiveMarker::parse("sparsebak-archive\nformat=1\n", root).unwrap();
        assert_eq!(old.id, None);
        // Unknown keys are ignored.
        let later = format!("sparsebak-archive\nformat=1\nid={ID}\nlabel=x\n");
        assert_eq!(ArchiveMarker::parse(&later, root).unwrap(), m);
    }

    #[test]
    fn refuses_what_is_not_a_marker() {
        let root = Path::new("/a");
        for (text, why) in [
            ("", "does not start"),
            ("sparsebak-archiv\nformat=1\n", "does not start"),
            ("sparsebak-archive\n", "no format line"),
            ("sparsebak-archive\nformat=3\n", "not supported"),
            ("sparsebak-archive\nformat=2\n", "has no id"),
            (
                "sparsebak-archive\nformat=2\nid=0f8b8d3e-5c1a-4a7e-9b2d-3c4d5e6f7a8b\nencryption=rot13\n",
                "encryption \"rot13\" is not supported",
            ),
            ("sparsebak-archive\nformat=1\nformat=1\n", "twice"),
            ("sparsebak-archive\nformat=1\nid=xyz\n", "bad id"),
            (
                "sparsebak-archive\nformat=1\nid=0F8B8D3E-5C1A-4A7E-9B2D-3C4D5E6F7A8B\n",
                "bad id",
            ),
            ("sparsebak-archive\nformat=1\njunk\n", "bad line"),
        ] {
            let e = ArchiveMarker::parse(text, root).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
            assert!(e.contains("sparsebak.archive"), "{e}");
        }
    }

    #[test]
    fn reads_from_disk_bounded() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_marker(d.path()).unwrap(), None);
        assert_eq!(read_marker(&d.path().join("nothing")).unwrap(), None);
        let p = d.path().join(layout::ARCHIVE_MARKER);
        std::fs::write(&p, ArchiveMarker::new(ID).to_text()).unwrap();
        assert_eq!(
            read_marker(d.path()).unwrap().unwrap().id.as_deref(),
            Some(ID)
        );
        let mut big = ArchiveMarker::new(ID).to_text();
        big.push_str(&"x=1\n".repeat(2000));
        std::fs::write(&p, big).unwrap();
        let e = read_marker(d.path()).unwrap_err().to_string();
        assert!(e.contains("longer than 4096"), "{e}");
    }
}
