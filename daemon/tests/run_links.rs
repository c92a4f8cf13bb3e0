//! The links `skychimpd run` mails and serves: address verification (`/verify/{token}`)
//! and one-click unsubscribe (`/unsubscribe/{token}`), exercised as a new owner and a
//! recipient would — by opening the links from the `.eml` files the outbox received.

mod running;
#[path = "../../transport/tests/common/mod.rs"]
mod sink;

use std::path::Path;

use running::{Daemon, Mail, outbox, skychimpd, wait_outbox, write};

const NOW: &str = "2026-11-26T12:00:00Z";
const ENV: &[(&str, &str)] = &[("SKYCHIMP_NOW", NOW)];
const CONFIRM: &str = "Confirm your address for Skychimp";

fn users(alice: &str) -> String {
    format!(
        "[alice]\nemail = \"{alice}\"\nname = \"Alice\"\n\n[bob]\nemail = \"bob@example.org\"\nname = \"Bob\"\n"
    )
}

fn once(list: &str, subject: &str) -> String {
    format!(
        "title = \"{subject}\"\nlists = [\"{list}\"]\nstart = 2026-11-26T10:00:00\nevery = \"once\"\n\n\
         [message]\nsubject = \"{subject}\"\nbody = \"Hello {{{{ client.name }}}}: {subject}.\"\n"
    )
}

fn repository(root: &Path) {
    write(root, "users.toml", &users("alice@example.com"));
    write(
        root,
        "clients/alice/newsletter.toml",
        "[[client]]\nemail = \"ivan@example.com\"\nname = \"Ivan\"\n\n\
         [[client]]\nemail = \"maria@example.org\"\nname = \"Maria\"\n",
    );
    write(
        root,
        "clients/bob/team.toml",
        "[[client]]\nemail = \"dev@example.org\"\nname = \"Dev\"\n",
    );
    write(
        root,
        "mailings/alice/daily.toml",
        "title = \"Daily\"\nlists = [\"newsletter\"]\nstart = 2026-11-20T09:00:00\nevery = \"daily\"\n\n\
         [message]\nsubject = \"Daily\"\nbody = \"Hello {{ client.name }}.\"\n",
    );
    write(root, "mailings/bob/standup.toml", &once("team", "Standup"));
}

/// The verification link mailed to `to` (the newest, if several), path only.
fn verification_link(mails: &[Mail], to: &str) -> String {
    let mail = mails
        .iter()
        .rev()
        .find(|m| m.to == to && m.subject == CONFIRM)
        .unwrap_or_else(|| panic!("no verification mail to {to}: {mails:#?}"));
    assert!(mail.list_id.is_empty(), "a notice is not a list message");
    let start = mail
        .text
        .find("http://skychimp.test/verify/")
        .unwrap_or_else(|| panic!("no link in {:?}", mail.text));
    let link: String = mail.text[start..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '>')
        .collect();
    link.trim_start_matches("http://skychimp.test").to_string()
}

fn to_of(mails: &[Mail], subject: &str) -> Vec<String> {
    let mut v: Vec<String> = mails
        .iter()
        .filter(|m| m.subject == subject)
        .map(|m| m.to.clone())
        .collect();
    v.sort();
    v
}

