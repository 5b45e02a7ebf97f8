//! Thin-pool metadata with known changes, for testing against the real
//! thin-provisioning-tools.
//!
//! A [`Scenario`] describes two thin devices of one pool as `thin_dump` would print
//! them: device 1 (the older snapshot) with some mapped runs, and device 2 (the newer
//! one) sharing all of device 1's pool blocks except where the scenario changed it:
//!
//! - [`Scenario::overwrite`]: a mapped block remapped to a fresh pool block, as a write
//!   to a shared block does (copy-on-write); `thin_delta` reports it `different`.
//! - [`Scenario::provision`]: an unmapped block newly mapped; `right_only`.
//! - [`Scenario::discard`]: a mapped block unmapped; `left_only`.
//!
//! [`Scenario::restore`] writes the XML and runs the real `thin_restore` to build a
//! binary metadata file, and [`hold_metadata_snapshot`] marks a metadata snapshot in it,
//! so the real `thin_delta -m` can be run on it exactly as on a live pool.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Metadata block size of thin pools (fixed by the on-disk format).
const META_BLOCK: u64 = 4096;

/// A run of consecutive virtual blocks mapped to consecutive pool blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub virt: u64,
    pub data: u64,
    pub len: u64,
}

/// What a scenario did to one virtual block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Overwrite(u64),
    Provision(u64),
    Discard,
}

/// Two thin devices and the changes from the first to the second.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Pool data block size in 512-byte sectors.
    pub block_sectors: u64,
    /// Virtual size of the devices in pool blocks (metadata does not record it; it
    /// bounds where changes go and sizes the delta map).
    pub virt_blocks: u64,
    old: Vec<Run>,
    changes: BTreeMap<u64, Change>,
    next_data: u64,
}

impl Scenario {
    pub fn new(block_sectors: u64, virt_blocks: u64) -> Scenario {
        Scenario {
            block_sectors,
            virt_blocks,
            old: Vec::new(),
            changes: BTreeMap::new(),
            next_data: 0,
        }
    }

    pub fn block_bytes(&self) -> u64 {
        self.block_sectors * 512
    }

    fn alloc(&mut self, len: u64) -> u64 {
        let d = self.next_data;
        self.next_data += len;
        d
    }

    /// Map `[virt, virt+len)` in the old device to fresh pool blocks. Runs must be added
    /// in increasing, non-overlapping order, before any change.
    pub fn map_old(&mut self, virt: u64, len: u64) {
        assert!(len > 0 && virt + len <= self.virt_blocks);
        assert!(self.changes.is_empty(), "map the old device first");
        if let Some(last) = self.old.last() {
            assert!(virt >= last.virt + last.len, "runs out of order");
        }
        let data = self.alloc(len);
        self.old.push(Run { virt, data, len });
    }

    /// The old device's pool block for `virt`, if mapped.
    pub fn old_mapping(&self, virt: u64) -> Option<u64> {
        let i = self.old.partition_point(|r| r.virt + r.len <= virt);
        self.old
            .get(i)
            .filter(|r| r.virt <= virt)
            .map(|r| r.data + (virt - r.virt))
    }

    pub fn is_changed(&self, virt: u64) -> bool {
        self.changes.contains_key(&virt)
    }

    pub fn overwrite(&mut self, virt: u64) {
        assert!(
            self.old_mapping(virt).is_some(),
            "overwrite of unmapped {virt}"
        );
        assert!(!self.is_changed(virt));
        let d = self.alloc(1);
        self.changes.insert(virt, Change::Overwrite(d));
    }

    pub fn provision(&mut self, virt: u64) {
        assert!(virt < self.virt_blocks);
        assert!(
            self.old_mapping(virt).is_none(),
            "provision of mapped {virt}"
        );
        assert!(!self.is_changed(virt));
        let d = self.alloc(1);
        self.changes.insert(virt, Change::Provision(d));
    }

    pub fn discard(&mut self, virt: u64) {
        assert!(
            self.old_mapping(virt).is_some(),
            "discard of unmapped {virt}"
        );
        assert!(!self.is_changed(virt));
        self.changes.insert(virt, Change::Discard);
    }

    /// Apply a suitable change to `virt` (overwrite or discard when mapped, provision
    /// when not), unless it has one already; `discard` picks between the first two.
    pub fn change(&mut self, virt: u64, discard: bool) {
        if self.is_changed(virt) {
            return;
        }
        match (self.old_mapping(virt).is_some(), discard) {
            (true, true) => self.discard(virt),
            (true, false) => self.overwrite(virt),
            (false, _) => self.provision(virt),
        }
    }

    pub fn changes(&self) -> &BTreeMap<u64, Change> {
        &self.changes
    }

