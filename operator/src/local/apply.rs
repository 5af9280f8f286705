//! What the operator does for one MailDomain, done to DIR instead of the Kubernetes API: keep
//! or make the keys (CA, serving certificate, DKIM, internal passwords), build the users
//! database, render every configuration file, and write each ConfigMap and Secret into the
//! directory the pods mount it at ([`Layout`]).

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::MailDomain;
use crate::config::{self, Layout, USER_SHARDS};
use crate::manifest::Inputs;
use crate::names::DomainNames;
use crate::render::OfflineState;
use crate::resources::keys;
use crate::resources::pod::{CONFIG_MODE, SECRET_MODE};
use crate::resources::secret::InternalSecrets;
use crate::userdb::{self, ResolvedMailbox};

use crate::runtime::Runtime;

use super::store::Store;
use super::volume::{self, Payload};

/// Local users standing in for a pod's `fsGroup`: mounted Secret files are mode 0440, so the
/// group must be the one of the unprivileged daemon process that reads them.
const DOVECOT_GROUP: &str = "dovecot";
const RSPAMD_GROUP: &str = "_rspamd";

/// What to change beyond what the inputs ask for.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Issue a new serving certificate now, as the operator does before the old one expires.
    pub rotate_certificate: bool,
    /// Where the daemons run, whose users and groups own the files they read.
    pub runtime: Runtime,
}

/// The result of one apply.
pub struct Applied {
    /// Every CA certificate a client must trust (PEM), empty when the domain brings its own.
    pub trust_bundle: String,
    /// The domain's DNS records in zone-file syntax, including the DKIM keys in use.
    pub dns_zone: String,
    /// Volumes (by mount directory) whose content changed.
    pub changed: Vec<String>,
    /// Mailboxes and aliases left out of the users database, and why (the operator's
    /// conditions say the same).
    pub warnings: Vec<String>,
}

