//! Skychimp's daemon and command line: mailings and a blog run from a git repository.
//!
//! The crate is a library with a thin binary (`main.rs`): each command is one function in
//! [`cli`], built on the catalog (what the files say), the schedule (when things send) and
//! the configuration.

pub mod attempts;
pub mod catalog;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod duration;
pub mod facts;
pub mod http;
pub mod message;
pub mod metrics;
pub mod problem;
pub mod redis;
pub mod schedule;
pub mod shutdown;
pub mod signing;
pub mod site;
pub mod tokens;
