//! `MailDomain.spec.continuity`: Postwarden as the secondary MX of a domain whose mailboxes live
//! at a hosted provider (Microsoft 365, Google Workspace, ...).
//!
//! Normal times: mail for known recipients is accepted and relayed to the provider at once.
//! While the provider is unavailable (detected from its answers, or switched by hand) every
//! accepted message is also delivered into the recipient's local mailbox, the emergency inbox,
//! and the spool drains to the provider when it answers again.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Continuity for a hosted provider.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContinuitySpec {
    /// The provider's inbound mail servers.
    pub upstream: UpstreamSpec,

    /// Which recipients are accepted. Others are refused at RCPT (550), so nothing is ever
    /// bounced to a forged sender.
    #[serde(default)]
    pub recipients: RecipientsSpec,

    /// How long a message waits for the provider before it is returned to its sender, as a
    /// duration: at least 1h, at most 720h (30 days). Answers of 4xx and an unreachable provider
    /// never bounce before then; a 5xx answer bounces at once, as the provider would.
    #[serde(default = "default_spool_retention")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('1h') && duration(self) <= duration('720h')").message("continuity.spoolRetention must be a duration between 1h and 720h (30 days)"))]
    pub spool_retention: String,

    /// The local copies delivered while the provider is unavailable.
    #[serde(default)]
    pub emergency_inbox: EmergencyInboxSpec,

    /// `Automatic`: local delivery starts when the provider is found unavailable and stops when
    /// it answers again. `Manual`: only `active` starts it (the provider's state is still
    /// reported).
    #[serde(default)]
    pub activation: Activation,

    /// Deliver locally now, whatever the provider answers.
    #[serde(default)]
    pub active: bool,

    /// How the provider's availability is probed.
    #[serde(default)]
    pub detection: DetectionSpec,
}

fn default_spool_retention() -> String {
    "168h".into()
}

/// The provider's inbound servers, e.g. `contoso-com.mail.protection.outlook.com`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Host names (or IP addresses) tried in order; relayed mail goes to the first that answers.
    #[schemars(length(min = 1, max = 4), inner(length(min = 1, max = 253)))]
    #[x_kube(validation = Rule::new("self.all(h, h.matches('^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\\\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'))").message("every upstream host must be a lowercase host name or an IPv4 address"))]
    pub hosts: Vec<String>,

    /// SMTP port of the upstream.
    #[serde(default = "default_upstream_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,

    /// `Verify` (default): TLS required and the certificate verified against the public trust
    /// store for the host name. `Encrypt`: TLS required, certificate not verified.
    #[serde(default)]
    pub tls: UpstreamTls,
}

fn default_upstream_port() -> u16 {
    25
}

/// TLS towards the upstream.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum UpstreamTls {
    #[default]
    Verify,
    Encrypt,
}

/// Accepted recipients.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RecipientsSpec {
    /// A ConfigMap (same namespace) whose key holds further addresses, one per line, for people
    /// who have no Mailbox here: their mail is relayed but has no emergency inbox. The domain's
    /// Mailboxes (addresses and aliases) are always accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyRef>,
}

/// One key of a ConfigMap.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapKeyRef {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key holding the addresses (default `recipients`).
    #[serde(default = "default_recipients_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_recipients_key() -> String {
    "recipients".into()
}

/// The emergency inbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmergencyInboxSpec {
    /// How long a message delivered locally stays readable, as a duration (24h to 8760h).
    #[serde(default = "default_inbox_retention")]
    #[x_kube(validation = Rule::new("duration(self) >= duration('24h') && duration(self) <= duration('8760h')").message("continuity.emergencyInbox.retention must be a duration between 24h and 8760h"))]
    pub retention: String,
}

fn default_inbox_retention() -> String {
    "720h".into()
}

impl Default for EmergencyInboxSpec {
    fn default() -> Self {
        Self {
            retention: default_inbox_retention(),
        }
    }
}

/// Who starts local delivery.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    Automatic,
    Manual,
}

/// Availability probing: an SMTP session to the upstream (EHLO, STARTTLS, MAIL, RCPT of a known
/// recipient, RSET, QUIT; no message is sent) every `intervalSeconds`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DetectionSpec {
    /// Seconds between probes.
    #[serde(default = "default_probe_interval")]
    #[schemars(range(min = 2, max = 300))]
    pub interval_seconds: u32,
    /// Consecutive failed probes (a 4xx answer, a refused connection, a timeout) that make the
    /// upstream unavailable; one good probe makes it available again.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 20))]
    pub failure_threshold: u32,
}

fn default_probe_interval() -> u32 {
    5
}

fn default_failure_threshold() -> u32 {
    3
}

impl Default for DetectionSpec {
    fn default() -> Self {
        Self {
            interval_seconds: default_probe_interval(),
            failure_threshold: default_failure_threshold(),
        }
    }
}

impl ContinuitySpec {
    /// The `[host]:port` next hops Postfix relays to, in order.
    pub fn next_hops(&self) -> Vec<String> {
        self.upstream
            .hosts
            .iter()
            .map(|h| format!("[{}]:{}", h.to_ascii_lowercase(), self.upstream.port))
            .collect()
    }
}
