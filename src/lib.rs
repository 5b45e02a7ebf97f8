//! sparsebak: fast, incremental, volume-level backups of Linux disk volumes.
//!
//! Layers, top to bottom:
//! - [`commands`]: one module per CLI command; they orchestrate and print.
//! - [`source`]: where volumes come from and how their changes are found (plain files
//!   and devices by hashing, thin LVM by `thin_delta`, reflink images by FIEMAP).
//! - [`delta_map`]: the persistent per-volume bitmap of changed chunks.
//! - [`archive`]: writing sessions into the archive, locking, the source-side copies.
//! - [`pipeline`]: read, hash, compress and write chunks on all cores.
//! - `sparsebak_format` (separate crate): the on-disk format, shared with
//!   `spbk-assemble`.
//!
//! `docs/DESIGN.md` gives the architecture and the key choices, `docs/INTERNALS.md`
//! how each part works and why; `docs/FORMAT.md` the bytes.

pub mod archive;
pub mod blockdev;
pub mod catalog;
pub mod cli;
pub mod commands;
pub mod config;
pub mod delta_map;
pub mod destination;
pub mod devpath;
pub mod diff;
pub mod docgen;
pub mod durable;
pub mod error;
pub mod exit;
/// Crash points for tests (in the format crate, so that its readers and writers
/// have them too).
pub use sparsebak_format::failpoint;
pub mod lock;
pub mod metadir;
pub mod mount;
pub mod passphrase;
pub mod pipeline;
pub mod progress;
pub mod receive;
pub mod remote;
pub mod rename;
pub mod retention;
pub mod scan;
pub mod send;
pub mod session_id;
pub mod source;
pub mod space;
pub mod status;
pub mod stream_send;
pub mod tape;
pub mod zeroing;

pub use error::{Error, Result};
pub use sparsebak_format as format;
/// Session selectors live with the format, so `spbk-assemble` shares them.
pub use sparsebak_format::selector;
