//! The replication agent (`postwarden replicate`): keeps one Dovecot instance's mailboxes in
//! sync with every other instance of the domain. See [`crate::config::replication`] for how it
//! is wired into Dovecot.
//!
//! Dovecot reports the users whose mail changed ([`events`]); each peer has a queue of users
//! to sync ([`queue`]) worked by a few concurrent `doveadm sync` runs, two-way, so dsync's
//! conflict handling decides what wins. A full sweep queues every user at start and then every
//! `sweepIntervalSeconds`. A failing peer is retried with a growing pause (up to 30 s) and
//! holds nobody else up.
//!
//! Of each pair of instances only one agent runs the syncs ([`Peer::syncs`]); the other reports
//! its changed users to it over HTTP (`POST /changed/<name>`, one user per line), queued and
//! retried like a sync. An agent runs one sync per user at a time, whichever the peer.

pub mod events;
pub mod metrics;
pub mod queue;

#[cfg(test)]
mod daemon_tests;

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
/// How long a sync waits for the user's dsync lock on either side. Two agents syncing the same
/// user with each other at once each hold their own side's lock and wait for the other's: the
/// short wait ends that quickly, and the jittered retry lets one of them go first.
const LOCK_TIMEOUT_SECONDS: u32 = 5;
/// A sync with no progress for this long is given up (and retried).
const SYNC_IDLE_TIMEOUT_SECONDS: u32 = 30;
/// A sync running longer than this is killed (and retried).
const SYNC_TIMEOUT: Duration = Duration::from_secs(600);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The least time between two syncs of one user with one peer. A sync costs about the same
/// whatever it carries (two doveadm processes, a TLS handshake, both mailboxes opened: some
/// 90 ms of CPU); a user receiving many messages a second gets them in one sync a second.
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Users reported to a peer's agent in one request.
const REPORT_BATCH: usize = 200;

struct Agent {
    config: AgentConfig,
    queues: Mutex<BTreeMap<String, PeerQueue>>,
    /// Users with a sync running, with any peer.
    busy: Mutex<std::collections::BTreeSet<String>>,
    /// dsync's state after the last good sync of each (peer, user): the next sync of that user
    /// with that peer exchanges only what changed since (`doveadm sync -s`). In memory only; a
    /// restarted agent starts with full sweeps.
    states: Mutex<BTreeMap<(String, String), String>>,
    work: Notify,
    metrics: Metrics,
}

/// Reads the configuration and runs until SIGTERM or SIGINT.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config: AgentConfig = crate::agent::read_config(config_path)?;
    crate::agent::init_logging();
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
                .map(|p| {
                    // Reports are cheap: only syncs are spaced.
                    let interval = if p.syncs {
                        SYNC_INTERVAL
                    } else {
                        Duration::ZERO
                    };
                    (p.name.clone(), PeerQueue::new(interval))
                })
                .collect(),
        ),
        busy: Mutex::default(),
        states: Mutex::default(),
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

    /// The next user to sync with `peer`, skipping users this agent is syncing with another
    /// peer (each mailbox sees one dsync at a time).
    fn next(&self, peer: &str) -> Option<queue::Next> {
        let mut busy = self.busy.lock().expect("busy");
        let user = self
            .queues
            .lock()
            .expect("queues")
            .get_mut(peer)?
            .take_next_where(Instant::now(), |u| !busy.contains(u));
        if let Some(next) = &user {
            busy.insert(next.user.clone());
        }
        drop(busy);
        self.publish();
        user
    }

    /// When a user waiting for `peer` but held back by the sync interval becomes due.
    fn next_due(&self, peer: &str) -> Option<Instant> {
        self.queues.lock().expect("queues").get(peer)?.next_due()
    }

    /// Up to `n` users to report to `peer`'s agent.
    fn batch(&self, peer: &str, n: usize) -> Vec<String> {
        let mut queues = self.queues.lock().expect("queues");
        let Some(q) = queues.get_mut(peer) else {
            return Vec::new();
        };
        let now = Instant::now();
        let users = std::iter::from_fn(|| q.take_next_where(now, |_| true))
            .map(|next| next.user)
            .take(n)
            .collect();
        drop(queues);
        self.publish();
        users
    }

    fn reports_done(&self, peer: &str, users: &[String], ok: bool) {
        if let Some(q) = self.queues.lock().expect("queues").get_mut(peer) {
            for u in users {
                q.finished(u, ok);
            }
        }
        self.publish();
    }

    fn finished(&self, peer: &str, user: &str, ok: bool) {
        if let Some(q) = self.queues.lock().expect("queues").get_mut(peer) {
            q.finished(user, ok);
        }
        self.busy.lock().expect("busy").remove(user);
        self.publish();
        self.work.notify_waiters();
    }

    /// A peer's agent reports users changed on its side; true when this agent syncs that pair.
    fn reported(&self, peer: &str, users: &str) -> bool {
        if !self.config.peers.iter().any(|p| p.name == peer && p.syncs) {
            return false;
        }
        let now = Instant::now();
        if let Some(q) = self.queues.lock().expect("queues").get_mut(peer) {
            for user in users.lines().map(str::trim).filter(|u| !u.is_empty()) {
                q.changed(&user.to_ascii_lowercase(), now);
            }
        }
        self.publish();
        self.work.notify_waiters();
        true
    }

    /// Syncs `next` with `peer`, incrementally from the state of the last good sync unless the
    /// queue asks for a full one; a failed sync forgets the state.
    async fn sync(&self, peer: &Peer, next: &queue::Next) -> anyhow::Result<()> {
        let key = (peer.name.clone(), next.user.clone());
        let state = if next.full {
            None
        } else {
            self.states.lock().expect("states").get(&key).cloned()
        };
        let result = sync(
            &self.config.dovecot_config,
            next,
            state.as_deref(),
            &peer.endpoint,
        )
        .await;
        let mut states = self.states.lock().expect("states");
        match result {
            Ok(state) => {
                states.insert(key, state);
                Ok(())
            }
            Err(e) => {
                states.remove(&key);
                Err(e)
            }
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
    /// The pause before the next sync after `failures` failures in a row: doubling from 0.5 s,
    /// at most [`MAX_BACKOFF`], plus up to 1 s of jitter so two agents that failed together do
    /// not retry together.
    fn pause(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        let base = Duration::from_millis(500 * 2u64.saturating_pow(self.failures.min(8) - 1))
            .min(MAX_BACKOFF);
        base + Duration::from_millis(rand::random::<u64>() % 1000)
    }
}

/// What a peer's worker does next.
enum Work {
    /// Sync one user with the peer (this agent owns the pair).
    Sync(queue::Next),
    /// Tell the peer's agent which users changed here (the peer owns the pair).
    Report(Vec<String>),
}

impl Work {
    fn users(&self) -> &[String] {
        match self {
            Work::Sync(next) => std::slice::from_ref(&next.user),
            Work::Report(users) => users,
        }
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
        let work = if peer.syncs {
            agent.next(&peer.name).map(Work::Sync)
        } else {
            Some(agent.batch(&peer.name, REPORT_BATCH))
                .filter(|users| !users.is_empty())
                .map(Work::Report)
        };
        let Some(work) = work else {
            let idle = Duration::from_secs(5);
            let wait = agent.next_due(&peer.name).map_or(idle, |due| {
                due.saturating_duration_since(Instant::now()).min(idle)
            });
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
            }
            continue;
        };
        let started = Instant::now();
        let (what, result) = match &work {
            Work::Sync(next) => ("sync", agent.sync(&peer, next).await),
            Work::Report(users) => (
                "report",
                report(&peer.agent, &agent.config.name, users).await,
            ),
        };
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
        let users = work.users();
        match result {
            Ok(()) => {
                tracing::debug!(peer = %peer.name, users = users.len(), seconds = started.elapsed().as_secs_f64(), "{what} done")
            }
            Err(e) => {
                tracing::warn!(peer = %peer.name, users = users.len(), first = %users[0], error = %e, "{what} failed; retrying")
            }
        }
        match &work {
            Work::Sync(next) => agent.finished(&peer.name, &next.user, ok),
            Work::Report(users) => agent.reports_done(&peer.name, users, ok),
        }
    }
}

