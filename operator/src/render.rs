//! `postwarden render`: every object the operator would create, computed offline.

use crate::manifest::Inputs;

/// The quickstart example, rendered when no file is given.
pub const QUICKSTART: &str = include_str!("../../manifests/examples/quickstart.yaml");

/// Every Kubernetes object for the inputs, as a multi-document YAML stream: domain by
/// domain, each in apply order, with keys, certificates and internal secrets made up now
/// (or taken from Secrets in the inputs, as the operator would).
pub fn objects_yaml(inputs: &Inputs) -> anyhow::Result<String> {
    let mut objects = Vec::new();
    for children in objects_at(inputs, jiff::Timestamp::now(), &mut rand::thread_rng())? {
        for child in children.in_apply_order() {
            objects.push(serde_json::to_value(child)?);
        }
    }
    Ok(crate::manifest::to_yaml_stream(&objects))
}

/// The children of every MailDomain of the inputs at `now`. Reconcile-time problems the
/// operator would report as conditions (a missing password Secret, an address conflict, a
/// Mailbox of an unknown domain) are errors here, naming the Mailbox.
pub fn objects_at(
    inputs: &Inputs,
    now: jiff::Timestamp,
    rng: &mut impl rand::RngCore,
) -> anyhow::Result<Vec<crate::plan::Children>> {
    use kube::ResourceExt;

    for mb in &inputs.mailboxes {
        let known = inputs
            .domains
            .iter()
            .any(|md| md.name_any() == mb.spec.domain_ref.name && md.namespace() == mb.namespace());
        if !known {
            anyhow::bail!(
                "Mailbox {}: MailDomain {} is not in the inputs (DomainNotFound)",
                mb.name_any(),
                mb.spec.domain_ref.name
            );
        }
    }
    inputs
        .domains
        .iter()
        .map(|md| domain_objects(inputs, md, now, rng))
        .collect()
}

/// The children of one MailDomain, from generated state and the Secrets in the inputs.
fn domain_objects(
    inputs: &Inputs,
    md: &crate::api::MailDomain,
    now: jiff::Timestamp,
    rng: &mut impl rand::RngCore,
) -> anyhow::Result<crate::plan::Children> {
    use crate::plan::{self, DomainInputs, MailboxInput, TlsMaterial};
    use crate::resources::images::Images;
    use crate::resources::secret::{text_data, InternalSecrets};
    use kube::ResourceExt;

    let namespace = md.namespace();
    let names = crate::names::DomainNames::new(&md.name_any());
    let secret = |name: &str| {
        inputs
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(name) && s.namespace() == namespace)
    };

    let state = OfflineState::for_domain(inputs, md, now)?;
    let internal = secret(&names.internal())
        .and_then(|s| InternalSecrets::from_secret_data(&text_data(s)))
        .unwrap_or_else(|| InternalSecrets::generate(rng));
    let tls = match (TlsMaterial::external(md), state.tls) {
        (Some(external), _) => external,
        (None, Some(t)) => TlsMaterial::Internal {
            ca: t.ca,
            serving: t.serving,
        },
        (None, None) => anyhow::bail!("MailDomain {}: no serving certificate", md.name_any()),
    };

    let mut mailboxes = Vec::new();
    for mb in inputs
        .mailboxes
        .iter()
        .filter(|mb| mb.spec.domain_ref.name == md.name_any() && mb.namespace() == namespace)
    {
        let secret_ref = &mb.spec.password_secret_ref;
        let password = secret(&secret_ref.name).and_then(|s| text_data(s).remove(&secret_ref.key));
        let resolved =
            plan::resolve_mailbox(mb, &md.spec.domain, password.as_deref(), &internal.hash_key)
                .map_err(|e| {
                    anyhow::anyhow!(
                        "Mailbox {}: {} in the inputs ({})",
                        mb.name_any(),
                        e.message,
                        e.reason.as_str()
                    )
                })?;
        mailboxes.push(MailboxInput {
            mailbox: mb,
            resolved: Ok(resolved),
        });
    }

    let children = plan::desired(&DomainInputs {
        md,
        namespace: namespace.as_deref().unwrap_or("default"),
        mailboxes,
        tls,
        dkim: &state.dkim,
        internal: &internal,
        images: Images::for_spec(&md.spec, &Images::default()),
        continuity_recipients: inputs.continuity_recipients(md),
    })?;
    for outcome in &children.mailboxes {
        let problem = outcome
            .exclusion
            .iter()
            .chain(outcome.dropped_aliases.iter().map(|(_, e)| e))
            .next();
        if let Some(e) = problem {
            anyhow::bail!(
                "Mailbox {}: {} ({})",
                outcome.name,
                e.message,
                e.reason.as_str()
            );
        }
    }
    Ok(children)
}

/// The DNS records of every domain, in zone-file syntax, with keys made up now.
pub fn dns_zone(inputs: &Inputs) -> anyhow::Result<String> {
    dns_zone_at(inputs, jiff::Timestamp::now())
}

