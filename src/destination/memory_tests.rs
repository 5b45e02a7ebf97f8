//! Send, receive, verify and prune meeting a destination that fails on purpose: each
//! fault gives one clean error naming the object, and leaves nothing half-visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sparsebak_format::codec::{self, ChunkContext};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::manifest::ManifestReader;
use sparsebak_format::store::VolumeStore;
use sparsebak_format::testing::{Faults, MemoryStore, Object};
use sparsebak_format::volume::VolumeArchive;

use super::MemorySink;
use crate::config::Config;
use crate::destination::SessionSink;
use crate::error::Result;
use crate::send::{take_session, SessionTarget};
use crate::source::file::FileSource;
use crate::source::VolumeCtx;

const CS: u64 = 65536;
const VOL: &str = "vm-a";

/// A volume of `n` chunks, every one data (no two alike).
fn image(n: u64) -> Vec<u8> {
    (0..n * CS)
        .map(|i| ((i / CS) as u8).wrapping_mul(31) ^ (i % 251) as u8 | 1)
        .collect()
}

/// A config reading volumes (`source = file`) from `voldir`.
fn config(voldir: &Path, compression: &str) -> Config {
    let text = format!(
        "[var]\nsource = file\nvoldir = {}\ndestdir = /nonexistent\n\
         metadir = /nonexistent\nchunksize = 64K\ncompression = {compression}\n",
        voldir.display()
    );
    Config::parse(&text, Path::new("t.ini")).expect("test config")
}

/// Sessions go into a memory store; what the source side would record is noted.
struct MemoryTarget {
    store: MemoryStore,
    faults: Faults,
    /// The session begun.
    id: Option<String>,
    /// The sessions recorded as pending, and as committed, by the source side.
    pending: Vec<String>,
    committed: Vec<String>,
}

impl SessionTarget for MemoryTarget {
    fn begin(&mut self, id: &str, _time: i64, _volsize: u64) -> Result<Box<dyn SessionSink>> {
        self.id = Some(id.to_string());
        Ok(Box::new(MemorySink::new(
            &self.store,
            id,
            self.faults.clone(),
        )))
    }
    fn keep_unchanged(&self) -> bool {
        false
    }
    fn before_commit(&mut self, info: &SessionInfo) -> Result<()> {
        self.pending.push(info.session.clone());
        Ok(())
    }
    fn after_commit(&mut self, info: &SessionInfo) -> Result<()> {
        self.committed.push(info.session.clone());
        Ok(())
    }
}

/// Send `data` as volume `vm-a` into `store` through send's one path
/// (`take_session`: the file source, the pipeline, the sink's prepare and commit),
/// incremental on the store's latest session. Returns the outcome and the target.
fn send(
    store: &MemoryStore,
    faults: &Faults,
    compression: &str,
    data: &[u8],
) -> (Result<Option<SessionInfo>>, MemoryTarget) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(VOL), data).expect("image");
    let config = config(dir.path(), compression);
    let base = VolumeArchive::from_store(VOL, Arc::new(store.clone()));
    let chain = match store.sessions().expect("sessions").last() {
        Some(l) => base.chain(l).expect("chain"),
        None => Vec::new(),
    };
    let mut target = MemoryTarget {
        store: store.clone(),
        faults: faults.clone(),
        id: None,
        pending: Vec::new(),
        committed: Vec::new(),
    };
    let r = take_session(
        &config,
        &VolumeCtx::new(&config, VOL),
        &mut FileSource,
        &base,
        &chain,
        &mut target,
        "send vm-a",
    )
    .map(|(s, _)| s);
    (r, target)
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

/// The chunks of session `id` of `store` decode to `data` and have the manifest's ids.
fn assert_holds(store: &MemoryStore, info: &SessionInfo, data: &[u8], expect: u64) {
    let s = store.session(&info.session).expect("session");
    let codec = codec::for_info(info);
    let mut n = 0;
    for e in ManifestReader::new(&s.manifest[..], Path::new("m")) {
        let e = e.unwrap();
        let Some(h) = e.hash else { continue };
        let d = codec
            .decode(&ChunkContext::of(info, e.addr), &s.chunks[&e.addr])
            .unwrap();
        assert_eq!(&d[..], &data[e.addr as usize..(e.addr + CS) as usize]);
        assert_eq!(codec.identify(&d), h);
        n += 1;
    }
    assert_eq!(n, expect);
    assert_eq!(s.info, info.to_text().into_bytes());
}

