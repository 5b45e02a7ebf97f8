//! `sparsebak mount`: every session of a volume as a read-only disk image file, through
//! FUSE, for restoring single files; and the file-level comparison of two sessions
//! built on it (`diff --files`).
//!
//! - [`image`]: a session as bytes at any offset (an index of its view in a temporary
//!   file, chunks decoded on demand, a cache bounded by bytes).
//! - [`fs`]: the FUSE filesystem over the images of one or more volumes.
//! - this module: mounting (in the foreground or as a daemon that returns once the
//!   mount is ready), unmounting on a signal or `sparsebak umount`.
//! - [`files`]: loop-mounting two images' filesystems read-only and comparing their
//!   files.

pub mod files;
pub mod fs;
pub mod image;

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use crate::error::{Error, IoAt, Result};

/// The prefix of a sparsebak mount's source in `/proc/self/mountinfo`
/// (`sparsebak:PID`, the process serving it).
const SOURCE_PREFIX: &str = "sparsebak:";
/// Default bytes of decoded chunks kept (`--cache`).
pub const DEFAULT_CACHE: u64 = 64 << 20;
/// Threads that answer the kernel: several readers are served at once.
const THREADS: usize = 4;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    /// Bytes of decoded chunks kept.
    pub cache: u64,
    /// Let every user read (`allow_other`).
    pub allow_other: bool,
}

