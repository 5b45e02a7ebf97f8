//! One module per command. Each loads what it needs, calls the library, and prints;
//! none of them does storage work itself.

pub mod delete;
pub mod diff;
pub mod json;
pub mod key;
pub mod list;
pub mod monitor;
pub mod mount;
pub mod prune;
pub mod receive;
pub mod rename;
pub mod repair;
pub mod resync;
pub mod send;
pub mod serve;
pub mod status;
pub mod stream;
pub mod tape;
pub mod tape_dest;
pub mod untar;
pub mod verify;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::{Cli, Command};
use crate::config::Config;

/// Default config path when neither `-c` nor `$SPARSEBAK_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/sparsebak/sparsebak.ini";

/// Options every command may need, from the command line.
pub struct Ctx {
    pub config: Config,
    pub unattended: bool,
    pub session: Option<String>,
    pub save_to: Option<PathBuf>,
    /// `send --dest=all`: `config` is then the whole configuration, not one
    /// destination's.
    pub all_dests: bool,
    /// `--json`: print JSON documents instead of the human output.
    pub json: bool,
}

impl Ctx {
    /// Ask a yes/no question on the terminal; `-u` answers yes. Without a terminal and
    /// without `-u` the answer is no, and the caller refuses with a clear message.
    pub fn confirm(&self, question: &str) -> Result<bool> {
        if self.unattended {
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            return Ok(false);
        }
        // Not eprint!, which panics when stderr is a closed pipe.
        let mut err = std::io::stderr();
        let _ = write!(err, "{question} [y/N] ");
        let _ = err.flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES"))
    }
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config
        .clone()
        .or_else(|| std::env::var_os("SPARSEBAK_CONFIG").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

/// Run the command the user gave.
pub fn run(cli: Cli) -> Result<()> {
    // Streams restore and verify with no configuration at all.
    match &cli.command {
        Command::Receive {
            volume,
            save_to,
            from_stream: Some(paths),
            zero_tail,
            ..
        } => {
            return stream::receive(
                save_to,
                cli.unattended,
                &config_path(&cli),
                volume.as_deref(),
                paths,
                *zero_tail,
                cli.command.json(),
            )
        }
        Command::Verify {
            volume,
            from_stream: Some(paths),
            ..
        } => {
            return stream::verify(
                &config_path(&cli),
                volume.as_deref(),
                paths,
                cli.command.json(),
            )
        }
        Command::Serve { root } => return serve::run(root),
        Command::Umount { mountpoint } => return mount::umount(mountpoint),
        Command::Mount {
            mountpoint,
            volumes,
            foreground,
            cache,
            archive,
            passfile,
            passcmd,
        } => {
            let args = mount::Args {
                mountpoint,
                volumes,
                foreground: *foreground,
                cache: crate::config::parse_size(cache).unwrap_or(crate::mount::DEFAULT_CACHE),
                archive: archive
                    .as_deref()
                    .map(|d| (d, passfile.clone(), passcmd.clone())),
            };
            // The config is loaded by the process that serves the mount.
            return mount::run(&args, || {
                let path = config_path(&cli);
                let config = Config::load(&path).context("loading the configuration")?;
                config.check_metadir()?;
                let config = choose_dest(&cli, config, false, &path);
                refuse_tape_dest(&cli, &config, false)?;
                Ok(config)
            });
        }
        _ => {}
    }
    let path = config_path(&cli);
    let config = Config::load(&path).with_context(|| "loading the configuration".to_string())?;
    config.check_metadir()?;
    let all_dests = cli.dest.as_deref() == Some(crate::config::ALL_DESTS);
    let config = choose_dest(&cli, config, all_dests, &path);
    refuse_tape_dest(&cli, &config, all_dests)?;
    let (session, save_to) = match &cli.command {
        Command::Receive {
            session, save_to, ..
        } => (session.clone(), Some(save_to.clone())),
        Command::Verify { session, .. }
        | Command::Prune { session, .. }
        | Command::Untar { session, .. } => (session.clone(), None),
        Command::Diff { session, .. } => (Some(session.clone()), None),
        _ => (None, None),
    };
    let ctx = Ctx {
        config,
        unattended: cli.unattended,
        session,
        save_to,
        all_dests,
        json: cli.command.json(),
    };
    let r = match &cli.command {
        Command::Send {
            volumes,
            stream: Some(path),
            block_size,
            chain,
            ..
        } => stream::send(&ctx, volumes, path, block_size, chain),
        Command::Send { volumes, .. } if ctx.config.tape.is_some() && !ctx.all_dests => {
            let verify = matches!(
                cli.command,
                Command::Send {
                    verify_tape: true,
                    ..
                }
            );
            tape_dest::send(&ctx, volumes, verify)
        }
        Command::Send {
            volumes,
            tarfile,
            accept_archive,
            ..
        } => send::run(&ctx, volumes, *tarfile, *accept_archive),
        Command::Monitor { volumes } => monitor::run(&ctx, volumes),
        Command::Receive {
            volume, zero_tail, ..
        } if ctx.config.tape.is_some() => tape_dest::receive(
            &ctx,
            &need_volume(volume, "receive --save-to=PATH VOLUME")?,
            *zero_tail,
        ),
        Command::Verify { volume, .. } if ctx.config.tape.is_some() => {
            tape_dest::verify(&ctx, &need_volume(volume, "verify VOLUME")?)
        }
        Command::List { volumes, .. } if ctx.config.tape.is_some() => {
            tape_dest::list(&ctx, volumes)
        }
        Command::Prune {
            volumes,
            auto,
            keep,
            all_before,
            dry_run,
            ..
        } if ctx.config.tape.is_some() => tape_dest::prune(
            &ctx,
            volumes,
            &prune::Opts {
                auto: *auto,
                keep: keep.clone(),
                all_before: all_before.clone(),
                dry_run: *dry_run,
                decisions: Default::default(),
            },
        ),
        Command::Receive {
            volume, zero_tail, ..
        } => receive::run(
            &ctx,
            &need_volume(volume, "receive --save-to=PATH VOLUME")?,
            *zero_tail,
        ),
        Command::Verify { volume, .. } => verify::run(&ctx, &need_volume(volume, "verify VOLUME")?),
        Command::List { volumes, .. } => list::run(&ctx, volumes),
        Command::Serve { .. } => unreachable!("served before the config is loaded"),
        Command::Resync { volumes } => resync::run(&ctx, volumes),
        Command::Prune {
            volumes,
            auto,
            keep,
            all_before,
            dry_run,
            ..
        } => prune::run(
            &ctx,
            volumes,
            &prune::Opts {
                auto: *auto,
                keep: keep.clone(),
                all_before: all_before.clone(),
                dry_run: *dry_run,
                decisions: Default::default(),
            },
        ),
        Command::Repair { volume, dry_run } => repair::run(&ctx, volume, *dry_run),
        Command::Delete { volume } => delete::run(&ctx, volume),
        Command::Rename { old, new } => rename::run(&ctx, old, new),
        Command::Untar { volume, .. } => untar::run(&ctx, volume),
        Command::Diff {
            volume,
            json,
            files,
            ..
        } => diff::run(&ctx, volume, *json, *files),
        Command::Key { action } => key::run(&ctx, action),
        Command::Tape { action } => tape::run(&ctx, action),
        Command::Mount { .. } | Command::Umount { .. } => {
            unreachable!("run before the config is loaded")
        }
        Command::Status {
            volumes,
            prometheus,
            ..
        } => status::run(&ctx, volumes, *prometheus),
    };
    // A lost connection fails every read after it: that is the one cause to say,
    // not damage to the chunks it could not read (nor a repair for them).
    match (r, crate::remote::client::link_lost()) {
        (Err(_), Some(lost)) => Err(anyhow::anyhow!(lost)),
        (r, _) => r,
    }
}

/// A command that works only on an archive folder, given a tape destination: said in
/// one line before anything is opened. `send`, `receive`, `verify`, `list`, `prune`
/// and `tape` work on tape destinations.
fn refuse_tape_dest(cli: &Cli, config: &Config, all_dests: bool) -> Result<()> {
    if all_dests
        || !cli.command.reaches_archive()
        || matches!(
            cli.command,
            Command::Tape { .. }
                | Command::Send { .. }
                | Command::Receive { .. }
                | Command::Verify { .. }
                | Command::List { .. }
                | Command::Prune { .. }
        )
    {
        return Ok(());
    }
    if let Some(t) = &config.tape {
        anyhow::bail!(
            "destination {} is a tape (tape = {}): `{}` works on archives, not on tape \
             destinations; `send`, `receive`, `verify`, `list`, `prune` and `sparsebak tape` \
             work on tapes",
            config.dest,
            t.device_label(),
            cli.command.name()
        );
    }
    Ok(())
}

/// The configuration for the destination `--dest` names (`default` when not given),
/// for the commands that reach an archive: one place, so every command body keeps
/// reading `config.destdir` and the rest. An unknown name is bad usage (exit 2),
/// naming the configured destinations.
fn choose_dest(cli: &Cli, config: Config, all_dests: bool, path: &std::path::Path) -> Config {
    if all_dests || !cli.command.reaches_archive() {
        return config;
    }
    let name = cli.dest.as_deref().unwrap_or(crate::metadir::DEFAULT_DEST);
    match config.for_dest(name) {
        Ok(c) => c,
        Err(_) => {
            let hint = if cli.dest.is_none() {
                "; name one with --dest=NAME"
            } else {
                ""
            };
            crate::cli::usage_error(
                cli.command.name(),
                &format!(
                    "no destination named {name:?} in {} (configured: {}){hint}",
                    path.display(),
                    config.dest_names().join(", ")
                ),
            )
            .exit()
        }
    }
}

/// The volume a command names (the command line requires one; this says which usage
/// should have been followed if it is missing all the same).
fn need_volume(v: &Option<String>, usage: &str) -> Result<String> {
    v.clone()
        .with_context(|| format!("name the volume: `sparsebak {usage}`"))
}

/// Human-readable byte count.
pub fn human(bytes: u64) -> String {
    indicatif::HumanBytes(bytes).to_string()
}

/// The current time, as selectors and schedules see it, in the local time zone.
/// `SPARSEBAK_NOW` overrides it, so tests of relative selectors and schedules are
/// repeatable: `@SECONDS` since the epoch, or a local time `YYYYMMDD-HHMMSS`.
pub fn now() -> chrono::DateTime<chrono::Local> {
    use chrono::TimeZone;
    std::env::var("SPARSEBAK_NOW")
        .ok()
        .and_then(|s| match s.strip_prefix('@') {
            Some(secs) => secs
                .parse::<i64>()
                .ok()
                .and_then(|n| chrono::Local.timestamp_opt(n, 0).single()),
            None => crate::selector::SessionTime::from_id(&s, &chrono::Local)
                .map(|t| t.time.with_timezone(&chrono::Local)),
        })
        .unwrap_or_else(chrono::Local::now)
}

/// The sessions `ids` of `vol` with the times they were taken, read from their info
/// files only when `needed` (selectors that name no time do without).
pub fn timed(
    vol: &sparsebak_format::volume::VolumeArchive,
    ids: &[String],
    needed: bool,
) -> Vec<crate::selector::SessionTime> {
    if needed {
        crate::selector::session_times(vol, ids, &chrono::Local)
    } else {
        ids.iter()
            .filter_map(|id| crate::selector::SessionTime::from_id(id, &chrono::Local))
            .collect()
    }
}

/// The session `--session` names (a single one), or the latest of `sessions`.
pub fn pick_session(
    ctx: &Ctx,
    vol: &sparsebak_format::volume::VolumeArchive,
    sessions: &[String],
) -> Result<String> {
    match &ctx.session {
        None => crate::selector::resolve(
            &crate::selector::Selector::Latest,
            &timed(vol, sessions, false),
        )
        .with_context(|| format!("volume {}", vol.name)),
        Some(s) => resolve_session(s, &now(), vol, sessions),
    }
}

/// The one session of `sessions` that the selector `spec` names at time `now`.
pub fn resolve_session(
    spec: &str,
    now: &chrono::DateTime<chrono::Local>,
    vol: &sparsebak_format::volume::VolumeArchive,
    sessions: &[String],
) -> Result<String> {
    let sel = crate::selector::parse(spec, now)?;
    crate::selector::resolve(&sel, &timed(vol, sessions, sel.needs_times()))
        .with_context(|| format!("volume {}", vol.name))
}
