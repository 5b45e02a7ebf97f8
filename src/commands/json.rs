//! `--json`: every command prints one JSON document on standard output (or one per
//! line, for per-volume results), each with `"version"`; docs/JSON.md describes them
//! and docs/json/*.schema.json are their schemas.

use serde::Serialize;

/// The version of every `--json` document; raised when a field changes meaning or
/// goes away (new fields may appear without it).
pub const VERSION: u32 = 1;

/// Print `v` as one line of JSON.
pub fn print<T: Serialize + ?Sized>(v: &T) {
    match serde_json::to_string(v) {
        Ok(s) => {
            crate::progress::out(&s);
        }
        // Only a map with non-string keys fails to serialize; none is printed here.
        Err(e) => crate::progress::err_line(&format!("sparsebak: error: JSON output: {e}")),
    }
}
