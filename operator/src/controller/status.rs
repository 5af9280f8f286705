//! Status of MailDomains and Mailboxes computed from what a reconcile observed, and the merge
//! patch that brings the stored status there — or none when nothing changed.

use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;
use serde_json::Value;

use crate::api::conditions::{self, Desired};
use crate::api::maildomain::{DkimStatus, DnsRecord};
use crate::api::{MailDomainStatus, MailboxStatus};
use crate::pki::health::Served;

/// Rollout state of one StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    pub name: String,
    pub replicas: i32,
    pub ready: i32,
    /// The StatefulSet controller has seen the current spec and updated every pod to it.
    pub rolled_out: bool,
}

impl Workload {
    /// Reads a StatefulSet's rollout state. Fields the cluster has not reported yet do not
    /// count against it; only `readyReplicas` must reach `replicas`.
    pub fn of(sts: &StatefulSet) -> Workload {
        let replicas = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = sts.status.as_ref();
        let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
        let generation_seen = match (
            sts.metadata.generation,
            status.and_then(|s| s.observed_generation),
        ) {
            (Some(g), Some(seen)) => seen >= g,
            _ => true,
        };
        let updated = status
            .and_then(|s| s.updated_replicas)
            .is_none_or(|u| u >= replicas);
        Workload {
            name: sts.metadata.name.clone().unwrap_or_default(),
            replicas,
            ready,
            rolled_out: generation_seen && updated,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.rolled_out && self.ready >= self.replicas
    }
}

/// What a MailDomain reconcile arrived at.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The spec cannot be served; nothing was applied or deleted.
    InvalidSpec(String),
    /// Building or applying the desired state failed; it is retried with backoff.
    Failed {
        reason: &'static str,
        message: String,
    },
    /// Every child was applied; the StatefulSets are in the given state. `refused` lists
    /// changes that could not be made (a volume cannot shrink or change its class); the rest
    /// of the spec was applied around them.
    Applied {
        workloads: Vec<Workload>,
        refused: Vec<String>,
    },
}

/// What is known about a domain's backups in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Backups {
    /// Not looked at: leave `lastBackup` and BackupHealthy as they are.
    Unchanged,
    /// The spec asks for no backups: BackupHealthy is removed (`lastBackup` stays as history).
    NotConfigured,
    Observed(Box<crate::backup::observe::Observation>),
}

/// What is known about the continuity upstream in this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub enum Upstream {
    /// Not looked at: UpstreamAvailable stays as it is.
    Unchanged,
    /// The spec has no continuity: UpstreamAvailable is removed.
    NotConfigured,
    Observed(Desired<'static>),
}

/// Everything a MailDomain status is computed from.
#[derive(Clone, Debug, PartialEq)]
pub struct DomainObservation {
    pub outcome: Outcome,
    /// Mailboxes in the users database, when the desired state was built.
    pub mailboxes: Option<i32>,
    pub certificate: Option<Served>,
    pub dkim: Option<DkimStatus>,
    pub dns_records: Option<Vec<DnsRecord>>,
    pub backups: Backups,
    pub upstream: Upstream,
}

impl DomainObservation {
    pub fn new(outcome: Outcome) -> Self {
        Self {
            outcome,
            mailboxes: None,
            certificate: None,
            dkim: None,
            dns_records: None,
            backups: Backups::Unchanged,
            upstream: Upstream::Unchanged,
        }
    }
}

/// Reasons of the MailDomain conditions.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const WORKLOADS_NOT_READY: &str = "WorkloadsNotReady";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const COMPLETE: &str = "Complete";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const RETRYING: &str = "Retrying";
    pub const RECONCILING: &str = "Reconciling";
    pub const PLAN_FAILED: &str = "PlanFailed";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const STORAGE_CHANGE_REFUSED: &str = "StorageChangeRefused";
    pub const KEY_ACTIVE: &str = "KeyActive";
}

