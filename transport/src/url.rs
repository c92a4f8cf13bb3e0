//! Parsing `[smtp] url`: where and how mail leaves.
//!
//! Two forms (DESIGN.md, Delivery):
//!
//! * `smtp://[user@]host[:port][?tls=starttls|tls|none]` — an SMTP relay. The password is
//!   never part of the URL (it would end up in git and in logs); the caller reads it from
//!   `SKYCHIMP_SMTP_PASSWORD` and passes it in [`crate::SmtpOptions::password`].
//! * `outbox:DIR` — write one `.eml` file per message into `DIR`, the zero-setup default.
//!
//! Defaults, chosen so that the short form does the safe thing:
//!
//! | `tls` | meaning | default port |
//! | --- | --- | --- |
//! | `starttls` | plain connect, then `STARTTLS` (required, never silently skipped) | 587 |
//! | `tls` | implicit TLS from the first byte ("SMTPS") | 465 |
//! | `none` | no encryption | 25 |
//!
//! Without `tls=`, a loopback host (`localhost`, `127.0.0.0/8`, `::1`) gets `none` — a local
//! relay rarely has a certificate for "localhost", and the traffic never leaves the machine —
//! and every other host gets `starttls`. A user name with `tls=none` to a non-loopback
//! host is refused: it would send the password in clear text across the network.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use percent_encoding::percent_decode_str;

/// Where mail goes, as written in `[smtp] url` or `SKYCHIMP_SMTP_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportUrl {
    /// An SMTP server.
    Smtp(SmtpUrl),
    /// A folder receiving one `.eml` file per message. A relative path is kept as written;
    /// the caller resolves it against the config file's folder.
    Outbox {
        /// The folder (created on first write if missing).
        dir: PathBuf,
    },
}

/// The parts of an `smtp://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpUrl {
    /// User name for `AUTH`, percent-decoded (`user%40example.com` → `user@example.com`);
    /// `None` means no authentication.
    pub user: Option<String>,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port; the default depends on [`SmtpUrl::tls`].
    pub port: u16,
    /// How the connection is encrypted.
    pub tls: TlsMode,
}

/// How an SMTP connection is encrypted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No encryption at all.
    None,
    /// Connect in clear, then upgrade with `STARTTLS` (RFC 3207); a server that does not
    /// offer it is an error, so a downgrade attack cannot strip encryption.
    StartTls,
    /// Implicit TLS from the first byte (RFC 8314), usually port 465.
    Tls,
}

impl TlsMode {
    /// The port used when the URL names none.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::StartTls => 587,
            TlsMode::Tls => 465,
        }
    }
}

impl fmt::Display for TlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsMode::None => "none",
            TlsMode::StartTls => "starttls",
            TlsMode::Tls => "tls",
        })
    }
}

/// Why a transport URL was refused; each names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// Neither `smtp://` nor `outbox:`.
    #[error(
        "transport URL '{url}': unknown scheme; expected smtp://[user@]host[:port][?tls=starttls|tls|none] or outbox:DIR"
    )]
    UnknownScheme {
        /// The whole URL.
        url: String,
    },
    /// `outbox:` with nothing after it.
    #[error("transport URL '{url}': outbox: needs a folder, e.g. outbox:var/outbox")]
    EmptyOutboxDir {
        /// The whole URL.
        url: String,
    },
    /// `smtp://` without a host.
    #[error("transport URL '{url}': missing host after smtp://")]
    MissingHost {
        /// The whole URL.
        url: String,
    },
    /// A host with characters no host name has.
    #[error("transport URL '{url}': bad host '{host}'")]
    BadHost {
        /// The whole URL.
        url: String,
        /// The host part as written.
        host: String,
    },
    /// A port that is not a number in 1..=65535.
    #[error("transport URL '{url}': bad port '{port}' (expected 1-65535)")]
    BadPort {
        /// The whole URL.
        url: String,
        /// The port part as written.
        port: String,
    },
    /// A password in the URL (`user:password@`).
    #[error(
        "transport URL '{url}': a password does not belong in the URL (it would land in git and logs); set SKYCHIMP_SMTP_PASSWORD instead"
    )]
    PasswordInUrl {
        /// The URL with the password masked.
        url: String,
    },
    /// An empty or undecodable user name.
    #[error("transport URL '{url}': bad user name '{user}'")]
    BadUser {
        /// The whole URL.
        url: String,
        /// The user part as written.
        user: String,
    },
    /// `tls=` with an unknown value.
    #[error("transport URL '{url}': bad tls '{value}' (expected starttls, tls or none)")]
    BadTls {
        /// The whole URL.
        url: String,
        /// The value as written.
        value: String,
    },
    /// A query parameter other than `tls`.
    #[error("transport URL '{url}': unknown parameter '{name}' (only tls= is known)")]
    UnknownParameter {
        /// The whole URL.
        url: String,
        /// The parameter name as written.
        name: String,
    },
    /// A path after the host (`smtp://host/x`).
    #[error("transport URL '{url}': unexpected path '{path}' after the host")]
    UnexpectedPath {
        /// The whole URL.
        url: String,
        /// The path as written.
        path: String,
    },
    /// Authentication over an unencrypted connection to another machine.
    #[error(
        "transport URL '{url}': refusing to send the password for '{user}' unencrypted to {host}; use tls=starttls or tls=tls"
    )]
    ClearTextAuth {
        /// The whole URL.
        url: String,
        /// The user name.
        user: String,
        /// The host.
        host: String,
    },
}

