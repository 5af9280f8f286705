//! Pure builders of the Kubernetes objects of one MailDomain: spec (and generated state) in,
//! typed objects out. No I/O, no clock, no randomness: the same input always gives the same
//! objects, which is what lets a resync that changes nothing write nothing.
//!
//! One file per object kind. [`crate::plan`] calls them all and orders the result.

pub mod backup;
pub mod certificate;
pub mod config_map;
pub mod images;
pub mod imap;
pub mod mta;
pub mod network_policy;
pub mod pdb;
pub mod pod;
pub mod secret;
pub mod service;
pub mod service_account;
pub mod stateful_set;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::api::{MailDomain, MailDomainSpec};
use crate::config::Layout;
use crate::names::{self, Component, DomainNames};

/// The MailDomain a builder works for: its name, namespace, spec and child names.
#[derive(Clone, Debug)]
pub struct Domain<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub spec: &'a MailDomainSpec,
    pub names: DomainNames,
}

impl<'a> Domain<'a> {
    /// The MailDomain `md` as it lives in `namespace` (the object's own namespace, when set,
    /// is what the controller passes).
    pub fn new(md: &'a MailDomain, namespace: &'a str) -> Self {
        let name = md.metadata.name.as_deref().unwrap_or_default();
        Self {
            name,
            namespace,
            spec: &md.spec,
            names: DomainNames::new(name),
        }
    }

    /// Where the daemons of this domain find their files and each other inside the pods.
    pub fn layout(&self) -> Layout {
        Layout::kubernetes(
            self.name,
            self.namespace,
            usize::try_from(self.spec.imap.replicas).unwrap_or(1),
        )
    }

    /// Metadata of a child called `name` in `component`: namespace and the standard labels.
    /// No ownerReference: the controller adds the MailDomain's (see `plan::Children::owned_by`).
    pub fn meta(&self, name: impl Into<String>, component: Component) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(self.namespace.to_string()),
            labels: Some(names::labels(self.name, component)),
            ..ObjectMeta::default()
        }
    }

    /// The labels selecting the pods of `component`.
    pub fn selector(&self, component: Component) -> BTreeMap<String, String> {
        names::selector_labels(self.name, component)
    }

    /// [`Self::selector`] as a `LabelSelector`.
    pub fn label_selector(&self, component: Component) -> LabelSelector {
        LabelSelector {
            match_labels: Some(self.selector(component)),
            ..LabelSelector::default()
        }
    }
}

/// Numeric user and group ids the mail images are built with (images/ creates these users).
/// Numeric, because `runAsNonRoot` can only be verified for numeric ids.
pub mod ids {
    /// Owner of every mailbox on the mail volume (Dovecot's mail uid/gid, `userdb::VMAIL_UID`)
    /// and the IMAP pods' `fsGroup`: the kubelet keeps the mail volume's root group-owned by
    /// it, which is the group the mail processes run as anyway.
    pub const VMAIL: i64 = crate::userdb::VMAIL_UID as i64;
    /// The Rspamd sidecar's user and group (`_rspamd`, renumbered to a fixed id by the mail-mta
    /// image rather than left to package install order), and the MTA
    /// pods' `fsGroup`, so Rspamd (running as this non-root user) can read the DKIM keys
    /// mounted with mode 0440, and nobody else but root can.
    pub const RSPAMD: i64 = 5001;
    /// Postfix's user and group (`postfix` of the mail-mta image), which owns the queue; the
    /// queue exporter runs as it to reach the `showq` socket.
    pub const POSTFIX: i64 = 101;
}

/// Keys of the Secrets and ConfigMaps whose files the daemons read, by mount.
pub mod keys {
    /// TLS Secret (the `kubernetes.io/tls` convention, also what cert-manager writes).
    pub const TLS_CERT: &str = "tls.crt";
    pub const TLS_KEY: &str = "tls.key";
    pub const TLS_CA: &str = "ca.crt";
    /// Internal Secret: the doveadm password (replication and backup) ...
    pub const DOVEADM_PASSWORD: &str = crate::config::secret_files::DOVEADM_PASSWORD;
    /// ... and the key that derives password-hash salts, so a hash only changes with its password.
    pub const HASH_KEY: &str = "hash-key";

    /// Users Secret `shard`: its passwd-file, named as Dovecot's `%1Mu` lookup expects.
    pub fn users_shard(shard: usize) -> String {
        crate::userdb::shard_file_name(shard)
    }
}

#[cfg(test)]
pub(crate) mod testing;
