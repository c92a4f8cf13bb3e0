//! Orchestration: load → Markdown (parallel) → templates (parallel) → feeds, sitemap,
//! robots, aliases, 404 → write to a temp folder → swap it in.
//!
//! Every rendered file is first collected in memory as `(relative path, bytes)`; nothing
//! touches `out_dir` until the whole site rendered, so a template error leaves the last good
//! site in place.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rayon::prelude::*;
use serde_json::{Map, Value, json};

use crate::config::Config;
use crate::content::{self, Library, Page, Section};
use crate::error::SiteError;
use crate::markdown::{self, MarkdownContext};
use crate::output::Staging;
use crate::taxonomy::{self, Taxonomy, Term};
use crate::templates::{FunctionData, LazySection, LazyTaxonomy, Templates};
use crate::{BuildOptions, BuildReport};

/// One file to write: path relative to the output folder, and its content.
pub(crate) struct OutFile {
    /// Path relative to the output folder, `/`-separated: `blog/post/index.html`.
    pub rel: String,
    /// The rendered text.
    pub content: String,
}

/// Serialized values shared by every render.
struct Values {
    config: Value,
    /// Page values without `lower`/`higher`, indexed like `Library::pages`; shared with
    /// the template functions.
    pages: Arc<Vec<Value>>,
}

/// Stage timings on stderr when `SKYCHIMP_SITE_TIMINGS=1`, for finding where a slow build
/// spends its time without a profiler.
struct Timings(bool);

