//! Composing the RFC 5322 message for one recipient.
//!
//! The caller (the daemon's renderer) has already rendered the subject and both bodies for
//! this recipient; this module turns them into bytes, adds the headers a serious mailing
//! needs, and optionally DKIM-signs the result. The headers are encoded and folded by
//! lettre; an unsigned message is written out directly, a signed one is built with lettre's
//! `Message` builder (which its DKIM signer needs), and a property test holds the two to the
//! same bytes:
//!
//! * `Message-ID: <TIME.RANDOM@from-domain>` — unique per message (and so per attempt
//!   series: compose once per delivery and keep the bytes if you want retries to carry the
//!   same id).
//! * `List-Id: <NAME.OWNER.from-domain>` (RFC 2919) — one list id per *mailing*
//!   (`alice/weekly` → `<weekly.alice.example.com>`), because that is what a recipient
//!   filters and unsubscribes from. Labels are lower-cased and characters outside
//!   `[a-z0-9-_]` become `-`, so any file name gives a valid dot-atom.
//! * `List-Unsubscribe: <URL>` and `List-Unsubscribe-Post: List-Unsubscribe=One-Click`
//!   (RFC 8058), so mail clients show a one-click unsubscribe button.
//! * `multipart/alternative` with `text/plain` first and `text/html` last (the preferred),
//!   each part `7bit` (as rendered) when it is ASCII in lines of at most 998 characters,
//!   else quoted-printable or base64.
//!
//! Header injection: a CR or LF in a display name or the subject is rejected with
//! [`ComposeError::LineBreak`] naming the field, rather than silently folded or encoded —
//! a newline there is a bug in the template or the client list, and it must never become a
//! new header. Other control characters are rejected the same way.

use std::time::{SystemTime, UNIX_EPOCH};

use lettre::Address;
use lettre::address::Envelope;
use std::io::Write as _;

use lettre::Message;
use lettre::message::header::{
    self, ContentTransferEncoding, ContentType, Header, HeaderName, HeaderValue, Headers,
};
use lettre::message::{Body, Mailbox, Mailboxes, MultiPart, MultiPartKind, SinglePart};

use crate::dkim::DkimSigner;

/// Everything needed to compose one message for one recipient.
#[derive(Debug, Clone)]
pub struct ComposeInput<'a> {
    /// The `From` mailbox as configured in `[smtp] from`, e.g. `Skychimp <news@example.com>`.
    /// Its address is also the envelope sender and its domain names the Message-ID and
    /// List-Id.
    pub from: &'a str,
    /// The recipient's display name (from the client list).
    pub to_name: &'a str,
    /// The recipient's address.
    pub to_address: &'a str,
    /// The rendered subject.
    pub subject: &'a str,
    /// The rendered plain-text body.
    pub text: &'a str,
    /// The rendered HTML body.
    pub html: &'a str,
    /// Which mailing this message belongs to; becomes `List-Id`.
    pub list: ListId<'a>,
    /// The recipient's one-click unsubscribe URL (`https://…/unsubscribe/{token}`).
    pub unsubscribe_url: &'a str,
    /// The `Date` header; passed in so composing is a pure function of its input.
    pub date: SystemTime,
    /// Sign with DKIM when set.
    pub dkim: Option<&'a DkimSigner>,
}

/// The mailing a message belongs to: `owner/name`, as in DESIGN.md's mailing ids.
#[derive(Debug, Clone, Copy)]
pub struct ListId<'a> {
    /// The owner (user) of the mailing, e.g. `alice`.
    pub owner: &'a str,
    /// The mailing's name, e.g. `weekly`.
    pub name: &'a str,
}

/// A composed message, ready for any [`crate::Sender`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// `MAIL FROM`: the address of `From`.
    pub envelope_from: Address,
    /// `RCPT TO`: the one recipient (Skychimp sends one message per recipient, so that each
    /// has its own unsubscribe link and its own outcome).
    pub envelope_to: Address,
    /// The Message-ID header's value, with angle brackets, e.g. `<…@example.com>`.
    pub message_id: String,
    /// The complete RFC 5322 message, CRLF line endings.
    pub bytes: Vec<u8>,
}

