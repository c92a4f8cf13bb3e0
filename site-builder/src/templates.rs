//! Tera 1.x set up the way Zola sets it up: the site's `templates/`, Zola's built-in
//! templates (our own text, same names and variables), Zola's functions and the `markdown`
//! filter.
//!
//! Tera reports no line numbers for render errors, and only at render time for unknown
//! functions. So after loading we walk each template's syntax tree and refuse unknown
//! functions, filters and tests at once, and we map any Tera error back to `file:line` by
//! finding the offending name in the template sources.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use tera::{Tera, Value};

use crate::config::MarkdownConfig;
use crate::error::{Location, SiteError};
use crate::markdown::{self, MarkdownContext};
use crate::tera_names::Name;

const BUILTIN_ATOM: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xml:lang="{{ lang }}">
  <title>{% if config.title %}{{ config.title }}{% endif %}{% if term %} - {{ term.name }}{% elif section and section.title %} - {{ section.title }}{% endif %}</title>
  {%- if config.description %}
  <subtitle>{{ config.description }}</subtitle>
  {%- endif %}
  <link rel="self" type="application/atom+xml" href="{{ feed_url | escape_xml | safe }}"/>
  <link rel="alternate" type="text/html" href="{% if section %}{{ section.permalink | escape_xml | safe }}{% elif term %}{{ term.permalink | escape_xml | safe }}{% else %}{{ config.base_url | escape_xml | safe }}/{% endif %}"/>
  <generator uri="https://www.getzola.org/">Zola</generator>
  <updated>{% if last_updated %}{{ last_updated | date(format="%Y-%m-%dT%H:%M:%S%:z") }}{% else %}{{ now(utc=true) | date(format="%Y-%m-%dT%H:%M:%S+00:00") }}{% endif %}</updated>
  <id>{{ feed_url | escape_xml | safe }}</id>
  {%- for page in pages %}
  <entry xml:lang="{{ page.lang }}">
    <title>{% if page.title %}{{ page.title }}{% endif %}</title>
    <published>{{ page.date | date(format="%Y-%m-%dT%H:%M:%S%:z") }}</published>
    <updated>{% if page.updated %}{{ page.updated | date(format="%Y-%m-%dT%H:%M:%S%:z") }}{% else %}{{ page.date | date(format="%Y-%m-%dT%H:%M:%S%:z") }}{% endif %}</updated>
    {%- for author in page.authors %}
    <author><name>{{ author }}</name></author>
    {%- else %}
    <author><name>{% if config.author %}{{ config.author }}{% else %}Unknown{% endif %}</name></author>
    {%- endfor %}
    <link rel="alternate" type="text/html" href="{{ page.permalink | escape_xml | safe }}"/>
    <id>{{ page.permalink | escape_xml | safe }}</id>
    {%- if page.summary %}
    <summary type="html">{{ page.summary }}</summary>
    {%- else %}
    <content type="html" xml:base="{{ page.permalink | escape_xml | safe }}">{{ page.content }}</content>
    {%- endif %}
  </entry>
  {%- endfor %}
</feed>
"#;

const BUILTIN_RSS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<rss xmlns:atom="http://www.w3.org/2005/Atom" version="2.0">
  <channel>
    <title>{% if config.title %}{{ config.title }}{% endif %}{% if term %} - {{ term.name }}{% elif section and section.title %} - {{ section.title }}{% endif %}</title>
    <link>{% if section %}{{ section.permalink | escape_xml | safe }}{% else %}{{ config.base_url | escape_xml | safe }}/{% endif %}</link>
    <description>{% if config.description %}{{ config.description }}{% endif %}</description>
    <generator>Zola</generator>
    <language>{{ lang }}</language>
    <atom:link href="{{ feed_url | escape_xml | safe }}" rel="self" type="application/rss+xml"/>
    {% if last_updated %}<lastBuildDate>{{ last_updated | date(format="%a, %d %b %Y %H:%M:%S %z") }}</lastBuildDate>{% endif %}
    {%- for page in pages %}
    <item>
      <title>{% if page.title %}{{ page.title }}{% endif %}</title>
      <pubDate>{{ page.date | date(format="%a, %d %b %Y %H:%M:%S %z") }}</pubDate>
      <link>{{ page.permalink | escape_xml | safe }}</link>
      <guid>{{ page.permalink | escape_xml | safe }}</guid>
      <description>{% if page.summary %}{{ page.summary }}{% else %}{{ page.content }}{% endif %}</description>
    </item>
    {%- endfor %}
  </channel>
