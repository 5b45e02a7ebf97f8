//! Sending a volume as a self-contained stream (`send --stream`), and receiving chains
//! of streams (`receive --from-stream`, `verify --from-stream`).
//!
//! Each stream chain (`--chain NAME`, default `default`) is a destination of its own:
//! the source keeps, in `<metadir>/<volume>/streams/<chain>/`, copies of the info and
//! manifest of every stream it wrote (the base view the next stream is compared with)
//! and its own delta map, and records the chain in the SQLite catalog
//! (`<metadir>/catalog.sqlite`). So sending to the archive and to streams on
//! alternate nights stays incremental for each.
//!
//! A chain is encrypted (streams of format 2) unless the config says `encrypt = off`
//! when it starts: its first stream makes the chain's master key and id and keeps the
//! key file (wrapped under the passphrase) in the chain's folder; every stream of the
//! chain carries that key file, so each stays self-contained.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sparsebak_format::crypto::{self, ArchiveKeys, KdfParams, KeyFile, MasterKey};
use sparsebak_format::info::SessionInfo;
use sparsebak_format::manifest::{Entry, ManifestWriter};
use sparsebak_format::output::{self, Output, OutputKind, PartialFile};
use sparsebak_format::restore::Target;
use sparsebak_format::stream::{
    read_chain_with, ChainSummary, FileSink, StreamCrypt, StreamHeader, StreamWriter, Unlock,
    VolumeSink,
};
use sparsebak_format::volume::VolumeArchive;
use sparsebak_format::Hash;

use crate::archive::local::LocalCopies;
use crate::catalog::Catalog;
use crate::config::Config;
use crate::destination::{NewSession, SessionSink};
use crate::durable;
use crate::error::{Error, IoAt, Result};
use crate::metadir::create_private_dir;
use crate::metadir::lock_meta;
use crate::passphrase::{self, Purpose, Sources};
use crate::receive::DeviceTarget;
use crate::send::{take_session, SessionTarget};
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
    /// A chain that is a tape destination's rather than a stream chain: its catalog
    /// destination is `("tape", chain)`, its state folder the destination's
    /// (`<metadir>/<volume>/dest/<chain>`) and, when encrypted, its key the
    /// destination's one key file ([`crate::metadir::tape_key`]), shared by every
    /// volume sent there.
    pub tape: bool,
}

/// Called once the stream is complete, with the output (not yet dropped), the
/// session and the stream's length in bytes; before the chain records the session, so
/// an error here (the tape file could not be finished) leaves the chain as it was.
pub type StreamDone =
    Box<dyn FnOnce(Box<dyn Write + Send>, &SessionInfo, u64) -> Result<()> + Send>;

/// What a stream send did.
#[derive(Debug)]
pub struct StreamOutcome {
    pub info: SessionInfo,
    pub bytes_written: u64,
    pub elapsed: Duration,
}

/// The sink of a stream session: chunks go into the stream, manifest lines into a
/// partial manifest in the chain's folder (the copy the next stream is compared with).
/// `prepare` finishes the stream, names its file and stages the copy; `commit`
/// records the stream in the catalog and then puts the copy in place.
struct StreamChunks {
    /// `None` once the stream is finished.
    stream: Option<StreamWriter<Box<dyn Write + Send>>>,
    /// `None` once the manifest is finished.
    manifest: Option<ManifestWriter<BufWriter<File>>>,
    mpath: PathBuf,
    changed: u64,
    bytes_stored: u64,
    /// Chunks stored.
    chunks: u64,
    /// The stream's file, when it is one.
    dest: Option<PathBuf>,
    /// The folder of the stream's file, its room when the stream started, the
    /// volume's size: a full filesystem is reported with what the stream needed.
    dest_dir: Option<PathBuf>,
    room_before: Option<crate::space::Room>,
    volsize: u64,
    partial: Option<PartialFile>,
    local: LocalCopies,
    catalog: Catalog,
    dest_id: crate::catalog::DestId,
    /// After `prepare`: the info, the staged copy, the stream's bytes.
    prepared: Option<(SessionInfo, PathBuf, u64)>,
    /// Called when the stream is complete.
    done: Option<StreamDone>,
    /// The stream's bytes, for the caller once committed.
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
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

impl StreamChunks {
    fn explain(&self, e: Error, pos: u64) -> Error {
        match &self.dest_dir {
            Some(d) => crate::space::explain(
                e,
                d,
                self.room_before,
                crate::space::Progress {
                    stored: self.bytes_stored,
                    chunks: self.chunks,
                    pos,
                    size: self.volsize,
                },
            ),
            None => e,
        }
    }