/// Why a message could not be composed. Every variant names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    /// An address (or `from` mailbox) that does not parse.
    #[error("{field}: bad address '{value}': {reason}")]
    BadAddress {
        /// Which input field (`from`, `to_address`).
        field: &'static str,
        /// The value as given.
        value: String,
        /// The parser's explanation.
        reason: String,
    },
    /// A CR, LF or other control character where it could start a new header.
    #[error(
        "{field}: contains a line break or control character ({value:?}); it could inject a header"
    )]
    LineBreak {
        /// Which input field (`to_name`, `subject`, …).
        field: &'static str,
        /// The value as given (Debug-escaped in the message).
        value: String,
    },
    /// An unsubscribe URL that cannot go inside `<…>` in a header.
    #[error("unsubscribe_url: '{value}' is not an absolute http(s) URL without spaces or '<>'")]
    BadUnsubscribeUrl {
        /// The value as given.
        value: String,
    },
    /// A list owner or name that is empty.
    #[error("list: owner and name must not be empty (got '{owner}/{name}')")]
    BadListId {
        /// The owner as given.
        owner: String,
        /// The name as given.
        name: String,
    },
    /// lettre refused to build the message.
    #[error("building the message: {0}")]
    Build(String),
}

/// Composes the message for one recipient; see the module documentation for the headers.
pub fn compose(input: &ComposeInput<'_>) -> Result<OutgoingMessage, ComposeError> {
    let url = input.unsubscribe_url;
    let url_ok = (url.starts_with("https://") || url.starts_with("http://"))
        && url
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '<' && c != '>');
    if !url_ok {
        return Err(ComposeError::BadUnsubscribeUrl {
            value: url.to_owned(),
        });
    }
    let owner = dot_atom_label(input.list.owner);
    let name = dot_atom_label(input.list.name);
    if owner.is_empty() || name.is_empty() {
        return Err(ComposeError::BadListId {
            owner: input.list.owner.to_owned(),
            name: input.list.name.to_owned(),
        });
    }
    let notice = NoticeInput {
        from: input.from,
        to_name: input.to_name,
        to_address: input.to_address,
        subject: input.subject,
        text: input.text,
        html: input.html,
        date: input.date,
        dkim: input.dkim,
    };
    build(&notice, Some((&owner, &name, url)))
}

/// A one-off message to one person that belongs to no mailing, such as the link a new
/// user opens to confirm their address: the same headers as [`compose`] but no `List-*`.
#[derive(Debug, Clone)]
pub struct NoticeInput<'a> {
    /// The `From` mailbox, as in [`ComposeInput::from`].
    pub from: &'a str,
    /// The recipient's display name.
    pub to_name: &'a str,
    /// The recipient's address.
    pub to_address: &'a str,
    /// The subject.
    pub subject: &'a str,
    /// The plain-text body.
    pub text: &'a str,
    /// The HTML body.
    pub html: &'a str,
    /// The `Date` header.
    pub date: SystemTime,
    /// Sign with DKIM when set.
    pub dkim: Option<&'a DkimSigner>,
}

/// Composes a [`NoticeInput`]: no List-Id, no List-Unsubscribe.
pub fn compose_notice(input: &NoticeInput<'_>) -> Result<OutgoingMessage, ComposeError> {
    build(input, None)
}

/// The shared builder; `list` is (owner label, name label, unsubscribe URL), checked.
fn build(
    input: &NoticeInput<'_>,
    list: Option<(&str, &str, &str)>,
) -> Result<OutgoingMessage, ComposeError> {
    let (parts, to_address) = Parts::checked(input, list)?;
    let bytes = match input.dkim {
        Some(signer) => {
            let mut message = parts.lettre(to_address.clone(), None)?;
            signer.sign(&mut message);
            message.formatted()
        }
        None => parts.formatted(&make_boundary()),
    };
    Ok(OutgoingMessage {
        envelope_from: parts.from.email,
        envelope_to: to_address,
        message_id: parts.message_id,
        bytes,
    })
}

/// The list headers' values, checked and built.
struct ListHeaders {
    id: String,
    unsubscribe: String,
}

