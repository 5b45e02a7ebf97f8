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
use sparsebak_format::output::{self, Output, OutputKind, PartialFile};
use sparsebak_format::restore::Target;
use sparsebak_format::stream::{
    read_chain, ChainSummary, FileSink, StreamHeader, StreamWriter, VolumeSink,
};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::archive::create_private_dir;
use crate::archive::local::LocalCopies;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::receive::DeviceTarget;
use crate::send::{compare_and_store, lock_meta, ChunkSink};
use crate::session_id;
use crate::source::{stream_dir, Source, VolumeCtx};

/// Options of `send --stream`.
#[derive(Debug, Clone)]
pub struct StreamOpts {
    /// The chain (destination) name.
    pub chain: String,
    /// Record size in bytes (a multiple of 512).
    pub block_size: usize,
    /// The file the stream goes to, when it is one (not stdout, a pipe or a tape): a
    /// full filesystem is then reported with its path and the room the stream needed.
    pub dest: Option<PathBuf>,
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
    dest: Option<PathBuf>,
}

/// A stream error as a library error: a failed write to a stream file keeps its
/// `io::Error` (and says the file), so a full disk is recognised.
fn stream_error(e: sparsebak_format::stream::StreamError, dest: Option<&Path>) -> Error {
    match (e, dest) {
        (sparsebak_format::stream::StreamError::Write(source), Some(p)) => Error::Io {
            path: p.to_path_buf(),
            source,
        },
        (e, _) => Error::Msg(e.to_string()),
    }
}

impl ChunkSink for StreamChunks {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        self.stream
            .put_chunk(addr, payload)
            .map_err(|e| stream_error(e, self.dest.as_deref()))?;
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
    fn dest_dir(&self) -> Option<PathBuf> {
        let dir = self.dest.as_deref()?.parent()?;
        Some(if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir.to_path_buf()
        })
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
            dest: opts.dest.clone(),
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
        let file = opts.dest.as_deref();
        let (mut out, written) = stream
            .finish_from(&mut mfile, mlen, &info)
            .map_err(|e| stream_error(e, file))?;
        out.flush().map_err(|e| match file {
            Some(p) => Error::Io {
                path: p.to_path_buf(),
                source: e,
            },
            None => Error::Msg(format!("writing the stream: {e}")),
        })?;
        crate::failpoint::hit("stream-before-record");
        // The stream is out: remember it as this chain's new base.
        let sess = local.session_dir(&id);
        create_private_dir(&local.dir)?;
        let tmp = local.dir.join(format!(".tmp-S_{id}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        let kept = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).at(&tmp)?;
            std::fs::write(tmp.join("info"), info.to_text()).at(&tmp)?;
            std::fs::rename(&mpath, tmp.join("manifest")).at(&tmp)?;
            durable::syncfs(&tmp).at(&tmp)?;
            std::fs::rename(&tmp, &sess).at(&sess)
        })();
        if let Err(e) = kept {
            // Said before the staging folder goes (a full metadir), then nothing of
            // the copy is left behind.
            let e = crate::space::explain_write(
                e,
                &local.dir,
                "free some files",
                "the stream is not recorded in its chain",
            );
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
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

/// A block device as a stream sink: zero ranges and cuts are zeroed in place the way the
/// device is best zeroed (see [`DeviceTarget`]).
pub struct DeviceSink {
    dev: DeviceTarget,
    pub device_size: u64,
    size: u64,
}

impl DeviceSink {
    pub fn new(dev: DeviceTarget) -> std::io::Result<DeviceSink> {
        let device_size = dev.size()?;
        Ok(DeviceSink {
            dev,
            device_size,
            size: 0,
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
            self.dev.zero_range(self.size, size - self.size)?;
        } else if size < self.size {
            self.dev.zero_range(size, self.size - size)?;
        }
        self.size = size;
        Ok(())
    }
    fn write_at(&mut self, off: u64, data: &[u8]) -> std::io::Result<()> {
        Target::write_at(&mut self.dev, off, data)
    }
    fn zero(&mut self, off: u64, len: u64) -> std::io::Result<()> {
        self.dev.zero_range(off, len)
    }
    fn finish(&mut self) -> std::io::Result<()> {
        Target::finish(&mut self.dev)
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

/// Rebuild the chain of streams in `input` into `out` (from [`check_stream_target`]):
/// a file is written under a temporary name beside the real file and renamed only when
/// every check passed; a block device is written in place. Standard output and FIFOs
/// take the volume in order, so (later streams of a chain overwrite earlier ones) the
/// chain is rebuilt in an unnamed sparse file in the temporary folder (`$TMPDIR`) first
/// and copied out only once every check passed.
pub fn receive_streams(
    input: Box<dyn Read>,
    out: &Output,
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
    let oe = |e: output::OutputError| Error::Msg(e.to_string());
    match &out.kind {
        OutputKind::BlockDevice { .. } => {
            let dev = DeviceTarget::open(&out.path)?;
            rebuild(&mut DeviceSink::new(dev).at(&out.path)?)
        }
        OutputKind::File { .. } | OutputKind::New => {
            let partial = PartialFile::create(out).map_err(oe)?;
            let tmp = partial.tmp_path().to_path_buf();
            let f = partial.file().try_clone().at(&tmp)?;
            let sum = rebuild(&mut FileSink::new(f).at(&tmp)?)?;
            partial.commit().map_err(oe)?;
            Ok(sum)
        }
        OutputKind::Stdout | OutputKind::Fifo => {
            let tmpdir = std::env::temp_dir();
            let f = tempfile::tempfile_in(&tmpdir).at(&tmpdir)?;
            let mut sink = FileSink::new(f).at(&tmpdir)?;
            let sum = rebuild(&mut sink)?;
            let mut f = sink.into_file();
            f.rewind().at(&tmpdir)?;
            let mut copy = |w: &mut dyn Write| -> std::io::Result<()> {
                std::io::copy(&mut f, w)?;
                w.flush()
            };
            match out.kind {
                OutputKind::Stdout => copy(&mut std::io::stdout().lock()).at("standard output")?,
                _ => copy(&mut output::open_existing(out).map_err(oe)?).at(&out.path)?,
            }
            Ok(sum)
        }
        OutputKind::CharDevice => Err(Error::Msg(format!(
            "{} is a character device; refusing",
            out.describe()
        ))),
    }
}
