//! `skychimpd run`: the daemon.
//!
//! A few long-lived tasks, each owning its state and stopping on one signal:
//! - the **watcher** turns file changes into catalog reloads (a broken file keeps its last
//!   good version: see [`crate::catalog`]);
//! - the **scheduler** applies the due rule on every reload, state change and at each next
//!   occurrence, sleeping in between;
//! - the **delivery workers** send what is queued ([`crate::delivery`]);
//! - the **verifier** mails verification links to new users;
//! - the **HTTP listener** serves `/healthz`, `/verify` and `/unsubscribe` on its own threads;
//! - a **recovery** timer takes over deliveries whose lease expired (a dead instance) and
//!   marks finished runs;
//! - the **site** task rebuilds the static site, debounced, after changes and finished runs,
//!   and when the statistics changed by other hands (checked every `[site] refresh`).
//!
//! On SIGTERM/SIGINT the workers finish the SMTP transactions in flight, record them, and
//! the process exits 0; a restart resumes what is queued.

pub mod scheduler;
pub mod verify;
pub mod watcher;

use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use skychimp_storage::{Interrupted, Storage};
use tokio::sync::{Notify, mpsc, watch};

use crate::catalog::{Catalog, LoadOptions};
use crate::cli::{Setup, counted};
use crate::clock::Clock;
use crate::delivery::{self, CatalogHandle, Deliverer, Scope, Settings};
use crate::http::{HttpServer, HttpState};
use crate::schedule::Status;
use crate::tokens::TokenSecret;

use self::scheduler::Scheduler;
use self::verify::Verifier;
use self::watcher::Change;

/// How long file events are gathered before one reload.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Start logging as `[daemon] log_format` says; `RUST_LOG` filters (default `info`).
pub fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn,notify=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Run the daemon until SIGTERM/SIGINT.
pub fn run(setup: Setup) -> anyhow::Result<ExitCode> {
    init_logging(setup.config.daemon.log_format == "json");
    for warning in &setup.config.warnings {
        tracing::warn!("{warning}");
    }
    let runtime = crate::cli::runtime()?;
    runtime.block_on(serve(setup))
}