/// One message's contents, checked: written out by [`Parts::formatted`], or built with
/// lettre's `Message` builder (which DKIM signing needs) by [`Parts::lettre`]. The two give
/// the same bytes for the same boundary (a test compares them over generated inputs); the
/// first is what unsigned mail uses, since the builder was a quarter of `skychimpd`'s CPU
/// time in `bench/send.sh` (parsing its own headers back, copying each body twice).
struct Parts<'a> {
    from: Mailbox,
    to: Mailbox,
    subject: &'a str,
    date: SystemTime,
    message_id: String,
    list: Option<ListHeaders>,
    text: &'a str,
    html: &'a str,
}

impl<'a> Parts<'a> {
    /// The parts of `input`'s message and its envelope recipient, or the field at fault.
    fn checked(
        input: &NoticeInput<'a>,
        list: Option<(&str, &str, &str)>,
    ) -> Result<(Parts<'a>, Address), ComposeError> {
        let from = sender(input.from)?;
        reject_control("to_name", input.to_name)?;
        reject_control("to_address", input.to_address)?;
        reject_control("subject", input.subject)?;

        let to_address: Address =
            input
                .to_address
                .parse()
                .map_err(|e| ComposeError::BadAddress {
                    field: "to_address",
                    value: input.to_address.to_owned(),
                    reason: format!("{e}"),
                })?;
        let to_name = input.to_name.trim();
        let to = Mailbox::new(
            (!to_name.is_empty()).then(|| to_name.to_owned()),
            to_address.clone(),
        );
        let domain = from.email.domain();
        let message_id = new_message_id(domain);
        let list = list.map(|(owner, name, url)| ListHeaders {
            id: format!("<{name}.{owner}.{domain}>"),
            unsubscribe: format!("<{url}>"),
        });
        let parts = Parts {
            from,
            to,
            subject: input.subject,
            date: input.date,
            message_id,
            list,
            text: input.text,
            html: input.html,
        };
        Ok((parts, to_address))
    }

    /// The message's top-level headers, as [`Parts::lettre`] has the builder set them.
    fn headers(&self) -> Headers {
        let mut headers = Headers::new();
        headers.set(header::From::from(Mailboxes::from(self.from.clone())));
        headers.set(header::To::from(Mailboxes::from(self.to.clone())));
        headers.set(SubjectHeader(self.subject.to_owned()));
        headers.set(header::Date::new(self.date));
        headers.set(header::MessageId::from(self.message_id.clone()));
        if let Some(list) = &self.list {
            headers.set(ListIdHeader(list.id.clone()));
            headers.set(ListUnsubscribe(list.unsubscribe.clone()));
            headers.set(ListUnsubscribePost);
        }
        headers.set(header::MIME_VERSION_1_0);
        headers
    }

    /// The message as lettre's `Message` (with a boundary of its choice unless given).
    fn lettre(&self, to: Address, boundary: Option<&str>) -> Result<Message, ComposeError> {
        let envelope = Envelope::new(Some(self.from.email.clone()), vec![to])
            .map_err(|e| ComposeError::Build(e.to_string()))?;
        let mut builder = Message::builder()
            .envelope(envelope)
            .from(self.from.clone())
            .to(self.to.clone())
            .header(SubjectHeader(self.subject.to_owned()))
            .date(self.date)
            .message_id(Some(self.message_id.clone()));
        if let Some(list) = &self.list {
            builder = builder
                .header(ListIdHeader(list.id.clone()))
                .header(ListUnsubscribe(list.unsubscribe.clone()))
                .header(ListUnsubscribePost);
        }
        let alternative = match boundary {
            Some(b) => MultiPart::builder()
                .kind(MultiPartKind::Alternative)
                .boundary(b),
            None => MultiPart::alternative(),
        };
        builder
            .multipart(
                alternative
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_PLAIN)
                            .body(body(self.text)),
                    )
                    .singlepart(
                        SinglePart::builder()
                            .header(ContentType::TEXT_HTML)
                            .body(body(self.html)),
                    ),
            )
            .map_err(|e| ComposeError::Build(e.to_string()))
    }

    /// The message's bytes as [`Parts::lettre`] formats them, written directly: the headers
    /// through lettre's own encoding and folding, each body copied once.
    fn formatted(&self, boundary: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + self.html.len() + 1536);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", self.headers());
        // A boundary is 40 alphanumerics, so lettre folds this header the same way always.
        let _ = write!(
            out,
            "Content-Type: multipart/alternative;\r\n boundary=\"{boundary}\"\r\n\r\n"
        );
        for (content_type, text) in [("text/plain", self.text), ("text/html", self.html)] {
            let _ = write!(
                out,
                "--{boundary}\r\nContent-Type: {content_type}; charset=utf-8\r\n\
                 Content-Transfer-Encoding: "
            );
            let encoding_at = out.len();
            out.extend_from_slice(b"7bit\r\n\r\n");
            if push_seven_bit(&mut out, text).is_none() {
                // Not `7bit` after all: lettre's choice, as `body` makes it for the builder.
                out.truncate(encoding_at);
                let encoded = Body::new(text.to_owned());
                let _ = write!(out, "{}\r\n\r\n", encoded.encoding());
                out.extend_from_slice(encoded.as_ref());
            }
            out.extend_from_slice(b"\r\n");
        }
        let _ = write!(out, "--{boundary}--\r\n");
        out
    }
}

