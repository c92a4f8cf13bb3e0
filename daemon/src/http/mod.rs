//! The HTTP listener inside `skychimpd run` (tiny_http, on its own threads beside tokio).
//!
//! Unsigned routes live here: `/healthz`, `/verify/{token}` and `/unsubscribe/{token}`
//! (a page with a button on GET, RFC 8058 one-click on POST). Handlers never send mail:
//! they record a decision in the database and wake the task that acts on it.

pub mod api;
mod pages;

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use skychimp_storage::{Storage, Store, address_key, owner_of};
use tiny_http::{Header, Method, Request, Response};
use tokio::sync::Notify;

use crate::clock::Clock;
use crate::daemon::verify::{Verified, Verifier};
use crate::tokens::TokenSecret;

/// Bodies larger than this are refused with 413.
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
pub struct HttpState {
    /// The daemon's tokio runtime, to run database calls from the listener's threads.
    pub runtime: tokio::runtime::Handle,
    /// The database.
    pub store: Store,
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Signs and checks link tokens.
    pub secret: TokenSecret,
    /// Checks verification links.
    pub verifier: Arc<Verifier>,
    /// Wakes the scheduler when a decision changes what may send (a user verified).
    pub state_changed: Arc<Notify>,
    /// The catalog in use.
    pub catalog: crate::delivery::CatalogHandle,
    /// Manager keys: id → secret.
    pub keys: HashMap<String, Vec<u8>>,
    /// Signatures already used.
    pub replay: Arc<dyn api::ReplayStore>,
    /// Cached read responses.
    pub cache: Arc<dyn api::ResponseCache>,
    /// `[users] require_verification`.
    pub require_verification: bool,
    /// `[daemon] catch_up`.
    pub catch_up: std::time::Duration,
    /// Counters for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// This process's delivery workers' stop list (disable, block).
    pub halts: Arc<crate::delivery::Halts>,
}

/// A running listener; [`HttpServer::stop`] ends it.
pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl HttpServer {
    /// Bind `addr` and serve with `threads` handler threads.
    pub fn start(addr: &str, threads: usize, state: Arc<HttpState>) -> anyhow::Result<HttpServer> {
        let server = tiny_http::Server::http(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let local = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| anyhow::anyhow!("{addr} is not an IP address"))?;
        let server = Arc::new(server);
        let threads = (0..threads.max(1))
            .map(|i| {
                let (server, state) = (server.clone(), state.clone());
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        while let Ok(request) = server.recv() {
                            handle(&state, request);
                        }
                    })
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(HttpServer {
            server,
            threads,
            addr: local,
        })
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting and wait for the handlers to finish.
    pub fn stop(self) {
        for _ in &self.threads {
            self.server.unblock();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).unwrap_or_else(|()| {
        // Both come from this file and are valid ASCII.
        Header::from_bytes(&b"X-Invalid"[..], &b"1"[..]).unwrap_or_else(|()| unreachable!())
    })
}

/// A response: status, content type and body.
pub struct Reply {
    pub(crate) status: u16,
    content_type: &'static str,
    pub(crate) body: String,
}

impl Reply {
    /// JSON.
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body: value.to_string(),
        }
    }

    /// A JSON body already serialized (from the cache).
    pub fn raw_json(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            body,
        }
    }

    /// Prometheus text.
    pub fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; version=0.0.4",
            body,
        }
    }

    /// An HTML page.
    pub fn html(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/html; charset=utf-8",
            body,
        }
    }

    /// A JSON error as DESIGN.md specifies: `{"error": "...", "code": "..."}`.
    pub fn error(status: u16, code: &str, message: &str) -> Reply {
        Reply::json(status, &serde_json::json!({"error": message, "code": code}))
    }
}

fn handle(state: &HttpState, mut request: Request) {
    let method = request.method().clone();
    let url = request.url().to_string();
    let path = url.split('?').next().unwrap_or("").to_string();
    // `//v1/…` too: the API refuses it (`bad_path`) as a second spelling of a route.
    let api_path = path.trim_start_matches('/');
    let mut body = Vec::new();
    let too_big = request
        .as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_or(true, |n| n > MAX_BODY);
    let reply = if too_big {
        Reply::error(413, "too_large", "the request body is over 64 KiB")
    } else if api_path == "v1" || api_path.starts_with("v1/") {
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect();
        let peer = request.remote_addr().map(|a| a.to_string());
        api::handle(
            state,
            &api::ApiRequest {
                method: &method,
                path_and_query: &url,
                headers: &headers,
                body: &body,
                peer,
            },
        )
    } else {
        route(state, &method, &path)
    };
    let response = Response::from_string(reply.body)
        .with_status_code(reply.status)
        .with_header(header("Content-Type", reply.content_type))
        .with_header(header("Cache-Control", "no-store"));
    if let Err(e) = request.respond(response) {
        tracing::debug!("client went away before the response: {e}");
    }
}