/// With a SQLite file, the lock that makes this the one daemon on it (held until the
/// process ends): a second `skychimpd run` on the same file is refused with a sentence
/// instead of contending for its single writer. Commands (`send`, `logs`…) do not take it.
fn sqlite_daemon_lock(setup: &Setup) -> anyhow::Result<Option<std::fs::File>> {
    use std::os::fd::AsRawFd as _;
    let Some(db) = setup.sqlite_file() else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(format!("{}.daemon-lock", db.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        anyhow::bail!(
            "another `skychimpd run` is using {} (a SQLite file serves one daemon; several \
             daemons share a PostgreSQL database)",
            db.display()
        );
    }
    Ok(Some(file))
}

/// Log the problems of a (re)loaded catalog; after a reload, only the new ones.
fn log_problems(catalog: &Catalog, previous: Option<&Catalog>) {
    for p in catalog.problems() {
        if previous.is_some_and(|prev| prev.problems().contains(p)) {
            continue;
        }
        if p.is_error() {
            tracing::warn!(target: "skychimpd::catalog", "{p}");
        } else {
            tracing::info!(target: "skychimpd::catalog", "{p}");
        }
    }
}

async fn serve(setup: Setup) -> anyhow::Result<ExitCode> {
    // From here on SIGTERM/SIGINT stop the daemon cleanly, even during start-up.
    let stopped = crate::shutdown::signal();
    let clock: Arc<dyn Clock> = Arc::from(crate::clock::from_env().map_err(anyhow::Error::msg)?);
    let config = setup.config.clone();
    let root = setup.root.clone();
    let options = LoadOptions {
        default_timezone: config.timezone(),
        now: clock.now(),
    };
    // Watch before the first load: a file changed while the daemon starts (migrations,
    // recovery and the listener take a while) must still reach the catalog. Events wait in
    // the channel until the reload task runs; an extra reload is harmless.
    let (change_tx, mut change_rx) = mpsc::unbounded_channel();
    let site_dir = std::path::PathBuf::from(&config.site.dir);
    let _watcher = match watcher::watch(&root, site_dir, DEBOUNCE, change_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::error!(
                "cannot watch {}: {e}; changes need a restart",
                root.display()
            );
            None
        }
    };
    let catalog = Catalog::load(&root, &options, None)?;
    log_problems(&catalog, None);
    let _only_daemon = sqlite_daemon_lock(&setup)?;
    let store = setup.store().await?;
    let recovered = crate::cli::recover_dead_local(&setup, &store).await?
        + store
            .recover_interrupted(
                clock.now(),
                Interrupted::ExpiredLeases,
                config.delivery.redeliver_unknown,
            )
            .await?;
    if recovered > 0 {
        tracing::warn!(
            recovered,
            "deliveries interrupted by a crash were marked {}",
            if config.delivery.redeliver_unknown {
                "queued again (redeliver_unknown)"
            } else {
                "unknown (not resent)"
            }
        );
    }
    let transport = delivery::transport_from_config(&config)?;
    let dkim = delivery::dkim_from_config(&config)?;
    let secret = TokenSecret::load(&config)?;
    let redis = crate::redis::from_config(&config)
        .await
        .unwrap_or_else(|why| {
            tracing::warn!("{why}");
            None
        });
    let rate = crate::redis::rate_limit(redis.as_ref(), f64::from(config.smtp.rate));
    Deliverer::catalog_arrives(&store, &catalog, clock.now()).await?;
    let handle: CatalogHandle = Arc::new(RwLock::new(Arc::new(catalog)));

    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        transport.clone(),
        rate,
        Settings::from_config(&config),
        secret.clone(),
        clock.clone(),
        handle.clone(),
        dkim.clone(),
    ));
    deliverer.hold_stopped().await?;
    let scheduler = Arc::new(Scheduler::new(
        store.clone(),
        handle.clone(),
        clock.clone(),
        config.daemon.catch_up.0,
        config.users.require_verification,
    ));
    let verifier = Arc::new(Verifier::new(
        store.clone(),
        handle.clone(),
        clock.clone(),
        secret.clone(),
        config.manager.public_url.clone(),
        config.smtp.from.clone(),
        config.users.verification_ttl.0,
        dkim,
    ));
    let state_changed = Arc::new(Notify::new());
    let runtime = tokio::runtime::Handle::current();
    let cache = crate::redis::response_cache(redis.as_ref(), runtime.clone());
    let http = HttpServer::start(
        &config.manager.listen,
        config.manager.threads as usize,
        Arc::new(HttpState {
            runtime: runtime.clone(),
            store: store.clone(),
            clock: clock.clone(),
            secret: secret.clone(),
            verifier: verifier.clone(),
            state_changed: state_changed.clone(),
            catalog: handle.clone(),
            keys: manager_keys(&config),
            replay: crate::redis::replay_store(redis.as_ref(), runtime),
            cache: cache.clone(),
            require_verification: config.users.require_verification,
            catch_up: config.daemon.catch_up.0,
            metrics: deliverer.metrics(),
            halts: deliverer.halts(),
        }),
    )?;

    print_startup(
        &setup,
        &store,
        &handle,
        &scheduler,
        &transport,
        http.addr(),
        clock.now(),
    )
    .await;

    let (stop_tx, stop_rx) = watch::channel(false);

    let reloaded = Arc::new(Notify::new());
    // Verification links: at start and after each reload.
    let verify_task = {
        let (verifier, transport, reloaded, state_changed, mut stop) = (
            verifier.clone(),
            transport.clone(),
            reloaded.clone(),
            state_changed.clone(),
            stop_rx.clone(),
        );
        let enabled = config.users.require_verification;
        let (backoff, backoff_max) = (config.delivery.backoff.0, config.delivery.backoff_max.0);
        tokio::spawn(async move {
            if !enabled {
                return;
            }
            let mut sender = transport.connect();
            // Consecutive passes with a link deferred (or a database error): the next pass
            // waits backoff, doubled each time, up to backoff_max; a reload does not wait.
            let mut failures: u32 = 0;
            loop {
                // Registered before the pass, so a reload (or an expired link opened: a
                // state change) during it is not lost.
                let reload = reloaded.notified();
                let state = state_changed.notified();
                tokio::pin!(reload, state);
                reload.as_mut().enable();
                state.as_mut().enable();
                match verifier.send_pending(&mut sender).await {
                    Ok(pass) if pass.deferred.is_empty() => failures = 0,
                    Ok(_) => failures = failures.saturating_add(1),
                    Err(e) => {
                        tracing::error!("verification links: {e}");
                        failures = failures.saturating_add(1);
                    }
                }
                let retry = (failures > 0).then(|| {
                    backoff
                        .saturating_mul(2u32.saturating_pow(failures - 1))
                        .min(backoff_max)
                });
                tokio::select! {
                    _ = &mut reload => {}
                    _ = &mut state => {}
                    _ = async {
                        match retry {
                            Some(after) => tokio::time::sleep(after).await,
                            None => std::future::pending().await,
                        }
                    } => {}
                    _ = stop.changed() => break,
                }
            }
            sender.close().await;
        })
    };

    // The site: rebuilt (debounced) when its sources or the catalog change or a run
    // finishes; and when the statistics changed after a manager's decision or by the
    // `[site] refresh` clock (sends by another process).
    let site_changed = Arc::new(Notify::new());
    let site_task = {
        let (store, handle, clock, site_changed, state_changed, mut stop) = (
            store.clone(),
            handle.clone(),
            clock.clone(),
            site_changed.clone(),
            state_changed.clone(),
            stop_rx.clone(),
        );
        let config = config.clone();
        tokio::spawn(async move {
            let options = crate::site::options(&config, None);
            if !config.site.rebuild || !options.site_dir.join("config.toml").exists() {
                return;
            }
            let refresh = config.site.refresh.0;
            // The figures of the last build; a wake-up that finds the same ones builds
            // nothing, unless the site's sources may have changed (`forced`).
            let mut built: Option<serde_json::Value> = None;
            let (mut forced, mut first) = (true, true);
            loop {
                if !std::mem::take(&mut first) {
                    let tick = async {
                        if refresh.is_zero() {
                            std::future::pending().await
                        } else {
                            tokio::time::sleep(refresh).await
                        }
                    };
                    tokio::select! {
                        _ = site_changed.notified() => forced = true,
                        _ = state_changed.notified() => {}
                        _ = tick => {}
                        _ = stop.changed() => break,
                    }
                }
                // Debounce: build once things have been quiet for a second.
                loop {
                    tokio::select! {
                        _ = site_changed.notified() => forced = true,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => break,
                        _ = stop.changed() => return,
                    }
                }
                let catalog = handle.read().unwrap_or_else(|e| e.into_inner()).clone();
                let now = clock.now();
                let facts =
                    crate::facts::load(&store, &catalog, config.users.require_verification).await;
                let sent = store.sent_total().await;
                let (facts, sent) = match (facts, sent) {
                    (Ok(f), Ok(s)) => (f, s),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!("site statistics: {e}");
                        continue;
                    }
                };
                let stats =
                    crate::site::stats(&catalog, &facts, sent, now, config.daemon.catch_up.0);
                let figures = crate::site::figures(&stats);
                if !forced && built.as_ref() == Some(&figures) {
                    continue;
                }
                (forced, built) = (false, Some(figures));
                let options = options.clone();
                match tokio::task::spawn_blocking(move || {
                    crate::site::build(&options, &stats, None)
                })
                .await
                {
                    Ok(Ok(report)) => tracing::info!(
                        pages = report.pages,
                        ms = report.elapsed.as_millis() as u64,
                        "site rebuilt"
                    ),
                    Ok(Err(e)) => tracing::error!("site not rebuilt, the last good one stays: {e}"),
                    Err(e) => tracing::error!("site build stopped: {e}"),
                }
            }
        })
    };

    // Reloads.
    let reload_task = {
        let (handle, reloaded, root, site_changed, mut stop) = (
            handle.clone(),
            reloaded.clone(),
            root.clone(),
            site_changed.clone(),
            stop_rx.clone(),
        );
        let (tz, clock) = (config.timezone(), clock.clone());
        let metrics = deliverer.metrics();
        let (deliverer, store) = (deliverer.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    c = change_rx.recv() => c,
                    _ = stop.changed() => None,
                };
                let Some(change) = change else { break };
                site_changed.notify_one();
                if change != Change::Catalog {
                    continue;
                }
                let previous = handle.read().unwrap_or_else(|e| e.into_inner()).clone();
                let (root, options) = (
                    root.clone(),
                    LoadOptions {
                        default_timezone: tz,
                        now: clock.now(),
                    },
                );
                let started = std::time::Instant::now();
                let loaded = tokio::task::spawn_blocking(move || {
                    Catalog::load(&root, &options, Some(&previous)).map(|c| (c, previous))
                })
                .await;
                match loaded {
                    Ok(Ok((catalog, previous))) => {
                        log_problems(&catalog, Some(&previous));
                        // Before the scheduler can see a renamed mailing as a new one.
                        if let Err(e) =
                            Deliverer::catalog_arrives(&store, &catalog, clock.now()).await
                        {
                            tracing::error!("noting the catalog's mailings: {e}");
                        }
                        tracing::info!(
                            mailings = catalog.mailings().len(),
                            lists = catalog.lists().len(),
                            errors = catalog.problems().iter().filter(|p| p.is_error()).count(),
                            ms = started.elapsed().as_millis() as u64,
                            "catalog reloaded"
                        );
                        *handle.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(catalog);
                        if let Err(e) = deliverer.hold_stopped().await {
                            tracing::error!("holding the runs of stopped mailings: {e}");
                        }
                        crate::metrics::Metrics::inc(&metrics.reloads);
                        reloaded.notify_waiters();
                    }
                    Ok(Err(e)) => tracing::error!("reload failed, keeping the catalog in use: {e}"),
                    Err(e) => tracing::error!("reload failed, keeping the catalog in use: {e}"),
                }
            }
        })
    };

    // The scheduler: a pass, then sleep until the next occurrence or a change.
    let schedule_task = {
        let (scheduler, deliverer, reloaded, state_changed, clock, mut stop) = (
            scheduler.clone(),
            deliverer.clone(),
            reloaded.clone(),
            state_changed.clone(),
            clock.clone(),
            stop_rx.clone(),
        );
        tokio::spawn(async move {
            loop {
                // Register interest before the pass so a change during it is not lost.
                let reload = reloaded.notified();
                let state = state_changed.notified();
                tokio::pin!(reload, state);
                reload.as_mut().enable();
                state.as_mut().enable();
                // A confirmation through this daemon releases a held run at once.
                if let Err(e) = deliverer.hold_stopped().await {
                    tracing::error!("holding the runs of stopped mailings: {e}");
                }
                let wait = match scheduler.tick().await {
                    Ok(tick) => {
                        if !tick.created.is_empty() {
                            deliverer.wake();
                        }
                        match tick.next {
                            Some(next) => {
                                (next - clock.now()).to_std().unwrap_or_default()
                                    + Duration::from_millis(5)
                            }
                            None => Duration::from_secs(3600),
                        }
                    }
                    Err(e) => {
                        tracing::error!("scheduler: {e}; trying again in 10 s");
                        Duration::from_secs(10)
                    }
                };
                // A long sleep is cut at an hour so a changed wall clock is noticed.
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
                    _ = &mut reload => {}
                    _ = &mut state => {}
                    _ = stop.changed() => break,
                }
            }
        })
    };

    // Recovery of expired leases (a dead instance) and finishing runs.
    let recovery_task = {
        let (store, deliverer, clock, site_changed, mut stop) = (
            store.clone(),
            deliverer.clone(),
            clock.clone(),
            site_changed.clone(),
            stop_rx.clone(),
        );
        let (lease, redeliver) = (config.delivery.lease.0, config.delivery.redeliver_unknown);
        tokio::spawn(async move {
            let every = (lease / 2).clamp(Duration::from_secs(1), Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => break,
                }
                let now = clock.now();
                match store
                    .recover_interrupted(now, Interrupted::ExpiredLeases, redeliver)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(n, "took over deliveries whose lease expired"),
                    Err(e) => tracing::error!("recovery: {e}"),
                }
                match store.finish_runs(now).await {
                    Ok(finished) if !finished.is_empty() => {
                        tracing::info!(runs = ?finished.iter().map(|r| r.0).collect::<Vec<_>>(), "runs finished");
                        site_changed.notify_one();
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!("finishing runs: {e}"),
                }
                // An owner confirmed on another daemon, or a hold that a failed query left
                // stale.
                if let Err(e) = deliverer.hold_stopped().await {
                    tracing::error!("holding the runs of stopped mailings: {e}");
                }
            }
        })
    };

    let mut delivery_task = {
        let (deliverer, stop) = (deliverer.clone(), stop_rx.clone());
        tokio::spawn(async move { deliverer.run(Scope::All, stop).await })
    };

    let ended_early = tokio::select! {
        _ = stopped => None,
        r = &mut delivery_task => Some(r),
    };
    tracing::info!("stopping: finishing the SMTP transactions in flight");
    let _ = stop_tx.send(true);
    let delivery_result = match ended_early {
        Some(r) => r,
        None => delivery_task.await,
    };
    for task in [
        verify_task,
        reload_task,
        schedule_task,
        recovery_task,
        site_task,
    ] {
        let _ = task.await;
    }
    http.stop();
    let _ = store.finish_runs(clock.now()).await;
    store.close().await;
    match delivery_result {
        Ok(Ok(_)) => {
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(anyhow::anyhow!("delivery stopped: {e}")),
    }
}

