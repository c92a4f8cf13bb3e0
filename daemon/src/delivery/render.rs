//! Rendering one run's message for each recipient: subject, text and HTML.
//!
//! The templates are compiled once per run. The body is rendered twice: as written for the
//! text part, and for the HTML part with every variable made safe before the Markdown is
//! turned into HTML. There, a client's values (which come from a list, not from the owner)
//! are Markdown text with every ASCII punctuation character backslash-escaped, so a name
//! like `[win](https://evil.example)` or `<b>` shows as written and never becomes a link
//! or markup; the owner's and the mailing's values and the unsubscribe link are
//! HTML-escaped.

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

impl Renderer {
    /// Compile a run's subject and body.
    pub fn new(
        subject: &str,
        body: &str,
        mailing: MailingVars<'_>,
        owner: OwnerVars<'_>,
    ) -> Result<Self, tera::Error> {
        // No template name ends in `.html`: Tera escapes nothing; the HTML part's values
        // are escaped before they go in (see the module documentation).
        let mut tera = Tera::default();
        tera.add_raw_templates(vec![("subject", subject), ("body", body)])?;
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
        Ok(Self {
            tera,
            text_base,
            html_base,
        })
    }

    /// The message for one recipient.
    pub fn render(
        &self,
        client: ClientVars<'_>,
        unsubscribe_url: &str,
    ) -> Result<Rendered, tera::Error> {
        let mut context = self.text_base.clone();
        context.insert("client", &client);
        context.insert("unsubscribe_url", unsubscribe_url);
        let subject = self.tera.render("subject", &context)?;
        let text = self.tera.render("body", &context)?;
        let mut context = self.html_base.clone();
        context.insert(
            "client",
            &HtmlClient {
                email: markdown_text(client.email),
                name: markdown_text(client.name),
                comment: markdown_text(client.comment),
            },
        );
        context.insert("unsubscribe_url", &escape_html(unsubscribe_url));
        let markdown = self.tera.render("body", &context)?;
        Ok(Rendered {
            subject: subject.trim().to_string(),
            text,
            html: markdown_to_html(&markdown),
        })
    }
}

/// Markdown to a small, self-contained HTML document.
pub fn markdown_to_html(markdown: &str) -> String {
    use pulldown_cmark::{Options, Parser, html};
    let options = Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH;
    let mut body = String::with_capacity(markdown.len() * 3 / 2);
    html::push_html(&mut body, Parser::new_ext(markdown, options));
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head>\n<body style=\"font-family: sans-serif; line-height: 1.5; max-width: 40em\">\n{body}</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
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
}
