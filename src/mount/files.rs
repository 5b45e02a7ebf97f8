//! Which files changed between two sessions: both session images loop-mounted
//! read-only (without replaying a journal: `noload` for ext4, `norecovery` for XFS,
//! so a read-only image is never written), their trees walked, and each path
//! compared by type, size, mode, owner and content (SHA-256).

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::error::{Error, IoAt, Result};

/// One entry of a tree, as compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// What differs between two trees, paths relative to their roots, sorted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FileDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    /// A path in both trees and what differs: some of `type`, `size`, `mode`,
    /// `owner`, `content`.
    pub changed: Vec<(String, Vec<&'static str>)>,
}

/// Every entry under `root` (not `root` itself), by path relative to it.
pub fn walk(root: &Path) -> Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        for e in std::fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            let rel = rel.join(e.file_name());
            let p = root.join(&rel);
            let md = std::fs::symlink_metadata(&p).at(&p)?;
            let ft = md.file_type();
            let kind = if ft.is_file() {
                "file"
            } else if ft.is_dir() {
                stack.push(rel.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else {
                "other"
            };
            out.insert(
                rel,
                Entry {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: if ft.is_dir() { 0 } else { md.len() },
                },
            );
        }
    }
    Ok(out)
}

fn file_sha256(p: &Path) -> Result<[u8; 32]> {
    let mut f = std::fs::File::open(p).at(p)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).at(p)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Whether the contents of `a` and `b` (entries of kind `kind`, same size) differ.
fn content_differs(kind: &str, a: &Path, b: &Path) -> Result<bool> {
    match kind {
        "file" => Ok(file_sha256(a)? != file_sha256(b)?),
        "symlink" => Ok(std::fs::read_link(a).at(a)? != std::fs::read_link(b).at(b)?),
        _ => Ok(false),
    }
}

/// Compare the trees under `old` and `new`.
pub fn compare(old: &Path, new: &Path) -> Result<FileDiff> {
    let a = walk(old)?;
    let b = walk(new)?;
    let show = |p: &Path| format!("/{}", p.display());
    let mut d = FileDiff::default();
    for (p, ea) in &a {
        let Some(eb) = b.get(p) else {
            d.removed.push(show(p));
            continue;
        };
        let mut what = Vec::new();
        if ea.kind != eb.kind {
            what.push("type");
        } else {
            if ea.size != eb.size {
                what.push("size");
            }
            if ea.mode != eb.mode {
                what.push("mode");
            }
            if (ea.uid, ea.gid) != (eb.uid, eb.gid) {
                what.push("owner");
            }
            // A file of another size has other content; of the same size, the hashes say.
            let content = if ea.size != eb.size {
                ea.kind == "file"
            } else {
                content_differs(ea.kind, &old.join(p), &new.join(p))?
            };
            if content {
                what.push("content");
            }
        }
        if !what.is_empty() {
            d.changed.push((show(p), what));
        }
    }
    for p in b.keys() {
        if !a.contains_key(p) {
            d.added.push(show(p));
        }
    }
    Ok(d)
}

