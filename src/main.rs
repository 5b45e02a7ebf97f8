use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use sparsebak::cli::Cli;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // Before any thread or child process exists: no child ever inherits it.
    sparsebak::passphrase::take_from_env();
    sparsebak_format::alloc::tune_for_pipelines();
    sparsebak::durable::private_umask();
    // The hidden helpers of packaging and shell completion (see `docgen`).
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    if sparsebak::docgen::is_helper(&args) {
        let helper = sparsebak::docgen::HelperCli::parse();
        return match sparsebak::docgen::run_helper(helper) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                sparsebak::progress::err_line(&format!(
                    "sparsebak: error: {}",
                    sparsebak_format::error::one_line(e.as_ref())
                ));
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    if let Err(e) = cli.check() {
        e.exit();
    }
    sparsebak::progress::set_output(cli.quiet, cli.verbose);
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        _ => "debug",
    };
    // The FUSE library's own warnings (calls a read-only mount does not implement,
    // a second unmount) are not the user's business.
    let filter = EnvFilter::try_from_env("SPARSEBAK_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},fuser=error")));
    // Without a terminal (cron, a systemd service) every event is one line, with its
    // priority for the journal when standard error is the journal's.
    sparsebak::progress::set_journal(sparsebak::progress::stderr_is_journal());
    if let Some(path) = &cli.log_file {
        if let Err(e) = sparsebak::progress::set_log_file(path) {
            sparsebak::progress::err_line(&format!(
                "sparsebak: error: --log-file {}: {e}",
                path.display()
            ));
            return ExitCode::FAILURE;
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(sparsebak::progress::EventLog)
        .without_time()
        .with_target(false)
        // Colour only for a person at a terminal, never into files, pipes or cron mail.
        .with_ansi(std::io::stderr().is_terminal() && cli.log_file.is_none())
        .init();
    raise_fd_limit();
    // A run stopped by SIGINT/SIGTERM leaves no partial output file behind.
    if let Err(e) = sparsebak_format::output::remove_partials_on_signals() {
        tracing::warn!("cannot install the signal handlers: {e}");
    }
    match sparsebak::commands::run(cli) {
        // The work is done; output lines that could not be written (other than to a
        // reader that went away) still make the command fail.
        Ok(()) => match sparsebak::progress::stdout_failure() {
            None => ExitCode::SUCCESS,
            Some(e) => {
                sparsebak::progress::err_line(&format!(
                    "sparsebak: error: writing to standard output: {e}"
                ));
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            // One line: the context chain joined, each cause once.
            sparsebak::progress::err_line(&format!(
                "sparsebak: error: {}",
                sparsebak_format::error::one_line(e.as_ref())
            ));
            // 3 when nothing was done, 4 when verify found damage, else 1.
            ExitCode::from(sparsebak::exit::code_of(&e))
        }
    }
}

/// A view merges one manifest per session, each an open file: lift the soft limit on
/// open files to the hard limit so long histories never run out.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
