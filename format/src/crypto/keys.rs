//! The keys derived from an archive's master key, and what each one does.
//!
//! HKDF-SHA256 with the master key as input key material, the archive's id (UTF-8) as
//! salt, and one `info` label per key:
//!
//! | label | bytes | used for |
//! |---|---|---|
//! | `sparsebak 2 data` | 32 | the key each sealed object's key is derived from ([`super::envelope`]) |
//! | `sparsebak 2 chunk identity` | 32 | HMAC-SHA256 of a chunk's plain bytes: its identity in manifests |
//! | `sparsebak 2 names` | 64 | AES-SIV (RFC 5297, AES-256) of volume names, session IDs and chunk addresses: the names on the destination |
//!
//! A name token is the AES-SIV ciphertext (16-byte synthetic IV, then the encrypted
//! name) of the plain name with one associated-data header saying what it names
//! (`volume`; `session`; `chunk` and then the session ID), written in lower-case
//! base32 without padding (RFC 4648 alphabet). Equal names give equal tokens (that is
//! how a name is found again); nothing else about them shows.

use std::path::PathBuf;
use std::sync::OnceLock;

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use hmac::Mac;
use zeroize::Zeroizing;

use super::keyfile::MasterKey;
use super::CryptoError;
use crate::Hash;

/// The derived keys of one archive (or stream chain), wiped when dropped.
#[derive(zeroize::ZeroizeOnDrop)]
pub struct ArchiveKeys {
    #[zeroize(skip)]
    archive: String,
    pub(crate) data: [u8; 32],
    ids: [u8; 32],
    names: [u8; 64],
}

impl std::fmt::Debug for ArchiveKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArchiveKeys")
            .field("archive", &self.archive)
            .finish_non_exhaustive()
    }
}

/// Lower-case base32 without padding (RFC 4648 alphabet): name tokens and the paper
/// form of the key file.
pub(crate) fn base32() -> &'static data_encoding::Encoding {
    static ENC: OnceLock<data_encoding::Encoding> = OnceLock::new();
    ENC.get_or_init(|| {
        let mut spec = data_encoding::Specification::new();
        spec.symbols.push_str("abcdefghijklmnopqrstuvwxyz234567");
        // A fixed, valid specification: it cannot fail.
        spec.encoding()
            .unwrap_or_else(|_| data_encoding::BASE32_NOPAD.clone())
    })
}

/// Prefix of an encrypted volume's folder name.
pub const VOLUME_DIR_PREFIX: &str = "v";

/// Characters of a chunk folder's name (20 bits: two regions of a session that draw
/// the same name share the folder, which is harmless).
pub const CHUNK_FOLDER_LEN: usize = 4;

/// Longest name token accepted when decoding, in characters (a 120-byte volume name
/// gives 218).
const MAX_TOKEN: usize = 240;

impl ArchiveKeys {
    /// The keys of archive `archive_id` whose master key is `master`.
    pub fn derive(master: &MasterKey, archive_id: &str) -> ArchiveKeys {
        let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(archive_id.as_bytes()), master.bytes());
        let mut keys = ArchiveKeys {
            archive: archive_id.to_string(),
            data: [0; 32],
            ids: [0; 32],
            names: [0; 64],
        };
        // Output lengths of at most 255 * 32 bytes cannot fail.
        let _ = hk.expand(b"sparsebak 2 data", &mut keys.data);
        let _ = hk.expand(b"sparsebak 2 chunk identity", &mut keys.ids);
        let _ = hk.expand(b"sparsebak 2 names", &mut keys.names);
        keys
    }

    /// The archive (or stream chain) these keys belong to.
    pub fn archive(&self) -> &str {
        &self.archive
    }

    /// A chunk's identity: HMAC-SHA256 of its plain bytes under the identity key.
    pub fn chunk_id(&self, data: &[u8]) -> Hash {
        // HMAC takes a key of any length.
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.ids)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn siv(&self) -> Aes256Siv {
        let key = Zeroizing::new(self.names);
        Aes256Siv::new((&*key).into())
    }

    fn seal_name(&self, headers: &[&[u8]], plain: &[u8]) -> String {
        match self.siv().encrypt(headers, plain) {
            Ok(ct) => base32().encode(&ct),
            // AES-SIV fails only past 126 headers or absurd lengths.
            Err(_) => unreachable!("AES-SIV of a short name"),
        }
    }

    fn open_name(&self, headers: &[&[u8]], token: &str) -> Option<Vec<u8>> {
        if token.len() > MAX_TOKEN {
            return None;
        }
        let ct = base32().decode(token.as_bytes()).ok()?;
        self.siv().decrypt(headers, &ct).ok()
    }

    /// The folder name of volume `name`: `v` + its token.
    pub fn volume_dir(&self, name: &str) -> String {
        format!(
            "{VOLUME_DIR_PREFIX}{}",
            self.seal_name(&[b"volume"], name.as_bytes())
        )
    }

    /// The volume a folder name stands for; `None` for a name this key did not make.
    pub fn volume_of_dir(&self, dir: &str) -> Option<String> {
        let tok = dir.strip_prefix(VOLUME_DIR_PREFIX)?;
        String::from_utf8(self.open_name(&[b"volume"], tok)?).ok()
    }

    /// The token that stands for session `id` (in `S_<token>` and the like).
    pub fn session_token(&self, id: &str) -> String {
        self.seal_name(&[b"session"], id.as_bytes())
    }

    /// The session ID `token` stands for; `None` for one this key did not make.
    pub fn session_of_token(&self, token: &str) -> Option<String> {
        String::from_utf8(self.open_name(&[b"session"], token)?).ok()
    }

    /// The token of the chunk at `addr` in session `id`'s folder.
    pub fn chunk_token(&self, id: &str, addr: u64) -> String {
        self.seal_name(&[b"chunk", id.as_bytes()], &addr.to_be_bytes())
    }

    /// The address a chunk file name of session `id` stands for.
    pub fn addr_of_chunk_token(&self, id: &str, token: &str) -> Option<u64> {
        let b = self.open_name(&[b"chunk", id.as_bytes()], token)?;
        Some(u64::from_be_bytes(b.as_slice().try_into().ok()?))
    }

    /// The folder, inside session `id`'s folder, of the chunks of one region of
    /// `2^PREFIX_SHIFT` bytes (256 MiB) of the volume, as a plain session groups them:
    /// the first 4 characters of the AES-SIV token of the region's number. Chunks
    /// written one after the other then share a folder, so the filesystem places them
    /// side by side (with a folder drawn at random per chunk, a send of 1 GiB on XFS
    /// took 12 times as many write requests). What it shows: how the session's chunks
    /// fall into regions, not which regions (the token is per session).
    pub fn chunk_folder(&self, id: &str, addr: u64) -> String {
        let region = addr >> crate::layout::PREFIX_SHIFT;
        let mut t = self.seal_name(&[b"chunk folder", id.as_bytes()], &region.to_be_bytes());
        t.truncate(CHUNK_FOLDER_LEN);
        t
    }

    /// The chunk file of `addr` relative to session `id`'s folder:
    /// `<chunk folder>/<chunk token>`.
    pub fn chunk_rel_path(&self, id: &str, addr: u64) -> PathBuf {
        PathBuf::from(self.chunk_folder(id, addr)).join(self.chunk_token(id, addr))
    }

    /// For tests: keys of a fixed master key.
    #[cfg(any(test, feature = "testing"))]
    pub fn for_tests(archive_id: &str) -> ArchiveKeys {
        ArchiveKeys::derive(&MasterKey::from_bytes([42; 32]), archive_id)
    }
}

