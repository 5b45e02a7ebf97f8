//! Session selectors: the text a user gives to `--session` (one session) or to
//! `prune` (a range of sessions), and how it is matched against a volume's sessions.
//!
//! Sessions are named by IDs of the form `YYYYMMDD-HHMMSS` in local time. IDs are
//! unique and strictly increasing per volume, so their text order is their time
//! order. Everything here is pure: the current time is always a parameter, never
//! read from the clock, and nothing touches the file system.
//!
//! # Forms
//!
//! Each selector (and each side of a range) is one of, case-insensitively and with
//! surrounding whitespace ignored:
//!
//! | form | names |
//! |------|-------|
//! | `20261120-140000` | exactly that session; it must exist |
//! | `latest` (or `newest`) | the newest session |
//! | `oldest` | the oldest session |
//! | `now` | the instant `now` |
//! | `today`, `yesterday` | that whole calendar day |
//! | `2026-11-20` | that whole calendar day |
//! | `2026-11-20 14:00` (or `2026-11-20T14:00`) | that whole minute |
//! | `2026-11-20 14:00:30` (or with `T`) | that second |
//! | `N minutes\|hours\|days\|weeks\|months\|years ago` | the instant `now` minus that much |
//!
//! In the relative form the unit may be singular or plural, and `N` may be `a` or
//! `an` (`a week ago`, `an hour ago`). Months and years are calendar months: one
//! month before March 31 is the last day of February. A week is seven days.
//!
//! # Single selectors
//!
//! A time-based selector picks the NEWEST session at or before the LAST instant it
//! names. A day or a minute names its last second, so `2026-11-20` picks the last
//! session of November 20 or, if there is none that day, the newest one before it;
//! `2026-11-20 14:00` picks a session taken during 14:00 (e.g. `20261120-140012`) or
//! the newest before it; `yesterday` picks the last session of yesterday or the
//! newest before it. Relative forms (`3 days ago`) are instants.
//!
//! # Ranges
//!
//! A range is `START,END`, both sides inclusive. A day or minute as START means its
//! first second, as END its last second, so `2026-11-01,2026-11-30` covers all of
//! November and `yesterday,yesterday` all of yesterday. Instants (`now`, relative
//! forms, full date-times with seconds, exact IDs) mean themselves on either side;
//! `oldest` and `latest` mean the times of the oldest and newest session. A range
//! that contains no session resolves to an empty list, which is not an error; a
//! START after the END is an error.

use std::fmt;

use chrono::{Days, Months, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta};

/// `chrono` format string of a session ID.
pub const ID_FORMAT: &str = "%Y%m%d-%H%M%S";

/// The accepted forms, quoted by parse errors.
pub const ACCEPTED_FORMS: &str = "accepted forms: a session ID (YYYYMMDD-HHMMSS), \
    `latest`, `oldest`, `now`, `today`, `yesterday`, a date (YYYY-MM-DD), \
    a date and time (YYYY-MM-DD HH:MM or YYYY-MM-DD HH:MM:SS, also with `T` between), \
    or `N minutes|hours|days|weeks|months|years ago`";

/// Why a selector could not be parsed or resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// The selector text is empty.
    #[error("empty session selector; {ACCEPTED_FORMS}")]
    Empty,
    /// The text matches none of the accepted forms.
    #[error("cannot understand session selector {input:?}; {ACCEPTED_FORMS}")]
    Unrecognized { input: String },
    /// The text looks like a range (contains a comma) where one session is expected.
    #[error(
        "session selector {input:?} contains a comma, but a single session is expected here \
         (ranges START,END are only accepted where several sessions can be selected)"
    )]
    UnexpectedRange { input: String },
    /// Range text without exactly one comma.
    #[error(
        "cannot understand session range {input:?}: expected START,END (inclusive), \
         each side one of the session selector forms; {ACCEPTED_FORMS}"
    )]
    NotARange { input: String },
    /// Shaped like a session ID, but not a real date and time.
    #[error("{input:?} is not a valid session ID: not a real date and time")]
    InvalidId { input: String },
    /// Shaped like a date or date-time, but not a real one.
    #[error("{input:?} is not a valid date or time")]
    InvalidDate { input: String },
    /// A relative form reaching outside the supported calendar.
    #[error("{input:?} is too far in the past")]
    OutOfRange { input: String },
    /// An exact session ID that is not among the sessions.
    #[error("session {id} does not exist{}", span_hint(.oldest, .newest))]
    NoSuchSession {
        id: String,
        oldest: Option<String>,
        newest: Option<String>,
    },
    /// There are no sessions at all to choose from.
    #[error("there are no sessions")]
    NoSessions,
    /// Every session is newer than the instant the selector names.
    #[error("no session at or before {at}; the oldest session is {oldest}")]
    NoneAtOrBefore { at: NaiveDateTime, oldest: String },
    /// A range whose start lies after its end.
    #[error("the range start ({start}) is after its end ({end})")]
    StartAfterEnd { start: String, end: String },
}

