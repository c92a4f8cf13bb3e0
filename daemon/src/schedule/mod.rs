//! When mailings send: occurrences, the due rule and a mailing's status.
//!
//! Everything here is a pure function of a [`Schedule`] and the instant the caller passes in.
//! Nothing reads a clock, so the scheduler, `skychimpd status` and the tests all agree, and a
//! test can walk through years of occurrences in milliseconds.
//!
//! Occurrences are computed in the mailing's local wall-clock time and then placed on the UTC
//! timeline: a local time that falls into a DST gap moves forward by the gap (02:30 becomes
//! 03:30), and an ambiguous one (the hour repeated in autumn) takes its first instance.

pub mod cron;

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Days, LocalResult, Months, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::Serialize;

pub use self::cron::{CronError, CronSpec};

/// How often a mailing repeats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repeat {
    /// Once, at `start`.
    Once,
    /// Every day at the start's local time.
    Daily,
    /// Every week on the start's weekday and local time.
    Weekly,
    /// Every month on the start's day (clamped to the month's last day) and local time.
    Monthly,
    /// At the times of a cron expression, at or after `start`.
    Cron(CronSpec),
}

impl fmt::Display for Repeat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Repeat::Once => f.write_str("once"),
            Repeat::Daily => f.write_str("daily"),
            Repeat::Weekly => f.write_str("weekly"),
            Repeat::Monthly => f.write_str("monthly"),
            Repeat::Cron(spec) => write!(f, "cron {spec}"),
        }
    }
}

/// A mailing's timetable: a local start, an optional local end, a repetition and a zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// First possible occurrence, local time in `timezone`.
    pub start: NaiveDateTime,
    /// No occurrence at or after this local time.
    pub end: Option<NaiveDateTime>,
    /// How it repeats.
    pub repeat: Repeat,
    /// The zone the local times are in.
    pub timezone: Tz,
}

/// How far back the cron search looks or ahead it searches, in days: more than the longest
/// gap between two firings of any valid expression (29 February on a given weekday: 28 years).
const CRON_HORIZON_DAYS: u64 = 366 * 29;

impl Schedule {
    /// The instant a local wall-clock time means in this schedule's zone.
    pub fn instant(&self, local: NaiveDateTime) -> DateTime<Utc> {
        resolve(self.timezone, local)
    }

    /// The start as an instant.
    pub fn start_instant(&self) -> DateTime<Utc> {
        self.instant(self.start)
    }

    /// The end as an instant, if any.
    pub fn end_instant(&self) -> Option<DateTime<Utc>> {
        self.end.map(|e| self.instant(e))
    }