/// The manager keys whose secrets are available: id → secret. Keys without one are
/// logged, with why, and left out.
pub fn manager_keys(config: &crate::config::Config) -> std::collections::HashMap<String, Vec<u8>> {
    let mut keys = std::collections::HashMap::new();
    for id in config.manager.keys.keys() {
        match key_secret(config, id) {
            Ok(secret) => {
                keys.insert(id.clone(), secret);
            }
            Err(why) => tracing::warn!(key = %id, "manager key {why}; its requests are refused"),
        }
    }
    keys
}

/// The secret of manager key `id`: its `secret_env` variable if set and not empty, else
/// its `secret_file`'s content (trimmed). Or why there is none, to follow "manager key ".
pub fn key_secret(config: &crate::config::Config, id: &str) -> Result<Vec<u8>, String> {
    let Some(key) = config.manager.keys.get(id) else {
        return Err(format!("`{id}` is not in [manager.keys]"));
    };
    if let Some(secret) = (!key.secret_env.is_empty())
        .then(|| std::env::var(&key.secret_env).ok())
        .flatten()
        .filter(|s| !s.is_empty())
    {
        return Ok(secret.into_bytes());
    }
    if key.secret_file.is_empty() {
        let env = if key.secret_env.is_empty() {
            "secret_env"
        } else {
            &key.secret_env
        };
        return Err(format!("`{id}` has no secret: set {env} or secret_file"));
    }
    let path = config.resolve(&key.secret_file);
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => Err(format!("`{id}`: secret_file {} is empty", path.display())),
        Err(e) => Err(format!(
            "`{id}`: cannot read secret_file {}: {e}",
            path.display()
        )),
    }
}

