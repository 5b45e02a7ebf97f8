//! Session selectors: the text a user gives to `--session` (one session) or to
//! `prune` (a range of sessions), and how it is matched against a volume's sessions.
//!
//! Sessions are named by IDs of the form `YYYYMMDD-HHMMSS` in local time, unique and
//! strictly increasing per volume, so their text order is their order. Times are
//! compared as absolute instants: each session's `time` (the instant it was taken, from
//! its info file; see [`session_times`]) with instants computed from the current time
//! in a time zone. So across a daylight-saving change, when local clock times repeat
//! or are skipped (and IDs taken in the repeated hour are moved on to stay
//! increasing), `1 hour ago` is 3600 seconds ago and picks the session taken before
//! it. Calendar words (`today`, a date, `3 days ago`) are read in the local calendar
//! of the time zone. Everything here is pure except [`session_times`]: the current
//! time and the time zone are parameters, never read from the clock.
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
//! `an` (`a week ago`, `an hour ago`). Minutes and hours are exact durations. Days,
//! weeks, months and years go back in the local calendar to the same clock time (a
//! day across a daylight-saving change is 23 or 25 hours); months and years are
//! calendar months: one month before March 31 is the last day of February. A week is
//! seven days. A clock time the change skipped means the moment the clocks jumped.
//!
//! A local date and time that occurs twice (the clocks went back over it) names both
//! occurrences: as a single selector its later one, as the start of a range its
//! earlier one. One that never occurred (the clocks jumped over it) is an error.
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

use chrono::{
    DateTime, Days, FixedOffset, LocalResult, Months, NaiveDate, NaiveDateTime, NaiveTime,
    TimeDelta, TimeZone, Utc,
};

use crate::volume::VolumeArchive;

/// An instant, with the local offset it is shown in.
pub type Instant = DateTime<FixedOffset>;

/// A session as selectors see it: its ID and the instant it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionTime {
    pub id: String,
    pub time: DateTime<Utc>,
}

impl SessionTime {
    /// A session timed by its ID alone, read as local time in `tz` (its earlier
    /// occurrence if the clocks went back over it, the jump if they skipped it).
    pub fn from_id<Tz: TimeZone>(id: &str, tz: &Tz) -> Option<SessionTime> {
        let t = id_to_time(id)?;
        Some(SessionTime {
            id: id.to_string(),
            time: at_or_after(tz, t, false)?.with_timezone(&Utc),
        })
    }
}

/// The sessions `ids` of `vol` with the instants they were taken: the `time` of each
/// session's info file. A session whose info cannot be read is timed by its ID, read as
/// local time in `tz`, with a warning. Entries that are not session IDs are left out.
pub fn session_times<Tz: TimeZone>(
    vol: &VolumeArchive,
    ids: &[String],
    tz: &Tz,
) -> Vec<SessionTime> {
    ids.iter()
        .filter_map(|id| {
            let from_info = vol.info(id).map_err(|e| e.to_string()).and_then(|info| {
                DateTime::from_timestamp(info.time, 0)
                    .ok_or_else(|| format!("time {} is out of range", info.time))
            });
            match from_info {
                Ok(time) => Some(SessionTime {
                    id: id.clone(),
                    time,
                }),
                Err(e) => {
                    tracing::warn!(
                        "volume {}: session {id}: its time is taken from its ID ({e})",
                        vol.name
                    );
                    SessionTime::from_id(id, tz)
                }
            }
        })
        .collect()
}

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
    /// A local date and time the clocks skipped (a daylight-saving change).
    #[error("{input:?} did not occur in the local time zone: the clocks skipped it")]
    SkippedTime { input: String },
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
    NoneAtOrBefore { at: Instant, oldest: String },
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
    /// The newest session taken at or before this instant.
    AtOrBefore(Instant),
}

