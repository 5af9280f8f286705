//! What Postfix's queue says (`postqueue -j`, one JSON object per message): how much waits for
//! the upstream, whether the upstream's answers show an outage the probe cannot see (a 451 after
//! DATA), and which held copies are no longer needed.

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Message {
    pub queue_name: String,
    pub queue_id: String,
    pub arrival_time: i64,
    #[serde(default)]
    pub recipients: Vec<Recipient>,
}

/// A recipient not delivered yet.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct Recipient {
    pub address: String,
    #[serde(default)]
    pub delay_reason: Option<String>,
}

/// Parses `postqueue -j` output; lines that are not a message are skipped.
pub fn parse(output: &str) -> Vec<Message> {
    output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages with a recipient still to be relayed to the upstream.
    pub spooled: usize,
    /// Arrival time of the oldest of them.
    pub oldest_spooled: Option<i64>,
    /// Spooled messages that were tried and deferred, and arrived more than the detection
    /// window ago: the upstream's own answers saying it is not taking mail.
    pub stale_deferrals: usize,
    /// The delay reason of the newest deferred message (the upstream's last reply).
    pub last_reason: Option<String>,
    /// Held emergency-inbox copies (any queue).
    pub copies: usize,
    /// Deferred messages whose only recipients left are copies: their upstream delivery is
    /// done (or bounced), so the held copy can go.
    pub finished: Vec<String>,
}

/// Sums up the queue at `now` (Unix seconds); `marker` is `+<copy extension>@`.
pub fn summarize(messages: &[Message], marker: &str, now: i64, window_seconds: i64) -> Summary {
    let mut s = Summary::default();
    let mut newest_deferred: Option<(i64, &str)> = None;
    for m in messages {
        let (copies, upstream): (Vec<&Recipient>, Vec<&Recipient>) = m
            .recipients
            .iter()
            .partition(|r| r.address.to_ascii_lowercase().contains(marker));
        s.copies += copies.len();
        if upstream.is_empty() {
            if !copies.is_empty() && m.queue_name == "deferred" {
                s.finished.push(m.queue_id.clone());
            }
            continue;
        }
        s.spooled += 1;
        s.oldest_spooled = Some(
            s.oldest_spooled
                .map_or(m.arrival_time, |o| o.min(m.arrival_time)),
        );
        if let Some(reason) = upstream.iter().find_map(|r| r.delay_reason.as_deref()) {
            if now - m.arrival_time > window_seconds {
                s.stale_deferrals += 1;
            }
            if newest_deferred.is_none_or(|(t, _)| m.arrival_time >= t) {
                newest_deferred = Some((m.arrival_time, reason));
            }
        }
    }
    s.last_reason = newest_deferred.map(|(_, r)| r.to_string());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARK: &str = "+postwarden-continuity@";

    fn queue() -> Vec<Message> {
        parse(concat!(
            r#"{"queue_name":"deferred","queue_id":"A1","arrival_time":1000,"message_size":10,"sender":"x@y.z","recipients":[{"address":"bob@example.com","delay_reason":"host up said: 451 4.3.2 Temporary server error (in reply to end of DATA command)"},{"address":"bob+postwarden-continuity@example.com","delay_reason":"local delivery is off"}]}"#,
            "\n",
            r#"{"queue_name":"deferred","queue_id":"B2","arrival_time":1090,"recipients":[{"address":"bob+postwarden-continuity@example.com","delay_reason":"local delivery is off"}]}"#,
            "\n",
            r#"{"queue_name":"active","queue_id":"C3","arrival_time":1095,"recipients":[{"address":"Alice+Postwarden-Continuity@example.com"}]}"#,
            "\n",
            r#"{"queue_name":"incoming","queue_id":"D4","arrival_time":1099,"recipients":[{"address":"carol@example.com"}]}"#,
            "\n",
            "not json\n",
        ))
    }

    #[test]
    fn counts_the_spool_its_stale_deferrals_and_the_finished_copies() {
        let s = summarize(&queue(), MARK, 1100, 30);
        assert_eq!(s.spooled, 2);
        assert_eq!(s.oldest_spooled, Some(1000));
        assert_eq!(s.stale_deferrals, 1);
        assert_eq!(
            s.last_reason.as_deref(),
            Some(
                "host up said: 451 4.3.2 Temporary server error (in reply to end of DATA command)"
            )
        );
        assert_eq!(s.copies, 3);
        // C3 is in the active queue (being delivered right now): not touched.
        assert_eq!(s.finished, vec!["B2".to_string()]);
    }

    #[test]
    fn a_fresh_deferral_is_not_yet_evidence() {
        let s = summarize(&queue(), MARK, 1020, 30);
        assert_eq!(s.stale_deferrals, 0);
        assert_eq!(summarize(&[], MARK, 0, 30), Summary::default());
    }
}
