//! Progress bars for long work, shown only when stderr is a terminal and not `-q`.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

static QUIET: AtomicBool = AtomicBool::new(false);
static VERBOSE: AtomicU8 = AtomicU8::new(0);

/// Set from the command line once at start.
pub fn set_output(quiet: bool, verbose: u8) {
    QUIET.store(quiet, Ordering::Relaxed);
    VERBOSE.store(verbose, Ordering::Relaxed);
}

pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether progress bars and end-of-work summaries are shown: a terminal on stderr and
/// no `-q`, or `-v` (summaries only) for logs.
pub fn interactive() -> bool {
    !quiet() && std::io::stderr().is_terminal()
}

/// Whether to print summary lines.
pub fn summaries() -> bool {
    !quiet() && (interactive() || VERBOSE.load(Ordering::Relaxed) > 0)
}

/// Print a summary line (to stderr) when summaries are on.
pub fn summary(line: &str) {
    if summaries() {
        err_line(line);
    }
}

/// Set once standard output failed; nothing more is written to it.
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
/// The first failure to write standard output other than a reader that went away.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Print one line of a command's output on standard output.
///
/// `println!` panics when stdout fails (a closed pipe: `sparsebak prune ... | head -1`),
/// which would stop a prune half-way. Here a failure never stops the work: a reader
/// that went away (EPIPE) is normal and silently ends the output; any other failure
/// (a full disk under `> file`) is remembered and reported by [`stdout_failure`] when
/// the command has finished. Returns whether standard output still takes lines.
pub fn out(line: &str) -> bool {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return false;
    }
    let mut text = String::with_capacity(line.len() + 1);
    text.push_str(line);
    text.push('\n');
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => true,
        Err(e) => {
            stdout_failed(e);
            false
        }
    }
}

/// Standard output as a writer with the rules of [`out`]: writes never fail; after a
/// failure the rest is discarded (and a failure other than EPIPE is reported at the end).
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !STDOUT_GONE.load(Ordering::Relaxed) {
            let r = std::io::stdout().lock().write_all(buf);
            if let Err(e) = r {
                stdout_failed(e);
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !STDOUT_GONE.load(Ordering::Relaxed) {
            if let Err(e) = std::io::stdout().lock().flush() {
                stdout_failed(e);
            }
        }
        Ok(())
    }
}

fn stdout_failed(e: std::io::Error) {
    STDOUT_GONE.store(true, Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        let mut first = STDOUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
        first.get_or_insert_with(|| e.to_string());
    }
}

/// Why standard output could not be written, when it failed for another reason than
/// its reader going away.
pub fn stdout_failure() -> Option<String> {
    STDOUT_ERROR
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
}

/// Print one line on standard error; a failure to write it is ignored (`eprintln!`
/// would panic when stderr is a closed pipe). The line goes to the `--log-file` too,
/// and to the journal with the priority of an error when it says one.
pub fn err_line(line: &str) {
    let priority = if line.starts_with("sparsebak: error:") {
        3
    } else {
        6
    };
    log_line(priority, line);
}

/// The file `--log-file` names, opened for appending.
static LOG_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Whether standard error goes to the systemd journal (set once at start).
static JOURNAL: AtomicBool = AtomicBool::new(false);

/// Open `path` for appending every line said on standard error (created 0600 if
/// missing; a file that exists keeps its owner and mode).
pub fn set_log_file(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    *LOG_FILE.lock().unwrap_or_else(|p| p.into_inner()) = Some(f);
    Ok(())
}

/// Whether standard error is the journal's stream: systemd sets `$JOURNAL_STREAM` to
/// its `DEVICE:INODE` for a service whose standard error is connected to the journal.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let Ok(m) = nix::sys::stat::fstat(libc::STDERR_FILENO) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(m.st_dev) && ino.parse::<u64>().ok() == Some(m.st_ino)
}

/// Decide once at start whether lines to standard error carry journal priorities.
pub fn set_journal(on: bool) {
    JOURNAL.store(on, Ordering::Relaxed);
}

/// One event: one line on standard error (with its syslog `priority` as `<N>` for the
/// journal, which strips it) and, with `--log-file`, the same line with the time in
/// front. A message of several lines is joined into one when standard error is not a
/// terminal, so that each event is one journal entry.
pub fn log_line(priority: u8, line: &str) {
    let line = line.trim_end_matches('\n');
    let joined;
    let line = if line.contains('\n') && !std::io::stderr().is_terminal() {
        joined = line.replace('\n', " | ");
        joined.as_str()
    } else {
        line
    };
    let _ = if JOURNAL.load(Ordering::Relaxed) {
        writeln!(std::io::stderr(), "<{priority}>{line}")
    } else {
        writeln!(std::io::stderr(), "{line}")
    };
    let mut log = LOG_FILE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = log.as_mut() {
        let now = chrono::Local::now().format("%Y-%m-%dT%H:%M:%S%.3f%:z");
        // One write per line: appends of several processes do not interleave.
        let _ = f.write_all(format!("{now} {line}\n").as_bytes());
    }
}

/// The writer `tracing` formats each event into: the event is said by [`log_line`]
/// when it is complete.
pub struct EventWriter {
    buf: Vec<u8>,
    priority: u8,
}

impl Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            // The level is padded to five columns (` INFO`): no line starts blank.
            log_line(
                self.priority,
                String::from_utf8_lossy(&self.buf).trim_start(),
            );
        }
    }
}

/// Makes an [`EventWriter`] per event, with the syslog priority of its level.
pub struct EventLog;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for EventLog {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            buf: Vec::new(),
            priority: 6,
        }
    }
    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> EventWriter {
        use tracing::Level;
        let priority = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        EventWriter {
            buf: Vec::new(),
            priority,
        }
    }
}

/// What a progress bar says after its counts, while something has more to say (the
/// tape drive of a send to tape: its speed, the buffer's fill, its stops).
static STATUS: std::sync::Mutex<Option<StatusFn>> = std::sync::Mutex::new(None);

/// Says the status, or nothing when there is none now.
pub type StatusFn = fn() -> Option<String>;

/// Set (or clear) what progress bars say after their counts.
pub fn set_status(f: Option<StatusFn>) {
    if let Ok(mut s) = STATUS.lock() {
        *s = f;
    }
}

fn status() -> Option<String> {
    STATUS.lock().ok().and_then(|s| *s).and_then(|f| f())
}

/// A byte-counting progress bar with rate and ETA; a no-op when not interactive.
pub struct Progress {
    bar: ProgressBar,
    /// Milliseconds since the bar started when its status was last said.
    said: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl Progress {
    pub fn new(total: u64, label: &str) -> Progress {
        let bar = if interactive() {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            b.set_style(style);
            b.set_prefix(label.to_string());
            b.enable_steady_tick(Duration::from_millis(250));
            b
        } else {
            ProgressBar::hidden()
        };
        Progress {
            bar,
            said: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
        if self.bar.is_hidden() {
            return;
        }
        use std::sync::atomic::Ordering;
        let now = self.started.elapsed().as_millis() as u64;
        if now >= self.said.load(Ordering::Relaxed) + 250 {
            self.said.store(now, Ordering::Relaxed);
            if let Some(s) = status() {
                self.bar.set_message(s);
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
