use chrono::{Datelike, NaiveDate, Timelike, Weekday};
use proptest::prelude::*;

use super::*;

fn local(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d)
        .unwrap()
        .and_hms_opt(h, mi, 0)
        .unwrap()
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(&local(y, mo, d, h, mi))
}

fn schedule(repeat: Repeat, start: NaiveDateTime, tz: Tz) -> Schedule {
    Schedule {
        start,
        end: None,
        repeat,
        timezone: tz,
    }
}

const DAY: Duration = Duration::from_secs(86_400);

#[test]
fn weekly_keeps_local_time_across_dst() {
    let s = schedule(
        Repeat::Weekly,
        local(2026, 10, 18, 9, 0),
        chrono_tz::Europe::Berlin,
    );
    let got: Vec<_> = s.occurrences().take(3).collect();
    // CEST (UTC+2) until 25 October, then CET (UTC+1).
    assert_eq!(
        got,
        [
            utc(2026, 10, 18, 7, 0),
            utc(2026, 10, 25, 8, 0),
            utc(2026, 11, 1, 8, 0)
        ]
    );
}

#[test]
fn monthly_clamps_to_the_last_day_and_returns() {
    let s = schedule(Repeat::Monthly, local(2027, 1, 31, 12, 0), chrono_tz::UTC);
    let got: Vec<_> = s
        .occurrences()
        .take(4)
        .map(|o| o.date_naive().to_string())
        .collect();
    assert_eq!(
        got,
        ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30"]
    );
}

#[test]
fn a_time_in_the_spring_gap_moves_forward() {
    // 2027-03-14 02:30 does not exist in New York.
    let s = schedule(
        Repeat::Daily,
        local(2027, 3, 13, 2, 30),
        chrono_tz::America::New_York,
    );
    let got: Vec<_> = s.occurrences().take(3).collect();
    assert_eq!(got[0], utc(2027, 3, 13, 7, 30)); // EST
    assert_eq!(got[1], utc(2027, 3, 14, 7, 30)); // 03:30 EDT
    assert_eq!(got[2], utc(2027, 3, 15, 6, 30)); // 02:30 EDT
}

#[test]
fn an_ambiguous_autumn_time_takes_the_first() {
    let s = schedule(
        Repeat::Once,
        local(2026, 11, 1, 1, 30),
        chrono_tz::America::New_York,
    );
    assert_eq!(s.start_instant(), utc(2026, 11, 1, 5, 30)); // 01:30 EDT, not EST
}

#[test]
fn cron_zero_nine_monday_fires_on_mondays() {
    let spec = CronSpec::parse("0 9 * * 1").unwrap();
    let s = schedule(
        Repeat::Cron(spec),
        local(2026, 11, 26, 0, 0),
        chrono_tz::Europe::Moscow,
    );
    let got: Vec<_> = s.occurrences().take(5).collect();
    for o in &got {
        let l = o.with_timezone(&chrono_tz::Europe::Moscow);
        assert_eq!(l.weekday(), Weekday::Mon, "{l}");
        assert_eq!((l.hour(), l.minute()), (9, 0));
    }
    assert_eq!(got[0], utc(2026, 11, 30, 6, 0));
}

#[test]
fn cron_in_the_gap_fires_once_after_it() {
    let spec = CronSpec::parse("30 2 * * *").unwrap();
    let s = schedule(
        Repeat::Cron(spec),
        local(2027, 3, 13, 0, 0),
        chrono_tz::America::New_York,
    );
    let got: Vec<_> = s.occurrences().take(3).collect();
    assert_eq!(
        got,
        [
            utc(2027, 3, 13, 7, 30),
            utc(2027, 3, 14, 7, 30),
            utc(2027, 3, 15, 6, 30)
        ]
    );
}

