//! Secrets the operator owns: the users database shards, the serving certificate and the
//! internal CA (internal-CA mode only), the DKIM keys, and the internal shared secrets.
//!
//! The daemons re-read all of them in place (the kubelet refreshes mounted Secrets), so none
//! of them is part of the pods' config checksum. Their contents come from the pure layers
//! (`userdb`, `pki`, `dkim`) as file maps; here they only get their names, labels and types.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;

use super::{keys, Domain};
use crate::config::USER_SHARDS;
use crate::names::Component;

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
            build(
                domain,
                domain.names.users_shard(i),
                Component::Users,
                "Opaque",
                BTreeMap::from([(keys::users_shard(i), text.clone())]),
            )
        })
        .collect()
}

/// Secret `<md>-tls` (`kubernetes.io/tls`): `tls.crt`, `tls.key` and `ca.crt` (every CA
/// clients must trust). Built only with the internal CA; with cert-manager the Certificate
/// fills a Secret of this name, and `tls.secretName` is mounted as it is.
pub fn build_tls(domain: &Domain, data: BTreeMap<String, String>) -> Secret {
    build(
        domain,
        domain.names.tls(),
        Component::Tls,
        "kubernetes.io/tls",
        data,
    )
}

/// Secret `<md>-ca`: the internal CA (and its rotation state). Only the operator reads it;
/// no pod mounts it.
pub fn build_ca(domain: &Domain, data: BTreeMap<String, String>) -> Secret {
    build(domain, domain.names.ca(), Component::Tls, "Opaque", data)
}

/// Secret `<md>-dkim`: the DKIM private keys and which one signs.
pub fn build_dkim(domain: &Domain, data: BTreeMap<String, String>) -> Secret {
    build(domain, domain.names.dkim(), Component::Dkim, "Opaque", data)
}

/// Secret `<md>-internal`: the shared secrets of [`InternalSecrets`].
pub fn build_internal(domain: &Domain, secrets: &InternalSecrets) -> Secret {
    build(
        domain,
        domain.names.internal(),
        Component::Imap,
        "Opaque",
        secrets.to_secret_data(),
    )
}

fn build(
    domain: &Domain,
    name: String,
    component: Component,
    type_: &str,
    data: BTreeMap<String, String>,
) -> Secret {
    Secret {
        metadata: domain.meta(name, component),
        type_: Some(type_.into()),
        // `data`, not `stringData`: the API server never returns stringData, so applying it
        // would look like a change on every resync.
        data: Some(
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// Shared secrets of one MailDomain that no user supplies: generated once, then kept in the
/// `<md>-internal` Secret and read back on every reconcile.
#[derive(Clone, PartialEq, Eq)]
pub struct InternalSecrets {
    /// Authenticates doveadm between the IMAP pods (replication) and from the backup jobs.
    pub doveadm_password: String,
    /// Derives the salts of the password hashes the operator computes (`userdb::hash_password`),
    /// so a hash only changes when its password does.
    pub hash_key: String,
}

impl std::fmt::Debug for InternalSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalSecrets { <redacted> }")
    }
}

impl InternalSecrets {
    /// Fresh secrets: 256 random bits each, URL-safe base64 (no characters that need quoting
    /// in a Dovecot setting or a shell).
    pub fn generate(rng: &mut impl rand::RngCore) -> Self {
        use base64::Engine;
        let mut token = || {
            let mut bytes = [0u8; 32];
            rng.fill_bytes(&mut bytes);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        Self {
            doveadm_password: token(),
            hash_key: token(),
        }
    }

    /// The secrets in an existing `<md>-internal` Secret's data (as text); `None` when either
    /// is missing or empty, and the Secret must be (re)created.
    pub fn from_secret_data(data: &BTreeMap<String, String>) -> Option<Self> {
        let get = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
        Some(Self {
            doveadm_password: get(keys::DOVEADM_PASSWORD)?,
            hash_key: get(keys::HASH_KEY)?,
        })
    }

    /// The Secret's data.
    pub fn to_secret_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                keys::DOVEADM_PASSWORD.to_string(),
                self.doveadm_password.clone(),
            ),
            (keys::HASH_KEY.to_string(), self.hash_key.clone()),
        ])
    }
}

/// A Secret's entries as text: `data` (decoded) merged with `stringData`; entries that are
/// not UTF-8 are skipped.
pub fn text_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    out.extend(secret.string_data.clone().unwrap_or_default());
    out
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
    fn tls_secret_has_the_kubernetes_tls_type() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let s = build_tls(&domain, BTreeMap::from([("tls.crt".into(), "C".into())]));
        assert_eq!(s.type_.as_deref(), Some("kubernetes.io/tls"));
        assert_eq!(s.metadata.name.as_deref(), Some("example-com-tls"));
        assert_eq!(text(&s, "tls.crt"), "C");
    }

    #[test]
    fn internal_secrets_round_trip_and_are_fresh_each_time() {
        let mut rng = rand::thread_rng();
        let a = InternalSecrets::generate(&mut rng);
        let b = InternalSecrets::generate(&mut rng);
        assert_ne!(a.doveadm_password, b.doveadm_password);
        assert_ne!(a.doveadm_password, a.hash_key);
        assert_eq!(a.doveadm_password.len(), 43);
        let md = testing::quickstart_domain();
        let secret = build_internal(&testing::domain(&md), &a);
        assert_eq!(
            InternalSecrets::from_secret_data(&text_data(&secret)),
            Some(a.clone())
        );
        let mut partial = a.to_secret_data();
        partial.insert(keys::HASH_KEY.into(), String::new());
        assert_eq!(InternalSecrets::from_secret_data(&partial), None);
        assert!(!format!("{a:?}").contains(&a.doveadm_password));
    }
}