fn span_hint(oldest: &Option<String>, newest: &Option<String>) -> String {
    match (oldest, newest) {
        (Some(o), Some(n)) if o == n => format!(" (the only session is {o})"),
        (Some(o), Some(n)) => format!(" (sessions go from {o} to {n})"),
        _ => " (there are no sessions)".to_string(),
    }
}

/// A parsed single-session selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    /// Exactly this session ID, which must exist.
    Exact(String),
    /// The newest session.
    Latest,
    /// The oldest session.
    Oldest,
    /// The newest session at or before this instant.
    AtOrBefore(NaiveDateTime),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Exact(id) => write!(f, "session {id}"),
            Selector::Latest => f.write_str("latest session"),
            Selector::Oldest => f.write_str("oldest session"),
            Selector::AtOrBefore(t) => write!(f, "newest session at or before {t}"),
        }
    }
}

/// One end of a [`Range`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// The time of the oldest session.
    Oldest,
    /// The time of the newest session.
    Latest,
    /// The time of this session, which must exist.
    Exact(String),
    /// This instant.
    Time(NaiveDateTime),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Oldest => f.write_str("oldest"),
            Bound::Latest => f.write_str("latest"),
            Bound::Exact(id) => f.write_str(id),
            Bound::Time(t) => write!(f, "{t}"),
        }
    }
}

/// An inclusive range of sessions, `start..=end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub start: Bound,
    pub end: Bound,
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{},{}", self.start, self.end)
    }
}

/// The time a session ID stands for, or `None` if `id` is not a valid ID
/// (exactly `YYYYMMDD-HHMMSS`, digits only, a real date and time).
pub fn id_to_time(id: &str) -> Option<NaiveDateTime> {
    let b = id.as_bytes();
    if b.len() != 15 || b[8] != b'-' {
        return None;
    }
    if !b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit) {
        return None;
    }
    let date =
        NaiveDate::from_ymd_opt(digits(&b[0..4]) as i32, digits(&b[4..6]), digits(&b[6..8]))?;
    let time = NaiveTime::from_hms_opt(digits(&b[9..11]), digits(&b[11..13]), digits(&b[13..15]))?;
    Some(date.and_time(time))
}

/// The session ID for a time; fractions of a second are dropped. Meaningful for
/// years 0 to 9999, the years an ID can spell.
pub fn time_to_id(t: NaiveDateTime) -> String {
    t.format(ID_FORMAT).to_string()
}

/// Value of a run of ASCII digits (callers check they are digits; at most 4 long).
fn digits(b: &[u8]) -> u32 {
    b.iter().fold(0, |acc, &c| acc * 10 + u32::from(c - b'0'))
}

/// What one selector text names, before the role it plays is known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Point {
    Exact(String),
    Latest,
    Oldest,
    /// The inclusive span `[first, last]`; an instant has `first == last`.
    Span(NaiveDateTime, NaiveDateTime),
}

/// Parse a single-session selector (see the [module documentation](self)).
/// `now` is the current local time, used by the relative forms.
pub fn parse(s: &str, now: NaiveDateTime) -> Result<Selector, SelectorError> {
    if s.contains(',') {
        return Err(SelectorError::UnexpectedRange {
            input: s.trim().to_string(),
        });
    }
    Ok(match parse_point(s, now)? {
        Point::Exact(id) => Selector::Exact(id),
        Point::Latest => Selector::Latest,
        Point::Oldest => Selector::Oldest,
        Point::Span(_, last) => Selector::AtOrBefore(last),
    })
}

/// Parse a range `START,END` (see the [module documentation](self)).
///
/// When both ends are known times (not `oldest`/`latest`), a start after the end is
/// reported here already; otherwise by [`resolve_range`].
pub fn parse_range(s: &str, now: NaiveDateTime) -> Result<Range, SelectorError> {
    let not_a_range = || SelectorError::NotARange {
        input: s.trim().to_string(),
    };
    let (a, b) = s.split_once(',').ok_or_else(not_a_range)?;
    if b.contains(',') || a.trim().is_empty() || b.trim().is_empty() {
        return Err(not_a_range());
    }
    let start = match parse_point(a, now)? {
        Point::Exact(id) => Bound::Exact(id),
        Point::Latest => Bound::Latest,
        Point::Oldest => Bound::Oldest,
        Point::Span(first, _) => Bound::Time(first),
    };
    let end = match parse_point(b, now)? {
        Point::Exact(id) => Bound::Exact(id),
        Point::Latest => Bound::Latest,
        Point::Oldest => Bound::Oldest,
        Point::Span(_, last) => Bound::Time(last),
    };
    if let (Some(ts), Some(te)) = (fixed_time(&start), fixed_time(&end)) {
        if ts > te {
            return Err(SelectorError::StartAfterEnd {
                start: start.to_string(),
                end: end.to_string(),
            });
        }
    }
    Ok(Range { start, end })
}

