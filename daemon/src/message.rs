//! Message templates: what a subject or body may say and how it is checked.
//!
//! Subjects and bodies are Tera templates rendered once per recipient. `skychimpd check`
//! compiles each one and renders it against a sample recipient, so a typo such as
//! `{{ client.nmae }}` is caught in review rather than at 9 a.m. on the day of sending.

use serde::Serialize;

/// The variables a template may use, as one value per recipient.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext<'a> {
    /// The recipient.
    pub client: ClientVars<'a>,
    /// The mailing being sent.
    pub mailing: MailingVars<'a>,
    /// The mailing's owner.
    pub owner: OwnerVars<'a>,
    /// The recipient's one-click unsubscribe link.
    pub unsubscribe_url: &'a str,
}

/// `client.*`
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClientVars<'a> {
    /// `client.email`
    pub email: &'a str,
    /// `client.name`
    pub name: &'a str,
    /// `client.comment` (empty when absent)
    pub comment: &'a str,
}

/// `mailing.*`
#[derive(Debug, Clone, Serialize)]
pub struct MailingVars<'a> {
    /// `mailing.id`, e.g. `alice/weekly`
    pub id: &'a str,
    /// `mailing.title`
    pub title: &'a str,
}

/// `owner.*`
#[derive(Debug, Clone, Serialize)]
pub struct OwnerVars<'a> {
    /// `owner.name`
    pub name: &'a str,
    /// `owner.email`
    pub email: &'a str,
}

/// A template problem at a position inside the template text (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// Line within the template.
    pub line: usize,
    /// Column within that line.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

fn sample() -> TemplateContext<'static> {
    TemplateContext {
        client: ClientVars {
            email: "client@example.com",
            name: "Sample Client",
            comment: "",
        },
        mailing: MailingVars {
            id: "owner/mailing",
            title: "Sample",
        },
        owner: OwnerVars {
            name: "Sample Owner",
            email: "owner@example.com",
        },
        unsubscribe_url: "http://127.0.0.1:8025/unsubscribe/sample",
    }
}

/// Compile `source` and render it for a sample recipient.
pub fn check(source: &str) -> Result<(), TemplateError> {
    let mut tera = tera::Tera::default();
    tera.add_raw_template("template", source)
        .map_err(|e| to_error(&e))?;
    let context = tera::Context::from_serialize(sample()).map_err(|e| to_error(&e))?;
    tera.render("template", &context)
        .map_err(|e| to_error(&e))?;
    Ok(())
}

/// A Tera error (with its chain of causes) as one line for a log or an attempt row.
pub fn describe(error: &tera::Error) -> String {
    to_error(error).message
}

/// Turn Tera's error chain into one message and, for syntax errors, a position.
fn to_error(error: &tera::Error) -> TemplateError {
    let mut innermost = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        innermost = e.to_string();
        source = e.source();
    }
    // Syntax errors come from pest: " --> L:C" followed by a drawing and "= expected …".
    if let Some(at) = innermost.find("--> ") {
        let rest = &innermost[at + 4..];
        let coords: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == ':')
            .collect();
        if let Some((l, c)) = coords.split_once(':')
            && let (Ok(line), Ok(column)) = (l.parse(), c.parse())
        {
            let message = innermost
                .lines()
                .find_map(|l| l.trim().strip_prefix("= "))
                .unwrap_or("syntax error")
                .to_string();
            return TemplateError {
                line,
                column,
                message: format!("template syntax: {message}"),
            };
        }
    }
    let message = innermost.replace(" while rendering 'template'", "");
    TemplateError {
        line: 1,
        column: 1,
        message: format!("template: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_variables() {
        check("Hi {{ client.name }} <{{ client.email }}> {{ client.comment }} {{ mailing.id }} {{ mailing.title }} {{ owner.name }} {{ unsubscribe_url }}").unwrap();
        check("{% if client.comment %}x{% endif %}{{ client.name | upper }}").unwrap();
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = check("line one\nHello {{ client.name ").unwrap_err();
        assert_eq!(e.line, 2, "{e:?}");
        assert!(e.message.starts_with("template syntax"), "{e:?}");
    }

    #[test]
    fn unknown_variables_are_caught() {
        let e = check("Hello {{ client.nmae }}").unwrap_err();
        assert!(e.message.contains("client.nmae"), "{e:?}");
        let e = check("{{ client.name | shout }}").unwrap_err();
        assert!(e.message.contains("shout"), "{e:?}");
    }
}
