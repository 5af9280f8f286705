//! Reconcile of a MailDomain, as a pipeline:
//! resolve (domain, Mailboxes, password Secrets, state Secrets) → validate → build (pure) →
//! apply (server-side apply, by phase) → prune (children no longer desired, never claims) →
//! Mailbox statuses → MailDomain status → requeue at the next scheduled change.
//!
//! A spec that cannot be served stops the pipeline after validation: a Degraded condition and
//! an Event say why, and nothing is applied or deleted. Every write is skipped when the object
//! is already as desired.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::{stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use tracing::Instrument;

use super::apply;
use super::context::Context;
use super::continuity;
use super::desired::{MailboxInput, Resolved, SecretBytes};
use super::error::Error;
use super::informers::{DomainObj, MailboxObj};
use super::kinds::ChildKind;
use super::status::{
    self, reason, Backups, DomainObservation, MailboxState, Outcome, Upstream, Workload,
};
use crate::api::conditions;
use crate::api::{validate, MailDomain, Mailbox};
use crate::names::DomainNames;

const KIND: &str = "MailDomain";
/// Mailbox status writes in flight at once.
const STATUS_CONCURRENCY: usize = 16;
/// Secret reads in flight at once.
const READ_CONCURRENCY: usize = 16;
/// Shortest time between the starts of two reconciles of one MailDomain.
const MIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub async fn reconcile(obj: Arc<DomainObj>, ctx: Arc<Context>) -> Result<Action, Error> {
    let md = match &obj.0 {
        Ok(md) => md,
        Err(invalid) => {
            ctx.report_invalid(KIND, &MailDomain::api_version(&()), invalid)
                .await;
            return Ok(Action::await_change());
        }
    };
    let namespace = md
        .namespace()
        .ok_or(Error::MissingMetadata("metadata.namespace"))?;
    let name = md.name_any();
    let span =
        tracing::info_span!("reconcile", kind = KIND, namespace = %namespace, object = %name);
    let key = format!("{namespace}/{name}");
    ctx.pacer.start(&key, MIN_INTERVAL).await;
    let _timer = ctx.metrics.reconcile(KIND);
    let result = reconcile_domain(md, &namespace, &name, &ctx)
        .instrument(span)
        .await;
    if result.is_ok() {
        ctx.failures.reset(&key);
    }
    result
}

