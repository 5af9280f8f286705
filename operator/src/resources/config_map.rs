//! ConfigMaps: the rendered daemon configuration and the Postfix address maps.
//!
//! Only files without secrets go here: configuration and addresses. Password hashes, keys and
//! shared secrets live in Secrets (see [`super::secret`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::Domain;
use crate::names::Component;

/// ConfigMap `<md>-mta-config`: Postfix and Rspamd configuration (and their entrypoints).
pub fn build_mta_config(domain: &Domain, files: BTreeMap<String, String>) -> ConfigMap {
    build(domain, domain.names.mta_config(), Component::Mta, files)
}

/// ConfigMap `<md>-imap-config`: Dovecot configuration (and its entrypoint).
pub fn build_imap_config(domain: &Domain, files: BTreeMap<String, String>) -> ConfigMap {
    build(domain, domain.names.imap_config(), Component::Imap, files)
}

/// ConfigMap `<md>-maps`: the Postfix lookup tables (mailbox domains, mailboxes, aliases,
/// forwards). Reloaded in place: not part of the pods' config checksum.
pub fn build_maps(domain: &Domain, files: BTreeMap<String, String>) -> ConfigMap {
    build(domain, domain.names.maps(), Component::Users, files)
}

fn build(
    domain: &Domain,
    name: String,
    component: Component,
    files: BTreeMap<String, String>,
) -> ConfigMap {
    ConfigMap {
        metadata: domain.meta(name, component),
        data: Some(files),
        ..ConfigMap::default()
    }
}

/// SHA-256 (hex) over the files of ConfigMaps, in order: names, keys and values, each
/// length-prefixed so no two different inputs hash alike. The pod template carries it in
/// [`crate::names::CONFIG_CHECKSUM_ANNOTATION`], so changing a configuration file rolls the pods.
pub fn checksum<'a>(config_maps: impl IntoIterator<Item = &'a ConfigMap>) -> String {
    let mut hasher = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    for cm in config_maps {
        field(cm.metadata.name.as_deref().unwrap_or_default().as_bytes());
        let data = cm.data.as_ref();
        for (key, value) in data.into_iter().flatten() {
            field(key.as_bytes());
            field(value.as_bytes());
        }
        for (key, value) in cm.binary_data.iter().flatten() {
            field(key.as_bytes());
            field(&value.0);
        }
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn files(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn checksum_follows_every_key_and_value_and_nothing_else() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let a = build_mta_config(&domain, files(&[("main.cf", "x = 1\n")]));
        let same = build_mta_config(&domain, files(&[("main.cf", "x = 1\n")]));
        let changed_value = build_mta_config(&domain, files(&[("main.cf", "x = 2\n")]));
        let changed_key = build_mta_config(&domain, files(&[("master.cf", "x = 1\n")]));
        let shifted = build_mta_config(&domain, files(&[("main.c", "fx = 1\n")]));
        let sum = checksum([&a]);
        assert_eq!(sum.len(), 64);
        assert_eq!(sum, checksum([&same]));
        for other in [&changed_value, &changed_key, &shifted] {
            assert_ne!(sum, checksum([other]));
        }
        // Labels and annotations are not configuration.
        let mut relabelled = a.clone();
        relabelled
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert_eq!(sum, checksum([&relabelled]));
    }

    #[test]
    fn config_maps_carry_name_namespace_and_labels() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let cm = build_maps(&domain, files(&[("virtual_mailbox_maps", "a@b x\n")]));
        assert_eq!(cm.metadata.name.as_deref(), Some("example-com-maps"));
        assert_eq!(cm.metadata.namespace.as_deref(), Some("mail"));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[crate::names::DOMAIN_LABEL],
            "example-com"
        );
    }
}