</rss>
"#;

const BUILTIN_SITEMAP: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">
{%- for entry in entries %}
  <url>
    <loc>{{ entry.permalink | escape_xml | safe }}</loc>
    {%- if entry.updated %}
    <lastmod>{{ entry.updated }}</lastmod>
    {%- endif %}
  </url>
{%- endfor %}
</urlset>
"#;

const BUILTIN_ROBOTS: &str =
    "User-agent: *\nDisallow:\nAllow: /\nSitemap: {{ get_url(path=\"sitemap.xml\") }}\n";

const BUILTIN_404: &str = r#"<!doctype html>
<html lang="{{ lang }}">
<head><meta charset="utf-8"><title>File Not Found: 404.</title></head>
<body><h1>Oops!</h1><h2>File Not Found: 404.</h2></body>
</html>
"#;

const BUILTIN_ALIAS: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<link rel="canonical" href="{{ url | safe }}">
<meta http-equiv="refresh" content="0; url={{ url | safe }}">
<title>Redirect</title>
</head>
<body>
<p><a href="{{ url | safe }}">Click here</a> to be redirected.</p>
</body>
</html>
"#;

/// Zola's functions and filters that this builder does not have (image processing, hashes,
/// translations, Zola's own extra filters).
const ZOLA_ONLY: &[&str] = &[
    "resize_image",
    "get_image_metadata",
    "get_hash",
    "get_taxonomy_term",
    "trans",
    "base64_encode",
    "base64_decode",
    "regex_replace",
    "num_format",
];

/// The loaded templates, with the source of each user template kept for error locations.
pub struct Templates {
    /// The Tera instance every render uses.
    pub tera: Tera,
    /// Template name → (file, source), for mapping errors to lines.
    sources: HashMap<String, (PathBuf, String)>,
}

/// The data Zola's functions read; built once per build after Markdown is rendered.
///
/// Sections with all their pages and taxonomies with all their terms are large (on a
/// 10,000-post blog, copying them costs more than rendering every page), so they are
/// assembled on the first call that asks for them, and never when no template does.
pub struct FunctionData {
    /// `base_url`, without trailing slash.
    pub base_url: String,
    /// Content path → permalink.
    pub permalinks: Arc<HashMap<String, String>>,
    /// Serialized pages, indexed like the library's pages.
    pub page_values: Arc<Vec<Value>>,
    /// Content path → index into `page_values`.
    pub page_index: HashMap<String, usize>,
    /// Content path → section.
    pub sections: HashMap<String, LazySection>,
    /// Taxonomy name → taxonomy.
    pub taxonomies: HashMap<String, LazyTaxonomy>,
    /// Taxonomy name → term slug → permalink.
    pub term_urls: HashMap<String, HashMap<String, String>>,
}

/// A section for `get_section`: its metadata now, its full form (with pages) on demand.
pub struct LazySection {
    /// The section serialized with an empty `pages`.
    pub meta: Value,
    /// Its pages, as indices into `page_values`.
    pub pages: Vec<usize>,
    /// The section with its pages, built on first use.
    pub full: OnceLock<Value>,
}

/// A taxonomy for `get_taxonomy`, assembled on first use.
pub struct LazyTaxonomy {
    /// `{kind, lang, permalink}` without `items`.
    pub head: Value,
    /// Each term serialized with an empty `pages`, and its page indices.
    pub terms: Vec<(Value, Vec<usize>)>,
    /// `head` plus `items`, built on first use.
    pub full: OnceLock<Value>,
}

/// `value` with `key` set to the given pages.
fn with_pages(value: &Value, key: &str, pages: &[usize], all: &[Value]) -> Value {
    let mut v = value.clone();
    if let Value::Object(map) = &mut v {
        map.insert(
            key.to_string(),
            Value::Array(pages.iter().map(|&i| all[i].clone()).collect()),
        );
    }
    v
}

