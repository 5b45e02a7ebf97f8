//! The archive as the source side sees it: the destination this machine sends to
//! (opened, created, checked to be the one it knows: [`identity`]), the preamble every
//! command that uses a volume runs first ([`prepare`]), checking sessions
//! ([`verify`]), repairing them from the source ([`repair`]), and the copies of each
//! session's info and manifest that the source side keeps ([`local`]). What touches
//! the archive's files is behind [`crate::destination::Destination`].

pub mod identity;
pub mod keys;
pub mod local;
pub mod repair;
pub mod verify;

use std::path::PathBuf;
use std::sync::Arc;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::FormatError;

use crate::config::Config;
use crate::destination::{self, DestLock, Destination};
use crate::error::{Error, Result};
use crate::lock::{LockGuard, Mode};
use crate::metadir::lock_meta;
use local::LocalCopies;

pub use crate::destination::ArchiveError;

/// The destination this machine sends to, opened: the destination itself (every
/// method of [`Destination`] through `Deref`) and what was found out opening it.
#[derive(Clone)]
pub struct Archive {
    dest: Arc<dyn Destination>,
    /// Where the archive is, for messages: `destdir`, or for a far side its label
    /// (`ssh://host/destdir`). Never opened on this machine.
    pub root: PathBuf,
    /// Its identity (`None` for an archive made before identities, until a run that
    /// writes to it gives it one).
    pub id: Option<String>,
    /// Whether its filesystem is mounted read-only: then only reading is possible,
    /// and readers take no locks (nobody can write it).
    pub read_only: bool,
    /// Whether it is encrypted (format 2).
    pub sealed: bool,
    /// Whether it was opened to be changed: a far side refuses every change to a
    /// connection that said it would only read.
    writing: bool,
    /// The keys of an encrypted archive, once unlocked (for a second connection).
    keys: Option<Arc<sparsebak_format::crypto::ArchiveKeys>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("dest", &self.dest.label())
            .field("id", &self.id)
            .field("read_only", &self.read_only)
            .finish()
    }
}

impl std::ops::Deref for Archive {
    type Target = dyn Destination;
    fn deref(&self) -> &(dyn Destination + 'static) {
        self.dest.as_ref()
    }
}

impl Archive {
    /// Open the configured archive, which must exist, for reading.
    pub fn open(config: &Config) -> Result<Archive> {
        Self::open_for(config, false)
    }

    /// [`Archive::open`], saying whether the command will change the archive: the far
    /// side of an encrypted remote archive refuses every change to a run that said it
    /// would only read.
    pub fn open_for(config: &Config, writing: bool) -> Result<Archive> {
        config.check_destination(false)?;
        let mut a = Self::opened(config, Arc::from(destination::open_for(config, writing)?))?;
        a.writing = writing;
        Ok(a)
    }

    /// The archive `dest` opened for `config`: it must exist.
    fn opened(config: &Config, dest: Arc<dyn Destination>) -> Result<Archive> {
        Self::opened_with(config, dest, None, true)
    }

    /// This archive, reached again to be changed: itself when it was opened so; for
    /// a far side reached by a run that said it would only read, a second connection
    /// that says it writes, unlocked with the same keys (no second passphrase).
    pub fn for_writing(&self, config: &Config) -> Result<Archive> {
        if self.writing || config.remote.is_none() {
            return Ok(self.clone());
        }
        let dest: Arc<dyn Destination> = Arc::from(destination::open_for(config, true)?);
        let mut a = Self::opened_with(config, dest, self.keys.clone(), self.keys.is_some())?;
        a.writing = true;
        Ok(a)
    }

    /// Open the configured archive, which must exist, without unlocking an encrypted
    /// one: for the commands that handle its key file itself (`key`).
    pub fn open_locked(config: &Config, writing: bool) -> Result<Archive> {
        config.check_destination(false)?;
        let mut a = Self::opened_with(
            config,
            Arc::from(destination::open_for(config, writing)?),
            None,
            false,
        )?;
        a.writing = writing;
        Ok(a)
    }

