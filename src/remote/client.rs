//! The near side of a remote archive: starts the transport (ssh, qvm-run), speaks the
//! protocol, and offers the archive's operations as calls. Requests are written
//! without waiting for their answers (a bounded number and size in flight), and a
//! batch of chunk reads is one request answered by one frame per chunk.
//!
//! Nothing the far side sends is trusted: frames are bounded before allocation, each
//! answer is decoded against the request it answers, and the callers check chunk bytes
//! against the manifest's hashes before using them.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sparsebak_format::limits::MAX_INFO_BYTES;

use super::proto::{self, kind, req, Dec, Enc, Hello, WireError};
use super::transport::RemoteSpec;

/// Why a remote operation failed. Each names the destination.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("destination {label}: cannot start {program}: {source}")]
    Spawn {
        label: String,
        program: String,
        source: std::io::Error,
    },
    #[error("destination {label}: {message}")]
    Link { label: String, message: String },
    /// The transport could not reach the far host at all (no route, refused, timed
    /// out, unknown name): `send --dest=all` skips such a destination instead of
    /// failing.
    #[error("destination {label}: {message}")]
    Unreachable { label: String, message: String },
    #[error("destination {label}: {message}")]
    Refused { label: String, message: String },
    #[error("destination {label}: {message}")]
    Failed { label: String, message: String },
    /// The far side says a file is not there (`path`, a path over there).
    #[error("destination {label}: {message}")]
    Missing {
        label: String,
        path: String,
        message: String,
    },
}

/// The first connection of this run that broke in its middle, as its error says it.
static LOST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Whether a connection of this run was lost in its middle, and its error: every
/// request after it failed because of it, not because of what the archive holds,
/// so a command reports this one line instead of what it could not read.
pub fn link_lost() -> Option<String> {
    LOST.lock().ok().and_then(|l| l.clone())
}

/// Whether OpenSSH's last line `l` says the host did not answer (as opposed to
/// answering and refusing: a wrong key or user is a failure to fix, not an absent
/// host).
fn not_answering(l: &str) -> bool {
    const WORDS: &[&str] = &[
        "Connection refused",
        "Connection timed out",
        "No route to host",
        "Network is unreachable",
        "Host is down",
        "Could not resolve hostname",
        "Name or service not known",
        "Temporary failure in name resolution",
    ];
    WORDS.iter().any(|w| l.contains(w))
}

/// A failure the far side reported for one request: its line, and the file that is
/// not there when that is the cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarError {
    pub message: String,
    pub missing: Option<String>,
    /// For a file operation: the error's kind and its errno over there (0: none).
    pub io: Option<(std::io::ErrorKind, i32)>,
}

impl std::fmt::Display for FarError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The last lines the far side (or ssh, or qvm-run) wrote on its standard error.
#[derive(Debug, Default, Clone)]
struct Stderr(Arc<Mutex<VecDeque<String>>>);

impl Stderr {
    fn collect(&self, r: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(r);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // A line is cut at 1 KiB: a far side cannot make us hold more.
                match (&mut r).take(1024).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if buf.last() != Some(&b'\n') {
                            // Skip the rest of an over-long line.
                            let mut rest = Vec::new();
                            let _ = (&mut r).take(1 << 20).read_until(b'\n', &mut rest);
                        }
                        let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                        if line.is_empty() {
                            continue;
                        }
                        tracing::debug!("far side: {line}");
                        if let Ok(mut l) = lines.lock() {
                            if l.len() >= 8 {
                                l.pop_front();
                            }
                            l.push_back(line);
                        }
                    }
                }
            }
        })
    }
    fn last(&self) -> Option<String> {
        self.0.lock().ok().and_then(|l| {
            // ssh's warnings about known hosts say nothing about the failure.
            l.iter()
                .rev()
                .find(|s| !s.starts_with("Warning: Permanently added"))
                .cloned()
        })
    }
}

/// How long the far side has to send its hello once the transport started (ssh's own
/// `ConnectTimeout` is 30 s of it): `SPARSEBAK_REMOTE_TIMEOUT` (seconds) overrides it.
fn hello_timeout() -> Duration {
    std::env::var("SPARSEBAK_REMOTE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&s| s > 0)
        .map_or(Duration::from_secs(60), Duration::from_secs)
}

/// How long a transport that failed at the start has to end by itself.
const STARTUP_GRACE: Duration = Duration::from_secs(2);
/// How long the far side has to end once its input closed at the end of a run.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A reader that keeps the first bytes it passes on, to show what a far side that
/// does not speak the protocol sent instead.
struct Recording<'a, R> {
    inner: &'a mut R,
    seen: Vec<u8>,
}

