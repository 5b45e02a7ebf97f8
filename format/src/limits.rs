//! Bounds on every number read from an archive or a stream.
//!
//! The archive sits on a disk anyone can touch, and a stream arrives from anywhere: a
//! count, length or offset read from either is checked against what is possible (the
//! file's size, the chunk size, the volume size, or the sane maxima below) before
//! anything is allocated or read because of it.

use std::path::Path;

use crate::archive_fs::{ArchiveFs, LocalFs};

use crate::chunk::Codec;
use crate::error::{FormatError, IoContext, Result};

/// Smallest chunk size of the format.
pub const MIN_CHUNKSIZE: u64 = 4096;
/// Largest chunk size a reader accepts. Writers use 64 KiB to 4 MiB; the margin lets a
/// later version grow without letting a damaged file make a reader allocate gigabytes
/// per chunk.
pub const MAX_CHUNKSIZE: u64 = 64 << 20;
/// Largest volume size a reader accepts (1 EiB): far above any disk, and far enough
/// below 2^64 that `address + chunksize` never overflows.
pub const MAX_VOLSIZE: u64 = 1 << 60;
/// Largest `info` file (they are a few hundred bytes).
pub const MAX_INFO_BYTES: u64 = 64 << 10;
/// Longest manifest line, newline included (a data line is 83 bytes).
pub const MAX_MANIFEST_LINE: usize = 128;
/// Largest `sparsebak.archive` marker file.
pub const MAX_MARKER_BYTES: u64 = 4096;

/// Whether `chunksize` is one the format allows: a power of two from
/// [`MIN_CHUNKSIZE`] to [`MAX_CHUNKSIZE`].
pub fn chunksize_ok(chunksize: u64) -> bool {
    chunksize.is_power_of_two() && (MIN_CHUNKSIZE..=MAX_CHUNKSIZE).contains(&chunksize)
}

/// Largest stored (encoded) chunk of `chunksize` bytes: the raw chunk, or the
/// worst-case zstd frame of one plus a little slack.
pub fn max_stored(codec: Codec, chunksize: u64) -> u64 {
    let chunksize = chunksize.min(MAX_CHUNKSIZE);
    match codec {
        Codec::None => chunksize,
        Codec::Zstd => zstd::zstd_safe::compress_bound(chunksize as usize) as u64 + 512,
    }
}

/// Largest stored chunk of `chunksize` bytes in an encrypted archive or stream: the
/// largest plain one, sealed ([`crate::crypto::envelope::overhead`]).
pub fn max_sealed(codec: Codec, chunksize: u64) -> u64 {
    let plain = max_stored(codec, chunksize);
    plain + crate::crypto::envelope::overhead(plain)
}

/// Largest stored chunk of any session, sealed or not: what a tar index record or a
/// protocol frame may hold before the session's chunk size is known.
pub fn max_stored_any() -> u64 {
    max_sealed(Codec::Zstd, MAX_CHUNKSIZE)
}

/// Read the whole of `path`, a `what` that is never larger than `max` bytes: a larger
/// file is refused before anything is allocated, and a file that grows while it is read
/// still yields at most `max + 1` bytes (and the same refusal).
pub fn read_bounded(path: &Path, max: u64, what: &'static str) -> Result<Vec<u8>> {
    read_bounded_in(&LocalFs, path, max, what)
}

/// [`read_bounded`] through `fs`: one [`ArchiveFs::read`] (a round trip for a remote
/// folder), and only when that refuses the file its length, for the message.
pub fn read_bounded_in(
    fs: &dyn ArchiveFs,
    path: &Path,
    max: u64,
    what: &'static str,
) -> Result<Vec<u8>> {
    let too_large = |len: u64| FormatError::TooLarge {
        path: path.to_path_buf(),
        what,
        len,
        max,
    };
    match fs.read(path, max) {
        Ok(buf) if buf.len() as u64 > max => Err(too_large(buf.len() as u64)),
        Ok(buf) => Ok(buf),
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => match fs.metadata(path) {
            Ok(m) if m.len > max => Err(too_large(m.len)),
            // Not the limit after all (or the file grew past it while it was read, and
            // shrank since): the error as it came.
            _ => Err(e).at(path),
        },
        Err(e) => Err(e).at(path),
    }
}

/// [`read_bounded`] of a text file.
pub fn read_bounded_text(path: &Path, max: u64, what: &'static str) -> Result<String> {
    let bytes = read_bounded(path, max, what)?;
    String::from_utf8(bytes).map_err(|_| FormatError::NotText {
        path: path.to_path_buf(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn chunk_sizes() {
        assert!(chunksize_ok(4096));
        assert!(chunksize_ok(4 << 20));
        assert!(chunksize_ok(MAX_CHUNKSIZE));
        assert!(!chunksize_ok(2048));
        assert!(!chunksize_ok(MAX_CHUNKSIZE * 2));
        assert!(!chunksize_ok(1 << 40));
        assert!(!chunksize_ok(65536 + 4096));
        assert_eq!(max_stored(Codec::None, 65536), 65536);
        assert!(max_stored(Codec::Zstd, 65536) > 65536);
        assert!(max_stored(Codec::Zstd, 65536) < 65536 + 4096);
        // Never more than the largest chunk size allows, whatever it is asked.
        assert_eq!(max_sealed(Codec::Zstd, 1 << 40), max_stored_any());
    }

    #[test]
    fn read_bounded_refuses_a_large_file_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("info");
        // A sparse file of 1 TiB: reading it would take forever; it must be refused
        // from its size alone.
        let f = File::create(&p).unwrap();
        f.set_len(1 << 40).unwrap();
        match read_bounded(&p, MAX_INFO_BYTES, "info file") {
            Err(FormatError::TooLarge {
                path,
                what,
                len,
                max,
            }) => {
                assert_eq!(path, p);
                assert_eq!(what, "info file");
                assert_eq!(len, 1 << 40);
                assert_eq!(max, MAX_INFO_BYTES);
            }
            other => panic!("{other:?}"),
        }
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(read_bounded(&p, 3, "x").unwrap(), b"abc");
        assert!(matches!(
            read_bounded(&p, 2, "x"),
            Err(FormatError::TooLarge { len: 3, max: 2, .. })
        ));
        std::fs::write(&p, [0xffu8, 0xfe]).unwrap();
        assert!(matches!(
            read_bounded_text(&p, 10, "info file"),
            Err(FormatError::NotText {
                what: "info file",
                ..
            })
        ));
        let e = read_bounded(&dir.path().join("missing"), 10, "x").unwrap_err();
        assert!(e.to_string().contains("missing"), "{e}");
    }
}