    /// [`Archive::opened`]; `keys`: the keys of an encrypted archive this run has
    /// just created (else an encrypted archive is unlocked with the passphrase).
    fn opened_with(
        config: &Config,
        dest: Arc<dyn Destination>,
        keys: Option<Arc<sparsebak_format::crypto::ArchiveKeys>>,
        unlock: bool,
    ) -> Result<Archive> {
        // A far side's folder is named with its host in every message.
        let root = config.dest_location();
        let Some(marker) = dest.marker()? else {
            return Err(FormatError::NotArchive {
                path: root,
                reason: format!(
                    "no {} in it; is the archive's disk mounted?",
                    layout::ARCHIVE_MARKER
                ),
            }
            .into());
        };
        match (marker.is_sealed(), config.encrypt) {
            (true, Some(false)) => {
                return Err(Error::Msg(format!(
                    "the archive at {} is encrypted, but the config says encrypt = off for it \
                     (an archive keeps the mode it was created with)",
                    root.display()
                )))
            }
            (false, Some(true)) => {
                return Err(Error::Msg(format!(
                    "the archive at {} is not encrypted (format 1), but the config says \
                     encrypt = on for it (an archive keeps the mode it was created with; \
                     send to a new destdir to start an encrypted one)",
                    root.display()
                )))
            }
            _ => {}
        }
        let mut unlocked = None;
        if marker.is_sealed() && unlock {
            let keys = match keys {
                Some(k) => k,
                None => Arc::new(keys::unlock(config, dest.as_ref(), &marker, &root)?),
            };
            dest.set_keys(keys.clone())?;
            unlocked = Some(keys);
        }
        let read_only = dest.read_only();
        Ok(Archive {
            dest,
            root,
            sealed: marker.is_sealed(),
            id: marker.id,
            read_only,
            writing: true,
            keys: unlocked,
        })
    }

    /// Open the configured archive, which must exist, to change it (`action` names
    /// what for in errors): it must be writable and be the archive this machine
    /// sends to (see [`identity`]).
    pub fn open_writable(config: &Config, action: &str) -> Result<Archive> {
        config.check_destination(true)?;
        let mut a = Self::open_for(config, true)?;
        a.require_writable(action)?;
        identity::adopt(config, &mut a, false)?;
        a.sweep_dead_runs();
        Ok(a)
    }

    /// Open the configured archive to send to it, creating an empty one if the
    /// folder has none yet, unless this machine knows an archive there (its disk is
    /// probably not mounted). `accept` takes whatever archive is found, or a new one,
    /// as this machine's archive from now on.
    pub fn open_or_create(config: &Config, accept: bool) -> Result<Archive> {
        config.check_destination(true)?;
        let dest: Arc<dyn Destination> = Arc::from(destination::open_for(config, true)?);
        let mut created = None;
        if dest.marker()?.is_none() {
            match identity::refuse_if_known(config, accept) {
                // Unless another run has just created it (and recorded it).
                Err(e) if dest.marker()?.is_none() => return Err(e),
                Err(_) => {}
                Ok(()) if dest.read_only() => {
                    return Err(ArchiveError::ReadOnly {
                        path: config.dest_location(),
                        action: "send".into(),
                    }
                    .into())
                }
                Ok(()) if config.encrypt == Some(false) => dest.create()?,
                Ok(()) => created = Some(keys::create(config, dest.as_ref())?),
            }
        }
        // The same destination (for a remote archive, the same connection).
        let mut a = Self::opened_with(config, dest, created.map(Arc::new), true)?;
        a.require_writable("send")?;
        identity::adopt(config, &mut a, accept)?;
        a.sweep_dead_runs();
        Ok(a)
    }

    /// The archive `dest` holds (an archive in memory, in tests), for messages at
    /// `root`.
    #[cfg(test)]
    pub(crate) fn with_destination(dest: Arc<dyn Destination>, root: PathBuf) -> Result<Archive> {
        let marker = dest
            .marker()?
            .ok_or_else(|| Error::Msg(format!("{}: no archive there", dest.label())))?;
        Ok(Archive {
            read_only: dest.read_only(),
            sealed: marker.is_sealed(),
            id: marker.id,
            dest,
            root,
            writing: true,
            keys: None,
        })
    }

