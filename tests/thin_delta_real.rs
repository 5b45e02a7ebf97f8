//! The thin_delta parser and runner against the real thin-provisioning-tools.
//!
//! Each test builds pool metadata with known changes ([`thin_xml::Scenario`]), turns it
//! into binary metadata with the real `thin_restore`, runs the real `thin_delta` in every
//! way the code may meet it (with `-m` through [`Lvm::thin_delta_mark`], streaming;
//! without `-m` on captured output; each plain and `--verbose`) and checks the delta map
//! marks exactly the chunks the scenario changed, no more and no fewer.

#[path = "common/thin_xml.rs"]
mod thin_xml;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use sparsebak::delta_map::DeltaMap;
use sparsebak::source::lvm::Lvm;
use sparsebak::source::thin_delta::{self, DeltaSummary};
use thin_xml::{random_scenario, require_tools, Rng, Scenario};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

struct Tools {
    thin_restore: PathBuf,
    thin_delta: PathBuf,
}

fn tools() -> Option<Tools> {
    require_tools().map(|(thin_restore, thin_delta)| Tools {
        thin_restore,
        thin_delta,
    })
}

/// The chunks a scenario's changes touch, as runs `[start, end)`, computed directly
/// from block numbers (not through the code under test).
fn expected_runs(s: &Scenario, chunk: u64) -> Vec<(u64, u64)> {
    let bb = s.block_bytes();
    let mut chunks = BTreeSet::new();
    for &block in s.changes().keys() {
        let first = block * bb / chunk;
        let last = ((block + 1) * bb - 1) / chunk;
        chunks.extend(first..=last);
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for c in chunks {
        match runs.last_mut() {
            Some(r) if r.1 == c => r.1 += 1,
            _ => runs.push((c, c + 1)),
        }
    }
    runs
}

fn assert_summary(sum: &DeltaSummary, s: &Scenario, what: &str) {
    let (overwritten, provisioned, discarded) = s.change_counts();
    assert_eq!(sum.header.data_block_size, s.block_sectors, "{what}");
    assert_eq!(sum.different.blocks, overwritten, "{what}: different");
    assert_eq!(sum.right_only.blocks, provisioned, "{what}: right_only");
    assert_eq!(sum.left_only.blocks, discarded, "{what}: left_only");
    assert_eq!(
        sum.same.blocks,
        s.old_mapped_blocks() - overwritten - discarded,
        "{what}: same"
    );
    assert_eq!(sum.blocks_past_end, 0, "{what}");
}

fn new_map(dir: &Path, name: &str, s: &Scenario, chunk: u64) -> DeltaMap {
    let nchunks = (s.virt_blocks * s.block_bytes()).div_ceil(chunk);
    DeltaMap::create(&dir.join(name), chunk, nchunks).unwrap()
}

/// Run the real tools on `s` every way and check the map against the scenario.
/// Returns the metadata path (inside `dir`) for further checks.
fn check(t: &Tools, s: &Scenario, chunk: u64, dir: &Path) -> PathBuf {
    let meta = s.restore(&t.thin_restore, dir).unwrap();
    let want = expected_runs(s, chunk);
    let lvm = Lvm::new().with_thin_delta_binary(&t.thin_delta);
    for verbose in [false, true] {
        // As production runs it: -m on the held metadata snapshot, streamed.
        let what = format!("thin_delta -m verbose={verbose}");
        let mut map = new_map(dir, &format!("map-m-{verbose}"), s, chunk);
        let sum = lvm
            .thin_delta_mark(&meta, 1, 2, verbose, &mut map)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_summary(&sum, s, &what);
        assert_eq!(map.runs().collect::<Vec<_>>(), want, "{what}");

        // On the live superblock, from captured output.
        let what = format!("thin_delta verbose={verbose}");
        let mut cmd = Command::new(&t.thin_delta);
        if verbose {
            cmd.arg("--verbose");
        }
        let out = cmd
            .args(["--snap1", "1", "--snap2", "2"])
            .arg(&meta)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut map = new_map(dir, &format!("map-{verbose}"), s, chunk);
        let sum = thin_delta::mark_map(&out.stdout[..], &mut map)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_summary(&sum, s, &what);
        assert_eq!(map.runs().collect::<Vec<_>>(), want, "{what}");
    }
    meta
}

#[test]
fn hand_picked_changes_with_blocks_equal_to_chunks() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scenario::new(128, 1000);
    s.map_old(0, 100);
    s.map_old(200, 100);
    s.map_old(990, 10);
    for b in [0, 1, 50, 999] {
        s.overwrite(b);
    }
    for b in [99, 200, 201, 202, 990] {
        s.discard(b);
    }
    s.overwrite(991); // right after a discard: a different kind, adjacent
    for b in [100, 150, 500, 989] {
        s.provision(b);
    }
    check(&t, &s, 64 * KIB, dir.path());
    assert_eq!(
        expected_runs(&s, 64 * KIB),
        vec![
            (0, 2),
            (50, 51),
            (99, 101),
            (150, 151),
            (200, 203),
            (500, 501),
            (989, 992),
            (999, 1000)
        ]
    );
}

