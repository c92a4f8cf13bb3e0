//! One way to open a sender for whatever `[smtp] url` says.
//!
//! The daemon builds one [`Transport`] from its configuration and each delivery worker
//! calls [`Transport::connect`] to get its own [`Sender`]; the worker then never needs to
//! know whether mail goes to an SMTP relay or into an outbox folder.

use crate::compose::OutgoingMessage;
use crate::outbox::OutboxSender;
use crate::outcome::SendReport;
use crate::smtp::{SmtpOptions, SmtpSender};
use crate::url::TransportUrl;

/// The configured way out: a URL plus the SMTP settings that are not in it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Transport {
    url: TransportUrl,
    options: SmtpOptions,
}

impl Transport {
    /// A transport for `url`; `options` matter only for `smtp://` URLs.
    pub fn new(url: TransportUrl, options: SmtpOptions) -> Transport {
        Transport { url, options }
    }

    /// The URL this transport sends to.
    pub fn url(&self) -> &TransportUrl {
        &self.url
    }

    /// A new sender for one worker. Nothing is opened yet: an SMTP sender connects on its
    /// first send, so a relay that is down shows up as a transient outcome there, where it
    /// is logged and retried like any other.
    pub fn connect(&self) -> Sender {
        match &self.url {
            TransportUrl::Smtp(url) => {
                Sender::Smtp(Box::new(SmtpSender::new(url.clone(), self.options.clone())))
            }
            TransportUrl::Outbox { dir } => Sender::Outbox(OutboxSender::new(dir.clone())),
        }
    }
}

/// One worker's sender, whichever the transport.
#[derive(Debug)]
pub enum Sender {
    /// An SMTP session.
    Smtp(Box<SmtpSender>),
    /// An outbox folder.
    Outbox(OutboxSender),
}

impl Sender {
    /// Sends (or writes) one message; see [`SmtpSender::send`] and [`OutboxSender::send`].
    pub async fn send(&mut self, message: &OutgoingMessage) -> SendReport {
        self.send_then(message, None).await
    }

    /// Sends `message`, telling an SMTP sender that `next` is the message that follows, so
    /// its envelope can go with this body (see [`SmtpSender::send_then`]).
    pub async fn send_then(
        &mut self,
        message: &OutgoingMessage,
        next: Option<&OutgoingMessage>,
    ) -> SendReport {
        match self {
            Sender::Smtp(s) => s.send_then(message, next).await,
            Sender::Outbox(o) => o.send(message).await,
        }
    }

    /// Ends the session cleanly (QUIT for SMTP); call on shutdown.
    pub async fn close(&mut self) {
        if let Sender::Smtp(s) = self {
            s.close().await;
        }
    }
}
