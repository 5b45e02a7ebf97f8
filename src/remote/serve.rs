//! `sparsebak serve ROOT`: the far side of a remote archive, on standard input and
//! output. It needs no config: the client names the archive folder in its hello, and
//! it must be ROOT or a folder inside it. Every volume name and session ID a request
//! carries is checked with the archive's own rules (no `/`, no `..`, no hidden
//! names) before it is joined to the folder, so no request reaches outside it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Component, Path, PathBuf};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::layout;
use sparsebak_format::marker::read_marker;
use sparsebak_format::volume::Storage;

use super::proto::{self, kind, req, Dec, Enc, Hello, WireError};
use crate::archive::{self, Archive};
use crate::lock::{LockGuard, Mode};

/// Why the server stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("the client's frames: {0}")]
    Wire(#[from] WireError),
}

/// Whether `dir` is `root` or below it, by its components alone (an absolute path
/// without `.` or `..`).
fn within(root: &Path, dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && dir.starts_with(root)
}

fn check_volume(name: &str) -> Result<(), String> {
    match layout::volume_name_problem(name) {
        None => Ok(()),
        Some(why) => Err(format!("{name:?} is not a volume name: {why}")),
    }
}

fn check_session(id: &str) -> Result<(), String> {
    if layout::is_session_id(id) {
        Ok(())
    } else {
        Err(format!("{id:?} is not a session ID"))
    }
}

struct Server {
    archive: Archive,
    locks: HashMap<String, Option<LockGuard>>,
    infos: HashMap<(String, String), SessionInfo>,
}

type Answer = Result<Vec<u8>, String>;

impl Server {
    fn info(&mut self, vol: &str, id: &str) -> Result<SessionInfo, String> {
        let key = (vol.to_string(), id.to_string());
        if let Some(i) = self.infos.get(&key) {
            return Ok(i.clone());
        }
        let i = self
            .archive
            .volume(vol)
            .info(id)
            .map_err(|e| e.to_string())?;
        if self.infos.len() > 4096 {
            self.infos.clear();
        }
        self.infos.insert(key, i.clone());
        Ok(i)
    }

    /// Answer one request; READ_STORED writes its own answers (one per address).
    fn handle(&mut self, p: &[u8], out: &mut impl Write) -> Result<Option<Answer>, WireError> {
        let mut d = Dec::new(p);
        let code = d.u8()?;
        let mut e = Enc::new();
        let vol = |d: &mut Dec| -> Result<Result<String, String>, WireError> {
            let v = d.str()?;
            Ok(check_volume(&v).map(|_| v))
        };
        let vol_id = |d: &mut Dec| -> Result<Result<(String, String), String>, WireError> {
            let v = d.str()?;
            let id = d.str()?;
            Ok(check_volume(&v)
                .and_then(|_| check_session(&id))
                .map(|_| (v, id)))
        };
        macro_rules! tri {
            ($x:expr) => {
                match $x {
                    Ok(v) => v,
                    Err(m) => return Ok(Some(Err(m))),
                }
            };
        }
        let s = |e: sparsebak_format::FormatError| e.to_string();
        match code {
            req::VOLUMES => {
                d.end()?;
                let mut names = Vec::new();
                let rd = tri!(std::fs::read_dir(&self.archive.root)
                    .map_err(|e| format!("{}: {e}", self.archive.root.display())));
                for ent in rd {
                    let ent =
                        tri!(ent.map_err(|e| format!("{}: {e}", self.archive.root.display())));
                    if let Some(n) = ent.file_name().to_str() {
                        if layout::volume_name_problem(n).is_none()
                            && ent.file_type().is_ok_and(|t| t.is_dir())
                        {
                            names.push(n.to_string());
                        }
                    }
                }
                names.sort();
                e.strs(&names);
            }
            req::EXISTS => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.bool(self.archive.volume(&v).exists());
            }
            req::SESSIONS => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                e.strs(&tri!(self.archive.volume(&v).sessions().map_err(s)));
            }
            req::INFO => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.bytes(&tri!(self.archive.volume(&v).info_bytes(&id).map_err(s)));
            }
            req::MANIFEST_LEN => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.u64(tri!(self.archive.volume(&v).manifest_len(&id).map_err(s)));
            }
            req::MANIFEST_READ => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let offset = d.u64()?;
                let len = d.u32()?.min(proto::MANIFEST_PIECE) as usize;
                d.end()?;
                let vol = self.archive.volume(&v);
                let piece = tri!(read_piece(&vol, &id, offset, len));
                e.bytes(&piece);
            }
            req::READ_STORED => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let addrs = d.u64s()?;
                d.end()?;
                let info = self.info(&v, &id);
                let vol = self.archive.volume(&v);
                for addr in addrs {
                    let r = match &info {
                        Ok(i) => vol.read_stored(i, addr).map_err(s),
                        Err(m) => Err(m.clone()),
                    };
                    match r {
                        Ok(b) => proto::write_frame(out, kind::OK, &b)?,
                        Err(m) => proto::write_frame(out, kind::ERR, m.as_bytes())?,
                    }
                }
                return Ok(None);
            }
            req::STORAGE => {
                let (v, id) = tri!(vol_id(&mut d)?);
                d.end()?;
                e.u8(match self.archive.volume(&v).storage(&id) {
                    Storage::Folder => 0,
                    Storage::Tar => 1,
                });
            }
            req::CHUNK_LOCATION => {
                let (v, id) = tri!(vol_id(&mut d)?);
                let addr = d.u64()?;
                d.end()?;
                e.str(&self.archive.volume(&v).chunk_location(&id, addr));
            }
            req::ARCHIVE => {
                d.end()?;
                e.opt_str(self.archive.id.as_deref())
                    .bool(self.archive.read_only);
            }
            req::LOCK => {
                let v = tri!(vol(&mut d)?);
                let exclusive = d.bool()?;
                d.end()?;
                let mode = if exclusive {
                    Mode::Exclusive
                } else {
                    Mode::Shared
                };
                let g = tri!(self
                    .archive
                    .lock_volume(&v, mode)
                    .map_err(|e| e.to_string()));
                self.locks.insert(v, g);
            }
            req::UNLOCK => {
                let v = tri!(vol(&mut d)?);
                d.end()?;
                self.locks.remove(&v);
            }
            other => return Ok(Some(Err(format!("unknown request {other}")))),
        }
        Ok(Some(Ok(e.0)))
    }
}

