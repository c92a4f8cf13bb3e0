//! Delivery: turning runs into mail. Owns runs' creation, claiming, rendering, transports,
//! rate limits and retries; the HTTP layer and the CLI only ask it to act.
//!
//! Each of `smtp.concurrency` workers keeps one sender (one long-lived SMTP connection) and
//! loops: claim a batch of due deliveries (a lease in the database, so several daemons
//! share the work), then send it in small chunks. While one chunk is rendered and sent, a
//! single transaction records the previous chunk's outcomes and attempt log and marks the
//! next chunk `sending` (one statement on PostgreSQL); while a batch's last chunk is sent,
//! the next batch is claimed too. Within a chunk each message's envelope is written
//! together with the previous message's body (one SMTP round trip per message). `sending`
//! is committed before a row's SMTP transaction starts, so a crash leaves `sending` rows
//! (at most two chunks per worker) that the next start turns into `unknown` (never resent
//! unless `delivery.redeliver_unknown`).

pub mod render;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use skychimp_storage::{
    ClaimedDelivery, DeliveryId, NewRun, Outcome, OutcomeStatus, Recipient, RunId, RunKind,
    Storage, Store,
};
use skychimp_transport::{
    ComposeInput, DkimSigner, ListId, OutgoingMessage, RateLimit, RetryPolicy, SendOutcome,
    SendReport, SmtpOptions, Transport, TransportUrl, compose,
};
use tokio::sync::{Notify, watch};

use self::render::Renderer;
use crate::catalog::{Catalog, Mailing};
use crate::clock::Clock;
use crate::config::Config;
use crate::message::{ClientVars, MailingVars, OwnerVars};
use crate::tokens::{self, TokenSecret};

/// The catalog in use, swapped on reload; delivery reads titles and owner names from it.
pub type CatalogHandle = Arc<RwLock<Arc<Catalog>>>;

/// Why delivery could not go on.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The database failed.
    #[error("database: {0}")]
    Storage(#[from] skychimp_storage::StorageError),
    /// The transport URL or key is unusable.
    #[error("{0}")]
    Setup(String),
}

/// What a worker needs besides the database and the transport.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `[smtp] from`
    pub from: String,
    /// `[manager] public_url`, the base of unsubscribe links.
    pub public_url: String,
    /// How long a claim holds.
    pub lease: Duration,
    /// Deliveries claimed at once.
    pub batch: usize,
    /// Deliveries marked `sending` per commit. A worker holds at most two chunks
    /// `sending` (the one going out and the next), so a crash leaves at most twice this
    /// many `unknown` per worker.
    pub chunk: usize,
    /// Parallel workers (SMTP sessions).
    pub concurrency: usize,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// How often an idle worker looks for due work when nobody wakes it (retries coming due).
    pub idle_poll: Duration,
    /// `[users] require_verification`: an owner whose address is not confirmed has their
    /// unfinished runs held.
    pub require_verification: bool,
}

impl Settings {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        let d = &config.delivery;
        Self {
            from: config.smtp.from.clone(),
            public_url: config.manager.public_url.clone(),
            lease: d.lease.0,
            batch: d.batch as usize,
            chunk: d.chunk as usize,
            concurrency: config.smtp.concurrency as usize,
            retry: RetryPolicy {
                max_attempts: d.max_attempts,
                base: d.backoff.0,
                max_delay: d.backoff_max.0,
                max_total: d.give_up_after.0,
            },
            idle_poll: Duration::from_secs(1),
            require_verification: config.users.require_verification,
        }
    }
}

/// The transport for `[smtp]`, with the password from the environment.
pub fn transport_from_config(config: &Config) -> Result<Transport, DeliveryError> {
    let mut url = config.smtp.url.clone();
    // outbox:DIR resolves against the config file's folder like every other path.
    if let Some(dir) = url.strip_prefix("outbox:") {
        url = format!("outbox:{}", config.resolve(dir).display());
    }
    let url =
        TransportUrl::parse(&url).map_err(|e| DeliveryError::Setup(format!("[smtp] url: {e}")))?;
    let hello = config
        .smtp
        .from
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').trim().to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let password = std::env::var(&config.smtp.password_env).ok();
    // A user without a password would AUTH with an empty one, and a server refusing it
    // defers every message with a reply that names neither AUTH nor the variable. A
    // variable set to the empty string is taken as meant.
    if let (TransportUrl::Smtp(smtp), None) = (&url, &password)
        && let Some(user) = &smtp.user
    {
        return Err(DeliveryError::Setup(format!(
            "[smtp] url names the user `{user}` but {} is not set: the SMTP password comes \
             from that environment variable ([smtp] password_env), never from the URL",
            config.smtp.password_env
        )));
    }
    let options = SmtpOptions {
        hello_name: hello,
        password,
        connect_timeout: config.smtp.timeout.0,
        command_timeout: config.smtp.timeout.0,
        ..SmtpOptions::default()
    };
    Ok(Transport::new(url, options))
}

