//! Builds the repository's real `site/` the way the daemon will: statistics in, three
//! random posts picked, home page showing both.

mod common;

use skychimp_site::{BuildOptions, write_stats_and_build};

#[test]
fn real_site_shows_statistics_and_three_posts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    common::copy_site(&common::real_site(), &site);
    let out = tmp.path().join("public");
    let opts = BuildOptions {
        site_dir: site.clone(),
        out_dir: out.clone(),
        base_url: None,
    };
    let report =
        write_stats_and_build(&opts, &common::sample_stats(), Some(7)).expect("real site builds");
    assert!(report.pages >= 7, "{report:?}");

    let stats: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(site.join("data/stats.json")).expect("written"),
    )
    .expect("json");
    assert_eq!(stats["unique_clients"], 4321);
    assert_eq!(stats["random_posts"].as_array().map(Vec::len), Some(3));

    let index = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    for expected in [
        r#"<dd id="stat-mailings">31</dd>"#,
        r#"<dd id="stat-active-mailings">17</dd>"#,
        r#"<dd id="stat-unique-clients">4321</dd>"#,
        r#"<dd id="stat-messages-sent">987654</dd>"#,
    ] {
        assert!(index.contains(expected), "index.html lacks {expected}");
    }
    let posts = common::picked_post_paths(&site);
    let mut distinct = posts.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{posts:?}");
    for path in &posts {
        let href = format!(r#"href="https://skychimp.example.org{path}""#);
        assert!(index.contains(&href), "index.html lacks a link {href}");
        assert!(
            out.join(path.trim_start_matches('/'))
                .join("index.html")
                .exists()
        );
    }

    // Written atomically: no temp file is left beside it.
    let mut data_files: Vec<String> = std::fs::read_dir(site.join("data"))
        .expect("data dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    data_files.sort();
    assert_eq!(data_files, vec![".gitkeep", "stats.json"]);

    // Same seed, same pick; the data file is replaced, not appended to.
    write_stats_and_build(&opts, &common::sample_stats(), Some(7)).expect("rebuild");
    assert_eq!(common::picked_post_paths(&site), posts);
}

#[test]
fn real_site_builds_without_a_stats_file() {
    // A fresh checkout (or upstream `zola build`) has no data/stats.json.
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    common::copy_site(&common::real_site(), &site);
    let out = tmp.path().join("public");
    skychimp_site::build(&BuildOptions {
        site_dir: site,
        out_dir: out.clone(),
        base_url: None,
    })
    .expect("builds without stats");
    let index = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert!(index.contains("Live statistics appear here"));
    for file in [
        "atom.xml",
        "sitemap.xml",
        "robots.txt",
        "404.html",
        "tags/index.html",
        "about/index.html",
        "css/site.css",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    roxmltree::Document::parse(&std::fs::read_to_string(out.join("atom.xml")).expect("atom"))
        .expect("atom parses");
    let blog_posts = skychimp_site::blog_pages(&common::real_site(), "blog").expect("blog pages");
    assert!(blog_posts.len() >= 6, "{blog_posts:?}");
}

#[test]
fn stats_must_be_an_object() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let site = tmp.path().join("site");
    common::copy_site(&common::real_site(), &site);
    let opts = BuildOptions {
        site_dir: site,
        out_dir: tmp.path().join("public"),
        base_url: None,
    };
    let err = write_stats_and_build(&opts, &serde_json::json!([1, 2]), Some(1))
        .expect_err("array refused");
    assert!(err.to_string().contains("data/stats.json"), "{err}");
}
