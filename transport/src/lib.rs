//! Skychimp's mail transports.
//!
//! This crate owns everything between "a rendered message for one recipient" and "the SMTP
//! server's answer": composing the RFC 5322 bytes ([`compose()`](mod@compose)), optional DKIM signing
//! ([`dkim`]), sending them over one long-lived SMTP connection per worker ([`smtp`]) or
//! into an outbox folder ([`outbox`]), bounding the rate of sending ([`rate`]) and deciding
//! when a transient failure is retried ([`retry`]).
//!
//! It knows nothing about mailings, runs or the database: the daemon's delivery workers
//! call [`Transport::connect`] once each and then [`Sender::send`] per delivery, and record
//! the returned [`SendReport`] as an attempt.
//!
//! Why not lettre's `AsyncSmtpTransport`: lettre 0.11.23 never sets `TCP_NODELAY` and writes
//! the DATA terminator as a separate small write, so Nagle's algorithm and delayed ACKs cost
//! ≈ 44 ms per message (≈ 23 messages/s per connection). [`smtp::SmtpSender`] opens the TCP
//! stream itself with `set_nodelay(true)` and drives lettre's `AsyncSmtpConnection` on it.

#![warn(missing_docs)]

pub mod compose;
pub mod dkim;
pub mod outbox;
pub mod outcome;
pub mod rate;
pub mod retry;
pub mod sender;
pub mod smtp;
pub mod url;

pub use compose::{
    ComposeError, ComposeInput, ListId, NoticeInput, OutgoingMessage, compose, compose_notice,
};
pub use dkim::{DkimConfig, DkimError, DkimSigner};
pub use lettre::Address;
pub use outbox::OutboxSender;
pub use outcome::{SendOutcome, SendReport};
pub use rate::{Clock, RateLimit, RateLimiter, TokenBucket, TokioClock, Unlimited};
pub use retry::RetryPolicy;
pub use sender::{Sender, Transport};
pub use smtp::{SmtpOptions, SmtpSender};
pub use url::{SmtpUrl, TlsMode, TransportUrl, UrlError};
