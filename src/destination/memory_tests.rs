//! Send, receive, verify and prune meeting a destination that fails on purpose: each
//! fault gives one clean error naming the object, and leaves nothing half-visible.

use std::io::Write;
use std::path::Path;

use sparsebak_format::codec::{self, ChunkContext};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::ManifestReader;
use sparsebak_format::store::VolumeStore;
use sparsebak_format::testing::{Faults, MemoryStore, Object};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::{layout, Hash};

use super::MemorySink;
use crate::config::Config;
use crate::destination::{NewSession, SessionSink};
use crate::error::Result;
use crate::pipeline::Mode;
use crate::send::{compare_and_store, ChunkSink};
use crate::source::{Changes, SendView};

const CS: u64 = 65536;
const VOL: &str = "vm-a";
const ID: &str = "20260101-000000";

/// A volume of `n` chunks, every one data (no two alike).
fn image(n: u64) -> Vec<u8> {
    (0..n * CS)
        .map(|i| ((i / CS) as u8).wrapping_mul(31) ^ (i % 251) as u8 | 1)
        .collect()
}

fn config(compression: &str) -> Config {
    let text = format!(
        "[var]\nsource = file\nvoldir = /nonexistent\ndestdir = /nonexistent\n\
         metadir = /nonexistent\nchunksize = 64K\ncompression = {compression}\n"
    );
    Config::parse(&text, Path::new("t.ini")).expect("test config")
}

/// The pipeline's sink is today's `ChunkSink`: hand its records to a session sink.
struct Via<'a>(&'a mut dyn SessionSink);

impl ChunkSink for Via<'_> {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        self.0.put_chunk(addr, hash, payload)
    }
    fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.0.put_zero(addr)
    }
    fn changed(&self) -> u64 {
        self.0.changed()
    }
}

/// Send `data` as the first session of `store` the way `send` writes one: compare and
/// store through the pipeline, prepare, commit; on any failure abort.
fn send_first(
    store: &MemoryStore,
    faults: &Faults,
    compression: &str,
    data: &[u8],
) -> Result<SessionInfo> {
    let config = config(compression);
    let dir = tempfile::tempdir().expect("tempdir");
    let img = dir.path().join("image");
    std::fs::File::create(&img)
        .and_then(|mut f| f.write_all(data))
        .expect("image");
    let view = SendView {
        file: std::fs::File::open(&img).expect("image"),
        size: data.len() as u64,
        changes: Changes::Scan,
        label: img.display().to_string(),
    };
    // A first send reads no base view.
    let base = VolumeArchive::new(&dir.path().join(VOL));
    let mut sink: Box<dyn SessionSink> = Box::new(MemorySink::new(store, ID, faults.clone()));
    let res = (|| {
        let c = compare_and_store(
            &config,
            &base,
            &[],
            &view,
            &mut Via(&mut *sink),
            Mode::store(config.compression, VOL, ID),
            "send vm-a",
        )?;
        sink.prepare(NewSession {
            volume: VOL.into(),
            session: ID.into(),
            previous: None,
            time: 1_767_225_600,
            volsize: view.size,
            chunksize: CS,
            compression: config.compression.codec,
            chunks: c.chunks,
            bytes_read: c.bytes_read,
        })?;
        Ok(())
    })();
    match res {
        Ok(()) => sink.commit(),
        Err(e) => {
            sink.abort()?;
            Err(e)
        }
    }
}

/// Where a chunk of the memory store is, as errors name it.
fn chunk_at(id: &str, addr: u64) -> String {
    format!(
        "mem:{VOL}/{}/{}",
        layout::session_dir_name(id),
        layout::chunk_rel_path(addr).display()
    )
}

fn os(code: i32) -> String {
    std::io::Error::from_raw_os_error(code).to_string()
}

#[test]
fn a_send_into_memory_stores_what_a_folder_would() {
    let data = image(6);
    let store = MemoryStore::new(VOL);
    let info = send_first(&store, &Faults::new(), "zstd:3", &data).unwrap();
    assert_eq!(store.sessions().unwrap(), vec![ID.to_string()]);
    assert_eq!((info.changed, info.chunks), (6, 6));
    // Every stored chunk decodes to the volume's bytes and has the manifest's id.
    let s = store.session(ID).unwrap();
    let codec = codec::for_info(&info);
    let mut n = 0;
    for e in ManifestReader::new(&s.manifest[..], Path::new("m")) {
        let e = e.unwrap();
        let d = codec
            .decode(&ChunkContext::of(&info, e.addr), &s.chunks[&e.addr])
            .unwrap();
        assert_eq!(&d[..], &data[e.addr as usize..(e.addr + CS) as usize]);
        assert_eq!(Some(codec.identify(&d)), e.hash);
        n += 1;
    }
    assert_eq!(n, 6);
    assert_eq!(s.info, info.to_text().into_bytes());
}

#[test]
fn a_send_that_runs_out_of_space_commits_nothing() {
    // Uncompressed chunks: the fourth one does not fit.
    let store = MemoryStore::new(VOL);
    let faults = Faults::new().enospc_after(3 * CS + 100);
    let e = send_first(&store, &faults, "none", &image(6)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: {}", chunk_at(ID, 3 * CS), os(libc::ENOSPC))
    );
    assert_eq!(store.sessions().unwrap(), Vec::<String>::new());
    assert_eq!(
        faults.fired(),
        vec![format!(
            "ENOSPC writing S_{ID}/{} after {} bytes",
            layout::chunk_rel_path(3 * CS).display(),
            3 * CS
        )]
    );
}

#[test]
fn a_send_meeting_an_io_error_commits_nothing() {
    // Calls: one per chunk put, then prepare and commit. EIO at the fifth chunk, and
    // at the commit.
    for (at, obj) in [
        (5, chunk_at(ID, 4 * CS)),
        (8, format!("mem:{VOL}/S_{ID}/info")),
    ] {
        let store = MemoryStore::new(VOL);
        let faults = Faults::new().eio_at_call(at);
        let e = send_first(&store, &faults, "zstd:3", &image(6)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{obj}: {}", os(libc::EIO)),
            "call {at}"
        );
        assert_eq!(store.sessions().unwrap(), Vec::<String>::new(), "call {at}");
        assert_eq!(faults.calls(), at, "nothing was tried after the failure");
    }
}

#[test]
fn a_torn_write_is_caught_by_reading_back() {
    // The write "succeeded" (a crash or a lying disk kept a prefix): the session
    // commits, and only reading it back shows the damage.
    let store = MemoryStore::new(VOL);
    let faults = Faults::new().tear(Object::Chunk(ID.into(), 2 * CS), 100);
    let info = send_first(&store, &faults, "zstd:3", &image(6)).unwrap();
    let s = store.session(ID).unwrap();
    assert_eq!(s.chunks[&(2 * CS)].len(), 100);
    let e = codec::for_info(&info)
        .decode(&ChunkContext::of(&info, 2 * CS), &s.chunks[&(2 * CS)])
        .unwrap_err();
    assert!(e.reason.starts_with("zstd: "), "{e}");
    assert_eq!(e.addr, 2 * CS);
}
