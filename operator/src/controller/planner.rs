//! The production [`Planner`]: advances the generated state ([`super::state`]), hashes the
//! Mailboxes' passwords (remembering hashes between reconciles), and calls the pure
//! [`crate::plan::desired`].
//!
//! Password hashes are deterministic (see [`crate::userdb::password::hash_password`]) but cost
//! a few milliseconds each, which at thousands of Mailboxes would dominate every reconcile. So
//! each hash is kept under a digest of (salt key, address, password) — never the password —
//! for as long as the domain uses it, and passed back to the plan as a ready hash. New hashes
//! are computed on every core.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use kube::ResourceExt;
use sha2::{Digest, Sha256};

use super::desired::{Desired, Planner, Resolved};
use super::kinds::{Child, ChildError};
use super::state::{self, Tls};
use super::status::MailboxState;
use crate::api::Mailbox;
use crate::plan::{self, DomainInputs, Exclusion, ExclusionReason, MailboxInput, TlsMaterial};
use crate::resources::images::Images;
use crate::userdb::ResolvedMailbox;

type Digest32 = [u8; 32];

/// Computes desired states for the controller.
pub struct DomainPlanner {
    /// The images of pods whose spec names none.
    pub images: Images,
    /// Per MailDomain (namespace/name): password digest → hash, as used by its last plan.
    hashes: Mutex<HashMap<String, HashMap<Digest32, String>>>,
}

impl DomainPlanner {
    pub fn new(images: Images) -> Self {
        Self {
            images,
            hashes: Mutex::default(),
        }
    }
}

fn password_digest(salt_key: &str, address: &str, password: &str) -> Digest32 {
    let mut h = Sha256::new();
    for part in [salt_key, address, password] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize().into()
}

/// One Mailbox on its way into the plan.
enum Pending<'a> {
    Done(Result<ResolvedMailbox, Exclusion>),
    /// A cached hash: resolving passes it through without hashing.
    Cached {
        digest: Digest32,
        hash: String,
    },
    /// A password still to hash.
    Hash {
        digest: Digest32,
        password: &'a str,
    },
}

