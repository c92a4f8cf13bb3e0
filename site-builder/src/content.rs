//! Loading `content/`: front matter, pages, sections, and the `Library` that ties them.
//!
//! This stage only reads and validates; it renders nothing. It decides every page's slug,
//! path and permalink, drops drafts, assigns pages to sections (following `transparent`) and
//! sorts them, so that Markdown and template rendering that come after can run in parallel
//! over an immutable library.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use chrono::{NaiveDate, NaiveDateTime};
use rayon::prelude::*;
use serde::Deserialize;

use crate::config::Config;
use crate::error::SiteError;
use crate::markdown::Rendered;

/// A page's `+++` front matter, with Zola's keys.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PageFrontMatter {
    /// Title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// Publication date: a TOML date/datetime or a string in the same forms.
    pub date: Option<toml::Value>,
    /// Last update date, same forms as `date`.
    pub updated: Option<toml::Value>,
    /// Drafts are left out of the build.
    #[serde(default)]
    pub draft: bool,
    /// Overrides the slug derived from the file name.
    pub slug: Option<String>,
    /// Overrides the whole path.
    pub path: Option<String>,
    /// Old paths that redirect here.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Sort key when the section sorts by weight.
    pub weight: Option<i64>,
    /// Template to render this page with.
    pub template: Option<String>,
    /// Terms per taxonomy, e.g. `tags = ["rust"]`.
    #[serde(default)]
    pub taxonomies: BTreeMap<String, Vec<String>>,
    /// Authors, used by feeds.
    #[serde(default)]
    pub authors: Vec<String>,
    /// The user's own data.
    #[serde(default)]
    pub extra: toml::Table,
}

/// A section's `_index.md` front matter, with Zola's keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionFrontMatter {
    /// Title.
    pub title: Option<String>,
    /// Description.
    pub description: Option<String>,
    /// `date`, `update_date`, `title`, `title_bytes`, `weight`, `slug` or `none`.
    #[serde(default = "sort_none")]
    pub sort_by: String,
    /// Sort key among the parent's subsections.
    #[serde(default)]
    pub weight: i64,
    /// Pages per pager; 0 or unset: no pagination.
    #[serde(default)]
    pub paginate_by: Option<usize>,
    /// Path segment before the pager number.
    #[serde(default = "page_str")]
    pub paginate_path: String,
    /// Whether pagers list pages in reverse order.
    #[serde(default)]
    pub paginate_reversed: bool,
    /// Whether this section's pages also belong to its parent.
    #[serde(default)]
    pub transparent: bool,
    /// Default template for the section's pages.
    pub page_template: Option<String>,
    /// Template for the section itself.
    pub template: Option<String>,
    /// Whether the section's own page is written.
    #[serde(default = "yes")]
    pub render: bool,
    /// Where the section's page redirects to instead.
    pub redirect_to: Option<String>,
    /// Whether the section gets its own feed(s).
    #[serde(default)]
    pub generate_feeds: bool,
    /// Old paths that redirect here.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The user's own data.
    #[serde(default)]
    pub extra: toml::Table,
}

impl Default for SectionFrontMatter {
    fn default() -> Self {
        SectionFrontMatter {
            title: None,
            description: None,
            sort_by: sort_none(),
            weight: 0,
            paginate_by: None,
            paginate_path: page_str(),
            paginate_reversed: false,
            transparent: false,
            page_template: None,
            template: None,
            render: true,
            redirect_to: None,
            generate_feeds: false,
            aliases: Vec::new(),
            extra: toml::Table::new(),
        }
    }
}

fn sort_none() -> String {
    "none".into()
}
fn page_str() -> String {
    "page".into()
}
fn yes() -> bool {
    true
}

/// A date as written (for templates) and as a value (for sorting).
#[derive(Debug, Clone)]
pub struct Date {
    /// The text given to templates, e.g. `2026-01-15` or `2026-01-15T09:00:00Z`.
    pub text: String,
    /// The value used to sort and to fill `year`, `month`, `day`.
    pub value: NaiveDateTime,
}

