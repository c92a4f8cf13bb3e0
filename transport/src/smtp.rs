//! The SMTP sender: one long-lived connection per worker.
//!
//! Why this shape (FACTS.md): lettre 0.11.23's pooled `AsyncSmtpTransport` never sets
//! `TCP_NODELAY` and writes the DATA terminator as its own small write, so every message
//! waits ≈ 40 ms for a delayed ACK — ≈ 23 messages/s per connection. Here we open the
//! `tokio::net::TcpStream` ourselves, call `set_nodelay(true)`, hand it to
//! `AsyncSmtpConnection::connect_with_transport`, and keep that one connection for as many
//! messages as the server allows, reconnecting after any error.
//!
//! When the server offers PIPELINING (RFC 2920, asked with one more EHLO per connection,
//! since lettre's `ServerInfo` drops that keyword), MAIL, RCPT and DATA go in one write and
//! their three replies are read in order; the message goes dot-stuffed in one write with its
//! final `.`: two round trips per message instead of four. When the caller already knows the
//! next message ([`SmtpSender::send_then`]), its MAIL, RCPT and DATA go in the same write as
//! this message's body (RFC 2920 lets message content start a group) and their replies are
//! read when that message is sent: one round trip per message. If the next message sent is
//! not the one announced (a halt or a stop came between), the connection is closed rather
//! than given content, since the server may be waiting for a message that must not come.
//!
//! Each SMTP command has its own timeout ([`SmtpOptions::command_timeout`]), the reply to
//! the end of DATA has a longer one ([`SmtpOptions::data_timeout`]), and the whole
//! connection set-up (TCP, greeting, EHLO, TLS, AUTH) has [`SmtpOptions::connect_timeout`].
//!
//! Classification ([`SendOutcome`]): a 4xx reply, no reply (refused, dropped, timed out)
//! and *any* failure while connecting are transient; a 5xx reply to MAIL, RCPT, DATA or
//! the message is permanent. Connection-phase 5xx (a bad password, a server refusing us)
//! is deliberately transient: it is about our configuration, not this recipient, and
//! once the operator fixes it the deferred deliveries go out instead of all having failed.
//!
//! A timeout or dropped connection after the message body was sent is ambiguous (the
//! server may have queued it); it is reported as transient like the other no-reply cases.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
#[allow(deprecated)]
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, CertificateStore, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::compose::OutgoingMessage;
use crate::outcome::{SendOutcome, SendReport};
use crate::url::{SmtpUrl, TlsMode};

/// Settings of an SMTP sender that do not belong in the URL.
#[derive(Clone)]
pub struct SmtpOptions {
    /// The name we give in EHLO; use the From domain or the machine's FQDN (some servers
    /// reject `localhost` from remote clients).
    pub hello_name: String,
    /// The AUTH password, from `SKYCHIMP_SMTP_PASSWORD`; used only when the URL has a user.
    pub password: Option<String>,
    /// Limit on opening a connection: TCP connect, greeting, EHLO, TLS and AUTH together.
    pub connect_timeout: Duration,
    /// Limit on the reply to each of MAIL, RCPT, DATA and RSET.
    pub command_timeout: Duration,
    /// Limit on the reply after the message body (RFC 5321 suggests 10 minutes; servers
    /// scan content here).
    pub data_timeout: Duration,
    /// Extra PEM root certificates to trust (a private relay's CA), besides the bundled
    /// Web PKI roots.
    pub extra_root_certificates_pem: Vec<Vec<u8>>,
    /// Accept any certificate. Only for test relays; never in production.
    pub dangerous_accept_invalid_certs: bool,
    /// Set `TCP_NODELAY` on the connection (default `true`). Only the benchmark turns it
    /// off, to show what it costs (≈ 40 ms per message, see the module documentation).
    pub tcp_nodelay: bool,
}

impl Default for SmtpOptions {
    fn default() -> Self {
        SmtpOptions {
            hello_name: "localhost".to_owned(),
            password: None,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            data_timeout: Duration::from_secs(300),
            extra_root_certificates_pem: Vec::new(),
            dangerous_accept_invalid_certs: false,
            tcp_nodelay: true,
        }
    }
}

