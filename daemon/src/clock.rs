//! The one place time comes from, so schedules, tests and the command line agree.
//!
//! Code that needs "now" takes a [`Clock`]; tests pass a [`FixedClock`] they move by hand
//! instead of sleeping. `SKYCHIMP_NOW` (RFC 3339) pins the command line's clock, which the
//! CLI tests use to get repeatable output.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that says what it is told.
#[derive(Debug)]
pub struct FixedClock(Mutex<DateTime<Utc>>);

impl FixedClock {
    /// A clock stopped at `t`.
    pub fn new(t: DateTime<Utc>) -> Self {
        Self(Mutex::new(t))
    }

    /// Move it to `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }

    /// Move it forward.
    pub fn advance(&self, by: chrono::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The command line's clock: `SKYCHIMP_NOW` when set, else the system's.
pub fn from_env() -> Result<Box<dyn Clock>, String> {
    match std::env::var("SKYCHIMP_NOW") {
        Ok(text) => DateTime::parse_from_rfc3339(&text)
            .map(|t| Box::new(FixedClock::new(t.with_timezone(&Utc))) as Box<dyn Clock>)
            .map_err(|e| format!("SKYCHIMP_NOW=`{text}` is not an RFC 3339 time: {e}")),
        Err(_) => Ok(Box::new(SystemClock)),
    }
}
