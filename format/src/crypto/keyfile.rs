//! The passphrase, the master key, and the key file that holds the master key wrapped
//! under a key derived from the passphrase (argon2id).
//!
//! Key file (`sparsebak.key`, text, at most [`MAX_KEY_FILE`] bytes):
//!
//! ```text
//! sparsebak-key 1
//! archive=<the archive's id>
//! kdf=argon2id
//! kdf_m=<memory, KiB>
//! kdf_t=<passes>
//! kdf_p=<lanes>
//! salt=<16 bytes, hex>
//! nonce=<24 bytes, hex>
//! wrapped=<48 bytes, hex: the master key sealed with XChaCha20-Poly1305>
//! ```
//!
//! The key encryption key is argon2id (version 0x13) of the passphrase's UTF-8 bytes
//! with `salt` and the three parameters, 32 bytes; `wrapped` is XChaCha20-Poly1305 under
//! it with `nonce` and associated data `sparsebak-key 1\n` + the archive's id. Changing
//! the passphrase rewrites only this file.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::XChaCha20Poly1305;
use zeroize::{Zeroize, Zeroizing};

use super::{random_bytes, CryptoError};

/// Longest key file a reader accepts, in bytes.
pub const MAX_KEY_FILE: usize = 4096;

const MAGIC: &str = "sparsebak-key 1";

/// A passphrase, wiped from memory when dropped; never printed.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct Passphrase(String);