/// Check that `mountpoint` is an empty folder nothing is mounted on.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    let md = std::fs::metadata(mountpoint).at(mountpoint)?;
    if !md.is_dir() {
        return Err(Error::Msg(format!(
            "{}: not a folder; give an empty folder to mount on",
            mountpoint.display()
        )));
    }
    let mut entries = std::fs::read_dir(mountpoint).at(mountpoint)?;
    if entries.next().is_some() && find_mount(mountpoint)?.is_none() {
        return Err(Error::Msg(format!(
            "{}: not empty; give an empty folder to mount on (what is in it would be hidden)",
            mountpoint.display()
        )));
    }
    if let Some(m) = find_mount(mountpoint)? {
        return Err(Error::Msg(format!(
            "{}: {} is already mounted there{}",
            mountpoint.display(),
            m.fstype,
            if m.is_sparsebak() {
                " (`sparsebak umount` it first)"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

/// A mount as `/proc/self/mountinfo` lists it.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub fstype: String,
    pub source: String,
}

impl MountEntry {
    /// Whether a sparsebak process serves it.
    pub fn is_sparsebak(&self) -> bool {
        self.fstype.starts_with("fuse") && self.source.starts_with(SOURCE_PREFIX)
    }
}

/// The mount whose mount point is `dir` (the last one, the one on top), if any.
pub fn find_mount(dir: &Path) -> Result<Option<MountEntry>> {
    let dir = std::fs::canonicalize(dir).at(dir)?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").at("/proc/self/mountinfo")?;
    let mut found = None;
    for line in info.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let mut parts = line.split(" - ");
        let (Some(left), Some(right)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        if Path::new(&unescape(mp)) != dir {
            continue;
        }
        let mut r = right.split(' ');
        found = Some(MountEntry {
            fstype: r.next().unwrap_or_default().to_string(),
            source: unescape(r.next().unwrap_or_default()),
        });
    }
    Ok(found)
}

/// mountinfo's octal escapes (`\040` for a blank...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let digits = std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x");
            if let Ok(v) = u8::from_str_radix(digits, 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The source name of a mount served by process `pid`: `sparsebak:PID`, so that
/// `sparsebak umount` knows whom to wait for.
fn source_name(pid: u32) -> String {
    format!("{SOURCE_PREFIX}{pid}")
}

/// Serve `fs` on `opts.mountpoint` until it is unmounted (`sparsebak umount`,
/// `fusermount3 -u`, `umount`) or a SIGTERM, SIGINT or SIGHUP arrives (then it is
/// unmounted, lazily if busy). `ready` runs once the mount answers.
pub fn serve(fs: fs::ImageFs, opts: &MountOptions, ready: impl FnOnce()) -> Result<()> {
    let config = fuse_config(opts.allow_other);
    let mp = &opts.mountpoint;
    let session = fuser::Session::new(fs, mp, &config)
        .map_err(|e| Error::Msg(format!("mounting on {}: {e}", mp.display())))?;
    unmount_on_signals(mp)?;
    ready();
    session
        .run()
        .map_err(|e| Error::Msg(format!("serving the mount on {}: {e}", mp.display())))
}

fn fuse_config(allow_other: bool) -> fuser::Config {
    use fuser::{Config, MountOption, SessionACL};
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::RO,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::FSName(source_name(std::process::id())),
        MountOption::Subtype("sparsebak".into()),
    ];
    config.acl = if allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(THREADS);
    config
}

/// A mount served by threads of this process (for `diff --files`), unmounted when
/// dropped.
pub struct Background {
    mountpoint: PathBuf,
    session: Option<fuser::BackgroundSession>,
}

/// Mount `fs` on `mountpoint` (a folder of this run's), served in this process until
/// the returned value is dropped.
pub fn mount_in_background(fs: fs::ImageFs, mountpoint: &Path) -> Result<Background> {
    let session = fuser::Session::new(fs, mountpoint, &fuse_config(false))
        .and_then(|s| s.spawn())
        .map_err(|e| Error::Msg(format!("mounting on {}: {e}", mountpoint.display())))?;
    Ok(Background {
        mountpoint: mountpoint.to_path_buf(),
        session: Some(session),
    })
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Err(e) = umount(&self.mountpoint, true) {
            tracing::warn!("unmounting {}: {e}", self.mountpoint.display());
        }
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
    }
}

/// Write end of the pipe the signal handler writes to.
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
        unsafe { libc::write(fd, (&b as *const u8).cast(), 1) };
    }
}

/// On SIGTERM, SIGINT or SIGHUP: unmount `mountpoint` (detached if a reader still
/// has a file open), which ends the session loop and so the process, cleanly.
fn unmount_on_signals(mountpoint: &Path) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).at("pipe");
    }
    // SAFETY: both were just opened and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    SIGNAL_FD.store(wr.as_raw_fd(), Ordering::Relaxed);
    // The write end lives as long as the process.
    std::mem::forget(wr);
    let mp = mountpoint.to_path_buf();
    std::thread::Builder::new()
        .name("unmount-on-signal".into())
        .spawn(move || {
            let mut f = std::fs::File::from(rd);
            let mut b = [0u8; 1];
            if f.read_exact(&mut b).is_ok() {
                tracing::info!("signal {}: unmounting {}", b[0], mp.display());
                if let Err(e) = umount(&mp, true) {
                    tracing::error!("unmounting {}: {e}", mp.display());
                }
            }
        })
        .at("a thread")?;
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls write(2), which is async-signal-safe.
        unsafe { sigaction(sig, &act) }
            .map_err(std::io::Error::from)
            .at("sigaction")?;
    }
    Ok(())
}

/// umount(2) of `mountpoint`; `lazy`: detach it even while files are open.
fn umount(mountpoint: &Path, lazy: bool) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path for the call.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // Not root: the setuid fusermount3 does it for the user who mounted.
    if e.raw_os_error() == Some(libc::EPERM) {
        let st = std::process::Command::new("fusermount3")
            .arg("-u")
            .args(lazy.then_some("-z"))
            .arg("--")
            .arg(mountpoint)
            .status()?;
        if st.success() {
            return Ok(());
        }
    }
    Err(e)
}