impl Templates {
    /// Loads `site_dir/templates/**` plus the built-ins, and checks every template for
    /// functions, filters and tests that do not exist.
    pub fn load(site_dir: &Path) -> Result<Templates, SiteError> {
        let dir = site_dir.join("templates");
        let mut files = Vec::new();
        if dir.is_dir() {
            collect(&dir, &mut files)?;
        }
        let mut sources = HashMap::new();
        let mut raw: Vec<(String, String)> = Vec::new();
        for file in files {
            let name = file
                .strip_prefix(&dir)
                .unwrap_or(&file)
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let text = std::fs::read_to_string(&file).map_err(|e| SiteError::io(&file, e))?;
            // Parse alone first: Tera's combined loader loses which file failed to parse.
            if let Err(e) = tera::Template::new(&name, None, &text) {
                return Err(parse_error(&file, &e));
            }
            sources.insert(name.clone(), (file, text.clone()));
            raw.push((name, text));
        }
        let mut tera = Tera::default();
        tera.add_raw_templates(vec![
            ("__zola_builtins/atom.xml", BUILTIN_ATOM),
            ("__zola_builtins/rss.xml", BUILTIN_RSS),
            ("__zola_builtins/sitemap.xml", BUILTIN_SITEMAP),
            ("__zola_builtins/robots.txt", BUILTIN_ROBOTS),
            ("__zola_builtins/404.html", BUILTIN_404),
            ("internal/alias.html", BUILTIN_ALIAS),
        ])
        .map_err(|e| SiteError::Template {
            location: Location::file("<built-in templates>"),
            message: chain(&e),
        })?;
        // Zola autoescapes .html, .htm and .xml; text templates (robots.txt) are not escaped.
        tera.autoescape_on(vec![".html", ".htm", ".xml"]);
        if let Err(e) = tera.add_raw_templates(raw) {
            let message = chain(&e);
            let location = sources
                .iter()
                .find(|(name, _)| message.contains(&format!("'{name}'")))
                .map(|(_, (file, _))| Location::file(file.clone()))
                .unwrap_or_else(|| Location::file(dir.clone()));
            return Err(SiteError::Template { location, message });
        }
        Ok(Templates { tera, sources })
    }

    /// Registers Zola's functions and filters, then checks every user template for names
    /// that would fail at render time (on a page that may not even be built in tests).
    pub fn register(
        &mut self,
        site_dir: &Path,
        markdown_config: &MarkdownConfig,
        data: FunctionData,
    ) -> Result<(), SiteError> {
        let data = Arc::new(data);
        self.tera.register_function("get_url", GetUrl(data.clone()));
        self.tera
            .register_function("get_page", GetPage(data.clone()));
        self.tera
            .register_function("get_section", GetSection(data.clone()));
        self.tera
            .register_function("get_taxonomy", GetTaxonomy(data.clone()));
        self.tera
            .register_function("get_taxonomy_url", GetTaxonomyUrl(data.clone()));
        self.tera.register_function(
            "load_data",
            LoadData {
                site_dir: site_dir.to_path_buf(),
                cache: Mutex::new(HashMap::new()),
            },
        );
        self.tera.register_filter(
            "markdown",
            MarkdownFilter {
                config: markdown_config.clone(),
                permalinks: data.permalinks.clone(),
            },
        );
        self.check_names()
    }

