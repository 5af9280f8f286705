//! The result line the backup and restore scripts print last, and write to the container's
//! termination message, so the operator can read the outcome from the Pod of a finished Job.

use serde::{Deserialize, Serialize};

/// Outcome of one backup or restore run.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "Succeeded",
            Outcome::Failed => "Failed",
        }
    }
}

/// The JSON result line of a run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RunResult {
    pub result: Outcome,
    /// Mailboxes copied (backup) or restored (restore).
    #[serde(default)]
    pub mailboxes: i64,
    /// Mailboxes that could not be copied or restored.
    #[serde(default)]
    pub failed_mailboxes: i64,
    /// Bytes added to the repository by the snapshot (backup).
    #[serde(default)]
    pub bytes: i64,
    /// Size of the mail the snapshot holds (backup).
    #[serde(default)]
    pub total_bytes: i64,
    /// Messages put back into the live mailboxes (restore).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<i64>,
    /// Snapshot written (backup) or read (restore); empty when none.
    #[serde(default)]
    pub snapshot: String,
    /// Why the run failed; empty on success. Never holds secrets.
    #[serde(default)]
    pub message: String,
}

impl RunResult {
    /// The last line of `text` that is a result line (a termination message, or a whole log).
    pub fn parse_last(text: &str) -> Option<Self> {
        text.lines()
            .rev()
            .map(str::trim)
            .filter(|l| l.starts_with('{'))
            .find_map(|l| serde_json::from_str(l).ok())
    }

    pub fn succeeded(&self) -> bool {
        self.result == Outcome::Succeeded
    }

    /// The snapshot id, when there is one.
    pub fn snapshot_id(&self) -> Option<&str> {
        Some(self.snapshot.as_str()).filter(|s| !s.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_result_line_wins_over_log_lines() {
        let text = "2026-03-10T02:30:00Z copied 2 mailbox(es), 0 failed\n\
            {\"result\":\"Failed\",\"mailboxes\":0}\n\
            {\"result\":\"Succeeded\",\"mailboxes\":2,\"failedMailboxes\":0,\"bytes\":16300,\"totalBytes\":5842,\"snapshot\":\"057ad2fd\",\"message\":\"\"}\n";
        let r = RunResult::parse_last(text).unwrap();
        assert!(r.succeeded());
        assert_eq!(r.mailboxes, 2);
        assert_eq!(r.bytes, 16300);
        assert_eq!(r.snapshot_id(), Some("057ad2fd"));
        assert_eq!(r.messages, None);
    }

    #[test]
    fn failure_line_keeps_its_message_and_missing_fields_default() {
        let r = RunResult::parse_last(
            "{\"result\":\"Failed\",\"snapshot\":\"\",\"message\":\"restic repository unavailable: wrong password or no key found\"}",
        )
        .unwrap();
        assert_eq!(r.result, Outcome::Failed);
        assert_eq!(r.snapshot_id(), None);
        assert_eq!(r.bytes, 0);
        assert!(r.message.contains("wrong password"));
    }

    #[test]
    fn text_without_a_result_line_has_none() {
        assert_eq!(RunResult::parse_last(""), None);
        assert_eq!(RunResult::parse_last("Error: something\n{not json"), None);
        assert_eq!(RunResult::parse_last("{\"result\":\"Maybe\"}"), None);
    }
}