/// The DKIM signer for `[dkim]`, when configured.
pub fn dkim_from_config(config: &Config) -> Result<Option<Arc<DkimSigner>>, DeliveryError> {
    let d = &config.dkim;
    if d.selector.is_empty() && d.domain.is_empty() && d.private_key_file.is_empty() {
        return Ok(None);
    }
    if d.selector.is_empty() || d.domain.is_empty() || d.private_key_file.is_empty() {
        return Err(DeliveryError::Setup(
            "[dkim] needs selector, domain and private_key_file together".into(),
        ));
    }
    let path = config.resolve(&d.private_key_file);
    let pem = std::fs::read_to_string(&path).map_err(|e| {
        DeliveryError::Setup(format!("[dkim] private_key_file {}: {e}", path.display()))
    })?;
    let signer = DkimSigner::new(&skychimp_transport::DkimConfig {
        selector: d.selector.clone(),
        domain: d.domain.clone(),
        private_key_pem: pem,
    })
    .map_err(|e| {
        DeliveryError::Setup(format!(
            "[dkim] private_key_file {}: {e} (expected a PKCS#1 RSA key in PEM, or the \
             base64 of a 32-byte Ed25519 key)",
            path.display()
        ))
    })?;
    Ok(Some(Arc::new(signer)))
}

/// A run to create now for a mailing: its recipients, message and version are fixed here.
pub fn new_run(
    catalog: &Catalog,
    mailing: &Mailing,
    occurrence: DateTime<Utc>,
    kind: RunKind,
) -> NewRun {
    NewRun {
        mailing_id: mailing.id.clone(),
        occurrence,
        kind,
        mailing_blob: mailing.blob.clone(),
        head_commit: catalog.head_commit().map(str::to_string),
        subject: mailing.message.subject.clone(),
        body: mailing.message.body.clone(),
        recipients: mailing
            .recipients()
            .map(|c| Recipient {
                email: c.email.clone(),
                name: c.name.clone(),
                comment: c.comment.clone(),
            })
            .collect(),
    }
}

/// Which deliveries the workers take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every due delivery, until stopped (the daemon).
    All,
    /// One run's, until it has nothing queued or sending (`skychimpd send`).
    Run(RunId),
}

/// Counts of one worker's outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Accepted.
    pub sent: u64,
    /// Failed for good.
    pub failed: u64,
    /// To be retried.
    pub deferred: u64,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Self) {
        self.sent += o.sent;
        self.failed += o.failed;
        self.deferred += o.deferred;
    }
}

/// Mailings a manager disabled and owners a manager blocked through this process, with the
/// text to log. Workers look here before each SMTP transaction, so such a decision stops
/// this process's sending before its next message leaves, even for deliveries already
/// marked `sending` (they become `skipped`). Other processes learn the decision from the
/// database when they mark their next chunk.
#[derive(Debug, Default)]
pub struct Halts {
    sets: RwLock<HaltSets>,
}

#[derive(Debug, Default)]
struct HaltSets {
    /// Mailing id → why.
    mailings: HashMap<String, String>,
    /// Owner → why.
    owners: HashMap<String, String>,
    /// Mailings the catalog in use does not send (deleted from the repository, left out
    /// for an error, `enabled = false`, or of an owner not confirmed) → why. Their
    /// deliveries are held, not skipped: they go out once the mailing is back.
    held: HashMap<String, String>,
    /// The unfinished runs of the `held` mailings, which claims leave alone.
    held_runs: Vec<RunId>,
}

impl Halts {
    /// Stop (`Some(why)`) or allow again (`None`) a mailing's sending.
    pub fn mailing(&self, mailing_id: &str, why: Option<String>) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => sets.mailings.insert(mailing_id.to_string(), why),
            None => sets.mailings.remove(mailing_id),
        };
    }

    /// Stop (`Some(why)`) or allow again (`None`) all of an owner's sending.
    pub fn owner(&self, owner: &str, why: Option<String>) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        match why {
            Some(why) => sets.owners.insert(owner.to_string(), why),
            None => sets.owners.remove(owner),
        };
    }

    /// Hold the deliveries of `held` (mailing id → why) and their unfinished `runs`, and
    /// no others. Returns the mailings newly held (with why) and those released.
    pub fn hold(
        &self,
        held: HashMap<String, String>,
        runs: Vec<RunId>,
    ) -> (Vec<(String, String)>, Vec<String>) {
        let mut sets = self.sets.write().unwrap_or_else(|e| e.into_inner());
        let mut newly: Vec<(String, String)> = held
            .iter()
            .filter(|(id, _)| !sets.held.contains_key(*id))
            .map(|(id, why)| (id.clone(), why.clone()))
            .collect();
        let mut released: Vec<String> = sets
            .held
            .keys()
            .filter(|id| !held.contains_key(*id))
            .cloned()
            .collect();
        newly.sort();
        released.sort();
        sets.held = held;
        sets.held_runs = runs;
        (newly, released)
    }

    /// The runs claims leave alone.
    fn held_runs(&self) -> Vec<RunId> {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        sets.held_runs.clone()
    }

    /// What a delivery of `mailing_id` may do now, in one look.
    fn verdict(&self, mailing_id: &str) -> Verdict {
        let sets = self.sets.read().unwrap_or_else(|e| e.into_inner());
        if sets.held.contains_key(mailing_id) {
            return Verdict::Hold;
        }
        if sets.mailings.is_empty() && sets.owners.is_empty() {
            return Verdict::Go;
        }
        let owner = mailing_id.split_once('/').map_or(mailing_id, |(o, _)| o);
        match sets
            .mailings
            .get(mailing_id)
            .or_else(|| sets.owners.get(owner))
        {
            Some(why) => Verdict::Skip(why.clone()),
            None => Verdict::Go,
        }
    }
}

