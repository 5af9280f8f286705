//! Server-side apply of a MailDomain's children, skipping objects that are already as desired,
//! and removal of children no longer desired.
//!
//! Every applied object carries [`APPLIED_HASH_ANNOTATION`], a digest of the exact body last
//! applied. A child whose annotation matches the desired digest, and which nobody changed since
//! this process applied it, is not sent again: a resync that changes nothing writes nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, Preconditions};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::claims::{self, ClaimStep};
use super::context::Context;
use super::error::Error;
use super::kinds::{Child, ChildKind};
use crate::names::{DOMAIN_LABEL, MANAGER};

/// Annotation with the digest of the body last applied by the operator.
pub const APPLIED_HASH_ANNOTATION: &str = "postwarden.dev/applied-hash";

/// How many children of one phase are applied at the same time.
const APPLY_CONCURRENCY: usize = 4;

/// Completes a child for applying: namespace, owner reference, domain label and the digest
/// annotation. Returns the body and its digest.
pub fn prepare(
    child: &Child,
    namespace: &str,
    domain: &str,
    owner: &OwnerReference,
) -> (Value, String) {
    let mut body = child.object.clone();
    if !body.is_object() {
        body = Value::Object(Default::default());
    }
    let meta = body
        .as_object_mut()
        .expect("an object")
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if !meta.is_object() {
        *meta = Value::Object(Default::default());
    }
    let meta = meta.as_object_mut().expect("an object");
    meta.insert("name".into(), Value::String(child.name.clone()));
    meta.insert("namespace".into(), Value::String(namespace.into()));
    meta.insert(
        "ownerReferences".into(),
        serde_json::to_value([owner]).expect("owner references serialize"),
    );
    let labels = meta
        .entry("labels")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(labels) = labels {
        labels.insert(DOMAIN_LABEL.into(), Value::String(domain.into()));
    }
    if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
        annotations.remove(APPLIED_HASH_ANNOTATION);
        if annotations.is_empty() {
            meta.remove("annotations");
        }
    }
    let digest = digest(&body);
    let meta = body["metadata"].as_object_mut().expect("an object");
    let annotations = meta
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Value::Object(annotations) = annotations {
        annotations.insert(
            APPLIED_HASH_ANNOTATION.into(),
            Value::String(digest.clone()),
        );
    }
    (body, digest)
}

fn digest(body: &Value) -> String {
    let bytes = serde_json::to_vec(body).expect("JSON values serialize");
    let sum = Sha256::digest(&bytes);
    sum.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// What the operator knows about an existing child from the watch cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The digest annotation, if any.
    pub hash: Option<String>,
    /// Changes whenever someone changes the object: its generation where the API keeps one
    /// (so status updates of a StatefulSet do not count), its resourceVersion otherwise.
    pub token: String,
}

impl Observed {
    pub fn from_meta(meta: &ObjectMeta) -> Observed {
        Observed {
            hash: meta
                .annotations
                .as_ref()
                .and_then(|a| a.get(APPLIED_HASH_ANNOTATION))
                .cloned(),
            token: change_token(meta),
        }
    }
}

/// The token [`Observed::token`] compares: generation when positive, else resourceVersion.
pub fn change_token(meta: &ObjectMeta) -> String {
    match meta.generation {
        Some(g) if g > 0 => format!("g{g}"),
        _ => format!("rv{}", meta.resource_version.as_deref().unwrap_or_default()),
    }
}

/// What is remembered about an applied child of a kind that is not watched: its digest.
fn unwatched_token(hash: &str) -> String {
    format!("h{hash}")
}

/// Whether a child must be applied: it is missing, its digest differs, or it changed since
/// this process last applied it (`remembered` is the token the apply returned).
pub fn needs_apply(
    desired_hash: &str,
    observed: Option<&Observed>,
    remembered: Option<&str>,
) -> bool {
    match observed {
        None => true,
        Some(o) => {
            o.hash.as_deref() != Some(desired_hash) || remembered.is_some_and(|t| t != o.token)
        }
    }
}

