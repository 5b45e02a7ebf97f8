//! The ini configuration (`sparsebak.ini`), parsed and checked in full before anything
//! is touched: unknown sections or keys, bad values and unknown volumes are errors.

use std::path::{Path, PathBuf};

use sparsebak_format::chunk::Codec;

use crate::error::{Error, Result};

/// Where volumes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// Thin LVM: tick/tock snapshots and `thin_delta`.
    Lvm,
    /// Image files on Btrfs/XFS: reflink snapshots and FIEMAP.
    Reflink,
    /// Plain files or block devices: no snapshot layer, changes found by hashing.
    File,
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Lvm => "lvm",
            SourceKind::Reflink => "reflink",
            SourceKind::File => "file",
        }
    }
}

/// Chunk compression: the codec and, for zstd, its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    pub codec: Codec,
    pub level: i32,
}

/// The whole configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub source: SourceKind,
    pub voldir: Option<PathBuf>,
    pub vgname: String,
    pub poolname: String,
    pub destmountpoint: Option<PathBuf>,
    pub destdir: PathBuf,
    pub metadir: PathBuf,
    pub chunksize: u64,
    pub compression: Compression,
    /// Store new sessions as tar files (`tarfile = on`).
    pub tarfile: bool,
    /// Retention schedule for `prune --auto` (checked when loading).
    pub keep: Option<String>,
    /// Volumes in file order, with whether they are enabled.
    pub volumes: Vec<(String, bool)>,
}

const VAR_KEYS: &[&str] = &[
    "source",
    "voldir",
    "vgname",
    "poolname",
    "destvm",
    "destmountpoint",
    "destdir",
    "metadir",
    "chunksize",
    "compression",
    "keep",
    "tarfile",
];

/// Parse a size such as `64K`, `4M`, `1G` or plain bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1u64 << 10),
        (i, 'm' | 'M') => (&s[..i], 1 << 20),
        (i, 'g' | 'G') => (&s[..i], 1 << 30),
        (i, 't' | 'T') => (&s[..i], 1 << 40),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// Whether `name` is acceptable as a volume name: it becomes a folder name in the
/// archive and metadir, and an LV name.
pub fn valid_volume_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 120
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+_.-".contains(&b))
}

impl Config {
    /// Read and check the config file at `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let bad = |reason: String| Error::Config {
            path: path.to_path_buf(),
            reason,
        };
        let ini = ini::Ini::load_from_str(text).map_err(|e| bad(format!("syntax: {e}")))?;
        let mut var = None;
        let mut vols = None;
        for (sec, props) in ini.iter() {
            match sec {
                Some("var") => var = Some(props),
                Some("volumes") => vols = Some(props),
                None if props.is_empty() => {}
                None => return Err(bad("settings must be inside [var] or [volumes]".into())),
                Some(other) => return Err(bad(format!("unknown section [{other}]"))),
            }
        }
        let var = var.ok_or_else(|| bad("no [var] section".into()))?;
        for (k, _) in var.iter() {
            if !VAR_KEYS.contains(&k) {
                return Err(bad(format!(
                    "unknown key {k:?} in [var] (known: {})",
                    VAR_KEYS.join(", ")
                )));
            }
        }
        let get = |k: &str| var.get(k).map(str::trim).filter(|v| !v.is_empty());
        let source = match get("source").unwrap_or("lvm") {
            "lvm" => SourceKind::Lvm,
            "reflink" => SourceKind::Reflink,
            "file" => SourceKind::File,
            other => {
                return Err(bad(format!(
                    "source = {other:?}: expected lvm, reflink or file"
                )))
            }
        };
        let voldir = get("voldir").map(PathBuf::from);
        if matches!(source, SourceKind::File | SourceKind::Reflink) {
            match &voldir {
                None => return Err(bad(format!("source = {} needs voldir", source.name()))),
                Some(d) if !d.is_absolute() => {
                    return Err(bad(format!("voldir {} must be absolute", d.display())))
                }
                _ => {}
            }
        }
        if let Some(vm) = get("destvm") {
            return Err(bad(format!(
                "destvm = {vm:?}: remote destinations are not supported yet; leave it empty"
            )));
        }
        let destmountpoint = get("destmountpoint").map(PathBuf::from);
        let destdir =
            PathBuf::from(get("destdir").ok_or_else(|| bad("destdir is required".into()))?);
        let destdir = match &destmountpoint {
            Some(mp) => {
                if !mp.is_absolute() {
                    return Err(bad("destmountpoint must be absolute".into()));
                }
                mp.join(destdir.strip_prefix("/").unwrap_or(&destdir))
            }
            None if destdir.is_absolute() => destdir,
            None => {
                return Err(bad(format!(
                    "destdir {} must be absolute when destmountpoint is empty",
                    destdir.display()
                )))
            }
        };
        let metadir = PathBuf::from(get("metadir").unwrap_or("/var/lib/sparsebak"));
        if !metadir.is_absolute() {
            return Err(bad("metadir must be absolute".into()));
        }
        let chunksize = match get("chunksize") {
            None => 64 * 1024,
            Some(s) => parse_size(s)
                .filter(|n| n.is_power_of_two() && (64 << 10..=4 << 20).contains(n))
                .ok_or_else(|| {
                    bad(format!(
                        "chunksize = {s:?}: must be a power of two from 64K to 4M"
                    ))
                })?,
        };
        let compression = match get("compression").unwrap_or("zstd:3") {
            "none" => Compression {
                codec: Codec::None,
                level: 0,
            },
            "zstd" => Compression {
                codec: Codec::Zstd,
                level: 3,
            },
            z => {
                let level = z
                    .strip_prefix("zstd:")
                    .and_then(|l| l.parse::<i32>().ok())
                    .filter(|l| (-7..=22).contains(l) && *l != 0)
                    .ok_or_else(|| {
                        bad(format!(
                            "compression = {z:?}: expected none, zstd or zstd:LEVEL (-7..22, not 0)"
                        ))
                    })?;
                Compression {
                    codec: Codec::Zstd,
                    level,
                }
            }
        };
        let tarfile = match get("tarfile").unwrap_or("off") {
            "on" | "yes" | "true" | "enable" => true,
            "off" | "no" | "false" | "disable" => false,
            other => return Err(bad(format!("tarfile = {other:?}: expected on or off"))),
        };
        let keep = get("keep").map(str::to_string);
        if let Some(k) = &keep {
            crate::retention::Schedule::parse(k).map_err(|e| bad(format!("keep = {k:?}: {e}")))?;
        }
        let mut volumes = Vec::new();
        if let Some(vols) = vols {
            for (name, v) in vols.iter() {
                if !valid_volume_name(name) {
                    return Err(bad(format!("volume name {name:?} is not allowed")));
                }
                let enabled = match v.trim() {
                    "enable" | "enabled" | "yes" | "on" | "true" => true,
                    "disable" | "disabled" | "no" | "off" | "false" => false,
                    other => {
                        return Err(bad(format!(
                            "volume {name}: {other:?} is not enable or disable"
                        )))
                    }
                };
                if volumes.iter().any(|(n, _)| n == name) {
                    return Err(bad(format!("volume {name} listed twice")));
                }
                volumes.push((name.to_string(), enabled));
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            source,
            voldir,
            vgname: get("vgname").unwrap_or("qubes_dom0").to_string(),
            poolname: get("poolname").unwrap_or("pool00").to_string(),
            destmountpoint,
            destdir,
            metadir,
            chunksize,
            compression,
            keep,
            tarfile,
            volumes,
        })
    }

    /// The volumes a command works on: the named ones (each must be configured), or all
    /// enabled ones when none is named.
    pub fn select_volumes(&self, names: &[String]) -> Result<Vec<String>> {
        if names.is_empty() {
            return Ok(self
                .volumes
                .iter()
                .filter(|(_, e)| *e)
                .map(|(n, _)| n.clone())
                .collect());
        }
        let mut out = Vec::new();
        for n in names {
            if !self.volumes.iter().any(|(v, _)| v == n) {
                return Err(Error::Msg(format!(
                    "unknown volume {n:?}: not listed in [volumes] of {}",
                    self.path.display()
                )));
            }
            if !out.contains(n) {
                out.push(n.clone());
            }
        }
        Ok(out)
    }

    /// Check the destination is reachable: a configured mount point must be mounted.
    pub fn check_destination(&self) -> Result<()> {
        if let Some(mp) = &self.destmountpoint {
            if !is_mount_point(mp) {
                return Err(Error::Msg(format!(
                    "destmountpoint {} is not a mounted filesystem; refusing to write the archive under it",
                    mp.display()
                )));
            }
        }
        Ok(())
    }
}