impl fmt::Debug for SmtpOptions {
    /// Never prints the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpOptions")
            .field("hello_name", &self.hello_name)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("data_timeout", &self.data_timeout)
            .field(
                "extra_root_certificates",
                &self.extra_root_certificates_pem.len(),
            )
            .field(
                "dangerous_accept_invalid_certs",
                &self.dangerous_accept_invalid_certs,
            )
            .field("tcp_nodelay", &self.tcp_nodelay)
            .finish()
    }
}

/// One worker's SMTP session: connects on first use, sends many messages over the same
/// connection, reconnects after errors. Not shared: give every worker its own.
pub struct SmtpSender {
    url: SmtpUrl,
    options: SmtpOptions,
    client_id: ClientId,
    conn: Option<AsyncSmtpConnection>,
    /// Whether the open connection's server offered PIPELINING (RFC 2920).
    pipelining: bool,
    /// MAIL, RCPT and DATA written after the last message's body, their replies unread.
    ahead: Option<String>,
    connections_opened: u64,
}

impl fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpSender")
            .field("url", &self.url)
            .field("options", &self.options)
            .field("connected", &self.conn.is_some())
            .field("pipelining", &self.pipelining)
            .field("ahead", &self.ahead.is_some())
            .field("connections_opened", &self.connections_opened)
            .finish()
    }
}

/// A failure before or during a transaction, before it is classified.
enum Failure {
    /// The server answered with a non-positive reply.
    Reply { code: u16, text: String },
    /// No usable reply: network error, protocol error, TLS error; the text says which.
    NoReply(String),
}

impl SmtpSender {
    /// A sender for `url`; nothing is opened until the first [`SmtpSender::send`].
    pub fn new(url: SmtpUrl, options: SmtpOptions) -> SmtpSender {
        let client_id = ClientId::Domain(options.hello_name.clone());
        SmtpSender {
            url,
            options,
            client_id,
            conn: None,
            pipelining: false,
            ahead: None,
            connections_opened: 0,
        }
    }