/// The MailDomain status for an observation. Starts from the current status so unchanged
/// conditions keep their transition times and fields this reconcile did not compute survive.
pub fn domain_status(
    current: Option<&MailDomainStatus>,
    generation: i64,
    obs: DomainObservation,
    now: Timestamp,
) -> MailDomainStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    let c = &mut status.conditions;
    match obs.outcome {
        Outcome::InvalidSpec(message) => {
            conditions::set(
                c,
                Desired::new(
                    conditions::READY,
                    false,
                    reason::INVALID_SPEC,
                    message.clone(),
                ),
                generation,
                now,
            );
            conditions::set(
                c,
                Desired::new(
                    conditions::PROGRESSING,
                    false,
                    reason::INVALID_SPEC,
                    "waiting for a valid spec",
                ),
                generation,
                now,
            );
            conditions::set(
                c,
                Desired::new(conditions::DEGRADED, true, reason::INVALID_SPEC, message),
                generation,
                now,
            );
        }
        Outcome::Failed {
            reason: why,
            message,
        } => {
            // The running stack keeps serving while a change cannot be applied: Ready stays
            // what it was, Degraded says why the change is stuck.
            if conditions::find(c, conditions::READY).is_none() {
                conditions::set(
                    c,
                    Desired::new(
                        conditions::READY,
                        false,
                        reason::RECONCILING,
                        "not yet applied",
                    ),
                    generation,
                    now,
                );
            }
            conditions::set(
                c,
                Desired::new(
                    conditions::PROGRESSING,
                    true,
                    reason::RETRYING,
                    "retrying with backoff",
                ),
                generation,
                now,
            );
            conditions::set(
                c,
                Desired::new(conditions::DEGRADED, true, why, message),
                generation,
                now,
            );
        }
        Outcome::Applied { workloads, refused } => {
            let summary = workloads
                .iter()
                .map(|w| format!("{} {}/{} ready", w.name, w.ready, w.replicas))
                .collect::<Vec<_>>()
                .join(", ");
            let ready = !workloads.is_empty() && workloads.iter().all(Workload::is_ready);
            if ready {
                conditions::set(
                    c,
                    Desired::new(conditions::READY, true, reason::READY, summary),
                    generation,
                    now,
                );
                conditions::set(
                    c,
                    Desired::new(
                        conditions::PROGRESSING,
                        false,
                        reason::COMPLETE,
                        "every child is applied and rolled out",
                    ),
                    generation,
                    now,
                );
            } else {
                let summary = if summary.is_empty() {
                    "no StatefulSet observed yet".to_string()
                } else {
                    summary
                };
                conditions::set(
                    c,
                    Desired::new(
                        conditions::READY,
                        false,
                        reason::WORKLOADS_NOT_READY,
                        summary.clone(),
                    ),
                    generation,
                    now,
                );
                conditions::set(
                    c,
                    Desired::new(conditions::PROGRESSING, true, reason::ROLLING_OUT, summary),
                    generation,
                    now,
                );
            }
            let degraded = if refused.is_empty() {
                Desired::new(
                    conditions::DEGRADED,
                    false,
                    reason::AS_EXPECTED,
                    "every child is applied",
                )
            } else {
                Desired::new(
                    conditions::DEGRADED,
                    true,
                    reason::STORAGE_CHANGE_REFUSED,
                    refused.join("; "),
                )
            };
            conditions::set(c, degraded, generation, now);
        }
    }
    if let Some(cert) = &obs.certificate {
        conditions::set(
            c,
            Desired::new(
                conditions::CERTIFICATE_READY,
                cert.health.is_usable(),
                cert.reason(),
                cert.health.describe(&cert.secret_name),
            ),
            generation,
            now,
        );
    }
    if let Some(dkim) = &obs.dkim {
        conditions::set(
            c,
            Desired::new(
                conditions::DKIM_READY,
                true,
                reason::KEY_ACTIVE,
                match dkim.signing_selectors.as_slice() {
                    [_, _, ..] => format!(
                        "signing with selectors {}",
                        dkim.signing_selectors.join(", ")
                    ),
                    _ => format!("signing with selector {}", dkim.active_selector),
                },
            ),
            generation,
            now,
        );
    }
    match obs.backups {
        Backups::Unchanged => {}
        Backups::NotConfigured => c.retain(|c| c.type_ != conditions::BACKUP_HEALTHY),
        Backups::Observed(o) => {
            let o = *o;
            conditions::set(c, o.condition, generation, now);
            if o.last_backup.is_some() {
                status.last_backup = o.last_backup;
            }
        }
    }
    match obs.upstream {
        Upstream::Unchanged => {}
        Upstream::NotConfigured => c.retain(|c| c.type_ != conditions::UPSTREAM_AVAILABLE),
        Upstream::Observed(d) => conditions::set(c, d, generation, now),
    }
    if obs.mailboxes.is_some() {
        status.mailboxes = obs.mailboxes;
    }
    if let Some(cert) = &obs.certificate {
        status.certificate = Some(cert.status());
    }
    if obs.dkim.is_some() {
        status.dkim = obs.dkim;
    }
    if let Some(records) = obs.dns_records {
        status.dns_records = records;
    }
    status
}

