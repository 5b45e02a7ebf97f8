//! Archive identity: every archive gets a random UUID in its root marker when it is
//! created, and the source side remembers, per destination (by `destdir` for the
//! destination `default`, by name for the others: see [`key`]), the identity of the
//! archive it sends to there (`archives` in the catalog). Before a run writes anything it
//! checks the two against each other, so an unmounted archive disk (an empty mount
//! point, or a folder on the root filesystem) or another disk mounted in its place is
//! refused instead of silently receiving a new archive.
//!
//! Writing the marker (creating an archive, giving an old one an identity) is the
//! destination's (`crate::destination::local::marker` for a local one).

use std::path::PathBuf;

use crate::archive::local::LocalCopies;
use crate::archive::{Archive, ArchiveError};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metadir::create_private_dir;

/// The key under which the catalog remembers the archive of the destination `config`
/// was chosen for: for `default`, its `destdir` (as before several destinations
/// existed; on a far side, prefixed with its `destvm`); for a named one, `dest:NAME`. Named destinations are keyed by name, not
/// path, because rotating disks are usually mounted at the same mount point: each
/// disk is then known as its own destination's archive, and the other disk mounted
/// there in its place is refused.
pub fn key(config: &Config) -> String {
    if config.dest == crate::metadir::DEFAULT_DEST {
        let path = config
            .destdir
            .components()
            .collect::<PathBuf>()
            .display()
            .to_string();
        // A far side's folder is known with its host: the same path on two hosts is
        // two archives.
        match &config.remote {
            Some(r) => format!("{}{path}", r.transport),
            None => path,
        }
    } else {
        format!("dest:{}", config.dest)
    }
}

fn catalog(config: &Config) -> Result<Catalog> {
    create_private_dir(&config.metadir)?;
    Catalog::open(&crate::metadir::catalog(config)).map_err(|e| Error::Msg(e.to_string()))
}

/// The command that takes the archive found at the chosen destination (or a new one)
/// as its archive from now on.
fn accept_command(config: &Config) -> String {
    if config.dest == crate::metadir::DEFAULT_DEST {
        "sparsebak send --accept-archive".into()
    } else {
        format!("sparsebak send --dest={} --accept-archive", config.dest)
    }
}

/// What this machine knows about the archive at `destdir`.
pub fn known(config: &Config) -> Result<Option<String>> {
    catalog(config)?
        .archive_id(&key(config))
        .map_err(|e| Error::Msg(e.to_string()))
}

/// Refuse to create a new archive at `destdir` where this machine knows one (by its
/// recorded identity, or, for machines that sent before identities existed, by the
/// session copies it keeps of the configured volumes), unless `accept`.
pub fn refuse_if_known(config: &Config, accept: bool) -> Result<()> {
    if accept {
        return Ok(());
    }
    let path = config.dest_location();
    if let Some(known) = known(config)? {
        return Err(ArchiveError::Missing {
            path,
            known,
            accept: accept_command(config),
        }
        .into());
    }
    let mut sent = Vec::new();
    for (name, _) in &config.volumes {
        let local = LocalCopies::for_dest(config, name);
        if local.dir.is_dir() && !local.ids()?.is_empty() {
            sent.push(name.clone());
        }
    }
    if !sent.is_empty() {
        return Err(ArchiveError::MissingSent {
            path,
            volumes: sent.join(", "),
            accept: accept_command(config),
        }
        .into());
    }
    Ok(())
}

/// Check that `archive` is the one this machine sends to at `destdir` and remember
/// it: an archive without an identity (made before identities existed) gets one; an
/// archive seen there for the first time, or accepted with `accept`, is recorded.
/// The archive must be writable.
pub fn adopt(config: &Config, archive: &mut Archive, accept: bool) -> Result<()> {
    let cat = catalog(config)?;
    let k = key(config);
    let known = cat.archive_id(&k).map_err(|e| Error::Msg(e.to_string()))?;
    let id = match &archive.id {
        Some(id) => id.clone(),
        None => archive.add_identity()?,
    };
    match &known {
        Some(known) if *known != id && !accept => {
            return Err(ArchiveError::Different {
                path: archive.root.clone(),
                known: known.clone(),
                found: id,
                accept: accept_command(config),
            }
            .into())
        }
        Some(known) if *known == id => {}
        _ => {
            cat.set_archive_id(&k, &id)
                .map_err(|e| Error::Msg(e.to_string()))?;
            tracing::info!(
                "archive {} is archive {id}; this machine sends to it from now on",
                archive.root.display()
            );
        }
    }
    archive.id = Some(id);
    Ok(())
}

/// Refuse an archive whose identity differs from the one this machine knows at
/// `destdir`, without writing anything (for runs that read the archive to change
/// this machine's state, such as `resync`).
pub fn check_same(config: &Config, archive: &Archive) -> Result<()> {
    if let (Some(found), Some(known)) = (&archive.id, known(config)?) {
        if *found != known {
            return Err(ArchiveError::Different {
                path: archive.root.clone(),
                known,
                found: found.clone(),
                accept: accept_command(config),
            }
            .into());
        }
    }
    Ok(())
}
