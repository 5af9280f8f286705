//! Which users each peer still has to be synced for, and how far behind it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// A user waiting for a sync with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    /// When the oldest change not yet synced happened; `None` when the user is only queued by a
    /// sweep (no known change, so it does not count as lag).
    since: Option<Instant>,
}

/// The dirty users of one peer. A user is either waiting, being synced, or both (changed again
/// during its sync, so it needs one more).
#[derive(Debug, Default)]
pub struct PeerQueue {
    waiting: BTreeMap<String, Pending>,
    running: BTreeMap<String, Option<Instant>>,
}

impl PeerQueue {
    /// Records a change of `user` at `at` (keeps the oldest unsynced change).
    pub fn changed(&mut self, user: &str, at: Instant) {
        let entry = self
            .waiting
            .entry(user.to_string())
            .or_insert(Pending { since: None });
        entry.since = Some(entry.since.map_or(at, |s| s.min(at)));
    }

    /// Queues `user` for a sweep sync unless it is already waiting.
    pub fn sweep(&mut self, user: &str) {
        self.waiting
            .entry(user.to_string())
            .or_insert(Pending { since: None });
    }

    /// Takes the next user to sync: the oldest change first, then sweep entries; a user whose
    /// sync is running is left waiting until that sync ends.
    pub fn take_next(&mut self) -> Option<String> {
        self.take_next_where(|_| true)
    }

    /// [`Self::take_next`] among the users `eligible` accepts.
    pub fn take_next_where(&mut self, eligible: impl Fn(&str) -> bool) -> Option<String> {
        let user = self
            .waiting
            .iter()
            .filter(|(u, _)| !self.running.contains_key(*u) && eligible(u))
            .min_by_key(|(u, p)| (p.since.is_none(), p.since, (*u).clone()))
            .map(|(u, _)| u.clone())?;
        let pending = self.waiting.remove(&user)?;
        self.running.insert(user.clone(), pending.since);
        Some(user)
    }

    /// Ends the sync of `user`; a failed one goes back to waiting with its change time.
    pub fn finished(&mut self, user: &str, ok: bool) {
        let since = self.running.remove(user).flatten();
        if ok {
            return;
        }
        let entry = self
            .waiting
            .entry(user.to_string())
            .or_insert(Pending { since: None });
        entry.since = match (entry.since, since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Users waiting or being synced.
    pub fn len(&self) -> usize {
        self.waiting
            .keys()
            .chain(self.running.keys())
            .collect::<BTreeSet<_>>()
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Seconds since the oldest change this peer has not received yet (0 when it has them all).
    pub fn lag_seconds(&self, now: Instant) -> f64 {
        self.waiting
            .values()
            .filter_map(|p| p.since)
            .chain(self.running.values().filter_map(|s| *s))
            .min()
            .map_or(0.0, |oldest| {
                now.saturating_duration_since(oldest).as_secs_f64()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn changes_are_synced_oldest_first_and_a_sweep_does_not_count_as_lag() {
        let t0 = Instant::now();
        let mut q = PeerQueue::default();
        q.sweep("zed@example.com");
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(60)), 0.0);
        q.changed("bob@example.com", t0 + Duration::from_secs(2));
        q.changed("alice@example.com", t0 + Duration::from_secs(1));
        q.changed("bob@example.com", t0 + Duration::from_secs(3));
        assert_eq!(q.len(), 3);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(11)), 10.0);
        assert_eq!(q.take_next().as_deref(), Some("alice@example.com"));
        assert_eq!(q.take_next().as_deref(), Some("bob@example.com"));
        assert_eq!(q.take_next().as_deref(), Some("zed@example.com"));
        assert_eq!(q.take_next(), None);
        // Running syncs still count until they end.
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(11)), 10.0);
        q.finished("alice@example.com", true);
        q.finished("zed@example.com", true);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(12)), 10.0);
        q.finished("bob@example.com", true);
        assert!(q.is_empty());
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(12)), 0.0);
    }

    #[test]
    fn a_failed_sync_is_retried_keeping_its_change_time() {
        let t0 = Instant::now();
        let mut q = PeerQueue::default();
        q.changed("alice@example.com", t0);
        assert_eq!(q.take_next().as_deref(), Some("alice@example.com"));
        q.finished("alice@example.com", false);
        assert_eq!(q.len(), 1);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(5)), 5.0);
        assert_eq!(q.take_next().as_deref(), Some("alice@example.com"));
    }

    #[test]
    fn a_change_during_a_sync_needs_one_more_sync_after_it() {
        let t0 = Instant::now();
        let mut q = PeerQueue::default();
        q.changed("alice@example.com", t0);
        assert_eq!(q.take_next().as_deref(), Some("alice@example.com"));
        q.changed("alice@example.com", t0 + Duration::from_secs(1));
        assert_eq!(q.take_next(), None, "not twice at once");
        assert_eq!(q.len(), 1);
        q.finished("alice@example.com", true);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(3)), 2.0);
        assert_eq!(q.take_next().as_deref(), Some("alice@example.com"));
    }
}
