//! Property tests: valid files made by the real writers (info, manifest, tar index,
//! stream, stream header, chunk, selector), mutated by bit flips, truncations,
//! inserted and replaced bytes and big numbers spliced into their numeric fields,
//! fed to their parsers. No parser may panic; every error must be the reader's typed
//! error, naming the input; and no parser may allocate more than one chunk's worth at
//! once, or hold more than two at a time — checked by a counting allocator that
//! watches the parsing thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::OnceLock;

use proptest::prelude::*;
use sparsebak_format::fuzzing::{self, Kind, MAX_ALLOCATION};
use sparsebak_format::stream::StreamError;
use sparsebak_format::FormatError;

// ---------------------------------------------------------------------------------
// A counting allocator: per thread, while armed, the largest request and the peak of
// bytes held.

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

/// Requests above this are refused outright (the test dies with "memory allocation
/// of N bytes failed") rather than attempted: a parser asking for terabytes must not
/// take the machine down with it.
const HARD_LIMIT: usize = 1 << 30;

fn note(grow: isize, request: usize) -> bool {
    ARMED
        .try_with(|a| {
            if !a.get() {
                return true;
            }
            let _ = LARGEST.try_with(|l| l.set(l.get().max(request)));
            let _ = LIVE.try_with(|live| {
                live.set(live.get() + grow);
                let _ = PEAK.try_with(|p| p.set(p.get().max(live.get())));
            });
            request <= HARD_LIMIT
        })
        .unwrap_or(true)
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping
// touches only const-initialized thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if !note(l.size() as isize, l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if !note(l.size() as isize, l.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        note(-(l.size() as isize), 0);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if !note(new as isize - l.size() as isize, new) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f` with the allocator watching; returns its result, the largest request and
/// the peak of bytes held meanwhile.
fn watched<T>(f: impl FnOnce() -> T) -> (T, usize, isize) {
    LARGEST.with(|l| l.set(0));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    ARMED.with(|a| a.set(true));
    let r = f();
    ARMED.with(|a| a.set(false));
    (r, LARGEST.with(Cell::get), PEAK.with(Cell::get))
}

#[test]
fn the_allocator_sees_a_large_request() {
    let ((), largest, peak) = watched(|| {
        let v = vec![1u8; 3 << 20];
        std::hint::black_box(&v);
    });
    assert_eq!(largest, 3 << 20);
    assert_eq!(peak, 3 << 20);
}

// ---------------------------------------------------------------------------------
// Seeds and mutations

fn seeds(kind: Kind) -> Vec<Vec<u8>> {
    static ALL: OnceLock<Vec<(Kind, Vec<u8>)>> = OnceLock::new();
    let all = ALL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        fuzzing::seeds(dir.path()).unwrap()
    });
    all.iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, d)| d.clone())
        .collect()
}

/// Numbers a hostile file would carry.
const BIG: [u64; 12] = [
    0,
    1,
    4095,
    65536,
    1 << 26,
    1 << 27,
    1 << 30,
    1 << 40,
    1 << 60,
    (1 << 60) + 1,
    i64::MAX as u64,
    u64::MAX,
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Truncate {
        at: usize,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Replace {
        at: usize,
        bytes: Vec<u8>,
    },
    /// Replace the `nth` run of decimal (or hex) digits by a big number, or by one
    /// that overflows u64, or by a negative one.
    Digits {
        nth: usize,
        text: String,
    },
    /// Overwrite the `nth` aligned 8-byte word with a big number (binary fields).
    Word {
        nth: usize,
        value: u64,
    },
    /// Set the size field of the tar header at the `nth` 512-byte block (with a
    /// valid checksum, so the reader believes it).
    TarSize {
        nth: usize,
        value: u64,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let big = prop::sample::select(BIG.to_vec());
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Replace { at, bytes }),
        (
            any::<usize>(),
            prop_oneof![
                big.clone().prop_map(|v| v.to_string()),
                Just("18446744073709551616".to_string()),
                Just("-1".to_string()),
                big.clone().prop_map(|v| format!("{v:016x}")),
            ]
        )
            .prop_map(|(nth, text)| Mutation::Digits { nth, text }),
        (any::<usize>(), big.clone()).prop_map(|(nth, value)| Mutation::Word { nth, value }),
        (any::<usize>(), big).prop_map(|(nth, value)| Mutation::TarSize { nth, value }),
    ]
}