/// Tells the agent at `addr` (`HOST:PORT`) that `users` changed here (`from`).
async fn report(addr: &str, from: &str, users: &[String]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let body = users.join("\n") + "\n";
    let request = format!(
        "POST /changed/{from} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).await?;
        anyhow::Ok(reply)
    };
    let reply = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {addr}"))??;
    let status = String::from_utf8_lossy(&reply);
    let status = status.lines().next().unwrap_or("");
    if status
        .split_whitespace()
        .nth(1)
        .is_some_and(|c| c.starts_with('2'))
    {
        return Ok(());
    }
    anyhow::bail!("{addr} answered {status:?}")
}

/// One two-way `doveadm sync` of a user with the doveadm server at `endpoint`; returns dsync's
/// new state. Given the `state` of the last good sync, it exchanges only the changes since;
/// a full one (`-f`: sweeps and retries) compares every message: a sync that a concurrent
/// delivery interrupted ("Mailbox changes caused a desync", exit code 2) can leave the next
/// incremental ones believing there is nothing left to do (seen in the kill test with Dovecot
/// 2.4.1).
async fn sync(
    dovecot_config: &Path,
    next: &queue::Next,
    state: Option<&str>,
    endpoint: &str,
) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new("doveadm");
    cmd.arg("-c").arg(dovecot_config).arg("sync");
    if next.full {
        cmd.arg("-f");
    }
    cmd.args(["-s", state.unwrap_or("")])
        .args(["-u", &next.user, "-l"])
        .arg(LOCK_TIMEOUT_SECONDS.to_string())
        .arg("-T")
        .arg(SYNC_IDLE_TIMEOUT_SECONDS.to_string())
        .arg(endpoint)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(SYNC_TIMEOUT, cmd.output())
        .await
        .map_err(|_| anyhow::anyhow!("no result after {SYNC_TIMEOUT:?}"))?
        .context("running doveadm")?;
    if out.status.success() {
        let stdout = String::from_utf8_lossy(&out.stdout);
        return Ok(stdout.lines().last().unwrap_or("").trim().to_string());
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
    crate::runtime::Runtime::Host
        .group_id(crate::config::dovecot_auth::USER)
        .ok()
}

async fn metrics_server(
    agent: Arc<Agent>,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<()> {
    use axum::http::{header, StatusCode};
    use axum::routing::{get, post};
    let reports = agent.clone();
    let app = axum::Router::new()
        .route(
            "/changed/{peer}",
            post(
                move |axum::extract::Path(peer): axum::extract::Path<String>, body: String| {
                    let agent = reports.clone();
                    async move {
                        if agent.reported(&peer, &body) {
                            StatusCode::NO_CONTENT
                        } else {
                            StatusCode::NOT_FOUND
                        }
                    }
                },
            ),
        )
        .route(
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
        let within = |p: Duration, base: Duration| p >= base && p < base + Duration::from_secs(1);
        b.failures = 1;
        assert!(within(b.pause(), Duration::from_millis(500)));
        b.failures = 3;
        assert!(within(b.pause(), Duration::from_secs(2)));
        b.failures = 20;
        assert!(within(b.pause(), MAX_BACKOFF));
    }
}