/// Why a Mailbox is not (or is) in its domain's users database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MailboxState {
    Ready,
    /// In the users database, but some aliases are another Mailbox's (the message says which).
    AliasesDropped(String),
    Suspended,
    DomainNotFound,
    DomainInvalid(String),
    PasswordSecretMissing(String),
    /// The password value cannot be used (empty, or a hash in a weak scheme).
    PasswordInvalid(String),
    AddressConflict(String),
    InvalidSpec(String),
}

impl MailboxState {
    pub fn reason(&self) -> &'static str {
        match self {
            MailboxState::Ready => "Ready",
            MailboxState::AliasesDropped(_) => "AliasesDropped",
            MailboxState::Suspended => "Suspended",
            MailboxState::DomainNotFound => "DomainNotFound",
            MailboxState::DomainInvalid(_) => "DomainInvalid",
            MailboxState::PasswordSecretMissing(_) => "PasswordSecretMissing",
            MailboxState::PasswordInvalid(_) => "PasswordInvalid",
            MailboxState::AddressConflict(_) => "AddressConflict",
            MailboxState::InvalidSpec(_) => "InvalidSpec",
        }
    }

    pub fn is_ready(&self) -> bool {
        matches!(
            self,
            MailboxState::Ready | MailboxState::AliasesDropped(_) | MailboxState::Suspended
        )
    }

    fn message(&self, address: Option<&str>, domain_ref: &str) -> String {
        match self {
            MailboxState::Ready => {
                format!("{} is in the users database", address.unwrap_or("mailbox"))
            }
            MailboxState::Suspended => "suspended: mail is accepted, logins are refused".into(),
            MailboxState::DomainNotFound => {
                format!("MailDomain {domain_ref:?} does not exist in this namespace")
            }
            MailboxState::DomainInvalid(m) => {
                format!("MailDomain {domain_ref:?} cannot be served: {m}")
            }
            MailboxState::AliasesDropped(m) => format!(
                "{} is in the users database; {m}",
                address.unwrap_or("mailbox")
            ),
            MailboxState::PasswordSecretMissing(m)
            | MailboxState::PasswordInvalid(m)
            | MailboxState::AddressConflict(m)
            | MailboxState::InvalidSpec(m) => m.clone(),
        }
    }
}

/// The Mailbox status for a state, starting from the current one.
pub fn mailbox_status(
    current: Option<&MailboxStatus>,
    generation: i64,
    address: Option<String>,
    domain_ref: &str,
    state: &MailboxState,
    now: Timestamp,
) -> MailboxStatus {
    let mut status = current.cloned().unwrap_or_default();
    status.observed_generation = Some(generation);
    let message = state.message(address.as_deref(), domain_ref);
    status.address = address;
    conditions::set(
        &mut status.conditions,
        Desired::new(conditions::READY, state.is_ready(), state.reason(), message),
        generation,
        now,
    );
    status
}

/// The JSON merge patch turning `current` into `desired` (`{"status": ...}`), or `None` when
/// they are equal — the steady state, which must not write. Top-level fields that disappear
/// are set to null so the merge removes them.
pub fn status_patch<S: Serialize + PartialEq>(current: Option<&S>, desired: &S) -> Option<Value> {
    if current == Some(desired) {
        return None;
    }
    let mut new = serde_json::to_value(desired).expect("status serializes");
    if let (Some(Ok(Value::Object(old_map))), Value::Object(new_map)) =
        (current.map(serde_json::to_value), &mut new)
    {
        for key in old_map.keys() {
            new_map.entry(key.clone()).or_insert(Value::Null);
        }
    }
    Some(serde_json::json!({ "status": new }))
}

