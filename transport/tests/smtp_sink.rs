//! The SMTP sender against a real Postfix smtp-sink: what reached the server, and how each
//! kind of server failure is classified.

mod common;

use std::time::Duration;

use common::{Sink, fast_options, message, message_to};
use skychimp_transport::{SendOutcome, SmtpSender, Transport, TransportUrl};

fn sender_for(sink: &Sink) -> SmtpSender {
    sender_on(sink.port)
}

fn sender_on(port: u16) -> SmtpSender {
    let url = format!("smtp://127.0.0.1:{port}?tls=none");
    match TransportUrl::parse(&url) {
        Ok(TransportUrl::Smtp(u)) => SmtpSender::new(u, fast_options()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn many_messages_over_one_connection_all_arrive() {
    let Some(sink) = Sink::start(&[]) else { return };
    let mut sender = sender_for(&sink);
    let n = 40;
    for i in 0..n {
        let report = sender.send(&message(&format!("Issue {i}"))).await;
        match &report.outcome {
            SendOutcome::Sent { code, reply } => {
                assert_eq!(*code, 250, "{reply}");
                assert!(!reply.is_empty());
            }
            other => panic!("message {i}: {other:?}"),
        }
        assert!(report.duration > Duration::ZERO);
    }
    assert_eq!(sender.connections_opened(), 1);
    sender.close().await;

    // The server saw exactly one session carrying all n messages.
    let (sess, quit, mesg) = sink.counters_until(|(s, _, m)| s >= 1 && m >= n);
    assert_eq!((sess, quit, mesg), (1, 1, n), "smtp-sink counters");

    let dumped = sink.wait_for_messages(n as usize);
    assert_eq!(dumped.len(), n as usize);
    for (i, m) in dumped.iter().enumerate() {
        assert!(m.contains("X-Mail-Args: <news@example.com>"), "{m}");
        assert!(m.contains("X-Rcpt-Args: <ivan@example.org>"), "{m}");
        assert!(m.contains(&format!("Subject: Issue {i}\n")), "{m}");
        assert!(m.contains("List-Id: <weekly.alice.example.com>"), "{m}");
        assert!(
            m.contains("List-Unsubscribe: <https://news.example.com/unsubscribe/tok>"),
            "{m}"
        );
        assert!(m.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"));
        assert!(m.contains(&format!("Body of Issue {i}.")), "{m}");
        assert!(m.contains(&format!("<p>Body of Issue {i}.</p>")), "{m}");
    }
}

/// With PIPELINING (smtp-sink's default: MAIL, RCPT and DATA go in one write) and without
/// it (`-p`: one command per round trip), the message arrives as composed: lines that
/// start with a dot are stuffed on the way and unstuffed by the server, a lone `.` line
/// does not end the message early, and the connection carries the next message.
#[tokio::test]
async fn dot_lines_arrive_intact_with_and_without_pipelining() {
    for flags in [&[][..], &["-p"][..]] {
        let Some(sink) = Sink::start(flags) else {
            return;
        };
        let mut sender = sender_for(&sink);
        let text = "first\n.\n.hidden\n..two\nlast line\n";
        let composed = skychimp_transport::compose(&skychimp_transport::ComposeInput {
            text,
            html: "<p>x</p>\n",
            ..common::input("Dots")
        })
        .expect("compose");
        for m in [&composed, &message("After dots")] {
            let report = sender.send(m).await;
            assert!(report.outcome.is_sent(), "{flags:?}: {report:?}");
        }
        assert_eq!(sender.connections_opened(), 1, "{flags:?}");
        assert_eq!(sender.pipelining(), flags.is_empty(), "{flags:?}");
        sender.close().await;
        let dumped = sink.wait_for_messages(2);
        assert!(
            dumped[0].contains("first\n.\n.hidden\n..two\nlast line\n"),
            "{flags:?}: {}",
            dumped[0]
        );
        assert!(dumped[1].contains("Subject: After dots\n"), "{flags:?}");
    }
}

#[tokio::test]
async fn transport_url_opens_an_smtp_sender() {
    let Some(sink) = Sink::start(&[]) else { return };
    let url = TransportUrl::parse(&sink.url()).unwrap();
    let mut sender = Transport::new(url, fast_options()).connect();
    let report = sender.send(&message("via Transport")).await;
    assert!(report.outcome.is_sent(), "{report:?}");
    sender.close().await;
    let dumped = sink.wait_for_messages(1);
    assert!(dumped[0].contains("Subject: via Transport"));
}

#[tokio::test]
async fn rcpt_4xx_is_transient_with_the_reply_and_the_connection_is_kept() {
    let Some(sink) = Sink::start(&["-r", "rcpt"]) else {
        return;
    };
    let mut sender = sender_for(&sink);
    for _ in 0..3 {
        match sender.send(&message("x")).await.outcome {
            SendOutcome::Transient {
                code: Some(code),
                reply,
            } => {
                assert!((400..500).contains(&code), "{code} {reply}");
                assert!(reply.contains("Error"), "server's text kept: {reply}");
            }
            other => panic!("{other:?}"),
        }
    }
    // RSET after each refusal: one connection carried all three tries.
    assert_eq!(sender.connections_opened(), 1);
    assert!(sink.messages().is_empty());
}

#[tokio::test]
async fn data_and_end_of_data_4xx_are_transient() {
    for stage in ["data", "."] {
        let Some(sink) = Sink::start(&["-r", stage]) else {
            return;
        };
        let mut sender = sender_for(&sink);
        match sender.send(&message("x")).await.outcome {
            SendOutcome::Transient {
                code: Some(code),
                reply,
            } => assert!((400..500).contains(&code), "{stage}: {code} {reply}"),
            other => panic!("{stage}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn five_xx_is_permanent_with_the_reply() {
    for stage in ["mail", "rcpt", "data", "."] {
        let Some(sink) = Sink::start(&["-f", stage]) else {
            return;
        };
        let mut sender = sender_for(&sink);
        match sender.send(&message("x")).await.outcome {
            SendOutcome::Permanent { code, reply } => {
                assert!((500..600).contains(&code), "{stage}: {code} {reply}");
                assert!(reply.contains("Error"), "{stage}: {reply}");
                eprintln!("-f {stage}: {code} {reply}");
            }
            other => panic!("{stage}: {other:?}"),
        }
        if stage != "." {
            // (After "." smtp-sink has already written its dump before refusing.)
            assert!(sink.messages().is_empty(), "{stage}: nothing delivered");
        }
    }
}

#[tokio::test]
async fn connection_refused_is_transient() {
    if !common::require_tools() {
        return;
    }
    let port = common::free_port();
    let mut sender = sender_on(port);
    let report = sender.send(&message("x")).await;
    match report.outcome {
        SendOutcome::Transient { code: None, reply } => {
            assert!(reply.to_lowercase().contains("refused"), "{reply}");
            assert!(reply.contains(&port.to_string()), "{reply}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dropped_connection_is_transient_and_a_later_send_reconnects() {
    let Some(sink) = Sink::start(&["-q", "data"]) else {
        return;
    };
    let mut sender = sender_for(&sink);
    match sender.send(&message("dropped")).await.outcome {
        SendOutcome::Transient { code: None, reply } => assert!(!reply.is_empty()),
        other => panic!("{other:?}"),
    }
    assert!(!sender.is_connected());

    // The server comes back healthy on the same port; the same sender reconnects.
    let port = sink.stop();
    let sink = Sink::start_on(port, &[]).expect("restart smtp-sink on the same port");
    let report = sender.send(&message("after reconnect")).await;
    assert!(report.outcome.is_sent(), "{report:?}");
    assert_eq!(sender.connections_opened(), 2);
    let dumped = sink.wait_for_messages(1);
    assert_eq!(dumped.len(), 1);
    assert!(dumped[0].contains("Subject: after reconnect"));
}

#[tokio::test]
async fn idle_connection_closed_by_the_server_is_replaced_without_a_failure() {
    let Some(sink) = Sink::start(&[]) else { return };
    let mut sender = sender_for(&sink);
    assert!(sender.send(&message("first")).await.outcome.is_sent());
    let port = sink.stop();
    let sink = Sink::start_on(port, &[]).expect("restart smtp-sink");
    // The kept connection is dead, but nothing of this message was sent on it: the sender
    // reconnects and delivers instead of reporting a failure.
    let report = sender.send(&message("second")).await;
    assert!(report.outcome.is_sent(), "{report:?}");
    assert_eq!(sender.connections_opened(), 2);
    let dumped = sink.wait_for_messages(1);
    assert!(dumped[0].contains("Subject: second"));
}

#[tokio::test]
async fn header_injection_never_reaches_the_server_and_encoded_names_arrive_intact() {
    let Some(sink) = Sink::start(&[]) else { return };
    let err = skychimp_transport::compose(&skychimp_transport::ComposeInput {
        from: "Skychimp <news@example.com>",
        to_name: "Ivan",
        to_address: "ivan@example.org",
        subject: "Hello\r\nBcc: victim@example.net",
        text: "t",
        html: "h",
        list: skychimp_transport::ListId {
            owner: "alice",
            name: "weekly",
        },
        unsubscribe_url: "https://x.example/u",
        date: std::time::SystemTime::now(),
        dkim: None,
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("subject:"), "{err}");

    let m = skychimp_transport::compose(&skychimp_transport::ComposeInput {
        from: "Skychimp <news@example.com>",
        to_name: "Иван \"the fair\" Петров",
        to_address: "ivan@example.org",
        subject: "Итоги недели: «Bcc: nobody»",
        text: "Привет",
        html: "<p>Привет</p>",
        list: skychimp_transport::ListId {
            owner: "alice",
            name: "weekly",
        },
        unsubscribe_url: "https://x.example/u",
        date: std::time::SystemTime::now(),
        dkim: None,
    })
    .unwrap();
    let mut sender = sender_for(&sink);
    assert!(sender.send(&m).await.outcome.is_sent());
    let dumped = sink.wait_for_messages(1);
    let raw = &dumped[0];
    assert!(!raw.contains("\nBcc:"), "{raw}");
    let parsed = mailparse::parse_mail(raw.as_bytes()).unwrap();
    let header = |name: &str| {
        use mailparse::MailHeaderMap;
        parsed.headers.get_first_value(name).unwrap_or_default()
    };
    assert_eq!(header("Subject"), "Итоги недели: «Bcc: nobody»");
    assert!(header("To").contains("Иван"), "{}", header("To"));
    assert_eq!(parsed.subparts.len(), 2);
    assert_eq!(parsed.subparts[0].get_body().unwrap().trim(), "Привет");
}

#[tokio::test]
async fn refusals_while_connecting_are_transient_even_with_5xx() {
    // A relay refusing us (greeting or EHLO) is about our configuration, not the
    // recipient: retried later rather than failing every delivery (see USAGE.md).
    for (flag, stage) in [("-r", "connect"), ("-f", "connect"), ("-f", "ehlo")] {
        let Some(sink) = Sink::start(&[flag, stage]) else {
            return;
        };
        let mut sender = sender_for(&sink);
        match sender.send(&message("x")).await.outcome {
            SendOutcome::Transient {
                code: Some(code),
                reply,
            } => {
                let expected = if flag == "-r" { 400..500 } else { 500..600 };
                assert!(expected.contains(&code), "{flag} {stage}: {code} {reply}");
                assert!(reply.contains("Error"), "{flag} {stage}: {reply}");
            }
            other => panic!("{flag} {stage}: {other:?}"),
        }
        assert!(!sender.is_connected());
    }
}

/// The next envelope goes with each body (`send_then`); when a 5xx refuses each message at
/// the end of DATA, that refusal ends its transaction and the envelope written ahead is
/// answered in turn: every message is refused with the server's reply, on one connection,
/// with no RSET in between.
#[tokio::test]
async fn envelopes_written_ahead_survive_refused_messages() {
    let Some(sink) = Sink::start(&["-f", "."]) else {
        return;
    };
    let mut sender = sender_for(&sink);
    let messages: Vec<_> = (0..4).map(|i| message(&format!("Issue {i}"))).collect();
    for (i, m) in messages.iter().enumerate() {
        match sender.send_then(m, messages.get(i + 1)).await.outcome {
            SendOutcome::Permanent { code, reply } => {
                assert!((500..600).contains(&code), "{i}: {code} {reply}");
            }
            other => panic!("{i}: {other:?}"),
        }
    }
    assert_eq!(sender.connections_opened(), 1);
}

/// A message announced ahead that does not go next (a halt came between) is never sent:
/// the sender closes that connection instead of giving the open DATA any content, and the
/// message that does go arrives on a new one.
#[tokio::test]
async fn an_envelope_written_ahead_for_a_message_that_does_not_go_is_dropped() {
    let Some(sink) = Sink::start(&[]) else { return };
    let mut sender = sender_for(&sink);
    let first = message_to("first@example.org", "First");
    let skipped = message_to("skipped@example.org", "Skipped");
    let other = message_to("other@example.org", "Other");
    assert!(
        sender
            .send_then(&first, Some(&skipped))
            .await
            .outcome
            .is_sent()
    );
    let report = sender.send_then(&other, None).await;
    assert!(report.outcome.is_sent(), "{report:?}");
    assert_eq!(sender.connections_opened(), 2);
    sender.close().await;
    let (sess, _, mesg) = sink.counters_until(|(s, q, m)| s >= 2 && q >= 1 && m >= 2);
    assert_eq!((sess, mesg), (2, 2), "smtp-sink counters");
    let dumped = sink.wait_for_messages(2);
    assert_eq!(dumped.len(), 2, "{dumped:?}");
    assert!(
        dumped[0].contains("X-Rcpt-Args: <first@example.org>"),
        "{}",
        dumped[0]
    );
    assert!(
        dumped[1].contains("X-Rcpt-Args: <other@example.org>"),
        "{}",
        dumped[1]
    );
    assert!(dumped.iter().all(|m| !m.contains("skipped@example.org")));
}
