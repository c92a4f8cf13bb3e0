//! Markdown → HTML with pulldown-cmark, the way Zola renders it.
//!
//! Besides plain CommonMark (+ tables, footnotes, strikethrough, task lists, heading
//! attributes) this stage does what Zola does to content: heading ids and the table of
//! contents, `<!-- more -->` summaries, word count and reading time, `@/path.md` internal
//! links resolved to permalinks (a broken one is an error naming `file:line`), and the
//! `[markdown]` options for external links. Shortcodes are not implemented, so shortcode
//! call syntax is refused rather than printed as text.

use std::collections::HashMap;
use std::path::Path;

use pulldown_cmark::{CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd};
use serde::Serialize;

use crate::config::MarkdownConfig;
use crate::error::{SiteError, line_col};

/// The marker that ends a summary.
const MORE_MARKER: &str = "<!-- more -->";

/// What rendering one page's or section's Markdown produced.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    /// The HTML.
    pub content: String,
    /// HTML before `<!-- more -->`, with open tags closed.
    pub summary: Option<String>,
    /// Headings as a tree.
    pub toc: Vec<Heading>,
    /// Words of the Markdown source.
    pub word_count: usize,
    /// Minutes at 200 words per minute, rounded up.
    pub reading_time: usize,
    /// `@/path.md#anchor` links: (target content path, anchor, line in the source file),
    /// checked once every page's headings are known.
    pub anchor_links: Vec<(String, String, usize)>,
}

/// One entry of the table of contents (`page.toc`).
#[derive(Debug, Clone, Serialize)]
pub struct Heading {
    /// 1 to 6.
    pub level: u32,
    /// The `id` attribute.
    pub id: String,
    /// Permalink of the page + `#id`.
    pub permalink: String,
    /// The heading's text.
    pub title: String,
    /// Deeper headings below this one.
    pub children: Vec<Heading>,
}

/// What the renderer needs to know about the rest of the site.
pub struct MarkdownContext<'a> {
    /// `[markdown]` options.
    pub config: &'a MarkdownConfig,
    /// Relative content path → permalink, for `@/` links.
    pub permalinks: &'a HashMap<String, String>,
}

/// Counts words as Zola does: Unicode words of the Markdown source, leaving out HTML
/// comments, footnote definitions and references, and fenced code blocks.
pub fn word_count(text: &str) -> usize {
    use unicode_segmentation::UnicodeSegmentation;
    let without_comments = strip_between(text, "<!--", "-->");
    let without_footnotes: String = without_comments
        .lines()
        .filter(|l| !(l.trim_start().starts_with("[^") && l.contains("]:")))
        .map(|l| strip_between(l, "[^", "]"))
        .collect::<Vec<_>>()
        .join("\n");
    // Fences toggle between prose and code: count every other piece.
    without_footnotes
        .split("```")
        .step_by(2)
        .map(|piece| piece.unicode_words().count())
        .sum()
}

