//! Which users each peer still has to be synced for, and how far behind it is.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// A user waiting for a sync with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pending {
    /// When the oldest change not yet synced happened; `None` when the user is only queued by a
    /// sweep (no known change, so it does not count as lag).
    since: Option<Instant>,
    /// Compare every message (`doveadm sync -f`): for sweeps, and after a failed sync, which
    /// can leave an incremental one believing there is nothing left to do.
    full: bool,
}

/// The next sync to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Next {
    pub user: String,
    pub full: bool,
}

/// The dirty users of one peer. A user is either waiting, being synced, or both (changed again
/// during its sync, so it needs one more).
#[derive(Debug, Default)]
pub struct PeerQueue {
    waiting: BTreeMap<String, Pending>,
    running: BTreeMap<String, Pending>,
    /// The least time between the starts of two syncs of one user.
    interval: Duration,
    /// When each user's last sync started, while that is less than `interval` ago.
    started: BTreeMap<String, Instant>,
}

impl PeerQueue {
    /// A queue that starts a user's syncs at least `interval` apart: the first change of a quiet
    /// user is synced at once, changes coming faster share a sync (each costs a dsync run on
    /// both sides, whatever it carries).
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            ..Self::default()
        }
    }

    /// Records a change of `user` at `at` (keeps the oldest unsynced change).
    pub fn changed(&mut self, user: &str, at: Instant) {
        let entry = self.entry(user);
        entry.since = Some(entry.since.map_or(at, |s| s.min(at)));
    }

    /// Queues a full sync of `user` (a sweep).
    pub fn sweep(&mut self, user: &str) {
        self.entry(user).full = true;
    }

    fn entry(&mut self, user: &str) -> &mut Pending {
        self.waiting.entry(user.to_string()).or_insert(Pending {
            since: None,
            full: false,
        })
    }

    #[cfg(test)]
    fn take_next(&mut self) -> Option<String> {
        self.take_next_where(Instant::now(), |_| true)
            .map(|n| n.user)
    }

    /// The next sync due at `now` among the users `eligible` accepts: the oldest change first,
    /// then sweep entries; a user whose sync is running is left waiting until that sync ends,
    /// one synced less than the interval ago until the interval has passed.
    pub fn take_next_where(
        &mut self,
        now: Instant,
        eligible: impl Fn(&str) -> bool,
    ) -> Option<Next> {
        let interval = self.interval;
        self.started.retain(|_, at| now < *at + interval);
        let user = self
            .waiting
            .iter()
            .filter(|(u, _)| {
                !self.running.contains_key(*u) && !self.started.contains_key(*u) && eligible(u)
            })
            .min_by_key(|(u, p)| (p.since.is_none(), p.since, (*u).clone()))
            .map(|(u, _)| u.clone())?;
        let pending = self.waiting.remove(&user)?;
        if !interval.is_zero() {
            self.started.insert(user.clone(), now);
        }
        self.running.insert(user.clone(), pending);
        Some(Next {
            user,
            full: pending.full,
        })
    }

    /// Ends the sync of `user`; a failed one goes back to waiting with its change time, to be
    /// retried in full.
    pub fn finished(&mut self, user: &str, ok: bool) {
        let Some(ran) = self.running.remove(user) else {
            return;
        };
        if ok {
            return;
        }
        let entry = self.entry(user);
        entry.full = true;
        entry.since = match (entry.since, ran.since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// When a waiting user held back by the interval becomes due (`None`: none is).
    pub fn next_due(&self) -> Option<Instant> {
        self.waiting
            .keys()
            .filter(|u| !self.running.contains_key(*u))
            .filter_map(|u| self.started.get(u))
            .map(|at| *at + self.interval)
            .min()
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
            .chain(self.running.values().filter_map(|p| p.since))
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
        let first = q.take_next_where(t0, |_| true).unwrap();
        assert!(!first.full, "a change is synced incrementally");
        q.finished("alice@example.com", false);
        assert_eq!(q.len(), 1);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(5)), 5.0);
        let retry = q.take_next_where(t0, |_| true).unwrap();
        assert_eq!(retry.user, "alice@example.com");
        assert!(retry.full, "the retry compares every message");
        q.finished("alice@example.com", true);
        q.changed("alice@example.com", t0 + Duration::from_secs(6));
        assert!(
            !q.take_next_where(t0, |_| true).unwrap().full,
            "back to incremental"
        );
    }

    #[test]
    fn a_busy_user_is_synced_at_most_once_per_interval() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        let mut q = PeerQueue::new(second);
        q.changed("alice@example.com", t0);
        assert!(
            q.take_next_where(t0, |_| true).is_some(),
            "a quiet user is synced at once"
        );
        q.finished("alice@example.com", true);
        let t1 = t0 + Duration::from_millis(200);
        q.changed("alice@example.com", t1);
        q.changed("bob@example.com", t1);
        let next = q.take_next_where(t1, |_| true).unwrap();
        assert_eq!(next.user, "bob@example.com", "others are not held up");
        q.finished("bob@example.com", true);
        assert_eq!(q.take_next_where(t1, |_| true), None);
        assert_eq!(q.next_due(), Some(t0 + second));
        assert_eq!(q.lag_seconds(t0 + second), 0.8);
        let due = q.take_next_where(t0 + second, |_| true).unwrap();
        assert_eq!(due.user, "alice@example.com");
        q.finished("alice@example.com", true);
        assert!(q.is_empty());
        assert_eq!(q.next_due(), None);
    }

    #[test]
    fn a_sweep_is_full_and_a_change_keeps_it_full() {
        let t0 = Instant::now();
        let mut q = PeerQueue::default();
        q.sweep("alice@example.com");
        q.changed("alice@example.com", t0);
        let next = q.take_next_where(t0, |_| true).unwrap();
        assert!(next.full);
        assert_eq!(q.lag_seconds(t0 + Duration::from_secs(1)), 1.0);
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