    /// Fail with [`ArchiveError::ReadOnly`] when the archive is read-only.
    pub fn require_writable(&self, action: &str) -> Result<()> {
        if self.read_only {
            return Err(ArchiveError::ReadOnly {
                path: self.root.clone(),
                action: action.to_string(),
            }
            .into());
        }
        Ok(())
    }
}

/// What a command does with a volume, for [`prepare`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Read it: finish what interrupted runs left ([`settle`]), then hold its shared
    /// lock (none on a read-only archive).
    Read,
    /// Change it: the source-side lock, the archive's exclusive lock, leftovers of
    /// interrupted runs removed, an interrupted prune rolled forward, a session an
    /// interrupted send published recorded on the source side.
    Write,
    /// [`Use::Write`] for a new session: also refuse a volume whose sessions this
    /// machine sent and the archive no longer has, before anything is created.
    Send,
    /// Only the two locks (the archive's in this mode), nothing finished: for
    /// commands that must work on a volume that cannot be recovered (delete, repair).
    Lock(Mode),
}

/// The locks [`prepare`] took, held until dropped.
#[derive(Debug)]
pub struct Held {
    /// The source-side lock (`<metadir>/<volume>/lock`), when taken.
    pub meta: Option<LockGuard>,
    /// The archive's lock on the volume, when taken.
    pub dest: Option<DestLock>,
}

/// The preamble of every command that uses volume `name` of `archive`: lock the
/// source side, lock the archive, recover what interrupted runs left (see [`Use`]).
pub fn prepare(config: &Config, archive: &Archive, name: &str, how: Use) -> Result<Held> {
    match how {
        Use::Read => {
            settle(config, archive, name)?;
            Ok(Held {
                meta: None,
                dest: archive.lock_volume(name, Mode::Shared)?,
            })
        }
        Use::Lock(mode) => {
            let meta = lock_meta(config, name)?;
            Ok(Held {
                meta: Some(meta),
                dest: archive.lock_volume(name, mode)?,
            })
        }
        Use::Write | Use::Send => {
            let meta = lock_meta(config, name)?;
            let local = LocalCopies::for_dest(config, name);
            if how == Use::Send && !archive.volume(name).exists() {
                // Refused again once locked, but before the volume's folder is made:
                // a refused send leaves nothing behind.
                if let Some(mine) = local.ids()?.last() {
                    return Err(lost_session(name, mine, archive));
                }
            }
            let dest = archive.lock_volume(name, Mode::Exclusive)?;
            archive.remove_staging(name)?;
            recover(archive, name, Some(&local))?;
            local.catch_up(&archive.volume(name))?;
            Ok(Held {
                meta: Some(meta),
                dest,
            })
        }
    }
}

/// The sessions of volume `name` this machine sent (it keeps their copies) that the
/// archive, whose sessions are `have`, no longer has: a session was removed, or the
/// volume's folder was replaced by an older copy of itself (consistent on its own, so
/// only this comparison shows it). Empty when this machine has no copies.
pub fn sessions_gone(config: &Config, name: &str, have: &[String]) -> Result<Vec<String>> {
    let local = LocalCopies::for_dest(config, name);
    if !local.dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(local
        .ids()?
        .into_iter()
        .filter(|id| !have.contains(id))
        .collect())
}

/// Warn (once, naming them) when sessions this machine sent to volume `name` are no
/// longer in the archive, whose sessions are `have` (see [`sessions_gone`]): for
/// commands that still work on what the archive has (`list`, `diff`, `prune`).
pub fn warn_sessions_gone(
    config: &Config,
    archive: &Archive,
    name: &str,
    have: &[String],
) -> Result<()> {
    let gone = sessions_gone(config, name, have)?;
    if !gone.is_empty() {
        tracing::warn!("{}", sessions_gone_text(name, &gone, archive));
    }
    Ok(())
}

