//! Block devices as volumes and as receive targets, on real loop devices (root).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const CS: usize = 65536;

/// A loop device over a file, detached on drop (also when the test fails).
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn new(backing: &Path) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(backing)
            .output()
            .ok()?;
        if !o.status.success() {
            return None;
        }
        let dev = String::from_utf8(o.stdout).ok()?.trim().to_string();
        Some(Loop { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn need_root(test: &str) -> bool {
    let root = nix_is_root();
    if !root {
        if std::env::var_os("CI").is_some() {
            panic!("{test} needs root, and CI runs as root");
        }
        eprintln!("SKIP {test}: needs root (loop devices)");
    }
    root
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn loop_or_skip(test: &str, backing: &Path) -> Option<Loop> {
    match Loop::new(backing) {
        Some(l) => Some(l),
        None if std::env::var_os("CI").is_some() => panic!("{test}: losetup failed"),
        None => {
            eprintln!("SKIP {test}: no loop device available");
            None
        }
    }
}

#[test]
fn receive_into_block_device_overwrites_garbage() {
    if !need_root("receive_into_block_device_overwrites_garbage") {
        return;
    }
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(3);
    let mut img = vec![0u8; 64 * CS];
    rng.fill(&mut img[..8 * CS]);
    rng.fill(&mut img[40 * CS..41 * CS + 77]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    // A device larger than the volume, full of garbage.
    let backing = env.path().join("dev.img");
    std::fs::write(&backing, rng.bytes(80 * CS)).unwrap();
    let Some(lo) = loop_or_skip("receive_into_block_device", &backing) else {
        return;
    };
    let save = format!("--save-to={}", lo.dev.display());
    env.ok(&["receive", "v", &save]);
    let got = std::fs::read(&backing).unwrap();
    assert_same(&got[..img.len()], &img, "device content");
    // A device smaller than the volume is refused.
    let small = env.path().join("small.img");
    std::fs::write(&small, vec![9u8; 10 * CS]).unwrap();
    let Some(lo2) = loop_or_skip("receive_into_block_device", &small) else {
        return;
    };
    let err = env.fails(&["receive", "v", &format!("--save-to={}", lo2.dev.display())]);
    assert!(err.contains("smaller than volume"), "{err}");
    assert_eq!(std::fs::read(&small).unwrap(), vec![9u8; 10 * CS]);
}

#[test]
fn block_device_as_a_file_source_volume() {
    if !need_root("block_device_as_a_file_source_volume") {
        return;
    }
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(4);
    let backing = env.path().join("src.img");
    let mut img = vec![0u8; 32 * CS];
    rng.fill(&mut img[CS..5 * CS]);
    std::fs::write(&backing, &img).unwrap();
    let Some(lo) = loop_or_skip("block_device_as_a_file_source_volume", &backing) else {
        return;
    };
    std::os::unix::fs::symlink(&lo.dev, env.image("v")).unwrap();
    env.send("v");
    let s = env.latest("v");
    assert_eq!((s.size, s.chunks), (img.len() as u64, 4));
    rng.fill(&mut img[20 * CS..20 * CS + 10]);
    std::fs::write(&backing, &img).unwrap();
    // Writes through the backing file are not seen through the loop device's page
    // cache until it is flushed.
    let _ = Command::new("blockdev")
        .arg("--flushbufs")
        .arg(&lo.dev)
        .status();
    env.send("v");
    assert_eq!(env.latest("v").changed, 1);
    assert_same(&env.receive("v", None), &img, "from a block device");
}

/// A chain of streams (grow included) received into a block device full of garbage.
#[test]
fn receive_streams_into_block_device() {
    if !need_root("receive_streams_into_block_device") {
        return;
    }
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(11);
    let mut img = rng.bytes(10 * CS);
    std::fs::write(env.image("v"), &img).unwrap();
    let s1 = env.path().join("s1.tar");
    env.ok(&["send", "v", &format!("--stream={}", s1.display())]);
    img.resize(20 * CS, 0); // grow: the new part must read as zeros, not garbage
    img[15 * CS] = 1;
    img[2 * CS..3 * CS].fill(0);
    std::fs::write(env.image("v"), &img).unwrap();
    let s2 = env.path().join("s2.tar");
    env.ok(&["send", "v", &format!("--stream={}", s2.display())]);
    let backing = env.path().join("dev.img");
    std::fs::write(&backing, rng.bytes(24 * CS)).unwrap();
    let Some(lo) = loop_or_skip("receive_streams_into_block_device", &backing) else {
        return;
    };
    env.ok(&[
        "receive",
        &format!("--from-stream={},{}", s1.display(), s2.display()),
        &format!("--save-to={}", lo.dev.display()),
    ]);
    let got = std::fs::read(&backing).unwrap();
    assert_same(&got[..img.len()], &img, "stream chain on a device");
}

/// The thin-LV way of zeroing, on a loop device (whose discards punch holes and read
/// back zeros): whole 192 KiB blocks are discarded, the partial edges zeroed only where
/// they are not zero already, and nothing outside the range changes.
#[test]
fn unmap_zeroing_discards_whole_blocks_and_zeroes_edges() {
    if !need_root("unmap_zeroing_discards_whole_blocks_and_zeroes_edges") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let backing = dir.path().join("dev.img");
    let block: u64 = 192 * 1024;
    std::fs::write(&backing, vec![0xAAu8; 4 << 20]).unwrap();
    let Some(lo) = loop_or_skip("unmap_zeroing", &backing) else {
        return;
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&lo.dev)
        .unwrap();
    // From 100 KiB (inside block 0) to 1660 KiB (inside block 8): blocks 1..8 whole.
    let (off, len) = (100 * 1024u64, 1560 * 1024u64);
    let z = sparsebak::zeroing::Zeroing::Unmap {
        block,
        logical: 512,
    };
    z.zero(&f, off, len).unwrap();
    f.sync_all().unwrap();
    let got = std::fs::read(&backing).unwrap();
    let (s, e) = (off as usize, (off + len) as usize);
    assert!(got[..s].iter().all(|&b| b == 0xAA), "before the range");
    assert!(got[s..e].iter().all(|&b| b == 0), "the range reads zeros");
    assert!(got[e..].iter().all(|&b| b == 0xAA), "after the range");
    // The seven whole blocks are a hole in the backing file (the guest test checks
    // that dm-thin unmaps them rather than writing zeros).
    assert_eq!(
        next_data(&backing, block),
        8 * block,
        "blocks 1..8 unmapped"
    );
    // Zeroing a range that already reads as zeros writes nothing: the hole stays.
    z.zero(&f, block, 3 * block + 4096).unwrap();
    f.sync_all().unwrap();
    assert_eq!(next_data(&backing, block), 8 * block, "still unmapped");
    // A loop device is no thin LV: restores into it keep BLKZEROOUT.
    assert!(matches!(
        sparsebak::zeroing::Zeroing::for_device(&f).unwrap(),
        sparsebak::zeroing::Zeroing::ZeroOut { .. }
    ));
}

/// A device larger than the volume keeps what lies past the volume's end, unless
/// `--zero-tail` is given (archive and stream receive alike).
#[test]
fn receive_zero_tail() {
    if !need_root("receive_zero_tail") {
        return;
    }
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(8);
    let mut img = vec![0u8; 20 * CS + 4096];
    rng.fill(&mut img[..5 * CS]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let stream = env.path().join("s.tar");
    env.ok(&["send", "v", &format!("--stream={}", stream.display())]);
    let backing = env.path().join("dev.img");
    let garbage = rng.bytes(40 * CS);
    for from_stream in [false, true] {
        std::fs::write(&backing, &garbage).unwrap();
        let Some(lo) = loop_or_skip("receive_zero_tail", &backing) else {
            return;
        };
        let save = format!("--save-to={}", lo.dev.display());
        let fs = format!("--from-stream={}", stream.display());
        let mut args = vec!["receive", "v", &save];
        if from_stream {
            args.push(&fs);
        }
        env.ok(&args);
        let got = std::fs::read(&backing).unwrap();
        assert_same(&got[..img.len()], &img, "volume");
        assert_same(
            &got[img.len()..],
            &garbage[img.len()..],
            "tail left as it was",
        );
        args.push("--zero-tail");
        env.ok(&args);
        let got = std::fs::read(&backing).unwrap();
        assert_same(&got[..img.len()], &img, "volume");
        assert!(
            got[img.len()..].iter().all(|&b| b == 0),
            "tail zeroed ({from_stream})"
        );
    }
}

/// The first offset at or after `from` that holds data in `path` (SEEK_DATA).
fn next_data(path: &Path, from: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: lseek on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, libc::SEEK_DATA) };
    assert!(r >= 0, "SEEK_DATA: {}", std::io::Error::last_os_error());
    r as u64
}
