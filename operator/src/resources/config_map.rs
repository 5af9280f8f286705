//! ConfigMaps: the rendered daemon configuration and the Postfix address maps.
//!
//! Only files without secrets go here: configuration and addresses. Password hashes, keys and
//! shared secrets live in Secrets (see [`super::secret`]).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use sha2::{Digest, Sha256};

use super::Domain;
use crate::config::USER_SHARDS;
use crate::names::Component;
use crate::userdb::UsersDb;

/// ConfigMap `<md>-mta-config`: Postfix and Rspamd configuration (and their entrypoints).
pub fn build_mta_config(domain: &Domain, files: BTreeMap<String, String>) -> ConfigMap {
    build(domain, domain.names.mta_config(), Component::Mta, files)
}

/// ConfigMap `<md>-imap-config`: Dovecot configuration (and its entrypoint).
pub fn build_imap_config(domain: &Domain, files: BTreeMap<String, String>) -> ConfigMap {
    build(domain, domain.names.imap_config(), Component::Imap, files)
}

/// ConfigMaps `<md>-maps-<shard>`: the Postfix lookup tables (mailboxes, aliases, forwards,
/// sender logins), one shard each, so 10,000s of addresses stay far below the 1 MiB an object
/// may hold. Reloaded in place: not part of the pods' config checksum.
pub fn build_maps(domain: &Domain, users: &UsersDb) -> Vec<ConfigMap> {
    (0..USER_SHARDS)
        .map(|i| {
            build(
                domain,
                domain.names.maps_shard(i),
                Component::Users,
                users.map_shard(i),
            )
        })
        .collect()
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
        let users = crate::userdb::build(&md.spec, &crate::config::testing::quickstart_mailboxes());
        let maps = build_maps(&domain, &users);
        assert_eq!(maps.len(), USER_SHARDS);
        let cm = &maps[10];
        assert_eq!(cm.metadata.name.as_deref(), Some("example-com-maps-a"));
        assert_eq!(
            cm.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["aliases-a", "mailboxes-a", "senders-a"]
        );
        assert_eq!(cm.metadata.namespace.as_deref(), Some("mail"));
        assert_eq!(
            cm.metadata.labels.as_ref().unwrap()[crate::names::DOMAIN_LABEL],
            "example-com"
        );
    }
}