/// A MIME boundary as lettre makes one: 40 random alphanumerics.
fn make_boundary() -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(40)
        .collect()
}

/// The longest line `7bit` allows, without its CRLF (RFC 5322 2.1.1, RFC 2045 2.7).
const MAX_7BIT_LINE: usize = 998;

/// One part's body: sent as it is (`7bit`) when it is printable ASCII in lines of at most
/// 998 characters, as most rendered Markdown and HTML is; otherwise lettre's choice of
/// quoted-printable or base64.
///
/// lettre alone would pick `7bit` only for lines under 76 characters, and quoted-printable
/// for everything else: every `=` of the HTML's attributes then becomes `=3D` and long
/// lines get soft breaks, so the message grows and encoding it is the largest single cost
/// of composing (`bench/send.sh`).
fn body(text: &str) -> Body {
    let mut crlf = Vec::with_capacity(text.len() + text.len() / 32 + 2);
    match push_seven_bit(&mut crlf, text) {
        Some(()) => Body::dangerous_pre_encoded(crlf, ContentTransferEncoding::SevenBit),
        None => Body::new(text.to_owned()),
    }
}

/// Appends `text` with CRLF line ends to `out` when it is valid as a `7bit` body: printable
/// ASCII, tabs and line ends (LF or CRLF, no lone CR), no line longer than
/// [`MAX_7BIT_LINE`]. `None` (with part of it appended) when it is not.
fn push_seven_bit(out: &mut Vec<u8>, text: &str) -> Option<()> {
    let bytes = text.as_bytes();
    // Whole blocks without early exit, so the test compiles to vector instructions; this
    // runs on every part of every message.
    let allowed = |b: u8| matches!(b, b'\t' | b'\n' | b'\r' | b' '..=b'~');
    if !bytes
        .chunks(64)
        .all(|block| block.iter().fold(true, |ok, &b| ok & allowed(b)))
    {
        return None;
    }
    out.reserve(bytes.len() + bytes.len() / 32 + 2);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', bytes) {
        let line = bytes[start..end]
            .strip_suffix(b"\r")
            .unwrap_or(&bytes[start..end]);
        push_7bit_line(out, line)?;
        out.extend_from_slice(b"\r\n");
        start = end + 1;
    }
    push_7bit_line(out, &bytes[start..])
}

/// Appends one line (without its end) when it has no CR and fits in [`MAX_7BIT_LINE`].
fn push_7bit_line(out: &mut Vec<u8>, line: &[u8]) -> Option<()> {
    if line.len() > MAX_7BIT_LINE || memchr::memchr(b'\r', line).is_some() {
        return None;
    }
    out.extend_from_slice(line);
    Some(())
}

/// The From mailbox (`Name <user@example.com>` or `user@example.com`), checked as every
/// message checks it: the configuration is refused up front rather than every message failing.
pub fn sender(from: &str) -> Result<Mailbox, ComposeError> {
    reject_control("from", from)?;
    from.parse().map_err(|e| ComposeError::BadAddress {
        field: "from",
        value: from.to_owned(),
        reason: format!("{e}"),
    })
}

