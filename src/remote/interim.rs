//! The far side's destination until the local destination implements the seam: the
//! reading side and the locks over [`crate::archive::Archive`]; writes are refused.

use std::path::Path;

use sparsebak_format::info::SessionInfo;
use sparsebak_format::marker::{read_marker, ArchiveMarker};
use sparsebak_format::volume::VolumeArchive;

use crate::archive::{is_read_only, Archive};
use crate::destination::{
    DestLock, Destination, FoldPlan, Mode, SessionFile, SessionKind, SessionSink,
};
use crate::error::{Error, Result};

pub struct ArchiveDestination(Archive);

impl ArchiveDestination {
    pub fn new(root: &Path) -> ArchiveDestination {
        let id = read_marker(root).ok().flatten().and_then(|m| m.id);
        ArchiveDestination(Archive {
            root: root.to_path_buf(),
            id,
            read_only: is_read_only(root),
        })
    }
}

fn no<T>() -> Result<T> {
    Err(Error::Msg(
        "this far side cannot change the archive yet".into(),
    ))
}

impl Destination for ArchiveDestination {
    fn label(&self) -> String {
        self.0.root.display().to_string()
    }
    fn read_only(&self) -> bool {
        self.0.read_only
    }
    fn marker(&self) -> Result<Option<ArchiveMarker>> {
        Ok(read_marker(&self.0.root)?)
    }
    fn create(&self) -> Result<()> {
        no()
    }
    fn add_identity(&self) -> Result<String> {
        no()
    }
    fn volumes(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        let rd = std::fs::read_dir(&self.0.root)
            .map_err(|e| Error::Msg(format!("{}: {e}", self.0.root.display())))?;
        for ent in rd.flatten() {
            if let Some(n) = ent.file_name().to_str() {
                if sparsebak_format::layout::volume_name_problem(n).is_none()
                    && ent.file_type().is_ok_and(|t| t.is_dir())
                {
                    names.push(n.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
    fn volume(&self, name: &str) -> VolumeArchive {
        self.0.volume(name)
    }
    fn lock_volume(&self, name: &str, mode: Mode) -> Result<Option<DestLock>> {
        Ok(self.0.lock_volume(name, mode)?.map(DestLock::new))
    }
    fn begin_session(
        &self,
        _: &str,
        _: &str,
        _: SessionKind,
        _: Option<&str>,
        _: u64,
    ) -> Result<Box<dyn SessionSink>> {
        no()
    }
    fn remove_staging(&self, _: &str) -> Result<()> {
        no()
    }
    fn sweep_dead_runs(&self) {}
    fn interrupted_prune(&self, _: &str) -> Result<Option<(String, String)>> {
        no()
    }
    fn recover(&self, _: &str, _: Option<&SessionInfo>) -> Result<Option<(String, String)>> {
        no()
    }
    fn check_removal(&self, _: &str, _: &[String]) -> Result<()> {
        no()
    }
    fn fold(&self, _: &str, _: &str, _: bool, _: Option<&SessionInfo>) -> Result<FoldPlan> {
        no()
    }
    fn end_fold(&self, _: &str) -> Result<()> {
        no()
    }
    fn untar(&self, _: &str, _: &str) -> Result<bool> {
        no()
    }
    fn delete_sessions(&self, _: &str, _: &[String]) -> Result<()> {
        no()
    }
    fn delete_volume(&self, _: &str) -> Result<bool> {
        no()
    }
    fn rename_volume(&self, _: &str, _: &str) -> Result<bool> {
        no()
    }
    fn put_session_file(&self, _: &str, _: &str, _: SessionFile, _: &[u8]) -> Result<()> {
        no()
    }
}
