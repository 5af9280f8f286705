//! Which MailDomain to reconcile when another object changes: children by their owner
//! reference, Mailboxes by `spec.domainRef`, Secrets by the Mailboxes (and MailDomains) that
//! reference them.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{MailDomain, Mailbox};

/// A MailDomain by namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainKey {
    pub namespace: String,
    pub name: String,
}

impl DomainKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The MailDomain that owns an object (its controller owner reference of kind MailDomain).
pub fn owning_domain(meta: &ObjectMeta) -> Option<DomainKey> {
    let namespace = meta.namespace.as_ref()?;
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| {
            o.kind == "MailDomain"
                && o.api_version
                    .starts_with(&format!("{}/", crate::api::GROUP))
        })
        .map(|o| DomainKey::new(namespace, &o.name))
}

/// The MailDomain named by an object's [`crate::names::DOMAIN_LABEL`] (for objects owned by
/// a child rather than by the MailDomain, such as the backup CronJob's Jobs).
pub fn labelled_domain(meta: &ObjectMeta) -> Option<DomainKey> {
    let domain = meta.labels.as_ref()?.get(crate::names::DOMAIN_LABEL)?;
    Some(DomainKey::new(meta.namespace.as_ref()?, domain))
}

/// The MailDomain a Mailbox belongs to.
pub fn mailbox_domain(mailbox: &Mailbox) -> Option<DomainKey> {
    Some(DomainKey::new(
        mailbox.metadata.namespace.as_ref()?,
        &mailbox.spec.domain_ref.name,
    ))
}

/// Names of Secrets a MailDomain reads but does not own: the served certificate (the user's,
/// or the one cert-manager fills) and backup credentials.
pub fn domain_secret_refs(domain: &MailDomain) -> Vec<String> {
    let mut refs = Vec::new();
    if let Some(name) = &domain.spec.tls.secret_name {
        refs.push(name.clone());
    } else if domain.spec.tls.cert_manager.is_some() {
        let name = domain.metadata.name.as_deref().unwrap_or_default();
        refs.push(crate::names::DomainNames::new(name).tls());
    }
    if let Some(s3) = domain
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.destination.s3.as_ref())
    {
        refs.push(s3.credentials_secret_ref.name.clone());
    }
    refs
}

/// Index from a password Secret to the MailDomains whose Mailboxes use it, kept up to date
/// from the Mailbox watch so a Secret event is mapped without scanning every Mailbox.
#[derive(Default, Debug)]
pub struct SecretIndex {
    /// (namespace, secret) → mailbox name → domain name.
    by_secret: HashMap<(String, String), HashMap<String, String>>,
    /// (namespace, mailbox) → secret, to move a Mailbox when its reference changes.
    by_mailbox: HashMap<(String, String), String>,
}

impl SecretIndex {
    /// Records (or updates) a Mailbox's password Secret reference.
    pub fn upsert(&mut self, mailbox: &Mailbox) {
        let (Some(ns), Some(name)) = (&mailbox.metadata.namespace, &mailbox.metadata.name) else {
            return;
        };
        self.remove(ns, name);
        let secret = mailbox.spec.password_secret_ref.name.clone();
        self.by_secret
            .entry((ns.clone(), secret.clone()))
            .or_default()
            .insert(name.clone(), mailbox.spec.domain_ref.name.clone());
        self.by_mailbox.insert((ns.clone(), name.clone()), secret);
    }

    /// Forgets a deleted Mailbox.
    pub fn remove(&mut self, namespace: &str, mailbox: &str) {
        let key = (namespace.to_string(), mailbox.to_string());
        if let Some(secret) = self.by_mailbox.remove(&key) {
            let skey = (namespace.to_string(), secret);
            if let Some(users) = self.by_secret.get_mut(&skey) {
                users.remove(mailbox);
                if users.is_empty() {
                    self.by_secret.remove(&skey);
                }
            }
        }
    }

    /// Starts over (after the Mailbox watch relisted).
    pub fn clear(&mut self) {
        self.by_secret.clear();
        self.by_mailbox.clear();
    }