/// Children of `domain` that exist but are no longer desired: labelled with the domain, owned
/// by the MailDomain with `owner_uid`, not being deleted, and of a kind the operator owns.
/// Objects of any other kind — PersistentVolumeClaims above all — are never selected.
pub fn prune_selection<'a>(
    observed: impl IntoIterator<Item = (&'a str, &'a ObjectMeta)>,
    desired: &HashSet<(ChildKind, String)>,
    domain: &str,
    owner_uid: &str,
) -> Vec<(ChildKind, String, String)> {
    let mut out = Vec::new();
    for (kind, meta) in observed {
        let Some(kind) = ChildKind::from_kind(kind) else {
            continue;
        };
        let (Some(name), Some(uid)) = (meta.name.as_ref(), meta.uid.as_ref()) else {
            continue;
        };
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(DOMAIN_LABEL))
            .is_some_and(|d| d == domain);
        let owned = meta
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == owner_uid);
        if labelled
            && owned
            && meta.deletion_timestamp.is_none()
            && !desired.contains(&(kind, name.clone()))
        {
            out.push((kind, name.clone(), uid.clone()));
        }
    }
    out.sort();
    out
}

/// Change tokens returned by this process's own applies, per child.
#[derive(Default)]
pub struct AppliedTokens(Mutex<HashMap<(ChildKind, String, String), String>>);

impl AppliedTokens {
    pub fn get(&self, kind: ChildKind, namespace: &str, name: &str) -> Option<String> {
        self.0
            .lock()
            .expect("token map lock")
            .get(&(kind, namespace.to_string(), name.to_string()))
            .cloned()
    }
    pub fn set(&self, kind: ChildKind, namespace: &str, name: &str, token: String) {
        self.0
            .lock()
            .expect("token map lock")
            .insert((kind, namespace.to_string(), name.to_string()), token);
    }
    pub fn forget(&self, kind: ChildKind, namespace: &str, name: &str) {
        self.0.lock().expect("token map lock").remove(&(
            kind,
            namespace.to_string(),
            name.to_string(),
        ));
    }
}

/// What an apply pass did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Children created or changed, by kind and name.
    pub applied: Vec<(ChildKind, String)>,
    /// Children already as desired.
    pub unchanged: usize,
}

/// Applies the children phase by phase (see [`ChildKind::phase`]); a phase starts only after
/// every object of the previous one was accepted.
pub async fn apply_children(
    ctx: &Context,
    namespace: &str,
    domain: &str,
    owner: &OwnerReference,
    children: &[Child],
) -> Result<ApplyReport, Error> {
    let mut phases: BTreeMap<u8, Vec<&Child>> = BTreeMap::new();
    for child in children {
        phases.entry(child.kind.phase()).or_default().push(child);
    }
    let mut report = ApplyReport::default();
    for (_, batch) in phases {
        let applies: Vec<_> = batch
            .into_iter()
            .map(|child| apply_one(ctx, namespace, domain, owner, child))
            .collect();
        let results: Vec<Option<(ChildKind, String)>> = stream::iter(applies)
            .buffer_unordered(APPLY_CONCURRENCY)
            .try_collect()
            .await?;
        for r in results {
            match r {
                Some(applied) => report.applied.push(applied),
                None => report.unchanged += 1,
            }
        }
    }
    report.applied.sort();
    Ok(report)
}

