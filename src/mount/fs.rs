//! The read-only FUSE filesystem: `VOLUME/SESSION_ID.img` for every session of each
//! mounted volume, and `VOLUME/latest.img` (the same file as the latest session's).
//!
//! A session's [`SessionImage`] (its index) is built the first time the file is
//! opened or sought in, not at mount time, so mounting a volume with many sessions
//! reads only their infos. The kernel asks from several threads at once; every
//! structure here is shared read-only or behind a lock.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyLseek,
    ReplyOpen, Request,
};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::volume::VolumeArchive;

use super::image::{ChunkCache, SessionImage};
use crate::error::Result;

/// The name of the file that is the latest session's image.
pub const LATEST: &str = "latest.img";

/// Attributes and names never change while mounted: the kernel may keep them.
const TTL: Duration = Duration::from_secs(3600);

/// One volume to mount: its store and its sessions' infos, oldest first (the chain
/// of its latest session, as [`VolumeArchive::chain`] checked it).
pub struct MountVolume {
    pub name: String,
    pub vol: Arc<VolumeArchive>,
    pub chain: Vec<SessionInfo>,
}

struct Image {
    vol: usize,
    /// Index of the session in its volume's chain.
    pos: usize,
    name: String,
    size: u64,
    mtime: SystemTime,
    built: OnceLock<std::result::Result<Arc<SessionImage>, String>>,
}

/// Who may read and how: from the mount's options.
#[derive(Debug, Clone)]
pub struct Access {
    pub uid: u32,
    pub gid: u32,
    /// Files readable by every user (`allow_other`): mode 0444 instead of 0400.
    pub everyone: bool,
}

/// The filesystem the kernel talks to.
pub struct ImageFs {
    vols: Vec<MountVolume>,
    images: Vec<Image>,
    /// Per volume: the range of `images` that are its sessions.
    ranges: Vec<std::ops::Range<usize>>,
    cache: Arc<ChunkCache>,
    tmpdir: PathBuf,
    access: Access,
    started: SystemTime,
}

const ROOT: u64 = 1;

impl ImageFs {
    /// A filesystem over `vols`, with decoded chunks cached up to `cache_bytes` and
    /// session indexes kept in `tmpdir`.
    pub fn new(vols: Vec<MountVolume>, cache_bytes: u64, tmpdir: PathBuf, access: Access) -> Self {
        let mut images = Vec::new();
        let mut ranges = Vec::new();
        for (v, mv) in vols.iter().enumerate() {
            let start = images.len();
            for (pos, info) in mv.chain.iter().enumerate() {
                images.push(Image {
                    vol: v,
                    pos,
                    name: format!("{}.img", info.session),
                    size: info.volsize,
                    mtime: UNIX_EPOCH + Duration::from_secs(info.time.max(0) as u64),
                    built: OnceLock::new(),
                });
            }
            ranges.push(start..images.len());
        }
        ImageFs {
            vols,
            images,
            ranges,
            cache: Arc::new(ChunkCache::new(cache_bytes)),
            tmpdir,
            access,
            started: SystemTime::now(),
        }
    }

    fn vol_ino(&self, v: usize) -> u64 {
        2 + v as u64
    }

    fn image_ino(&self, i: usize) -> u64 {
        2 + self.vols.len() as u64 + i as u64
    }

    fn vol_of_ino(&self, ino: u64) -> Option<usize> {
        let v = ino.checked_sub(2)? as usize;
        (v < self.vols.len()).then_some(v)
    }

    fn image_of_ino(&self, ino: u64) -> Option<usize> {
        let i = ino.checked_sub(2 + self.vols.len() as u64)? as usize;
        (i < self.images.len()).then_some(i)
    }

