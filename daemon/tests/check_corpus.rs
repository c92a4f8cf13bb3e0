//! The corpus of broken inputs: each fixture under `fixtures/broken/` is dropped into a copy
//! of the valid `fixtures/base/` repository, and the built `skychimpd check` must report
//! exactly the errors the fixture expects, at the expected `path:line:col`, and exit 1.
//!
//! Fixture directives (lines starting `#!`, removed before the file is written, so line
//! numbers count the content only):
//! - `#! path: REL` where the content goes (replacing a base file or adding one);
//! - `#! expect: REL:LINE:COL: TEXT` an error whose message contains TEXT (one per error);
//! - `#! append-bytes: HEX …` raw bytes appended (for non-UTF-8 input);
//! - `#! symlink: TARGET` make REL a symlink to TARGET instead of writing content.

mod common;

use std::path::{Path, PathBuf};

use common::{OutputText, copy_dir, skychimpd};

struct Fixture {
    name: String,
    path: String,
    expects: Vec<String>,
    content: Vec<u8>,
    symlink: Option<PathBuf>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken");
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for file in entries {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut f = Fixture {
            name: file.file_stem().unwrap().to_string_lossy().into_owned(),
            path: String::new(),
            expects: Vec::new(),
            content: Vec::new(),
            symlink: None,
        };
        let mut body = String::new();
        let mut extra = Vec::new();
        for line in text.split_inclusive('\n') {
            if let Some(d) = line.strip_prefix("#! ") {
                let (key, value) = d
                    .trim_end_matches('\n')
                    .split_once(": ")
                    .unwrap_or((d.trim(), ""));
                match key {
                    "path" => f.path = value.to_string(),
                    "expect" => f.expects.push(value.to_string()),
                    "append-bytes" => extra.extend(
                        value
                            .split_whitespace()
                            .map(|h| u8::from_str_radix(h, 16).unwrap()),
                    ),
                    "symlink" => f.symlink = Some(PathBuf::from(value)),
                    other => panic!("{}: unknown directive {other}", f.name),
                }
            } else {
                body.push_str(line);
            }
        }
        f.content = body.into_bytes();
        f.content.extend(extra);
        assert!(
            !f.path.is_empty() && !f.expects.is_empty(),
            "{}: needs path and expect",
            f.name
        );
        out.push(f);
    }
    out
}

#[test]
fn the_base_repository_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&common::fixture("base"), dir.path());
    let out = skychimpd(&["check", "--root", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}{}",
        out.stdout_text(),
        out.stderr_text()
    );
    assert_eq!(out.stdout_text(), "");
}

#[test]
fn every_broken_input_is_reported_where_it_is() {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 40,
        "the corpus has {} cases",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for f in &fixtures {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(&common::fixture("base"), dir.path());
        let target = dir.path().join(&f.path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        match &f.symlink {
            Some(to) => {
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(to, &target).unwrap();
            }
            None => std::fs::write(&target, &f.content).unwrap(),
        }
        let out = skychimpd(&[
            "check",
            "--root",
            dir.path().to_str().unwrap(),
            "--format",
            "json",
        ]);
        let report: serde_json::Value = match serde_json::from_str(&out.stdout_text()) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!(
                    "{}: output is not JSON ({e}): {}",
                    f.name,
                    out.stderr_text()
                ));
                continue;
            }
        };
        let errors: Vec<String> = report["problems"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["severity"] == "error")
            .map(|p| {
                format!(
                    "{}:{}:{}: {}",
                    p["path"].as_str().unwrap(),
                    p["line"],
                    p["column"],
                    p["message"].as_str().unwrap()
                )
            })
            .collect();
        if out.status.code() != Some(1) {
            failures.push(format!("{}: exit {:?}, want 1", f.name, out.status.code()));
        }
        for want in &f.expects {
            let (place, text) = split_expect(want);
            if !errors
                .iter()
                .any(|e| e.starts_with(&place) && e[place.len()..].contains(text))
            {
                failures.push(format!("{}: missing `{want}`; got {errors:#?}", f.name));
            }
        }
        if errors.len() != f.expects.len() {
            failures.push(format!(
                "{}: {} errors, want {}: {errors:#?}",
                f.name,
                errors.len(),
                f.expects.len()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

/// `path:line:col: text` → (`path:line:col: `, `text`); a bare `path:line:` matches any column.
fn split_expect(want: &str) -> (String, &str) {
    let mut colons = 0;
    for (i, c) in want.char_indices() {
        if c == ':' {
            colons += 1;
            if colons == 3 {
                return (want[..=i].to_string() + " ", want[i + 1..].trim_start());
            }
        }
    }
    (want.to_string(), "")
}