async fn apply_one(
    ctx: &Context,
    namespace: &str,
    domain: &str,
    owner: &OwnerReference,
    child: &Child,
) -> Result<Option<(ChildKind, String)>, Error> {
    let (body, hash) = prepare(child, namespace, domain, owner);
    let remembered = ctx.applied.get(child.kind, namespace, &child.name);
    let watched = ctx.stores.watches(child.kind);
    if watched {
        let observed = ctx
            .stores
            .child_meta(child.kind, namespace, &child.name)
            .map(|m| Observed::from_meta(&m));
        if !needs_apply(&hash, observed.as_ref(), remembered.as_deref()) {
            if remembered.is_none() {
                if let Some(o) = observed {
                    ctx.applied.set(child.kind, namespace, &child.name, o.token);
                }
            }
            return Ok(None);
        }
    } else if remembered.as_deref() == Some(unwatched_token(&hash).as_str()) {
        // Not watched: only this process's memory of the last apply can tell it is unchanged.
        return Ok(None);
    }
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), namespace, &child.kind.api_resource());
    let params = PatchParams::apply(MANAGER).force();
    let result = api
        .patch(&child.name, &params, &Patch::Apply(&body))
        .await
        .map_err(|source| Error::Apply {
            kind: child.kind,
            name: child.name.clone(),
            source,
        })?;
    ctx.metrics.write(child.kind.as_str(), "apply");
    let token = if watched {
        change_token(&result.metadata)
    } else {
        unwatched_token(&hash)
    };
    ctx.applied.set(child.kind, namespace, &child.name, token);
    tracing::info!(kind = %child.kind, name = %child.name, "applied");
    Ok(Some((child.kind, child.name.clone())))
}

/// What [`settle_claims`] did about volume size changes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimReport {
    /// Claims asked to grow, as `name to size`.
    pub grown: Vec<String>,
    /// StatefulSets deleted with their pods orphaned, to be created again with the new claim
    /// template (the deletion event brings the next reconcile, which creates them).
    pub recreating: Vec<String>,
    /// Changes that cannot be made, in words; those StatefulSets keep their templates.
    pub refused: Vec<String>,
}

/// Prepares the StatefulSets of `children` whose claim templates changed (see
/// [`super::claims`]): grows the claims or refuses the change. Returns the children to apply
/// now: refused ones with the current templates, recreated ones left out until they are gone.
pub async fn settle_claims(
    ctx: &Context,
    namespace: &str,
    children: &[Child],
) -> Result<(Vec<Child>, ClaimReport), Error> {
    let mut report = ClaimReport::default();
    let mut out = Vec::with_capacity(children.len());
    for child in children {
        let current = match child.kind {
            ChildKind::StatefulSet => ctx.stores.statefulset(namespace, &child.name),
            _ => None,
        };
        let Some(current) = current.filter(|c| c.metadata.deletion_timestamp.is_none()) else {
            out.push(child.clone());
            continue;
        };
        let refuse = |report: &mut ClaimReport, message: String| {
            report.refused.push(message);
            Child {
                object: claims::with_current_templates(&child.object, &current),
                ..child.clone()
            }
        };
        match claims::plan(&current, &child.object) {
            ClaimStep::Keep => out.push(child.clone()),
            ClaimStep::Refuse { message } => out.push(refuse(&mut report, message)),
            ClaimStep::Grow { claims, size } => {
                match grow_claims(ctx, namespace, &claims, &size).await? {
                    Ok(grown) => {
                        report.grown.extend(grown);
                        recreate(ctx, namespace, &current).await?;
                        report.recreating.push(child.name.clone());
                    }
                    Err(message) => out.push(refuse(&mut report, message)),
                }
            }
        }
    }
    Ok((out, report))
}

/// Grows each existing claim of `names` that asks for less than `size`. The inner error is a
/// refusal by the API (the storage class does not allow expansion), in words.
async fn grow_claims(
    ctx: &Context,
    namespace: &str,
    names: &[String],
    size: &str,
) -> Result<Result<Vec<String>, String>, Error> {
    let api: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), namespace);
    let mut grown = Vec::new();
    for name in names {
        let claim = api.get_opt(name).await.map_err(|source| Error::Read {
            what: format!("PersistentVolumeClaim {name}"),
            source,
        })?;
        if !claim.is_some_and(|c| claims::needs_growing(&c, size)) {
            continue;
        }
        let params = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        match api
            .patch(name, &params, &Patch::Merge(claims::grow_patch(size)))
            .await
        {
            Ok(_) => {
                ctx.metrics.write("PersistentVolumeClaim", "patch");
                grown.push(format!("{name} to {size}"));
            }
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 422) => {
                return Ok(Err(format!(
                    "PersistentVolumeClaim {name} cannot grow to {size}: {} (does its \
                     StorageClass allow volume expansion?)",
                    e.message
                )))
            }
            Err(source) => {
                return Err(Error::Apply {
                    kind: ChildKind::StatefulSet,
                    name: format!("claim {name}"),
                    source,
                })
            }
        }
    }
    Ok(Ok(grown))
}