/// How much of what a far side sent instead of the protocol is kept to be shown.
const EXCERPT_BYTES: usize = 80;

impl<'a, R: Read> Recording<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        Recording {
            inner,
            seen: Vec::new(),
        }
    }
}

impl<R: Read> Read for Recording<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let room = EXCERPT_BYTES.saturating_sub(self.seen.len());
        self.seen.extend_from_slice(&buf[..n.min(room)]);
        Ok(n)
    }
}

/// The first line of `b`, quoted, when it looks like text (a banner, a shell's
/// message), else a count of its bytes; empty when `b` is.
fn excerpt(b: &[u8]) -> String {
    let line = b.split(|&c| c == b'\n').next().unwrap_or(b);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let printable = |c: &u8| (0x20..0x7f).contains(c) || *c == b'\t';
    if !line.is_empty() && line.iter().all(printable) {
        format!("{:?}", String::from_utf8_lossy(line))
    } else if b.is_empty() {
        String::new()
    } else {
        format!("{} byte(s) that are not text", b.len())
    }
}

/// How many requests, and how many bytes of them, may wait for their answers.
const MAX_IN_FLIGHT: usize = 1024;
const MAX_IN_FLIGHT_BYTES: usize = 32 << 20;

/// One connection to `sparsebak serve`.
pub struct Connection {
    label: String,
    destcmd: String,
    /// The transport's program (ssh, qvm-run), for messages.
    program: String,
    child: Option<Child>,
    w: BufWriter<Box<dyn Write + Send>>,
    r: BufReader<Box<dyn Read + Send>>,
    stderr: Stderr,
    stderr_thread: Option<std::thread::JoinHandle<()>>,
    /// Requests sent and not yet answered, with their sizes.
    in_flight: VecDeque<usize>,
    in_flight_bytes: usize,
    far_version: String,
    /// Set by the hello's watchdog when it had to end a far side that never answered.
    timed_out: Arc<AtomicBool>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("label", &self.label)
            .finish()
    }
}

