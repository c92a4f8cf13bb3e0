//! Broken input must fail with a message naming the file (and line when known), never
//! produce a silently wrong page.

use std::path::Path;

use skychimp_site::{BuildOptions, SiteError, build};

/// A minimal valid site, with `files` (relative path, content) written over it.
fn build_with(
    files: &[(&str, &str)],
) -> (
    tempfile::TempDir,
    Result<skychimp_site::BuildReport, SiteError>,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    let base: &[(&str, &str)] = &[
        (
            "config.toml",
            "base_url = \"https://example.org\"\ntitle = \"t\"\n",
        ),
        ("content/_index.md", "+++\ntitle = \"Home\"\n+++\n"),
        (
            "content/post.md",
            "+++\ntitle = \"Post\"\ndate = 2026-01-01\n+++\nHello.\n",
        ),
        ("templates/index.html", "<h1>{{ section.title }}</h1>\n"),
        (
            "templates/page.html",
            "<h1>{{ page.title }}</h1>\n{{ page.content | safe }}\n",
        ),
    ];
    for (rel, text) in base.iter().chain(files) {
        let path = site.join(rel);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, text).expect("write");
    }
    let out = tmp.path().join("public");
    let result = build(&BuildOptions {
        site_dir: site,
        out_dir: out,
        base_url: None,
    });
    (tmp, result)
}

fn error_of(files: &[(&str, &str)]) -> String {
    let (_tmp, result) = build_with(files);
    match result {
        Ok(r) => panic!("build should fail, built {r:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_names(message: &str, file_and_line: &str) {
    assert!(
        message.contains(file_and_line),
        "expected {file_and_line:?} in: {message}"
    );
}

#[test]
fn minimal_site_builds() {
    let (_tmp, result) = build_with(&[]);
    result.expect("minimal site builds");
}

#[test]
fn template_syntax_error_names_file_and_line() {
    let msg = error_of(&[(
        "templates/page.html",
        "<h1>\n{{ page.title }}\n{% if %}\n{% endif %}\n",
    )]);
    assert_names(&msg, "templates/page.html:3");
}

#[test]
fn unknown_function_names_file_and_line() {
    let msg = error_of(&[(
        "templates/index.html",
        "<h1>ok</h1>\n\n{{ get_pgae(path=\"post.md\") }}\n",
    )]);
    assert_names(&msg, "templates/index.html:3");
    assert!(msg.contains("unknown function `get_pgae`"), "{msg}");
    // Zola's own, not a misspelling: said so.
    let msg = error_of(&[(
        "templates/index.html",
        "<h1>ok</h1>\n{{ get_hash(path=\"x.css\") }}\n",
    )]);
    assert_names(&msg, "templates/index.html:2");
    assert!(
        msg.contains("function `get_hash` is Zola's, but this builder does not support it"),
        "{msg}"
    );
}

#[test]
fn unknown_filter_in_a_parent_template_names_that_file() {
    let msg = error_of(&[
        (
            "templates/base.html",
            "<html>\n<body>\n{% block c %}{% endblock c %}\n{{ config.title | shout }}\n</body></html>\n",
        ),
        (
            "templates/index.html",
            "{% extends \"base.html\" %}{% block c %}x{% endblock c %}",
        ),
    ]);
    assert_names(&msg, "templates/base.html:4");
    assert!(msg.contains("unknown filter `shout`"), "{msg}");
}

#[test]
fn render_error_names_template_line_and_content_file() {
    let msg = error_of(&[(
        "templates/page.html",
        "<h1>{{ page.title }}</h1>\n<p>{{ page.nope.deeper }}</p>\n",
    )]);
    assert_names(&msg, "templates/page.html:2");
    assert!(msg.contains("content/post.md"), "{msg}");
}

#[test]
fn get_page_of_a_missing_page_names_the_line() {
    let msg = error_of(&[(
        "templates/index.html",
        "a\nb\n{% set p = get_page(path=\"nope.md\") %}\n",
    )]);
    assert_names(&msg, "templates/index.html:3");
    assert!(msg.contains("nope.md"), "{msg}");
}

#[test]
fn broken_front_matter_names_the_file_and_line() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\ndate = 2026-01-01\ntags = [\n+++\nbody\n",
    )]);
    assert!(msg.contains("content/post.md:"), "{msg}");
}