/// How long until the next reconcile: the earliest scheduled event (certificate renewal, DKIM
/// rotation step), but at least one second and at most `resync`.
pub fn requeue_after(
    now: Timestamp,
    scheduled: impl IntoIterator<Item = Timestamp>,
    resync: Duration,
) -> Duration {
    let mut wait = resync;
    for at in scheduled {
        let until = at.duration_since(now);
        let until = if until.is_negative() {
            Duration::ZERO
        } else {
            until.unsigned_abs()
        };
        wait = wait.min(until);
    }
    wait.max(Duration::from_secs(1))
}

/// True when a condition of this type changed status between two condition lists (used to
/// publish an Event only on transitions, never on a quiet resync).
pub fn transitioned(
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    let b = conditions::find(before, type_).map(|c| (&c.status, &c.reason));
    let a = conditions::find(after, type_).map(|c| (&c.status, &c.reason));
    a.is_some() && a != b
}

/// The Event to publish when CertificateReady moved to a new reason: a Warning when someone
/// has to act (expiring soon, expired, missing, unusable, wrong host), a Normal one when a
/// certificate is usable again after that. Nothing while it stays where it was, so a resync
/// repeats no Event; the time left is in the note, the condition keeps absolute times.
pub fn certificate_event(
    before: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    after: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    served: &Served,
    now: Timestamp,
) -> Option<conditions::Event> {
    if !transitioned(before, after, conditions::CERTIFICATE_READY) {
        return None;
    }
    let note = served.health.event_note(&served.secret_name, now);
    if served.needs_attention() {
        return Some(conditions::Event {
            warning: true,
            reason: served.event_reason(),
            note,
        });
    }
    let was_bad = conditions::find(before, conditions::CERTIFICATE_READY)
        .is_some_and(|c| c.status != "True" || c.reason == crate::pki::health::EXPIRING_SOON);
    was_bad.then(|| conditions::Event {
        warning: false,
        reason: served.event_reason(),
        note,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::health::{Health, Renewer};
    use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
    use kube::api::ObjectMeta;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sts(name: &str, replicas: i32, ready: i32) -> StatefulSet {
        StatefulSet {
            metadata: ObjectMeta {
                name: Some(name.into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(replicas),
                ..Default::default()
            }),
            status: Some(StatefulSetStatus {
                replicas,
                ready_replicas: Some(ready),
                observed_generation: Some(2),
                ..Default::default()
            }),
        }
    }

    fn applied(workloads: Vec<Workload>) -> DomainObservation {
        DomainObservation {
            mailboxes: Some(3),
            ..DomainObservation::new(Outcome::Applied {
                workloads,
                refused: vec![],
            })
        }
    }

    #[test]
    fn ready_when_every_statefulset_reports_all_replicas_ready() {
        let w = vec![
            Workload::of(&sts("d-mta", 2, 2)),
            Workload::of(&sts("d-imap", 2, 2)),
        ];
        let s = domain_status(None, 4, applied(w), ts("2026-01-01T00:00:00Z"));
        assert!(conditions::is_true(&s.conditions, conditions::READY));
        assert!(!conditions::is_true(&s.conditions, conditions::PROGRESSING));
        assert!(!conditions::is_true(&s.conditions, conditions::DEGRADED));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!(s.mailboxes, Some(3));
        assert!(s
            .conditions
            .iter()
            .all(|c| c.observed_generation == Some(4)));
    }

    #[test]
    fn a_refused_volume_change_is_degraded_while_the_rest_is_ready() {
        let obs = DomainObservation::new(Outcome::Applied {
            workloads: vec![Workload::of(&sts("d-imap", 2, 2))],
            refused: vec!["StatefulSet d-imap: volume mail cannot shrink from 10Gi to 5Gi".into()],
        });
        let s = domain_status(None, 2, obs, ts("2026-01-01T00:00:00Z"));
        assert!(conditions::is_true(&s.conditions, conditions::READY));
        let degraded = conditions::find(&s.conditions, conditions::DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", reason::STORAGE_CHANGE_REFUSED)
        );
        assert!(degraded.message.contains("cannot shrink"));
    }

    #[test]
    fn progressing_while_pods_come_up_or_spec_not_yet_seen() {
        let w = vec![
            Workload::of(&sts("d-mta", 2, 1)),
            Workload::of(&sts("d-imap", 2, 2)),
        ];
        let s = domain_status(None, 1, applied(w), ts("2026-01-01T00:00:00Z"));
        assert!(!conditions::is_true(&s.conditions, conditions::READY));
        assert!(conditions::is_true(&s.conditions, conditions::PROGRESSING));
        let ready = conditions::find(&s.conditions, conditions::READY).unwrap();
        assert_eq!(ready.reason, reason::WORKLOADS_NOT_READY);
        assert!(
            ready.message.contains("d-mta 1/2 ready"),
            "{}",
            ready.message
        );

        let mut stale = sts("d-imap", 2, 2);
        stale.metadata.generation = Some(3);
        assert!(
            !Workload::of(&stale).is_ready(),
            "status of an older generation"
        );
        let mut fresh = sts("d-imap", 2, 2);
        fresh.status.as_mut().unwrap().observed_generation = None;
        assert!(
            Workload::of(&fresh).is_ready(),
            "unreported fields do not count against readiness"
        );
        let s = domain_status(None, 1, applied(vec![]), ts("2026-01-01T00:00:00Z"));
        assert!(
            !conditions::is_true(&s.conditions, conditions::READY),
            "no StatefulSet seen yet"
        );
    }

    #[test]
    fn invalid_spec_degrades_and_keeps_other_fields() {
        let before = domain_status(
            None,
            1,
            applied(vec![Workload::of(&sts("d-mta", 1, 1))]),
            ts("2026-01-01T00:00:00Z"),
        );
        let s = domain_status(
            Some(&before),
            2,
            DomainObservation::new(Outcome::InvalidSpec("spec.domain: bad".into())),
            ts("2026-01-02T00:00:00Z"),
        );
        let degraded = conditions::find(&s.conditions, conditions::DEGRADED).unwrap();
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, reason::INVALID_SPEC);
        assert_eq!(degraded.message, "spec.domain: bad");
        assert_eq!(degraded.last_transition_time.0, ts("2026-01-02T00:00:00Z"));
        assert!(!conditions::is_true(&s.conditions, conditions::READY));
        assert_eq!(s.mailboxes, Some(3), "fields not recomputed survive");
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn failed_apply_keeps_ready_and_reports_degraded() {
        let before = domain_status(
            None,
            1,
            applied(vec![Workload::of(&sts("d-mta", 1, 1))]),
            ts("2026-01-01T00:00:00Z"),
        );
        let s = domain_status(
            Some(&before),
            1,
            DomainObservation::new(Outcome::Failed {
                reason: reason::APPLY_FAILED,
                message: "StatefulSet d-mta: forbidden".into(),
            }),
            ts("2026-01-02T00:00:00Z"),
        );
        assert!(conditions::is_true(&s.conditions, conditions::READY));
        assert!(conditions::is_true(&s.conditions, conditions::DEGRADED));
        assert!(transitioned(
            &before.conditions,
            &s.conditions,
            conditions::DEGRADED
        ));
        assert!(!transitioned(
            &before.conditions,
            &s.conditions,
            conditions::READY
        ));
    }

    #[test]
    fn recomputing_an_unchanged_observation_needs_no_patch() {
        let obs = || applied(vec![Workload::of(&sts("d-mta", 2, 2))]);
        let first = domain_status(None, 1, obs(), ts("2026-01-01T00:00:00Z"));
        assert!(status_patch(None, &first).is_some());
        let second = domain_status(Some(&first), 1, obs(), ts("2026-03-01T00:00:00Z"));
        assert_eq!(second, first, "transition times kept");
        assert_eq!(status_patch(Some(&first), &second), None);
    }

    #[test]
    fn patch_nulls_removed_fields() {
        let old = MailboxStatus {
            address: Some("a@example.com".into()),
            ..Default::default()
        };
        let new = MailboxStatus::default();
        let patch = status_patch(Some(&old), &new).unwrap();
        assert_eq!(patch["status"]["address"], Value::Null);
    }

    #[test]
    fn certificate_and_dkim_conditions_when_known() {
        let obs = DomainObservation {
            certificate: Some(served(
                Renewer::Operator,
                Health::Valid {
                    not_after: ts("2026-04-01T00:00:00Z"),
                    warn_at: ts("2026-03-18T00:00:00Z"),
                },
            )),
            dkim: Some(DkimStatus {
                active_selector: "pw2026a".into(),
                signing_selectors: vec!["pw2026a".into(), "pw2026b".into()],
                next_selector: None,
                next_rotation: None,
            }),
            ..applied(vec![])
        };
        let s = domain_status(None, 1, obs, ts("2026-01-01T00:00:00Z"));
        assert!(conditions::is_true(
            &s.conditions,
            conditions::CERTIFICATE_READY
        ));
        assert!(conditions::is_true(&s.conditions, conditions::DKIM_READY));
        assert_eq!(
            conditions::find(&s.conditions, conditions::DKIM_READY)
                .unwrap()
                .message,
            "signing with selectors pw2026a, pw2026b"
        );
        let cert = s.certificate.unwrap();
        assert_eq!(cert.secret_name, "d-tls");
        assert_eq!(cert.not_after.as_deref(), Some("2026-04-01T00:00:00Z"));
        assert_eq!(s.dkim.unwrap().active_selector, "pw2026a");
    }

    fn served(renewer: Renewer, health: Health) -> Served {
        Served {
            secret_name: "d-tls".into(),
            renewer,
            health,
            renewal_time: None,
        }
    }

    #[test]
    fn certificate_condition_and_events_follow_its_health() {
        let not_after = ts("2026-04-01T00:00:00Z");
        let valid = Health::Valid {
            not_after,
            warn_at: ts("2026-03-18T00:00:00Z"),
        };
        // A user's certificate over its life: valid, expiring soon, expired, replaced.
        let steps = [
            ("2026-01-01T00:00:00Z", valid.clone(), true, "Valid", None),
            ("2026-02-01T00:00:00Z", valid.clone(), true, "Valid", None),
            (
                "2026-03-20T00:00:00Z",
                Health::ExpiringSoon { not_after },
                true,
                "ExpiringSoon",
                Some((true, "CertificateExpiringSoon", "d-tls expires at 2026-04-01T00:00:00Z and has not been renewed (12d left)")),
            ),
            ("2026-03-25T00:00:00Z", Health::ExpiringSoon { not_after }, true, "ExpiringSoon", None),
            (
                "2026-04-01T06:00:00Z",
                Health::Expired { not_after },
                false,
                "Expired",
                Some((true, "CertificateExpired", "d-tls expired at 2026-04-01T00:00:00Z; clients that verify certificates refuse it (6h ago)")),
            ),
            (
                "2026-04-02T00:00:00Z",
                Health::Valid {
                    not_after: ts("2026-07-01T00:00:00Z"),
                    warn_at: ts("2026-06-17T00:00:00Z"),
                },
                true,
                "Valid",
                Some((false, "CertificateValid", "d-tls valid until 2026-07-01T00:00:00Z")),
            ),
        ];
        let mut current: Option<MailDomainStatus> = None;
        for (when, health, ready, reason, event) in steps {
            let now = ts(when);
            let cert = served(Renewer::User, health);
            let obs = DomainObservation {
                certificate: Some(cert.clone()),
                ..applied(vec![])
            };
            let next = domain_status(current.as_ref(), 1, obs, now);
            let c = conditions::find(&next.conditions, conditions::CERTIFICATE_READY).unwrap();
            assert_eq!(
                (c.status == "True", c.reason.as_str()),
                (ready, reason),
                "{when}"
            );
            let before = current
                .as_ref()
                .map(|s| s.conditions.clone())
                .unwrap_or_default();
            let got = certificate_event(&before, &next.conditions, &cert, now)
                .map(|e| (e.warning, e.reason, e.note));
            let want = event.map(|(w, r, n): (bool, &str, &str)| (w, r, n.to_string()));
            assert_eq!(got, want, "{when}");
            current = Some(next);
        }
    }

    #[test]
    fn missing_certificates_are_false_and_only_a_user_secret_warns() {
        let now = ts("2026-01-01T00:00:00Z");
        let first = |renewer| {
            let cert = served(renewer, Health::Missing);
            let obs = DomainObservation {
                certificate: Some(cert.clone()),
                ..applied(vec![])
            };
            let s = domain_status(None, 1, obs, now);
            let c = conditions::find(&s.conditions, conditions::CERTIFICATE_READY)
                .unwrap()
                .clone();
            let event = certificate_event(&[], &s.conditions, &cert, now);
            (c, event, s.certificate.unwrap())
        };
        let (c, event, status) = first(Renewer::User);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "SecretMissing")
        );
        assert_eq!(c.message, "Secret d-tls has no certificate (tls.crt) yet");
        let event = event.unwrap();
        assert!(event.warning);
        assert_eq!(event.reason, "CertificateMissing");
        assert_eq!(status.not_after, None);

        // cert-manager has not issued yet: False, but nobody has to act.
        let (c, event, _) = first(Renewer::CertManager);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "WaitingForCertManager")
        );
        assert_eq!(event, None);
    }

    #[test]
    fn backup_condition_follows_the_observation_and_goes_with_the_spec() {
        use crate::api::maildomain::BackupStatus;
        use crate::backup::observe::{BackupMetrics, Observation};
        let observed = Observation {
            last_backup: Some(BackupStatus {
                time: "2026-01-01T02:31:00Z".into(),
                result: "Succeeded".into(),
                mailboxes: Some(2),
                bytes: Some(100),
                snapshot: Some("abc".into()),
            }),
            condition: Desired::new(conditions::BACKUP_HEALTHY, true, "BackupSucceeded", "ok"),
            event: None,
            metrics: BackupMetrics::default(),
        };
        let obs = DomainObservation {
            backups: Backups::Observed(Box::new(observed)),
            ..applied(vec![])
        };
        let s = domain_status(None, 1, obs, ts("2026-01-01T03:00:00Z"));
        assert!(conditions::is_true(
            &s.conditions,
            conditions::BACKUP_HEALTHY
        ));
        assert_eq!(
            s.last_backup.as_ref().unwrap().snapshot.as_deref(),
            Some("abc")
        );

        let obs = DomainObservation {
            backups: Backups::NotConfigured,
            ..applied(vec![])
        };
        let s = domain_status(Some(&s), 2, obs, ts("2026-01-02T00:00:00Z"));
        assert!(conditions::find(&s.conditions, conditions::BACKUP_HEALTHY).is_none());
        assert!(s.last_backup.is_some(), "the last backup stays as history");
    }

    #[test]
    fn mailbox_status_carries_address_and_reason() {
        let now = ts("2026-01-01T00:00:00Z");
        let ok = mailbox_status(
            None,
            1,
            Some("alice@example.com".into()),
            "example",
            &MailboxState::Ready,
            now,
        );
        assert_eq!(ok.address.as_deref(), Some("alice@example.com"));
        assert!(conditions::is_true(&ok.conditions, conditions::READY));
        assert_eq!(
            mailbox_status(
                Some(&ok),
                1,
                Some("alice@example.com".into()),
                "example",
                &MailboxState::Ready,
                ts("2026-02-01T00:00:00Z")
            ),
            ok
        );

        let missing = mailbox_status(
            Some(&ok),
            2,
            Some("alice@example.com".into()),
            "example",
            &MailboxState::PasswordSecretMissing("Secret \"alice-pw\" not found".into()),
            ts("2026-02-01T00:00:00Z"),
        );
        let ready = conditions::find(&missing.conditions, conditions::READY).unwrap();
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason, "PasswordSecretMissing");
        assert_eq!(ready.last_transition_time.0, ts("2026-02-01T00:00:00Z"));

        let orphan = mailbox_status(None, 1, None, "nope", &MailboxState::DomainNotFound, now);
        let ready = conditions::find(&orphan.conditions, conditions::READY).unwrap();
        assert_eq!(ready.reason, "DomainNotFound");
        assert!(ready.message.contains("\"nope\""));
    }

    #[test]
    fn requeue_at_the_earliest_scheduled_event_within_bounds() {
        let now = ts("2026-01-01T00:00:00Z");
        let resync = Duration::from_secs(600);
        assert_eq!(requeue_after(now, [], resync), resync);
        assert_eq!(
            requeue_after(
                now,
                [ts("2026-01-01T00:02:00Z"), ts("2026-01-01T00:05:00Z")],
                resync
            ),
            Duration::from_secs(120)
        );
        assert_eq!(
            requeue_after(now, [ts("2026-06-01T00:00:00Z")], resync),
            resync
        );
        assert_eq!(
            requeue_after(now, [ts("2025-12-31T00:00:00Z")], resync),
            Duration::from_secs(1),
            "overdue"
        );
    }
}