impl Selector {
    /// Whether resolving it needs the sessions' times (not only their IDs).
    pub fn needs_times(&self) -> bool {
        matches!(self, Selector::AtOrBefore(_))
    }
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
    Time(Instant),
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

impl Range {
    /// Whether resolving it needs the sessions' times (not only their IDs).
    pub fn needs_times(&self) -> bool {
        matches!(self.start, Bound::Time(_)) || matches!(self.end, Bound::Time(_))
    }
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
    Span(Instant, Instant),
}

/// Parse a single-session selector (see the [module documentation](self)).
/// `now` is the current time in the time zone that calendar words are read in.
pub fn parse<Tz: TimeZone>(s: &str, now: &DateTime<Tz>) -> Result<Selector, SelectorError> {
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
/// When both ends are times, or both session IDs, a start after the end is reported
/// here already; otherwise by [`resolve_range`].
pub fn parse_range<Tz: TimeZone>(s: &str, now: &DateTime<Tz>) -> Result<Range, SelectorError> {
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
    let after = match (&start, &end) {
        (Bound::Exact(a), Bound::Exact(b)) => a > b,
        _ => matches!((fixed_time(&start), fixed_time(&end)), (Some(a), Some(b)) if a > b),
    };
    if after {
        return Err(SelectorError::StartAfterEnd {
            start: start.to_string(),
            end: end.to_string(),
        });
    }
    Ok(Range { start, end })
}

/// The time of a bound that does not depend on the sessions.
fn fixed_time(b: &Bound) -> Option<Instant> {
    match b {
        Bound::Time(t) => Some(*t),
        Bound::Exact(_) | Bound::Oldest | Bound::Latest => None,
    }
}

/// Sessions with valid IDs.
fn valid(sessions: &[SessionTime]) -> Vec<&SessionTime> {
    sessions
        .iter()
        .filter(|s| id_to_time(&s.id).is_some())
        .collect()
}

fn oldest_of<'a>(valid: &[&'a SessionTime]) -> Option<&'a SessionTime> {
    valid.iter().copied().min_by(|a, b| a.id.cmp(&b.id))
}

fn newest_of<'a>(valid: &[&'a SessionTime]) -> Option<&'a SessionTime> {
    valid.iter().copied().max_by(|a, b| a.id.cmp(&b.id))
}

fn no_such_session(id: &str, valid: &[&SessionTime]) -> SelectorError {
    SelectorError::NoSuchSession {
        id: id.to_string(),
        oldest: oldest_of(valid).map(|s| s.id.clone()),
        newest: newest_of(valid).map(|s| s.id.clone()),
    }
}

/// Pick the session a selector names among `sessions` (normally oldest first, but
/// the order does not matter). Entries that are not valid session IDs are ignored.
/// The newest and oldest are by ID; [`Selector::AtOrBefore`] takes, of the sessions
/// whose `time` is at or before its instant, the newest.
///
/// Errors: an exact ID that is not present ([`SelectorError::NoSuchSession`], naming
/// the oldest and newest sessions), no sessions at all, or no session at or before
/// the instant ([`SelectorError::NoneAtOrBefore`], naming the oldest session).
pub fn resolve(sel: &Selector, sessions: &[SessionTime]) -> Result<String, SelectorError> {
    let valid = valid(sessions);
    match sel {
        Selector::Exact(id) => {
            if valid.iter().any(|s| s.id == *id) {
                Ok(id.clone())
            } else {
                Err(no_such_session(id, &valid))
            }
        }
        Selector::Latest => newest_of(&valid)
            .map(|s| s.id.clone())
            .ok_or(SelectorError::NoSessions),
        Selector::Oldest => oldest_of(&valid)
            .map(|s| s.id.clone())
            .ok_or(SelectorError::NoSessions),
        Selector::AtOrBefore(at) => {
            let oldest = oldest_of(&valid).ok_or(SelectorError::NoSessions)?;
            let taken: Vec<&SessionTime> =
                valid.iter().copied().filter(|s| s.time <= *at).collect();
            newest_of(&taken)
                .map(|s| s.id.clone())
                .ok_or_else(|| SelectorError::NoneAtOrBefore {
                    at: *at,
                    oldest: oldest.id.clone(),
                })
        }
    }
}

/// A range bound once the sessions are known: a session (compared by ID) or an
/// instant (compared with the sessions' times).
enum Resolved<'a> {
    Session(&'a SessionTime),
    Time(Instant),
}

impl Resolved<'_> {
    fn text(&self, what: &str) -> String {
        match self {
            Resolved::Session(s) if what.is_empty() => s.id.clone(),
            Resolved::Session(s) => format!("{what}, {}", s.id),
            Resolved::Time(t) => t.to_string(),
        }
    }
}

