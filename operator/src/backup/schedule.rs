//! What a cron schedule means for backup health: how far apart its runs can be.

use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, Zoned};

/// Consecutive runs inspected to find the longest gap: enough to span the weekly and monthly
/// irregularities of common schedules (`0 2 * * 1-5`, `0 3 1,15 * *`) without walking a year of
/// minutes for `* * * * *`.
const SAMPLED_RUNS: usize = 400;

/// A backup schedule as the CronJob controller reads it: five fields (or `@daily` and its
/// siblings), day-of-month and day-of-week combined with OR as in Vixie cron, evaluated in UTC.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: Cron,
}

impl Schedule {
    /// Parses `expr`; the error says why it is not a schedule the CronJob controller accepts.
    pub fn parse(expr: &str) -> Result<Self, String> {
        let parser = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build();
        parser
            .parse(expr)
            .map(|cron| Self { cron })
            .map_err(|e| format!("{expr:?} is not a cron schedule: {e}"))
    }

    /// The first run strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_next_occurrence(&utc(t), false)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The last run at or before `t`.
    pub fn last_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        self.cron
            .find_previous_occurrence(&utc(t), true)
            .ok()
            .map(|z| z.timestamp())
    }

    /// The longest gap between two consecutive runs following `from`: the interval a healthy
    /// schedule is judged by (a weekday schedule's is the weekend's 72 hours, not 24).
    pub fn longest_interval(&self, from: Timestamp) -> Option<SignedDuration> {
        let mut longest: Option<SignedDuration> = None;
        let mut previous = self.next_after(from)?;
        for _ in 0..SAMPLED_RUNS {
            let Some(next) = self.next_after(previous) else {
                break;
            };
            let gap = next.duration_since(previous);
            longest = Some(longest.map_or(gap, |l| l.max(gap)));
            previous = next;
        }
        longest
    }
}

fn utc(t: Timestamp) -> Zoned {
    t.to_zoned(TimeZone::UTC)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }
    fn hours(h: i64) -> SignedDuration {
        SignedDuration::from_hours(h)
    }

    #[test]
    fn daily_schedule_runs_every_24_hours() {
        let s = Schedule::parse("30 2 * * *").unwrap();
        let from = ts("2026-03-10T12:00:00Z");
        assert_eq!(s.next_after(from), Some(ts("2026-03-11T02:30:00Z")));
        assert_eq!(s.last_at_or_before(from), Some(ts("2026-03-10T02:30:00Z")));
        assert_eq!(s.longest_interval(from), Some(hours(24)));
    }

    #[test]
    fn weekday_schedule_is_judged_by_its_weekend_gap() {
        let s = Schedule::parse("0 2 * * 1-5").unwrap();
        assert_eq!(
            s.longest_interval(ts("2026-03-10T00:00:00Z")),
            Some(hours(72))
        );
    }

    #[test]
    fn nicknames_and_names_are_understood() {
        let from = ts("2026-03-10T00:00:00Z");
        assert_eq!(
            Schedule::parse("@daily").unwrap().longest_interval(from),
            Some(hours(24))
        );
        assert_eq!(
            Schedule::parse("@weekly").unwrap().longest_interval(from),
            Some(hours(24 * 7))
        );
        assert_eq!(
            Schedule::parse("0 */6 * * *")
                .unwrap()
                .longest_interval(from),
            Some(hours(6))
        );
        assert_eq!(
            Schedule::parse("15 1 * * sun").unwrap().next_after(from),
            Some(ts("2026-03-15T01:15:00Z"))
        );
    }

    #[test]
    fn day_of_month_and_day_of_week_combine_with_or() {
        // Vixie cron (and the CronJob controller): the 1st of the month OR any Monday.
        let s = Schedule::parse("0 0 1 * 1").unwrap();
        // 2026-03-01 is a Sunday: it runs as the 1st, and again on Monday the 2nd.
        assert_eq!(
            s.next_after(ts("2026-02-28T12:00:00Z")),
            Some(ts("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            s.next_after(ts("2026-03-01T12:00:00Z")),
            Some(ts("2026-03-02T00:00:00Z"))
        );
    }

    #[test]
    fn six_field_and_garbage_schedules_are_rejected() {
        assert!(Schedule::parse("0 30 2 * * *").is_err());
        assert!(Schedule::parse("every day").is_err());
        assert!(Schedule::parse("").is_err());
    }
}
