//! Stable names and labels of everything the operator creates for a MailDomain.
//!
//! Every child is named `<maildomain>-<suffix>` (the MailDomain name is at most 40 characters,
//! so the longest child plus a StatefulSet pod ordinal stays within Kubernetes limits) and carries
//! the labels of [`labels`], which is also how children no longer desired are found and removed.

use std::collections::BTreeMap;

/// Field manager of every server-side apply and label value of `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "postwarden";
/// Label holding the owning MailDomain's name; the selector for orphan cleanup.
pub const DOMAIN_LABEL: &str = "postwarden.dev/maildomain";
/// Label naming the part of the stack an object belongs to ([`Component`]).
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Annotation on pod templates carrying the checksum of their configuration, so a config change rolls the pods.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "postwarden.dev/config-checksum";

/// The part of the stack an object belongs to (`app.kubernetes.io/component`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Mta,
    Imap,
    Backup,
    Users,
    Tls,
    Dkim,
    Dns,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Mta => "mta",
            Component::Imap => "imap",
            Component::Backup => "backup",
            Component::Users => "users",
            Component::Tls => "tls",
            Component::Dkim => "dkim",
            Component::Dns => "dns",
        }
    }
}

/// Names of the children of one MailDomain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainNames {
    base: String,
}

impl DomainNames {
    pub fn new(maildomain_name: &str) -> Self {
        Self {
            base: maildomain_name.to_string(),
        }
    }
    pub fn base(&self) -> &str {
        &self.base
    }
    fn with(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.base)
    }
    /// Postfix StatefulSet and its public Service.
    pub fn mta(&self) -> String {
        self.with("mta")
    }
    /// Headless Service governing the Postfix pods.
    pub fn mta_headless(&self) -> String {
        self.with("mta-hl")
    }
    /// Dovecot StatefulSet and its public Service.
    pub fn imap(&self) -> String {
        self.with("imap")
    }
    /// Headless Service of the Dovecot pods: internal LMTP, auth and doveadm ports only.
    pub fn imap_headless(&self) -> String {
        self.with("imap-hl")
    }
    /// ConfigMap with the Postfix and Rspamd configuration.
    pub fn mta_config(&self) -> String {
        self.with("mta-config")
    }
    /// ConfigMap with the Dovecot configuration.
    pub fn imap_config(&self) -> String {
        self.with("imap-config")
    }
    /// ConfigMap with one shard of the address maps Postfix routes by (no secrets: addresses
    /// only).
    pub fn maps_shard(&self, shard: usize) -> String {
        format!("{}-maps-{shard:x}", self.base)
    }
    /// Secret with one shard of the users database (password hashes).
    pub fn users_shard(&self, shard: usize) -> String {
        format!("{}-users-{shard:x}", self.base)
    }
    /// Secret with the serving certificate (`tls.crt`, `tls.key`, `ca.crt`).
    pub fn tls(&self) -> String {
        self.with("tls")
    }
    /// Secret with the internal CA's certificate(s) and key.
    pub fn ca(&self) -> String {
        self.with("ca")
    }
    /// Secret with the DKIM private keys.
    pub fn dkim(&self) -> String {
        self.with("dkim")
    }
    /// Secret with internal shared secrets (doveadm password, password-hash salt key).
    pub fn internal(&self) -> String {
        self.with("internal")
    }
    /// ServiceAccount of the mail pods (no token mounted).
    pub fn service_account(&self) -> String {
        self.with("mail")
    }
    /// external-dns `DNSEndpoint` with the domain's records (when `spec.dns.externalDNS`).
    pub fn dns_endpoint(&self) -> String {
        self.with("dns")
    }
    /// Backup CronJob.
    pub fn backup(&self) -> String {
        self.with("backup")
    }
}

/// Labels of a child of `maildomain` in `component` (`app.kubernetes.io/*` plus [`DOMAIN_LABEL`]).
pub fn labels(maildomain: &str, component: Component) -> BTreeMap<String, String> {
    let mut l = selector_labels(maildomain, component);
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l.insert("app.kubernetes.io/part-of".into(), "postwarden".into());
    l
}

/// The subset of [`labels`] that selects a component's pods (immutable in a StatefulSet).
pub fn selector_labels(maildomain: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_string(),
            "postwarden".to_string(),
        ),
        (
            "app.kubernetes.io/instance".to_string(),
            maildomain.to_string(),
        ),
        (COMPONENT_LABEL.to_string(), component.as_str().to_string()),
        (DOMAIN_LABEL.to_string(), maildomain.to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_child_name_fits_a_pod_name_with_ordinal() {
        let n = DomainNames::new(&"a".repeat(crate::api::validate::MAX_DOMAIN_OBJECT_NAME));
        // Pod names `<sts>-<ordinal>` must be DNS labels (63) for the StatefulSet's hostname.
        for name in [
            n.mta(),
            n.imap(),
            n.mta_headless(),
            n.imap_headless(),
            n.users_shard(15),
            n.service_account(),
        ] {
            assert!(name.len() + 3 <= 63, "{name}");
        }
    }

    #[test]
    fn labels_carry_domain_and_component() {
        let l = labels("example-com", Component::Mta);
        assert_eq!(l["postwarden.dev/maildomain"], "example-com");
        assert_eq!(l["app.kubernetes.io/component"], "mta");
        assert_eq!(l["app.kubernetes.io/managed-by"], "postwarden");
        assert!(selector_labels("example-com", Component::Mta)
            .iter()
            .all(|(k, v)| l.get(k) == Some(v)));
    }
}