/// The sessions inside a range, in the order given (oldest first when `sessions`
/// is sorted). Entries that are not valid session IDs are ignored. A bound that names
/// a session (an ID, `oldest`, `latest`) includes the sessions from or up to it by
/// ID; a time bound, those taken at or after (before) it.
///
/// An empty result is not an error (also when there are no sessions at all and a
/// bound is `oldest` or `latest`). Errors: an exact-ID bound that does not exist, or
/// a start after the end once `oldest`/`latest` are known.
pub fn resolve_range(
    range: &Range,
    sessions: &[SessionTime],
) -> Result<Vec<String>, SelectorError> {
    let valid = valid(sessions);
    let bound = |b: &Bound| -> Result<Option<(Resolved, &'static str)>, SelectorError> {
        Ok(match b {
            Bound::Exact(id) => {
                let s = valid
                    .iter()
                    .copied()
                    .find(|s| s.id == *id)
                    .ok_or_else(|| no_such_session(id, &valid))?;
                Some((Resolved::Session(s), ""))
            }
            Bound::Oldest => oldest_of(&valid).map(|s| (Resolved::Session(s), "oldest")),
            Bound::Latest => newest_of(&valid).map(|s| (Resolved::Session(s), "latest")),
            Bound::Time(t) => Some((Resolved::Time(*t), "")),
        })
    };
    let (Some((start, start_what)), Some((end, end_what))) =
        (bound(&range.start)?, bound(&range.end)?)
    else {
        return Ok(Vec::new());
    };
    let after = match (&start, &end) {
        (Resolved::Session(a), Resolved::Session(b)) => a.id > b.id,
        (Resolved::Session(a), Resolved::Time(t)) => a.time > *t,
        (Resolved::Time(t), Resolved::Session(b)) => *t > b.time,
        (Resolved::Time(a), Resolved::Time(b)) => a > b,
    };
    if after {
        return Err(SelectorError::StartAfterEnd {
            start: start.text(start_what),
            end: end.text(end_what),
        });
    }
    let inside = |s: &SessionTime| {
        let from = match &start {
            Resolved::Session(a) => s.id >= a.id,
            Resolved::Time(t) => s.time >= *t,
        };
        let to = match &end {
            Resolved::Session(b) => s.id <= b.id,
            Resolved::Time(t) => s.time <= *t,
        };
        from && to
    };
    Ok(valid
        .into_iter()
        .filter(|s| inside(s))
        .map(|s| s.id.clone())
        .collect())
}

