//! Leader election on a `coordination.k8s.io/v1` Lease, so only one operator replica
//! reconciles at a time.
//!
//! The protocol is client-go's: the holder renews `renewTime` every retry period; another
//! replica takes the lease over once it has seen the same record unchanged for longer than
//! `leaseDurationSeconds` — measured on its own monotonic clock, so clock skew between nodes
//! does not matter. Every write is a replace guarded by the resourceVersion that was read, so
//! two candidates can never both win. A holder that cannot renew within the renew deadline
//! stops reconciling; a holder shutting down clears the holder so a standby takes over at once.

use std::future::Future;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::watch;

use super::metrics::Metrics;

/// Timing and identity of the election.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
    /// A leader that has not renewed for this long steps down.
    pub renew_deadline: Duration,
    /// Interval of acquire attempts and renewals.
    pub retry_period: Duration,
}

/// What a candidate does with the lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// No lease exists: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder stopped renewing: take it over.
    TakeOver,
    /// Someone else holds it.
    Follow(String),
}

/// Decides the next step. `expired` is whether this candidate has seen the same lease record
/// for longer than its duration.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, expired: bool) -> Step {
    let Some(spec) = lease else {
        return Step::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == me => Step::Renew,
        None | Some("") => Step::TakeOver,
        Some(_) if expired => Step::TakeOver,
        Some(holder) => Step::Follow(holder.to_string()),
    }
}

/// The lease record a candidate watches for changes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RecordKey {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    transitions: Option<i32>,
}

impl RecordKey {
    fn of(spec: &LeaseSpec) -> Self {
        Self {
            holder: spec.holder_identity.clone(),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions,
        }
    }
}

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<(RecordKey, Instant)>,
}

