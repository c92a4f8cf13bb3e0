//! Rendering one run's message for each recipient: subject, text and HTML.
//!
//! The templates are compiled once per run. Most are only text and plain variables
//! (`{{ client.name }}`); such a template is kept as its pieces ([`Plain`]) and rendered by
//! putting them together, without Tera, which gives the same text (a property test compares
//! both over generated templates). The body is rendered twice: as written for the
//! text part, and for the HTML part with every variable made safe before the Markdown is
//! turned into HTML. There, a client's values (which come from a list, not from the owner)
//! are Markdown text with every ASCII punctuation character backslash-escaped, so a name
//! like `[win](https://evil.example)` or `<b>` shows as written and never becomes a link
//! or markup; the owner's and the mailing's values and the unsubscribe link are
//! HTML-escaped.
//!
//! Turning Markdown into HTML is the dearest step, and most of a run's messages differ only
//! in a few words, so the HTML part is made once per run ([`Splice`]): the body rendered
//! with a random alphanumeric marker for each per-recipient value (the client's fields and
//! the unsubscribe token), turned into HTML, and cut at the markers. A recipient's HTML is
//! that document with the values put in, but only when that is provably what rendering the
//! recipient's own Markdown gives: the recipient's Markdown must equal the marked one with
//! the values put in (so a template that branches on a value falls back), and every value
//! must be inert where its markers stand: in text (pulldown-cmark's text and code events),
//! letters and digits with single spaces between words; in a link's or image's destination,
//! ASCII letters, digits, `-`, `_` and `.`. Such a value needs no escaping and cannot open,
//! close or change any Markdown construct there. The run gets no splice if any marker is
//! elsewhere (raw HTML, a title, a code block's info string, an autolink, whose validity
//! depends on its length: each marker must be seen exactly once in those events and come out
//! exactly once in the HTML), inside `<…` in the source, right after `&` or `#` (an entity),
//! or if the document has link reference definitions. Anything else is rendered
//! from the recipient's own Markdown as before. A property test compares both ways over
//! generated templates and values, and a test over every character the text rule accepts
//! checks that Markdown treats it as a letter.

use std::sync::OnceLock;

use pulldown_cmark::Options;
use serde::Serialize;
use tera::{Context, Tera};

use crate::message::{ClientVars, MailingVars, OwnerVars};

/// A run's compiled templates and the variables every recipient shares.
pub struct Renderer {
    tera: Tera,
    /// `owner` and `mailing` as written, for the subject and the text part.
    text_base: Context,
    /// `owner` and `mailing` HTML-escaped, for the HTML part.
    html_base: Context,
    /// The subject and the body as [`Plain`] pieces, when both are only text and plain
    /// variables (as most are): then no recipient needs Tera.
    plain: Option<(Plain, Plain)>,
    /// `mailing.id`, `mailing.title`, `owner.name`, `owner.email`: as written, and escaped
    /// for the HTML part.
    shared: [String; 4],
    shared_html: [String; 4],
    /// The HTML part made once, for the unsubscribe URL prefix it was made with (the first
    /// recipient's); `None` when this body cannot be spliced.
    splice: OnceLock<(String, Option<Splice>)>,
}

/// One recipient's message, ready to compose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// One-line subject.
    pub subject: String,
    /// The Markdown body, as the text part.
    pub text: String,
    /// The body as HTML.
    pub html: String,
}

/// Escape what HTML needs escaped, and nothing else (Tera's default also escapes `/`,
/// which would break links written as `[x]({{ unsubscribe_url }})`).
fn escape_html(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for c in input.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#x27;"),
            _ => out.push(c),
        }
    }
    out
}

/// `value` as literal Markdown text: each ASCII punctuation character backslash-escaped
/// (CommonMark 2.4), which also makes `<` and `&` come out HTML-escaped.
fn markdown_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + value.len() / 4);
    for c in value.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `client.*` for the HTML part.
#[derive(Serialize)]
struct HtmlClient {
    email: String,
    name: String,
    comment: String,
}

impl HtmlClient {
    /// The client's values as Markdown text.
    fn new(client: ClientVars<'_>) -> Self {
        HtmlClient {
            email: markdown_text(client.email),
            name: markdown_text(client.name),
            comment: markdown_text(client.comment),
        }
    }
}

impl Renderer {
    /// Compile the message of a mailing of `catalog`, as its next run would: the owner's
    /// name and address from users.toml.
    pub fn for_mailing(
        catalog: &crate::catalog::Catalog,
        m: &crate::catalog::Mailing,
    ) -> Result<Self, tera::Error> {
        let owner = catalog.users().get(&m.owner);
        Renderer::new(
            &m.message.subject,
            &m.message.body,
            MailingVars {
                id: &m.id,
                title: &m.title,
            },
            OwnerVars {
                name: owner.map_or(m.owner.as_str(), |u| u.name.as_str()),
                email: owner.map_or("", |u| u.email.as_str()),
            },
        )
    }

