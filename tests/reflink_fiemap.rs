//! Reflink copies and FIEMAP comparison on real Btrfs and XFS filesystems (loop mounts;
//! needs root, see `common/loopfs.rs`).
//!
//! Each scenario writes to an image at known offsets between two reflink copies and
//! checks that exactly the 64 KiB chunks touched are marked: no chunk missed, and no
//! chunk marked that was not touched (both filesystems use 4 KiB blocks, so a write
//! inside one chunk dirties only blocks of that chunk).

#[path = "common/loopfs.rs"]
mod loopfs;

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use loopfs::{FsKind, LoopFs};
use sparsebak::delta_map::DeltaMap;
use sparsebak::source::fiemap::{self, ChangeSummary, Extent};

const C: u64 = 64 << 10;
const K: u64 = 4 << 10;
const M: u64 = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn bytes(&mut self, len: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(len as usize + 8);
        while (out.len() as u64) < len {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            out.extend_from_slice(&self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        out.truncate(len as usize);
        out
    }
}

fn open_rw(path: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fallocate(f: &File, mode: libc::c_int, off: u64, len: u64) {
    // SAFETY: plain syscall on an open descriptor; no memory is passed.
    let r = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) };
    assert_eq!(
        r,
        0,
        "fallocate({mode}, {off}, {len}): {}",
        std::io::Error::last_os_error()
    );
}

fn punch(f: &File, off: u64, len: u64) {
    fallocate(
        f,
        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
        off,
        len,
    );
}

/// A reflink copy and what FIEMAP says about it.
struct Snap {
    path: PathBuf,
    extents: Vec<Extent>,
    size: u64,
}

/// Reflink `image` to `dir/name` and map the copy.
fn snapshot(image: &File, dir: &Path, name: &str) -> Snap {
    let path = dir.join(name);
    let copy = open_rw(&path);
    fiemap::reflink_copy(image, &copy).unwrap_or_else(|e| panic!("reflink to {name}: {e}"));
    let extents = fiemap::extents(&copy).unwrap_or_else(|e| panic!("extents of {name}: {e}"));
    let size = copy.metadata().unwrap().len();
    assert_eq!(
        size,
        image.metadata().unwrap().len(),
        "copy has the image's size"
    );
    assert_sorted(&extents);
    Snap {
        path,
        extents,
        size,
    }
}

fn assert_sorted(extents: &[Extent]) {
    for w in extents.windows(2) {
        assert!(w[0].end() <= w[1].logical, "overlap or disorder: {w:?}");
    }
    assert!(extents.iter().all(|e| e.length > 0));
}

/// `(logical, physical, length)` with logically and physically contiguous extents
/// merged: the mapping, whatever the record boundaries.
fn coalesce(extents: &[Extent]) -> Vec<(u64, u64, u64)> {
    let mut out: Vec<(u64, u64, u64)> = Vec::new();
    for e in extents {
        match out.last_mut() {
            Some((l, p, n)) if *l + *n == e.logical && *p + *n == e.physical => *n += e.length,
            _ => out.push((e.logical, e.physical, e.length)),
        }
    }
    out
}

/// Chunks touched by writes, punches and size changes.
#[derive(Default)]
struct Touched(BTreeSet<u64>);

impl Touched {
    fn bytes(&mut self, off: u64, len: u64) {
        self.0.extend(off / C..(off + len).div_ceil(C));
    }
}

/// Write `len` random bytes at `off` and record the chunks.
fn write(img: &File, t: &mut Touched, rng: &mut Rng, off: u64, len: u64) {
    img.write_all_at(&rng.bytes(len), off).unwrap();
    t.bytes(off, len);
}

/// Compare two snapshots into a fresh map of `nchunks` and return the marked chunks.
fn marked(tick: &Snap, tock: &Snap, nchunks: u64) -> (BTreeSet<u64>, ChangeSummary) {
    let dir = tempfile::tempdir().unwrap();
    let mut map = DeltaMap::create(&dir.path().join("deltamap"), C, nchunks).unwrap();
    let sum = fiemap::mark_changes(&tick.extents, tick.size, &tock.extents, tock.size, &mut map);
    let set: BTreeSet<u64> = map.runs().flat_map(|(a, b)| a..b).collect();
    assert_eq!(sum.marked_chunks, set.len() as u64);
    (set, sum)
}

