mod common;
use common::*;
#[path = "common/sshd.rs"]
mod sshd;
use sparsebak::destination::{Destination, Mode, SessionKind};
use sparsebak::format::archive_fs::ArchiveFs;
use sparsebak::remote::{parse_destvm, RemoteDestination, RemoteFs, RemoteSpec};
use sshd::*;
use std::time::Instant;

#[test]
fn measure() {
    let sshd = Sshd::start();
    let t = TestDir::new();
    let spec = RemoteSpec {
        transport: parse_destvm(&sshd.destvm()).unwrap(),
        destcmd: bin().display().to_string(),
        sshopts: sshd
            .sshopts()
            .split_whitespace()
            .map(String::from)
            .collect(),
    };
    let n = 4096usize;
    let cs = 65536usize;
    let data: Vec<Vec<u8>> = (0..64).map(|i| Rng::new(i).bytes(cs)).collect();
    for round in 0..2 {
        // Plain protocol: PUT_CHUNK through a RemoteSink.
        let a = t.path().join(format!("plain{round}"));
        let d = RemoteDestination::open(&spec, &a, None, true).unwrap();
        d.create().unwrap();
        let _l = d.lock_volume("v", Mode::Exclusive).unwrap();
        let t0 = Instant::now();
        let mut s = d
            .begin_session(
                "v",
                "20260101-000000",
                SessionKind::Folder,
                None,
                (n * cs) as u64,
            )
            .unwrap();
        for i in 0..n {
            s.put_chunk(
                (i * cs) as u64,
                sparsebak::format::chunk::hash(&data[i % 64]),
                &data[i % 64],
            )
            .unwrap();
        }
        s.abort().unwrap();
        let plain = t0.elapsed();
        drop(_l);
        drop(d);
        // RemoteFs: a file per chunk, then syncfs.
        let b = t.path().join(format!("fs{round}"));
        std::fs::create_dir_all(&b).unwrap();
        let d = RemoteDestination::open(&spec, &b, None, true).unwrap();
        let fs = RemoteFs::new(d.connection(), &b);
        let t0 = Instant::now();
        fs.create_dir_all(&b.join("v/.tmp-x")).unwrap();
        for i in 0..n {
            fs.write(&b.join(format!("v/.tmp-x/{i:016x}")), &data[i % 64])
                .unwrap();
        }
        fs.syncfs(&b).unwrap();
        let remote = t0.elapsed();
        eprintln!(
            "round {round}: {} MiB: plain protocol {:?} ({:.0} MiB/s), RemoteFs {:?} ({:.0} MiB/s)",
            n * cs >> 20,
            plain,
            (n * cs) as f64 / 1048576.0 / plain.as_secs_f64(),
            remote,
            (n * cs) as f64 / 1048576.0 / remote.as_secs_f64()
        );
        assert_eq!(std::fs::read_dir(b.join("v/.tmp-x")).unwrap().count(), n);
    }
}