    fn stream(&mut self) -> Result<&mut StreamWriter<Box<dyn Write + Send>>> {
        self.stream
            .as_mut()
            .ok_or_else(|| Error::Msg("the stream is already finished".into()))
    }

    fn manifest(&mut self) -> Result<&mut ManifestWriter<BufWriter<File>>> {
        self.manifest
            .as_mut()
            .ok_or_else(|| Error::Msg("the stream's manifest is already finished".into()))
    }
}

impl SessionSink for StreamChunks {
    fn put_chunk(&mut self, addr: u64, hash: Hash, payload: &[u8]) -> Result<()> {
        let dest = self.dest.clone();
        let put = self
            .stream()?
            .put_chunk(addr, payload)
            .map_err(|e| stream_error(e, dest.as_deref()));
        if let Err(e) = put {
            return Err(self.explain(e, addr));
        }
        self.bytes_stored += payload.len() as u64;
        self.chunks += 1;
        self.changed += 1;
        let mpath = self.mpath.clone();
        self.manifest()?
            .push(&Entry {
                addr,
                hash: Some(hash),
            })
            .at(&mpath)
    }

    fn put_zero(&mut self, addr: u64) -> Result<()> {
        self.changed += 1;
        let mpath = self.mpath.clone();
        self.manifest()?
            .push(&Entry { addr, hash: None })
            .at(&mpath)
    }

    fn changed(&self) -> u64 {
        self.changed
    }

    fn bytes_stored(&self) -> u64 {
        self.bytes_stored
    }

