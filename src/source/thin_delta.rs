//! Streaming parser of `thin_delta` output, and the step that turns it into delta-map
//! marks.
//!
//! `thin_delta --snap1 A --snap2 B` compares the block mappings of two thin devices of one
//! pool and prints, in virtual block order, which runs of the devices' address space map
//! the same pool block (`same`), different pool blocks (`different`: the block was
//! written after the older snapshot was taken, breaking the sharing), only in the first
//! device (`left_only`: discarded since) or only in the second (`right_only`: newly
//! provisioned). Everything but `same` may hold different bytes, so the thin-LVM source
//! marks those runs dirty. Addresses and lengths are in pool data blocks of
//! `data_block_size` 512-byte sectors.
//!
//! Both generations of thin-provisioning-tools print the same vocabulary:
//!
//! ```text
//! <superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
//!   <diff left="1" right="2">
//!     <same begin="0" length="3"/>
//!     <different begin="3" length="2"/>
//!     <left_only begin="7" length="1"/>
//!     <right_only begin="50" length="2"/>
//!   </diff>
//! </superblock>
//! ```
//!
//! and with `--verbose` the runs are grouped, each carrying the pool addresses too:
//!
//! ```text
//!     <different>
//!       <range begin="3" left_data_begin="3" right_data_begin="20" length="2"/>
//!     </different>
//!     <right_only>
//!       <range begin="50" data_begin="30" length="2"/>
//!     </right_only>
//! ```
//!
//! The differences between 0.9 (C++) and 1.x (Rust) are small and all tolerated here:
//! 1.x may add `flags` to the superblock, prints `left_root`/`right_root` on `<diff>`
//! when roots were given instead of device ids, and does not end with a newline; 0.9 run
//! with `-m` prints `nr_data_blocks="0"` (it does not open the data space map of a
//! metadata snapshot), so that number must never be trusted. Pre-1.0 development builds
//! of the Rust tool spelt `different` as `differ`; that spelling is accepted too.
//!
//! The parser streams: it reads one XML event at a time into a reused buffer, so memory
//! stays bounded however many ranges a 1 TiB volume produces. It is also strict:
//! anything it does not understand inside the document (an unknown element, stray text,
//! a missing attribute, an early end) is an error rather than something skipped, because
//! a silently skipped range is a change the next backup would miss.

use std::io::{BufRead, BufReader, Read};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::delta_map::DeltaMap;

/// Bytes per 512-byte sector, the unit of `data_block_size`.
const SECTOR: u64 = 512;

/// What a run of virtual blocks looks like in the second device compared with the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeltaKind {
    /// Both devices map the run to the same pool blocks: unchanged.
    Same,
    /// Both map it, to different pool blocks: rewritten since the first device.
    Different,
    /// Only the first device maps it: discarded since (now reads as zeros).
    LeftOnly,
    /// Only the second device maps it: newly written.
    RightOnly,
}

impl DeltaKind {
    /// Whether the run's bytes may differ between the two devices.
    pub fn is_change(self) -> bool {
        self != DeltaKind::Same
    }

    /// The element name `thin_delta` uses for this kind.
    pub fn xml_name(self) -> &'static str {
        match self {
            DeltaKind::Same => "same",
            DeltaKind::Different => "different",
            DeltaKind::LeftOnly => "left_only",
            DeltaKind::RightOnly => "right_only",
        }
    }

    fn from_xml_name(name: &[u8]) -> Option<DeltaKind> {
        match name {
            b"same" => Some(DeltaKind::Same),
            // "differ" was the spelling of Rust development builds before 1.0.
            b"different" | b"differ" => Some(DeltaKind::Different),
            b"left_only" => Some(DeltaKind::LeftOnly),
            b"right_only" => Some(DeltaKind::RightOnly),
            _ => None,
        }
    }
}

/// One run of virtual blocks of the thin devices, in pool data blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeltaRange {
    pub kind: DeltaKind,
    /// First virtual block of the run.
    pub begin: u64,
    /// Number of blocks.
    pub length: u64,
}

impl DeltaRange {
    /// One past the last block. The parser guarantees this does not overflow.
    pub fn end(&self) -> u64 {
        self.begin + self.length
    }

    /// The run as a byte range `(offset, len)` of the thin device, for blocks of
    /// `block_bytes` bytes ([`DeltaHeader::block_bytes`]). The parser guarantees the end
    /// of every range it hands out fits in a `u64` at the document's block size.
    pub fn byte_range(&self, block_bytes: u64) -> (u64, u64) {
        (self.begin * block_bytes, self.length * block_bytes)
    }
}

/// Which device or mapping root one side of the `<diff>` was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffSide {
    /// `left="N"` / `right="N"`: a thin device id.
    Thin(u64),
    /// `left_root` / `right_root` (1.x `--root1/--root2`): a mapping tree root block.
    Root(u64),
}

/// What the document says about the pool and the two devices compared.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeltaHeader {
    /// Pool data block size in 512-byte sectors; the unit of every range.
    pub data_block_size: u64,
    /// Pool data blocks, when printed. 0.9 prints 0 when run on a metadata snapshot, so
    /// this is informational only.
    pub nr_data_blocks: Option<u64>,
    pub transaction: Option<u64>,
    pub time: Option<u64>,
    /// Root of a metadata snapshot held in the metadata the tool read, if it said so.
    pub metadata_snap: Option<u64>,
    /// First (older) device; known once `<diff>` has been read.
    pub left: Option<DiffSide>,
    /// Second (newer) device.
    pub right: Option<DiffSide>,
}

