//! `config.toml`: the daemon's settings, with embedded defaults and environment overrides.
//!
//! The defaults below are the ones the repository's `config.toml` spells out, so a fresh
//! clone runs with no file at all (SQLite, the outbox transport, the manager API on
//! loopback). Every setting can be overridden by `SKYCHIMP_<SECTION>_<KEY>` (plus
//! `DATABASE_URL` and `REDIS_URL`); secrets are never settings, only the names of the
//! environment variables or files that hold them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::duration::HumanDuration;
use crate::problem::{LineIndex, Pos};

/// All settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Scheduling defaults and logging.
    pub daemon: DaemonConfig,
    /// Where runs, deliveries and the log live.
    pub database: DatabaseConfig,
    /// Optional Redis for caching, replay protection and a shared rate limit.
    pub redis: RedisConfig,
    /// How users are admitted.
    pub users: UsersConfig,
    /// Where and how fast mail goes.
    pub smtp: SmtpConfig,
    /// Retries, leases and the at-most-once switch.
    pub delivery: DeliveryConfig,
    /// The manager's HTTP API and the public links in mail.
    pub manager: ManagerConfig,
    /// The static site.
    pub site: SiteConfig,
    /// Optional DKIM signing.
    pub dkim: DkimConfig,
    /// The folder relative paths resolve against: the config file's folder.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// What loading noticed but could go on without: a `SKYCHIMP_*` variable that looks
    /// like a setting and names none. Said when a command starts.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// `[daemon]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Zone of mailings that name none.
    pub timezone: String,
    /// How late a missed occurrence may still go out after downtime.
    pub catch_up: HumanDuration,
    /// `human` or `json` logs.
    pub log_format: String,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
            catch_up: HumanDuration::secs(86_400),
            log_format: "human".into(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (created on first start) or `postgres://…`.
    pub url: String,
    /// PostgreSQL connections per process; `0`: `smtp.concurrency` + 4, at least 10.
    pub connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://var/skychimp.db".into(),
            connections: 0,
        }
    }
}

impl Config {
    /// The PostgreSQL pool's size: one connection per sending worker (each holds one for
    /// a statement at a time) plus room for the scheduler, the manager API and recovery,
    /// so none of them queues behind the workers.
    pub fn database_connections(&self) -> u32 {
        match self.database.connections {
            0 => (self.smtp.concurrency + 4).max(10),
            n => n,
        }
    }
}

/// `[redis]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// Empty: no Redis.
    pub url: String,
}

/// `[users]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsersConfig {
    /// Owners must open an emailed link before their mailings send.
    pub require_verification: bool,
    /// How long a verification link stays valid.
    pub verification_ttl: HumanDuration,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            require_verification: true,
            verification_ttl: HumanDuration::secs(7 * 86_400),
        }
    }
}

/// `[smtp]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// `outbox:DIR` or `smtp://[user@]host[:port][?tls=starttls|tls|none]`.
    pub url: String,
    /// The From header and envelope sender.
    pub from: String,
    /// Messages per second across all workers (and instances, with Redis); 0 = unlimited.
    pub rate: u32,
    /// Parallel SMTP sessions.
    pub concurrency: u32,
    /// Environment variable holding the SMTP password.
    pub password_env: String,
    /// Connect and command timeout.
    pub timeout: HumanDuration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            url: "outbox:var/outbox".into(),
            from: "Skychimp <news@example.com>".into(),
            rate: 50,
            concurrency: 8,
            password_env: "SKYCHIMP_SMTP_PASSWORD".into(),
            timeout: HumanDuration::secs(30),
        }
    }
}

/// `[delivery]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Resend deliveries a crash left `unknown` (at-least-once) instead of never (at-most-once).
    pub redeliver_unknown: bool,
    /// Attempts per recipient before a transient failure becomes final.
    pub max_attempts: u32,
    /// The first retry's delay; each further one doubles it.
    pub backoff: HumanDuration,
    /// The longest delay between two attempts.
    pub backoff_max: HumanDuration,
    /// No retry later than this after the run was created.
    pub give_up_after: HumanDuration,
    /// How long a claimed delivery stays reserved for one daemon.
    pub lease: HumanDuration,
    /// Deliveries claimed per database round trip.
    pub batch: u32,
    /// Deliveries marked `sending` per commit; a worker holds at most two chunks
    /// `sending`, so a crash leaves at most twice this many `unknown` per worker.
    pub chunk: u32,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            redeliver_unknown: false,
            max_attempts: 8,
            backoff: HumanDuration::secs(60),
            backoff_max: HumanDuration::secs(3600),
            give_up_after: HumanDuration::secs(2 * 86_400),
            lease: HumanDuration::secs(300),
            batch: 512,
            chunk: 128,
        }
    }
}