    fn prepare(&mut self, fields: NewSession) -> Result<SessionInfo> {
        let mpath = self.mpath.clone();
        let manifest = self
            .manifest
            .take()
            .ok_or_else(|| Error::Msg("the stream's manifest is already finished".into()))?;
        let (bw, manifest_sha256) = manifest.finish().at(&mpath)?;
        let mut mfile = bw.into_inner().map_err(|e| e.into_error()).at(&mpath)?;
        let mlen = mfile.stream_position().at(&mpath)?;
        mfile.rewind().at(&mpath)?;
        let info = fields.info(self.changed, self.bytes_stored, manifest_sha256);
        let file = self.dest.clone();
        let stream = self
            .stream
            .take()
            .ok_or_else(|| Error::Msg("the stream is already finished".into()))?;
        let (mut out, written) = stream
            .finish_from(&mut mfile, mlen, &info)
            .map_err(|e| stream_error(e, file.as_deref()))?;
        out.flush().map_err(|e| match &file {
            Some(p) => Error::Io {
                path: p.to_path_buf(),
                source: e,
            },
            None => Error::Msg(format!("writing the stream: {e}")),
        })?;
        match self.done.take() {
            Some(done) => done(out, &info, written)?,
            None => drop(out),
        }
        // A stream file gets its name before the catalog records the stream: a run
        // stopped in between leaves a finished stream the chain does not build on
        // (the next stream is based on the one before), never a chain that builds on
        // a stream nobody has.
        if let Some(p) = self.partial.take() {
            p.commit().map_err(|e| Error::Msg(e.to_string()))?;
        }
        crate::failpoint::hit("stream-before-record");
        // The stream is out: stage the copy that makes it this chain's new base.
        let local = &self.local;
        let id = &info.session;
        create_private_dir(&local.dir)?;
        let tmp = local.dir.join(format!(".tmp-S_{id}"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).at(&tmp)?;
        }
        let kept = (|| -> Result<()> {
            std::fs::create_dir_all(&tmp).at(&tmp)?;
            std::fs::write(tmp.join("info"), info.to_text()).at(&tmp)?;
            std::fs::rename(&mpath, tmp.join("manifest")).at(&tmp)?;
            durable::syncfs(&tmp).at(&tmp)
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
        self.prepared = Some((info.clone(), tmp, written));
        Ok(info)
    }

    fn commit(mut self: Box<Self>) -> Result<SessionInfo> {
        let (info, tmp, written) = self
            .prepared
            .take()
            .ok_or_else(|| Error::Msg("stream committed before it was finished".into()))?;
        // The copy becomes a session of the chain only once the catalog records it: a
        // run that fails here leaves no copy the catalog does not know, and a run
        // stopped between the two steps leaves `.tmp-S_<id>`, which the next run puts
        // in place (the catalog names it) or removes (it does not).
        if let Err(e) = self.catalog.record_session(self.dest_id, &info, written) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(Error::Msg(e.to_string()));
        }
        crate::failpoint::hit("stream-after-record");
        let sess = self.local.session_dir(&info.session);
        std::fs::rename(&tmp, &sess).at(&sess)?;
        durable::sync_dir(&self.local.dir).at(&self.local.dir)?;
        self.written
            .store(written, std::sync::atomic::Ordering::Relaxed);
        Ok(info)
    }

    fn abort(self: Box<Self>) -> Result<()> {
        drop(self);
        Ok(())
    }
}

/// Where a stream session goes: the one output, the chain's copies and catalog.
struct StreamTarget<'a> {
    config: &'a Config,
    name: &'a str,
    base: Option<&'a SessionInfo>,
    out: Option<Box<dyn Write + Send>>,
    partial: Option<PartialFile>,
    opts: &'a StreamOpts,
    sdir: PathBuf,
    catalog: Option<Catalog>,
    dest_id: crate::catalog::DestId,
    written: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The chain's keys, when it is encrypted.
    crypt: Option<StreamCrypt>,
    /// The volume id a new encrypted chain starts with: the chain's id (for a tape
    /// destination, whose one key serves every volume, the destination's).
    new_volume_id: Option<String>,
    done: Option<StreamDone>,
}

impl StreamTarget<'_> {
    /// The volume id chunks are sealed for: the one the chain's sessions carry, or
    /// for its first the chain's id.
    fn chain_volume_id(&self) -> Option<String> {
        self.crypt.as_ref()?;
        self.base
            .and_then(|b| b.volume_id.clone())
            .or_else(|| self.new_volume_id.clone())
    }
}

impl SessionTarget for StreamTarget<'_> {
    fn begin(&mut self, id: &str, time: i64, volsize: u64) -> Result<Box<dyn SessionSink>> {
        let header = StreamHeader {
            volume: self.name.to_string(),
            session: id.to_string(),
            volsize,
            chunksize: self.config.chunksize,
            compression: self.config.compression.codec,
            time,
            base: self.base.map(|i| i.session.clone()),
            base_manifest_sha256: self.base.map(|i| i.manifest_sha256),
            volume_id: self.chain_volume_id(),
        };
        let out = self
            .out
            .take()
            .ok_or_else(|| Error::Msg("one stream per output".into()))?;
        let stream = match &self.crypt {
            Some(c) => StreamWriter::encrypted(out, header, self.opts.block_size, c.clone()),
            None => StreamWriter::with_block_size(out, header, self.opts.block_size),
        }
        .map_err(|e| Error::Msg(e.to_string()))?;
        let mpath = self.sdir.join(".manifest.partial");
        let mf = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&mpath)
            .at(&mpath)?;
        let dest_dir = self.opts.dest.as_deref().and_then(|p| {
            let dir = p.parent()?;
            Some(if dir.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                dir.to_path_buf()
            })
        });
        let catalog = self
            .catalog
            .take()
            .ok_or_else(|| Error::Msg("one stream per catalog".into()))?;
        Ok(Box::new(StreamChunks {
            stream: Some(stream),
            manifest: Some(ManifestWriter::new(BufWriter::new(mf))),
            mpath,
            changed: 0,
            bytes_stored: 0,
            chunks: 0,
            dest: self.opts.dest.clone(),
            room_before: dest_dir.as_deref().and_then(crate::space::room),
            dest_dir,
            volsize,
            partial: self.partial.take(),
            local: LocalCopies::new(&self.sdir),
            catalog,
            dest_id: self.dest_id,
            prepared: None,
            written: self.written.clone(),
            done: self.done.take(),
        }))
    }
    fn keep_unchanged(&self) -> bool {
        true
    }
    fn before_commit(&mut self, _info: &SessionInfo) -> Result<()> {
        Ok(())
    }
    fn after_commit(&mut self, _info: &SessionInfo) -> Result<()> {
        Ok(())
    }
    fn keys(&self) -> Option<std::sync::Arc<ArchiveKeys>> {
        self.crypt.as_ref().map(|c| c.keys.clone())
    }
    fn volume_id(&self) -> Option<String> {
        self.chain_volume_id()
    }
}

