//! Reading a tar session's member headers in order, without its index: to rebuild a
//! lost or damaged index (`repair`), and to check every header against the index
//! (`verify`), so that a tar whose headers were damaged (and that `tar -xf` can no
//! longer read) is found even while its contents are intact.

use std::path::Path;

use crate::archive_fs::ArchiveFs;
use crate::error::{FormatError, IoContext, Result};

use super::TAR_BLOCK;

/// Bytes read at a time while walking the headers.
const WINDOW: u64 = 1 << 20;

/// What a member name stands for in the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberName {
    Chunk(u64),
    Manifest,
    Info,
}

/// Where every member's content is in the tar, as its headers say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    /// Chunk members in tar order: address, content offset, content length.
    pub chunks: Vec<(u64, u64, u64)>,
    /// The manifest member's content: offset, length.
    pub manifest: (u64, u64),
    /// The info member's content: offset, length.
    pub info: (u64, u64),
}

/// An octal number field of a ustar header (NUL or space terminated).
fn octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() || s.len() > 22 {
        return None;
    }
    let mut n: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        n = n.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// The member name of a ustar header (prefix, `/`, name), or why it has none.
fn member_name(h: &[u8]) -> std::result::Result<String, String> {
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
        std::str::from_utf8(&f[..end])
            .map(str::to_string)
            .map_err(|_| "its name is not UTF-8".to_string())
    };
    let name = field(0..100)?;
    let prefix = field(345..500)?;
    Ok(if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    })
}

/// Check one 512-byte header: its checksum, ustar magic and type. Returns the member's
/// name and content length.
fn parse_header(h: &[u8]) -> std::result::Result<(String, u64), String> {
    let recorded = octal(&h[148..156]).ok_or("its checksum field is not a number")?;
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    if sum != recorded {
        return Err(format!(
            "its checksum does not match (recorded {recorded}, computed {sum}): the header is damaged"
        ));
    }
    if &h[257..262] != b"ustar" {
        return Err("it is not a ustar header".into());
    }
    if !matches!(h[156], b'0' | 0) {
        return Err(format!(
            "it is not a regular file (type {:?})",
            h[156] as char
        ));
    }
    let size = octal(&h[124..136]).ok_or("its size field is not a number")?;
    Ok((member_name(h)?, size))
}