/// Check that `token` could be a name token (lower-case base32), for code that
/// refuses other names before asking the key.
pub fn looks_like_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN
        && token
            .bytes()
            .all(|c| c.is_ascii_lowercase() || (b'2'..=b'7').contains(&c))
}

impl From<CryptoError> for crate::FormatError {
    fn from(e: CryptoError) -> crate::FormatError {
        crate::FormatError::Other(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_hide_what_they_name() {
        let k = ArchiveKeys::for_tests("arch");
        let d = k.volume_dir("work-private");
        assert!(d.starts_with('v') && !d.contains("work"));
        assert!(looks_like_token(&d[1..]));
        assert_eq!(k.volume_of_dir(&d).as_deref(), Some("work-private"));
        assert_eq!(k.volume_dir("work-private"), d, "deterministic");
        let long = "a".repeat(120);
        assert!(k.volume_dir(&long).len() < 255);
        assert_eq!(k.volume_of_dir(&k.volume_dir(&long)), Some(long));

        let s = k.session_token("20261129-101010");
        assert!(!s.contains("2026"));
        assert_eq!(k.session_of_token(&s).as_deref(), Some("20261129-101010"));
        // A session token is not a volume name and the other way round.
        assert_eq!(k.volume_of_dir(&format!("v{s}")), None);

        let c1 = k.chunk_token("20261129-101010", 0x10000);
        let c2 = k.chunk_token("20261129-101011", 0x10000);
        assert_ne!(
            c1, c2,
            "the same address has another name in another session"
        );
        assert_eq!(k.addr_of_chunk_token("20261129-101010", &c1), Some(0x10000));
        assert_eq!(k.addr_of_chunk_token("20261129-101011", &c1), None);
        let p = k.chunk_rel_path("20261129-101010", 0x10000);
        let f = k.chunk_folder("20261129-101010", 0x10000);
        assert_eq!(p, PathBuf::from(&f).join(&c1));
        assert_eq!(f.len(), CHUNK_FOLDER_LEN);
        // One folder per 256 MiB region, per session.
        assert_eq!(k.chunk_folder("20261129-101010", (1 << 28) - 1), f);
        assert_ne!(k.chunk_folder("20261129-101010", 1 << 28), f);
        assert_ne!(k.chunk_folder("20261129-101011", 0x10000), f);

        // Another archive's key makes other names and reads none of these.
        let o = ArchiveKeys::for_tests("other");
        assert_ne!(o.volume_dir("work-private"), d);
        assert_eq!(o.volume_of_dir(&d), None);
        assert_eq!(k.volume_of_dir("vzzzz"), None);
        assert_eq!(k.volume_of_dir(&format!("v{}", "a".repeat(1000))), None);
    }

    #[test]
    fn chunk_identity_is_keyed() {
        use sha2::Digest;
        let k = ArchiveKeys::for_tests("arch");
        let data = vec![5u8; 4096];
        let id = k.chunk_id(&data);
        let plain: Hash = sha2::Sha256::digest(&data).into();
        assert_ne!(id, plain);
        assert_eq!(id, k.chunk_id(&data));
        assert_ne!(id, ArchiveKeys::for_tests("b").chunk_id(&data));
    }
}