impl DeltaHeader {
    /// Pool data block size in bytes (the parser checks it fits).
    pub fn block_bytes(&self) -> u64 {
        self.data_block_size * SECTOR
    }
}

/// Why `thin_delta` output could not be used. Every variant means the delta is unknown;
/// callers must not treat a partly processed document as complete.
#[derive(Debug, thiserror::Error)]
pub enum ThinDeltaError {
    #[error("thin_delta printed nothing (expected a <superblock> document)")]
    Empty,
    #[error("thin_delta output is not well-formed XML near byte {position}: {source}")]
    Xml {
        position: u64,
        #[source]
        source: quick_xml::Error,
    },
    #[error("thin_delta output is truncated: it ends inside <{inside}> at byte {position}")]
    Truncated { inside: &'static str, position: u64 },
    #[error(
        "thin_delta output has an unexpected <{element}> inside <{inside}> near byte {position}"
    )]
    UnexpectedElement {
        element: String,
        inside: &'static str,
        position: u64,
    },
    #[error(
        "thin_delta output has unexpected text {text:?} inside <{inside}> near byte {position}"
    )]
    UnexpectedText {
        text: String,
        inside: &'static str,
        position: u64,
    },
    #[error("thin_delta output: <{element}> near byte {position} lacks the {attribute} attribute")]
    MissingAttribute {
        element: String,
        attribute: &'static str,
        position: u64,
    },
    #[error("thin_delta output: <{element}> near byte {position} has a bad {attribute}={value:?}: {reason}")]
    BadAttribute {
        element: String,
        attribute: String,
        value: String,
        reason: &'static str,
        position: u64,
    },
    #[error("thin_delta output has more than {limit} bytes without markup near byte {position}: not thin_delta XML")]
    Runaway { limit: u64, position: u64 },
    #[error("thin_delta output: <superblock> holds no <diff>")]
    MissingDiff,
}

/// The most bytes accepted without a `<` or `>`. quick-xml holds a whole tag or text
/// node in memory, so without a bound a runaway tool printing megabytes of garbage
/// would be buffered whole; real elements are a few hundred bytes.
const MAX_EVENT: u64 = 1024 * 1024;

/// Passes bytes through, failing once more than [`MAX_EVENT`] of them go by without a
/// markup delimiter.
struct Bounded<R> {
    inner: R,
    /// Bytes since the last `<` or `>`.
    run: u64,
    tripped: bool,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for &b in &buf[..n] {
            if b == b'<' || b == b'>' {
                self.run = 0;
            } else {
                self.run += 1;
            }
        }
        if self.run > MAX_EVENT {
            self.tripped = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "runaway input without markup",
            ));
        }
        Ok(n)
    }
}

/// Where in the document the parser is. The document is at most four levels deep, so
/// this (and quick-xml's stack of open names) is all the state there is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Before `<superblock>`.
    Prolog,
    /// Inside `<superblock>`; whether its `<diff>` has been seen.
    Superblock { diff_seen: bool },
    /// Inside `<diff>`.
    Diff,
    /// Inside a verbose group such as `<different>`.
    Group(DeltaKind),
    /// Inside a range written as a start tag (`<same begin=.. length=..>` or
    /// `<range ..>`), which must close without content; `in_group` says where it returns.
    Range { in_group: Option<DeltaKind> },
    /// After `</superblock>`.
    Epilog,
}

impl Place {
    fn element(self) -> &'static str {
        match self {
            Place::Prolog | Place::Epilog => "document",
            Place::Superblock { .. } => "superblock",
            Place::Diff => "diff",
            Place::Group(k) => k.xml_name(),
            Place::Range { .. } => "range",
        }
    }
}