/// A Markdown page.
#[derive(Debug)]
pub struct Page {
    /// The source file, for error messages.
    pub file: PathBuf,
    /// Path relative to `content/`, with `/` separators: `blog/post.md`.
    pub relative_path: String,
    /// Front matter.
    pub meta: PageFrontMatter,
    /// Markdown after the front matter.
    pub raw_content: String,
    /// Number of lines before the Markdown body, so body offsets map to file lines.
    pub body_line_offset: usize,
    /// The URL slug.
    pub slug: String,
    /// Site path, `/blog/post/`.
    pub path: String,
    /// Absolute URL.
    pub permalink: String,
    /// `date`, parsed (or taken from a `YYYY-MM-DD-` file name prefix).
    pub date: Option<Date>,
    /// `updated`, parsed.
    pub updated: Option<Date>,
    /// `_index.md` relative path of the section the page lives in.
    pub parent_section: String,
    /// Files beside an `index.md` page, copied next to its output.
    pub assets: Vec<PathBuf>,
    /// Folder of a page bundle relative to `content/`, e.g. `blog/post/`.
    pub colocated_path: Option<String>,
    /// Filled by the Markdown stage.
    pub rendered: Rendered,
}

/// A section: a folder of `content/` with an `_index.md`.
#[derive(Debug)]
pub struct Section {
    /// The `_index.md` file, for error messages.
    pub file: PathBuf,
    /// `blog/_index.md`; the root section is `_index.md`.
    pub relative_path: String,
    /// Front matter.
    pub meta: SectionFrontMatter,
    /// Markdown after the front matter.
    pub raw_content: String,
    /// Lines before the body.
    pub body_line_offset: usize,
    /// Site path, `/blog/`.
    pub path: String,
    /// Absolute URL.
    pub permalink: String,
    /// Indices into `Library::pages`, sorted per `sort_by`.
    pub pages: Vec<usize>,
    /// Indices into `Library::sections` of direct subsections, sorted by weight.
    pub subsections: Vec<usize>,
    /// `_index.md` paths of the ancestors, root first.
    pub ancestors: Vec<String>,
    /// Non-Markdown files in the section's folder.
    pub assets: Vec<PathBuf>,
    /// Filled by the Markdown stage.
    pub rendered: Rendered,
}

/// Every non-draft page and every section of the site.
#[derive(Debug, Default)]
pub struct Library {
    /// Pages, in no particular order; sections refer to them by index.
    pub pages: Vec<Page>,
    /// Sections; index 0 is the root.
    pub sections: Vec<Section>,
    /// Relative path → index into `pages`.
    pub page_index: HashMap<String, usize>,
    /// Relative path → index into `sections`.
    pub section_index: HashMap<String, usize>,
}

impl Library {
    /// Relative path (`blog/post.md` or `blog/_index.md`) → permalink, for `@/` links.
    pub fn permalinks(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(self.pages.len() + self.sections.len());
        for page in &self.pages {
            map.insert(page.relative_path.clone(), page.permalink.clone());
        }
        for section in &self.sections {
            map.insert(section.relative_path.clone(), section.permalink.clone());
        }
        map
    }
}

/// Splits `+++ toml +++ body`. Returns the TOML, the body, and the number of lines that
/// precede the body and the TOML (so errors can be mapped back to file lines).
pub(crate) fn split_front_matter<'a>(
    path: &Path,
    text: &'a str,
) -> Result<(&'a str, &'a str, usize), SiteError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let trimmed = text.trim_start();
    let leading_lines = text[..text.len() - trimmed.len()].matches('\n').count();
    if trimmed.starts_with("---") {
        return Err(SiteError::invalid_at(
            path,
            leading_lines + 1,
            "YAML front matter (`---`) is not supported; use TOML between `+++` lines",
        ));
    }
    let Some(rest) = trimmed.strip_prefix("+++") else {
        return Err(SiteError::invalid_at(
            path,
            leading_lines + 1,
            "missing front matter: the file must start with a `+++` line",
        ));
    };
    let rest = rest.strip_prefix('\r').unwrap_or(rest);
    let Some(rest) = rest.strip_prefix('\n') else {
        return Err(SiteError::invalid_at(
            path,
            leading_lines + 1,
            "the opening `+++` must be alone on its line",
        ));
    };
    // Find the closing `+++` at the start of a line.
    let mut offset = 0;
    let mut close = None;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "+++" {
            close = Some((offset, offset + line.len()));
            break;
        }
        offset += line.len();
    }
    let Some((toml_end, body_start)) = close else {
        return Err(SiteError::invalid_at(
            path,
            leading_lines + 1,
            "front matter is not closed: add a `+++` line after it",
        ));
    };
    let toml = &rest[..toml_end];
    let body = &rest[body_start..];
    let toml_line_offset = leading_lines + 1;
    Ok((toml, body, toml_line_offset))
}