impl Timings {
    fn from_env() -> Self {
        Timings(std::env::var_os("SKYCHIMP_SITE_TIMINGS").is_some_and(|v| v == "1"))
    }
    fn mark(&self, stage: &str, started: Instant) {
        if self.0 {
            eprintln!(
                "skychimp-site: {stage} done at {:.3} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
}

/// Builds the site. See [`crate::build`].
pub(crate) fn build(opts: &BuildOptions) -> Result<BuildReport, SiteError> {
    let started = Instant::now();
    let (config, library) = load(opts)?;
    build_loaded(opts, config, library, started)
}

/// The load stage alone: config and content, validated, nothing rendered.
pub(crate) fn load(opts: &BuildOptions) -> Result<(Config, Library), SiteError> {
    let config = Config::load(&opts.site_dir, opts.base_url.as_deref())?;
    let library = content::load(&opts.site_dir, &config)?;
    Ok((config, library))
}

/// The content-relative paths of a section's pages, in its sort order.
pub(crate) fn section_pages(
    library: &Library,
    site_dir: &Path,
    section: &str,
) -> Result<Vec<String>, SiteError> {
    let key = format!("{}/_index.md", section.trim_matches('/'));
    let Some(&i) = library.section_index.get(&key) else {
        return Err(SiteError::invalid(
            &site_dir.join("content").join(&key),
            format!("no section `{section}`: this file does not exist"),
        ));
    };
    Ok(library.sections[i]
        .pages
        .iter()
        .map(|&p| library.pages[p].relative_path.clone())
        .collect())
}

/// Every stage after loading; `started` is when the caller began, for the report.
pub(crate) fn build_loaded(
    opts: &BuildOptions,
    config: Config,
    mut library: Library,
    started: Instant,
) -> Result<BuildReport, SiteError> {
    let timings = Timings::from_env();
    let site_dir = &opts.site_dir;
    let permalinks = Arc::new(library.permalinks());

    timings.mark("load", started);
    render_markdown(&config, &permalinks, &mut library)?;
    timings.mark("markdown", started);
    let taxonomies = taxonomy::collect(&config, &library);

    let values = Values {
        config: to_value(&config),
        pages: Arc::new(
            library
                .pages
                .par_iter()
                .map(|p| page_value(p, &config, &library))
                .collect(),
        ),
    };

    timings.mark("serialize pages", started);
    let mut templates = Templates::load(site_dir)?;
    let data = function_data(&config, &library, &values, &taxonomies, &permalinks);
    templates.register(site_dir, &config.markdown, data)?;

    timings.mark("templates + function data", started);
    let staging = Staging::new(&opts.out_dir, &site_dir.join("static"))?;
    let renderer = Renderer {
        config: &config,
        library: &library,
        values: &values,
        templates: &templates,
        staging: &staging,
    };
    renderer.render_all(&taxonomies)?;
    timings.mark("render + write", started);

    let mut copies: Vec<(PathBuf, String)> = Vec::new();
    for page in &library.pages {
        for asset in &page.assets {
            let name = asset
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            copies.push((
                asset.clone(),
                format!("{}{}", page.path.trim_start_matches('/'), name),
            ));
        }
    }
    let content_dir = site_dir.join("content");
    for section in &library.sections {
        for asset in &section.assets {
            let rel = asset.strip_prefix(&content_dir).unwrap_or(asset);
            let rel = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            copies.push((asset.clone(), rel));
        }
    }
    staging.copy(&copies)?;
    let written = staging.commit()?;

    timings.mark("write + swap", started);
    Ok(BuildReport {
        pages: library.pages.len(),
        sections: library.sections.len(),
        taxonomy_terms: taxonomies.iter().map(|t| t.terms.len()).sum(),
        files_written: written,
        elapsed: started.elapsed(),
    })
}

fn render_markdown(
    config: &Config,
    permalinks: &HashMap<String, String>,
    library: &mut Library,
) -> Result<(), SiteError> {
    let ctx = MarkdownContext {
        config: &config.markdown,
        permalinks,
    };
    library.pages.par_iter_mut().try_for_each(|p| {
        p.rendered = markdown::render(
            &ctx,
            &p.file,
            p.body_line_offset,
            &p.raw_content,
            &p.permalink,
        )?;
        Ok::<(), SiteError>(())
    })?;
    library.sections.par_iter_mut().try_for_each(|s| {
        s.rendered = markdown::render(
            &ctx,
            &s.file,
            s.body_line_offset,
            &s.raw_content,
            &s.permalink,
        )?;
        Ok::<(), SiteError>(())
    })?;
    check_anchors(library)
}

/// `@/page.md#anchor` must name a heading of that page, as Zola checks.
fn check_anchors(library: &Library) -> Result<(), SiteError> {
    let sources = library
        .pages
        .iter()
        .map(|p| (&p.file, &p.rendered))
        .chain(library.sections.iter().map(|s| (&s.file, &s.rendered)));
    let mut ids_cache: HashMap<&str, std::collections::HashSet<String>> = HashMap::new();
    for (file, rendered) in sources {
        for (target, anchor, line) in &rendered.anchor_links {
            let ids = ids_cache.entry(target.as_str()).or_insert_with(|| {
                let mut ids = std::collections::HashSet::new();
                ids.insert("continue-reading".to_string());
                let toc = library
                    .page_index
                    .get(target)
                    .map(|&i| &library.pages[i].rendered.toc)
                    .or_else(|| {
                        library
                            .section_index
                            .get(target)
                            .map(|&i| &library.sections[i].rendered.toc)
                    });
                if let Some(toc) = toc {
                    markdown::heading_ids(toc, &mut ids);
                }
                ids
            });
            if !ids.contains(anchor) {
                return Err(SiteError::invalid_at(
                    file,
                    *line,
                    format!(
                        "broken internal link `@/{target}#{anchor}`: content/{target} has no heading with id `{anchor}`"
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Serializing our own plain structs into JSON cannot fail (string keys, no floats NaN).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// A page as Zola serializes it for templates (without `lower`/`higher`).
fn page_value(page: &Page, config: &Config, library: &Library) -> Value {
    let parent = library
        .section_index
        .get(&page.parent_section)
        .map(|&i| &library.sections[i]);
    let mut ancestors: Vec<String> = parent.map(|s| s.ancestors.clone()).unwrap_or_default();
    if let Some(s) = parent {
        ancestors.push(s.relative_path.clone());
    }
    let date = page.date.as_ref();
    let assets: Vec<String> = page
        .assets
        .iter()
        .filter_map(|a| {
            a.file_name()
                .map(|n| format!("{}{}", page.path, n.to_string_lossy()))
        })
        .collect();
    json!({
        "relative_path": page.relative_path,
        "colocated_path": page.colocated_path,
        "content": page.rendered.content,
        "permalink": page.permalink,
        "slug": page.slug,
        "ancestors": ancestors,
        "title": page.meta.title,
        "description": page.meta.description,
        "updated": page.updated.as_ref().map(|d| d.text.clone()),
        "date": date.map(|d| d.text.clone()),
        "year": date.map(|d| chrono::Datelike::year(&d.value)),
        "month": date.map(|d| chrono::Datelike::month(&d.value)),
        "day": date.map(|d| chrono::Datelike::day(&d.value)),
        "taxonomies": page.meta.taxonomies,
        "authors": page.meta.authors,
        "extra": page.meta.extra,
        "path": page.path,
        "components": components(&page.path),
        "summary": page.rendered.summary,
        "toc": page.rendered.toc,
        "word_count": page.rendered.word_count,
        "reading_time": page.rendered.reading_time,
        "assets": assets,
        "draft": false,
        "lang": config.default_language,
        "weight": page.meta.weight,
        "translations": [],
        "backlinks": [],
    })
}

/// A section as Zola serializes it; `pages` holds the given page values.
fn section_value(
    section: &Section,
    config: &Config,
    library: &Library,
    pages: Vec<Value>,
) -> Value {
    let subsections: Vec<&str> = section
        .subsections
        .iter()
        .map(|&i| library.sections[i].relative_path.as_str())
        .collect();
    let assets: Vec<String> = section
        .assets
        .iter()
        .filter_map(|a| {
            a.file_name()
                .map(|n| format!("{}{}", section.path, n.to_string_lossy()))
        })
        .collect();
    json!({
        "relative_path": section.relative_path,
        "colocated_path": section.relative_path.trim_end_matches("_index.md"),
        "content": section.rendered.content,
        "permalink": section.permalink,
        "draft": false,
        "ancestors": section.ancestors,
        "title": section.meta.title,
        "description": section.meta.description,
        "extra": section.meta.extra,
        "path": section.path,
        "components": components(&section.path),
        "toc": section.rendered.toc,
        "word_count": section.rendered.word_count,
        "reading_time": section.rendered.reading_time,
        "lang": config.default_language,
        "assets": assets,
        "pages": pages,
        "subsections": subsections,
        "translations": [],
        "backlinks": [],
        "generate_feeds": section.meta.generate_feeds,
        "transparent": section.meta.transparent,
        "paginate_by": section.meta.paginate_by,
        "paginate_reversed": section.meta.paginate_reversed,
    })
}

fn term_value(term: &Term, values: &Values, pages: Option<&[usize]>) -> Value {
    let list: Vec<Value> = pages
        .unwrap_or(&term.pages)
        .iter()
        .map(|&i| values.pages[i].clone())
        .collect();
    json!({
        "name": term.name,
        "slug": term.slug,
        "path": term.path,
        "permalink": term.permalink,
        "pages": list,
        "page_count": term.pages.len(),
    })
}

fn function_data(
    config: &Config,
    library: &Library,
    values: &Values,
    taxonomies: &[Taxonomy],
    permalinks: &Arc<HashMap<String, String>>,
) -> FunctionData {
    let sections = library
        .sections
        .iter()
        .map(|s| {
            let lazy = LazySection {
                meta: section_value(s, config, library, Vec::new()),
                pages: s.pages.clone(),
                full: OnceLock::new(),
            };
            (s.relative_path.clone(), lazy)
        })
        .collect();
    let mut tax_values = HashMap::new();
    let mut term_urls = HashMap::new();
    for tax in taxonomies {
        let terms = tax
            .terms
            .iter()
            .map(|t| (term_value(t, values, Some(&[])), t.pages.clone()))
            .collect();
        tax_values.insert(
            tax.config.name.clone(),
            LazyTaxonomy {
                head: json!({ "kind": tax.config, "lang": config.default_language, "permalink": tax.permalink }),
                terms,
                full: OnceLock::new(),
            },
        );
        term_urls.insert(
            tax.config.name.clone(),
            tax.terms
                .iter()
                .map(|t| (t.slug.clone(), t.permalink.clone()))
                .collect(),
        );
    }
    FunctionData {
        base_url: config.base_url.clone(),
        permalinks: permalinks.clone(),
        page_values: values.pages.clone(),
        page_index: library.page_index.clone(),
        sections,
        taxonomies: tax_values,
        term_urls,
    }
}

/// Path of the output file for a site path: `/blog/` → `blog/index.html`.
fn index_file(path: &str) -> String {
    let p = path.trim_start_matches('/');
    if p.is_empty() {
        "index.html".to_string()
    } else if p.ends_with('/') {
        format!("{p}index.html")
    } else {
        format!("{p}/index.html")
    }
}

/// One pager of a paginated list.
struct Pager {
    index: usize,
    path: String,
    permalink: String,
    pages: Vec<usize>,
}

fn paginate(
    config: &Config,
    base_path: &str,
    paginate_path: &str,
    pages: &[usize],
    by: usize,
    reversed: bool,
) -> Vec<Pager> {
    let mut list: Vec<usize> = pages.to_vec();
    if reversed {
        list.reverse();
    }
    let chunks: Vec<Vec<usize>> = if list.is_empty() {
        vec![Vec::new()]
    } else {
        list.chunks(by).map(<[usize]>::to_vec).collect()
    };
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, pages)| {
            let index = i + 1;
            let path = if index == 1 {
                base_path.to_string()
            } else {
                format!("{base_path}{paginate_path}/{index}/")
            };
            Pager {
                index,
                permalink: config.make_permalink(&path),
                path,
                pages,
            }
        })
        .collect()
}

struct Renderer<'a> {
    staging: &'a Staging,
    config: &'a Config,
    library: &'a Library,
    values: &'a Values,
    templates: &'a Templates,
}

impl Renderer<'_> {
    fn context(&self, path: &str, extra: Vec<(&str, Value)>) -> Result<tera::Context, SiteError> {
        let mut map = Map::new();
        map.insert("config".into(), self.values.config.clone());
        map.insert("current_path".into(), Value::String(path.to_string()));
        map.insert(
            "current_url".into(),
            Value::String(self.config.make_permalink(path)),
        );
        map.insert(
            "lang".into(),
            Value::String(self.config.default_language.clone()),
        );
        for (k, v) in extra {
            map.insert(k.to_string(), v);
        }
        tera::Context::from_value(Value::Object(map)).map_err(|e| SiteError::Template {
            location: crate::error::Location::file("<context>"),
            message: e.to_string(),
        })
    }

    fn require_template(&self, name: &str, wanted_by: &Path) -> Result<(), SiteError> {
        if self.templates.has(name) {
            Ok(())
        } else {
            Err(crate::content::invalid_key(
                wanted_by,
                "template",
                format!("template `{name}` not found in templates/"),
            ))
        }
    }

    /// Renders every output and writes each as soon as it exists.
    fn render_all(&self, taxonomies: &[Taxonomy]) -> Result<(), SiteError> {
        let t = Timings::from_env();
        let started = Instant::now();
        let config_file = Path::new("config.toml");
        self.library
            .pages
            .par_iter()
            .enumerate()
            .try_for_each(|(i, p)| self.staging.write(self.render_page(i, p)?, &p.file))?;
        t.mark("  pages", started);
        self.library
            .sections
            .par_iter()
            .try_for_each(|s| self.staging.write(self.render_section(s)?, &s.file))?;
        t.mark("  sections", started);
        for tax in taxonomies {
            self.staging
                .write(self.render_taxonomy(tax)?, config_file)?;
        }
        t.mark("  taxonomies", started);
        self.staging
            .write(self.render_feeds(taxonomies)?, config_file)?;
        t.mark("  feeds", started);
        let mut files = vec![self.render_404()?];
        if self.config.generate_robots_txt {
            let name = if self.templates.has("robots.txt") {
                "robots.txt"
            } else {
                "__zola_builtins/robots.txt"
            };
            let ctx = self.context("/robots.txt", vec![])?;
            files.push(OutFile {
                rel: "robots.txt".into(),
                content: self.templates.render(name, &ctx)?,
            });
        }
        if self.config.generate_sitemap {
            files.push(self.render_sitemap(taxonomies)?);
        }
        self.staging.write(files, config_file)
    }

    fn redirect(&self, rel: String, url: &str) -> Result<OutFile, SiteError> {
        let mut ctx = tera::Context::new();
        ctx.insert("url", url);
        Ok(OutFile {
            rel,
            content: self.templates.render("internal/alias.html", &ctx)?,
        })
    }

    fn alias_files(&self, aliases: &[String], target: &str) -> Result<Vec<OutFile>, SiteError> {
        aliases
            .iter()
            .map(|alias| {
                let a = alias.trim_start_matches('/');
                let rel = if a.ends_with(".html") || a.ends_with(".htm") {
                    a.to_string()
                } else {
                    index_file(a)
                };
                self.redirect(rel, target)
            })
            .collect()
    }

    fn page_template(&self, page: &Page) -> String {
        if let Some(t) = &page.meta.template {
            return t.clone();
        }
        // The nearest section (then its ancestors) with a `page_template`.
        let mut chain: Vec<&str> = Vec::new();
        if let Some(&i) = self.library.section_index.get(&page.parent_section) {
            let s = &self.library.sections[i];
            chain.push(&s.relative_path);
            chain.extend(s.ancestors.iter().rev().map(String::as_str));
        }
        for rel in chain {
            if let Some(&i) = self.library.section_index.get(rel)
                && let Some(t) = &self.library.sections[i].meta.page_template
            {
                return t.clone();
            }
        }
        "page.html".to_string()
    }

    fn render_page(&self, index: usize, page: &Page) -> Result<Vec<OutFile>, SiteError> {
        let template = self.page_template(page);
        self.require_template(&template, &page.file)?;
        let mut value = self.values.pages[index].clone();
        // lower/higher: neighbours in the parent section's sorted list.
        if let Some(&si) = self.library.section_index.get(&page.parent_section) {
            let section = &self.library.sections[si];
            if let Some(pos) = section.pages.iter().position(|&p| p == index) {
                let prev = pos.checked_sub(1).map(|p| section.pages[p]);
                let next = section.pages.get(pos + 1).copied();
                let by_date = matches!(section.meta.sort_by.as_str(), "date" | "update_date");
                let (lower, higher) = if by_date { (next, prev) } else { (prev, next) };
                if let Value::Object(map) = &mut value {
                    map.insert(
                        "lower".into(),
                        lower
                            .map(|i| self.values.pages[i].clone())
                            .unwrap_or(Value::Null),
                    );
                    map.insert(
                        "higher".into(),
                        higher
                            .map(|i| self.values.pages[i].clone())
                            .unwrap_or(Value::Null),
                    );
                }
            }
        }
        if let Value::Object(map) = &mut value {
            map.entry("lower").or_insert(Value::Null);
            map.entry("higher").or_insert(Value::Null);
        }
        let ctx = self.context(&page.path, vec![("page", value)])?;
        let html = self
            .templates
            .render(&template, &ctx)
            .map_err(|e| with_content(e, &page.file))?;
        let mut out = vec![OutFile {
            rel: index_file(&page.path),
            content: html,
        }];
        out.extend(self.alias_files(&page.meta.aliases, &page.permalink)?);
        Ok(out)
    }

    fn render_section(&self, section: &Section) -> Result<Vec<OutFile>, SiteError> {
        let mut out = self.alias_files(&section.meta.aliases, &section.permalink)?;
        if let Some(target) = &section.meta.redirect_to {
            let url = if target.starts_with("http://") || target.starts_with("https://") {
                target.clone()
            } else {
                self.config.make_permalink(target)
            };
            out.push(self.redirect(index_file(&section.path), &url)?);
            return Ok(out);
        }
        if !section.meta.render {
            return Ok(out);
        }
        let template = match &section.meta.template {
            Some(t) => t.clone(),
            None if section.relative_path == "_index.md" => "index.html".to_string(),
            None => "section.html".to_string(),
        };
        self.require_template(&template, &section.file)?;
        let page_values = |list: &[usize]| -> Vec<Value> {
            list.iter().map(|&i| self.values.pages[i].clone()).collect()
        };

        match section.meta.paginate_by.filter(|&n| n > 0) {
            None => {
                let value = section_value(
                    section,
                    self.config,
                    self.library,
                    page_values(&section.pages),
                );
                let ctx = self.context(&section.path, vec![("section", value)])?;
                let html = self
                    .templates
                    .render(&template, &ctx)
                    .map_err(|e| with_content(e, &section.file))?;
                out.push(OutFile {
                    rel: index_file(&section.path),
                    content: html,
                });
            }
            Some(by) => {
                let pagers = paginate(
                    self.config,
                    &section.path,
                    &section.meta.paginate_path,
                    &section.pages,
                    by,
                    section.meta.paginate_reversed,
                );
                let meta = section_value(section, self.config, self.library, Vec::new());
                let base_url = self
                    .config
                    .make_permalink(&format!("{}{}/", section.path, section.meta.paginate_path));
                let rendered: Vec<OutFile> = pagers
                    .par_iter()
                    .map(|pager| {
                        let paginator = paginator_value(
                            &pagers,
                            pager,
                            by,
                            &base_url,
                            section.pages.len(),
                            page_values(&pager.pages),
                        );
                        let ctx = self.context(
                            &pager.path,
                            vec![("section", meta.clone()), ("paginator", paginator)],
                        )?;
                        let html = self
                            .templates
                            .render(&template, &ctx)
                            .map_err(|e| with_content(e, &section.file))?;
                        Ok(OutFile {
                            rel: index_file(&pager.path),
                            content: html,
                        })
                    })
                    .collect::<Result<_, SiteError>>()?;
                out.extend(rendered);
                // `/blog/page/1/` redirects to `/blog/`, as in Zola.
                out.push(self.redirect(
                    index_file(&format!(
                        "{}{}/1/",
                        section.path, section.meta.paginate_path
                    )),
                    &section.permalink,
                )?);
            }
        }
        Ok(out)
    }

    fn render_taxonomy(&self, tax: &Taxonomy) -> Result<Vec<OutFile>, SiteError> {
        if !tax.config.render {
            return Ok(Vec::new());
        }
        let config_file = Path::new("config.toml");
        let pick = |specific: String, generic: &str| -> Result<String, SiteError> {
            if self.templates.has(&specific) {
                Ok(specific)
            } else if self.templates.has(generic) {
                Ok(generic.to_string())
            } else {
                Err(SiteError::invalid(
                    config_file,
                    format!(
                        "taxonomy `{}` needs templates/{specific} or templates/{generic}",
                        tax.config.name
                    ),
                ))
            }
        };
        let list_tpl = pick(
            format!("{}/list.html", tax.config.name),
            "taxonomy_list.html",
        )?;
        let single_tpl = pick(
            format!("{}/single.html", tax.config.name),
            "taxonomy_single.html",
        )?;
        let tax_value = to_value(&tax.config);
        // Term values hold copies of their pages; on a large blog copying them dominates the
        // build. An unpaginated term's value is built once, lent to its page's context, taken
        // back, and then handed to the list page.
        let singles: Vec<(Vec<OutFile>, Value)> = tax
            .terms
            .par_iter()
            .map(|term| -> Result<(Vec<OutFile>, Value), SiteError> {
                match tax.config.paginate_by {
                    None => {
                        let mut ctx = self.context(
                            &term.path,
                            vec![
                                ("taxonomy", tax_value.clone()),
                                ("term", term_value(term, self.values, None)),
                            ],
                        )?;
                        let file = OutFile {
                            rel: index_file(&term.path),
                            content: self.templates.render(&single_tpl, &ctx)?,
                        };
                        let value = ctx
                            .remove("term")
                            .unwrap_or_else(|| term_value(term, self.values, None));
                        Ok((vec![file], value))
                    }
                    Some(by) => {
                        let pp = tax.config.paginate_path();
                        let pagers = paginate(self.config, &term.path, pp, &term.pages, by, false);
                        let base_url = self.config.make_permalink(&format!("{}{}/", term.path, pp));
                        let empty: &[usize] = &[];
                        let mut files = Vec::new();
                        for pager in &pagers {
                            let pages = pager
                                .pages
                                .iter()
                                .map(|&i| self.values.pages[i].clone())
                                .collect();
                            let paginator = paginator_value(
                                &pagers,
                                pager,
                                by,
                                &base_url,
                                term.pages.len(),
                                pages,
                            );
                            let ctx = self.context(
                                &pager.path,
                                vec![
                                    ("taxonomy", tax_value.clone()),
                                    ("term", term_value(term, self.values, Some(empty))),
                                    ("paginator", paginator),
                                ],
                            )?;
                            files.push(OutFile {
                                rel: index_file(&pager.path),
                                content: self.templates.render(&single_tpl, &ctx)?,
                            });
                        }
                        files.push(self.redirect(
                            index_file(&format!("{}{pp}/1/", term.path)),
                            &term.permalink,
                        )?);
                        Ok((files, term_value(term, self.values, None)))
                    }
                }
            })
            .collect::<Result<_, _>>()?;
        let mut out = Vec::new();
        let mut terms = Vec::with_capacity(singles.len());
        for (files, value) in singles {
            out.extend(files);
            terms.push(value);
        }
        let ctx = self.context(
            &tax.path,
            vec![("taxonomy", tax_value), ("terms", Value::Array(terms))],
        )?;
        out.push(OutFile {
            rel: index_file(&tax.path),
            content: self.templates.render(&list_tpl, &ctx)?,
        });
        Ok(out)
    }

    /// Pages with a date, newest first, up to `feed_limit`.
    fn feed_pages(&self, list: &[usize]) -> (Vec<Value>, Option<String>) {
        let mut dated: Vec<usize> = list
            .iter()
            .copied()
            .filter(|&i| self.library.pages[i].date.is_some())
            .collect();
        dated.sort_by(|&a, &b| {
            let (pa, pb) = (&self.library.pages[a], &self.library.pages[b]);
            let key = |p: &Page| p.date.as_ref().map(|d| d.value);
            key(pb)
                .cmp(&key(pa))
                .then_with(|| pa.permalink.cmp(&pb.permalink))
        });
        if let Some(limit) = self.config.feed_limit {
            dated.truncate(limit);
        }
        let last_updated = dated
            .iter()
            .filter_map(|&i| {
                let p = &self.library.pages[i];
                p.updated.as_ref().or(p.date.as_ref())
            })
            .max_by_key(|d| d.value)
            .map(|d| d.text.clone());
        (
            dated
                .iter()
                .map(|&i| self.values.pages[i].clone())
                .collect(),
            last_updated,
        )
    }

    fn feed_files(
        &self,
        dir_path: &str,
        list: &[usize],
        extra: Vec<(&str, Value)>,
    ) -> Result<Vec<OutFile>, SiteError> {
        let (pages, last_updated) = self.feed_pages(list);
        let mut out = Vec::new();
        for name in &self.config.feed_filenames {
            let template = if self.templates.has(name) {
                name.clone()
            } else if name == "atom.xml" || name == "rss.xml" {
                format!("__zola_builtins/{name}")
            } else {
                return Err(SiteError::invalid(
                    Path::new("config.toml"),
                    format!(
                        "feed_filenames: `{name}` has no built-in template; add templates/{name}"
                    ),
                ));
            };
            let path = format!("{dir_path}{name}");
            let mut vars = extra.clone();
            vars.push(("pages", Value::Array(pages.clone())));
            vars.push(("feed_url", Value::String(self.config.make_permalink(&path))));
            if let Some(lu) = &last_updated {
                vars.push(("last_updated", Value::String(lu.clone())));
            }
            let ctx = self.context(&path, vars)?;
            out.push(OutFile {
                rel: path.trim_start_matches('/').to_string(),
                content: self.templates.render(&template, &ctx)?,
            });
        }
        Ok(out)
    }

    fn render_feeds(&self, taxonomies: &[Taxonomy]) -> Result<Vec<OutFile>, SiteError> {
        let mut out = Vec::new();
        if self.config.generate_feeds {
            let all: Vec<usize> = (0..self.library.pages.len()).collect();
            out.extend(self.feed_files("/", &all, vec![])?);
        }
        for section in &self.library.sections {
            if section.meta.generate_feeds {
                let value = section_value(section, self.config, self.library, Vec::new());
                out.extend(self.feed_files(
                    &section.path,
                    &section.pages,
                    vec![("section", value)],
                )?);
            }
        }
        for tax in taxonomies {
            if tax.config.feed && tax.config.render {
                for term in &tax.terms {
                    let value = term_value(term, self.values, Some(&[]));
                    out.extend(self.feed_files(&term.path, &term.pages, vec![("term", value)])?);
                }
            }
        }
        Ok(out)
    }

    fn render_404(&self) -> Result<OutFile, SiteError> {
        let name = if self.templates.has("404.html") {
            "404.html"
        } else {
            "__zola_builtins/404.html"
        };
        let ctx = self.context("/404.html", vec![])?;
        Ok(OutFile {
            rel: "404.html".into(),
            content: self.templates.render(name, &ctx)?,
        })
    }

    fn render_sitemap(&self, taxonomies: &[Taxonomy]) -> Result<OutFile, SiteError> {
        let mut entries: Vec<(String, Option<String>)> = Vec::new();
        for p in &self.library.pages {
            let updated = p
                .updated
                .as_ref()
                .or(p.date.as_ref())
                .map(|d| d.value.format("%Y-%m-%d").to_string());
            entries.push((p.permalink.clone(), updated));
        }
        for s in &self.library.sections {
            if !s.meta.render || s.meta.redirect_to.is_some() {
                continue;
            }
            entries.push((s.permalink.clone(), None));
            if let Some(by) = s.meta.paginate_by.filter(|&n| n > 0) {
                let n = s.pages.len().div_ceil(by).max(1);
                for i in 2..=n {
                    entries.push((
                        self.config
                            .make_permalink(&format!("{}{}/{i}/", s.path, s.meta.paginate_path)),
                        None,
                    ));
                }
            }
        }
        for tax in taxonomies.iter().filter(|t| t.config.render) {
            entries.push((tax.permalink.clone(), None));
            for term in &tax.terms {
                entries.push((term.permalink.clone(), None));
                if let Some(by) = tax.config.paginate_by {
                    let n = term.pages.len().div_ceil(by).max(1);
                    for i in 2..=n {
                        entries.push((
                            self.config.make_permalink(&format!(
                                "{}{}/{i}/",
                                term.path,
                                tax.config.paginate_path()
                            )),
                            None,
                        ));
                    }
                }
            }
        }
        entries.sort();
        entries.dedup_by(|a, b| a.0 == b.0);
        let entries: Vec<Value> = entries
            .into_iter()
            .map(|(permalink, updated)| json!({ "permalink": permalink, "updated": updated, "extra": null }))
            .collect();
        let name = if self.templates.has("sitemap.xml") {
            "sitemap.xml"
        } else {
            "__zola_builtins/sitemap.xml"
        };
        let ctx = self.context("/sitemap.xml", vec![("entries", Value::Array(entries))])?;
        Ok(OutFile {
            rel: "sitemap.xml".into(),
            content: self.templates.render(name, &ctx)?,
        })
    }
}

fn paginator_value(
    pagers: &[Pager],
    pager: &Pager,
    by: usize,
    base_url: &str,
    total_pages: usize,
    pages: Vec<Value>,
) -> Value {
    let i = pager.index - 1;
    json!({
        "paginate_by": by,
        "base_url": base_url,
        "number_pagers": pagers.len(),
        "first": pagers.first().map(|p| p.permalink.clone()),
        "last": pagers.last().map(|p| p.permalink.clone()),
        "previous": i.checked_sub(1).map(|j| pagers[j].permalink.clone()),
        "next": pagers.get(i + 1).map(|p| p.permalink.clone()),
        "pages": pages,
        "current_index": pager.index,
        "total_pages": total_pages,
    })
}

/// Adds the content file being rendered to a template error, so both are named.
fn with_content(err: SiteError, content_file: &Path) -> SiteError {
    match err {
        SiteError::Template { location, message } => SiteError::Template {
            location,
            message: format!("{message} (while rendering {})", content_file.display()),
        },
        other => other,
    }
}
