//! STARTTLS and implicit TLS against an in-process TLS server (smtp-sink speaks no TLS):
//! mail goes only over the encrypted channel, the certificate is checked, and one TLS
//! connection carries many messages.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::message;
use skychimp_transport::{SendOutcome, SmtpOptions, SmtpSender, TransportUrl};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

const CA: &[u8] = include_bytes!("fixtures/test-ca.pem");
const CERT: &[u8] = include_bytes!("fixtures/test-server.pem");
const KEY: &[u8] = include_bytes!("fixtures/test-server.key");

fn acceptor() -> TlsAcceptor {
    let certs = CertificateDer::pem_slice_iter(CERT)
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    TlsAcceptor::from(Arc::new(config))
}

/// What the server saw: `(encrypted, line)` for every line received.
type Seen = mpsc::UnboundedReceiver<(bool, String)>;

async fn tls_server(implicit: bool) -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = acceptor();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tx, acceptor) = (tx.clone(), acceptor.clone());
            tokio::spawn(async move {
                if implicit {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, true, true, false, tx).await;
                    }
                } else if let Some(tcp) = serve(tcp, true, false, true, tx.clone()).await
                    && let Ok(tls) = acceptor.accept(tcp).await
                {
                    // After STARTTLS the client speaks first (EHLO again): no greeting.
                    serve(tls, false, true, false, tx).await;
                }
            });
        }
    });
    (port, rx)
}

/// Speaks SMTP on `stream`. With `offer_starttls`, advertises STARTTLS and hands the
/// stream back when the client asks for it, so the caller can wrap it in TLS.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    greet: bool,
    encrypted: bool,
    offer_starttls: bool,
    tx: mpsc::UnboundedSender<(bool, String)>,
) -> Option<S> {
    let mut io = BufReader::new(stream);
    if greet {
        let _ = io.get_mut().write_all(b"220 tls-fake ESMTP\r\n").await;
    }
    let mut in_data = false;
    let mut line = String::new();
    loop {
        line.clear();
        match io.read_line(&mut line).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
        let l = line.trim_end_matches(['\r', '\n']).to_owned();
        let _ = tx.send((encrypted, l.clone()));
        if in_data {
            if l == "." {
                in_data = false;
                let _ = io.get_mut().write_all(b"250 2.0.0 queued\r\n").await;
            }
            continue;
        }
        let verb = l.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if offer_starttls => b"250-tls-fake\r\n250 STARTTLS\r\n",
            "EHLO" => b"250-tls-fake\r\n250 8BITMIME\r\n",
            "STARTTLS" if offer_starttls => {
                let _ = io.get_mut().write_all(b"220 2.0.0 ready\r\n").await;
                return Some(io.into_inner());
            }
            "DATA" => {
                in_data = true;
                b"354 go ahead\r\n"
            }
            "QUIT" => {
                let _ = io.get_mut().write_all(b"221 bye\r\n").await;
                return None;
            }
            _ => b"250 ok\r\n",
        };
        let _ = io.get_mut().write_all(reply).await;
    }
}

fn sender(url: &str, trust_test_ca: bool) -> SmtpSender {
    let options = SmtpOptions {
        extra_root_certificates_pem: if trust_test_ca {
            vec![CA.to_vec()]
        } else {
            Vec::new()
        },
        connect_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_secs(5),
        ..SmtpOptions::default()
    };
    match TransportUrl::parse(url) {
        Ok(TransportUrl::Smtp(u)) => SmtpSender::new(u, options),
        other => panic!("{other:?}"),
    }
}

/// Every line the server saw so far.
fn drain(seen: &mut Seen) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    while let Ok(x) = seen.try_recv() {
        out.push(x);
    }
    out
}

#[tokio::test]
async fn starttls_encrypts_before_any_mail_command() {
    let (port, mut seen) = tls_server(false).await;
    let mut s = sender(&format!("smtp://127.0.0.1:{port}?tls=starttls"), true);
    for i in 0..3 {
        let report = s.send(&message(&format!("starttls {i}"))).await;
        assert!(report.outcome.is_sent(), "{report:?}");
    }
    assert_eq!(s.connections_opened(), 1);
    s.close().await;
    let lines = drain(&mut seen);
    let starttls = lines
        .iter()
        .position(|(_, l)| l == "STARTTLS")
        .expect("STARTTLS sent");
    for (encrypted, l) in &lines[starttls + 1..] {
        assert!(encrypted, "after STARTTLS everything is encrypted: {l}");
    }
    assert!(
        lines[..starttls]
            .iter()
            .all(|(_, l)| !l.starts_with("MAIL")),
        "no MAIL before STARTTLS"
    );
    let subjects = lines
        .iter()
        .filter(|(enc, l)| *enc && l.starts_with("Subject: starttls"))
        .count();
    assert_eq!(subjects, 3);
}

#[tokio::test]
async fn implicit_tls_carries_many_messages_on_one_connection() {
    let (port, mut seen) = tls_server(true).await;
    let mut s = sender(&format!("smtp://127.0.0.1:{port}?tls=tls"), true);
    for i in 0..5 {
        let report = s.send(&message(&format!("smtps {i}"))).await;
        assert!(report.outcome.is_sent(), "{report:?}");
    }
    assert_eq!(s.connections_opened(), 1);
    s.close().await;
    let lines = drain(&mut seen);
    assert!(lines.iter().all(|(enc, _)| *enc));
    let subjects = lines
        .iter()
        .filter(|(_, l)| l.starts_with("Subject: smtps"))
        .count();
    assert_eq!(subjects, 5);
}

#[tokio::test]
async fn an_untrusted_certificate_is_transient_and_sends_nothing() {
    for implicit in [false, true] {
        let (port, mut seen) = tls_server(implicit).await;
        let mode = if implicit { "tls" } else { "starttls" };
        let mut s = sender(&format!("smtp://127.0.0.1:{port}?tls={mode}"), false);
        match s.send(&message("x")).await.outcome {
            SendOutcome::Transient { code: None, reply } => {
                eprintln!("{mode}: {reply}");
                assert!(
                    reply.to_lowercase().contains("certificate"),
                    "{mode}: {reply}"
                )
            }
            other => panic!("{mode}: {other:?}"),
        }
        assert!(
            drain(&mut seen).iter().all(|(_, l)| !l.starts_with("MAIL")),
            "{mode}: no mail over an unverified connection"
        );
    }
}