/// Parses a front matter date: a TOML date/datetime or a string in the same forms.
fn parse_date(path: &Path, key: &str, value: &toml::Value) -> Result<Date, SiteError> {
    let text = match value {
        toml::Value::Datetime(dt) => dt.to_string(),
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(invalid_key(
                path,
                key,
                format!("`{key}` must be a date, not {}", a_type(other)),
            ));
        }
    };
    let parsed = chrono::DateTime::parse_from_rfc3339(&text)
        .map(|d| d.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(&text, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| {
            NaiveDate::parse_from_str(&text, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default())
        });
    match parsed {
        Ok(value) => Ok(Date { text, value }),
        Err(_) => Err(invalid_key(
            path,
            key,
            format!("`{key}` = {text:?} is not a date (use 2026-01-15 or 2026-01-15T09:00:00Z)"),
        )),
    }
}

/// A TOML value's type with its article: "an integer", "a string".
fn a_type(value: &toml::Value) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// A file name's `YYYY-MM-DD` prefix (followed by `-` or `_`), as Zola takes it for the
/// date and strips it from the slug.
fn date_prefix(stem: &str) -> Option<(NaiveDate, &str)> {
    if stem.len() < 12 || !stem.is_char_boundary(10) {
        return None;
    }
    let (date, rest) = stem.split_at(10);
    let date = NaiveDate::parse_from_str(date, "%Y-%m-%d").ok()?;
    let rest = rest.strip_prefix('-').or_else(|| rest.strip_prefix('_'))?;
    if rest.is_empty() {
        None
    } else {
        Some((date, rest))
    }
}

/// What one Markdown file turned out to be.
enum Loaded {
    Page(Box<Page>),
    Section(Box<Section>),
    /// A draft; for a bundle (`dir/index.md`), its folder, whose files must not be copied.
    Draft(Option<String>),
}

/// Walks `content_dir`, returning the Markdown files and the other files (assets).
fn walk(dir: &Path, md: &mut Vec<PathBuf>, other: &mut Vec<PathBuf>) -> Result<(), SiteError> {
    let entries = std::fs::read_dir(dir).map_err(|e| SiteError::io(dir, e))?;
    let mut entries: Vec<_> = entries
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SiteError::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| SiteError::io(&path, e))?;
        if kind.is_dir() {
            walk(&path, md, other)?;
        } else if name.ends_with(".md") {
            md.push(path);
        } else {
            other.push(path);
        }
    }
    Ok(())
}

