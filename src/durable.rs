//! Making writes durable: fsync of files and folders, atomic replace.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// fsync a folder, so renames and creations inside it survive a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// fsync the folder holding `path`.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Flush every dirty page of the filesystem holding `path` (one `syncfs`), instead of
/// an fsync per file when a session writes thousands of chunk files.
pub fn syncfs(path: &Path) -> std::io::Result<()> {
    let f = File::open(path)?;
    use std::os::fd::AsRawFd;
    nix::unistd::syncfs(f.as_raw_fd()).map_err(std::io::Error::from)
}

/// Replace `path` with `data` atomically and durably: temporary name, fsync, rename,
/// fsync of the folder.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("write_atomic: path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

/// Build the file `path` under a temporary name in the same folder (`fill` gets that
/// name), and only if `fill` succeeds rename it into place and sync the folder; on
/// failure the temporary file is removed and `path` is untouched.
pub fn replace_with<T>(
    path: &Path,
    fill: impl FnOnce(&Path) -> crate::error::Result<T>,
) -> crate::error::Result<T> {
    use crate::error::IoAt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "volume".into());
    let tmp = path.with_file_name(format!(".{name}.sparsebak-partial"));
    match fill(&tmp) {
        Ok(v) => {
            std::fs::rename(&tmp, path).at(path)?;
            sync_parent(path).at(path)?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