/// A path is a mount point when it is a folder on a different device than its parent,
/// or the root.
pub fn is_mount_point(p: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(p) else {
        return false;
    };
    if !m.is_dir() {
        return false;
    }
    let parent = p.join("..");
    match std::fs::metadata(parent) {
        Ok(pm) => pm.dev() != m.dev() || pm.ino() == m.ino(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(t: &str) -> Result<Config> {
        Config::parse(t, Path::new("t.ini"))
    }

    #[test]
    fn full_example() {
        let c = parse(
            "[var]\nsource = file\nvoldir = /srv/images\ndestdir = /backup/sb\nmetadir = /var/lib/sb\nchunksize = 128K\ncompression = zstd:5\n[volumes]\na = enable\nb = disable\n",
        )
        .unwrap();
        assert_eq!(c.source, SourceKind::File);
        assert_eq!(c.chunksize, 128 * 1024);
        assert_eq!(c.compression.level, 5);
        assert_eq!(c.select_volumes(&[]).unwrap(), vec!["a".to_string()]);
        assert!(c.select_volumes(&["zz".into()]).is_err());
        assert_eq!(
            c.select_volumes(&["b".into()]).unwrap(),
            vec!["b".to_string()]
        );
    }

    #[test]
    fn errors() {
        for bad in [
            "[var]\ndestdir=/x\nfoo=1\n",
            "[var]\ndestdir=/x\nchunksize=100K\n",
            "[var]\ndestdir=/x\nchunksize=8M\n",
            "[var]\ndestdir=/x\ncompression=lz4\n",
            "[var]\ndestdir=x\n",
            "[var]\nsource=file\ndestdir=/x\n",
            "[var]\ndestdir=/x\n[volumes]\na=maybe\n",
            "[var]\ndestdir=/x\n[volumes]\n../a=enable\n",
            "[var]\ndestdir=/x\n[other]\n",
            "[var]\ndestdir=/x\ndestvm=backup\n",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mountpoint_joins() {
        let c = parse("[var]\ndestmountpoint=/mnt/b\ndestdir=sb\n").unwrap();
        assert_eq!(c.destdir, PathBuf::from("/mnt/b/sb"));
        assert_eq!(parse_size("4M"), Some(4 << 20));
        assert_eq!(parse_size("x"), None);
    }
}