/// `[manager]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Address of the manager API.
    pub listen: String,
    /// How clients reach the unsigned routes (unsubscribe and verification links in mail).
    pub public_url: String,
    /// Request handler threads.
    pub threads: u32,
    /// Signing keys by key id; each names where its secret is.
    pub keys: BTreeMap<String, KeyConfig>,
    /// Environment variable with the secret that signs unsubscribe and verification tokens.
    pub token_secret_env: String,
    /// File with that secret when the variable is unset; generated (mode 0600) if missing.
    pub token_secret_file: String,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8025".into(),
            public_url: "http://127.0.0.1:8025".into(),
            threads: 4,
            keys: BTreeMap::from([(
                "ops".to_string(),
                KeyConfig {
                    secret_env: "SKYCHIMP_MANAGER_KEY_OPS".into(),
                    secret_file: String::new(),
                },
            )]),
            token_secret_env: "SKYCHIMP_TOKEN_SECRET".into(),
            token_secret_file: "var/token-secret".into(),
        }
    }
}

/// Where one manager key's secret is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct KeyConfig {
    /// Environment variable holding the secret.
    pub secret_env: String,
    /// Or a file holding it.
    pub secret_file: String,
}

/// `[site]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SiteConfig {
    /// The Zola-layout site.
    pub dir: String,
    /// Where the built site goes.
    pub out: String,
    /// `skychimpd run` rebuilds it on changes and after runs.
    pub rebuild: bool,
    /// How often `skychimpd run` reads the statistics again and rebuilds when they changed
    /// (sends by other processes, a manager's decision); `0`: only on changes it sees.
    pub refresh: HumanDuration,
}

impl Default for SiteConfig {
    fn default() -> Self {
        Self {
            dir: "site".into(),
            out: "public".into(),
            rebuild: true,
            refresh: HumanDuration::secs(60),
        }
    }
}

