//! The continuity agent (`postwarden continuity`): runs in the MTA container beside Postfix for
//! a domain with `spec.continuity` (see [`crate::config::continuity`] for the wiring).
//!
//! Every probe interval it probes the upstream ([`probe`]), reads the queue ([`spool`]) and
//! decides availability ([`detector`]). When local delivery has to start it points the copies'
//! transport map at Dovecot, reloads Postfix and flushes the queue, so the copies held so far
//! are delivered at once; when it stops it points the map back at `retry:`. When the upstream
//! answers again it flushes the queue so the spool drains. While copies are held, those whose
//! message has been relayed are deleted from the queue. `/metrics` serves OpenMetrics, `/status`
//! the current state as JSON.

pub mod detector;
pub mod metrics;
pub mod observe;
pub mod probe;
pub mod spool;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::config::continuity::{AgentConfig, STATE_FILE, TRANSPORT_MAP};

use detector::Availability;
use metrics::Metrics;
use probe::{Outcome, Prober};

/// What `/status` answers (the operator reads it into the MailDomain's status, see
/// [`observe`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub upstream_available: bool,
    pub local_delivery: bool,
    pub last_reply: String,
    /// Unix time availability last changed.
    pub since: i64,
    pub spooled_messages: usize,
    pub oldest_spooled_seconds: i64,
    pub held_copies: usize,
}

/// Reads the configuration and runs until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config: AgentConfig = crate::agent::read_config(config_path)?;
    crate::agent::init_logging();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve(config))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

struct Agent {
    config: AgentConfig,
    prober: Prober,
    metrics: Metrics,
    status: Mutex<Status>,
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let prober = Prober::new(&config.hostname, &config.probe_recipient, config.verify_tls)?;
    let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", config.metrics_listen))?;
    let agent = Arc::new(Agent {
        config,
        prober,
        metrics: Metrics::new(),
        status: Mutex::default(),
    });
    tracing::info!(upstreams = ?agent.config.upstreams, metrics = %agent.config.metrics_listen, "continuity agent started");
    let server = tokio::spawn(http(agent.clone(), listener));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = watch(agent) => r?,
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    server.abort();
    Ok(())
}

