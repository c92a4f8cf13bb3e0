//! The command line: one function per command, each returning the process's exit code.
//!
//! Exit codes: 0 success, 1 the command ran and found problems (or failed to send), 2 it
//! could not run (bad configuration, no such folder, unreachable database).
//!
//! Commands print with `outln!` and `errln!`, not `println!`: a reader that stops early
//! (`skychimpd check | head`) ends the output, never the process with a panic.

/// `println!` for commands: returns `anyhow::Result<()>`; a closed pipe is not an error.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` for commands: a closed or full stderr is ignored, as there is nowhere
/// left to say so.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod check;
mod logs;
pub mod manager;
mod send;
mod site;
mod status;

pub(crate) use logs::redact;
pub(crate) use send::recover_dead_local;

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
    /// Send one run of a mailing now, with a progress bar and a summary.
    Send {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// List the recipients and render the first message without sending anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a mailing's message as one recipient would get it.
    Preview {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// The recipient (default: the first of its lists).
        #[arg(long, value_name = "EMAIL")]
        to: Option<String>,
    },
    /// The attempt log of a mailing, newest first.
    Logs {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// At most this many rows (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Only attempts older than this attempt id (the next page).
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(i64).range(1..))]
        before: Option<i64>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Per-run counts of a mailing: recipients, sent, failed, deferred, skipped, unknown.
    Report {
        /// The mailing, as OWNER/NAME.
        mailing: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Signed calls to a running daemon's manager API (mailings, users, logs, stats).
    Manager(manager::ManagerArgs),
    /// Apply the database migrations and exit.
    Migrate,
    /// The daemon: watch the repository, send on schedule, serve the HTTP API.
    Run,
    /// The static site.
    Site {
        /// What to do with it.
        #[command(subcommand)]
        action: SiteAction,
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

/// `skychimpd site …`
#[derive(Debug, Subcommand)]
pub enum SiteAction {
    /// Render the site with the live statistics and three random posts.
    Build {
        /// Output folder [default: [site] out].
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Seed of the random post pick, for a repeatable build.
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
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
        Command::Send { mailing, dry_run } => send::send(&cli, mailing, *dry_run),
        Command::Preview { mailing, to } => send::preview(&cli, mailing, to.as_deref()),
        Command::Logs {
            mailing,
            limit,
            before,
            format,
        } => logs::logs(&cli, mailing, *limit, *before, *format),
        Command::Report { mailing, format } => logs::report(&cli, mailing, *format),
        Command::Manager(args) => manager::run(&cli, args),
        Command::Migrate => logs::migrate(&cli),
        Command::Run => Setup::new(&cli).and_then(crate::daemon::run),
        Command::Site {
            action: SiteAction::Build { out, seed },
        } => site::build(&cli, out.clone(), *seed),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("skychimpd: {}", said_once(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, each said once: a cause whose text is already in what its
/// parents said (a message that quotes its source) is not repeated.
fn said_once(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

/// What every command starts from: the configuration, the root and the clock.
pub struct Setup {
    pub config: Config,
    pub root: PathBuf,
    pub clock: Box<dyn Clock>,
}

impl Setup {
    /// Read the configuration and decide the root and the clock.
    pub fn new(cli: &Cli) -> anyhow::Result<Setup> {
        let (path, required) = match (&cli.config, &cli.root) {
            (Some(path), _) => (path.clone(), true),
            (None, Some(root)) => (root.join("config.toml"), false),
            (None, None) => (PathBuf::from("config.toml"), false),
        };
        let config = Config::load(&path, required)?;
        // The daemon logs them once its log is set up (as JSON when so configured).
        if !matches!(cli.command, Command::Run) {
            for warning in &config.warnings {
                errln!("warning: {warning}");
            }
        }
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

/// A tokio runtime for one command. Its threads get the main thread's 8 MiB of stack (not
/// tokio's 2 MiB): messages render on them, and what `check` let through on the main
/// thread must render there too.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 << 20)
        .build()?)
}

impl Setup {
    /// The database URL with a relative SQLite path resolved against the config's folder.
    pub fn database_url(&self) -> String {
        resolve_database_url(&self.config)
    }

    /// The SQLite file the database URL names (none for PostgreSQL or `sqlite://:memory:`).
    pub fn sqlite_file(&self) -> Option<PathBuf> {
        self.database_url()
            .strip_prefix("sqlite://")
            .filter(|path| !path.starts_with(':'))
            .map(PathBuf::from)
    }

    /// Whether the database is a SQLite file that does not exist yet: commands that only
    /// read then answer from the files alone ([`crate::facts::fresh`]) rather than create it.
    pub fn fresh_database(&self) -> bool {
        self.sqlite_file().is_some_and(|path| !path.exists())
    }

    /// Open the database and apply migrations.
    pub async fn store(&self) -> anyhow::Result<skychimp_storage::Store> {
        use anyhow::Context as _;
        use skychimp_storage::Storage as _;
        let url = self.database_url();
        let store =
            skychimp_storage::Store::connect_sized(&url, Some(self.config.database_connections()))
                .await?;
        store.migrate().await.context("applying migrations")?;
        Ok(store)
    }

    /// The mailing named on the command line, or a message saying what exists.
    pub fn find_mailing<'c>(
        &self,
        catalog: &'c Catalog,
        id: &str,
    ) -> anyhow::Result<&'c std::sync::Arc<crate::catalog::Mailing>> {
        if let Some(m) = catalog.mailing(id) {
            return Ok(m);
        }
        let broken = catalog.left_out(id)
            || catalog
                .problems()
                .iter()
                .any(|p| p.is_error() && p.path.ends_with(format!("{id}.toml")));
        if broken {
            anyhow::bail!("mailing `{id}` has errors: run `skychimpd check`");
        }
        anyhow::bail!("no mailing `{id}` (ids are OWNER/NAME, from mailings/OWNER/NAME.toml)")
    }
}

/// `sqlite://var/x.db` relative to the config file's folder; other URLs unchanged.
pub fn resolve_database_url(config: &Config) -> String {
    let url = &config.database.url;
    match url.strip_prefix("sqlite://") {
        Some(path) if !path.starts_with('/') && !path.starts_with(':') => {
            format!("sqlite://{}", config.resolve(path).display())
        }
        _ => url.clone(),
    }
}

/// Writes to stdout. A reader that went away (`| head`) is the end of the output, not an
/// error: the rest is dropped and the command goes on (a `send` still finishes its run).
/// Any other failure (a full disk behind `> file`) is an error.
pub(crate) fn write_out(text: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("writing to standard output"),
    }
}

/// `1 mailing`, `2 mailings`: a count with its noun (English plurals in `s`).
pub(crate) fn counted(n: impl Into<i64>, noun: &str) -> String {
    let n = n.into();
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// `skychimpd` with the global options this run was given (`--config`, `--root`), to
/// start a command a user can paste to go on (the next page of a log, say).
pub(crate) fn as_run(cli: &Cli) -> String {
    let mut command = String::from("skychimpd");
    if let Some(config) = &cli.config {
        command += &format!(" --config {}", config.display());
    }
    if let Some(root) = &cli.root {
        command += &format!(" --root {}", root.display());
    }
    command
}

/// `text` cut to at most `max` characters, with `…` when cut.
pub(crate) fn shortened(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        Some((end, _)) => format!("{}…", &text[..end]).into(),
        None => text.into(),
    }
}

/// Whether `c` acts on a terminal rather than showing: a control character, a line or
/// paragraph separator, or an invisible format character (bidirectional overrides and
/// isolates, zero-width ones), which could reorder or hide the rest of a line.
pub(crate) fn unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{061C}'
                | '\u{FEFF}'
        )
}

/// `text` with every [`unprintable`] character written as its Rust escape (`\n`,
/// `\u{1b}`, `\u{202e}`), for text from outside (a reason, an SMTP reply) printed on a
/// terminal.
pub(crate) fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unprintable(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A path for people: relative to the working directory when it is below it.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}
