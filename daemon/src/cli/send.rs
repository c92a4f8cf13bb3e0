//! `skychimpd send` and `skychimpd preview`: one run now, and what a recipient would see.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use skychimp_storage::{Creation, RunKind, Storage, address_key};
use skychimp_transport::{ComposeInput, ListId, compose};

use super::{Cli, Setup};
use crate::catalog::{Catalog, Client, Mailing};
use crate::delivery::render::Renderer;
use crate::delivery::{self, Deliverer, Scope, Settings};
use crate::tokens::{self, TokenSecret};

/// Why a mailing may not send now, as a sentence; `None` when it may. Without a store (a
/// database not created yet) nothing is disabled or blocked and nobody verified.
pub(crate) async fn refusal(
    setup: &Setup,
    store: Option<&skychimp_storage::Store>,
    catalog: &Catalog,
    m: &Mailing,
) -> anyhow::Result<Option<String>> {
    let (mailing_state, user_state) = match store {
        Some(store) => (
            store.mailing_state(&m.id).await?,
            store.user_state(&m.owner).await?,
        ),
        None => (None, None),
    };
    if !m.enabled {
        return Ok(Some(format!(
            "mailing `{}` is paused (enabled = false in {}); set enabled = true to send it",
            m.id,
            m.path.display()
        )));
    }
    if let Some(state) = mailing_state
        && state.disabled
    {
        let why = state.reason.map(|r| format!(" ({r})")).unwrap_or_default();
        return Ok(Some(format!(
            "mailing `{}` is disabled by a manager{why}",
            m.id
        )));
    }
    if let Some(s) = &user_state
        && s.blocked
    {
        let why = s
            .blocked_reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        return Ok(Some(format!(
            "owner `{}` is blocked by a manager{why}",
            m.owner
        )));
    }
    if setup.config.users.require_verification
        && !crate::facts::confirmed(catalog, user_state.as_ref(), &m.owner)
    {
        let email = catalog
            .users()
            .get(&m.owner)
            .map_or("", |u| u.email.as_str());
        return Ok(Some(format!(
            "owner `{}` has not verified {email} yet: `skychimpd run` mails them a link ([users] require_verification = false turns this off)",
            m.owner
        )));
    }
    Ok(None)
}

/// Why a new run of `m` would mail its recipients again while an earlier one still has
/// deliveries to make (queued, retried later or going out now: a relay that was down, a
/// `send` running elsewhere, the daemon's own run), as a sentence; `None` when none has.
/// Sending again is the natural "retry" after deferrals, and each recipient would get
/// every run.
pub(crate) async fn unfinished(
    store: &skychimp_storage::Store,
    m: &Mailing,
) -> anyhow::Result<Option<String>> {
    // A run's counts read all its deliveries: only when one of its runs is not marked
    // finished (a long history of finished runs costs nothing here).
    let runs = store.runs_of(&m.id).await?;
    if runs.iter().all(|r| r.finished_at.is_some()) {
        return Ok(None);
    }
    let reports = store.report(&m.id).await?;
    let Some(r) = reports
        .iter()
        .find(|r| r.queued + r.deferred + r.sending > 0)
    else {
        return Ok(None);
    };
    let mut left = Vec::new();
    for (n, what) in [
        (r.queued, "queued"),
        (r.deferred, "deferred"),
        (r.sending, "sending"),
    ] {
        if n > 0 {
            left.push(format!("{n} {what}"));
        }
    }
    Ok(Some(format!(
        "run {} of `{}` is not finished ({}): a `send` of it still running or `skychimpd run` \
         delivers it (deferred deliveries at their retry), and a new run would mail its \
         recipients again; see `skychimpd report {}`",
        r.run_id.0,
        m.id,
        left.join(", "),
        m.id
    )))
}