#[test]
fn owners_verify_by_link_and_clients_unsubscribe_in_one_click() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let out = root.join("var/outbox");
    let mut daemon = Daemon::start("links", root, ENV);

    // Each new user is mailed a link; nothing of theirs sends before it is opened.
    let mark = daemon.position();
    daemon.wait_for(&["verification link sent", "user=alice"]);
    daemon.rewind(mark);
    daemon.wait_for(&["verification link sent", "user=bob"]);
    let mails = wait_outbox(&out, "two verification links", |m| {
        to_of(m, CONFIRM).len() == 2
    });
    assert_eq!(mails.len(), 2, "only the links went out: {mails:#?}");
    let alice_link = verification_link(&mails, "alice@example.com");
    let bob_link = verification_link(&mails, "bob@example.org");

    // Bob confirms: his mailing sends. The scheduler pass that creates his run also saw
    // Alice's due mailing, still held.
    let (status, page) = daemon.get(&bob_link);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Address confirmed"), "{page}");
    daemon.wait_for(&["address verified", "user=bob"]);
    daemon.wait_for(&["run created", "mailing=bob/standup"]);
    let mails = wait_outbox(&out, "bob's standup", |m| {
        to_of(m, "Standup") == ["dev@example.org"]
    });
    assert!(to_of(&mails, "Daily").is_empty(), "{mails:#?}");
    let (_, report) = skychimpd(root, &["report", "alice/daily", "--format", "json"], ENV);
    assert_eq!(report.trim(), "[]", "alice is unverified: no run yet");

    // Forged or mangled links are refused with 400, never a server error.
    let alice_token = running::token_of(&alice_link).to_string();
    let mut flipped = alice_token.clone();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let standup = mails.iter().find(|m| m.subject == "Standup").unwrap();
    let unsubscribe_token = running::token_of(&standup.unsubscribe).to_string();
    for forged in [
        flipped.as_str(),
        "garbage",
        "a.b.c",
        "%00%ff",
        &"x".repeat(3000),
        &alice_token[..alice_token.len() / 2],
        // A real token of another kind.
        &unsubscribe_token,
    ] {
        let (status, page) = daemon.get(&format!("/verify/{forged}"));
        assert_eq!(status, 400, "/verify/{forged}: {page}");
        assert!(page.contains("Invalid link"), "{page}");
    }

    // Alice confirms: her due mailing sends; opening the link again is harmless.
    let (status, page) = daemon.get(&alice_link);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Address confirmed"), "{page}");
    daemon.wait_for(&["address verified", "user=alice"]);
    daemon.wait_for(&["run created", "mailing=alice/daily"]);
    let mails = wait_outbox(&out, "alice's daily", |m| to_of(m, "Daily").len() == 2);
    assert_eq!(
        to_of(&mails, "Daily"),
        ["ivan@example.com", "maria@example.org"]
    );
    let (status, page) = daemon.get(&alice_link);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Already confirmed"), "{page}");

    // Unsubscribe: the link from the List-Unsubscribe header. A GET (what mail scanners
    // do) only shows the page...
    let ivan = mails
        .iter()
        .find(|m| m.subject == "Daily" && m.to == "ivan@example.com")
        .unwrap();
    assert!(
        ivan.unsubscribe
            .starts_with("http://skychimp.test/unsubscribe/"),
        "{ivan:#?}"
    );
    let unsubscribe = ivan
        .unsubscribe
        .trim_start_matches("http://skychimp.test")
        .to_string();
    let (status, page) = daemon.get(&unsubscribe);
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("ivan@example.com")
            && page.contains("from Alice (alice)")
            && page.contains("method=\"post\""),
        "{page}"
    );
    write(
        root,
        "mailings/alice/second.toml",
        &once("newsletter", "Second"),
    );
    daemon.wait_for(&["run created", "mailing=alice/second"]);
    wait_outbox(
        &out,
        "the second mailing to both (a GET unsubscribes nobody)",
        |m| to_of(m, "Second") == ["ivan@example.com", "maria@example.org"],
    );
    for forged in ["garbage", flipped.as_str(), alice_token.as_str()] {
        let (status, page) = daemon.post(
            &format!("/unsubscribe/{forged}"),
            "List-Unsubscribe=One-Click",
        );
        assert_eq!(status, 400, "POST /unsubscribe/{forged}: {page}");
        let (status, _) = daemon.get(&format!("/unsubscribe/{forged}"));
        assert_eq!(status, 400, "GET /unsubscribe/{forged}");
    }

    // ...the one-click POST (RFC 8058) unsubscribes, and the owner's next run leaves him
    // out of its recipients.
    let (status, page) = daemon.post(&unsubscribe, "List-Unsubscribe=One-Click");
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Unsubscribed"), "{page}");
    // Its page, and only it, has a button that takes it back: the form's action, relative.
    let start = page.find("action=\"").expect("a form") + "action=\"".len();
    let action = &page[start..start + page[start..].find('"').unwrap()];
    let undo = format!("/unsubscribe/{action}");
    assert!(undo.contains("/undo/"), "{undo}");
    daemon.wait_for(&["a client unsubscribed", "owner=alice"]);
    // Opening the link again says so, rather than asking again.
    let (status, page) = daemon.get(&unsubscribe);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("is unsubscribed"), "{page}");
    assert!(
        !page.contains("<form"),
        "anyone with the link could undo it: {page}"
    );
    write(
        root,
        "mailings/alice/third.toml",
        &once("newsletter", "Third"),
    );
    daemon.wait_for(&["run created", "mailing=alice/third"]);
    let mails = wait_outbox(&out, "the third mailing to maria", |m| {
        !to_of(m, "Third").is_empty()
    });
    assert_eq!(to_of(&mails, "Third"), ["maria@example.org"]);
    let (_, report) = skychimpd(root, &["report", "alice/third", "--format", "json"], ENV);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(
        (
            report[0]["recipients"].as_i64(),
            report[0]["skipped"].as_i64()
        ),
        (Some(1), Some(0)),
        "{report}"
    );

    // Unsubscribed by mistake: the page's button takes it back, and the next run includes
    // him again. A GET of the undo does nothing; the link with a made-up key is refused
    // (an owner collects the links from their own mail, not the keys).
    let (status, _) = daemon.get(&undo);
    assert_eq!(status, 405);
    let (status, page) = daemon.post(&format!("{unsubscribe}/undo/forged.key"), "");
    assert_eq!(status, 400, "{page}");
    let (status, page) = daemon.post(&undo, "");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("receives this sender's mailings again"),
        "{page}"
    );
    daemon.wait_for(&["a client subscribed again", "owner=alice"]);
    let (_, page) = daemon.post(&undo, "");
    assert!(
        page.contains("Nothing to take back"),
        "a second time: {page}"
    );
    let (_, page) = daemon.get(&unsubscribe);
    assert!(
        page.contains(">Unsubscribe</button>"),
        "asked again: {page}"
    );
    write(
        root,
        "mailings/alice/fourth.toml",
        &once("newsletter", "Fourth"),
    );
    let mails = wait_outbox(&out, "the fourth mailing to both", |m| {
        to_of(m, "Fourth").len() == 2
    });
    assert_eq!(
        to_of(&mails, "Fourth"),
        ["ivan@example.com", "maria@example.org"]
    );

    // A changed address gets a new link; the old one is replaced.
    write(root, "users.toml", &users("alice.new@example.com"));
    daemon.wait_for(&[
        "verification link sent",
        "user=alice",
        "alice.new@example.com",
    ]);
    let mails = wait_outbox(&out, "a link to the new address", |m| {
        m.iter()
            .any(|m| m.to == "alice.new@example.com" && m.subject == CONFIRM)
    });
    let new_link = verification_link(&mails, "alice.new@example.com");
    assert_ne!(new_link, alice_link);
    let (status, page) = daemon.get(&alice_link);
    assert_eq!(
        status, 410,
        "the old link after the address changed: {page}"
    );
    assert!(page.contains("Link replaced"), "{page}");
    let (status, page) = daemon.get(&new_link);
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Address confirmed"), "{page}");

    let (status, log) = daemon.terminate();
    assert_eq!(status.code(), Some(0), "{}", log.join("\n"));
    assert!(
        !log.iter().any(|l| l.contains(" ERROR ")),
        "{}",
        log.join("\n")
    );
    // Every recipient got each mailing at most once.
    let counts = running::tally(&outbox(&out));
    assert!(
        counts
            .iter()
            .all(|((_, list), &n)| n == 1 || list.is_empty()),
        "{counts:#?}"
    );
}

