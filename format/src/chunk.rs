//! Chunk encoding: how one chunk's bytes are stored in its file.
//!
//! A chunk is `chunksize` bytes of the volume (the last one zero-padded). Its file holds
//! either the raw bytes (`compression=none`) or one zstd frame of them
//! (`compression=zstd`); the session info names which. Its identity is the SHA-256 of the
//! uncompressed bytes, as written in the manifest.

use sha2::{Digest, Sha256};

use crate::Hash;

/// How the chunk files of a session are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Zstd,
}

impl Codec {
    pub fn name(&self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Zstd => "zstd",
        }
    }

    pub fn from_name(s: &str) -> Option<Codec> {
        match s {
            "none" => Some(Codec::None),
            "zstd" => Some(Codec::Zstd),
            _ => None,
        }
    }

    /// Decode a chunk file's bytes into exactly `chunksize` bytes.
    pub fn decode(&self, stored: &[u8], chunksize: usize) -> Result<Vec<u8>, String> {
        let data = match self {
            Codec::None => stored.to_vec(),
            Codec::Zstd => {
                // A frame never decodes to more than one chunk: bound the output so a
                // corrupt or hostile frame cannot make us allocate without limit. One
                // decompression context per thread, reused.
                thread_local! {
                    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                        const { std::cell::RefCell::new(None) };
                }
                DCTX.with(|d| -> Result<Vec<u8>, String> {
                    let mut d = d.borrow_mut();
                    if d.is_none() {
                        *d = Some(
                            zstd::bulk::Decompressor::new().map_err(|e| format!("zstd: {e}"))?,
                        );
                    }
                    match d.as_mut() {
                        Some(dc) => dc
                            .decompress(stored, chunksize)
                            .map_err(|e| format!("zstd: {e}")),
                        None => Err("zstd: no decompression context".into()),
                    }
                })?
            }
        };
        if data.len() != chunksize {
            return Err(format!(
                "decodes to {} bytes, expected {chunksize}",
                data.len()
            ));
        }
        Ok(data)
    }
}

/// SHA-256 of a chunk's uncompressed bytes.
pub fn hash(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

/// Whether every byte is zero (word at a time).
pub fn is_zero(data: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to gives correctly aligned middle.
    let (head, mid, tail) = unsafe { data.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 65536 + 3];
        assert!(is_zero(&v[1..]));
        v[65536 + 2] = 1;
        assert!(!is_zero(&v[1..]));
        v[65536 + 2] = 0;
        v[1] = 9;
        assert!(!is_zero(&v[1..]));
    }

    #[test]
    fn decode_checks_length() {
        let data = vec![5u8; 4096];
        let z = zstd::bulk::compress(&data, 3).unwrap();
        assert_eq!(Codec::Zstd.decode(&z, 4096).unwrap(), data);
        assert!(Codec::Zstd.decode(&z, 8192).is_err());
        assert!(Codec::Zstd.decode(&z[..z.len() - 1], 4096).is_err());
        assert!(Codec::None.decode(&data[1..], 4096).is_err());
    }
}
