//! Nothing of the archive side bypasses [`ArchiveFs`]: whole commands run on an
//! archive whose `destdir` does not exist on this machine
//! (`/nonexistent-archive-root/...`), reached only through a file system that maps
//! that prefix to a real temporary folder. A `std::fs` call left on an archive path
//! fails there (the folder does not exist), and a path outside the archive given to
//! the file system is recorded and fails the test. The mapping is not local
//! (`is_local` is false), so the paths a remote folder takes run too: tar indexes read
//! whole and written in one piece, manifests of tar sessions read by offset, no
//! background flushes.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clap::Parser;
use sparsebak_format::archive_fs::{
    ArchiveFs, Entry, FileWriter, LocalFs, LockMode, Meta, SharedFs,
};

use crate::archive::{prepare, Archive, Use};
use crate::cli::Cli;
use crate::destination::test_fs;
use crate::lock::Mode;

const CS: usize = 65536;
/// Chunks in the test volume.
const N: usize = 16;

/// `fake` (the archive's path as the code builds it) mapped onto `real`.
#[derive(Debug)]
struct Rebased {
    fake: PathBuf,
    real: PathBuf,
    /// Operations done.
    calls: AtomicU64,
    /// Paths given that are not inside the archive.
    outside: Mutex<Vec<PathBuf>>,
}

impl Rebased {
    fn new(fake: &Path, real: &Path) -> Arc<Rebased> {
        Arc::new(Rebased {
            fake: fake.to_path_buf(),
            real: real.to_path_buf(),
            calls: AtomicU64::new(0),
            outside: Mutex::new(Vec::new()),
        })
    }

    fn map(&self, p: &Path) -> io::Result<PathBuf> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        match p.strip_prefix(&self.fake) {
            Ok(rest) if rest.as_os_str().is_empty() => Ok(self.real.clone()),
            Ok(rest) => Ok(self.real.join(rest)),
            Err(_) => {
                self.outside.lock().unwrap().push(p.to_path_buf());
                Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{} is not inside {}", p.display(), self.fake.display()),
                ))
            }
        }
    }
}

impl ArchiveFs for Rebased {
    fn display(&self, path: &Path) -> String {
        format!("rebased:{}", path.display())
    }
    fn metadata(&self, path: &Path) -> io::Result<Meta> {
        LocalFs.metadata(&self.map(path)?)
    }
    fn read_dir(&self, path: &Path) -> io::Result<Vec<Entry>> {
        LocalFs.read_dir(&self.map(path)?)
    }
    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        LocalFs.read(&self.map(path)?, max)
    }
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        LocalFs.read_at(&self.map(path)?, offset, len)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn io::Read + Send>> {
        LocalFs.open(&self.map(path)?)
    }
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write(&self.map(path)?, data)
    }
    fn write_new(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write_new(&self.map(path)?, data)
    }
    fn write_atomic(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        LocalFs.write_atomic(&self.map(path)?, data)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn FileWriter>> {
        LocalFs.create(&self.map(path)?)
    }
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.create_dir(&self.map(path)?)
    }
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        LocalFs.create_dir_all(&self.map(path)?)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.rename(&self.map(from)?, &self.map(to)?)
    }
    fn rename_noreplace(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.rename_noreplace(&self.map(from)?, &self.map(to)?)
    }
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        LocalFs.hard_link(&self.map(from)?, &self.map(to)?)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_file(&self.map(path)?)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_dir(&self.map(path)?)
    }
    fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        LocalFs.remove_dir_all(&self.map(path)?)
    }
    fn sync_file(&self, path: &Path) -> io::Result<()> {
        LocalFs.sync_file(&self.map(path)?)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        LocalFs.sync_dir(&self.map(path)?)
    }
    fn syncfs(&self, path: &Path) -> io::Result<()> {
        LocalFs.syncfs(&self.map(path)?)
    }
    fn is_read_only(&self, path: &Path) -> bool {
        self.map(path).is_ok_and(|p| LocalFs.is_read_only(&p))
    }
    fn try_lock(
        &self,
        path: &Path,
        mode: LockMode,
    ) -> io::Result<Option<Box<dyn std::any::Any + Send + Sync>>> {
        LocalFs.try_lock(&self.map(path)?, mode)
    }
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            self.0 = x;
            let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// A config (`source = file`) whose archive is `fake`, registered to be reached