/// A verification link that meets a temporary failure (no server answers) is sent again
/// after `[delivery] backoff`, with no reload: once the server is up, each owner gets one.
#[test]
fn a_verification_link_that_could_not_go_is_sent_again() {
    if !sink::require_tools() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let port = sink::free_port();
    let url = format!("smtp://127.0.0.1:{port}");
    let env = [
        ("SKYCHIMP_NOW", NOW),
        ("SKYCHIMP_SMTP_URL", url.as_str()),
        ("SKYCHIMP_DELIVERY_BACKOFF", "1s"),
    ];
    let mut daemon = Daemon::start("deferred-link", root, &env);
    daemon.wait_for(&["verification link not sent", "user=alice"]);
    let server = sink::Sink::start_on(port, &[]).expect("smtp-sink on the daemon's port");
    let mark = daemon.position();
    daemon.wait_for(&["verification link sent", "user=alice"]);
    daemon.rewind(mark);
    daemon.wait_for(&["verification link sent", "user=bob"]);
    let messages = server.wait_for_messages(2);
    let to: Vec<&str> = messages
        .iter()
        .filter_map(|m| m.lines().find_map(|l| l.strip_prefix("To: ")))
        .collect();
    assert_eq!(to.len(), 2, "one link each: {messages:#?}");
    assert!(to.iter().any(|t| t.contains("alice@example.com")), "{to:?}");
    assert!(to.iter().any(|t| t.contains("bob@example.org")), "{to:?}");
}

