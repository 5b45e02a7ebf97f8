//! Retention schedules for `prune --auto`: which sessions to keep.
//!
//! A [`Schedule`] is written as rules like `hourly:24 daily:14 weekly:8 monthly:12
//! yearly:5 last:3`: any subset, in any order, separated by spaces or commas, each
//! period at most once and each count at least 1.
//!
//! # Semantics
//!
//! Everything is decided relative to `now`, a parameter (nothing here reads the
//! clock), with each session's absolute time (when it was taken) and `now`'s time
//! zone for the calendar.
//!
//! - `hourly:N`, `daily:N`, `weekly:N`, `monthly:N`, `yearly:N` keep the newest
//!   session of each of the last N periods counted back from `now`, the period
//!   containing `now` being the first: `hourly:24` covers the current clock hour and
//!   the 23 real hours before it (when the clocks go back, the repeated hour counts
//!   twice, each pass a period of its own; when they jump, the skipped hour is no
//!   period), `daily:14` today and the 13 local calendar days before it (23 or 25
//!   hours long across a clock change). Weeks are ISO weeks (Monday to Sunday,
//!   numbered by ISO year, so a week 53 is just another week), months calendar months
//!   and years calendar years. A period without a session keeps nothing; the rule
//!   does not reach further back to make up for it.
//! - `last:N` keeps the newest N sessions.
//! - A session is kept if any rule keeps it.
//! - The newest session of all is always kept, whatever the schedule says.
//! - Sessions after `now` (a clock that was set back, say) are always kept, and the
//!   rules are evaluated on the sessions at or before `now` only, as if the later
//!   ones did not exist.
//!
//! Keeping is stable: pruning what [`plan`] marks for removal and planning again at
//! the same `now` keeps everything that is left.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, FixedOffset, Offset, TimeZone, Timelike, Utc};

use crate::selector::SessionTime;

/// A calendar period of a retention rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Hourly,
    Daily,
    Weekly,
    Monthly,
    Yearly,
}

impl Period {
    /// All periods, shortest first.
    pub const ALL: [Period; 5] = [
        Period::Hourly,
        Period::Daily,
        Period::Weekly,
        Period::Monthly,
        Period::Yearly,
    ];

    /// The rule name, as written in a schedule.
    pub fn name(self) -> &'static str {
        match self {
            Period::Hourly => "hourly",
            Period::Daily => "daily",
            Period::Weekly => "weekly",
            Period::Monthly => "monthly",
            Period::Yearly => "yearly",
        }
    }

    /// A number for the period containing `t`; consecutive periods have
    /// consecutive numbers. Hours are real hours (starting where the local clock
    /// shows a full hour); the longer periods follow the local calendar.
    fn ordinal<Tz: TimeZone>(self, t: &DateTime<Tz>) -> i64 {
        let day = i64::from(t.date_naive().num_days_from_ce());
        match self {
            Period::Hourly => {
                let shift = i64::from(t.offset().fix().local_minus_utc()).rem_euclid(3600);
                (t.timestamp() + shift).div_euclid(3600)
            }
            Period::Daily => day,
            // Day 1 of the common era (0001-01-01) is a Monday, so this counts
            // Monday-to-Sunday weeks, the ISO weeks.
            Period::Weekly => (day - 1).div_euclid(7),
            Period::Monthly => i64::from(t.year()) * 12 + i64::from(t.month0()),
            Period::Yearly => i64::from(t.year()),
        }
    }

    /// A readable name for the period containing `t`, e.g. `2026-11-20 14h`,
    /// `2026-11-20`, `2026-W47`, `2026-11`, `2026`; an hour the clocks went back over
    /// carries its UTC offset (`2026-10-25 02h +01:00`).
    pub fn label<Tz: TimeZone>(self, t: &DateTime<Tz>) -> String {
        match self {
            Period::Hourly => {
                let local = t.naive_local();
                let hour = format!("{} {:02}h", local.date(), local.hour());
                let start = local
                    .date()
                    .and_hms_opt(local.hour(), 0, 0)
                    .unwrap_or(local);
                if crate::selector::local_instants(&t.timezone(), start).len() > 1 {
                    format!("{hour} {}", t.offset().fix())
                } else {
                    hour
                }
            }
            Period::Daily => t.date_naive().to_string(),
            Period::Weekly => {
                let w = t.date_naive().iso_week();
                format!("{:04}-W{:02}", w.year(), w.week())
            }
            Period::Monthly => format!("{:04}-{:02}", t.year(), t.month()),
            Period::Yearly => format!("{:04}", t.year()),
        }
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Rule names accepted in a schedule, for error messages.
const RULE_NAMES: &str = "last, hourly, daily, weekly, monthly, yearly";

/// Why a schedule text was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No rules at all.
    #[error(
        "empty retention schedule: give at least one rule NAME:N with NAME one of \
         {RULE_NAMES}, e.g. `daily:14 weekly:8`"
    )]
    Empty,
    /// A rule without `:N`.
    #[error("retention rule {item:?} has no count: expected NAME:N, e.g. `daily:14`")]
    MissingCount { item: String },
    /// A rule name that is not known.
    #[error("unknown retention period {name:?} in {item:?}; known: {RULE_NAMES}")]
    UnknownPeriod { item: String, name: String },
    /// A count that is not a whole number from 1 to 4294967295.
    #[error("retention rule {item:?}: count {count:?} is not a positive whole number")]
    BadCount { item: String, count: String },
    /// A count of zero.
    #[error(
        "retention rule {item:?}: the count must be at least 1 \
         (leave the rule out instead)"
    )]
    ZeroCount { item: String },
    /// The same rule twice.
    #[error("retention rule {name:?} is given more than once")]
    Duplicate { name: String },
}