/// The probe loop.
async fn watch(agent: Arc<Agent>) -> anyhow::Result<()> {
    let c = &agent.config;
    let state_file = c.state_dir.join(STATE_FILE);
    let mut availability = std::fs::read(&state_file)
        .ok()
        .and_then(|b| serde_json::from_slice::<Availability>(&b).ok())
        .unwrap_or_else(|| Availability::new(now()));
    let window = i64::from(c.probe_interval_seconds) * i64::from(c.failure_threshold);
    let marker = format!("+{}@", c.copy_extension);
    let mut delivering = map_is(&c.state_dir.join(TRANSPORT_MAP), &c.deliver_map);
    let mut last_flush = 0;
    let mut tick = tokio::time::interval(Duration::from_secs(c.probe_interval_seconds.into()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let probe = probe_all(&agent).await;
        let probe_ref = match &probe {
            Outcome::Available(r) => Ok(r.as_str()),
            Outcome::Unavailable(r) => Err(r.as_str()),
        };
        agent.metrics.probe(probe_ref.is_ok());
        let queue = match postfix(c, "postqueue", &["-j"], None).await {
            Ok(out) => Some(spool::parse(&out)),
            Err(e) => {
                tracing::warn!(error = %e, "reading the queue failed");
                None
            }
        };
        let t = now();
        let summary = queue
            .as_deref()
            .map(|q| spool::summarize(q, &marker, t, window))
            .unwrap_or_default();
        let was_available = availability.available;
        if availability.observe(
            probe_ref,
            summary.stale_deferrals,
            summary.last_reason.as_deref(),
            c.failure_threshold,
            t,
        ) {
            if availability.available {
                tracing::info!(reply = %availability.last_reply, "upstream available again");
            } else {
                tracing::warn!(reply = %availability.last_reply, "upstream unavailable");
            }
        }
        if let Err(e) = persist(&state_file, &availability) {
            tracing::warn!(error = %e, "saving the state failed");
        }

        let want = detector::local_delivery(c.manual, c.active, &availability);
        if want != delivering {
            match switch(c, want).await {
                Ok(()) => {
                    delivering = want;
                    agent.metrics.switches.inc();
                    tracing::info!(local_delivery = want, "emergency-inbox delivery switched");
                }
                Err(e) => tracing::warn!(error = %e, "switching local delivery failed"),
            }
        }
        // Back: drain the spool now rather than at each message's next retry. Unavailable only
        // because the upstream keeps deferring messages while the probe passes: retry them once
        // per detection window, which ends the outage as soon as it takes them. Copies still in
        // the queue while local delivery is on (Dovecot or this MTA restarted while they went
        // out): retry them once per window too, so none waits for Postfix's backoff. (While the
        // upstream is available, deferred messages keep Postfix's own backoff.)
        let recovered = availability.available && !was_available;
        let retry_stale = !availability.available
            && probe_ref.is_ok()
            && summary.stale_deferrals > 0
            && t - last_flush >= window;
        let retry_copies = delivering && summary.copies > 0 && t - last_flush >= window;
        if recovered || retry_stale || retry_copies {
            last_flush = t;
            if let Err(e) = postfix(c, "postqueue", &["-f"], None).await {
                tracing::warn!(error = %e, "flushing the queue failed");
            }
        }
        if !delivering && !summary.finished.is_empty() && queue.is_some() {
            let ids = summary.finished.join("\n") + "\n";
            match postfix(c, "postsuper", &["-d", "-"], Some(&ids)).await {
                Ok(_) => {
                    agent.metrics.released.inc_by(summary.finished.len() as u64);
                }
                Err(e) => tracing::warn!(error = %e, "deleting relayed copies failed"),
            }
        }
        let status = Status {
            upstream_available: availability.available,
            local_delivery: delivering,
            last_reply: availability.last_reply.clone(),
            since: availability.since,
            spooled_messages: summary.spooled,
            oldest_spooled_seconds: summary.oldest_spooled.map_or(0, |o| (t - o).max(0)),
            held_copies: if delivering { 0 } else { summary.copies },
        };
        agent.metrics.set(&status);
        *agent.status.lock().expect("status lock") = status;
    }
}

/// The first upstream that answers decides, as Postfix relays to the first that answers.
async fn probe_all(agent: &Agent) -> Outcome {
    let mut failures = Vec::new();
    for upstream in &agent.config.upstreams {
        match agent.prober.probe(upstream).await {
            Outcome::Available(r) => return Outcome::Available(r),
            Outcome::Unavailable(r) => failures.push(r),
        }
    }
    Outcome::Unavailable(failures.join("; "))
}

/// Points the copies' transport map at Dovecot (`deliver`) or at the holding `retry:`, makes
/// Postfix read it, and, when delivery starts, flushes the queue so held copies go at once.
async fn switch(c: &AgentConfig, deliver: bool) -> anyhow::Result<()> {
    let source = if deliver { &c.deliver_map } else { &c.hold_map };
    let text = std::fs::read(source).with_context(|| format!("reading {}", source.display()))?;
    crate::agent::write_atomic(&c.state_dir.join(TRANSPORT_MAP), &text)?;
    postfix(c, "postfix", &["reload"], None).await?;
    if deliver {
        // The reload restarts the queue manager and trivial-rewrite, which read the new map.
        tokio::time::sleep(Duration::from_secs(1)).await;
        postfix(c, "postqueue", &["-f"], None).await?;
    }
    Ok(())
}

fn map_is(current: &Path, candidate: &Path) -> bool {
    match (std::fs::read(current), std::fs::read(candidate)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn persist(file: &Path, availability: &Availability) -> anyhow::Result<()> {
    let json = serde_json::to_vec(availability)?;
    if std::fs::read(file).ok().as_deref() == Some(json.as_slice()) {
        return Ok(());
    }
    crate::agent::write_atomic(file, &json)?;
    Ok(())
}

/// Runs a Postfix command against the domain's configuration; its stdout, or an error with its
/// stderr.
async fn postfix(
    c: &AgentConfig,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = Command::new(program);
    cmd.arg("-c").arg(&c.postfix_config).args(args);
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    })
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().with_context(|| format!("starting {program}"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .with_context(|| format!("{program} timed out"))??;
    if !out.status.success() {
        anyhow::bail!(
            "{program} {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn http(agent: Arc<Agent>, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let for_status = agent.clone();
    let app = axum::Router::new()
        .route(
            "/status",
            get(move || {
                let agent = for_status.clone();
                async move {
                    let status = agent.status.lock().expect("status lock").clone();
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        serde_json::to_string(&status).unwrap_or_default(),
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let agent = agent.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        agent.metrics.encode(),
                    )
                }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}