/// Write volume `name` as one stream to `out`: full when the chain is new, else
/// incremental on the chain's last stream.
pub fn send_stream(
    config: &Config,
    name: &str,
    source: &mut dyn Source,
    out: Box<dyn Write + Send>,
    partial: Option<PartialFile>,
    opts: &StreamOpts,
) -> Result<StreamOutcome> {
    send_stream_to(config, name, source, out, partial, opts, None)
}

/// [`send_stream`], calling `done` once the stream is complete (see [`StreamDone`]).
pub fn send_stream_to(
    config: &Config,
    name: &str,
    source: &mut dyn Source,
    out: Box<dyn Write + Send>,
    partial: Option<PartialFile>,
    opts: &StreamOpts,
    done: Option<StreamDone>,
) -> Result<StreamOutcome> {
    let started = Instant::now();
    let _meta_lock = lock_meta(config, name)?;
    let (ctx, sdir) = if opts.tape {
        let ctx = VolumeCtx::new(config, name);
        let sdir = crate::metadir::dest_dir_in(&ctx.meta_dir, &opts.chain);
        (ctx, sdir)
    } else {
        let ctx = VolumeCtx::for_stream(config, name, &opts.chain);
        let sdir = stream_dir(&ctx.meta_dir, &opts.chain);
        (ctx, sdir)
    };
    create_private_dir(&sdir)?;
    let local = LocalCopies::new(&sdir);
    let catalog =
        Catalog::open(&crate::metadir::catalog(config)).map_err(|e| Error::Msg(e.to_string()))?;
    let dest = catalog
        .destination(if opts.tape { "tape" } else { "stream" }, &opts.chain)
        .map_err(|e| Error::Msg(e.to_string()))?;
    let base = catalog
        .base(dest, name)
        .map_err(|e| Error::Msg(e.to_string()))?;
    settle_copies(&local, base.as_ref().map(|b| b.session.as_str()))?;
    let copies = VolumeArchive::new(&local.dir);
    let chain = match &base {
        Some(b) => {
            let chain = copies.chain(&b.session).map_err(|e| {
                Error::Msg(if opts.tape {
                    format!(
                        "volume {name}, tape destination {}: this machine's copies of the \
                         sessions there are missing or damaged ({e}), as after a metadir \
                         rebuilt by `tape scan`: an incremental cannot be made on them. \
                         `sparsebak --dest={} prune {name} --all-before=now` forgets the chain \
                         there (its sessions stay on tape) and the next send is full",
                        opts.chain, opts.chain
                    )
                } else {
                    format!(
                        "volume {name}, stream chain {:?}: the copies of its sessions are \
                         damaged ({e}); start a new chain with --chain",
                        opts.chain
                    )
                })
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
    let crypt = if opts.tape {
        tape_crypt(
            config,
            &opts.chain,
            chain.last().map(|i| i.volume_id.is_some()),
        )?
    } else {
        chain_crypt(config, name, &opts.chain, &sdir, chain.last())?
    };
    let written = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut target = StreamTarget {
        config,
        name,
        base: chain.last(),
        out: Some(out),
        partial,
        opts,
        sdir,
        catalog: Some(catalog),
        dest_id: dest,
        written: written.clone(),
        new_volume_id: crypt.as_ref().map(|c| c.keys.archive().to_string()),
        crypt,
        done,
    };
    let (info, _) = take_session(
        config,
        &ctx,
        source,
        &copies,
        &chain,
        &mut target,
        &format!("stream {name}"),
    )?;
    let info = info.ok_or_else(|| Error::Msg(format!("volume {name}: no stream was written")))?;
    Ok(StreamOutcome {
        info,
        bytes_written: written.load(std::sync::atomic::Ordering::Relaxed),
        elapsed: started.elapsed(),
    })
}

/// The keys of stream chain `chain` of volume `name` (state folder `sdir`, last
/// stream `last`), `None` when it is not encrypted. A new chain is encrypted unless
/// the config says `encrypt = off`: a master key and a chain id are made and the key
/// file (wrapped under the passphrase) is written in `sdir`. A chain keeps the mode it
/// started with; `encrypt` set to the other one is an error.
fn chain_crypt(
    config: &Config,
    name: &str,
    chain: &str,
    sdir: &Path,
    last: Option<&SessionInfo>,
) -> Result<Option<StreamCrypt>> {
    let path = crate::metadir::stream_key_in(sdir);
    let sources = Sources {
        what: format!("stream chain {chain:?} of volume {name}"),
        ..passphrase::sources_of(config)
    };
    let Some(last) = last else {
        // A new chain: a key file left by a first stream that was never recorded
        // belongs to no stream anyone keeps.
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).at(&path),
            _ => {}
        }
        if config.encrypt == Some(false) {
            return Ok(None);
        }
        let pass = passphrase::obtain_from(&sources, Purpose::Create)?;
        let fail = |e: crypto::CryptoError| Error::Msg(format!("{}: {e}", path.display()));
        let master = MasterKey::generate().map_err(fail)?;
        let id = crypto::random_uuid().map_err(fail)?;
        let key_file = KeyFile::wrap(&id, &master, &pass, KdfParams::DEFAULT).map_err(fail)?;
        durable::write_atomic(&path, key_file.render().as_bytes()).at(&path)?;
        let keys = std::sync::Arc::new(ArchiveKeys::derive(&master, &id));
        return Ok(Some(StreamCrypt { keys, key_file }));
    };
    let encrypted = last.volume_id.is_some();
    match (config.encrypt, encrypted) {
        (Some(true), false) => {
            return Err(Error::Msg(format!(
                "volume {name}, stream chain {chain:?}: the chain is not encrypted (it was \
                 started with encrypt = off) but the config says encrypt = on; start a new \
                 chain with --chain, or set encrypt = off"
            )))
        }
        (Some(false), true) => {
            return Err(Error::Msg(format!(
                "volume {name}, stream chain {chain:?}: the chain is encrypted but the config \
                 says encrypt = off; start a new chain with --chain, or leave encrypt unset"
            )))
        }
        (_, false) => return Ok(None),
        (_, true) => {}
    }
    let bytes = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Msg(format!(
                "volume {name}, stream chain {chain:?} is encrypted but its key file {} is \
                 missing; start a new chain with --chain",
                path.display()
            )))
        }
        r => r.at(&path)?,
    };
    let key_file =
        KeyFile::parse(&bytes).map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
    let pass = passphrase::obtain_from(&sources, Purpose::Unlock)?;
    let keys = key_file.unlock(&pass).map_err(|e| match e {
        crypto::CryptoError::WrongPassphrase => Error::Msg(format!(
            "wrong passphrase: it does not unlock the key of stream chain {chain:?} of \
             volume {name} ({})",
            path.display()
        )),
        e => Error::Msg(format!("{}: {e}", path.display())),
    })?;
    let keys = std::sync::Arc::new(keys);
    Ok(Some(StreamCrypt { keys, key_file }))
}

