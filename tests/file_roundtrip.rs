//! Round trips through the real binary with `source = file`: full and incremental
//! sends, every session restored byte for byte, exact `changed=` counts, size changes.

mod common;
use common::*;

const CS: usize = 65536;

fn random_image(rng: &mut Rng, chunks: usize) -> Vec<u8> {
    rng.bytes(chunks * CS)
}

/// Mostly zeros with a few random chunks and some partial ones.
fn zero_heavy(rng: &mut Rng, chunks: usize) -> Vec<u8> {
    let mut v = vec![0u8; chunks * CS];
    for _ in 0..chunks / 10 {
        let c = rng.below(chunks as u64) as usize;
        let len = 1 + rng.below(CS as u64) as usize;
        rng.fill(&mut v[c * CS..c * CS + len]);
    }
    v
}

/// Text-like, highly compressible.
fn compressible(rng: &mut Rng, chunks: usize) -> Vec<u8> {
    let words = ["alpha ", "beta ", "gamma ", "delta\n", "volume ", "chunk "];
    let mut v = Vec::with_capacity(chunks * CS);
    while v.len() < chunks * CS {
        v.extend_from_slice(words[rng.below(words.len() as u64) as usize].as_bytes());
    }
    v.truncate(chunks * CS);
    v
}

fn round_trip(img: &[u8]) {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), img).unwrap();
    env.send("v");
    let s = env.latest("v");
    assert_eq!(s.size, img.len() as u64);
    assert_eq!(s.chunks, nonzero_chunks(img, CS));
    assert_eq!(
        s.changed,
        nonzero_chunks(img, CS),
        "first send stores every non-zero chunk"
    );
    assert_same(&env.receive("v", None), img, "restore");
    env.verify_ok("v", None);
}

#[test]
fn round_trip_random() {
    round_trip(&random_image(&mut Rng::new(1), 96));
}

#[test]
fn round_trip_zero_heavy() {
    round_trip(&zero_heavy(&mut Rng::new(2), 200));
}

#[test]
fn round_trip_compressible_is_compressed() {
    let img = compressible(&mut Rng::new(3), 64);
    round_trip(&img);
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    let stored: u64 = env
        .ok(&["list", "v"])
        .lines()
        .nth(1)
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("stored="))
        })
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        stored < img.len() as u64 / 3,
        "stored {stored} of {}",
        img.len()
    );
}

#[test]
fn odd_size_and_empty_volume() {
    let mut rng = Rng::new(4);
    round_trip(&rng.bytes(5 * CS + 12345));
    round_trip(&[]);
    round_trip(&rng.bytes(100));
}

#[test]
fn sparse_image_holes_are_not_read() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(5);
    env.set_len("v", 1 << 30); // 1 GiB, almost all hole
    env.write_at("v", 300 * CS as u64, &rng.bytes(3 * CS));
    env.send("v");
    let s = env.latest("v");
    assert_eq!((s.chunks, s.changed), (3, 3));
    let info = std::fs::read_to_string(env.vol_dir("v").join(format!("S_{}/info", s.id))).unwrap();
    let read: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("bytes_read="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        read < 64 << 20,
        "a 1 GiB sparse image with 192 KiB of data read {read} bytes"
    );
    assert_same(
        &env.receive("v", None),
        &env.read_image("v"),
        "sparse restore",
    );
}

/// Several incremental sessions with writes at known places; each session's
/// `changed=` equals exactly the chunks touched, and every session restores.
#[test]
fn incremental_history_restores_every_session() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(6);
    let chunks = 128usize;
    let mut cur = zero_heavy(&mut rng, chunks);
    for c in 0..40 {
        rng.fill(&mut cur[c * CS..c * CS + 100]);
    }
    std::fs::write(env.image("v"), &cur).unwrap();
    env.send("v");
    let mut versions = vec![cur.clone()];
    for round in 0..6 {
        let old = cur.clone();
        match round {
            0 => cur[5 * CS + 17] ^= 0xff,                       // one byte
            1 => rng.fill(&mut cur[10 * CS..12 * CS]),           // two whole chunks
            2 => rng.fill(&mut cur[20 * CS - 10..20 * CS + 10]), // straddling
            3 => cur[30 * CS..31 * CS].fill(0),                  // a chunk zeroed
            4 => {
                for _ in 0..25 {
                    let off = rng.below((chunks * CS - 8) as u64) as usize;
                    rng.fill(&mut cur[off..off + 8]);
                }
            }
            _ => cur[0..3 * CS].copy_from_slice(&old[0..3 * CS]), // no change at all
        }
        std::fs::write(env.image("v"), &cur).unwrap();
        let before = env.sessions("v").len();
        env.send("v");
        let expect = changed_chunks(&old, &cur, CS);
        let sessions = env.sessions("v");
        if expect == 0 {
            assert_eq!(sessions.len(), before, "no change makes no session");
            continue;
        }
        let s = sessions.last().unwrap();
        assert_eq!(s.changed, expect, "round {round}");
        assert_eq!(s.chunks, nonzero_chunks(&cur, CS), "round {round}");
        versions.push(cur.clone());
    }
    let all: Vec<usize> = (0..versions.len()).collect();
    check_sessions(&env, &versions, &all, "history");
    let sessions = env.sessions("v");
    // IDs strictly increase even though the sends came within one second.
    for w in sessions.windows(2) {
        assert!(w[0].id < w[1].id);
    }
}

