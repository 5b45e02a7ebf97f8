//! The sparsebak archive format, shared by `sparsebak` and `spbk-assemble`.
//!
//! An archive is a directory holding one directory per volume; a volume holds one
//! directory per session (`S_<YYYYMMDD-HHMMSS>`); a session holds an `info` file, a
//! `manifest` and the compressed chunks that changed in it, spread over prefix folders
//! so that no folder grows huge. The *view* of a session (the volume as it was then) is
//! the merge of the manifests of all sessions up to it, newest entry winning, cut at
//! every later session's volume size. `docs/FORMAT.md` describes the bytes.
//!
//! Everything here only reads or describes the format; writing sessions, locking and
//! pruning live in the main crate. One exception, shared by both binaries for the same
//! reason: the allocator settings of the chunk pipelines (`alloc`).

pub mod alloc;
pub mod archive_fs;
pub mod chunk;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod failpoint;
pub mod fuzzing;
pub mod info;
pub mod layout;
pub mod limits;
pub mod manifest;
pub mod marker;
pub mod output;
pub mod passphrase;
pub mod restore;
pub mod selector;
pub mod store;
pub mod stream;
pub mod tarsession;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod view;
pub mod volume;

pub use error::{FormatError, IndexFault, Result};

/// A SHA-256 digest.
pub type Hash = [u8; 32];

/// Version of the archive format written by this code (root marker, info files).
pub const FORMAT_VERSION: u32 = 1;
