//! The outbox transport writes complete, parseable `.eml` files under atomic names, and
//! DKIM signing adds a signature covering the one-click unsubscribe headers.

mod common;

use std::time::SystemTime;

use mailparse::MailHeaderMap;
use skychimp_transport::{
    ComposeInput, DkimConfig, DkimError, DkimSigner, ListId, SmtpOptions, Transport, TransportUrl,
    compose,
};

#[tokio::test]
async fn outbox_writes_one_complete_parseable_file_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = dir.path().join("var").join("outbox"); // created on first write
    let url = TransportUrl::parse(&format!("outbox:{}", outbox.display())).unwrap();
    let transport = Transport::new(url, SmtpOptions::default());
    let mut sender = transport.connect();

    let messages: Vec<_> = (0..3)
        .map(|i| common::message(&format!("Outbox {i}")))
        .collect();
    for m in &messages {
        let report = sender.send(m).await;
        assert!(report.outcome.is_sent(), "{report:?}");
        assert_eq!(report.outcome.code(), Some(250));
        assert!(report.outcome.reply().contains("outbox"));
    }

    let mut names: Vec<_> = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "no temporary files left behind: {names:?}");
    for (i, m) in messages.iter().enumerate() {
        // The file is named after the Message-ID.
        let id = m.message_id.trim_matches(|c| c == '<' || c == '>');
        let path = outbox.join(format!("{id}.eml"));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes, m.bytes, "file holds exactly the composed message");
        let parsed = mailparse::parse_mail(&bytes).unwrap();
        let h = |n: &str| parsed.headers.get_first_value(n).unwrap_or_default();
        assert_eq!(h("Subject"), format!("Outbox {i}"));
        assert_eq!(h("Message-ID"), m.message_id);
        assert_eq!(h("List-Unsubscribe-Post"), "List-Unsubscribe=One-Click");
        assert!(parsed.ctype.mimetype == "multipart/alternative");
        assert_eq!(parsed.subparts.len(), 2);
        assert_eq!(parsed.subparts[0].ctype.mimetype, "text/plain");
        assert_eq!(parsed.subparts[1].ctype.mimetype, "text/html");
        assert_eq!(
            parsed.subparts[0].get_body().unwrap().trim(),
            format!("Body of Outbox {i}.")
        );
    }
}

#[tokio::test]
async fn outbox_failure_is_transient_and_names_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap();
    let url = TransportUrl::parse(&format!("outbox:{}", blocker.display())).unwrap();
    let mut sender = Transport::new(url, SmtpOptions::default()).connect();
    let report = sender.send(&common::message("x")).await;
    match report.outcome {
        skychimp_transport::SendOutcome::Transient { code: None, reply } => {
            assert!(reply.contains("not-a-dir"), "{reply}")
        }
        other => panic!("{other:?}"),
    }
}

fn dkim_signer() -> DkimSigner {
    let pem = include_str!("fixtures/dkim-test-rsa.pem");
    DkimSigner::new(&DkimConfig {
        selector: "sky2026".to_owned(),
        domain: "example.com".to_owned(),
        private_key_pem: pem.to_owned(),
    })
    .unwrap()
}

#[test]
fn dkim_signature_covers_the_list_headers() {
    let signer = dkim_signer();
    let m = compose(&ComposeInput {
        from: "Skychimp <news@example.com>",
        to_name: "Ivan",
        to_address: "ivan@example.org",
        subject: "Signed",
        text: "t",
        html: "<p>h</p>",
        list: ListId {
            owner: "alice",
            name: "weekly",
        },
        unsubscribe_url: "https://news.example.com/u/1",
        date: SystemTime::now(),
        dkim: Some(&signer),
    })
    .unwrap();
    let parsed = mailparse::parse_mail(&m.bytes).unwrap();
    let sig = parsed
        .headers
        .get_first_value("DKIM-Signature")
        .expect("DKIM-Signature header");
    let sig: String = sig.split_whitespace().collect();
    let tag = |t: &str| {
        sig.split(';')
            .find_map(|kv| kv.trim().strip_prefix(&format!("{t}=")).map(str::to_owned))
            .unwrap_or_default()
    };
    assert_eq!(tag("d"), "example.com");
    assert_eq!(tag("s"), "sky2026");
    assert_eq!(tag("a"), "rsa-sha256");
    assert_eq!(tag("c"), "relaxed/relaxed");
    let signed: Vec<String> = tag("h").split(':').map(|h| h.to_lowercase()).collect();
    for h in [
        "from",
        "subject",
        "list-unsubscribe",
        "list-unsubscribe-post",
    ] {
        assert!(signed.contains(&h.to_owned()), "{h} not in h={signed:?}");
    }
    assert!(tag("b").len() > 100, "signature present");
}

#[test]
fn dkim_key_errors_are_actionable() {
    let bad = |pem: &str| {
        DkimSigner::new(&DkimConfig {
            selector: "s".to_owned(),
            domain: "example.com".to_owned(),
            private_key_pem: pem.to_owned(),
        })
        .unwrap_err()
    };
    assert_eq!(
        bad("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----"),
        DkimError::Pkcs8
    );
    assert!(
        bad("-----BEGIN PRIVATE KEY-----")
            .to_string()
            .contains("openssl rsa")
    );
    assert!(matches!(
        bad("-----BEGIN RSA PRIVATE KEY-----\nnope\n-----END RSA PRIVATE KEY-----"),
        DkimError::BadKey(_)
    ));
}
