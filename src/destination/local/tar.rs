//! Converting a tar session into a folder session (`untar`), in place and atomically:
//! the members are written into a staging folder, made durable, and the folder is
//! renamed into place before the tar and its index are removed. A crash in between
//! leaves both forms of the same session; the folder wins and the next run removes the
//! tar.

use sparsebak_format::volume::Storage;

use super::LocalVol;
use sparsebak_format::{layout, limits};

use crate::error::{IoAt, Result};

/// Convert session `id` of `vol` to a folder, if it is a tar. Needs the volume's
/// exclusive lock. Returns whether anything was converted.
pub fn untar_session(vol: &LocalVol, id: &str) -> Result<bool> {
    if vol.storage(id) == Storage::Folder {
        remove_tar_files(vol, id)?;
        return Ok(false);
    }
    // Open and check the tar, its index and its info before anything is created: a
    // damaged session is refused with the archive as it was.
    let t = vol.tar(id)?;
    let info = vol.info(id)?;
    // The info bounds every member the index names (chunk size and compression).
    let max = limits::max_stored(info.compression, info.chunksize);
    let fs = vol.fs().as_ref();
    let staging = vol
        .dir()
        .join(format!(".tmp-untar-{}", layout::session_dir_name(id)));
    if fs.exists(&staging) {
        fs.remove_dir_all(&staging).at(&staging)?;
    }
    let t_len = t.index.len();
    let fill = || -> Result<()> {
        fs.create_dir_all(&staging).at(&staging)?;
        // The manifest is copied as it streams, never held whole.
        let mpath = staging.join(layout::MANIFEST_FILE);
        let mut mfile = fs.create(&mpath).at(&mpath)?;
        std::io::copy(&mut vol.manifest_bytes(id)?, &mut mfile).at(&mpath)?;
        mfile.finish(false).at(&mpath)?;
        fs.write(&staging.join(layout::INFO_FILE), &vol.info_bytes(id)?)
            .at(&staging)?;
        let mut last_prefix = String::new();
        for i in 0..t.index.len() {
            let (addr, off, len) = t.index.record(i);
            let prefix = layout::prefix_name(addr);
            if prefix != last_prefix {
                fs.create_dir_all(&staging.join(&prefix)).at(&staging)?;
                last_prefix = prefix;
            }
            let p = staging.join(layout::chunk_rel_path(addr));
            fs.write(&p, &t.read_at(off, len, max)?).at(&p)?;
        }
        Ok(())
    };
    let fin = vol.session_dir(id);
    let done = fill().and_then(|()| {
        fs.syncfs(&staging).at(&staging)?;
        crate::failpoint::hit("untar-before-rename");
        fs.rename(&staging, &fin).at(&fin)
    });
    drop(t);
    if let Err(e) = done {
        // Said before the staging folder goes, while its inodes still count as used;
        // then nothing of the conversion is left to fill the archive.
        let e = crate::space::explain_write_in(
            fs,
            e,
            vol.dir(),
            &format!(
                "a folder session needs a file per chunk ({} here) where the tar is one; \
                 free some files, or keep the session a tar",
                t_len
            ),
            "the session was kept as a tar, as it was",
        );
        if let Err(e2) = fs.remove_dir_all(&staging) {
            if e2.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "{}: removing the staging folder of a failed untar: {e2} (the next run \
                     that writes to the archive removes it)",
                    staging.display()
                );
            }
        }
        return Err(e);
    }
    fs.sync_dir(vol.dir()).at(vol.dir())?;
    remove_tar_files(vol, id)?;
    Ok(true)
}

/// Remove the tar and index of session `id` (after it became a folder).
fn remove_tar_files(vol: &LocalVol, id: &str) -> Result<()> {
    vol.forget_tars();
    let mut removed = false;
    for p in [vol.tar_path(id), vol.tar_index_path(id)] {
        match vol.fs().remove_file(&p) {
            Ok(()) => removed = true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&p),
        }
    }
    if removed {
        vol.fs().sync_dir(vol.dir()).at(vol.dir())?;
    }
    Ok(())
}

/// Tidy leftovers of interrupted conversions and sends: a tar beside a folder of the
/// same session, an index without its tar.
pub fn tidy(vol: &LocalVol) -> Result<()> {
    let fs = vol.fs().as_ref();
    let Ok(rd) = fs.read_dir(vol.dir()) else {
        return Ok(());
    };
    for e in rd {
        let name = e.name;
        let Some(rest) = name.strip_prefix(layout::SESSION_PREFIX) else {
            continue;
        };
        if let Some(id) = rest.strip_suffix(layout::TAR_INDEX_SUFFIX) {
            if !fs.exists(&vol.tar_path(id)) || fs.is_dir(&vol.session_dir(id)) {
                remove_tar_files(vol, id)?;
            }
        } else if let Some(id) = rest.strip_suffix(layout::TAR_SUFFIX) {
            if fs.is_dir(&vol.session_dir(id)) {
                remove_tar_files(vol, id)?;
            }
        }
    }
    Ok(())
}