#[test]
fn unknown_front_matter_key_is_refused() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\nsumary = \"typo\"\n+++\nbody\n",
    )]);
    assert_names(&msg, "content/post.md:3");
    assert!(msg.contains("sumary"), "{msg}");
}

#[test]
fn missing_front_matter_is_refused() {
    let msg = error_of(&[("content/post.md", "just text\n")]);
    assert_names(&msg, "content/post.md:1");
}

#[test]
fn unknown_config_key_names_config_line() {
    let msg = error_of(&[(
        "config.toml",
        "base_url = \"https://example.org\"\n\n[markdown]\nhighlight_theme = \"x\"\n",
    )]);
    assert_names(&msg, "config.toml:4");
    assert!(msg.contains("highlight_theme"), "{msg}");
}

#[test]
fn broken_internal_link_names_file_and_line() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n+++\nfine\n\nsee [x](@/missing.md)\n",
    )]);
    assert_names(&msg, "content/post.md:6");
    assert!(msg.contains("@/missing.md"), "{msg}");
}

#[test]
fn link_to_a_missing_anchor_is_broken() {
    let msg = error_of(&[
        (
            "content/other.md",
            "+++\ntitle = \"Other\"\n+++\n## Real heading\n",
        ),
        (
            "content/post.md",
            "+++\ntitle = \"Post\"\n+++\n[ok](@/other.md#real-heading)\n\n[bad](@/other.md#nope)\n",
        ),
    ]);
    assert_names(&msg, "content/post.md:6");
    assert!(msg.contains("#nope"), "{msg}");
}

#[test]
fn link_to_a_draft_is_broken() {
    let msg = error_of(&[
        (
            "content/draft.md",
            "+++\ntitle = \"D\"\ndraft = true\n+++\n",
        ),
        (
            "content/post.md",
            "+++\ntitle = \"Post\"\n+++\n[d](@/draft.md)\n",
        ),
    ]);
    assert_names(&msg, "content/post.md:4");
}

#[test]
fn shortcode_syntax_is_refused() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n+++\n\n{{ youtube(id=\"x\") }}\n",
    )]);
    assert_names(&msg, "content/post.md:5");
    assert!(msg.contains("shortcode"), "{msg}");
    // Zola expands shortcodes inside code too, so they are refused there as well, and so
    // is the `{{/* */}}` escape (which Zola would unescape).
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n+++\n\n```\n{{ youtube(id=\"x\") }}\n```\n",
    )]);
    assert_names(&msg, "content/post.md:6");
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n+++\n{{/* youtube() */}}\n",
    )]);
    assert_names(&msg, "content/post.md:4");
    // Plain template-looking text that is no shortcode call is content, as in Zola.
    let (_tmp, result) = build_with(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n+++\n`{{ client.name }}`\n",
    )]);
    result.expect("variables in text are not shortcodes");
}

#[test]
fn undefined_taxonomy_is_refused() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\n[taxonomies]\ntags = [\"a\"]\n+++\n",
    )]);
    assert_names(&msg, "content/post.md");
    assert!(msg.contains("taxonomy `tags`"), "{msg}");
}

#[test]
fn missing_template_names_the_content_file() {
    let msg = error_of(&[(
        "content/post.md",
        "+++\ntitle = \"Post\"\ntemplate = \"fancy.html\"\n+++\n",
    )]);
    assert_names(&msg, "content/post.md:3: template `fancy.html` not found");
}

