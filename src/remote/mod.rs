//! Remote archives: the archive lives on another machine (over ssh) or in another
//! Qubes VM (over qrexec), and `sparsebak serve` runs there.
//!
//! - [`proto`]: the frames and the hello (docs/FORMAT.md, "Remote protocol");
//! - [`transport`]: the `destvm` forms and the exact argv of ssh / qvm-run;
//! - [`serve`]: the far side;
//! - [`client`]: the near side.

pub mod client;
pub mod destination;
pub mod fs;
pub mod fsserve;
pub mod proto;
pub mod serve;
pub mod store;
pub mod transport;
pub mod wire;

pub use client::{Connection, RemoteError};
pub use destination::RemoteDestination;
pub use fs::RemoteFs;
pub use store::RemoteStore;
pub use transport::{parse_destvm, RemoteSpec, Transport};
