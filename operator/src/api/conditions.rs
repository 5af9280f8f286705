//! Standard `metav1.Condition` handling: one condition per type, `lastTransitionTime` kept
//! while the status does not change, so a resync that observes nothing new writes nothing.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const CERTIFICATE_READY: &str = "CertificateReady";
pub const DKIM_READY: &str = "DkimReady";
pub const BACKUP_HEALTHY: &str = "BackupHealthy";
pub const UPSTREAM_AVAILABLE: &str = "UpstreamAvailable";

/// An Event to record about an object when one of its conditions changed (the controller
/// publishes it as `Warning` or `Normal` with this reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub warning: bool,
    pub reason: &'static str,
    pub note: String,
}

/// A condition to set, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired<'a> {
    pub type_: &'a str,
    pub status: bool,
    /// The status cannot be told (written as "Unknown"; `status` is then ignored).
    pub unknown: bool,
    pub reason: &'a str,
    pub message: String,
}

impl<'a> Desired<'a> {
    pub fn new(type_: &'a str, status: bool, reason: &'a str, message: impl Into<String>) -> Self {
        Self {
            type_,
            status,
            unknown: false,
            reason,
            message: message.into(),
        }
    }

    /// A condition whose status cannot be told right now.
    pub fn unknown(type_: &'a str, reason: &'a str, message: impl Into<String>) -> Self {
        Self {
            unknown: true,
            ..Self::new(type_, false, reason, message)
        }
    }

    fn status_str(&self) -> &'static str {
        match (self.unknown, self.status) {
            (true, _) => "Unknown",
            (false, true) => "True",
            (false, false) => "False",
        }
    }
}

/// Sets `desired` in `conditions`: the transition time moves only when the status flips, and
/// an unchanged condition is left exactly as it was.
pub fn set(conditions: &mut Vec<Condition>, desired: Desired<'_>, generation: i64, now: Timestamp) {
    let status = desired.status_str();
    match conditions.iter_mut().find(|c| c.type_ == desired.type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_string();
            existing.reason = desired.reason.to_string();
            existing.message = desired.message;
            existing.observed_generation = Some(generation);
        }
        None => conditions.push(Condition {
            type_: desired.type_.to_string(),
            status: status.to_string(),
            reason: desired.reason.to_string(),
            message: desired.message,
            observed_generation: Some(generation),
            last_transition_time: Time(now),
        }),
    }
}

/// The condition of the given type, if present.
pub fn find<'c>(conditions: &'c [Condition], type_: &str) -> Option<&'c Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition of that type is present with status "True".
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn new_condition_gets_transition_time_and_generation() {
        let mut c = Vec::new();
        set(
            &mut c,
            Desired::new(READY, false, "Progressing", "waiting"),
            3,
            ts("2026-01-01T00:00:00Z"),
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].status, "False");
        assert_eq!(c[0].observed_generation, Some(3));
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T00:00:00Z"));
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut c = Vec::new();
        set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            1,
            ts("2026-01-01T00:00:00Z"),
        );
        let before = c.clone();
        set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            1,
            ts("2026-02-01T00:00:00Z"),
        );
        assert_eq!(
            c, before,
            "a repeated identical condition must not change anything"
        );
        set(
            &mut c,
            Desired::new(READY, true, "Ready", "still ok"),
            2,
            ts("2026-03-01T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-01T00:00:00Z"));
        assert_eq!(c[0].message, "still ok");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn flipped_status_moves_transition_time() {
        let mut c = Vec::new();
        set(
            &mut c,
            Desired::new(READY, true, "Ready", "ok"),
            1,
            ts("2026-01-01T00:00:00Z"),
        );
        set(
            &mut c,
            Desired::new(READY, false, "Degraded", "down"),
            1,
            ts("2026-01-02T00:00:00Z"),
        );
        assert_eq!(c[0].last_transition_time.0, ts("2026-01-02T00:00:00Z"));
        assert!(!is_true(&c, READY));
    }
}
