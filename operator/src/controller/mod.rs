//! The operator: watches MailDomains, Mailboxes and everything they own or reference, and
//! reconciles them (`postwarden run`).
//!
//! Two controllers run on shared caches ([`informers`]): the MailDomain controller
//! ([`maildomain`]) does the real work and writes the status of the domain's Mailboxes; the
//! Mailbox controller ([`mailbox`]) only reports Mailboxes whose domain is missing. With
//! leader election (the default) they run only on the replica holding the Lease ([`leader`]).
//! `/metrics`, `/healthz` and `/readyz` are served throughout ([`http`]).
//!
//! Retention: the operator never deletes PersistentVolumeClaims. Deleting a MailDomain
//! removes its StatefulSets, Services, ConfigMaps and Secrets through owner references, but the
//! claims of the mail and queue volumes stay until an administrator deletes them, so mail
//! survives an accidental deletion and a re-created MailDomain of the same name finds it again.

pub mod apply;
pub mod backoff;
pub mod claims;
pub mod context;
pub mod continuity;
pub mod desired;
pub mod error;
pub mod http;
pub mod informers;
pub mod kinds;
pub mod leader;
pub mod mailbox;
pub mod maildomain;
pub mod mapping;
pub mod metrics;
pub mod planner;
pub mod state;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use kube::runtime::controller::{self as kube_controller, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::watch;

use self::context::Context;
use self::desired::Planner;
use self::metrics::Metrics;
use crate::resources::images::Images;

/// Name of the reporting controller on Events.
pub const CONTROLLER_NAME: &str = "postwarden";

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Options of `postwarden run`.
#[derive(Clone, Debug, clap::Args)]
pub struct Config {
    /// Watch and manage only this namespace; all namespaces when absent.
    #[arg(long, env = "POSTWARDEN_WATCH_NAMESPACE")]
    pub namespace: Option<String>,

    /// Run only while holding the leader Lease, so several replicas can run safely.
    #[arg(long, env = "POSTWARDEN_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,

    /// Name of the leader Lease.
    #[arg(
        long,
        env = "POSTWARDEN_LEASE_NAME",
        default_value = "postwarden-leader"
    )]
    pub lease_name: String,

    /// Namespace of the leader Lease: $POD_NAMESPACE, else --namespace, else the client's default.
    #[arg(long, env = "POSTWARDEN_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's identity in the Lease: $POD_NAME, else host name and process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease stays valid without renewal (Go duration).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,

    /// A leader that could not renew for this long stops (Go duration).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub lease_renew_deadline: Duration,

    /// Interval of Lease acquire attempts and renewals (Go duration).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub lease_retry_period: Duration,

    /// Address of the /metrics endpoint.
    #[arg(long, env = "POSTWARDEN_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Address of the /healthz and /readyz endpoints (may equal --metrics-addr).
    #[arg(long, env = "POSTWARDEN_HEALTH_ADDR", default_value = "0.0.0.0:8081")]
    pub health_addr: SocketAddr,

    /// Longest time between two reconciles of a MailDomain (Go duration).
    #[arg(long, env = "POSTWARDEN_RESYNC", default_value = "10m", value_parser = parse_duration)]
    pub resync: Duration,

    /// MailDomains reconciled at the same time.
    #[arg(long, default_value_t = 4)]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "POSTWARDEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Image of the Postfix pods of MailDomains that name none.
    #[arg(long, env = "POSTWARDEN_MTA_IMAGE", default_value = crate::resources::images::DEFAULT_MTA_IMAGE)]
    pub mta_image: String,

    /// Image of the Dovecot pods of MailDomains that name none.
    #[arg(long, env = "POSTWARDEN_IMAP_IMAGE", default_value = crate::resources::images::DEFAULT_IMAP_IMAGE)]
    pub imap_image: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::api::validate::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration such as 30s or 10m"))
}

/// Installs the global log subscriber: JSON lines (or text) filtered by `RUST_LOG`
/// (default `info`), with the current reconcile span on every line.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    if result.is_err() {
        tracing::debug!("a log subscriber was already installed");
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "postwarden".into());
    format!("{host}-{}", std::process::id())
}

