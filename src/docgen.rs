//! Man pages and shell completions, generated from the command-line definition
//! (`sparsebak __generate DIR`, run when packaging), so they never drift from it.
//!
//! - `DIR/man/sparsebak.8`, one `sparsebak-COMMAND.8` per command (and
//!   `sparsebak-tape-ls.8`, ... for the commands of `key` and `tape`);
//! - `DIR/completions/sparsebak.bash`, `_sparsebak` (zsh), `sparsebak.fish`.
//!
//! Volume names are completed from the configuration: the scripts run the hidden
//! `sparsebak [-c PATH] __complete-volumes`, which prints them one a line.
//!
//! Both helpers are commands of their own small parser, not of [`Cli`]: they appear
//! in no help, page or completion.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::cli::Cli;

/// The helpers' command line: `sparsebak [-c PATH] __generate DIR | __complete-volumes`.
#[derive(Debug, Parser)]
#[command(name = "sparsebak")]
pub struct HelperCli {
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    helper: Helper,
}

#[derive(Debug, Subcommand)]
enum Helper {
    /// Write the man pages and the bash, zsh and fish completions into DIR.
    #[command(name = "__generate")]
    Generate {
        /// Man pages go to DIR/man, completions to DIR/completions.
        dir: PathBuf,
    },
    /// Print the configured volume names, one a line.
    #[command(name = "__complete-volumes")]
    CompleteVolumes,
}

/// The helper names.
const HELPERS: &[&str] = &["__generate", "__complete-volumes"];

/// Whether `args` (without the program name) ask for a helper: its name is the first
/// word after the `-c PATH` option, if any (a volume may be named `__generate`, but
/// never stands first).
pub fn is_helper(args: &[OsString]) -> bool {
    let mut i = 0;
    while let Some(a) = args.get(i).and_then(|a| a.to_str()) {
        match a {
            "-c" | "--config" => i += 2,
            _ if a.starts_with("--config=") || (a.starts_with("-c") && a.len() > 2) => i += 1,
            _ => return HELPERS.contains(&a),
        }
    }
    false
}

/// Run the helper `HelperCli` parses from the command line.
pub fn run_helper(cli: HelperCli) -> Result<()> {
    match cli.helper {
        Helper::Generate { dir } => write_all(&dir),
        Helper::CompleteVolumes => {
            let path = cli
                .config
                .or_else(|| std::env::var_os("SPARSEBAK_CONFIG").map(PathBuf::from))
                .unwrap_or_else(|| PathBuf::from(crate::commands::DEFAULT_CONFIG));
            let config = crate::config::Config::load(&path).context("loading the configuration")?;
            for (name, _) in &config.volumes {
                if !crate::progress::out(name) {
                    break;
                }
            }
            Ok(())
        }
    }
}

/// The name the scripts complete and the pages are named after.
const BIN: &str = "sparsebak";

/// The description of sparsebak(8) (`--help` keeps its one line).
const MAN_DESCRIPTION: &str = "Fast, incremental, volume-level backups of Linux disk \
volumes. Volumes come from thin LVM (tick/tock snapshots and thin_delta), reflink \
image files on Btrfs or XFS (reflink snapshots and FIEMAP), or plain files and block \
devices (found changed by hashing); only the chunks that changed are stored, in an \
archive of compressed (and by default encrypted) chunk files with a SHA-256 manifest \
per session, on this machine, over ssh, in another Qubes VM, or on tape.\n\n\
The configuration is described in sparsebak.ini(5); each command has its own page, \
sparsebak-COMMAND(8). Typical use: `monitor` every few minutes, `send` nightly, \
`prune --auto` and `verify` weekly (the package's systemd timers do this).";

/// The exit statuses, as a man page section (roff).
pub const EXIT_STATUS_ROFF: &str = r#".SH "EXIT STATUS"
.TP
.B 0
Success.
.TP
.B 1
Failure: the command could not do its work; a one\-line reason is printed on
standard error.
.TP
.B 2
Bad usage: an unknown option or command, a value that cannot be understood, a
destination that is not configured.
.TP
.B 3
Nothing to do: \fBsend \-\-dest=all\fR found no destination present (none
mounted or reachable), so nothing was sent.
.TP
.B 4
\fBverify\fR ran to the end and found damage (each problem is named on standard
error); a verify that could not run exits 1.
.PP
A run stopped by SIGINT or SIGTERM exits with 128 + the signal number.
"#;

/// What every page ends with.
const SEE_ALSO_ROFF: &str = r#".SH "SEE ALSO"
\fBsparsebak\fR(8), \fBsparsebak.ini\fR(5), \fBspbk\-assemble\fR(8)
"#;