fn show(extents: &[Extent]) -> String {
    let mut s = String::new();
    for e in extents.iter().take(80) {
        s += &format!(
            "  {:>10} +{:<9} @{:<12} {:#06x}\n",
            e.logical, e.length, e.physical, e.flags
        );
    }
    if extents.len() > 80 {
        s += &format!("  … {} more\n", extents.len() - 80);
    }
    s
}

/// Assert the marked set equals the touched one, explaining the difference if not.
fn assert_marks(what: &str, tick: &Snap, tock: &Snap, nchunks: u64, expect: &Touched) {
    let (got, sum) = marked(tick, tock, nchunks);
    if got != expect.0 {
        let missed: Vec<_> = expect.0.difference(&got).collect();
        let extra: Vec<_> = got.difference(&expect.0).collect();
        panic!(
            "{what}: marked chunks differ from touched ones\n missed: {missed:?}\n extra: {extra:?}\n\
             {sum:?}\n{} ({} bytes):\n{}{} ({} bytes):\n{}",
            tick.path.display(),
            tick.size,
            show(&tick.extents),
            tock.path.display(),
            tock.size,
            show(&tock.extents)
        );
    }
    eprintln!("{what}: {} chunks marked, as expected; {sum:?}", got.len());
}

/// The main scenario: known writes between copies, on one filesystem.
fn touched_chunks_are_marked(kind: FsKind) {
    let name = format!("touched_chunks_are_marked({kind:?})");
    let Some(fs) = LoopFs::new(&name, kind, "") else {
        return;
    };
    let dir = fs.path();
    let mut rng = Rng(0x5eed_0000 + kind as u64);

    // 16 MiB image (256 chunks): data [0, 6M), hole [6M, 7M), unwritten [7M, 8M), data
    // [8M, 14M), hole [14M, 16M).
    let img = open_rw(&dir.join("image"));
    img.set_len(16 * M).unwrap();
    for off in (0..6 * M).chain(8 * M..14 * M).step_by(M as usize) {
        img.write_all_at(&rng.bytes(M), off).unwrap();
    }
    fallocate(&img, 0, 7 * M, M);
    let tick = snapshot(&img, dir, "tick");
    eprintln!("{kind:?}: tick has {} extents", tick.extents.len());
    assert!(fiemap::extents(&img).unwrap().iter().any(|e| e.is_shared()));

    // Cycle 1.
    let mut t = Touched::default();
    write(&img, &mut t, &mut rng, 3 * C + 1000, 1); // one byte
    write(&img, &mut t, &mut rng, 10 * C, C); // one whole chunk
    write(&img, &mut t, &mut rng, 20 * C - K, 2 * K); // straddles 19/20 on block bounds
    write(&img, &mut t, &mut rng, 25 * C - 50, 100); // straddles 24/25 mid-block
    punch(&img, 30 * C + 2 * K, 4 * K); // part of chunk 30
    t.bytes(30 * C + 2 * K, 4 * K);
    punch(&img, 40 * C, 3 * C); // chunks 40..43
    t.bytes(40 * C, 3 * C);
    punch(&img, 100 * C, C); // inside the hole: no change
    write(&img, &mut t, &mut rng, 104 * C + 3 * K, K); // into the hole
    write(&img, &mut t, &mut rng, 115 * C + 5, 100); // into unwritten space
                                                     // Same bytes written back still allocate a new block (and are backed up again).
    let mut same = vec![0u8; K as usize];
    img.read_exact_at(&mut same, 50 * C + K).unwrap();
    img.write_all_at(&same, 50 * C + K).unwrap();
    t.bytes(50 * C + K, K);
    for k in 0..40u64 {
        // Many small writes, every other chunk of the second data area.
        let off = (130 + 2 * k) * C + (k * 6839) % (C - 200);
        write(&img, &mut t, &mut rng, off, 100);
    }
    img.set_len(20 * M).unwrap(); // grow: chunks 256..320
    t.bytes(16 * M, 4 * M);
    let tock1 = snapshot(&img, dir, "tock1");
    let nchunks = 20 * M / C;
    assert_marks(&format!("{kind:?} cycle 1"), &tick, &tock1, nchunks, &t);

    // Cycle 2: the old tock is the new tick. Shrink to mid-chunk, write one block.
    let mut t = Touched::default();
    img.set_len(12 * M + 1000).unwrap();
    t.bytes(12 * M, 8 * M); // chunk holding the new end, up to the old end
    write(&img, &mut t, &mut rng, 5 * C + 8 * K, K);
    let tock2 = snapshot(&img, dir, "tock2");
    assert_marks(&format!("{kind:?} cycle 2"), &tock1, &tock2, nchunks, &t);

    // Cycle 3: grow back a little (zeroes the old last block's tail).
    let mut t = Touched::default();
    img.set_len(13 * M).unwrap();
    t.bytes(12 * M, M);
    let tock3 = snapshot(&img, dir, "tock3");
    assert_marks(&format!("{kind:?} cycle 3"), &tock2, &tock3, nchunks, &t);

    // No change at all.
    let tock4 = snapshot(&img, dir, "tock4");
    assert_marks(
        &format!("{kind:?} unchanged"),
        &tock3,
        &tock4,
        nchunks,
        &Touched::default(),
    );

    // The copies hold the image's bytes.
    let want = std::fs::read(dir.join("image")).unwrap();
    assert!(
        std::fs::read(&tock4.path).unwrap() == want,
        "tock4 equals the image"
    );

    // A destination open read-only is an error, but not "no reflink support".
    let ro = File::open(&tick.path).unwrap();
    let err = fiemap::reflink_copy(&img, &ro).expect_err("read-only destination");
    eprintln!("{kind:?}: read-only destination: {err}");
    assert!(!err.is_no_reflink(), "{err}");
}

