//! What one send attempt came to: the value the daemon records as an attempt row.

use std::time::Duration;

/// The outcome of one attempt, classified the way DESIGN.md's retry rule needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// The server accepted the message (2xx after DATA), or the outbox file was written.
    Sent {
        /// The server's reply code (250 for the outbox).
        code: u16,
        /// The server's reply text, e.g. `2.0.0 Ok: queued as 4Xyz`.
        reply: String,
    },
    /// Worth retrying later: a 4xx reply, a refused or dropped connection, a timeout, a
    /// TLS or authentication failure while connecting.
    Transient {
        /// The server's reply code; `None` when there was no reply (network, timeout), and
        /// then `reply` is our own description of what happened.
        code: Option<u16>,
        /// The server's reply text, or what went wrong.
        reply: String,
    },
    /// Will fail again: a 5xx reply to MAIL, RCPT, DATA or the message itself.
    Permanent {
        /// The server's reply code.
        code: u16,
        /// The server's reply text, e.g. `5.1.1 <x@y>: Recipient address rejected`.
        reply: String,
    },
}

impl SendOutcome {
    /// The reply code, if the server gave one.
    pub fn code(&self) -> Option<u16> {
        match self {
            SendOutcome::Sent { code, .. } | SendOutcome::Permanent { code, .. } => Some(*code),
            SendOutcome::Transient { code, .. } => *code,
        }
    }

    /// The reply text (or our description when there was no reply).
    pub fn reply(&self) -> &str {
        match self {
            SendOutcome::Sent { reply, .. }
            | SendOutcome::Transient { reply, .. }
            | SendOutcome::Permanent { reply, .. } => reply,
        }
    }

    /// Whether the message was accepted.
    pub fn is_sent(&self) -> bool {
        matches!(self, SendOutcome::Sent { .. })
    }
}

/// One attempt as the log records it: the outcome and how long it really took (connecting
/// included, when this attempt had to open the connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendReport {
    /// What happened.
    pub outcome: SendOutcome,
    /// Wall-clock time of the attempt.
    pub duration: Duration,
}