#[test]
fn cron_latest_and_first_agree() {
    let spec = CronSpec::parse("*/20 8-9 * * MON-FRI").unwrap();
    let s = schedule(Repeat::Cron(spec), local(2026, 11, 2, 0, 0), chrono_tz::UTC);
    let now = utc(2026, 11, 28, 12, 0); // a Saturday
    assert_eq!(s.latest_at_or_before(now), Some(utc(2026, 11, 27, 9, 40)));
    assert_eq!(s.first_at_or_after(now), Some(utc(2026, 11, 30, 8, 0)));
}

#[test]
fn end_excludes_occurrences_at_or_after_it() {
    let mut s = schedule(Repeat::Daily, local(2026, 12, 1, 9, 0), chrono_tz::UTC);
    s.end = Some(local(2026, 12, 4, 9, 0));
    let got: Vec<_> = s.occurrences().collect();
    assert_eq!(got.len(), 3);
    assert_eq!(
        s.latest_at_or_before(utc(2027, 1, 1, 0, 0)),
        Some(utc(2026, 12, 3, 9, 0))
    );
    assert_eq!(s.first_at_or_after(utc(2026, 12, 3, 9, 1)), None);
}

#[test]
fn due_rule() {
    let s = schedule(Repeat::Daily, local(2026, 12, 1, 9, 0), chrono_tz::UTC);
    let now = utc(2026, 12, 10, 12, 0);
    // Never ran: the latest occurrence goes at once, however old the interval.
    assert_eq!(due(&s, now, None, DAY), Some(utc(2026, 12, 10, 9, 0)));
    // Already ran for it: nothing.
    assert_eq!(due(&s, now, Some(utc(2026, 12, 10, 9, 0)), DAY), None);
    // Downtime since the 5th: only the latest, once.
    assert_eq!(
        due(&s, now, Some(utc(2026, 12, 5, 9, 0)), DAY),
        Some(utc(2026, 12, 10, 9, 0))
    );
    // ...unless it is older than catch_up.
    assert_eq!(
        due(
            &s,
            now,
            Some(utc(2026, 12, 5, 9, 0)),
            Duration::from_secs(3600)
        ),
        None
    );
    // Before the start: nothing.
    assert_eq!(due(&s, utc(2026, 11, 30, 0, 0), None, DAY), None);

    // Never ran: inside its interval the latest occurrence goes; once its `end` has
    // passed, nothing, however recent the last occurrence (the 19th, here).
    let ended = Schedule {
        end: Some(local(2026, 12, 20, 0, 0)),
        ..s
    };
    let last = Some(utc(2026, 12, 19, 9, 0));
    assert_eq!(due(&ended, utc(2026, 12, 19, 12, 0), None, DAY), last);
    assert_eq!(due(&ended, utc(2026, 12, 20, 1, 0), None, DAY), None);
    assert_eq!(
        status(
            &ended,
            true,
            &MailingFacts::default(),
            utc(2026, 12, 20, 1, 0),
            DAY
        ),
        Status::Finished
    );
    // One that ran keeps the downtime rule: the 19th, missed, within catch_up.
    assert_eq!(
        due(
            &ended,
            utc(2026, 12, 20, 1, 0),
            Some(utc(2026, 12, 18, 9, 0)),
            DAY
        ),
        last
    );
    assert_eq!(due(&ended, utc(2027, 8, 1, 0, 0), None, DAY), None);
    assert_eq!(
        status(
            &ended,
            true,
            &MailingFacts::default(),
            utc(2027, 8, 1, 0, 0),
            DAY
        ),
        Status::Finished
    );
}