fn route(state: &HttpState, method: &Method, path: &str) -> Reply {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::Get, ["healthz"]) => Reply::json(200, &serde_json::json!({"status": "ok"})),
        (Method::Get, ["metrics"]) => metrics(state),
        (Method::Get, ["verify", token]) => verify(state, token),
        (Method::Get, ["unsubscribe", token]) => unsubscribe_page(state, token),
        (Method::Post, ["unsubscribe", token]) => unsubscribe(state, token),
        (Method::Post, ["unsubscribe", token, "undo", key]) => resubscribe(state, token, key),
        (_, ["healthz"] | ["verify", _] | ["unsubscribe", _] | ["unsubscribe", _, "undo", _]) => {
            Reply::error(
                405,
                "method_not_allowed",
                "this route does not take that method",
            )
        }
        _ => Reply::error(404, "not_found", "no such route"),
    }
}

fn metrics(state: &HttpState) -> Reply {
    let catalog = state
        .catalog
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let stats = state.runtime.block_on(state.store.stats(state.clock.now()));
    match stats {
        Ok(s) => Reply::text(
            200,
            state.metrics.render(
                s.queued,
                s.runs,
                catalog.problems().iter().filter(|p| p.is_error()).count(),
                catalog.mailings().len(),
            ),
        ),
        Err(e) => {
            tracing::error!("metrics: {e}");
            Reply::text(503, "# the database did not answer\n".into())
        }
    }
}

fn verify(state: &HttpState, token: &str) -> Reply {
    match state.runtime.block_on(state.verifier.open(token)) {
        Ok(Verified::Confirmed { email, .. }) => {
            state.cache.invalidate();
            state.state_changed.notify_waiters();
            Reply::html(
                200,
                pages::page(
                    "Address confirmed",
                    &format!("Thank you: {email} is confirmed. Your mailings can send now."),
                ),
            )
        }
        Ok(Verified::AlreadyConfirmed { email, .. }) => Reply::html(
            200,
            pages::page(
                "Already confirmed",
                &format!("{email} was confirmed already; nothing else to do."),
            ),
        ),
        Ok(Verified::Superseded) => Reply::html(
            410,
            pages::page(
                "Link replaced",
                "A newer confirmation link was sent, or the address changed. Use the latest email you received.",
            ),
        ),
        Ok(Verified::Expired) => {
            // The verifier's next pass mails a new link (the expired one no longer counts).
            state.state_changed.notify_waiters();
            Reply::html(
                410,
                pages::page(
                    "Link expired",
                    "This confirmation link has expired. A new one is on its way to your address: use the latest email you receive.",
                ),
            )
        }
        Ok(Verified::Invalid) => Reply::html(
            400,
            pages::page(
                "Invalid link",
                "This link is not valid. Check that it was copied whole.",
            ),
        ),
        Err(e) => {
            tracing::error!("verification: {e}");
            Reply::html(
                503,
                pages::page(
                    "Try again later",
                    "The service could not record this right now. Please try the link again in a minute.",
                ),
            )
        }
    }
}

fn unsubscribe_page(state: &HttpState, token: &str) -> Reply {
    match state.secret.check_unsubscribe(token) {
        Ok((mailing, address)) => {
            // Asking again someone who already left would suggest that it did not work.
            let owner = owner_of(&mailing);
            match state
                .runtime
                .block_on(state.store.is_unsubscribed(owner, &address))
            {
                // No button to take it back here: anyone with the link (the owner collects
                // them from their own mail) could. Only the page that confirmed it has one.
                Ok(true) => Reply::html(
                    200,
                    pages::page(
                        "Unsubscribed",
                        &format!(
                            "{address} is unsubscribed: it receives no more mailings from this sender."
                        ),
                    ),
                ),
                // The form does not need the database; the POST will say if it is down.
                _ => {
                    // The sender as the recipient knows them: the owner's name from
                    // users.toml (their id when they are gone from it).
                    let name = api::catalog(state)
                        .users()
                        .get(owner)
                        .map_or_else(|| owner.to_string(), |u| format!("{} ({owner})", u.name));
                    Reply::html(200, pages::unsubscribe_form(&name, &address))
                }
            }
        }
        Err(_) => Reply::html(
            400,
            pages::page(
                "Invalid link",
                "This unsubscribe link is not valid. Check that it was copied whole.",
            ),
        ),
    }
}

