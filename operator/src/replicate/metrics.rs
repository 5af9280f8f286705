//! The agent's metrics, served as OpenMetrics on `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SyncLabels {
    pub peer: String,
    pub result: String,
}

fn sync_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

pub struct Metrics {
    registry: Registry,
    pub lag_seconds: Family<PeerLabels, Gauge<f64, AtomicU64>>,
    pub queue_length: Family<PeerLabels, Gauge>,
    pub syncs: Family<SyncLabels, Counter>,
    pub sync_duration: Family<PeerLabels, Histogram, fn() -> Histogram>,
    pub events: Counter,
    pub last_sweep: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postwarden_replication");
        let m = Self {
            registry: Registry::default(),
            lag_seconds: Family::default(),
            queue_length: Family::default(),
            syncs: Family::default(),
            sync_duration: Family::new_with_constructor(sync_histogram),
            events: Counter::default(),
            last_sweep: Gauge::default(),
        };
        registry.register(
            "lag_seconds",
            "Age of the oldest change a peer has not received yet (0 when it has every change)",
            m.lag_seconds.clone(),
        );
        registry.register(
            "queue_length",
            "Users waiting for or in a sync with a peer",
            m.queue_length.clone(),
        );
        registry.register(
            "syncs",
            "doveadm sync runs with a peer, by result (ok, failed)",
            m.syncs.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "Duration of one user's doveadm sync with a peer",
            m.sync_duration.clone(),
        );
        registry.register(
            "events",
            "Change events received from Dovecot",
            m.events.clone(),
        );
        registry.register(
            "last_sweep_timestamp_seconds",
            "When the last full sweep queued every user",
            m.last_sweep.clone(),
        );
        Self { registry, ..m }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exported_names_are_the_ones_the_chart_may_query() {
        let m = Metrics::new();
        let peer = PeerLabels {
            peer: "imap-1".into(),
        };
        m.lag_seconds.get_or_create(&peer).set(1.5);
        m.queue_length.get_or_create(&peer).set(2);
        m.sync_duration.get_or_create(&peer).observe(0.1);
        m.syncs
            .get_or_create(&SyncLabels {
                peer: "imap-1".into(),
                result: "ok".into(),
            })
            .inc();
        m.events.inc();
        let text = m.encode();
        crate::test_support::assert_exports_exactly(
            &text,
            include_str!("../../../charts/postwarden/metrics-agent.txt"),
            "metrics-agent.txt",
        );
        assert!(
            text.contains("postwarden_replication_lag_seconds{peer=\"imap-1\"} 1.5"),
            "{text}"
        );
    }
}
