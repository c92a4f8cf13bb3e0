//! Optional DKIM signing (`[dkim]` in config.toml).
//!
//! Uses lettre's `dkim` feature. The key is parsed once into a [`DkimSigner`] (RSA key
//! parsing is slow), which is then shared by every composition. The signature covers the
//! headers a receiver needs to trust, including `List-Unsubscribe` and
//! `List-Unsubscribe-Post`, which RFC 8058 requires to be signed for one-click
//! unsubscribe to be honoured; canonicalization is relaxed/relaxed, the most robust
//! against relays re-wrapping headers.

use lettre::Message;
use lettre::message::dkim::{
    DkimCanonicalization, DkimCanonicalizationType, DkimConfig as LettreDkimConfig,
    DkimSigningAlgorithm, DkimSigningKey,
};
use lettre::message::header::HeaderName;

/// The `[dkim]` settings: what a receiver looks up in DNS and the key that signs.
#[derive(Clone)]
pub struct DkimConfig {
    /// The selector: the public key is published at `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The signing domain (`d=`), normally the From domain.
    pub domain: String,
    /// The private key: an RSA key in PKCS#1 PEM (`-----BEGIN RSA PRIVATE KEY-----`), or an
    /// Ed25519 key as the base64 of its 32 raw bytes.
    pub private_key_pem: String,
}

impl std::fmt::Debug for DkimConfig {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimConfig")
            .field("selector", &self.selector)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// Why a DKIM key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    /// A PKCS#8 RSA key, which lettre cannot read.
    #[error(
        "dkim private key is PKCS#8 ('BEGIN PRIVATE KEY'); convert it to PKCS#1 with `openssl rsa -in key.pem -traditional -out key.rsa.pem`"
    )]
    Pkcs8,
    /// The key does not parse.
    #[error("dkim private key: {0}")]
    BadKey(String),
    /// Empty selector or domain.
    #[error("dkim: selector and domain must not be empty")]
    MissingField,
}

/// A parsed key plus the signing settings; build once, share for every message.
#[derive(Debug)]
pub struct DkimSigner {
    config: LettreDkimConfig,
}

/// The headers covered by the signature; signing a header that is absent is harmless.
const SIGNED_HEADERS: [&str; 9] = [
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
];

impl DkimSigner {
    /// Parses the key; fails with an actionable message if it cannot be used.
    pub fn new(config: &DkimConfig) -> Result<DkimSigner, DkimError> {
        if config.selector.trim().is_empty() || config.domain.trim().is_empty() {
            return Err(DkimError::MissingField);
        }
        let pem = config.private_key_pem.trim();
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            DkimSigningKey::new(pem, DkimSigningAlgorithm::Rsa)
        } else if pem.contains("BEGIN PRIVATE KEY") {
            return Err(DkimError::Pkcs8);
        } else {
            DkimSigningKey::new(pem, DkimSigningAlgorithm::Ed25519)
        }
        .map_err(|e| DkimError::BadKey(e.to_string()))?;
        let headers = SIGNED_HEADERS
            .iter()
            .map(|h| HeaderName::new_from_ascii_str(h))
            .collect();
        Ok(DkimSigner {
            config: LettreDkimConfig::new(
                config.selector.trim().to_owned(),
                config.domain.trim().to_owned(),
                key,
                headers,
                DkimCanonicalization {
                    header: DkimCanonicalizationType::Relaxed,
                    body: DkimCanonicalizationType::Relaxed,
                },
            ),
        })
    }

    /// Adds a `DKIM-Signature` header to `message`.
    pub(crate) fn sign(&self, message: &mut Message) {
        message.sign(&self.config);
    }
}