/// The time of a bound that does not depend on the sessions.
fn fixed_time(b: &Bound) -> Option<NaiveDateTime> {
    match b {
        Bound::Exact(id) => id_to_time(id),
        Bound::Time(t) => Some(*t),
        Bound::Oldest | Bound::Latest => None,
    }
}

/// Sessions with valid IDs, paired with their times, in the given order.
fn timed(sessions: &[String]) -> Vec<(&String, NaiveDateTime)> {
    sessions
        .iter()
        .filter_map(|s| id_to_time(s).map(|t| (s, t)))
        .collect()
}

fn oldest_of<'a>(timed: &[(&'a String, NaiveDateTime)]) -> Option<(&'a String, NaiveDateTime)> {
    timed.iter().copied().min_by_key(|&(_, t)| t)
}

fn newest_of<'a>(timed: &[(&'a String, NaiveDateTime)]) -> Option<(&'a String, NaiveDateTime)> {
    timed.iter().copied().max_by_key(|&(_, t)| t)
}

fn no_such_session(id: &str, timed: &[(&String, NaiveDateTime)]) -> SelectorError {
    SelectorError::NoSuchSession {
        id: id.to_string(),
        oldest: oldest_of(timed).map(|(s, _)| s.clone()),
        newest: newest_of(timed).map(|(s, _)| s.clone()),
    }
}

/// Pick the session a selector names among `sessions` (normally sorted oldest
/// first, but the order does not matter). Entries that are not valid session IDs
/// are ignored.
///
/// Errors: an exact ID that is not present ([`SelectorError::NoSuchSession`], naming
/// the oldest and newest sessions), no sessions at all, or no session at or before
/// the instant ([`SelectorError::NoneAtOrBefore`], naming the oldest session).
pub fn resolve(sel: &Selector, sessions: &[String]) -> Result<String, SelectorError> {
    let timed = timed(sessions);
    match sel {
        Selector::Exact(id) => {
            if timed.iter().any(|(s, _)| *s == id) {
                Ok(id.clone())
            } else {
                Err(no_such_session(id, &timed))
            }
        }
        Selector::Latest => newest_of(&timed)
            .map(|(s, _)| s.clone())
            .ok_or(SelectorError::NoSessions),
        Selector::Oldest => oldest_of(&timed)
            .map(|(s, _)| s.clone())
            .ok_or(SelectorError::NoSessions),
        Selector::AtOrBefore(at) => {
            let oldest = oldest_of(&timed).ok_or(SelectorError::NoSessions)?;
            timed
                .iter()
                .filter(|&&(_, t)| t <= *at)
                .max_by_key(|&&(_, t)| t)
                .map(|(s, _)| (*s).clone())
                .ok_or_else(|| SelectorError::NoneAtOrBefore {
                    at: *at,
                    oldest: oldest.0.clone(),
                })
        }
    }
}

/// The sessions inside a range, in the order given (oldest first when `sessions`
/// is sorted). Entries that are not valid session IDs are ignored.
///
/// An empty result is not an error (also when there are no sessions at all and a
/// bound is `oldest` or `latest`). Errors: an exact-ID bound that does not exist, or
/// a start after the end once `oldest`/`latest` are known.
pub fn resolve_range(range: &Range, sessions: &[String]) -> Result<Vec<String>, SelectorError> {
    let timed = timed(sessions);
    let bound = |b: &Bound| -> Result<Option<(String, NaiveDateTime)>, SelectorError> {
        Ok(match b {
            Bound::Exact(id) => {
                let &(_, t) = timed
                    .iter()
                    .find(|(s, _)| *s == id)
                    .ok_or_else(|| no_such_session(id, &timed))?;
                Some((id.clone(), t))
            }
            Bound::Oldest => oldest_of(&timed).map(|(s, t)| (format!("oldest, {s}"), t)),
            Bound::Latest => newest_of(&timed).map(|(s, t)| (format!("latest, {s}"), t)),
            Bound::Time(t) => Some((t.to_string(), *t)),
        })
    };
    let (Some((start_txt, start)), Some((end_txt, end))) =
        (bound(&range.start)?, bound(&range.end)?)
    else {
        return Ok(Vec::new());
    };
    if start > end {
        return Err(SelectorError::StartAfterEnd {
            start: start_txt,
            end: end_txt,
        });
    }
    Ok(timed
        .into_iter()
        .filter(|&(_, t)| start <= t && t <= end)
        .map(|(s, _)| s.clone())
        .collect())
}

