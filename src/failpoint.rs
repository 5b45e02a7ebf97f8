//! Crash points for tests: when `SPARSEBAK_FAILPOINT` names a point, the process kills
//! itself with SIGKILL on reaching it, exactly as a power cut or `kill -9` would stop it
//! there. The variable is read once; with it unset this costs one branch.

use std::sync::OnceLock;

fn wanted() -> Option<&'static str> {
    static W: OnceLock<Option<String>> = OnceLock::new();
    W.get_or_init(|| std::env::var("SPARSEBAK_FAILPOINT").ok())
        .as_deref()
}

/// Die here if this point is the one asked for.
pub fn hit(name: &str) {
    if wanted() == Some(name) {
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