fn unsubscribe(state: &HttpState, token: &str) -> Reply {
    let Ok((mailing, address)) = state.secret.check_unsubscribe(token) else {
        return Reply::html(
            400,
            pages::page("Invalid link", "This unsubscribe link is not valid."),
        );
    };
    let owner = owner_of(&mailing).to_string();
    let now = state.clock.now();
    match state.runtime.block_on(
        state
            .store
            .unsubscribe(&owner, &address, Some(&mailing), now),
    ) {
        Ok(added) => {
            state.cache.invalidate();
            tracing::info!(%owner, %mailing, "a client unsubscribed");
            let text = format!("{address} will receive no more mailings from this sender.");
            // The button only for the unsubscribe this POST made (a repeated POST shows none).
            let page = if added {
                let undo = state.secret.undo_token(&owner, &address_key(&address), now);
                pages::unsubscribed(&text, token, &undo)
            } else {
                pages::page("Unsubscribed", &text)
            };
            Reply::html(200, page)
        }
        Err(e) => {
            tracing::error!("unsubscribe: {e}");
            Reply::html(
                503,
                pages::page(
                    "Try again later",
                    "The unsubscribe could not be recorded right now. Please try again in a minute.",
                ),
            )
        }
    }
}

/// The "Subscribe again" button of the page that confirmed an unsubscribe: its key names
/// that unsubscribe (owner, address, time), signed, so neither the link alone nor an old
/// key undoes it, and only for [`pages::UNDO_DAYS`]. Runs created from then on include
/// the address again.
fn resubscribe(state: &HttpState, token: &str, key: &str) -> Reply {
    let invalid = || {
        Reply::html(
            400,
            pages::page(
                "Invalid link",
                "This button is not valid: it takes back only the unsubscribe its page confirmed.",
            ),
        )
    };
    let (Ok((mailing, address)), Ok((key_owner, key_address, at))) = (
        state.secret.check_unsubscribe(token),
        state.secret.check_undo(key),
    ) else {
        return invalid();
    };
    let unavailable = |e: skychimp_storage::StorageError| {
        tracing::error!("subscribe again: {e}");
        Reply::html(
            503,
            pages::page(
                "Try again later",
                "This could not be recorded right now. Please try again in a minute.",
            ),
        )
    };
    let owner = owner_of(&mailing).to_string();
    if key_owner != owner || key_address != address_key(&address) {
        return invalid();
    }
    if state.clock.now() - at > chrono::Duration::days(pages::UNDO_DAYS) {
        return Reply::html(
            410,
            pages::page(
                "Too late",
                &format!(
                    "This page could take the unsubscribe back for {} days only.",
                    pages::UNDO_DAYS
                ),
            ),
        );
    }
    // Only that unsubscribe: not a later one of the same address.
    let current = state.runtime.block_on(state.store.unsubscribes(&owner));
    let current = match current {
        Ok(list) => list.into_iter().find(|u| u.address == key_address),
        Err(e) => {
            return unavailable(e);
        }
    };
    match current {
        Some(u) if u.at == at => {}
        // Taken back already, or unsubscribed again since.
        _ => {
            return Reply::html(
                200,
                pages::page(
                    "Nothing to take back",
                    &format!("{address} is not unsubscribed by this page's unsubscribe."),
                ),
            );
        }
    }
    match state
        .runtime
        .block_on(state.store.resubscribe(&owner, &address))
    {
        Ok(_) => {
            state.cache.invalidate();
            tracing::info!(%owner, %mailing, "a client subscribed again");
            Reply::html(
                200,
                pages::page(
                    "Subscribed again",
                    &format!("{address} receives this sender's mailings again."),
                ),
            )
        }
        Err(e) => unavailable(e),
    }
}
