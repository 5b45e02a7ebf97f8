//! The `file` source: a disk image or block device at `voldir/NAME`, with no snapshot
//! layer. Every send hashes all its data (holes are skipped) and compares with the
//! archive, so nothing needs to be tracked between runs. The file is read live: for a
//! consistent backup it must not be written during `send`.

use std::fs::File;

use sparsebak_format::info::SessionInfo;

use super::{Changes, MonitorOutcome, SendView, Source, VolumeCtx};
use crate::blockdev;
use crate::error::{Error, IoAt, Result};

pub struct FileSource;

impl Source for FileSource {
    fn monitor(&mut self, _vol: &VolumeCtx) -> Result<MonitorOutcome> {
        Ok(MonitorOutcome {
            marked: 0,
            note: "source = file has no snapshot layer; changes are found at send".into(),
        })
    }

    fn begin_send(&mut self, vol: &VolumeCtx, _base: Option<&SessionInfo>) -> Result<SendView> {
        let dir = vol
            .config
            .voldir
            .as_ref()
            .ok_or_else(|| Error::Msg("source = file needs voldir".into()))?;
        let path = dir.join(vol.name);
        let file = File::open(&path).map_err(|e| {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => super::renamed_hint(vol.name),
                _ => String::new(),
            };
            Error::Msg(format!(
                "volume {}: cannot open {}: {e}{hint}",
                vol.name,
                path.display()
            ))
        })?;
        let meta = file.metadata().at(&path)?;
        if !(meta.is_file() || blockdev::is_block_device(&file).at(&path)?) {
            return Err(Error::Msg(format!(
                "volume {}: {} is neither a regular file nor a block device",
                vol.name,
                path.display()
            )));
        }
        let size = blockdev::size_of(&file).at(&path)?;
        Ok(SendView {
            file,
            size,
            changes: Changes::Scan,
            label: path.display().to_string(),
        })
    }

    fn end_send(&mut self, _vol: &VolumeCtx, _view: SendView, _id: &str) -> Result<()> {
        Ok(())
    }

    fn open_live(&mut self, vol: &VolumeCtx) -> Result<(File, u64)> {
        let v = self.begin_send(vol, None)?;
        Ok((v.file, v.size))
    }
}

/// Fail when the file of `view` no longer has the size it had when the send began.
/// `source = file` reads the volume live, so a volume that grows or shrinks during a
/// send would give a session (or stream) that never existed; the send that calls this
/// before committing stores nothing instead. (Snapshots cannot change size, so this
/// holds for them trivially.)
pub fn check_size_unchanged(view: &SendView) -> Result<()> {
    let now = blockdev::size_of(&view.file).at(&view.label)?;
    if now != view.size {
        return Err(Error::Msg(format!(
            "{} changed size during the send, from {} to {now} bytes; nothing was stored. \
             Do not write to a source = file volume while it is sent, and send again",
            view.label, view.size
        )));
    }
    Ok(())
}