async fn print_startup(
    setup: &Setup,
    store: &skychimp_storage::Store,
    handle: &CatalogHandle,
    scheduler: &Scheduler,
    transport: &skychimp_transport::Transport,
    addr: std::net::SocketAddr,
    now: chrono::DateTime<chrono::Utc>,
) {
    let catalog = handle.read().unwrap_or_else(|e| e.into_inner()).clone();
    let clients: usize = catalog.lists().values().map(|l| l.clients.len()).sum();
    let facts = scheduler.facts().await.unwrap_or_default();
    let subscribed = crate::facts::subscribed(store, catalog.mailings().values().map(|m| &**m))
        .await
        .unwrap_or_default();
    let mut out = format!(
        "skychimpd {}: {}, {} ({}, {} unique), {}; {} in the files\n",
        env!("CARGO_PKG_VERSION"),
        counted(catalog.users().len() as i64, "user"),
        counted(catalog.lists().len() as i64, "list"),
        counted(clients as i64, "client"),
        catalog.unique_clients(),
        counted(catalog.mailings().len() as i64, "mailing"),
        counted(
            catalog.problems().iter().filter(|p| p.is_error()).count() as i64,
            "problem"
        ),
    );
    for m in catalog.mailings().values() {
        let f = facts.get(&m.id).copied().unwrap_or_default();
        let catch_up = m.catch_up.unwrap_or(setup.config.daemon.catch_up.0);
        let next = match crate::schedule::next_send(&m.schedule, m.enabled, &f, now, catch_up) {
            (_, Some(t)) => format!(
                "{} ({})",
                t.with_timezone(&m.schedule.timezone)
                    .format("%Y-%m-%d %H:%M %Z"),
                t.format("%H:%M UTC")
            ),
            (Status::Created | Status::Running | Status::Finished, None) => {
                "no occurrence left".into()
            }
            (held, None) => format!("held: {held}"),
        };
        out.push_str(&format!(
            "  {:<28} {:<24} {:>17}  next: {next}\n",
            m.id,
            m.schedule.repeat.to_string(),
            counted(
                subscribed
                    .get(&m.id)
                    .copied()
                    .unwrap_or(m.recipient_count()) as i64,
                "recipient"
            )
        ));
    }
    out.push_str(&format!("  mail goes to   {}\n", transport.url()));
    out.push_str(&format!(
        "  database       {}\n",
        crate::cli::redact(&setup.database_url())
    ));
    out.push_str(&format!("  listening on   http://{addr}\n"));
    if setup.config.daemon.log_format == "json" {
        // One event per line, so a log shipper sees JSON only.
        for line in out.lines() {
            tracing::info!("{}", line.trim());
        }
    } else {
        eprint!("{out}");
    }
}
