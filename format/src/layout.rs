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
/// Identity file inside an encrypted archive's volume folder: the volume's id, sealed
/// for the volume's name.
pub const VOLUME_ID_FILE: &str = "volume";
/// The identity file a rename writes for the new name before the folder moves; it
/// replaces [`VOLUME_ID_FILE`] once the folder is in place.
pub const VOLUME_ID_NEXT: &str = "volume.next";

/// The text of an identity file: `sparsebak-volume 1`, then `id=<volume id>`.
pub fn volume_id_text(id: &str) -> String {
    format!("sparsebak-volume 1\nid={id}\n")
}

/// The volume id an identity file's text holds.
pub fn parse_volume_id_text(text: &str) -> Option<String> {
    let rest = text.strip_prefix("sparsebak-volume 1\nid=")?;
    let id = rest.strip_suffix('\n')?;
    crate::info::volume_id_ok(id).then(|| id.to_string())
}

/// Lock file inside a volume folder.
pub const LOCK_FILE: &str = ".lock";
/// Journal of an unfinished prune inside a volume folder (see the format description).
pub const PRUNE_JOURNAL: &str = ".prune-journal";

/// Longest volume name, in bytes. The longest names sparsebak makes from a volume
/// name are `<volume>.tick.origin` (reflink snapshots, beside
/// `.<volume>.tick.origin.sparsebak-partial` while it is written) and the LVM snapshot
/// `<volume>.tock`, which LVM limits to 127 bytes; 120 leaves all of them within the
/// limits of file names (255 bytes) and of LVM.
pub const MAX_VOLUME_NAME: usize = 120;

/// Why `name` cannot be a volume name, or `None` when it can.
///
/// A volume name becomes a folder in the archive and in the metadir, the file
/// `voldir/<name>` and the LV `vgname/<name>`, and the prefix of the names of its
/// snapshots (`<name>.tick`, `<name>.tock`). So it is 1 to [`MAX_VOLUME_NAME`] bytes of
/// letters, digits and `+ _ . -`, and none of the names sparsebak uses for itself:
/// names starting with `.` (`.lock`, `.tmp-*`, `.prune-journal`, `.sparsebak`, `.`,
/// `..`) or `-` (read as an option), session entries (`S_*`), the archive marker
/// (`sparsebak.*`), the metadir's catalog (`catalog.sqlite*`), and names ending in
/// `.tick` or `.tock` (the snapshots of another volume).
pub fn volume_name_problem(name: &str) -> Option<String> {
    let why = |s: &str| Some(s.to_string());
    if name.is_empty() {
        return why("it is empty");
    }
    if name.contains('/') {
        return why("it contains '/'");
    }
    if name.contains('\0') {
        return why("it contains a NUL byte");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+_.-".contains(c)))
    {
        return Some(format!(
            "it contains {c:?}; only letters, digits and + _ . - are allowed"
        ));
    }
    if name.len() > MAX_VOLUME_NAME {
        return Some(format!(
            "it is {} bytes long; at most {MAX_VOLUME_NAME} are allowed, so that the names \
             made from it (`<name>.tick.origin`, the LVM snapshot `<name>.tock`) fit",
            name.len()
        ));
    }
    if name.starts_with('.') {
        return why(
            "it starts with '.': such names are sparsebak's own (.lock, .tmp-*, \
             .prune-journal, .sparsebak) or the folder itself and its parent (., ..)",
        );
    }
    if name.starts_with('-') {
        return why("it starts with '-' and would be read as an option");
    }
    if name.starts_with(SESSION_PREFIX) {
        return why("it starts with S_, the prefix of session folders and session tar files");
    }
    if name.starts_with("sparsebak.") {
        return Some(format!(
            "names starting with sparsebak. are kept for the archive's own files ({ARCHIVE_MARKER})"
        ));
    }
    if name.starts_with(CATALOG_FILE) {
        return Some(format!(
            "the metadir holds the catalog {CATALOG_FILE} and its journal files \
             ({CATALOG_FILE}-journal, -wal, -shm)"
        ));
    }
    if name.ends_with(".tick") || name.ends_with(".tock") {
        return why("names ending in .tick or .tock are the snapshots of another volume");
    }
    None
}

/// The SQLite catalog at the root of the metadir (the source side).
pub const CATALOG_FILE: &str = "catalog.sqlite";

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
    fn volume_names() {
        let long = "v".repeat(MAX_VOLUME_NAME);
        for ok in [
            "vm-work-private",
            "a",
            "A.b+c_d-e",
            "lock",
            "x.tick2",
            long.as_str(),
        ] {
            assert_eq!(volume_name_problem(ok), None, "{ok}");
        }
        let too_long = "v".repeat(MAX_VOLUME_NAME + 1);
        for (bad, why) in [
            ("", "empty"),
            ("a/b", "'/'"),
            ("..", "starts with '.'"),
            (".", "starts with '.'"),
            ("a\0b", "NUL"),
            ("a b", "' '"),
            ("a;b", "';'"),
            (".lock", ".lock"),
            (".tmp-S_20261123-212200", ".tmp-*"),
            (".prune-journal", ".prune-journal"),
            (".sparsebak", ".sparsebak"),
            ("-v", "option"),
            ("S_20261123-212200", "session folders"),
            ("S_x", "session folders"),
            ("sparsebak.archive", "sparsebak.archive"),
            ("sparsebak.id", "sparsebak.archive"),
            ("catalog.sqlite", "catalog"),
            ("catalog.sqlite-journal", "journal"),
            ("vm.tick", "snapshots of another volume"),
            ("vm.tock", "snapshots of another volume"),
            (too_long.as_str(), "at most 120"),
        ] {
            let got = volume_name_problem(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad:?}: {got:?} lacks {why:?}");
        }
    }

    #[test]
    fn session_ids() {
        assert!(is_session_id("20261123-212200"));
        assert!(!is_session_id("2026112-3212200"));
        assert!(!is_session_id("20261123_212200"));
    }
}