/// Runs the operator until SIGTERM or SIGINT (graceful: running reconciles finish, the Lease
/// is released) or until leadership is lost (an error: the process should restart).
pub async fn run(config: Config) -> anyhow::Result<()> {
    let planner: Arc<dyn Planner> = Arc::new(planner::DomainPlanner::new(Images {
        mta: config.mta_image.clone(),
        imap: config.imap_image.clone(),
    }));
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (KUBECONFIG or in-cluster config)")?;
    let metrics = Arc::new(Metrics::new());
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(forward_signals(shutdown_tx.clone()));

    let http = http::bind(
        &[config.metrics_addr, config.health_addr],
        metrics.clone(),
        config.leader_elect,
        shutdown_rx.clone(),
    )
    .await?;
    let http = tokio::spawn(http);

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let work = {
        let client = client.clone();
        let config = config.clone();
        let metrics = metrics.clone();
        let identity = identity.clone();
        move |shutdown| run_controllers(client, config, metrics, planner, identity, shutdown)
    };
    let result = if config.leader_elect {
        let namespace = config
            .lease_namespace
            .clone()
            .or_else(|| {
                std::env::var("POD_NAMESPACE")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .or_else(|| config.namespace.clone())
            .unwrap_or_else(|| client.default_namespace().to_string());
        let elector = leader::Elector::new(
            client.clone(),
            leader::LeaseSettings {
                name: config.lease_name.clone(),
                namespace,
                identity,
                duration: config.lease_duration,
                renew_deadline: config.lease_renew_deadline,
                retry_period: config.lease_retry_period,
            },
        );
        leader::run_as_leader(elector, &metrics, shutdown_rx.clone(), work)
            .await
            .map_err(anyhow::Error::from)
    } else {
        metrics.set_leader(true);
        work(shutdown_rx.clone()).await
    };
    let _ = shutdown_tx.send(true);
    let _ = http.await;
    match &result {
        Ok(()) => tracing::info!("stopped"),
        Err(e) => tracing::error!(error = %e, "stopped with an error"),
    }
    result
}

/// First SIGTERM/SIGINT: graceful shutdown. Second: exit at once.
async fn forward_signals(shutdown: watch::Sender<bool>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutdown requested; finishing running reconciles");
    let _ = shutdown.send(true);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::warn!("second signal: exiting now");
    std::process::exit(130);
}

/// A future that completes once `shutdown` is set, usable as a controller's graceful
/// shutdown trigger.
fn on_shutdown(
    mut shutdown: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + Sync + 'static {
    let (tx, rx) = futures::channel::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = shutdown.wait_for(|s| *s).await;
        let _ = tx.send(());
    });
    rx.map(|_| ())
}

/// The optional child kinds whose CRD is installed. One that cannot be looked up counts as
/// absent (with a warning): its objects are then neither watched nor pruned until a restart.
async fn installed_optional_kinds(client: &Client) -> Vec<kinds::ChildKind> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut out = Vec::new();
    for kind in kinds::ChildKind::OPTIONAL {
        let Some(crd) = kind.crd_name() else { continue };
        match crds.get_opt(crd).await {
            Ok(Some(_)) => {
                tracing::info!(crd, "optional CRD installed: watching its objects");
                out.push(kind);
            }
            Ok(None) => tracing::info!(crd, "optional CRD not installed"),
            Err(e) => {
                tracing::warn!(crd, error = %e, "cannot look up optional CRD; not watching it")
            }
        }
    }
    out
}

/// Aborts a spawned task when dropped (e.g. when leadership is lost mid-run).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run_controllers(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    planner: Arc<dyn Planner>,
    identity: String,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let optional = installed_optional_kinds(&client).await;
    let (stores, triggers, watches) = informers::build(
        &client,
        config.namespace.as_deref(),
        &optional,
        metrics.clone(),
    );
    let _watches = AbortOnDrop(tokio::spawn(watches));
    tracing::info!(
        namespace = config.namespace.as_deref().unwrap_or("<all>"),
        "filling watch caches"
    );
    tokio::select! {
        ready = stores.wait_until_ready() => ready.context("watch caches")?,
        _ = shutdown.wait_for(|s| *s) => return Ok(()),
    }
    metrics.set_caches_synced(true);
    tracing::info!("watch caches filled; reconciling");

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(identity),
        },
    );
    let ctx = Arc::new(Context::new(
        client,
        recorder,
        metrics.clone(),
        stores.clone(),
        planner,
        config.resync,
    ));

    let settings = kube_controller::Config::default().concurrency(config.concurrency.max(1));
    let domains = Controller::for_stream(triggers.domain_objects, stores.domains.clone())
        .reconcile_on(triggers.domain_refs)
        .with_config(settings.clone())
        .graceful_shutdown_on(on_shutdown(shutdown.clone()))
        .run(maildomain::reconcile, maildomain::error_policy, ctx.clone())
        .for_each(|r| async move { log_outcome("MailDomain", r.map(|_| ())) });
    let mailboxes = Controller::for_stream(triggers.mailbox_objects, stores.mailboxes.clone())
        .reconcile_on(triggers.mailbox_refs)
        .with_config(settings.concurrency(8))
        .graceful_shutdown_on(on_shutdown(shutdown.clone()))
        .run(mailbox::reconcile, mailbox::error_policy, ctx.clone())
        .for_each(|r| async move { log_outcome("Mailbox", r.map(|_| ())) });
    futures::future::join(domains, mailboxes).await;
    metrics.set_caches_synced(false);
    Ok(())
}

fn log_outcome<E1: std::fmt::Display, E2: std::fmt::Display>(
    kind: &str,
    result: Result<(), kube_controller::Error<E1, E2>>,
) {
    use kube_controller::Error as E;
    match result {
        Ok(()) => {}
        // Logged by the error policy already.
        Err(E::ReconcilerFailed(..)) => {}
        Err(E::ObjectNotFound(obj)) => {
            tracing::debug!(kind, object = %obj, "object gone before its reconcile")
        }
        Err(e) => tracing::warn!(kind, error = %e, "controller error"),
    }
}