/// Retry delay after a failed reconcile: exponential per MailDomain.
pub fn error_policy(obj: Arc<DomainObj>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        obj.meta().namespace.as_deref().unwrap_or_default(),
        obj.meta().name.as_deref().unwrap_or_default()
    );
    let delay = ctx.failures.record(&key);
    ctx.metrics.reconcile_failed(KIND, error.metric_label());
    tracing::warn!(maildomain = %key, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_domain(
    md: &MailDomain,
    namespace: &str,
    name: &str,
    ctx: &Context,
) -> Result<Action, Error> {
    if md.metadata.deletion_timestamp.is_some() {
        // Children are collected by their owner references; claims stay.
        return Ok(Action::await_change());
    }
    let now = ctx.clock.now();

    if let Err(invalid) = validate::maildomain(name, &md.spec) {
        let message = invalid.to_string();
        tracing::warn!(error = %message, "spec cannot be served; nothing applied");
        write_status(
            ctx,
            md,
            DomainObservation::new(Outcome::InvalidSpec(message)),
        )
        .await?;
        return Ok(Action::await_change());
    }

    let started = std::time::Instant::now();
    let mailboxes = ctx.stores.mailboxes_of(namespace, name);
    let (inputs, mut states) = resolve_mailboxes(ctx, namespace, &mailboxes).await?;
    let secrets = resolve_state_secrets(ctx, namespace, md).await?;
    let continuity_recipients = read_continuity_recipients(ctx, namespace, md).await?;
    let resolved = Resolved {
        domain: md.clone(),
        mailboxes: inputs,
        secrets,
        continuity_recipients,
        now,
    };

    // Key generation and password hashing are CPU work: off the async threads.
    let planner = ctx.planner.clone();
    let planned = tokio::task::spawn_blocking(move || planner.desired(&resolved))
        .await
        .unwrap_or_else(|e| Err(format!("computing the desired state panicked: {e}")));
    let resolved_at = started.elapsed();
    let desired = match planned {
        Ok(d) => d,
        Err(message) => {
            let obs = DomainObservation::new(Outcome::Failed {
                reason: reason::PLAN_FAILED,
                message: message.clone(),
            });
            write_status(ctx, md, obs).await?;
            return Err(Error::Plan(message));
        }
    };
    for (mailbox, state) in &desired.excluded {
        states.insert(mailbox.clone(), state.clone());
    }

    let owner = md
        .controller_owner_ref(&())
        .ok_or(Error::MissingMetadata("metadata.uid"))?;
    let applied = async {
        let (to_apply, claims) = apply::settle_claims(ctx, namespace, &desired.children).await?;
        let report = apply::apply_children(ctx, namespace, name, &owner, &to_apply).await?;
        Ok::<_, Error>((report, claims))
    };
    let (report, claims) = match applied.await {
        Ok(r) => r,
        Err(e) => {
            let obs = DomainObservation::new(Outcome::Failed {
                reason: reason::APPLY_FAILED,
                message: e.to_string(),
            });
            write_status(ctx, md, obs).await?;
            return Err(e);
        }
    };
    if !report.applied.is_empty() {
        ctx.publish(
            &md.object_ref(&()),
            EventType::Normal,
            "Applied",
            "Apply",
            format!("created or updated {}", summarize(&report.applied)),
        )
        .await;
    }
    if !desired.changes.is_empty() {
        ctx.publish(
            &md.object_ref(&()),
            EventType::Normal,
            "StateRotated",
            "Apply",
            desired.changes.join("; "),
        )
        .await;
    }
    if !claims.grown.is_empty() {
        let mut note = format!("asked volumes to grow: {}", claims.grown.join(", "));
        if !claims.recreating.is_empty() {
            note.push_str(&format!(
                "; recreating StatefulSet {} with the new size, its pods keep running",
                claims.recreating.join(", ")
            ));
        }
        ctx.publish(
            &md.object_ref(&()),
            EventType::Normal,
            "VolumesGrowing",
            "Apply",
            note,
        )
        .await;
    }
    let deleted = apply::prune(ctx, namespace, name, &owner.uid, &desired.children).await?;
    if !deleted.is_empty() {
        ctx.publish(
            &md.object_ref(&()),
            EventType::Normal,
            "Pruned",
            "Delete",
            format!("deleted {} (no longer desired)", summarize(&deleted)),
        )
        .await;
    }

    write_mailbox_statuses(ctx, md, &mailboxes, &states).await?;

    let workloads = desired
        .children
        .iter()
        .filter(|c| c.kind == ChildKind::StatefulSet)
        .map(|c| match ctx.stores.statefulset(namespace, &c.name) {
            Some(sts) => Workload::of(&sts),
            None => Workload {
                name: c.name.clone(),
                replicas: c.object["spec"]["replicas"].as_i64().unwrap_or(1) as i32,
                ready: 0,
                rolled_out: false,
            },
        })
        .collect();
    let backup = observe_backups(ctx, md, namespace, name, now);
    let upstream = match continuity::observe(ctx, md, namespace, name).await {
        Some(condition) => Upstream::Observed(condition),
        None => Upstream::NotConfigured,
    };
    let obs = DomainObservation {
        outcome: Outcome::Applied {
            workloads,
            refused: claims.refused,
        },
        mailboxes: Some(desired.mailboxes),
        certificate: desired.certificate.clone(),
        dkim: desired.dkim.clone(),
        dns_records: Some(desired.dns_records.clone()),
        backups: match &backup {
            Some(o) => Backups::Observed(Box::new(o.clone())),
            None => Backups::NotConfigured,
        },
        upstream,
    };
    write_status(ctx, md, obs).await?;
    if let Some(o) = backup {
        ctx.metrics.set_backup(namespace, name, &o.metrics);
        if let Some(e) = o.event {
            let type_ = event_type(e.warning);
            ctx.publish(&md.object_ref(&()), type_, e.reason, "Backup", e.note)
                .await;
        }
    } else {
        ctx.metrics.clear_backup(namespace, name);
    }
    tracing::debug!(
        mailboxes = mailboxes.len(),
        applied = report.applied.len(),
        unchanged = report.unchanged,
        resolve_and_plan_ms = resolved_at.as_millis() as u64,
        total_ms = started.elapsed().as_millis() as u64,
        "reconciled"
    );
    let mut wait = status::requeue_after(now, desired.scheduled.iter().copied(), ctx.resync);
    if let Some(poll) = continuity::poll_interval(md) {
        wait = wait.min(poll);
    }
    Ok(Action::requeue(wait))
}

/// What the backup CronJob's Jobs say, or `None` when the spec has no backups.
fn observe_backups(
    ctx: &Context,
    md: &MailDomain,
    namespace: &str,
    name: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> Option<crate::backup::observe::Observation> {
    let cronjob = ctx
        .stores
        .child_meta(
            ChildKind::CronJob,
            namespace,
            &DomainNames::new(name).backup(),
        )
        .map(|metadata| k8s_openapi::api::batch::v1::CronJob {
            metadata,
            ..Default::default()
        });
    let (jobs, pods) = ctx.stores.backup_runs(namespace, name);
    crate::backup::observe::observe_domain(md, cronjob.as_ref(), &jobs, &pods, now)
}

fn summarize(objects: &[(ChildKind, String)]) -> String {
    const SHOWN: usize = 8;
    let mut parts: Vec<String> = objects
        .iter()
        .take(SHOWN)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if objects.len() > SHOWN {
        parts.push(format!("and {} more", objects.len() - SHOWN));
    }
    parts.join(", ")
}

/// Splits the domain's Mailboxes into usable inputs and those that cannot be served yet.
async fn resolve_mailboxes(
    ctx: &Context,
    namespace: &str,
    mailboxes: &[Arc<MailboxObj>],
) -> Result<(Vec<MailboxInput>, BTreeMap<String, MailboxState>), Error> {
    let mut states = BTreeMap::new();
    let mut candidates: Vec<&Mailbox> = Vec::new();
    for m in mailboxes {
        let Ok(mb) = &m.0 else { continue };
        match validate::mailbox(&mb.spec) {
            Ok(()) => candidates.push(mb),
            Err(invalid) => {
                states.insert(
                    mb.name_any(),
                    MailboxState::InvalidSpec(invalid.to_string()),
                );
            }
        }
    }
    let wanted: HashSet<&str> = candidates
        .iter()
        .map(|mb| mb.spec.password_secret_ref.name.as_str())
        .collect();
    prefetch_secrets(ctx, namespace, &wanted).await?;
    let reads: Vec<_> = candidates
        .into_iter()
        .map(|mb| async move {
            let secret_ref = &mb.spec.password_secret_ref;
            let secret = read_secret(ctx, namespace, &secret_ref.name).await?;
            let value = secret.as_ref().and_then(|s| {
                s.data
                    .as_ref()
                    .and_then(|d| d.get(&secret_ref.key))
                    .map(|b| b.0.clone())
                    .or_else(|| {
                        s.string_data
                            .as_ref()
                            .and_then(|d| d.get(&secret_ref.key))
                            .map(|v| v.clone().into_bytes())
                    })
            });
            let password = match (secret.is_some(), value) {
                (_, Some(v)) => Ok(SecretBytes(v)),
                (true, None) => Err(format!(
                    "Secret {:?} has no key {:?}",
                    secret_ref.name, secret_ref.key
                )),
                (false, None) => Err(format!(
                    "Secret {:?} not found in namespace {namespace}",
                    secret_ref.name
                )),
            };
            Ok::<_, Error>(MailboxInput {
                mailbox: mb.clone(),
                password,
            })
        })
        .collect();
    let inputs = stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    Ok((inputs, states))
}

/// Above this many Secrets to read, one paged LIST of the namespace beats one GET each.
const PREFETCH_THRESHOLD: usize = 32;

/// Fills the Secret cache with a paged LIST when many of `wanted` are missing from it or
/// outdated (the first reconcile after a start, or a bulk import of Mailboxes). Only the
/// wanted Secrets are kept.
async fn prefetch_secrets(
    ctx: &Context,
    namespace: &str,
    wanted: &HashSet<&str>,
) -> Result<(), Error> {
    let stale = wanted
        .iter()
        .filter(|name| {
            ctx.stores.secret_meta(namespace, name).is_some_and(|m| {
                let rv = m.metadata.resource_version.as_deref().unwrap_or_default();
                ctx.stores.secret_data.get(namespace, name, rv).is_none()
            })
        })
        .count();
    if stale <= PREFETCH_THRESHOLD {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await.map_err(|source| Error::Read {
            what: format!("Secrets of namespace {namespace}"),
            source,
        })?;
        for secret in page.items {
            if secret
                .metadata
                .name
                .as_deref()
                .is_some_and(|n| wanted.contains(n))
            {
                ctx.stores.secret_data.put(secret);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(()),
        }
    }
}

/// Reads a Secret through the cache: from the API only when its resourceVersion changed.
async fn read_secret(
    ctx: &Context,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    let Some(meta) = ctx.stores.secret_meta(namespace, name) else {
        return Ok(None);
    };
    let rv = meta.metadata.resource_version.clone().unwrap_or_default();
    if let Some(s) = ctx.stores.secret_data.get(namespace, name, &rv) {
        return Ok(Some(s));
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(name).await {
        Ok(Some(secret)) => Ok(Some(ctx.stores.secret_data.put(secret))),
        Ok(None) => Ok(None),
        Err(source) => Err(Error::Read {
            what: format!("Secret {namespace}/{name}"),
            source,
        }),
    }
}

/// The Secrets holding the domain's generated state (internal secrets, DKIM keys, CA, serving
/// certificate), and the serving Secret the spec names. The users database is not read back:
/// it is computed from the Mailboxes every time.
async fn resolve_state_secrets(
    ctx: &Context,
    namespace: &str,
    md: &MailDomain,
) -> Result<BTreeMap<String, Secret>, Error> {
    let n = DomainNames::new(&md.name_any());
    let mut names = vec![n.ca(), n.tls(), n.dkim(), n.internal()];
    names.extend(md.spec.tls.secret_name.clone());
    let reads: Vec<_> = names
        .into_iter()
        .map(|name| async move { read_secret(ctx, namespace, &name).await.map(|s| (name, s)) })
        .collect();
    let reads = stream::iter(reads)
        .buffered(READ_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    let mut out = BTreeMap::new();
    for r in reads {
        if let (name, Some(secret)) = r? {
            out.insert(name, (*secret).clone());
        }
    }
    Ok(out)
}

/// The ConfigMap key of `spec.continuity.recipients.configMapRef`, read on every reconcile (the
/// periodic resync picks up its changes).
async fn read_continuity_recipients(
    ctx: &Context,
    namespace: &str,
    md: &MailDomain,
) -> Result<Option<Result<String, String>>, Error> {
    let Some(r) = md
        .spec
        .continuity
        .as_ref()
        .and_then(|c| c.recipients.config_map_ref.as_ref())
    else {
        return Ok(None);
    };
    let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(ctx.client.clone(), namespace);
    match api.get_opt(&r.name).await {
        Ok(Some(cm)) => Ok(Some(crate::plan::config_map_key(&cm, &r.key))),
        Ok(None) => Ok(Some(Err(format!("ConfigMap {} not found", r.name)))),
        Err(source) => Err(Error::Read {
            what: format!("ConfigMap {namespace}/{}", r.name),
            source,
        }),
    }
}

/// Writes the MailDomain status if it differs from the stored one, with an Event when Ready,
/// Degraded or CertificateReady changes.
async fn write_status(ctx: &Context, md: &MailDomain, obs: DomainObservation) -> Result<(), Error> {
    let now = ctx.clock.now();
    let generation = md.metadata.generation.unwrap_or(0);
    let current = md.status.as_ref();
    let served = obs.certificate.clone();
    let desired = status::domain_status(current, generation, obs, now);
    ctx.metrics.set_domain(
        md.namespace().as_deref().unwrap_or_default(),
        &md.name_any(),
        &desired,
    );
    let Some(patch) = status::status_patch(current, &desired) else {
        return Ok(());
    };
    let api: Api<MailDomain> = Api::namespaced(
        ctx.client.clone(),
        md.namespace().as_deref().unwrap_or_default(),
    );
    api.patch_status(
        &md.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Status {
        kind: KIND,
        name: md.name_any(),
        source,
    })?;
    ctx.metrics.write(KIND, "status");
    let before = current.map(|s| s.conditions.as_slice()).unwrap_or_default();
    let after = desired.conditions.as_slice();
    if status::transitioned(before, after, conditions::DEGRADED) {
        if let Some(c) =
            conditions::find(after, conditions::DEGRADED).filter(|c| c.status == "True")
        {
            ctx.publish(
                &md.object_ref(&()),
                EventType::Warning,
                &c.reason,
                "Reconcile",
                c.message.clone(),
            )
            .await;
        }
    }
    if status::transitioned(before, after, conditions::READY) {
        if let Some(c) = conditions::find(after, conditions::READY).filter(|c| c.status == "True") {
            ctx.publish(
                &md.object_ref(&()),
                EventType::Normal,
                "Ready",
                "Reconcile",
                c.message.clone(),
            )
            .await;
        }
    }
    if let Some(e) = crate::continuity::observe::event(before, after) {
        let type_ = event_type(e.warning);
        ctx.publish(&md.object_ref(&()), type_, e.reason, "Continuity", e.note)
            .await;
    }
    if let Some(e) = served.and_then(|c| status::certificate_event(before, after, &c, now)) {
        let type_ = event_type(e.warning);
        ctx.publish(&md.object_ref(&()), type_, e.reason, "Certificate", e.note)
            .await;
    }
    Ok(())
}

fn event_type(warning: bool) -> EventType {
    if warning {
        EventType::Warning
    } else {
        EventType::Normal
    }
}

/// Writes the status of every Mailbox of the domain whose status differs from the desired one.
async fn write_mailbox_statuses(
    ctx: &Context,
    md: &MailDomain,
    mailboxes: &[Arc<MailboxObj>],
    states: &BTreeMap<String, MailboxState>,
) -> Result<(), Error> {
    let now = ctx.clock.now();
    let writes: Vec<_> = mailboxes
        .iter()
        .filter_map(|m| m.0.as_ref().ok())
        .filter_map(|mb| {
            let state = states
                .get(&mb.name_any())
                .cloned()
                .unwrap_or(if mb.spec.suspended {
                    MailboxState::Suspended
                } else {
                    MailboxState::Ready
                });
            let address = format!("{}@{}", mb.spec.normalized_local_part(), md.spec.domain);
            let generation = mb.metadata.generation.unwrap_or(0);
            let desired = status::mailbox_status(
                mb.status.as_ref(),
                generation,
                Some(address),
                &mb.spec.domain_ref.name,
                &state,
                now,
            );
            let patch = status::status_patch(mb.status.as_ref(), &desired)?;
            Some((mb, patch, warning(mb.status.as_ref(), &desired, &state)))
        })
        .collect();
    let writes: Vec<_> =
        writes
            .into_iter()
            .map(|(mb, patch, warning)| async move {
                patch_mailbox_status(ctx, mb, &patch, warning).await
            })
            .collect();
    let results = stream::iter(writes)
        .buffer_unordered(STATUS_CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// The Warning Event (reason, note) to publish when a Mailbox's Ready condition just turned
/// False, or `None`.
pub(super) fn warning(
    before: Option<&crate::api::MailboxStatus>,
    after: &crate::api::MailboxStatus,
    state: &MailboxState,
) -> Option<(&'static str, String)> {
    if state.is_ready() {
        return None;
    }
    let before = before.map(|s| s.conditions.as_slice()).unwrap_or_default();
    if !status::transitioned(before, &after.conditions, conditions::READY) {
        return None;
    }
    let note = conditions::find(&after.conditions, conditions::READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    Some((state.reason(), note))
}

/// Writes one Mailbox status merge patch, then the Warning Event if any.
pub(super) async fn patch_mailbox_status(
    ctx: &Context,
    mb: &Mailbox,
    patch: &serde_json::Value,
    warning: Option<(&'static str, String)>,
) -> Result<(), Error> {
    let api: Api<Mailbox> = Api::namespaced(
        ctx.client.clone(),
        mb.namespace().as_deref().unwrap_or_default(),
    );
    match api
        .patch_status(
            &mb.name_any(),
            &PatchParams::default(),
            &Patch::Merge(patch),
        )
        .await
    {
        Ok(_) => ctx.metrics.write("Mailbox", "status"),
        // Deleted meanwhile: nothing to report on.
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
        Err(source) => {
            return Err(Error::Status {
                kind: "Mailbox",
                name: mb.name_any(),
                source,
            })
        }
    }
    if let Some((reason, note)) = warning {
        ctx.publish(
            &mb.object_ref(&()),
            EventType::Warning,
            reason,
            "Reconcile",
            note,
        )
        .await;
    }
    Ok(())
}