/// The keys of tape destination `dest` for a volume chain there, `None` when it is not
/// encrypted. `encrypted`: whether the chain is (`None`: a new chain, encrypted unless
/// the config says `encrypt = off`). A tape destination has one key file
/// ([`crate::metadir::tape_key`]) for every volume sent there, made (asking for a new
/// passphrase) by the first encrypted send; it is unlocked once per run.
pub fn tape_crypt(
    config: &Config,
    dest: &str,
    encrypted: Option<bool>,
) -> Result<Option<StreamCrypt>> {
    static UNLOCKED: std::sync::Mutex<Option<(PathBuf, StreamCrypt)>> = std::sync::Mutex::new(None);
    let path = crate::metadir::tape_key(config, dest);
    match (config.encrypt, encrypted) {
        (Some(true), Some(false)) => {
            return Err(Error::Msg(format!(
                "tape destination {dest}: the volume's chain there is not encrypted (it was \
                 started with encrypt = off) but the config says encrypt = on"
            )))
        }
        (Some(false), Some(true)) => {
            return Err(Error::Msg(format!(
                "tape destination {dest}: the volume's chain there is encrypted but the \
                 config says encrypt = off"
            )))
        }
        (_, Some(false)) | (Some(false), None) => return Ok(None),
        _ => {}
    }
    let mut cached = UNLOCKED
        .lock()
        .map_err(|_| Error::Msg("the tape key cache is poisoned".into()))?;
    if let Some((p, c)) = cached.as_ref() {
        if *p == path {
            return Ok(Some(c.clone()));
        }
    }
    let sources = Sources {
        what: format!("tape destination {dest}"),
        ..passphrase::sources_of(config)
    };
    let crypt = match std::fs::read(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if encrypted == Some(true) {
                return Err(Error::Msg(format!(
                    "tape destination {dest} is encrypted but its key file {} is missing",
                    path.display()
                )));
            }
            let pass = passphrase::obtain_from(&sources, Purpose::Create)?;
            let fail = |e: crypto::CryptoError| Error::Msg(format!("{}: {e}", path.display()));
            let master = MasterKey::generate().map_err(fail)?;
            let id = crypto::random_uuid().map_err(fail)?;
            let key_file = KeyFile::wrap(&id, &master, &pass, KdfParams::DEFAULT).map_err(fail)?;
            if let Some(dir) = path.parent() {
                create_private_dir(dir)?;
            }
            durable::write_atomic(&path, key_file.render().as_bytes()).at(&path)?;
            let keys = std::sync::Arc::new(ArchiveKeys::derive(&master, &id));
            StreamCrypt { keys, key_file }
        }
        r => {
            let bytes = r.at(&path)?;
            let key_file = KeyFile::parse(&bytes)
                .map_err(|e| Error::Msg(format!("{}: {e}", path.display())))?;
            let pass = passphrase::obtain_from(&sources, Purpose::Unlock)?;
            let keys = key_file.unlock(&pass).map_err(|e| match e {
                crypto::CryptoError::WrongPassphrase => Error::Msg(format!(
                    "wrong passphrase: it does not unlock the key of tape destination {dest} ({})",
                    path.display()
                )),
                e => Error::Msg(format!("{}: {e}", path.display())),
            })?;
            StreamCrypt {
                keys: std::sync::Arc::new(keys),
                key_file,
            }
        }
    };
    *cached = Some((path, crypt.clone()));
    Ok(Some(crypt))
}

