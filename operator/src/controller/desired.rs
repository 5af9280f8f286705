//! The boundary between a reconcile, which reads and writes the cluster, and the pure layers
//! that compute a domain's children: what the reconcile resolved from the cluster goes in,
//! the desired children and the facts the status reports come out.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;

use super::kinds::Child;
use super::status::MailboxState;
use crate::api::maildomain::{DkimStatus, DnsRecord};
use crate::api::{MailDomain, Mailbox};
use crate::pki::health::Served;

/// Secret bytes read from a Secret. Never printed: `Debug` shows only the length.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(pub Vec<u8>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

/// A Mailbox whose spec is valid, with its password.
#[derive(Clone, Debug)]
pub struct MailboxInput {
    pub mailbox: Mailbox,
    /// The value under `spec.passwordSecretRef.key` (a password or a ready hash), or why
    /// there is none (the Secret or the key is missing).
    pub password: Result<SecretBytes, String>,
}

/// Everything the desired state of one MailDomain is computed from.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub domain: MailDomain,
    /// The domain's Mailboxes with a valid spec, sorted by name.
    pub mailboxes: Vec<MailboxInput>,
    /// The existing Secrets holding state the operator generated earlier (CA, serving
    /// certificate, DKIM keys, internal secrets) or that the spec names (`tls.secretName`),
    /// by name. Absent when not created yet.
    pub secrets: BTreeMap<String, Secret>,
    /// `spec.continuity.recipients.configMapRef`'s text, or why it could not be read.
    pub continuity_recipients: Option<Result<String, String>>,
    pub now: Timestamp,
}

/// The desired state of one MailDomain.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// Every child object; the applier orders them by kind.
    pub children: Vec<Child>,
    /// Mailboxes left out of the users database, by Mailbox name, with the reason
    /// (e.g. [`MailboxState::AddressConflict`]). Every other input Mailbox is in it.
    pub excluded: BTreeMap<String, MailboxState>,
    /// Mailboxes in the users database.
    pub mailboxes: i32,
    /// The serving certificate and its health.
    pub certificate: Option<Served>,
    pub dkim: Option<DkimStatus>,
    pub dns_records: Vec<DnsRecord>,
    /// When the desired state changes by itself (certificate renewal, DKIM rotation steps).
    pub scheduled: Vec<Timestamp>,
    /// State generated or rotated by this computation, in words (for an Event once applied).
    pub changes: Vec<String>,
}

/// Computes the desired state; pure, no I/O.
pub trait Planner: Send + Sync + 'static {
    fn desired(&self, inputs: &Resolved) -> Result<Desired, String>;
}
