//! Archive identity: every archive gets a random UUID in its root marker when it is
//! created, and the source side remembers, per `destdir`, the identity of the archive
//! it sends to there (`archives` in the catalog). Before a run writes anything it
//! checks the two against each other, so an unmounted archive disk (an empty mount
//! point, or a folder on the root filesystem) or another disk mounted in its place is
//! refused instead of silently receiving a new archive.
//!
//! Writing the marker (creating an archive, giving an old one an identity) is the
//! destination's (`crate::destination::local::marker` for a local one).

use std::path::{Path, PathBuf};

use crate::archive::local::LocalCopies;
use crate::archive::{Archive, ArchiveError};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metadir::{create_private_dir, meta_dir};

/// The key under which the catalog remembers the archive at `destdir`.
fn key(destdir: &Path) -> String {
    destdir
        .components()
        .collect::<PathBuf>()
        .display()
        .to_string()
}

fn catalog(config: &Config) -> Result<Catalog> {
    create_private_dir(&config.metadir)?;
    Catalog::open(&config.metadir.join("catalog.sqlite")).map_err(|e| Error::Msg(e.to_string()))
}

/// What this machine knows about the archive at `destdir`.
pub fn known(config: &Config) -> Result<Option<String>> {
    catalog(config)?
        .archive_id(&key(&config.destdir))
        .map_err(|e| Error::Msg(e.to_string()))
}

/// Refuse to create a new archive at `destdir` where this machine knows one (by its
/// recorded identity, or, for machines that sent before identities existed, by the
/// session copies it keeps of the configured volumes), unless `accept`.
pub fn refuse_if_known(config: &Config, accept: bool) -> Result<()> {
    if accept {
        return Ok(());
    }
    let path = config.destdir.clone();
    if let Some(known) = known(config)? {
        return Err(ArchiveError::Missing { path, known }.into());
    }
    let mut sent = Vec::new();
    for (name, _) in &config.volumes {
        let local = LocalCopies::new(&meta_dir(config, name));
        if local.dir.is_dir() && !local.ids()?.is_empty() {
            sent.push(name.clone());
        }
    }
    if !sent.is_empty() {
        return Err(ArchiveError::MissingSent {
            path,
            volumes: sent.join(", "),
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
    let k = key(&config.destdir);
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
            }
            .into());
        }
    }
    Ok(())
}