/// `[dkim]`; signing is on when `selector`, `domain` and `private_key_file` are all set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DkimConfig {
    /// DKIM selector.
    pub selector: String,
    /// Signing domain.
    pub domain: String,
    /// PEM private key.
    pub private_key_file: String,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the config file {path}: {error}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why (in the message, not a source, so it is said once).
        error: std::io::Error,
    },
    /// The file is not valid, or a setting has the wrong type.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// An environment override could not be used.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Read `path` (or only the defaults when it does not exist and `required` is false),
    /// then apply the environment.
    pub fn load(path: &Path, required: bool) -> Result<Config, ConfigError> {
        let base_dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => String::new(),
            Err(error) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        Self::from_str_with_env(&text, path, base_dir, std::env::vars())
    }

    /// Parse config text, overlay environment variables and check every value.
    pub fn from_str_with_env(
        text: &str,
        path: &Path,
        base_dir: PathBuf,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let invalid = |span: Option<std::ops::Range<usize>>, message: String| {
            let pos = span.map_or(Pos::START, |s| LineIndex::new(text).pos(text, s.start));
            ConfigError::Invalid {
                path: path.to_path_buf(),
                line: pos.line,
                column: pos.column,
                message,
            }
        };
        let mut config: Config =
            toml::from_str(text).map_err(|e| invalid(e.span(), in_words(e.message())))?;
        config.base_dir = base_dir;
        let env: Vec<(String, String)> = env.into_iter().collect();
        let from_env = config.apply_env(env.iter().cloned())?;
        config.warnings = config.unknown_variables(env.iter().map(|(var, _)| var.as_str()));
        config.validate().map_err(|(section, key, message)| {
            match from_env.iter().find(|(s, k, _)| s == section && k == key) {
                Some((_, _, var)) => ConfigError::Env {
                    var: var.clone(),
                    message,
                },
                None => {
                    let at = value_offset(text, section, key);
                    invalid(at.map(|a| a..a), format!("{section}.{key}: {message}"))
                }
            }
        })?;
        Ok(config)
    }

    /// Overlay `SKYCHIMP_<SECTION>_<KEY>`, `DATABASE_URL` and `REDIS_URL`; returns the
    /// settings they set, as (section, key, variable), so later checks can name the variable.
    ///
    /// Variables that name no setting are left alone: the same prefix also carries secrets
    /// (`SKYCHIMP_MANAGER_KEY_OPS`, `SKYCHIMP_SMTP_PASSWORD`), which are read where used.
    fn apply_env(
        &mut self,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Vec<(String, String, String)>, ConfigError> {
        let mut table = toml::Table::try_from(&*self).map_err(|e| ConfigError::Env {
            var: "SKYCHIMP_*".into(),
            message: e.to_string(),
        })?;
        let mut specific = Vec::new();
        for (var, value) in env {
            let target = match var.as_str() {
                "DATABASE_URL" => Some(("database".to_string(), "url".to_string())),
                "REDIS_URL" => Some(("redis".to_string(), "url".to_string())),
                _ => var.strip_prefix("SKYCHIMP_").and_then(|rest| {
                    let (section, key) = rest.split_once('_')?;
                    Some((section.to_ascii_lowercase(), key.to_ascii_lowercase()))
                }),
            };
            let Some((section, key)) = target else {
                continue;
            };
            // The SKYCHIMP_ form wins over DATABASE_URL / REDIS_URL.
            specific.push((var.starts_with("SKYCHIMP_"), var, section, key, value));
        }
        specific.sort_by_key(|(skychimp, ..)| *skychimp);
        let mut applied = Vec::new();
        for (_, var, section, key, value) in specific {
            let Some(toml::Value::Table(sect)) = table.get_mut(&section) else {
                continue;
            };
            let Some(current) = sect.get_mut(&key) else {
                continue;
            };
            let env_err = |message: String| ConfigError::Env {
                var: var.clone(),
                message,
            };
            *current = match current {
                toml::Value::String(_) => toml::Value::String(value),
                toml::Value::Integer(_) => toml::Value::Integer(
                    value
                        .trim()
                        .parse()
                        .map_err(|_| env_err(format!("`{value}` is not a whole number")))?,
                ),
                toml::Value::Boolean(_) => toml::Value::Boolean(match value.trim() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    _ => {
                        return Err(env_err(format!(
                            "`{value}` is not true or false (or 1/0, yes/no)"
                        )));
                    }
                }),
                _ => {
                    return Err(env_err(
                        "this setting cannot be set from the environment".into(),
                    ));
                }
            };
            // Checked one variable at a time, so an error names the variable.
            let _: Config = toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| env_err(in_words(e.message())))?;
            applied.push((section, key, var));
        }
        if !applied.is_empty() {
            let base_dir = std::mem::take(&mut self.base_dir);
            *self = toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Env {
                    var: applied
                        .iter()
                        .map(|(.., var)| var.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                    message: in_words(e.message()),
                })?;
            self.base_dir = base_dir;
        }
        Ok(applied)
    }

    /// A warning for each `SKYCHIMP_*` variable that looks like a setting but names none
    /// (its section is one, or it is a letter or two away from a setting's variable), so a
    /// misspelt override does not leave its setting at the default without a word. The
    /// secrets the configuration names (`smtp.password_env`, …), the site builder's
    /// `SKYCHIMP_SITE_TIMINGS` and other variables of the prefix (`SKYCHIMP_NOW`, …) pass.
    fn unknown_variables<'v>(&self, vars: impl Iterator<Item = &'v str>) -> Vec<String> {
        let Ok(table) = toml::Table::try_from(self) else {
            return Vec::new();
        };
        let settings: Vec<String> = table
            .iter()
            .filter_map(|(section, keys)| Some((section, keys.as_table()?)))
            .flat_map(|(section, keys)| {
                keys.keys()
                    .map(move |key| format!("SKYCHIMP_{section}_{key}").to_ascii_uppercase())
            })
            .collect();
        let mut secrets = vec![
            self.smtp.password_env.as_str(),
            self.manager.token_secret_env.as_str(),
            "SKYCHIMP_SITE_TIMINGS",
        ];
        secrets.extend(self.manager.keys.values().map(|k| k.secret_env.as_str()));
        let mut warnings: Vec<String> = vars
            .filter_map(|var| {
                let rest = var.strip_prefix("SKYCHIMP_")?;
                if settings.iter().any(|s| s == var) || secrets.contains(&var) {
                    return None;
                }
                let nearest = settings
                    .iter()
                    .map(|s| (strsim::levenshtein(s, var), s))
                    .min()
                    .filter(|(distance, _)| *distance <= 2);
                let section = rest.split_once('_').map(|(s, _)| s.to_ascii_lowercase());
                let in_a_section = section.is_some_and(|s| table.contains_key(&s));
                if nearest.is_none() && !in_a_section {
                    return None;
                }
                Some(match nearest {
                    Some((_, setting)) => format!(
                        "environment variable {var} names no setting and is ignored; did you mean {setting}?"
                    ),
                    None => format!(
                        "environment variable {var} names no setting and is ignored (README: Configuration)"
                    ),
                })
            })
            .collect();
        warnings.sort();
        warnings
    }

    /// The checks types cannot make: (section, key, what is wrong).
    fn validate(&self) -> Result<(), (&'static str, &'static str, String)> {
        if let Some(problem) = database_url_problem(&self.database.url) {
            return Err(("database", "url", problem));
        }
        if self.daemon.timezone.parse::<chrono_tz::Tz>().is_err() {
            return Err((
                "daemon",
                "timezone",
                format!("unknown time zone `{}`", self.daemon.timezone),
            ));
        }
        if !matches!(self.daemon.log_format.as_str(), "human" | "json") {
            return Err((
                "daemon",
                "log_format",
                format!(
                    "must be `human` or `json`, not `{}`",
                    self.daemon.log_format
                ),
            ));
        }
        if let Err(e) = skychimp_transport::TransportUrl::parse(&self.smtp.url) {
            return Err(("smtp", "url", e.to_string()));
        }
        let listen_ok = self
            .manager
            .listen
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !listen_ok {
            return Err((
                "manager",
                "listen",
                format!(
                    "`{}` is not HOST:PORT (e.g. 127.0.0.1:8025, or 0.0.0.0:8025 for every \
                     interface)",
                    self.manager.listen
                ),
            ));
        }
        let dkim = [
            ("selector", &self.dkim.selector),
            ("domain", &self.dkim.domain),
            ("private_key_file", &self.dkim.private_key_file),
        ];
        // Only that the three go together: the key file itself is read by `send`, `run`
        // and `send --dry-run`, not here, as `check` in a content repository's CI has no
        // production key.
        let set: Vec<&str> = dkim
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if !set.is_empty()
            && let Some((key, _)) = dkim.iter().find(|(_, v)| v.is_empty())
        {
            return Err((
                "dkim",
                key,
                format!(
                    "is empty while {} {} set: DKIM signing needs selector, domain and \
                     private_key_file together (or none of them)",
                    set.join(" and "),
                    if set.len() == 1 { "is" } else { "are" }
                ),
            ));
        }
        if skychimp_transport::compose::sender(&self.smtp.from).is_err() {
            return Err((
                "smtp",
                "from",
                format!(
                    "`{}` is not an address (write `Name <user@example.com>` or \
                     `user@example.com`, on one line)",
                    self.smtp.from
                ),
            ));
        }
        // A Redis URL that does not parse is a mistake, not an outage: read as "not
        // reachable", each daemon would send at the full rate instead of sharing it.
        let redis = self.redis.url.trim();
        if !redis.is_empty()
            && let Err(e) = redis::Client::open(redis)
        {
            return Err((
                "redis",
                "url",
                format!(
                    "`{}` is not a Redis URL ({e}): write redis://HOST:PORT/DB, rediss://… \
                     (TLS) or redis+unix:///PATH",
                    crate::cli::redact(redis)
                ),
            ));
        }
        if let Some(why) = base_url_problem(&self.manager.public_url) {
            return Err((
                "manager",
                "public_url",
                format!(
                    "`{}` {why} (it is the base of unsubscribe and verification links, \
                     e.g. https://mail.example.com)",
                    self.manager.public_url
                ),
            ));
        }
        let at_least_one = [
            ("smtp", "concurrency", self.smtp.concurrency),
            ("delivery", "max_attempts", self.delivery.max_attempts),
            ("delivery", "chunk", self.delivery.chunk),
            ("delivery", "batch", self.delivery.batch),
        ];
        for (section, key, value) in at_least_one {
            if value == 0 {
                return Err((section, key, "must be at least 1".into()));
            }
        }
        Ok(())
    }

    /// The default zone of mailings (checked at load).
    pub fn timezone(&self) -> chrono_tz::Tz {
        self.daemon.timezone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, path: impl AsRef<Path>) -> PathBuf {
        let path = path.as_ref();
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}