/// A front matter value that parses as TOML but is not what the key takes: the line that
/// sets it.
#[test]
fn a_bad_front_matter_value_names_its_line() {
    for (text, expected) in [
        (
            "+++\ntitle = \"Post\"\ndate = \"2026-02-30\"\n+++\n",
            "content/post.md:3: `date` = \"2026-02-30\" is not a date",
        ),
        (
            "+++\ntitle = \"Post\"\n\n  updated = 20260101\n+++\n",
            "content/post.md:4: `updated` must be a date, not an integer",
        ),
        (
            "+++\ntitle = \"Post\"\n[taxonomies]\nflavours = [\"a\"]\n+++\n",
            "content/post.md:4: taxonomy `flavours` is not defined",
        ),
        (
            "+++\ntitle = \"Post \\u0007 ding\"\n+++\n",
            "content/post.md:2: `title` holds U+0007, a character no feed can carry",
        ),
        (
            "+++\ntitle = \"Post\"\nauthors = [\"Eve\\u0001\"]\n+++\n",
            "content/post.md:3: `authors` holds U+0001",
        ),
        (
            "+++\ntitle = \"Post\"\n[taxonomies]\ntags = [\"bad\\u0001tag\"]\n+++\n",
            "content/post.md:4: `tags` holds U+0001",
        ),
        (
            "+++\ntitle = \"T\\uFFFE\"\n+++\n",
            "content/post.md:2: `title` holds U+FFFE",
        ),
        (
            "+++\ntitle = \"Post\"\n+++\nHello\n\u{1}there\n",
            "content/post.md:5: U+0001 is a character no feed can carry",
        ),
    ] {
        let msg = error_of(&[("content/post.md", text)]);
        assert_names(&msg, expected);
    }
}

/// `post.fr.md` is Zola's translation of `post.md`: refused, not built as a page of its own.
#[test]
fn a_translation_file_is_refused() {
    for rel in ["content/post.fr.md", "content/_index.fr.md"] {
        let msg = error_of(&[(rel, "+++\ntitle = \"Bonjour\"\n+++\n")]);
        assert_names(&msg, rel);
        assert!(msg.contains("as a translation (language `fr`)"), "{msg}");
    }
    // Any `.` in the name reads so in Zola; `.md.md` is no exception.
    for (rel, language) in [
        ("content/v1.2-notes.md", "2-notes"),
        ("content/x.md.md", "md"),
    ] {
        let msg = error_of(&[(rel, "+++\ntitle = \"X\"\n+++\n")]);
        assert!(msg.contains(&format!("(language `{language}`)")), "{msg}");
    }
}

#[test]
fn two_pages_on_one_path_are_refused() {
    let msg = error_of(&[(
        "content/other.md",
        "+++\ntitle = \"Other\"\npath = \"post\"\n+++\n",
    )]);
    assert!(msg.contains("/post/"), "{msg}");
}

/// An alias over another page's output names both files, whichever was written first.
#[test]
fn an_alias_over_a_page_names_both_files() {
    let msg = error_of(&[(
        "content/other.md",
        "+++\ntitle = \"Other\"\naliases = [\"/post/\"]\n+++\n",
    )]);
    assert!(
        msg.contains("two outputs would be written to post/index.html"),
        "{msg}"
    );
    assert!(msg.contains("other.md") && msg.contains("post.md"), "{msg}");
}

/// A static file, a generated file and an alias's folder are outputs too: each clash names
/// both sources, never a temp folder.
#[test]
fn an_alias_over_a_static_or_generated_file_names_both_sources() {
    let alias = |to: &str| {
        (
            "content/other.md".to_string(),
            format!("+++\ntitle = \"Other\"\naliases = [\"{to}\"]\n+++\n"),
        )
    };
    let static_file = |rel: &str, text: &str| (rel.to_string(), text.to_string());
    let cases = [
        (
            vec![
                alias("favicon.svg"),
                static_file("static/favicon.svg", "<svg/>"),
            ],
            vec![
                "content/other.md: favicon.svg would be a folder from this file and a file from",
                "static/favicon.svg",
            ],
        ),
        (
            vec![
                alias("css/site.css"),
                static_file("static/css/site.css", "a{}"),
            ],
            vec![
                "content/other.md: css/site.css would be a folder from this file and a file from",
                "static/css/site.css",
            ],
        ),
        // Written in parallel: either may come first.
        (
            vec![alias("robots.txt")],
            vec!["robots.txt would be", "other.md", "config.toml"],
        ),
        (
            vec![static_file("static/post/index.html", "<p>mine</p>")],
            vec![
                "content/post.md: two outputs would be written to post/index.html, from this file \
                 and from",
                "static/post/index.html",
            ],
        ),
    ];
    for (files, expected) in cases {
        let files: Vec<(&str, &str)> = files.iter().map(|(a, b)| (&**a, &**b)).collect();
        let msg = error_of(&files);
        for part in expected {
            assert!(msg.contains(part), "{part:?} in {msg}");
        }
        assert!(!msg.contains(".tmp-"), "a temp folder named: {msg}");
    }
}

