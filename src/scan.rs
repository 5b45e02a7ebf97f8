//! Finding data and holes in files (`SEEK_DATA` / `SEEK_HOLE`), as runs of chunks, so a
//! full scan never reads a sparse file's holes.

use std::fs::File;
use std::os::fd::AsRawFd;

/// A run of chunk indexes `[start, end)`: `data` when any byte may be data, else known
/// to read as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRun {
    pub start: u64,
    pub end: u64,
    pub data: bool,
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a valid descriptor has no memory effects.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(r as u64))
}

/// Runs of data and hole chunks covering `[0, size)` of `f`, in order. Where the file
/// or device does not support `SEEK_DATA`, everything is data. A chunk is a hole only
/// when all of it lies in a hole.
pub fn chunk_runs(f: &File, size: u64, chunksize: u64) -> std::io::Result<Vec<ChunkRun>> {
    let nchunks = size.div_ceil(chunksize);
    let mut out: Vec<ChunkRun> = Vec::new();
    let mut push = |start: u64, end: u64, data: bool| {
        if start >= end {
            return;
        }
        if let Some(last) = out.last_mut() {
            if last.data == data && last.end == start {
                last.end = end;
                return;
            }
        }
        out.push(ChunkRun { start, end, data });
    };
    let mut pos = 0u64; // byte offset
    let mut next_chunk = 0u64; // first chunk not yet assigned
    while pos < size {
        let data_start = match seek(f, pos, libc::SEEK_DATA) {
            Ok(Some(d)) => d.min(size),
            Ok(None) => size,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                // No SEEK_DATA here (some devices): treat the rest as data.
                push(next_chunk, nchunks, true);
                return Ok(out);
            }
            Err(e) => return Err(e),
        };
        let data_end = if data_start < size {
            seek(f, data_start, libc::SEEK_HOLE)?
                .unwrap_or(size)
                .min(size)
        } else {
            size
        };
        // Chunks wholly before the data start are holes.
        let first_data_chunk = data_start / chunksize;
        push(next_chunk, first_data_chunk.max(next_chunk), false);
        if data_start >= size {
            next_chunk = nchunks;
            break;
        }
        let end_chunk = data_end.div_ceil(chunksize);
        let s = first_data_chunk.max(next_chunk);
        push(s, end_chunk, true);
        next_chunk = next_chunk.max(end_chunk);
        pos = data_end;
    }
    push(next_chunk, nchunks, false);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn runs_of_sparse_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let cs = 65536u64;
        f.set_len(100 * cs).unwrap();
        f.write_all_at(b"x", 10 * cs + 5).unwrap();
        f.write_all_at(&vec![1u8; 3 * cs as usize], 50 * cs)
            .unwrap();
        let runs = chunk_runs(&f, 100 * cs, cs).unwrap();
        // Every chunk is covered once, in order.
        let mut n = 0;
        for r in &runs {
            assert_eq!(r.start, n);
            n = r.end;
        }
        assert_eq!(n, 100);
        let data: Vec<u64> = runs
            .iter()
            .filter(|r| r.data)
            .flat_map(|r| r.start..r.end)
            .collect();
        assert!(data.contains(&10) && data.contains(&50) && data.contains(&52));
        assert!(!data.contains(&0) && !data.contains(&99) && !data.contains(&30));
    }
}
