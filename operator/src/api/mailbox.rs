//! `Mailbox`: one user of a MailDomain.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::maildomain::{default_secret_key, LocalObjectRef};

/// RFC 5321 dot-atom local part: atoms of atext separated by single dots.
pub const LOCAL_PART_PATTERN: &str =
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*$";

/// A mailbox of a MailDomain: an address that receives mail and a login for IMAP and submission.
///
/// The password is read from the referenced Secret; the operator stores only a strong hash of
/// it (SHA512-CRYPT) in the domain's users database, never the password itself.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "postwarden.dev",
    version = "v1alpha1",
    kind = "Mailbox",
    namespaced,
    status = "MailboxStatus",
    shortname = "mbx",
    category = "mail",
    doc = "A mailbox of a MailDomain: an address that receives mail and a login for IMAP and submission.",
    printcolumn = r#"{"name":"Address","type":"string","jsonPath":".status.address"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Suspended","type":"boolean","jsonPath":".spec.suspended","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MailboxSpec {
    /// The MailDomain (in the same namespace) this mailbox belongs to. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.domainRef is immutable"))]
    pub domain_ref: LocalObjectRef,

    /// The part before the `@`: an RFC 5321 dot-atom of at most 64 characters. Matched
    /// case-insensitively; stored lowercase. Immutable.
    #[schemars(length(min = 1, max = 64), regex(pattern = LOCAL_PART_PATTERN))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.localPart is immutable"))]
    pub local_part: String,

    /// The Secret key holding the password (key `password` by default). Either the plain
    /// password, which the operator hashes, or a ready `{SHA512-CRYPT}` / `{ARGON2ID}` hash.
    pub password_secret_ref: PasswordSecretRef,

    /// Further local parts at the domain (and its alias domains) delivered to this mailbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = Rule::new("self.all(a, size(a) <= 64 && a.matches('^[A-Za-z0-9!#$%&\\'*+/=?^_`{|}~-]+(\\\\.[A-Za-z0-9!#$%&\\'*+/=?^_`{|}~-]+)*$'))").message("every alias must be a dot-atom local part of at most 64 characters"))]
    pub aliases: Vec<String>,

    /// Addresses that receive a copy of every message for this mailbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 3, max = 254)))]
    #[x_kube(validation = Rule::new("self.all(a, size(a) <= 254 && a.matches('^[^@ ]+@[^@ ]+\\\\.[^@ ]+$'))").message("every forwardTo entry must be an email address"))]
    pub forward_to: Vec<String>,

    /// Keep a copy in this mailbox when forwarding.
    #[serde(default = "default_true")]
    pub keep_copy: bool,

    /// Storage quota, e.g. `2Gi`. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<Quantity>,

    /// Refuse logins (IMAP and submission) while set. Mail is still accepted and kept.
    #[serde(default)]
    pub suspended: bool,
}

fn default_true() -> bool {
    true
}

/// Reference to the password in a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecretRef {
    /// Name of the Secret, in the Mailbox's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Observed state of a Mailbox.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MailboxStatus {
    /// The full address, `localPart@domain`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The generation the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, with a reason when not: DomainNotFound, PasswordSecretMissing, AddressConflict, ...
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl MailboxSpec {
    /// The lowercase local part as stored in the users database.
    pub fn normalized_local_part(&self) -> String {
        self.local_part.to_ascii_lowercase()
    }
}