/// through a [`Rebased`] onto `<tmp>/archive`; encrypted with a passfile when
/// `sealed`.
struct World {
    tmp: tempfile::TempDir,
    fake: PathBuf,
    fs: Arc<Rebased>,
    config: PathBuf,
}

impl World {
    fn new(fake: &str, sealed: bool) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path();
        std::fs::create_dir_all(p.join("img")).unwrap();
        let fake = PathBuf::from(fake);
        assert!(!fake.exists(), "{} must not exist", fake.display());
        let fs = Rebased::new(&fake, &p.join("archive"));
        test_fs::register(&fake, fs.clone() as SharedFs);
        let w = World {
            config: p.join("sparsebak.ini"),
            tmp,
            fake,
            fs,
        };
        let mode = if sealed {
            format!(
                "passfile = {}",
                w.passfile("pass1", "first words").display()
            )
        } else {
            "encrypt = off".to_string()
        };
        w.write_config(&mode, "vm");
        w
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// The archive's real folder.
    fn real(&self) -> PathBuf {
        self.path().join("archive")
    }

    fn passfile(&self, name: &str, words: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.path().join(name);
        std::fs::write(&p, format!("{words}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    fn write_config(&self, mode: &str, vol: &str) {
        let p = self.path();
        let ini = format!(
            "[var]\n{mode}\nsource = file\nvoldir = {}\ndestdir = {}\nmetadir = {}\n\
             chunksize = 64K\n[volumes]\n{vol} = enable\n",
            p.join("img").display(),
            self.fake.display(),
            p.join("meta").display()
        );
        std::fs::write(&self.config, ini).unwrap();
    }

    /// Run a command in this process.
    fn run(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut argv = vec!["sparsebak", "-c", self.config.to_str().unwrap(), "-u", "-q"];
        argv.extend_from_slice(args);
        crate::commands::run(Cli::try_parse_from(argv)?)
    }

    fn ok(&self, args: &[&str]) {
        if let Err(e) = self.run(args) {
            panic!("{args:?}: {e:#}");
        }
    }

    fn config(&self) -> crate::config::Config {
        crate::config::Config::load(&self.config).unwrap()
    }

    fn sessions(&self, vol: &str) -> Vec<String> {
        if !self.real().join("sparsebak.archive").exists() {
            return Vec::new();
        }
        Archive::open(&self.config())
            .unwrap()
            .volume(vol)
            .sessions()
            .unwrap()
    }

    fn send(&self, img: &[u8], tar: bool) {
        std::fs::write(self.path().join("img/vm"), img).unwrap();
        let before = self.sessions("vm").len();
        // Session IDs are to the second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        if tar {
            self.ok(&["send", "--tarfile", "vm"]);
        } else {
            self.ok(&["send", "vm"]);
        }
        assert_eq!(self.sessions("vm").len(), before + 1);
    }

    fn receive(&self, vol: &str, id: &str) -> Vec<u8> {
        let out = self.path().join("restored.img");
        let save = format!("--save-to={}", out.display());
        let sel = format!("--session={id}");
        self.ok(&["receive", vol, &save, &sel]);
        let b = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        b
    }

    /// The real folder of the only volume in the archive.
    fn vol_dir(&self) -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.real())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        dirs.pop().unwrap()
    }

    /// Entries of the real volume folder: (folder sessions, tar files, others).
    fn layout(&self) -> (usize, usize, Vec<String>) {
        let (mut folders, mut tars, mut other) = (0, 0, Vec::new());
        for e in std::fs::read_dir(self.vol_dir()).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with("S_") && name.ends_with(".tar") {
                tars += 1;
            } else if name.starts_with("S_") && !name.ends_with(".index") {
                folders += 1;
            } else if !name.ends_with(".index") {
                other.push(name);
            }
        }
        other.sort();
        (folders, tars, other)
    }

    /// Chunk files stored in the real folder sessions of the volume.
    fn chunk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for s in std::fs::read_dir(self.vol_dir()).unwrap() {
            let s = s.unwrap().path();
            if !s.is_dir() || !s.file_name().unwrap().to_string_lossy().starts_with("S_") {
                continue;
            }
            for p in std::fs::read_dir(&s).unwrap() {
                let p = p.unwrap().path();
                if p.is_dir() {
                    out.extend(std::fs::read_dir(&p).unwrap().map(|f| f.unwrap().path()));
                }
            }
        }
        out.sort();
        out
    }

    /// Nothing was asked of the file system outside the archive, and it was used.
    fn check_seam(&self) {
        assert!(
            self.fs.outside.lock().unwrap().is_empty(),
            "paths outside the archive: {:?}",
            self.fs.outside.lock().unwrap()
        );
        assert!(self.fs.calls.load(Ordering::Relaxed) > 0);
        assert!(!self.fake.exists());
    }
}

