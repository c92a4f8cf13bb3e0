//! Builds `tests/fixtures/full` (a site using every supported feature) and checks the files
//! a reader would get.

use std::path::{Path, PathBuf};

use skychimp_site::{BuildOptions, build};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/full")
}

struct Built {
    _tmp: tempfile::TempDir,
    out: PathBuf,
}

impl Built {
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.out.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
    fn exists(&self, rel: &str) -> bool {
        self.out.join(rel).exists()
    }
}

fn build_fixture() -> Built {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("public");
    let report = build(&BuildOptions {
        site_dir: fixture(),
        out_dir: out.clone(),
        base_url: None,
    })
    .unwrap_or_else(|e| panic!("fixture build failed: {e}"));
    // 11 non-draft pages: about, first, second, third, bundle, old, docs a/b, guide intro,
    // hidden/visible, notes/misc.
    assert_eq!(report.pages, 11, "{report:?}");
    // root, blog, blog/archive, docs, docs/guide, hidden, moved
    assert_eq!(report.sections, 7, "{report:?}");
    assert_eq!(report.taxonomy_terms, 3, "{report:?}"); // rust, git, news
    Built { _tmp: tmp, out }
}

#[test]
fn drafts_are_left_out_everywhere() {
    let site = build_fixture();
    assert!(!site.exists("blog/draft/index.html"));
    assert!(!site.exists("tags/draft-only/index.html"));
    // A draft bundle's files are not published either.
    assert!(!site.exists("blog/secret-bundle/secret.txt"));
    assert!(!site.exists("blog/secret-bundle/index.html"));
    for file in [
        "sitemap.xml",
        "atom.xml",
        "rss.xml",
        "blog/page/2/index.html",
        "index.html",
    ] {
        let text = site.read(file);
        assert!(
            !text.contains("Secret draft") && !text.contains("/blog/draft/"),
            "{file} mentions the draft"
        );
    }
}

