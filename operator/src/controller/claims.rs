//! Changing the size of the queue and mail volumes.
//!
//! A StatefulSet's `volumeClaimTemplates` cannot be changed in place, and the claims made from
//! them keep their size. So when a spec asks for bigger volumes the operator grows each
//! existing claim of the StatefulSet (the storage class must allow volume expansion), then
//! deletes the StatefulSet with `propagationPolicy: Orphan` and applies it again with the new
//! template: the running pods are adopted unchanged and keep serving, and claims made later are
//! made at the new size. Shrinking a volume or moving it to another storage class cannot be
//! done without copying the data, so such a change is refused: the StatefulSet keeps its
//! current template (every other change still applies) and the MailDomain reports why.
//!
//! This module decides; the controller reads and writes the claims.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use crate::api::quantity::to_bytes;

/// The part of a claim template that can differ between specs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimShape {
    pub name: String,
    pub size: Option<String>,
    pub storage_class: Option<String>,
}

impl ClaimShape {
    fn of(claim: &PersistentVolumeClaim) -> Self {
        let spec = claim.spec.as_ref();
        Self {
            name: claim.metadata.name.clone().unwrap_or_default(),
            size: spec
                .and_then(|s| s.resources.as_ref())
                .and_then(|r| r.requests.as_ref())
                .and_then(|r| r.get("storage"))
                .map(|q| q.0.clone()),
            storage_class: spec.and_then(|s| s.storage_class_name.clone()),
        }
    }
}

/// The claim templates of a StatefulSet (typed, or as the applied JSON).
pub fn templates(sts: &StatefulSet) -> Vec<ClaimShape> {
    sts.spec
        .iter()
        .flat_map(|s| s.volume_claim_templates.iter().flatten())
        .map(ClaimShape::of)
        .collect()
}

fn templates_of_value(object: &Value) -> Vec<ClaimShape> {
    serde_json::from_value::<StatefulSet>(object.clone())
        .map(|s| templates(&s))
        .unwrap_or_default()
}

/// What to do about the claims before applying a StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimStep {
    /// The templates agree: apply as built.
    Keep,
    /// Grow `claims` (the claims that may exist: every template, every ordinal up to the
    /// larger replica count) to `size`, then recreate the StatefulSet with the new template.
    Grow { claims: Vec<String>, size: String },
    /// Not possible: apply with the current templates and report `message`.
    Refuse { message: String },
}

/// Compares the StatefulSet in the cluster with the one to apply.
pub fn plan(current: &StatefulSet, desired: &Value) -> ClaimStep {
    let (have, want) = (templates(current), templates_of_value(desired));
    if have == want || have.is_empty() {
        return ClaimStep::Keep;
    }
    let sts = current.metadata.name.clone().unwrap_or_default();
    let names = |list: &[ClaimShape]| list.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    if names(&have) != names(&want) {
        return ClaimStep::Refuse {
            message: format!(
                "StatefulSet {sts}: its volumes ({}) cannot be replaced by others ({})",
                names(&have).join(", "),
                names(&want).join(", ")
            ),
        };
    }
    let mut grow_to: Option<String> = None;
    for (h, w) in have.iter().zip(&want) {
        if h.storage_class != w.storage_class {
            return ClaimStep::Refuse {
                message: format!(
                    "StatefulSet {sts}: volume {} cannot move from storage class {} to {}; \
                     the data would have to be copied",
                    h.name,
                    h.storage_class.as_deref().unwrap_or("(cluster default)"),
                    w.storage_class.as_deref().unwrap_or("(cluster default)")
                ),
            };
        }
        let bytes = |s: &Option<String>| s.as_ref().and_then(|q| to_bytes(&Quantity(q.clone())));
        match (bytes(&h.size), bytes(&w.size)) {
            (Some(old), Some(new)) if new < old => {
                return ClaimStep::Refuse {
                    message: format!(
                        "StatefulSet {sts}: volume {} cannot shrink from {} to {}",
                        h.name,
                        h.size.as_deref().unwrap_or_default(),
                        w.size.as_deref().unwrap_or_default()
                    ),
                }
            }
            (Some(old), Some(new)) if new > old => grow_to = w.size.clone(),
            _ => {}
        }
    }
    let Some(size) = grow_to else {
        // Only spellings differ (`1024Mi` for `1Gi`): nothing to do to the claims.
        return ClaimStep::Keep;
    };
    let replicas = |v: Option<i32>| v.unwrap_or(1).max(0);
    let current_replicas = replicas(current.spec.as_ref().and_then(|s| s.replicas));
    let desired_replicas = replicas(
        desired["spec"]["replicas"]
            .as_i64()
            .map(|r| r.clamp(0, i32::MAX as i64) as i32),
    );
    let claims = have
        .iter()
        .flat_map(|t| {
            let sts = sts.clone();
            (0..current_replicas.max(desired_replicas))
                .map(move |ordinal| format!("{}-{sts}-{ordinal}", t.name))
        })
        .collect();
    ClaimStep::Grow { claims, size }
}