    /// Compile a run's subject and body.
    pub fn new(
        subject: &str,
        body: &str,
        mailing: MailingVars<'_>,
        owner: OwnerVars<'_>,
    ) -> Result<Self, tera::Error> {
        // No template name ends in `.html`: Tera escapes nothing; the HTML part's values
        // are escaped before they go in (see the module documentation).
        // Before Tera parses them: `check` refuses these too.
        for source in [subject, body] {
            if let Some((_, why)) = crate::message::too_deep(source) {
                return Err(tera::Error::msg(why));
            }
        }
        let mut tera = crate::message::tera();
        tera.add_raw_templates(vec![("subject", subject), ("body", body)])?;
        // `check` refuses these; a run created before it did must not crash the daemon.
        for name in ["subject", "body"] {
            if let Some((_, why)) = crate::message::unsafe_shape(&tera.get_template(name)?.ast) {
                return Err(tera::Error::msg(why));
            }
        }
        let mut text_base = Context::new();
        text_base.insert("mailing", &mailing);
        text_base.insert("owner", &owner);
        let (id, title) = (escape_html(mailing.id), escape_html(mailing.title));
        let (name, email) = (escape_html(owner.name), escape_html(owner.email));
        let mut html_base = Context::new();
        html_base.insert(
            "mailing",
            &MailingVars {
                id: &id,
                title: &title,
            },
        );
        html_base.insert(
            "owner",
            &OwnerVars {
                name: &name,
                email: &email,
            },
        );
        let plain = Plain::of(&tera, "subject").zip(Plain::of(&tera, "body"));
        Ok(Self {
            tera,
            text_base,
            html_base,
            plain,
            shared: [mailing.id, mailing.title, owner.name, owner.email].map(str::to_owned),
            shared_html: [id, title, name, email],
            splice: OnceLock::new(),
        })
    }

    /// Whether every recipient's message is made without Tera (text and plain variables
    /// only): such a message cannot fail to render.
    pub fn is_plain(&self) -> bool {
        self.plain.is_some()
    }

    /// The message for one recipient.
    pub fn render(
        &self,
        client: ClientVars<'_>,
        unsubscribe_url: &str,
    ) -> Result<Rendered, tera::Error> {
        let html_client = HtmlClient::new(client);
        let html_url = escape_html(unsubscribe_url);
        let (subject, text, markdown) =
            match self.render_plain(client, unsubscribe_url, &html_client, &html_url) {
                Some(rendered) => rendered,
                None => self.render_with_tera(client, unsubscribe_url, &html_client, &html_url)?,
            };
        let html = self
            .spliced(&markdown, &html_client, &html_url)
            .unwrap_or_else(|| markdown_to_html(&markdown));
        Ok(Rendered {
            subject: subject.trim().to_string(),
            text,
            html,
        })
    }

    /// The subject, the text and the HTML part's Markdown from the [`Plain`] pieces; `None`
    /// when the templates are not plain.
    fn render_plain(
        &self,
        client: ClientVars<'_>,
        unsubscribe_url: &str,
        html_client: &HtmlClient,
        html_url: &str,
    ) -> Option<(String, String, String)> {
        let (subject, body) = self.plain.as_ref()?;
        let values = Values {
            client: [client.email, client.name, client.comment],
            unsubscribe_url,
            shared: &self.shared,
        };
        let html_values = Values {
            client: [&html_client.email, &html_client.name, &html_client.comment],
            unsubscribe_url: html_url,
            shared: &self.shared_html,
        };
        Some((
            subject.render(&values),
            body.render(&values),
            body.render(&html_values),
        ))
    }

    /// The subject, the text and the HTML part's Markdown, rendered by Tera.
    fn render_with_tera(
        &self,
        client: ClientVars<'_>,
        unsubscribe_url: &str,
        html_client: &HtmlClient,
        html_url: &str,
    ) -> Result<(String, String, String), tera::Error> {
        let mut context = self.text_base.clone();
        context.insert("client", &client);
        context.insert("unsubscribe_url", unsubscribe_url);
        let subject = crate::message::render(&self.tera, "subject", &context)?;
        let text = crate::message::render(&self.tera, "body", &context)?;
        let mut context = self.html_base.clone();
        context.insert("client", html_client);
        context.insert("unsubscribe_url", html_url);
        let markdown = crate::message::render(&self.tera, "body", &context)?;
        Ok((subject, text, markdown))
    }

