//! The key file on paper: short lines, each with its own checksum, to type back.
//!
//! ```text
//! sparsebak-key-paper 1 lines=7
//! 01 abcd efgh ijkl mnop qrst uvwx yz23 4567 ab3x
//! ...
//! ```
//!
//! The lines after the first hold, in lower-case base32 (RFC 4648 alphabet, no
//! padding), the key file's text compressed to its fields: `1` (a version byte),
//! the archive id's length and bytes, `kdf_m` (`u32` little-endian), `kdf_t`, `kdf_p`
//! (one byte each), then salt (16), nonce (24) and wrapped key (48). Each line holds 32
//! characters (the last may hold fewer) in groups of 4, after its number (two digits)
//! and before its checksum: the first 4 base32 characters of the SHA-256 of the line's
//! number (as written) and its 32 characters. Spaces do not count when typed back, and
//! upper case is read as lower case; a line whose checksum fails is named.

use sha2::Digest;

use super::keyfile::{KdfParams, KeyFile};
use super::CryptoError;

const HEAD: &str = "sparsebak-key-paper 1";
const PER_LINE: usize = 32;

// The same base32 as name tokens.
use super::keys::base32 as enc;

fn checksum(no: &str, chars: &str) -> String {
    let h = sha2::Sha256::digest(format!("{no} {chars}").as_bytes());
    enc().encode(&h)[..4].to_string()
}

/// `key`'s paper form.
pub fn export(key: &KeyFile) -> String {
    let mut b = vec![1u8, key.archive.len() as u8];
    b.extend_from_slice(key.archive.as_bytes());
    b.extend_from_slice(&key.kdf.m_kib.to_le_bytes());
    b.push(key.kdf.t as u8);
    b.push(key.kdf.p as u8);
    b.extend_from_slice(&key.salt);
    b.extend_from_slice(&key.nonce);
    b.extend_from_slice(&key.wrapped);
    let text = enc().encode(&b);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(PER_LINE)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    let mut out = format!("{HEAD} lines={}\n", lines.len());
    for (i, l) in lines.iter().enumerate() {
        let no = format!("{:02}", i + 1);
        let groups: Vec<&str> = l
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap_or(""))
            .collect();
        out.push_str(&format!("{no} {} {}\n", groups.join(" "), checksum(&no, l)));
    }
    out
}

/// The key file typed back from its paper form (blank lines and spacing do not matter).
pub fn import(text: &str) -> Result<KeyFile, CryptoError> {
    let bad = |w: String| CryptoError::KeyFile(w);
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let head = lines
        .next()
        .ok_or_else(|| bad("paper key: nothing typed".into()))?;
    let head = head
        .to_ascii_lowercase()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let n: usize = head
        .strip_prefix(HEAD)
        .and_then(|r| r.trim().strip_prefix("lines="))
        .and_then(|n| n.parse().ok())
        .filter(|&n| (1..=99).contains(&n))
        .ok_or_else(|| {
            bad(format!(
                "paper key: the first line must be `{HEAD} lines=N`"
            ))
        })?;
    let mut data = String::new();
    let mut count = 0;
    for (i, line) in lines.enumerate() {
        let lower = line.to_ascii_lowercase();
        let words: Vec<&str> = lower.split_whitespace().collect();
        let no = format!("{:02}", i + 1);
        if words.len() < 3 || words[0] != no {
            return Err(bad(format!(
                "paper key: line {no} should start with `{no}` and end with its checksum"
            )));
        }
        let chars: String = words[1..words.len() - 1].concat();
        if chars.len() > PER_LINE || checksum(&no, &chars) != words[words.len() - 1] {
            return Err(bad(format!(
                "paper key: line {no} does not match its checksum; check it for typing errors"
            )));
        }
        data.push_str(&chars);
        count += 1;
    }
    if count != n {
        return Err(bad(format!(
            "paper key: {count} lines typed, the paper has {n}"
        )));
    }
    let b = enc()
        .decode(data.as_bytes())
        .map_err(|_| bad("paper key: not base32".into()))?;
    let mut r = b.as_slice();
    let mut take = |n: usize| -> Result<&[u8], CryptoError> {
        if r.len() < n {
            return Err(CryptoError::KeyFile("paper key: too short".into()));
        }
        let (a, rest) = r.split_at(n);
        r = rest;
        Ok(a)
    };
    if take(1)? != [1] {
        return Err(bad("paper key: unknown version".into()));
    }
    let idlen = take(1)?[0] as usize;
    let archive = String::from_utf8(take(idlen)?.to_vec())
        .map_err(|_| bad("paper key: archive id is not text".into()))?;
    let m = u32::from_le_bytes(take(4)?.try_into().map_err(|_| bad("short".into()))?);
    let t = take(1)?[0] as u32;
    let p = take(1)?[0] as u32;
    let salt = take(16)?.try_into().map_err(|_| bad("short".into()))?;
    let nonce = take(24)?.try_into().map_err(|_| bad("short".into()))?;
    let wrapped = take(48)?.try_into().map_err(|_| bad("short".into()))?;
    if !r.is_empty() {
        return Err(bad("paper key: bytes left over".into()));
    }
    let key = KeyFile {
        archive,
        kdf: KdfParams { m_kib: m, t, p },
        salt,
        nonce,
        wrapped,
    };
    // The same checks as a key file read from a disk.
    KeyFile::parse(key.render().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{MasterKey, Passphrase};

    #[test]
    fn paper_round_trip_and_typing_errors_named() {
        let kf = KeyFile::wrap(
            "0f8b8d3e-5c1a-4a7e-9b2d-3c4d5e6f7a8b",
            &MasterKey::generate().unwrap(),
            &Passphrase::new("p".into()),
            KdfParams {
                m_kib: 8192,
                t: 1,
                p: 1,
            },
        )
        .unwrap();
        let paper = export(&kf);
        assert!(paper.lines().skip(1).all(|l| l.len() <= 2 + 1 + 39 + 1 + 4));
        assert_eq!(import(&paper).unwrap(), kf);
        // Typed in upper case with other spacing.
        let typed: String = paper
            .lines()
            .map(|l| format!("  {}  \n\n", l.replace(' ', "  ").to_uppercase()))
            .collect();
        assert_eq!(import(&typed).unwrap_or_else(|e| panic!("{e}")), kf);
        // One wrong character on line 3 is named.
        let mut lines: Vec<String> = paper.lines().map(String::from).collect();
        let l = &mut lines[3];
        let c = if l.as_bytes()[3] == b'a' { "b" } else { "a" };
        l.replace_range(3..4, c);
        let e = import(&lines.join("\n")).unwrap_err().to_string();
        assert!(e.contains("line 03"), "{e}");
        // A missing line.
        let short: Vec<&str> = paper.lines().take(3).collect();
        assert!(import(&short.join("\n")).is_err());
    }
}