#[test]
fn a_send_into_memory_stores_what_a_folder_would() {
    let store = MemoryStore::new(VOL);
    let v1 = image(6);
    let (r, t) = send(&store, &Faults::new(), "zstd:3", &v1);
    let i1 = r.unwrap().unwrap();
    assert_eq!(store.sessions().unwrap(), vec![i1.session.clone()]);
    assert_eq!((i1.changed, i1.chunks), (6, 6));
    assert_eq!(
        (t.pending, t.committed),
        (vec![i1.session.clone()], vec![i1.session.clone()])
    );
    assert_holds(&store, &i1, &v1, 6);
    // An incremental: two chunks rewritten, one zeroed.
    let mut v2 = v1.clone();
    v2[CS as usize + 3] ^= 0xff;
    v2[4 * CS as usize + 3] ^= 0xff;
    v2[2 * CS as usize..3 * CS as usize].fill(0);
    let (r, _) = send(&store, &Faults::new(), "zstd:3", &v2);
    let i2 = r.unwrap().unwrap();
    assert_eq!(i2.previous.as_deref(), Some(i1.session.as_str()));
    assert_eq!((i2.changed, i2.chunks), (3, 5));
    assert_holds(&store, &i2, &v2, 2);
    // Nothing changed: no session.
    let (r, t) = send(&store, &Faults::new(), "zstd:3", &v2);
    assert!(r.unwrap().is_none());
    assert_eq!(store.sessions().unwrap().len(), 2);
    assert!(t.pending.is_empty());
}

#[test]
fn a_send_that_runs_out_of_space_commits_nothing() {
    // Uncompressed chunks: the fourth one does not fit.
    let store = MemoryStore::new(VOL);
    let faults = Faults::new().enospc_after(3 * CS + 100);
    let (r, t) = send(&store, &faults, "none", &image(6));
    let id = t.id.clone().unwrap();
    assert_eq!(
        r.unwrap_err().to_string(),
        format!("{}: {}", chunk_at(&id, 3 * CS), os(libc::ENOSPC))
    );
    assert_eq!(store.sessions().unwrap(), Vec::<String>::new());
    assert!(t.pending.is_empty() && t.committed.is_empty());
    assert_eq!(
        faults.fired(),
        vec![format!(
            "ENOSPC writing S_{id}/{} after {} bytes",
            layout::chunk_rel_path(3 * CS).display(),
            3 * CS
        )]
    );
}

#[test]
fn a_send_meeting_an_io_error_commits_nothing() {
    // Calls: one per chunk put, then prepare and commit. EIO at the fifth chunk, at
    // the prepare (the manifest) and at the commit (the info).
    for (at, pending) in [(5, false), (7, false), (8, true)] {
        let store = MemoryStore::new(VOL);
        let faults = Faults::new().eio_at_call(at);
        let (r, t) = send(&store, &faults, "zstd:3", &image(6));
        let id = t.id.clone().unwrap();
        let obj = match at {
            5 => chunk_at(&id, 4 * CS),
            7 => format!("mem:{VOL}/S_{id}/manifest"),
            _ => format!("mem:{VOL}/S_{id}/info"),
        };
        assert_eq!(
            r.unwrap_err().to_string(),
            format!("{obj}: {}", os(libc::EIO)),
            "call {at}"
        );
        assert_eq!(store.sessions().unwrap(), Vec::<String>::new(), "call {at}");
        assert_eq!(faults.calls(), at, "nothing was tried after the failure");
        // The pending record exists only once the session was durable (then the next
        // run finds no session and clears it).
        assert_eq!(t.pending.len(), usize::from(pending), "call {at}");
        assert!(t.committed.is_empty());
    }
}

#[test]
fn a_torn_write_is_caught_by_reading_back() {
    // The write "succeeded" (a crash or a lying disk kept a prefix): the session
    // commits, and only reading it back shows the damage.
    let store = MemoryStore::new(VOL);
    // Session IDs come from the clock: tear the third chunk of whichever it is.
    let id = crate::session_id::next_id(chrono::Local::now().naive_local(), None);
    let faults = Faults::new().tear(Object::Chunk(id.clone(), 2 * CS), 100);
    let (r, t) = send(&store, &faults, "zstd:3", &image(6));
    if t.id.as_deref() != Some(id.as_str()) {
        // The clock moved on to the next second between the two: the fault missed.
        assert!(faults.fired().is_empty());
        return a_torn_write_is_caught_by_reading_back();
    }
    let info = r.unwrap().unwrap();
    let s = store.session(&id).unwrap();
    assert_eq!(s.chunks[&(2 * CS)].len(), 100);
    let e = codec::for_info(&info)
        .decode(&ChunkContext::of(&info, 2 * CS), &s.chunks[&(2 * CS)])
        .unwrap_err();
    assert!(e.reason.starts_with("zstd: "), "{e}");
    assert_eq!(e.addr, 2 * CS);
}

/// The four sessions of [`sparsebak_format::testing::history_versions`] in memory.
fn history() -> (MemoryStore, Vec<SessionInfo>, Vec<Vec<u8>>) {
    let vs = sparsebak_format::testing::history_versions();
    let (store, infos) =
        MemoryStore::from_versions(VOL, 4096, sparsebak_format::chunk::Codec::Zstd, &vs)
            .expect("history");
    (store, infos, vs)
}

