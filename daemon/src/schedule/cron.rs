//! Standard 5-field Unix cron (`minute hour day-of-month month day-of-week`).
//!
//! Written here rather than taken from the `cron` crate because that crate wants 6–7 fields
//! with seconds and numbers weekdays 1–7 from Sunday, so a user's `0 9 * * 1` would silently
//! fire on Sundays. This parser speaks the syntax users know: 0 and 7 are Sunday, names like
//! `MON-FRI` and `JAN`, ranges, lists, steps, `@daily` and friends, and Vixie cron's rule for
//! the two day fields: when neither starts with `*`, a day matching either one fires; when
//! one does (`*`, `*/2`), a day must match both.

use std::fmt;

use chrono::{Datelike, NaiveDate, NaiveTime, Timelike};

/// A parsed cron expression: which minutes, hours, days and months fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSpec {
    source: String,
    minutes: u64,
    hours: u32,
    days_of_month: u32,
    months: u16,
    days_of_week: u8,
    /// Whether the day-of-month field starts with `*` (`*`, `*/2`) or is `?`: then a day
    /// must match both day fields, else either (Vixie cron's `DOM_STAR`).
    dom_star: bool,
    /// The same for the day-of-week field.
    dow_star: bool,
}

/// Why a cron expression was refused; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CronError(String);

const MONTHS: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];
const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 1,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    // 7 is accepted as Sunday and folded onto 0 after parsing.
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &DAYS,
        names_from: 0,
    },
];

impl CronSpec {
    /// Parse a 5-field expression or one of `@yearly`, `@annually`, `@monthly`, `@weekly`,
    /// `@daily`, `@midnight`, `@hourly`.
    pub fn parse(expr: &str) -> Result<Self, CronError> {
        let source = expr.trim();
        let expanded = match source.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            s if s.starts_with('@') => {
                return Err(CronError(format!(
                    "unknown cron macro `{source}` (use @yearly, @monthly, @weekly, @daily or @hourly)"
                )));
            }
            _ => source,
        };
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError(format!(
                "cron needs 5 fields (minute hour day-of-month month day-of-week), found {}",
                parts.len()
            )));
        }
        let mut bits = [0u64; 5];
        for (i, (part, field)) in parts.iter().zip(FIELDS.iter()).enumerate() {
            bits[i] = parse_field(part, field)?;
        }
        let mut dow = bits[4];
        if dow & (1 << 7) != 0 {
            dow = (dow | 1) & 0x7f;
        }
        let spec = CronSpec {
            source: source.to_string(),
            minutes: bits[0],
            hours: bits[1] as u32,
            days_of_month: bits[2] as u32,
            months: bits[3] as u16,
            days_of_week: dow as u8,
            dom_star: parts[2].starts_with('*') || parts[2] == "?",
            dow_star: parts[4].starts_with('*') || parts[4] == "?",
        };
        if !spec.can_ever_fire() {
            return Err(CronError(format!(
                "cron `{source}` never fires: no month has such a day"
            )));
        }
        Ok(spec)
    }

    /// The expression as the user wrote it.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the expression fires on this calendar day.
    pub fn matches_day(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().num_days_from_sunday()) != 0;
        // Vixie cron: a field written from `*` restricts together with the other one (`*`
        // itself has every bit set); two fields written without one mean either.
        if self.dom_star || self.dow_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The local times of day at which it fires, in order.
    pub fn times_of_day(&self) -> impl DoubleEndedIterator<Item = NaiveTime> + '_ {
        (0..24u32)
            .filter(|h| self.hours & (1 << h) != 0)
            .flat_map(move |h| {
                (0..60u32)
                    .filter(|m| self.minutes & (1 << m) != 0)
                    .filter_map(move |m| NaiveTime::from_hms_opt(h, m, 0))
            })
    }

    /// Whether it fires at this local minute.
    pub fn matches(&self, date: NaiveDate, time: NaiveTime) -> bool {
        self.matches_day(date)
            && self.hours & (1 << time.hour()) != 0
            && self.minutes & (1 << time.minute()) != 0
            && time.second() == 0
    }

    /// A day-of-month that no selected month has (`30 2`, `31 4,6`) never fires unless the
    /// weekday field can fire instead.
    fn can_ever_fire(&self) -> bool {
        // `*/N` days always include the 1st; a weekday field written without `*` can fire
        // on its own.
        if self.dom_star || !self.dow_star {
            return true;
        }
        const LONGEST: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12).any(|m| {
            self.months & (1 << m) != 0
                && (1..=LONGEST[m]).any(|d| self.days_of_month & (1 << d) != 0)
        })
    }
}

impl fmt::Display for CronSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn parse_field(part: &str, field: &Field) -> Result<u64, CronError> {
    let mut bits = 0u64;
    for item in part.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| {
                    CronError(format!("bad step `{step}` in the {} field", field.name))
                })?;
                if step == 0 {
                    return Err(CronError(format!("step 0 in the {} field", field.name)));
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            (field.min, field.max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a, field)?, value(b, field)?)
        } else {
            let v = value(range, field)?;
            // `5/15` means from 5 to the end in steps of 15.
            if item.contains('/') {
                (v, field.max)
            } else {
                (v, v)
            }
        };
        if lo > hi {
            return Err(CronError(format!(
                "range `{range}` runs backwards in the {} field",
                field.name
            )));
        }
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