/// What [`Halts`] says of a delivery.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// It may go out.
    Go,
    /// Its mailing is held (see [`Halts::hold`]): it waits, given back to the queue.
    Hold,
    /// A manager stopped its mailing or owner: it is skipped, with this reason.
    Skip(String),
}

/// The delivery engine shared by the workers.
pub struct Deliverer {
    store: Store,
    transport: Transport,
    rate: Arc<dyn RateLimit>,
    settings: Settings,
    secret: TokenSecret,
    clock: Arc<dyn Clock>,
    catalog: CatalogHandle,
    dkim: Option<Arc<DkimSigner>>,
    instance: String,
    /// Woken when new work may be there (a run created, a retry due).
    wake: Notify,
    /// Decisions that stop sending at once.
    halts: Arc<Halts>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// This process's name in leases: `host:pid:start`, so a restart on the same host can tell
/// that the process holding a lease is gone.
pub fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    let start = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!("{host}:{}:{start}", std::process::id())
}

/// What one worker keeps from batch to batch: its SMTP connection, the contexts of the runs
/// it has delivered, and what it has sent.
struct Desk {
    sender: skychimp_transport::Sender,
    renderers: HashMap<RunId, Arc<RunContext>>,
    tally: Tally,
}

/// What the workers of one [`Deliverer::run`] share.
#[derive(Default)]
struct Crew {
    /// Workers holding claimed rows, or outcomes not yet recorded.
    busy: AtomicUsize,
    /// Workers delivering a batch (the others are claiming or idle): how many a claim
    /// that took all that was due can share it with.
    delivering: AtomicUsize,
    /// [`Scope::Run`] only: the database said the run has nothing `queued` or `sending`
    /// left. That stays true (a row becomes `queued` only when its run is created or when
    /// it was `sending`), so the other workers stop without asking again.
    run_done: AtomicBool,
}

/// One worker's place in [`Crew::busy`]: counted at most once whichever way it goes, and
/// no longer when it is dropped.
struct Duty<'c> {
    crew: &'c Crew,
    held: bool,
}

impl<'c> Duty<'c> {
    fn new(crew: &'c Crew) -> Self {
        Duty { crew, held: false }
    }

