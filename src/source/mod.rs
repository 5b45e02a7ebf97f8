//! Volume sources: where a volume's bytes come from and how its changes are found.

pub mod fiemap;
pub mod lvm;
pub mod thin_delta;