impl Connection {
    /// Reach the far side and exchange hellos. `writing` says whether the run will
    /// change the archive (the far side checks `destmountpoint` accordingly).
    pub fn open(
        spec: &RemoteSpec,
        destdir: &Path,
        destmountpoint: Option<&Path>,
        writing: bool,
    ) -> Result<Connection, RemoteError> {
        let label = spec.label(destdir);
        let mut cmd = spec.command(destdir);
        let program = cmd.get_program().to_string_lossy().into_owned();
        tracing::debug!("destination {label}: running {:?}", spec.argv(destdir));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| RemoteError::Spawn {
                label: label.clone(),
                program,
                source,
            })?;
        let stdin: ChildStdin = child.stdin.take().expect("piped");
        let stdout: ChildStdout = child.stdout.take().expect("piped");
        let stderr = Stderr::default();
        let t = stderr.collect(child.stderr.take().expect("piped"));
        let mut c = Connection {
            label,
            destcmd: spec.destcmd.clone(),
            program: spec.argv(destdir)[0].clone(),
            child: Some(child),
            w: BufWriter::with_capacity(256 << 10, Box::new(stdin)),
            r: BufReader::with_capacity(256 << 10, Box::new(stdout)),
            stderr,
            stderr_thread: Some(t),
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            far_version: String::new(),
            timed_out: Arc::new(AtomicBool::new(false)),
        };
        let watchdog = c.watch_hello();
        let r = c.hello(destdir, destmountpoint, writing);
        drop(watchdog);
        r.map(|()| c)
    }

    /// A connection over streams already joined to a far side (`sparsebak serve` in
    /// a thread, in tests): the hellos are exchanged as [`Connection::open`] does.
    pub fn over(
        label: &str,
        r: Box<dyn Read + Send>,
        w: Box<dyn Write + Send>,
        destdir: &Path,
        writing: bool,
    ) -> Result<Connection, RemoteError> {
        let mut c = Connection {
            label: label.to_string(),
            destcmd: String::new(),
            program: "serve".into(),
            child: None,
            w: BufWriter::with_capacity(256 << 10, w),
            r: BufReader::with_capacity(256 << 10, r),
            stderr: Stderr::default(),
            stderr_thread: None,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            far_version: String::new(),
            timed_out: Arc::new(AtomicBool::new(false)),
        };
        c.hello(destdir, None, writing)?;
        Ok(c)
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The far side's program version.
    pub fn far_version(&self) -> &str {
        &self.far_version
    }

    /// The process id of the transport (ssh, qvm-run), for tests that cut the link.
    pub fn transport_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn hello(
        &mut self,
        destdir: &Path,
        destmountpoint: Option<&Path>,
        writing: bool,
    ) -> Result<(), RemoteError> {
        let mine = Hello {
            protocol: proto::PROTOCOL_VERSION,
            program: proto::PROGRAM_VERSION.into(),
            destdir: destdir.to_string_lossy().into_owned(),
            destmountpoint: destmountpoint.map(|p| p.to_string_lossy().into_owned()),
            writing,
        };
        // Both hellos cross at once; a far side that is not sparsebak makes the write
        // fail (it closed) or the read see something else.
        let sent = proto::write_frame(&mut self.w, kind::HELLO, &mine.encode())
            .and_then(|_| self.w.flush().map_err(WireError::Io));
        let mut seen = Recording::new(&mut self.r);
        let first = proto::read_frame(&mut seen);
        let mut seen = seen.seen;
        // What else already came with the first bytes, for the excerpt.
        let more = self.r.buffer();
        seen.extend_from_slice(&more[..more.len().min(EXCERPT_BYTES)]);
        let theirs = match first {
            Ok(f) if f.kind == kind::HELLO => f,
            Ok(_) => return Err(self.not_the_protocol(&seen)),
            Err(WireError::Closed) => return Err(self.startup_failure(WireError::Closed)),
            Err(e) if self.timed_out.load(Ordering::SeqCst) => return Err(self.startup_failure(e)),
            Err(_) => return Err(self.not_the_protocol(&seen)),
        };
        let (protocol, program) = match Hello::decode_versions(&theirs.payload) {
            Ok(v) => v,
            Err(_) => return Err(self.not_the_protocol(&seen)),
        };
        if protocol != proto::PROTOCOL_VERSION {
            return Err(RemoteError::Refused {
                label: self.label.clone(),
                message: proto::mismatch(
                    (proto::PROTOCOL_VERSION, proto::PROGRAM_VERSION),
                    (protocol, &program),
                ),
            });
        }
        self.far_version = program;
        if let Err(e) = sent {
            return Err(self.startup_failure(e));
        }
        match proto::read_frame(&mut self.r) {
            Ok(f) if f.kind == kind::OK => Ok(()),
            Ok(f) if f.kind == kind::FATAL => Err(RemoteError::Refused {
                label: self.label.clone(),
                message: text(&f.payload),
            }),
            Ok(f) => Err(self.link(format!("an answer of kind {} to the hello", f.kind))),
            Err(e) => Err(self.startup_failure(e)),
        }
    }

    /// Start the hello's watchdog: unless dropped within [`hello_timeout`], it kills
    /// the transport (its pid stays ours until we wait for it), which ends the read
    /// the hello is blocked in.
    fn watch_hello(&self) -> Option<std::sync::mpsc::Sender<()>> {
        let pid = self.child.as_ref()?.id();
        let flag = self.timed_out.clone();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let limit = hello_timeout();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                flag.store(true, Ordering::SeqCst);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        });
        Some(tx)
    }

    /// The far side's first bytes are not a hello: end it and say what it sent (a
    /// login banner, a shell's message, a program that is not sparsebak).
    fn not_the_protocol(&mut self, seen: &[u8]) -> RemoteError {
        let _ = self.end_child(STARTUP_GRACE);
        let shown = excerpt(seen);
        let message = if shown.is_empty() {
            "the far side does not speak sparsebak's protocol".to_string()
        } else {
            format!("the far side does not speak sparsebak's protocol; it sent {shown}")
        };
        match self.stderr.last() {
            Some(l) => RemoteError::Link {
                label: self.label.clone(),
                message: format!("{message} ({l})"),
            },
            None => RemoteError::Link {
                label: self.label.clone(),
                message,
            },
        }
    }

    /// The link ended before the hellos were through: say why in the far side's or
    /// the transport's own words.
    fn startup_failure(&mut self, e: WireError) -> RemoteError {
        if self.timed_out.load(Ordering::SeqCst) {
            let _ = self.end_child(STARTUP_GRACE);
            return RemoteError::Link {
                label: self.label.clone(),
                message: format!(
                    "the far side did not answer within {} s (its greeting never came)",
                    hello_timeout().as_secs()
                ),
            };
        }
        let status = self.end_child(STARTUP_GRACE).ok();
        let last = self.stderr.last();
        let message = match (status.and_then(|s| s.code()), last) {
            (Some(127), Some(l)) => format!(
                "the far side has no command {:?} (destcmd): {l}",
                self.destcmd
            ),
            (Some(255), Some(l)) if not_answering(&l) => {
                return RemoteError::Unreachable {
                    label: self.label.clone(),
                    message: format!("cannot reach it: {l}"),
                }
            }
            (Some(255), Some(l)) => format!("cannot reach it: {l}"),
            (_, Some(l)) => format!("the far side stopped: {l}"),
            (_, None) => format!("the far side stopped ({e})"),
        };
        RemoteError::Link {
            label: self.label.clone(),
            message,
        }
    }

    fn link(&mut self, what: String) -> RemoteError {
        let message = match self.stderr.last() {
            Some(l) => format!("{what} ({l})"),
            None => what,
        };
        RemoteError::Link {
            label: self.label.clone(),
            message,
        }
    }

    /// The link broke in the middle of the run: remembered for [`link_lost`].
    fn broken(&mut self, e: WireError) -> RemoteError {
        let r = self.broken_link(e);
        if let Ok(mut l) = LOST.lock() {
            l.get_or_insert_with(|| r.to_string());
        }
        r
    }

    fn broken_link(&mut self, e: WireError) -> RemoteError {
        use std::io::ErrorKind::{BrokenPipe, ConnectionReset, UnexpectedEof};
        let mut what = match &e {
            WireError::Closed => "the connection was lost".to_string(),
            WireError::Malformed(m) if m == proto::CLOSED_INSIDE => {
                "the connection was lost".to_string()
            }
            WireError::Io(io)
                if matches!(io.kind(), BrokenPipe | ConnectionReset | UnexpectedEof) =>
            {
                "the connection was lost".to_string()
            }
            e => format!("the connection failed: {e}"),
        };
        // How the transport ended: it closes its pipes as it dies, a moment before it
        // can be waited for; when the link broke, it ends soon in any case.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while let Some(c) = self.child.as_mut() {
            match c.try_wait() {
                Ok(Some(st)) => {
                    what = format!("{what} ({} ended: {st})", self.program);
                    break;
                }
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                _ => break,
            }
        }
        self.link(what)
    }

    /// Send one request without waiting for its answer (the window is bounded: when
    /// full, the caller must read answers first; [`Self::call`] and the batch
    /// helpers do).
    pub fn send(&mut self, payload: &[u8]) -> Result<(), RemoteError> {
        proto::write_frame(&mut self.w, kind::REQUEST, payload).map_err(|e| self.broken(e))?;
        self.in_flight.push_back(payload.len());
        self.in_flight_bytes += payload.len();
        Ok(())
    }

    /// Whether the window of unanswered requests is full.
    pub fn window_full(&self) -> bool {
        self.in_flight.len() >= MAX_IN_FLIGHT || self.in_flight_bytes >= MAX_IN_FLIGHT_BYTES
    }

    /// Read one answer frame (flushing what is buffered first): `Ok(payload)` or the
    /// far side's failure.
    pub fn answer(&mut self) -> Result<Result<Vec<u8>, FarError>, RemoteError> {
        if self.r.buffer().is_empty() {
            self.w.flush().map_err(|e| self.broken(WireError::Io(e)))?;
        }
        let f = proto::read_frame(&mut self.r).map_err(|e| self.broken(e))?;
        match f.kind {
            kind::OK => Ok(Ok(f.payload)),
            kind::ERR => Ok(Err(FarError {
                message: text(&f.payload),
                missing: None,
                io: None,
            })),
            kind::FS_ERR => {
                let (code, errno, line) =
                    self.decode(&f.payload, |d| Ok((d.u8()?, d.u32()?, d.str()?)))?;
                Ok(Err(FarError {
                    message: text(line.as_bytes()),
                    missing: None,
                    io: Some((proto::io_kind(code), errno as i32)),
                }))
            }
            kind::MISSING => {
                let (path, message) = self.decode(&f.payload, |d| Ok((d.str()?, d.str()?)))?;
                Ok(Err(FarError {
                    message: text(message.as_bytes()),
                    missing: Some(text(path.as_bytes())),
                    io: None,
                }))
            }
            k => Err(self.link(format!("an answer of kind {k}"))),
        }
    }

    /// One answer to the oldest request in flight.
    pub fn finish_one(&mut self) -> Result<Result<Vec<u8>, FarError>, RemoteError> {
        let a = self.answer()?;
        if let Some(n) = self.in_flight.pop_front() {
            self.in_flight_bytes -= n;
        }
        Ok(a)
    }

    /// The error for a failure the far side reported.
    fn far(&self, e: FarError) -> RemoteError {
        match e.missing {
            Some(path) => RemoteError::Missing {
                label: self.label.clone(),
                path,
                message: e.message,
            },
            None => RemoteError::Failed {
                label: self.label.clone(),
                message: e.message,
            },
        }
    }

    /// Read the answers of every request in flight; the first failure among them.
    pub fn drain(&mut self) -> Result<Option<FarError>, RemoteError> {
        let mut first = None;
        while !self.in_flight.is_empty() {
            if let Err(e) = self.finish_one()? {
                first.get_or_insert(e);
            }
        }
        Ok(first)
    }

    /// Read answers until the window has room again; the first failure among them.
    pub fn make_room(&mut self) -> Result<(), RemoteError> {
        while self.window_full() {
            if let Err(e) = self.finish_one()? {
                return Err(self.far(e));
            }
        }
        Ok(())
    }

    /// Read answers until the window has room again; the first failure among them
    /// is returned (not raised), and the rest are read on.
    pub fn make_room_far(&mut self) -> Result<Option<FarError>, RemoteError> {
        let mut first = None;
        while self.window_full() {
            if let Err(e) = self.finish_one()? {
                first.get_or_insert(e);
            }
        }
        Ok(first)
    }

    /// Send a request and wait for its answer: `Ok(Err(..))` when the far side
    /// refused it. Requests in flight must have been drained.
    pub fn call_far(&mut self, payload: &[u8]) -> Result<Result<Vec<u8>, FarError>, RemoteError> {
        self.send(payload)?;
        self.finish_one()
    }

    /// Send a request and wait for its answer. Requests still in flight are answered
    /// first, and the first of them that failed is the error (this one is not sent).
    pub fn call(&mut self, payload: &[u8]) -> Result<Vec<u8>, RemoteError> {
        if let Some(e) = self.drain()? {
            return Err(self.far(e));
        }
        self.call_now(payload)
    }

    /// [`Self::call`], whatever became of the requests in flight (giving a session
    /// up, releasing a lock).
    pub fn call_anyway(&mut self, payload: &[u8]) -> Result<Vec<u8>, RemoteError> {
        self.drain()?;
        self.call_now(payload)
    }

    fn call_now(&mut self, payload: &[u8]) -> Result<Vec<u8>, RemoteError> {
        self.send(payload)?;
        match self.finish_one()? {
            Ok(p) => Ok(p),
            Err(e) => Err(self.far(e)),
        }
    }

    fn malformed(&self, e: WireError) -> RemoteError {
        RemoteError::Link {
            label: self.label.clone(),
            message: format!("the far side answered with {e}"),
        }
    }

    /// Decode an answer.
    pub fn decode<T>(
        &self,
        p: &[u8],
        f: impl FnOnce(&mut Dec) -> Result<T, WireError>,
    ) -> Result<T, RemoteError> {
        let mut d = Dec::new(p);
        let v = f(&mut d).map_err(|e| self.malformed(e))?;
        d.end().map_err(|e| self.malformed(e))?;
        Ok(v)
    }

    /// The archive's identity and whether it is read-only.
    pub fn archive(&mut self) -> Result<(Option<String>, bool), RemoteError> {
        let p = self.call(&[req::ARCHIVE])?;
        self.decode(&p, |d| Ok((d.opt_str()?, d.bool()?)))
    }

    pub fn volumes(&mut self) -> Result<Vec<String>, RemoteError> {
        let p = self.call(&[req::VOLUMES])?;
        self.decode(&p, |d| d.strs())
    }

    pub fn exists(&mut self, vol: &str) -> Result<bool, RemoteError> {
        let p = self.call(Enc::new().u8(req::EXISTS).str(vol).0.as_slice())?;
        self.decode(&p, |d| d.bool())
    }

    pub fn sessions(&mut self, vol: &str) -> Result<Vec<String>, RemoteError> {
        let p = self.call(Enc::new().u8(req::SESSIONS).str(vol).0.as_slice())?;
        self.decode(&p, |d| d.strs())
    }

    pub fn info_bytes(&mut self, vol: &str, id: &str) -> Result<Vec<u8>, RemoteError> {
        let p = self.call(Enc::new().u8(req::INFO).str(vol).str(id).0.as_slice())?;
        let b = self.decode(&p, |d| Ok(d.bytes()?.to_vec()))?;
        if b.len() as u64 > MAX_INFO_BYTES {
            return Err(self.malformed(WireError::Malformed(format!(
                "an info of {} bytes (at most {MAX_INFO_BYTES})",
                b.len()
            ))));
        }
        Ok(b)
    }

    pub fn manifest_len(&mut self, vol: &str, id: &str) -> Result<u64, RemoteError> {
        let p = self.call(
            Enc::new()
                .u8(req::MANIFEST_LEN)
                .str(vol)
                .str(id)
                .0
                .as_slice(),
        )?;
        self.decode(&p, |d| d.u64())
    }

    pub fn manifest_piece(
        &mut self,
        vol: &str,
        id: &str,
        offset: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let p = self.call(
            Enc::new()
                .u8(req::MANIFEST_READ)
                .str(vol)
                .str(id)
                .u64(offset)
                .u32(proto::MANIFEST_PIECE)
                .0
                .as_slice(),
        )?;
        let b = self.decode(&p, |d| Ok(d.bytes()?.to_vec()))?;
        if b.len() > proto::MANIFEST_PIECE as usize {
            return Err(self.malformed(WireError::Malformed(
                "a manifest piece above the limit".into(),
            )));
        }
        Ok(b)
    }

    /// The stored bytes of chunks of session `id`: all requests go out in one frame,
    /// then the answers are read, one per address. Each is at most `max` bytes.
    pub fn read_stored(
        &mut self,
        vol: &str,
        id: &str,
        addrs: &[u64],
        max: u64,
    ) -> Result<Vec<Result<Vec<u8>, FarError>>, RemoteError> {
        if let Some(e) = self.drain()? {
            return Err(self.far(e));
        }
        let mut e = Enc::new();
        e.u8(req::READ_STORED).str(vol).str(id).u64s(addrs);
        self.send(&e.0)?;
        let mut out = Vec::with_capacity(addrs.len());
        for _ in addrs {
            let a = self.answer()?;
            if let Ok(b) = &a {
                if b.len() as u64 > max {
                    return Err(self.malformed(WireError::Malformed(format!(
                        "a chunk of {} bytes, above the {max} a chunk of this session can take",
                        b.len()
                    ))));
                }
            }
            out.push(a);
        }
        self.in_flight.clear();
        self.in_flight_bytes = 0;
        Ok(out)
    }

    pub fn chunk_location(
        &mut self,
        vol: &str,
        id: &str,
        addr: u64,
    ) -> Result<String, RemoteError> {
        let p = self.call(
            Enc::new()
                .u8(req::CHUNK_LOCATION)
                .str(vol)
                .str(id)
                .u64(addr)
                .0
                .as_slice(),
        )?;
        self.decode(&p, |d| d.str())
    }

    /// 0 folder, 1 tar.
    pub fn storage(&mut self, vol: &str, id: &str) -> Result<u8, RemoteError> {
        let p = self.call(Enc::new().u8(req::STORAGE).str(vol).str(id).0.as_slice())?;
        self.decode(&p, |d| d.u8())
    }

    /// Take volume `vol`'s lock on the far side; `false` when none was needed (a
    /// read-only archive and a shared lock).
    pub fn lock(&mut self, vol: &str, exclusive: bool) -> Result<bool, RemoteError> {
        let p = self.call(
            Enc::new()
                .u8(req::LOCK)
                .str(vol)
                .bool(exclusive)
                .0
                .as_slice(),
        )?;
        self.decode(&p, |d| d.bool())
    }

    pub fn unlock(&mut self, vol: &str) -> Result<(), RemoteError> {
        let p = self.call_anyway(Enc::new().u8(req::UNLOCK).str(vol).0.as_slice())?;
        self.decode(&p, |_| Ok(()))
    }

    /// Close the connection: the far side sees the end of its input and exits.
    pub fn close(mut self) -> Result<(), RemoteError> {
        let _ = self.w.flush();
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), RemoteError> {
        if self.child.is_none() {
            return Ok(());
        }
        match self.end_child(SHUTDOWN_GRACE) {
            Ok(st) if st.success() => Ok(()),
            Ok(st) => Err(self.link(format!("the far side ended with {st}"))),
            Err(e) => Err(RemoteError::Link {
                label: self.label.clone(),
                message: format!("waiting for the transport: {e}"),
            }),
        }
    }

    /// Close the far side's input, give the transport `grace` to end by itself, then
    /// kill it; wait for it and for its error output. Never waits longer than `grace`
    /// plus a kill: a far side that reads nothing or never ends (a login script, a
    /// hung host) cannot hold the run.
    fn end_child(&mut self, grace: Duration) -> std::io::Result<std::process::ExitStatus> {
        // Dropping the writer closes the far side's input.
        let w = std::mem::replace(&mut self.w, BufWriter::new(Box::new(std::io::sink())));
        drop(w);
        let Some(mut c) = self.child.take() else {
            return Err(std::io::Error::other(
                "the transport was already waited for",
            ));
        };
        let deadline = Instant::now() + grace;
        let st = loop {
            match c.try_wait()? {
                Some(st) => break st,
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                None => {
                    tracing::debug!(
                        "destination {}: ending {} (no end after {grace:?})",
                        self.label,
                        self.program
                    );
                    let _ = c.kill();
                    break c.wait()?;
                }
            }
        };
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        Ok(st)
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

fn text(b: &[u8]) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(4096)]);
    s.lines().next().unwrap_or("").to_string()
}