/// What is wrong with a base URL that links are built on by appending a path, if anything.
fn base_url_problem(url: &str) -> Option<&'static str> {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return Some("is not an http:// or https:// URL");
    };
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if host.is_empty() {
        Some("has no host")
    } else if url.contains(['?', '#']) {
        Some("has a query or a fragment, which the appended paths would follow")
    } else if !url
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '<' && c != '>')
    {
        Some("has a space, `<`, `>` or a non-ASCII character")
    } else {
        None
    }
}

/// A parser's message with Rust's type names said in words: `expected u32` is "expected a
/// whole number (0 or more)".
fn in_words(message: &str) -> String {
    const TYPES: [(&str, &str); 10] = [
        ("u8", "a whole number (0 or more)"),
        ("u16", "a whole number (0 or more)"),
        ("u32", "a whole number (0 or more)"),
        ("u64", "a whole number (0 or more)"),
        ("usize", "a whole number (0 or more)"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
        ("a boolean", "true or false"),
    ];
    let mut out = message.to_string();
    for (rust, words) in TYPES {
        let from = format!("expected {rust}");
        if let Some(at) = out.find(&from)
            && !out[at + from.len()..].starts_with(|c: char| c.is_alphanumeric())
        {
            out.replace_range(at..at + from.len(), &format!("expected {words}"));
        }
    }
    out
}

/// Where the value of `key` starts in `[section]` of a config file's text, for an error's line
/// and column.
fn value_offset(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut offset = 0;
    let mut in_section = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            in_section = trimmed.trim_matches(['[', ']']).trim() == section;
        } else if in_section
            && trimmed
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            // The value, where a type error from the parser points too.
            let eq = line.find('=')?;
            let value = &line[eq + 1..];
            return Some(offset + eq + 1 + (value.len() - value.trim_start().len()));
        }
        offset += line.len();
    }
    None
}

