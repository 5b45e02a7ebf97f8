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
    let stdin = std::io::stdin().lock();
    let stdout = std::io::stdout().lock();
    crate::remote::serve::serve(root, stdin, stdout)?;
    Ok(())
}
