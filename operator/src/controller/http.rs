//! `/metrics`, `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::sync::watch;

use super::metrics::Metrics;

#[derive(Clone)]
struct Probe {
    metrics: Arc<Metrics>,
    leader_election: bool,
}

/// Ready means: a standby waiting for the lease (it can take over at any time), or the
/// active replica once its watch caches hold the full cluster state.
pub fn is_ready(leader_election: bool, leading: bool, caches_synced: bool) -> bool {
    (leader_election && !leading) || caches_synced
}

async fn metrics(State(p): State<Probe>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        p.metrics.encode(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(p): State<Probe>) -> (StatusCode, &'static str) {
    let leading = p.metrics.is_leader();
    if is_ready(p.leader_election, leading, p.metrics.caches_synced()) {
        (
            StatusCode::OK,
            if leading || !p.leader_election {
                "ready\n"
            } else {
                "standby\n"
            },
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced\n")
    }
}

fn router(metrics_: Arc<Metrics>, leader_election: bool) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Probe {
            metrics: metrics_,
            leader_election,
        })
}

/// Binds every distinct address now (so a port conflict fails start-up) and returns the
/// server future, which ends after `shutdown` fires.
pub async fn bind(
    addrs: &[SocketAddr],
    metrics_: Arc<Metrics>,
    leader_election: bool,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    let mut unique: Vec<SocketAddr> = addrs.to_vec();
    unique.sort();
    unique.dedup();
    let mut servers = Vec::new();
    for addr in unique {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("binding {addr}: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
        let app = router(metrics_.clone(), leader_election);
        let mut stop = shutdown.clone();
        servers.push(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
    }
    Ok(async move {
        futures::future::join_all(servers).await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_of_leader_and_standby() {
        assert!(
            is_ready(true, false, false),
            "a standby is ready to take over"
        );
        assert!(
            !is_ready(true, true, false),
            "a new leader waits for its caches"
        );
        assert!(is_ready(true, true, true));
        assert!(!is_ready(false, false, false));
        assert!(is_ready(false, false, true));
    }
}
