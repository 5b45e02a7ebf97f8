//! Sending a volume as a self-contained stream (`send --stream`), and receiving chains
//! of streams (`receive --from-stream`, `verify --from-stream`).
//!
//! Each stream chain (`--chain NAME`, default `default`) is a destination of its own:
//! the source keeps, in `<metadir>/<volume>/streams/<chain>/`, copies of the info and
//! manifest of every stream it wrote (the base view the next stream is compared with)
//! and its own delta map, and records the chain in the SQLite catalog
//! (`<metadir>/catalog.sqlite`). So sending to the archive and to streams on
//! alternate nights stays incremental for each.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::stream::{read_chain, ChainSummary, StreamHeader, StreamWriter, VolumeSink};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::archive::create_private_dir;
use crate::archive::local::LocalCopies;
use crate::blockdev;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::send::{compare_and_store, lock_meta, ChunkSink};
use crate::session_id;
use crate::source::{stream_dir, Source, VolumeCtx};
use crate::zeroing::Zeroing;

/// Options of `send --stream`.
#[derive(Debug, Clone)]
pub struct StreamOpts {
    /// The chain (destination) name.
    pub chain: String,
    /// Record size in bytes (a multiple of 512).
    pub block_size: usize,
}

/// What a stream send did.
#[derive(Debug)]
pub struct StreamOutcome {
    pub info: SessionInfo,
    pub bytes_written: u64,
    pub elapsed: Duration,
}

struct StreamChunks {
    stream: StreamWriter<Box<dyn Write + Send>>,
    manifest: ManifestWriter<BufWriter<File>>,
    mpath: PathBuf,
    changed: u64,
    bytes_stored: u64,
}

impl ChunkSink for StreamChunks {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        self.stream
            .put_chunk(addr, payload)
            .map_err(|e| Error::Msg(e.to_string()))?;
        self.bytes_stored += payload.len() as u64;
        self.changed += 1;
        self.manifest
            .push(&Entry {
                addr,
                hash: Some(hash),
            })
            .at(&self.mpath)
    }
    fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.changed += 1;
        self.manifest
            .push(&Entry { addr, hash: None })
            .at(&self.mpath)
    }
    fn changed(&self) -> u64 {
        self.changed
    }
}