/// An owner whose address changes while their run goes out must confirm the new one before
/// the rest goes: the run is held (nothing skipped), and the new link releases it.
#[test]
fn a_run_waits_while_its_owners_new_address_is_unconfirmed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let clients: String = (0..30)
        .map(|i| format!("[[client]]\nemail = \"c{i}@example.org\"\nname = \"C{i}\"\n\n"))
        .collect();
    write(root, "clients/alice/many.toml", &clients);
    write(root, "mailings/alice/big.toml", &once("many", "Big"));
    let out = root.join("var/outbox");
    let env = [("SKYCHIMP_NOW", NOW), ("SKYCHIMP_SMTP_RATE", "5")];
    let mut daemon = Daemon::start("held-unverified", root, &env);
    let mails = wait_outbox(&out, "alice's link", |m| {
        m.iter().any(|m| m.to == "alice@example.com")
    });
    let (status, page) = daemon.get(&verification_link(&mails, "alice@example.com"));
    assert_eq!(status, 200, "{page}");
    daemon.wait_for(&["run created", "mailing=alice/big"]);
    wait_outbox(&out, "the run under way", |m| to_of(m, "Big").len() >= 2);

    write(root, "users.toml", &users("alice.new@example.com"));
    daemon.wait_for(&[
        "its unfinished run is held",
        "its owner has not confirmed their address",
        "mailing=alice/big",
    ]);
    let held = to_of(&outbox(&out), "Big").len();
    assert!(held < 30, "the run ended before the address changed");
    let (_, report) = skychimpd(root, &["report", "alice/big", "--format", "json"], &env);
    let report: serde_json::Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report[0]["skipped"], 0, "held, not skipped: {report}");
    // A message already marked `sending` when the hold came may still go; then nothing.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let before = to_of(&outbox(&out), "Big").len();
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(to_of(&outbox(&out), "Big").len(), before, "mail while held");

    let mails = wait_outbox(&out, "a link to the new address", |m| {
        m.iter().any(|m| m.to == "alice.new@example.com")
    });
    let (status, page) = daemon.get(&verification_link(&mails, "alice.new@example.com"));
    assert_eq!(status, 200, "{page}");
    daemon.wait_for(&["its held run goes on", "mailing=alice/big"]);
    let mails = wait_outbox(&out, "the rest of the run", |m| to_of(m, "Big").len() == 30);
    let counts = running::tally(&mails);
    assert!(counts.values().all(|&n| n == 1), "{counts:#?}");
    daemon.terminate();
}

