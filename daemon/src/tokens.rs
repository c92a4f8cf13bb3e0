//! Signed tokens in links: one-click unsubscribe and address verification.
//!
//! A token is `base64url(payload) "." base64url(HMAC-SHA256(secret, kind || payload))`, so
//! the server keeps no table of issued links and a forged or altered link is refused. The
//! secret comes from the environment, or from a file generated once with mode 0600 in the
//! zero-setup mode.

use std::io::Write;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::config::Config;

type HmacSha256 = Hmac<Sha256>;

/// The secret that signs links. Never printed.
#[derive(Clone)]
pub struct TokenSecret(Vec<u8>);

impl std::fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSecret(…)")
    }
}

/// Why a token was refused; every variant is a clear page, never a server error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token we issued, or altered.
    #[error("this link is not valid (it may have been altered or cut short)")]
    Invalid,
    /// Past its validity.
    #[error("this link has expired")]
    Expired,
}

impl TokenSecret {
    /// A secret from raw bytes (tests, and keys read from the environment).
    pub fn from_bytes(bytes: impl Into<Vec<u8>>) -> Self {
        Self(bytes.into())
    }

    /// `[manager] token_secret_env` if set, else `token_secret_file`, generated (32 random
    /// bytes, hex, mode 0600) when it does not exist yet.
    pub fn load(config: &Config) -> anyhow::Result<Self> {
        Self::read(config, true).map(|(secret, _)| secret)
    }

    /// [`TokenSecret::load`] for commands that write nothing (`preview`, `send --dry-run`):
    /// when there is no secret yet, a random one for this process only, and `true`
    /// (the links it signs open nowhere).
    pub fn load_or_sample(config: &Config) -> anyhow::Result<(Self, bool)> {
        Self::read(config, false)
    }

    fn read(config: &Config, create: bool) -> anyhow::Result<(Self, bool)> {
        use anyhow::Context as _;
        if let Ok(value) = std::env::var(&config.manager.token_secret_env) {
            if value.len() < 16 {
                anyhow::bail!(
                    "{} must hold at least 16 characters",
                    config.manager.token_secret_env
                );
            }
            return Ok((Self(value.into_bytes()), false));
        }
        let path = config.resolve(&config.manager.token_secret_file);
        match std::fs::read_to_string(&path) {
            Ok(text) if text.trim().len() >= 16 => {
                Ok((Self(text.trim().as_bytes().to_vec()), false))
            }
            Ok(_) => anyhow::bail!(
                "{}: the token secret is too short (16 characters at least)",
                path.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
                let mut raw = [0u8; 32];
                getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
                Ok((Self(raw.to_vec()), true))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => generate(&path)
                .map(|secret| (secret, false))
                .with_context(|| format!("generating the token secret {}", path.display())),
            Err(e) => {
                Err(e).with_context(|| format!("reading the token secret {}", path.display()))
            }
        }
    }

    fn mac(&self, kind: &str, payload: &[u8]) -> HmacSha256 {
        // A key of any length is accepted by HMAC.
        let mut mac =
            <HmacSha256 as KeyInit>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        mac.update(kind.as_bytes());
        mac.update(b"\0");
        mac.update(payload);
        mac
    }

    /// Sign `fields` (joined by NUL) as a token of `kind`.
    pub fn sign(&self, kind: &str, fields: &[&str]) -> String {
        let payload = fields.join("\0");
        let tag = self.mac(kind, payload.as_bytes()).finalize().into_bytes();
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(tag)
        )
    }

    /// Check a token of `kind` and give back its fields.
    pub fn verify(&self, kind: &str, token: &str) -> Result<Vec<String>, TokenError> {
        let (payload, tag) = token.split_once('.').ok_or(TokenError::Invalid)?;
        let payload = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|_| TokenError::Invalid)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| TokenError::Invalid)?;
        self.mac(kind, &payload)
            .verify_slice(&tag)
            .map_err(|_| TokenError::Invalid)?;
        let text = String::from_utf8(payload).map_err(|_| TokenError::Invalid)?;
        Ok(text.split('\0').map(str::to_string).collect())
    }

    /// The token in a recipient's unsubscribe link: who leaves which owner, from which mailing.
    pub fn unsubscribe_token(&self, mailing_id: &str, address: &str) -> String {
        self.sign("unsubscribe", &[mailing_id, address])
    }

    /// The (mailing id, address) an unsubscribe token stands for.
    pub fn check_unsubscribe(&self, token: &str) -> Result<(String, String), TokenError> {
        match <[String; 2]>::try_from(self.verify("unsubscribe", token)?) {
            Ok([mailing, address]) => Ok((mailing, address)),
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

impl TokenSecret {
    /// The key of the "Subscribe again" button shown once, on the page that confirms an
    /// unsubscribe made at `at`: the unsubscribe link alone (which an owner could collect
    /// from their own mail's links) cannot take an unsubscribe back.
    pub fn undo_token(&self, owner: &str, address: &str, at: DateTime<Utc>) -> String {
        self.sign(
            "undo",
            &[owner, address, &at.timestamp_millis().to_string()],
        )
    }

    /// The (owner, address, time of the unsubscribe) an undo key stands for.
    pub fn check_undo(&self, token: &str) -> Result<(String, String, DateTime<Utc>), TokenError> {
        match <[String; 3]>::try_from(self.verify("undo", token)?) {
            Ok([owner, address, at]) => {
                let at = at
                    .parse::<i64>()
                    .ok()
                    .and_then(DateTime::from_timestamp_millis)
                    .ok_or(TokenError::Invalid)?;
                Ok((owner, address, at))
            }
            Err(_) => Err(TokenError::Invalid),
        }
    }
}

/// The public unsubscribe URL of a recipient.
pub fn unsubscribe_url(public_url: &str, token: &str) -> String {
    format!("{}/unsubscribe/{token}", public_url.trim_end_matches('/'))
}

fn generate(path: &Path) -> anyhow::Result<TokenSecret> {
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(hex.as_bytes())?;
            file.write_all(b"\n")?;
            Ok(TokenSecret(hex.into_bytes()))
        }
        // Another process generated it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(TokenSecret(
            std::fs::read_to_string(path)?.trim().as_bytes().to_vec(),
        )),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let s = TokenSecret::from_bytes("0123456789abcdef0123");
        let t = s.unsubscribe_token("alice/weekly", "ivan@example.com");
        assert_eq!(
            s.check_unsubscribe(&t),
            Ok(("alice/weekly".into(), "ivan@example.com".into()))
        );
        let other = TokenSecret::from_bytes("another secret of some length");
        assert_eq!(other.check_unsubscribe(&t), Err(TokenError::Invalid));
        let mut altered = t.clone();
        altered.replace_range(0..1, if t.starts_with('Y') { "Z" } else { "Y" });
        assert_eq!(s.check_unsubscribe(&altered), Err(TokenError::Invalid));
        assert_eq!(s.check_unsubscribe("garbage"), Err(TokenError::Invalid));
        // A token of one kind is not a token of another.
        let v = s.sign("verify", &["alice/weekly", "ivan@example.com"]);
        assert_eq!(s.check_unsubscribe(&v), Err(TokenError::Invalid));
    }

    #[test]
    fn the_secret_file_is_generated_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            base_dir: dir.path().to_path_buf(),
            manager: crate::config::ManagerConfig {
                token_secret_env: "SKYCHIMP_TEST_NO_SUCH_VARIABLE".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let a = TokenSecret::load(&config).unwrap();
        let b = TokenSecret::load(&config).unwrap();
        assert_eq!(a.0, b.0);
        let path = dir.path().join("var/token-secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
