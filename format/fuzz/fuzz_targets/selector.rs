//! Fuzz target: `Kind::Selector` of `sparsebak_format::fuzzing` (see the README,
//! "Fuzzing"). A panic, or an allocation above `-malloc_limit_mb`, is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sparsebak_format::fuzzing::Kind;

fuzz_target!(|data: &[u8]| {
    let _ = Kind::Selector.parse(data);
});