/// Deletes a StatefulSet but not its pods, which keep running and are adopted by the one
/// applied next (same selector, same pod template).
async fn recreate(
    ctx: &Context,
    namespace: &str,
    current: &k8s_openapi::api::apps::v1::StatefulSet,
) -> Result<(), Error> {
    let name = current.metadata.name.clone().unwrap_or_default();
    let uid = current
        .metadata
        .uid
        .clone()
        .ok_or(Error::MissingMetadata("metadata.uid"))?;
    let kind = ChildKind::StatefulSet;
    if delete_child(ctx, namespace, kind, &name, uid, DeleteParams::orphan()).await? {
        tracing::info!(name = %name, "StatefulSet deleted, pods kept, for its new volume template");
    }
    Ok(())
}

/// Deletes children of `domain` that are no longer desired. Returns what was deleted.
pub async fn prune(
    ctx: &Context,
    namespace: &str,
    domain: &str,
    owner_uid: &str,
    children: &[Child],
) -> Result<Vec<(ChildKind, String)>, Error> {
    let desired: HashSet<(ChildKind, String)> =
        children.iter().map(|c| (c.kind, c.name.clone())).collect();
    let existing = ctx.stores.children_of(namespace, domain);
    let selection = prune_selection(
        existing.iter().map(|(k, m)| (k.as_str(), m)),
        &desired,
        domain,
        owner_uid,
    );
    let mut deleted = Vec::new();
    for (kind, name, uid) in selection {
        if delete_child(ctx, namespace, kind, &name, uid, DeleteParams::background()).await? {
            tracing::info!(kind = %kind, name = %name, "deleted child no longer desired");
            deleted.push((kind, name));
        }
    }
    Ok(deleted)
}