/// `sparsebak umount MOUNTPOINT`: unmount a sparsebak mount and wait until the process
/// that served it has ended (at most `wait`).
pub fn unmount(mountpoint: &Path, wait: std::time::Duration) -> Result<()> {
    let m = find_mount(mountpoint)?;
    let Some(m) = m.filter(MountEntry::is_sparsebak) else {
        return Err(Error::Msg(match find_mount(mountpoint)? {
            Some(other) => format!(
                "{}: not a sparsebak mount ({} is mounted there)",
                mountpoint.display(),
                other.fstype
            ),
            None => format!("{}: nothing is mounted there", mountpoint.display()),
        }));
    };
    let pid = m
        .source
        .strip_prefix(SOURCE_PREFIX)
        .and_then(|p| p.parse::<u32>().ok());
    umount(mountpoint, false).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EBUSY) {
            "a file in it is still open (close it, or stop the sparsebak process with SIGTERM to detach it)".to_string()
        } else {
            e.to_string()
        };
        Error::Msg(format!("unmounting {}: {why}", mountpoint.display()))
    })?;
    if let Some(pid) = pid {
        let start = std::time::Instant::now();
        let proc_dir = PathBuf::from(format!("/proc/{pid}"));
        while is_sparsebak(&proc_dir) {
            if start.elapsed() > wait {
                return Err(Error::Msg(format!(
                    "{} was unmounted, but process {pid} that served it has not ended after {}s",
                    mountpoint.display(),
                    wait.as_secs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Whether `/proc/PID` is a live sparsebak process (not a zombie, not another program
/// that got the number).
fn is_sparsebak(proc_dir: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // PID (COMM) STATE ...
    let Some((comm, rest)) = stat.split_once(") ") else {
        return false;
    };
    comm.contains("sparsebak") && !rest.starts_with('Z')
}

/// The parent's half of [`daemonize`]: it waits for the word that the mount is ready.
pub enum Daemon {
    /// In the child: call [`Daemon::ready`] once mounted.
    Child(OwnedFd),
    /// In the parent: the child said it is ready (`Ok`) or ended first with this exit
    /// status.
    Parent(std::result::Result<(), i32>),
}

/// Fork: the child goes on (it mounts, then says it is ready and leaves the terminal),
/// the parent waits until the child is ready or has ended. Call it before any thread
/// that matters exists and before anything is opened.
pub fn daemonize() -> Result<Daemon> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).at("pipe");
    }
    // SAFETY: both were just opened and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: the child only runs this program's code on; no lock is held by another
    // thread at this point (the only other thread waits in read(2)).
    match unsafe { nix::unistd::fork() }.map_err(|e| Error::Msg(format!("fork: {e}")))? {
        nix::unistd::ForkResult::Child => {
            drop(rd);
            // The handlers inherited hand signals to a thread the child does not have:
            // until the mount installs its own, a Ctrl-C ends the child as it ends the
            // parent.
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                // SAFETY: restoring the default action of a signal.
                unsafe { libc::signal(sig, libc::SIG_DFL) };
            }
            Ok(Daemon::Child(wr))
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(wr);
            let mut f = std::fs::File::from(rd);
            let mut b = [0u8; 1];
            if f.read_exact(&mut b).is_ok() && b[0] == b'R' {
                return Ok(Daemon::Parent(Ok(())));
            }
            let code = match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, c)) => c,
                Ok(nix::sys::wait::WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                _ => 1,
            };
            Ok(Daemon::Parent(Err(code.max(1))))
        }
    }
}

impl Daemon {
    /// In the child, once mounted: leave the terminal's session, put standard input,
    /// output and error on /dev/null, and tell the parent.
    pub fn ready(fd: OwnedFd) {
        let _ = nix::unistd::setsid();
        if let Ok(null) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
        {
            for target in 0..=2 {
                // SAFETY: dup2 onto the standard descriptors, `null` is open.
                unsafe { libc::dup2(null.as_raw_fd(), target) };
            }
        }
        let mut f = std::fs::File::from(fd);
        let _ = std::io::Write::write_all(&mut f, b"R");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/x\\"), "/x\\");
    }
}
