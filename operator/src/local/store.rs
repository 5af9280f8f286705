//! The Secrets the operator keeps in the API for a domain (CA, serving certificate, DKIM keys,
//! internal passwords), kept under DIR instead, so that a restarted or reloaded local stack
//! reuses its keys exactly as the operator reuses the Secrets it finds in the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::volume;

/// Secrets under `DIR/var/lib/postwarden/secrets/<name>`, one kubelet-style volume each.
pub struct Store {
    root: PathBuf,
    namespace: Option<String>,
}

impl Store {
    pub fn new(dir: &Path, namespace: Option<String>) -> Self {
        Self {
            root: dir.join("var/lib/postwarden/secrets"),
            namespace,
        }
    }

    /// The stored Secret `name`, if any.
    pub fn get(&self, name: &str) -> anyhow::Result<Option<Secret>> {
        let Some(payload) = volume::read(&self.root.join(name))? else {
            return Ok(None);
        };
        Ok(Some(Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: self.namespace.clone(),
                ..Default::default()
            },
            data: Some(
                payload
                    .into_iter()
                    .map(|(k, v)| (k, ByteString(v)))
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    /// Stores `data` as the Secret `name` (owner-only: these hold private keys).
    pub fn put(&self, name: &str, data: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let payload = data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        std::fs::create_dir_all(&self.root)?;
        volume::write(&self.root.join(name), &payload, 0o600, None)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_secret_reads_back_with_its_namespace() {
        let dir = std::env::temp_dir().join(format!(
            "postwarden-store-{}-{}",
            std::process::id(),
            jiff::Timestamp::now().as_nanosecond()
        ));
        let store = Store::new(&dir, Some("mail".into()));
        assert!(store.get("lab-ca").unwrap().is_none());
        store
            .put("lab-ca", &BTreeMap::from([("ca.crt".into(), "PEM".into())]))
            .unwrap();
        let secret = store.get("lab-ca").unwrap().unwrap();
        assert_eq!(secret.metadata.namespace.as_deref(), Some("mail"));
        assert_eq!(crate::pki::secret_text(&secret)["ca.crt"], "PEM");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