#[test]
fn btrfs_touched_chunks_are_marked() {
    touched_chunks_are_marked(FsKind::Btrfs);
}

#[test]
fn xfs_touched_chunks_are_marked() {
    touched_chunks_are_marked(FsKind::Xfs);
}

/// A 1 TiB sparse image with a few MiB written and ~1500 separate small extents (more
/// than one FIEMAP batch): mapping and comparing must not depend on the file size.
fn one_tib_sparse(kind: FsKind) {
    const TIB: u64 = 1 << 40;
    const G: u64 = 1 << 30;
    let name = format!("one_tib_sparse({kind:?})");
    let Some(fs) = LoopFs::new(&name, kind, "") else {
        return;
    };
    let dir = fs.path();
    let mut rng = Rng(0x7eb + kind as u64);
    let img = open_rw(&dir.join("image"));
    img.set_len(TIB).unwrap();
    let mut ignore = Touched::default();
    for off in [0, G, 300 * G, TIB - 4 * M] {
        write(&img, &mut ignore, &mut rng, off, M);
    }
    let small = |k: u64| 2 * G + k * 64 * M;
    for k in 0..1500 {
        write(&img, &mut ignore, &mut rng, small(k), K);
    }
    let t0 = Instant::now();
    let tick = snapshot(&img, dir, "tick");
    eprintln!(
        "{kind:?}: 1 TiB reflink + FIEMAP: {:?}, {} extents",
        t0.elapsed(),
        tick.extents.len()
    );
    assert!(tick.extents.len() >= 1504, "{} extents", tick.extents.len());

    let mut t = Touched::default();
    write(&img, &mut t, &mut rng, 300 * G + 5 * C + 7, 1);
    write(&img, &mut t, &mut rng, 500 * G, 2 * K); // into the void
    write(&img, &mut t, &mut rng, small(700), K); // rewrite a small extent
    punch(&img, small(1200), K); // punch one out
    t.bytes(small(1200), K);
    write(&img, &mut t, &mut rng, TIB - 1, 1); // last byte
    let tock = snapshot(&img, dir, "tock");

    let t0 = Instant::now();
    let tick_ext = fiemap::extents(&File::open(&tick.path).unwrap()).unwrap();
    let tock_ext = fiemap::extents(&File::open(&tock.path).unwrap()).unwrap();
    let t_map = t0.elapsed();
    // Same mapping as before. Records may be cut differently: XFS splits extents where
    // their sharing changed (the image moved away from part of one), which is why
    // mark_changes compares bytes, not records.
    assert!(
        coalesce(&tick_ext) == coalesce(&tick.extents),
        "tick map changed"
    );
    assert!(
        coalesce(&tock_ext) == coalesce(&tock.extents),
        "tock map changed"
    );
    let mapdir = tempfile::tempdir().unwrap();
    let mut map = DeltaMap::create(&mapdir.path().join("deltamap"), C, TIB / C).unwrap();
    let t0 = Instant::now();
    let sum = fiemap::mark_changes(&tick_ext, tick.size, &tock_ext, tock.size, &mut map);
    let t_mark = t0.elapsed();
    eprintln!(
        "{kind:?}: 1 TiB, {} + {} extents: FIEMAP both {t_map:?}, mark_changes {t_mark:?}; {sum:?}",
        tick_ext.len(),
        tock_ext.len()
    );
    let got: BTreeSet<u64> = map.runs().flat_map(|(a, b)| a..b).collect();
    assert_eq!(got, t.0);
}