fn verify_mem(store: &MemoryStore, faults: &Faults, id: &str) -> crate::archive::verify::Report {
    let dest = super::MemoryDestination::new(faults.clone());
    dest.stores().insert(store.clone());
    crate::archive::verify::verify(&dest, VOL, id, None, &mut |_| {}).expect("verify runs")
}

/// Chunk `n` (of 4 KiB) of session `id`, as errors name it.
fn chunk4k(id: &str, n: u64) -> String {
    chunk_at(id, n * 4096)
}

#[test]
fn verify_of_a_sound_memory_archive_finds_nothing() {
    let (store, infos, _) = history();
    for i in &infos {
        let rep = verify_mem(&store, &Faults::new(), &i.session);
        assert_eq!(rep.problems, Vec::<String>::new(), "{}", i.session);
        assert_eq!(rep.bad_chunks, 0);
        assert_eq!(rep.chunks_checked, i.chunks);
    }
    assert_eq!(infos[3].chunks, 21);
}

#[test]
fn verify_counts_each_chunk_that_fails_once() {
    let (store, infos, _) = history();
    let id = |k: usize| infos[k].session.clone();
    let faults = Faults::new()
        .tear(Object::Chunk(id(0), 0), 30)
        .eio_on(Object::Chunk(id(1), 17 * 4096))
        .vanish(Object::Chunk(id(2), 20 * 4096))
        // Not in the last view (rewritten by session 4): not read, not counted.
        .eio_on(Object::Chunk(id(0), 4096));
    let rep = verify_mem(&store, &faults, &id(3));
    assert_eq!(rep.bad_chunks, 3, "{:?}", rep.problems);
    assert_eq!(rep.chunks_checked, 21 - 3);
    assert_eq!(rep.problems.len(), 3, "{:?}", rep.problems);
    assert!(
        rep.problems[0].starts_with(&format!("{}: zstd: ", chunk4k(&id(0), 0))),
        "{:?}",
        rep.problems
    );
    assert_eq!(
        rep.problems[1..],
        [
            format!("{}: {}", chunk4k(&id(1), 17), os(libc::EIO)),
            format!("{}: {}", chunk4k(&id(2), 20), os(libc::ENOENT)),
        ]
    );
    // Session 1's view does not take chunk 17 or 20 from sessions 2 and 3: only the
    // torn chunk and chunk 1 fail there.
    let rep = verify_mem(&store, &faults, &id(0));
    assert_eq!(rep.bad_chunks, 2, "{:?}", rep.problems);
    assert_eq!(rep.chunks_checked, 22);
    assert_eq!(
        rep.problems[1],
        format!("{}: {}", chunk4k(&id(0), 1), os(libc::EIO))
    );
}

#[test]
fn verify_names_a_manifest_that_vanished_or_was_torn() {
    let (store, infos, _) = history();
    let s2 = infos[1].session.clone();
    let last = infos[3].session.clone();
    let rep = verify_mem(
        &store,
        &Faults::new().vanish(Object::Manifest(s2.clone())),
        &last,
    );
    assert_eq!(
        rep.problems,
        vec![format!("mem:{VOL}/S_{s2}/manifest: {}", os(libc::ENOENT))]
    );
    // Its chunks are not blamed: one damaged file is one problem.
    assert_eq!(rep.bad_chunks, 0);
    let rep = verify_mem(
        &store,
        &Faults::new().tear(Object::Manifest(s2.clone()), 100),
        &last,
    );
    assert_eq!(
        rep.problems,
        vec![format!(
            "session {s2}: manifest does not match the hash in its info (manifest altered)"
        )]
    );
    assert_eq!(rep.bad_chunks, 0);
    // An info that vanished breaks the chain: said once, with the file.
    let rep = verify_mem(
        &store,
        &Faults::new().vanish(Object::Info(s2.clone())),
        &last,
    );
    assert_eq!(
        rep.problems,
        vec![format!(
            "session chain: mem:{VOL}/S_{s2}/info: {}",
            os(libc::ENOENT)
        )]
    );
}

/// Write the sessions of `store` as a folder archive's volume folder `dir` (the files
/// `send` writes: info, manifest, chunk files in their prefix folders).
fn write_folder(store: &MemoryStore, dir: &Path) {
    for id in store.sessions().expect("sessions") {
        let s = store.session(&id).expect("session");
        let sdir = layout::session_dir(dir, &id);
        std::fs::create_dir_all(&sdir).expect("session folder");
        std::fs::write(sdir.join(layout::INFO_FILE), &s.info).expect("info");
        std::fs::write(sdir.join(layout::MANIFEST_FILE), &s.manifest).expect("manifest");
        for (addr, bytes) in &s.chunks {
            let p = sdir.join(layout::chunk_rel_path(*addr));
            std::fs::create_dir_all(p.parent().expect("prefix")).expect("prefix folder");
            std::fs::write(p, bytes).expect("chunk");
        }
    }
}

/// Every file under `dir` and its bytes.
fn tree(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("listing") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).expect("file"));
            }
        }
    }
    out
}