fn read_piece(
    vol: &sparsebak_format::volume::VolumeArchive,
    id: &str,
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, String> {
    let path = vol.manifest_path(id);
    match vol.storage(id) {
        Storage::Folder => {
            let mut f =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            let mut buf = Vec::with_capacity(len);
            f.take(len as u64)
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(buf)
        }
        Storage::Tar => {
            // A tar session's manifest is a member: read it through the format crate.
            let mut r = vol.manifest_bytes(id).map_err(|e| e.to_string())?;
            std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink())
                .map_err(|e| format!("{}: {e}", vol.manifest_label(id).display()))?;
            let mut buf = Vec::with_capacity(len);
            r.take(len as u64)
                .read_to_end(&mut buf)
                .map_err(|e| format!("{}: {e}", vol.manifest_label(id).display()))?;
            Ok(buf)
        }
    }
}

/// Check the client's hello and open the archive it names.
fn accept(root: &Path, h: &Hello) -> Result<Archive, String> {
    let dir = PathBuf::from(&h.destdir);
    if !within(root, &dir) {
        return Err(format!(
            "destdir {} is outside {}, the folder this server serves",
            dir.display(),
            root.display()
        ));
    }
    if let Some(mp) = &h.destmountpoint {
        if !crate::config::is_mount_point(Path::new(mp)) {
            return Err(if h.writing {
                format!("destmountpoint {mp} is not a mounted filesystem; refusing to write the archive under it")
            } else {
                format!("destmountpoint {mp} is not a mounted filesystem: the archive's disk is not mounted there, so there is no archive to read")
            });
        }
    }
    let marker = read_marker(&dir).map_err(|e| e.to_string())?;
    let Some(marker) = marker else {
        if !dir.is_dir() {
            return Err(format!("destdir {}: no such folder", dir.display()));
        }
        return Err(format!("{}: no archive", dir.display()));
    };
    let read_only = archive::is_read_only(&dir);
    Ok(Archive {
        root: dir,
        id: marker.id,
        read_only,
    })
}