#[test]
fn btrfs_one_tib_sparse() {
    one_tib_sparse(FsKind::Btrfs);
}

#[test]
fn xfs_one_tib_sparse() {
    one_tib_sparse(FsKind::Xfs);
}

/// Compressed Btrfs: extents are ENCODED, so their addresses are not byte-exact.
/// Unchanged compressed extents must not be marked (identical records), changed ones
/// must be, and the over-marking stays within the compressed extents touched (at most
/// 128 KiB of file data each, so at most one neighbouring chunk on each side).
#[test]
fn btrfs_compressed_extents() {
    let Some(fs) = LoopFs::new(
        "btrfs_compressed_extents",
        FsKind::Btrfs,
        "compress-force=zstd",
    ) else {
        return;
    };
    let dir = fs.path();
    let img = open_rw(&dir.join("image"));
    // Compressible but not constant: a text line with a counter.
    let mut text = String::new();
    for i in 0.. {
        if text.len() as u64 >= 8 * M {
            break;
        }
        text += &format!("line {i:08} of a compressible disk image\n");
    }
    img.write_all_at(&text.as_bytes()[..(8 * M) as usize], 0)
        .unwrap();
    let tick = snapshot(&img, dir, "tick");
    let encoded = tick.extents.iter().filter(|e| e.is_encoded()).count();
    eprintln!(
        "compressed: tick has {} extents, {encoded} encoded",
        tick.extents.len()
    );
    assert!(encoded > 0, "compress-force gave no encoded extents");

    let mut rng = Rng(99);
    let mut t = Touched::default();
    write(&img, &mut t, &mut rng, 3 * C + 1000, 1);
    write(&img, &mut t, &mut rng, 40 * C + 5, 100);
    let tock = snapshot(&img, dir, "tock");
    let (got, sum) = marked(&tick, &tock, 8 * M / C);
    eprintln!("compressed: touched {:?}, marked {got:?}; {sum:?}", t.0);
    assert!(t.0.is_subset(&got), "touched {:?} not all in {got:?}", t.0);
    let near: BTreeSet<u64> =
        t.0.iter()
            .flat_map(|&c| c.saturating_sub(1)..=c + 1)
            .collect();
    assert!(got.is_subset(&near), "marked {got:?} beyond {near:?}");
    // Nothing changed: identical compressed records are trusted.
    let tock2 = snapshot(&img, dir, "tock2");
    assert_eq!(marked(&tock, &tock2, 8 * M / C).0, BTreeSet::new());
}

/// Reflinks on ext4 (no support) and across filesystems give the "no reflink" error that
/// tells the user to use `source = file`.
#[test]
fn no_reflink_support_is_reported() {
    let Some(fs) = LoopFs::new("no_reflink_support_is_reported", FsKind::Ext4, "") else {
        return;
    };
    let src_path = fs.path().join("image");
    std::fs::write(&src_path, vec![7u8; 1 << 20]).unwrap();
    let src = File::open(&src_path).unwrap();
    let dst = open_rw(&fs.path().join("tick"));
    let err = fiemap::reflink_copy(&src, &dst).expect_err("ext4 has no reflinks");
    eprintln!("ext4: {err}");
    assert!(err.is_no_reflink(), "{err:?}");
    assert!(err.to_string().contains("source = file"), "{err}");

    let other = tempfile::tempdir().unwrap();
    let dst = open_rw(&other.path().join("tick"));
    let err = fiemap::reflink_copy(&src, &dst).expect_err("across filesystems");
    eprintln!("across filesystems: {err}");
    assert!(err.is_no_reflink(), "{err:?}");
}