/// Volume folder `dir`, read through a store over it that fails as `faults` plans.
fn faulty_local(dir: &Path, faults: &Faults) -> crate::destination::local::LocalVol {
    let fs = sparsebak_format::store::FolderStore::new(dir);
    crate::destination::local::LocalVol::with_store(
        dir,
        Arc::new(sparsebak_format::testing::FaultyStore::new(
            fs,
            faults.clone(),
        )),
    )
}

#[test]
fn prune_refuses_what_its_checks_cannot_read_and_changes_nothing() {
    use crate::destination::local::prune::{check_removal, fold};
    let (store, infos, _) = history();
    let tmp = tempfile::tempdir().expect("tempdir");
    let vd = tmp.path().join(VOL);
    write_folder(&store, &vd);
    let before = tree(&vd);
    let (s2, s3) = (infos[1].session.clone(), infos[2].session.clone());
    let enoent = os(libc::ENOENT);
    let repair = "nothing was changed (`sparsebak repair vm-a` re-creates chunk files from \
                  the volume where it still holds their data)";

    // Sound: session 2 can go into session 3.
    let clean = Faults::new();
    check_removal(&faulty_local(&vd, &clean), std::slice::from_ref(&s2)).unwrap();
    let plan = fold(&faulty_local(&vd, &clean), None, &s2, true).unwrap();
    assert_eq!(
        (plan.removed.as_str(), plan.into.as_str()),
        (s2.as_str(), s3.as_str())
    );
    // Chunks 2, 3 and 17 of session 2 are still in session 3's view.
    assert_eq!((plan.moved, plan.missing_count), (3, 0));

    // The removed session's manifest vanished after the listing.
    let f = Faults::new().vanish(Object::Manifest(s2.clone()));
    let e = check_removal(&faulty_local(&vd, &f), std::slice::from_ref(&s2)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "volume {VOL}: cannot remove 1 session(s): they need the manifest of session {s2} \
             ({}: {enoent}); {repair}",
            vd.join(format!("S_{s2}/manifest")).display()
        )
    );
    // The next session's manifest reads back torn: the fold is refused before its
    // journal.
    let f = Faults::new().tear(Object::Manifest(s3.clone()), 100);
    let e = fold(&faulty_local(&vd, &f), None, &s2, false).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "volume {VOL}: cannot remove session {s2} into {s3}: it needs the manifest of \
             session {s3}, which does not match the hash in its info; {repair}"
        )
    );
    assert_eq!(tree(&vd), before);

    // An I/O error at any call of the checks (a dry run reads all a fold reads before
    // its journal) fails them with the error, naming what was read.
    let counted = Faults::new();
    fold(&faulty_local(&vd, &counted), None, &s2, true).unwrap();
    let n = counted.calls();
    assert!(n > 5, "{n}");
    for k in 1..=n {
        let f = Faults::new().eio_at_call(k);
        let r = fold(&faulty_local(&vd, &f), None, &s2, true);
        let e = r.expect_err(&format!("call {k} of {n} failed: {:?}", f.fired()));
        let e = e.to_string();
        assert!(e.contains(&os(libc::EIO)), "call {k}: {e}");
        assert!(e.contains(&vd.display().to_string()), "call {k}: {e}");
        assert_eq!(f.fired().len(), 1, "call {k}");
    }
    assert_eq!(tree(&vd), before);
}

#[test]
fn verify_counts_a_chunk_the_store_lost_once() {
    let (store, infos, _) = history();
    let s2 = infos[1].session.clone();
    assert!(store.edit(&s2, |s| {
        s.chunks.remove(&(17 * 4096));
        s.chunks.insert(23 * 4096, vec![1, 2, 3]);
    }));
    let rep = verify_mem(&store, &Faults::new(), &infos[3].session);
    // Missing from the listing and unreadable in the view: one bad chunk, said once;
    // the extra chunk is a problem but no bad chunk.
    assert_eq!(rep.bad_chunks, 1, "{:?}", rep.problems);
    assert_eq!(
        rep.problems,
        vec![
            format!("chunk file {} is missing", chunk4k(&s2, 17)),
            format!(
                "session {s2}: extra chunk x{:016x} not in its manifest",
                23 * 4096
            ),
        ]
    );
    assert_eq!(rep.chunks_checked, 20);
}

/// A machine that sends to an archive in memory: its config (volumes read from a
/// folder, a metadir of its own), the folder, and the archive.
struct Machine {
    dir: tempfile::TempDir,
    config: Config,
    dest: super::MemoryDestination,
}