    /// Blocks changed by kind: (overwritten, provisioned, discarded).
    pub fn change_counts(&self) -> (u64, u64, u64) {
        let mut c = (0, 0, 0);
        for ch in self.changes.values() {
            match ch {
                Change::Overwrite(_) => c.0 += 1,
                Change::Provision(_) => c.1 += 1,
                Change::Discard => c.2 += 1,
            }
        }
        c
    }

    pub fn old_runs(&self) -> &[Run] {
        &self.old
    }

    pub fn old_mapped_blocks(&self) -> u64 {
        self.old.iter().map(|r| r.len).sum()
    }

    /// The new device's mappings: the old runs split around the changes.
    pub fn new_runs(&self) -> Vec<Run> {
        fn push(out: &mut Vec<Run>, virt: u64, data: u64, len: u64) {
            if len == 0 {
                return;
            }
            if let Some(last) = out.last_mut() {
                if last.virt + last.len == virt && last.data + last.len == data {
                    last.len += len;
                    return;
                }
            }
            out.push(Run { virt, data, len });
        }
        let mapped = |c: &Change| match *c {
            Change::Overwrite(d) | Change::Provision(d) => Some(d),
            Change::Discard => None,
        };
        let mut out = Vec::new();
        let mut changes = self.changes.iter().peekable();
        for r in &self.old {
            let end = r.virt + r.len;
            // Changes before this run are provisions of unmapped blocks.
            while let Some((&v, c)) = changes.next_if(|(&v, _)| v < r.virt) {
                if let Some(d) = mapped(c) {
                    push(&mut out, v, d, 1);
                }
            }
            let mut at = r.virt;
            while let Some((&v, c)) = changes.next_if(|(&v, _)| v < end) {
                push(&mut out, at, r.data + (at - r.virt), v - at);
                if let Some(d) = mapped(c) {
                    push(&mut out, v, d, 1);
                }
                at = v + 1;
            }
            push(&mut out, at, r.data + (at - r.virt), end - at);
        }
        for (&v, c) in changes {
            if let Some(d) = mapped(c) {
                push(&mut out, v, d, 1);
            }
        }
        out
    }

    /// Write the pool as `thin_dump` XML: device 1 is the old device, 2 the new.
    pub fn write_xml(&self, w: impl Write) -> io::Result<()> {
        let mut w = BufWriter::new(w);
        let new = self.new_runs();
        writeln!(
            w,
            "<superblock uuid=\"\" time=\"1\" transaction=\"2\" flags=\"0\" version=\"1\" \
             data_block_size=\"{}\" nr_data_blocks=\"{}\">",
            self.block_sectors,
            self.nr_data_blocks()
        )?;
        for (dev, runs, created, time) in [(1, &self.old[..], 0, 0), (2, &new[..], 1, 1)] {
            let mapped: u64 = runs.iter().map(|r| r.len).sum();
            writeln!(
                w,
                "  <device dev_id=\"{dev}\" mapped_blocks=\"{mapped}\" transaction=\"{}\" \
                 creation_time=\"{created}\" snap_time=\"1\">",
                dev - 1
            )?;
            for r in runs {
                // Blocks of the new device written after the snapshot carry the newer
                // time; the shared ones keep the old.
                let t = if time == 1 && r.data >= self.old_data_end() {
                    1
                } else {
                    0
                };
                if r.len == 1 {
                    writeln!(
                        w,
                        "    <single_mapping origin_block=\"{}\" data_block=\"{}\" time=\"{t}\"/>",
                        r.virt, r.data
                    )?;
                } else {
                    writeln!(
                        w,
                        "    <range_mapping origin_begin=\"{}\" data_begin=\"{}\" length=\"{}\" time=\"{t}\"/>",
                        r.virt, r.data, r.len
                    )?;
                }
            }
            writeln!(w, "  </device>")?;
        }
        writeln!(w, "</superblock>")?;
        w.flush()
    }

    fn old_data_end(&self) -> u64 {
        self.old.last().map_or(0, |r| r.data + r.len)
    }

    /// Pool size in blocks: everything allocated plus some free space.
    pub fn nr_data_blocks(&self) -> u64 {
        self.next_data + 1024
    }

    /// A generous size for the binary metadata: a leaf entry per mapped block of each
    /// device, with room for half-full nodes and the space maps.
    pub fn metadata_bytes(&self) -> u64 {
        let entries = self.old_mapped_blocks() * 2 + self.changes.len() as u64;
        let bytes = 16 * 1024 * 1024 + entries * 64 + self.nr_data_blocks() / 2;
        bytes.div_ceil(META_BLOCK) * META_BLOCK
    }