/// Parse `thin_delta` output from `input`, calling `on_range` for every range (of every
/// kind, `same` included) in document order, and return the header.
///
/// `on_range` also receives the header, whose `left`/`right` are filled by then. Ranges
/// already handed to `on_range` before an error stay handed: callers whose action is
/// idempotent (marking a delta map) may keep them, but must treat the whole delta as
/// unknown and redo it.
pub fn parse<R: BufRead>(
    input: R,
    mut on_range: impl FnMut(&DeltaHeader, DeltaRange),
) -> Result<DeltaHeader, ThinDeltaError> {
    let mut reader = Reader::from_reader(BufReader::with_capacity(
        64 * 1024,
        Bounded {
            inner: input,
            run: 0,
            tripped: false,
        },
    ));
    {
        let config = reader.config_mut();
        config.check_end_names = true;
        config.trim_text(false);
    }
    let mut buf = Vec::with_capacity(512);
    let mut header = DeltaHeader::default();
    let mut place = Place::Prolog;
    let mut seen_anything = false;

    loop {
        buf.clear();
        let event = match reader.read_event_into(&mut buf) {
            Ok(e) => e,
            Err(_) if reader.get_ref().get_ref().tripped => {
                return Err(ThinDeltaError::Runaway {
                    limit: MAX_EVENT,
                    position: reader.error_position(),
                })
            }
            Err(source) => {
                return Err(ThinDeltaError::Xml {
                    position: reader.error_position(),
                    source,
                })
            }
        };
        let position = reader.buffer_position();
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let is_empty = matches!(event, Event::Empty(_));
                seen_anything = true;
                place = open_element(e, is_empty, place, &mut header, position, &mut on_range)?;
            }
            Event::End(_) => {
                // quick-xml has already checked the name matches the open element.
                place = match place {
                    Place::Superblock { diff_seen: false } => {
                        return Err(ThinDeltaError::MissingDiff)
                    }
                    Place::Superblock { diff_seen: true } => Place::Epilog,
                    Place::Diff => Place::Superblock { diff_seen: true },
                    Place::Group(_) => Place::Diff,
                    Place::Range { in_group: Some(k) } => Place::Group(k),
                    Place::Range { in_group: None } => Place::Diff,
                    // An end tag with nothing open is reported by quick-xml, so these
                    // are unreachable in practice; treat them as garbage all the same.
                    Place::Prolog | Place::Epilog => {
                        return Err(ThinDeltaError::UnexpectedText {
                            text: "</...>".into(),
                            inside: place.element(),
                            position,
                        })
                    }
                };
            }
            Event::Text(ref t) => {
                if !t.iter().all(u8::is_ascii_whitespace) {
                    return Err(ThinDeltaError::UnexpectedText {
                        text: excerpt(t),
                        inside: place.element(),
                        position,
                    });
                }
            }
            Event::CData(ref t) => {
                return Err(ThinDeltaError::UnexpectedText {
                    text: excerpt(t),
                    inside: place.element(),
                    position,
                })
            }
            // Neither tool prints these, but they carry no data either.
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => {}
            Event::Eof => {
                return match place {
                    Place::Epilog => Ok(header),
                    Place::Prolog if !seen_anything => Err(ThinDeltaError::Empty),
                    _ => Err(ThinDeltaError::Truncated {
                        inside: place.element(),
                        position,
                    }),
                };
            }
        }
    }
}

/// Handle a start or empty tag at `place`; returns where the parser is afterwards.
fn open_element(
    e: &BytesStart<'_>,
    is_empty: bool,
    place: Place,
    header: &mut DeltaHeader,
    position: u64,
    on_range: &mut impl FnMut(&DeltaHeader, DeltaRange),
) -> Result<Place, ThinDeltaError> {
    let name = e.name();
    let name = name.as_ref();
    let unexpected = || ThinDeltaError::UnexpectedElement {
        element: String::from_utf8_lossy(name).into_owned(),
        inside: place.element(),
        position,
    };
    match (place, name) {
        (Place::Prolog, b"superblock") => {
            *header = parse_superblock(e, position)?;
            if is_empty {
                // `<superblock .../>`: a document without a diff.
                return Err(ThinDeltaError::MissingDiff);
            }
            Ok(Place::Superblock { diff_seen: false })
        }
        (Place::Superblock { diff_seen: false }, b"diff") => {
            let attrs = Attrs::read(e, position)?;
            header.left = attrs.side(attrs.left, attrs.left_root, "left_root")?;
            header.right = attrs.side(attrs.right, attrs.right_root, "right_root")?;
            Ok(if is_empty {
                Place::Superblock { diff_seen: true }
            } else {
                Place::Diff
            })
        }
        (Place::Diff, _) => {
            let kind = DeltaKind::from_xml_name(name).ok_or_else(unexpected)?;
            let attrs = Attrs::read(e, position)?;
            if attrs.begin.is_none() && attrs.length.is_none() {
                // Verbose grouping element; its ranges follow as children.
                return Ok(if is_empty {
                    Place::Diff
                } else {
                    Place::Group(kind)
                });
            }
            on_range(header, attrs.range(kind, header)?);
            Ok(if is_empty {
                Place::Diff
            } else {
                Place::Range { in_group: None }
            })
        }
        (Place::Group(kind), b"range") => {
            let attrs = Attrs::read(e, position)?;
            on_range(header, attrs.range(kind, header)?);
            Ok(if is_empty {
                Place::Group(kind)
            } else {
                Place::Range {
                    in_group: Some(kind),
                }
            })
        }
        _ => Err(unexpected()),
    }
}

fn parse_superblock(e: &BytesStart<'_>, position: u64) -> Result<DeltaHeader, ThinDeltaError> {
    let attrs = Attrs::read(e, position)?;
    let data_block_size = attrs
        .data_block_size
        .ok_or(ThinDeltaError::MissingAttribute {
            element: "superblock".into(),
            attribute: "data_block_size",
            position,
        })?;
    if data_block_size == 0 || data_block_size.checked_mul(SECTOR).is_none() {
        return Err(attrs.bad(
            "data_block_size",
            data_block_size,
            "must be a positive number of sectors",
        ));
    }
    Ok(DeltaHeader {
        data_block_size,
        nr_data_blocks: attrs.nr_data_blocks,
        transaction: attrs.transaction,
        time: attrs.time,
        metadata_snap: attrs.metadata_snap,
        left: None,
        right: None,
    })
}

/// The numeric attributes the parser cares about, from one element. Others (`uuid`,
/// `flags`, `version`, the pool addresses of verbose ranges) are ignored.
#[derive(Default)]
struct Attrs {
    element: String,
    position: u64,
    begin: Option<u64>,
    length: Option<u64>,
    data_block_size: Option<u64>,
    nr_data_blocks: Option<u64>,
    transaction: Option<u64>,
    time: Option<u64>,
    metadata_snap: Option<u64>,
    left: Option<u64>,
    right: Option<u64>,
    left_root: Option<u64>,
    right_root: Option<u64>,
}