impl TransportUrl {
    /// Parses a transport URL; see the module documentation for the forms and defaults.
    pub fn parse(url: &str) -> Result<TransportUrl, UrlError> {
        let trimmed = url.trim();
        if let Some(dir) = trimmed.strip_prefix("outbox:") {
            if dir.is_empty() {
                return Err(UrlError::EmptyOutboxDir {
                    url: url.to_owned(),
                });
            }
            return Ok(TransportUrl::Outbox {
                dir: PathBuf::from(dir),
            });
        }
        let Some(rest) = strip_prefix_ignore_case(trimmed, "smtp://") else {
            return Err(UrlError::UnknownScheme {
                url: url.to_owned(),
            });
        };
        parse_smtp(url, rest).map(TransportUrl::Smtp)
    }
}

impl std::str::FromStr for TransportUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TransportUrl::parse(s)
    }
}

impl fmt::Display for TransportUrl {
    /// The canonical form, with every default spelled out; safe to log (never a password).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportUrl::Outbox { dir } => write!(f, "outbox:{}", dir.display()),
            TransportUrl::Smtp(s) => {
                f.write_str("smtp://")?;
                if let Some(user) = &s.user {
                    write!(
                        f,
                        "{}@",
                        percent_encoding::utf8_percent_encode(
                            user,
                            percent_encoding::NON_ALPHANUMERIC
                        )
                    )?;
                }
                if s.host.contains(':') {
                    write!(f, "[{}]", s.host)?;
                } else {
                    f.write_str(&s.host)?;
                }
                write!(f, ":{}?tls={}", s.port, s.tls)
            }
        }
    }
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_smtp(url: &str, rest: &str) -> Result<SmtpUrl, UrlError> {
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let (authority, path) = match authority_and_path.find('/') {
        Some(i) => (&authority_and_path[..i], &authority_and_path[i..]),
        None => (authority_and_path, ""),
    };
    if !path.is_empty() && path != "/" {
        return Err(UrlError::UnexpectedPath {
            url: url.to_owned(),
            path: path.to_owned(),
        });
    }

    let (user, hostport) = match authority.rsplit_once('@') {
        Some((userinfo, hp)) => {
            if let Some((u, _password)) = userinfo.split_once(':') {
                return Err(UrlError::PasswordInUrl {
                    url: url.replacen(userinfo, &format!("{u}:***"), 1),
                });
            }
            let decoded =
                percent_decode_str(userinfo)
                    .decode_utf8()
                    .map_err(|_| UrlError::BadUser {
                        url: url.to_owned(),
                        user: userinfo.to_owned(),
                    })?;
            if decoded.is_empty() || decoded.chars().any(char::is_control) {
                return Err(UrlError::BadUser {
                    url: url.to_owned(),
                    user: userinfo.to_owned(),
                });
            }
            (Some(decoded.into_owned()), hp)
        }
        None => (None, authority),
    };

    let (host, port_text) = split_host_port(url, hostport)?;
    if host.is_empty() {
        return Err(UrlError::MissingHost {
            url: url.to_owned(),
        });
    }
    let host_ok = host.parse::<IpAddr>().is_ok()
        || host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
    if !host_ok {
        return Err(UrlError::BadHost {
            url: url.to_owned(),
            host: host.to_owned(),
        });
    }

    let mut tls = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if name != "tls" {
            return Err(UrlError::UnknownParameter {
                url: url.to_owned(),
                name: name.to_owned(),
            });
        }
        tls = Some(match value.to_ascii_lowercase().as_str() {
            "starttls" => TlsMode::StartTls,
            "tls" => TlsMode::Tls,
            "none" => TlsMode::None,
            _ => {
                return Err(UrlError::BadTls {
                    url: url.to_owned(),
                    value: value.to_owned(),
                });
            }
        });
    }
    let loopback = is_loopback(host);
    let tls = tls.unwrap_or(if loopback {
        TlsMode::None
    } else {
        TlsMode::StartTls
    });

    let port = match port_text {
        None => tls.default_port(),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(UrlError::BadPort {
                    url: url.to_owned(),
                    port: p.to_owned(),
                });
            }
        },
    };

    if let Some(user) = &user
        && tls == TlsMode::None
        && !loopback
    {
        return Err(UrlError::ClearTextAuth {
            url: url.to_owned(),
            user: user.clone(),
            host: host.to_owned(),
        });
    }

    Ok(SmtpUrl {
        user,
        host: host.to_owned(),
        port,
        tls,
    })
}