    /// The MailDomains with a Mailbox whose password is in Secret `namespace/secret`.
    pub fn domains_for_secret(&self, namespace: &str, secret: &str) -> BTreeSet<DomainKey> {
        self.by_secret
            .get(&(namespace.to_string(), secret.to_string()))
            .into_iter()
            .flat_map(|users| users.values())
            .map(|domain| DomainKey::new(namespace, domain))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.by_mailbox.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mailbox.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mailbox::PasswordSecretRef;
    use crate::api::maildomain::LocalObjectRef;
    use crate::api::MailboxSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn mailbox(ns: &str, name: &str, domain: &str, secret: &str) -> Mailbox {
        let mut m = Mailbox::new(
            name,
            MailboxSpec {
                domain_ref: LocalObjectRef {
                    name: domain.into(),
                },
                local_part: name.into(),
                password_secret_ref: PasswordSecretRef {
                    name: secret.into(),
                    key: "password".into(),
                },
                aliases: vec![],
                forward_to: vec![],
                keep_copy: true,
                quota: None,
                suspended: false,
            },
        );
        m.metadata.namespace = Some(ns.into());
        m
    }

    #[test]
    fn secret_maps_to_the_domains_of_its_mailboxes() {
        let mut idx = SecretIndex::default();
        idx.upsert(&mailbox("mail", "alice", "example", "alice-pw"));
        idx.upsert(&mailbox("mail", "bob", "other", "alice-pw"));
        idx.upsert(&mailbox("mail", "carol", "example", "carol-pw"));
        idx.upsert(&mailbox("team", "dave", "example", "alice-pw"));
        assert_eq!(
            idx.domains_for_secret("mail", "alice-pw")
                .into_iter()
                .collect::<Vec<_>>(),
            vec![
                DomainKey::new("mail", "example"),
                DomainKey::new("mail", "other")
            ]
        );
        assert_eq!(
            idx.domains_for_secret("team", "alice-pw")
                .into_iter()
                .collect::<Vec<_>>(),
            vec![DomainKey::new("team", "example")],
            "Secrets are only referenced within their namespace"
        );
        assert!(idx.domains_for_secret("mail", "unrelated").is_empty());
    }

    #[test]
    fn served_certificate_secrets_map_to_their_domain() {
        let domain = |tls: serde_json::Value| {
            MailDomain::new(
                "example",
                serde_json::from_value(serde_json::json!({"domain": "example.com", "tls": tls}))
                    .unwrap(),
            )
        };
        let own = domain(serde_json::json!({"secretName": "my-cert"}));
        assert_eq!(domain_secret_refs(&own), ["my-cert"]);
        let cm = domain(serde_json::json!({"certManager": {"issuerRef": {"name": "le"}}}));
        assert_eq!(domain_secret_refs(&cm), ["example-tls"]);
        // The internal CA's Secrets are owned by the MailDomain: mapped through the owner.
        assert!(domain_secret_refs(&domain(serde_json::json!({}))).is_empty());
    }

    #[test]
    fn changed_and_deleted_mailboxes_leave_the_index() {
        let mut idx = SecretIndex::default();
        idx.upsert(&mailbox("mail", "alice", "example", "old-pw"));
        idx.upsert(&mailbox("mail", "alice", "example", "new-pw"));
        assert!(idx.domains_for_secret("mail", "old-pw").is_empty());
        assert_eq!(idx.domains_for_secret("mail", "new-pw").len(), 1);
        assert_eq!(idx.len(), 1);
        idx.remove("mail", "alice");
        assert!(idx.domains_for_secret("mail", "new-pw").is_empty());
        assert!(idx.is_empty());
    }

    #[test]
    fn children_map_to_their_owner() {
        let meta = ObjectMeta {
            name: Some("example-mta".into()),
            namespace: Some("mail".into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "postwarden.dev/v1alpha1".into(),
                kind: "MailDomain".into(),
                name: "example".into(),
                uid: "u".into(),
                controller: Some(true),
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        };
        assert_eq!(
            owning_domain(&meta),
            Some(DomainKey::new("mail", "example"))
        );
        let foreign = ObjectMeta {
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "MailDomain".into(),
                ..meta.owner_references.clone().unwrap()[0].clone()
            }]),
            ..meta.clone()
        };
        assert_eq!(owning_domain(&foreign), None);
        let job = ObjectMeta {
            namespace: Some("mail".into()),
            labels: Some(
                [(
                    crate::names::DOMAIN_LABEL.to_string(),
                    "example".to_string(),
                )]
                .into(),
            ),
            ..Default::default()
        };
        assert_eq!(
            labelled_domain(&job),
            Some(DomainKey::new("mail", "example"))
        );
    }
}