/// `--out` inside `static/` would copy each build into the next one.
#[test]
fn an_output_folder_inside_static_is_refused() {
    let (tmp, first) = build_with(&[("static/favicon.svg", "<svg/>")]);
    first.expect("the first build");
    let site = tmp.path().join("site");
    let result = build(&BuildOptions {
        site_dir: site.clone(),
        out_dir: site.join("static/gen"),
        base_url: None,
    });
    let msg = result.expect_err("refused").to_string();
    assert!(msg.contains("the output folder is inside"), "{msg}");
    assert!(!site.join("static/gen").exists());
}

#[test]
fn load_data_errors_name_the_data_file() {
    let msg = error_of(&[
        ("data/x.json", "{\"a\": 1,,}"),
        (
            "templates/index.html",
            "{% set d = load_data(path=\"data/x.json\") %}{{ d.a }}",
        ),
    ]);
    assert!(msg.contains("data/x.json:1:"), "{msg}");
    let msg = error_of(&[(
        "templates/index.html",
        "{% set d = load_data(path=\"data/none.json\") %}",
    )]);
    assert!(msg.contains("data/none.json"), "{msg}");
}

#[test]
fn error_location_is_exposed() {
    let (_tmp, result) = build_with(&[("templates/index.html", "x\n{{ nope() }}\n")]);
    let err = result.expect_err("unknown function");
    let loc = err.location().expect("location");
    assert!(loc.path.ends_with(Path::new("templates/index.html")));
    assert_eq!(loc.line, Some(2));
}

#[test]
fn a_folder_that_is_not_a_build_is_never_replaced() {
    let (tmp, first) = build_with(&[]);
    first.expect("the first build");
    let site = tmp.path().join("site");
    let out = tmp.path().join("public");
    assert!(out.join(skychimp_site::BUILD_MARKER).is_file());
    let again = |out_dir: &Path| {
        build(&BuildOptions {
            site_dir: site.clone(),
            out_dir: out_dir.to_path_buf(),
            base_url: None,
        })
    };
    // A build replaces a build, and fills an empty folder.
    again(&out).expect("a second build over the first");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    again(&empty).expect("a build into an empty folder");

    // A mistyped --out: the site's own sources, the folder above them, any other folder.
    for wrong in [site.clone(), tmp.path().to_path_buf()] {
        let message = again(&wrong).expect_err("refused").to_string();
        assert!(message.contains("not replacing this folder"), "{message}");
        assert!(site.join("config.toml").is_file(), "the sources are intact");
        assert!(
            site.join("content/post.md").is_file(),
            "the sources are intact"
        );
    }
    // A file where the folder would go.
    let file = tmp.path().join("notes.txt");
    std::fs::write(&file, "mine").unwrap();
    again(&file).expect_err("refused");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
}

#[test]
fn a_path_or_alias_that_leaves_the_output_folder_is_refused() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "content/escape.md",
            "+++\ntitle = \"E\"\npath = \"../../escape\"\n+++\n",
            ":3: `path`",
        ),
        (
            "content/escape.md",
            "+++\ntitle = \"E\"\naliases = [\"../alias-escape/x.html\"]\n+++\n",
            ":3: `aliases`",
        ),
        (
            "content/blog/_index.md",
            "+++\ntitle = \"Blog\"\naliases = [\"/old/../../up\"]\n+++\n",
            ":3: `aliases`",
        ),
        (
            "content/_index.md",
            "+++\ntitle = \"Home\"\npaginate_by = 1\npaginate_path = \"..\"\n+++\n",
            ":4: `paginate_path`",
        ),
    ];
    for (rel, text, field) in cases {
        let (tmp, result) = build_with(&[(rel, text)]);
        let msg = match result {
            Ok(r) => panic!("{rel} should be refused, built {r:?}"),
            Err(e) => e.to_string(),
        };
        assert_names(&msg, rel);
        assert!(msg.contains(field), "{field} not named in: {msg}");
        // Nothing was written beside the site: the temp dir holds only what the test made.
        let mut left: Vec<String> = std::fs::read_dir(tmp.path())
            .expect("read tempdir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["site"], "{rel} wrote outside the output folder");
    }
}
