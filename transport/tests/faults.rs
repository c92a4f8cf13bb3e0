//! Faults smtp-sink cannot produce, from a tiny in-process fake server: a server that goes
//! silent after the message body, one that never greets, one without STARTTLS, AUTH, and one
//! that answers a message only once the next envelope has arrived.

mod common;

use std::time::Duration;

use common::message;
use skychimp_transport::{SendOutcome, SmtpOptions, SmtpSender, TransportUrl};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How the fake behaves.
#[derive(Clone, Copy)]
enum Fake {
    /// Accepts the connection and never says anything.
    NeverGreets,
    /// Normal until the end of DATA, then never answers.
    SilentAfterData,
    /// EHLO without STARTTLS.
    NoStartTls,
    /// Offers AUTH PLAIN; answers `reply` to AUTH, then accepts mail.
    Auth(&'static str),
    /// Offers PIPELINING and holds its reply to the end of DATA until the next command
    /// arrives: only a client that writes the next envelope with the body is answered.
    HoldsEndOfData,
}

/// What the fake sends on its channel when a connection ends.
const CLOSED: &str = "<connection closed>";

/// Starts the fake on a free port; every line it receives is sent on the channel, and
/// [`CLOSED`] when the connection ends.
async fn fake(kind: Fake) -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                if matches!(kind, Fake::NeverGreets) {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let _ = write.write_all(b"220 fake ESMTP\r\n").await;
                let mut in_data = false;
                let mut held = false;
                while let Ok(Some(line)) = lines.next_line().await {
                    let _ = tx.send(line.clone());
                    if in_data {
                        if line == "." {
                            in_data = false;
                            match kind {
                                Fake::SilentAfterData => {
                                    tokio::time::sleep(Duration::from_secs(3600)).await;
                                    return;
                                }
                                Fake::HoldsEndOfData => held = true,
                                _ => {
                                    let _ = write.write_all(b"250 2.0.0 queued as FAKE\r\n").await;
                                }
                            }
                        }
                        continue;
                    }
                    if std::mem::take(&mut held) {
                        let _ = write.write_all(b"250 2.0.0 queued as FAKE\r\n").await;
                    }
                    let verb = line.split(' ').next().unwrap_or("").to_ascii_uppercase();
                    let reply: &[u8] = match (verb.as_str(), kind) {
                        ("EHLO", Fake::Auth(_)) => b"250-fake\r\n250 AUTH PLAIN LOGIN\r\n",
                        ("EHLO", Fake::NoStartTls) => b"250-fake\r\n250 8BITMIME\r\n",
                        ("EHLO", Fake::HoldsEndOfData) => b"250-fake\r\n250 PIPELINING\r\n",
                        ("EHLO", _) => b"250-fake\r\n250 STARTTLS\r\n",
                        ("AUTH", Fake::Auth(r)) => {
                            let _ = write.write_all(format!("{r}\r\n").as_bytes()).await;
                            continue;
                        }
                        ("DATA", _) => {
                            in_data = true;
                            b"354 go ahead\r\n"
                        }
                        ("QUIT", _) => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"250 ok\r\n",
                    };
                    let _ = write.write_all(reply).await;
                }
                let _ = tx.send(CLOSED.to_owned());
            });
        }
    });
    (port, rx)
}

fn sender(url: &str, options: SmtpOptions) -> SmtpSender {
    match TransportUrl::parse(url) {
        Ok(TransportUrl::Smtp(u)) => SmtpSender::new(u, options),
        other => panic!("{other:?}"),
    }
}

fn short(timeout_ms: u64) -> SmtpOptions {
    let t = Duration::from_millis(timeout_ms);
    SmtpOptions {
        connect_timeout: t,
        command_timeout: t,
        data_timeout: t,
        ..SmtpOptions::default()
    }
}

#[tokio::test]
async fn no_reply_after_the_body_times_out_as_transient() {
    let (port, mut seen) = fake(Fake::SilentAfterData).await;
    let mut s = sender(&format!("smtp://127.0.0.1:{port}"), short(300));
    let report = s.send(&message("silent")).await;
    match &report.outcome {
        SendOutcome::Transient { code: None, reply } => {
            assert!(reply.contains("timed out"), "{reply}");
            assert!(reply.contains("end of DATA"), "{reply}");
        }
        other => panic!("{other:?}"),
    }
    assert!(report.duration >= Duration::from_millis(300), "{report:?}");
    assert!(report.duration < Duration::from_secs(3), "{report:?}");
    assert!(!s.is_connected(), "a timed-out connection is never reused");
    // The body did reach the server (this is the ambiguous case the daemon must know of).
    let mut got_subject = false;
    while let Ok(line) = seen.try_recv() {
        got_subject |= line == "Subject: silent";
    }
    assert!(got_subject);
}

