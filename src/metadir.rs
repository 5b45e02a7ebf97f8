//! The source side's state folder (`metadir`): the one place that spells its layout.
//! Everything else gets its paths from here.
//!
//! ```text
//! <metadir>/catalog.sqlite                the catalog (stream chains, archive identities)
//! <metadir>/<volume>/lock                 the volume's source-side lock (send, monitor, ...)
//! <metadir>/<volume>/deltamap             destination `default`: its delta map
//! <metadir>/<volume>/sessions/S_<id>/     destination `default`: copies of info, manifest
//! <metadir>/<volume>/sessions/pending     destination `default`: a session being published
//! <metadir>/<volume>/dest/<NAME>/deltamap       destination NAME: its delta map
//! <metadir>/<volume>/dest/<NAME>/sessions/...   destination NAME: its copies, its pending
//! <metadir>/<volume>/streams/<chain>/     a stream chain: its delta map and copies
//! <metadir>/<volume>/streams/<chain>/sparsebak.key   an encrypted chain's key file
//! <metadir>/@tape/<dest>/sparsebak.key  an encrypted tape destination's key file
//! ```
//!
//! The destination named `default` keeps the paths older versions used, so a metadir
//! written before several destinations existed needs no migration. The lock and the
//! snapshots are the volume's, shared by all its destinations: one monitor marks every
//! destination's delta map.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::error::{Error, IoAt, Result};
use crate::lock::{self, LockGuard, Mode};

/// The name of the destination given by the destination keys of `[var]`, and the one
/// commands use when `--dest` is not given.
pub const DEFAULT_DEST: &str = "default";

/// `<metadir>/catalog.sqlite`.
pub fn catalog_path(metadir: &Path) -> PathBuf {
    metadir.join("catalog.sqlite")
}

/// The catalog of `config`'s metadir.
pub fn catalog(config: &Config) -> PathBuf {
    catalog_path(&config.metadir)
}

/// `<metadir>/<volume>`: all the source side's state of a volume, every destination's.
pub fn volume_dir(config: &Config, volume: &str) -> PathBuf {
    config.metadir.join(volume)
}

/// `<metadir>/<volume>/lock`: the volume's source-side lock.
pub fn lock_path(config: &Config, volume: &str) -> PathBuf {
    volume_dir(config, volume).join("lock")
}

/// The folder holding destination `dest`'s state of a volume whose state folder is
/// `volume_dir`: that folder itself for `default`, else `dest/<dest>` under it.
pub fn dest_dir_in(volume_dir: &Path, dest: &str) -> PathBuf {
    if dest == DEFAULT_DEST {
        volume_dir.to_path_buf()
    } else {
        volume_dir.join("dest").join(dest)
    }
}

/// The state folder of `volume` for the destination `config` was chosen for.
pub fn dest_dir(config: &Config, volume: &str) -> PathBuf {
    dest_dir_in(&volume_dir(config, volume), &config.dest)
}

/// The delta map of `volume` for the destination `config` was chosen for.
pub fn delta_map(config: &Config, volume: &str) -> PathBuf {
    dest_dir(config, volume).join(DELTA_MAP)
}

/// Where `resync` builds a new delta map before it replaces [`delta_map`].
pub fn delta_map_resync(map: &Path) -> PathBuf {
    map.with_file_name("deltamap.resync")
}

/// The folder of the session copies of `volume` for the destination `config` was
/// chosen for.
pub fn copies_dir(config: &Config, volume: &str) -> PathBuf {
    copies_dir_in(&dest_dir(config, volume))
}

/// The session copies' folder inside a destination's (or a stream chain's) state folder.
pub fn copies_dir_in(dest_dir: &Path) -> PathBuf {
    dest_dir.join("sessions")
}

/// The record of a session being published, in a copies folder.
pub fn pending_path(copies_dir: &Path) -> PathBuf {
    copies_dir.join("pending")
}

/// `<metadir>/<volume>/streams/<chain>`: a stream chain's state, given the volume's
/// state folder.
pub fn stream_dir_in(volume_dir: &Path, chain: &str) -> PathBuf {
    volume_dir.join(STREAMS).join(chain)
}

/// `<metadir>/@tape/<dest>/sparsebak.key`: the key file of an encrypted tape
/// destination, one for every volume sent there (each stream on its tapes carries a
/// copy too). No volume name contains `@`, so the folder is no volume's.
pub fn tape_key(config: &Config, dest: &str) -> PathBuf {
    config
        .metadir
        .join("@tape")
        .join(dest)
        .join(sparsebak_format::crypto::KEY_FILE)
}

/// The key file of an encrypted stream chain, given its state folder
/// ([`stream_dir_in`]): `sparsebak.key`, the master key wrapped under the passphrase.
pub fn stream_key_in(stream_dir: &Path) -> PathBuf {
    stream_dir.join(sparsebak_format::crypto::KEY_FILE)
}

/// `<metadir>/<volume>/streams`.
pub fn streams_dir_in(volume_dir: &Path) -> PathBuf {
    volume_dir.join(STREAMS)
}

