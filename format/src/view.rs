//! The view of a session: the volume as it was at that session, as a stream of the
//! non-zero chunks in address order, each naming the session that stores it.
//!
//! It is a k-way merge of the manifests of the chain (oldest to target). For an address,
//! the newest manifest that lists it wins. An entry of session k is dropped when its
//! address is at or past the smallest volume size of sessions k..=target: data cut off by
//! a shrink never reappears after a later grow. Memory is one line per manifest.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::BufRead;

use crate::error::{FormatError, Result};
use crate::info::SessionInfo;
use crate::manifest::{Entry, ManifestReader};
use crate::volume::VolumeArchive;
use crate::Hash;

/// One non-zero chunk of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewEntry {
    pub addr: u64,
    pub hash: Hash,
    /// Index into the chain of the session whose folder holds the chunk.
    pub session: usize,
}

/// Streams a session's view.
pub struct ViewReader {
    readers: Vec<ManifestReader<Box<dyn BufRead + Send>>>,
    heads: Vec<Option<Entry>>,
    heap: BinaryHeap<(Reverse<u64>, usize)>,
    min_size_from: Vec<u64>,
    chunksize: u64,
    names: Vec<String>,
}

impl ViewReader {
    /// Open the view of the last session of `chain` (as returned by
    /// [`VolumeArchive::chain`]).
    /// The view of `chain` (oldest first). Each manifest must match the SHA-256 its
    /// info records, or the view is refused naming it.
    pub fn open(vol: &VolumeArchive, chain: &[SessionInfo]) -> Result<ViewReader> {
        Self::open_with(vol, chain, true)
    }

    /// [`ViewReader::open`] without checking the manifests against their infos: for
    /// `verify`, which checks and reports each one itself and still reads the rest.
    pub fn open_as_recorded(vol: &VolumeArchive, chain: &[SessionInfo]) -> Result<ViewReader> {
        Self::open_with(vol, chain, false)
    }

    fn open_with(
        vol: &VolumeArchive,
        chain: &[SessionInfo],
        check_manifests: bool,
    ) -> Result<ViewReader> {
        let mut min_size_from = vec![0u64; chain.len()];
        let mut min = u64::MAX;
        for (k, info) in chain.iter().enumerate().rev() {
            min = min.min(info.volsize);
            min_size_from[k] = min;
        }
        let mut v = ViewReader {
            readers: Vec::with_capacity(chain.len()),
            heads: vec![None; chain.len()],
            heap: BinaryHeap::new(),
            min_size_from,
            chunksize: chain.first().map(|i| i.chunksize).unwrap_or(1),
            names: chain.iter().map(|i| i.session.clone()).collect(),
        };
        for info in chain {
            // A manifest that is not the one its info names (damaged, emptied, or
            // another session's) would give another session's data without a word:
            // every chunk it lists checks out against it.
            if check_manifests && vol.session_manifest_sha256(info)? != info.manifest_sha256 {
                return Err(FormatError::Other(format!(
                    "{}: the manifest of session {} does not match the hash in its info \
                     (manifest altered or replaced)",
                    vol.manifest_label(&info.session).display(),
                    info.session
                )));
            }
            v.readers.push(vol.session_manifest(info)?);
        }
        for k in 0..chain.len() {
            v.refill(k)?;
        }
        Ok(v)
    }

    fn refill(&mut self, k: usize) -> Result<()> {
        self.heads[k] = match self.readers[k].next() {
            None => None,
            Some(e) => {
                let e = e?;
                if e.addr % self.chunksize != 0 {
                    return Err(FormatError::Chunk {
                        session: self.names[k].clone(),
                        addr: e.addr,
                        reason: "manifest address is not chunk aligned".into(),
                    });
                }
                self.heap.push((Reverse(e.addr), k));
                Some(e)
            }
        };
        Ok(())
    }

    fn next_entry(&mut self) -> Result<Option<ViewEntry>> {
        loop {
            let Some((Reverse(addr), k)) = self.heap.pop() else {
                return Ok(None);
            };
            // The max-heap pops the newest session first among equal addresses; drop the
            // older entries for the same address.
            let Some(winner) = self.heads[k].take() else {
                continue;
            };
            self.refill(k)?;
            while let Some(&(Reverse(a2), k2)) = self.heap.peek() {
                if a2 != addr {
                    break;
                }
                self.heap.pop();
                self.heads[k2] = None;
                self.refill(k2)?;
            }
            if addr >= self.min_size_from[k] {
                continue;
            }
            if let Some(hash) = winner.hash {
                return Ok(Some(ViewEntry {
                    addr,
                    hash,
                    session: k,
                }));
            }
        }
    }
}

impl Iterator for ViewReader {
    type Item = Result<ViewEntry>;

    fn next(&mut self) -> Option<Result<ViewEntry>> {
        self.next_entry().transpose()
    }
}

/// A view read alongside an ascending stream of addresses: `lookup(addr)` answers the
/// hash at `addr` (`None` = zero) as long as addresses never go backwards.
pub struct ViewCursor {
    inner: Option<ViewReader>,
    head: Option<ViewEntry>,
}

impl ViewCursor {
    /// A cursor over `chain`'s view; an empty chain is an all-zero view.
    pub fn open(vol: &VolumeArchive, chain: &[SessionInfo]) -> Result<ViewCursor> {
        let mut inner = if chain.is_empty() {
            None
        } else {
            Some(ViewReader::open(vol, chain)?)
        };
        let head = match inner.as_mut() {
            Some(r) => r.next().transpose()?,
            None => None,
        };
        Ok(ViewCursor { inner, head })
    }

    pub fn lookup(&mut self, addr: u64) -> Result<Option<Hash>> {
        while let Some(h) = self.head {
            if h.addr >= addr {
                break;
            }
            self.head = match self.inner.as_mut() {
                Some(r) => r.next().transpose()?,
                None => None,
            };
        }
        Ok(self.head.filter(|h| h.addr == addr).map(|h| h.hash))
    }

    /// Call `f` with the address of every non-zero view entry in `[start, end)`,
    /// consuming them.
    pub fn each_in_range(
        &mut self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64) -> Result<()>,
    ) -> Result<()> {
        self.lookup(start)?;
        while let Some(h) = self.head {
            if h.addr >= end {
                break;
            }
            f(h.addr)?;
            self.head = match self.inner.as_mut() {
                Some(r) => r.next().transpose()?,
                None => None,
            };
        }
        Ok(())
    }
}