/// Serve one client on `input`/`output` until it closes the connection.
pub fn serve(root: &Path, input: impl Read, output: impl Write) -> Result<(), ServeError> {
    let mut input = BufReader::with_capacity(256 << 10, input);
    let mut out = BufWriter::with_capacity(256 << 10, output);
    let mine = Hello {
        protocol: proto::PROTOCOL_VERSION,
        program: proto::PROGRAM_VERSION.into(),
        destdir: String::new(),
        destmountpoint: None,
        writing: false,
    };
    proto::write_frame(&mut out, kind::HELLO, &mine.encode())?;
    out.flush().map_err(WireError::Io)?;
    let f = proto::read_frame(&mut input)?;
    if f.kind != kind::HELLO {
        return Err(WireError::Malformed(format!(
            "the first frame is of kind {}, not a hello",
            f.kind
        ))
        .into());
    }
    let (protocol, program) = Hello::decode_versions(&f.payload)?;
    let refuse = |out: &mut BufWriter<_>, m: String| -> ServeError {
        let _ = proto::write_frame(out, kind::FATAL, m.as_bytes());
        let _ = out.flush();
        ServeError::Refused(m)
    };
    if protocol != proto::PROTOCOL_VERSION {
        let m = proto::mismatch(
            (proto::PROTOCOL_VERSION, proto::PROGRAM_VERSION),
            (protocol, &program),
        );
        return Err(refuse(&mut out, m));
    }
    let hello = Hello::decode(&f.payload)?;
    let archive = match accept(root, &hello) {
        Ok(a) => a,
        Err(m) => return Err(refuse(&mut out, m)),
    };
    proto::write_frame(&mut out, kind::OK, &[])?;
    let mut server = Server {
        archive,
        locks: HashMap::new(),
        infos: HashMap::new(),
    };
    loop {
        // Answers go out when no request is waiting: many in flight cost one flush.
        if input.buffer().is_empty() {
            out.flush().map_err(WireError::Io)?;
        }
        let f = match proto::read_frame(&mut input) {
            Ok(f) => f,
            Err(WireError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        if f.kind != kind::REQUEST {
            return Err(WireError::Malformed(format!(
                "a frame of kind {} where a request belongs",
                f.kind
            ))
            .into());
        }
        match server.handle(&f.payload, &mut out)? {
            None => {}
            Some(Ok(p)) => proto::write_frame(&mut out, kind::OK, &p)?,
            Some(Err(m)) => proto::write_frame(&mut out, kind::ERR, m.as_bytes())?,
        }
    }
    out.flush().map_err(WireError::Io)?;
    let _ = input.fill_buf();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_folders_inside_the_root_are_served() {
        let r = Path::new("/backup");
        assert!(within(r, Path::new("/backup")));
        assert!(within(r, Path::new("/backup/a/b")));
        assert!(!within(r, Path::new("/backup/../etc")));
        assert!(!within(r, Path::new("/backupx")));
        assert!(!within(r, Path::new("backup")));
        assert!(
            within(r, Path::new("/backup/./a")),
            "the same folder as /backup/a"
        );
        assert!(check_volume("../x").is_err());
        assert!(check_volume(".lock").is_err());
        assert!(check_session("../../etc").is_err());
    }

    #[test]
    fn a_client_of_another_version_is_refused_naming_both() {
        let h = Hello {
            protocol: 99,
            program: "9.9.9".into(),
            destdir: "/".into(),
            destmountpoint: None,
            writing: false,
        };
        let mut input = Vec::new();
        proto::write_frame(&mut input, kind::HELLO, &h.encode()).unwrap();
        let mut output = Vec::new();
        let err = serve(Path::new("/"), &input[..], &mut output)
            .unwrap_err()
            .to_string();
        assert!(err.contains("sparsebak 9.9.9 (protocol 99)"), "{err}");
        assert!(
            err.contains(&format!(
                "sparsebak {} (protocol 1)",
                proto::PROGRAM_VERSION
            )),
            "{err}"
        );
        let mut r = &output[..];
        let hello = proto::read_frame(&mut r).unwrap();
        assert_eq!(Hello::decode(&hello.payload).unwrap().protocol, 1);
        let fatal = proto::read_frame(&mut r).unwrap();
        assert_eq!(fatal.kind, kind::FATAL);
        assert_eq!(String::from_utf8(fatal.payload).unwrap(), err);
    }
}