/// The instants at which the local clock of `tz` shows `t`, earliest first: one, two
/// (the clocks went back over `t`), or none (they skipped it). Each candidate the time
/// zone gives is checked by converting it back, as chrono's `Local` reports the
/// boundary of a change as ambiguous, and in no fixed order.
pub fn local_instants<Tz: TimeZone>(tz: &Tz, t: NaiveDateTime) -> Vec<Instant> {
    let candidates = match tz.from_local_datetime(&t) {
        LocalResult::Single(d) => vec![d],
        LocalResult::Ambiguous(a, b) => vec![a, b],
        LocalResult::None => vec![],
    };
    let mut out: Vec<Instant> = candidates
        .into_iter()
        .filter(|d| tz.from_utc_datetime(&d.naive_utc()).naive_local() == t)
        .map(|d| d.fixed_offset())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The instant of local time `t` in `tz`; `later` picks the second occurrence of a
/// time the clocks went back over. `None` when the clocks skipped `t`.
fn instant<Tz: TimeZone>(tz: &Tz, t: NaiveDateTime, later: bool) -> Option<Instant> {
    let all = local_instants(tz, t);
    if later {
        all.last().copied()
    } else {
        all.first().copied()
    }
}

/// The first instant at or after local time `t`: its instant, or when the clocks
/// skipped `t`, the moment they jumped (the first local time after the gap). `None`
/// only outside the calendar or past a gap longer than two days.
fn at_or_after<Tz: TimeZone>(tz: &Tz, t: NaiveDateTime, later: bool) -> Option<Instant> {
    if let Some(i) = instant(tz, t, later) {
        return Some(i);
    }
    // Walk out of the gap by minutes, then back to its first second.
    let mut end = t;
    for _ in 0..2 * 24 * 60 {
        end = end.checked_add_signed(TimeDelta::minutes(1))?;
        if instant(tz, end, false).is_some() {
            for _ in 0..60 {
                let prev = end.checked_sub_signed(TimeDelta::seconds(1))?;
                if instant(tz, prev, false).is_none() {
                    break;
                }
                end = prev;
            }
            return instant(tz, end, false);
        }
    }
    None
}

/// The span of local times `[first, next)` as instants: from the first instant of
/// `first` (its earlier occurrence) to the second before the last occurrence of `next`.
/// `None` when every time of it was skipped.
fn local_span<Tz: TimeZone>(tz: &Tz, first: NaiveDateTime, next: NaiveDateTime) -> Option<Point> {
    let a = at_or_after(tz, first, false)?;
    let b = at_or_after(tz, next, true)? - TimeDelta::seconds(1);
    (a <= b).then_some(Point::Span(a, b))
}

/// Parse one selector text into what it names.
fn parse_point<Tz: TimeZone>(s: &str, now: &DateTime<Tz>) -> Result<Point, SelectorError> {
    let tz = now.timezone();
    let now_fixed = now.fixed_offset();
    let today = now.date_naive();
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
        "now" => return Ok(Point::Span(now_fixed, now_fixed)),
        "today" => {
            return day_span(&tz, today).ok_or_else(|| SelectorError::OutOfRange {
                input: s.trim().to_string(),
            })
        }
        "yesterday" => {
            return today
                .pred_opt()
                .and_then(|day| day_span(&tz, day))
                .ok_or_else(|| SelectorError::OutOfRange {
                    input: s.trim().to_string(),
                });
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
        let (first, next) = p.ok_or_else(|| SelectorError::InvalidDate {
            input: s.trim().to_string(),
        })?;
        return local_span(&tz, first, next).ok_or_else(|| SelectorError::SkippedTime {
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

/// A whole local calendar day, as instants (23 or 25 hours long across a clock change).
fn day_span<Tz: TimeZone>(tz: &Tz, day: NaiveDate) -> Option<Point> {
    local_span(
        tz,
        day.and_time(NaiveTime::MIN),
        day.succ_opt()?.and_time(NaiveTime::MIN),
    )
}

/// `YYYY-MM-DD`, `YYYY-MM-DD HH:MM`, `YYYY-MM-DD HH:MM:SS` (or `t` instead of the
/// space, the text being lower-cased), as the local times `[first, next)` it covers.
/// `None` when the shape does not match; `Some(None)` when it does but the values are
/// not a real date or time.
fn parse_date_time(s: &str) -> Option<Option<(NaiveDateTime, NaiveDateTime)>> {
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
    let span = |first: NaiveDateTime, len: TimeDelta| Some((first, first.checked_add_signed(len)?));
    let Some(tp) = time_parts else {
        return Some(span(date.and_time(NaiveTime::MIN), TimeDelta::days(1)));
    };
    let num = |p: &str| p.parse::<u32>().ok();
    let (h, min) = (num(tp[0])?, num(tp[1])?);
    Some(match tp.get(2) {
        Some(sec) => NaiveTime::from_hms_opt(h, min, num(sec)?)
            .and_then(|t| span(date.and_time(t), TimeDelta::seconds(1))),
        None => NaiveTime::from_hms_opt(h, min, 0)
            .and_then(|t| span(date.and_time(t), TimeDelta::minutes(1))),
    })
}

/// `N unit ago`. `None` when the shape does not match; `Some(None)` when the
/// result falls outside the calendar. Minutes and hours are durations before `now`;
/// days and longer go back in the local calendar to the same clock time (taken with
/// the offset `now` has when it occurs twice; the jump when it was skipped).
fn parse_relative<Tz: TimeZone>(s: &str, now: &DateTime<Tz>) -> Option<Option<Instant>> {
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
    let fixed = now.fixed_offset();
    let minutes = |per: u64| {
        n.checked_mul(per)
            .and_then(|m| i64::try_from(m).ok())
            .and_then(TimeDelta::try_minutes)
            .and_then(|d| fixed.checked_sub_signed(d))
    };
    let local = now.naive_local();
    let tz = now.timezone();
    let calendar = |t: Option<NaiveDateTime>| {
        let t = t?;
        let same_offset = instant(&tz, t, true).filter(|i| i.offset() == fixed.offset());
        same_offset.or_else(|| at_or_after(&tz, t, false))
    };
    let months = |per: u32| {
        calendar(
            u32::try_from(n)
                .ok()
                .and_then(|n| n.checked_mul(per))
                .and_then(|m| local.checked_sub_months(Months::new(m))),
        )
    };
    Some(match unit {
        "minute" | "min" => minutes(1),
        "hour" => minutes(60),
        "day" => calendar(local.checked_sub_days(Days::new(n))),
        "week" => calendar(
            n.checked_mul(7)
                .and_then(|d| local.checked_sub_days(Days::new(d))),
        ),
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

    /// The instant of a UTC time, as selectors hold instants.
    fn u(s: &str) -> Instant {
        Utc.from_utc_datetime(&t(s)).fixed_offset()
    }

    /// Sessions timed by their IDs, read as UTC.
    fn timed(list: &[&str]) -> Vec<SessionTime> {
        list.iter()
            .map(|s| {
                SessionTime::from_id(s, &Utc).unwrap_or(SessionTime {
                    id: s.to_string(),
                    time: DateTime::UNIX_EPOCH,
                })
            })
            .collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A made-up history around late November 2026.
    fn history() -> Vec<SessionTime> {
        timed(&[
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

    /// "Now" for the tests: Sunday 2026-11-22 12:00:00 UTC.
    fn now() -> DateTime<Utc> {
        Utc.from_utc_datetime(&t("2026-11-22 12:00:00"))
    }

    /// Each `(text, time)`: `text` parses, at `now()`, to "the newest session at or
    /// before `time`".
    fn assert_parse_at_or_before(cases: &[(&str, &str)]) {
        for &(text, at) in cases {
            assert_eq!(
                parse(text, &now()),
                Ok(Selector::AtOrBefore(u(at))),
                "{text:?}"
            );
        }
    }

    fn pick(text: &str) -> Result<String, SelectorError> {
        resolve(&parse(text, &now())?, &history())
    }

    fn pick_range(text: &str) -> Result<Vec<String>, SelectorError> {
        resolve_range(&parse_range(text, &now())?, &history())
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
        assert_eq!(parse("latest", &now()), Ok(Selector::Latest));
        assert_eq!(parse("  LATEST ", &now()), Ok(Selector::Latest));
        assert_eq!(parse("newest", &now()), Ok(Selector::Latest));
        assert_eq!(parse("oldest", &now()), Ok(Selector::Oldest));
        assert_eq!(
            parse("now", &now()),
            Ok(Selector::AtOrBefore(now().fixed_offset()))
        );
        assert_eq!(
            parse("today", &now()),
            Ok(Selector::AtOrBefore(u("2026-11-22 23:59:59")))
        );
        assert_eq!(
            parse("Yesterday", &now()),
            Ok(Selector::AtOrBefore(u("2026-11-21 23:59:59")))
        );
    }

    #[test]
    fn parse_exact_id() {
        assert_eq!(
            parse("20261120-140012", &now()),
            Ok(Selector::Exact("20261120-140012".into()))
        );
        assert_eq!(
            parse("20261131-140012", &now()),
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
                parse(text, &now()),
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
        let now = Utc.from_utc_datetime(&t("2026-03-31 08:00:00"));
        assert_eq!(
            parse("1 month ago", &now),
            Ok(Selector::AtOrBefore(u("2026-02-28 08:00:00")))
        );
        let now = Utc.from_utc_datetime(&t("2024-03-31 08:00:00"));
        assert_eq!(
            parse("1 month ago", &now),
            Ok(Selector::AtOrBefore(u("2024-02-29 08:00:00")))
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
                parse(text, &now()),
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
            let err = parse(text, &now()).unwrap_err();
            assert_eq!(
                err,
                SelectorError::Unrecognized { input: text.into() },
                "{text:?}"
            );
            let msg = err.to_string();
            assert!(msg.contains("YYYYMMDD-HHMMSS"), "{msg}");
            assert!(msg.contains("days|weeks|months"), "{msg}");
        }
        assert_eq!(parse("   ", &now()), Err(SelectorError::Empty));
        assert!(matches!(
            parse("oldest,latest", &now()),
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
                at: u("2026-09-22 12:00:00"),
                oldest: "20261101-020000".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "no session at or before 2026-09-22 12:00:00 +00:00; the oldest session is 20261101-020000"
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
            Selector::AtOrBefore(now().fixed_offset()),
        ] {
            assert_eq!(resolve(&sel, &[]), Err(SelectorError::NoSessions));
        }
        let err = resolve(&Selector::Exact("20261120-140012".into()), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "session 20261120-140012 does not exist (there are no sessions)"
        );
        let one = timed(&["20261120-140012"]);
        let err = resolve(&Selector::Exact("20261120-140013".into()), &one).unwrap_err();
        assert_eq!(
            err.to_string(),
            "session 20261120-140013 does not exist (the only session is 20261120-140012)"
        );
    }

    #[test]
    fn resolve_ignores_order_and_invalid_entries() {
        let sessions = timed(&[
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
        let sel = parse("2026-11-19", &now()).expect("parses");
        assert_eq!(resolve(&sel, &sessions).as_deref(), Ok("20261119-230000"));
        assert_eq!(
            resolve(
                &Selector::AtOrBefore(now().fixed_offset()),
                &timed(&["junk"])
            ),
            Err(SelectorError::NoSessions)
        );
    }

    #[test]
    fn parse_range_roles() {
        let r = parse_range("2026-11-19,2026-11-20", &now()).expect("parses");
        assert_eq!(r.start, Bound::Time(u("2026-11-19 00:00:00")));
        assert_eq!(r.end, Bound::Time(u("2026-11-20 23:59:59")));

        let r = parse_range(" yesterday , today ", &now()).expect("parses");
        assert_eq!(r.start, Bound::Time(u("2026-11-21 00:00:00")));
        assert_eq!(r.end, Bound::Time(u("2026-11-22 23:59:59")));

        let r = parse_range("2026-11-20 14:00,2026-11-20T14:00", &now()).expect("parses");
        assert_eq!(r.start, Bound::Time(u("2026-11-20 14:00:00")));
        assert_eq!(r.end, Bound::Time(u("2026-11-20 14:00:59")));

        let r = parse_range("3 days ago,1 day ago", &now()).expect("parses");
        assert_eq!(r.start, Bound::Time(u("2026-11-19 12:00:00")));
        assert_eq!(r.end, Bound::Time(u("2026-11-21 12:00:00")));

        let r = parse_range("oldest,20261120-140012", &now()).expect("parses");
        assert_eq!(r.start, Bound::Oldest);
        assert_eq!(r.end, Bound::Exact("20261120-140012".into()));
        assert_eq!(r.to_string(), "oldest,20261120-140012");

        let r = parse_range("2 weeks ago,latest", &now()).expect("parses");
        assert_eq!(r.start, Bound::Time(u("2026-11-08 12:00:00")));
        assert_eq!(r.end, Bound::Latest);
    }

    #[test]
    fn parse_range_errors() {
        for text in ["2026-11-20", "a,b,c", ",latest", "oldest,", " , "] {
            let err = parse_range(text, &now()).unwrap_err();
            assert!(
                matches!(err, SelectorError::NotARange { .. }),
                "{text:?}: {err:?}"
            );
            assert!(err.to_string().contains("START,END"), "{err}");
        }
        assert_eq!(
            parse_range("oldest,soon", &now()),
            Err(SelectorError::Unrecognized {
                input: "soon".into()
            })
        );
        assert_eq!(
            parse_range("2026-11-21,2026-11-20", &now()),
            Err(SelectorError::StartAfterEnd {
                start: "2026-11-21 00:00:00 +00:00".into(),
                end: "2026-11-20 23:59:59 +00:00".into(),
            })
        );
        assert!(matches!(
            parse_range("today,yesterday", &now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            parse_range("20261121-000000,20261120-180000", &now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        assert!(matches!(
            parse_range("1 day ago,2 days ago", &now()),
            Err(SelectorError::StartAfterEnd { .. })
        ));
        let msg = parse_range("today,yesterday", &now())
            .unwrap_err()
            .to_string();
        assert_eq!(
            msg,
            "the range start (2026-11-22 00:00:00 +00:00) is after its end \
             (2026-11-21 23:59:59 +00:00)"
        );
    }

    #[test]
    fn resolve_ranges() {
        assert_eq!(
            pick_range("oldest,latest"),
            Ok(history().into_iter().map(|s| s.id).collect())
        );
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
        let r = parse_range("oldest,latest", &now()).expect("parses");
        assert_eq!(resolve_range(&r, &[]), Ok(vec![]));
        let r = parse_range("latest,2020-01-01", &now()).expect("parses");
        assert_eq!(resolve_range(&r, &[]), Ok(vec![]));
    }

    #[test]
    fn range_start_after_end_once_sessions_are_known() {
        let err = pick_range("latest,2026-11-20").unwrap_err();
        assert_eq!(
            err,
            SelectorError::StartAfterEnd {
                start: "latest, 20261122-090000".into(),
                end: "2026-11-20 23:59:59 +00:00".into(),
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
        let r = parse_range("latest,oldest", &now()).expect("parses");
        assert_eq!(
            resolve_range(&r, &timed(&["20261120-140012"])),
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

    /// Europe/Berlin in 2026: CET (+01:00), CEST (+02:00) from 2026-03-29 01:00 UTC to
    /// 2026-10-25 01:00 UTC. Clocks jump from 02:00 to 03:00 in March and go back from
    /// 03:00 to 02:00 in October.
    #[derive(Debug, Clone, Copy)]
    struct Berlin2026;

    fn hours(h: i32) -> FixedOffset {
        FixedOffset::east_opt(h * 3600).expect("offset")
    }

    impl TimeZone for Berlin2026 {
        type Offset = FixedOffset;
        fn from_offset(_: &FixedOffset) -> Self {
            Berlin2026
        }
        fn offset_from_local_date(&self, local: &NaiveDate) -> LocalResult<FixedOffset> {
            self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
        }
        fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> LocalResult<FixedOffset> {
            // Earlier instant first: +02:00 before +01:00.
            let fits: Vec<FixedOffset> = [hours(2), hours(1)]
                .into_iter()
                .filter(|o| {
                    let utc = *local - TimeDelta::seconds(i64::from(o.local_minus_utc()));
                    self.offset_from_utc_datetime(&utc) == *o
                })
                .collect();
            match fits.as_slice() {
                [] => LocalResult::None,
                [a] => LocalResult::Single(*a),
                [a, b, ..] => LocalResult::Ambiguous(*a, *b),
            }
        }
        fn offset_from_utc_date(&self, utc: &NaiveDate) -> FixedOffset {
            self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
        }
        fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> FixedOffset {
            if (t("2026-03-29 01:00:00")..t("2026-10-25 01:00:00")).contains(utc) {
                hours(2)
            } else {
                hours(1)
            }
        }
    }

    /// Sessions `(ID, UTC time)`.
    fn at_utc(list: &[(&str, &str)]) -> Vec<SessionTime> {
        list.iter()
            .map(|&(id, time)| SessionTime {
                id: id.to_string(),
                time: Utc.from_utc_datetime(&t(time)),
            })
            .collect()
    }

    fn berlin(utc: &str) -> DateTime<Berlin2026> {
        Utc.from_utc_datetime(&t(utc)).with_timezone(&Berlin2026)
    }

    /// Around the night the clocks go back: 02:00-03:00 happens twice, and the IDs of
    /// sessions taken in the second pass are moved on to stay increasing.
    fn autumn() -> Vec<SessionTime> {
        at_utc(&[
            ("20261025-015000", "2026-10-24 23:50:00"), // 01:50 CEST
            ("20261025-022000", "2026-10-25 00:20:00"), // 02:20 CEST
            ("20261025-024000", "2026-10-25 00:40:00"), // 02:40 CEST
            ("20261025-024001", "2026-10-25 01:10:00"), // 02:10 CET, ID moved on
            ("20261025-025000", "2026-10-25 01:50:00"), // 02:50 CET
            ("20261025-030000", "2026-10-25 02:00:00"), // 03:00 CET
        ])
    }

    #[test]
    fn relative_times_across_the_clocks_going_back() {
        // 03:05 CET.
        let now = berlin("2026-10-25 02:05:00");
        let pick = |text: &str| resolve(&parse(text, &now).expect(text), &autumn());
        // 1 hour ago is 01:05 UTC (02:05 CET): the 02:40 CEST session, 25 minutes
        // before it; the local clock alone would say 02:05 and pick 01:50.
        assert_eq!(pick("1 hour ago").as_deref(), Ok("20261025-024000"));
        assert_eq!(pick("an hour ago").as_deref(), Ok("20261025-024000"));
        assert_eq!(pick("30 minutes ago").as_deref(), Ok("20261025-024001"));
        assert_eq!(pick("2 hours ago").as_deref(), Ok("20261025-015000"));
        assert_eq!(pick("now").as_deref(), Ok("20261025-030000"));
        assert_eq!(
            parse("1 hour ago", &now),
            Ok(Selector::AtOrBefore(u("2026-10-25 01:05:00")))
        );
        // A clock time of the repeated hour names both passes: as one session, the
        // last of the second pass.
        assert_eq!(pick("2026-10-25 02:30").as_deref(), Ok("20261025-024001"));
        let range = parse_range("2026-10-25 02:00,2026-10-25 02:59", &now).expect("range");
        assert_eq!(
            range.start,
            Bound::Time(u("2026-10-25 00:00:00").with_timezone(&hours(2)))
        );
        assert_eq!(
            range.end,
            Bound::Time(u("2026-10-25 01:59:59").with_timezone(&hours(1)))
        );
        assert_eq!(
            resolve_range(&range, &autumn()),
            Ok(ids(&[
                "20261025-022000",
                "20261025-024000",
                "20261025-024001",
                "20261025-025000"
            ]))
        );
        // The day of the change is 25 hours long.
        let day = parse_range("today,today", &now).expect("range");
        assert_eq!(day.start, Bound::Time(u("2026-10-24 22:00:00")));
        assert_eq!(day.end, Bound::Time(u("2026-10-25 22:59:59")));
        // A day before noon (CET) is noon (CEST) of the day before, 25 hours earlier.
        let noon = berlin("2026-10-25 11:00:00");
        assert_eq!(
            parse("1 day ago", &noon),
            Ok(Selector::AtOrBefore(u("2026-10-24 10:00:00")))
        );
    }

    #[test]
    fn relative_times_across_the_clocks_jumping_forward() {
        let spring = at_utc(&[
            ("20260329-003000", "2026-03-28 23:30:00"), // 00:30 CET
            ("20260329-014000", "2026-03-29 00:40:00"), // 01:40 CET
            ("20260329-031000", "2026-03-29 01:10:00"), // 03:10 CEST
        ]);
        // 03:30 CEST: an hour ago was 01:30 CET; 02:30 never happened.
        let now = berlin("2026-03-29 01:30:00");
        let pick = |text: &str, now: &DateTime<Berlin2026>| {
            resolve(&parse(text, now).expect(text), &spring)
        };
        assert_eq!(pick("1 hour ago", &now).as_deref(), Ok("20260329-003000"));
        assert_eq!(
            pick("50 minutes ago", &now).as_deref(),
            Ok("20260329-014000")
        );
        assert_eq!(
            parse("2026-03-29 02:30", &now),
            Err(SelectorError::SkippedTime {
                input: "2026-03-29 02:30".into()
            })
        );
        assert!(parse("2026-03-29 02:30:00", &now)
            .unwrap_err()
            .to_string()
            .contains("the clocks skipped it"));
        // A day before 02:30 CEST of the 30th is the jump, 03:00 CEST of the 29th.
        let next_day = berlin("2026-03-30 00:30:00");
        assert_eq!(
            parse("1 day ago", &next_day),
            Ok(Selector::AtOrBefore(u("2026-03-29 01:00:00")))
        );
        assert_eq!(
            pick("1 day ago", &next_day).as_deref(),
            Ok("20260329-014000")
        );
        // The day of the change is 23 hours long.
        let day = parse_range("yesterday,yesterday", &next_day).expect("range");
        assert_eq!(day.start, Bound::Time(u("2026-03-28 23:00:00")));
        assert_eq!(day.end, Bound::Time(u("2026-03-29 21:59:59")));
        assert_eq!(
            resolve_range(&day, &spring),
            Ok(ids(&[
                "20260329-003000",
                "20260329-014000",
                "20260329-031000"
            ]))
        );
    }

    #[test]
    fn session_bounds_compare_by_id_time_bounds_by_time() {
        // `latest` is by ID even when a clock set back gave it an earlier time.
        let odd = at_utc(&[
            ("20261120-100000", "2026-11-20 10:00:00"),
            ("20261120-110000", "2026-11-20 09:00:00"),
        ]);
        assert_eq!(
            resolve(&Selector::Latest, &odd).as_deref(),
            Ok("20261120-110000")
        );
        let r = parse_range("20261120-100000,20261120-110000", &now()).expect("range");
        assert_eq!(
            resolve_range(&r, &odd),
            Ok(ids(&["20261120-100000", "20261120-110000"]))
        );
        let sel = parse("2026-11-20 09:30:00", &now()).expect("parses");
        assert_eq!(resolve(&sel, &odd).as_deref(), Ok("20261120-110000"));
        assert!(sel.needs_times() && r.start != Bound::Latest);
        assert!(!Selector::Latest.needs_times() && !r.needs_times());
    }
}
