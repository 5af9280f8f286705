//! The replication agent (`postwarden replicate`): keeps one Dovecot instance's mailboxes in
//! sync with every other instance of the domain. See [`crate::config::replication`] for how it
//! is wired into Dovecot.
//!
//! Dovecot reports the users whose mail changed ([`events`]); each peer has a queue of users
//! to sync ([`queue`]) worked by a few concurrent `doveadm sync` runs, two-way, so dsync's
//! conflict handling decides what wins. A full sweep queues every user at start and then every
//! `sweepIntervalSeconds`. A failing peer is retried with a growing pause (up to 30 s) and
//! holds nobody else up.

pub mod events;
pub mod metrics;
pub mod queue;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::Notify;

use crate::config::replication::{AgentConfig, Peer};

use metrics::{Metrics, PeerLabels, SyncLabels};
use queue::PeerQueue;

/// Concurrent syncs per peer: enough to keep a slow user from holding others up.
const SYNCS_PER_PEER: usize = 2;
/// A sync with no progress for this long is given up (and retried).
const SYNC_IDLE_TIMEOUT_SECONDS: u32 = 30;
/// A sync running longer than this is killed (and retried).
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Agent {
    config: AgentConfig,
    queues: Mutex<BTreeMap<String, PeerQueue>>,
    work: Notify,
    metrics: Metrics,
}

/// Reads the configuration and runs until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config_path)
        .with_context(|| format!("reading {}", config_path.display()))?;
    let config: AgentConfig = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", config_path.display()))?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTWARDEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(serve(config))
}

async fn serve(config: AgentConfig) -> anyhow::Result<()> {
    let agent = Arc::new(Agent {
        queues: Mutex::new(
            config
                .peers
                .iter()
                .map(|p| (p.name.clone(), PeerQueue::default()))
                .collect(),
        ),
        work: Notify::new(),
        metrics: Metrics::new(),
        config,
    });
    let listener = tokio::net::TcpListener::bind(&agent.config.metrics_listen)
        .await
        .with_context(|| format!("binding {}", agent.config.metrics_listen))?;
    tracing::info!(
        peers = agent.config.peers.len(),
        metrics = %agent.config.metrics_listen,
        "replication agent started"
    );

    let on_user = {
        let agent = agent.clone();
        move |user: String| agent.changed(&user)
    };
    let group = dovecot_group();
    let events_path = agent.config.events_socket.clone();
    let events = tokio::spawn(async move { events::listen(&events_path, group, on_user).await });

    for peer in agent.config.peers.clone() {
        let backoff = Arc::new(Mutex::new(Backoff::default()));
        for _ in 0..SYNCS_PER_PEER {
            tokio::spawn(worker(agent.clone(), peer.clone(), backoff.clone()));
        }
    }
    tokio::spawn(sweeper(agent.clone()));
    let server = tokio::spawn(metrics_server(agent.clone(), listener));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = events => r?.context("event listener")?,
        r = server => r?.context("metrics server")?,
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    let _ = std::fs::remove_file(&agent.config.events_socket);
    tracing::info!("replication agent stopped");
    Ok(())
}

impl Agent {
    fn changed(&self, user: &str) {
        self.metrics.events.inc();
        let now = Instant::now();
        for q in self.queues.lock().expect("queues").values_mut() {
            q.changed(user, now);
        }
        self.publish();
        self.work.notify_waiters();
    }

    fn sweep(&self, users: &[String]) {
        for q in self.queues.lock().expect("queues").values_mut() {
            for user in users {
                q.sweep(user);
            }
        }
        self.publish();
        self.work.notify_waiters();
    }

    fn next(&self, peer: &str) -> Option<String> {
        let user = self
            .queues
            .lock()
            .expect("queues")
            .get_mut(peer)?
            .take_next();
        self.publish();
        user
    }

    fn finished(&self, peer: &str, user: &str, ok: bool) {
        if let Some(q) = self.queues.lock().expect("queues").get_mut(peer) {
            q.finished(user, ok);
        }
        self.publish();
        if !ok {
            self.work.notify_waiters();
        }
    }

    /// Updates the queue and lag gauges from the queues.
    fn publish(&self) {
        let now = Instant::now();
        for (peer, q) in self.queues.lock().expect("queues").iter() {
            let labels = PeerLabels { peer: peer.clone() };
            self.metrics
                .lag_seconds
                .get_or_create(&labels)
                .set(q.lag_seconds(now));
            self.metrics
                .queue_length
                .get_or_create(&labels)
                .set(q.len() as i64);
        }
    }
}