/// Parse one selector text into what it names.
fn parse_point(s: &str, now: NaiveDateTime) -> Result<Point, SelectorError> {
    let norm = s
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase();
    let unrecognized = || SelectorError::Unrecognized {
        input: s.trim().to_string(),
    };
    match norm.as_str() {
        "" => return Err(SelectorError::Empty),
        "latest" | "newest" => return Ok(Point::Latest),
        "oldest" => return Ok(Point::Oldest),
        "now" => return Ok(Point::Span(now, now)),
        "today" => return Ok(day_span(now.date())),
        "yesterday" => {
            let day = now
                .date()
                .pred_opt()
                .ok_or_else(|| SelectorError::OutOfRange {
                    input: s.trim().to_string(),
                })?;
            return Ok(day_span(day));
        }
        _ => {}
    }
    if looks_like_id(&norm) {
        return match id_to_time(&norm) {
            Some(_) => Ok(Point::Exact(norm)),
            None => Err(SelectorError::InvalidId {
                input: s.trim().to_string(),
            }),
        };
    }
    if let Some(p) = parse_date_time(&norm) {
        return p.ok_or_else(|| SelectorError::InvalidDate {
            input: s.trim().to_string(),
        });
    }
    if let Some(p) = parse_relative(&norm, now) {
        return p
            .map(|t| Point::Span(t, t))
            .ok_or_else(|| SelectorError::OutOfRange {
                input: s.trim().to_string(),
            });
    }
    Err(unrecognized())
}

/// `YYYYMMDD-HHMMSS` by shape only (digits and a dash).
fn looks_like_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 15 && b[8] == b'-' && b[..8].iter().chain(&b[9..]).all(u8::is_ascii_digit)
}

fn all_digits(s: &str, min: usize, max: usize) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(|c| c.is_ascii_digit())
}

fn day_span(day: NaiveDate) -> Point {
    Point::Span(
        day.and_time(NaiveTime::MIN),
        day.and_hms_opt(23, 59, 59)
            .unwrap_or(day.and_time(NaiveTime::MIN)),
    )
}