/// A retention schedule. A count of 0 means the rule is not used; [`Schedule::parse`]
/// never produces a schedule without rules, but one can be built by hand, and
/// then keeps only the newest session and any after `now`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Schedule {
    /// Keep the newest N sessions.
    pub last: u32,
    pub hourly: u32,
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
    pub yearly: u32,
}

impl Schedule {
    /// Parse rules `NAME:N` separated by whitespace and/or commas. Names are
    /// case-insensitive; see [`ScheduleError`] for what is rejected.
    pub fn parse(s: &str) -> Result<Schedule, ScheduleError> {
        let mut sched = Schedule::default();
        let mut any = false;
        for item in s
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|i| !i.is_empty())
        {
            let (name, count) = item
                .split_once(':')
                .ok_or_else(|| ScheduleError::MissingCount { item: item.into() })?;
            let lower = name.to_ascii_lowercase();
            let slot = match lower.as_str() {
                "last" => &mut sched.last,
                "hourly" => &mut sched.hourly,
                "daily" => &mut sched.daily,
                "weekly" => &mut sched.weekly,
                "monthly" => &mut sched.monthly,
                "yearly" => &mut sched.yearly,
                _ => {
                    return Err(ScheduleError::UnknownPeriod {
                        item: item.into(),
                        name: name.into(),
                    })
                }
            };
            if count.is_empty() {
                return Err(ScheduleError::MissingCount { item: item.into() });
            }
            let n: u32 = count
                .bytes()
                .all(|c| c.is_ascii_digit())
                .then(|| count.parse().ok())
                .flatten()
                .ok_or_else(|| ScheduleError::BadCount {
                    item: item.into(),
                    count: count.into(),
                })?;
            if n == 0 {
                return Err(ScheduleError::ZeroCount { item: item.into() });
            }
            if *slot != 0 {
                return Err(ScheduleError::Duplicate { name: lower });
            }
            *slot = n;
            any = true;
        }
        if any {
            Ok(sched)
        } else {
            Err(ScheduleError::Empty)
        }
    }

    /// The count of a periodic rule (0 when not used).
    pub fn count(&self, period: Period) -> u32 {
        match period {
            Period::Hourly => self.hourly,
            Period::Daily => self.daily,
            Period::Weekly => self.weekly,
            Period::Monthly => self.monthly,
            Period::Yearly => self.yearly,
        }
    }

    /// True when no rule is used.
    pub fn is_empty(&self) -> bool {
        *self == Schedule::default()
    }
}