    /// Count this worker as busy (again a no-op while it is).
    fn hold(&mut self) {
        if !std::mem::replace(&mut self.held, true) {
            self.crew.busy.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Stop counting it; whether another worker is still busy.
    fn release(&mut self) -> bool {
        if std::mem::replace(&mut self.held, false) {
            self.crew.busy.fetch_sub(1, Ordering::SeqCst) > 1
        } else {
            self.crew.busy.load(Ordering::SeqCst) > 0
        }
    }
}

impl Drop for Duty<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

impl Deliverer {
    /// An engine; nothing is opened until the workers run.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        transport: Transport,
        rate: Arc<dyn RateLimit>,
        settings: Settings,
        secret: TokenSecret,
        clock: Arc<dyn Clock>,
        catalog: CatalogHandle,
        dkim: Option<Arc<DkimSigner>>,
    ) -> Self {
        Self {
            store,
            transport,
            rate,
            settings,
            secret,
            clock,
            catalog,
            dkim,
            instance: instance_name(),
            wake: Notify::new(),
            halts: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// The lease owner prefix of this process.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where the manager API tells the workers to stop a mailing or an owner at once.
    pub fn halts(&self) -> Arc<Halts> {
        self.halts.clone()
    }

    /// This engine's counters (for `/metrics`).
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Tell idle workers there may be work.
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// Hold the unfinished runs of the mailings the catalog in use does not send: deleted
    /// from the repository, left out for an error, `enabled = false`, or of an owner whose
    /// address is not confirmed (users.toml changed it, with verification required). Their
    /// queued deliveries stay queued (a checkout caught halfway must not skip anyone for
    /// good) and go out when the mailing is back or the address confirmed; a manager's
    /// `disable` skips them instead. Called at start, after every reload, and at each
    /// scheduler and recovery pass (a confirmation may reach another daemon); logs what it
    /// starts and stops holding.
    pub async fn hold_stopped(&self) -> Result<(), skychimp_storage::StorageError> {
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let sending = self.store.mailings_sending().await?;
        let unverified = if self.settings.require_verification && !sending.is_empty() {
            let states: HashMap<String, skychimp_storage::UserState> = self
                .store
                .user_states()
                .await?
                .into_iter()
                .map(|u| (u.user_id.clone(), u))
                .collect();
            catalog
                .users()
                .keys()
                .filter(|id| !crate::facts::confirmed(&catalog, states.get(*id), id))
                .cloned()
                .collect()
        } else {
            HashSet::new()
        };
        let mut held = HashMap::new();
        let mut runs = Vec::new();
        for id in sending {
            let why = match catalog.mailings().get(&id) {
                None => "it is not in the repository (deleted, or left out for an error)",
                Some(m) if !m.enabled => "it is paused (enabled = false)",
                Some(m) if unverified.contains(&m.owner) => {
                    "its owner has not confirmed their address"
                }
                Some(_) => continue,
            };
            let unfinished = self.store.runs_of(&id).await?;
            runs.extend(
                unfinished
                    .iter()
                    .filter(|r| r.finished_at.is_none())
                    .map(|r| r.id),
            );
            held.insert(id, why.to_string());
        }
        let (newly, released) = self.halts.hold(held, runs);
        for (mailing, why) in newly {
            tracing::warn!(
                %mailing,
                "its unfinished run is held: {why}; it goes on when the mailing is back, and `skychimpd manager disable {mailing}` skips what is left"
            );
        }
        for mailing in &released {
            tracing::info!(%mailing, "its held run goes on");
        }
        if !released.is_empty() {
            self.wake();
        }
        Ok(())
    }

    /// What the database must know before the scheduler sees `catalog`: the history of
    /// renamed mailing files follows them ([`Deliverer::adopt_renamed`]), then every mailing
    /// is noted as seen now (the due rule tells a new mailing from one that missed an
    /// occurrence by it).
    pub async fn catalog_arrives(
        store: &Store,
        catalog: &Catalog,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), skychimp_storage::StorageError> {
        Self::adopt_renamed(store, catalog).await?;
        let ids: Vec<String> = catalog.mailings().keys().cloned().collect();
        store.note_seen(&ids, now).await
    }

    /// A mailing file renamed within its owner's folder, its content unchanged (so its
    /// blob id too), is the same mailing under a new id: the history of the id it replaced
    /// (runs, log, a manager's switch) moves to it, so it neither sends its latest
    /// occurrence again as a new mailing nor leaves the old id's run held. Call with the
    /// catalog about to be used, before the scheduler sees it. A copy (the old file still
    /// there), a move to another owner (other lists, other unsubscribes) and a rename with
    /// an edit stay new mailings; so do two new files with the same content.
    pub async fn adopt_renamed(
        store: &Store,
        catalog: &Catalog,
    ) -> Result<(), skychimp_storage::StorageError> {
        let ids: Vec<String> = catalog.mailings().keys().cloned().collect();
        let ran: HashSet<String> = store.mailings_with_runs(&ids).await?.into_iter().collect();
        let new: Vec<&Arc<Mailing>> = catalog
            .mailings()
            .values()
            .filter(|m| !ran.contains(&m.id))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        let blobs: Vec<String> = new.iter().map(|m| m.blob.clone()).collect();
        let before = store.mailings_of_blobs(&blobs).await?;
        for m in &new {
            let old: Vec<&str> = before
                .iter()
                .filter(|(id, blob)| {
                    *blob == m.blob
                        && catalog.mailing(id).is_none()
                        && skychimp_storage::owner_of(id) == m.owner
                })
                .map(|(id, _)| id.as_str())
                .collect();
            let twins = new.iter().filter(|n| n.blob == m.blob).count();
            let ([from], 1) = (old.as_slice(), twins) else {
                continue;
            };
            let moved = store.rename_mailing(from, &m.id).await?;
            if moved > 0 {
                tracing::info!(from = %from, to = %m.id, runs = moved, "mailing file renamed: its runs, log and manager state follow it");
            }
        }
        Ok(())
    }

    /// Run the workers until `stop` turns true (or, for [`Scope::Run`], the run is done).
    /// On stop each worker finishes the message in flight, records it, and returns.
    pub async fn run(
        self: &Arc<Self>,
        scope: Scope,
        stop: watch::Receiver<bool>,
    ) -> Result<Tally, DeliveryError> {
        let mut tasks = tokio::task::JoinSet::new();
        let crew = Arc::new(Crew::default());
        for i in 0..self.settings.concurrency.max(1) {
            let me = self.clone();
            let stop = stop.clone();
            let crew = crew.clone();
            tasks.spawn(async move { me.worker(i, scope, stop, crew).await });
        }
        let mut total = Tally::default();
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            match done {
                Ok(Ok(t)) => total += t,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(DeliveryError::Setup(format!(
                        "a delivery worker stopped: {e}"
                    )));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// One worker's loop. With [`Scope::Run`], an idle worker asks the database whether the
    /// run is done only when no other worker of `crew` is still busy (each one wakes the
    /// idle ones when it finishes), and the first to learn that it is tells the others.
    async fn worker(
        self: Arc<Self>,
        index: usize,
        scope: Scope,
        mut stop: watch::Receiver<bool>,
        crew: Arc<Crew>,
    ) -> Result<Tally, DeliveryError> {
        let mut duty = Duty::new(&crew);
        let worker = format!("{}:{index}", self.instance);
        let mut desk = Desk {
            sender: self.transport.connect(),
            renderers: HashMap::new(),
            tally: Tally::default(),
        };
        // Whether this worker sent something since it last found nothing to claim: the
        // moment to mark finished the runs it may have completed.
        let mut worked = false;
        // The last chunk's outcomes of the delivery before (which ended when a claim found
        // nothing), recorded with the next claim's first chunk (one statement less) or as
        // soon as that claim finds nothing too. A worker
        // holding them stays busy (`duty`): their rows are still `sending`.
        let mut carry: Vec<Outcome> = Vec::new();
        let result = loop {
            if *stop.borrow() || crew.run_done.load(Ordering::SeqCst) {
                break Ok(());
            }
            // Registered before claiming, so a wake-up between the claim and the wait is
            // not lost.
            let woken = self.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            duty.hold();
            let claimed = match self.claim_batch(&worker, scope, &crew, false).await {
                Ok(c) => c,
                // Outcomes carried are recorded (and `duty` released) after the loop.
                Err(e) => break Err(e),
            };
            if claimed.is_empty() {
                let recorded = self
                    .store
                    .record_outcomes(&std::mem::take(&mut carry))
                    .await;
                let others_busy = duty.release();
                if let Err(e) = recorded {
                    break Err(e.into());
                }
                // `skychimpd send` finishes its run once, after its workers stop.
                if std::mem::take(&mut worked)
                    && scope == Scope::All
                    && let Err(e) = self.store.finish_runs(self.clock.now()).await
                {
                    tracing::error!("finishing runs: {e}");
                }
                if let Scope::Run(id) = scope
                    && !others_busy
                {
                    match self.store.run_pending(id).await {
                        Ok(0) => {
                            crew.run_done.store(true, Ordering::SeqCst);
                            break Ok(());
                        }
                        Ok(_) => {}
                        Err(e) => break Err(e.into()),
                    }
                }
                tokio::select! {
                    _ = woken => {}
                    _ = tokio::time::sleep(self.settings.idle_poll) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            crew.delivering.fetch_add(1, Ordering::SeqCst);
            let delivered = self
                .deliver(
                    &worker,
                    claimed,
                    (scope, &crew),
                    &mut desk,
                    &stop,
                    std::mem::take(&mut carry),
                )
                .await;
            crew.delivering.fetch_sub(1, Ordering::SeqCst);
            match delivered {
                Ok(last) => carry = last,
                Err(e) => break Err(e),
            }
            worked = true;
            if carry.is_empty() {
                duty.release();
                // Idle workers waiting for a run's last rows learn at once that they are
                // done.
                self.wake();
            }
        };
        let result = if carry.is_empty() {
            result
        } else {
            let recorded = self.store.record_outcomes(&carry).await;
            result.and(recorded.map(drop).map_err(DeliveryError::from))
        };
        duty.release();
        // Idle workers that left the question of the run's end to this one ask it again.
        self.wake();
        desk.sender.close().await;
        result.map(|()| desk.tally)
    }

    /// Claim a batch for `worker`. A claim that took all that was due (less than a batch)
    /// keeps only its share of it and gives the rest back for the workers that are not
    /// delivering: a run smaller than a batch would otherwise go out over one SMTP
    /// connection while the others wait. A worker that takes the rest shares it again, so
    /// it spreads in a few round trips. `delivering`: whether this worker is counted in
    /// [`Crew::delivering`] (it claims its next batch while delivering the last).
    async fn claim_batch(
        &self,
        worker: &str,
        scope: Scope,
        crew: &Crew,
        delivering: bool,
    ) -> Result<VecDeque<ClaimedDelivery>, DeliveryError> {
        let only = match scope {
            Scope::Run(id) => Some(id),
            Scope::All => None,
        };
        let mut claimed = self
            .store
            .claim(
                worker,
                self.settings.batch,
                self.settings.lease,
                self.clock.now(),
                only,
                &self.halts.held_runs(),
            )
            .await?;
        // The workers not delivering, and this one.
        let free = self
            .settings
            .concurrency
            .saturating_sub(crew.delivering.load(Ordering::SeqCst))
            .saturating_add(usize::from(delivering))
            .max(1);
        if claimed.len() < self.settings.batch && free > 1 {
            let keep = claimed.len().div_ceil(free);
            let rest: Vec<DeliveryId> = claimed.split_off(keep).iter().map(|d| d.id).collect();
            if !rest.is_empty() {
                self.store.release(worker, &rest).await?;
                self.wake();
            }
        }
        Ok(claimed.into())
    }

    /// Send claimed rows in chunks, claiming the next batch while a batch's last chunk goes
    /// out, until a claim finds nothing; stop between messages when asked.
    ///
    /// A chunk is marked `sending` (committed) before any of its SMTP transactions starts,
    /// and a row is marked only once its rate-limit slot is held: the rows of a chunk are
    /// taken together only while slots come without waiting (always, at an unlimited
    /// rate). Marking rows long before their slot would let a disabled mailing or a
    /// blocked owner keep sending for as long as they take at that rate, since a disable
    /// skips only rows not yet `sending`.
    ///
    /// While one chunk's messages go out, one transaction records the previous chunk's
    /// outcomes and marks the next chunk: the database's commit overlaps the SMTP work
    /// instead of stopping it, and a worker holds at most two chunks `sending`. When the
    /// chunk going out is its batch's last, the next batch is claimed in that time too, and
    /// its first chunk marked, so a worker never waits for a claim between batches. The
    /// first chunk is marked with `carry`, the last chunk's outcomes of the delivery before;
    /// the last chunk's outcomes are returned unrecorded, for the next (none when stopped:
    /// then what went out is recorded and the rest given back).
    async fn deliver(
        &self,
        worker: &str,
        claimed: VecDeque<ClaimedDelivery>,
        (scope, crew): (Scope, &Crew),
        desk: &mut Desk,
        stop: &watch::Receiver<bool>,
        carry: Vec<Outcome>,
    ) -> Result<Vec<Outcome>, DeliveryError> {
        let mut slots = Slots::default();
        let mut rest = claimed;
        // Whether to claim again once `rest` runs out: until a claim finds nothing.
        let mut more = true;
        // Rows of this delivery skipped or finished by another process meanwhile (a disable
        // or a block through `skychimpd manager` or another daemon): they take no rate slot.
        let mut gone: HashSet<DeliveryId> = HashSet::new();
        let first = self.next_chunk(&mut rest, &mut slots, &gone).await;
        let asked = first.len();
        let mut ready = self.record_and_mark(worker, &carry, first, stop).await?;
        if ready.len() < asked {
            self.find_gone(worker, &rest, &mut gone).await?;
        }
        let mut outcomes: Vec<Outcome> = Vec::new();
        // The claim set the lease; a slow server or the rate limit can make a batch outlast
        // it, and another instance would then take over rows this one is still sending
        // (logging them as interrupted by a crash). Renew before a third of it is gone.
        let mut renewed = std::time::Instant::now();
        // `ready` can be empty with rows left: a disable or a block skipped a whole chunk.
        while !ready.is_empty() || !rest.is_empty() {
            if renewed.elapsed() > self.settings.lease / 3 {
                let ids: Vec<DeliveryId> = ready.iter().chain(&rest).map(|d| d.id).collect();
                self.store
                    .renew_lease(&ids, worker, self.settings.lease, self.clock.now())
                    .await?;
                renewed = std::time::Instant::now();
            }
            let previous = std::mem::take(&mut outcomes);
            let sending = self.send_chunk(worker, &ready, desk, stop);
            let marking = async {
                if rest.is_empty()
                    && std::mem::take(&mut more)
                    && !*stop.borrow()
                    && !crew.run_done.load(Ordering::SeqCst)
                {
                    // A failed claim ends this delivery, not the outcomes before it: the
                    // worker's loop claims again (and stops there if the database is down).
                    match self.claim_batch(worker, scope, crew, true).await {
                        Ok(claimed) => {
                            rest = claimed;
                            more = !rest.is_empty();
                        }
                        Err(e) => tracing::warn!("{worker}: claiming the next batch: {e}"),
                    }
                }
                let next = self.next_chunk(&mut rest, &mut slots, &gone).await;
                let asked = next.iter().filter(|d| !gone.contains(&d.id)).count();
                let marked = self.record_and_mark(worker, &previous, next, stop).await?;
                Ok::<_, DeliveryError>((asked, marked))
            };
            let (sent, next) = tokio::join!(sending, marking);
            let (asked, next) = next?;
            if next.len() < asked {
                self.find_gone(worker, &rest, &mut gone).await?;
                renewed = std::time::Instant::now();
            }
            let (sent, unsent) = match sent {
                Ok(sent) => sent,
                Err(e) => {
                    // Marked but never started: give them back rather than leave them to
                    // become `unknown`; the rows not marked too, rather than at lease expiry.
                    let ids: Vec<DeliveryId> = next.iter().chain(&rest).map(|d| d.id).collect();
                    if let Err(release) = self.store.release(worker, &ids).await {
                        tracing::warn!("giving back {} deliveries: {release}", ids.len());
                    }
                    return Err(e);
                }
            };
            outcomes = sent;
            if !unsent.is_empty() || *stop.borrow() {
                // Stopped: what was not started goes back at once rather than at lease
                // expiry.
                self.store.record_outcomes(&outcomes).await?;
                let ids: Vec<DeliveryId> = unsent
                    .into_iter()
                    .chain(next.iter().chain(&rest).map(|d| d.id))
                    .collect();
                self.store.release(worker, &ids).await?;
                return Ok(Vec::new());
            }
            ready = next;
            if desk.renderers.len() > 256 {
                desk.renderers.clear();
            }
        }
        Ok(outcomes)
    }

    /// Some rows could not be marked: find which of `rest` went the same way (skipped or
    /// finished by another process), renewing the lease of the others.
    async fn find_gone(
        &self,
        worker: &str,
        rest: &VecDeque<ClaimedDelivery>,
        gone: &mut HashSet<DeliveryId>,
    ) -> Result<(), DeliveryError> {
        let ids: Vec<DeliveryId> = rest.iter().map(|d| d.id).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let held: HashSet<DeliveryId> = self
            .store
            .renew_lease(&ids, worker, self.settings.lease, self.clock.now())
            .await?
            .into_iter()
            .collect();
        gone.extend(ids.into_iter().filter(|id| !held.contains(id)));
        Ok(())
    }

    /// The next rows to mark, taken from the front of `rest`: the first once a rate slot is
    /// free, then more while slots are free at once, up to `chunk`. Empty when `rest` is. A
    /// row whose mailing or owner is halted, or that is `gone`, takes no slot: it is never
    /// sent, and waiting for it at the rate would hold back this worker (and, with Redis,
    /// every daemon).
    async fn next_chunk<'s>(
        &'s self,
        rest: &mut VecDeque<ClaimedDelivery>,
        slots: &mut Slots<'s>,
        gone: &HashSet<DeliveryId>,
    ) -> Vec<ClaimedDelivery> {
        if rest.is_empty() {
            return Vec::new();
        }
        let halted = |d: &ClaimedDelivery| {
            gone.contains(&d.id) || self.halts.verdict(&d.mailing_id) != Verdict::Go
        };
        if !halted(&rest[0]) {
            match slots.waiting.take() {
                Some(slot) => slot.await,
                None => self.rate.acquire().await,
            }
        }
        let mut n = 1;
        while n < rest.len().min(self.settings.chunk.max(1)) {
            if halted(&rest[n]) {
                n += 1;
                continue;
            }
            let mut slot = self.rate.acquire();
            let free = tokio::select! {
                biased;
                _ = &mut slot => true,
                _ = std::future::ready(()) => false,
            };
            if !free {
                slots.waiting = Some(slot);
                break;
            }
            n += 1;
        }
        rest.drain(..n).collect()
    }

    /// Record `outcomes` and mark `chunk` `sending` in one transaction. The rows marked:
    /// those still due and leased to `worker`. When stopping, only record, and give the
    /// chunk back.
    async fn record_and_mark(
        &self,
        worker: &str,
        outcomes: &[Outcome],
        chunk: Vec<ClaimedDelivery>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Vec<ClaimedDelivery>, DeliveryError> {
        let ids: Vec<DeliveryId> = chunk.iter().map(|d| d.id).collect();
        if ids.is_empty() || *stop.borrow() {
            self.store.record_outcomes(outcomes).await?;
            self.store.release(worker, &ids).await?;
            return Ok(Vec::new());
        }
        let marked = self
            .store
            .record_and_mark_sending(outcomes, &ids, worker, self.clock.now())
            .await?;
        Ok(chunk
            .into_iter()
            .filter(|d| marked.contains(&d.id))
            .collect())
    }
    /// One SMTP transaction per row of a marked chunk, in order; stops between messages
    /// when asked, and skips a row whose mailing or owner was halted meanwhile. Each row's
    /// message is made before the previous one goes, so that its envelope can travel with
    /// the previous body (`Sender::send_then`). The outcomes, and the ids it did not start.
    async fn send_chunk(
        &self,
        worker: &str,
        chunk: &[ClaimedDelivery],
        desk: &mut Desk,
        stop: &watch::Receiver<bool>,
    ) -> Result<(Vec<Outcome>, Vec<DeliveryId>), DeliveryError> {
        use crate::metrics::Metrics;
        let mut outcomes = Vec::with_capacity(chunk.len());
        let mut unsent = Vec::new();
        // The message after the one going out, made while it is known that it will go, so
        // its envelope can travel with the current body (`send_then`).
        let mut ahead: Option<Prepared> = None;
        for (i, d) in chunk.iter().enumerate() {
            // Held since the claim (a reload): given back with the rest of the batch, which
            // the next claim takes again without the held runs.
            if *stop.borrow() {
                unsent.push(d.id);
                continue;
            }
            match self.halts.verdict(&d.mailing_id) {
                Verdict::Go => {}
                Verdict::Hold => {
                    unsent.push(d.id);
                    continue;
                }
                Verdict::Skip(why) => {
                    self.store
                        .skip_marked(worker, &[d.id], &why, self.clock.now())
                        .await?;
                    continue;
                }
            }
            let ctx = self.context(d.run_id, &mut desk.renderers).await?;
            let current = match ahead.take() {
                Some(p) if p.id == d.id => p,
                _ => self.prepare(d, &ctx),
            };
            let next = match chunk.get(i + 1) {
                Some(n) if !*stop.borrow() && self.halts.verdict(&n.mailing_id) == Verdict::Go => {
                    // A failure to load its run surfaces at that delivery's own turn.
                    match self.context(n.run_id, &mut desk.renderers).await {
                        Ok(next_ctx) => Some(self.prepare(n, &next_ctx)),
                        Err(_) => None,
                    }
                }
                _ => None,
            };
            let outcome = match current.message {
                Ok(message) => {
                    let then = next.as_ref().and_then(|n| n.message.as_ref().ok());
                    let report = desk.sender.send_then(&message, then).await;
                    self.outcome(d, &ctx, report)
                }
                Err(failed) => failed,
            };
            ahead = next;
            match outcome.status {
                OutcomeStatus::Sent => {
                    desk.tally.sent += 1;
                    Metrics::inc(&self.metrics.sent);
                }
                OutcomeStatus::Failed => {
                    desk.tally.failed += 1;
                    Metrics::inc(&self.metrics.failed);
                }
                OutcomeStatus::Deferred { .. } => {
                    desk.tally.deferred += 1;
                    Metrics::inc(&self.metrics.deferred);
                }
            }
            outcomes.push(outcome);
        }
        Ok((outcomes, unsent))
    }

    /// The run's context, loaded once per worker.
    async fn context(
        &self,
        id: RunId,
        renderers: &mut HashMap<RunId, Arc<RunContext>>,
    ) -> Result<Arc<RunContext>, DeliveryError> {
        if let Some(c) = renderers.get(&id) {
            return Ok(c.clone());
        }
        let c = Arc::new(self.run_context(id).await?);
        renderers.insert(id, c.clone());
        Ok(c)
    }

    async fn run_context(&self, id: RunId) -> Result<RunContext, DeliveryError> {
        let run = self.store.run(id).await?.ok_or_else(|| {
            DeliveryError::Setup(format!("run {} vanished from the database", id.0))
        })?;
        let catalog = self
            .catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mailing = catalog.mailing(&run.mailing_id);
        let (owner_id, name) = run
            .mailing_id
            .split_once('/')
            .unwrap_or((&run.mailing_id, ""));
        let title = mailing.map_or_else(|| run.mailing_id.clone(), |m| m.title.clone());
        let owner = catalog.users().get(owner_id).cloned();
        let owner_name = owner
            .as_ref()
            .map_or_else(|| owner_id.to_string(), |u| u.name.clone());
        let owner_email = owner.as_ref().map_or_else(String::new, |u| u.email.clone());
        let renderer = Renderer::new(
            &run.subject,
            &run.body,
            MailingVars {
                id: &run.mailing_id,
                title: &title,
            },
            OwnerVars {
                name: &owner_name,
                email: &owner_email,
            },
        );
        Ok(RunContext {
            mailing_id: run.mailing_id.clone(),
            owner: owner_id.to_string(),
            name: name.to_string(),
            created_at: run.created_at,
            renderer: renderer.map_err(|e| e.to_string()),
        })
    }

    /// One recipient's message, rendered and composed, or the failure to record when it
    /// cannot be.
    fn prepare(&self, d: &ClaimedDelivery, ctx: &RunContext) -> Prepared {
        Prepared {
            id: d.id,
            message: self.message_for(d, ctx),
        }
    }

    fn message_for(
        &self,
        d: &ClaimedDelivery,
        ctx: &RunContext,
    ) -> Result<OutgoingMessage, Outcome> {
        let started = std::time::Instant::now();
        let fail = |reply: String| Outcome {
            delivery_id: d.id,
            status: OutcomeStatus::Failed,
            smtp_code: None,
            reply,
            at: self.clock.now(),
            duration: started.elapsed(),
        };
        let renderer = match &ctx.renderer {
            Ok(r) => r,
            Err(e) => return Err(fail(format!("template: {e}"))),
        };
        let token = self.secret.unsubscribe_token(&ctx.mailing_id, &d.address);
        let unsubscribe = tokens::unsubscribe_url(&self.settings.public_url, &token);
        let comment = d.comment.as_deref().unwrap_or("");
        let rendered = match renderer.render(
            ClientVars {
                email: &d.email,
                name: &d.name,
                comment,
            },
            &unsubscribe,
        ) {
            Ok(r) => r,
            // `describe` says `template: …` itself.
            Err(e) => return Err(fail(crate::message::describe(&e))),
        };
        let message = compose(&ComposeInput {
            from: &self.settings.from,
            to_name: &d.name,
            to_address: &d.email,
            subject: &rendered.subject,
            text: &rendered.text,
            html: &rendered.html,
            list: ListId {
                owner: &ctx.owner,
                name: &ctx.name,
            },
            unsubscribe_url: &unsubscribe,
            date: SystemTime::from(self.clock.now()),
            dkim: self.dkim.as_deref(),
        });
        message.map_err(|e| fail(format!("compose: {e}")))
    }

    /// What to record of one SMTP transaction (or outbox write).
    fn outcome(&self, d: &ClaimedDelivery, ctx: &RunContext, report: SendReport) -> Outcome {
        let now = self.clock.now();
        let (status, code) = match &report.outcome {
            SendOutcome::Sent { code, .. } => (OutcomeStatus::Sent, Some(*code)),
            SendOutcome::Permanent { code, .. } => (OutcomeStatus::Failed, Some(*code)),
            SendOutcome::Transient { code, .. } => {
                let attempts = u32::try_from(d.attempts).unwrap_or(0).saturating_add(1);
                let delay = self.settings.retry.next_delay(
                    attempts,
                    SystemTime::from(ctx.created_at),
                    SystemTime::from(now),
                    fastrand::f64(),
                );
                match delay.and_then(|d| chrono::Duration::from_std(d).ok()) {
                    Some(delay) => (
                        OutcomeStatus::Deferred {
                            next_attempt_at: now + delay,
                        },
                        *code,
                    ),
                    None => (OutcomeStatus::Failed, *code),
                }
            }
        };
        Outcome {
            delivery_id: d.id,
            status,
            smtp_code: code,
            reply: report.outcome.reply().to_string(),
            at: now,
            duration: report.duration,
        }
    }
}

/// A message ready to go, or why it cannot.
struct Prepared {
    id: DeliveryId,
    message: Result<OutgoingMessage, Outcome>,
}

/// What every delivery of one run shares.
struct RunContext {
    mailing_id: String,
    owner: String,
    name: String,
    created_at: DateTime<Utc>,
    renderer: Result<Renderer, String>,
}

/// A rate-limit slot reserved but not yet free: it belongs to the next chunk.
#[derive(Default)]
struct Slots<'a> {
    waiting: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>>>,
}
