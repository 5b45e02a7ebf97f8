//! Writes the seed corpus of every fuzz target: valid inputs made by the format's own
//! writers (`sparsebak_format::fuzzing::seeds`), one file each, into
//! `corpus/<target>/` (or the folder given as the first argument).

use std::path::PathBuf;

use sparsebak_format::fuzzing;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("corpus"));
    let scratch = tempfile::tempdir()?;
    let seeds = fuzzing::seeds(scratch.path())?;
    for (i, (kind, data)) in seeds.iter().enumerate() {
        let dir = root.join(kind.name());
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("seed-{i:03}")), data)?;
    }
    println!("{} seeds written under {}", seeds.len(), root.display());
    Ok(())
}