/// The StatefulSet to apply when the change is refused: as desired, but with the templates of
/// the one in the cluster, which cannot change.
pub fn with_current_templates(desired: &Value, current: &StatefulSet) -> Value {
    let mut out = desired.clone();
    let templates = current
        .spec
        .as_ref()
        .and_then(|s| s.volume_claim_templates.clone())
        .unwrap_or_default();
    out["spec"]["volumeClaimTemplates"] =
        serde_json::to_value(templates).expect("claim templates serialize");
    out
}

/// Whether an existing claim requests less than `size` (and so needs the patch).
pub fn needs_growing(claim: &PersistentVolumeClaim, size: &str) -> bool {
    let want = to_bytes(&Quantity(size.to_string()));
    let have = ClaimShape::of(claim)
        .size
        .and_then(|s| to_bytes(&Quantity(s)));
    matches!((have, want), (Some(h), Some(w)) if h < w)
}

/// The merge patch that asks for `size`.
pub fn grow_patch(size: &str) -> Value {
    serde_json::json!({"spec": {"resources": {"requests": {"storage": size}}}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sts(replicas: i32, size: &str, class: Option<&str>) -> Value {
        let mut claim = json!({
            "metadata": {"name": "mail"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}}
        });
        if let Some(c) = class {
            claim["spec"]["storageClassName"] = json!(c);
        }
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet",
            "metadata": {"name": "d-imap"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"a": "b"}},
                "serviceName": "d-imap-headless",
                "template": {"metadata": {}, "spec": {"containers": []}},
                "volumeClaimTemplates": [claim]
            }
        })
    }

    fn typed(v: Value) -> StatefulSet {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn same_or_respelled_templates_need_nothing() {
        let current = typed(sts(2, "10Gi", None));
        assert_eq!(plan(&current, &sts(2, "10Gi", None)), ClaimStep::Keep);
        assert_eq!(plan(&current, &sts(3, "10240Mi", None)), ClaimStep::Keep);
    }

    #[test]
    fn growing_names_every_claim_up_to_the_larger_replica_count() {
        let current = typed(sts(2, "10Gi", Some("fast")));
        assert_eq!(
            plan(&current, &sts(3, "20Gi", Some("fast"))),
            ClaimStep::Grow {
                claims: vec![
                    "mail-d-imap-0".into(),
                    "mail-d-imap-1".into(),
                    "mail-d-imap-2".into()
                ],
                size: "20Gi".into()
            }
        );
    }

    #[test]
    fn shrinking_or_another_class_is_refused_and_keeps_the_current_template() {
        let current = typed(sts(2, "10Gi", None));
        let ClaimStep::Refuse { message } = plan(&current, &sts(2, "5Gi", None)) else {
            panic!("shrinking must be refused")
        };
        assert_eq!(
            message,
            "StatefulSet d-imap: volume mail cannot shrink from 10Gi to 5Gi"
        );
        let ClaimStep::Refuse { message } = plan(&current, &sts(2, "20Gi", Some("fast"))) else {
            panic!("a class change must be refused")
        };
        assert!(
            message.contains("from storage class (cluster default) to fast"),
            "{message}"
        );

        let desired = sts(3, "5Gi", None);
        let kept = with_current_templates(&desired, &current);
        assert_eq!(kept["spec"]["replicas"], 3, "everything else is applied");
        assert_eq!(
            kept["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"],
            "10Gi"
        );
    }

    #[test]
    fn only_smaller_claims_are_patched() {
        let claim = |size: &str| -> PersistentVolumeClaim {
            serde_json::from_value(
                json!({"metadata": {"name": "mail-d-imap-0"}, "spec": {"resources": {"requests": {"storage": size}}}}),
            )
            .unwrap()
        };
        assert!(needs_growing(&claim("10Gi"), "20Gi"));
        assert!(!needs_growing(&claim("20Gi"), "20Gi"));
        assert!(!needs_growing(&claim("20480Mi"), "20Gi"));
        assert_eq!(
            grow_patch("20Gi"),
            json!({"spec": {"resources": {"requests": {"storage": "20Gi"}}}})
        );
    }
}
