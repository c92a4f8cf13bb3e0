//! Helpers shared by the integration tests: run the built binary, copy fixture trees.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a finished command printed.
pub trait OutputText {
    fn stdout_text(&self) -> String;
    fn stderr_text(&self) -> String;
}

impl OutputText for Output {
    fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Run the built `skychimpd` with a pinned clock and no inherited SKYCHIMP_ settings.
pub fn skychimpd(args: &[&str]) -> Output {
    skychimpd_env(args, &[])
}

/// The same, with extra environment variables.
pub fn skychimpd_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skychimpd"));
    cmd.args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("SKYCHIMP_") || k == "DATABASE_URL" || k == "REDIS_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.env("SKYCHIMP_NOW", "2026-11-26T12:00:00Z");
    cmd.envs(env.iter().copied());
    cmd.output().expect("run skychimpd")
}

/// A folder under `tests/fixtures/`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Copy a tree (files and folders only).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