/// `text` without every `start … end` span (an unclosed span runs to the end).
fn strip_between(text: &str, start: &str, end: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(start) {
        out.push_str(&rest[..i]);
        match rest[i + start.len()..].find(end) {
            Some(j) => rest = &rest[i + start.len() + j + end.len()..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn options(config: &MarkdownConfig) -> Options {
    let mut opts = Options::ENABLE_TABLES
        | Options::ENABLE_FOOTNOTES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_HEADING_ATTRIBUTES;
    if config.smart_punctuation {
        opts |= Options::ENABLE_SMART_PUNCTUATION;
    }
    if config.definition_list {
        opts |= Options::ENABLE_DEFINITION_LIST;
    }
    opts
}

fn is_external(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://") || url.starts_with("//")
}

/// Finds shortcode call syntax (`{{ name(` or `{% name(` or `{% end %}`) in text.
fn find_shortcode(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'{' && (bytes[i + 1] == b'{' || bytes[i + 1] == b'%') {
            let mut j = i + 2;
            if j + 1 < bytes.len() && bytes[j] == b'/' && bytes[j + 1] == b'*' {
                return Some(i);
            }
            while j < bytes.len() && bytes[j] == b' ' {
                j += 1;
            }
            let start = j;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            if j > start {
                let ident = &text[start..j];
                while j < bytes.len() && bytes[j] == b' ' {
                    j += 1;
                }
                if (j < bytes.len() && bytes[j] == b'(') || (bytes[i + 1] == b'%' && ident == "end")
                {
                    return Some(i);
                }
            }
        }
        i += 1;
    }
    None
}

/// Renders Markdown. `file` and `line_offset` locate errors in the source file; `permalink`
/// is the page's own URL, used for the table of contents.
pub fn render(
    ctx: &MarkdownContext<'_>,
    file: &Path,
    line_offset: usize,
    source: &str,
    permalink: &str,
) -> Result<Rendered, SiteError> {
    let err_at = |offset: usize, message: String| {
        let (line, _) = line_col(source, offset);
        SiteError::invalid_at(file, line + line_offset, message)
    };

    // Zola expands shortcodes before Markdown, everywhere (code blocks included), so their
    // syntax is refused everywhere rather than printed as text.
    if let Some(offset) = find_shortcode(source) {
        return Err(err_at(
            offset,
            "shortcodes (and their `{{/* */}}` escapes) are not supported by this builder; write the HTML inline or move it to a template".to_string(),
        ));
    }

    let parser = Parser::new_ext(source, options(ctx.config)).into_offset_iter();
    let mut events: Vec<Event<'_>> = Vec::new();
    let mut more_index = None;
    let mut anchor_links = Vec::new();
    // Headings: (index of Start event, index of End event).
    let mut headings: Vec<(usize, usize)> = Vec::new();
    let mut heading_start = None;

    for (event, range) in parser {
        let event = match event {
            Event::Html(html) | Event::InlineHtml(html) if html.contains(MORE_MARKER) => {
                if more_index.is_none() {
                    more_index = Some(events.len());
                }
                Event::Html(
                    html.replace(MORE_MARKER, "<span id=\"continue-reading\"></span>")
                        .into(),
                )
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                // Decided on the link as written: a resolved `@/` link is internal even
                // though its permalink is absolute.
                let external = is_external(&dest_url);
                let dest_url = if let Some(target) = dest_url.strip_prefix("@/") {
                    let (path, anchor) = match target.find('#') {
                        Some(p) => (&target[..p], &target[p..]),
                        None => (target, ""),
                    };
                    match ctx.permalinks.get(path) {
                        Some(url) => {
                            if let Some(name) = anchor.strip_prefix('#') {
                                let (line, _) = line_col(source, range.start);
                                anchor_links.push((
                                    path.to_string(),
                                    name.to_string(),
                                    line + line_offset,
                                ));
                            }
                            CowStr::from(format!("{url}{anchor}"))
                        }
                        None => {
                            return Err(err_at(
                                range.start,
                                format!(
                                    "broken internal link `@/{target}`: no page or section content/{path} (drafts are not built)"
                                ),
                            ));
                        }
                    }
                } else {
                    dest_url
                };
                if external {
                    let mut rel = Vec::new();
                    let mut attrs = String::new();
                    if ctx.config.external_links_target_blank {
                        attrs.push_str(" target=\"_blank\"");
                        rel.push("noopener");
                    }
                    if ctx.config.external_links_no_follow {
                        rel.push("nofollow");
                    }
                    if ctx.config.external_links_no_referrer {
                        rel.push("noreferrer");
                    }
                    if !rel.is_empty() {
                        attrs.push_str(&format!(" rel=\"{}\"", rel.join(" ")));
                    }
                    if !attrs.is_empty() {
                        let mut html = format!("<a href=\"{}\"", escape_attr(&dest_url));
                        if !title.is_empty() {
                            html.push_str(&format!(" title=\"{}\"", escape_attr(&title)));
                        }
                        html.push_str(&attrs);
                        html.push('>');
                        events.push(Event::InlineHtml(html.into()));
                        // Keep tag balance for the summary: mark with a placeholder start.
                        events.push(Event::Start(Tag::Link {
                            link_type,
                            dest_url: CowStr::Borrowed("\u{0}skip"),
                            title,
                            id,
                        }));
                        continue;
                    }
                }
                Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    title,
                    id,
                })
            }
            Event::Start(Tag::Heading {
                level,
                id,
                classes,
                attrs,
            }) => {
                heading_start = Some(events.len());
                Event::Start(Tag::Heading {
                    level,
                    id,
                    classes,
                    attrs,
                })
            }
            Event::End(TagEnd::Heading(level)) => {
                if let Some(start) = heading_start.take() {
                    headings.push((start, events.len()));
                }
                Event::End(TagEnd::Heading(level))
            }
            other => other,
        };
        events.push(event);
    }

    // Heading ids: explicit `{#id}` wins, else a slug of the text made unique.
    let mut used: HashMap<String, usize> = HashMap::new();
    let mut flat: Vec<(u32, String, String)> = Vec::new();
    for &(start, end) in &headings {
        let title: String = events[start + 1..end]
            .iter()
            .filter_map(|e| match e {
                Event::Text(t) | Event::Code(t) => Some(t.as_ref()),
                _ => None,
            })
            .collect();
        if let Event::Start(Tag::Heading { level, id, .. }) = &mut events[start] {
            let final_id = match id {
                Some(explicit) => explicit.to_string(),
                None => {
                    let base = {
                        let s = slug::slugify(&title);
                        if s.is_empty() {
                            "section".to_string()
                        } else {
                            s
                        }
                    };
                    let n = used.entry(base.clone()).or_insert(0);
                    let candidate = if *n == 0 {
                        base.clone()
                    } else {
                        format!("{base}-{n}")
                    };
                    *n += 1;
                    candidate
                }
            };
            *id = Some(CowStr::from(final_id.clone()));
            flat.push((heading_level(*level), final_id, title));
        }
    }

    // Placeholder links (external links already written as HTML): drop the generated `<a>`.
    let events = strip_placeholder_links(events);

    let mut content = String::with_capacity(source.len() * 3 / 2);
    pulldown_cmark::html::push_html(&mut content, events.iter().cloned());

    let more_index = more_index.and_then(|_| {
        events.iter().position(|e| {
            matches!(e, Event::Html(h) | Event::InlineHtml(h) if h.contains("id=\"continue-reading\""))
        })
    });
    let summary = more_index.map(|idx| {
        let mut stack: Vec<TagEnd> = Vec::new();
        for e in &events[..idx] {
            match e {
                Event::Start(tag) => stack.push(tag.to_end()),
                Event::End(_) => {
                    stack.pop();
                }
                _ => {}
            }
        }
        let closing = stack.into_iter().rev().map(Event::End);
        let mut html = String::new();
        pulldown_cmark::html::push_html(&mut html, events[..idx].iter().cloned().chain(closing));
        html
    });

    let words = word_count(source);
    Ok(Rendered {
        content,
        summary,
        toc: build_toc(&flat, permalink),
        word_count: words,
        reading_time: words.div_ceil(200),
        anchor_links,
    })
}

/// External links rewritten as raw `<a …>` keep a placeholder Start/End pair so summaries
/// can balance tags; here the pair becomes a plain `</a>`.
fn strip_placeholder_links(events: Vec<Event<'_>>) -> Vec<Event<'_>> {
    let mut out = Vec::with_capacity(events.len());
    let mut link_stack: Vec<bool> = Vec::new();
    for e in events {
        match e {
            Event::Start(Tag::Link { ref dest_url, .. }) => {
                let placeholder = dest_url.as_ref() == "\u{0}skip";
                link_stack.push(placeholder);
                if !placeholder {
                    out.push(e);
                }
            }
            Event::End(TagEnd::Link) => {
                if link_stack.pop().unwrap_or(false) {
                    out.push(Event::InlineHtml(CowStr::Borrowed("</a>")));
                } else {
                    out.push(e);
                }
            }
            other => out.push(other),
        }
    }
    out
}

fn heading_level(level: HeadingLevel) -> u32 {
    match level {
        HeadingLevel::H1 => 1,
        HeadingLevel::H2 => 2,
        HeadingLevel::H3 => 3,
        HeadingLevel::H4 => 4,
        HeadingLevel::H5 => 5,
        HeadingLevel::H6 => 6,
    }
}

fn build_toc(flat: &[(u32, String, String)], permalink: &str) -> Vec<Heading> {
    fn insert(list: &mut Vec<Heading>, h: Heading) {
        if let Some(last) = list.last_mut()
            && h.level > last.level
        {
            insert(&mut last.children, h);
            return;
        }
        list.push(h);
    }
    let mut toc = Vec::new();
    for (level, id, title) in flat {
        insert(
            &mut toc,
            Heading {
                level: *level,
                id: id.clone(),
                permalink: format!("{permalink}#{id}"),
                title: title.clone(),
                children: Vec::new(),
            },
        );
    }
    toc
}

fn escape_attr(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Every heading id of a rendered page, for checking `@/page.md#anchor` links.
pub fn heading_ids(toc: &[Heading], out: &mut std::collections::HashSet<String>) {
    for h in toc {
        out.insert(h.id.clone());
        heading_ids(&h.children, out);
    }
}

#[cfg(test)]
mod tests {
    use super::word_count;

    #[test]
    fn word_count_skips_comments_code_and_footnotes() {
        let text = "One two <!-- not counted -->\n\n```\nlet code = 1;\n```\n\nthree[^1].\n\n[^1]: a footnote here\n";
        assert_eq!(word_count(text), 3);
        assert_eq!(word_count("Don't panic, it's 2026."), 4);
    }
}