/// Opening an expired link mails a new one at once (before, the owner waited for the next
/// start or reload). Eight days pass for the link: its record is aged in the database and
/// the link opened is one the daemon's secret signed with that age's expiry.
#[test]
fn an_expired_link_brings_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let out = root.join("var/outbox");
    let secret = "a-test-token-secret-of-enough-length";
    let env = [("SKYCHIMP_NOW", NOW), ("SKYCHIMP_TOKEN_SECRET", secret)];
    let daemon = Daemon::start("expired-link", root, &env);
    let links = |mails: &[Mail]| {
        mails
            .iter()
            .filter(|m| m.to == "alice@example.com" && m.subject == CONFIRM)
            .count()
    };
    wait_outbox(&out, "alice's link", |m| links(m) == 1);
    let now = chrono::DateTime::parse_from_rfc3339(NOW).unwrap();
    let sent = now - chrono::Duration::days(8);
    let aged = std::process::Command::new("sqlite3")
        .arg(root.join("var/skychimp.db"))
        .arg(format!(
            "UPDATE user_state SET verification_sent_at = {} WHERE user_id = 'alice'",
            sent.timestamp_millis()
        ))
        .status()
        .unwrap();
    assert!(aged.success());
    let expires = (sent + chrono::Duration::days(7)).timestamp().to_string();
    let token = skychimpd::tokens::TokenSecret::from_bytes(secret).sign(
        "verify",
        &["alice", "alice@example.com", "old-nonce", &expires],
    );
    let (status, page) = daemon.get(&format!("/verify/{token}"));
    assert_eq!(status, 410, "{page}");
    assert!(page.contains("A new one is on its way"), "{page}");
    wait_outbox(&out, "a second link to alice", |m| links(m) == 2);
    daemon.terminate();
}

/// With `[dkim]` set, the verification link is signed like the mailings' messages: a
/// domain whose DMARC policy rejects unsigned mail would otherwise refuse the one mail
/// that lets its owners send.
#[test]
fn the_verification_mail_is_dkim_signed_like_the_messages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    repository(root);
    let key = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../transport/tests/fixtures/dkim-test-rsa.pem")
        .canonicalize()
        .unwrap();
    let key = key.to_str().unwrap();
    let env = [
        ("SKYCHIMP_NOW", NOW),
        ("SKYCHIMP_DKIM_SELECTOR", "sky2026"),
        ("SKYCHIMP_DKIM_DOMAIN", "example.com"),
        ("SKYCHIMP_DKIM_PRIVATE_KEY_FILE", key),
    ];
    let out = root.join("var/outbox");
    let daemon = Daemon::start("dkim-links", root, &env);
    let mails = wait_outbox(&out, "bob's verification link", |m| {
        to_of(m, CONFIRM).contains(&"bob@example.org".to_string())
    });
    let (status, page) = daemon.get(&verification_link(&mails, "bob@example.org"));
    assert_eq!(status, 200, "{page}");
    let mails = wait_outbox(&out, "bob's standup", |m| {
        to_of(m, "Standup") == ["dev@example.org"]
    });
    for subject in [CONFIRM, "Standup"] {
        let mail = mails.iter().find(|m| m.subject == subject).unwrap();
        let raw = std::fs::read_to_string(&mail.path).unwrap();
        assert!(
            raw.lines().any(|l| l.starts_with("DKIM-Signature:")
                && l.contains("d=example.com")
                && l.contains("s=sky2026")),
            "{subject} is not signed:\n{raw}"
        );
    }
}