/// A disk image attached to a loop device read-only and its filesystem mounted
/// read-only on a folder; both undone when dropped.
pub struct LoopMount {
    dev: Option<String>,
    dir: PathBuf,
    mounted: bool,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let o = cmd
        .output()
        .map_err(|e| Error::Msg(format!("{what}: cannot run it: {e}")))?;
    if !o.status.success() {
        let err = String::from_utf8_lossy(&o.stderr);
        return Err(Error::Msg(format!(
            "{what}: {}",
            err.lines().next().unwrap_or("failed").trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl LoopMount {
    /// Attach `image` read-only and mount its filesystem (ext4, XFS, Btrfs... as
    /// `blkid` finds it) read-only on `dir`, replaying no journal.
    pub fn new(image: &Path, dir: &Path) -> Result<LoopMount> {
        let mut lm = LoopMount {
            dev: None,
            dir: dir.to_path_buf(),
            mounted: false,
        };
        let dev = run(
            Command::new("losetup")
                .args(["--find", "--show", "--read-only"])
                .arg(image),
            &format!("losetup {}", image.display()),
        )?;
        lm.dev = Some(dev.clone());
        let fstype = run(
            Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE", &dev]),
            &format!("blkid {dev}"),
        )
        .map_err(|_| {
            Error::Msg(format!(
                "{}: no filesystem found in it (blkid knows none); a partitioned disk or \
                 LVM inside a volume is not read",
                image.display()
            ))
        })?;
        let opts = match fstype.as_str() {
            "ext4" | "ext3" => "ro,noload",
            // Two images of one XFS have the same UUID: mount both.
            "xfs" => "ro,norecovery,nouuid",
            "btrfs" => "ro,rescue=nologreplay",
            _ => "ro",
        };
        run(
            Command::new("mount")
                .args(["-t", &fstype, "-o", opts, &dev])
                .arg(dir),
            &format!("mounting the {fstype} filesystem of {}", image.display()),
        )?;
        lm.mounted = true;
        Ok(lm)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for LoopMount {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(&self.dir).status();
        }
        if let Some(dev) = self.dev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
            // The device lets go of its file asynchronously: wait, so the image's
            // mount can be taken down after.
            let name = dev.trim_start_matches("/dev/");
            let backing = format!("/sys/block/{name}/loop/backing_file");
            for _ in 0..200 {
                if !Path::new(&backing).exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
}

/// Say `d` as text: one line per path, `+` added, `-` removed, `M` changed (with
/// what changed).
pub fn render_text(d: &FileDiff) -> String {
    let mut out = String::new();
    for p in &d.added {
        out.push_str(&format!("+ {p}\n"));
    }
    for p in &d.removed {
        out.push_str(&format!("- {p}\n"));
    }
    for (p, what) in &d.changed {
        out.push_str(&format!("M {p} ({})\n", what.join(", ")));
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Say `d` as one JSON object: `{"added":[..],"removed":[..],"changed":[{"path":..,
/// "what":[..]}]}` with `head` (already JSON members) first.
pub fn render_json(head: &str, d: &FileDiff) -> String {
    let list = |v: &[String]| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
    let changed: Vec<String> = d
        .changed
        .iter()
        .map(|(p, w)| {
            format!(
                "{{\"path\":{},\"what\":[{}]}}",
                json_str(p),
                w.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",")
            )
        })
        .collect();
    format!(
        "{{{head}\"added\":[{}],\"removed\":[{}],\"changed\":[{}]}}",
        list(&d.added),
        list(&d.removed),
        changed.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn compares_trees() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for d in [&a, &b] {
            std::fs::create_dir_all(d.join("sub")).unwrap();
            std::fs::write(d.join("same"), b"x").unwrap();
        }
        std::fs::write(a.join("gone"), b"1").unwrap();
        std::fs::write(b.join("sub/new"), b"2").unwrap();
        std::fs::write(a.join("edit"), b"abc").unwrap();
        std::fs::write(b.join("edit"), b"abd").unwrap();
        std::fs::write(a.join("grow"), b"a").unwrap();
        std::fs::write(b.join("grow"), b"ab").unwrap();
        std::fs::write(a.join("chmod"), b"c").unwrap();
        std::fs::write(b.join("chmod"), b"c").unwrap();
        std::fs::set_permissions(b.join("chmod"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(a.join("chmod"), std::fs::Permissions::from_mode(0o644)).unwrap();
        let d = compare(&a, &b).unwrap();
        assert_eq!(d.added, vec!["/sub/new"]);
        assert_eq!(d.removed, vec!["/gone"]);
        assert_eq!(
            d.changed,
            vec![
                ("/chmod".to_string(), vec!["mode"]),
                ("/edit".to_string(), vec!["content"]),
                ("/grow".to_string(), vec!["size", "content"]),
            ]
        );
        assert_eq!(
            render_json("", &d),
            "{\"added\":[\"/sub/new\"],\"removed\":[\"/gone\"],\"changed\":[\
             {\"path\":\"/chmod\",\"what\":[\"mode\"]},{\"path\":\"/edit\",\"what\":[\"content\"]},\
             {\"path\":\"/grow\",\"what\":[\"size\",\"content\"]}]}"
        );
    }
}