impl Machine {
    fn new() -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        for d in ["vols", "meta"] {
            std::fs::create_dir(dir.path().join(d)).expect("folder");
        }
        let text = format!(
            "[var]\nencrypt = off\nsource = file\nvoldir = {0}/vols\ndestdir = {0}/archive\nmetadir = {0}/meta\n\
             chunksize = 64K\ncompression = zstd:3\n[volumes]\n{VOL} = enable\n",
            dir.path().display()
        );
        let config = Config::parse(&text, Path::new("t.ini")).expect("config");
        Machine {
            dir,
            config,
            dest: super::MemoryDestination::new(Faults::new()),
        }
    }

    /// `sparsebak send vm-a` of `data`, the archive failing as `faults` says.
    fn send(&self, data: &[u8], faults: &Faults) -> Result<crate::send::SendOutcome> {
        std::fs::write(self.dir.path().join("vols").join(VOL), data).expect("image");
        let archive = crate::archive::Archive::with_destination(
            Arc::new(self.dest.with_faults(faults.clone())),
            self.config.destdir.clone(),
        )?;
        crate::send::send_volume(&self.config, &archive, VOL, &mut FileSource, false)
    }

    /// The sessions this machine has copies of.
    fn copies(&self) -> Vec<String> {
        crate::archive::local::LocalCopies::new(&crate::metadir::meta_dir(&self.config, VOL))
            .ids()
            .expect("copies")
    }

    fn pending(&self) -> bool {
        crate::metadir::meta_dir(&self.config, VOL)
            .join("sessions")
            .join("pending")
            .exists()
    }

    fn sessions(&self) -> Vec<String> {
        self.dest.stores().store(VOL).sessions().expect("sessions")
    }

    /// Session `id` restored from the archive.
    fn restore(&self, id: &str) -> Vec<u8> {
        let vol = crate::destination::Destination::volume(&self.dest, VOL);
        let chain = vol.chain(id).expect("chain");
        let out = self.dir.path().join("restored");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&out)
            .expect("target");
        let size = chain.last().expect("last").volsize;
        let mut t = sparsebak_format::restore::SparseFileTarget::new(f, size).expect("target");
        sparsebak_format::restore::restore(&vol, &chain, &mut t, true, &mut |_| {})
            .expect("restore");
        std::fs::read(&out).expect("restored")
    }
}

#[test]
fn send_into_an_archive_in_memory_round_trips() {
    let m = Machine::new();
    let v1 = image(6);
    let s1 = m.send(&v1, &Faults::new()).unwrap().session.unwrap();
    let mut v2 = v1.clone();
    v2[3 * CS as usize + 7] ^= 0x0f;
    v2.truncate(5 * CS as usize + 10);
    let s2 = m.send(&v2, &Faults::new()).unwrap().session.unwrap();
    assert_eq!(s2.previous.as_deref(), Some(s1.session.as_str()));
    assert_eq!((s2.changed, s2.chunks, s2.volsize), (2, 6, 5 * CS + 10));
    assert_eq!(m.sessions(), vec![s1.session.clone(), s2.session.clone()]);
    assert_eq!(m.copies(), m.sessions());
    assert!(!m.pending());
    assert_eq!(m.restore(&s1.session), v1);
    assert_eq!(m.restore(&s2.session), v2);
}

#[test]
fn a_send_whose_commit_fails_leaves_nothing_and_the_next_one_completes() {
    let m = Machine::new();
    let v1 = image(6);
    let e = m
        .send(&v1, &Faults::new().eio_on_call("commit"))
        .unwrap_err();
    let e = e.to_string();
    assert!(e.starts_with(&format!("mem:{VOL}/S_")), "{e}");
    assert!(e.ends_with(&format!("/info: {}", os(libc::EIO))), "{e}");
    assert_eq!(m.sessions(), Vec::<String>::new());
    // The pending record was written before the commit; the next send finds no such
    // session and drops it.
    assert!(m.pending());
    let s1 = m.send(&v1, &Faults::new()).unwrap().session.unwrap();
    assert_eq!(m.sessions(), vec![s1.session.clone()]);
    assert_eq!(m.copies(), m.sessions());
    assert!(!m.pending());
    assert_eq!(m.restore(&s1.session), v1);
}

#[test]
fn a_send_out_of_space_leaves_nothing_and_the_next_one_completes() {
    let m = Machine::new();
    let v1 = image(6);
    // The six chunks compress to about 1600 bytes.
    let faults = Faults::new().enospc_after(1000);
    let e = m.send(&v1, &faults).unwrap_err().to_string();
    assert!(e.ends_with(&os(libc::ENOSPC)), "{e}");
    assert!(e.starts_with(&format!("mem:{VOL}/S_")), "{e}");
    assert_eq!(faults.fired().len(), 1, "{:?}", faults.fired());
    assert_eq!(m.sessions(), Vec::<String>::new());
    assert!(!m.pending());
    assert!(m.copies().is_empty());
    let s1 = m.send(&v1, &Faults::new()).unwrap().session.unwrap();
    assert_eq!(m.restore(&s1.session), v1);
}

