//! What `local up` leaves in DIR once every daemon listens, for people and tests to read.

use std::collections::BTreeMap;

use serde::Serialize;

/// DIR/ready: written last, removed on shutdown.
pub const READY: &str = "ready";
/// DIR/ca.crt: the CA a client must trust.
pub const CA_CRT: &str = "ca.crt";
/// DIR/dns.txt: the records to publish, in zone-file syntax.
pub const DNS_TXT: &str = "dns.txt";

/// Content of DIR/ready (JSON).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    /// Seconds from the start of `local up` until every daemon listened.
    pub ready_seconds: f64,
    /// Seconds from starting each daemon until it listened.
    pub daemon_ready_seconds: BTreeMap<String, f64>,
    /// Pid of each daemon's main process (the Postfix master, the Dovecot masters, Rspamd's
    /// main process); a restarted daemon gets a new one.
    pub daemons: BTreeMap<String, u32>,
    /// Every listening port by service name.
    pub ports: BTreeMap<String, u16>,
}

pub use crate::agent::write_atomic;