#[tokio::test]
async fn a_server_that_never_greets_times_out_as_transient() {
    let (port, _seen) = fake(Fake::NeverGreets).await;
    let mut s = sender(&format!("smtp://127.0.0.1:{port}"), short(200));
    let report = s.send(&message("x")).await;
    match &report.outcome {
        SendOutcome::Transient { code: None, reply } => {
            assert!(
                reply.contains("timed out") && reply.contains("connecting"),
                "{reply}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn starttls_required_but_not_offered_sends_nothing() {
    let (port, mut seen) = fake(Fake::NoStartTls).await;
    let mut s = sender(
        &format!("smtp://127.0.0.1:{port}?tls=starttls"),
        short(2000),
    );
    match s.send(&message("x")).await.outcome {
        SendOutcome::Transient { code: None, reply } => {
            assert!(reply.contains("does not offer STARTTLS"), "{reply}")
        }
        other => panic!("{other:?}"),
    }
    while let Ok(line) = seen.try_recv() {
        assert!(!line.starts_with("MAIL"), "no mail in clear text: {line}");
    }
}

#[tokio::test]
async fn auth_sends_the_user_and_password_then_the_mail() {
    let (port, mut seen) = fake(Fake::Auth("235 2.7.0 ok")).await;
    let options = SmtpOptions {
        password: Some("s3cret".to_owned()),
        ..short(2000)
    };
    let mut s = sender(&format!("smtp://bob@127.0.0.1:{port}"), options);
    let report = s.send(&message("authed")).await;
    assert!(report.outcome.is_sent(), "{report:?}");
    let mut auth = None;
    while let Ok(line) = seen.try_recv() {
        if line.starts_with("AUTH") {
            auth = Some(line);
        }
    }
    let auth = auth.expect("AUTH sent");
    // AUTH PLAIN base64("\0bob\0s3cret")
    assert_eq!(auth, "AUTH PLAIN AGJvYgBzM2NyZXQ=");
}

#[tokio::test]
async fn rejected_credentials_are_transient_with_the_reply() {
    let (port, _seen) = fake(Fake::Auth("535 5.7.8 bad credentials")).await;
    let options = SmtpOptions {
        password: Some("wrong".to_owned()),
        ..short(2000)
    };
    let mut s = sender(&format!("smtp://bob@127.0.0.1:{port}"), options);
    match s.send(&message("x")).await.outcome {
        SendOutcome::Transient {
            code: Some(535),
            reply,
        } => assert!(reply.contains("bad credentials"), "{reply}"),
        other => panic!("{other:?}"),
    }
}

/// The next message's MAIL, RCPT and DATA go in the same write as the body: against a server
/// that answers a body only once more commands arrive, every message with a next one is
/// answered (a client waiting for that reply before writing MAIL would time out), and
/// `close` does not write QUIT into the DATA the last envelope opened.
#[tokio::test]
async fn the_next_envelope_goes_with_the_body() {
    let (port, mut lines) = fake(Fake::HoldsEndOfData).await;
    let mut s = sender(&format!("smtp://127.0.0.1:{port}?tls=none"), short(2_000));
    let messages: Vec<_> = (0..4)
        .map(|i| common::message_to(&format!("r{i}@example.org"), &format!("Issue {i}")))
        .collect();
    for i in 0..3 {
        let report = s.send_then(&messages[i], Some(&messages[i + 1])).await;
        assert!(report.outcome.is_sent(), "message {i}: {report:?}");
    }
    assert!(s.pipelining());
    assert_eq!(s.connections_opened(), 1);
    s.close().await;

    let mut seen = Vec::new();
    while let Some(line) = lines.recv().await {
        if line == CLOSED {
            break;
        }
        seen.push(line);
    }
    let rcpts: Vec<&str> = seen
        .iter()
        .filter(|l| l.starts_with("RCPT TO"))
        .map(String::as_str)
        .collect();
    assert_eq!(
        rcpts,
        [
            "RCPT TO:<r0@example.org>",
            "RCPT TO:<r1@example.org>",
            "RCPT TO:<r2@example.org>",
            "RCPT TO:<r3@example.org>"
        ]
    );
    assert_eq!(seen.iter().filter(|l| *l == ".").count(), 3);
    // Nothing after the last envelope: no QUIT, which would have been message content.
    assert_eq!(seen.last().map(String::as_str), Some("DATA"), "{seen:?}");
}
