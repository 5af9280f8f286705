//! Everything that keeps the Dovecot replicas of a domain in sync, in one place.
//!
//! Dovecot 2.4 has no replicator, so each instance has a replication agent beside it
//! (`postwarden replicate`, started by the IMAP entrypoint; [`crate::replicate`]). Dovecot tells
//! the agent which users changed: an event exporter sends every LMTP delivery and every IMAP
//! command that may change a mailbox to the agent's socket. The agent runs a two-way
//! `doveadm sync` of that user with every other instance's doveadm server over TLS
//! (`tcps:<peer>:<doveadm port>`), and a full sweep of all users at start and periodically, so
//! changes made while a peer was unreachable or the agent was down are caught up. Deliveries never
//! wait for a peer.
//!
//! Topology: each-to-each, one hop. Each pair of instances is synced by one side only, the lower
//! ordinal, because two dsyncs of one user running against each other from both ends both
//! report success and may lose or double a change (measured with Dovecot 2.4.1). The other side
//! tells the syncing side's agent which users changed (`POST /changed/<its name>`), and each agent
//! runs one sync per user at a time. A replica that is down or cut off delays nobody else.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::api::maildomain::MailDomain;

use super::{ImapInstance, Layout};

/// How often every user is synced with every peer even without a change event.
pub const SWEEP_INTERVAL_SECONDS: u64 = 900;

/// IMAP commands that never change a mailbox: no sync after them. Anything else (STORE, APPEND,
/// COPY, MOVE, EXPUNGE, CREATE, DELETE, RENAME, a FETCH that sets \Seen, ...) marks the user.
/// SELECT only resets \Recent, which dsync does not carry.
const READ_ONLY_IMAP_COMMANDS: &[&str] = &[
    "SELECT",
    "CAPABILITY",
    "NOOP",
    "IDLE",
    "LOGOUT",
    "ID",
    "ENABLE",
    "NAMESPACE",
    "LIST",
    "LSUB",
    "STATUS",
    "EXAMINE",
    "SEARCH",
    "UID SEARCH",
    "GETQUOTA",
    "GETQUOTAROOT",
    "GETMETADATA",
    "CHECK",
];

/// A FETCH changes nothing unless it reads a body without PEEK (which sets \Seen): the
/// arguments name no `BODY[`, `BINARY[` or `RFC822` item. Clients fetch far more often than
/// they change anything; a sync per poll would cost a dsync run each.
const READ_ONLY_FETCH: &str = r#"((cmd_name="FETCH" OR cmd_name="UID FETCH") AND NOT (cmd_args="*BODY[*" OR cmd_args="*BINARY[*" OR cmd_args="*RFC822*"))"#;

/// True when the domain has more than one Dovecot instance to replicate.
pub fn enabled(layout: &Layout) -> bool {
    layout.imap_replicas() > 1
}

/// The agent configuration file of the instance with this ordinal.
pub fn agent_file_name(ordinal: usize) -> String {
    format!("replication-{ordinal}.json")
}

/// What one instance's agent reads (`postwarden replicate --config FILE`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentConfig {
    /// This instance's name among its peers (`imap-<ordinal>`).
    pub name: String,
    /// The instance's Dovecot configuration, for `doveadm -c`.
    pub dovecot_config: PathBuf,
    /// The unix socket Dovecot's event exporter connects to.
    pub events_socket: PathBuf,
    /// The passwd-file shards, read for the full sweep.
    pub users_dir: PathBuf,
    /// Every other instance: a name for metrics and logs, and its doveadm endpoint.
    pub peers: Vec<Peer>,
    /// `address:port` of the metrics listener.
    pub metrics_listen: String,
    pub sweep_interval_seconds: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Peer {
    pub name: String,
    /// The peer's doveadm server, `tcps:HOST:PORT`.
    pub endpoint: String,
    /// The peer's agent, `HOST:PORT`.
    pub agent: String,
    /// True when this instance runs the syncs of the pair; otherwise it reports its changed
    /// users to the peer's agent.
    pub syncs: bool,
}