    /// Refuses unknown functions, filters and tests, naming `file:line`. One that Zola has
    /// ([`ZOLA_ONLY`]) is named as such, not as a misspelling.
    fn check_names(&self) -> Result<(), SiteError> {
        let mut names: Vec<&String> = self.sources.keys().collect();
        names.sort();
        for name in names {
            let Ok(template) = self.tera.get_template(name) else {
                continue;
            };
            let found = crate::tera_names::names(&template.ast)
                .into_iter()
                .filter_map(|name| match name {
                    Name::Function(f) => Some((Kind::Function, f.to_string())),
                    Name::Filter(f) => Some((Kind::Filter, f.to_string())),
                    Name::Test(t) => Some((Kind::Test, t.to_string())),
                    Name::Variable(_) | Name::Bound(_) | Name::Macro(_) => None,
                });
            for (kind, used) in found {
                let known = match kind {
                    Kind::Function => self.tera.functions.contains_key(&used),
                    Kind::Filter => {
                        used == "safe" || used == "default" || self.tera.filters.contains_key(&used)
                    }
                    Kind::Test => self.tera.testers.contains_key(&used),
                };
                if !known {
                    let (file, text) = &self.sources[name];
                    let line = find_line(text, &used, kind);
                    let what = match kind {
                        Kind::Function => "function",
                        Kind::Filter => "filter",
                        Kind::Test => "test",
                    };
                    return Err(SiteError::Template {
                        location: Location {
                            path: file.clone(),
                            line,
                            col: None,
                        },
                        message: if ZOLA_ONLY.contains(&used.as_str()) {
                            format!(
                                "{what} `{used}` is Zola's, but this builder does not support \
                                 it (see the README's list of what it supports)"
                            )
                        } else {
                            format!("unknown {what} `{used}` (Zola and Tera have no such {what})")
                        },
                    });
                }
            }
        }
        Ok(())
    }

    /// Whether a template of that name exists (user or built-in).
    pub fn has(&self, name: &str) -> bool {
        self.tera.get_template(name).is_ok()
    }

    /// Renders a template, turning Tera's error into one naming the template file and line.
    pub fn render(&self, name: &str, context: &tera::Context) -> Result<String, SiteError> {
        self.tera
            .render(name, context)
            .map_err(|e| self.render_error(name, &e))
    }

    fn render_error(&self, name: &str, err: &tera::Error) -> SiteError {
        let message = chain(err);
        // The innermost template named in the chain is where it broke ("Failed to render
        // 'base.html'" appears after 'page.html' when the error is in the parent).
        let mut culprit = name.to_string();
        for part in message.split(": ") {
            if let Some(rest) = part.strip_prefix("Failed to render '")
                && let Some(end) = rest.find('\'')
            {
                culprit = rest[..end].to_string();
            }
        }
        let needle = extract_name(&message);
        // Search the culprit, then its parents, then every template.
        let mut order: Vec<String> = vec![culprit.clone()];
        if let Ok(t) = self.tera.get_template(&culprit) {
            order.extend(t.parents.iter().cloned());
        }
        let mut rest: Vec<&String> = self.sources.keys().collect();
        rest.sort();
        order.extend(rest.into_iter().cloned());
        if let Some((needle, kind)) = &needle {
            for candidate in &order {
                if let Some((file, text)) = self.sources.get(candidate)
                    && let Some(line) = find_line(text, needle, *kind)
                {
                    return SiteError::Template {
                        location: Location::at(file.clone(), line, None),
                        message,
                    };
                }
            }
        }
        let path = self
            .sources
            .get(&culprit)
            .map(|(f, _)| f.clone())
            .unwrap_or_else(|| PathBuf::from(format!("templates/{culprit}")));
        SiteError::Template {
            location: Location::file(path),
            message,
        }
    }
}

/// Tera's error and its causes on one line.
fn chain(err: &tera::Error) -> String {
    let mut out = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        out.push_str(": ");
        out.push_str(&e.to_string());
        source = e.source();
    }
    out
}

/// A Tera parse error (pest) as `file:line:col`.
fn parse_error(file: &Path, err: &tera::Error) -> SiteError {
    let message = chain(err);
    // pest prints ` --> 3:15`.
    let location = message
        .split("--> ")
        .nth(1)
        .and_then(|rest| {
            let pos: String = rest
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == ':')
                .collect();
            let mut it = pos.split(':');
            let line = it.next()?.parse().ok()?;
            let col = it.next().and_then(|c| c.parse().ok());
            Some(Location::at(file, line, col))
        })
        .unwrap_or_else(|| Location::file(file));
    let message = message
        .replace('\n', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    SiteError::Template { location, message }
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), SiteError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SiteError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| SiteError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Function,
    Filter,
    Test,
}