/// Splits `host[:port]` or `[v6]:port`.
fn split_host_port<'a>(
    url: &str,
    hostport: &'a str,
) -> Result<(&'a str, Option<&'a str>), UrlError> {
    if let Some(inner) = hostport.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(UrlError::BadHost {
                url: url.to_owned(),
                host: hostport.to_owned(),
            });
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(UrlError::BadHost {
                    url: url.to_owned(),
                    host: hostport.to_owned(),
                }),
            },
        };
    }
    Ok(match hostport.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (hostport, None),
    })
}

/// Whether `host` names this machine, where clear text never crosses a network.
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smtp(url: &str) -> SmtpUrl {
        match TransportUrl::parse(url) {
            Ok(TransportUrl::Smtp(s)) => s,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn defaults_follow_tls_mode_and_loopback() {
        let s = smtp("smtp://mail.example.com");
        assert_eq!((s.tls, s.port, s.user), (TlsMode::StartTls, 587, None));
        let s = smtp("smtp://127.0.0.1");
        assert_eq!((s.tls, s.port), (TlsMode::None, 25));
        let s = smtp("smtp://localhost:2525");
        assert_eq!((s.tls, s.port), (TlsMode::None, 2525));
        let s = smtp("smtp://mail.example.com?tls=tls");
        assert_eq!((s.tls, s.port), (TlsMode::Tls, 465));
        let s = smtp("smtp://mail.example.com?tls=none");
        assert_eq!((s.tls, s.port), (TlsMode::None, 25));
        let s = smtp("SMTP://[::1]:26");
        assert_eq!((s.host.as_str(), s.port, s.tls), ("::1", 26, TlsMode::None));
    }

    #[test]
    fn user_is_percent_decoded() {
        let s = smtp("smtp://news%40example.com@mail.example.com:587?tls=starttls");
        assert_eq!(s.user.as_deref(), Some("news@example.com"));
        assert_eq!(s.host, "mail.example.com");
    }

    #[test]
    fn outbox_keeps_the_path() {
        assert_eq!(
            TransportUrl::parse("outbox:var/outbox"),
            Ok(TransportUrl::Outbox {
                dir: PathBuf::from("var/outbox")
            })
        );
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for url in [
            "smtp://a%40b@mail.example.com",
            "smtp://[::1]:2525",
            "outbox:var/outbox",
        ] {
            let parsed = TransportUrl::parse(url).unwrap();
            let again = TransportUrl::parse(&parsed.to_string()).unwrap();
            assert_eq!(parsed, again, "{url} -> {parsed}");
        }
        assert_eq!(
            TransportUrl::parse("smtp://mail.example.com")
                .unwrap()
                .to_string(),
            "smtp://mail.example.com:587?tls=starttls"
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        let err = |u: &str| TransportUrl::parse(u).unwrap_err().to_string();
        assert!(err("http://x").contains("unknown scheme"));
        assert!(err("outbox:").contains("needs a folder"));
        assert!(err("smtp://").contains("missing host"));
        assert!(err("smtp://host:99999").contains("bad port '99999'"));
        assert!(err("smtp://host:abc").contains("bad port 'abc'"));
        assert!(err("smtp://host?tls=ssl").contains("bad tls 'ssl'"));
        assert!(err("smtp://host?port=1").contains("unknown parameter 'port'"));
        assert!(err("smtp://ho st").contains("bad host 'ho st'"));
        assert!(err("smtp://host/path").contains("unexpected path '/path'"));
        let e = err("smtp://bob:hunter2@host");
        assert!(
            e.contains("SKYCHIMP_SMTP_PASSWORD") && !e.contains("hunter2"),
            "{e}"
        );
        let e = err("smtp://bob@mail.example.com?tls=none");
        assert!(
            e.contains("unencrypted") && e.contains("mail.example.com"),
            "{e}"
        );
        // Loopback may authenticate in clear: nothing leaves the machine.
        assert_eq!(smtp("smtp://bob@localhost").user.as_deref(), Some("bob"));
    }
}