/// What is wrong with `[database] url`, if anything. Only the spellings the storage and the
/// daemon's SQLite lock understand the same way pass: `sqlite:var/x.db` would open a file
/// relative to the working folder and slip past the lock of `sqlite://var/x.db`. The URL
/// itself is not repeated (a PostgreSQL one may hold a password).
fn database_url_problem(url: &str) -> Option<String> {
    const FORMS: &str = "use sqlite://PATH (relative to the config file's folder), \
                         sqlite::memory: or postgres://…";
    if url == "sqlite::memory:"
        || url.starts_with("postgres://")
        || url.starts_with("postgresql://")
    {
        return None;
    }
    match url.strip_prefix("sqlite://") {
        Some("") => Some(format!("sqlite:// names no file: {FORMS}")),
        Some(_) => None,
        None if url.starts_with("sqlite:") => {
            Some(format!("`{url}` is not a form skychimpd reads: {FORMS}"))
        }
        None => {
            let scheme = url.split_once(':').map_or(url, |(scheme, _)| scheme);
            let scheme: String = scheme.chars().take(20).collect();
            Some(format!("unsupported database `{scheme}`: {FORMS}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::from_str_with_env(text, Path::new("config.toml"), PathBuf::from("/srv"), env)
    }

    #[test]
    fn the_repository_config_is_the_embedded_default() {
        let text = include_str!("../../config.toml");
        let want = Config {
            base_dir: PathBuf::from("/srv"),
            ..Config::default()
        };
        assert_eq!(parse(text, &[]).unwrap(), want);
    }

    #[test]
    fn a_misspelt_variable_is_a_warning_with_the_nearest_setting() {
        let env = [
            ("SKYCHIMP_SMTP_URLL", "smtp://mx.example.com"),
            ("SKYCHIMP_SMPT_RATE", "5"),
            ("SKYCHIMP_DELIVERY_RETRIES", "3"),
            // Settings, secrets the configuration names, and the prefix's other variables.
            ("SKYCHIMP_SMTP_URL", "smtp://mx.example.com"),
            ("SKYCHIMP_SMTP_PASSWORD", "secret"),
            ("SKYCHIMP_MANAGER_KEY_OPS", "secret"),
            ("SKYCHIMP_SITE_TIMINGS", "1"),
            ("SKYCHIMP_NOW", "2026-12-01T00:00:00Z"),
            ("SKYCHIMP_URL", "http://127.0.0.1:8025"),
            ("SKYCHIMP_TEST_POSTGRES_URL", "postgres://x"),
        ];
        let config = parse("", &env).unwrap();
        assert_eq!(
            config.warnings,
            [
                "environment variable SKYCHIMP_DELIVERY_RETRIES names no setting and is ignored (README: Configuration)",
                "environment variable SKYCHIMP_SMPT_RATE names no setting and is ignored; did you mean SKYCHIMP_SMTP_RATE?",
                "environment variable SKYCHIMP_SMTP_URLL names no setting and is ignored; did you mean SKYCHIMP_SMTP_URL?",
            ]
        );
        assert_eq!(config.smtp.rate, Config::default().smtp.rate);
        // A key whose secret comes from another variable makes that one known too.
        let keyed = "[manager.keys.next]\nsecret_env = \"SKYCHIMP_MANAGER_KEY_NEXT\"\n";
        let config = parse(keyed, &[("SKYCHIMP_MANAGER_KEY_NEXT", "secret")]).unwrap();
        assert!(config.warnings.is_empty(), "{:?}", config.warnings);
        assert!(
            !parse("", &[("SKYCHIMP_MANAGER_KEY_NEXT", "s")])
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    #[test]
    fn a_bad_value_names_its_variable_or_its_line() {
        let env_error = |var: &str, value: &str| match parse("", &[(var, value)]) {
            Err(ConfigError::Env {
                var: named,
                message,
            }) => {
                assert_eq!(named, var, "{message}");
                message
            }
            other => panic!("{var}={value}: {other:?}"),
        };
        env_error("SKYCHIMP_SMTP_RATE", "-1");
        env_error("SKYCHIMP_DAEMON_CATCH_UP", "1x");
        assert!(env_error("SKYCHIMP_DAEMON_TIMEZONE", "Mars/Base").contains("Mars/Base"));
        env_error("SKYCHIMP_DAEMON_LOG_FORMAT", "xml");
        env_error("SKYCHIMP_SMTP_CONCURRENCY", "0");
        env_error("SKYCHIMP_SMTP_FROM", "not an address");
        env_error("SKYCHIMP_MANAGER_PUBLIC_URL", "not a url");
        for bad in [
            "http://",
            "https://:8025",
            "https://mail.example.com?x=1",
            "http://a b",
        ] {
            env_error("SKYCHIMP_MANAGER_PUBLIC_URL", bad);
        }
        env_error("SKYCHIMP_SMTP_URL", "carrier-pigeon://loft");
        // DKIM: all three settings or none; the key file is not read here.
        let partial = parse("", &[("SKYCHIMP_DKIM_SELECTOR", "s1")]).unwrap_err();
        assert!(
            partial
                .to_string()
                .contains("dkim.domain: is empty while selector is set: DKIM signing needs"),
            "{partial}"
        );
        assert!(
            parse(
                "[dkim]\nselector = \"s1\"\ndomain = \"example.com\"\n",
                &[("SKYCHIMP_DKIM_PRIVATE_KEY_FILE", "/nonexistent/dkim.pem")],
            )
            .is_ok(),
            "the three together pass; the key file is read where it is used"
        );
        for bad in [
            "sqlite:var/x.db",
            "sqlite:/tmp/x.db",
            "sqlite://",
            "mysql://u:p@h/db",
        ] {
            let message = env_error("SKYCHIMP_DATABASE_URL", bad);
            assert!(message.contains("sqlite://PATH"), "{bad}: {message}");
            assert!(!message.contains("u:p"), "{message}");
        }
        for good in [
            "sqlite://var/x.db",
            "sqlite:///tmp/x.db",
            "sqlite::memory:",
            "postgres://h/db",
        ] {
            assert!(
                parse("", &[("SKYCHIMP_DATABASE_URL", good)]).is_ok(),
                "{good}"
            );
        }
        env_error("SKYCHIMP_MANAGER_LISTEN", "nonsense");
        env_error("SKYCHIMP_MANAGER_LISTEN", "127.0.0.1:99999");
        assert!(parse("", &[("SKYCHIMP_MANAGER_LISTEN", "[::1]:8025")]).is_ok());
        let from = env_error("SKYCHIMP_SMTP_FROM", "news at example");
        assert_eq!(from.matches("from").count(), 0, "said once: {from}");
        for good in [
            "http://127.0.0.1:8025",
            "https://mail.example.com/skychimp/",
        ] {
            assert!(
                parse("", &[("SKYCHIMP_MANAGER_PUBLIC_URL", good)]).is_ok(),
                "{good}"
            );
        }

        match parse("", &[("SKYCHIMP_REDIS_URL", "http://x")]) {
            Err(e) => assert!(
                e.to_string()
                    .contains("SKYCHIMP_REDIS_URL: `http://x` is not a Redis URL"),
                "{e}"
            ),
            other => panic!("{other:?}"),
        }
        for good in ["redis://127.0.0.1:6379/7", "redis+unix:///run/redis.sock"] {
            assert!(parse("", &[("SKYCHIMP_REDIS_URL", good)]).is_ok(), "{good}");
        }

        let text = "[smtp]\nrate = 5\n\n[manager]\nlisten = \"127.0.0.1:8025\"\n  public_url = \"ftp://x\"\n";
        match parse(text, &[]) {
            Err(ConfigError::Invalid {
                line,
                column,
                message,
                ..
            }) => {
                assert_eq!((line, column), (6, 16), "{message}");
                assert!(message.starts_with("manager.public_url: "), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_pool_grows_with_the_workers() {
        assert_eq!(parse("", &[]).unwrap().database_connections(), 12);
        let c = parse("", &[("SKYCHIMP_SMTP_CONCURRENCY", "2")]).unwrap();
        assert_eq!(c.database_connections(), 10);
        let c = parse("", &[("SKYCHIMP_SMTP_CONCURRENCY", "32")]).unwrap();
        assert_eq!(c.database_connections(), 36);
        let c = parse("[database]\nconnections = 5\n", &[]).unwrap();
        assert_eq!(c.database_connections(), 5);
    }

    #[test]
    fn environment_overrides_by_type() {
        let c = parse(
            "",
            &[
                ("SKYCHIMP_SMTP_URL", "smtp://mx.example.com"),
                ("SKYCHIMP_SMTP_RATE", "5"),
                ("SKYCHIMP_USERS_REQUIRE_VERIFICATION", "false"),
                ("SKYCHIMP_DAEMON_CATCH_UP", "2h"),
                ("DATABASE_URL", "postgres://a/b"),
                ("SKYCHIMP_MANAGER_KEY_OPS", "not a setting, a secret"),
            ],
        )
        .unwrap();
        assert_eq!(c.smtp.url, "smtp://mx.example.com");
        assert_eq!(c.smtp.rate, 5);
        assert!(!c.users.require_verification);
        assert_eq!(c.daemon.catch_up.to_string(), "2h");
        assert_eq!(c.database.url, "postgres://a/b");
        let c = parse(
            "",
            &[
                ("DATABASE_URL", "postgres://a/b"),
                ("SKYCHIMP_DATABASE_URL", "postgres://c/d"),
            ],
        )
        .unwrap();
        assert_eq!(c.database.url, "postgres://c/d");
    }

    #[test]
    fn errors_name_the_place() {
        let e = parse("[smtp]\nrate = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "config.toml:2:8: invalid type: string \"fast\", expected a whole number (0 or more)"
        );
        let e = parse("", &[("SKYCHIMP_SMTP_RATE", "-1")])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("expected a whole number (0 or more)"), "{e}");
        let e = parse("[users]\nrequire_verification = \"no\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("expected true or false"), "{e}");
        let e = parse("[smtp]\nspeed = 5\n", &[]).unwrap_err().to_string();
        assert!(
            e.starts_with("config.toml:2:1:") && e.contains("speed"),
            "{e}"
        );
        let e = parse("", &[("SKYCHIMP_SMTP_RATE", "fast")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SKYCHIMP_SMTP_RATE") && e.contains("whole number"),
            "{e}"
        );
        let e = parse("[daemon]\ntimezone = \"Mars/Olympus\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.toml:2:12:") && e.contains("unknown time zone"),
            "{e}"
        );
        let e = parse("[daemon]\ncatch_up = \"soon\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config.toml:2:12:") && e.contains("not a duration"),
            "{e}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_folder() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.resolve("var/outbox"), PathBuf::from("/srv/var/outbox"));
        assert_eq!(c.resolve("/abs"), PathBuf::from("/abs"));
    }
}