fn apply(data: &mut Vec<u8>, m: &Mutation) {
    let at = |x: usize, n: usize| if n == 0 { 0 } else { x % n };
    match m {
        Mutation::Flip { at: a, bit } => {
            if !data.is_empty() {
                let i = at(*a, data.len());
                data[i] ^= 1 << bit;
            }
        }
        Mutation::Truncate { at: a } => {
            let n = at(*a, data.len() + 1);
            data.truncate(n);
        }
        Mutation::Insert { at: a, bytes } => {
            let i = at(*a, data.len() + 1);
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Replace { at: a, bytes } => {
            let i = at(*a, data.len() + 1);
            let end = (i + bytes.len()).min(data.len());
            data.splice(i..end, bytes.iter().copied());
        }
        Mutation::Digits { nth, text } => {
            let mut runs = Vec::new();
            let mut i = 0;
            while i < data.len() {
                if data[i].is_ascii_hexdigit() {
                    let s = i;
                    while i < data.len() && data[i].is_ascii_hexdigit() {
                        i += 1;
                    }
                    runs.push((s, i));
                } else {
                    i += 1;
                }
            }
            if !runs.is_empty() {
                let (s, e) = runs[nth % runs.len()];
                data.splice(s..e, text.bytes());
            }
        }
        Mutation::Word { nth, value } => {
            let words = data.len() / 8;
            if words > 0 {
                let i = (nth % words) * 8;
                data[i..i + 8].copy_from_slice(&value.to_le_bytes());
            }
        }
        Mutation::TarSize { nth, value } => {
            let blocks = data.len() / 512;
            if blocks > 0 {
                let i = (nth % blocks) * 512;
                let mut hdr = tar::Header::new_old();
                hdr.as_mut_bytes().copy_from_slice(&data[i..i + 512]);
                hdr.set_size(*value);
                hdr.set_cksum();
                data[i..i + 512].copy_from_slice(hdr.as_bytes());
            }
        }
    }
}

/// Parse `data` as `kind` under the allocator's eye and check the promises.
fn check(kind: Kind, data: &[u8]) -> Result<(), TestCaseError> {
    let (outcome, largest, peak) = watched(|| run(kind, data));
    prop_assert!(
        largest <= MAX_ALLOCATION,
        "{kind:?}: asked for {largest} bytes at once"
    );
    prop_assert!(
        peak <= 2 * MAX_ALLOCATION as isize,
        "{kind:?}: held {peak} bytes"
    );
    outcome
}

fn run(kind: Kind, data: &[u8]) -> Result<(), TestCaseError> {
    let names_input = |e: &dyn std::fmt::Display| {
        let t = e.to_string();
        prop_assert!(t.starts_with(fuzzing::INPUT), "{kind:?}: {t}");
        Ok(())
    };
    match kind {
        Kind::Info => {
            if let Err(e) = fuzzing::parse_info_bytes(data) {
                prop_assert!(
                    matches!(
                        e,
                        FormatError::Info { .. }
                            | FormatError::Bounds { .. }
                            | FormatError::TooLarge { .. }
                            | FormatError::NotText { .. }
                    ),
                    "{e:?}"
                );
                names_input(&e)?;
            }
        }
        Kind::Manifest => {
            if let Err(e) = fuzzing::parse_manifest_bytes(data) {
                prop_assert!(
                    matches!(
                        e,
                        FormatError::ManifestLine { .. } | FormatError::Bounds { .. }
                    ),
                    "{e:?}"
                );
                names_input(&e)?;
            }
        }
        Kind::TarIndex => {
            // Typed by its signature (IndexFault); it must also not panic while
            // walking what it accepted.
            let _ = fuzzing::parse_tar_index_bytes(data);
        }
        Kind::Stream => {
            if let Err(e) = fuzzing::parse_stream_bytes(data) {
                prop_assert!(
                    !matches!(
                        e,
                        StreamError::BlockSize(_)
                            | StreamError::Header(_)
                            | StreamError::Misuse(_)
                            | StreamError::Write(_)
                            | StreamError::Sink { .. }
                    ),
                    "a reader error of the writer's kind: {e:?}"
                );
            }
        }
        Kind::StreamHeader => {
            let _ = fuzzing::parse_stream_header_bytes(data);
        }
        Kind::Chunk => {
            let _ = fuzzing::decode_chunk_bytes(data);
        }
        Kind::Selector => {
            let _ = fuzzing::parse_selector_bytes(data);
        }
    }
    Ok(())
}

fn mutated(kind: Kind) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(kind);
    assert!(!seeds.is_empty());
    (
        prop::sample::select(seeds),
        prop::collection::vec(mutation(), 1..5),
    )
        .prop_map(|(mut data, muts)| {
            for m in &muts {
                apply(&mut data, m);
            }
            data
        })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn info(data in mutated(Kind::Info)) {
        check(Kind::Info, &data)?;
    }

    #[test]
    fn manifest(data in mutated(Kind::Manifest)) {
        check(Kind::Manifest, &data)?;
    }

    #[test]
    fn tar_index(data in mutated(Kind::TarIndex)) {
        check(Kind::TarIndex, &data)?;
    }

    #[test]
    fn stream(data in mutated(Kind::Stream)) {
        check(Kind::Stream, &data)?;
    }

    #[test]
    fn stream_header(data in mutated(Kind::StreamHeader)) {
        check(Kind::StreamHeader, &data)?;
    }

    #[test]
    fn chunk(data in mutated(Kind::Chunk)) {
        check(Kind::Chunk, &data)?;
    }

    #[test]
    fn selector(data in mutated(Kind::Selector)) {
        check(Kind::Selector, &data)?;
    }
}

/// The seeds themselves pass, within the same bounds.
#[test]
fn seeds_pass() {
    for kind in Kind::ALL {
        for s in seeds(kind) {
            let (r, largest, _) = watched(|| kind.parse(&s));
            assert!(r.is_ok(), "{kind:?}: {r:?}");
            assert!(largest <= MAX_ALLOCATION, "{kind:?}: {largest}");
        }
    }
}
