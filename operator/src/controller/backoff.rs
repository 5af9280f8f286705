//! Per-object exponential backoff after failed reconciles, and pacing of reconciles of one
//! object that is changing all the time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Delay after the first failure.
pub const BASE: Duration = Duration::from_secs(5);
/// Longest delay between retries.
pub const MAX: Duration = Duration::from_secs(300);

/// The retry delay after `failures` consecutive failures (1 = the first): 5s, 10s, 20s, ...
/// up to five minutes.
pub fn delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    BASE.saturating_mul(1u32 << exponent).min(MAX)
}

/// Consecutive failures per object, reset by a successful reconcile.
#[derive(Default)]
pub struct Failures(Mutex<HashMap<String, u32>>);

impl Failures {
    /// Counts a failure of `key` and returns the delay before its retry.
    pub fn record(&self, key: &str) -> Duration {
        let mut map = self.0.lock().expect("failure map lock");
        let n = map.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        delay(*n)
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &str) {
        self.0.lock().expect("failure map lock").remove(key);
    }

    pub fn count(&self, key: &str) -> u32 {
        self.0
            .lock()
            .expect("failure map lock")
            .get(key)
            .copied()
            .unwrap_or(0)
    }
}

/// How long to wait before starting a reconcile so that starts of the same object are at
/// least `min` apart.
pub fn pause(last_start: Option<Instant>, now: Instant, min: Duration) -> Duration {
    match last_start {
        Some(last) => (last + min).saturating_duration_since(now),
        None => Duration::ZERO,
    }
}

/// Spaces out the reconciles of each object.
///
/// While one reconcile of an object runs or waits here, the controller folds every further
/// trigger of that object into one pending request. So a MailDomain whose Mailboxes are being
/// created by the thousand is reconciled about once per interval with everything that arrived
/// meanwhile, instead of once per Mailbox; and unlike a debounce it is never postponed
/// indefinitely by a steady stream of changes.
#[derive(Default)]
pub struct Pacer(Mutex<HashMap<String, Instant>>);

impl Pacer {
    /// Waits as needed and records the start of a reconcile of `key`.
    pub async fn start(&self, key: &str, min: Duration) {
        let wait = {
            let map = self.0.lock().expect("pacer lock");
            pause(map.get(key).copied(), Instant::now(), min)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        self.0
            .lock()
            .expect("pacer lock")
            .insert(key.to_string(), Instant::now());
    }

    pub fn forget(&self, key: &str) {
        self.0.lock().expect("pacer lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_of_one_object_start_at_least_the_interval_apart() {
        let min = Duration::from_secs(1);
        let t0 = Instant::now();
        assert_eq!(pause(None, t0, min), Duration::ZERO);
        assert_eq!(
            pause(Some(t0), t0 + Duration::from_millis(300), min),
            Duration::from_millis(700)
        );
        assert_eq!(
            pause(Some(t0), t0 + Duration::from_secs(5), min),
            Duration::ZERO
        );
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        assert_eq!(delay(1), Duration::from_secs(5));
        assert_eq!(delay(2), Duration::from_secs(10));
        assert_eq!(delay(3), Duration::from_secs(20));
        assert_eq!(delay(7), Duration::from_secs(300));
        assert_eq!(delay(u32::MAX), MAX);
    }

    #[test]
    fn failures_are_counted_per_object_and_reset_on_success() {
        let f = Failures::default();
        assert_eq!(f.record("ns/a"), Duration::from_secs(5));
        assert_eq!(f.record("ns/a"), Duration::from_secs(10));
        assert_eq!(
            f.record("ns/b"),
            Duration::from_secs(5),
            "independent objects"
        );
        f.reset("ns/a");
        assert_eq!(f.count("ns/a"), 0);
        assert_eq!(f.record("ns/a"), Duration::from_secs(5));
        assert_eq!(f.count("ns/b"), 1);
    }
}
