//! A Zola-compatible static site builder. It receives data values and knows nothing of
//! mailings.
//!
//! The site folder has Zola's layout (`config.toml`, `content/`, `templates/`, `static/`)
//! and the same folder builds with upstream `zola build`. The pipeline follows Zola's
//! stages, each in its own module:
//!
//! - `config`: `config.toml`;
//! - `content`: front matter, pages, sections, drafts, sorting (load only);
//! - `markdown`: pulldown-cmark rendering, summaries, `@/` links (parallel);
//! - `templates`: Tera 1.x with Zola's functions, filters and built-in templates;
//! - `site`: rendering every output (parallel), feeds, sitemap, aliases;
//! - `output`: writing to a temp folder and swapping it in.
//!
//! Anything the builder does not implement is an error naming the file, never a page that
//! silently differs from what Zola would produce.

mod config;
mod content;
mod error;
mod markdown;
mod output;
mod site;
mod stats;
mod taxonomy;
mod templates;
pub mod tera_names;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use error::{Location, SiteError};
pub use output::BUILD_MARKER;

/// What to build and where.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The site folder (holding `config.toml`).
    pub site_dir: PathBuf,
    /// Where the site goes. Replaced as a whole only after a successful build.
    pub out_dir: PathBuf,
    /// Overrides `base_url` of `config.toml` (e.g. for a local preview).
    pub base_url: Option<String>,
}

/// Counts of what a build produced, for logs and benchmarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildReport {
    /// Non-draft pages.
    pub pages: usize,
    /// Sections, the root included.
    pub sections: usize,
    /// Terms over all taxonomies.
    pub taxonomy_terms: usize,
    /// Files in the output folder (rendered, static and assets).
    pub files_written: usize,
    /// Wall-clock time of the build.
    pub elapsed: Duration,
}

/// Builds the site at `opts.site_dir` into `opts.out_dir`.
///
/// The output is written to a temp folder beside `out_dir` and renamed into place, so on
/// error the previous site stays as it was.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, SiteError> {
    site::build(opts)
}

/// Content-relative paths (`blog/post.md`) of the non-draft pages of a section
/// (`section` is the folder under `content/`, e.g. `blog`), in the section's sort order.
///
/// This lets a caller pick posts to feature and hand them to templates through a data file
/// read with `get_page`, which resolves the same paths.
pub fn blog_pages(site_dir: &Path, section: &str) -> Result<Vec<String>, SiteError> {
    let opts = BuildOptions {
        site_dir: site_dir.to_path_buf(),
        out_dir: PathBuf::new(),
        base_url: None,
    };
    let (_, library) = site::load(&opts)?;
    site::section_pages(&library, site_dir, section)
}

/// Adds three randomly picked posts of section `blog` to `stats` as `random_posts`, writes
/// the result to `site_dir/data/stats.json` atomically (temp file + rename) and builds.
///
/// `stats` must be a JSON object (the numbers the home page shows). The same `seed` picks
/// the same posts; `None` seeds from the clock.
pub fn write_stats_and_build(
    opts: &BuildOptions,
    stats: &serde_json::Value,
    seed: Option<u64>,
) -> Result<BuildReport, SiteError> {
    stats::write_stats_and_build(opts, stats, seed)
}