/// The name a Tera error is about, to find its line.
fn extract_name(message: &str) -> Option<(String, Kind)> {
    let patterns: [(&str, char, Kind); 8] = [
        ("Function call '", '\'', Kind::Function),
        ("Function '", '\'', Kind::Function),
        ("Filter call '", '\'', Kind::Filter),
        ("Filter '", '\'', Kind::Filter),
        ("Test call '", '\'', Kind::Test),
        ("Test '", '\'', Kind::Test),
        ("Variable `", '`', Kind::Function),
        ("Macro `", '`', Kind::Function),
    ];
    for (prefix, end, kind) in patterns {
        if let Some(start) = message.find(prefix) {
            let rest = &message[start + prefix.len()..];
            if let Some(stop) = rest.find(end) {
                let mut name = rest[..stop].to_string();
                if prefix.starts_with("Variable") || prefix.starts_with("Macro") {
                    // `page.missing` → search the whole dotted name first.
                    if let Some(short) = name.split("::").last() {
                        name = short.to_string();
                    }
                    return Some((name, Kind::Test));
                }
                return Some((name, kind));
            }
        }
    }
    None
}

/// First 1-based line of `text` that uses `name` inside a Tera tag.
fn find_line(text: &str, name: &str, kind: Kind) -> Option<usize> {
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut in_tag = false;
    for (i, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let mut j = 0;
        while j < bytes.len() {
            if j + 1 < bytes.len() && bytes[j] == b'{' && matches!(bytes[j + 1], b'{' | b'%') {
                in_tag = true;
                j += 2;
                continue;
            }
            if j + 1 < bytes.len() && matches!(bytes[j], b'}' | b'%') && bytes[j + 1] == b'}' {
                in_tag = false;
                j += 2;
                continue;
            }
            if in_tag && line[j..].starts_with(name) {
                let before_ok = j == 0 || !is_word(bytes[j - 1]);
                let after = j + name.len();
                let after_ok = after >= bytes.len() || !is_word(bytes[after]);
                let call_ok = match kind {
                    Kind::Function => line[after..].trim_start().starts_with('('),
                    _ => true,
                };
                if before_ok && after_ok && call_ok {
                    return Some(i + 1);
                }
            }
            j += 1;
        }
    }
    None
}

// ---- functions -------------------------------------------------------------------------

fn string_arg(
    args: &HashMap<String, Value>,
    fname: &str,
    key: &str,
) -> tera::Result<Option<String>> {
    match args.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => {
            Err(format!("`{fname}`: argument `{key}` must be a string, got {other}").into())
        }
    }
}

fn bool_arg(
    args: &HashMap<String, Value>,
    fname: &str,
    key: &str,
    default: bool,
) -> tera::Result<bool> {
    match args.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => {
            Err(format!("`{fname}`: argument `{key}` must be a boolean, got {other}").into())
        }
    }
}

fn required_str(args: &HashMap<String, Value>, fname: &str, key: &str) -> tera::Result<String> {
    string_arg(args, fname, key)?
        .ok_or_else(|| format!("`{fname}` requires a `{key}` argument").into())
}

fn check_args(args: &HashMap<String, Value>, fname: &str, allowed: &[&str]) -> tera::Result<()> {
    for key in args.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(format!(
                "`{fname}` has no argument `{key}` (this builder supports: {})",
                allowed.join(", ")
            )
            .into());
        }
    }
    Ok(())
}

/// `get_url(path, trailing_slash=false)`: `@/x.md` → permalink; other paths → under base_url.
struct GetUrl(Arc<FunctionData>);

impl tera::Function for GetUrl {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(
            args,
            "get_url",
            &["path", "trailing_slash", "cachebust", "lang"],
        )?;
        let path = required_str(args, "get_url", "path")?;
        let trailing_slash = bool_arg(args, "get_url", "trailing_slash", false)?;
        if bool_arg(args, "get_url", "cachebust", false)? {
            return Err("`get_url`: cachebust is not supported by this builder".into());
        }
        if let Some(target) = path.strip_prefix("@/") {
            let (file, anchor) = match target.find('#') {
                Some(p) => (&target[..p], &target[p..]),
                None => (target, ""),
            };
            return match self.0.permalinks.get(file) {
                Some(url) => Ok(Value::String(format!("{url}{anchor}"))),
                None => Err(format!("`get_url`: no page or section content/{file}").into()),
            };
        }
        if path.starts_with("http://") || path.starts_with("https://") {
            return Ok(Value::String(path));
        }
        let mut url = format!("{}/{}", self.0.base_url, path.trim_start_matches('/'));
        if trailing_slash && !url.ends_with('/') {
            url.push('/');
        }
        Ok(Value::String(url))
    }
    fn is_safe(&self) -> bool {
        true
    }
}