#[test]
fn an_unreadable_info_keeps_the_pending_record_until_it_can_be_read() {
    // The commit succeeds, but the source cannot read the new session back to take its
    // copies: the send fails, the session exists, the pending record stays.
    let m = Machine::new();
    let v1 = image(6);
    let unreadable = Faults::new().eio_on_call("info");
    let e = m.send(&v1, &unreadable).unwrap_err().to_string();
    assert!(e.ends_with(&format!("/info: {}", os(libc::EIO))), "{e}");
    let s1 = m.sessions();
    assert_eq!(s1.len(), 1);
    assert!(m.pending());
    assert!(m.copies().is_empty());
    // Still unreadable: the next send cannot tell whether the session exists, so it
    // stops there, keeping the record (dropping it would lose the session's copies).
    let e = m.send(&v1, &unreadable).unwrap_err().to_string();
    assert_eq!(e, format!("mem:{VOL}/S_{}/info: {}", s1[0], os(libc::EIO)));
    assert!(m.pending());
    // Readable again: the copies are taken, and nothing changed since.
    let out = m.send(&v1, &Faults::new()).unwrap();
    assert!(out.session.is_none());
    assert_eq!(m.copies(), s1);
    assert!(!m.pending());
}

#[test]
fn a_receive_that_fails_leaves_the_target_file_untouched() {
    let (store, infos, vs) = history();
    let last = &infos[3];
    let s2 = infos[1].session.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let old = dir.path().join("old.img");
    std::fs::write(&old, b"what was there before").expect("old target");
    let new = dir.path().join("new.img");
    let faults = Faults::new().eio_on(Object::Chunk(s2.clone(), 17 * 4096));
    let vol = VolumeArchive::from_store(
        VOL,
        Arc::new(sparsebak_format::testing::FaultyStore::new(
            store.clone(),
            faults.clone(),
        )),
    );
    let chain = vol.chain(&last.session).expect("chain");
    for target in [&old, &new] {
        let out = crate::receive::check_target(target, last.volsize, VOL).expect("target");
        let e = crate::receive::receive_to(&vol, &chain, &out, &mut |_| {}).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{}: {}", chunk4k(&s2, 17), os(libc::EIO))
        );
    }
    // The old file is as it was, no new one appeared, and no partial file is left.
    assert_eq!(
        tree(dir.path()).into_iter().collect::<Vec<_>>(),
        vec![(old.clone(), b"what was there before".to_vec())]
    );
    // Without the fault the same receive replaces it with the session's volume.
    let vol = VolumeArchive::from_store(VOL, Arc::new(store));
    let out = crate::receive::check_target(&old, last.volsize, VOL).expect("target");
    crate::receive::receive_to(&vol, &chain, &out, &mut |_| {}).expect("receive");
    assert_eq!(std::fs::read(&old).expect("restored"), vs[3]);
}

#[test]
fn repair_puts_back_a_damaged_chunk_through_the_destination() {
    let m = Machine::new();
    let v1 = image(6);
    let s1 = m.send(&v1, &Faults::new()).unwrap().session.unwrap();
    let id = s1.session.clone();
    // A torn chunk file: its first 50 bytes only.
    assert!(m.dest.stores().store(VOL).edit(&id, |s| s
        .chunks
        .get_mut(&(3 * CS))
        .expect("chunk")
        .truncate(50)));
    let archive = |faults: &Faults| {
        crate::archive::Archive::with_destination(
            Arc::new(m.dest.with_faults(faults.clone())),
            m.config.destdir.clone(),
        )
        .expect("archive")
    };
    let repair = |faults: &Faults| {
        crate::archive::repair::repair(&m.config, &archive(faults), VOL, &mut FileSource, false)
    };
    // Writing it back fails: said with the chunk, nothing else changes.
    let e = repair(&Faults::new().eio_on_call("put session file")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{}: {}", chunk_at(&id, 3 * CS), os(libc::EIO))
    );
    let rep = verify_mem(&m.dest.stores().store(VOL), &Faults::new(), &id);
    assert_eq!(rep.bad_chunks, 1, "{:?}", rep.problems);
    // It works: the chunk comes back from the volume, and the session verifies.
    let rep = repair(&Faults::new()).unwrap();
    assert_eq!(rep.unrepaired, Vec::<String>::new());
    assert_eq!(rep.done.len(), 1, "{:?}", rep.done);
    assert!(
        rep.done[0].starts_with(&format!(
            "re-created chunk x{:016x} of session {id} from ",
            3 * CS
        )),
        "{:?}",
        rep.done
    );
    let rep = verify_mem(&m.dest.stores().store(VOL), &Faults::new(), &id);
    assert_eq!(
        (rep.bad_chunks, rep.chunks_checked),
        (0, 6),
        "{:?}",
        rep.problems
    );
    assert_eq!(m.restore(&id), v1);
}