impl Passphrase {
    /// `s` (a trailing newline, as a file or a command prints it, is not part of it).
    pub fn new(mut s: String) -> Passphrase {
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        Passphrase(s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl PartialEq for Passphrase {
    fn eq(&self, other: &Passphrase) -> bool {
        self.0 == other.0
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// The archive's master key: 32 random bytes, wiped when dropped; never printed.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl MasterKey {
    /// A new random master key.
    pub fn generate() -> Result<MasterKey, CryptoError> {
        Ok(MasterKey(random_bytes()?))
    }

    pub(crate) fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// For tests: a fixed key.
    #[cfg(any(test, feature = "testing"))]
    pub fn from_bytes(b: [u8; 32]) -> MasterKey {
        MasterKey(b)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

/// argon2id's cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory, KiB.
    pub m_kib: u32,
    /// Passes.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

impl KdfParams {
    /// What a new key file uses: 64 MiB, 3 passes, 4 lanes, the second of RFC 9106's
    /// recommended settings (section 4). The lanes are filled on parallel threads, so
    /// on 2 cores an unlock takes about half the time of one lane (same memory and
    /// work for an attacker). Key files written with 1 lane unlock as before.
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 65536,
        t: 3,
        p: 4,
    };

    /// Bounds a reader holds a key file's parameters to, so that an untrusted key file
    /// cannot make unwrapping take unbounded memory or time: 8 MiB to 1 GiB, 1 to 16
    /// passes, 1 to 8 lanes.
    pub fn check(&self) -> Result<(), CryptoError> {
        let bad = |w: String| Err(CryptoError::KeyFile(w));
        if !(8192..=1_048_576).contains(&self.m_kib) {
            return bad(format!(
                "kdf_m={} is outside 8192..=1048576 KiB",
                self.m_kib
            ));
        }
        if !(1..=16).contains(&self.t) {
            return bad(format!("kdf_t={} is outside 1..=16", self.t));
        }
        if !(1..=8).contains(&self.p) {
            return bad(format!("kdf_p={} is outside 1..=8", self.p));
        }
        Ok(())
    }
}

/// The parsed key file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFile {
    /// The id of the archive (or stream chain) the key belongs to.
    pub archive: String,
    pub kdf: KdfParams,
    pub salt: [u8; 16],
    pub nonce: [u8; 24],
    pub wrapped: [u8; 48],
}

fn aad(archive: &str) -> Vec<u8> {
    format!("{MAGIC}\n{archive}").into_bytes()
}

fn kek(
    pass: &Passphrase,
    salt: &[u8; 16],
    kdf: KdfParams,
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    kdf.check()?;
    let params = argon2::Params::new(kdf.m_kib, kdf.t, kdf.p, Some(32))
        .map_err(|e| CryptoError::KeyFile(format!("argon2 parameters: {e}")))?;
    let blocks = params.block_count();
    let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    let r = match ArgonMemory::new(blocks) {
        Some(mut mem) => {
            a.hash_password_into_with_memory(pass.bytes(), salt, &mut *out, mem.blocks())
        }
        None => a.hash_password_into(pass.bytes(), salt, &mut *out),
    };
    r.map_err(|e| CryptoError::KeyFile(format!("argon2: {e}")))?;
    Ok(out)
}

/// The memory argon2id fills: an anonymous mapping the kernel is asked to back with
/// transparent huge pages, wiped and unmapped when dropped. argon2id reads blocks at
/// places drawn all over its memory; with 4 KiB pages most of those reads miss the
/// TLB, and the first touch of each page faults. Measured on 64 MiB, 3 passes, 4
/// lanes (2 cores): 88-98 ms with the crate's own allocation, 51-55 ms here. Where
/// the kernel has no huge pages the advice is ignored and the memory works as any.
struct ArgonMemory {
    map: memmap2::MmapMut,
    blocks: usize,
}

impl ArgonMemory {
    /// Memory for `blocks` blocks; `None` when it cannot be mapped (the caller then
    /// lets the crate allocate it).
    fn new(blocks: usize) -> Option<ArgonMemory> {
        let len = blocks.checked_mul(argon2::Block::SIZE)?;
        let map = memmap2::MmapMut::map_anon(len).ok()?;
        // Advice only: without huge pages the memory is the same, only slower.
        let _ = map.advise(memmap2::Advice::HugePage);
        Some(ArgonMemory { map, blocks })
    }

    fn blocks(&mut self) -> &mut [argon2::Block] {
        let ptr = self.map.as_mut_ptr();
        debug_assert_eq!(ptr.align_offset(std::mem::align_of::<argon2::Block>()), 0);
        // SAFETY: the mapping is page-aligned (more than a block's 64-byte alignment),
        // `blocks * Block::SIZE` bytes long, zero-filled by the kernel and borrowed
        // mutably for the slice's lifetime; a block is 128 `u64`s, valid for any bytes.
        unsafe { std::slice::from_raw_parts_mut(ptr.cast::<argon2::Block>(), self.blocks) }
    }
}

impl Drop for ArgonMemory {
    fn drop(&mut self) {
        // What argon2id left in its memory derives from the passphrase.
        self.map.zeroize();
    }
}

impl KeyFile {
    /// Wrap `master` for archive `archive` under `pass`.
    pub fn wrap(
        archive: &str,
        master: &MasterKey,
        pass: &Passphrase,
        kdf: KdfParams,
    ) -> Result<KeyFile, CryptoError> {
        let salt: [u8; 16] = random_bytes()?;
        let nonce: [u8; 24] = random_bytes()?;
        let k = kek(pass, &salt, kdf)?;
        let cipher = XChaCha20Poly1305::new((&*k).into());
        let ct = cipher
            .encrypt(
                (&nonce).into(),
                Payload {
                    msg: master.bytes(),
                    aad: &aad(archive),
                },
            )
            .map_err(|_| CryptoError::KeyFile("wrapping the master key failed".into()))?;
        let wrapped: [u8; 48] = ct
            .as_slice()
            .try_into()
            .map_err(|_| CryptoError::KeyFile("wrapped key has the wrong length".into()))?;
        Ok(KeyFile {
            archive: archive.to_string(),
            kdf,
            salt,
            nonce,
            wrapped,
        })
    }

    /// The master key `pass` unwraps; [`CryptoError::WrongPassphrase`] when it does not
    /// (or the key file was altered).
    pub fn unwrap_key(&self, pass: &Passphrase) -> Result<MasterKey, CryptoError> {
        let k = kek(pass, &self.salt, self.kdf)?;
        let cipher = XChaCha20Poly1305::new((&*k).into());
        let mut pt = cipher
            .decrypt(
                (&self.nonce).into(),
                Payload {
                    msg: &self.wrapped,
                    aad: &aad(&self.archive),
                },
            )
            .map_err(|_| CryptoError::WrongPassphrase)?;
        let key: Result<[u8; 32], _> = pt.as_slice().try_into();
        pt.zeroize();
        key.map(MasterKey)
            .map_err(|_| CryptoError::KeyFile("unwrapped key has the wrong length".into()))
    }

    /// The keys of the archive (or stream chain) this key file belongs to: the master
    /// key `pass` unwraps, derived for [`KeyFile::archive`].
    pub fn unlock(&self, pass: &Passphrase) -> Result<super::ArchiveKeys, CryptoError> {
        Ok(super::ArchiveKeys::derive(
            &self.unwrap_key(pass)?,
            &self.archive,
        ))
    }

    /// The same master key under a new passphrase (new salt and nonce).
    pub fn rewrap(&self, old: &Passphrase, new: &Passphrase) -> Result<KeyFile, CryptoError> {
        let master = self.unwrap_key(old)?;
        KeyFile::wrap(&self.archive, &master, new, self.kdf)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        format!(
            "{MAGIC}\narchive={}\nkdf=argon2id\nkdf_m={}\nkdf_t={}\nkdf_p={}\nsalt={}\nnonce={}\nwrapped={}\n",
            self.archive,
            self.kdf.m_kib,
            self.kdf.t,
            self.kdf.p,
            hex::encode(self.salt),
            hex::encode(self.nonce),
            hex::encode(self.wrapped)
        )
    }

    /// Parse a key file's bytes (from an untrusted place: every field is checked).
    pub fn parse(bytes: &[u8]) -> Result<KeyFile, CryptoError> {
        let bad = |w: &str| CryptoError::KeyFile(w.to_string());
        if bytes.len() > MAX_KEY_FILE {
            return Err(bad("longer than 4096 bytes"));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad(
                "does not start with `sparsebak-key 1` (not a key file, or a newer one)",
            ));
        }
        let mut kv = std::collections::HashMap::new();
        for l in lines {
            if l.is_empty() {
                continue;
            }
            let (k, v) = l.split_once('=').ok_or_else(|| bad("a line without `=`"))?;
            if kv.insert(k, v).is_some() {
                return Err(CryptoError::KeyFile(format!("`{k}` appears twice")));
            }
        }
        let get = |k: &str| {
            kv.get(k)
                .copied()
                .ok_or_else(|| CryptoError::KeyFile(format!("no `{k}`")))
        };
        if get("kdf")? != "argon2id" {
            return Err(bad("kdf is not argon2id"));
        }
        let num = |k: &str| -> Result<u32, CryptoError> {
            get(k)?
                .parse()
                .map_err(|_| CryptoError::KeyFile(format!("`{k}` is not a number")))
        };
        fn hexn<const N: usize>(k: &str, v: &str) -> Result<[u8; N], CryptoError> {
            let b =
                hex::decode(v).map_err(|_| CryptoError::KeyFile(format!("`{k}` is not hex")))?;
            b.as_slice()
                .try_into()
                .map_err(|_| CryptoError::KeyFile(format!("`{k}` is not {N} bytes")))
        }
        let archive = get("archive")?;
        if archive.is_empty()
            || archive.len() > 64
            || !archive
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(bad("`archive` is not an identity"));
        }
        let kdf = KdfParams {
            m_kib: num("kdf_m")?,
            t: num("kdf_t")?,
            p: num("kdf_p")?,
        };
        kdf.check()?;
        Ok(KeyFile {
            archive: archive.to_string(),
            kdf,
            salt: hexn("salt", get("salt")?)?,
            nonce: hexn("nonce", get("nonce")?)?,
            wrapped: hexn("wrapped", get("wrapped")?)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        m_kib: 8192,
        t: 1,
        p: 1,
    };

    /// The key encryption key is argon2id as its reference implementation computes
    /// it (`echo -n 'correct horse battery' | argon2 0123456789abcdef -id -t 3 -k 65536
    /// -p 4 -l 32 -r`, and `-t 1 -k 8192 -p 1`), in the memory mapped here.
    #[test]
    fn key_encryption_key_is_the_reference_argon2id() {
        let pass = Passphrase::new("correct horse battery".into());
        for (kdf, want) in [
            (
                KdfParams::DEFAULT,
                "5220483d4ba1637c5d5df43b377a7f6aed39a6159693d0029a3e4f76d50669ab",
            ),
            (
                FAST,
                "41dfee3d4d9d36eab3fe58cb40a52bca1a8a50b0df3bf7a044d1dba426351839",
            ),
        ] {
            let k = kek(&pass, b"0123456789abcdef", kdf).unwrap();
            assert_eq!(hex::encode(*k), want, "{kdf:?}");
        }
    }

    #[test]
    fn wrap_parse_unwrap_round_trip_and_wrong_passphrase() {
        let m = MasterKey::generate().unwrap();
        let pass = Passphrase::new("correct horse\n".into());
        let kf = KeyFile::wrap("a-1", &m, &pass, FAST).unwrap();
        let back = KeyFile::parse(kf.render().as_bytes()).unwrap();
        assert_eq!(back, kf);
        assert_eq!(back.unwrap_key(&pass).unwrap().bytes(), m.bytes());
        let wrong = Passphrase::new("correct horse!".into());
        assert_eq!(
            back.unwrap_key(&wrong).unwrap_err(),
            CryptoError::WrongPassphrase
        );
        // Bound to its archive: the same bytes claimed for another archive fail.
        let mut other = back.clone();
        other.archive = "a-2".into();
        assert_eq!(
            other.unwrap_key(&pass).unwrap_err(),
            CryptoError::WrongPassphrase
        );
    }

    #[test]
    fn rewrap_keeps_the_master_key() {
        let m = MasterKey::generate().unwrap();
        let (a, b) = (Passphrase::new("a".into()), Passphrase::new("b".into()));
        let kf = KeyFile::wrap("x", &m, &a, FAST).unwrap();
        let kf2 = kf.rewrap(&a, &b).unwrap();
        assert_ne!(kf2.wrapped, kf.wrapped);
        assert_eq!(kf2.unwrap_key(&b).unwrap().bytes(), m.bytes());
        assert_eq!(
            kf2.unwrap_key(&a).unwrap_err(),
            CryptoError::WrongPassphrase
        );
    }

    #[test]
    fn hostile_key_files_are_refused_before_any_work() {
        let m = MasterKey::generate().unwrap();
        let kf = KeyFile::wrap("x", &m, &Passphrase::new("p".into()), FAST).unwrap();
        let t = kf.render();
        for (from, to, says) in [
            ("kdf_m=8192", "kdf_m=4294967295", "kdf_m"),
            ("kdf_t=1", "kdf_t=100000", "kdf_t"),
            ("kdf_p=1", "kdf_p=0", "kdf_p"),
            ("sparsebak-key 1", "sparsebak-key 9", "sparsebak-key 1"),
            ("kdf=argon2id", "kdf=scrypt", "argon2id"),
        ] {
            let e = KeyFile::parse(t.replace(from, to).as_bytes()).unwrap_err();
            assert!(e.to_string().contains(says), "{from}: {e}");
        }
        assert!(KeyFile::parse(&vec![b'a'; 5000]).is_err());
        let cut = &t[..t.len() - 10];
        assert!(KeyFile::parse(cut.as_bytes()).is_err());
    }

    #[test]
    fn nothing_secret_in_debug_output() {
        let p = Passphrase::new("hunter2".into());
        let m = MasterKey::from_bytes([7; 32]);
        assert!(!format!("{p:?}{m:?}").contains("hunter2"));
        assert!(!format!("{m:?}").contains("07"));
    }
}
