//! Address verification: new users (and changed addresses) get a signed, expiring link;
//! opening it marks them verified, and their mailings may send.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use skychimp_storage::{Storage, Store};
use skychimp_transport::{DkimSigner, NoticeInput, SendOutcome, Sender, compose_notice};

use crate::catalog::User;
use crate::clock::Clock;
use crate::delivery::CatalogHandle;
use crate::tokens::{TokenError, TokenSecret};

/// What opening a verification link did, as the page says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// The address is confirmed now.
    Confirmed { user: String, email: String },
    /// It was confirmed before (the link was used already).
    AlreadyConfirmed { user: String, email: String },
    /// A newer link was sent since, or the address in users.toml changed.
    Superseded,
    /// Past its validity.
    Expired,
    /// Not a link we sent.
    Invalid,
}

/// What one pass of [`Verifier::send_pending`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Users whose link went out.
    pub mailed: Vec<String>,
    /// Users whose link met a temporary failure (4xx, no connection, a timeout): it is
    /// forgotten, so the next pass sends a new one; the caller schedules that pass.
    pub deferred: Vec<String>,
}

/// Sends verification links and checks them.
pub struct Verifier {
    store: Store,
    catalog: CatalogHandle,
    clock: Arc<dyn Clock>,
    secret: TokenSecret,
    public_url: String,
    from: String,
    ttl: Duration,
    /// `[dkim]`: the links are signed like every message (a domain whose DMARC policy
    /// rejects unsigned mail would otherwise refuse the one mail that lets owners send).
    dkim: Option<Arc<DkimSigner>>,
}

impl Verifier {
    /// A verifier; links are built from `public_url` and valid for `ttl`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        catalog: CatalogHandle,
        clock: Arc<dyn Clock>,
        secret: TokenSecret,
        public_url: String,
        from: String,
        ttl: Duration,
        dkim: Option<Arc<DkimSigner>>,
    ) -> Self {
        Self {
            store,
            catalog,
            clock,
            secret,
            public_url,
            from,
            ttl,
            dkim,
        }
    }

    /// The link for one user and address (with a fresh nonce).
    fn link(&self, user: &User, nonce: &str, expires: DateTime<Utc>) -> String {
        let token = self.secret.sign(
            "verify",
            &[
                &user.id,
                &user.email,
                nonce,
                &expires.timestamp().to_string(),
            ],
        );
        format!("{}/verify/{token}", self.public_url.trim_end_matches('/'))
    }

    /// Mail a link to every user who needs one: not verified for their current address,
    /// and no link for that address sent within its validity. A link refused for good (5xx)
    /// counts as sent: the address is wrong, and a new link goes when users.toml changes it
    /// or the validity ends.
    pub async fn send_pending(
        &self,
        sender: &mut Sender,
    ) -> Result<Pass, skychimp_storage::StorageError> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let now = self.clock.now();
        // A link recorded after this is still valid: no new one goes to the same address.
        let fresh_since = now - chrono::Duration::from_std(self.ttl).unwrap_or_default();
        let mut pass = Pass::default();
        for user in catalog.users().values() {
            let state = self.store.user_state(&user.id).await?;
            if state
                .as_ref()
                .is_some_and(|s| s.is_verified_for(&user.email))
            {
                continue;
            }
            let recently_sent = state.as_ref().is_some_and(|s| {
                s.verification_email
                    .as_deref()
                    .is_some_and(|e| e.eq_ignore_ascii_case(&user.email))
                    && s.verification_sent_at.is_some_and(|at| at > fresh_since)
            });
            if recently_sent {
                continue;
            }
            let nonce = format!("{:016x}", fastrand::u64(..));
            let expires = now + chrono::Duration::from_std(self.ttl).unwrap_or_default();
            let link = self.link(user, &nonce, expires);
            let text = format!(
                "Hello {},\n\nyou were added as an owner of mailings on Skychimp. Confirm that {} is your address by opening this link:\n\n{link}\n\nThe link is valid until {}. Until you open it, your mailings do not send.\n",
                user.name,
                user.email,
                expires.format("%Y-%m-%d %H:%M UTC"),
            );
            let html = crate::delivery::render::markdown_to_html(
                &text.replace(&link, &format!("<{link}>")),
            );
            let message = compose_notice(&NoticeInput {
                from: &self.from,
                to_name: &user.name,
                to_address: &user.email,
                subject: "Confirm your address for Skychimp",
                text: &text,
                html: &html,
                date: std::time::SystemTime::from(now),
                dkim: self.dkim.as_deref(),
            });
            let message = match message {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(user = %user.id, "cannot compose the verification mail: {e}");
                    continue;
                }
            };
            // Record first: a crash after sending must not mail the user twice at restart.
            // Another daemon on the same database may have recorded its own link since the
            // look above: then it sends, not this one.
            if !self
                .store
                .claim_verification(&user.id, &user.email, &nonce, now, fresh_since)
                .await?
            {
                tracing::info!(user = %user.id, email = %user.email, "verification link sent by another instance");
                continue;
            }
            let report = sender.send(&message).await;
            match &report.outcome {
                SendOutcome::Sent { .. } => {
                    tracing::info!(user = %user.id, email = %user.email, "verification link sent");
                    pass.mailed.push(user.id.clone());
                }
                SendOutcome::Transient { .. } => {
                    self.store
                        .forget_verification_sent(&user.id, &nonce)
                        .await?;
                    tracing::warn!(user = %user.id, email = %user.email, reply = report.outcome.reply(), "verification link not sent; retried with [delivery] backoff");
                    pass.deferred.push(user.id.clone());
                }
                SendOutcome::Permanent { .. } => {
                    tracing::warn!(user = %user.id, email = %user.email, reply = report.outcome.reply(), "verification link refused for good: check the address in users.toml (a new link goes when it changes, or after [users] verification_ttl)");
                }
            }
        }
        Ok(pass)
    }

    /// Open a verification link.
    pub async fn open(&self, token: &str) -> Result<Verified, skychimp_storage::StorageError> {
        let fields = match self.secret.verify("verify", token) {
            Ok(f) => f,
            Err(TokenError::Invalid | TokenError::Expired) => return Ok(Verified::Invalid),
        };
        let [user, email, nonce, expires] = match <[String; 4]>::try_from(fields) {
            Ok(f) => f,
            Err(_) => return Ok(Verified::Invalid),
        };
        let Ok(expires) = expires.parse::<i64>() else {
            return Ok(Verified::Invalid);
        };
        let state = self.store.user_state(&user).await?;
        let current = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .users()
            .get(&user)
            .map(|u| u.email.clone());
        // A link to an address the user no longer has is replaced, even if it was once
        // confirmed: "already confirmed" would tell them nothing is left to do while their
        // mailings wait for the new address.
        if !current.is_some_and(|c| c.eq_ignore_ascii_case(&email)) {
            return Ok(Verified::Superseded);
        }
        if state.as_ref().is_some_and(|s| s.is_verified_for(&email)) {
            return Ok(Verified::AlreadyConfirmed { user, email });
        }
        if self.clock.now().timestamp() > expires {
            return Ok(Verified::Expired);
        }
        let same_nonce =
            state.as_ref().and_then(|s| s.verification_nonce.as_deref()) == Some(nonce.as_str());
        if !same_nonce {
            return Ok(Verified::Superseded);
        }
        self.store
            .set_verified(&user, &email, self.clock.now())
            .await?;
        tracing::info!(%user, %email, "address verified");
        Ok(Verified::Confirmed { user, email })
    }
}