fn value(text: &str, field: &Field) -> Result<u32, CronError> {
    if let Some(i) = field
        .names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(text))
    {
        return Ok(i as u32 + field.names_from);
    }
    let v: u32 = text.parse().map_err(|_| {
        CronError(format!(
            "`{text}` is not a valid {} (expected {}–{}{})",
            field.name,
            field.min,
            field.max,
            if field.names.is_empty() {
                String::new()
            } else {
                format!(" or a name like {}", field.names[1])
            }
        ))
    })?;
    if v < field.min || v > field.max {
        return Err(CronError(format!(
            "{} {v} is out of range {}–{}",
            field.name, field.min, field.max
        )));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn one_is_monday_and_zero_and_seven_are_sunday() {
        let monday = date(2026, 11, 30);
        let sunday = date(2026, 11, 29);
        let mon = CronSpec::parse("0 9 * * 1").unwrap();
        assert!(mon.matches_day(monday) && !mon.matches_day(sunday));
        for e in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * sun"] {
            let s = CronSpec::parse(e).unwrap();
            assert!(s.matches_day(sunday) && !s.matches_day(monday), "{e}");
        }
    }

    #[test]
    fn names_ranges_lists_and_steps() {
        let s = CronSpec::parse("*/15 9-17 * JAN,JUL MON-FRI").unwrap();
        let times: Vec<_> = s.times_of_day().map(|t| t.to_string()).collect();
        assert_eq!(times.len(), 4 * 9);
        assert_eq!(times[0], "09:00:00");
        assert_eq!(times[1], "09:15:00");
        assert!(s.matches_day(date(2027, 1, 4)));
        assert!(!s.matches_day(date(2027, 1, 3)));
        assert!(!s.matches_day(date(2027, 2, 1)));
        let offset = CronSpec::parse("5/20 * * * *").unwrap();
        let mins: Vec<_> = offset.times_of_day().take(3).map(|t| t.minute()).collect();
        assert_eq!(mins, [5, 25, 45]);
    }

    #[test]
    fn both_day_fields_restricted_means_either() {
        let s = CronSpec::parse("0 0 1 * MON").unwrap();
        assert!(s.matches_day(date(2026, 12, 1))); // a Tuesday, but the 1st
        assert!(s.matches_day(date(2026, 12, 7))); // a Monday
        assert!(!s.matches_day(date(2026, 12, 8)));
    }

    /// A day field written from `*` (`*/2`) restricts together with the other one, as in
    /// Vixie cron: every other day, and only on weekdays.
    #[test]
    fn a_stepped_star_day_field_restricts_with_the_other() {
        let s = CronSpec::parse("0 9 */2 * MON-FRI").unwrap();
        assert!(s.matches_day(date(2027, 1, 1))); // Friday the 1st
        assert!(!s.matches_day(date(2027, 1, 2))); // Saturday the 2nd
        assert!(!s.matches_day(date(2027, 1, 3))); // Sunday the 3rd: odd, but a Sunday
        assert!(!s.matches_day(date(2027, 1, 4))); // Monday the 4th: even
        assert!(s.matches_day(date(2027, 1, 5))); // Tuesday the 5th
        // `*/7` in the weekday field is 0 and 7, Sunday: the 13th when it is a Sunday.
        let s = CronSpec::parse("0 9 13 * */7").unwrap();
        assert!(s.matches_day(date(2027, 6, 13)));
        assert!(!s.matches_day(date(2027, 1, 13)), "the 13th, a Wednesday");
        assert!(!s.matches_day(date(2027, 1, 17)), "a Sunday, the 17th");
    }

    #[test]
    fn refuses_what_it_cannot_mean() {
        for (e, needle) in [
            ("0 9 * *", "5 fields"),
            ("0 0 9 * * *", "5 fields"),
            ("60 * * * *", "minute 60 is out of range"),
            ("* 24 * * *", "hour 24"),
            ("* * 0 * *", "day of month 0"),
            ("* * * 13 *", "month 13"),
            ("* * * * 8", "day of week 8"),
            ("* * * * FUNDAY", "not a valid day of week"),
            ("*/0 * * * *", "step 0"),
            ("5-1 * * * *", "backwards"),
            ("0 0 30 2 *", "never fires"),
            ("@fortnightly", "unknown cron macro"),
        ] {
            let err = CronSpec::parse(e).unwrap_err().to_string();
            assert!(err.contains(needle), "{e}: {err}");
        }
    }

    #[test]
    fn macros_expand() {
        assert_eq!(
            CronSpec::parse("@weekly").unwrap().days_of_week,
            CronSpec::parse("0 0 * * 0").unwrap().days_of_week
        );
        assert!(CronSpec::parse("@hourly").unwrap().times_of_day().count() == 24);
    }
}
