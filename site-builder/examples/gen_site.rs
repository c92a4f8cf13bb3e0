//! Benchmark program (not a test): generates a large blog with the real site's templates and
//! times builds. See `BENCHMARKS.md` for the commands and measured figures.
//!
//! ```text
//! gen_site generate [N] [DIR]   write an N-post site (default 10000) to DIR/site
//! gen_site build [DIR]          full build DIR/site -> DIR/public, print the report
//! gen_site edit-build [DIR]     change one post, then build again
//! ```
//! DIR defaults to `/dev/shm/skychimp-bench` (tmpfs, so disk noise stays out).

use std::path::{Path, PathBuf};
use std::time::Instant;

use skychimp_site::{BuildOptions, write_stats_and_build};

const WORDS: &[&str] = &[
    "mailing",
    "schedule",
    "client",
    "delivery",
    "unsubscribe",
    "review",
    "commit",
    "branch",
    "timezone",
    "occurrence",
    "server",
    "message",
    "header",
    "retry",
    "backoff",
    "report",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "on",
    "be",
];
const TAGS: &[&str] = &[
    "scheduling",
    "delivery",
    "git",
    "smtp",
    "review",
    "dst",
    "design",
    "ci",
    "deliverability",
    "standards",
    "ops",
    "privacy",
    "metrics",
    "testing",
    "redis",
    "postgres",
    "sqlite",
    "rust",
    "templates",
    "site",
];

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cmd = args.first().map(String::as_str).unwrap_or("");
    let result = match cmd {
        "generate" => {
            let n = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10_000);
            let dir = dir_arg(args.get(2));
            generate(&dir, n)
        }
        "build" => run_build(&dir_arg(args.get(1)), false),
        "edit-build" => run_build(&dir_arg(args.get(1)), true),
        _ => Err("usage: gen_site generate [N] [DIR] | build [DIR] | edit-build [DIR]".to_string()),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dir_arg(arg: Option<&String>) -> PathBuf {
    arg.map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm/skychimp-bench"))
}

/// A tiny deterministic generator so every run writes the same site.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 33) as usize) % n
    }
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("{}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

fn generate(dir: &Path, n: usize) -> Result<(), String> {
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../site");
    let site = dir.join("site");
    let _ = std::fs::remove_dir_all(&site);
    for part in ["templates", "static"] {
        copy_tree(&real.join(part), &site.join(part))?;
    }
    std::fs::copy(real.join("config.toml"), site.join("config.toml")).map_err(|e| e.to_string())?;
    let blog = site.join("content/blog");
    std::fs::create_dir_all(&blog).map_err(|e| e.to_string())?;
    std::fs::copy(
        real.join("content/_index.md"),
        site.join("content/_index.md"),
    )
    .map_err(|e| e.to_string())?;
    std::fs::copy(real.join("content/about.md"), site.join("content/about.md"))
        .map_err(|e| e.to_string())?;
    std::fs::copy(real.join("content/blog/_index.md"), blog.join("_index.md"))
        .map_err(|e| e.to_string())?;
    // The real posts come along: the about page and they link to each other.
    for entry in std::fs::read_dir(real.join("content/blog")).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if let Some(name) = path.file_name() {
            std::fs::copy(&path, blog.join(name)).map_err(|e| e.to_string())?;
        }
    }
    let mut rng = Lcg(42);
    for i in 0..n {
        let mut body = String::with_capacity(4096);
        for para in 0..6 {
            if para == 1 {
                body.push_str("\n<!-- more -->\n\n");
            }
            if para == 2 {
                body.push_str(&format!("## Section {i}\n\n"));
            }
            for w in 0..70 {
                if w > 0 {
                    body.push(' ');
                }
                body.push_str(WORDS[rng.next(WORDS.len())]);
            }
            body.push_str(".\n\n");
        }
        if i > 0 {
            body.push_str(&format!(
                "Previous: [post {}](@/blog/post-{:05}.md).\n",
                i - 1,
                i - 1
            ));
        }
        let tags: Vec<String> = (0..3)
            .map(|_| format!("\"{}\"", TAGS[rng.next(TAGS.len())]))
            .collect();
        let day = 1 + (i % 28);
        let month = 1 + (i / 28) % 12;
        let year = 2000 + i / (28 * 12);
        let text = format!(
            "+++\ntitle = \"Post number {i}\"\ndescription = \"Generated post {i}\"\ndate = {year:04}-{month:02}-{day:02}\n[taxonomies]\ntags = [{}]\n+++\n{body}",
            tags.join(", ")
        );
        std::fs::write(blog.join(format!("post-{i:05}.md")), text).map_err(|e| e.to_string())?;
    }
    println!("generated {n} posts in {}", site.display());
    Ok(())
}

fn run_build(dir: &Path, edit_first: bool) -> Result<(), String> {
    let site = dir.join("site");
    if edit_first {
        let post = site.join("content/blog/post-00042.md");
        let mut text =
            std::fs::read_to_string(&post).map_err(|e| format!("{}: {e}", post.display()))?;
        text.push_str("\nEdited at the benchmark's request.\n");
        std::fs::write(&post, text).map_err(|e| e.to_string())?;
    }
    let opts = BuildOptions {
        site_dir: site,
        out_dir: dir.join("public"),
        base_url: None,
    };
    let started = Instant::now();
    let stats = serde_json::json!({
        "mailings": 10, "active_mailings": 5, "unique_clients": 1000, "messages_sent": 50000,
        "generated_at": "2026-11-26T07:00:00Z",
    });
    let report = write_stats_and_build(&opts, &stats, Some(1)).map_err(|e| e.to_string())?;
    let total = started.elapsed();
    println!(
        "{} pages, {} sections, {} terms, {} files; build report {:.3} s, call returned after {:.3} s",
        report.pages,
        report.sections,
        report.taxonomy_terms,
        report.files_written,
        report.elapsed.as_secs_f64(),
        total.as_secs_f64()
    );
    Ok(())
}