/// Make the session copies of a stream chain agree with its catalog base `base` before
/// a send: a copy of the base left under its temporary name (a run stopped between
/// recording and renaming it) is put in place; copies newer than the base, or any copy
/// when the chain is new, are leftovers of runs the catalog never recorded, and are
/// removed, temporary ones included.
fn settle_copies(local: &LocalCopies, base: Option<&str>) -> Result<()> {
    let entries = match std::fs::read_dir(&local.dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        r => r.at(&local.dir)?,
    };
    let mut changed = false;
    for entry in entries {
        let entry = entry.at(&local.dir)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let (id, tmp) = match name.strip_prefix(".tmp-S_") {
            Some(id) => (id, true),
            None => match name.strip_prefix("S_") {
                Some(id) => (id, false),
                None => continue,
            },
        };
        let path = entry.path();
        if tmp && Some(id) == base {
            let sess = local.session_dir(id);
            if !sess.exists() {
                tracing::info!("putting in place the copy of session {id} a stopped run left");
                std::fs::rename(&path, &sess).at(&sess)?;
                changed = true;
                continue;
            }
        }
        if tmp || base.is_none_or(|b| id > b) {
            tracing::info!(
                "removing {}, left by a stream send the catalog never recorded",
                path.display()
            );
            std::fs::remove_dir_all(&path).at(&path)?;
            changed = true;
        }
    }
    if changed {
        durable::sync_dir(&local.dir).at(&local.dir)?;
    }
    Ok(())
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

/// Where `receive --from-stream` and `verify --from-stream` get the passphrase of an
/// encrypted chain (asked only when a stream is encrypted): the sources of `config`
/// when there is one, else `SPARSEBAK_PASSPHRASE` or the terminal.
pub fn stream_unlock(config: Option<Config>) -> Unlock<'static> {
    Box::new(move || {
        let what = "the stream chain".to_string();
        let sources = match &config {
            Some(c) => Sources {
                what,
                ..passphrase::sources_of(c)
            },
            None => Sources {
                what,
                how: "set `passfile = PATH` or `passcmd = COMMAND` in the config (-c)".into(),
                ..Sources::default()
            },
        };
        passphrase::obtain_from(&sources, Purpose::Unlock).map_err(|e| e.to_string())
    })
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

/// The stream files read one after the other as one input, remembering where in that
/// input each file starts, so an error found at an offset of the input names its file.
pub struct StreamInputs {
    files: Vec<Box<dyn Read>>,
    idx: usize,
    pos: u64,
    starts: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

/// Names the stream file an error of [`StreamInputs`] was found in.
#[derive(Clone)]
pub struct InputMap {
    names: Vec<String>,
    starts: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Read for StreamInputs {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(f) = self.files.get_mut(self.idx) {
            let n = f.read(buf)?;
            if n > 0 || buf.is_empty() {
                self.pos += n as u64;
                return Ok(n);
            }
            self.idx += 1;
            if self.idx < self.files.len() {
                if let Ok(mut s) = self.starts.lock() {
                    s.push(self.pos);
                }
            }
        }
        Ok(0)
    }
}

impl InputMap {
    /// The error said with the file (and, among several, the byte of that file) where
    /// it was found.
    pub fn locate(&self, e: sparsebak_format::stream::StreamError) -> Error {
        let Some(at) = e.at() else {
            return Error::Msg(format!("{}: {e}", self.names.join(",")));
        };
        let starts = self.starts.lock().map(|s| s.clone()).unwrap_or_default();
        let i = starts.iter().rposition(|s| *s <= at.offset).unwrap_or(0);
        let name = self.names.get(i).map_or("?", String::as_str);
        if self.names.len() == 1 {
            Error::Msg(format!("{name}: {e}"))
        } else {
            let local = at.offset - starts.get(i).copied().unwrap_or(0);
            Error::Msg(format!("{name} (byte {local} of this file): {e}"))
        }
    }
}

/// One input read as a chain of streams, named `name` in messages.
pub fn input_from(name: String, r: Box<dyn Read>) -> (StreamInputs, InputMap) {
    let starts = std::sync::Arc::new(std::sync::Mutex::new(vec![0]));
    (
        StreamInputs {
            files: vec![r],
            idx: 0,
            pos: 0,
            starts: starts.clone(),
        },
        InputMap {
            names: vec![name],
            starts,
        },
    )
}

/// Open the streams `paths` (`-` = stdin) as one concatenated input. Standard input on
/// a terminal is refused: a stream is binary and nobody types one.
pub fn open_streams(paths: &[String]) -> Result<(StreamInputs, InputMap)> {
    let mut files: Vec<Box<dyn Read>> = Vec::new();
    let mut names = Vec::new();
    for p in paths {
        if p == "-" {
            if std::io::stdin().is_terminal() {
                return Err(Error::Msg(
                    "refusing to read a stream from a terminal; redirect standard input".into(),
                ));
            }
            files.push(Box::new(std::io::stdin()));
            names.push("standard input".to_string());
        } else {
            files.push(Box::new(File::open(p).at(p)?));
            names.push(p.clone());
        }
    }
    let starts = std::sync::Arc::new(std::sync::Mutex::new(vec![0]));
    Ok((
        StreamInputs {
            files,
            idx: 0,
            pos: 0,
            starts: starts.clone(),
        },
        InputMap { names, starts },
    ))
}

/// Rebuild the chain of streams in `input` into `out` (from [`check_stream_target`]):
/// a file is written under a temporary name beside the real file and renamed only when
/// every check passed; a block device is written in place. Standard output and FIFOs
/// take the volume in order, so (later streams of a chain overwrite earlier ones) the
/// chain is rebuilt in an unnamed sparse file in the temporary folder (`$TMPDIR`) first
/// and copied out only once every check passed.
pub fn receive_streams(
    (input, map): (StreamInputs, InputMap),
    out: &Output,
    volume: Option<&str>,
    unlock: Unlock<'_>,
) -> Result<ChainSummary> {
    // Read and check the whole chain into `sink`; a wrong volume is refused before a
    // file result is renamed into place. A failed write names where the volume was
    // going (`sink_at`), not the stream.
    let rebuild = |sink: &mut dyn VolumeSink, sink_at: &dyn Fn(std::io::Error) -> Error| {
        let sum = read_chain_with(
            std::io::BufReader::with_capacity(1 << 20, input),
            Some(sink),
            Some(unlock),
        )
        .map_err(|e| match e {
            sparsebak_format::stream::StreamError::Sink { source, .. } => sink_at(source),
            e => map.locate(e),
        })?;
        check_volume(&sum, volume)?;
        Ok(sum)
    };
    let oe = |e: output::OutputError| Error::Msg(e.to_string());
    match &out.kind {
        OutputKind::BlockDevice { .. } => {
            let dev = DeviceTarget::open(&out.path)?;
            let dev_at = |source| Error::Io {
                path: out.path.clone(),
                source,
            };
            rebuild(&mut DeviceSink::new(dev).at(&out.path)?, &dev_at)
        }
        OutputKind::File { .. } | OutputKind::New => {
            let partial = PartialFile::create(out).map_err(oe)?;
            let tmp = partial.tmp_path().to_path_buf();
            let f = partial.file().try_clone().at(&tmp)?;
            let tmp_at = |source| Error::Io {
                path: tmp.clone(),
                source,
            };
            let sum = rebuild(&mut FileSink::new(f).at(&tmp)?, &tmp_at)?;
            partial.commit().map_err(oe)?;
            Ok(sum)
        }
        OutputKind::Stdout | OutputKind::Fifo => {
            let tmpdir = std::env::temp_dir();
            // The volume is spooled there: a full or missing folder is said as such,
            // not taken for the output filling up.
            let spool_at = |e: std::io::Error| {
                Error::Msg(format!(
                    "spooling the volume in the temporary folder {} (set TMPDIR to a folder with room for the whole volume): {e}",
                    tmpdir.display()
                ))
            };
            let f = tempfile::tempfile_in(&tmpdir).map_err(spool_at)?;
            let mut sink = FileSink::new(f).map_err(spool_at)?;
            let sum = rebuild(&mut sink, &spool_at)?;
            let mut f = sink.into_file();
            f.rewind().map_err(spool_at)?;
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
