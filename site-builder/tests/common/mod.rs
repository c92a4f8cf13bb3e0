//! Helpers shared by the integration tests that build the real `site/`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The repository's real site folder.
pub fn real_site() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../site")
}

/// Copies a folder recursively, leaving out `data/stats.json` and `public/` so a test never
/// depends on (or overwrites) what a developer has locally.
pub fn copy_site(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        let target = to.join(&name);
        if name == "public" || name == "stats.json" {
            continue;
        }
        if entry.file_type().expect("type").is_dir() {
            copy_site(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// The statistics value the daemon would pass (without `random_posts`).
pub fn sample_stats() -> serde_json::Value {
    serde_json::json!({
        "mailings": 31,
        "active_mailings": 17,
        "unique_clients": 4321,
        "messages_sent": 987654,
        "generated_at": "2026-11-26T07:00:00Z",
    })
}

/// The picked posts' permalink paths (`/blog/x/`), read back from the written data file.
pub fn picked_post_paths(site: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(site.join("data/stats.json")).expect("stats.json written");
    let value: serde_json::Value = serde_json::from_str(&text).expect("stats.json is JSON");
    let posts = value["random_posts"]
        .as_array()
        .expect("random_posts array");
    posts
        .iter()
        .map(|p| {
            let rel = p.as_str().expect("string");
            let stem = rel.trim_start_matches("blog/").trim_end_matches(".md");
            format!("/blog/{stem}/")
        })
        .collect()
}
