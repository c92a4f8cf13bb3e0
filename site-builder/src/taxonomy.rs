//! Taxonomies: which pages carry which term, per taxonomy of `config.toml`.

use std::collections::BTreeMap;

use crate::config::{Config, TaxonomyConfig};
use crate::content::Library;

/// One term (`rust` in `tags`) and its pages.
#[derive(Debug)]
pub struct Term {
    /// The name as written in front matter (first spelling seen).
    pub name: String,
    /// The URL slug.
    pub slug: String,
    /// `/tags/rust/`.
    pub path: String,
    /// Absolute URL.
    pub permalink: String,
    /// Indices into `Library::pages`, newest first.
    pub pages: Vec<usize>,
}

/// A taxonomy with its terms, sorted by slug.
#[derive(Debug)]
pub struct Taxonomy {
    /// The config entry.
    pub config: TaxonomyConfig,
    /// `/tags/`.
    pub path: String,
    /// Absolute URL.
    pub permalink: String,
    /// Terms sorted by slug.
    pub terms: Vec<Term>,
}

/// Groups the library's pages by term. Terms that slugify alike are one term, as in Zola.
pub fn collect(config: &Config, library: &Library) -> Vec<Taxonomy> {
    config
        .taxonomies
        .iter()
        .map(|tax| {
            let path = format!("/{}/", tax.slug);
            let mut terms: BTreeMap<String, Term> = BTreeMap::new();
            for (i, page) in library.pages.iter().enumerate() {
                let Some(names) = page.meta.taxonomies.get(&tax.name) else {
                    continue;
                };
                for name in names {
                    let slug = slug::slugify(name);
                    let term = terms.entry(slug.clone()).or_insert_with(|| {
                        let term_path = format!("{path}{slug}/");
                        Term {
                            name: name.clone(),
                            permalink: config.make_permalink(&term_path),
                            path: term_path,
                            slug,
                            pages: Vec::new(),
                        }
                    });
                    if !term.pages.contains(&i) {
                        term.pages.push(i);
                    }
                }
            }
            let mut terms: Vec<Term> = terms.into_values().collect();
            for term in &mut terms {
                term.pages.sort_by(|&a, &b| {
                    let (pa, pb) = (&library.pages[a], &library.pages[b]);
                    let (da, db) = (
                        pa.date.as_ref().map(|d| d.value),
                        pb.date.as_ref().map(|d| d.value),
                    );
                    db.cmp(&da).then_with(|| pa.permalink.cmp(&pb.permalink))
                });
            }
            Taxonomy {
                config: tax.clone(),
                permalink: config.make_permalink(&path),
                path,
                terms,
            }
        })
        .collect()
}