/// Grow, shrink to mid-chunk, then grow again: data cut off by the shrink must not
/// come back.
#[test]
fn grow_and_shrink() {
    let env = Env::new(&["v"]);
    let mut rng = Rng::new(7);
    let a = rng.bytes(10 * CS);
    std::fs::write(env.image("v"), &a).unwrap();
    env.send("v");
    let mut b = a.clone();
    b.extend_from_slice(&rng.bytes(6 * CS + 500)); // grow
    std::fs::write(env.image("v"), &b).unwrap();
    env.send("v");
    assert_eq!(env.latest("v").changed, 7);
    let c = b[..4 * CS + 1000].to_vec(); // shrink mid-chunk
    std::fs::write(env.image("v"), &c).unwrap();
    env.send("v");
    let sc = env.latest("v");
    assert_eq!(sc.size, c.len() as u64);
    assert_eq!(sc.chunks, 5);
    let mut d = c.clone();
    d.resize(12 * CS, 0); // grow again with zeros: nothing from before may reappear
    d[11 * CS] = 1;
    std::fs::write(env.image("v"), &d).unwrap();
    env.send("v");
    assert_eq!(env.latest("v").chunks, 6);
    let sessions = env.sessions("v");
    for (s, want) in sessions.iter().zip([&a, &b, &c, &d]) {
        assert_eq!(s.size, want.len() as u64);
        assert_same(
            &env.receive("v", Some(&s.id)),
            want,
            &format!("session {}", s.id),
        );
        env.verify_ok("v", Some(&s.id));
    }
}

#[test]
fn larger_chunk_size_and_no_compression() {
    let env = Env::with_settings(&["v"], "chunksize = 256K\ncompression = none");
    let mut rng = Rng::new(8);
    let img = rng.bytes(3 * 256 * 1024 + 7);
    std::fs::write(env.image("v"), &img).unwrap();
    env.send("v");
    assert_eq!(env.latest("v").chunks, 4);
    assert_same(&env.receive("v", None), &img, "256K chunks");
    env.verify_ok("v", None);
}

#[test]
fn receive_asks_before_overwriting_and_refuses_without_terminal() {
    let env = Env::new(&["v"]);
    std::fs::write(env.image("v"), Rng::new(9).bytes(2 * CS)).unwrap();
    env.send("v");
    let dest = env.path().join("existing.img");
    std::fs::write(&dest, b"precious").unwrap();
    let o = std::process::Command::new(bin())
        .arg("-c")
        .arg(&env.config)
        .args(["receive", "v"])
        .arg(format!("--save-to={}", dest.display()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("-u"));
    assert_eq!(std::fs::read(&dest).unwrap(), b"precious");
    // With -u it is replaced, whatever it held (longer than the volume here).
    std::fs::write(&dest, vec![7u8; 5 * CS]).unwrap();
    env.ok(&["receive", "v", &format!("--save-to={}", dest.display())]);
    assert_same(
        &std::fs::read(&dest).unwrap(),
        &env.read_image("v"),
        "overwrite",
    );
}

#[test]
fn two_volumes_and_send_all_enabled() {
    let env = Env::new(&["a", "b"]);
    std::fs::write(env.image("a"), Rng::new(10).bytes(3 * CS)).unwrap();
    std::fs::write(env.image("b"), Rng::new(11).bytes(5 * CS)).unwrap();
    env.ok(&["send"]);
    assert_eq!(env.latest("a").chunks, 3);
    assert_eq!(env.latest("b").chunks, 5);
    let all = env.ok(&["list"]);
    assert!(all.lines().any(|l| l == "a") && all.lines().any(|l| l == "b"));
}
