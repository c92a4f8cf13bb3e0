//! The command line: one function per command, each returning the process's exit code.
//!
//! Exit codes: 0 success, 1 the command ran and found problems (or failed to send), 2 it
//! could not run (bad configuration, no such folder, unreachable database).

mod check;
mod status;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use crate::catalog::{Catalog, LoadOptions};
use crate::clock::Clock;
use crate::config::Config;

/// Skychimp: mailings and a blog, run from a git repository.
#[derive(Debug, Parser)]
#[command(name = "skychimpd", version, about, long_about = None)]
pub struct Cli {
    /// The configuration file [default: ROOT/config.toml with --root, else ./config.toml].
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The content repository [default: the config file's folder].
    #[arg(long, global = true, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the repository: every problem as path:line:col (exit 1 if any error).
    Check {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Statuses and next occurrences of mailings.
    Status {
        /// One mailing, as OWNER/NAME.
        mailing: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

/// Human text or JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people.
    Text,
    /// For programs.
    Json,
}

/// Run one command.
pub fn run(cli: Cli) -> ExitCode {
    let result = match &cli.command {
        Command::Check { format } => check::run(&cli, *format),
        Command::Status { mailing, format } => status::run(&cli, mailing.as_deref(), *format),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("skychimpd: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// What every command starts from: the configuration, the root and the clock.
pub(crate) struct Setup {
    pub config: Config,
    pub root: PathBuf,
    pub clock: Box<dyn Clock>,
}

impl Setup {
    pub fn new(cli: &Cli) -> anyhow::Result<Setup> {
        let (path, required) = match (&cli.config, &cli.root) {
            (Some(path), _) => (path.clone(), true),
            (None, Some(root)) => (root.join("config.toml"), false),
            (None, None) => (PathBuf::from("config.toml"), false),
        };
        let config = Config::load(&path, required)?;
        let root = cli.root.clone().unwrap_or_else(|| config.base_dir.clone());
        let clock = crate::clock::from_env().map_err(anyhow::Error::msg)?;
        Ok(Setup {
            config,
            root,
            clock,
        })
    }

    /// Read the repository.
    pub fn catalog(&self) -> anyhow::Result<Catalog> {
        let options = LoadOptions {
            default_timezone: self.config.timezone(),
            now: self.clock.now(),
        };
        Ok(Catalog::load(&self.root, &options, None)?)
    }
}

/// A path for people: relative to the working directory when it is below it.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}