    /// The HTML part from this run's [`Splice`], when it provably equals
    /// `markdown_to_html(markdown)` (see the module documentation). `client` and
    /// `unsubscribe_url` as the HTML part's Markdown got them (escaped); escaping leaves the
    /// URL's last `/` where it was, so the token is what follows it.
    fn spliced(
        &self,
        markdown: &str,
        client: &HtmlClient,
        unsubscribe_url: &str,
    ) -> Option<String> {
        let (prefix, token) = unsubscribe_url.split_at(unsubscribe_url.rfind('/')? + 1);
        let (made_for, splice) = self
            .splice
            .get_or_init(|| (prefix.to_owned(), Splice::new(self, prefix)));
        let splice = splice.as_ref().filter(|_| made_for == prefix)?;
        splice.fill(
            markdown,
            [&client.email, &client.name, &client.comment, token],
        )
    }
}

/// A template that is only text and variables written plainly (`{{ client.name }}`: a
/// known string variable, no filter, test or operator), with comments: Tera's output for
/// it is its pieces put together, so a run renders it without Tera. Whitespace control
/// (`{{-`, `-}}`) is already applied to the text of Tera's syntax tree. A test compares
/// both ways over generated templates.
struct Plain(Vec<PlainPiece>);

enum PlainPiece {
    Text(String),
    /// Which of [`Values`]' strings: 0–2 `client.email`, `client.name`, `client.comment`;
    /// 3 `unsubscribe_url`; 4–7 `mailing.id`, `mailing.title`, `owner.name`, `owner.email`.
    Value(usize),
}

/// The variables a [`Plain`] template can name, in [`PlainPiece::Value`]'s order: every
/// variable a message has.
const PLAIN_VARIABLES: [&str; 8] = crate::message::VARIABLES;

/// One recipient's values for a [`Plain`] template.
struct Values<'a> {
    client: [&'a str; 3],
    unsubscribe_url: &'a str,
    /// `mailing.id`, `mailing.title`, `owner.name`, `owner.email`.
    shared: &'a [String; 4],
}

impl Plain {
    /// The template `name` of `tera` as pieces, when it is plain.
    fn of(tera: &Tera, name: &str) -> Option<Plain> {
        use tera::ast::{ExprVal, Node};
        let template = tera.get_template(name).ok()?;
        if template.parent.is_some() || !template.macros.is_empty() {
            return None;
        }
        let mut pieces = Vec::with_capacity(template.ast.len());
        for node in &template.ast {
            match node {
                Node::Text(text) => pieces.push(PlainPiece::Text(text.clone())),
                Node::Comment(..) => {}
                Node::VariableBlock(_, expr) if !expr.negated && expr.filters.is_empty() => {
                    let ExprVal::Ident(ident) = &expr.val else {
                        return None;
                    };
                    let which = PLAIN_VARIABLES.iter().position(|v| v == ident)?;
                    pieces.push(PlainPiece::Value(which));
                }
                _ => return None,
            }
        }
        Some(Plain(pieces))
    }

    fn render(&self, values: &Values<'_>) -> String {
        let value = |i: usize| match i {
            0..=2 => values.client[i],
            3 => values.unsubscribe_url,
            _ => &values.shared[i - 4],
        };
        let len = self
            .0
            .iter()
            .map(|p| match p {
                PlainPiece::Text(t) => t.len(),
                PlainPiece::Value(i) => value(*i).len(),
            })
            .sum();
        let mut out = String::with_capacity(len);
        for piece in &self.0 {
            out.push_str(match piece {
                PlainPiece::Text(t) => t,
                PlainPiece::Value(i) => value(*i),
            });
        }
        out
    }
}

/// The Markdown extensions of message bodies.
const MARKDOWN: Options = Options::ENABLE_TABLES.union(Options::ENABLE_STRIKETHROUGH);

/// Markdown to a small, self-contained HTML document.
pub fn markdown_to_html(markdown: &str) -> String {
    use pulldown_cmark::{Parser, html};
    let mut body = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut body, Parser::new_ext(markdown, MARKDOWN));
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body style=\"font-family: sans-serif; line-height: 1.5; max-width: 40em\">\n{body}</body></html>\n"
    )
}

/// The per-recipient values of the HTML part, in [`Splice`]'s order: the client's email,
/// name and comment (Markdown-escaped) and the unsubscribe token (HTML-escaped).
const SLOTS: usize = 4;