fn rel_string(base: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Loads every page and section under `site_dir/content`.
pub fn load(site_dir: &Path, config: &Config) -> Result<Library, SiteError> {
    let content_dir = site_dir.join("content");
    let mut md_files = Vec::new();
    let mut other_files = Vec::new();
    if content_dir.is_dir() {
        walk(&content_dir, &mut md_files, &mut other_files)?;
    }

    let loaded: Vec<Loaded> = md_files
        .par_iter()
        .map(|file| load_file(&content_dir, file, config))
        .collect::<Result<_, _>>()?;

    let mut library = Library::default();
    let mut sections: Vec<Section> = Vec::new();
    let mut pages: Vec<Page> = Vec::new();
    let mut draft_dirs: Vec<String> = Vec::new();
    for item in loaded {
        match item {
            Loaded::Page(p) => pages.push(*p),
            Loaded::Section(s) => sections.push(*s),
            Loaded::Draft(dir) => draft_dirs.extend(dir),
        }
    }
    // The root section exists even without a `content/_index.md`, as in Zola.
    if !sections.iter().any(|s| s.relative_path == "_index.md") {
        sections.push(Section {
            file: content_dir.join("_index.md"),
            relative_path: "_index.md".into(),
            meta: SectionFrontMatter::default(),
            raw_content: String::new(),
            body_line_offset: 0,
            path: "/".into(),
            permalink: config.make_permalink("/"),
            pages: Vec::new(),
            subsections: Vec::new(),
            ancestors: Vec::new(),
            assets: Vec::new(),
            rendered: Rendered::default(),
        });
    }
    sections.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
    // Root first: "_index.md" sorts before "a/_index.md" already, but make it explicit.
    if let Some(pos) = sections.iter().position(|s| s.relative_path == "_index.md") {
        let root = sections.remove(pos);
        sections.insert(0, root);
    }
    pages.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));

    for (i, s) in sections.iter().enumerate() {
        library.section_index.insert(s.relative_path.clone(), i);
    }

    // Folder (relative, "" for root) → section index, to find a file's nearest section.
    let section_dirs: HashMap<String, usize> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| (s.relative_path.trim_end_matches("_index.md").to_string(), i))
        .collect();
    let nearest_section = |dir: &str| -> usize {
        let mut dir = dir.to_string();
        loop {
            if let Some(&i) = section_dirs.get(&dir) {
                return i;
            }
            if dir.is_empty() {
                return 0;
            }
            let trimmed = dir.trim_end_matches('/');
            dir = match trimmed.rfind('/') {
                Some(p) => trimmed[..=p].to_string(),
                None => String::new(),
            };
        }
    };
    let parent_dir = |dir: &str| -> String {
        let trimmed = dir.trim_end_matches('/');
        match trimmed.rfind('/') {
            Some(p) => trimmed[..=p].to_string(),
            None => String::new(),
        }
    };

    // Section ancestry and subsections.
    let section_parents: Vec<Option<usize>> = sections
        .iter()
        .map(|s| {
            let dir = s.relative_path.trim_end_matches("_index.md");
            if dir.is_empty() {
                None
            } else {
                Some(nearest_section(&parent_dir(dir)))
            }
        })
        .collect();
    for i in 0..sections.len() {
        let mut ancestors = Vec::new();
        let mut cur = section_parents[i];
        while let Some(p) = cur {
            ancestors.push(sections[p].relative_path.clone());
            cur = section_parents[p];
        }
        ancestors.reverse();
        sections[i].ancestors = ancestors;
        if let Some(p) = section_parents[i] {
            sections[p].subsections.push(i);
        }
    }
    for i in 0..sections.len() {
        let mut subs = std::mem::take(&mut sections[i].subsections);
        subs.sort_by(|&a, &b| {
            sections[a]
                .meta
                .weight
                .cmp(&sections[b].meta.weight)
                .then_with(|| sections[a].relative_path.cmp(&sections[b].relative_path))
        });
        sections[i].subsections = subs;
    }

    // Page bundles: `dir/index.md` owns the other files of `dir/`.
    let bundle_dirs: HashMap<String, usize> = pages
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.colocated_path.clone().map(|d| (d, i)))
        .collect();
    for file in other_files {
        let rel = rel_string(&content_dir, &file);
        let dir = match rel.rfind('/') {
            Some(p) => rel[..=p].to_string(),
            None => String::new(),
        };
        if draft_dirs.iter().any(|d| dir.starts_with(d.as_str())) {
            // A draft bundle's images and files are as unpublished as its text.
            continue;
        }
        if let Some(&i) = bundle_dirs.get(&dir) {
            pages[i].assets.push(file);
        } else if let Some(&i) = section_dirs.get(&dir) {
            sections[i].assets.push(file);
        } else {
            // Zola copies assets of folders without `_index.md` too; keep them with the
            // nearest section so they land at the same relative place.
            let i = nearest_section(&dir);
            sections[i].assets.push(file);
        }
    }

    // Paths of pages in folders below their section: `a/b/post.md` → `/a/b/post/`.
    for page in &mut pages {
        let dir_of_page = match &page.colocated_path {
            Some(d) => parent_dir(d),
            None => match page.relative_path.rfind('/') {
                Some(p) => page.relative_path[..=p].to_string(),
                None => String::new(),
            },
        };
        page.parent_section = sections[nearest_section(&dir_of_page)]
            .relative_path
            .clone();
        if page.meta.path.is_none() {
            let folders: Vec<String> = dir_of_page
                .split('/')
                .filter(|c| !c.is_empty())
                .map(slug::slugify)
                .collect();
            let mut path = String::from("/");
            for f in folders {
                path.push_str(&f);
                path.push('/');
            }
            path.push_str(&page.slug);
            path.push('/');
            page.path = path;
            page.permalink = config.make_permalink(&page.path);
        }
    }

    // Two files must not claim one URL.
    let mut claimed: HashMap<&str, &Path> = HashMap::new();
    for (path, file) in sections
        .iter()
        .map(|s| (s.path.as_str(), s.file.as_path()))
        .chain(pages.iter().map(|p| (p.path.as_str(), p.file.as_path())))
    {
        if let Some(other) = claimed.insert(path, file) {
            return Err(SiteError::invalid(
                file,
                format!("its path {path} is already used by {}", other.display()),
            ));
        }
    }

    for (i, p) in pages.iter().enumerate() {
        library.page_index.insert(p.relative_path.clone(), i);
    }

    // Assign pages to sections; a transparent section hands its pages up as well.
    for (i, page) in pages.iter().enumerate() {
        let mut s = library.section_index[&page.parent_section];
        loop {
            sections[s].pages.push(i);
            if !sections[s].meta.transparent {
                break;
            }
            match section_parents[s] {
                Some(p) => s = p,
                None => break,
            }
        }
    }
    for section in &mut sections {
        sort_pages(section, &pages)?;
    }

    library.pages = pages;
    library.sections = sections;
    Ok(library)
}