    /// The first occurrence at or after `t`, if any remains.
    pub fn first_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start_instant();
        let t = t.max(start);
        let found = match &self.repeat {
            Repeat::Once => Some(start).filter(|&s| s >= t),
            Repeat::Cron(spec) => self.cron_first_at_or_after(spec, t),
            _ => {
                // Start from an estimate of k and walk to the first k at or after t.
                let mut k = self.estimate_k(t);
                while k > 0 && self.periodic(k - 1)? >= t {
                    k -= 1;
                }
                loop {
                    let occ = self.periodic(k)?;
                    if occ >= t {
                        break Some(occ);
                    }
                    k += 1;
                }
            }
        };
        found.filter(|&o| self.end_instant().is_none_or(|end| o < end))
    }

    /// The first occurrence strictly after `t`.
    pub fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.first_at_or_after(t + chrono::Duration::nanoseconds(1))
    }

    /// The latest occurrence at or before `t`, if any.
    pub fn latest_at_or_before(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start_instant();
        let t = match self.end_instant() {
            Some(end) => t.min(end - chrono::Duration::nanoseconds(1)),
            None => t,
        };
        if t < start {
            return None;
        }
        match &self.repeat {
            Repeat::Once => Some(start),
            Repeat::Cron(spec) => self.cron_latest_at_or_before(spec, t),
            _ => {
                let mut k = self.estimate_k(t);
                while self.periodic(k + 1).is_some_and(|o| o <= t) {
                    k += 1;
                }
                loop {
                    let occ = self.periodic(k)?;
                    if occ <= t {
                        break Some(occ);
                    }
                    k = k.checked_sub(1)?;
                }
            }
        }
    }

    /// All occurrences from the start, in order (bounded by `end`; endless without it).
    pub fn occurrences(&self) -> impl Iterator<Item = DateTime<Utc>> + '_ {
        let mut next = self.first_at_or_after(self.start_instant());
        std::iter::from_fn(move || {
            let current = next?;
            next = self.next_after(current);
            Some(current)
        })
    }

    /// The k-th occurrence of a daily, weekly or monthly schedule, ignoring `end`.
    fn periodic(&self, k: u64) -> Option<DateTime<Utc>> {
        let local = match self.repeat {
            Repeat::Daily => self.start.checked_add_days(Days::new(k))?,
            Repeat::Weekly => self.start.checked_add_days(Days::new(k.checked_mul(7)?))?,
            // chrono clamps the 31st to the month's last day, always from the start's day.
            Repeat::Monthly => self
                .start
                .checked_add_months(Months::new(u32::try_from(k).ok()?))?,
            Repeat::Once | Repeat::Cron(_) => return (k == 0).then(|| self.start_instant()),
        };
        Some(self.instant(local))
    }

    /// A guess of the index of the occurrence near `t`; callers walk from there.
    fn estimate_k(&self, t: DateTime<Utc>) -> u64 {
        let start = self.start_instant();
        if t <= start {
            return 0;
        }
        let secs = (t - start).num_seconds().max(0) as u64;
        match self.repeat {
            Repeat::Daily => secs / 86_400,
            Repeat::Weekly => secs / (7 * 86_400),
            Repeat::Monthly => {
                let local = t.with_timezone(&self.timezone).naive_local();
                let months = (local.year_month_index() - self.start.year_month_index()).max(0);
                months as u64
            }
            Repeat::Once | Repeat::Cron(_) => 0,
        }
    }

    fn cron_first_at_or_after(&self, spec: &CronSpec, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Begin a day early: a DST shift can move an earlier local day's firing past `t`.
        let first_day = t.with_timezone(&self.timezone).date_naive().pred_opt()?;
        let mut day = first_day;
        let last_day = first_day.checked_add_days(Days::new(CRON_HORIZON_DAYS))?;
        if self.end.is_some_and(|end| end.date() < day) {
            return None;
        }
        while day <= last_day {
            if spec.matches_day(day) {
                let found = self.cron_day(spec, day).into_iter().find(|&o| o >= t);
                if found.is_some() {
                    return found;
                }
            }
            if self.end.is_some_and(|end| day > end.date()) {
                return None;
            }
            day = day.succ_opt()?;
        }
        None
    }

    fn cron_latest_at_or_before(&self, spec: &CronSpec, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let start = self.start_instant();
        let mut day = t.with_timezone(&self.timezone).date_naive().succ_opt()?;
        let first_day = self.start.date().pred_opt()?;
        while day >= first_day {
            if spec.matches_day(day) {
                let found = self
                    .cron_day(spec, day)
                    .into_iter()
                    .rev()
                    .find(|&o| o <= t && o >= start);
                if found.is_some() {
                    return found;
                }
            }
            day = day.pred_opt()?;
        }
        None
    }

    /// The instants at which the cron fires on one local day, sorted and without repeats
    /// (two local times can land on one instant when a DST gap moves one forward).
    fn cron_day(&self, spec: &CronSpec, day: NaiveDate) -> Vec<DateTime<Utc>> {
        let mut instants: Vec<_> = spec
            .times_of_day()
            .map(|time| self.instant(day.and_time(time)))
            .collect();
        instants.sort_unstable();
        instants.dedup();
        instants
    }
}

trait YearMonth {
    fn year_month_index(&self) -> i64;
}

impl YearMonth for NaiveDateTime {
    fn year_month_index(&self) -> i64 {
        use chrono::Datelike;
        i64::from(self.year()) * 12 + i64::from(self.month0())
    }
}

/// Place a local wall-clock time on the UTC timeline.
///
/// In a gap (spring forward) the offset in force before the gap is used, which moves the
/// time forward by the gap's length; an ambiguous time (fall back) takes its earlier instant.
pub fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            let before = local - chrono::Duration::days(1);
            let offset = tz.offset_from_utc_datetime(&before);
            let utc = local
                - chrono::Duration::seconds(i64::from(
                    chrono::Offset::fix(&offset).local_minus_utc(),
                ));
            Utc.from_utc_datetime(&utc)
        }
    }
}

/// The due rule: the occurrence that should run now, if any.
///
/// The latest occurrence at or before `now` runs if no run exists for it yet. With no
/// `last_run` the mailing is new: it sends it whatever its age while its interval lasts (a
/// new mailing sends at once, as the original Skychimp did), and nothing once its `end` has
/// passed; after downtime only the latest missed occurrence is considered, and only if it
/// is no older than `catch_up`. [`due_for`] passes a never-run mailing's first sighting as
/// its `last_run` when it was seen before that occurrence.
pub fn due(
    schedule: &Schedule,
    now: DateTime<Utc>,
    last_run: Option<DateTime<Utc>>,
    catch_up: Duration,
) -> Option<DateTime<Utc>> {
    let latest = schedule.latest_at_or_before(now)?;
    match last_run {
        // Never ran: its latest occurrence goes however late while its interval lasts (a
        // new mailing, a `once` deployed after its time); after its `end`, never.
        None => schedule
            .end_instant()
            .is_none_or(|end| now < end)
            .then_some(latest),
        Some(last) if last >= latest => None,
        Some(_) => {
            let late = (now - latest).to_std().unwrap_or_default();
            (late <= catch_up.max(ON_TIME)).then_some(latest)
        }
    }
}

