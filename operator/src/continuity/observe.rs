//! The MailDomain's `UpstreamAvailable` condition and its Events, from what the continuity
//! agents of its MTA pods answer on `/status` (pure; the controller fetches the answers).
//!
//! Every MTA pod probes the upstream on its own. The upstream counts as unavailable as soon as
//! one agent says so, because that pod is then holding mail and delivering emergency-inbox
//! copies; the condition names the pods that see the outage.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;

use super::Status;
use crate::api::conditions::{self, Desired, UPSTREAM_AVAILABLE};

/// Reasons of the `UpstreamAvailable` condition and of its Events.
pub mod reason {
    pub const ANSWERING: &str = "UpstreamAnswering";
    pub const UNAVAILABLE: &str = "UpstreamUnavailable";
    pub const RECOVERED: &str = "UpstreamAvailable";
    pub const NO_AGENT: &str = "AgentsUnreachable";
}

/// One MTA pod's answer: its agent's status, or why it could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub pod: String,
    pub status: Result<Status, String>,
}

/// The condition for the reports of every MTA pod (in any order).
pub fn condition(reports: &[Report]) -> Desired<'static> {
    let mut reports: Vec<&Report> = reports.iter().collect();
    reports.sort_by(|a, b| a.pod.cmp(&b.pod));
    let answered: Vec<(&str, &Status)> = reports
        .iter()
        .filter_map(|r| r.status.as_ref().ok().map(|s| (r.pod.as_str(), s)))
        .collect();
    let unreachable: Vec<String> = reports
        .iter()
        .filter_map(|r| r.status.as_ref().err().map(|e| format!("{}: {e}", r.pod)))
        .collect();
    if answered.is_empty() {
        let message = if unreachable.is_empty() {
            "no MTA pod is running".to_string()
        } else {
            format!("no continuity agent answered ({})", unreachable.join("; "))
        };
        return Desired::unknown(UPSTREAM_AVAILABLE, reason::NO_AGENT, message);
    }
    let down: Vec<&(&str, &Status)> = answered
        .iter()
        .filter(|(_, s)| !s.upstream_available)
        .collect();
    let mut message = match down.as_slice() {
        [] => {
            let (_, first) = answered[0];
            if first.last_reply.is_empty() {
                "the upstream answers".to_string()
            } else {
                format!("the upstream answers: {}", first.last_reply)
            }
        }
        [(_, earliest), ..] => {
            let earliest = down
                .iter()
                .map(|(_, s)| *s)
                .min_by_key(|s| s.since)
                .unwrap_or(earliest);
            let pods: Vec<&str> = down.iter().map(|(p, _)| *p).collect();
            format!(
                "since {}, seen by {}: {}",
                since(earliest.since),
                pods.join(", "),
                earliest.last_reply
            )
        }
    };
    let delivering: Vec<&str> = answered
        .iter()
        .filter(|(_, s)| s.local_delivery)
        .map(|(p, _)| *p)
        .collect();
    if !delivering.is_empty() {
        message.push_str(&format!(
            "; emergency inbox delivering on {}",
            delivering.join(", ")
        ));
    }
    if !unreachable.is_empty() {
        message.push_str(&format!("; not answering: {}", unreachable.join("; ")));
    }
    if down.is_empty() {
        Desired::new(UPSTREAM_AVAILABLE, true, reason::ANSWERING, message)
    } else {
        Desired::new(UPSTREAM_AVAILABLE, false, reason::UNAVAILABLE, message)
    }
}

fn since(unix: i64) -> String {
    Timestamp::from_second(unix).map_or_else(|_| unix.to_string(), |t| t.to_string())
}

