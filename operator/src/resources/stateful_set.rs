//! The StatefulSet shape the MTA and IMAP builders share: per-pod volume, retention, rollout.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::Domain;
use crate::api::maildomain::StorageSpec;
use crate::names::{Component, CONFIG_CHECKSUM_ANNOTATION};

/// What differs between the MTA and IMAP StatefulSets.
pub struct Shape {
    pub name: String,
    pub component: Component,
    /// Governing headless Service.
    pub service_name: String,
    pub replicas: i32,
    /// The container `kubectl logs`/`exec` pick by default.
    pub default_container: &'static str,
    pub config_checksum: String,
    pub pod: PodSpec,
    /// Name of the per-pod volume (queue or mail) and its size and class.
    pub claim: &'static str,
    pub storage: StorageSpec,
}

/// The StatefulSet of `shape`.
///
/// PVCs: the per-pod claims are retained when the StatefulSet is deleted or scaled down
/// (`persistentVolumeClaimRetentionPolicy` Retain/Retain), and the operator never deletes a
/// PVC itself: a queue or mailbox volume is only removed by a person, deliberately.
pub fn build(domain: &Domain, shape: Shape) -> StatefulSet {
    let annotations = BTreeMap::from([
        (
            CONFIG_CHECKSUM_ANNOTATION.to_string(),
            shape.config_checksum,
        ),
        (
            "kubectl.kubernetes.io/default-container".to_string(),
            shape.default_container.to_string(),
        ),
    ]);
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(shape.claim.into()),
            labels: Some(crate::names::labels(domain.name, shape.component)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: shape.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    shape.storage.size.clone(),
                )])),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };
    StatefulSet {
        metadata: domain.meta(shape.name, shape.component),
        spec: Some(StatefulSetSpec {
            replicas: Some(shape.replicas),
            selector: domain.label_selector(shape.component),
            service_name: Some(shape.service_name),
            // Replicas do not depend on each other to start; rolling updates still go one
            // pod at a time.
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                ..StatefulSetUpdateStrategy::default()
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            revision_history_limit: Some(5),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(crate::names::labels(domain.name, shape.component)),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(shape.pod),
            },
            volume_claim_templates: Some(vec![claim]),
            ..StatefulSetSpec::default()
        }),
        ..StatefulSet::default()
    }
}
