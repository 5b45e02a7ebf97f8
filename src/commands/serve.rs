//! `sparsebak serve ROOT`: the far side of a remote archive (see `remote::serve`).

use std::path::Path;

use anyhow::{bail, Result};

pub fn run(root: &Path) -> Result<()> {
    if !root.is_absolute() {
        bail!(
            "serve {}: the folder must be an absolute path",
            root.display()
        );
    }
    // When the link drops, sshd may hang the session up (SIGHUP) and the far side's
    // standard error is gone (SIGPIPE): the server must live on to keep or give up the
    // session it was writing, and release its locks, whatever it is sent.
    for sig in [
        nix::sys::signal::Signal::SIGHUP,
        nix::sys::signal::Signal::SIGPIPE,
    ] {
        // SAFETY: ignoring a signal installs no handler code.
        if let Err(e) =
            unsafe { nix::sys::signal::signal(sig, nix::sys::signal::SigHandler::SigIgn) }
        {
            tracing::warn!("cannot ignore {sig}: {e}");
        }
    }
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    crate::remote::serve::serve(root, stdin, stdout)?;
    Ok(())
}