    /// Write the XML into `dir` and build the binary metadata from it with the real
    /// `thin_restore`, then hold a metadata snapshot in it. Returns the metadata path.
    pub fn restore(&self, thin_restore: &Path, dir: &Path) -> io::Result<PathBuf> {
        let xml = dir.join("metadata.xml");
        self.write_xml(std::fs::File::create(&xml)?)?;
        let meta = dir.join("metadata.bin");
        // thin_restore writes into an existing file or device of sufficient size.
        std::fs::File::create(&meta)?.set_len(self.metadata_bytes())?;
        let out = Command::new(thin_restore)
            .arg("-i")
            .arg(&xml)
            .arg("-o")
            .arg(&meta)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "thin_restore failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        hold_metadata_snapshot(&meta)?;
        Ok(meta)
    }
}

/// CRC-32C (Castagnoli), as thin metadata checksums use, without the final inversion.
fn crc32c_raw(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Superblock checksum: CRC-32C of everything after the checksum field, xored with the
/// superblock's salt.
fn seal_superblock(block: &mut [u8]) {
    const SUPERBLOCK_CSUM_XOR: u32 = 160_774;
    let csum = crc32c_raw(&block[4..META_BLOCK as usize]) ^ SUPERBLOCK_CSUM_XOR;
    block[..4].copy_from_slice(&csum.to_le_bytes());
}

/// Give the metadata file a held metadata snapshot, so `thin_delta -m` can read it.
///
/// The kernel's `reserve_metadata_snap` copies the superblock to a newly allocated
/// metadata block, takes references on the trees it points to, and records the copy's
/// location in the live superblock (`held_root`). `thin_delta` only follows that
/// pointer and reads the copy, so this does the same without the reference counting:
/// the copy goes in the file's last block, which the generous sizing leaves unused.
pub fn hold_metadata_snapshot(meta: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(meta)?;
    let blocks = f.metadata()?.len() / META_BLOCK;
    let at = blocks - 1;
    let mut sb = vec![0u8; META_BLOCK as usize];
    f.read_exact_at(&mut sb, 0)?;
    // Superblock fields: 8..16 its own block number, 56..64 the held root.
    let mut copy = sb.clone();
    copy[8..16].copy_from_slice(&at.to_le_bytes());
    seal_superblock(&mut copy);
    f.write_all_at(&copy, at * META_BLOCK)?;
    sb[56..64].copy_from_slice(&at.to_le_bytes());
    seal_superblock(&mut sb);
    f.write_all_at(&sb, 0)?;
    f.sync_all()
}

/// A small deterministic PRNG (SplitMix64), so failures reproduce from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `[0, n)`; `n` > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Old device mapped in `runs` runs of up to `max_len` blocks scattered over the
/// virtual space, then `changes` changes: mostly inside mapped runs (overwrites and
/// some discards, often in clusters so runs of changes form), the rest anywhere
/// (mostly provisions of unmapped space).
pub fn random_scenario(
    rng: &mut Rng,
    block_sectors: u64,
    virt_blocks: u64,
    runs: u64,
    max_len: u64,
    changes: u64,
) -> Scenario {
    let mut s = Scenario::new(block_sectors, virt_blocks);
    let mut starts: Vec<u64> = (0..runs).map(|_| rng.below(virt_blocks)).collect();
    starts.sort_unstable();
    let mut next_free = 0;
    for start in starts {
        let start = start.max(next_free);
        if start >= virt_blocks {
            break;
        }
        let len = (1 + rng.below(max_len)).min(virt_blocks - start);
        s.map_old(start, len);
        // Leave a gap so runs stay distinct in the old device.
        next_free = start + len + 1;
    }
    let old = s.old_runs().to_vec();
    let mut made = 0;
    while made < changes {
        let virt = if !old.is_empty() && rng.chance(75) {
            let r = old[rng.below(old.len() as u64) as usize];
            r.virt + rng.below(r.len)
        } else {
            rng.below(virt_blocks)
        };
        // A cluster of 1..4 adjacent changes.
        let cluster = 1 + rng.below(4);
        for v in virt..(virt + cluster).min(virt_blocks) {
            if !s.is_changed(v) {
                let discard = rng.chance(20);
                s.change(v, discard);
                made += 1;
            }
        }
    }
    s
}

/// Find a tool in `PATH` or the usual system directories (which a non-root `PATH`
/// often lacks).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The thin-provisioning-tools the tests need, or `None` after printing a loud SKIP.
/// When the environment variable `CI` is set, missing tools fail the test instead: a
/// CI run must not pass by skipping.
pub fn require_tools() -> Option<(PathBuf, PathBuf)> {
    match (find_tool("thin_restore"), find_tool("thin_delta")) {
        (Some(r), Some(d)) => Some((r, d)),
        _ => {
            let msg = "thin_restore/thin_delta not found (install thin-provisioning-tools)";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}; CI is set, so this is a failure, not a skip");
            }
            eprintln!("\n*** SKIP: {msg}: real-tool thin_delta tests NOT RUN ***\n");
            None
        }
    }
}