/// Read the member headers of the tar at `path` (`tar_len` bytes), through `fs`, and
/// where each member's content is. `name_of` says what a member name stands for
/// (`None`: not a member of this session). The members must be as sparsebak writes
/// them: chunks in strictly increasing address order, then the manifest, then the
/// info, then nothing but the end-of-archive blocks (or the end of the file).
pub fn walk(
    fs: &dyn ArchiveFs,
    path: &Path,
    tar_len: u64,
    name_of: &dyn Fn(&str) -> Option<MemberName>,
) -> Result<Walked> {
    let bad = |at: u64, why: String| {
        FormatError::Other(format!(
            "{}: member header at byte {at}: {why}",
            fs.display(path)
        ))
    };
    let mut out = Walked::default();
    let (mut seen_manifest, mut seen_info) = (false, false);
    let mut at = 0u64;
    // Headers are read through a window of WINDOW bytes: one read per window, not one
    // per member (a read per 512-byte header of a 1 GiB session of 64 KiB chunks made
    // a cold-cache verify of it 3.5 times as long), and the window leaves the members'
    // contents in the page cache for the reads that follow.
    let mut win: Vec<u8> = Vec::new();
    let mut win_at = 0u64;
    while at + TAR_BLOCK <= tar_len {
        let inside = at >= win_at && at + TAR_BLOCK <= win_at + win.len() as u64;
        if !inside {
            let want = WINDOW.min(tar_len - at) as usize;
            win = fs.read_at(path, at, want).at(path)?;
            win_at = at;
        }
        let from = (at - win_at) as usize;
        let Some(h) = win.get(from..from + TAR_BLOCK as usize) else {
            return Err(bad(at, "the tar ends inside it".into()));
        };
        if h.iter().all(|&b| b == 0) {
            break;
        }
        let (name, size) = parse_header(h).map_err(|w| bad(at, w))?;
        let off = at + TAR_BLOCK;
        let end = off
            .checked_add(size)
            .filter(|&e| e <= tar_len)
            .ok_or_else(|| {
                bad(
                    at,
                    format!("member {name} of {size} bytes ends past the tar"),
                )
            })?;
        if seen_info {
            return Err(bad(at, format!("member {name} follows the info")));
        }
        match name_of(&name) {
            None => return Err(bad(at, format!("{name} names no member of this session"))),
            Some(MemberName::Chunk(a)) => {
                if seen_manifest {
                    return Err(bad(at, format!("chunk member {name} follows the manifest")));
                }
                if out.chunks.last().is_some_and(|&(l, _, _)| a <= l) {
                    return Err(bad(
                        at,
                        format!("chunk member {name} is out of address order"),
                    ));
                }
                out.chunks.push((a, off, size));
            }
            Some(MemberName::Manifest) => {
                if seen_manifest {
                    return Err(bad(at, "a second manifest member".into()));
                }
                seen_manifest = true;
                out.manifest = (off, size);
            }
            Some(MemberName::Info) => {
                if !seen_manifest {
                    return Err(bad(at, "the info member comes before the manifest".into()));
                }
                seen_info = true;
                out.info = (off, size);
            }
        }
        at = end.div_ceil(TAR_BLOCK) * TAR_BLOCK;
    }
    if !seen_info {
        return Err(FormatError::Other(format!(
            "{}: the tar ends before its {} member",
            fs.display(path),
            if seen_manifest { "info" } else { "manifest" }
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive_fs::LocalFs;
    use crate::tarsession::ustar_header;

    fn tar_of(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let h = ustar_header(name, data.len() as u64, 0).unwrap();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn names(n: &str) -> Option<MemberName> {
        match n {
            "S_1/manifest" => Some(MemberName::Manifest),
            "S_1/info" => Some(MemberName::Info),
            _ => n
                .strip_prefix("S_1/c")
                .and_then(|a| a.parse().ok())
                .map(MemberName::Chunk),
        }
    }

    #[test]
    fn walks_the_members_and_finds_a_damaged_header() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t.tar");
        let bytes = tar_of(&[
            ("S_1/c1", b"one"),
            ("S_1/c7", &[7u8; 600]),
            ("S_1/manifest", b"m"),
            ("S_1/info", b"ii"),
        ]);
        std::fs::write(&p, &bytes).unwrap();
        let w = walk(&LocalFs, &p, bytes.len() as u64, &names).unwrap();
        assert_eq!(w.chunks, vec![(1, 512, 3), (7, 1536, 600)]);
        assert_eq!(w.manifest, (3072, 1));
        assert_eq!(w.info, (4096, 2));
        // A flipped byte in the name, and one in the size field of the second header.
        for at in [10usize, 1024 + 126] {
            let mut b = bytes.clone();
            b[at] ^= 0x21;
            std::fs::write(&p, &b).unwrap();
            let e = walk(&LocalFs, &p, b.len() as u64, &names)
                .unwrap_err()
                .to_string();
            assert!(e.contains("checksum does not match"), "{e}");
            assert!(
                e.contains(&format!("member header at byte {}", at / 512 * 512)),
                "{e}"
            );
        }
        // Out of order, and a missing info.
        let b = tar_of(&[("S_1/c7", b"x"), ("S_1/c1", b"y")]);
        std::fs::write(&p, &b).unwrap();
        let e = walk(&LocalFs, &p, b.len() as u64, &names)
            .unwrap_err()
            .to_string();
        assert!(e.contains("out of address order"), "{e}");
        let b = tar_of(&[("S_1/c1", b"y"), ("S_1/manifest", b"m")]);
        std::fs::write(&p, &b).unwrap();
        let e = walk(&LocalFs, &p, b.len() as u64, &names)
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("the tar ends before its info member"), "{e}");
    }
}