/// A run's HTML part made once, with the places of the per-recipient values.
struct Splice {
    /// The body's Markdown for the HTML part, cut at the values.
    markdown: Vec<Piece>,
    /// Its HTML document, cut at the values.
    html: Vec<Piece>,
    /// Where each value stands in the HTML: in text, in an `href` or `src`.
    in_text: [bool; SLOTS],
    in_link: [bool; SLOTS],
}

enum Piece {
    Literal(String),
    Value(usize),
}

impl Splice {
    /// `None` when the marked body has a construct the splice cannot vouch for.
    /// `unsubscribe_prefix`: the unsubscribe URL up to its token, HTML-escaped.
    fn new(renderer: &Renderer, unsubscribe_prefix: &str) -> Option<Splice> {
        let seed = fastrand::u64(..);
        let markers: [String; SLOTS] = std::array::from_fn(|i| format!("Zq{seed:016x}v{i}qZ"));
        let mut context = renderer.html_base.clone();
        context.insert(
            "client",
            &HtmlClient {
                email: markers[0].clone(),
                name: markers[1].clone(),
                comment: markers[2].clone(),
            },
        );
        context.insert(
            "unsubscribe_url",
            &format!("{unsubscribe_prefix}{}", markers[3]),
        );
        let markdown = crate::message::render(&renderer.tera, "body", &context).ok()?;

        // In the source: no marker after a `<` that no `>` has closed within its block
        // (a tag or an autolink, valid or not: a space in a value can make one valid), and
        // none right after `&` or `#` (an entity).
        for (at, _) in occurrences(&markdown, &markers) {
            let before = &markdown[..at];
            if before
                .trim_end_matches(char::is_alphanumeric)
                .ends_with(['&', '#'])
                || after_open_angle(before)
            {
                return None;
            }
        }

        // In the parsed document: each marker once, in text, in code or in a link's or an
        // image's destination. One anywhere else (raw HTML, a title, a code block's info
        // string) is missing from these counts, and one in an autolink is counted twice (its
        // text and its destination), so either means no splice.
        use pulldown_cmark::{Event, Tag};
        let parser = pulldown_cmark::Parser::new_ext(&markdown, MARKDOWN);
        if parser.reference_definitions().iter().next().is_some() {
            return None;
        }
        let mut in_text = [false; SLOTS];
        let mut in_link = [false; SLOTS];
        let mut seen = [0usize; SLOTS];
        for event in parser {
            let (text, places) = match &event {
                Event::Text(text) | Event::Code(text) => (text, &mut in_text),
                Event::Start(Tag::Link { dest_url, .. } | Tag::Image { dest_url, .. }) => {
                    (dest_url, &mut in_link)
                }
                _ => continue,
            };
            for (_, slot) in occurrences(text, &markers) {
                places[slot] = true;
                seen[slot] += 1;
            }
        }
        let html = markdown_to_html(&markdown);
        let count = |text: &str| {
            let mut n = [0usize; SLOTS];
            for (_, slot) in occurrences(text, &markers) {
                n[slot] += 1;
            }
            n
        };
        if count(&markdown) != seen || count(&html) != seen {
            return None;
        }
        Some(Splice {
            markdown: pieces(&markdown, &markers),
            html: pieces(&html, &markers),
            in_text,
            in_link,
        })
    }

    /// The HTML for `values`, if the recipient's Markdown is the marked one with them in it
    /// and every value is inert where it stands.
    fn fill(&self, markdown: &str, values: [&str; SLOTS]) -> Option<String> {
        for (slot, value) in values.iter().enumerate() {
            if (self.in_text[slot] && !inert_text(value))
                || (self.in_link[slot] && !inert_link(value))
            {
                return None;
            }
        }
        let mut rest = markdown;
        for piece in &self.markdown {
            let expected = match piece {
                Piece::Literal(text) => text.as_str(),
                Piece::Value(slot) => values[*slot],
            };
            rest = rest.strip_prefix(expected)?;
        }
        if !rest.is_empty() {
            return None;
        }
        let mut html = String::with_capacity(
            self.html
                .iter()
                .map(|p| match p {
                    Piece::Literal(text) => text.len(),
                    Piece::Value(slot) => values[*slot].len(),
                })
                .sum(),
        );
        for piece in &self.html {
            match piece {
                Piece::Literal(text) => html.push_str(text),
                Piece::Value(slot) => html.push_str(values[*slot]),
            }
        }
        Some(html)
    }
}

/// Whether the end of `text` follows a `<` with no `>` after it, looking back no further
/// than the last blank line (no tag or autolink spans one).
fn after_open_angle(text: &str) -> bool {
    let mut newline = false;
    for c in text.chars().rev() {
        match c {
            '<' => return true,
            '>' => return false,
            '\n' if newline => return false,
            '\n' => newline = true,
            ' ' | '\t' | '\r' => {}
            _ => newline = false,
        }
    }
    false
}