/// `get_page(path)`: a page by its path relative to `content/`.
struct GetPage(Arc<FunctionData>);

impl tera::Function for GetPage {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(args, "get_page", &["path", "lang"])?;
        let path = required_str(args, "get_page", "path")?;
        self.0
            .page_index
            .get(path.trim_start_matches('/'))
            .map(|&i| self.0.page_values[i].clone())
            .ok_or_else(|| {
                format!("`get_page`: no page content/{path} (drafts are not built)").into()
            })
    }
}

/// `get_section(path, metadata_only=false)`.
struct GetSection(Arc<FunctionData>);

impl tera::Function for GetSection {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(args, "get_section", &["path", "metadata_only", "lang"])?;
        let path = required_str(args, "get_section", "path")?;
        let meta_only = bool_arg(args, "get_section", "metadata_only", false)?;
        let section = self
            .0
            .sections
            .get(path.trim_start_matches('/'))
            .ok_or_else(|| format!("`get_section`: no section content/{path}"))?;
        if meta_only {
            return Ok(section.meta.clone());
        }
        let all = &self.0.page_values;
        Ok(section
            .full
            .get_or_init(|| with_pages(&section.meta, "pages", &section.pages, all))
            .clone())
    }
}

/// `get_taxonomy(kind, required=true)`: `{kind, items}`.
struct GetTaxonomy(Arc<FunctionData>);

impl tera::Function for GetTaxonomy {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(args, "get_taxonomy", &["kind", "required", "lang"])?;
        let kind = required_str(args, "get_taxonomy", "kind")?;
        let required = bool_arg(args, "get_taxonomy", "required", true)?;
        match self.0.taxonomies.get(&kind) {
            Some(tax) => {
                let all = &self.0.page_values;
                let full = tax.full.get_or_init(|| {
                    let items: Vec<Value> = tax
                        .terms
                        .iter()
                        .map(|(term, pages)| with_pages(term, "pages", pages, all))
                        .collect();
                    let mut v = tax.head.clone();
                    if let Value::Object(map) = &mut v {
                        map.insert("items".into(), Value::Array(items));
                    }
                    v
                });
                Ok(full.clone())
            }
            None if !required => Ok(Value::Null),
            None => Err(format!("`get_taxonomy`: taxonomy `{kind}` is not in config.toml").into()),
        }
    }
}

/// `get_taxonomy_url(kind, name, required=true)`.
struct GetTaxonomyUrl(Arc<FunctionData>);

impl tera::Function for GetTaxonomyUrl {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(
            args,
            "get_taxonomy_url",
            &["kind", "name", "required", "lang"],
        )?;
        let kind = required_str(args, "get_taxonomy_url", "kind")?;
        let name = required_str(args, "get_taxonomy_url", "name")?;
        let required = bool_arg(args, "get_taxonomy_url", "required", true)?;
        let Some(terms) = self.0.term_urls.get(&kind) else {
            return Err(
                format!("`get_taxonomy_url`: taxonomy `{kind}` is not in config.toml").into(),
            );
        };
        match terms.get(&slug::slugify(&name)) {
            Some(url) => Ok(Value::String(url.clone())),
            None if !required => Ok(Value::Null),
            None => Err(format!("`get_taxonomy_url`: no term `{name}` in `{kind}`").into()),
        }
    }
    fn is_safe(&self) -> bool {
        true
    }
}

/// `load_data(path, format, required=true)` for toml, json, csv and plain text; the path is
/// relative to the site root. Results are cached for the build.
struct LoadData {
    site_dir: PathBuf,
    cache: Mutex<HashMap<(PathBuf, String), Value>>,
}

