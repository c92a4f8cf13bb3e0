//! `config.toml`: the site's settings, with Zola's names, defaults and meaning.
//!
//! Only the subset listed in `USAGE.md` is accepted. Every struct denies unknown fields, so a
//! Zola key we do not implement (say `[search]` or `minify_html`) stops the build with the
//! file and line instead of being ignored and producing a site that differs from Zola's.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::SiteError;

/// The parsed `config.toml`. Serialized as is into templates as `config`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The URL the site is served from; the only required key.
    pub base_url: String,
    /// Site title, used in feeds.
    #[serde(default)]
    pub title: Option<String>,
    /// Site description, used in feeds.
    #[serde(default)]
    pub description: Option<String>,
    /// Language code of the site (`lang` in templates, `xml:lang` in feeds).
    #[serde(default = "default_language")]
    pub default_language: String,
    /// Default author of pages in feeds.
    #[serde(default)]
    pub author: Option<String>,
    /// Whether to write site-wide feeds.
    #[serde(default)]
    pub generate_feeds: bool,
    /// Feed files to write; `atom.xml` and `rss.xml` have built-in templates.
    #[serde(default = "default_feed_filenames")]
    pub feed_filenames: Vec<String>,
    /// Most entries in a feed; all when unset.
    #[serde(default)]
    pub feed_limit: Option<usize>,
    /// Taxonomies pages may use.
    #[serde(default)]
    pub taxonomies: Vec<TaxonomyConfig>,
    /// Whether to write `sitemap.xml`.
    #[serde(default = "yes")]
    pub generate_sitemap: bool,
    /// Whether to write `robots.txt`.
    #[serde(default = "yes")]
    pub generate_robots_txt: bool,
    /// Markdown rendering options.
    #[serde(default)]
    pub markdown: MarkdownConfig,
    /// The user's own data, `config.extra` in templates.
    #[serde(default)]
    pub extra: toml::Table,
}

/// One taxonomy of `taxonomies = [...]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TaxonomyConfig {
    /// Name used in front matter (`[taxonomies] tags = [...]`) and in URLs.
    pub name: String,
    /// Pages per pager on a term page; no pagination when unset.
    #[serde(default)]
    pub paginate_by: Option<usize>,
    /// Path segment before the pager number.
    #[serde(default)]
    pub paginate_path: Option<String>,
    /// Whether each term gets its own feed.
    #[serde(default)]
    pub feed: bool,
    /// Whether the taxonomy's pages are written at all.
    #[serde(default = "yes")]
    pub render: bool,
    /// The slugified name, as Zola exposes it to templates.
    #[serde(default, skip_deserializing)]
    pub slug: String,
    /// The language of the taxonomy (always the default language here).
    #[serde(default, skip_deserializing)]
    pub lang: String,
}

impl TaxonomyConfig {
    /// The pager path segment, `page` unless configured.
    pub fn paginate_path(&self) -> &str {
        self.paginate_path.as_deref().unwrap_or("page")
    }
}

/// The supported `[markdown]` keys.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MarkdownConfig {
    /// `...` → `…`, straight quotes → curly ones.
    #[serde(default)]
    pub smart_punctuation: bool,
    /// Open external links in a new tab (adds `rel="noopener"`).
    #[serde(default)]
    pub external_links_target_blank: bool,
    /// Add `rel="nofollow"` to external links.
    #[serde(default)]
    pub external_links_no_follow: bool,
    /// Add `rel="noreferrer"` to external links.
    #[serde(default)]
    pub external_links_no_referrer: bool,
    /// Parse definition lists.
    #[serde(default)]
    pub definition_list: bool,
}

fn default_language() -> String {
    "en".to_string()
}

fn default_feed_filenames() -> Vec<String> {
    vec!["atom.xml".to_string()]
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads and validates `site_dir/config.toml`; `base_url` overrides the file's value.
    pub fn load(site_dir: &Path, base_url: Option<&str>) -> Result<Config, SiteError> {
        let path = site_dir.join("config.toml");
        let text = std::fs::read_to_string(&path).map_err(|e| SiteError::io(&path, e))?;
        Self::parse(&path, &text, base_url)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(path: &Path, text: &str, base_url: Option<&str>) -> Result<Config, SiteError> {
        let mut config: Config =
            toml::from_str(text).map_err(|e| SiteError::toml(path, text, &e, 0))?;
        if let Some(url) = base_url {
            config.base_url = url.to_string();
        }
        // Zola strips one trailing slash so `base_url + "/" + path` never doubles it.
        while config.base_url.ends_with('/') {
            config.base_url.pop();
        }
        let mut seen = std::collections::HashSet::new();
        for taxonomy in &mut config.taxonomies {
            taxonomy.slug = slug::slugify(&taxonomy.name);
            taxonomy.lang = config.default_language.clone();
            if !seen.insert(taxonomy.name.clone()) {
                return Err(SiteError::invalid(
                    path,
                    format!("taxonomy `{}` is defined twice", taxonomy.name),
                ));
            }
            if taxonomy.paginate_by == Some(0) {
                taxonomy.paginate_by = None;
            }
        }
        for name in &config.feed_filenames {
            if name.contains('/') || name.is_empty() {
                return Err(SiteError::invalid(
                    path,
                    format!("feed_filenames: `{name}` must be a plain file name"),
                ));
            }
        }
        Ok(config)
    }

    /// `base_url` joined with a site path (`/blog/` or `blog/`), the way Zola builds
    /// permalinks.
    pub fn make_permalink(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("{}/{}", self.base_url, path)
    }
}