/// Letters and digits, words separated by single spaces, with at least one letter (so never
/// a list number): the same to Markdown as the marker it replaces, and nothing to escape.
fn inert_text(value: &str) -> bool {
    value
        .split(' ')
        .all(|word| !word.is_empty() && word.chars().all(letter_or_digit))
        && value.chars().any(char::is_alphabetic)
}

/// A character Markdown's emphasis rules treat like `a`: neither whitespace nor punctuation
/// (CommonMark counts Unicode symbols as punctuation, and a few symbols are "alphabetic" in
/// Unicode, such as the circled and squared letters, so those blocks are left out).
/// `every_character_the_text_rule_accepts_is_a_letter_to_markdown` checks all of them.
fn letter_or_digit(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || (!c.is_ascii()
            && c.is_alphanumeric()
            && !matches!(c, '\u{2460}'..='\u{24FF}' | '\u{1F100}'..='\u{1F1FF}'))
}

/// What a URL keeps as it is, with no Markdown or HTML meaning inside a link destination
/// or a quoted attribute.
fn inert_link(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Every place a marker starts in `text`, with its slot, in order.
fn occurrences<'t>(
    text: &'t str,
    markers: &'t [String; SLOTS],
) -> impl Iterator<Item = (usize, usize)> + 't {
    // All markers share their first 18 characters ("Zq" and the seed).
    let common = &markers[0][..18];
    memchr::memmem::find_iter(text.as_bytes(), common.as_bytes()).filter_map(move |at| {
        markers
            .iter()
            .position(|m| text[at..].starts_with(m.as_str()))
            .map(|slot| (at, slot))
    })
}