impl Elector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn spec_for(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let held = previous
            .and_then(|p| p.holder_identity.as_deref())
            .is_some_and(|h| h == self.settings.identity);
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(self.settings.duration.as_secs().max(1) as i32),
            acquire_time: if held {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if held || previous.is_none() {
                transitions
            } else {
                transitions + 1
            }),
            ..Default::default()
        }
    }

    /// One round: returns whether this candidate holds the lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let current = self.api.get_opt(&self.settings.name).await?;
        let spec = current
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let expired = match &current {
            None => true,
            Some(_) => {
                let key = RecordKey::of(&spec);
                let seen_since = match &self.observed {
                    Some((k, at)) if *k == key => *at,
                    _ => {
                        let at = Instant::now();
                        self.observed = Some((key, at));
                        at
                    }
                };
                let duration = spec
                    .lease_duration_seconds
                    .map(|s| Duration::from_secs(s.max(0) as u64))
                    .unwrap_or(self.settings.duration);
                seen_since.elapsed() > duration
            }
        };
        let step = decide(
            current.as_ref().map(|_| &spec),
            &self.settings.identity,
            expired,
        );
        let result = match step {
            Step::Follow(_) => return Ok(false),
            Step::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.settings.name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec_for(None, now)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Step::Renew | Step::TakeOver => {
                let mut lease = current.expect("a lease was read");
                lease.spec = Some(self.spec_for(Some(&spec), now));
                // Replace carries the resourceVersion read above: a concurrent writer makes it fail.
                self.api
                    .replace(&self.settings.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(lease) => {
                if step == Step::TakeOver || step == Step::Create {
                    tracing::info!(lease = %self.settings.name, identity = %self.settings.identity, "acquired leadership");
                }
                if let Some(spec) = &lease.spec {
                    self.observed = Some((RecordKey::of(spec), Instant::now()));
                }
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up so a standby can take over without waiting for expiry.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Why leading ended.
#[derive(Debug, thiserror::Error)]
pub enum LeadError {
    #[error("lost the leader lease: not renewed within {0:?}")]
    Lost(Duration),
    #[error(transparent)]
    Work(#[from] anyhow::Error),
}

/// Waits to become leader, then runs `work` while renewing the lease. `work` gets the
/// shutdown signal and must return after it fires; the lease is then released.
/// Returns `Ok` after shutdown, `Err(Lost)` when the lease could not be renewed in time (the
/// work future is dropped at once, aborting its reconciles).
pub async fn run_as_leader<W, F>(
    mut elector: Elector,
    metrics: &Metrics,
    mut shutdown: watch::Receiver<bool>,
    work: W,
) -> Result<(), LeadError>
where
    W: FnOnce(watch::Receiver<bool>) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let retry = elector.settings().retry_period;
    let renew_deadline = elector.settings().renew_deadline;
    tracing::info!(
        lease = %elector.settings().name,
        namespace = %elector.settings().namespace,
        identity = %elector.settings().identity,
        "waiting for leadership"
    );
    loop {
        if *shutdown.borrow() {
            return Ok(());
        }
        match elector.try_acquire_or_renew().await {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "leader election attempt failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(retry) => {}
            _ = shutdown.changed() => {}
        }
    }
    metrics.set_leader(true);

    let renew = async {
        let mut last_renewal = Instant::now();
        loop {
            tokio::time::sleep(retry).await;
            match elector.try_acquire_or_renew().await {
                Ok(true) => last_renewal = Instant::now(),
                Ok(false) => {
                    tracing::error!("another replica holds the leader lease");
                    return LeadError::Lost(renew_deadline);
                }
                Err(e) => tracing::warn!(error = %e, "renewing the leader lease failed"),
            }
            if last_renewal.elapsed() > renew_deadline {
                return LeadError::Lost(renew_deadline);
            }
        }
    };
    let outcome = tokio::select! {
        result = work(shutdown.clone()) => result.map_err(LeadError::Work),
        lost = renew => Err(lost),
    };
    metrics.set_leader(false);
    if !matches!(outcome, Err(LeadError::Lost(_))) {
        match elector.release().await {
            Ok(()) => tracing::info!("released the leader lease"),
            Err(e) => tracing::warn!(error = %e, "releasing the leader lease failed"),
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            ..Default::default()
        }
    }

    #[test]
    fn missing_lease_is_created() {
        assert_eq!(decide(None, "a", false), Step::Create);
    }

    #[test]
    fn own_lease_is_renewed_foreign_live_lease_followed() {
        assert_eq!(decide(Some(&held_by(Some("a"))), "a", false), Step::Renew);
        assert_eq!(decide(Some(&held_by(Some("a"))), "a", true), Step::Renew);
        assert_eq!(
            decide(Some(&held_by(Some("b"))), "a", false),
            Step::Follow("b".into())
        );
    }

    #[test]
    fn expired_or_released_lease_is_taken_over() {
        assert_eq!(decide(Some(&held_by(Some("b"))), "a", true), Step::TakeOver);
        assert_eq!(decide(Some(&held_by(None)), "a", false), Step::TakeOver);
        assert_eq!(decide(Some(&held_by(Some(""))), "a", false), Step::TakeOver);
    }

    fn elector(identity: &str) -> Elector {
        // A client is needed only for the Api handle; these tests never send a request.
        let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        Elector::new(
            client,
            LeaseSettings {
                name: "postwarden".into(),
                namespace: "ops".into(),
                identity: identity.into(),
                duration: Duration::from_secs(15),
                renew_deadline: Duration::from_secs(10),
                retry_period: Duration::from_secs(2),
            },
        )
    }

    #[tokio::test]
    async fn takeover_counts_a_transition_and_renewal_keeps_acquire_time() {
        let e = elector("a");
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:00:02Z".parse().unwrap();
        let created = e.spec_for(None, t0);
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        let renewed = e.spec_for(Some(&created), t1);
        assert_eq!(renewed.acquire_time, created.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(t1)));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = elector("b").spec_for(Some(&renewed), t1);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(t1)));
    }
}
