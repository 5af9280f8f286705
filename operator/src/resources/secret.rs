//! Secrets the operator owns: the users database shards, the serving certificate and the
//! internal CA (internal-CA mode only), the DKIM keys, and the internal shared secrets.
//!
//! All of them are reloaded in place by the daemons (kubelet refreshes mounted Secrets), so
//! none of them is part of the pods' config checksum.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{keys, Domain};
use crate::config::USER_SHARDS;
use crate::names::Component;

/// A certificate (chain) and its private key, PEM.
#[derive(Clone, Copy, Debug)]
pub struct PemPair<'a> {
    pub cert: &'a str,
    pub key: &'a str,
}

/// A DKIM private key (PEM) and the selector it is published under.
#[derive(Clone, Copy, Debug)]
pub struct DkimKeyFile<'a> {
    pub selector: &'a str,
    pub private_key_pem: &'a str,
}

/// Secrets `<md>-users-0` … `<md>-users-f`: shard `i` holds the passwd-file `<i>.passwd`
/// (SHA512-CRYPT or ARGON2ID hashes only). Every shard exists, empty or not, so the pods'
/// projected volume never waits for a missing Secret.
///
/// `shards` must hold exactly [`USER_SHARDS`] files, index = shard.
pub fn build_users(domain: &Domain, shards: &[String]) -> Vec<Secret> {
    assert_eq!(
        shards.len(),
        USER_SHARDS,
        "the users database has exactly {USER_SHARDS} shards"
    );
    shards
        .iter()
        .enumerate()
        .map(|(i, text)| {
            opaque(
                domain,
                domain.names.users_shard(i),
                Component::Users,
                [(keys::users_shard(i), text.as_str())],
            )
        })
        .collect()
}

/// Secret `<md>-tls` (`kubernetes.io/tls`): the serving certificate chain, its key, and the
/// CA bundle clients and peers trust. Built only with the internal CA; with cert-manager the
/// Certificate fills a Secret of the same name, and `tls.secretName` is mounted as it is.
pub fn build_tls(domain: &Domain, serving: PemPair<'_>, ca_bundle: &str) -> Secret {
    let mut secret = opaque(
        domain,
        domain.names.tls(),
        Component::Tls,
        [
            (keys::TLS_CERT.to_string(), serving.cert),
            (keys::TLS_KEY.to_string(), serving.key),
            (keys::TLS_CA.to_string(), ca_bundle),
        ],
    );
    secret.type_ = Some("kubernetes.io/tls".into());
    secret
}

/// Secret `<md>-ca`: the internal CA the serving certificate chains to. Only the operator
/// reads it; no pod mounts it.
pub fn build_ca(domain: &Domain, ca: PemPair<'_>) -> Secret {
    opaque(
        domain,
        domain.names.ca(),
        Component::Tls,
        [
            (keys::CA_CERT.to_string(), ca.cert),
            (keys::CA_KEY.to_string(), ca.key),
        ],
    )
}

/// Secret `<md>-dkim`: one `<selector>.key` per key (the signing key and any key published
/// ahead of or after a rotation) and `selectors.map`, which names the signing selector for
/// each domain, so a rotation is a Secret update, not a configuration change.
pub fn build_dkim(domain: &Domain, keys_: &[DkimKeyFile<'_>], active_selector: &str) -> Secret {
    let selector_map: String = domain
        .spec
        .all_domains()
        .map(|d| format!("{d} {active_selector}\n"))
        .collect();
    let mut files: Vec<(String, &str)> = keys_
        .iter()
        .map(|k| (keys::dkim_key(k.selector), k.private_key_pem))
        .collect();
    files.push((keys::DKIM_SELECTORS.to_string(), selector_map.as_str()));
    opaque(domain, domain.names.dkim(), Component::Dkim, files)
}

/// Secret `<md>-internal`: the doveadm password (replication between the IMAP pods and the
/// backup jobs) and the key that derives password-hash salts. Generated once, kept forever.
pub fn build_internal(domain: &Domain, doveadm_password: &str, hash_key: &str) -> Secret {
    opaque(
        domain,
        domain.names.internal(),
        Component::Imap,
        [
            (keys::DOVEADM_PASSWORD.to_string(), doveadm_password),
            (keys::HASH_KEY.to_string(), hash_key),
        ],
    )
}

fn opaque<'v>(
    domain: &Domain,
    name: String,
    component: Component,
    files: impl IntoIterator<Item = (String, &'v str)>,
) -> Secret {
    let data: BTreeMap<String, ByteString> = files
        .into_iter()
        .map(|(k, v)| (k, ByteString(v.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: domain.meta(name, component),
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn text(secret: &Secret, key: &str) -> String {
        String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
    }

    #[test]
    fn sixteen_user_shards_named_for_dovecots_lookup() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let mut shards = vec![String::new(); USER_SHARDS];
        shards[0xa] = "alice@example.com:{SHA512-CRYPT}$6$x$y::::::\n".into();
        let secrets = build_users(&domain, &shards);
        assert_eq!(secrets.len(), 16);
        assert_eq!(
            secrets[15].metadata.name.as_deref(),
            Some("example-com-users-f")
        );
        assert!(text(&secrets[0xa], "a.passwd").starts_with("alice@example.com:"));
        assert_eq!(text(&secrets[0], "0.passwd"), "");
        assert!(secrets.iter().all(|s| s.string_data.is_none()));
    }

    #[test]
    fn dkim_secret_names_the_signing_selector_for_every_domain() {
        let mut md = testing::quickstart_domain();
        md.spec.alias_domains = vec!["example.net".into()];
        let domain = testing::domain(&md);
        let secret = build_dkim(
            &domain,
            &[
                DkimKeyFile {
                    selector: "pw202601",
                    private_key_pem: "A",
                },
                DkimKeyFile {
                    selector: "pw202607",
                    private_key_pem: "B",
                },
            ],
            "pw202601",
        );
        assert_eq!(text(&secret, "pw202601.key"), "A");
        assert_eq!(text(&secret, "pw202607.key"), "B");
        assert_eq!(
            text(&secret, "selectors.map"),
            "example.com pw202601\nexample.net pw202601\n"
        );
    }

    #[test]
    fn tls_secret_has_the_kubernetes_tls_shape() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let s = build_tls(
            &domain,
            PemPair {
                cert: "C",
                key: "K",
            },
            "CA",
        );
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(text(&s, "tls.crt"), "C");
        assert_eq!(text(&s, "tls.key"), "K");
        assert_eq!(text(&s, "ca.crt"), "CA");
    }
}