/// [`due`] for a mailing as the database knows it. A mailing that never ran but that a
/// daemon saw before its latest occurrence is not new: that occurrence was missed (downtime,
/// an owner not verified yet, a paused mailing), so it goes only within `catch_up`, as for a
/// mailing that has run. One first seen at or after its latest occurrence (deployed late)
/// is new and sends it at once.
pub fn due_for(
    schedule: &Schedule,
    now: DateTime<Utc>,
    facts: &MailingFacts,
    catch_up: Duration,
) -> Option<DateTime<Utc>> {
    due(schedule, now, known_since(schedule, now, facts), catch_up)
}

/// What [`due_for`] compares with: the latest run's occurrence, or for a mailing that never
/// ran, when it was first seen if that was before its latest occurrence.
pub fn known_since(
    schedule: &Schedule,
    now: DateTime<Utc>,
    facts: &MailingFacts,
) -> Option<DateTime<Utc>> {
    facts.last_run.or_else(|| {
        let latest = schedule.latest_at_or_before(now)?;
        facts.first_seen.filter(|&seen| seen < latest)
    })
}

/// How late the scheduler may reach an occurrence and still be on time rather than catching
/// up: it wakes a few milliseconds after each occurrence (seconds on a busy machine), so with
/// `catch_up = "0"` ("never catch up after downtime") nothing would ever go out otherwise.
pub const ON_TIME: Duration = Duration::from_secs(60);

/// A mailing's status, as DESIGN.md names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing sent yet.
    Created,
    /// Has run and has occurrences left (or one due), or a run still going out.
    Running,
    /// No occurrence left.
    Finished,
    /// The owner's `enabled = false`.
    Paused,
    /// A manager disabled it.
    Disabled,
    /// Its owner is blocked.
    Blocked,
    /// Its owner has not confirmed their address yet.
    Unverified,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Paused => "paused",
            Status::Disabled => "disabled",
            Status::Blocked => "blocked",
            Status::Unverified => "unverified",
        };
        f.write_str(s)
    }
}

/// What the database knows about a mailing, for [`status`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailingFacts {
    /// A manager disabled it.
    pub disabled: bool,
    /// Its owner is blocked.
    pub owner_blocked: bool,
    /// Its owner must verify their address and has not.
    pub owner_unverified: bool,
    /// The occurrence of its latest scheduled run.
    pub last_run: Option<DateTime<Utc>>,
    /// When a daemon first had it in its catalog.
    pub first_seen: Option<DateTime<Utc>>,
    /// A run of it is still going out (even with no occurrence left).
    pub sending: bool,
}

/// A mailing's status at `now` and what it sends next: a due occurrence that has not run
/// (it goes as soon as the daemon sees it), else the next one; none unless it is `created`
/// or `running`. What `status`, the API and the daemon's start-up lines show.
pub fn next_send(
    schedule: &Schedule,
    enabled: bool,
    facts: &MailingFacts,
    now: DateTime<Utc>,
    catch_up: Duration,
) -> (Status, Option<DateTime<Utc>>) {
    let status = status(schedule, enabled, facts, now, catch_up);
    let next = matches!(status, Status::Created | Status::Running)
        .then(|| due_for(schedule, now, facts, catch_up).or_else(|| schedule.next_after(now)))
        .flatten();
    (status, next)
}

/// A mailing's status at `now`. What stops a mailing wins over where it is in its timetable:
/// disabled, then blocked, unverified and paused.
pub fn status(
    schedule: &Schedule,
    enabled: bool,
    facts: &MailingFacts,
    now: DateTime<Utc>,
    catch_up: Duration,
) -> Status {
    if facts.disabled {
        Status::Disabled
    } else if facts.owner_blocked {
        Status::Blocked
    } else if facts.owner_unverified {
        Status::Unverified
    } else if !enabled {
        Status::Paused
    } else if !facts.sending
        && schedule.next_after(now).is_none()
        && due_for(schedule, now, facts, catch_up).is_none()
    {
        Status::Finished
    } else if facts.last_run.is_some() {
        Status::Running
    } else {
        Status::Created
    }
}

#[cfg(test)]
mod tests;