#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn pause(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(500 * 2u64.saturating_pow(self.failures.min(8) - 1)).min(MAX_BACKOFF)
    }
}

async fn worker(agent: Arc<Agent>, peer: Peer, backoff: Arc<Mutex<Backoff>>) {
    loop {
        let pause = backoff.lock().expect("backoff").pause();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        // Register for a wake-up before looking, so a change arriving in between is not missed.
        let notified = agent.work.notified();
        let Some(user) = agent.next(&peer.name) else {
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
            continue;
        };
        let started = Instant::now();
        let result = sync(&agent.config.dovecot_config, &user, &peer.endpoint).await;
        let labels = PeerLabels {
            peer: peer.name.clone(),
        };
        agent
            .metrics
            .sync_duration
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        let ok = result.is_ok();
        agent
            .metrics
            .syncs
            .get_or_create(&SyncLabels {
                peer: peer.name.clone(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
        {
            let mut b = backoff.lock().expect("backoff");
            if ok {
                b.failures = 0;
            } else {
                b.failures += 1;
            }
        }
        if let Err(e) = result {
            tracing::warn!(peer = %peer.name, user = %user, error = %e, "sync failed; retrying");
        }
        agent.finished(&peer.name, &user, ok);
    }
}

/// One two-way `doveadm sync` of `user` with the doveadm server at `endpoint`.
async fn sync(dovecot_config: &Path, user: &str, endpoint: &str) -> anyhow::Result<()> {
    let mut cmd = tokio::process::Command::new("doveadm");
    cmd.arg("-c")
        .arg(dovecot_config)
        .args(["sync", "-u", user, "-l", "30", "-T"])
        .arg(SYNC_IDLE_TIMEOUT_SECONDS.to_string())
        .arg(endpoint)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SYNC_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("no result after {SYNC_TIMEOUT:?}"))?
        .context("running doveadm")?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or("").trim();
    anyhow::bail!("doveadm sync {} ({})", out.status, last)
}

async fn sweeper(agent: Arc<Agent>) {
    let interval = Duration::from_secs(agent.config.sweep_interval_seconds.max(1));
    loop {
        match users(&agent.config.users_dir) {
            Ok(users) => {
                tracing::info!(users = users.len(), "full sweep");
                agent.sweep(&users);
                agent
                    .metrics
                    .last_sweep
                    .set(jiff::Timestamp::now().as_second());
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the users for a sweep"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Every user of the passwd-file shards in `dir`.
pub fn users(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut users = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path: PathBuf = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("..") || !name.ends_with(".passwd") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        users.extend(
            text.lines()
                .filter_map(|l| l.split(':').next())
                .filter(|u| !u.is_empty())
                .map(str::to_string),
        );
    }
    users.sort();
    users.dedup();
    Ok(users)
}

/// Dovecot's internal group, which its stats process (the event exporter) runs as.
fn dovecot_group() -> Option<u32> {
    let name = std::ffi::CString::new(crate::config::dovecot_auth::USER).ok()?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is read before any other call.
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    // SAFETY: non-null pointer to a valid `struct group`.
    (!group.is_null()).then(|| unsafe { (*group).gr_gid })
}

async fn metrics_server(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    use axum::http::header;
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let agent = agent.clone();
            async move {
                agent.publish();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_come_from_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("0.passwd"),
            "bob@example.com:{SHA512-CRYPT}x::::::\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("c.passwd"),
            "alice@example.com:{SHA512-CRYPT}y::::::userdb_quota_storage_size=1\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mallory@example.com:\n").unwrap();
        assert_eq!(
            users(dir.path()).unwrap(),
            ["alice@example.com", "bob@example.com"]
        );
    }

    #[test]
    fn failures_back_off_up_to_thirty_seconds() {
        let mut b = Backoff::default();
        assert_eq!(b.pause(), Duration::ZERO);
        b.failures = 1;
        assert_eq!(b.pause(), Duration::from_millis(500));
        b.failures = 3;
        assert_eq!(b.pause(), Duration::from_secs(2));
        b.failures = 20;
        assert_eq!(b.pause(), MAX_BACKOFF);
    }
}