/// Deletes child `kind/name` if it is still the object with `uid`. False when it is gone
/// already or was replaced by another object of that name.
async fn delete_child(
    ctx: &Context,
    namespace: &str,
    kind: ChildKind,
    name: &str,
    uid: String,
    params: DeleteParams,
) -> Result<bool, Error> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), namespace, &kind.api_resource());
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..params
    };
    let deleted = match api.delete(name, &params).await {
        Ok(_) => {
            ctx.metrics.write(kind.as_str(), "delete");
            true
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => false,
        Err(source) => {
            return Err(Error::Delete {
                kind,
                name: name.to_string(),
                source,
            })
        }
    };
    ctx.applied.forget(kind, namespace, name);
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeMap;

    fn owner() -> OwnerReference {
        OwnerReference {
            api_version: "postwarden.dev/v1alpha1".into(),
            kind: "MailDomain".into(),
            name: "example".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }

    fn config_map(data: &str) -> Child {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("example-maps".into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".into(),
                    "postwarden".into(),
                )])),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("virtual".into(), data.into())])),
            ..Default::default()
        };
        Child::from_typed(&cm).unwrap()
    }

    #[test]
    fn prepared_body_is_owned_labelled_and_hashed() {
        let (body, hash) = prepare(&config_map("a"), "mail", "example", &owner());
        assert_eq!(body["metadata"]["namespace"], "mail");
        assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(body["metadata"]["labels"][DOMAIN_LABEL], "example");
        assert_eq!(
            body["metadata"]["labels"]["app.kubernetes.io/name"],
            "postwarden"
        );
        assert_eq!(
            body["metadata"]["annotations"][APPLIED_HASH_ANNOTATION],
            hash.as_str()
        );
        assert_eq!(hash.len(), 32);
    }

    #[test]
    fn digest_follows_content_only() {
        let (_, a1) = prepare(&config_map("a"), "mail", "example", &owner());
        let (_, a2) = prepare(&config_map("a"), "mail", "example", &owner());
        let (_, b) = prepare(&config_map("b"), "mail", "example", &owner());
        assert_eq!(a1, a2);
        assert_ne!(a1, b);
        // A body that already carries a (stale) digest hashes like one without it.
        let (body, _) = prepare(&config_map("a"), "mail", "example", &owner());
        let again = Child {
            kind: ChildKind::ConfigMap,
            name: "example-maps".into(),
            object: body,
        };
        assert_eq!(prepare(&again, "mail", "example", &owner()).1, a1);
    }

    fn observed(hash: &str, token: &str) -> Observed {
        Observed {
            hash: Some(hash.into()),
            token: token.into(),
        }
    }

    #[test]
    fn unchanged_children_are_not_applied() {
        assert!(!needs_apply("h", Some(&observed("h", "rv5")), Some("rv5")));
        // After a restart nothing is remembered: the digest alone decides.
        assert!(!needs_apply("h", Some(&observed("h", "rv5")), None));
    }

    #[test]
    fn missing_changed_or_tampered_children_are_applied() {
        assert!(needs_apply("h", None, None));
        assert!(needs_apply("h2", Some(&observed("h", "rv5")), Some("rv5")));
        assert!(
            needs_apply("h", Some(&observed("h", "rv7")), Some("rv5")),
            "edited by someone else"
        );
        let unannotated = Observed {
            hash: None,
            token: "rv1".into(),
        };
        assert!(needs_apply("h", Some(&unannotated), None));
    }

    #[test]
    fn generation_is_the_change_token_where_kept() {
        let mut meta = ObjectMeta {
            resource_version: Some("42".into()),
            ..Default::default()
        };
        assert_eq!(change_token(&meta), "rv42");
        meta.generation = Some(3);
        assert_eq!(change_token(&meta), "g3");
        meta.generation = Some(0);
        assert_eq!(change_token(&meta), "rv42");
    }

    fn meta(name: &str, domain: &str, owner_uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            uid: Some(format!("uid-of-{name}")),
            labels: Some(BTreeMap::from([(DOMAIN_LABEL.into(), domain.into())])),
            owner_references: Some(vec![OwnerReference {
                uid: owner_uid.into(),
                ..owner()
            }]),
            ..Default::default()
        }
    }

    #[test]
    fn prune_selects_only_undesired_owned_children() {
        let keep = meta("example-maps", "example", "uid-1");
        let stale = meta("example-users-3", "example", "uid-1");
        let other_domain = meta("other-maps", "other", "uid-2");
        let foreign_owner = meta("example-extra", "example", "uid-9");
        let mut deleting = meta("example-old", "example", "uid-1");
        deleting.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            "2026-01-01T00:00:00Z".parse().unwrap(),
        ));
        let desired = HashSet::from([(ChildKind::ConfigMap, "example-maps".to_string())]);
        let sel = prune_selection(
            [
                ("ConfigMap", &keep),
                ("Secret", &stale),
                ("ConfigMap", &other_domain),
                ("ConfigMap", &foreign_owner),
                ("Secret", &deleting),
            ],
            &desired,
            "example",
            "uid-1",
        );
        assert_eq!(
            sel,
            vec![(
                ChildKind::Secret,
                "example-users-3".to_string(),
                "uid-of-example-users-3".to_string()
            )]
        );
    }

    #[test]
    fn prune_never_selects_persistent_volume_claims() {
        let claim = meta("queue-example-mta-0", "example", "uid-1");
        let sel = prune_selection(
            [("PersistentVolumeClaim", &claim)],
            &HashSet::new(),
            "example",
            "uid-1",
        );
        assert!(sel.is_empty());
        assert!(ChildKind::all().all(|k| k.api_resource().kind != "PersistentVolumeClaim"));
    }
}