/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS` (or `t` instead of the
/// space, the text being lower-cased). `None` when the shape does not match;
/// `Some(None)` when it does but the values are not a real date or time.
fn parse_date_time(s: &str) -> Option<Option<Point>> {
    let (date_txt, time_txt) = match s.split_once([' ', 't']) {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let mut parts = date_txt.split('-');
    let (y, m, d) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some()
        || !all_digits(y, 4, 4)
        || !all_digits(m, 1, 2)
        || !all_digits(d, 1, 2)
    {
        return None;
    }
    let time_parts: Option<Vec<&str>> = match time_txt {
        None => None,
        Some(t) => {
            let v: Vec<&str> = t.split(':').collect();
            let shape_ok = matches!(v.len(), 2 | 3)
                && all_digits(v[0], 1, 2)
                && v[1..].iter().all(|p| all_digits(p, 2, 2));
            if !shape_ok {
                return None;
            }
            Some(v)
        }
    };
    let date = NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let Some(date) = date else {
        return Some(None);
    };
    let Some(tp) = time_parts else {
        return Some(Some(day_span(date)));
    };
    let num = |p: &str| p.parse::<u32>().ok();
    let (h, min) = (num(tp[0])?, num(tp[1])?);
    Some(match tp.get(2) {
        Some(sec) => NaiveTime::from_hms_opt(h, min, num(sec)?).map(|t| {
            let at = date.and_time(t);
            Point::Span(at, at)
        }),
        None => NaiveTime::from_hms_opt(h, min, 0).and_then(|first| {
            let last = NaiveTime::from_hms_opt(h, min, 59)?;
            Some(Point::Span(date.and_time(first), date.and_time(last)))
        }),
    })
}

/// `N unit ago`. `None` when the shape does not match; `Some(None)` when the
/// result falls outside the calendar.
fn parse_relative(s: &str, now: NaiveDateTime) -> Option<Option<NaiveDateTime>> {
    let words: Vec<&str> = s.split(' ').collect();
    let [count, unit, "ago"] = words.as_slice() else {
        return None;
    };
    let n: u64 = match *count {
        "a" | "an" => 1,
        c if all_digits(c, 1, 20) => match c.parse() {
            Ok(n) => n,
            Err(_) => return Some(None),
        },
        _ => return None,
    };
    let unit = unit.strip_suffix('s').unwrap_or(unit);
    let minutes = |per: u64| {
        n.checked_mul(per)
            .and_then(|m| i64::try_from(m).ok())
            .and_then(TimeDelta::try_minutes)
            .and_then(|d| now.checked_sub_signed(d))
    };
    let months = |per: u32| {
        u32::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(per))
            .and_then(|m| now.checked_sub_months(Months::new(m)))
    };
    Some(match unit {
        "minute" | "min" => minutes(1),
        "hour" => minutes(60),
        "day" => now.checked_sub_days(Days::new(n)),
        "week" => n
            .checked_mul(7)
            .and_then(|d| now.checked_sub_days(Days::new(d))),
        "month" => months(1),
        "year" => months(12),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").expect("test time")
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A made-up history around late November 2026.
    fn history() -> Vec<String> {
        ids(&[
            "20261101-020000",
            "20261115-020000",
            "20261119-080000",
            "20261119-230000",
            "20261120-140012",
            "20261120-180000",
            "20261121-000000",
            "20261122-090000",
        ])
    }

    /// "Now" for the tests: Sunday 2026-11-22 12:00:00.
    fn now() -> NaiveDateTime {
        t("2026-11-22 12:00:00")
    }

    /// Each `(text, time)`: `text` parses, at `now()`, to "the newest session at or
    /// before `time`".
    fn assert_parse_at_or_before(cases: &[(&str, &str)]) {
        for &(text, at) in cases {
            assert_eq!(
                parse(text, now()),
                Ok(Selector::AtOrBefore(t(at))),
                "{text:?}"
            );
        }
    }

    fn pick(text: &str) -> Result<String, SelectorError> {
        resolve(&parse(text, now())?, &history())
    }

    fn pick_range(text: &str) -> Result<Vec<String>, SelectorError> {
        resolve_range(&parse_range(text, now())?, &history())
    }

    #[test]
    fn id_round_trip() {
        let time = t("2026-11-20 14:00:30");
        assert_eq!(time_to_id(time), "20261120-140030");
        assert_eq!(id_to_time("20261120-140030"), Some(time));
        assert_eq!(
            id_to_time("00010101-000000"),
            Some(t("0001-01-01 00:00:00"))
        );
    }

    #[test]
    fn id_to_time_rejects_non_ids() {
        for bad in [
            "",
            "20261120140030",
            "20261120_140030",
            "2026112-1400300",
            "20261120-14003",
            "20261120-1400300",
            "+2026112-140030",
            "20261120-14003x",
            "20261320-140030",
            "20260230-140030",
            "20261120-240000",
            "20261120-146000",
            "20261120-140060",
            " 20261120-140030",
        ] {
            assert_eq!(id_to_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn time_to_id_drops_fractions() {
        let time = t("2026-11-20 14:00:30") + TimeDelta::milliseconds(999);
        assert_eq!(time_to_id(time), "20261120-140030");
    }

    #[test]
    fn parse_keywords() {
        assert_eq!(parse("latest", now()), Ok(Selector::Latest));
        assert_eq!(parse("  LATEST ", now()), Ok(Selector::Latest));
        assert_eq!(parse("newest", now()), Ok(Selector::Latest));
        assert_eq!(parse("oldest", now()), Ok(Selector::Oldest));
        assert_eq!(parse("now", now()), Ok(Selector::AtOrBefore(now())));
        assert_eq!(
            parse("today", now()),
            Ok(Selector::AtOrBefore(t("2026-11-22 23:59:59")))
        );
        assert_eq!(
            parse("Yesterday", now()),
            Ok(Selector::AtOrBefore(t("2026-11-21 23:59:59")))
        );
    }

    #[test]
    fn parse_exact_id() {
        assert_eq!(
            parse("20261120-140012", now()),
            Ok(Selector::Exact("20261120-140012".into()))
        );
        assert_eq!(
            parse("20261131-140012", now()),
            Err(SelectorError::InvalidId {
                input: "20261131-140012".into()
            })
        );
    }

    #[test]
    fn parse_dates_and_times() {
        let cases = [
            ("2026-11-20", "2026-11-20 23:59:59"),
            ("2026-1-5", "2026-01-05 23:59:59"),
            ("2026-11-20 14:00", "2026-11-20 14:00:59"),
            ("2026-11-20T14:00", "2026-11-20 14:00:59"),
            ("2026-11-20t14:00", "2026-11-20 14:00:59"),
            ("2026-11-20   9:05", "2026-11-20 09:05:59"),
            ("2026-11-20 14:00:30", "2026-11-20 14:00:30"),
            ("2026-11-20T14:00:30", "2026-11-20 14:00:30"),
            ("2024-02-29", "2024-02-29 23:59:59"),
        ];
        assert_parse_at_or_before(&cases);
    }

    #[test]
    fn parse_invalid_dates() {
        for text in [
            "2026-02-29",
            "2026-13-01",
            "2026-11-31",
            "2026-11-20 24:00",
            "2026-11-20 14:60",
            "2026-11-20 14:00:60",
        ] {
            assert_eq!(
                parse(text, now()),
                Err(SelectorError::InvalidDate { input: text.into() }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn parse_relative_forms() {
        let cases = [
            ("0 minutes ago", "2026-11-22 12:00:00"),
            ("1 minute ago", "2026-11-22 11:59:00"),
            ("90 minutes ago", "2026-11-22 10:30:00"),
            ("5 mins ago", "2026-11-22 11:55:00"),
            ("an hour ago", "2026-11-22 11:00:00"),
            ("36 hours ago", "2026-11-21 00:00:00"),
            ("1 day ago", "2026-11-21 12:00:00"),
            ("3 days ago", "2026-11-19 12:00:00"),
            ("a week ago", "2026-11-15 12:00:00"),
            ("2 Weeks  Ago", "2026-11-08 12:00:00"),
            ("1 month ago", "2026-10-22 12:00:00"),
            ("12 months ago", "2025-11-22 12:00:00"),
            ("a year ago", "2025-11-22 12:00:00"),
        ];
        assert_parse_at_or_before(&cases);
    }

    #[test]
    fn months_ago_clamps_to_month_end() {
        let now = t("2026-03-31 08:00:00");
        assert_eq!(
            parse("1 month ago", now),
            Ok(Selector::AtOrBefore(t("2026-02-28 08:00:00")))
        );
        let now = t("2024-03-31 08:00:00");
        assert_eq!(
            parse("1 month ago", now),
            Ok(Selector::AtOrBefore(t("2024-02-29 08:00:00")))
        );
    }

    #[test]
    fn relative_overflow_is_an_error() {
        for text in [
            "99999999999999999999 days ago",
            "9999999999999 weeks ago",
            "4294967295 months ago",
            "999999999 years ago",
            "18446744073709551615 minutes ago",
        ] {
            assert_eq!(
                parse(text, now()),
                Err(SelectorError::OutOfRange { input: text.into() }),
                "{text:?}"
            );
        }
    }

    #[test]
    fn unrecognized_text_lists_forms() {
        for text in [
            "last",
            "-3 days ago",
            "3 days",
            "3 fortnights ago",
            "days ago",
            "2026/11/20",
            "20-11-2026",
            "2026-11-20 14",
            "2026-11-20 14:0",
            "2026-11-20 14:00:00:00",
            "2026-11-20x14:00",
            "three days ago",
        ] {
            let err = parse(text, now()).unwrap_err();
            assert_eq!(
                err,
                SelectorError::Unrecognized { input: text.into() },
                "{text:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("YYYYMMDD-HHMMSS"), "{msg}");
            assert!(msg.contains("days|weeks|months"), "{msg}");
        }
        assert_eq!(parse("   ", now()), Err(SelectorError::Empty));
        assert!(matches!(
            parse("oldest,latest", now()),
            Err(SelectorError::UnexpectedRange { .. })
        ));
    }

    #[test]
    fn resolve_keywords() {
        assert_eq!(pick("latest").as_deref(), Ok("20261122-090000"));
        assert_eq!(pick("oldest").as_deref(), Ok("20261101-020000"));
        assert_eq!(pick("now").as_deref(), Ok("20261122-090000"));
        assert_eq!(pick("today").as_deref(), Ok("20261122-090000"));
        assert_eq!(pick("yesterday").as_deref(), Ok("20261121-000000"));
    }

    #[test]
    fn resolve_exact() {
        assert_eq!(pick("20261120-140012").as_deref(), Ok("20261120-140012"));
        let err = pick("20261120-140000").unwrap_err();
        assert_eq!(
            err,
            SelectorError::NoSuchSession {
                id: "20261120-140000".into(),
                oldest: Some("20261101-020000".into()),
                newest: Some("20261122-090000".into()),
            }
        );
        assert_eq!(
            err.to_string(),
            "session 20261120-140000 does not exist \
             (sessions go from 20261101-020000 to 20261122-090000)"
        );
    }

    #[test]
    fn resolve_dates_pick_last_of_day_or_newest_before() {
        assert_eq!(pick("2026-11-20").as_deref(), Ok("20261120-180000"));
        assert_eq!(pick("2026-11-19").as_deref(), Ok("20261119-230000"));
        // No session on these days: the newest one before.
        assert_eq!(pick("2026-11-18").as_deref(), Ok("20261115-020000"));
        assert_eq!(pick("2026-11-10").as_deref(), Ok("20261101-020000"));
        // After the last session.
        assert_eq!(pick("2027-01-01").as_deref(), Ok("20261122-090000"));
    }

    #[test]
    fn resolve_date_times() {
        // A minute covers its seconds.
        assert_eq!(pick("2026-11-20 14:00").as_deref(), Ok("20261120-140012"));
        // A second is an instant: 14:00:00 is before the session at 14:00:12.
        assert_eq!(
            pick("2026-11-20 14:00:00").as_deref(),
            Ok("20261119-230000")
        );
        assert_eq!(
            pick("2026-11-20 14:00:12").as_deref(),
            Ok("20261120-140012")
        );
        assert_eq!(pick("2026-11-20T17:59").as_deref(), Ok("20261120-140012"));
        assert_eq!(pick("2026-11-20 18:00").as_deref(), Ok("20261120-180000"));
        assert_eq!(pick("2026-11-21 00:00").as_deref(), Ok("20261121-000000"));
    }

    #[test]
    fn resolve_relative() {
        // now - 1 day = 2026-11-21 12:00.
        assert_eq!(pick("1 day ago").as_deref(), Ok("20261121-000000"));
        // now - 2 days = 2026-11-20 12:00: the 14:00 session is after it.
        assert_eq!(pick("2 days ago").as_deref(), Ok("20261119-230000"));
        assert_eq!(pick("3 hours ago").as_deref(), Ok("20261122-090000"));
        assert_eq!(pick("4 hours ago").as_deref(), Ok("20261121-000000"));
        assert_eq!(pick("a week ago").as_deref(), Ok("20261115-020000"));
    }

    #[test]
    fn resolve_before_everything() {
        let err = pick("2 months ago").unwrap_err();
        assert_eq!(
            err,
            SelectorError::NoneAtOrBefore {
                at: t("2026-09-22 12:00:00"),
                oldest: "20261101-020000".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "no session at or before 2026-09-22 12:00:00; the oldest session is 20261101-020000"
        );
        assert!(matches!(
            pick("2026-10-31"),
            Err(SelectorError::NoneAtOrBefore { .. })
        ));
    }

    #[test]
    fn resolve_without_sessions() {
        for sel in [
            Selector::Latest,
            Selector::Oldest,
            Selector::AtOrBefore(now()),
        ] {
            assert_eq!(resolve(&sel, &[]), Err(SelectorError::NoSessions));
        }
        let err = resolve(&Selector::Exact("20261120-140012".into()), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "session 20261120-140012 does not exist (there are no sessions)"
        );
        let one = ids(&["20261120-140012"]);
        let err = resolve(&Selector::Exact("20261120-140013".into()), &one).unwrap_err();
        assert_eq!(
            err.to_string(),
            "session 20261120-140013 does not exist (the only session is 20261120-140012)"
        );
    }

    #[test]
    fn resolve_ignores_order_and_invalid_entries() {
        let sessions = ids(&[
            "20261120-180000",
            "junk",
            "20261101-020000",
            "20261119-230000",
        ]);
        assert_eq!(
            resolve(&Selector::Latest, &sessions).as_deref(),
            Ok("20261120-180000")
        );
        assert_eq!(
            resolve(&Selector::Oldest, &sessions).as_deref(),
            Ok("20261101-020000")
        );
        let sel = parse("2026-11-19", now()).expect("parses");
        assert_eq!(resolve(&sel, &sessions).as_deref(), Ok("20261119-230000"));
        assert_eq!(
            resolve(&Selector::AtOrBefore(now()), &ids(&["junk"])),
            Err(SelectorError::NoSessions)
        );
    }

    #[test]
    fn parse_range_roles() {
        let r = parse_range("2026-11-19,2026-11-20", now()).expect("parses");
        assert_eq!(r.start, Bound::Time(t("2026-11-19 00:00:00")));
        assert_eq!(r.end, Bound::Time(t("2026-11-20 23:59:59")));

        let r = parse_range(" yesterday , today ", now()).expect("parses");
        assert_eq!(r.start, Bound::Time(t("2026-11-21 00:00:00")));
        assert_eq!(r.end, Bound::Time(t("2026-11-22 23:59:59")));

        let r = parse_range("2026-11-20 14:00,2026-11-20T14:00", now()).expect("parses");
        assert_eq!(r.start, Bound::Time(t("2026-11-20 14:00:00")));
        assert_eq!(r.end, Bound::Time(t("2026-11-20 14:00:59")));

        let r = parse_range("3 days ago,1 day ago", now()).expect("parses");
        assert_eq!(r.start, Bound::Time(t("2026-11-19 12:00:00")));
        assert_eq!(r.end, Bound::Time(t("2026-11-21 12:00:00")));

        let r = parse_range("oldest,20261120-140012", now()).expect("parses");
        assert_eq!(r.start, Bound::Oldest);
        assert_eq!(r.end, Bound::Exact("20261120-140012".into()));
        assert_eq!(r.to_string(), "oldest,20261120-140012");

        let r = parse_range("2 weeks ago,latest", now()).expect("parses");
        assert_eq!(r.start, Bound::Time(t("2026-11-08 12:00:00")));
        assert_eq!(r.end, Bound::Latest);
    }

    #[test]
    fn parse_range_errors() {
        for text in ["2026-11-20", "a,b,c", ",latest", "oldest,", " , "] {
            let err = parse_range(text, now()).unwrap_err();
            assert!(
                matches!(err, SelectorError::NotARange { .. }),
                "{text:?}: {err:?}"
            );
            assert!(err.to_string().contains("START,END"), "{err}");
        }
        assert_eq!(
            parse_range("oldest,soon", now()),
            Err(SelectorError::Unrecognized {
                input: "soon".into()
            })
        );
        assert_eq!(
            parse_range("2026-11-21,2026-11-20", now()),
            Err(SelectorError::StartAfterEnd {
                start: "2026-11-21 00:00:00".into(),
                end: "2026-11-20 23:59:59".into(),
            })
        );
        assert!(matches!(
            parse_range("today,yesterday", now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            parse_range("20261121-000000,20261120-180000", now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            parse_range("1 day ago,2 days ago", now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        let msg = parse_range("today,yesterday", now())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "the range start (2026-11-22 00:00:00) is after its end (2026-11-21 23:59:59)"
        );
    }

    #[test]
    fn resolve_ranges() {
        assert_eq!(pick_range("oldest,latest"), Ok(history()));
        assert_eq!(
            pick_range("2026-11-19,2026-11-20"),
            Ok(ids(&[
                "20261119-080000",
                "20261119-230000",
                "20261120-140012",
                "20261120-180000",
            ]))
        );
        assert_eq!(
            pick_range("oldest,2026-11-15"),
            Ok(ids(&["20261101-020000", "20261115-020000"]))
        );
        assert_eq!(
            pick_range("yesterday,latest"),
            Ok(ids(&["20261121-000000", "20261122-090000"]))
        );
        assert_eq!(
            pick_range("20261119-230000,20261120-180000"),
            Ok(ids(&[
                "20261119-230000",
                "20261120-140012",
                "20261120-180000"
            ]))
        );
        assert_eq!(
            pick_range("2026-11-20 14:00,2026-11-20 14:00"),
            Ok(ids(&["20261120-140012"]))
        );
        // Instants are exact: 14:00:00..=14:00:11 misses the 14:00:12 session.
        assert_eq!(
            pick_range("2026-11-20 14:00:00,2026-11-20 14:00:11"),
            Ok(vec![])
        );
        // 3 days ago (11-19 12:00) to 2 days ago (11-20 12:00).
        assert_eq!(
            pick_range("3 days ago,2 days ago"),
            Ok(ids(&["20261119-230000"]))
        );
        assert_eq!(pick_range("oldest,oldest"), Ok(ids(&["20261101-020000"])));
        assert_eq!(pick_range("latest,latest"), Ok(ids(&["20261122-090000"])));
    }

    #[test]
    fn empty_ranges_are_not_errors() {
        assert_eq!(pick_range("2026-11-02,2026-11-14"), Ok(vec![]));
        assert_eq!(pick_range("2020-01-01,2020-12-31"), Ok(vec![]));
        assert_eq!(pick_range("2026-11-22 09:01,2030-01-01"), Ok(vec![]));
        let r = parse_range("oldest,latest", now()).expect("parses");
        assert_eq!(resolve_range(&r, &[]), Ok(vec![]));
        let r = parse_range("latest,2020-01-01", now()).expect("parses");
        assert_eq!(resolve_range(&r, &[]), Ok(vec![]));
    }

    #[test]
    fn range_start_after_end_once_sessions_are_known() {
        let err = pick_range("latest,2026-11-20").unwrap_err();
        assert_eq!(
            err,
            SelectorError::StartAfterEnd {
                start: "latest, 20261122-090000".into(),
                end: "2026-11-20 23:59:59".into(),
            }
        );
        assert!(matches!(
            pick_range("latest,oldest"),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            pick_range("2026-11-02,oldest"),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        // A single session: latest and oldest coincide.
        let r = parse_range("latest,oldest", now()).expect("parses");
        assert_eq!(
            resolve_range(&r, &ids(&["20261120-140012"])),
            Ok(ids(&["20261120-140012"]))
        );
    }

    #[test]
    fn range_exact_bounds_must_exist() {
        assert_eq!(
            pick_range("20261120-140000,latest"),
            Err(SelectorError::NoSuchSession {
                id: "20261120-140000".into(),
                oldest: Some("20261101-020000".into()),
                newest: Some("20261122-090000".into()),
            })
        );
        assert!(matches!(
            pick_range("oldest,20261122-090001"),
            Err(SelectorError::NoSuchSession { .. })
        ));
    }
}