    /// How many connections this sender has opened so far: 1 after any number of sends on
    /// a healthy server; tests and metrics use it to see reconnections.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened
    }

    /// Whether the open connection sends MAIL, RCPT and DATA in one write: its server
    /// offered PIPELINING (RFC 2920).
    pub fn pipelining(&self) -> bool {
        self.is_connected() && self.pipelining
    }

    /// Whether a connection is open now.
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.has_broken())
    }

    /// Sends one message and reports the outcome and the time it took.
    ///
    /// If the connection was reused and turns out to be dead before the server saw
    /// anything of this message (the server closed it while idle), it reconnects once and
    /// tries again at once; every other failure is returned to the caller to retry later.
    pub async fn send(&mut self, message: &OutgoingMessage) -> SendReport {
        self.send_then(message, None).await
    }

    /// Sends `message` like [`SmtpSender::send`]; with PIPELINING, `next`'s envelope goes
    /// in the same write as `message`'s body, and `next` should be the next message sent.
    /// If it is not, the next send closes the connection and opens another (see the module
    /// documentation).
    pub async fn send_then(
        &mut self,
        message: &OutgoingMessage,
        next: Option<&OutgoingMessage>,
    ) -> SendReport {
        let started = Instant::now();
        let outcome = self.send_inner(message, next).await;
        SendReport {
            outcome,
            duration: started.elapsed(),
        }
    }

    /// Ends the session politely with QUIT (bounded by the command timeout); just closes
    /// it when an envelope was written ahead, since its DATA may be open.
    pub async fn close(&mut self) {
        if let Some(mut conn) = self.conn.take()
            && self.ahead.take().is_none()
        {
            let _ = tokio::time::timeout(self.options.command_timeout, conn.quit()).await;
        }
    }

    async fn send_inner(
        &mut self,
        message: &OutgoingMessage,
        next: Option<&OutgoingMessage>,
    ) -> SendOutcome {
        let reused = self.is_connected();
        match self.transaction(message, next).await {
            Ok(outcome) => outcome,
            Err(Stage::BeforeMail(_)) if reused => {
                // The idle connection had died, or carried another message's envelope;
                // nothing of this message reached the server.
                self.conn = None;
                match self.transaction(message, next).await {
                    Ok(outcome) => outcome,
                    Err(stage) => stage.into_outcome(),
                }
            }
            Err(stage) => stage.into_outcome(),
        }
    }

    /// Runs MAIL, RCPT, DATA and the message on the current connection (opening one if
    /// needed). `Err(Stage::BeforeMail)` only when nothing of the message reached the server
    /// on a connection that was already open (MAIL got no reply at all, or the envelope
    /// written ahead was another message's), the one case that is safe to retry at once.
    async fn transaction(
        &mut self,
        message: &OutgoingMessage,
        next: Option<&OutgoingMessage>,
    ) -> Result<SendOutcome, Stage> {
        if !self.is_connected() {
            self.conn = None;
            self.ahead = None;
            let (conn, pipelining) = self.connect().await.map_err(Stage::Connect)?;
            self.conn = Some(conn);
            self.pipelining = pipelining;
        }
        let command_timeout = self.options.command_timeout;
        let data_timeout = self.options.data_timeout;
        let pipelining = self.pipelining;
        let Some(conn) = self.conn.as_mut() else {
            return Err(Stage::Connect(Failure::NoReply("not connected".to_owned())));
        };

        let (mail, rcpt) = envelope(conn, message);
        let commands = pipelined(&mail, &rcpt);
        let written = match self.ahead.take() {
            None => false,
            Some(ahead) if ahead == commands => true,
            Some(_) => {
                // Written ahead for a message that is not going now: the server may already
                // wait for its content, and only closing the connection ends that.
                self.conn = None;
                return Err(Stage::BeforeMail(Failure::NoReply(
                    "the envelope written ahead was another message's".to_owned(),
                )));
            }
        };
        let mut body = DataBody::new(&message.bytes);
        // The next message's envelope rides with this body (RFC 2920).
        let ahead = match (next, &mut body) {
            (Some(next), Some(body)) if pipelining => {
                let (mail, rcpt) = envelope(conn, next);
                let ahead = pipelined(&mail, &rcpt);
                body.0.push_str(&ahead);
                Some(ahead)
            }
            _ => None,
        };

        let steps: Result<(), (Failure, Then)> = async {
            if pipelining {
                envelope_pipelined(conn, &commands, written, command_timeout).await
            } else {
                let refused = |f: Failure| match f {
                    f @ Failure::Reply { .. } => (f, Then::Reset),
                    f @ Failure::NoReply(_) => (f, Then::Close),
                };
                step(conn.command(mail), command_timeout, "MAIL FROM")
                    .await
                    .map_err(|f| match f {
                        f @ Failure::NoReply(_) => (f, Then::RetryNow),
                        f => refused(f),
                    })?;
                step(conn.command(rcpt), command_timeout, "RCPT TO")
                    .await
                    .map_err(refused)?;
                step(conn.command(Data), command_timeout, "DATA")
                    .await
                    .map_err(refused)?;
                Ok(())
            }
        }
        .await;
        if let Err((failure, then)) = steps {
            return Err(self.after(failure, then).await);
        }

        const END_OF_DATA: &str = "end of DATA (message body)";
        let reply = match &body {
            Some(body) => step(conn.command(body), data_timeout, END_OF_DATA).await,
            None => step(conn.message(&message.bytes), data_timeout, END_OF_DATA).await,
        };
        match reply {
            Ok(response) => {
                self.ahead = ahead;
                Ok(SendOutcome::Sent {
                    code: u16::from(response.code()),
                    reply: reply_text(&response),
                })
            }
            // The reply to the end of DATA ends the transaction either way (RFC 5321
            // 4.1.1.4): no RSET, and the envelope written ahead waits for its replies.
            Err(failure @ Failure::Reply { .. }) => {
                self.ahead = ahead;
                Err(Stage::Transaction(failure))
            }
            Err(failure @ Failure::NoReply(_)) => Err(self.after(failure, Then::Close).await),
        }
    }

    /// What a failed step leaves of the connection, and the stage to report.
    async fn after(&mut self, failure: Failure, then: Then) -> Stage {
        match then {
            Then::RetryNow => {
                self.conn = None;
                Stage::BeforeMail(failure)
            }
            Then::Close => {
                // The connection is in an unknown state: never reuse it.
                self.conn = None;
                Stage::Transaction(failure)
            }
            Then::Reset => {
                // The server answered; reset the transaction so the connection can carry
                // the next message. If even RSET fails, start afresh next time.
                if let Some(conn) = self.conn.as_mut() {
                    let reset =
                        step(conn.command(Rset), self.options.command_timeout, "RSET").await;
                    if reset.is_err() {
                        self.conn = None;
                    }
                }
                Stage::Transaction(failure)
            }
        }
    }

    /// Opens a connection: TCP with `TCP_NODELAY`, greeting and EHLO, STARTTLS or
    /// implicit TLS, AUTH — all within the connect timeout.
    async fn connect(&mut self) -> Result<(AsyncSmtpConnection, bool), Failure> {
        let timeout = self.options.connect_timeout;
        let addr = format!("{}:{}", self.url.host, self.url.port);
        match tokio::time::timeout(timeout, self.connect_inner(&addr)).await {
            Ok(Ok(conn)) => {
                self.connections_opened += 1;
                Ok(conn)
            }
            Ok(Err(f)) => Err(f),
            Err(_) => Err(Failure::NoReply(format!(
                "timed out after {timeout:?} connecting to {addr}"
            ))),
        }
    }

    /// The connection, and whether its server offered PIPELINING.
    async fn connect_inner(&self, addr: &str) -> Result<(AsyncSmtpConnection, bool), Failure> {
        let host = self.url.host.as_str();
        let tcp = TcpStream::connect((host, self.url.port))
            .await
            .map_err(|e| Failure::NoReply(format!("connecting to {addr}: {e}")))?;
        // The whole point of owning the stream: without this, each message waits for a
        // delayed ACK (see the module documentation).
        tcp.set_nodelay(self.options.tcp_nodelay)
            .map_err(|e| Failure::NoReply(format!("setting TCP_NODELAY on {addr}: {e}")))?;

        let stream: Box<dyn AsyncTokioStream> = match self.url.tls {
            TlsMode::Tls => {
                #[allow(deprecated)]
                let mut net = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
                net.upgrade_tls(self.tls_parameters()?).await.map_err(|e| {
                    Failure::NoReply(format!("TLS with {addr}: {}", error_text(&e)))
                })?;
                Box::new(ImplicitTls(net))
            }
            TlsMode::StartTls | TlsMode::None => Box::new(tcp),
        };
        let mut conn = AsyncSmtpConnection::connect_with_transport(stream, &self.client_id)
            .await
            .map_err(|e| classify_connect(addr, "greeting/EHLO", &e))?;
        if self.url.tls == TlsMode::StartTls {
            if !conn.can_starttls() {
                return Err(Failure::NoReply(format!(
                    "{addr} does not offer STARTTLS (the URL asks for tls=starttls; use tls=none only for a trusted local relay)"
                )));
            }
            conn.starttls(self.tls_parameters()?, &self.client_id)
                .await
                .map_err(|e| classify_connect(addr, "STARTTLS", &e))?;
        }
        // lettre's `ServerInfo` keeps only the extensions lettre uses itself, not
        // PIPELINING, so ask once more (a repeated EHLO resets nothing but the
        // transaction, RFC 5321 4.1.4; before AUTH, which it must not follow).
        let ehlo = step(
            conn.command(Ehlo::new(self.client_id.clone())),
            self.options.command_timeout,
            "EHLO",
        )
        .await?;
        let pipelining = ehlo.message().any(|line| {
            line.split_ascii_whitespace()
                .next()
                .is_some_and(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"))
        });
        if let Some(user) = &self.url.user {
            let password = self.options.password.clone().unwrap_or_default();
            conn.auth(
                &[Mechanism::Plain, Mechanism::Login],
                &Credentials::new(user.clone(), password),
            )
            .await
            .map_err(|e| classify_connect(addr, "AUTH", &e))?;
        }
        Ok((conn, pipelining))
    }

    fn tls_parameters(&self) -> Result<TlsParameters, Failure> {
        let mut builder = TlsParameters::builder(self.url.host.clone())
            .certificate_store(CertificateStore::WebpkiRoots)
            .dangerous_accept_invalid_certs(self.options.dangerous_accept_invalid_certs);
        for pem in &self.options.extra_root_certificates_pem {
            let cert = lettre::transport::smtp::client::Certificate::from_pem(pem)
                .map_err(|e| Failure::NoReply(format!("extra root certificate: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map_err(|e| Failure::NoReply(format!("TLS parameters: {e}")))
    }
}

/// What a refused or unanswered envelope step leaves of the connection.
enum Then {
    /// MAIL got no reply: nothing of the message reached the server; a new connection may
    /// try it again at once.
    RetryNow,
    /// No reply, or a server that waits for content that must not come: close it.
    Close,
    /// A refusal: RSET, and the connection carries the next message.
    Reset,
}

/// MAIL and RCPT for `message` on this connection (BODY=8BITMIME and SMTPUTF8 when the
/// message needs them and the server offers them).
fn envelope(conn: &AsyncSmtpConnection, message: &OutgoingMessage) -> (Mail, Rcpt) {
    let mut params = Vec::new();
    let info = conn.server_info();
    if !message.bytes.is_ascii() && info.supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let utf8_envelope = !message.envelope_from.to_string().is_ascii()
        || !message.envelope_to.to_string().is_ascii();
    if utf8_envelope && info.supports_feature(Extension::SmtpUtfEight) {
        params.push(MailParameter::SmtpUtfEight);
    }
    (
        Mail::new(Some(message.envelope_from.clone()), params),
        Rcpt::new(message.envelope_to.clone(), Vec::new()),
    )
}

/// MAIL, RCPT and DATA as one pipelined write. An envelope written ahead is recognised
/// by comparing these texts, so both sides must come from here.
fn pipelined(mail: &Mail, rcpt: &Rcpt) -> String {
    format!("{mail}{rcpt}{Data}")
}

/// Where a transaction stopped.
enum Stage {
    /// Opening the connection failed.
    Connect(Failure),
    /// MAIL got no reply on a reused connection: safe to reconnect and retry at once.
    BeforeMail(Failure),
    /// Anything later.
    Transaction(Failure),
}

impl Stage {
    fn into_outcome(self) -> SendOutcome {
        match self {
            // Connection-phase failures are transient even with a 5xx; see module docs.
            Stage::Connect(Failure::Reply { code, text }) => SendOutcome::Transient {
                code: Some(code),
                reply: text,
            },
            Stage::Connect(Failure::NoReply(text))
            | Stage::BeforeMail(Failure::NoReply(text))
            | Stage::Transaction(Failure::NoReply(text)) => SendOutcome::Transient {
                code: None,
                reply: text,
            },
            Stage::BeforeMail(Failure::Reply { code, text })
            | Stage::Transaction(Failure::Reply { code, text }) => {
                if (500..600).contains(&code) {
                    SendOutcome::Permanent { code, reply: text }
                } else {
                    SendOutcome::Transient {
                        code: Some(code),
                        reply: text,
                    }
                }
            }
        }
    }
}

/// MAIL, RCPT and DATA in one write (unless `written` ahead already), then their three
/// replies in order (RFC 2920): one round trip instead of three, or none of its own.
async fn envelope_pipelined(
    conn: &mut AsyncSmtpConnection,
    commands: &str,
    written: bool,
    timeout: Duration,
) -> Result<(), (Failure, Then)> {
    let mail = if written {
        step(conn.read_response(), timeout, "MAIL FROM").await
    } else {
        step(conn.command(commands), timeout, "MAIL FROM").await
    };
    if let Err(f @ Failure::NoReply(_)) = mail {
        return Err((f, Then::RetryNow));
    }
    let rcpt = step(conn.read_response(), timeout, "RCPT TO").await;
    if let Err(f @ Failure::NoReply(_)) = rcpt {
        return Err((f, Then::Close));
    }
    let data = step(conn.read_response(), timeout, "DATA").await;
    if let Err(f @ Failure::NoReply(_)) = data {
        return Err((f, Then::Close));
    }
    // The first refusal is the one to report: a refused DATA after a refused MAIL or RCPT
    // only says that there is no transaction.
    match (mail.and(rcpt), data) {
        (Ok(_), Ok(_)) => Ok(()),
        (Ok(_), Err(refusal)) | (Err(refusal), Err(_)) => Err((refusal, Then::Reset)),
        // The server accepted DATA after refusing the envelope and now waits for a message
        // that must not come: only closing the connection ends that safely.
        (Err(refusal), Ok(_)) => Err((refusal, Then::Close)),
    }
}

/// A message as DATA carries it: lines that start with `.` get another one (RFC 5321
/// 4.5.2) and `.` on a line of its own ends it. Written in one piece with its end, where
/// lettre's `message` stuffs byte by byte and sends the end as a second packet.
struct DataBody(String);

impl DataBody {
    /// `None` when the message is not UTF-8 (lettre's own path sends it then).
    fn new(message: &[u8]) -> Option<Self> {
        let message = std::str::from_utf8(message).ok()?;
        let mut out = String::with_capacity(message.len() + message.len() / 64 + 5);
        if message.starts_with('.') {
            out.push('.');
        }
        let mut start = 0;
        // Every "\r\n." gets its dot doubled: the pieces between are copied whole.
        for at in memchr::memmem::find_iter(message.as_bytes(), b"\r\n.") {
            out.push_str(&message[start..at + 2]);
            out.push('.');
            start = at + 2;
        }
        out.push_str(&message[start..]);
        if !message.is_empty() && !message.ends_with("\r\n") {
            out.push_str("\r\n");
        }
        out.push_str(".\r\n");
        Some(DataBody(out))
    }
}

impl fmt::Display for DataBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs one command with a timeout and turns lettre's error into a [`Failure`].
async fn step(
    fut: impl Future<Output = Result<Response, lettre::transport::smtp::Error>>,
    timeout: Duration,
    what: &str,
) -> Result<Response, Failure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(e)) => Err(match e.status() {
            Some(code) => Failure::Reply {
                code: u16::from(code),
                text: error_text(&e),
            },
            None => Failure::NoReply(format!("{what}: {}", error_text(&e))),
        }),
        Err(_) => Err(Failure::NoReply(format!(
            "timed out after {timeout:?} waiting for the reply to {what}"
        ))),
    }
}

fn classify_connect(addr: &str, what: &str, e: &lettre::transport::smtp::Error) -> Failure {
    match e.status() {
        Some(code) => Failure::Reply {
            code: u16::from(code),
            text: error_text(e),
        },
        None => Failure::NoReply(format!("{what} with {addr}: {}", error_text(e))),
    }
}

/// The server's reply text when lettre carries one (its error source), else lettre's own
/// description.
fn error_text(e: &lettre::transport::smtp::Error) -> String {
    use std::error::Error as _;
    match (e.status(), e.source()) {
        (Some(_), Some(source)) => source.to_string(),
        _ => e.to_string(),
    }
}

/// The reply's text lines joined with a space, as lettre joins them for errors.
fn reply_text(response: &Response) -> String {
    response.message().collect::<Vec<_>>().join(" ")
}

/// lettre's TLS-upgraded stream speaks futures-io; `connect_with_transport` wants tokio's
/// traits. This adapter lets implicit TLS reuse lettre's own rustls set-up (roots, extra
/// CAs, test-only invalid-cert acceptance) on our `TCP_NODELAY` stream.
#[allow(deprecated)]
#[derive(Debug)]
struct ImplicitTls(AsyncNetworkStream);

impl AsyncRead for ImplicitTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for ImplicitTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for ImplicitTls {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::DataBody;

    #[test]
    fn data_body_stuffs_leading_dots_and_ends_with_a_dot_line() {
        let cases = [
            (
                ".first\r\nmid.dle\r\n.\r\n",
                "..first\r\nmid.dle\r\n..\r\n.\r\n",
            ),
            ("no line end", "no line end\r\n.\r\n"),
            ("a\r\n.b", "a\r\n..b\r\n.\r\n"),
            // A bare LF is not a line end in SMTP: the dot after it stays single.
            ("a\n.b\r\n", "a\n.b\r\n.\r\n"),
            ("", ".\r\n"),
        ];
        for (message, on_the_wire) in cases {
            let body = DataBody::new(message.as_bytes()).expect("UTF-8");
            assert_eq!(body.to_string(), on_the_wire, "{message:?}");
        }
        assert!(DataBody::new(b"\xff").is_none());
    }

    proptest::proptest! {
        /// Every line that starts with a dot gets one more, nothing else changes, and the
        /// end is `CRLF . CRLF`.
        #[test]
        fn data_body_is_the_message_stuffed_line_by_line(
            message in "([a-z.]{0,4}|\r\n|\n|\r){0,16}"
        ) {
            let mut expected = String::new();
            for line in message.split_inclusive("\r\n") {
                if line.starts_with('.') {
                    expected.push('.');
                }
                expected.push_str(line);
            }
            if !message.is_empty() && !message.ends_with("\r\n") {
                expected.push_str("\r\n");
            }
            expected.push_str(".\r\n");
            let body = DataBody::new(message.as_bytes()).expect("UTF-8");
            proptest::prop_assert_eq!(body.0, expected);
        }
    }
}