/// The agent configuration of every instance (empty with a single instance).
pub fn render(_md: &MailDomain, layout: &Layout) -> BTreeMap<String, String> {
    if !enabled(layout) {
        return BTreeMap::new();
    }
    (0..layout.imap_replicas())
        .map(|ordinal| {
            let inst = layout.imap_instance(ordinal);
            let config = agent_config(layout, &inst);
            let mut json = serde_json::to_string_pretty(&config).expect("serializable");
            json.push('\n');
            (agent_file_name(ordinal), json)
        })
        .collect()
}

/// The agent configuration of one instance.
pub fn agent_config(layout: &Layout, inst: &ImapInstance) -> AgentConfig {
    AgentConfig {
        name: instance_name(inst.ordinal),
        dovecot_config: layout
            .config_dir()
            .join(super::dovecot::instance_file_name(inst.ordinal)),
        events_socket: events_socket(inst),
        users_dir: layout.users_dir(),
        peers: inst
            .peers
            .iter()
            .map(|(ordinal, host, port)| Peer {
                name: instance_name(*ordinal),
                endpoint: super::dovecot::doveadm_endpoint(host, *port),
                agent: format!(
                    "{host}:{}",
                    layout.imap_instance(*ordinal).ports.replication_metrics
                ),
                syncs: inst.ordinal < *ordinal,
            })
            .collect(),
        metrics_listen: layout.agent_listen(inst.ports.replication_metrics),
        sweep_interval_seconds: SWEEP_INTERVAL_SECONDS,
    }
}

fn instance_name(ordinal: usize) -> String {
    format!("imap-{ordinal}")
}

fn events_socket(inst: &ImapInstance) -> PathBuf {
    inst.run_dir.join("replication-events")
}

/// Settings of one instance: the event exporter that reports changed users to its agent.
pub fn dovecot_instance(_layout: &Layout, inst: &ImapInstance) -> String {
    if inst.peers.is_empty() {
        return String::new();
    }
    let read_only: Vec<String> = READ_ONLY_IMAP_COMMANDS
        .iter()
        .map(|c| format!("cmd_name=\"{c}\""))
        .chain([READ_ONLY_FETCH.to_string()])
        .collect();
    format!(
        r#"
# --- Replication: changed users go to the agent (postwarden config::replication)
event_exporter replication {{
  driver = unix
  unix_path = {socket}
  format = json
}}
metric replication_changes {{
  exporter = replication
  filter = event=mail_delivery_finished OR (event=imap_command_finished AND NOT ({read_only}))
}}
"#,
        socket = events_socket(inst).display(),
        read_only = read_only.join(" OR "),
    )
}

/// Entrypoint lines run once Dovecot has started (`$ORDINAL` is the instance, `$CONFIG` the
/// configuration directory): the agent runs beside Dovecot and is restarted when it exits; the
/// TERM trap stops it with Dovecot (`stop_replication`).
pub fn entrypoint_started(_md: &MailDomain, layout: &Layout) -> String {
    if !enabled(layout) {
        return "stop_replication() { :; }\nkeep_replicating() { :; }\n".to_string();
    }
    r#"# Replication: the agent syncs changed users with every peer (postwarden replicate).
AGENT=${POSTWARDEN_AGENT:-postwarden}
AGENT_PID=
keep_replicating() {
  if [ -z "$AGENT_PID" ] || ! kill -0 "$AGENT_PID" 2>/dev/null; then
    [ -n "$AGENT_PID" ] && log "replication agent exited: restarting it"
    "$AGENT" replicate --config "$CONFIG/replication-$ORDINAL.json" &
    AGENT_PID=$!
  fi
}
stop_replication() {
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null || true
}
keep_replicating
"#
    .to_string()
}