#[test]
fn statuses() {
    let once = schedule(Repeat::Once, local(2026, 12, 1, 9, 0), chrono_tz::UTC);
    let before = utc(2026, 11, 1, 0, 0);
    let after = utc(2026, 12, 2, 0, 0);
    let none = MailingFacts::default();
    assert_eq!(status(&once, true, &none, before, DAY), Status::Created);
    assert_eq!(
        status(&once, true, &none, after, DAY),
        Status::Created,
        "due, not sent"
    );
    let ran = MailingFacts {
        last_run: Some(utc(2026, 12, 1, 9, 0)),
        ..none
    };
    assert_eq!(status(&once, true, &ran, after, DAY), Status::Finished);
    // Its one run still going out: running, not finished yet.
    let ran_sending = MailingFacts {
        sending: true,
        ..ran
    };
    assert_eq!(
        status(&once, true, &ran_sending, after, DAY),
        Status::Running
    );
    assert_eq!(status(&once, false, &none, before, DAY), Status::Paused);
    let daily = schedule(Repeat::Daily, local(2026, 12, 1, 9, 0), chrono_tz::UTC);
    assert_eq!(status(&daily, true, &ran, after, DAY), Status::Running);
    let blocked = MailingFacts {
        owner_blocked: true,
        ..none
    };
    assert_eq!(status(&daily, true, &blocked, after, DAY), Status::Blocked);
    let disabled = MailingFacts {
        disabled: true,
        owner_blocked: true,
        ..none
    };
    assert_eq!(
        status(&daily, false, &disabled, after, DAY),
        Status::Disabled
    );
    let unverified = MailingFacts {
        owner_unverified: true,
        ..none
    };
    assert_eq!(
        status(&daily, true, &unverified, after, DAY),
        Status::Unverified
    );
}

const ZONES: [Tz; 6] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Moscow,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe, // a 30-minute DST shift
    chrono_tz::America::Santiago,    // DST changes at midnight
];

fn arb_repeat() -> impl Strategy<Value = Repeat> {
    prop_oneof![
        Just(Repeat::Once),
        Just(Repeat::Daily),
        Just(Repeat::Weekly),
        Just(Repeat::Monthly),
        prop::sample::select(vec![
            "0 9 * * 1",
            "30 2 * * *",
            "*/45 0-3 * * *",
            "0 0 31 * *",
            "15 10 1,15 * MON",
            "0 12 * 2 *",
        ])
        .prop_map(|e| Repeat::Cron(CronSpec::parse(e).unwrap())),
    ]
}