/// The top page's files and environment.
const FILES_ROFF: &str = r#".SH ENVIRONMENT
.TP
.B SPARSEBAK_CONFIG
The configuration file when \fB\-c\fR is not given.
.TP
.B SPARSEBAK_PASSPHRASE
The passphrase of an encrypted archive (taken out of the environment at start,
so no child process sees it).
.TP
.B SPARSEBAK_LOG
A log filter (\fBinfo\fR, \fBdebug\fR, ...) instead of the one \fB\-q\fR and
\fB\-v\fR choose.
.SH FILES
.TP
.I /etc/sparsebak/sparsebak.ini
The configuration (see \fBsparsebak.ini\fR(5)).
.TP
.I /var/lib/sparsebak
The source\-side state (\fBmetadir\fR): delta maps, the copies of each session's
info and manifest, the catalog.
.TP
.I /usr/share/doc/sparsebak/sparsebak.ini.example
A commented example configuration.
"#;

/// Write the man pages and completions into `dir` (created if needed).
pub fn write_all(dir: &Path) -> Result<()> {
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut cmd = Cli::command()
        .disable_help_subcommand(true)
        .long_about(MAN_DESCRIPTION);
    cmd.build();
    man_pages(&cmd, &man)?;
    for (shell, file) in [
        (Shell::Bash, "sparsebak.bash"),
        (Shell::Zsh, "_sparsebak"),
        (Shell::Fish, "sparsebak.fish"),
    ] {
        let text = completion(shell)?;
        write(&comp.join(file), text.as_bytes())?;
    }
    Ok(())
}

/// One page for `cmd` and one for each of its visible commands, recursively.
fn man_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        man_pages(sub, dir)?;
    }
    let page = clap_mangen::Man::new(cmd.clone())
        .section("8")
        .manual("System Administration");
    let mut text = Vec::new();
    page.render(&mut text)
        .with_context(|| format!("rendering the man page of {}", cmd.get_name()))?;
    let top = cmd.get_display_name().unwrap_or(cmd.get_name()) == BIN;
    if top {
        text.extend_from_slice(FILES_ROFF.as_bytes());
    }
    text.extend_from_slice(EXIT_STATUS_ROFF.as_bytes());
    text.extend_from_slice(SEE_ALSO_ROFF.as_bytes());
    write(&dir.join(page.get_filename()), &text)
}

/// The visible commands that take volume names, and the options (of any command)
/// that take a value: the completions offer volume names for the first, and never
/// right after the second.
fn volume_commands_and_value_options() -> (Vec<String>, Vec<String>) {
    let mut cmd = Cli::command();
    cmd.build();
    let mut with_volumes = Vec::new();
    let mut value_opts = std::collections::BTreeSet::new();
    let mut all: Vec<&clap::Command> = vec![&cmd];
    let mut i = 0;
    while i < all.len() {
        let c = all[i];
        i += 1;
        all.extend(c.get_subcommands().filter(|s| !s.is_hide_set()));
        for a in c.get_arguments() {
            if a.is_positional() {
                if i > 1 && matches!(a.get_id().as_str(), "volumes" | "volume" | "old") {
                    with_volumes.push(c.get_name().to_string());
                }
                continue;
            }
            if !a.get_action().takes_values() {
                continue;
            }
            if let Some(s) = a.get_short() {
                value_opts.insert(format!("-{s}"));
            }
            if let Some(l) = a.get_long() {
                value_opts.insert(format!("--{l}"));
            }
        }
    }
    with_volumes.dedup();
    (with_volumes, value_opts.into_iter().collect())
}

/// The completion script for `shell`: clap's, plus volume names from the config.
fn completion(shell: Shell) -> Result<String> {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, BIN, &mut out);
    let mut text = String::from_utf8(out).context("the generated completion is not UTF-8")?;
    let (vol_cmds, value_opts) = volume_commands_and_value_options();
    let vol_cmds = vol_cmds.join(" ");
    let value_opts = value_opts.join(" ");
    match shell {
        Shell::Bash => {
            // clap registers `_sparsebak`; a wrapper puts volume names in its place
            // where a volume is expected.
            let reg = text
                .rfind("if [[ \"${BASH_VERSINFO[0]}\"")
                .context("the bash completion has no registration block")?;
            text.truncate(reg);
            text.push_str(
                &BASH_VOLUMES
                    .replace("@VOL_CMDS@", &vol_cmds)
                    .replace("@VALUE_OPTS@", &value_opts),
            );
        }
        Shell::Zsh => {
            // A volume argument completes with `_sparsebak_volumes`, not files.
            let mut n = 0;
            let mut fixed = String::with_capacity(text.len());
            for line in text.split_inclusive('\n') {
                let is_vol = [
                    "':volume -- ",
                    "'::volume -- ",
                    "'::volumes -- ",
                    "'*::volumes -- ",
                    "':old -- ",
                ]
                .iter()
                .any(|p| line.trim_start().starts_with(p));
                if is_vol && line.trim_end().ends_with(":_default' \\") {
                    fixed.push_str(&line.replacen(":_default' \\", ":_sparsebak_volumes' \\", 1));
                    n += 1;
                } else {
                    fixed.push_str(line);
                }
            }
            anyhow::ensure!(n > 0, "no volume argument found in the zsh completion");
            let at = fixed
                .rfind("if [ \"$funcstack[1]\" = \"_sparsebak\" ]")
                .context("the zsh completion has no entry block")?;
            fixed.insert_str(at, ZSH_VOLUMES);
            text = fixed;
        }
        Shell::Fish => {
            text.push_str(&FISH_VOLUMES.replace("@VOL_CMDS@", &vol_cmds));
        }
        _ => {}
    }
    Ok(text)
}

