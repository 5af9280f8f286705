//! Everything one MailDomain needs, computed purely from its spec, its Mailboxes and the
//! state kept in its Secrets: [`desired`] turns [`DomainInputs`] into [`Children`].
//!
//! The controller reads the cluster, fills the inputs, calls [`desired`], adds the owner
//! reference ([`Children::owned_by`]) and applies [`Children::in_apply_order`];
//! `postwarden render` does the same with generated state and prints the objects.
//!
//! What rolls pods and what does not: the pod templates carry a checksum of the rendered
//! configuration ConfigMaps only. The users database, address maps, certificates and DKIM keys
//! are Secrets/ConfigMaps the daemons re-read in place, so a Mailbox or a certificate renewal
//! never restarts a pod.

pub mod addresses;
pub mod children;

use kube::ResourceExt;

use crate::api::{quantity, MailDomain, Mailbox};
use crate::dkim::DkimState;
use crate::pki::{CaState, CertKeyPair};
use crate::resources::images::Images;
use crate::resources::secret::InternalSecrets;
use crate::resources::{
    certificate, config_map, imap, mta, network_policy, pdb, secret, service, service_account,
    Domain,
};
use crate::userdb::{self, ResolvedMailbox};

pub use addresses::{Exclusion, ExclusionReason};
pub use children::{Child, Children, MailboxOutcome};

/// Everything [`desired`] needs to know about one MailDomain.
#[derive(Clone, Debug)]
pub struct DomainInputs<'a> {
    pub md: &'a MailDomain,
    /// The MailDomain's namespace (where every child goes).
    pub namespace: &'a str,
    /// Every Mailbox whose `domainRef` names this MailDomain, resolved or not.
    pub mailboxes: Vec<MailboxInput<'a>>,
    /// Where the serving certificate comes from.
    pub tls: TlsMaterial,
    /// The DKIM keys: the active one signs, all are published.
    pub dkim: &'a DkimState,
    /// The `<md>-internal` Secret's contents (generated once when absent).
    pub internal: &'a InternalSecrets,
    /// The images of this domain's pods ([`Images::for_spec`]).
    pub images: Images,
    /// The text of `spec.continuity.recipients.configMapRef` (one address per line), or why it
    /// could not be read; `None` when the spec names no ConfigMap.
    pub continuity_recipients: Option<Result<String, String>>,
}

/// One Mailbox and its users-database entry.
#[derive(Clone, Debug)]
pub struct MailboxInput<'a> {
    pub mailbox: &'a Mailbox,
    /// The entry (password already hashed, see [`resolve_mailbox`]), or why there is none.
    pub resolved: Result<ResolvedMailbox, Exclusion>,
}

/// The serving certificate, by `spec.tls` mode.
#[derive(Clone, Debug)]
pub enum TlsMaterial {
    /// The internal CA (kept in `<md>-ca`) and the serving pair it signed (kept in `<md>-tls`).
    Internal { ca: CaState, serving: CertKeyPair },
    /// cert-manager issues into this Secret (`<md>-tls`) from the Certificate the plan creates.
    CertManager { secret_name: String },
    /// The user's own `kubernetes.io/tls` Secret, mounted as it is.
    Existing { secret_name: String },
}

impl TlsMaterial {
    /// The material for `md` when it needs no operator-made certificate: cert-manager's Secret
    /// or the user's. `None` means the internal CA, whose state the caller reads or creates.
    pub fn external(md: &MailDomain) -> Option<Self> {
        let tls = &md.spec.tls;
        if let Some(name) = &tls.secret_name {
            return Some(TlsMaterial::Existing {
                secret_name: name.clone(),
            });
        }
        tls.cert_manager.as_ref().map(|_| TlsMaterial::CertManager {
            secret_name: crate::names::DomainNames::new(&md.name_any()).tls(),
        })
    }

    /// The Secret the pods mount as `tls.crt`/`tls.key`/`ca.crt`.
    pub fn secret_name(&self, domain: &Domain) -> String {
        match self {
            TlsMaterial::Internal { .. } => domain.names.tls(),
            TlsMaterial::CertManager { secret_name } | TlsMaterial::Existing { secret_name } => {
                secret_name.clone()
            }
        }
    }
}

