//! Rendering one run's message for each recipient: subject, text and HTML.
//!
//! The templates are compiled once per run. The body is rendered twice: as written for the
//! text part, and with every variable HTML-escaped for the HTML part, so a client named
//! `<script>` is shown as text and never becomes markup; the latter is then turned from
//! Markdown into HTML.

use tera::{Context, Tera};

use crate::message::{ClientVars, MailingVars, OwnerVars};

/// A run's compiled templates and the variables every recipient shares.
pub struct Renderer {
    tera: Tera,
    base: Context,
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

impl Renderer {
    /// Compile a run's subject and body.
    pub fn new(
        subject: &str,
        body: &str,
        mailing: MailingVars<'_>,
        owner: OwnerVars<'_>,
    ) -> Result<Self, tera::Error> {
        let mut tera = Tera::default();
        tera.autoescape_on(vec![".html"]);
        tera.set_escape_fn(escape_html);
        tera.add_raw_templates(vec![
            ("subject.txt", subject),
            ("body.txt", body),
            ("body.html", body),
        ])?;
        let mut base = Context::new();
        base.insert("mailing", &mailing);
        base.insert("owner", &owner);
        Ok(Self { tera, base })
    }

    /// The message for one recipient.
    pub fn render(
        &self,
        client: ClientVars<'_>,
        unsubscribe_url: &str,
    ) -> Result<Rendered, tera::Error> {
        let mut context = self.base.clone();
        context.insert("client", &client);
        context.insert("unsubscribe_url", unsubscribe_url);
        let subject = self.tera.render("subject.txt", &context)?;
        let text = self.tera.render("body.txt", &context)?;
        let markdown = self.tera.render("body.html", &context)?;
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
