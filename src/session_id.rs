//! Session IDs: `YYYYMMDD-HHMMSS` in local time, unique and strictly increasing per
//! volume. When the clock gives an ID not after the latest one (two sends in one second,
//! a clock stepped back), the next free second after the latest is used instead.

use chrono::{Local, NaiveDateTime, Timelike};

pub const FORMAT: &str = "%Y%m%d-%H%M%S";

/// The ID for a new session taken at `now`, after `latest`.
pub fn next_id(now: NaiveDateTime, latest: Option<&str>) -> String {
    // IDs have whole seconds: compare at that resolution.
    let mut t = now.with_nanosecond(0).unwrap_or(now);
    if let Some(l) = latest.and_then(parse) {
        if t <= l {
            t = l + chrono::Duration::seconds(1);
        }
    }
    t.format(FORMAT).to_string()
}

/// The time an ID names. (chrono's `%Y` is greedy and would eat the whole date, so
/// the fields are cut out by position.)
pub fn parse(id: &str) -> Option<NaiveDateTime> {
    if !sparsebak_format::layout::is_session_id(id) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| id[r].parse::<u32>().ok();
    let date = chrono::NaiveDate::from_ymd_opt(n(0..4)? as i32, n(4..6)?, n(6..8)?)?;
    date.and_hms_opt(n(9..11)?, n(11..13)?, n(13..15)?)
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
        let t = parse("20261123-120000").unwrap();
        assert_eq!(parse("20261323-120000"), None);
        assert_eq!(next_id(t, None), "20261123-120000");
        assert_eq!(next_id(t, Some("20261123-120000")), "20261123-120001");
        let later_in_second = t + chrono::Duration::milliseconds(700);
        assert_eq!(
            next_id(later_in_second, Some("20261123-120000")),
            "20261123-120001"
        );
        assert_eq!(next_id(t, Some("20261123-235959")), "20261124-000000");
        assert_eq!(next_id(t, Some("20261123-110000")), "20261123-120000");
    }
}