/// `text` cut at the markers.
fn pieces(text: &str, markers: &[String; SLOTS]) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut start = 0;
    for (at, slot) in occurrences(text, markers) {
        if at < start {
            continue;
        }
        out.push(Piece::Literal(text[start..at].to_owned()));
        out.push(Piece::Value(slot));
        start = at + markers[slot].len();
    }
    out.push(Piece::Literal(text[start..].to_owned()));
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn renderer(subject: &str, body: &str) -> Renderer {
        Renderer::new(
            subject,
            body,
            MailingVars {
                id: "alice/weekly",
                title: "Weekly",
            },
            OwnerVars {
                name: "Alice",
                email: "alice@example.com",
            },
        )
        .unwrap()
    }

    #[test]
    fn renders_text_and_html_per_recipient() {
        let r = renderer(
            "Hi {{ client.name }}",
            "**Hello** {{ client.name }} from {{ owner.name }}\n\n[Leave]({{ unsubscribe_url }})",
        );
        let m = r
            .render(
                ClientVars {
                    email: "i@example.com",
                    name: "Ivan",
                    comment: "",
                },
                "http://x.example/unsubscribe/t?a=1&b=2",
            )
            .unwrap();
        assert_eq!(m.subject, "Hi Ivan");
        assert!(m.text.starts_with("**Hello** Ivan from Alice"));
        assert!(
            m.html.contains("<strong>Hello</strong> Ivan from Alice"),
            "{}",
            m.html
        );
        assert!(
            m.html
                .contains("href=\"http://x.example/unsubscribe/t?a=1&amp;b=2\""),
            "{}",
            m.html
        );
    }

    #[test]
    fn client_values_are_text_in_the_html_part() {
        let r = renderer(
            "{{ client.name }}",
            "Dear {{ client.name }}, [write]({{ unsubscribe_url }}) \\
             [me](mailto:{{ client.email }}) {{ client.comment }}",
        );
        let name = "[win](https://evil.example) *Bob* _x_ `c` # O'Brien & <b>";
        let m = r
            .render(
                ClientVars {
                    email: "o.brien+news@example.com",
                    name,
                    comment: "1. two\n\n# three",
                },
                "http://u.example/unsubscribe/t?a=1&b=2",
            )
            .unwrap();
        for markup in [
            "href=\"https://evil",
            "<em>",
            "<code>",
            "<b>",
            "<h1>",
            "<ol>",
        ] {
            assert!(!m.html.contains(markup), "{markup} in {}", m.html);
        }
        assert!(
            m.html.contains(
                "Dear [win](https://evil.example) *Bob* _x_ `c` # O'Brien &amp; &lt;b&gt;,"
            ),
            "{}",
            m.html
        );
        assert!(
            m.html
                .contains("<a href=\"http://u.example/unsubscribe/t?a=1&amp;b=2\">write</a>"),
            "{}",
            m.html
        );
        assert!(
            m.html
                .contains("<a href=\"mailto:o.brien+news@example.com\">me</a>"),
            "{}",
            m.html
        );
        assert!(m.html.contains("1. two"), "{}", m.html);
        // The text part shows the values as written.
        assert!(
            m.text.starts_with(&format!(
                "Dear {name}, [write](http://u.example/unsubscribe/t?a=1&b=2)"
            )),
            "{}",
            m.text
        );
        assert_eq!(m.subject, name);
    }

    #[test]
    fn variables_never_become_markup() {
        let r = renderer("{{ client.name }}", "Dear {{ client.name }}");
        let m = r
            .render(
                ClientVars {
                    email: "x@example.com",
                    name: "<script>alert(1)</script>",
                    comment: "",
                },
                "http://u.example/",
            )
            .unwrap();
        assert!(!m.html.contains("<script>"), "{}", m.html);
        assert!(m.html.contains("&lt;script&gt;"), "{}", m.html);
        assert_eq!(
            m.subject, "<script>alert(1)</script>",
            "the subject is text, not HTML"
        );
    }

    /// Pieces of bodies: text, Markdown and HTML syntax, and every variable in the places
    /// that matter (text, link destinations, code, raw HTML, entities, autolinks).
    const FRAGMENTS: &[&str] = &[
        "{{ client.name }}",
        "{{ client.email }}",
        "{{ client.comment }}",
        "{{ unsubscribe_url }}",
        "[Unsubscribe]({{ unsubscribe_url }})",
        "[{{ client.name }}](https://e.example/{{ client.name }})",
        "![{{ client.name }}](https://e.example/{{ client.name }}.png)",
        "<https://e.example/{{ client.name }}>",
        "<a href=\"{{ unsubscribe_url }}\">x</a>",
        "<a href={{ client.name }}>",
        "<a title='x>y' {{ client.name }}>",
        "<span title=\"<>\" {{ client.name }}>x</span>",
        "```rust {{ client.name }}\ncode\n```\n",
        "<me@e.{{ client.name }}>",
        "<x-{{ client.name }}:go>",
        "<aaaaaaaaaaaa{{ client.name }}:go>",
        "<a b={{ client.name }}=y>",
        "a*{{ client.name }}*b",
        "[t](https://e.example/ \"{{ client.name }}\")",
        "<{{ client.name }}>",
        "</{{ client.name }}>",
        "<!-- {{ client.name }} -->",
        "&{{ client.name }};",
        "&#{{ client.name }};",
        "{{ client.name }}@e.example",
        "<me@{{ client.name }}>",
        "<me@{{ client.name }}.example>",
        "[{{ client.name }}]",
        "\n\n[x]: /u\n\n",
        "```{{ client.name }}\ncode\n```\n",
        "`{{ client.name }}`",
        "{% if client.name == \"Bob\" %}B{% endif %}",
        "{{ client.name | upper }}",
        "{{ owner.name }}",
        "*",
        "_",
        "**",
        "~~",
        "`",
        "|",
        "\\",
        "&",
        "#",
        "<",
        ">",
        "/",
        ":",
        "@",
        "[",
        "]",
        "(",
        ")",
        ".",
        "1",
        "Word",
        "é",
        " ",
        "  ",
        "    ",
        "\n",
        "\n\n",
        "# ",
        "- ",
        "1. ",
        "> ",
        "---\n",
        "| a | b |\n|---|---|\n| ",
    ];

    /// Up to `most` of `fragments`, one after another.
    fn joined(fragments: &'static [&'static str], most: usize) -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(fragments), 0..most)
            .prop_map(|parts| parts.concat())
    }

    fn template() -> impl Strategy<Value = String> {
        joined(FRAGMENTS, 24)
    }

    /// Values that fit (words, tokens) and values that must not be spliced.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[A-Za-zА-я][A-Za-z0-9А-я]{0,6}( [A-Za-z0-9]{1,5}){0,2}",
            "[A-Za-z0-9_.-]{0,12}",
            "[0-9]{1,3}",
            "[ a-z0-9*_`&#<>/:@\\[\\]().\\\\!-]{0,10}",
            Just(String::new()),
            Just("amp".to_owned()),
            Just("Bob".to_owned()),
            Just("script".to_owned()),
            Just("x".to_owned()),
            "[a-z]{30,34}",
            "[a-z]{60,70}",
            "[A-Za-z0-9_.-]{100,300}",
            "[\u{24B6}\u{1F130}\u{00B2}a`]{1,3}",
            Just("x\n```".to_owned()),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        /// Splicing gives exactly what rendering each recipient's Markdown gives.
        #[test]
        fn splicing_equals_rendering(
            body in template(),
            names in proptest::collection::vec((value(), value(), value(), value()), 1..4),
        ) {
            let Ok(r) = Renderer::new(
                "s",
                &body,
                MailingVars { id: "alice/weekly", title: "Weekly" },
                OwnerVars { name: "Alice", email: "alice@example.com" },
            ) else {
                return Ok(());
            };
            for (email, name, comment, token) in &names {
                let url = format!("https://news.example.org/unsubscribe/{token}");
                let client = ClientVars { email, name, comment };
                let Ok(m) = r.render(client, &url) else { continue };
                let mut context = r.html_base.clone();
                context.insert(
                    "client",
                    &HtmlClient::new(client),
                );
                context.insert("unsubscribe_url", &escape_html(&url));
                let markdown = r.tera.render("body", &context).unwrap();
                prop_assert_eq!(&m.html, &markdown_to_html(&markdown), "body {:?}", body);
            }
        }
    }

    /// Pieces of templates for [`Plain`]: every variable, written plainly and with
    /// whitespace control, comments, and what must send a template to Tera.
    const TERA_FRAGMENTS: &[&str] = &[
        "{{ client.name }}",
        "{{client.email}}",
        "{{ client.comment }}",
        "{{- client.name }}",
        "{{ client.email -}}",
        "{{- unsubscribe_url -}}",
        "{{ mailing.id }}",
        "{{ mailing.title }}",
        "{{ owner.name }}",
        "{{ owner.email }}",
        "{# a note #}",
        "{#- a note -#}",
        "{{ client.name | upper }}",
        "{% if client.name %}y{% endif %}",
        "{% raw %}{{ x }}{% endraw %}",
        "{{ client[\"name\"] }}",
        "{{ \"lit\" }}",
        "{{ not client.name }}",
        "{% set x = 1 %}{{ x }}",
        "{{ client.phone }}",
        "Hello",
        "é",
        " ",
        "  \n ",
        "\n",
        "\t",
        "{",
        "}",
        "%",
        "#",
    ];

    fn tera_template() -> impl Strategy<Value = String> {
        joined(TERA_FRAGMENTS, 10)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// A plain template's pieces put together are what Tera renders.
        #[test]
        fn plain_rendering_equals_tera(
            subject in tera_template(),
            body in tera_template(),
            values in proptest::collection::vec(".{0,8}", 4),
        ) {
            let Ok(r) = Renderer::new(
                &subject,
                &body,
                MailingVars { id: "alice/weekly", title: "A & B's <list>" },
                OwnerVars { name: "Alice {{ x }}", email: "alice@example.com" },
            ) else {
                return Ok(());
            };
            let client = ClientVars { email: &values[0], name: &values[1], comment: &values[2] };
            let url = format!("https://news.example.org/unsubscribe/{}", values[3]);
            let html_client = HtmlClient::new(client);
            let html_url = escape_html(&url);
            let Some(plain) = r.render_plain(client, &url, &html_client, &html_url) else {
                return Ok(());
            };
            let tera = r.render_with_tera(client, &url, &html_client, &html_url).unwrap();
            prop_assert_eq!(plain, tera);
        }
    }

    /// Which templates are plain: the property above is vacuous unless ordinary ones are,
    /// and wrong if any construct Tera computes with is taken for one.
    #[test]
    fn plain_templates_are_recognised() {
        let plain = |t: &str| renderer("s", t).plain.is_some();
        assert!(plain(
            "# News\n\nHello {{ client.name }} ({{client.email}}) {# c #}\n\
             {{- owner.name -}} [x]({{ unsubscribe_url }}) {{ mailing.title }}"
        ));
        assert!(plain(""));
        for tera in [
            "{{ client.name | upper }}",
            "{% if client.name %}y{% endif %}",
            "{% raw %}{{ x }}{% endraw %}",
            "{{ client[\"name\"] }}",
            "{{ client.phone }}",
            "{{ client }}",
            "{{ not client.name }}",
            "{{ client.name ~ \"x\" }}",
            "{% for c in [1] %}{% endfor %}",
        ] {
            assert!(!plain(tera), "{tera}");
        }
        assert!(renderer("{{ client.name | lower }}", "x").plain.is_none());
    }

    /// The splice is used: a body like the benchmark's, with a name and an unsubscribe
    /// link, is filled in, not rendered (a broken splice would make the property above
    /// pass vacuously).
    #[test]
    fn an_ordinary_body_is_spliced() {
        let r = renderer(
            "Hi",
            "# News\n\nHello {{ client.name }}, **bold** and [a link](https://e.example/).\n\n\
             - one\n- two\n\n[Unsubscribe]({{ unsubscribe_url }})\n",
        );
        let client = ClientVars {
            email: "ivan@example.org",
            name: "Ivan Petrov",
            comment: "",
        };
        let url = "https://news.example.org/unsubscribe/abc_DEF-1.xyz";
        let m = r.render(client, url).unwrap();
        let markdown = "# News\n\nHello Ivan Petrov, **bold** and [a link](https://e.example/).\n\n\
             - one\n- two\n\n[Unsubscribe](https://news.example.org/unsubscribe/abc_DEF-1.xyz)\n";
        assert_eq!(m.html, markdown_to_html(markdown));
        let spliced = |client| r.spliced(markdown, &HtmlClient::new(client), &escape_html(url));
        assert_eq!(spliced(client).as_deref(), Some(m.html.as_str()));
        // A name with Markdown in it is rendered from its own Markdown instead.
        let odd = ClientVars {
            name: "*Ivan*",
            ..client
        };
        assert_eq!(spliced(odd), None);
    }

    /// What `render` gives for `name` after an ordinary recipient made the splice, and what
    /// rendering that recipient's own Markdown gives.
    fn both_ways(body: &str, name: &str) -> (String, String) {
        let r = renderer("s", body);
        let url = "https://news.example.org/unsubscribe/t";
        let first = ClientVars {
            email: "e",
            name: "Bob",
            comment: "c",
        };
        r.render(first, url).unwrap();
        let client = ClientVars { name, ..first };
        let mut context = r.html_base.clone();
        context.insert("client", &HtmlClient::new(client));
        context.insert("unsubscribe_url", &escape_html(url));
        let markdown = r.tera.render("body", &context).unwrap();
        (
            r.render(client, url).unwrap().html,
            markdown_to_html(&markdown),
        )
    }

    /// Cases a review found where an earlier version spliced wrongly: a marker that
    /// vanished from the HTML (a fence's info string), an attribute name after a quoted
    /// `<>`, autolinks whose validity depends on the value's length (either way), a symbol
    /// that Unicode calls alphabetic and Markdown calls punctuation.
    #[test]
    fn splicing_equals_rendering_in_the_cases_a_review_found() {
        let long = |n| "a".repeat(n);
        let cases = [
            ("```rust {{ client.name }}\ncode\n```\n", "`".to_owned()),
            (
                "```rust {{ client.name }}\ncode\n```\n",
                "x\n```".to_owned(),
            ),
            ("a*{{ client.name }}*b\n", "\u{24B6}".to_owned()),
            (
                "<span title=\"<>\" {{ client.name }}>x</span>\n",
                "Zo\u{eb}".to_owned(),
            ),
            ("<me@e.{{ client.name }}>\n", long(64)),
            ("<x-{{ client.name }}:go>\n", long(32)),
            // Too long a scheme with the marker, an autolink with a short name.
            ("<x-aaaaaaaaaa{{ client.name }}:go>\n", "b".to_owned()),
            // Not a tag with the marker ('=' in an unquoted value), a tag with a space.
            ("x <a b={{ client.name }}=y> z\n", "p q".to_owned()),
            ("<a b={{ client.name }}=y>\n**bold**\n", "p q".to_owned()),
        ];
        for (body, name) in cases {
            let (spliced, rendered) = both_ways(body, &name);
            assert_eq!(spliced, rendered, "{body:?} with {name:?}");
        }
    }

    /// Every character `letter_or_digit` accepts is, to Markdown's emphasis rules, like a
    /// letter: `a*c*b` is emphasis (with punctuation or whitespace for `c` it is not).
    #[test]
    fn every_character_the_text_rule_accepts_is_a_letter_to_markdown() {
        use pulldown_cmark::{Event, Parser, Tag};
        let emphasised = |c: char| {
            let text = format!("a*{c}*b");
            Parser::new_ext(&text, MARKDOWN).any(|e| matches!(e, Event::Start(Tag::Emphasis)))
        };
        assert!(!emphasised('!') && !emphasised(' ') && !emphasised('\u{24B6}'));
        let accepted: Vec<char> = (0..=u32::from(char::MAX))
            .filter_map(char::from_u32)
            .filter(|&c| letter_or_digit(c))
            .collect();
        assert!(accepted.len() > 100_000, "{}", accepted.len());
        let odd: Vec<char> = accepted.into_iter().filter(|&c| !emphasised(c)).collect();
        assert!(odd.is_empty(), "treated as punctuation: {odd:?}");
    }
}