/// What [`sessions_gone`] found, said once: `gone` (not empty) of volume `name`.
pub fn sessions_gone_text(name: &str, gone: &[String], archive: &Archive) -> String {
    const SHOWN: usize = 5;
    let mut ids = gone[..gone.len().min(SHOWN)].join(", ");
    if gone.len() > SHOWN {
        ids.push_str(&format!(" and {} more", gone.len() - SHOWN));
    }
    format!(
        "volume {name}: this machine sent {} session(s) that the archive at {} no longer \
         has ({ids}): a session was removed, or the volume was replaced by an older copy; \
         its latest session is not the latest one sent",
        gone.len(),
        archive.root.display()
    )
}

/// The error of a volume whose session `mine`, sent by this machine, the archive no
/// longer has.
pub fn lost_session(name: &str, mine: &str, archive: &Archive) -> Error {
    Error::Msg(format!(
        "volume {name}: this machine sent session {mine}, which the archive at {} no longer has; \
         refusing to build on it (restore the archive, or `sparsebak delete {name}` to start over)",
        archive.root.display()
    ))
}

/// Open volume `name` for reading: finish what interrupted runs left on it
/// ([`settle`]), then hold its shared lock while the guard lives.
pub fn lock_for_reading(
    config: &Config,
    archive: &Archive,
    name: &str,
) -> Result<Option<DestLock>> {
    Ok(prepare(config, archive, name, Use::Read)?.dest)
}

/// Roll an interrupted prune of volume `name` forward on the archive, with the
/// source side's copies following (`local`, when it has any: the removed session's
/// copies go, the one it folded into is copied again), and only then the prune's
/// journal removed. Clears leftovers of a prune that never reached its journal.
/// Needs both locks.
pub fn recover(archive: &Archive, name: &str, local: Option<&LocalCopies>) -> Result<()> {
    let hint = match (archive.interrupted_prune(name)?, local) {
        (Some((s, _)), Some(l)) => SessionInfo::read(&l.info_path(&s)).ok(),
        _ => None,
    };
    if let Some((s, t)) = archive.recover(name, hint.as_ref())? {
        copies_follow_fold(archive, name, local, &s, &t)?;
        archive.end_fold(name)?;
    }
    Ok(())
}

/// After session `s` was folded into `t`: the source side's copies follow.
pub fn copies_follow_fold(
    archive: &Archive,
    name: &str,
    local: Option<&LocalCopies>,
    s: &str,
    t: &str,
) -> Result<()> {
    if let Some(l) = local {
        if l.dir.exists() {
            l.save(&archive.volume(name), t)?;
            l.remove(s)?;
        }
    }
    Ok(())
}

/// Finish what interrupted runs left on a volume (a prune's journal, a send's pending
/// session) before a command reads it. Cheap when there is nothing to do.
pub fn settle(config: &Config, archive: &Archive, name: &str) -> Result<()> {
    let local = LocalCopies::for_dest(config, name);
    let pruning = archive.interrupted_prune(name)?.is_some();
    if !pruning && !local.has_pending() {
        return Ok(());
    }
    let vol = archive.volume(name);
    if archive.read_only {
        // Nobody can write the archive: what is left to finish on it must wait for
        // writable media; what is left on this machine's side can be done now.
        if pruning {
            return Err(Error::Msg(format!(
                "volume {name}: an interrupted prune in {} must be finished before the volume can be read, \
                 and the archive at {} is on a read-only filesystem; mount it read-write and run \
                 `sparsebak list {name}` to finish it",
                vol.label(),
                archive.root.display()
            )));
        }
        let _meta = lock_meta(config, name)?;
        return local.catch_up(&vol);
    }
    let _meta = lock_meta(config, name)?;
    // A far side refuses changes to a run that said it would only read: the prune is
    // finished over a connection that says it writes, closed when done.
    let writer = archive.for_writing(config)?;
    let _lock = writer.lock_volume(name, Mode::Exclusive)?;
    let local = crate::metadir::dest_dir(config, name)
        .is_dir()
        .then_some(&local);
    recover(&writer, name, local)?;
    if let Some(l) = local {
        l.catch_up(&vol)?;
    }
    Ok(())
}