const BASH_VOLUMES: &str = r#"
# Volume names come from the configuration: `sparsebak [-c PATH] __complete-volumes`
# prints them (with the -c/--config given on the command line, if any).
_sparsebak_volumes() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD-1]}
    [[ $cur == -* ]] && return 0
    case " @VALUE_OPTS@ " in *" $prev "*) return 0 ;; esac
    local i w sub= cfg=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        case $w in
            -c | --config) cfg=(-c "${COMP_WORDS[i+1]}"); ((i++)); continue ;;
            --config=*) cfg=(-c "${w#--config=}"); continue ;;
            -c?*) cfg=(-c "${w#-c}"); continue ;;
            -*) case " @VALUE_OPTS@ " in *" $w "*) ((i++)) ;; esac; continue ;;
        esac
        [[ -z $sub ]] && sub=$w
    done
    [[ -n $sub ]] || return 0
    case " @VOL_CMDS@ " in *" $sub "*) ;; *) return 0 ;; esac
    local vols
    vols=$(sparsebak "${cfg[@]}" __complete-volumes 2>/dev/null) || return 0
    COMPREPLY=($(compgen -W "$vols" -- "$cur"))
}

_sparsebak_complete() {
    _sparsebak "$@"
    _sparsebak_volumes
}

if [[ "${BASH_VERSINFO[0]}" -eq 4 && "${BASH_VERSINFO[1]}" -ge 4 || "${BASH_VERSINFO[0]}" -gt 4 ]]; then
    complete -F _sparsebak_complete -o nosort -o bashdefault -o default sparsebak
else
    complete -F _sparsebak_complete -o bashdefault -o default sparsebak
fi
"#;

const ZSH_VOLUMES: &str = r#"# Volume names from the configuration (with the -c/--config given, if any).
(( $+functions[_sparsebak_volumes] )) ||
_sparsebak_volumes() {
    local -a cfg vols
    local i
    for (( i = 2; i < CURRENT; i++ )); do
        case $words[i] in
            -c|--config) cfg=(-c "$words[i+1]") ;;
            --config=*) cfg=(-c "${words[i]#--config=}") ;;
        esac
    done
    vols=(${(f)"$(sparsebak $cfg __complete-volumes 2>/dev/null)"})
    compadd -a vols
}

"#;

const FISH_VOLUMES: &str = r#"
# Volume names from the configuration (with the -c/--config given, if any).
function __sparsebak_volumes
    set -l args (commandline -opc)
    set -l cfg
    set -l n (count $args)
    for i in (seq 2 $n)
        switch $args[$i]
            case -c --config
                if test $i -lt $n
                    set cfg -c $args[(math $i + 1)]
                end
            case '--config=*'
                set cfg -c (string replace -- --config= '' $args[$i])
        end
    end
    sparsebak $cfg __complete-volumes 2>/dev/null
end
complete -c sparsebak -n "__fish_seen_subcommand_from @VOL_CMDS@" -f -a "(__sparsebak_volumes)"
"#;

/// Write `bytes` to `path` (a generated file: no fsync needed, it is made again).
fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))?;
    // Readable by all, like any installed page or script (the process umask is private).
    use std::os::unix::fs::PermissionsExt;
    f.set_permissions(std::fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_helper_is_the_first_word_after_the_config_option() {
        for yes in [
            &["__generate", "/d"][..],
            &["__complete-volumes"],
            &["-c", "x.ini", "__complete-volumes"],
            &["--config", "x.ini", "__complete-volumes"],
            &["--config=x.ini", "__complete-volumes"],
            &["-cx.ini", "__complete-volumes"],
        ] {
            assert!(is_helper(&args(yes)), "{yes:?}");
        }
        for no in [
            &["send", "__generate"][..],
            &["-c", "__generate", "send"],
            &["-v", "__complete-volumes"],
            &[],
            &["-c"],
        ] {
            assert!(!is_helper(&args(no)), "{no:?}");
        }
    }
}
