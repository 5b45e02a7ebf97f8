//! `sparsebak key passwd|export|import`: the key file of an encrypted archive
//! (`sparsebak.key` at its root, the master key wrapped under the passphrase),
//! reached through the destination, so the same for a local and a remote archive.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sparsebak_format::crypto::keyfile::MAX_KEY_FILE;
use sparsebak_format::crypto::{paper, KeyFile, Passphrase, KEY_FILE};

use super::Ctx;
use crate::archive::Archive;
use crate::cli::KeyAction;
use crate::passphrase::{self, Purpose};

/// The longest exported key (either form) `key import` reads.
const MAX_IMPORT: u64 = 64 << 10;

pub fn run(ctx: &Ctx, action: &KeyAction) -> Result<()> {
    match action {
        KeyAction::Passwd { new_passfile } => passwd(ctx, new_passfile.as_deref()),
        KeyAction::Export { paper } => export(ctx, *paper),
        KeyAction::Import { file, force } => import(ctx, file.as_deref(), *force),
    }
}

/// The archive, which must be encrypted, and its identity. `action` (for a change)
/// also requires it to be writable.
fn open(ctx: &Ctx, action: Option<&str>) -> Result<(Archive, String)> {
    if action.is_some() {
        ctx.config.check_destination(true)?;
    }
    let archive = Archive::open_locked(&ctx.config, action.is_some())?;
    if let Some(action) = action {
        archive.require_writable(action)?;
    }
    let root = archive.root.display().to_string();
    let marker = archive
        .marker()?
        .with_context(|| format!("no archive at {root}"))?;
    if !marker.is_sealed() {
        bail!(
            "the archive at {root} is not encrypted (format {}): it has no key",
            marker.format
        );
    }
    let id = marker
        .id
        .with_context(|| format!("the archive at {root} has no identity in its marker"))?;
    Ok((archive, id))
}

/// Where the key file is, for messages.
fn key_path(archive: &Archive) -> PathBuf {
    archive.root.join(KEY_FILE)
}

/// The archive's key file, parsed and checked to be this archive's.
fn current_key(archive: &Archive, id: &str) -> Result<KeyFile> {
    let path = key_path(archive);
    let Some(bytes) = archive.key_file()? else {
        bail!(
            "the archive at {} is encrypted but has no key file {KEY_FILE}: put back a copy \
             with `sparsebak key import`",
            archive.root.display()
        );
    };
    let key = KeyFile::parse(&bytes).with_context(|| format!("{}", path.display()))?;
    if key.archive != id {
        bail!(
            "{}: the key of archive {}, not of this archive ({id})",
            path.display(),
            key.archive
        );
    }
    Ok(key)
}

/// Unwrap `key` with `pass`, saying which key a wrong passphrase failed on.
fn unlock(
    key: &KeyFile,
    pass: &Passphrase,
    what: &str,
) -> Result<sparsebak_format::crypto::MasterKey> {
    key.unwrap_key(pass).with_context(|| what.to_string())
}

fn passwd(ctx: &Ctx, new_passfile: Option<&Path>) -> Result<()> {
    let (archive, id) = open(ctx, Some("key passwd"))?;
    let key = current_key(&archive, &id)?;
    let path = key_path(&archive);
    let old = passphrase::obtain(&ctx.config, Purpose::Unlock)?;
    // A wrong current passphrase is said before a new one is asked for.
    let master = unlock(&key, &old, &path.display().to_string())?;
    drop(old);
    let what = format!("the archive at {}", archive.root.display());
    let new = passphrase::obtain_new(new_passfile, &what)?;
    let rewrapped = KeyFile::wrap(&key.archive, &master, &new, key.kdf)
        .with_context(|| format!("{}", path.display()))?;
    drop(master);
    let text = rewrapped.render();
    archive.put_key_file(text.as_bytes())?;
    // What is there now is what was meant to be written.
    if archive.key_file()?.as_deref() != Some(text.as_bytes()) {
        bail!(
            "{}: the key file read back differs from the one written",
            path.display()
        );
    }
    crate::progress::summary(&format!(
        "the passphrase of {what} is changed ({} rewritten; copies of the old key file \
         still open with the old passphrase)",
        path.display()
    ));
    Ok(())
}

fn export(ctx: &Ctx, paper_form: bool) -> Result<()> {
    let (archive, id) = open(ctx, None)?;
    let key = current_key(&archive, &id)?;
    let text = if paper_form {
        paper::export(&key)
    } else {
        key.render()
    };
    for line in text.lines() {
        crate::progress::out(line);
    }
    Ok(())
}

/// Read what `key import` is given: FILE, or standard input.
fn read_import(file: Option<&Path>) -> Result<String> {
    let mut bytes = Vec::new();
    let what = match file {
        Some(p) => {
            let f = std::fs::File::open(p).with_context(|| format!("{}", p.display()))?;
            f.take(MAX_IMPORT + 1)
                .read_to_end(&mut bytes)
                .with_context(|| format!("{}", p.display()))?;
            p.display().to_string()
        }
        None => {
            std::io::stdin()
                .lock()
                .take(MAX_IMPORT + 1)
                .read_to_end(&mut bytes)
                .context("reading the key from standard input")?;
            "standard input".to_string()
        }
    };
    if bytes.len() as u64 > MAX_IMPORT {
        bail!("{what}: longer than {MAX_IMPORT} bytes, not an exported key");
    }
    String::from_utf8(bytes).with_context(|| format!("{what}: not text, not an exported key"))
}

/// A key file's text or its paper form.
fn parse_import(text: &str) -> Result<KeyFile> {
    let first = text.lines().map(str::trim).find(|l| !l.is_empty());
    let paper_form = first.is_some_and(|l| {
        l.to_ascii_lowercase()
            .split_whitespace()
            .next()
            .is_some_and(|w| w == "sparsebak-key-paper")
    });
    let key = if paper_form {
        paper::import(text)?
    } else {
        if text.len() > MAX_KEY_FILE {
            bail!("longer than {MAX_KEY_FILE} bytes, not a key file");
        }
        KeyFile::parse(text.trim_start().as_bytes())?
    };
    Ok(key)
}

fn import(ctx: &Ctx, file: Option<&Path>, force: bool) -> Result<()> {
    let (archive, id) = open(ctx, Some("key import"))?;
    let path = key_path(&archive);
    let from = file.map_or("standard input".to_string(), |p| p.display().to_string());
    let text = read_import(file)?;
    let key = parse_import(&text).with_context(|| from.clone())?;
    if key.archive != id {
        bail!(
            "{from}: the key of archive {}, but the archive at {} is archive {id}",
            key.archive,
            archive.root.display()
        );
    }
    let bytes = key.render();
    let existing = archive.key_file()?;
    if let Some(old) = &existing {
        if old.as_slice() == bytes.as_bytes() {
            crate::progress::summary(&format!(
                "{} is already this key file; nothing changed",
                path.display()
            ));
            return Ok(());
        }
        if !force {
            bail!(
                "{} exists and differs from the key in {from}; nothing was changed (--force \
                 replaces it: the archive can then only be read with the key it was written \
                 with, so keep a copy of the current one first: `sparsebak key export`)",
                path.display()
            );
        }
    }
    let pass = passphrase::obtain(&ctx.config, Purpose::Unlock)?;
    unlock(&key, &pass, &from)?;
    drop(pass);
    archive.put_key_file(bytes.as_bytes())?;
    crate::progress::summary(&format!(
        "{} {} from {from}",
        path.display(),
        if existing.is_some() {
            "replaced"
        } else {
            "put back"
        }
    ));
    Ok(())
}
