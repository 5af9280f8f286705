//! Prometheus metrics of the operator, served on `/metrics`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::conditions;
use crate::api::maildomain::MailDomainStatus;

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
pub struct ConditionLabels {
    pub namespace: String,
    pub maildomain: String,
    pub r#type: String,
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
    pub domain_condition: Family<ConditionLabels, Gauge>,
    pub domain_mailboxes: Family<DomainLabels, Gauge>,
    pub certificate_expiry: Family<DomainLabels, Gauge>,
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
        let domain_condition = Family::<ConditionLabels, Gauge>::default();
        let domain_mailboxes = Family::<DomainLabels, Gauge>::default();
        let certificate_expiry = Family::<DomainLabels, Gauge>::default();
        registry.register(
            "maildomain_condition",
            "1 while a MailDomain's condition of this type is True, 0 otherwise",
            domain_condition.clone(),
        );
        registry.register(
            "maildomain_mailboxes",
            "Mailboxes of a MailDomain in its users database",
            domain_mailboxes.clone(),
        );
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Unix time at which a MailDomain's serving certificate expires",
            certificate_expiry.clone(),
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
            domain_condition,
            domain_mailboxes,
            certificate_expiry,
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

    /// Publishes the status gauges of one MailDomain (conditions, mailboxes, certificate).
    pub fn set_domain(&self, namespace: &str, maildomain: &str, status: &MailDomainStatus) {
        let gauges = DomainGauges::of(status);
        let labels = domain_labels(namespace, maildomain);
        for type_ in conditions_to_drop(&gauges) {
            self.domain_condition
                .remove(&condition_labels(namespace, maildomain, type_));
        }
        for (type_, value) in &gauges.conditions {
            self.domain_condition
                .get_or_create(&condition_labels(namespace, maildomain, type_))
                .set(*value);
        }
        set_or_remove(&self.domain_mailboxes, &labels, gauges.mailboxes);
        set_or_remove(&self.certificate_expiry, &labels, gauges.certificate_expiry);
    }