/// [`dns_zone`] at a given time.
pub fn dns_zone_at(inputs: &Inputs, now: jiff::Timestamp) -> anyhow::Result<String> {
    let mut out = String::new();
    for md in &inputs.domains {
        let state = OfflineState::for_domain(inputs, md, now)?;
        out.push_str(&domain_zone(md, &state));
    }
    Ok(out)
}

/// The zone of one domain with a header saying where its DKIM keys come from.
pub fn domain_zone(md: &crate::api::MailDomain, state: &OfflineState) -> String {
    use kube::ResourceExt;
    let names = crate::names::DomainNames::new(&md.name_any());
    let dkim_secret = names.dkim();
    let mut out = format!(
        ";; MailDomain {}/{}: records to publish for {}\n",
        md.namespace().unwrap_or_default(),
        md.name_any(),
        md.spec.domain
    );
    if state.dkim_generated {
        out.push_str(&format!(
            ";; The DKIM key below was made up by this render and is kept nowhere. To list the\n\
             ;; records of a key you apply, add its Secret {dkim_secret} to the inputs (-f), or\n\
             ;; let the operator generate the key and copy status.dnsRecords of the MailDomain.\n",
        ));
    } else {
        out.push_str(&format!(
            ";; DKIM keys from the Secret {dkim_secret} in the inputs.\n"
        ));
    }
    let published = state.dkim.published();
    out.push_str(&crate::dns::zone_file(&crate::dns::records(md, &published)));
    out.push('\n');
    out
}

/// Keys and certificates that `render` makes up for one domain, generated once so that every
/// output of a render (the DNS zone, the DKIM, CA and TLS Secrets) agrees. Like the operator,
/// it keeps what the inputs already hold: a `<md>-dkim`, `<md>-ca` or `<md>-tls` Secret in the
/// input files is used (and rotated as the operator would) instead of new keys.
#[derive(Clone, Debug)]
pub struct OfflineState {
    /// The DKIM keys after the rotation steps due at render time.
    pub dkim: crate::dkim::DkimState,
    /// True when the DKIM keys were generated by this render, not read from the inputs.
    pub dkim_generated: bool,
    /// The internal CA and serving certificate; `None` when the domain uses cert-manager or its
    /// own Secret.
    pub tls: Option<OfflineTls>,
}

/// The internal CA and serving certificate of a rendered domain.
pub type OfflineTls = crate::pki::InternalTls;

