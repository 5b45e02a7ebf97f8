//! Tape: the drive and changer layers a tape destination is built on.
//!
//! - [`drive`]: the [`TapeDrive`](drive::TapeDrive) trait (fixed-size blocks,
//!   filemarks, positioning, status) and its typed errors.
//! - [`st`]: a real drive through the Linux `st` driver (`/dev/nst0`).
//! - [`virtual_library`] and [`virtual_drive`]: a library of cartridges kept in files
//!   in a folder, behind the same traits, for tests and for disk-to-disk staging.
//! - [`changer`]: the [`Changer`](changer::Changer) trait, `mtx` for a real library and
//!   the virtual one.
//! - [`label`]: the label every tape starts with (file 0).
//! - [`buffer`]: the buffer thread that keeps the drive streaming.
//! - [`writer`] and [`reader`]: a tape file (one stream) written at the end of data,
//!   spanning tapes at the early warning, and read back by block position.
//!
//! - [`session`]: volume sessions sent to and read from a tape destination, through
//!   a bounded [`pipe`] between the stream and the drive's threads, recorded in the
//!   catalog by block position.

pub mod buffer;
pub mod catalog_copy;
pub mod changer;
pub mod drive;
pub mod label;
pub mod open;
pub mod pipe;
pub mod reader;
pub mod scan;
pub mod session;
pub mod st;
pub mod virtual_drive;
pub mod virtual_library;
pub mod writer;

pub use changer::{Changer, ChangerError, Inventory};
pub use drive::{DriveStatus, ReadOutcome, TapeDrive, TapeError};
pub use label::{LabelError, TapeLabel};