/// The single MailDomain of `inputs`, with its Mailboxes.
pub fn the_domain(inputs: &Inputs) -> anyhow::Result<&MailDomain> {
    match inputs.domains.as_slice() {
        [md] => Ok(md),
        [] => anyhow::bail!("no MailDomain in the input: `local up` runs the stack of exactly one"),
        many => anyhow::bail!(
            "{} MailDomains in the input ({}): `local up` runs the stack of exactly one",
            many.len(),
            many.iter()
                .map(|m| m.name_any())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Renders and writes everything for `md` as of `now`.
pub fn apply(
    inputs: &Inputs,
    md: &MailDomain,
    layout: &Layout,
    store: &Store,
    options: Options,
    now: Timestamp,
) -> anyhow::Result<Applied> {
    let names = DomainNames::new(&md.name_any());

    // Keys: what the store holds, advanced as the operator would at `now`.
    let mut known = inputs.clone();
    for name in [names.ca(), names.tls(), names.dkim()] {
        if options.rotate_certificate && name == names.tls() {
            continue;
        }
        if let Some(secret) = store.get(&name)? {
            known
                .secrets
                .retain(|s| s.metadata.name.as_deref() != Some(&name));
            known.secrets.push(secret);
        }
    }
    let state = OfflineState::for_domain(&known, md, now)?;
    let dkim_data = state.dkim.to_secret_data(&md.spec)?;
    store.put(&names.dkim(), &dkim_data)?;
    let mut trust_bundle = String::new();
    let tls_payload = match &state.tls {
        Some(tls) => {
            store.put(&names.ca(), &tls.ca.to_secret_data())?;
            trust_bundle = tls.ca.trust_bundle();
            let data = crate::pki::serving_secret_data(&tls.serving, &trust_bundle);
            store.put(&names.tls(), &data)?;
            text_payload(&data)
        }
        None => {
            let name = md.spec.tls.secret_name.clone().context(
                "tls.certManager needs cert-manager, which `local up` does not run: use the internal CA or tls.secretName",
            )?;
            let secret = inputs
                .secrets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&name))
                .with_context(|| format!("tls.secretName: Secret {name} is not in the input"))?;
            volume::secret_payload(secret)
        }
    };

    let internal = internal_secrets(store, &names)?;
    let (mailboxes, warnings) = resolve_mailboxes(inputs, md, &internal.hash_key);
    let mut users = userdb::build(&md.spec, &mailboxes);
    crate::plan::continuity_recipients(&mut users, inputs.continuity_recipients(md).as_ref())?;

    // The MTA and the IMAP pods each mount their own ConfigMap at the config directory; on one
    // host that directory holds both.
    let mut config_files = config::mta_files(md, layout);
    for (name, content) in config::imap_files(md, layout) {
        if config_files.insert(name.clone(), content).is_some() {
            anyhow::bail!("the MTA and IMAP ConfigMaps both have a file {name}");
        }
    }

    let users_payload: Payload = (0..USER_SHARDS)
        .map(|i| {
            let shard = users.shards.get(i).cloned().unwrap_or_default();
            (userdb::shard_file_name(i), shard.into_bytes())
        })
        .collect();
    // Only the doveadm password, as the IMAP pods mount it: the hash key is the operator's alone.
    let secrets_payload: Payload = BTreeMap::from([(
        keys::DOVEADM_PASSWORD.to_string(),
        internal.doveadm_password.clone().into_bytes(),
    )]);

    // The pods' volume modes; the group stands in for the pod's fsGroup (see above). TLS files
    // are read by the Postfix and Dovecot masters, which run as root.
    let config_mode = CONFIG_MODE as u32;
    let secret_mode = SECRET_MODE as u32;
    let volumes = [
        (
            layout.config_dir(),
            text_payload(&config_files),
            config_mode,
            None,
        ),
        (
            layout.maps_dir(),
            text_payload(&users.maps),
            config_mode,
            None,
        ),
        (
            layout.users_dir(),
            users_payload,
            secret_mode,
            Some(DOVECOT_GROUP),
        ),
        (layout.tls_dir(), tls_payload, secret_mode, None),
        (
            layout.dkim_dir(),
            text_payload(&dkim_data),
            secret_mode,
            Some(RSPAMD_GROUP),
        ),
        (
            layout.secrets_dir(),
            secrets_payload,
            secret_mode,
            Some(DOVECOT_GROUP),
        ),
    ];
    let mut changed = Vec::new();
    for (dir, payload, mode, group) in volumes {
        let gid = group.map(|g| options.runtime.group_id(g)).transpose()?;
        let outcome = volume::write(&dir, &payload, mode, gid)
            .with_context(|| format!("writing {}", dir.display()))?;
        if outcome == volume::Outcome::Updated {
            changed.push(dir.display().to_string());
        }
    }
    Ok(Applied {
        trust_bundle,
        dns_zone: dns_zone(md, &state),
        changed,
        warnings,
    })
}

/// The records to publish, with the DKIM keys in use (kept in DIR, reused by later runs).
fn dns_zone(md: &MailDomain, state: &OfflineState) -> String {
    let records = crate::dns::records(md, &state.dkim.published());
    format!(
        ";; MailDomain {}/{}: records to publish for {}, with the DKIM keys `postwarden local` signs with\n{}",
        md.namespace().unwrap_or_default(),
        md.name_any(),
        md.spec.domain,
        crate::dns::zone_file(&records)
    )
}

fn text_payload(files: &BTreeMap<String, String>) -> Payload {
    files
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect()
}

/// The internal Secret (doveadm password, hash key), made once and kept.
fn internal_secrets(store: &Store, names: &DomainNames) -> anyhow::Result<InternalSecrets> {
    let stored = store
        .get(&names.internal())?
        .and_then(|s| InternalSecrets::from_secret_data(&crate::pki::secret_text(&s)));
    if let Some(secrets) = stored {
        return Ok(secrets);
    }
    let secrets = InternalSecrets::generate(&mut rand::rngs::OsRng);
    store.put(&names.internal(), &secrets.to_secret_data())?;
    Ok(secrets)
}

/// The users-database entries of `md`'s Mailboxes, decided as the operator's plan decides
/// them: address conflicts settled by [`crate::plan::addresses::settle`], passwords hashed by
/// [`crate::plan::resolve_mailbox`]. Mailboxes and aliases left out come back as warnings.
fn resolve_mailboxes(
    inputs: &Inputs,
    md: &MailDomain,
    hash_key: &str,
) -> (Vec<ResolvedMailbox>, Vec<String>) {
    let namespace = md.namespace();
    let domain = md.spec.domain.to_ascii_lowercase();
    let own: Vec<&crate::api::Mailbox> = inputs
        .mailboxes
        .iter()
        .filter(|mb| mb.spec.domain_ref.name == md.name_any() && mb.namespace() == namespace)
        .collect();
    let mut settlement = crate::plan::addresses::settle(&domain, &own);
    let mut resolved = Vec::new();
    let mut warnings = Vec::new();
    for mb in own {
        let name = mb.name_any();
        let secret_ref = &mb.spec.password_secret_ref;
        let password = inputs
            .secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(&secret_ref.name) && s.namespace() == namespace
            })
            .and_then(|s| crate::pki::secret_text(s).remove(&secret_ref.key));
        let outcome = match settlement.excluded.remove(&name) {
            Some(exclusion) => Err(exclusion),
            None => crate::plan::resolve_mailbox(mb, &domain, password.as_deref(), hash_key),
        };
        match outcome {
            Ok(mut entry) => {
                for (alias, why) in settlement.dropped_aliases.remove(&name).unwrap_or_default() {
                    warnings.push(format!(
                        "Mailbox {name}: alias {alias} left out ({}): {}",
                        why.reason.as_str(),
                        why.message
                    ));
                    entry.aliases.retain(|a| *a != alias);
                }
                resolved.push(entry);
            }
            Err(exclusion) => warnings.push(format!(
                "Mailbox {name} left out ({}): {}",
                exclusion.reason.as_str(),
                exclusion.message
            )),
        }
    }
    (resolved, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The daemons' groups come from the runtime the tests run the daemons in.
    fn test_options() -> Options {
        Options {
            runtime: Runtime::from_env().expect("POSTWARDEN_ROOT"),
            ..Options::default()
        }
    }

    const FILE: &str = r#"
apiVersion: postwarden.dev/v1alpha1
kind: MailDomain
metadata: {name: lab, namespace: mail}
spec: {domain: lab.example, imap: {replicas: 2}}
---
apiVersion: postwarden.dev/v1alpha1
kind: Mailbox
metadata: {name: alice, namespace: mail}
spec: {domainRef: {name: lab}, localPart: alice, passwordSecretRef: {name: alice}}
---
apiVersion: v1
kind: Secret
metadata: {name: alice, namespace: mail}
stringData: {password: first-password}
"#;

    fn inputs(text: &str) -> Inputs {
        let mut inputs = Inputs::default();
        crate::manifest::load_str(std::path::Path::new("test.yaml"), text, &mut inputs).unwrap();
        inputs
    }

    fn changed_dirs(applied: &Applied, layout: &Layout) -> Vec<String> {
        let root = layout.root.display().to_string();
        applied
            .changed
            .iter()
            .map(|d| d.trim_start_matches(&root).to_string())
            .collect()
    }

    #[test]
    fn applies_like_the_operator_and_only_rewrites_what_changed() {
        let dir = std::env::temp_dir().join(format!(
            "postwarden-apply-{}-{}",
            std::process::id(),
            Timestamp::now().as_nanosecond()
        ));
        let layout = Layout::local(&dir, 20_000, 2);
        let store = Store::new(&dir, Some("mail".into()));
        let now = Timestamp::now();
        let first = inputs(FILE);
        let md = the_domain(&first).unwrap();

        let applied = apply(&first, md, &layout, &store, test_options(), now).unwrap();
        assert_eq!(applied.changed.len(), 6, "every volume written");
        for file in [
            "main.cf",
            "dovecot-1.conf",
            "rspamd.conf",
            "mta-entrypoint.sh",
        ] {
            assert!(layout.config_dir().join(file).is_file(), "{file}");
        }
        let shards = std::fs::read_dir(layout.users_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".passwd")
            })
            .count();
        assert_eq!(shards, USER_SHARDS);
        let address = "alice@lab.example";
        let shard = std::fs::read_to_string(
            layout
                .users_dir()
                .join(userdb::shard_file_name(userdb::shard_of(address))),
        )
        .unwrap();
        assert!(
            shard.starts_with("alice@lab.example:{SHA512-CRYPT}$6$"),
            "{shard}"
        );
        assert!(!shard.contains("first-password"));
        assert!(applied.trust_bundle.contains("BEGIN CERTIFICATE"));
        assert!(applied.dns_zone.contains("._domainkey.lab.example."));

        // The same input again: keys and hashes are kept, nothing is rewritten.
        let again = apply(&first, md, &layout, &store, test_options(), now).unwrap();
        assert!(again.changed.is_empty(), "{:?}", again.changed);
        assert_eq!(again.dns_zone, applied.dns_zone);

        // A new password touches the users database only.
        let second = inputs(&FILE.replace("first-password", "second-password"));
        let md2 = the_domain(&second).unwrap();
        let changed = apply(&second, md2, &layout, &store, test_options(), now).unwrap();
        assert_eq!(changed_dirs(&changed, &layout), ["/etc/postwarden/users"]);

        // A rotated certificate touches the TLS Secret only, from the same CA.
        let tls_before = std::fs::read_to_string(layout.tls_dir().join("tls.crt")).unwrap();
        let rotate = Options {
            rotate_certificate: true,
            ..test_options()
        };
        let rotated = apply(&second, md2, &layout, &store, rotate, now).unwrap();
        assert_eq!(changed_dirs(&rotated, &layout), ["/etc/postwarden/tls"]);
        let tls_after = std::fs::read_to_string(layout.tls_dir().join("tls.crt")).unwrap();
        assert_ne!(tls_before, tls_after);
        assert_eq!(rotated.trust_bundle, applied.trust_bundle);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn mailboxes_left_out_are_named_as_the_operator_would() {
        let text = FILE.replace(
            "metadata: {name: alice, namespace: mail}\nstringData",
            "metadata: {name: other, namespace: mail}\nstringData",
        ) + r#"
---
apiVersion: postwarden.dev/v1alpha1
kind: Mailbox
metadata: {name: bob, namespace: mail}
spec: {domainRef: {name: lab}, localPart: bob, aliases: [alice], passwordSecretRef: {name: other}}
"#;
        let inputs = inputs(&text);
        let md = the_domain(&inputs).unwrap();
        let (resolved, warnings) = resolve_mailboxes(&inputs, md, "key");
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].local_part, "bob");
        assert!(
            resolved[0].aliases.is_empty(),
            "alice is a local part, not bob's alias"
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let has = |prefix: &str| warnings.iter().any(|w| w.starts_with(prefix));
        assert!(
            has("Mailbox alice left out (PasswordSecretMissing)"),
            "{warnings:?}"
        );
        assert!(
            has("Mailbox bob: alias alice left out (AddressConflict)"),
            "{warnings:?}"
        );
    }

    #[test]
    fn exactly_one_domain_is_required() {
        let none = the_domain(&Inputs::default()).unwrap_err().to_string();
        assert!(none.contains("no MailDomain"), "{none}");
    }
}