impl Attrs {
    fn read(e: &BytesStart<'_>, position: u64) -> Result<Attrs, ThinDeltaError> {
        let mut attrs = Attrs {
            element: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
            position,
            ..Attrs::default()
        };
        for attr in e.attributes() {
            let attr = attr.map_err(|err| ThinDeltaError::Xml {
                position,
                source: err.into(),
            })?;
            let slot = match attr.key.as_ref() {
                b"begin" => &mut attrs.begin,
                b"length" => &mut attrs.length,
                b"data_block_size" => &mut attrs.data_block_size,
                b"nr_data_blocks" => &mut attrs.nr_data_blocks,
                b"transaction" => &mut attrs.transaction,
                b"time" => &mut attrs.time,
                b"metadata_snap" => &mut attrs.metadata_snap,
                b"left" => &mut attrs.left,
                b"right" => &mut attrs.right,
                b"left_root" => &mut attrs.left_root,
                b"right_root" => &mut attrs.right_root,
                _ => continue,
            };
            let value = &attr.value;
            let parsed = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok());
            match parsed {
                Some(v) => *slot = Some(v),
                None => {
                    return Err(ThinDeltaError::BadAttribute {
                        element: attrs.element.clone(),
                        attribute: String::from_utf8_lossy(attr.key.as_ref()).into_owned(),
                        value: String::from_utf8_lossy(value).into_owned(),
                        reason: "not an unsigned decimal number",
                        position,
                    })
                }
            }
        }
        Ok(attrs)
    }

    fn bad(&self, attribute: &str, value: u64, reason: &'static str) -> ThinDeltaError {
        ThinDeltaError::BadAttribute {
            element: self.element.clone(),
            attribute: attribute.into(),
            value: value.to_string(),
            reason,
            position: self.position,
        }
    }

    fn missing(&self, attribute: &'static str) -> ThinDeltaError {
        ThinDeltaError::MissingAttribute {
            element: self.element.clone(),
            attribute,
            position: self.position,
        }
    }

    /// A range of `kind` from `begin`/`length`, checked so that its end, in bytes at
    /// the header's block size, fits in a `u64`.
    fn range(&self, kind: DeltaKind, header: &DeltaHeader) -> Result<DeltaRange, ThinDeltaError> {
        let begin = self.begin.ok_or_else(|| self.missing("begin"))?;
        let length = self.length.ok_or_else(|| self.missing("length"))?;
        let fits = begin
            .checked_add(length)
            .and_then(|end| end.checked_mul(header.block_bytes()))
            .is_some();
        if !fits {
            return Err(self.bad(
                "length",
                length,
                "the range ends beyond 2^64 bytes at this block size",
            ));
        }
        Ok(DeltaRange {
            kind,
            begin,
            length,
        })
    }

    /// One side of `<diff>`: a device id or (1.x) a root block; absent is tolerated.
    fn side(
        &self,
        thin: Option<u64>,
        root: Option<u64>,
        root_name: &str,
    ) -> Result<Option<DiffSide>, ThinDeltaError> {
        match (thin, root) {
            (Some(_), Some(v)) => Err(self.bad(root_name, v, "given together with a device id")),
            (Some(id), None) => Ok(Some(DiffSide::Thin(id))),
            (None, Some(b)) => Ok(Some(DiffSide::Root(b))),
            (None, None) => Ok(None),
        }
    }
}

/// The start of some unexpected text, for an error message.
fn excerpt(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(40)]);
    s.trim().to_string()
}

/// Ranges and blocks seen of one [`DeltaKind`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindCount {
    pub ranges: u64,
    pub blocks: u64,
}

/// What [`mark_map`] saw and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeltaSummary {
    pub header: DeltaHeader,
    pub same: KindCount,
    pub different: KindCount,
    pub left_only: KindCount,
    pub right_only: KindCount,
    /// Changed pool blocks that lie wholly past the end of the map (the thin device is
    /// larger than the map covers). They could not be marked; see [`mark_map`].
    pub blocks_past_end: u64,
    /// Of those, blocks the second device maps (`different`, `right_only`): data past
    /// the map's end that would be missed. Blocks only the first maps (`left_only`)
    /// are what a volume that shrank, or was re-created smaller, no longer has.
    pub mapped_past_end: u64,
}

impl DeltaSummary {
    pub fn count(&self, kind: DeltaKind) -> KindCount {
        match kind {
            DeltaKind::Same => self.same,
            DeltaKind::Different => self.different,
            DeltaKind::LeftOnly => self.left_only,
            DeltaKind::RightOnly => self.right_only,
        }
    }

    fn count_mut(&mut self, kind: DeltaKind) -> &mut KindCount {
        match kind {
            DeltaKind::Same => &mut self.same,
            DeltaKind::Different => &mut self.different,
            DeltaKind::LeftOnly => &mut self.left_only,
            DeltaKind::RightOnly => &mut self.right_only,
        }
    }

    /// Pool blocks that may have changed (`different` + `left_only` + `right_only`).
    pub fn changed_blocks(&self) -> u64 {
        self.different
            .blocks
            .saturating_add(self.left_only.blocks)
            .saturating_add(self.right_only.blocks)
    }
}