/// Write volume `name` as one stream to `out`: full when the chain is new, else
/// incremental on the chain's last stream.
pub fn send_stream(
    config: &Config,
    name: &str,
    source: &mut dyn Source,
    out: Box<dyn Write + Send>,
    opts: &StreamOpts,
) -> Result<(StreamOutcome, Box<dyn Write + Send>)> {
    let started = Instant::now();
    let _meta_lock = lock_meta(config, name)?;
    let ctx = VolumeCtx::for_stream(config, name, &opts.chain);
    let sdir = stream_dir(&ctx.meta_dir, &opts.chain);
    create_private_dir(&sdir)?;
    let local = LocalCopies::new(&sdir);
    let mut catalog = Catalog::open(&config.metadir.join("catalog.sqlite"))
        .map_err(|e| Error::Msg(e.to_string()))?;
    let dest = catalog
        .destination("stream", &opts.chain)
        .map_err(|e| Error::Msg(e.to_string()))?;
    let base = catalog
        .base(dest, name)
        .map_err(|e| Error::Msg(e.to_string()))?;
    let copies = VolumeArchive::new(&local.dir);
    let chain = match &base {
        Some(b) => {
            let chain = copies.chain(&b.session).map_err(|e| {
                Error::Msg(format!(
                    "volume {name}, stream chain {:?}: the copies of its sessions are damaged ({e}); \
                     start a new chain with --chain",
                    opts.chain
                ))
            })?;
            if chain.last().map(|i| i.manifest_sha256) != Some(b.manifest_sha256) {
                return Err(Error::Msg(format!(
                    "volume {name}, stream chain {:?}: catalog and session copies disagree; start a new chain with --chain",
                    opts.chain
                )));
            }
            chain
        }
        None => Vec::new(),
    };
    if let Some(prev) = chain.last() {
        if prev.chunksize != config.chunksize {
            return Err(Error::Msg(format!(
                "volume {name}: the stream chain uses chunk size {}, the config says {}",
                prev.chunksize, config.chunksize
            )));
        }
    }
    let view = source.begin_send(&ctx, chain.last())?;
    let result = (|| -> Result<(StreamOutcome, Box<dyn Write + Send>)> {
        let id = session_id::next_id_now(chain.last().map(|i| i.session.as_str()));
        let time = chrono::Local::now().timestamp();
        let header = StreamHeader {
            volume: name.to_string(),
            session: id.clone(),
            volsize: view.size,
            chunksize: config.chunksize,
            compression: config.compression.codec,
            time,
            base: chain.last().map(|i| i.session.clone()),
            base_manifest_sha256: chain.last().map(|i| i.manifest_sha256),
        };
        let stream = StreamWriter::with_block_size(out, header.clone(), opts.block_size)
            .map_err(|e| Error::Msg(e.to_string()))?;
        let mpath = sdir.join(".manifest.partial");
        let mf = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&mpath)
            .at(&mpath)?;
        let mut sink = StreamChunks {
            stream,
            manifest: ManifestWriter::new(BufWriter::new(mf)),
            mpath: mpath.clone(),
            changed: 0,
            bytes_stored: 0,
        };
        let c = compare_and_store(
            config,
            &copies,
            &chain,
            &view,
            &mut sink,
            &format!("stream {name}"),
        )?;
        let StreamChunks {
            stream,
            manifest,
            changed,
            bytes_stored,
            ..
        } = sink;
        let (bw, manifest_sha256) = manifest.finish().at(&mpath)?;
        let mut mfile = bw.into_inner().map_err(|e| e.into_error()).at(&mpath)?;
        let mlen = mfile.stream_position().at(&mpath)?;
        mfile.rewind().at(&mpath)?;
        let info = SessionInfo {
            volume: name.to_string(),
            session: id.clone(),
            previous: header.base.clone(),
            time,
            volsize: view.size,
            chunksize: config.chunksize,
            compression: config.compression.codec,
            changed,
            chunks: c.chunks,
            bytes_read: c.bytes_read,
            bytes_stored,
            manifest_sha256,
        };
        let (mut out, written) = stream
            .finish_from(&mut mfile, mlen, &info)
            .map_err(|e| Error::Msg(e.to_string()))?;
        out.flush()
            .map_err(|e| Error::Msg(format!("writing the stream: {e}")))?;
        crate::failpoint::hit("stream-before-record");
        // The stream is out: remember it as this chain's new base.
        let sess = local.session_dir(&id);
        create_private_dir(&local.dir)?;
        let tmp = local.dir.join(format!(".tmp-S_{id}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        std::fs::create_dir_all(&tmp).at(&tmp)?;
        std::fs::write(tmp.join("info"), info.to_text()).at(&tmp)?;
        std::fs::rename(&mpath, tmp.join("manifest")).at(&tmp)?;
        durable::syncfs(&tmp).at(&tmp)?;
        std::fs::rename(&tmp, &sess).at(&sess)?;
        durable::sync_dir(&local.dir).at(&local.dir)?;
        catalog
            .record_session(dest, &info, written)
            .map_err(|e| Error::Msg(e.to_string()))?;
        Ok((
            StreamOutcome {
                info,
                bytes_written: written,
                elapsed: started.elapsed(),
            },
            out,
        ))
    })();
    match result {
        Ok((outcome, out)) => {
            source.end_send(&ctx, view, &outcome.info.session)?;
            Ok((outcome, out))
        }
        Err(e) => {
            let _ = source.abort_send(&ctx, view);
            Err(e)
        }
    }
}

/// A block device as a stream sink: zero ranges and cuts are zeroed the way the device
/// is best zeroed (unmapped on a thin LV, see [`Zeroing`]).
pub struct DeviceSink {
    pub file: File,
    pub device_size: u64,
    size: u64,
    zeroing: Zeroing,
}

impl DeviceSink {
    pub fn new(file: File) -> std::io::Result<DeviceSink> {
        let device_size = blockdev::device_size(&file)?;
        let zeroing = Zeroing::for_device(&file);
        Ok(DeviceSink {
            file,
            device_size,
            size: 0,
            zeroing,
        })
    }
}

impl VolumeSink for DeviceSink {
    fn set_size(&mut self, size: u64) -> std::io::Result<()> {
        if size > self.device_size {
            return Err(std::io::Error::other(format!(
                "the device has {} bytes, the volume needs {size}",
                self.device_size
            )));
        }
        // The volume starts all zero (the first call zeroes the device up to its size);
        // a grow brings zeros, never what the device held; a cut zeroes what it drops.
        if size > self.size {
            self.zeroing.zero(&self.file, self.size, size - self.size)?;
        } else if size < self.size {
            self.zeroing.zero(&self.file, size, self.size - size)?;
        }
        self.size = size;
        Ok(())
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.file, data, off)
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        self.zeroing.zero(&self.file, off, len)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Refuse a chain of another volume than the one named.
pub fn check_volume(sum: &ChainSummary, volume: Option<&str>) -> Result<()> {
    if let Some(v) = volume {
        let got = &sum.last().info.volume;
        if got != v {
            return Err(Error::Msg(format!(
                "the streams hold volume {got}, not {v}"
            )));
        }
    }
    Ok(())
}

/// Open the streams `paths` (`-` = stdin) as one concatenated input.
pub fn open_streams(paths: &[String]) -> Result<Box<dyn Read>> {
    let mut input: Box<dyn Read> = Box::new(std::io::empty());
    for p in paths {
        let r: Box<dyn Read> = if p == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(File::open(p).at(p)?)
        };
        input = Box::new(input.chain(r));
    }
    Ok(input)
}

/// Rebuild the chain of streams in `input` into `path` (a file, written under a
/// temporary name and renamed only when every check passed, or a block device).
pub fn receive_streams(
    input: Box<dyn Read>,
    path: &Path,
    volume: Option<&str>,
) -> Result<ChainSummary> {
    // Read and check the whole chain into `sink`; a wrong volume is refused before a
    // file result is renamed into place.
    let rebuild = |sink: &mut dyn VolumeSink| -> Result<ChainSummary> {
        let sum = read_chain(
            std::io::BufReader::with_capacity(1 << 20, input),
            Some(sink),
        )
        .map_err(|e| Error::Msg(e.to_string()))?;
        check_volume(&sum, volume)?;
        Ok(sum)
    };
    match crate::receive::inspect(path)? {
        crate::receive::DestKind::BlockDevice { .. } => {
            // Read too: zeroing on a thin LV reads what partial blocks hold.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .at(path)?;
            rebuild(&mut DeviceSink::new(f).at(path)?)
        }
        _ => durable::replace_with(path, |tmp| {
            let f = File::create(tmp).at(tmp)?;
            rebuild(&mut sparsebak_format::stream::FileSink::new(f).at(tmp)?)
        }),
    }
}