impl Drop for World {
    fn drop(&mut self) {
        test_fs::forget(&self.fake);
    }
}

/// Every command that touches the archive, on a plain (`sealed` false: one session
/// stored as a tar) or an encrypted archive, through the rebased file system only.
fn every_command_through_the_seam(fake: &str, sealed: bool) {
    let w = World::new(fake, sealed);
    let mut rng = Rng(0x5eed_0001 | u64::from(sealed));
    let mut img = vec![0u8; N * CS];
    rng.fill(&mut img);
    img[5 * CS..6 * CS].fill(0);
    let mut versions = vec![img.clone()];
    w.send(&img, false);
    // Two chunks change; stored as a tar where the archive takes one.
    rng.fill(&mut img[2 * CS..4 * CS]);
    versions.push(img.clone());
    w.send(&img, !sealed);
    // One changes, one becomes zero.
    rng.fill(&mut img[7 * CS..8 * CS]);
    img[2 * CS..3 * CS].fill(0);
    versions.push(img.clone());
    w.send(&img, false);
    rng.fill(&mut img[10 * CS..11 * CS]);
    versions.push(img.clone());
    w.send(&img, false);

    let ids = w.sessions("vm");
    assert_eq!(ids.len(), 4);
    // Besides sessions: the lock, and an encrypted volume's identity file.
    let others: Vec<String> = if sealed {
        vec![".lock".into(), "volume".into()]
    } else {
        vec![".lock".into()]
    };
    let (tars, folders) = if sealed { (0, 4) } else { (1, 3) };
    assert_eq!(w.layout(), (folders, tars, others.clone()));
    // 15 data chunks, then 2 (in the tar of a plain archive), 1, 1.
    let stored_in_tar = if sealed { 0 } else { 2 };
    assert_eq!(w.chunk_files().len(), 15 + 2 - stored_in_tar + 1 + 1);
    for (id, v) in ids.iter().zip(&versions) {
        assert!(
            w.receive("vm", id) == *v,
            "session {id} restores its volume"
        );
        w.ok(&["verify", "vm", &format!("--session={id}")]);
    }
    w.ok(&["diff", "vm", &format!("--session={},{}", ids[0], ids[3])]);
    let a = Archive::open(&w.config()).unwrap();
    let d = crate::diff::sessions(&a.volume("vm"), &ids[0], &ids[3]).unwrap();
    assert_eq!(d.chunks, 4, "chunks 2, 3, 7 and 10 differ: {:?}", d.ranges);
    drop(a);

    if !sealed {
        w.ok(&["untar", "vm", &format!("--session={}", ids[1])]);
        assert_eq!(w.layout(), (4, 0, others.clone()));
        assert_eq!(w.chunk_files().len(), 15 + 2 + 1 + 1);
        assert!(w.receive("vm", &ids[1]) == versions[1]);
    }

    // A prune interrupted after its journal: the first session folded into the
    // second, and the journal left for the next run, which finishes it.
    {
        let config = w.config();
        let a = Archive::open(&config).unwrap();
        let _held = prepare(&config, &a, "vm", Use::Lock(Mode::Exclusive)).unwrap();
        a.fold("vm", &ids[0], false, None).unwrap();
    }
    let journal = w.vol_dir().join(sparsebak_format::layout::PRUNE_JOURNAL);
    assert!(journal.exists());
    assert!(w.receive("vm", &ids[1]) == versions[1]);
    assert!(!journal.exists(), "the next run finished the prune");
    assert_eq!(w.sessions("vm"), ids[1..]);
    // The second session's folder now holds the 13 chunks of the first it still
    // needs besides its own 2.
    assert_eq!(w.chunk_files().len(), 15 + 2 + 1 + 1 - 2);

    // A prune run whole: the second session goes into the third.
    w.ok(&["prune", "vm", &format!("--session={}", ids[1])]);
    assert_eq!(w.sessions("vm"), ids[2..]);
    assert_eq!(w.layout(), (2, 0, others.clone()));
    // The third holds 14 (chunk 2 became zero) of them, the fourth its own one.
    assert_eq!(w.chunk_files().len(), 15);
    for (id, v) in ids[2..].iter().zip(&versions[2..]) {
        assert!(w.receive("vm", id) == *v);
        w.ok(&["verify", "vm", &format!("--session={id}")]);
    }

    // A lost chunk file is found by verify and put back by repair from the volume.
    // The newest session's only chunk file: the volume still holds its data (an older
    // session's file at the address the newest changed could not be put back, and
    // in an encrypted archive the order of the files says nothing of their sessions).
    let files = w.chunk_files();
    let session = |f: &PathBuf| f.parent().and_then(|p| p.parent()).map(PathBuf::from);
    let lost = files
        .iter()
        .find(|f| files.iter().filter(|g| session(g) == session(f)).count() == 1)
        .unwrap();
    std::fs::remove_file(lost).unwrap();
    assert!(w.run(&["verify", "vm"]).is_err());
    w.ok(&["repair", "vm"]);
    assert_eq!(w.chunk_files(), files);
    w.ok(&["verify", "vm"]);
    assert!(w.receive("vm", &ids[3]) == versions[3]);

    if sealed {
        let p2 = w.passfile("pass2", "second words");
        w.ok(&["key", "passwd", &format!("--new-passfile={}", p2.display())]);
        // The old passphrase no longer opens it; the new one does.
        assert!(w.run(&["verify", "vm"]).is_err());
        w.write_config(&format!("passfile = {}", p2.display()), "vm");
        assert!(w.receive("vm", &ids[3]) == versions[3]);
    }

    let mode = if sealed {
        format!("passfile = {}", w.path().join("pass2").display())
    } else {
        "encrypt = off".to_string()
    };
    w.ok(&["rename", "vm", "vm2"]);
    w.write_config(&mode, "vm2");
    assert_eq!(w.sessions("vm2"), ids[2..]);
    assert!(w.sessions("vm").is_empty());
    assert!(w.receive("vm2", &ids[3]) == versions[3]);
    // The renamed volume takes an incremental session.
    let mut img = versions[3].clone();
    rng.fill(&mut img[12 * CS..13 * CS]);
    std::fs::write(w.path().join("img/vm2"), &img).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    w.ok(&["send", "vm2"]);
    let now = w.sessions("vm2");
    assert_eq!(now.len(), 3);
    assert_eq!(w.chunk_files().len(), 16);
    assert!(w.receive("vm2", &now[2]) == img);

    w.ok(&["delete", "vm2"]);
    assert!(w.sessions("vm2").is_empty());
    let mut left: Vec<String> = std::fs::read_dir(w.real())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let want: &[&str] = if sealed {
        &["sparsebak.archive", "sparsebak.key"]
    } else {
        &["sparsebak.archive"]
    };
    assert_eq!(left, want);
    w.check_seam();
}

#[test]
fn a_plain_archive_only_through_its_file_system() {
    every_command_through_the_seam("/nonexistent-archive-root/a", false);
}

#[test]
fn an_encrypted_archive_only_through_its_file_system() {
    every_command_through_the_seam("/nonexistent-archive-root/a-sealed", true);
}
