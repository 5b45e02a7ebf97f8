//! Session IDs: `YYYYMMDD-HHMMSS` in local time, unique and strictly increasing per
//! volume. When the clock gives an ID not after the latest one (two sends in one second,
//! a clock stepped back), the next free second after the latest is used instead.

use chrono::{Local, NaiveDateTime};

pub const FORMAT: &str = "%Y%m%d-%H%M%S";

/// The ID for a new session taken at `now`, after `latest`.
pub fn next_id(now: NaiveDateTime, latest: Option<&str>) -> String {
    let mut t = now;
    if let Some(l) = latest.and_then(|l| NaiveDateTime::parse_from_str(l, FORMAT).ok()) {
        if t <= l {
            t = l + chrono::Duration::seconds(1);
        }
    }
    t.format(FORMAT).to_string()
}

/// The ID for a session taken now.
pub fn next_id_now(latest: Option<&str>) -> String {
    next_id(Local::now().naive_local(), latest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing() {
        let t = NaiveDateTime::parse_from_str("20261123-120000", FORMAT).unwrap();
        assert_eq!(next_id(t, None), "20261123-120000");
        assert_eq!(next_id(t, Some("20261123-120000")), "20261123-120001");
        assert_eq!(next_id(t, Some("20261123-235959")), "20261124-000000");
        assert_eq!(next_id(t, Some("20261123-110000")), "20261123-120000");
    }
}