fn reject_control(field: &'static str, value: &str) -> Result<(), ComposeError> {
    if value.chars().any(char::is_control) {
        return Err(ComposeError::LineBreak {
            field,
            value: value.to_owned(),
        });
    }
    Ok(())
}

/// Lower-cases and maps everything outside `[a-z0-9-_]` to `-`, so a mailing's file name
/// is always a valid List-Id label.
fn dot_atom_label(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `<{nanoseconds since 1970, hex}.{64 random bits, hex}@{domain}>`: the time part keeps
/// ids from different processes apart even if their random generators collide.
fn new_message_id(domain: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("<{nanos:x}.{:016x}@{domain}>", fastrand::u64(..))
}

/// `Subject`. Printable ASCII goes as lettre writes it (folded at spaces). Anything else,
/// or text that looks like an encoded word (`=?`), is written as RFC 2047 encoded words
/// (`=?utf-8?b?…?=`) carrying every character, spaces included: lettre 0.11 encodes word
/// by word, and since decoders drop the whitespace between two encoded words, a subject
/// like `Привет  Дмитрий` (two spaces) or a long one folded between non-ASCII words reached
/// the reader with words run together.
#[derive(Debug, Clone)]
struct SubjectHeader(String);

impl Header for SubjectHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Subject")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        let text = &self.0;
        if text.chars().all(|c| c.is_ascii() && !c.is_ascii_control()) && !text.contains("=?") {
            return HeaderValue::new(Self::name(), text.clone());
        }
        HeaderValue::dangerous_new_pre_encoded(Self::name(), text.clone(), encoded_words(text))
    }
}

/// `text` as base64 encoded words of at most 45 bytes of UTF-8 each (75 characters, RFC
/// 2047's limit, with the `=?utf-8?b?` and `?=`), never splitting a character, one per
/// folded line.
fn encoded_words(text: &str) -> String {
    use base64::Engine as _;
    const MAX_BYTES: usize = 45;
    let mut out = String::with_capacity(text.len() * 2);
    let mut start = 0;
    while start < text.len() {
        let mut end = start;
        for (i, c) in text[start..].char_indices() {
            if i + c.len_utf8() > MAX_BYTES {
                break;
            }
            end = start + i + c.len_utf8();
        }
        if !out.is_empty() {
            out.push_str("\r\n ");
        }
        out.push_str("=?utf-8?b?");
        base64::engine::general_purpose::STANDARD.encode_string(&text[start..end], &mut out);
        out.push_str("?=");
        start = end;
    }
    out
}

/// `List-Id` (RFC 2919). The value is built from sanitised labels, so it is plain ASCII.
#[derive(Debug, Clone)]
struct ListIdHeader(String);

impl Header for ListIdHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Id")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe` (RFC 2369); the URL was checked to be printable ASCII without `<>`.
#[derive(Debug, Clone)]
struct ListUnsubscribe(String);

impl Header for ListUnsubscribe {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe")
    }
    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self(s.to_owned()))
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// `List-Unsubscribe-Post: List-Unsubscribe=One-Click` (RFC 8058).
#[derive(Debug, Clone)]
struct ListUnsubscribePost;