/// Parse `thin_delta` output and OR every `different`, `left_only` and `right_only` range
/// into `map`.
///
/// Pool blocks and map chunks need not be the same size, nor one a multiple of the other
/// (a pool block is any multiple of 64 KiB): each range is turned into bytes and every
/// chunk it overlaps is marked, so a small block marks the one chunk holding it and a
/// large block marks every chunk it spans.
///
/// An empty delta (no ranges, or only `same`) is fine and marks nothing. Ranges past the
/// map's end cannot be marked; they are counted in [`DeltaSummary::blocks_past_end`] and
/// logged, and the caller decides (normally: the volume grew, resize the map and mark
/// the new tail). On error the map may hold some of the marks, which is harmless because
/// marks only ever over-approximate; the delta as a whole must be treated as unknown.
pub fn mark_map<R: BufRead>(input: R, map: &mut DeltaMap) -> Result<DeltaSummary, ThinDeltaError> {
    let map_bytes = map.nchunks().saturating_mul(map.chunksize());
    let mut summary = DeltaSummary::default();
    let header = parse(input, |header, range| {
        let count = summary.count_mut(range.kind);
        count.ranges = count.ranges.saturating_add(1);
        count.blocks = count.blocks.saturating_add(range.length);
        if !range.kind.is_change() || range.length == 0 {
            return;
        }
        let block_bytes = header.block_bytes();
        let (offset, len) = range.byte_range(block_bytes);
        map.mark_bytes(offset, len);
        // First block that starts at or past the end of the map.
        let first_outside = map_bytes.div_ceil(block_bytes);
        if range.end() > first_outside {
            let outside = range.end() - range.begin.max(first_outside);
            summary.blocks_past_end = summary.blocks_past_end.saturating_add(outside);
            if range.kind != DeltaKind::LeftOnly {
                summary.mapped_past_end = summary.mapped_past_end.saturating_add(outside);
            }
        }
    })?;
    summary.header = header;
    if summary.mapped_past_end > 0 {
        tracing::warn!(
            blocks = summary.mapped_past_end,
            map_bytes,
            "thin_delta reports changed blocks past the end of the delta map"
        );
    }
    tracing::debug!(
        data_block_size = summary.header.data_block_size,
        different = summary.different.blocks,
        left_only = summary.left_only.blocks,
        right_only = summary.right_only.blocks,
        same = summary.same.blocks,
        "thin_delta parsed"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(xml: &str) -> Result<(DeltaHeader, Vec<DeltaRange>), ThinDeltaError> {
        let mut out = Vec::new();
        let h = parse(xml.as_bytes(), |_, r| out.push(r))?;
        Ok((h, out))
    }

    fn r(kind: DeltaKind, begin: u64, length: u64) -> DeltaRange {
        DeltaRange {
            kind,
            begin,
            length,
        }
    }

    use DeltaKind::*;

    fn expected() -> Vec<DeltaRange> {
        vec![
            r(Same, 0, 3),
            r(Different, 3, 2),
            r(Same, 5, 2),
            r(LeftOnly, 7, 1),
            r(Same, 8, 2),
            r(RightOnly, 50, 2),
        ]
    }

    /// As printed by 0.9 without `--verbose`.
    const V09_SHORT: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left="1" right="2">
    <same begin="0" length="3"/>
    <different begin="3" length="2"/>
    <same begin="5" length="2"/>
    <left_only begin="7" length="1"/>
    <same begin="8" length="2"/>
    <right_only begin="50" length="2"/>
  </diff>
</superblock>
"#;

    /// As printed by 0.9 with `--verbose`.
    const V09_VERBOSE: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="0">
  <diff left="1" right="2">
    <same>
      <range begin="0" data_begin="0" length="3"/>
    </same>
    <different>
      <range begin="3" left_data_begin="3" right_data_begin="20" length="2"/>
    </different>
    <same>
      <range begin="5" data_begin="5" length="2"/>
    </same>
    <left_only>
      <range begin="7" data_begin="7" length="1"/>
    </left_only>
    <same>
      <range begin="8" data_begin="8" length="2"/>
    </same>
    <right_only>
      <range begin="50" data_begin="30" length="2"/>
    </right_only>
  </diff>
</superblock>
"#;

    /// As printed by 1.x without `--verbose` (flags when needs_check, no final newline).
    const V1_SHORT: &str = "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"1\" \
        data_block_size=\"128\" nr_data_blocks=\"1000\">\n  <diff left=\"1\" right=\"2\">\n    \
        <same begin=\"0\" length=\"3\"/>\n    <different begin=\"3\" length=\"2\"/>\n    \
        <same begin=\"5\" length=\"2\"/>\n    <left_only begin=\"7\" length=\"1\"/>\n    \
        <same begin=\"8\" length=\"2\"/>\n    <right_only begin=\"50\" length=\"2\"/>\n  \
        </diff>\n</superblock>";

    /// As printed by 1.x with `--verbose --root1 --root2`: a group may hold several
    /// ranges.
    const V1_VERBOSE_ROOTS: &str = r#"<superblock uuid="" time="1" transaction="2" data_block_size="128" nr_data_blocks="1000">
  <diff left_root="17" right_root="42">
    <same>
      <range begin="0" data_begin="0" length="3"/>
    </same>
    <different>
      <range begin="3" left_data_begin="3" right_data_begin="20" length="1"/>
      <range begin="4" left_data_begin="4" right_data_begin="90" length="1"/>
    </different>
    <same>
      <range begin="5" data_begin="5" length="2"/>
    </same>
    <left_only>
      <range begin="7" data_begin="7" length="1"/>
    </left_only>
    <same>
      <range begin="8" data_begin="8" length="2"/>
    </same>
    <right_only>
      <range begin="50" data_begin="30" length="2"/>
    </right_only>
  </diff>
</superblock>"#;

    #[test]
    fn short_forms_of_both_versions() {
        for xml in [V09_SHORT, V1_SHORT] {
            let (h, got) = ranges(xml).unwrap();
            assert_eq!(got, expected());
            assert_eq!(h.data_block_size, 128);
            assert_eq!(h.block_bytes(), 65536);
            assert_eq!(h.nr_data_blocks, Some(1000));
            assert_eq!(h.transaction, Some(2));
            assert_eq!(h.left, Some(DiffSide::Thin(1)));
            assert_eq!(h.right, Some(DiffSide::Thin(2)));
        }
    }

    #[test]
    fn verbose_forms_of_both_versions() {
        let (h, got) = ranges(V09_VERBOSE).unwrap();
        assert_eq!(got, expected());
        assert_eq!(h.nr_data_blocks, Some(0));

        let (h, got) = ranges(V1_VERBOSE_ROOTS).unwrap();
        let mut want = expected();
        want.splice(1..2, [r(Different, 3, 1), r(Different, 4, 1)]);
        assert_eq!(got, want);
        assert_eq!(h.left, Some(DiffSide::Root(17)));
        assert_eq!(h.right, Some(DiffSide::Root(42)));
    }

    #[test]
    fn header_is_complete_when_ranges_arrive() {
        let mut sides = Vec::new();
        parse(V09_SHORT.as_bytes(), |h, _| sides.push((h.left, h.right))).unwrap();
        assert!(sides
            .iter()
            .all(|s| *s == (Some(DiffSide::Thin(1)), Some(DiffSide::Thin(2)))));
    }

    #[test]
    fn odd_but_valid_spellings() {
        // Start/end pairs instead of empty tags, the pre-1.0 "differ", a declaration and
        // a comment, a metadata_snap attribute, CRLF line ends.
        let xml = "<?xml version=\"1.0\"?>\r\n<!-- x -->\r\n<superblock data_block_size=\"256\" \
                   metadata_snap=\"99\">\r\n<diff left=\"1\" right=\"2\">\r\n\
                   <differ begin=\"1\" length=\"2\"></differ>\r\n\
                   <right_only><range begin=\"9\" data_begin=\"4\" length=\"1\"></range></right_only>\r\n\
                   <left_only/>\r\n</diff></superblock>\r\n";
        let (h, got) = ranges(xml).unwrap();
        assert_eq!(got, vec![r(Different, 1, 2), r(RightOnly, 9, 1)]);
        assert_eq!(h.metadata_snap, Some(99));
        assert_eq!(h.nr_data_blocks, None);
    }

    #[test]
    fn empty_delta_is_not_an_error() {
        for xml in [
            "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"0\">\n  <diff left=\"1\" right=\"2\">\n  </diff>\n</superblock>\n",
            "<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\"/></superblock>",
        ] {
            let (h, got) = ranges(xml).unwrap();
            assert!(got.is_empty());
            assert_eq!(h.data_block_size, 128);
        }
    }

    fn err(xml: &str) -> ThinDeltaError {
        match ranges(xml) {
            Ok(x) => panic!("accepted bad input {xml:?}: {x:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn rejects_broken_documents_with_a_reason() {
        assert!(matches!(err(""), ThinDeltaError::Empty));
        assert!(matches!(err("  \n"), ThinDeltaError::Empty));

        // Truncated at every line of a real document: always an error, never Ok.
        let lines: Vec<&str> = V09_VERBOSE.lines().collect();
        for n in 0..lines.len() {
            let cut = lines[..n].join("\n");
            let e = err(&cut);
            assert!(
                matches!(
                    e,
                    ThinDeltaError::Empty
                        | ThinDeltaError::Truncated { .. }
                        | ThinDeltaError::Xml { .. }
                ),
                "{n}: {e}"
            );
        }
        // Cut in the middle of a tag.
        let e = err(&V09_SHORT[..V09_SHORT.find("left_only").unwrap() + 4]);
        assert!(matches!(e, ThinDeltaError::Xml { .. }), "{e}");
        let e = err(&V09_SHORT[..V09_SHORT.len() - 14]);
        assert!(e.to_string().contains("truncated"), "{e}");

        let e = err(
            "<superblock uuid=\"\" time=\"0\"><diff left=\"1\" right=\"2\"></diff></superblock>",
        );
        assert!(
            matches!(
                e,
                ThinDeltaError::MissingAttribute {
                    attribute: "data_block_size",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("data_block_size"));

        let e = err("<superblock data_block_size=\"0\"><diff/></superblock>");
        assert!(e.to_string().contains("data_block_size=\"0\""), "{e}");
        let e = err("<superblock data_block_size=\"12k\"><diff/></superblock>");
        assert!(e.to_string().contains("\"12k\""), "{e}");
        let e = err("<superblock data_block_size=\"-1\"><diff/></superblock>");
        assert!(matches!(e, ThinDeltaError::BadAttribute { .. }), "{e}");

        let e = err("<superblock data_block_size=\"128\"></superblock>");
        assert!(matches!(e, ThinDeltaError::MissingDiff), "{e}");

        let e = err(
            "<superblock data_block_size=\"128\"><diff><same begin=\"1\"/></diff></superblock>",
        );
        assert!(e.to_string().contains("lacks the length attribute"), "{e}");
        let e = err("<superblock data_block_size=\"128\"><diff><moved begin=\"1\" length=\"1\"/></diff></superblock>");
        assert!(
            e.to_string().contains("unexpected <moved> inside <diff>"),
            "{e}"
        );
        let e = err("<superblock data_block_size=\"128\"><diff><same><same begin=\"1\" length=\"1\"/></same></diff></superblock>");
        assert!(matches!(e, ThinDeltaError::UnexpectedElement { .. }), "{e}");
        let e = err("<superblock data_block_size=\"128\"><diff><same begin=\"1\" length=\"1\"><range begin=\"1\" length=\"1\"/></same></diff></superblock>");
        assert!(matches!(e, ThinDeltaError::UnexpectedElement { .. }), "{e}");
        let e = err("<superblock data_block_size=\"128\"><diff>oops</diff></superblock>");
        assert!(e.to_string().contains("\"oops\""), "{e}");
        let e = err("Usage: thin_delta [options]");
        assert!(matches!(e, ThinDeltaError::UnexpectedText { .. }), "{e}");
        let e = err("<superblock data_block_size=\"128\"><diff></same></superblock>");
        assert!(matches!(e, ThinDeltaError::Xml { .. }), "{e}");
        let e = err(&format!("{V09_SHORT}<superblock data_block_size=\"128\"/>"));
        assert!(matches!(e, ThinDeltaError::UnexpectedElement { .. }), "{e}");
        let e = err(
            "<superblock data_block_size=\"128\"><diff left=\"1\" left_root=\"2\"/></superblock>",
        );
        assert!(matches!(e, ThinDeltaError::BadAttribute { .. }), "{e}");
    }

    #[test]
    fn runaway_garbage_is_not_buffered_whole() {
        // An endless stream with no markup (a tool gone wrong) must fail, not eat memory.
        let endless = std::io::BufReader::new(std::io::repeat(b'x'));
        let e = parse(endless, |_, _| {}).unwrap_err();
        assert!(matches!(e, ThinDeltaError::Runaway { .. }), "{e}");
        let endless = std::io::BufReader::new(
            std::io::Cursor::new(b"<superblock data_block_size=\"1".to_vec())
                .chain(std::io::repeat(b'2')),
        );
        let e = parse(endless, |_, _| {}).unwrap_err();
        assert!(matches!(e, ThinDeltaError::Runaway { .. }), "{e}");
    }

    #[test]
    fn rejects_ranges_beyond_u64_bytes() {
        let big = u64::MAX / 512 / 128; // blocks of 64 KiB that still fit
        let ok = format!("<superblock data_block_size=\"128\"><diff><different begin=\"{big}\" length=\"0\"/></diff></superblock>");
        assert!(ranges(&ok).is_ok());
        let bad = format!("<superblock data_block_size=\"128\"><diff><different begin=\"{big}\" length=\"1\"/></diff></superblock>");
        assert!(matches!(err(&bad), ThinDeltaError::BadAttribute { .. }));
        let bad = "<superblock data_block_size=\"128\"><diff><same begin=\"18446744073709551615\" length=\"1\"/></diff></superblock>";
        assert!(matches!(err(bad), ThinDeltaError::BadAttribute { .. }));
    }

    /// A reader that yields a document of `n` ranges in small pieces without ever
    /// holding it whole, and counts the bytes handed out.
    struct Generated {
        n: u64,
        next: u64,
        pending: Vec<u8>,
        at: usize,
        done: bool,
    }

    impl std::io::Read for Generated {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.at == self.pending.len() {
                self.pending.clear();
                self.at = 0;
                if self.next == 0 && !self.done {
                    self.pending.extend_from_slice(
                        b"<superblock data_block_size=\"128\"><diff left=\"1\" right=\"2\">\n",
                    );
                }
                if self.next < self.n {
                    let line = format!("<different begin=\"{}\" length=\"1\"/>\n", self.next * 2);
                    self.pending.extend_from_slice(line.as_bytes());
                    self.next += 1;
                } else if !self.done {
                    self.pending.extend_from_slice(b"</diff></superblock>\n");
                    self.done = true;
                }
            }
            let k = buf.len().min(self.pending.len() - self.at);
            buf[..k].copy_from_slice(&self.pending[self.at..self.at + k]);
            self.at += k;
            Ok(k)
        }
    }

    #[test]
    fn streams_a_long_document() {
        let n = 200_000;
        let input = std::io::BufReader::with_capacity(
            4096,
            Generated {
                n,
                next: 0,
                pending: Vec::new(),
                at: 0,
                done: false,
            },
        );
        let mut count = 0u64;
        let mut last = 0;
        parse(input, |_, r| {
            count += 1;
            last = r.begin;
        })
        .unwrap();
        assert_eq!(count, n);
        assert_eq!(last, (n - 1) * 2);
    }

    fn map(chunksize: u64, nchunks: u64) -> (tempfile::TempDir, DeltaMap) {
        let dir = tempfile::tempdir().unwrap();
        let m = DeltaMap::create(&dir.path().join("deltamap"), chunksize, nchunks).unwrap();
        (dir, m)
    }

    fn doc(block_sectors: u64, body: &str) -> String {
        format!("<superblock data_block_size=\"{block_sectors}\"><diff left=\"1\" right=\"2\">{body}</diff></superblock>")
    }

    #[test]
    fn marks_changes_with_blocks_equal_to_chunks() {
        let (_d, mut m) = map(65536, 100);
        let s = mark_map(V09_SHORT.as_bytes(), &mut m).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(3, 5), (7, 8), (50, 52)]);
        assert_eq!(
            s.same,
            KindCount {
                ranges: 3,
                blocks: 7
            }
        );
        assert_eq!(
            s.different,
            KindCount {
                ranges: 1,
                blocks: 2
            }
        );
        assert_eq!(
            s.left_only,
            KindCount {
                ranges: 1,
                blocks: 1
            }
        );
        assert_eq!(
            s.right_only,
            KindCount {
                ranges: 1,
                blocks: 2
            }
        );
        assert_eq!(s.changed_blocks(), 5);
        assert_eq!(s.count(DeltaKind::Different).blocks, 2);
        assert_eq!(s.blocks_past_end, 0);
        assert_eq!(s.header.data_block_size, 128);

        // The verbose form marks the same.
        let (_d2, mut m2) = map(65536, 100);
        mark_map(V09_VERBOSE.as_bytes(), &mut m2).unwrap();
        assert_eq!(
            m2.runs().collect::<Vec<_>>(),
            vec![(3, 5), (7, 8), (50, 52)]
        );
    }

    #[test]
    fn marks_with_blocks_smaller_than_chunks() {
        // 64 KiB blocks, 256 KiB chunks: four blocks per chunk.
        let (_d, mut m) = map(256 * 1024, 100);
        let xml = doc(
            128,
            r#"<different begin="3" length="1"/><same begin="4" length="4"/>
               <right_only begin="8" length="5"/><left_only begin="399" length="1"/>"#,
        );
        mark_map(xml.as_bytes(), &mut m).unwrap();
        // block 3 -> chunk 0; blocks 8..13 -> chunks 2..4 (block 12 is in chunk 3);
        // block 399 -> chunk 99.
        assert_eq!(
            m.runs().collect::<Vec<_>>(),
            vec![(0, 1), (2, 4), (99, 100)]
        );
    }

    #[test]
    fn marks_with_blocks_larger_than_chunks() {
        // 1 MiB blocks, 64 KiB chunks: sixteen chunks per block.
        let (_d, mut m) = map(65536, 1000);
        let xml = doc(
            2048,
            r#"<different><range begin="0" left_data_begin="0" right_data_begin="7" length="1"/></different>
               <same><range begin="1" data_begin="1" length="1"/></same>
               <right_only><range begin="2" data_begin="9" length="2"/></right_only>"#,
        );
        mark_map(xml.as_bytes(), &mut m).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(0, 16), (32, 64)]);
    }

    #[test]
    fn marks_with_blocks_not_a_multiple_of_chunks() {
        // 192 KiB blocks (384 sectors: a valid pool block size, a multiple of 64 KiB but
        // not a power of two) over 128 KiB chunks: block 1 is bytes 192K..384K, chunks
        // 1 and 2; block 4 is 768K..960K, chunks 6 and 7.
        let (_d, mut m) = map(128 * 1024, 100);
        let xml = doc(
            384,
            r#"<different begin="1" length="1"/><left_only begin="4" length="1"/>"#,
        );
        mark_map(xml.as_bytes(), &mut m).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(1, 3), (6, 8)]);
    }

    #[test]
    fn counts_changes_past_the_map_end() {
        // 10 chunks of 64 KiB = 640 KiB; with 256 KiB blocks, block 2 straddles the end
        // (marked in part) and blocks 3.. lie wholly outside.
        let (_d, mut m) = map(65536, 10);
        let xml = doc(512, r#"<right_only begin="2" length="3"/>"#);
        let s = mark_map(xml.as_bytes(), &mut m).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(8, 10)]);
        assert_eq!((s.blocks_past_end, s.mapped_past_end), (2, 2));
    }

    #[test]
    fn a_smaller_volume_leaves_only_left_only_blocks_past_the_end() {
        // The tick of a 1 MiB volume against the tock of one re-created at 640 KiB:
        // what the old one had past the new end is left_only, expected, and not data
        // that would be missed.
        let (_d, mut m) = map(65536, 10);
        let xml = doc(
            512,
            r#"<different begin="0" length="1"/><left_only begin="1" length="3"/>"#,
        );
        let s = mark_map(xml.as_bytes(), &mut m).unwrap();
        assert_eq!(m.runs().collect::<Vec<_>>(), vec![(0, 10)]);
        assert_eq!((s.blocks_past_end, s.mapped_past_end), (1, 0));
    }

    #[test]
    fn empty_and_same_only_deltas_mark_nothing() {
        let (_d, mut m) = map(65536, 100);
        let s = mark_map(doc(128, "").as_bytes(), &mut m).unwrap();
        assert_eq!(s.changed_blocks(), 0);
        let s = mark_map(
            doc(128, r#"<same begin="0" length="100"/>"#).as_bytes(),
            &mut m,
        )
        .unwrap();
        assert_eq!(s.same.blocks, 100);
        assert_eq!(m.count(), 0);
    }

    #[test]
    fn error_after_some_ranges_is_still_an_error() {
        let (_d, mut m) = map(65536, 100);
        let cut = &V09_SHORT[..V09_SHORT.find("<right_only").unwrap()];
        assert!(matches!(
            mark_map(cut.as_bytes(), &mut m),
            Err(ThinDeltaError::Truncated { .. })
        ));
    }
}