#[test]
fn pagination_links_and_redirect() {
    let site = build_fixture();
    // 5 dated pages in blog (archive is transparent), 2 per pager: 3 pagers.
    let p1 = site.read("blog/index.html");
    assert!(p1.contains("pager 1/3 total=5"), "{p1}");
    assert!(
        p1.contains(
            r#"class="next" href="https:&#x2F;&#x2F;example.org&#x2F;blog&#x2F;page&#x2F;2&#x2F;""#
        ),
        "{p1}"
    );
    assert!(!p1.contains("class=\"prev\""));
    // Newest first: third (from file name date), then second.
    let third = p1.find("Third post").expect("third on pager 1");
    let second = p1.find("Second post").expect("second on pager 1");
    assert!(third < second);

    let p2 = site.read("blog/page/2/index.html");
    assert!(p2.contains("pager 2/3"), "{p2}");
    assert!(
        p2.contains(r#"class="prev" href="https:&#x2F;&#x2F;example.org&#x2F;blog&#x2F;""#),
        "{p2}"
    );
    assert!(
        p2.contains(
            r#"class="next" href="https:&#x2F;&#x2F;example.org&#x2F;blog&#x2F;page&#x2F;3&#x2F;""#
        ),
        "{p2}"
    );
    let p3 = site.read("blog/page/3/index.html");
    assert!(
        p3.contains("Old post"),
        "transparent section's page is listed in blog: {p3}"
    );
    assert!(!p3.contains("class=\"next\""));
    let redirect = site.read("blog/page/1/index.html");
    assert!(
        redirect.contains(r#"url=https://example.org/blog/""#),
        "{redirect}"
    );
}

#[test]
fn summaries_reading_time_toc_and_links() {
    let site = build_fixture();
    let p2 = site.read("blog/page/2/index.html");
    // first post's summary is on pager 2, cut at <!-- more -->.
    let summary_start = p2.find("class=\"summary\"").expect("summary rendered");
    let summary = &p2[summary_start..];
    let summary = &summary[..summary.find("</div>").expect("summary end")];
    assert!(summary.contains("This is the summary part"), "{summary}");
    assert!(!summary.contains("Body text after"), "{summary}");

    let first = site.read("blog/first/index.html");
    assert!(first.contains("words=42 minutes=1"), "{first}");
    assert!(first.contains("date=2026-01-01 year=2026"), "{first}");
    assert!(first.contains("mood=happy"));
    assert!(first.contains(r#"<span id="continue-reading"></span>"#));
    assert!(first.contains(r#"<h2 id="why-git">"#) && first.contains(r#"<h2 id="why-git-1">"#));
    assert!(
        first.contains(r##"<a class="child" href="#details">Details</a>"##),
        "{first}"
    );
    // @/ link resolved, internal (no target), external link gets the [markdown] options.
    assert!(
        first.contains(r#"<a href="https://example.org/blog/second/">link to second</a>"#),
        "{first}"
    );
    assert!(
        first.contains(
            r#"<a href="https://example.com/x" target="_blank" rel="noopener nofollow">"#
        )
    );
    // smart punctuation
    assert!(first.contains("“Quotes”") && first.contains("curly…"));
    // lower = older, higher = newer in a date-sorted section.
    assert!(
        first.contains(
            r#"class="lower" href="https:&#x2F;&#x2F;example.org&#x2F;blog&#x2F;bundled&#x2F;""#
        ),
        "{first}"
    );
    assert!(
        first.contains(
            r#"class="higher" href="https:&#x2F;&#x2F;example.org&#x2F;blog&#x2F;second&#x2F;""#
        ),
        "{first}"
    );

    let about = site.read("about/index.html");
    assert!(
        about.contains(r#"href="https://example.org/blog/first/#why-git""#),
        "{about}"
    );
}

#[test]
fn templates_functions_and_load_data() {
    let site = build_fixture();
    let index = site.read("index.html");
    for expected in [
        "json-count=42",
        "toml-owner=toml-owner",
        "csv=[alice:10][bob, jr:20] headers=name|score",
        "no-missing-data",
        "get_page=Second post",
        "get_section=Blog pages=5",
        "meta-pages=0",
        "git(1) Rust(2)",
        "https://example.org/tags/rust/",
        "https://example.org/blog/first/|https://example.org/about/#x",
        r#"<em>emph</em> and <a href="https://example.org/about/">a</a>"#,
        "Root section extra",
        "Config extra works",
        r#"href="https://example.org/css/site.css""#,
        r#"data-current-path="&#x2F;""#,
    ] {
        assert!(
            index.contains(expected),
            "index.html lacks {expected:?}:\n{index}"
        );
    }
}

#[test]
fn templates_per_page_section_and_weight_sort() {
    let site = build_fixture();
    let docs = site.read("docs/index.html");
    let a = docs.find("Doc A").expect("doc a");
    let b = docs.find("Doc B").expect("doc b");
    assert!(a < b, "weight sort: {docs}");
    assert_eq!(site.read("docs/a/index.html").trim(), "PLAIN Doc A");
    // Nested section and a page in a folder without _index.md.
    assert!(
        site.read("docs/guide/intro/index.html")
            .contains(r#"href="https://example.org/docs/""#)
    );
    assert!(site.exists("docs/guide/index.html"));
    assert!(
        site.read("notes/misc/index.html")
            .contains("A page in a folder without _index.md.")
    );
    assert!(
        site.read("blog/second/index.html")
            .contains("<article class=\"post\">"),
        "page_template"
    );
    // render = false: no section page, but its pages are built.
    assert!(!site.exists("hidden/index.html"));
    assert!(
        site.read("hidden/visible/index.html")
            .contains("Still rendered.")
    );
    assert!(!site.exists("blog/archive/index.html"));
    // redirect_to
    assert!(
        site.read("moved/index.html")
            .contains("url=https://example.org/blog/")
    );
}

#[test]
fn taxonomies_with_specific_and_generic_templates() {
    let site = build_fixture();
    let list = site.read("tags/index.html");
    assert!(list.contains("All tags"), "{list}");
    assert!(
        list.contains(
            r#"<a href="https:&#x2F;&#x2F;example.org&#x2F;tags&#x2F;rust&#x2F;">Rust</a> (2)"#
        ),
        "{list}"
    );
    let rust = site.read("tags/rust/index.html");
    assert!(
        rust.contains("First post") && rust.contains("Second post"),
        "{rust}"
    );
    assert!(!rust.contains("Third post"));
    // categories use taxonomy_list.html / taxonomy_single.html, paginated by 1.
    assert_eq!(
        site.read("categories/index.html").trim(),
        "GENERIC LIST categories: news"
    );
    assert_eq!(
        site.read("categories/news/index.html").trim(),
        "GENERIC SINGLE categories/news pager 1/3: Third post"
    );
    assert_eq!(
        site.read("categories/news/page/3/index.html").trim(),
        "GENERIC SINGLE categories/news pager 3/3: First post"
    );
    // term feed (feed = true on tags)
    let feed = site.read("tags/rust/atom.xml");
    let doc = roxmltree::Document::parse(&feed).expect("term feed is XML");
    assert_eq!(
        doc.descendants()
            .filter(|n| n.has_tag_name("entry"))
            .count(),
        2
    );
}

#[test]
fn atom_rss_and_sitemap_parse_as_xml() {
    let site = build_fixture();
    let atom = site.read("atom.xml");
    let doc = roxmltree::Document::parse(&atom).expect("atom.xml is XML");
    let root = doc.root_element();
    assert_eq!(
        root.tag_name().namespace(),
        Some("http://www.w3.org/2005/Atom")
    );
    assert_eq!(root.tag_name().name(), "feed");
    for required in ["id", "title", "updated"] {
        assert!(
            root.children().any(|n| n.has_tag_name(required)),
            "feed lacks <{required}>"
        );
    }
    let entries: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("entry"))
        .collect();
    // Dated pages only: third, second, first, bundle, old.
    assert_eq!(entries.len(), 5);
    for e in &entries {
        for required in ["id", "title", "updated", "author"] {
            assert!(
                e.children().any(|n| n.has_tag_name(required)),
                "entry lacks <{required}>"
            );
        }
    }
    let first_id = entries[0]
        .children()
        .find(|n| n.has_tag_name("id"))
        .and_then(|n| n.text());
    assert_eq!(first_id, Some("https://example.org/blog/third/"));
    let updated = root
        .children()
        .find(|n| n.has_tag_name("updated"))
        .and_then(|n| n.text());
    assert_eq!(updated, Some("2026-03-01T00:00:00+00:00"));
    // The first post has a summary, so the feed carries it instead of the full content.
    let first = entries
        .iter()
        .find(|e| e.children().any(|n| n.text() == Some("First post")))
        .expect("first entry");
    assert!(first.children().any(|n| n.has_tag_name("summary")));

    let rss = site.read("rss.xml");
    let rss_doc = roxmltree::Document::parse(&rss).expect("rss.xml is XML");
    assert_eq!(
        rss_doc
            .descendants()
            .filter(|n| n.has_tag_name("item"))
            .count(),
        5
    );
    let section_feed = site.read("blog/atom.xml");
    roxmltree::Document::parse(&section_feed).expect("section feed is XML");

    let sitemap = site.read("sitemap.xml");
    let doc = roxmltree::Document::parse(&sitemap).expect("sitemap.xml is XML");
    let locs: Vec<&str> = doc
        .descendants()
        .filter(|n| n.has_tag_name("loc"))
        .filter_map(|n| n.text())
        .collect();
    for expected in [
        "https://example.org/",
        "https://example.org/blog/first/",
        "https://example.org/blog/page/2/",
        "https://example.org/tags/rust/",
        "https://example.org/docs/a/",
    ] {
        assert!(
            locs.contains(&expected),
            "sitemap lacks {expected}: {locs:?}"
        );
    }
    assert!(!locs.contains(&"https://example.org/hidden/"));
}

#[test]
fn aliases_404_robots_static_and_assets() {
    let site = build_fixture();
    assert!(
        site.read("old-about/index.html")
            .contains(r#"url=https://example.org/about/""#)
    );
    assert!(
        site.read("legacy/about.html")
            .contains(r#"url=https://example.org/about/""#)
    );
    assert!(site.read("404.html").contains("Custom not found"));
    let robots = site.read("robots.txt");
    assert!(robots.contains("User-agent: *"));
    assert!(
        robots.contains("Sitemap: https://example.org/sitemap.xml"),
        "{robots}"
    );
    assert_eq!(site.read("css/site.css").trim(), "body { color: black; }");
    assert_eq!(site.read("blog/bundled/notes.txt").trim(), "asset file");
    assert!(
        site.read("blog/bundled/index.html")
            .contains("&#x2F;blog&#x2F;bundled&#x2F;notes.txt")
    );
}

#[test]
fn base_url_override_changes_permalinks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("public");
    build(&BuildOptions {
        site_dir: fixture(),
        out_dir: out.clone(),
        base_url: Some("http://127.0.0.1:1111".into()),
    })
    .expect("build");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index");
    assert!(
        index.contains("http://127.0.0.1:1111/css/site.css"),
        "{index}"
    );
}

#[test]
fn a_failed_build_keeps_the_last_good_site() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    copy_dir(&fixture(), &site);
    let out = tmp.path().join("public");
    let opts = BuildOptions {
        site_dir: site.clone(),
        out_dir: out.clone(),
        base_url: None,
    };
    build(&opts).expect("first build");
    std::fs::write(site.join("templates/page.html"), "{% if %}").expect("break template");
    assert!(build(&opts).is_err());
    assert!(
        out.join("index.html").exists(),
        "previous output must survive"
    );
    assert!(out.join("about/index.html").exists());
    // No temp folders left beside the output.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".public"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn folders_left_by_a_killed_build_are_cleaned_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // No process has this id (above Linux's pid_max), so these are a dead build's leftovers.
    let stale = tmp.path().join(".public.tmp-999999999-1");
    std::fs::create_dir_all(stale.join("blog")).expect("stale dir");
    let unrelated = tmp.path().join(".other.tmp-999999999-1");
    std::fs::create_dir_all(&unrelated).expect("unrelated dir");
    build(&BuildOptions {
        site_dir: fixture(),
        out_dir: tmp.path().join("public"),
        base_url: None,
    })
    .expect("build");
    if std::path::Path::new("/proc/self").exists() {
        assert!(!stale.exists(), "stale temp folder should be removed");
    }
    assert!(
        unrelated.exists(),
        "folders of other outputs are left alone"
    );
}

#[test]
fn blog_pages_lists_non_draft_pages_of_a_section() {
    let pages = skychimp_site::blog_pages(&fixture(), "blog").expect("blog pages");
    assert_eq!(
        pages,
        vec![
            "blog/2026-03-01-third.md",
            "blog/second.md",
            "blog/first.md",
            "blog/bundle/index.md",
            "blog/archive/old.md"
        ]
    );
    let err = skychimp_site::blog_pages(&fixture(), "nope").expect_err("missing section");
    assert!(err.to_string().contains("content/nope/_index.md"), "{err}");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

#[test]
fn sitemap_robots_and_feeds_can_be_switched_off_and_pagers_reversed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    copy_dir(&fixture(), &site);
    let config = std::fs::read_to_string(site.join("config.toml")).expect("config");
    let config = config
        .replace("generate_feeds = true", "generate_feeds = false")
        .replace("generate_sitemap = true", "generate_sitemap = false")
        .replace("generate_robots_txt = true", "generate_robots_txt = false")
        .replace(
            "{ name = \"tags\", feed = true }",
            "{ name = \"tags\", render = false }",
        );
    std::fs::write(site.join("config.toml"), config).expect("write config");
    let blog = std::fs::read_to_string(site.join("content/blog/_index.md")).expect("blog");
    let blog = blog.replace(
        "paginate_by = 2",
        "paginate_by = 2\npaginate_reversed = true",
    );
    std::fs::write(site.join("content/blog/_index.md"), blog).expect("write blog");
    // Nothing may link to the unrendered tag pages any more.
    std::fs::write(site.join("templates/index.html"), "{{ section.title }}").expect("index");
    std::fs::write(
        site.join("templates/post.html"),
        "{{ page.title }}{{ page.content | safe }}",
    )
    .expect("post");
    let out = tmp.path().join("public");
    build(&BuildOptions {
        site_dir: site,
        out_dir: out.clone(),
        base_url: None,
    })
    .expect("build");
    for gone in [
        "sitemap.xml",
        "robots.txt",
        "atom.xml",
        "rss.xml",
        "tags/index.html",
        "tags/rust/index.html",
        "tags/rust/atom.xml",
    ] {
        assert!(!out.join(gone).exists(), "{gone} should not be written");
    }
    // Section feeds are the section's own switch.
    assert!(out.join("blog/atom.xml").exists());
    // Reversed: oldest first on pager 1.
    let p1 = std::fs::read_to_string(out.join("blog/index.html")).expect("pager 1");
    assert!(
        p1.contains("Old post") && p1.contains("Bundle post"),
        "{p1}"
    );
    assert!(!p1.contains("Third post"));
}