#[test]
fn an_io_error_at_any_call_of_an_incremental_send_is_recovered_by_the_next() {
    let v1 = image(8);
    let mut v2 = v1.clone();
    for c in [1usize, 4, 6] {
        v2[c * CS as usize + 11] ^= 0x3c;
    }
    v2[2 * CS as usize..3 * CS as usize].fill(0);
    // How many calls a clean incremental send makes.
    let counted = Faults::new();
    let m = Machine::new();
    m.send(&v1, &Faults::new()).unwrap();
    m.send(&v2, &counted).unwrap();
    let n = counted.calls();
    assert!(n > 10, "{n}");
    for k in 1..=n {
        let m = Machine::new();
        let s1 = m.send(&v1, &Faults::new()).unwrap().session.unwrap();
        let faults = Faults::new().eio_at_call(k);
        let r = m.send(&v2, &faults);
        assert_eq!(faults.fired().len(), 1, "call {k}");
        let e = r.expect_err(&format!("call {k}: {:?}", faults.fired()));
        assert!(e.to_string().contains(&os(libc::EIO)), "call {k}: {e}");
        // The archive has the first session, or the second whole.
        let ids = m.sessions();
        assert!(ids.len() == 1 || ids.len() == 2, "call {k}: {ids:?}");
        assert_eq!(m.restore(&s1.session), v1, "call {k}");
        // The next send completes the work.
        m.send(&v2, &Faults::new()).unwrap();
        let ids = m.sessions();
        assert_eq!(ids.len(), 2, "call {k}");
        assert_eq!(m.copies(), ids, "call {k}");
        assert!(!m.pending(), "call {k}");
        assert_eq!(m.restore(&ids[1]), v2, "call {k}");
        let rep = verify_mem(&m.dest.stores().store(VOL), &Faults::new(), &ids[1]);
        assert_eq!(rep.problems, Vec::<String>::new(), "call {k}");
    }
}

#[test]
fn an_io_error_at_any_call_of_verify_is_a_problem_it_reports() {
    let (store, infos, _) = history();
    let last = &infos[3].session;
    let counted = Faults::new();
    assert!(verify_mem(&store, &counted, last).problems.is_empty());
    let n = counted.calls();
    assert!(n > 20, "{n}");
    for k in 1..=n {
        let faults = Faults::new().eio_at_call(k);
        let dest = super::MemoryDestination::new(faults.clone());
        dest.stores().insert(store.clone());
        let rep = crate::archive::verify::verify(&dest, VOL, last, None, &mut |_| {});
        assert_eq!(faults.fired().len(), 1, "call {k}");
        match rep {
            Err(e) => assert!(e.to_string().contains(&os(libc::EIO)), "call {k}: {e}"),
            Ok(rep) => {
                assert!(
                    rep.problems.iter().any(|p| p.contains(&os(libc::EIO))),
                    "call {k}: a failed read went unreported: {:?}",
                    rep.problems
                );
            }
        }
    }
}

#[test]
fn an_io_error_at_any_call_of_diff_fails_it() {
    let (store, infos, _) = history();
    let (a, b) = (&infos[0].session, &infos[3].session);
    let clean = Faults::new();
    let vol = |f: &Faults| {
        VolumeArchive::from_store(
            VOL,
            Arc::new(sparsebak_format::testing::FaultyStore::new(
                store.clone(),
                f.clone(),
            )),
        )
    };
    let want = crate::diff::sessions(&vol(&clean), a, b).unwrap();
    let n = clean.calls();
    assert!(n > 5, "{n}");
    for k in 1..=n {
        let faults = Faults::new().eio_at_call(k);
        let r = crate::diff::sessions(&vol(&faults), a, b);
        assert_eq!(faults.fired().len(), 1, "call {k}");
        let e = r.expect_err(&format!("call {k}: a diff over a failed read"));
        assert!(e.to_string().contains(&os(libc::EIO)), "call {k}: {e}");
    }
    // What differs: chunks 1-3, 5 (zeroed), 17, 20, 21 (its tail cut inside the chunk)
    // and 22-23 (cut off).
    let k = 4096;
    assert_eq!(
        want.ranges,
        vec![(k, 3 * k), (5 * k, k), (17 * k, k), (20 * k, 4 * k)]
    );
    assert_eq!(want.chunks, 9);
}

/// Session `id` of the volume folder `dir` restored.
fn restore_folder(dir: &Path, id: &str) -> Vec<u8> {
    let vol = VolumeArchive::new(dir);
    let chain = vol.chain(id).expect("chain");
    let size = chain.last().expect("last").volsize;
    let mut out = Vec::new();
    sparsebak_format::restore::read_view(&vol, &chain, true, |batch| {
        for rc in batch {
            let d = rc.data.map_err(crate::error::Error::Msg)?;
            let a = rc.entry.addr as usize;
            let len = (size as usize - a).min(d.len());
            if out.len() < a + len {
                out.resize(a + len, 0);
            }
            out[a..a + len].copy_from_slice(&d[..len]);
        }
        Ok::<(), crate::error::Error>(())
    })
    .expect("read the view");
    out.resize(size as usize, 0);
    out
}

