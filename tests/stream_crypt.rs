//! Encrypted streams (format 2): a chain restores through a pipe with the passphrase
//! from the environment and no config; the stream bytes show none of the volume's
//! data, its name, its session IDs or its chunks' SHA-256; a wrong passphrase is one
//! line and writes nothing; a flipped byte and two swapped chunk members are caught;
//! chains keep the mode they started with, and a stream of another chain is refused.

mod common;
#[path = "common/loopdev.rs"]
mod loopdev;

use common::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CS: usize = 65536;
const VOL: &str = "privatevolume";
const PASS: &str = "correct horse battery staple";

/// An env whose config encrypts (a passfile of mode 0600) unless `encrypt` is "off".
fn env_with(encrypt: &str) -> Env {
    let env = Env::new(&[VOL]);
    let pass = env.path().join("passfile");
    std::fs::write(&pass, format!("{PASS}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ini = std::fs::read_to_string(&env.config).unwrap();
    let lines = match encrypt {
        "" => format!("passfile = {}\n", pass.display()),
        e => format!("encrypt = {e}\npassfile = {}\n", pass.display()),
    };
    let ini = ini.replacen("encrypt = off\n", &lines, 1);
    assert!(ini.contains("passfile"), "{ini}");
    std::fs::write(&env.config, ini).unwrap();
    env
}

/// Run sparsebak with no config at all, the passphrase (if any) in the environment.
fn bare(pass: Option<&str>) -> Command {
    let mut c = Command::new(bin());
    c.env("SPARSEBAK_CONFIG", "/nonexistent/sparsebak.ini")
        .env_remove("SPARSEBAK_PASSPHRASE");
    if let Some(p) = pass {
        c.env("SPARSEBAK_PASSPHRASE", p);
    }
    c
}

/// `cat inputs | sparsebak receive --from-stream=- --save-to=out`.
fn receive_pipe(inputs: &[&Path], out: &Path, pass: &str) -> std::process::Output {
    receive_from_pipe(bare(Some(pass)), inputs, out)
}

fn send_stream(env: &Env, s: &Path, chain: &str) {
    env.ok(&[
        "send",
        VOL,
        &format!("--stream={}", s.display()),
        &format!("--chain={chain}"),
    ]);
}

/// Three versions (random data, zeros, a grown tail) and a stream of each.
fn chain_of_three(env: &Env, chain: &str) -> (Vec<Vec<u8>>, Vec<PathBuf>) {
    let mut rng = Rng::new(7);
    let mut cur = vec![0u8; 24 * CS + 777];
    rng.fill(&mut cur[..12 * CS]);
    let mut versions = Vec::new();
    let mut streams = Vec::new();
    for round in 0..3 {
        if round == 1 {
            rng.fill(&mut cur[14 * CS..17 * CS]);
            cur[2 * CS..3 * CS].fill(0);
        }
        if round == 2 {
            cur.resize(30 * CS, 0);
            rng.fill(&mut cur[28 * CS..29 * CS]);
            cur[5 * CS] ^= 0x40;
        }
        std::fs::write(env.image(VOL), &cur).unwrap();
        let s = env.path().join(format!("{chain}-{}.tar", round + 1));
        send_stream(env, &s, chain);
        versions.push(cur.clone());
        streams.push(s);
    }
    (versions, streams)
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn found(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The members of a stream file: (name, offset of the header block, content size).
fn members(stream: &[u8]) -> Vec<(String, usize, usize)> {
    let mut v = Vec::new();
    let mut off = 0;
    while off + 512 <= stream.len() && stream[off..off + 512].iter().any(|&b| b != 0) {
        let h = &stream[off..off + 512];
        let end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8(h[..end].to_vec()).unwrap();
        let size_text = std::str::from_utf8(&h[124..136]).unwrap();
        let size =
            usize::from_str_radix(size_text.trim_matches(|c| c == '\0' || c == ' '), 8).unwrap();
        v.push((name, off, size));
        off += 512 + size.div_ceil(512) * 512;
    }
    v
}

fn chain_id(env: &Env, chain: &str) -> String {
    let key = env
        .meta()
        .join(VOL)
        .join("streams")
        .join(chain)
        .join("sparsebak.key");
    let text = std::fs::read_to_string(&key).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("archive="))
        .unwrap()
        .to_string()
}

fn session_ids(env: &Env, chain: &str) -> Vec<String> {
    let dir = env
        .meta()
        .join(VOL)
        .join("streams")
        .join(chain)
        .join("sessions");
    names_in(&dir)
        .into_iter()
        .filter_map(|n| n.strip_prefix("S_").map(str::to_string))
        .collect()
}

#[test]
fn encrypted_chain_restores_through_a_pipe_and_hides_its_content() {
    let env = env_with("");
    let (versions, streams) = chain_of_three(&env, "default");
    let out = env.path().join("restored.img");
    let refs: Vec<&Path> = streams.iter().map(PathBuf::as_path).collect();
    let o = receive_pipe(&refs, &out, PASS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(&std::fs::read(&out).unwrap(), &versions[2], "chain of 3");
    // A chain cut after its second stream is the second version.
    let o = receive_pipe(&refs[..2], &out, PASS);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(&std::fs::read(&out).unwrap(), &versions[1], "chain of 2");
    // verify reads the passphrase from the config's passfile.
    let list = refs
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    env.ok(&["verify", &format!("--from-stream={list}")]);

    // What the stream bytes must not show.
    let ids = session_ids(&env, "default");
    assert_eq!(ids.len(), 3, "{ids:?}");
    let id = chain_id(&env, "default");
    let first_chunk = &versions[0][..CS];
    let sha = Sha256::digest(first_chunk);
    for (i, s) in streams.iter().enumerate() {
        let bytes = std::fs::read(s).unwrap();
        let v = &versions[i];
        // 64 bytes of the random data this stream carries (its first chunk is new in
        // stream 1, 15 in stream 2, 29 in stream 3).
        let at = [0, 15 * CS + 100, 28 * CS + 300][i];
        assert!(!found(&bytes, &v[at..at + 64]), "stream {i}: volume data");
        assert!(!found(&bytes, VOL.as_bytes()), "stream {i}: volume name");
        for sid in &ids {
            assert!(!found(&bytes, sid.as_bytes()), "stream {i}: session {sid}");
            // Nor its date with the hour and minute.
            assert!(!found(&bytes, &sid.as_bytes()[..13]), "stream {i}: {sid}");
        }
        assert!(!found(&bytes, &sha), "stream {i}: binary SHA-256");
        assert!(
            !found(&bytes, hex::encode(sha).as_bytes()),
            "stream {i}: hex SHA-256"
        );
        // What does show: the format line, and the key file (wrapped) of the chain.
        assert!(found(
            &bytes,
            b"format=sparsebak-stream 2\nencryption=aes-256-gcm\n"
        ));
        assert!(found(&bytes, format!("archive={id}\n").as_bytes()));
        let names: Vec<String> = members(&bytes).into_iter().map(|m| m.0).collect();
        assert_eq!(
            names[..3],
            [
                "sparsebak-stream/header",
                "sparsebak-stream/key",
                "sparsebak-stream/session"
            ]
        );
        assert_eq!(
            names[names.len() - 3..],
            [
                "sparsebak-stream/manifest",
                "sparsebak-stream/info",
                "sparsebak-stream/trailer"
            ]
        );
        assert!(names[3..names.len() - 3]
            .iter()
            .all(|n| n.starts_with("sparsebak-stream/c/")));
    }
    // The plain search would have found them in a format 1 stream of the same data.
    let plain_env = env_with("off");
    std::fs::write(plain_env.image(VOL), &versions[0]).unwrap();
    let p = plain_env.path().join("plain.tar");
    send_stream(&plain_env, &p, "default");
    let bytes = std::fs::read(&p).unwrap();
    assert!(found(&bytes, &versions[0][..64]));
    assert!(found(&bytes, VOL.as_bytes()));
    assert!(found(&bytes, b"format=sparsebak-stream 1\n"));
}

#[test]
fn wrong_passphrase_is_one_line_and_writes_nothing() {
    let env = env_with("");
    let (_, streams) = chain_of_three(&env, "default");
    let refs: Vec<&Path> = streams.iter().map(PathBuf::as_path).collect();
    let id = chain_id(&env, "default");
    let check = |o: &std::process::Output| {
        assert!(!o.status.success());
        let e = stderr(o);
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(e.contains("wrong passphrase"), "{e}");
        assert!(e.contains(&id), "{e}");
    };
    // Through a pipe into a new file: none appears, nor any temporary file.
    let out = env.path().join("out").join("restored.img");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    check(&receive_pipe(&refs, &out, "not the passphrase"));
    assert!(names_in(out.parent().unwrap()).is_empty());
    // Into an existing file: unchanged.
    std::fs::write(&out, b"keep me").unwrap();
    let o = bare(Some("not the passphrase"))
        .args([
            "-u",
            "receive",
            &format!("--from-stream={}", streams[0].display()),
        ])
        .arg(format!("--save-to={}", out.display()))
        .output()
        .unwrap();
    check(&o);
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    assert_eq!(names_in(out.parent().unwrap()), ["restored.img"]);
    // verify says the same.
    let o = bare(Some("not the passphrase"))
        .args(["verify", &format!("--from-stream={}", streams[0].display())])
        .output()
        .unwrap();
    check(&o);
    // No passphrase at all: one line that says where one can come from.
    let o = bare(None)
        .args(["verify", &format!("--from-stream={}", streams[0].display())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("SPARSEBAK_PASSPHRASE"), "{e}");
    // send --stream with a wrong passfile: refused before a stream is written.
    std::fs::write(env.path().join("passfile"), "wrong\n").unwrap();
    let s4 = env.path().join("s4.tar");
    let e = env.fails(&["send", VOL, &format!("--stream={}", s4.display())]);
    assert!(e.contains("wrong passphrase"), "{e}");
    assert!(!s4.exists());
    assert_eq!(session_ids(&env, "default").len(), 3);
}

#[test]
fn flipped_byte_and_swapped_chunk_members_are_caught_by_verify() {
    let env = env_with("on");
    let (_, streams) = chain_of_three(&env, "default");
    let bytes = std::fs::read(&streams[0]).unwrap();
    let m = members(&bytes);
    let chunks: Vec<&(String, usize, usize)> = m
        .iter()
        .filter(|x| x.0.starts_with("sparsebak-stream/c/"))
        .collect();
    assert_eq!(chunks.len(), 12, "{m:?}");
    let verify = |b: &[u8]| {
        let p = env.path().join("bad.tar");
        std::fs::write(&p, b).unwrap();
        bare(Some(PASS))
            .args(["verify", &format!("--from-stream={}", p.display())])
            .output()
            .unwrap()
    };
    let o = verify(&bytes);
    assert!(o.status.success(), "{}", stderr(&o));
    // One byte of the fourth chunk member's content.
    let (_, off, size) = chunks[3];
    let mut bad = bytes.clone();
    bad[off + 512 + size / 2] ^= 0x01;
    let o = verify(&bad);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("failed authentication"), "{e}");
    assert!(e.contains("chunk x0000000000030000"), "{e}");
    // Two chunk members swapped, each with its header (random data: same sizes).
    let (a, b) = (chunks[2], chunks[5]);
    assert_eq!(a.2, b.2);
    let len = 512 + a.2.div_ceil(512) * 512;
    let mut swapped = bytes.clone();
    swapped[a.1..a.1 + len].copy_from_slice(&bytes[b.1..b.1 + len]);
    swapped[b.1..b.1 + len].copy_from_slice(&bytes[a.1..a.1 + len]);
    let o = verify(&swapped);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("out of address order"), "{e}");
    // Only their contents swapped: each is sealed for its own address.
    let mut swapped = bytes.clone();
    let (ca, cb) = (a.1 + 512, b.1 + 512);
    swapped[ca..ca + a.2].copy_from_slice(&bytes[cb..cb + b.2]);
    swapped[cb..cb + b.2].copy_from_slice(&bytes[ca..ca + a.2]);
    let o = verify(&swapped);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("failed authentication"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn chains_keep_their_mode_and_streams_of_another_chain_are_refused() {
    // A chain started with encrypt = off stays plain (format 1) ...
    let env = env_with("off");
    let (versions, plain) = chain_of_three(&env, "tape");
    let head = std::fs::read(&plain[0]).unwrap();
    assert!(found(&head, b"format=sparsebak-stream 1\n"));
    assert!(!env
        .meta()
        .join(VOL)
        .join("streams/tape/sparsebak.key")
        .exists());
    let out = env.path().join("plain.img");
    let refs: Vec<&Path> = plain.iter().map(PathBuf::as_path).collect();
    let o = receive_pipe(&refs, &out, "unused");
    assert!(o.status.success(), "{}", stderr(&o));
    assert_same(&std::fs::read(&out).unwrap(), &versions[2], "plain chain");
    // ... and encrypt = on for it is an error naming the way out.
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, ini.replace("encrypt = off", "encrypt = on")).unwrap();
    let s = env.path().join("x.tar");
    let e = env.fails(&[
        "send",
        VOL,
        &format!("--stream={}", s.display()),
        "--chain=tape",
    ]);
    assert!(e.contains("not encrypted") && e.contains("--chain"), "{e}");
    // Two new encrypted chains (encrypt unset: on for a new chain).
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, ini.replace("encrypt = on\n", "")).unwrap();
    let (_, a) = chain_of_three(&env, "a");
    let (_, b) = chain_of_three(&env, "b");
    let (ida, idb) = (chain_id(&env, "a"), chain_id(&env, "b"));
    assert_ne!(ida, idb);
    // encrypt = off for an encrypted chain is an error too.
    let ini = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(
        &env.config,
        ini.replacen("passfile = ", "encrypt = off\npassfile = ", 1),
    )
    .unwrap();
    let e = env.fails(&[
        "send",
        VOL,
        &format!("--stream={}", s.display()),
        "--chain=a",
    ]);
    assert!(e.contains("is encrypted"), "{e}");
    // a1 then b2: the same volume and even the same sessions' order, another chain.
    let o = receive_pipe(&[&a[0], &b[1]], &out, PASS);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(&ida) && e.contains(&idb), "{e}");
    assert!(e.contains("foreign stream"), "{e}");
    // A plain stream after an encrypted one.
    let o = receive_pipe(&[&a[0], &plain[1]], &out, PASS);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not encrypted"), "{}", stderr(&o));
}

/// A wrong passphrase leaves a block device target as it was (nothing is written
/// before the key is unwrapped); the right one rebuilds the chain on it.
#[test]
fn wrong_passphrase_leaves_a_block_device_untouched() {
    if !loopdev::need_root("wrong_passphrase_leaves_a_block_device_untouched") {
        return;
    }
    let env = env_with("");
    let (versions, streams) = chain_of_three(&env, "default");
    let backing = env.path().join("dev.img");
    let garbage = Rng::new(99).bytes(32 * CS);
    std::fs::write(&backing, &garbage).unwrap();
    let Some(lo) = loopdev::Loop::new("wrong_passphrase_block_device", &backing, 512) else {
        return;
    };
    let list = streams
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let receive = |pass: &str| {
        bare(Some(pass))
            .args(["-u", "receive", &format!("--from-stream={list}")])
            .arg(format!("--save-to={}", lo.dev.display()))
            .output()
            .unwrap()
    };
    let o = receive("not the passphrase");
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    assert!(e.contains("wrong passphrase"), "{e}");
    lo.flush();
    assert!(
        std::fs::read(&backing).unwrap() == garbage,
        "the device was written"
    );
    let o = receive(PASS);
    assert!(o.status.success(), "{}", stderr(&o));
    lo.flush();
    let got = std::fs::read(&backing).unwrap();
    assert_same(&got[..versions[2].len()], &versions[2], "chain on a device");
}