impl Header for ListUnsubscribePost {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("List-Unsubscribe-Post")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Self)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "List-Unsubscribe=One-Click".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn input<'a>() -> ComposeInput<'a> {
        ComposeInput {
            from: "Skychimp News <news@example.com>",
            to_name: "Ivan Petrov",
            to_address: "ivan@example.org",
            subject: "This week, Ivan",
            text: "Hello Ivan.\n",
            html: "<p>Hello Ivan.</p>\n",
            list: ListId {
                owner: "alice",
                name: "Weekly",
            },
            unsubscribe_url: "https://news.example.com/unsubscribe/abc123",
            date: UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            dkim: None,
        }
    }

    fn text_of(m: &OutgoingMessage) -> String {
        String::from_utf8(m.bytes.clone()).unwrap()
    }

    #[test]
    fn has_the_list_headers_and_both_parts() {
        let m = compose(&input()).unwrap();
        let t = text_of(&m);
        assert!(
            t.contains("From: \"Skychimp News\" <news@example.com>\r\n"),
            "{t}"
        );
        assert!(
            t.contains("To: \"Ivan Petrov\" <ivan@example.org>\r\n"),
            "{t}"
        );
        assert!(t.contains("Subject: This week, Ivan\r\n"), "{t}");
        assert!(t.contains("List-Id: <weekly.alice.example.com>\r\n"), "{t}");
        assert!(
            t.contains("List-Unsubscribe: <https://news.example.com/unsubscribe/abc123>\r\n"),
            "{t}"
        );
        assert!(t.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(t.contains(&format!("Message-ID: {}\r\n", m.message_id)));
        assert!(m.message_id.starts_with('<') && m.message_id.ends_with("@example.com>"));
        assert!(t.contains("Content-Type: multipart/alternative;"));
        let plain = t.find("Content-Type: text/plain").unwrap();
        let html = t.find("Content-Type: text/html").unwrap();
        assert!(plain < html, "text/plain must come first");
        assert_eq!(m.envelope_from.to_string(), "news@example.com");
        assert_eq!(m.envelope_to.to_string(), "ivan@example.org");
    }

    /// The part after `Content-Type: {content_type}`: its headers and its body.
    fn part(t: &str, content_type: &str) -> (String, String) {
        let start = t.find(&format!("Content-Type: {content_type}")).unwrap();
        let rest = &t[start..];
        let (headers, body) = rest.split_once("\r\n\r\n").unwrap();
        let end = body.find("\r\n--").unwrap();
        (headers.to_owned(), body[..end].to_owned())
    }

    #[test]
    fn ascii_bodies_go_as_they_are_in_lines_up_to_998() {
        let long = "word ".repeat(150); // 750 characters: more than quoted-printable's 76
        let text = format!("Hello Ivan,\n{long}\n\nBye.\n");
        let html = format!(
            "<p>Hello <a href=\"https://x.example/?a=1&amp;b=2\">Ivan</a>,\r\n{long}</p>\n"
        );
        let m = compose(&ComposeInput {
            text: &text,
            html: &html,
            ..input()
        })
        .unwrap();
        let t = text_of(&m);
        let (headers, body) = part(&t, "text/plain");
        assert!(
            headers.contains("Content-Transfer-Encoding: 7bit"),
            "{headers}"
        );
        assert_eq!(body, text.replace('\n', "\r\n"));
        let (headers, body) = part(&t, "text/html");
        assert!(
            headers.contains("Content-Transfer-Encoding: 7bit"),
            "{headers}"
        );
        assert_eq!(body, html.replace("\r\n", "\n").replace('\n', "\r\n"));
    }

    #[test]
    fn other_bodies_are_encoded() {
        let cases = [
            ("a line of 999", "x".repeat(999)),
            ("non-ASCII", "Привет, Иван".to_owned()),
        ];
        for (what, text) in cases {
            let m = compose(&ComposeInput {
                text: &text,
                ..input()
            })
            .unwrap();
            let (headers, _) = part(&text_of(&m), "text/plain");
            assert!(
                headers.contains("Content-Transfer-Encoding: quoted-printable")
                    || headers.contains("Content-Transfer-Encoding: base64"),
                "{what}: {headers}"
            );
        }
        // What lettre makes of these is its own business; they never go out as they are.
        for odd in ["one\rtwo", "one\0two", "bell\x07", "é"] {
            assert_eq!(seven_bit(odd), None, "{odd:?}");
        }
        assert_eq!(seven_bit("a\r\nb\nc\t").unwrap(), b"a\r\nb\r\nc\t");
        let m = compose(&ComposeInput {
            text: &"x".repeat(998),
            ..input()
        })
        .unwrap();
        let (headers, _) = part(&text_of(&m), "text/plain");
        assert!(
            headers.contains("Content-Transfer-Encoding: 7bit"),
            "998: {headers}"
        );
    }

    #[test]
    fn notices_have_no_list_headers_and_refuse_injection() {
        let i = input();
        let notice = NoticeInput {
            from: i.from,
            to_name: "Alice",
            to_address: "alice@example.com",
            subject: "Confirm your address",
            text: "Open the link.",
            html: "<p>Open the link.</p>",
            date: i.date,
            dkim: None,
        };
        let t = text_of(&compose_notice(&notice).unwrap());
        assert!(t.contains("Subject: Confirm your address\r\n"), "{t}");
        assert!(!t.contains("List-"), "{t}");
        let bad = NoticeInput {
            subject: "x\r\nBcc: all@example.com",
            ..notice
        };
        assert!(matches!(
            compose_notice(&bad),
            Err(ComposeError::LineBreak {
                field: "subject",
                ..
            })
        ));
    }

    #[test]
    fn message_ids_are_unique() {
        let ids: std::collections::HashSet<_> = (0..1000)
            .map(|_| compose(&input()).unwrap().message_id)
            .collect();
        assert_eq!(ids.len(), 1000);
    }

    #[test]
    fn line_breaks_cannot_inject_headers() {
        for (field, evil) in [
            ("subject", "Hi\r\nBcc: victim@example.net"),
            ("subject", "Hi\nBcc: victim@example.net"),
            ("to_name", "Ivan\rBcc: victim@example.net"),
            ("from", "News\n<news@example.com>"),
        ] {
            let mut i = input();
            match field {
                "subject" => i.subject = evil,
                "to_name" => i.to_name = evil,
                _ => i.from = evil,
            }
            let err = compose(&i).unwrap_err();
            assert!(
                matches!(err, ComposeError::LineBreak { field: f, .. } if f == field),
                "{field}: {err}"
            );
            assert!(err.to_string().starts_with(field), "{err}");
        }
    }

    #[test]
    fn names_with_commas_and_quotes_stay_one_mailbox() {
        let mut i = input();
        i.to_name = r#"Petrov, Ivan "Vanya" <boss@evil.example>"#;
        let m = compose(&i).unwrap();
        let parsed = mailparse::parse_mail(&m.bytes).unwrap();
        use mailparse::MailHeaderMap;
        let to = parsed.headers.get_first_header("To").unwrap();
        let addrs = mailparse::addrparse_header(to).unwrap();
        // Exactly one mailbox, the real address, with the whole name as its display name.
        assert_eq!(addrs.len(), 1, "{addrs:?}");
        match &addrs[0] {
            mailparse::MailAddr::Single(s) => {
                assert_eq!(s.addr, "ivan@example.org");
                assert_eq!(s.display_name.as_deref(), Some(i.to_name));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn non_ascii_names_and_subjects_are_encoded() {
        let mut i = input();
        i.to_name = "Иван Петров";
        i.subject = "Неделя: «итоги»";
        let t = text_of(&compose(&i).unwrap());
        let headers = &t[..t.find("\r\n\r\n").unwrap()];
        assert!(headers.is_ascii(), "{headers}");
        assert!(headers.contains("=?utf-8?"), "{headers}");
    }

    #[test]
    fn subjects_reach_the_reader_as_written() {
        use mailparse::MailHeaderMap;
        let long = "Très long sujet — ".repeat(30) + "Дмитрий";
        for subject in [
            "Привет  Дмитрий",
            "Привет Дмитрий \"Дима\" Петров",
            long.as_str(),
            "a =?utf-8?q?x?= b",
            "two  spaces, ASCII",
            "plain ASCII, nothing to encode",
        ] {
            let mut i = input();
            i.subject = subject;
            let m = compose(&i).unwrap();
            let t = text_of(&m);
            let headers = &t[..t.find("\r\n\r\n").unwrap()];
            assert!(headers.is_ascii(), "{headers}");
            assert!(headers.lines().all(|l| l.len() <= 998), "{headers}");
            let parsed = mailparse::parse_mail(&m.bytes).unwrap();
            assert_eq!(
                parsed.headers.get_first_value("Subject").as_deref(),
                Some(subject),
                "{headers}"
            );
        }
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let mut i = input();
        i.to_address = "not an address";
        assert!(
            compose(&i)
                .unwrap_err()
                .to_string()
                .starts_with("to_address")
        );
        let mut i = input();
        i.unsubscribe_url = "https://x/y> <evil";
        assert!(matches!(
            compose(&i).unwrap_err(),
            ComposeError::BadUnsubscribeUrl { .. }
        ));
        let mut i = input();
        i.list.name = " ";
        assert!(matches!(
            compose(&i).unwrap_err(),
            ComposeError::BadListId { .. }
        ));
    }

    /// `text` with CRLF line ends when it can go `7bit`.
    fn seven_bit(text: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        push_seven_bit(&mut out, text).map(|()| out)
    }

    /// The bytes written directly and the bytes lettre's builder makes of the same parts
    /// and boundary.
    fn both_ways(input: &NoticeInput<'_>, list: bool) -> (String, String) {
        let list = list.then_some(("alice", "weekly", "https://x.example.com/unsubscribe/t0k"));
        let (parts, to) = Parts::checked(input, list).unwrap();
        let boundary = make_boundary();
        let direct = parts.formatted(&boundary);
        let built = parts.lettre(to, Some(&boundary)).unwrap().formatted();
        (
            String::from_utf8(direct).unwrap(),
            String::from_utf8(built).unwrap(),
        )
    }

    #[test]
    fn the_direct_message_is_the_builders() {
        let i = input();
        let notice = NoticeInput {
            from: i.from,
            to_name: i.to_name,
            to_address: i.to_address,
            subject: i.subject,
            text: i.text,
            html: i.html,
            date: i.date,
            dkim: None,
        };
        for list in [true, false] {
            let (direct, built) = both_ways(&notice, list);
            assert_eq!(direct, built);
        }
        // And what `compose` sends is the direct one: the same but for a random boundary.
        let sent = text_of(&compose(&i).unwrap());
        let boundary = sent.split("boundary=\"").nth(1).unwrap()[..40].to_owned();
        let (parts, _) =
            Parts::checked(&notice, Some(("alice", "weekly", i.unsubscribe_url))).unwrap();
        let expected = String::from_utf8(parts.formatted(&boundary)).unwrap();
        let id = |m: &str| {
            m.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .unwrap()
                .to_owned()
        };
        assert_eq!(
            sent.replace(&id(&sent), ""),
            expected.replace(&id(&expected), "")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        #[test]
        fn the_direct_message_is_the_builders_for_any_parts(
            name in "([A-Za-z .,\"'()<>@;:\\\\-]{0,12}|Иван|Ĳ|é|😀|[a-z]{70,90}){0,4}",
            subject in "([ -~]{0,30}|Привет|é|😀|=\\?utf-8\\?|[a-z]{60,100}| {2,5}){0,5}",
            text in "([ -~\t]{0,40}|\r\n|\n|Жук|é|x{990,1000}|\\.|=){0,8}",
            html in "(<p>|</p>|[ -~]{0,40}|\n|ü|x{995,1000}){0,8}",
            list in proptest::bool::ANY,
        ) {
            let notice = NoticeInput {
                from: "Skychimp News <news@example.com>",
                to_name: &name,
                to_address: "client@example.org",
                subject: &subject,
                text: &text,
                html: &html,
                date: UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
                dkim: None,
            };
            let (direct, built) = both_ways(&notice, list);
            proptest::prop_assert_eq!(direct, built);
        }
    }

    /// The byte-by-byte definition `seven_bit` is a faster spelling of.
    fn seven_bit_by_bytes(text: &str) -> Option<Vec<u8>> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let (mut line, mut i) = (0, 0);
        while i < bytes.len() {
            match bytes[i] {
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    line = 0;
                }
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    out.extend_from_slice(b"\r\n");
                    line = 0;
                    i += 1;
                }
                b @ (b'\t' | b' '..=b'~') => {
                    out.push(b);
                    line += 1;
                    if line > MAX_7BIT_LINE {
                        return None;
                    }
                }
                _ => return None,
            }
            i += 1;
        }
        Some(out)
    }

    proptest::proptest! {
        #[test]
        fn seven_bit_agrees_with_its_definition(
            text in "([ -~\t]{0,20}|\r\n|\n|\r|é|\u{0}|x{990,1000}){0,12}"
        ) {
            proptest::prop_assert_eq!(seven_bit(&text), seven_bit_by_bytes(&text));
        }
    }
}
