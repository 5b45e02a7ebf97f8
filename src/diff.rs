//! Which chunks differ between two views of a volume: two sessions (a merge of their
//! streamed views, no chunk read) or a session and the live volume (hashed through the
//! pipeline). Results are runs of chunks, as byte ranges.

use sparsebak_format::view::{ViewCursor, ViewEntry, ViewReader};
use sparsebak_format::volume::VolumeArchive;

use crate::error::Result;
use crate::pipeline::{self, Mode, Record};
use crate::scan;

/// Differing byte ranges `[start, start+len)`, merged, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    pub ranges: Vec<(u64, u64)>,
    pub chunks: u64,
}

impl Diff {
    fn add_chunk(&mut self, addr: u64, cs: u64) {
        self.chunks += 1;
        if let Some(last) = self.ranges.last_mut() {
            if last.0 + last.1 == addr {
                last.1 += cs;
                return;
            }
        }
        self.ranges.push((addr, cs));
    }

    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// Clip ranges to `size` (the last chunk may be partial).
    fn clip(&mut self, size: u64) {
        for r in &mut self.ranges {
            if r.0 + r.1 > size {
                r.1 = size.saturating_sub(r.0);
            }
        }
        self.ranges.retain(|r| r.1 > 0);
    }
}

/// Chunks that differ between sessions `a` and `b` of `vol` (any order), over the
/// larger of the two sizes.
pub fn sessions(vol: &VolumeArchive, a: &str, b: &str) -> Result<Diff> {
    let ca = vol.chain(a)?;
    let cb = vol.chain(b)?;
    let cs = ca.last().map(|i| i.chunksize).unwrap_or(1);
    let size = ca
        .last()
        .map(|i| i.volsize)
        .max(cb.last().map(|i| i.volsize))
        .unwrap_or(0);
    let mut ra = ViewReader::open(vol, &ca)?.peekable();
    let mut rb = ViewReader::open(vol, &cb)?.peekable();
    let mut d = Diff::default();
    loop {
        let pa = peek(&mut ra)?;
        let pb = peek(&mut rb)?;
        match (pa, pb) {
            (None, None) => break,
            (Some(x), Some(y)) if x.addr == y.addr => {
                if x.hash != y.hash {
                    d.add_chunk(x.addr, cs);
                }
                ra.next();
                rb.next();
            }
            (Some(x), Some(y)) if x.addr < y.addr => {
                d.add_chunk(x.addr, cs);
                ra.next();
            }
            (Some(x), None) => {
                d.add_chunk(x.addr, cs);
                ra.next();
            }
            (_, Some(y)) => {
                d.add_chunk(y.addr, cs);
                rb.next();
            }
        }
    }
    d.clip(size);
    Ok(d)
}

/// The next entry of a view without consuming it; an error is taken out and returned.
fn peek(r: &mut std::iter::Peekable<ViewReader>) -> Result<Option<ViewEntry>> {
    match r.peek() {
        Some(Ok(e)) => Ok(Some(*e)),
        Some(Err(_)) => match r.next() {
            Some(Err(e)) => Err(e.into()),
            _ => Ok(None),
        },
        None => Ok(None),
    }
}

/// Chunks of the live volume (read from `file`, `size` bytes) that differ from
/// session `a`'s view.
pub fn live(vol: &VolumeArchive, a: &str, file: &std::fs::File, size: u64) -> Result<Diff> {
    let chain = vol.chain(a)?;
    let cs = chain.last().map(|i| i.chunksize).unwrap_or(65536);
    let runs = scan::chunk_runs(file, size, cs)
        .map_err(|e| crate::Error::Msg(format!("scanning the volume: {e}")))?;
    let base = ViewCursor::open(vol, &chain)?;
    let mut d = Diff::default();
    pipeline::run(
        pipeline::Input {
            file,
            size,
            chunksize: cs,
        },
        runs.into_iter(),
        base,
        Mode::compare(vol, chain.last()),
        |_| {},
        |rec| {
            let addr = match rec {
                Record::Data { addr, .. } | Record::Zero { addr } => addr,
            };
            d.add_chunk(addr, cs);
            Ok(())
        },
    )?;
    // Data the session has past the live volume's end.
    let old = chain.last().map(|i| i.volsize).unwrap_or(0);
    if old > size {
        for e in ViewReader::open(vol, &chain)? {
            let e = e?;
            if e.addr >= size.div_ceil(cs) * cs {
                d.add_chunk(e.addr, cs);
            }
        }
    }
    d.clip(size.max(old));
    Ok(d)
}