/// The history as a volume folder `dir` whose session 2 stores its chunks raw
/// (`compression=none`) and the others compressed: folding session 2 into 3 re-encodes.
fn write_mixed_folder(dir: &Path) {
    let (zstd, _, vs) = history();
    write_folder(&zstd, dir);
    let (raw, infos) =
        MemoryStore::from_versions(VOL, 4096, sparsebak_format::chunk::Codec::None, &vs)
            .expect("history");
    let s2 = &infos[1].session;
    std::fs::remove_dir_all(layout::session_dir(dir, s2)).expect("session 2");
    let one = MemoryStore::new(VOL);
    one.insert(s2, raw.session(s2).expect("session 2"));
    write_folder(&one, dir);
}

#[test]
fn a_fold_meeting_an_io_error_at_any_read_is_finished_by_recovery() {
    use crate::destination::local::prune::{end, fold, recover};
    let (_, infos, vs) = history();
    let (s2, s3) = (infos[1].session.clone(), infos[2].session.clone());
    let counted = Faults::new();
    {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vd = tmp.path().join(VOL);
        write_mixed_folder(&vd);
        fold(&faulty_local(&vd, &counted), None, &s2, false).unwrap();
    }
    let n = counted.calls();
    assert!(n > 10, "{n}");
    for k in 1..=n {
        let tmp = tempfile::tempdir().expect("tempdir");
        let vd = tmp.path().join(VOL);
        write_mixed_folder(&vd);
        let faults = Faults::new().eio_at_call(k);
        let r = fold(&faulty_local(&vd, &faults), None, &s2, false);
        assert_eq!(faults.fired().len(), 1, "call {k}");
        if let Err(e) = &r {
            assert!(e.to_string().contains(&os(libc::EIO)), "call {k}: {e}");
        }
        // The next run rolls forward whatever the journal holds.
        let clean = crate::destination::local::LocalVol::new(&vd);
        let recovered = recover(&clean, None).unwrap();
        end(&clean).unwrap();
        let ids = VolumeArchive::new(&vd).sessions().unwrap();
        if r.is_ok() || recovered.is_some() {
            assert_eq!(
                ids,
                vec![
                    infos[0].session.clone(),
                    s3.clone(),
                    infos[3].session.clone()
                ],
                "call {k}"
            );
        } else {
            // Refused before its journal: nothing changed, the fold can run again.
            assert_eq!(ids.len(), 4, "call {k}");
            fold(&clean, None, &s2, false).unwrap();
            end(&clean).unwrap();
        }
        // Every surviving session restores its version.
        for (v, i) in vs.iter().zip(&infos) {
            if i.session != s2 {
                assert_eq!(
                    &restore_folder(&vd, &i.session),
                    v,
                    "call {k}: {}",
                    i.session
                );
            }
        }
    }
}

#[test]
fn an_io_error_at_any_call_of_repair_never_makes_things_worse() {
    let v1 = image(6);
    let setup = || {
        let m = Machine::new();
        let id = m
            .send(&v1, &Faults::new())
            .unwrap()
            .session
            .unwrap()
            .session;
        assert!(m.dest.stores().store(VOL).edit(&id, |s| s
            .chunks
            .get_mut(&(3 * CS))
            .expect("chunk")
            .truncate(50)));
        (m, id)
    };
    let repair = |m: &Machine, faults: &Faults| {
        let archive = crate::archive::Archive::with_destination(
            Arc::new(m.dest.with_faults(faults.clone())),
            m.config.destdir.clone(),
        )
        .expect("archive");
        crate::archive::repair::repair(&m.config, &archive, VOL, &mut FileSource, false)
    };
    let counted = Faults::new();
    let (m, _) = setup();
    repair(&m, &counted).unwrap();
    let n = counted.calls();
    assert!(n > 5, "{n}");
    for k in 1..=n {
        let (m, id) = setup();
        let faults = Faults::new().eio_at_call(k);
        let r = repair(&m, &faults);
        assert_eq!(faults.fired().len(), 1, "call {k}");
        // Whatever it said, the session has at most the one bad chunk it had...
        let rep = verify_mem(&m.dest.stores().store(VOL), &Faults::new(), &id);
        assert!(rep.bad_chunks <= 1, "call {k}: {:?}", rep.problems);
        match r {
            // ...and a repair that says it is done left none.
            Ok(rep_r) if rep_r.unrepaired.is_empty() => {
                assert_eq!(
                    rep.bad_chunks, 0,
                    "call {k}: {:?} {:?}",
                    rep_r, rep.problems
                )
            }
            Ok(rep_r) => assert!(
                rep_r.unrepaired.iter().any(|u| u.contains(&os(libc::EIO))),
                "call {k}: {rep_r:?}"
            ),
            Err(e) => assert!(e.to_string().contains(&os(libc::EIO)), "call {k}: {e}"),
        }
        // The next repair finishes the work.
        let done = repair(&m, &Faults::new()).unwrap();
        assert!(done.unrepaired.is_empty(), "call {k}: {done:?}");
        assert_eq!(m.restore(&id), v1, "call {k}");
    }
}