/// The Event to record when the condition changed between two condition lists: a Warning when
/// the upstream became unavailable, a Normal one when it answers again after an outage. A
/// domain that starts out healthy, or agents that stop answering, record nothing.
pub fn event(before: &[Condition], after: &[Condition]) -> Option<conditions::Event> {
    let was = conditions::find(before, UPSTREAM_AVAILABLE).map(|c| c.status.as_str());
    let now = conditions::find(after, UPSTREAM_AVAILABLE)?;
    match (was, now.status.as_str()) {
        (Some("False"), "False") | (_, "Unknown") => None,
        (_, "False") => Some(conditions::Event {
            warning: true,
            reason: reason::UNAVAILABLE,
            note: now.message.clone(),
        }),
        (Some("False"), "True") => Some(conditions::Event {
            warning: false,
            reason: reason::RECOVERED,
            note: now.message.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(pod: &str, available: bool, local: bool, reply: &str, since: i64) -> Report {
        Report {
            pod: pod.into(),
            status: Ok(Status {
                upstream_available: available,
                local_delivery: local,
                last_reply: reply.into(),
                since,
                spooled_messages: 7,
                oldest_spooled_seconds: 40,
                held_copies: 2,
            }),
        }
    }

    fn err(pod: &str, e: &str) -> Report {
        Report {
            pod: pod.into(),
            status: Err(e.into()),
        }
    }

    fn set(d: Desired<'static>) -> Vec<Condition> {
        let mut c = Vec::new();
        conditions::set(&mut c, d, 1, Timestamp::UNIX_EPOCH);
        c
    }

    #[test]
    fn available_when_every_agent_that_answers_says_so() {
        let c = condition(&[
            ok("d-mta-1", true, false, "250 2.1.5 OK", 0),
            ok("d-mta-0", true, false, "250 2.1.5 OK", 0),
        ]);
        assert_eq!(
            c,
            Desired::new(
                UPSTREAM_AVAILABLE,
                true,
                reason::ANSWERING,
                "the upstream answers: 250 2.1.5 OK"
            )
        );
    }

    #[test]
    fn one_agent_seeing_the_outage_makes_it_unavailable_with_the_earliest_reply() {
        let c = condition(&[
            ok("d-mta-0", true, false, "250 OK", 0),
            ok(
                "d-mta-2",
                false,
                true,
                "451 4.3.2 Temporary server error",
                1_800_000_100,
            ),
            ok(
                "d-mta-1",
                false,
                true,
                "connect: Connection refused",
                1_800_000_000,
            ),
            err("d-mta-3", "connect timed out"),
        ]);
        assert!(!c.status && !c.unknown);
        assert_eq!(c.reason, reason::UNAVAILABLE);
        assert_eq!(
            c.message,
            "since 2027-01-15T08:00:00Z, seen by d-mta-1, d-mta-2: connect: Connection refused; \
             emergency inbox delivering on d-mta-1, d-mta-2; not answering: d-mta-3: connect timed out"
        );
    }

    #[test]
    fn spool_figures_stay_out_of_the_condition_so_a_resync_writes_nothing() {
        let mut a = ok("d-mta-0", false, true, "451 4.3.2 busy", 5);
        let b = condition(std::slice::from_ref(&a));
        if let Ok(s) = &mut a.status {
            s.spooled_messages = 900;
            s.oldest_spooled_seconds = 3_000;
            s.held_copies = 0;
        }
        assert_eq!(condition(&[a]), b);
    }

    #[test]
    fn unknown_when_no_agent_answers() {
        let none = condition(&[]);
        assert!(none.unknown);
        assert_eq!(none.reason, reason::NO_AGENT);
        assert_eq!(none.message, "no MTA pod is running");
        let refused = condition(&[err("d-mta-0", "connection refused")]);
        assert!(refused.unknown);
        assert_eq!(
            refused.message,
            "no continuity agent answered (d-mta-0: connection refused)"
        );
        assert_eq!(set(refused)[0].status, "Unknown");
    }

    #[test]
    fn manual_activation_is_said_while_the_upstream_answers() {
        let c = condition(&[ok("d-mta-0", true, true, "", 0)]);
        assert!(c.status);
        assert_eq!(
            c.message,
            "the upstream answers; emergency inbox delivering on d-mta-0"
        );
    }

    #[test]
    fn events_on_an_outage_and_on_its_end_only() {
        let up = set(condition(&[ok("m-0", true, false, "250 OK", 0)]));
        let down = set(condition(&[ok("m-0", false, true, "451 4.3.2 busy", 9)]));
        let gone = set(condition(&[err("m-0", "refused")]));
        let warn = event(&up, &down).expect("outage event");
        assert!(warn.warning);
        assert_eq!(warn.reason, reason::UNAVAILABLE);
        assert!(warn.note.contains("451 4.3.2 busy"), "{}", warn.note);
        assert_eq!(
            event(&[], &down).map(|e| e.reason),
            Some(reason::UNAVAILABLE)
        );
        let back = event(&down, &up).expect("recovery event");
        assert!(!back.warning);
        assert_eq!(back.reason, reason::RECOVERED);
        assert_eq!(event(&down, &down), None, "a resync during the outage");
        assert_eq!(event(&[], &up), None, "a healthy start");
        assert_eq!(event(&up, &up), None);
        assert_eq!(event(&up, &gone), None);
        assert_eq!(event(&gone, &up), None);
        assert_eq!(event(&up, &[]), None);
    }
}