impl FromStr for Schedule {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Schedule::parse(s)
    }
}

/// The canonical text, e.g. `last:3 daily:14 weekly:8`, which parses back to the
/// same schedule; `(none)` for a schedule without rules.
impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rules = std::iter::once(("last", self.last))
            .chain(Period::ALL.iter().map(|&p| (p.name(), self.count(p))))
            .filter(|&(_, n)| n > 0);
        let mut first = true;
        for (name, n) in rules {
            if !first {
                f.write_str(" ")?;
            }
            write!(f, "{name}:{n}")?;
            first = false;
        }
        if first {
            f.write_str("(none)")?;
        }
        Ok(())
    }
}

/// Why a session is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeepReason {
    /// It is the newest session.
    Latest,
    /// It is after `now`.
    Future,
    /// It is the `rank`-th newest session (1 = newest) and `last:N` has `N >= rank`.
    Last { rank: u32 },
    /// It is the newest session of this period, one of the last N of that kind.
    Period { period: Period, label: String },
}

impl fmt::Display for KeepReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeepReason::Latest => f.write_str("latest"),
            KeepReason::Future => f.write_str("after now"),
            KeepReason::Last { rank } => write!(f, "last #{rank}"),
            KeepReason::Period { period, label } => write!(f, "{period} {label}"),
        }
    }
}

/// The decision for one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanEntry {
    /// The session's time, in the time zone of `now`.
    pub time: DateTime<FixedOffset>,
    /// Every reason to keep it, in the order latest, after now, last, then the
    /// periods shortest first; empty when it is to be removed.
    pub reasons: Vec<KeepReason>,
}

impl PlanEntry {
    /// Whether the session is kept.
    pub fn keep(&self) -> bool {
        !self.reasons.is_empty()
    }
}

/// `keep (daily 2026-11-20, weekly 2026-W47)` or `remove`.
impl fmt::Display for PlanEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reasons.is_empty() {
            return f.write_str("remove");
        }
        f.write_str("keep (")?;
        for (i, r) in self.reasons.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}")?;
        }
        f.write_str(")")
    }
}

/// Decide, for each session time, whether `schedule` keeps it and why (see the
/// [module documentation](self)). The result is parallel to `sessions`, which
/// may be in any order; of sessions with equal times (which real IDs never have)
/// the later one in the slice counts as newer.
pub fn plan<Tz: TimeZone>(
    sessions: &[DateTime<Utc>],
    now: DateTime<Tz>,
    schedule: &Schedule,
) -> Vec<PlanEntry> {
    let tz = now.timezone();
    let local: Vec<DateTime<Tz>> = sessions.iter().map(|t| t.with_timezone(&tz)).collect();
    let mut entries: Vec<PlanEntry> = local
        .iter()
        .map(|time| PlanEntry {
            time: time.fixed_offset(),
            reasons: Vec::new(),
        })
        .collect();

    // `max_by_key` returns the last of equal maxima.
    if let Some(latest) = (0..sessions.len()).max_by_key(|&i| sessions[i]) {
        entries[latest].reasons.push(KeepReason::Latest);
    }
    for e in entries.iter_mut().filter(|e| e.time > now) {
        e.reasons.push(KeepReason::Future);
    }

    // Sessions at or before `now`, newest first.
    let mut past: Vec<usize> = (0..sessions.len())
        .filter(|&i| sessions[i] <= now)
        .collect();
    past.sort_by(|&a, &b| (sessions[b], b).cmp(&(sessions[a], a)));

    for (rank, &i) in (1..=schedule.last).zip(&past) {
        entries[i].reasons.push(KeepReason::Last { rank });
    }

    for period in Period::ALL {
        let count = i64::from(schedule.count(period));
        if count == 0 {
            continue;
        }
        let current = period.ordinal(&now);
        let mut previous: Option<i64> = None;
        for &i in &past {
            let ordinal = period.ordinal(&local[i]);
            // Newest first, so `ordinal` only decreases: past the window, done.
            if current - ordinal >= count {
                break;
            }
            if previous != Some(ordinal) {
                previous = Some(ordinal);
                entries[i].reasons.push(KeepReason::Period {
                    period,
                    label: period.label(&local[i]),
                });
            }
        }
    }
    entries
}

