//! What every reconcile shares: the API client, the Event recorder, metrics, the clock, the
//! caches and the bookkeeping that keeps a quiet resync quiet.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::core::error_boundary::InvalidObject;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::Client;

use super::apply::AppliedTokens;
use super::backoff::{Failures, Pacer};
use super::desired::Planner;
use super::informers::Stores;
use super::metrics::Metrics;

/// Source of the current time, injectable for tests of time-dependent decisions.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub clock: Arc<dyn Clock>,
    pub stores: Stores,
    pub planner: Arc<dyn Planner>,
    pub failures: Failures,
    pub pacer: Pacer,
    pub applied: AppliedTokens,
    /// Longest time between two reconciles of a MailDomain.
    pub resync: Duration,
    /// Undeserializable objects already reported, by uid and resourceVersion.
    reported_invalid: Mutex<HashSet<String>>,
}

impl Context {
    pub fn new(
        client: Client,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        stores: Stores,
        planner: Arc<dyn Planner>,
        resync: Duration,
    ) -> Self {
        Self {
            client,
            recorder,
            metrics,
            clock: Arc::new(SystemClock),
            stores,
            planner,
            failures: Failures::default(),
            pacer: Pacer::default(),
            applied: AppliedTokens::default(),
            resync,
            reported_invalid: Mutex::default(),
        }
    }

    /// Publishes an Event about `regarding`. A failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        action: &str,
        note: impl Into<String>,
    ) {
        let mut note: String = note.into();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: action.into(),
            secondary: None,
        };
        match self.recorder.publish(&event, regarding).await {
            Ok(()) => self.metrics.write("Event", "create"),
            Err(e) => tracing::warn!(error = %e, reason, "publishing an Event failed"),
        }
    }

    /// Logs and publishes (once per object version) that an object could not be read.
    pub async fn report_invalid(&self, kind: &str, api_version: &str, invalid: &InvalidObject) {
        let meta = &invalid.metadata;
        let key = format!(
            "{}@{}",
            meta.uid.as_deref().unwrap_or_default(),
            meta.resource_version.as_deref().unwrap_or_default()
        );
        if !self
            .reported_invalid
            .lock()
            .expect("report set lock")
            .insert(key)
        {
            return;
        }
        tracing::warn!(
            kind,
            namespace = meta.namespace.as_deref().unwrap_or_default(),
            name = meta.name.as_deref().unwrap_or_default(),
            error = %invalid.error,
            "object cannot be read; skipping it"
        );
        let regarding = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        };
        self.publish(
            &regarding,
            EventType::Warning,
            "InvalidObject",
            "Read",
            format!("cannot be read: {}", invalid.error),
        )
        .await;
    }
}
