//! Outage detection (pure): probes and queue evidence in, upstream availability out.

use serde::{Deserialize, Serialize};

/// The upstream's availability as the agent last decided it; persisted so a restarted agent
/// resumes an outage instead of waiting for the threshold again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Availability {
    pub available: bool,
    /// The latest reply (or error) that counted: the probe's, or while the upstream keeps
    /// deferring messages, the queue's reason.
    pub last_reply: String,
    /// Unix time of the last change.
    pub since: i64,
    /// Consecutive failed probes.
    pub failures: u32,
}

impl Availability {
    pub fn new(now: i64) -> Self {
        Self {
            available: true,
            last_reply: String::new(),
            since: now,
            failures: 0,
        }
    }

    /// Takes one probe and the queue's evidence into account; true when availability changed.
    ///
    /// Unavailable: `threshold` probes in a row failed, or `threshold` spooled messages were
    /// deferred by the upstream longer than the detection window (it answers RCPT but refuses
    /// the message). Available again: a good probe and no such messages.
    pub fn observe(
        &mut self,
        probe: Result<&str, &str>,
        stale_deferrals: usize,
        queue_reason: Option<&str>,
        threshold: u32,
        now: i64,
    ) -> bool {
        match probe {
            Ok(_) => self.failures = 0,
            Err(_) => self.failures = self.failures.saturating_add(1),
        }
        let evidence = stale_deferrals >= threshold as usize;
        let available = self.failures < threshold && !evidence;
        let reply = match (probe, queue_reason) {
            (Err(e), _) => e,
            (Ok(_), Some(r)) if evidence => r,
            (Ok(r), _) => r,
        };
        let changed = available != self.available;
        if changed {
            self.available = available;
            self.since = now;
        }
        self.last_reply = reply.to_string();
        changed
    }
}

/// Whether emergency-inbox copies are delivered: by hand (`active`), or, with automatic
/// activation, while the upstream is unavailable.
pub fn local_delivery(manual: bool, active: bool, availability: &Availability) -> bool {
    active || (!manual && !availability.available)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOWN: Result<&str, &str> = Err("connect to up:25: Connection refused");

    #[test]
    fn unavailable_after_the_threshold_and_available_after_one_good_probe() {
        let mut a = Availability::new(0);
        assert!(!a.observe(DOWN, 0, None, 3, 5));
        assert!(!a.observe(DOWN, 0, None, 3, 10));
        assert!(a.available);
        assert!(a.observe(DOWN, 0, None, 3, 15));
        assert!(!a.available);
        assert_eq!(a.since, 15);
        assert_eq!(a.last_reply, "connect to up:25: Connection refused");
        assert!(!a.observe(
            Err("up said: 451 4.3.2 Temporary server error (in reply to RCPT TO)"),
            0,
            None,
            3,
            20
        ));
        assert!(a.last_reply.contains("451 4.3.2"));
        assert!(a.observe(
            Ok("up said: 250 2.1.5 Ok (in reply to RCPT TO)"),
            0,
            None,
            3,
            25
        ));
        assert!(a.available);
        assert_eq!(a.failures, 0);
    }

    #[test]
    fn deferrals_the_probe_cannot_see_make_an_outage_too() {
        let mut a = Availability::new(0);
        let reason = "up said: 451 4.3.2 Temporary server error (in reply to end of DATA command)";
        assert!(!a.observe(Ok("250"), 2, Some(reason), 3, 5));
        assert!(a.observe(Ok("250"), 3, Some(reason), 3, 10));
        assert_eq!(a.last_reply, reason);
        assert!(a.observe(Ok("250 ok"), 0, None, 3, 15));
    }

    #[test]
    fn manual_activation_only_follows_active() {
        let mut down = Availability::new(0);
        down.available = false;
        let up = Availability::new(0);
        assert!(local_delivery(false, false, &down));
        assert!(!local_delivery(false, false, &up));
        assert!(!local_delivery(true, false, &down));
        assert!(local_delivery(true, true, &up));
        assert!(local_delivery(false, true, &up));
    }
}
