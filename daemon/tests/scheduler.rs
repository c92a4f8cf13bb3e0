//! The scheduler driven by a fake clock through months of occurrences, in milliseconds:
//! which runs are created, and when, across DST changes, month ends and downtime.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Timelike, Utc};
use skychimp_storage::{Storage, Store};
use skychimpd::catalog::{Catalog, LoadOptions};
use skychimpd::clock::{Clock, FixedClock};
use skychimpd::daemon::scheduler::Scheduler;

fn utc(y: i32, m: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.from_utc_datetime(
        &NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, mi, 0)
            .unwrap(),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    clock: Arc<FixedClock>,
    scheduler: Scheduler,
}

async fn fixture(mailings: &[(&str, &str)], start: DateTime<Utc>) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::write(
        root.join("users.toml"),
        "[alice]\nemail = \"alice@example.com\"\nname = \"Alice\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("clients/alice")).unwrap();
    std::fs::write(
        root.join("clients/alice/list.toml"),
        "[[client]]\nemail = \"a@example.com\"\nname = \"A\"\n[[client]]\nemail = \"b@example.com\"\nname = \"B\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("mailings/alice")).unwrap();
    for (name, schedule) in mailings {
        std::fs::write(
            root.join(format!("mailings/alice/{name}.toml")),
            format!("title = \"{name}\"\nlists = [\"list\"]\n{schedule}\n[message]\nsubject = \"s\"\nbody = \"b\"\n"),
        )
        .unwrap();
    }
    let options = LoadOptions {
        default_timezone: chrono_tz::UTC,
        now: start,
    };
    let catalog = Catalog::load(root, &options, None).unwrap();
    assert!(!catalog.has_errors(), "{:?}", catalog.problems());
    let store = Store::connect(&format!("sqlite://{}", root.join("db.sqlite").display()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let clock = Arc::new(FixedClock::new(start));
    let scheduler = Scheduler::new(
        store.clone(),
        Arc::new(RwLock::new(Arc::new(catalog))),
        clock.clone(),
        Duration::from_secs(86_400),
        false,
    );
    Fixture {
        _dir: dir,
        store,
        clock,
        scheduler,
    }
}

/// Run the scheduler the way the daemon does: a pass, then jump to the next occurrence,
/// until `until`. Returns every (mailing, occurrence) created, with the clock when it was.
async fn drive(f: &Fixture, until: DateTime<Utc>) -> Vec<(String, DateTime<Utc>, DateTime<Utc>)> {
    let mut created = Vec::new();
    loop {
        let tick = f.scheduler.tick().await.unwrap();
        for (mailing, occurrence, _) in tick.created {
            created.push((mailing, occurrence, f.clock.now()));
        }
        match tick.next {
            Some(next) if next <= until => f.clock.set(next),
            _ => break,
        }
    }
    created
}

#[tokio::test]
async fn months_of_occurrences_each_run_once_at_its_time() {
    let start = utc(2027, 1, 1, 0, 0);
    let f = fixture(
        &[
            ("daily", "start = 2027-03-20T09:00:00\nend = 2027-04-05T00:00:00\nevery = \"daily\"\ntimezone = \"Europe/Berlin\""),
            ("weekly", "start = 2027-01-04T08:00:00\nevery = \"weekly\"\ntimezone = \"America/New_York\""),
            ("monthly", "start = 2027-01-31T18:00:00\nevery = \"monthly\"\ntimezone = \"Europe/Moscow\""),
            ("cron", "start = 2027-01-01T00:00:00\ncron = \"30 2 * * SUN\"\ntimezone = \"Europe/Berlin\""),
            ("once", "start = 2027-02-14T12:00:00\nevery = \"once\""),
        ],
        start,
    )
    .await;
    let created = drive(&f, utc(2027, 6, 30, 23, 59)).await;
    let of = |m: &str| -> Vec<DateTime<Utc>> {
        created
            .iter()
            .filter(|(id, ..)| id == &format!("alice/{m}"))
            .map(|(_, o, _)| *o)
            .collect()
    };
    // Every run was created exactly at its occurrence (the clock jumped there).
    for (id, occurrence, at) in &created {
        assert_eq!(occurrence, at, "{id} created late");
    }
    // Daily across Berlin's spring change (28 March): 09:00 local is 08:00 UTC, then 07:00.
    let daily = of("daily");
    assert_eq!(daily.len(), 16);
    assert_eq!(daily[0], utc(2027, 3, 20, 8, 0));
    assert_eq!(daily[8], utc(2027, 3, 28, 7, 0));
    assert!(
        daily
            .iter()
            .all(|o| o.with_timezone(&chrono_tz::Europe::Berlin).hour() == 9)
    );
    // Weekly: every Monday 08:00 New York, 26 of them by the end of June.
    let weekly = of("weekly");
    assert_eq!(weekly.len(), 26);
    for o in &weekly {
        let local = o.with_timezone(&chrono_tz::America::New_York);
        assert_eq!(
            (local.weekday(), local.hour()),
            (chrono::Weekday::Mon, 8),
            "{local}"
        );
    }
    // Monthly on the 31st: the last day of shorter months.
    let monthly: Vec<String> = of("monthly")
        .iter()
        .map(|o| o.format("%m-%d").to_string())
        .collect();
    assert_eq!(
        monthly,
        ["01-31", "02-28", "03-31", "04-30", "05-31", "06-30"]
    );
    // Cron at 02:30 Berlin on Sundays: on 28 March 02:30 does not exist and moves to 03:30.
    let cron = of("cron");
    assert_eq!(cron.len(), 26);
    let change_day = cron
        .iter()
        .find(|o| o.date_naive() == NaiveDate::from_ymd_opt(2027, 3, 28).unwrap())
        .unwrap();
    assert_eq!(
        change_day.with_timezone(&chrono_tz::Europe::Berlin).hour(),
        3
    );
    assert_eq!(of("once"), [utc(2027, 2, 14, 12, 0)]);
    // The database agrees: one scheduled run per occurrence, nothing twice.
    for m in ["daily", "weekly", "monthly", "cron", "once"] {
        let runs = f.store.runs_of(&format!("alice/{m}")).await.unwrap();
        assert_eq!(runs.len(), of(m).len(), "{m}");
    }
    // A second pass at the same instant creates nothing.
    assert!(f.scheduler.tick().await.unwrap().created.is_empty());
}

#[tokio::test]
async fn after_downtime_only_the_latest_missed_occurrence_goes_within_catch_up() {
    let start = utc(2027, 1, 1, 0, 0);
    let f = fixture(
        &[
            ("daily", "start = 2027-01-01T09:00:00\nevery = \"daily\""),
            (
                "tight",
                "start = 2027-01-01T09:00:00\nevery = \"daily\"\ncatch_up = \"1h\"",
            ),
        ],
        start,
    )
    .await;
    let created = drive(&f, utc(2027, 1, 2, 12, 0)).await;
    assert_eq!(
        created.len(),
        4,
        "the 1st and 2nd of each mailing: {created:?}"
    );
    // Down from the 2nd 12:00 until the 7th 11:00: five occurrences missed.
    f.clock.set(utc(2027, 1, 7, 11, 0));
    let tick = f.scheduler.tick().await.unwrap();
    let ids: Vec<(String, DateTime<Utc>)> = tick
        .created
        .iter()
        .map(|(m, o, _)| (m.clone(), *o))
        .collect();
    // Only the latest missed occurrence, once, and not for the mailing whose catch_up
    // (1 hour) is shorter than its lateness (2 hours).
    assert_eq!(ids, [("alice/daily".to_string(), utc(2027, 1, 7, 9, 0))]);
    assert_eq!(tick.next, Some(utc(2027, 1, 8, 9, 0)));
    // The one left out is reported (and logged), once.
    assert_eq!(
        tick.missed,
        [("alice/tight".to_string(), utc(2027, 1, 7, 9, 0))]
    );
    let again = f.scheduler.tick().await.unwrap();
    assert!(
        again.created.is_empty() && again.missed.is_empty(),
        "{again:?}"
    );
    // Both resume at the next occurrence.
    let created = drive(&f, utc(2027, 1, 8, 10, 0)).await;
    assert_eq!(created.len(), 2);
}

#[tokio::test]
async fn a_new_mailing_inside_its_interval_runs_at_once_and_a_future_one_waits() {
    let now = utc(2027, 5, 10, 12, 0);
    let f = fixture(
        &[
            ("started", "start = 2027-05-01T09:00:00\nevery = \"weekly\""),
            ("future", "start = 2027-06-01T09:00:00\nevery = \"weekly\""),
        ],
        now,
    )
    .await;
    let tick = f.scheduler.tick().await.unwrap();
    let ids: Vec<(String, DateTime<Utc>)> = tick
        .created
        .iter()
        .map(|(m, o, _)| (m.clone(), *o))
        .collect();
    assert_eq!(ids, [("alice/started".to_string(), utc(2027, 5, 8, 9, 0))]);
    assert_eq!(tick.next, Some(utc(2027, 5, 15, 9, 0)));
    let created = drive(&f, utc(2027, 6, 1, 9, 0)).await;
    assert!(created.contains(&(
        "alice/future".to_string(),
        utc(2027, 6, 1, 9, 0),
        utc(2027, 6, 1, 9, 0)
    )));
}

/// A mailing a daemon knew before an occurrence it missed (down, or its owner not verified
/// yet) is not new, although it never ran: that occurrence goes only within catch_up. One
/// first seen after its occurrence (deployed late) is new and sends it at once.
#[tokio::test]
async fn a_mailing_seen_before_the_occurrence_it_missed_is_not_new() {
    let cron = "start = 2027-01-01T00:00:00\ncron = \"45 13 * * MON-FRI\"";
    let friday = utc(2027, 1, 1, 9, 0);
    let f = fixture(&[("standup", cron), ("late", cron)], friday).await;
    // Seen on Friday morning, then the daemon was down until Sunday.
    f.store
        .note_seen(&["alice/standup".to_string()], friday)
        .await
        .unwrap();
    // Deployed on Sunday.
    let sunday = utc(2027, 1, 3, 9, 0);
    f.store
        .note_seen(
            &["alice/late".to_string(), "alice/standup".to_string()],
            sunday,
        )
        .await
        .unwrap();
    f.clock.set(sunday);
    let tick = f.scheduler.tick().await.unwrap();
    let created: Vec<(String, DateTime<Utc>)> = tick
        .created
        .iter()
        .map(|(m, o, _)| (m.clone(), *o))
        .collect();
    let missed_friday = utc(2027, 1, 1, 13, 45);
    assert_eq!(created, [("alice/late".to_string(), missed_friday)]);
    assert_eq!(tick.missed, [("alice/standup".to_string(), missed_friday)]);
    // Both go on schedule from Monday.
    let created = drive(&f, utc(2027, 1, 4, 14, 0)).await;
    assert_eq!(created.len(), 2, "{created:?}");
    assert!(
        created
            .iter()
            .all(|(_, o, _)| *o == utc(2027, 1, 4, 13, 45))
    );
}
