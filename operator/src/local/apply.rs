//! What the operator does for one MailDomain, done to DIR instead of the Kubernetes API: keep
//! or make the keys (CA, serving certificate, DKIM, internal passwords), build the users
//! database, render every configuration file, and write each ConfigMap and Secret into the
//! directory the pods mount it at ([`Layout`]).

use std::collections::BTreeMap;

use anyhow::Context as _;
use jiff::Timestamp;
use kube::ResourceExt;

use crate::api::{quantity, MailDomain};
use crate::config::{self, Layout, USER_SHARDS};
use crate::manifest::Inputs;
use crate::names::DomainNames;
use crate::render::OfflineState;
use crate::resources::keys;
use crate::resources::pod::{CONFIG_MODE, SECRET_MODE};
use crate::resources::secret::InternalSecrets;
use crate::userdb::{self, ResolvedMailbox};

use super::store::Store;
use super::volume::{self, Payload};

/// Local users standing in for a pod's `fsGroup`: mounted Secret files are mode 0440, so the
/// group must be the one of the unprivileged daemon process that reads them.
const DOVECOT_GROUP: &str = "dovecot";
const RSPAMD_GROUP: &str = "_rspamd";

/// What to change beyond what the inputs ask for.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Issue a new serving certificate now, as the operator does before the old one expires.
    pub rotate_certificate: bool,
}

/// The result of one apply.
pub struct Applied {
    /// Every CA certificate a client must trust (PEM), empty when the domain brings its own.
    pub trust_bundle: String,
    /// The domain's DNS records in zone-file syntax, including the DKIM keys in use.
    pub dns_zone: String,
    /// Volumes (by mount directory) whose content changed.
    pub changed: Vec<String>,
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
    let mailboxes = resolve_mailboxes(inputs, md, internal.hash_key.as_bytes())?;
    let users = userdb::build(&md.spec, &mailboxes);

    let mut config_files = BTreeMap::new();
    for files in [
        config::postfix::render(md, layout),
        config::rspamd::render(md, layout),
        config::dovecot::render(md, layout),
        config::dovecot_auth::render(md, layout),
        config::scripts::render(md, layout),
    ] {
        for (name, content) in files {
            if config_files.insert(name.clone(), content).is_some() {
                anyhow::bail!("two renderers produce the configuration file {name}");
            }
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
        let gid = group.map(group_id).transpose()?;
        let outcome = volume::write(&dir, &payload, mode, gid)
            .with_context(|| format!("writing {}", dir.display()))?;
        if outcome == volume::Outcome::Updated {
            changed.push(dir.display().to_string());
        }
    }
    Ok(Applied {
        trust_bundle,
        dns_zone: crate::render::domain_zone(md, &state),
        changed,
    })
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

/// The gid of a local group.
fn group_id(name: &str) -> anyhow::Result<u32> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: getgrnam reads a NUL-terminated name; the result is used before any other call
    // that could overwrite its static buffer.
    let group = unsafe { libc::getgrnam(cname.as_ptr()) };
    if group.is_null() {
        anyhow::bail!(
            "the group {name} does not exist (it comes with the Debian mail daemon packages)"
        );
    }
    // SAFETY: non-null pointer to a valid `struct group`.
    Ok(unsafe { (*group).gr_gid })
}

/// The Mailboxes of `md` with their passwords read from their Secrets and hashed.
fn resolve_mailboxes(
    inputs: &Inputs,
    md: &MailDomain,
    salt_key: &[u8],
) -> anyhow::Result<Vec<ResolvedMailbox>> {
    let namespace = md.namespace();
    let domain = md.spec.domain.to_ascii_lowercase();
    let mut out = Vec::new();
    for mb in &inputs.mailboxes {
        if mb.spec.domain_ref.name != md.name_any() || mb.namespace() != namespace {
            continue;
        }
        let what = || format!("Mailbox {}", mb.name_any());
        let secret_ref = &mb.spec.password_secret_ref;
        let secret = inputs
            .secrets
            .iter()
            .find(|s| {
                s.metadata.name.as_deref() == Some(&secret_ref.name) && s.namespace() == namespace
            })
            .with_context(|| {
                format!(
                    "{}: password Secret {} is not in the input",
                    what(),
                    secret_ref.name
                )
            })?;
        let password = crate::pki::secret_text(secret)
            .remove(&secret_ref.key)
            .with_context(|| {
                format!(
                    "{}: Secret {} has no key {}",
                    what(),
                    secret_ref.name,
                    secret_ref.key
                )
            })?;
        let local_part = mb.spec.normalized_local_part();
        let address = format!("{local_part}@{domain}");
        let password_hash = userdb::hash_password(&password, salt_key, &address)
            .with_context(|| format!("{}: password", what()))?;
        let quota_bytes = match &mb.spec.quota {
            Some(q) => Some(
                quantity::to_bytes(q)
                    .with_context(|| format!("{}: quota {:?} is not a quantity", what(), q.0))?,
            ),
            None => None,
        };
        out.push(ResolvedMailbox {
            local_part,
            password_hash,
            aliases: mb.spec.aliases.clone(),
            forward_to: mb.spec.forward_to.clone(),
            keep_copy: mb.spec.keep_copy,
            quota_bytes,
            suspended: mb.spec.suspended,
        });
    }
    Ok(out)
}
