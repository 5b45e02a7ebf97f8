//! Chunk encoding: how one chunk's bytes are stored in its file.
//!
//! A chunk is `chunksize` bytes of the volume (the last one zero-padded). Its file holds
//! either the raw bytes (`compression=none`) or one zstd frame of them
//! (`compression=zstd`); the session info names which. Its identity is the SHA-256 of the
//! uncompressed bytes, as written in the manifest. The codecs themselves live behind
//! the seam of [`crate::codec`].

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

    /// Decode a chunk file's bytes into exactly `chunksize` bytes: the plain codec of
    /// [`crate::codec`] without a context (the error is the reason alone).
    pub fn decode(&self, stored: &[u8], chunksize: usize) -> Result<Vec<u8>, String> {
        crate::codec::decode_plain(*self, stored, chunksize)
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

/// A small zstd frame that decodes to 256 MiB of zeros (no content size in its
/// header): decoders must stop at the chunk size.
#[cfg(test)]
pub(crate) fn zstd_bomb() -> Vec<u8> {
    let mut enc = zstd::stream::Encoder::new(Vec::new(), 1).expect("an encoder in memory");
    enc.include_contentsize(false)
        .expect("a setting of an encoder in memory");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        std::io::Write::write_all(&mut enc, &zeros).expect("writing to memory");
    }
    enc.finish().expect("writing to memory")
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

    /// A zstd frame whose header claims `content_size` bytes, holding one raw block
    /// of `data`.
    fn frame_claiming(content_size: u64, data: &[u8]) -> Vec<u8> {
        let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
        // Frame header descriptor: 8-byte content size, single segment.
        f.push(0b1110_0000);
        f.extend_from_slice(&content_size.to_le_bytes());
        // Last block, raw, data.len() bytes.
        let bh = 1u32 | ((data.len() as u32) << 3);
        f.extend_from_slice(&bh.to_le_bytes()[..3]);
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn decode_never_trusts_the_frame_content_size() {
        let data = vec![3u8; 4096];
        // The hand-made frame is valid as it stands.
        assert_eq!(
            Codec::Zstd
                .decode(&frame_claiming(4096, &data), 4096)
                .unwrap(),
            data
        );
        // A frame that claims 1 TiB fails at once, allocating one chunk at most.
        let e = Codec::Zstd
            .decode(&frame_claiming(1 << 40, &data), 4096)
            .unwrap_err();
        assert!(e.starts_with("zstd: "), "{e}");
        // A small frame that really decodes to 256 MiB of zeros stops at the chunk
        // size (the test would run out of time and memory otherwise).
        let bomb = zstd_bomb();
        assert!(bomb.len() < 1 << 20, "{}", bomb.len());
        let t = std::time::Instant::now();
        assert!(Codec::Zstd.decode(&bomb, 65536).is_err());
        assert!(t.elapsed() < std::time::Duration::from_secs(5));
    }
}
