//! Prometheus metrics of the operator, served on `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DomainLabels {
    pub namespace: String,
    pub maildomain: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub kind: String,
    pub verb: String,
}

fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<KindLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<KindLabels, Histogram, fn() -> Histogram>,
    pub writes: Family<WriteLabels, Counter>,
    pub leader: Gauge,
    pub managed_domains: Gauge,
    pub managed_mailboxes: Gauge,
    pub backup_healthy: Family<DomainLabels, Gauge>,
    pub backup_last_success: Family<DomainLabels, Gauge>,
    pub backup_last_run_failed: Family<DomainLabels, Gauge>,
    caches_synced: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("postwarden");
        let reconciles = Family::<KindLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                duration_histogram,
            );
        let writes = Family::<WriteLabels, Counter>::default();
        let leader = Gauge::default();
        let managed_domains = Gauge::default();
        let managed_mailboxes = Gauge::default();
        registry.register("reconciles", "Reconciles run, by kind", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Duration of reconciles, by kind",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests sent to the Kubernetes API, by object kind and verb",
            writes.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader lease",
            leader.clone(),
        );
        registry.register(
            "maildomains",
            "MailDomains in the watch cache",
            managed_domains.clone(),
        );
        registry.register(
            "mailboxes",
            "Mailboxes in the watch cache",
            managed_mailboxes.clone(),
        );
        let backup_healthy = Family::<DomainLabels, Gauge>::default();
        let backup_last_success = Family::<DomainLabels, Gauge>::default();
        let backup_last_run_failed = Family::<DomainLabels, Gauge>::default();
        registry.register(
            "backup_healthy",
            "1 while a MailDomain's BackupHealthy condition is true",
            backup_healthy.clone(),
        );
        registry.register(
            "backup_last_success_timestamp_seconds",
            "Unix time of a MailDomain's last successful backup",
            backup_last_success.clone(),
        );
        registry.register(
            "backup_last_run_failed",
            "1 when a MailDomain's newest finished backup run failed",
            backup_last_run_failed.clone(),
        );
        Self {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            writes,
            leader,
            managed_domains,
            managed_mailboxes,
            backup_healthy,
            backup_last_success,
            backup_last_run_failed,
            caches_synced: AtomicBool::new(false),
        }
    }

    /// Starts timing a reconcile of `kind`; counted when the returned guard is dropped.
    pub fn reconcile(&self, kind: &str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
        ReconcileTimer {
            metrics: self,
            kind: kind.to_string(),
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, kind: &str, error: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                kind: kind.into(),
                error: error.into(),
            })
            .inc();
    }

    /// Counts a write request (apply, delete, status, event).
    pub fn write(&self, kind: &str, verb: &str) {
        self.writes
            .get_or_create(&WriteLabels {
                kind: kind.into(),
                verb: verb.into(),
            })
            .inc();
    }

    /// Publishes the backup gauges of one MailDomain.
    pub fn set_backup(
        &self,
        namespace: &str,
        maildomain: &str,
        m: &crate::backup::observe::BackupMetrics,
    ) {
        let labels = DomainLabels {
            namespace: namespace.into(),
            maildomain: maildomain.into(),
        };
        self.backup_healthy
            .get_or_create(&labels)
            .set(i64::from(m.healthy));
        self.backup_last_run_failed
            .get_or_create(&labels)
            .set(i64::from(m.last_run_failed));
        match m.last_success_unix {
            Some(t) => {
                self.backup_last_success.get_or_create(&labels).set(t);
            }
            None => {
                self.backup_last_success.remove(&labels);
            }
        }
    }

    /// Drops the backup gauges of a MailDomain without backups.
    pub fn clear_backup(&self, namespace: &str, maildomain: &str) {
        let labels = DomainLabels {
            namespace: namespace.into(),
            maildomain: maildomain.into(),
        };
        self.backup_healthy.remove(&labels);
        self.backup_last_success.remove(&labels);
        self.backup_last_run_failed.remove(&labels);
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    pub fn set_caches_synced(&self, synced: bool) {
        self.caches_synced.store(synced, Ordering::SeqCst);
    }

    pub fn caches_synced(&self) -> bool {
        self.caches_synced.load(Ordering::SeqCst)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Observes a reconcile's duration when dropped.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: String,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&KindLabels {
                kind: std::mem::take(&mut self.kind),
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_the_reconcile_metrics_by_kind() {
        let m = Metrics::new();
        drop(m.reconcile("MailDomain"));
        m.reconcile_failed("MailDomain", "apply");
        m.write("Secret", "apply");
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("postwarden_reconciles_total{kind=\"MailDomain\"} 1"),
            "{text}"
        );
        assert!(text
            .contains("postwarden_reconcile_errors_total{kind=\"MailDomain\",error=\"apply\"} 1"));
        assert!(text.contains("postwarden_reconcile_duration_seconds_count{kind=\"MailDomain\"} 1"));
        assert!(text.contains("postwarden_api_writes_total{kind=\"Secret\",verb=\"apply\"} 1"));
        assert!(text.contains("postwarden_leader 1"));
    }
}