/// Whether each session is kept: [`plan`] without the reasons.
pub fn keep<Tz: TimeZone>(
    sessions: &[DateTime<Utc>],
    now: DateTime<Tz>,
    schedule: &Schedule,
) -> Vec<bool> {
    plan(sessions, now, schedule)
        .iter()
        .map(PlanEntry::keep)
        .collect()
}

/// [`plan`] for sessions with IDs, by the time each was taken.
pub fn plan_sessions<Tz: TimeZone>(
    sessions: &[SessionTime],
    now: DateTime<Tz>,
    schedule: &Schedule,
) -> Vec<PlanEntry> {
    let times: Vec<DateTime<Utc>> = sessions.iter().map(|s| s.time).collect();
    plan(&times, now, schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selector::time_to_id;
    use chrono::{NaiveDateTime, TimeDelta};

    /// A UTC time (the tests' time zone, unless they say otherwise).
    fn t(s: &str) -> DateTime<Utc> {
        Utc.from_utc_datetime(
            &NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M").expect("test time"),
        )
    }

    fn sched(s: &str) -> Schedule {
        Schedule::parse(s).expect("test schedule")
    }

    /// The times kept, as session IDs, oldest first.
    fn kept(sessions: &[DateTime<Utc>], now: DateTime<Utc>, schedule: &str) -> Vec<String> {
        let mut out: Vec<DateTime<Utc>> = sessions
            .iter()
            .zip(keep(sessions, now, &sched(schedule)))
            .filter(|&(_, k)| k)
            .map(|(&s, _)| s)
            .collect();
        out.sort();
        out.into_iter().map(|t| time_to_id(t.naive_utc())).collect()
    }

    fn times(list: &[&str]) -> Vec<DateTime<Utc>> {
        list.iter().map(|s| t(s)).collect()
    }

    fn period(period: Period, label: &str) -> KeepReason {
        KeepReason::Period {
            period,
            label: label.into(),
        }
    }

    /// A session every hour on the hour from 2026-09-01 00:00 to 2026-11-30 23:00.
    fn hourly_history() -> Vec<DateTime<Utc>> {
        let start = t("2026-09-01 00:00");
        (0..(30 + 31 + 30) * 24)
            .map(|h| start + TimeDelta::hours(h))
            .collect()
    }

    #[test]
    fn parse_schedules() {
        let s = sched("hourly:24 daily:14 weekly:8 monthly:12 yearly:5");
        assert_eq!(
            s,
            Schedule {
                last: 0,
                hourly: 24,
                daily: 14,
                weekly: 8,
                monthly: 12,
                yearly: 5
            }
        );
        let s = sched("  Yearly:2,last:3 ,, DAILY:7\tweekly:1\n");
        assert_eq!(
            s,
            Schedule {
                last: 3,
                daily: 7,
                weekly: 1,
                yearly: 2,
                ..Schedule::default()
            }
        );
        assert_eq!(s.to_string(), "last:3 daily:7 weekly:1 yearly:2");
        assert_eq!(s.to_string().parse::<Schedule>(), Ok(s));
        assert_eq!(sched("monthly:007").monthly, 7);
        assert_eq!(sched("daily:4294967295").daily, u32::MAX);
        assert_eq!(Schedule::default().to_string(), "(none)");
        assert!(Schedule::default().is_empty());
        assert!(!s.is_empty());
    }

    #[test]
    fn schedule_errors() {
        assert_eq!(Schedule::parse(""), Err(ScheduleError::Empty));
        assert_eq!(Schedule::parse(" , "), Err(ScheduleError::Empty));
        assert_eq!(
            Schedule::parse("daily:7 fortnightly:2"),
            Err(ScheduleError::UnknownPeriod {
                item: "fortnightly:2".into(),
                name: "fortnightly".into()
            })
        );
        assert_eq!(
            Schedule::parse("daily"),
            Err(ScheduleError::MissingCount {
                item: "daily".into()
            })
        );
        assert_eq!(
            Schedule::parse("daily:"),
            Err(ScheduleError::MissingCount {
                item: "daily:".into()
            })
        );
        for count in ["-3", "+3", "x", "3.5", "1e3", "4294967296", "3:4"] {
            let item = format!("weekly:{count}");
            assert_eq!(
                Schedule::parse(&item),
                Err(ScheduleError::BadCount {
                    item: item.clone(),
                    count: count.into()
                }),
                "{item}"
            );
        }
        assert_eq!(
            Schedule::parse("hourly:0"),
            Err(ScheduleError::ZeroCount {
                item: "hourly:0".into()
            })
        );
        assert_eq!(
            Schedule::parse("daily:7 weekly:4 Daily:7"),
            Err(ScheduleError::Duplicate {
                name: "daily".into()
            })
        );
        let msg = Schedule::parse("dayly:7").unwrap_err().to_string();
        assert!(
            msg.contains("\"dayly\"") && msg.contains(RULE_NAMES),
            "{msg}"
        );
    }

    #[test]
    fn hourly_history_over_three_months() {
        let history = hourly_history();
        assert_eq!(history.len(), 2184);
        // Monday 2026-11-30, in ISO week 49.
        let now = t("2026-11-30 23:30");
        let got = kept(
            &history,
            now,
            "hourly:24 daily:14 weekly:8 monthly:12 yearly:5",
        );
        let mut want: Vec<String> = [
            "20260930-230000", // monthly, September
            // weekly, Sundays: weeks 42 to 46.
            "20261018-230000",
            "20261025-230000",
            "20261031-230000", // monthly, October
            "20261101-230000",
            "20261108-230000",
            "20261115-230000",
        ]
        .map(String::from)
        .to_vec();
        // daily: November 17 to 29 (the 22nd and 29th are also weekly).
        for day in 17..=29 {
            want.push(format!("202611{day}-230000"));
        }
        // hourly: every hour of November 30.
        for hour in 0..=23 {
            want.push(format!("20261130-{hour:02}0000"));
        }
        want.sort();
        assert_eq!(got, want);
        assert_eq!(got.len(), 44);

        let plan = plan(
            &history,
            now,
            &sched("hourly:24 daily:14 weekly:8 monthly:12 yearly:5"),
        );
        let by_time = |s: &str| {
            plan.iter()
                .find(|e| e.time == t(s))
                .expect("session in plan")
                .reasons
                .clone()
        };
        assert_eq!(
            by_time("2026-11-30 23:00"),
            vec![
                KeepReason::Latest,
                period(Period::Hourly, "2026-11-30 23h"),
                period(Period::Daily, "2026-11-30"),
                period(Period::Weekly, "2026-W49"),
                period(Period::Monthly, "2026-11"),
                period(Period::Yearly, "2026"),
            ]
        );
        assert_eq!(
            by_time("2026-11-22 23:00"),
            vec![
                period(Period::Daily, "2026-11-22"),
                period(Period::Weekly, "2026-W47"),
            ]
        );
        assert_eq!(
            by_time("2026-10-31 23:00"),
            vec![period(Period::Monthly, "2026-10")]
        );
        assert_eq!(
            by_time("2026-11-30 00:00"),
            vec![period(Period::Hourly, "2026-11-30 00h")]
        );
        assert_eq!(by_time("2026-11-29 22:00"), vec![]);
        assert_eq!(by_time("2026-09-01 00:00"), vec![]);
    }

    #[test]
    fn pruning_is_stable() {
        let history = hourly_history();
        let now = t("2026-11-30 23:30");
        let s = sched("last:5 hourly:24 daily:14 weekly:8 monthly:12 yearly:5");
        let first = keep(&history, now, &s);
        let survivors: Vec<DateTime<Utc>> = history
            .iter()
            .zip(&first)
            .filter(|&(_, &k)| k)
            .map(|(&h, _)| h)
            .collect();
        assert!(survivors.len() < history.len());
        assert!(keep(&survivors, now, &s).into_iter().all(|k| k));
    }

    #[test]
    fn sparse_history_keeps_nothing_for_empty_periods() {
        let history = times(&[
            "2025-06-15 10:00",
            "2026-01-10 08:00",
            "2026-10-03 12:00",
            "2026-11-18 07:00",
            "2026-11-18 19:00",
        ]);
        // Sunday 2026-11-22, ISO week 47.
        let now = t("2026-11-22 12:00");
        // Weeks 44 to 46 and September have no session; nothing older is taken
        // instead.
        assert_eq!(
            kept(&history, now, "daily:7 weekly:4 monthly:3"),
            ["20261003-120000", "20261118-190000"]
        );
        assert_eq!(
            kept(&history, now, "daily:7 weekly:4 monthly:3 yearly:2"),
            ["20250615-100000", "20261003-120000", "20261118-190000"]
        );
        assert_eq!(kept(&history, now, "daily:4"), ["20261118-190000"]);
        // Today and yesterday have no session: only the latest survives.
        assert_eq!(kept(&history, now, "daily:2"), ["20261118-190000"]);
        let p = plan(&history, now, &sched("daily:2"));
        assert_eq!(p[4].reasons, vec![KeepReason::Latest]);
        assert!(p[..4].iter().all(|e| !e.keep()));
    }

    #[test]
    fn month_and_year_boundaries() {
        let history = times(&["2026-12-31 22:00", "2026-12-31 23:50", "2027-01-01 00:05"]);
        let now = t("2027-01-01 00:10");
        assert_eq!(kept(&history, now, "daily:1"), ["20270101-000500"]);
        assert_eq!(
            kept(&history, now, "daily:2"),
            ["20261231-235000", "20270101-000500"]
        );
        assert_eq!(kept(&history, now, "monthly:1"), ["20270101-000500"]);
        assert_eq!(
            kept(&history, now, "monthly:2"),
            ["20261231-235000", "20270101-000500"]
        );
        assert_eq!(kept(&history, now, "yearly:1"), ["20270101-000500"]);
        assert_eq!(
            kept(&history, now, "yearly:2"),
            ["20261231-235000", "20270101-000500"]
        );
        assert_eq!(
            kept(&history, now, "hourly:2"),
            ["20261231-235000", "20270101-000500"]
        );
        assert_eq!(
            kept(&history, now, "hourly:3"),
            ["20261231-220000", "20261231-235000", "20270101-000500"]
        );
        // 2026-12-31 and 2027-01-01 are both in ISO week 2026-W53.
        assert_eq!(kept(&history, now, "weekly:1"), ["20270101-000500"]);
        let p = plan(&history, now, &sched("weekly:1 monthly:2"));
        assert_eq!(p[1].reasons, vec![period(Period::Monthly, "2026-12")]);
        assert_eq!(
            p[2].reasons,
            vec![
                KeepReason::Latest,
                period(Period::Weekly, "2026-W53"),
                period(Period::Monthly, "2027-01"),
            ]
        );
    }

    #[test]
    fn leap_day_and_month_lengths() {
        let history = times(&[
            "2024-01-31 12:00",
            "2024-02-28 12:00",
            "2024-02-29 12:00",
            "2024-03-01 12:00",
        ]);
        let now = t("2024-03-01 13:00");
        assert_eq!(
            kept(&history, now, "daily:2"),
            ["20240229-120000", "20240301-120000"]
        );
        assert_eq!(
            kept(&history, now, "monthly:3"),
            ["20240131-120000", "20240229-120000", "20240301-120000"]
        );
    }

    #[test]
    fn iso_week_53() {
        // 2026 has 53 ISO weeks: W53 runs Monday 2026-12-28 to Sunday 2027-01-03.
        let history = times(&[
            "2026-12-27 12:00", // Sunday, 2026-W52
            "2026-12-28 12:00", // Monday, 2026-W53
            "2026-12-31 12:00", // Thursday, 2026-W53
            "2027-01-03 12:00", // Sunday, 2026-W53
            "2027-01-04 12:00", // Monday, 2027-W01
        ]);
        let now = t("2027-01-05 12:00");
        assert_eq!(
            kept(&history, now, "weekly:3"),
            ["20261227-120000", "20270103-120000", "20270104-120000"]
        );
        assert_eq!(
            kept(&history, now, "weekly:2"),
            ["20270103-120000", "20270104-120000"]
        );
        let p = plan(&history, now, &sched("weekly:3"));
        let labels: Vec<String> = p.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            labels,
            [
                "keep (weekly 2026-W52)",
                "remove",
                "remove",
                "keep (weekly 2026-W53)",
                "keep (latest, weekly 2027-W01)",
            ]
        );
    }

    #[test]
    fn iso_week_one_starting_in_the_previous_year() {
        // 2026-W01 runs Monday 2025-12-29 to Sunday 2026-01-04.
        let history = times(&["2025-12-28 09:00", "2025-12-29 09:00", "2026-01-02 09:00"]);
        let now = t("2026-01-04 20:00");
        assert_eq!(kept(&history, now, "weekly:1"), ["20260102-090000"]);
        assert_eq!(
            kept(&history, now, "weekly:2"),
            ["20251228-090000", "20260102-090000"]
        );
        // Calendar years, not ISO years.
        assert_eq!(
            kept(&history, now, "yearly:2"),
            ["20251229-090000", "20260102-090000"]
        );
    }

    #[test]
    fn current_hour_counts() {
        let history = times(&[
            "2026-11-22 12:10",
            "2026-11-22 12:50",
            "2026-11-22 13:20",
            "2026-11-22 14:05",
        ]);
        let now = t("2026-11-22 14:30");
        assert_eq!(
            kept(&history, now, "hourly:2"),
            ["20261122-132000", "20261122-140500"]
        );
        assert_eq!(
            kept(&history, now, "hourly:3"),
            ["20261122-125000", "20261122-132000", "20261122-140500"]
        );
        // At the very start of an hour, that (still empty) hour is the first of the
        // window: hourly:2 covers 14h and 13h only.
        let now = t("2026-11-22 14:00");
        assert_eq!(kept(&history[..3], now, "hourly:2"), ["20261122-132000"]);
        assert_eq!(
            kept(&history[..3], now, "hourly:3"),
            ["20261122-125000", "20261122-132000"]
        );
    }

    #[test]
    fn latest_is_always_kept() {
        let history = times(&["2019-05-01 10:00", "2020-01-01 00:00"]);
        let now = t("2026-11-22 12:00");
        assert_eq!(
            kept(&history, now, "hourly:1 daily:1 weekly:1"),
            ["20200101-000000"]
        );
        assert_eq!(
            plan(&history, now, &Schedule::default())[1].reasons,
            vec![KeepReason::Latest]
        );
        assert_eq!(keep(&history, now, &Schedule::default()), [false, true]);
        assert_eq!(keep(&[], now, &sched("daily:3")), Vec::<bool>::new());
        assert_eq!(keep(&history[..1], now, &sched("daily:3")), [true]);
    }

    #[test]
    fn future_sessions_are_kept_and_ignored_by_rules() {
        let history = times(&[
            "2026-11-22 10:00",
            "2026-11-22 11:00",
            "2026-11-22 13:00",
            "2026-11-23 08:00",
        ]);
        let now = t("2026-11-22 12:00");
        let p = plan(&history, now, &sched("daily:1 last:1"));
        assert_eq!(p[0].reasons, vec![]);
        assert_eq!(
            p[1].reasons,
            vec![
                KeepReason::Last { rank: 1 },
                period(Period::Daily, "2026-11-22"),
            ]
        );
        assert_eq!(p[2].reasons, vec![KeepReason::Future]);
        assert_eq!(p[3].reasons, vec![KeepReason::Latest, KeepReason::Future]);
        assert_eq!(p[3].to_string(), "keep (latest, after now)");
        // A session exactly at `now` is not in the future.
        let p = plan(&times(&["2026-11-22 12:00"]), now, &sched("hourly:1"));
        assert_eq!(
            p[0].reasons,
            vec![KeepReason::Latest, period(Period::Hourly, "2026-11-22 12h")]
        );
    }

    #[test]
    fn last_n() {
        let history = times(&[
            "2026-11-01 10:00",
            "2026-11-02 10:00",
            "2026-11-03 10:00",
            "2026-11-04 10:00",
            "2026-11-05 10:00",
        ]);
        let now = t("2026-11-22 12:00");
        assert_eq!(
            kept(&history, now, "last:3"),
            ["20261103-100000", "20261104-100000", "20261105-100000"]
        );
        assert_eq!(kept(&history, now, "last:99").len(), 5);
        let p = plan(&history, now, &sched("last:2"));
        assert_eq!(
            p[4].reasons,
            vec![KeepReason::Latest, KeepReason::Last { rank: 1 }]
        );
        assert_eq!(p[3].reasons, vec![KeepReason::Last { rank: 2 }]);
        assert_eq!(p[3].to_string(), "keep (last #2)");
        assert_eq!(p[2].to_string(), "remove");
    }

    #[test]
    fn order_of_input_does_not_matter() {
        let sorted = times(&[
            "2026-10-03 12:00",
            "2026-11-18 07:00",
            "2026-11-18 19:00",
            "2026-11-20 08:00",
            "2026-11-21 23:00",
        ]);
        let shuffled = [sorted[3], sorted[0], sorted[4], sorted[2], sorted[1]];
        let now = t("2026-11-22 12:00");
        let s = sched("daily:3 monthly:2 last:1");
        // daily: 11-21 and 11-20; monthly: 11-21 and 10-03; last: 11-21.
        assert_eq!(keep(&sorted, now, &s), [true, false, false, true, true]);
        assert_eq!(keep(&shuffled, now, &s), [true, true, true, false, false]);
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        let history = times(&["0001-01-01 00:00", "1970-06-01 00:00", "2026-11-22 11:00"]);
        let now = t("2026-11-22 12:00");
        let s = "hourly:4294967295 daily:4294967295 weekly:4294967295 \
                 monthly:4294967295 yearly:4294967295 last:4294967295";
        assert_eq!(kept(&history, now, s).len(), 3);
    }

    #[test]
    fn sessions_with_ids() {
        let sessions: Vec<SessionTime> = [
            ("20261120-140000", "2026-11-20 14:00"),
            ("20261121-090000", "2026-11-21 09:00"),
            ("20261122-090000", "2026-11-22 09:00"),
        ]
        .iter()
        .map(|&(id, time)| SessionTime {
            id: id.to_string(),
            time: t(time),
        })
        .collect();
        let now = t("2026-11-22 12:00");
        let p = plan_sessions(&sessions, now, &sched("daily:2"));
        assert_eq!(p[0].time, t("2026-11-20 14:00"));
        let keep: Vec<bool> = p.iter().map(PlanEntry::keep).collect();
        assert_eq!(keep, [false, true, true]);
    }

    #[test]
    fn hours_start_where_the_local_clock_shows_them() {
        // At +05:30 a clock hour starts at half past a UTC hour.
        let india = FixedOffset::east_opt(5 * 3600 + 1800).expect("offset");
        let history = times(&["2026-11-22 06:20", "2026-11-22 06:35"]); // 11:50, 12:05
        let now = t("2026-11-22 06:40").with_timezone(&india); // 12:10
        let p = plan(&history, now, &sched("hourly:1"));
        assert_eq!(p[0].reasons, vec![]);
        assert_eq!(
            p[1].reasons,
            vec![KeepReason::Latest, period(Period::Hourly, "2026-11-22 12h")]
        );
        let p = plan(&history, now, &sched("hourly:2"));
        assert_eq!(p[0].reasons, vec![period(Period::Hourly, "2026-11-22 11h")]);
        // Days follow the local calendar: 23:50 UTC is already tomorrow there.
        let late = times(&["2026-11-21 18:20", "2026-11-21 18:40"]); // 23:50, 00:10
        let now = t("2026-11-21 19:00").with_timezone(&india);
        let p = plan(&late, now, &sched("daily:1"));
        assert!(!p[0].keep());
        assert_eq!(p[0].time.to_string(), "2026-11-21 23:50:00 +05:30");
        assert_eq!(
            p[1].reasons,
            vec![KeepReason::Latest, period(Period::Daily, "2026-11-22")]
        );
    }
}