const DELTA_MAP: &str = "deltamap";
const STREAMS: &str = "streams";
const DESTS: &str = "dest";

/// The delta map inside a destination's or a stream chain's state folder.
pub fn delta_map_in(dir: &Path) -> PathBuf {
    dir.join(DELTA_MAP)
}

/// Every delta map a volume has, given its state folder: the default destination's,
/// each named destination's, each stream chain's (those that exist; named ones sorted).
pub fn all_maps_in(volume_dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    let main = volume_dir.join(DELTA_MAP);
    if main.exists() {
        v.push(main);
    }
    for sub in [DESTS, STREAMS] {
        if let Ok(rd) = std::fs::read_dir(volume_dir.join(sub)) {
            let mut more: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path().join(DELTA_MAP))
                .filter(|p| p.exists())
                .collect();
            more.sort();
            v.extend(more);
        }
    }
    v
}

/// Whether any destination of a volume (the default one or a named one) holds copies
/// of sessions sent: the volume has been sent.
pub fn any_copies_in(volume_dir: &Path) -> bool {
    if copies_dir_in(volume_dir).exists() {
        return true;
    }
    std::fs::read_dir(volume_dir.join(DESTS))
        .is_ok_and(|rd| rd.flatten().any(|e| copies_dir_in(&e.path()).exists()))
}

/// How long `send` and `monitor` wait for each other on one volume.
pub const META_LOCK_WAIT: Duration = Duration::from_secs(120);

/// `<metadir>/<volume>` (the same as [`volume_dir`]).
pub fn meta_dir(config: &Config, name: &str) -> PathBuf {
    volume_dir(config, name)
}

/// Lock a volume's source-side state ([`lock_path`]; the folder is created if
/// missing).
pub fn lock_meta(config: &Config, name: &str) -> Result<LockGuard> {
    create_private_dir(&volume_dir(config, name))?;
    lock::lock(
        &lock_path(config, name),
        Mode::Exclusive,
        META_LOCK_WAIT,
        &format!("volume {name} on this machine"),
    )
}

/// Create a folder readable only by its owner (metadata can reveal volume layout).
pub fn create_private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if p.exists() && !p.is_dir() {
        return Err(Error::Msg(format!(
            "{} exists and is not a folder; move it away",
            p.display()
        )));
    }
    if !p.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .at(p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dest: &str) -> Config {
        let mut c = Config::parse(
            "[var]\ndestdir = /a\nmetadir = /m\n[dest:usb1]\ndestdir = /b\n",
            Path::new("t.ini"),
        )
        .unwrap();
        if dest != DEFAULT_DEST {
            c = c.for_dest(dest).unwrap();
        }
        c
    }

    #[test]
    fn default_keeps_the_old_layout() {
        let c = config(DEFAULT_DEST);
        assert_eq!(volume_dir(&c, "v"), Path::new("/m/v"));
        assert_eq!(lock_path(&c, "v"), Path::new("/m/v/lock"));
        assert_eq!(delta_map(&c, "v"), Path::new("/m/v/deltamap"));
        assert_eq!(copies_dir(&c, "v"), Path::new("/m/v/sessions"));
        assert_eq!(
            pending_path(&copies_dir(&c, "v")),
            Path::new("/m/v/sessions/pending")
        );
        assert_eq!(catalog(&c), Path::new("/m/catalog.sqlite"));
        assert_eq!(
            stream_dir_in(&volume_dir(&c, "v"), "tape"),
            Path::new("/m/v/streams/tape")
        );
    }

    #[test]
    fn a_named_destination_has_its_own_map_and_copies() {
        let c = config("usb1");
        assert_eq!(lock_path(&c, "v"), Path::new("/m/v/lock"));
        assert_eq!(delta_map(&c, "v"), Path::new("/m/v/dest/usb1/deltamap"));
        assert_eq!(copies_dir(&c, "v"), Path::new("/m/v/dest/usb1/sessions"));
        assert_eq!(
            delta_map_resync(&delta_map(&c, "v")),
            Path::new("/m/v/dest/usb1/deltamap.resync")
        );
    }

    #[test]
    fn all_maps_lists_every_destination_and_chain() {
        let d = tempfile::tempdir().unwrap();
        let v = d.path();
        for p in [
            "deltamap",
            "dest/b/deltamap",
            "dest/a/deltamap",
            "streams/t/deltamap",
        ] {
            let p = v.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"").unwrap();
        }
        std::fs::create_dir_all(v.join("dest/nomap")).unwrap();
        assert_eq!(
            all_maps_in(v),
            [
                "deltamap",
                "dest/a/deltamap",
                "dest/b/deltamap",
                "streams/t/deltamap"
            ]
            .map(|p| v.join(p))
        );
        assert!(!any_copies_in(v));
        std::fs::create_dir_all(v.join("dest/a/sessions")).unwrap();
        assert!(any_copies_in(v));
    }
}