/// The users-database entry of `mailbox` at `domain`, from the password value of its Secret
/// (`None`: the Secret or key is missing). The password is hashed with `hash_key` (the
/// `<md>-internal` Secret's), so the same password always gives the same hash.
pub fn resolve_mailbox(
    mailbox: &Mailbox,
    domain: &str,
    password: Option<&str>,
    hash_key: &str,
) -> Result<ResolvedMailbox, Exclusion> {
    let spec = &mailbox.spec;
    let secret = &spec.password_secret_ref;
    let password = password.ok_or_else(|| Exclusion {
        reason: ExclusionReason::PasswordSecretMissing,
        message: format!(
            "password Secret {} (key {}) not found",
            secret.name, secret.key
        ),
    })?;
    let address = address(mailbox, domain);
    let password_hash =
        userdb::hash_password(password, hash_key.as_bytes(), &address).map_err(|e| Exclusion {
            reason: ExclusionReason::PasswordInvalid,
            message: format!("Secret {} key {}: {e}", secret.name, secret.key),
        })?;
    Ok(ResolvedMailbox {
        local_part: spec.normalized_local_part(),
        password_hash,
        aliases: spec
            .aliases
            .iter()
            .map(|a| a.to_ascii_lowercase())
            .collect(),
        forward_to: spec.forward_to.clone(),
        keep_copy: spec.keep_copy,
        quota_bytes: spec.quota.as_ref().and_then(quantity::to_bytes),
        suspended: spec.suspended,
    })
}

/// `localpart@domain`, lowercase.
pub fn address(mailbox: &Mailbox, domain: &str) -> String {
    format!(
        "{}@{}",
        mailbox.spec.normalized_local_part(),
        domain.to_ascii_lowercase()
    )
}

/// Most bytes of data (keys and values) the API server accepts in one ConfigMap or Secret.
pub const MAX_DATA_BYTES: usize = 1024 * 1024;

/// Why [`desired`] could not build the children.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The further continuity recipients cannot be read or hold something that is no address.
    #[error("spec.continuity.recipients.configMapRef: {0}")]
    ContinuityRecipients(String),
    /// A DKIM key of the state cannot be written in the signer's form.
    #[error("DKIM keys: {0}")]
    Dkim(#[from] crate::dkim::DkimError),
    /// A ConfigMap or Secret would be refused by the API server for its size (said here, by
    /// name, rather than as an opaque API error on apply).
    #[error("{kind} {name} would hold {bytes} bytes of data, more than the {MAX_DATA_BYTES} Kubernetes accepts")]
    TooLarge {
        kind: &'static str,
        name: String,
        bytes: usize,
    },
}

/// The text under `key` of a ConfigMap, or why there is none.
pub fn config_map_key(
    cm: &k8s_openapi::api::core::v1::ConfigMap,
    key: &str,
) -> Result<String, String> {
    let name = cm.metadata.name.as_deref().unwrap_or_default();
    cm.data
        .as_ref()
        .and_then(|d| d.get(key))
        .cloned()
        .ok_or_else(|| format!("ConfigMap {name} has no key {key:?}"))
}

/// Adds the ConfigMap's further continuity recipients to the users database; a ConfigMap that
/// is missing or lists something that is no address stops the plan (the running configuration
/// stays as it is).
pub fn continuity_recipients(
    users: &mut userdb::UsersDb,
    text: Option<&Result<String, String>>,
) -> Result<(), PlanError> {
    match text {
        None => Ok(()),
        Some(Err(e)) => Err(PlanError::ContinuityRecipients(e.clone())),
        Some(Ok(text)) => {
            let bad = users.set_continuity_recipients(text);
            if bad.is_empty() {
                return Ok(());
            }
            let shown: Vec<String> = bad.iter().take(3).map(|b| format!("{b:?}")).collect();
            Err(PlanError::ContinuityRecipients(format!(
                "{} line(s) are not email addresses: {}",
                bad.len(),
                shown.join(", ")
            )))
        }
    }
}