/// `skychimpd send OWNER/NAME [--dry-run]`
pub fn send(cli: &Cli, id: &str, dry_run: bool) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let catalog = Arc::new(setup.catalog()?);
    let mailing = setup.find_mailing(&catalog, id)?.clone();
    let rt = super::runtime()?;
    rt.block_on(async {
        if dry_run {
            // A dry run changes nothing, not even by creating the SQLite file.
            let store = if setup.fresh_database() {
                None
            } else {
                Some(setup.store().await?)
            };
            return dry_run_report(&setup, store.as_ref(), &catalog, &mailing).await;
        }
        let store = setup.store().await?;
        if let Some(why) = refusal(&setup, Some(&store), &catalog, &mailing).await? {
            errln!("skychimpd: not sending: {why}");
            return Ok(ExitCode::from(1));
        }
        // Before the run exists: a Ctrl-C from then on stops it cleanly.
        let stopped = crate::shutdown::signal();
        let recovered = recover_dead_local(&setup, &store).await?;
        if recovered > 0 {
            errln!("recovered {recovered} deliveries of a process that died mid-send");
        }
        if let Some(why) = unfinished(&store, &mailing).await? {
            errln!("skychimpd: not sending: {why}");
            return Ok(ExitCode::from(1));
        }
        // Everything that can refuse to start comes before the run, which the daemon
        // would otherwise deliver later.
        let transport = delivery::transport_from_config(&setup.config)?;
        let dkim = delivery::dkim_from_config(&setup.config)?;
        let secret = TokenSecret::load(&setup.config)?;
        let redis = crate::redis::from_config(&setup.config)
            .await
            .unwrap_or_else(|why| {
                errln!("skychimpd: warning: {why}");
                None
            });
        let now = setup.clock.now();
        let mut occurrence = now;
        let run_id = loop {
            let run = delivery::new_run(&catalog, &mailing, occurrence, RunKind::Manual);
            match store.create_run(&run, now).await? {
                Creation::Created(id) => break id,
                // A run already holds this exact instant (a scheduled one): take the next.
                Creation::Taken => occurrence += chrono::Duration::milliseconds(1),
                // Another send (or the daemon) created one since the check above.
                Creation::Unfinished(other) => {
                    let why = unfinished(&store, &mailing).await?.unwrap_or_else(|| {
                        format!("run {} of `{}` was created meanwhile", other.0, mailing.id)
                    });
                    errln!("skychimpd: not sending: {why}");
                    return Ok(ExitCode::from(1));
                }
            }
        };
        let rate = crate::redis::rate_limit(redis.as_ref(), f64::from(setup.config.smtp.rate));
        let clock: Arc<dyn crate::clock::Clock> =
            Arc::from(crate::clock::from_env().map_err(anyhow::Error::msg)?);
        let deliverer = Arc::new(Deliverer::new(
            store.clone(),
            transport,
            rate,
            Settings::from_config(&setup.config),
            secret,
            clock,
            Arc::new(RwLock::new(catalog.clone())),
            dkim,
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stopped.await;
            errln!("\nstopping: finishing the messages in flight…");
            let _ = stop_tx.send(true);
        });
        // The run's recipients: the lists' addresses less those who unsubscribed.
        let recipients = store.run(run_id).await?.map_or(0, |r| r.recipients);
        let recipients = u64::try_from(recipients).unwrap_or(0);
        let progress = progress_bar(recipients);
        // Progress from this process's own counters: it delivers only this run, and asking
        // the database several times a second would slow the run it is watching.
        let watcher = {
            let (metrics, progress) = (deliverer.metrics(), progress.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering::Relaxed;
                loop {
                    let done = metrics.sent.load(Relaxed)
                        + metrics.failed.load(Relaxed)
                        + metrics.deferred.load(Relaxed);
                    progress.set_position(done);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let result = deliverer.run(Scope::Run(run_id), stop_rx).await;
        watcher.abort();
        progress.finish_and_clear();
        result?;
        store.finish_runs(setup.clock.now()).await?;
        let report = store
            .report(&mailing.id)
            .await?
            .into_iter()
            .find(|r| r.run_id == run_id);
        let Some(r) = report else {
            anyhow::bail!("run {} is missing from the report", run_id.0)
        };
        outln!(
            "{}: run {} — {}: {} sent, {} failed, {} deferred, {} skipped, {} unknown, {} queued",
            mailing.id,
            run_id.0,
            super::counted(r.recipients, "recipient"),
            r.sent,
            r.failed,
            r.deferred,
            r.skipped,
            r.unknown,
            r.queued + r.sending
        )?;
        if r.deferred > 0 {
            outln!(
                "deferred deliveries are retried by `skychimpd run`; `skychimpd logs {}` shows why",
                mailing.id
            )?;
        }
        let left = r.queued + r.sending;
        if left > 0 {
            outln!("stopped before the end: {left} left queued, which `skychimpd run` sends")?;
        }
        // A manager who disabled the mailing or blocked its owner meanwhile skipped the
        // rest: not a run that reached everyone.
        let stopped = if r.skipped > 0 {
            refusal(&setup, Some(&store), &catalog, &mailing).await?
        } else {
            None
        };
        if let Some(why) = &stopped {
            outln!("stopped: {why}; {} skipped", r.skipped)?;
        }
        // 0 only when every recipient got the message (or was skipped as unsubscribed): a
        // script must not read "nothing reached anyone yet" as success, even if the daemon
        // retries later.
        Ok(
            if r.failed + r.deferred + r.unknown + left > 0 || stopped.is_some() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            },
        )
    })
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Deliveries leased by a process of this host that no longer exists: a `send` or daemon
/// killed mid-run. Their `sending` rows become `unknown` (at most once) or `queued` again.
pub(crate) async fn recover_dead_local(
    setup: &Setup,
    store: &skychimp_storage::Store,
) -> anyhow::Result<u64> {
    let host = delivery::instance_name();
    let host = host.split(':').next().unwrap_or_default().to_string();
    let owners = store.lease_owners().await?;
    let dead: Vec<String> = owners
        .into_iter()
        .filter(|owner| {
            let mut parts = owner.split(':');
            parts.next() == Some(host.as_str())
                && parts
                    .next()
                    .and_then(|p| p.parse::<i32>().ok())
                    .is_some_and(|pid| !process_alive(pid))
        })
        .collect();
    if dead.is_empty() {
        return Ok(0);
    }
    let redeliver = setup.config.delivery.redeliver_unknown;
    Ok(store
        .recover_workers(&dead, redeliver, setup.clock.now())
        .await?)
}

fn process_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

async fn dry_run_report(
    setup: &Setup,
    store: Option<&skychimp_storage::Store>,
    catalog: &Catalog,
    m: &Mailing,
) -> anyhow::Result<ExitCode> {
    let mut count = 0;
    let mut skipped = 0;
    // One write at the end: a reader that stops early (`| head`) ends the output, not
    // the process with a panic.
    let mut out = format!("{}: {} — dry run, nothing is sent\n", m.id, m.title);
    // One query for the owner's unsubscribes, not one per recipient (100,000 recipients
    // were 100,000 round trips).
    let unsubscribed: HashSet<String> = match store {
        Some(store) => store
            .unsubscribes(&m.owner)
            .await?
            .into_iter()
            .map(|u| u.address)
            .collect(),
        None => HashSet::new(),
    };
    for c in m.recipients() {
        if unsubscribed.contains(&address_key(&c.email)) {
            skipped += 1;
            out += &format!("  skip  {} <{}> (unsubscribed)\n", c.name, c.email);
        } else {
            count += 1;
            out += &format!("  send  {} <{}>\n", c.name, c.email);
        }
    }
    let unfinished = match store {
        Some(store) => unfinished(store, m).await?,
        None => None,
    };
    // A script may gate on the dry run: exit 1 when a real send would not go now.
    let mut would_go = true;
    if let Some(why) = refusal(setup, store, catalog, m).await?.or(unfinished) {
        out += &format!("note: a real send would be refused now: {why}\n");
        would_go = false;
    }
    // What a real send reads before it creates the run.
    let ready = delivery::transport_from_config(&setup.config)
        .and_then(|_| delivery::dkim_from_config(&setup.config));
    if let Err(why) = ready {
        out += &format!("note: a real send would stop before starting: {why}\n");
        would_go = false;
    }
    out += &format!(
        "{} would be sent, {skipped} skipped\n",
        super::counted(count as i64, "message")
    );
    // The first message a real send would make: to the first recipient still subscribed
    // (a mailing whose message fails for any recipient is not in the catalog).
    let renderer = renderer_of(catalog, m)?;
    let first = m
        .recipients()
        .find(|c| !unsubscribed.contains(&address_key(&c.email)));
    if let Some(first) = first {
        out += "\nthe first message:\n\n";
        let (message, note) = render_preview(setup, &renderer, m, first)?;
        out += &message;
        if let Some(note) = note {
            out += &format!("\n{note}\n");
        }
    }
    super::write_out(format_args!("{out}"))?;
    Ok(if would_go {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn renderer_of(catalog: &Catalog, m: &Mailing) -> anyhow::Result<Renderer> {
    Renderer::for_mailing(catalog, m)
        .map_err(|e| anyhow::anyhow!("{}", crate::message::describe(&e)))
}

/// The composed message for one client, headers and both parts, as text.
/// The message as text, and a note when its unsubscribe link is only a sample (no token
/// secret exists yet), for the caller to print where its notes go.
fn render_preview(
    setup: &Setup,
    renderer: &Renderer,
    m: &Mailing,
    client: &Client,
) -> anyhow::Result<(String, Option<&'static str>)> {
    // Nothing is written here, not even a first token secret.
    let (secret, sample) = TokenSecret::load_or_sample(&setup.config)?;
    let url = tokens::unsubscribe_url(
        &setup.config.manager.public_url,
        &secret.unsubscribe_token(&m.id, &address_key(&client.email)),
    );
    let rendered = renderer
        .render(client.into(), &url)
        .map_err(|e| anyhow::anyhow!("{}", crate::message::describe(&e)))?;
    let composed = compose(&ComposeInput {
        from: &setup.config.smtp.from,
        to_name: &client.name,
        to_address: &client.email,
        subject: &rendered.subject,
        text: &rendered.text,
        html: &rendered.html,
        list: ListId {
            owner: &m.owner,
            name: &m.name,
        },
        unsubscribe_url: &url,
        date: std::time::SystemTime::from(setup.clock.now()),
        dkim: None,
    })
    .context("composing the message")?;
    let raw = String::from_utf8_lossy(&composed.bytes);
    let headers = raw.split("\r\n\r\n").next().unwrap_or_default();
    let mut out = String::new();
    // The MIME plumbing (and its folded continuation lines) says nothing to a reader.
    let mut skipping = false;
    for line in headers.lines() {
        if !line.starts_with([' ', '\t']) {
            skipping = line.starts_with("Content-") || line.starts_with("MIME-Version");
        }
        if !skipping {
            out.push_str(line);
            out.push('\n');
        }
    }
    out.push_str("\n--- text/plain ---\n");
    out.push_str(&rendered.text);
    out.push_str("\n--- text/html ---\n");
    out.push_str(&rendered.html);
    let note = sample.then_some(
        "note: no token secret exists yet (the first `send` or `run` makes one), so this \
         unsubscribe link is a sample that opens nowhere",
    );
    Ok((out, note))
}

/// `skychimpd preview OWNER/NAME [--to EMAIL]`
pub fn preview(cli: &Cli, id: &str, to: Option<&str>) -> anyhow::Result<ExitCode> {
    let setup = Setup::new(cli)?;
    let catalog = setup.catalog()?;
    let mailing = setup.find_mailing(&catalog, id)?;
    // Who left the owner's mailings: a preview shows a message someone would receive.
    let unsubscribed: std::collections::HashSet<String> = if setup.fresh_database() {
        Default::default()
    } else {
        super::runtime()?.block_on(async {
            let store = setup.store().await?;
            let gone = store.unsubscribes(&mailing.owner).await?;
            anyhow::Ok(gone.into_iter().map(|u| u.address).collect())
        })?
    };
    let left = |c: &Client| unsubscribed.contains(&address_key(&c.email));
    let stranger;
    let client = match to {
        Some(email) => match mailing
            .recipients()
            .find(|c| c.email.eq_ignore_ascii_case(email))
        {
            Some(c) => {
                if left(c) {
                    errln!(
                        "note: {} unsubscribed from {}'s mailings; a real send skips them",
                        c.email,
                        mailing.owner
                    );
                }
                c
            }
            None => {
                crate::catalog::address::check(email).map_err(anyhow::Error::msg)?;
                errln!(
                    "note: {email} is not on this mailing's lists; previewing with a sample name"
                );
                stranger = Client {
                    email: email.to_string(),
                    name: "Sample Client".into(),
                    comment: None,
                };
                &stranger
            }
        },
        None => match mailing.recipients().find(|c| !left(c)) {
            Some(c) => c,
            None if mailing.recipient_count() > 0 => anyhow::bail!(
                "every recipient of `{id}` unsubscribed; use --to EMAIL to preview anyway"
            ),
            None => anyhow::bail!("mailing `{id}` has no recipients; use --to EMAIL"),
        },
    };
    let (text, note) = render_preview(&setup, &renderer_of(&catalog, mailing)?, mailing, client)?;
    super::write_out(format_args!("{text}"))?;
    // On stderr with the other notes: `preview > message.txt` keeps only the message.
    if let Some(note) = note {
        errln!("{note}");
    }
    Ok(ExitCode::SUCCESS)
}
