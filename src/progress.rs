//! Progress bars for long work, shown only when stderr is a terminal and not `-q`.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
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
        eprintln!("{line}");
    }
}

/// A byte-counting progress bar with rate and ETA; a no-op when not interactive.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total: u64, label: &str) -> Progress {
        let bar = if interactive() {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix:.bold} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
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
        Progress { bar }
    }

    pub fn set(&self, pos: u64) {
        self.bar.set_position(pos);
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
