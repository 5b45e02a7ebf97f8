//! Exit statuses that tell outcomes apart for scripts, timers and monitoring checks.
//!
//! | status | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | failure: the command could not do its work (one-line reason on stderr) |
//! | 2 | bad usage (clap's own status, also for what `Cli::check` refuses) |
//! | 3 | nothing to do: `send --dest=all` found no destination present |
//! | 4 | `verify` ran to the end and found damage (and `status`, when a last verify did) |
//! | 5 | `status`: a volume's newest session is older than `max_age`, or it was never sent |
//!
//! A command that ends with status 3 or 4 returns a [`Coded`] error; `main` looks for
//! one in the error's chain. Every other error exits 1.

/// Success.
pub const OK: u8 = 0;
/// The command failed (it could not run, or not to the end).
pub const FAILURE: u8 = 1;
/// Bad usage.
pub const USAGE: u8 = 2;
/// Nothing was done: every destination `send --dest=all` would have used was absent
/// (not mounted, not reachable) or a tape.
pub const NOTHING_DONE: u8 = 3;
/// `verify` checked what it was asked to and found damage.
pub const DAMAGE: u8 = 4;
/// `status`: a volume is stale (older than `max_age`) or was never sent.
pub const STALE: u8 = 5;

/// A failure that ends the command with its own exit status; its text is the message.
#[derive(Debug, thiserror::Error)]
#[error("{msg}")]
pub struct Coded {
    pub code: u8,
    pub msg: String,
}

impl Coded {
    /// `send --dest=all` reached no destination.
    pub fn nothing_done(msg: impl Into<String>) -> Coded {
        Coded {
            code: NOTHING_DONE,
            msg: msg.into(),
        }
    }

    /// `verify` found damage.
    pub fn damage(msg: impl Into<String>) -> Coded {
        Coded {
            code: DAMAGE,
            msg: msg.into(),
        }
    }
}

/// The exit status for a command that failed with `e`: the code of the first
/// [`Coded`] in its chain, else [`FAILURE`].
pub fn code_of(e: &anyhow::Error) -> u8 {
    if let Some(c) = e.downcast_ref::<Coded>() {
        return c.code;
    }
    e.chain()
        .find_map(|c| c.downcast_ref::<Coded>().map(|c| c.code))
        .unwrap_or(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn the_code_is_found_under_context() {
        let e = anyhow::Error::from(Coded::damage("verify v: FAILED")).context("verify");
        assert_eq!(code_of(&e), DAMAGE);
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("cannot open"));
        assert_eq!(code_of(&e.context("verify").unwrap_err()), FAILURE);
        assert_eq!(
            code_of(&anyhow::Error::from(Coded::nothing_done("none present"))),
            NOTHING_DONE
        );
    }
}