impl Planner for DomainPlanner {
    fn desired(&self, r: &Resolved) -> Result<Desired, String> {
        let md = &r.domain;
        let namespace = md.namespace().unwrap_or_else(|| "default".into());
        let domain_key = format!("{namespace}/{}", md.name_any());
        let state = state::advance(md, &namespace, &r.secrets, r.now, &mut rand::thread_rng())?;
        let salt_key = state.internal.hash_key.as_str();
        let domain = md.spec.domain.as_str();

        let previous = self
            .hashes
            .lock()
            .expect("hash cache lock")
            .remove(&domain_key)
            .unwrap_or_default();
        let mut pending: Vec<(&Mailbox, Pending<'_>)> = r
            .mailboxes
            .iter()
            .map(|input| {
                let mb = &input.mailbox;
                let p = match &input.password {
                    Err(message) => Pending::Done(Err(Exclusion {
                        reason: ExclusionReason::PasswordSecretMissing,
                        message: message.clone(),
                    })),
                    Ok(bytes) => match std::str::from_utf8(&bytes.0) {
                        Err(_) => Pending::Done(Err(Exclusion {
                            reason: ExclusionReason::PasswordInvalid,
                            message: format!(
                                "Secret {} key {}: the password is not UTF-8 text",
                                mb.spec.password_secret_ref.name, mb.spec.password_secret_ref.key
                            ),
                        })),
                        Ok(password) => {
                            let digest =
                                password_digest(salt_key, &plan::address(mb, domain), password);
                            match previous.get(&digest) {
                                Some(hash) => Pending::Cached {
                                    digest,
                                    hash: hash.clone(),
                                },
                                None => Pending::Hash { digest, password },
                            }
                        }
                    },
                };
                (mb, p)
            })
            .collect();
        drop(previous);

        hash_all(&mut pending, domain, salt_key);
        let mut used = HashMap::new();
        let mut mailboxes = Vec::with_capacity(pending.len());
        for (mb, p) in pending {
            let resolved = match p {
                Pending::Done(result) => result,
                Pending::Cached { digest, hash } => {
                    let result = plan::resolve_mailbox(mb, domain, Some(&hash), salt_key);
                    used.insert(digest, hash);
                    result
                }
                Pending::Hash { .. } => unreachable!("hash_all resolves every password"),
            };
            mailboxes.push(MailboxInput {
                mailbox: mb,
                resolved,
            });
        }
        self.hashes
            .lock()
            .expect("hash cache lock")
            .insert(domain_key, used);

        let tls = match &state.tls {
            Tls::Internal { ca, serving } => TlsMaterial::Internal {
                ca: ca.clone(),
                serving: serving.clone(),
            },
            Tls::CertManager { secret_name } => TlsMaterial::CertManager {
                secret_name: secret_name.clone(),
            },
            Tls::Existing { secret_name } => TlsMaterial::Existing {
                secret_name: secret_name.clone(),
            },
        };
        let children = plan::desired(&DomainInputs {
            md,
            namespace: &namespace,
            mailboxes,
            tls,
            dkim: &state.dkim,
            internal: &state.internal,
            images: Images::for_spec(&md.spec, &self.images),
            continuity_recipients: r.continuity_recipients.clone(),
        })
        .map_err(|e| e.to_string())?;

        let mut excluded = BTreeMap::new();
        let mut in_db = 0;
        for outcome in &children.mailboxes {
            match (&outcome.exclusion, outcome.dropped_aliases.as_slice()) {
                (Some(e), _) => {
                    excluded.insert(outcome.name.clone(), exclusion_state(e));
                }
                (None, []) => in_db += 1,
                (None, dropped) => {
                    in_db += 1;
                    let why: Vec<String> = dropped.iter().map(|(_, e)| e.message.clone()).collect();
                    excluded.insert(
                        outcome.name.clone(),
                        MailboxState::AliasesDropped(why.join("; ")),
                    );
                }
            }
        }
        let objects = children
            .in_apply_order()
            .into_iter()
            .map(|c| match c {
                plan::Child::ServiceAccount(o) => Child::from_typed(o),
                plan::Child::Secret(o) => Child::from_typed(o),
                plan::Child::ConfigMap(o) => Child::from_typed(o),
                plan::Child::Service(o) => Child::from_typed(o),
                plan::Child::NetworkPolicy(o) => Child::from_typed(o),
                plan::Child::PodDisruptionBudget(o) => Child::from_typed(o),
                plan::Child::StatefulSet(o) => Child::from_typed(o),
                plan::Child::CronJob(o) => Child::from_typed(o),
                plan::Child::Dynamic(o) => Child::from_dynamic(o),
            })
            .collect::<Result<Vec<_>, ChildError>>()
            .map_err(|e| e.to_string())?;

        Ok(Desired {
            children: objects,
            excluded,
            mailboxes: in_db,
            certificate: Some(state.certificate.clone()),
            dkim: state.dkim_status.clone(),
            dns_records: crate::dns::records(md, &state.dkim.published()),
            scheduled: state.scheduled.clone(),
            changes: state.changes.clone(),
        })
    }
}

/// Replaces every [`Pending::Hash`] with its resolution (and leaves the digest in a
/// [`Pending::Cached`] on success), spreading the hashing over the available cores.
fn hash_all(pending: &mut [(&Mailbox, Pending<'_>)], domain: &str, salt_key: &str) {
    let mut work: Vec<&mut (&Mailbox, Pending<'_>)> = pending
        .iter_mut()
        .filter(|(_, p)| matches!(p, Pending::Hash { .. }))
        .collect();
    if work.is_empty() {
        return;
    }
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(work.len());
    let chunk = work.len().div_ceil(threads);
    std::thread::scope(|scope| {
        for part in work.chunks_mut(chunk) {
            scope.spawn(move || {
                for item in part.iter_mut() {
                    let (mb, p) = &mut **item;
                    let Pending::Hash { digest, password } = p else {
                        continue;
                    };
                    let digest = *digest;
                    *p = match plan::resolve_mailbox(mb, domain, Some(password), salt_key) {
                        Ok(entry) => Pending::Cached {
                            digest,
                            hash: entry.password_hash,
                        },
                        Err(e) => Pending::Done(Err(e)),
                    };
                }
            });
        }
    });
}

fn exclusion_state(e: &Exclusion) -> MailboxState {
    match e.reason {
        ExclusionReason::AddressConflict => MailboxState::AddressConflict(e.message.clone()),
        ExclusionReason::PasswordSecretMissing => {
            MailboxState::PasswordSecretMissing(e.message.clone())
        }
        ExclusionReason::PasswordInvalid => MailboxState::PasswordInvalid(e.message.clone()),
    }
}