/// Sorts a section's pages per `sort_by`. Pages that lack the sort key (a page without a
/// date in a section sorted by date) are left out of the list, as Zola does; they are
/// still rendered at their own URL.
fn sort_pages(section: &mut Section, pages: &[Page]) -> Result<(), SiteError> {
    let by_path = |a: &usize, b: &usize| pages[*a].permalink.cmp(&pages[*b].permalink);
    let list = &mut section.pages;
    match section.meta.sort_by.as_str() {
        "none" => list.sort_by(by_path),
        "date" => {
            list.retain(|&i| pages[i].date.is_some());
            list.sort_by(|a, b| {
                let (da, db) = (&pages[*a].date, &pages[*b].date);
                let (da, db) = (da.as_ref().map(|d| d.value), db.as_ref().map(|d| d.value));
                db.cmp(&da).then_with(|| by_path(a, b))
            });
        }
        "update_date" => {
            let key = |i: usize| {
                pages[i]
                    .updated
                    .as_ref()
                    .or(pages[i].date.as_ref())
                    .map(|d| d.value)
            };
            list.retain(|&i| key(i).is_some());
            list.sort_by(|a, b| key(*b).cmp(&key(*a)).then_with(|| by_path(a, b)));
        }
        "title" | "title_bytes" => {
            let lower = section.meta.sort_by == "title";
            list.retain(|&i| pages[i].meta.title.is_some());
            list.sort_by(|a, b| {
                let ta = pages[*a].meta.title.as_deref().unwrap_or_default();
                let tb = pages[*b].meta.title.as_deref().unwrap_or_default();
                let ord = if lower {
                    ta.to_lowercase().cmp(&tb.to_lowercase())
                } else {
                    ta.cmp(tb)
                };
                ord.then_with(|| by_path(a, b))
            });
        }
        "weight" => {
            list.retain(|&i| pages[i].meta.weight.is_some());
            list.sort_by(|a, b| {
                pages[*a]
                    .meta
                    .weight
                    .cmp(&pages[*b].meta.weight)
                    .then_with(|| by_path(a, b))
            });
        }
        "slug" => list.sort_by(|a, b| {
            pages[*a]
                .slug
                .cmp(&pages[*b].slug)
                .then_with(|| by_path(a, b))
        }),
        other => {
            return Err(SiteError::invalid(
                &section.file,
                format!(
                    "sort_by = {other:?} is not one of date, update_date, title, title_bytes, weight, slug, none"
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses a front-matter path (`path`, an alias, `paginate_path`) with a `.` or `..`
/// segment: the output folder is the site, and nothing a post says may write beside it.
fn stays_inside(file: &Path, field: &str, value: &str) -> Result<(), SiteError> {
    if value
        .split(['/', '\\'])
        .any(|seg| seg == ".." || seg == ".")
    {
        return Err(invalid_key(
            file,
            field,
            format!(
                "`{field}` = {value:?}: `.` and `..` segments are not allowed in an output path"
            ),
        ));
    }
    Ok(())
}

/// Whether XML 1.0 forbids `c`: control characters other than tab and line breaks, and
/// the noncharacters U+FFFE and U+FFFF.
fn not_in_xml(c: char) -> bool {
    matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{fffe}' | '\u{ffff}')
}

/// Every string of a front matter may reach a feed (a title, an author, a tag), and XML
/// 1.0 cannot carry a control character other than tab and line breaks, even escaped: one
/// written as a TOML escape (`"\u0001"`) is refused at the line of its key, rather than
/// written into an `atom.xml` that readers reject.
fn feed_values(file: &Path, toml_text: &str) -> Result<(), SiteError> {
    fn first<'v>(key: &'v str, value: &'v toml::Value) -> Option<(&'v str, char)> {
        match value {
            toml::Value::String(text) => text
                .chars()
                .find(|&c| not_in_xml(c) || (c.is_control() && !matches!(c, '\t' | '\n' | '\r')))
                .map(|c| (key, c)),
            toml::Value::Array(items) => items.iter().find_map(|v| first(key, v)),
            toml::Value::Table(table) => table.iter().find_map(|(k, v)| first(k, v)),
            _ => None,
        }
    }
    let Ok(table) = toml::from_str::<toml::Table>(toml_text) else {
        return Ok(());
    };
    match table.iter().find_map(|(k, v)| first(k, v)) {
        Some((key, c)) => Err(invalid_key(
            file,
            key,
            format!(
                "`{key}` holds U+{:04X}, a character no feed can carry (XML forbids it)",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

/// An error about the front matter key `key` of `file`, at the line that sets it. The file
/// is read again: this is the error path, and the loaded page keeps no positions.
pub(crate) fn invalid_key(file: &Path, key: &str, message: impl Into<String>) -> SiteError {
    let line = std::fs::read_to_string(file).ok().and_then(|text| {
        let (toml, _, offset) = split_front_matter(file, &text).ok()?;
        let sets = |line: &str| {
            line.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        };
        toml.lines().position(sets).map(|i| i + 1 + offset)
    });
    match line {
        Some(line) => SiteError::invalid_at(file, line, message),
        None => SiteError::invalid(file, message),
    }
}

/// Reads and parses one Markdown file of `content/`.
fn load_file(content_dir: &Path, file: &Path, config: &Config) -> Result<Loaded, SiteError> {
    let text = std::fs::read_to_string(file).map_err(|e| SiteError::io(file, e))?;
    // Anything of the file may reach a feed (a title, an author, a tag, the text), and XML
    // 1.0 cannot carry these characters, even escaped.
    if let Some((at, c)) = text.char_indices().find(|&(_, c)| not_in_xml(c)) {
        let (line, _) = crate::error::line_col(&text, at);
        return Err(SiteError::invalid_at(
            file,
            line,
            format!(
                "U+{:04X} is a character no feed can carry (XML forbids it): remove it",
                u32::from(c)
            ),
        ));
    }
    let relative_path = rel_string(content_dir, file);
    let (toml_text, body, toml_line_offset) = split_front_matter(file, &text)?;
    let body_line_offset = text.len().saturating_sub(body.len());
    let body_line_offset = text[..body_line_offset].matches('\n').count();
    let file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Zola reads `post.fr.md` (and `_index.fr.md`) as a translation: built as a page of
    // its own here, it would be a silently different site.
    let stem = file_name.strip_suffix(".md").unwrap_or(&file_name);
    if let Some((_, language)) = stem.rsplit_once('.') {
        return Err(SiteError::invalid(
            file,
            format!(
                "`{file_name}` has a `.` in its name, which Zola reads as a translation \
                 (language `{language}`), and languages are not supported: rename the file \
                 without a `.`"
            ),
        ));
    }

    if file_name == "_index.md" {
        let meta: SectionFrontMatter = toml::from_str(toml_text)
            .map_err(|e| SiteError::toml(file, toml_text, &e, toml_line_offset))?;
        feed_values(file, toml_text)?;
        let dir = relative_path.trim_end_matches("_index.md");
        let path: String = {
            let mut p = String::from("/");
            for c in dir.split('/').filter(|c| !c.is_empty()) {
                p.push_str(&slug::slugify(c));
                p.push('/');
            }
            p
        };
        if meta.paginate_path.is_empty() || meta.paginate_path.contains('/') {
            return Err(invalid_key(
                file,
                "paginate_path",
                "paginate_path must be a single path segment",
            ));
        }
        stays_inside(file, "paginate_path", &meta.paginate_path)?;
        for alias in &meta.aliases {
            stays_inside(file, "aliases", alias)?;
        }
        return Ok(Loaded::Section(Box::new(Section {
            file: file.to_path_buf(),
            permalink: config.make_permalink(&path),
            path,
            relative_path,
            meta,
            raw_content: body.to_string(),
            body_line_offset,
            pages: Vec::new(),
            subsections: Vec::new(),
            ancestors: Vec::new(),
            assets: Vec::new(),
            rendered: Rendered::default(),
        })));
    }

    let meta: PageFrontMatter = toml::from_str(toml_text)
        .map_err(|e| SiteError::toml(file, toml_text, &e, toml_line_offset))?;
    feed_values(file, toml_text)?;
    if meta.draft {
        let bundle = (file_name == "index.md")
            .then(|| relative_path.trim_end_matches("index.md").to_string());
        return Ok(Loaded::Draft(bundle));
    }
    for name in meta.taxonomies.keys() {
        if !config.taxonomies.iter().any(|t| &t.name == name) {
            return Err(invalid_key(
                file,
                name,
                format!("taxonomy `{name}` is not defined in config.toml `taxonomies`"),
            ));
        }
    }

    let is_bundle = file_name == "index.md";
    let stem = if is_bundle {
        file.parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        stem.to_string()
    };
    let colocated_path = if is_bundle {
        Some(relative_path.trim_end_matches("index.md").to_string())
    } else {
        None
    };

    let mut date = match &meta.date {
        Some(v) => Some(parse_date(file, "date", v)?),
        None => None,
    };
    let updated = match &meta.updated {
        Some(v) => Some(parse_date(file, "updated", v)?),
        None => None,
    };
    let slug_source = match date_prefix(&stem) {
        Some((d, rest)) => {
            if date.is_none() {
                date = Some(Date {
                    text: d.format("%Y-%m-%d").to_string(),
                    value: d.and_hms_opt(0, 0, 0).unwrap_or_default(),
                });
            }
            rest.to_string()
        }
        None => stem,
    };
    let slug = match &meta.slug {
        Some(s) => slug::slugify(s),
        None => slug::slugify(&slug_source),
    };
    if slug.is_empty() {
        return Err(SiteError::invalid(
            file,
            "the page's slug is empty; set `slug` in front matter",
        ));
    }
    if let Some(p) = &meta.path {
        stays_inside(file, "path", p)?;
    }
    for alias in &meta.aliases {
        stays_inside(file, "aliases", alias)?;
    }
    let path = match &meta.path {
        Some(p) => {
            let trimmed = p.trim_matches('/');
            if trimmed.is_empty() {
                return Err(SiteError::invalid(file, "`path` must not be empty"));
            }
            format!("/{trimmed}/")
        }
        None => String::new(), // filled once sections are known
    };
    Ok(Loaded::Page(Box::new(Page {
        file: file.to_path_buf(),
        permalink: if path.is_empty() {
            String::new()
        } else {
            config.make_permalink(&path)
        },
        path,
        relative_path,
        raw_content: body.to_string(),
        body_line_offset,
        slug,
        date,
        updated,
        parent_section: String::new(),
        assets: Vec::new(),
        colocated_path,
        meta,
        rendered: Rendered::default(),
    })))
}
