//! `sparsebak mount MOUNTPOINT [volume ...] [-f] [--cache=SIZE] [--archive=DIR]` and
//! `sparsebak umount MOUNTPOINT`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::archive::Archive;
use crate::config::Config;
use crate::mount::fs::{volume_for_mount, Access, ImageFs, MountVolume};
use crate::mount::{self, Daemon, MountOptions};

/// What `mount` was given.
pub struct Args<'a> {
    pub mountpoint: &'a Path,
    pub volumes: &'a [String],
    pub foreground: bool,
    pub cache: u64,
    /// `--archive=DIR`: no config; (DIR, passfile, passcmd).
    pub archive: Option<(&'a Path, Option<PathBuf>, Option<String>)>,
}

/// The config of an archive given as a folder alone: its passphrase sources from the
/// command line, nothing on the source side (its metadir is an empty folder of the
/// run's own).
fn archive_only_config(
    dir: &Path,
    passfile: Option<PathBuf>,
    passcmd: Option<String>,
    metadir: &Path,
) -> Result<Config> {
    let dir = std::fs::canonicalize(dir).with_context(|| format!("--archive={}", dir.display()))?;
    let mut c = Config::parse(
        "[var]\nsource = file\nvoldir = /\ndestdir = /\nmetadir = /\n[volumes]\n",
        Path::new("--archive"),
    )?;
    c.destdir = dir.clone();
    c.metadir = metadir.to_path_buf();
    c.passfile = passfile;
    c.passcmd = passcmd;
    for d in &mut c.dests {
        d.destdir = dir.clone();
    }
    Ok(c)
}

/// Mount; `load` gives the config (after the fork: a passphrase prompt and the
/// archive's connection belong to the process that serves).
pub fn run(args: &Args, load: impl FnOnce() -> Result<Config>) -> Result<()> {
    mount::check_mountpoint(args.mountpoint)?;
    let mountpoint = std::fs::canonicalize(args.mountpoint)
        .with_context(|| args.mountpoint.display().to_string())?;
    let daemon = if args.foreground {
        None
    } else {
        match mount::daemonize()? {
            Daemon::Parent(Ok(())) => return Ok(()),
            // The child said why on standard error.
            Daemon::Parent(Err(code)) => std::process::exit(code),
            Daemon::Child(fd) => Some(fd),
        }
    };
    let tmp = tempfile::Builder::new()
        .prefix("sparsebak-mount-")
        .tempdir()
        .context("making a temporary folder for the session indexes")?;
    let config = match &args.archive {
        Some((dir, passfile, passcmd)) => {
            let meta = tmp.path().join("meta");
            archive_only_config(dir, passfile.clone(), passcmd.clone(), &meta)?
        }
        None => load()?,
    };
    let archive = Archive::open(&config)?;
    let names: Vec<String> = if args.archive.is_some() {
        if args.volumes.is_empty() {
            archive.volumes()?
        } else {
            args.volumes.to_vec()
        }
    } else {
        let named = !args.volumes.is_empty();
        config
            .select_volumes(args.volumes)?
            .into_iter()
            .filter(|n| named || archive.volume(n).exists())
            .collect()
    };
    if names.is_empty() {
        bail!(
            "the archive at {} has no volume to mount",
            archive.root.display()
        );
    }
    let mut locks = Vec::new();
    let mut vols: Vec<MountVolume> = Vec::new();
    for name in &names {
        let vol = archive.volume(name);
        if !vol.exists() {
            bail!(
                "volume {name}: the archive at {} has no sessions of it",
                archive.root.display()
            );
        }
        // Held while mounted: a prune waits for it.
        locks.push(crate::archive::lock_for_reading(&config, &archive, name)?);
        vols.push(volume_for_mount(name, vol).with_context(|| format!("volume {name}"))?);
    }
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let access = Access {
        uid,
        gid,
        everyone: config.allow_other,
    };
    let fs = ImageFs::new(vols, args.cache, tmp.path().to_path_buf(), access);
    let opts = MountOptions {
        mountpoint: mountpoint.clone(),
        cache: args.cache,
        allow_other: config.allow_other,
    };
    let shown = names.join(", ");
    mount::serve(fs, &opts, || {
        tracing::info!("mounted {shown} on {}", mountpoint.display());
        match daemon {
            Some(fd) => Daemon::ready(fd),
            None => crate::progress::summary(&format!(
                "mounted {shown} on {} (Ctrl-C or `sparsebak umount {}` to unmount)",
                mountpoint.display(),
                mountpoint.display()
            )),
        }
    })?;
    drop(locks);
    Ok(())
}

/// `sparsebak umount MOUNTPOINT`.
pub fn umount(mountpoint: &Path) -> Result<()> {
    mount::unmount(mountpoint, std::time::Duration::from_secs(60))?;
    Ok(())
}