/// A manifest read in pieces from the far side.
pub struct RemoteManifest {
    conn: Arc<Mutex<Connection>>,
    vol: String,
    id: String,
    offset: u64,
    buf: Vec<u8>,
    pos: usize,
    done: bool,
}

impl RemoteManifest {
    pub fn new(conn: Arc<Mutex<Connection>>, vol: &str, id: &str) -> RemoteManifest {
        RemoteManifest {
            conn,
            vol: vol.into(),
            id: id.into(),
            offset: 0,
            buf: Vec::new(),
            pos: 0,
            done: false,
        }
    }
}

impl Read for RemoteManifest {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = {
            let b = self.fill_buf()?;
            let n = b.len().min(out.len());
            out[..n].copy_from_slice(&b[..n]);
            n
        };
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for RemoteManifest {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.pos == self.buf.len() && !self.done {
            let mut c = self
                .conn
                .lock()
                .map_err(|_| std::io::Error::other("the connection's lock is poisoned"))?;
            let piece = c
                .manifest_piece(&self.vol, &self.id, self.offset)
                .map_err(std::io::Error::other)?;
            drop(c);
            self.done = (piece.len() as u32) < proto::MANIFEST_PIECE;
            self.offset += piece.len() as u64;
            self.buf = piece;
            self.pos = 0;
        }
        Ok(&self.buf[self.pos..])
    }
    fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.buf.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_that_does_not_answer_is_told_from_one_that_refuses() {
        for l in [
            "ssh: connect to host 127.0.0.1 port 1: Connection refused",
            "ssh: connect to host 10.9.9.9 port 22: Connection timed out",
            "ssh: connect to host h port 22: No route to host",
            "ssh: Could not resolve hostname nohost: Name or service not known",
        ] {
            assert!(not_answering(l), "{l}");
        }
        for l in [
            "bk@127.0.0.1: Permission denied (publickey).",
            "Host key verification failed.",
        ] {
            assert!(!not_answering(l), "{l}");
        }
    }
}