impl OfflineState {
    /// The state of `md` at `now`, from the Secrets among `inputs` where present.
    pub fn for_domain(
        inputs: &Inputs,
        md: &crate::api::MailDomain,
        now: jiff::Timestamp,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        use kube::ResourceExt;

        let names = crate::names::DomainNames::new(&md.name_any());
        let namespace = md.namespace();
        let secret = |name: String| {
            inputs
                .secrets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&name) && s.namespace() == namespace)
                .map(crate::pki::secret_text)
        };

        let stored_dkim = secret(names.dkim());
        let dkim_generated = stored_dkim.is_none();
        let dkim = crate::dkim::DkimState::from_secret_data(&stored_dkim.unwrap_or_default())
            .with_context(|| format!("Secret {}", names.dkim()))?;
        let (dkim, _) = crate::dkim::advance(&dkim, &md.spec.dkim, now)?;

        let tls = &md.spec.tls;
        let tls = if tls.cert_manager.is_none() && tls.secret_name.is_none() {
            let ca = match secret(names.ca()) {
                Some(data) => crate::pki::CaState::from_secret_data(&data)
                    .with_context(|| format!("Secret {}", names.ca()))?,
                None => None,
            };
            let serving = secret(names.tls()).and_then(|d| {
                Some(crate::pki::CertKeyPair {
                    cert_pem: d.get("tls.crt")?.clone(),
                    key_pem: d.get("tls.key")?.clone(),
                })
            });
            let namespace = namespace.as_deref().unwrap_or("default");
            Some(crate::pki::advance_internal_tls(
                md, namespace, ca, serving, now,
            )?)
        } else {
            None
        };
        Ok(Self {
            dkim,
            dkim_generated,
            tls,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::resources::secret::text_data;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// Fails when any ConfigMap holds key material, a password hash, or one of `secrets`.
    pub(crate) fn assert_no_secrets_in_config_maps(config_maps: &[ConfigMap], secrets: &[String]) {
        const MARKERS: [&str; 6] = [
            "PRIVATE KEY",
            "{SHA512-CRYPT}",
            "{ARGON2ID}",
            "$6$",
            "$argon2id$",
            "BEGIN CERTIFICATE",
        ];
        assert!(!config_maps.is_empty());
        for cm in config_maps {
            let name = cm.metadata.name.as_deref().unwrap_or_default();
            assert!(cm.binary_data.is_none(), "{name} has binaryData");
            for (file, text) in cm.data.iter().flatten() {
                for marker in MARKERS {
                    assert!(!text.contains(marker), "{name}/{file} contains {marker}");
                }
                for secret in secrets.iter().filter(|s| s.len() >= 8) {
                    assert!(
                        !text.contains(secret.as_str()),
                        "{name}/{file} contains a secret"
                    );
                }
            }
        }
    }

    fn quickstart() -> Inputs {
        crate::resources::testing::quickstart()
    }

    fn render(inputs: &Inputs) -> anyhow::Result<Vec<crate::plan::Children>> {
        objects_at(inputs, jiff::Timestamp::now(), &mut rand::thread_rng())
    }

    /// Secret values of a rendered domain: private keys (whole and per line), the internal
    /// secrets, and every password hash.
    fn secret_values(children: &crate::plan::Children) -> Vec<String> {
        let mut out = Vec::new();
        for s in &children.secrets {
            for (key, value) in text_data(s) {
                let secret_key = key.ends_with(".key")
                    || key == crate::resources::keys::DOVEADM_PASSWORD
                    || key == crate::resources::keys::HASH_KEY;
                if secret_key {
                    out.extend(
                        value
                            .lines()
                            .filter(|l| !l.starts_with("-----"))
                            .map(String::from),
                    );
                    out.push(value);
                } else if key.ends_with(".passwd") {
                    out.extend(
                        value
                            .lines()
                            .map(|l| l.split(':').nth(1).unwrap().to_string()),
                    );
                }
            }
        }
        out
    }

    #[test]
    fn rendered_quickstart_has_no_secret_material_in_any_config_map() {
        let inputs = quickstart();
        let children = render(&inputs).unwrap();
        assert_eq!(children.len(), 1);
        let c = &children[0];
        let mut secrets = secret_values(c);
        for s in &inputs.secrets {
            secrets.extend(text_data(s).into_values());
        }
        assert!(secrets.iter().any(|s| s.starts_with("{SHA512-CRYPT}$6$")));
        assert!(secrets.iter().any(|s| s.contains("BEGIN RSA PRIVATE KEY")));
        assert!(secrets.iter().any(|s| s == "correct-horse-battery-staple"));
        assert_no_secrets_in_config_maps(&c.config_maps, &secrets);
    }

    #[test]
    fn rendered_quickstart_is_the_whole_stack_in_apply_order() {
        let text = objects_yaml(&quickstart()).unwrap();
        let kinds: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("kind: "))
            .collect();
        assert_eq!(kinds.first(), Some(&"ServiceAccount"));
        assert_eq!(kinds.iter().filter(|k| **k == "Secret").count(), 16 + 4);
        assert_eq!(kinds.iter().filter(|k| **k == "StatefulSet").count(), 2);
        // The quickstart has backups: their CronJob comes last, after the pods it reads from.
        assert_eq!(kinds.last(), Some(&"CronJob"));
        assert_eq!(text.matches("\n---\n").count() + 1, kinds.len());
    }

    #[test]
    fn a_missing_password_secret_is_an_error_naming_the_mailbox() {
        let mut inputs = quickstart();
        inputs
            .secrets
            .retain(|s| s.metadata.name.as_deref() != Some("bob-password"));
        let err = render(&inputs).unwrap_err().to_string();
        assert_eq!(
            err,
            "Mailbox bob: password Secret bob-password (key password) not found in the inputs (PasswordSecretMissing)"
        );
    }

    #[test]
    fn a_mailbox_of_an_unknown_domain_is_an_error() {
        let mut inputs = quickstart();
        inputs.mailboxes[0].spec.domain_ref.name = "nowhere".into();
        let err = render(&inputs).unwrap_err().to_string();
        assert!(
            err.starts_with("Mailbox alice: MailDomain nowhere is not in the inputs"),
            "{err}"
        );
    }

    #[test]
    fn an_address_conflict_is_an_error_naming_the_mailbox() {
        let mut inputs = quickstart();
        inputs.mailboxes[1].spec.aliases = vec!["postmaster".into()];
        let err = render(&inputs).unwrap_err().to_string();
        assert_eq!(
            err,
            "Mailbox bob: alias postmaster@example.com belongs to Mailbox alice (AddressConflict)"
        );
    }

    #[test]
    fn internal_secrets_in_the_inputs_are_kept() {
        let mut inputs = quickstart();
        let first = render(&inputs).unwrap().remove(0);
        let internal = first
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("example-com-internal"))
            .unwrap()
            .clone();
        inputs.secrets.push(internal.clone());
        let second = render(&inputs).unwrap().remove(0);
        let again = second
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("example-com-internal"))
            .unwrap();
        assert_eq!(text_data(again), text_data(&internal));
        // The same hash key and passwords give the same users database.
        let users = |c: &crate::plan::Children| -> Vec<_> {
            c.secrets
                .iter()
                .filter(|s| s.metadata.name.as_deref().unwrap().contains("-users-"))
                .map(text_data)
                .collect()
        };
        assert_eq!(users(&first), users(&second));
    }
}
