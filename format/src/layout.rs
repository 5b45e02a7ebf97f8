//! Names of files and folders inside an archive.

use std::path::{Path, PathBuf};

/// File at the archive root that marks it and names the format version.
pub const ARCHIVE_MARKER: &str = "sparsebak.archive";
/// Prefix of a committed session folder.
pub const SESSION_PREFIX: &str = "S_";
/// Prefix of a session folder that is still being written (never part of a view).
pub const STAGING_PREFIX: &str = ".tmp-S_";
/// Suffix of a session stored as one tar file (`S_<id>.tar`).
pub const TAR_SUFFIX: &str = ".tar";
/// Suffix of a tar session's member index (`S_<id>.tar.index`).
pub const TAR_INDEX_SUFFIX: &str = ".tar.index";
/// Session info file inside a session folder.
pub const INFO_FILE: &str = "info";
/// Manifest file inside a session folder.
pub const MANIFEST_FILE: &str = "manifest";
/// Lock file inside a volume folder.
pub const LOCK_FILE: &str = ".lock";

/// Chunk files are grouped in folders named by the top 36 bits of their address
/// (9 hex digits), so a folder spans 256 MiB of the volume: 4096 chunks of 64 KiB at
/// most, 64 of 4 MiB.
pub const PREFIX_SHIFT: u32 = 28;

/// `x` + 16 lower-case hex digits: the name of the chunk at byte address `addr`.
pub fn chunk_name(addr: u64) -> String {
    format!("x{addr:016x}")
}

/// Name of the prefix folder holding the chunk at `addr`: `x` + 9 hex digits, the same
/// as the first 10 characters of the chunk name.
pub fn prefix_name(addr: u64) -> String {
    format!("x{:09x}", addr >> PREFIX_SHIFT)
}

/// Path of a chunk relative to its session folder.
pub fn chunk_rel_path(addr: u64) -> PathBuf {
    PathBuf::from(prefix_name(addr)).join(chunk_name(addr))
}

/// Session folder name for a session ID.
pub fn session_dir_name(id: &str) -> String {
    format!("{SESSION_PREFIX}{id}")
}

/// Path of a session folder inside a volume folder.
pub fn session_dir(volume_dir: &Path, id: &str) -> PathBuf {
    volume_dir.join(session_dir_name(id))
}

/// Parse the address out of a chunk file name (`x` + 16 hex digits).
pub fn parse_chunk_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix('x')?;
    if hex.len() != 16
        || !hex
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Is `id` a well-formed session ID (`YYYYMMDD-HHMMSS`, digits only)?
pub fn is_session_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 15
        && b[8] == b'-'
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[9..].iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let a = 0x1234_5678_0000u64;
        assert_eq!(chunk_name(a), "x0000123456780000");
        assert_eq!(prefix_name(a), "x000012345");
        assert!(chunk_name(a).starts_with(&prefix_name(a)));
        assert_eq!(parse_chunk_name(&chunk_name(a)), Some(a));
        assert_eq!(parse_chunk_name("x00001234567800"), None);
        assert_eq!(parse_chunk_name("x000012345678000G"), None);
        assert_eq!(parse_chunk_name("x0000123456780000.tmp"), None);
    }

    #[test]
    fn session_ids() {
        assert!(is_session_id("20261123-212200"));
        assert!(!is_session_id("2026112-3212200"));
        assert!(!is_session_id("20261123_212200"));
    }
}