/// Every child of the MailDomain, and the fate of each of its Mailboxes.
pub fn desired(inputs: &DomainInputs<'_>) -> Result<Children, PlanError> {
    let md = inputs.md;
    let domain = Domain::new(md, inputs.namespace);
    let layout = domain.layout();

    let mailboxes = mailbox_outcomes(inputs);
    let included: Vec<ResolvedMailbox> = inputs
        .mailboxes
        .iter()
        .zip(&mailboxes)
        .filter(|(_, outcome)| outcome.exclusion.is_none())
        .filter_map(|(input, outcome)| {
            let mut resolved = input.resolved.clone().ok()?;
            resolved
                .aliases
                .retain(|a| !outcome.dropped_aliases.iter().any(|(d, _)| d == a));
            Some(resolved)
        })
        .collect();
    let mut users = userdb::build(&md.spec, &included);
    continuity_recipients(&mut users, inputs.continuity_recipients.as_ref())?;

    let mta_config = config_map::build_mta_config(&domain, crate::config::mta_files(md, &layout));
    let imap_config =
        config_map::build_imap_config(&domain, crate::config::imap_files(md, &layout));
    let maps = config_map::build_maps(&domain, &users);
    let mta_checksum = config_map::checksum([&mta_config]);
    let imap_checksum = config_map::checksum([&imap_config]);

    let mut secrets = secret::build_users(&domain, &users.shards);
    secrets.push(secret::build_internal(&domain, inputs.internal));
    secrets.push(secret::build_dkim(
        &domain,
        inputs.dkim.to_secret_data(&md.spec)?,
    ));
    let mut certificates = Vec::new();
    match &inputs.tls {
        TlsMaterial::Internal { ca, serving } => {
            secrets.push(secret::build_ca(&domain, ca.to_secret_data()));
            secrets.push(secret::build_tls(
                &domain,
                crate::pki::serving_secret_data(serving, &ca.trust_bundle()),
            ));
        }
        TlsMaterial::CertManager { .. } => {
            if let Some(cm) = &md.spec.tls.cert_manager {
                certificates.push(certificate::build(
                    &domain,
                    cm,
                    &certificate::dns_names(&domain),
                ));
            }
        }
        TlsMaterial::Existing { .. } => {}
    }
    let tls_secret = inputs.tls.secret_name(&domain);

    let dns_endpoints = if md.spec.dns.external_dns {
        let records = crate::dns::records(md, &inputs.dkim.published());
        let mut endpoint = crate::dns::dns_endpoint(md, &records);
        endpoint.metadata.namespace = Some(inputs.namespace.to_string());
        endpoint.metadata.owner_references = None;
        vec![endpoint]
    } else {
        Vec::new()
    };

    let mut config_maps = vec![mta_config, imap_config];
    config_maps.extend(maps);
    check_sizes(&config_maps, &secrets)?;

    Ok(Children {
        service_account: Some(service_account::build(&domain)),
        secrets,
        config_maps,
        certificates,
        services: vec![
            service::build_mta_headless(&domain),
            service::build_mta(&domain),
            service::build_imap_headless(&domain),
            service::build_imap(&domain),
        ],
        network_policies: vec![
            network_policy::build_mta(&domain),
            network_policy::build_imap(&domain),
        ],
        pod_disruption_budgets: vec![pdb::build_mta(&domain), pdb::build_imap(&domain)],
        stateful_sets: vec![
            mta::build(
                &domain,
                &inputs.images.mta,
                &inputs.images.imap,
                mta_checksum,
                &tls_secret,
            ),
            imap::build(&domain, &inputs.images.imap, imap_checksum, &tls_secret),
        ],
        cron_jobs: crate::resources::backup::build_cronjob(
            md,
            inputs.namespace,
            &inputs.images.imap,
        )
        .into_iter()
        .collect(),
        dns_endpoints,
        mailboxes,
    })
}

/// Refuses any ConfigMap or Secret over [`MAX_DATA_BYTES`].
fn check_sizes(
    config_maps: &[k8s_openapi::api::core::v1::ConfigMap],
    secrets: &[k8s_openapi::api::core::v1::Secret],
) -> Result<(), PlanError> {
    let too_large = |kind, meta: &kube::api::ObjectMeta, bytes: usize| {
        (bytes > MAX_DATA_BYTES).then(|| PlanError::TooLarge {
            kind,
            name: meta.name.clone().unwrap_or_default(),
            bytes,
        })
    };
    for cm in config_maps {
        let bytes = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum();
        if let Some(e) = too_large("ConfigMap", &cm.metadata, bytes) {
            return Err(e);
        }
    }
    for s in secrets {
        let bytes = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.0.len())
            .sum();
        if let Some(e) = too_large("Secret", &s.metadata, bytes) {
            return Err(e);
        }
    }
    Ok(())
}

/// The outcome of every Mailbox, in input order: address conflicts first (they do not depend
/// on passwords), then each Mailbox's own resolution error.
fn mailbox_outcomes(inputs: &DomainInputs<'_>) -> Vec<MailboxOutcome> {
    let domain = &inputs.md.spec.domain;
    let all: Vec<&Mailbox> = inputs.mailboxes.iter().map(|m| m.mailbox).collect();
    let mut settlement = addresses::settle(domain, &all);
    inputs
        .mailboxes
        .iter()
        .map(|m| {
            let name = m.mailbox.name_any();
            let exclusion = settlement
                .excluded
                .remove(&name)
                .or_else(|| m.resolved.as_ref().err().cloned());
            MailboxOutcome {
                address: address(m.mailbox, domain),
                dropped_aliases: settlement.dropped_aliases.remove(&name).unwrap_or_default(),
                exclusion,
                name,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