#[test]
fn identical_devices_give_an_empty_delta() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut s = Scenario::new(128, 10_000);
    s.map_old(10, 500);
    s.map_old(4000, 3);
    check(&t, &s, 64 * KIB, dir.path());
}

#[test]
fn blocks_smaller_than_chunks() {
    let Some(t) = tools() else { return };
    // 64 KiB pool blocks, 256 KiB chunks.
    for seed in 1..=3 {
        let dir = tempfile::tempdir().unwrap();
        let s = random_scenario(&mut Rng::new(seed), 128, 200_000, 60, 3000, 400);
        check(&t, &s, 256 * KIB, dir.path());
    }
}

#[test]
fn blocks_larger_than_chunks() {
    let Some(t) = tools() else { return };
    // 1 MiB pool blocks, 64 KiB chunks.
    for seed in 11..=13 {
        let dir = tempfile::tempdir().unwrap();
        let s = random_scenario(&mut Rng::new(seed), 2048, 20_000, 40, 500, 300);
        check(&t, &s, 64 * KIB, dir.path());
    }
}

#[test]
fn blocks_not_a_power_of_two() {
    let Some(t) = tools() else { return };
    // 192 KiB pool blocks (valid: a multiple of 64 KiB) over 128 KiB chunks, so block
    // and chunk boundaries only meet every 384 KiB.
    let dir = tempfile::tempdir().unwrap();
    let s = random_scenario(&mut Rng::new(21), 384, 50_000, 30, 1000, 300);
    check(&t, &s, 128 * KIB, dir.path());
}

#[test]
fn random_change_sets() {
    let Some(t) = tools() else { return };
    let mut rng = Rng::new(0x5eed);
    let block_sizes = [128, 256, 1024, 2048];
    let chunk_sizes = [64 * KIB, 128 * KIB, 512 * KIB, MIB, 4 * MIB];
    for round in 0..6 {
        let block = block_sizes[rng.below(block_sizes.len() as u64) as usize];
        let chunk = chunk_sizes[rng.below(chunk_sizes.len() as u64) as usize];
        let virt = 1000 + rng.below(100_000);
        let runs = 1 + rng.below(50);
        let changes = rng.below(500);
        let seed = rng.next_u64();
        let s = random_scenario(&mut Rng::new(seed), block, virt, runs, 2000, changes);
        eprintln!(
            "round {round}: seed {seed:#x}, {block} sectors, chunk {chunk}, {virt} blocks, \
             {} changes",
            s.changes().len()
        );
        let dir = tempfile::tempdir().unwrap();
        check(&t, &s, chunk, dir.path());
    }
}

#[test]
fn one_tib_volume_with_scattered_changes() {
    let Some(t) = tools() else { return };
    let start = std::time::Instant::now();
    // 1 TiB of 64 KiB blocks, about 400k blocks mapped in 400 runs, 3000 changes, and
    // the very last block of the volume provisioned.
    let virt = (1u64 << 40) / (64 * KIB);
    let mut s = random_scenario(&mut Rng::new(1 << 40), 128, virt, 400, 2000, 3000);
    if !s.is_changed(virt - 1) && s.old_mapping(virt - 1).is_none() {
        s.provision(virt - 1);
    }
    let dir = tempfile::tempdir().unwrap();
    check(&t, &s, 64 * KIB, dir.path());
    let want = expected_runs(&s, 64 * KIB);
    assert_eq!(want.last().map(|r| r.1), Some(virt));
    eprintln!(
        "1 TiB: {} mapped blocks, {} changes, {} runs of chunks, {:?}",
        s.old_mapped_blocks(),
        s.changes().len(),
        want.len(),
        start.elapsed()
    );
}

#[test]
fn truncated_real_output_is_an_error() {
    let Some(t) = tools() else { return };
    let dir = tempfile::tempdir().unwrap();
    let s = random_scenario(&mut Rng::new(7), 128, 10_000, 10, 500, 100);
    let meta = s.restore(&t.thin_restore, dir.path()).unwrap();
    let out = Command::new(&t.thin_delta)
        .args(["--verbose", "--snap1", "1", "--snap2", "2"])
        .arg(&meta)
        .output()
        .unwrap();
    assert!(out.status.success());
    let full = &out.stdout[..];
    for cut in [full.len() / 2, full.len() - 2, 10] {
        let mut map = new_map(dir.path(), "map", &s, 64 * KIB);
        assert!(
            thin_delta::mark_map(&full[..cut], &mut map).is_err(),
            "accepted output cut at {cut} of {}",
            full.len()
        );
    }
    // A device id that does not exist: the tool fails and says why.
    let mut map = new_map(dir.path(), "map2", &s, 64 * KIB);
    let e = Lvm::new()
        .with_thin_delta_binary(&t.thin_delta)
        .thin_delta_mark(&meta, 1, 9, false, &mut map)
        .unwrap_err();
    assert!(e.to_string().contains("--snap2 9"), "{e}");
    assert_eq!(map.count(), 0);
}