fn arb_schedule() -> impl Strategy<Value = Schedule> {
    (
        arb_repeat(),
        prop::sample::select(ZONES.to_vec()),
        2020i32..2030,
        1u32..=12,
        1u32..=31,
        0u32..24,
        prop::sample::select(vec![0u32, 15, 30, 59]),
        prop::option::of(1u64..2_000),
    )
        .prop_filter_map("valid date", |(repeat, tz, y, mo, d, h, mi, end_days)| {
            let start = NaiveDate::from_ymd_opt(y, mo, d)?.and_hms_opt(h, mi, 0)?;
            let end = end_days.map(|n| start + chrono::Duration::days(n as i64));
            Some(Schedule {
                start,
                end,
                repeat,
                timezone: tz,
            })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn occurrences_increase_and_stay_in_start_end(s in arb_schedule()) {
        let start = s.start_instant();
        let end = s.end_instant();
        let mut prev: Option<DateTime<Utc>> = None;
        for o in s.occurrences().take(60) {
            prop_assert!(o >= start, "{o} before start {start}");
            if let Some(end) = end { prop_assert!(o < end, "{o} at or after end {end}"); }
            if let Some(p) = prev { prop_assert!(o > p, "{o} not after {p}"); }
            prev = Some(o);
        }
    }

    #[test]
    fn periodic_occurrences_keep_local_wall_clock_time(s in arb_schedule()) {
        prop_assume!(matches!(s.repeat, Repeat::Daily | Repeat::Weekly | Repeat::Monthly));
        for o in s.occurrences().take(40) {
            let l = o.with_timezone(&s.timezone).naive_local();
            // Equal, unless a DST gap moved it forward by less than a day's hours.
            let same = l.time() == s.start.time();
            let moved = s.timezone.from_local_datetime(&l.date().and_time(s.start.time())).single().is_none();
            prop_assert!(same || moved, "{o} is {l} local, start {}", s.start);
            if s.repeat == Repeat::Monthly {
                let want = s.start.day().min(last_day_of_month(l.year(), l.month()));
                prop_assert_eq!(l.day(), want);
            }
        }
    }

    #[test]
    fn latest_at_or_before_is_the_latest(s in arb_schedule(), probe in 0i64..(3 * 365 * 86_400)) {
        let t = s.start_instant() - chrono::Duration::days(3) + chrono::Duration::seconds(probe);
        let brute = s.occurrences().take_while(|&o| o <= t).last();
        prop_assert_eq!(s.latest_at_or_before(t), brute);
        let next = s.first_at_or_after(t);
        let brute_next = s.occurrences().find(|&o| o >= t);
        prop_assert_eq!(next, brute_next);
    }

    #[test]
    fn a_new_mailing_inside_its_interval_is_due_at_once(s in arb_schedule(), probe in 0i64..(2 * 365 * 86_400)) {
        let now = s.start_instant() + chrono::Duration::seconds(probe);
        // Inside: its first occurrence has come and its end has not.
        let first = s.occurrences().next();
        let inside = first.is_some_and(|f| f <= now) && s.end_instant().is_none_or(|e| now < e);
        let d = due(&s, now, None, Duration::ZERO);
        if inside {
            prop_assert!(d.is_some(), "not due at {now}");
        }
        // After its end, an interval that never ran is over.
        let ended = s.end_instant().is_some_and(|e| now >= e);
        prop_assert_eq!(d, s.latest_at_or_before(now).filter(|_| !ended));
    }
}

fn last_day_of_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .unwrap()
        .pred_opt()
        .unwrap()
        .day()
}

/// `catch_up = "0"` means no catching up after downtime, not "never on time": the
/// scheduler reaches an occurrence a little after it.
#[test]
fn an_occurrence_reached_within_a_minute_is_on_time_whatever_catch_up_says() {
    let s = schedule(Repeat::Daily, local(2027, 1, 1, 9, 0), chrono_tz::UTC);
    let at = Utc.with_ymd_and_hms(2027, 1, 5, 9, 0, 0).unwrap();
    let last = Some(at - chrono::Duration::days(1));
    for late in [0, 1, 59, 60] {
        let now = at + chrono::Duration::seconds(late);
        assert_eq!(
            due(&s, now, last, Duration::ZERO),
            Some(at),
            "{late} s late"
        );
    }
    let now = at + chrono::Duration::seconds(61);
    assert_eq!(due(&s, now, last, Duration::ZERO), None, "after downtime");
    assert_eq!(due(&s, now, last, Duration::from_secs(3600)), Some(at));
}

/// A mailing that never ran but was seen before its latest occurrence missed it: that one
/// goes only within catch_up. Seen at or after it, the mailing is new and sends it at once.
#[test]
fn a_never_run_mailing_seen_before_its_occurrence_follows_catch_up() {
    let s = schedule(Repeat::Daily, local(2027, 1, 1, 9, 0), chrono_tz::UTC);
    let occurrence = Utc.with_ymd_and_hms(2027, 1, 5, 9, 0, 0).unwrap();
    let now = occurrence + chrono::Duration::hours(5);
    let facts = |seen: Option<DateTime<Utc>>| MailingFacts {
        first_seen: seen,
        ..MailingFacts::default()
    };
    let hour = Duration::from_secs(3600);
    let day = Duration::from_secs(86_400);
    let before = Some(occurrence - chrono::Duration::minutes(1));
    assert_eq!(due_for(&s, now, &facts(before), hour), None, "5 h late");
    assert_eq!(due_for(&s, now, &facts(before), day), Some(occurrence));
    for new in [None, Some(occurrence), Some(now)] {
        assert_eq!(
            due_for(&s, now, &facts(new), hour),
            Some(occurrence),
            "{new:?}"
        );
    }
    // A run counts before a sighting.
    let ran = MailingFacts {
        last_run: Some(occurrence),
        ..facts(before)
    };
    assert_eq!(due_for(&s, now, &ran, day), None);
}