impl tera::Function for LoadData {
    fn call(&self, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(args, "load_data", &["path", "url", "format", "required"])?;
        if args.contains_key("url") {
            return Err("`load_data`: `url` is not supported by this builder (builds stay offline); use `path`".into());
        }
        let path = required_str(args, "load_data", "path")?;
        let required = bool_arg(args, "load_data", "required", true)?;
        let rel = Path::new(&path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(
                format!("`load_data`: path `{path}` must stay inside the site folder").into(),
            );
        }
        let full = self.site_dir.join(rel);
        let format = match string_arg(args, "load_data", "format")? {
            Some(f) => f,
            None => match full.extension().and_then(|e| e.to_str()) {
                Some("toml") => "toml".into(),
                Some("json") => "json".into(),
                Some("csv") => "csv".into(),
                _ => "plain".into(),
            },
        };
        let key = (full.clone(), format.clone());
        if let Ok(cache) = self.cache.lock()
            && let Some(v) = cache.get(&key)
        {
            return Ok(v.clone());
        }
        let text = match std::fs::read_to_string(&full) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Value::Null);
            }
            Err(e) => return Err(format!("`load_data`: {}: {e}", full.display()).into()),
        };
        let value = match format.as_str() {
            "json" => serde_json::from_str::<Value>(&text).map_err(|e| {
                format!(
                    "`load_data`: {}:{}:{}: {e}",
                    full.display(),
                    e.line(),
                    e.column()
                )
            })?,
            "toml" => {
                let table: toml::Table = toml::from_str(&text)
                    .map_err(|e| SiteError::toml(&full, &text, &e, 0).to_string())?;
                serde_json::to_value(table)
                    .map_err(|e| format!("`load_data`: {}: {e}", full.display()))?
            }
            "csv" => parse_csv(&text)
                .map_err(|(line, msg)| format!("`load_data`: {}:{line}: {msg}", full.display()))?,
            "plain" => Value::String(text),
            other => {
                return Err(format!(
                    "`load_data`: format `{other}` is not supported (toml, json, csv, plain)"
                )
                .into());
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(key, value.clone());
        }
        Ok(value)
    }
}

/// CSV as Zola returns it: `{"headers": [...], "records": [[...], ...]}`. RFC 4180 quoting.
fn parse_csv(text: &str) -> Result<Value, (usize, String)> {
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut in_quotes = false;
    let mut line = 1;
    let mut row_line = 1;
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        any = true;
        if in_quotes {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => in_quotes = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.is_empty() => in_quotes = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' => {}
            '\n' => {
                row.push(std::mem::take(&mut field));
                rows.push((row_line, std::mem::take(&mut row)));
                line += 1;
                row_line = line;
                any = false;
            }
            c => field.push(c),
        }
    }
    if in_quotes {
        return Err((row_line, "unclosed quote".into()));
    }
    if any {
        row.push(field);
        rows.push((row_line, row));
    }
    let mut iter = rows.into_iter();
    let headers = iter.next().map(|(_, h)| h).unwrap_or_default();
    let mut records = Vec::new();
    for (l, r) in iter {
        if r.len() != headers.len() {
            return Err((
                l,
                format!("{} fields where the header has {}", r.len(), headers.len()),
            ));
        }
        records.push(Value::Array(r.into_iter().map(Value::String).collect()));
    }
    Ok(serde_json::json!({
        "headers": headers,
        "records": records,
    }))
}

/// The `markdown(inline=false)` filter.
struct MarkdownFilter {
    config: MarkdownConfig,
    permalinks: Arc<HashMap<String, String>>,
}

impl tera::Filter for MarkdownFilter {
    fn filter(&self, value: &Value, args: &HashMap<String, Value>) -> tera::Result<Value> {
        check_args(args, "markdown", &["inline"])?;
        let text = value
            .as_str()
            .ok_or("`markdown` filter: the value must be a string")?;
        let inline = bool_arg(args, "markdown", "inline", false)?;
        let ctx = MarkdownContext {
            config: &self.config,
            permalinks: &self.permalinks,
        };
        let rendered = markdown::render(&ctx, Path::new("<markdown filter>"), 0, text, "")
            .map_err(|e| e.to_string())?;
        let mut html = rendered.content;
        if inline {
            let trimmed = html.trim();
            if let Some(inner) = trimmed
                .strip_prefix("<p>")
                .and_then(|s| s.strip_suffix("</p>"))
                && !inner.contains("<p>")
            {
                html = inner.to_string();
            }
        }
        Ok(Value::String(html))
    }
    fn is_safe(&self) -> bool {
        true
    }
}
