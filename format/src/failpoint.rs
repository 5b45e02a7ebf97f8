//! Crash points for tests: when `SPARSEBAK_FAILPOINT` names a point, the process kills
//! itself with SIGKILL on reaching it, exactly as a power cut or `kill -9` would stop it
//! there. `NAME:stop` stops the process there with SIGSTOP instead, so a test can
//! change the world at that exact point and then let it go on with SIGCONT. The
//! variable is read once; with it unset this costs one branch.

use std::sync::OnceLock;

fn wanted() -> Option<&'static str> {
    static W: OnceLock<Option<String>> = OnceLock::new();
    W.get_or_init(|| std::env::var("SPARSEBAK_FAILPOINT").ok())
        .as_deref()
}

/// Die (or stop) here if this point is the one asked for.
pub fn hit(name: &str) {
    let Some(w) = wanted() else { return };
    if w == name {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    } else if w.strip_suffix(":stop") == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP);
    }
}