    /// Drops every per-domain series of a deleted MailDomain.
    pub fn forget_domain(&self, namespace: &str, maildomain: &str) {
        let labels = domain_labels(namespace, maildomain);
        for type_ in KNOWN_CONDITIONS {
            self.domain_condition
                .remove(&condition_labels(namespace, maildomain, type_));
        }
        self.domain_mailboxes.remove(&labels);
        self.certificate_expiry.remove(&labels);
        self.clear_backup(namespace, maildomain);
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

/// The condition types a MailDomain status carries.
const KNOWN_CONDITIONS: [&str; 6] = [
    conditions::READY,
    conditions::PROGRESSING,
    conditions::DEGRADED,
    conditions::CERTIFICATE_READY,
    conditions::DKIM_READY,
    conditions::BACKUP_HEALTHY,
];

/// The per-domain gauge values a MailDomain status stands for.
#[derive(Debug, PartialEq, Eq)]
pub struct DomainGauges {
    /// Condition type → 1 when True, 0 when False or Unknown.
    pub conditions: Vec<(String, i64)>,
    pub mailboxes: Option<i64>,
    /// The certificate's notAfter as Unix seconds; none while unknown or unparsable.
    pub certificate_expiry: Option<i64>,
}

impl DomainGauges {
    pub fn of(status: &MailDomainStatus) -> Self {
        Self {
            conditions: status
                .conditions
                .iter()
                .map(|c| (c.type_.clone(), i64::from(c.status == "True")))
                .collect(),
            mailboxes: status.mailboxes.map(i64::from),
            certificate_expiry: status
                .certificate
                .as_ref()
                .and_then(|c| c.not_after.as_deref())
                .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                .map(|t| t.as_second()),
        }
    }
}

/// Known condition types the status no longer carries: their series go.
fn conditions_to_drop(gauges: &DomainGauges) -> impl Iterator<Item = &'static str> + '_ {
    KNOWN_CONDITIONS
        .into_iter()
        .filter(|k| !gauges.conditions.iter().any(|(t, _)| t == k))
}

fn domain_labels(namespace: &str, maildomain: &str) -> DomainLabels {
    DomainLabels {
        namespace: namespace.into(),
        maildomain: maildomain.into(),
    }
}

fn condition_labels(namespace: &str, maildomain: &str, type_: &str) -> ConditionLabels {
    ConditionLabels {
        namespace: namespace.into(),
        maildomain: maildomain.into(),
        r#type: type_.into(),
    }
}

fn set_or_remove(family: &Family<DomainLabels, Gauge>, labels: &DomainLabels, value: Option<i64>) {
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
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

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::api::maildomain::CertificateStatus;
    use crate::backup::observe::BackupMetrics;

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

    fn condition(type_: &str, status: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: "Test".into(),
            message: String::new(),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            observed_generation: Some(1),
        }
    }

    fn status() -> MailDomainStatus {
        MailDomainStatus {
            conditions: vec![
                condition(conditions::READY, "True"),
                condition(conditions::DEGRADED, "Unknown"),
                condition(conditions::BACKUP_HEALTHY, "False"),
            ],
            mailboxes: Some(3),
            certificate: Some(CertificateStatus {
                secret_name: "example-com-tls".into(),
                not_after: Some("2030-01-02T03:04:05Z".into()),
                renewal_time: None,
            }),
            ..MailDomainStatus::default()
        }
    }

    #[test]
    fn domain_gauges_follow_the_status() {
        assert_eq!(
            DomainGauges::of(&status()),
            DomainGauges {
                conditions: vec![
                    ("Ready".into(), 1),
                    ("Degraded".into(), 0),
                    ("BackupHealthy".into(), 0),
                ],
                mailboxes: Some(3),
                certificate_expiry: Some(1_893_553_445),
            }
        );
        let mut unparsable = status();
        unparsable.certificate.as_mut().unwrap().not_after = Some("soon".into());
        assert_eq!(DomainGauges::of(&unparsable).certificate_expiry, None);
        let empty = DomainGauges::of(&MailDomainStatus::default());
        assert!(empty.conditions.is_empty());
        assert_eq!((empty.mailboxes, empty.certificate_expiry), (None, None));
    }

    #[test]
    fn domain_series_follow_status_changes_and_go_with_the_domain() {
        let m = Metrics::new();
        m.set_domain("mail", "example-com", &status());
        m.set_domain("mail", "other-org", &status());
        let text = m.encode();
        for line in [
            r#"postwarden_maildomain_condition{namespace="mail",maildomain="example-com",type="Ready"} 1"#,
            r#"postwarden_maildomain_condition{namespace="mail",maildomain="example-com",type="BackupHealthy"} 0"#,
            r#"postwarden_maildomain_mailboxes{namespace="mail",maildomain="example-com"} 3"#,
            r#"postwarden_certificate_expiry_timestamp_seconds{namespace="mail",maildomain="example-com"} 1893553445"#,
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }

        let mut later = status();
        later.conditions.truncate(1);
        later.certificate = None;
        m.set_domain("mail", "example-com", &later);
        let text = m.encode();
        assert!(!text.contains(r#"maildomain="example-com",type="BackupHealthy""#));
        assert!(!text.contains(r#"postwarden_certificate_expiry_timestamp_seconds{namespace="mail",maildomain="example-com"}"#));

        m.forget_domain("mail", "example-com");
        let text = m.encode();
        assert!(!text.contains(r#"maildomain="example-com""#), "{text}");
        assert!(text.contains(r#"maildomain="other-org""#));
    }

    #[test]
    fn exported_names_are_the_ones_the_chart_may_query() {
        let m = Metrics::new();
        drop(m.reconcile("MailDomain"));
        m.reconcile_failed("MailDomain", "apply");
        m.write("Secret", "apply");
        m.set_leader(true);
        m.set_domain("mail", "example-com", &status());
        m.set_backup(
            "mail",
            "example-com",
            &BackupMetrics {
                healthy: true,
                last_success_unix: Some(1),
                last_run_failed: false,
                last_mailboxes: None,
                last_bytes: None,
            },
        );
        crate::test_support::assert_exports_exactly(
            &m.encode(),
            include_str!("../../../charts/postwarden/metrics.txt"),
            "metrics.txt",
        );
    }
}