    fn dir_attr(&self, ino: u64, mtime: SystemTime) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind: FileType::Directory,
            perm: if self.access.everyone { 0o555 } else { 0o500 },
            nlink: 2,
            uid: self.access.uid,
            gid: self.access.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    fn file_attr(&self, i: usize) -> FileAttr {
        let im = &self.images[i];
        let latest = self.ranges[im.vol].end == i + 1;
        FileAttr {
            ino: INodeNo(self.image_ino(i)),
            size: im.size,
            blocks: im.size.div_ceil(512),
            atime: im.mtime,
            mtime: im.mtime,
            ctime: im.mtime,
            crtime: im.mtime,
            kind: FileType::RegularFile,
            perm: if self.access.everyone { 0o444 } else { 0o400 },
            nlink: if latest { 2 } else { 1 },
            uid: self.access.uid,
            gid: self.access.gid,
            rdev: 0,
            blksize: 65536,
            flags: 0,
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        if ino == ROOT {
            return Some(self.dir_attr(ROOT, self.started));
        }
        if let Some(v) = self.vol_of_ino(ino) {
            let mtime = self.ranges[v]
                .clone()
                .last()
                .map_or(self.started, |i| self.images[i].mtime);
            return Some(self.dir_attr(ino, mtime));
        }
        self.image_of_ino(ino).map(|i| self.file_attr(i))
    }

    /// The image of file `i`, built on first use. A failure is kept and said once.
    fn image(&self, i: usize) -> std::result::Result<Arc<SessionImage>, Errno> {
        let im = &self.images[i];
        let built = im.built.get_or_init(|| {
            let mv = &self.vols[im.vol];
            let chain = mv.chain[..=im.pos].to_vec();
            SessionImage::open(
                mv.vol.clone(),
                chain,
                self.cache.clone(),
                im.vol as u32,
                &self.tmpdir,
            )
            .map(Arc::new)
            .map_err(|e| {
                let msg = format!("volume {} {}: {e}", mv.name, im.name);
                tracing::error!("{msg}");
                msg
            })
        });
        built.clone().map_err(|_| Errno::EIO)
    }

    /// The entries of folder `ino`: (inode, kind, name).
    fn entries(&self, ino: u64) -> Option<Vec<(u64, FileType, String)>> {
        let mut out = vec![
            (ino, FileType::Directory, ".".to_string()),
            (ROOT, FileType::Directory, "..".to_string()),
        ];
        if ino == ROOT {
            for (v, mv) in self.vols.iter().enumerate() {
                out.push((self.vol_ino(v), FileType::Directory, mv.name.clone()));
            }
            return Some(out);
        }
        let v = self.vol_of_ino(ino)?;
        for i in self.ranges[v].clone() {
            out.push((
                self.image_ino(i),
                FileType::RegularFile,
                self.images[i].name.clone(),
            ));
        }
        if let Some(last) = self.ranges[v].clone().last() {
            out.push((self.image_ino(last), FileType::RegularFile, LATEST.into()));
        }
        Some(out)
    }
}

impl Filesystem for ImageFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.entries(parent.0).and_then(|es| {
            es.into_iter()
                .skip(2)
                .find(|(_, _, n)| OsStr::new(n) == name)
                .and_then(|(ino, _, _)| self.attr(ino))
        });
        match found {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let Some(i) = self.image_of_ino(ino.0) else {
            return reply.error(if self.attr(ino.0).is_some() {
                Errno::EISDIR
            } else {
                Errno::ENOENT
            });
        };
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        match self.image(i) {
            // The bytes of a session never change: the kernel may keep what it read.
            Ok(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(i) = self.image_of_ino(ino.0) else {
            return reply.error(Errno::EISDIR);
        };
        let img = match self.image(i) {
            Ok(img) => img,
            Err(e) => return reply.error(e),
        };
        match img.read_at(offset, size as usize) {
            Ok(data) => reply.data(&data),
            Err(e) => {
                tracing::error!(
                    "volume {} {}: reading {size} bytes at {offset}: {e}",
                    self.vols[self.images[i].vol].name,
                    self.images[i].name
                );
                reply.error(Errno::EIO)
            }
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: fuser::ReplyEmpty,
    ) {
        // Nothing is ever written: nothing to flush on close.
        reply.ok();
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = self.entries(ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        for (k, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (k + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(i) = self.image_of_ino(ino.0) else {
            return reply.error(Errno::EINVAL);
        };
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::ENXIO);
        };
        let img = match self.image(i) {
            Ok(img) => img,
            Err(e) => return reply.error(e),
        };
        let found = match whence {
            libc::SEEK_DATA => img.next_data(off),
            libc::SEEK_HOLE => img.next_hole(off),
            libc::SEEK_SET => Ok(Some(off)),
            libc::SEEK_END => Ok(Some(img.size().saturating_add(off))),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Ok(Some(o)) => match i64::try_from(o) {
                Ok(o) => reply.offset(o),
                Err(_) => reply.error(Errno::EOVERFLOW),
            },
            Ok(None) => reply.error(Errno::ENXIO),
            Err(e) => {
                tracing::error!("seeking in {}: {e}", self.images[i].name);
                reply.error(Errno::EIO)
            }
        }
    }
}

/// Build the mount's volumes: each volume's chain up to its latest session.
pub fn volume_for_mount(name: &str, vol: VolumeArchive) -> Result<MountVolume> {
    let chain = match vol.latest()? {
        Some(last) => vol.chain(&last)?,
        None => Vec::new(),
    };
    Ok(MountVolume {
        name: name.to_string(),
        vol: Arc::new(vol),
        chain,
    })
}
