//! The kinds of object a MailDomain owns, how to reach them in the API and in which order
//! they are applied.
//!
//! PersistentVolumeClaims are deliberately not a [`ChildKind`]: the claims of the StatefulSets'
//! volume templates hold queued and stored mail, so the operator never applies or deletes them
//! (it only asks them to grow, see [`super::claims`]). They outlive their MailDomain until an
//! administrator removes them.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::core::{ApiResource, GroupVersionKind};
use kube::Resource;
use serde::Serialize;
use serde_json::Value;

/// A kind of object owned by a MailDomain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChildKind {
    ConfigMap,
    Secret,
    ServiceAccount,
    Service,
    NetworkPolicy,
    StatefulSet,
    PodDisruptionBudget,
    CronJob,
    /// cert-manager `Certificate` (only with `spec.tls.certManager`).
    Certificate,
    /// external-dns `DNSEndpoint` (only with `spec.dns.externalDNS`).
    DnsEndpoint,
}

impl ChildKind {
    /// Every owned kind: the built-in ones, then those of optional CRDs.
    pub fn all() -> impl Iterator<Item = ChildKind> {
        ChildKind::WATCHED.into_iter().chain(ChildKind::OPTIONAL)
    }

    /// The owned kinds every cluster serves: always watched (and pruned when no longer
    /// desired).
    pub const WATCHED: [ChildKind; 8] = [
        ChildKind::ConfigMap,
        ChildKind::Secret,
        ChildKind::ServiceAccount,
        ChildKind::Service,
        ChildKind::NetworkPolicy,
        ChildKind::StatefulSet,
        ChildKind::PodDisruptionBudget,
        ChildKind::CronJob,
    ];

    pub fn api_resource(self) -> ApiResource {
        match self {
            ChildKind::ConfigMap => ApiResource::erase::<ConfigMap>(&()),
            ChildKind::Secret => ApiResource::erase::<Secret>(&()),
            ChildKind::ServiceAccount => ApiResource::erase::<ServiceAccount>(&()),
            ChildKind::Service => ApiResource::erase::<Service>(&()),
            ChildKind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
            ChildKind::StatefulSet => ApiResource::erase::<StatefulSet>(&()),
            ChildKind::PodDisruptionBudget => ApiResource::erase::<PodDisruptionBudget>(&()),
            ChildKind::CronJob => ApiResource::erase::<CronJob>(&()),
            ChildKind::Certificate => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
                "certificates",
            ),
            ChildKind::DnsEndpoint => ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
                "dnsendpoints",
            ),
        }
    }

    /// The `kind` field of objects of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ChildKind::ConfigMap => "ConfigMap",
            ChildKind::Secret => "Secret",
            ChildKind::ServiceAccount => "ServiceAccount",
            ChildKind::Service => "Service",
            ChildKind::NetworkPolicy => "NetworkPolicy",
            ChildKind::StatefulSet => "StatefulSet",
            ChildKind::PodDisruptionBudget => "PodDisruptionBudget",
            ChildKind::CronJob => "CronJob",
            ChildKind::Certificate => "Certificate",
            ChildKind::DnsEndpoint => "DNSEndpoint",
        }
    }

    /// Kinds of optional CRDs (cert-manager, external-dns). Each is watched and pruned like
    /// the built-in kinds when its CRD is installed at start-up; otherwise a spec asking for it
    /// fails to apply with the API's error, and nothing of it can exist to be pruned.
    pub const OPTIONAL: [ChildKind; 2] = [ChildKind::Certificate, ChildKind::DnsEndpoint];

    /// The CustomResourceDefinition that serves an optional kind.
    pub fn crd_name(self) -> Option<&'static str> {
        match self {
            ChildKind::Certificate => Some("certificates.cert-manager.io"),
            ChildKind::DnsEndpoint => Some("dnsendpoints.externaldns.k8s.io"),
            _ => None,
        }
    }

    /// The kind named by an object's `kind` field, when the operator owns that kind.
    pub fn from_kind(kind: &str) -> Option<ChildKind> {
        ChildKind::all().find(|k| k.as_str() == kind)
    }

    /// Apply phase; lower phases are applied (and must succeed) before higher ones.
    ///
    /// Configuration, credentials (and the Certificate that fills one) and the pods'
    /// ServiceAccount exist before anything refers to them; Services and NetworkPolicies exist before the pods start, so no mail pod ever runs
    /// unprotected; the StatefulSets follow; disruption budgets and the backup job come last.
    pub fn phase(self) -> u8 {
        match self {
            ChildKind::ConfigMap
            | ChildKind::Secret
            | ChildKind::ServiceAccount
            | ChildKind::Certificate => 0,
            ChildKind::Service | ChildKind::NetworkPolicy => 1,
            ChildKind::StatefulSet => 2,
            ChildKind::PodDisruptionBudget | ChildKind::CronJob | ChildKind::DnsEndpoint => 3,
        }
    }
}

impl std::fmt::Display for ChildKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One desired child object, as the JSON body of a server-side apply.
#[derive(Clone, Debug, PartialEq)]
pub struct Child {
    pub kind: ChildKind,
    pub name: String,
    pub object: Value,
}

/// Why a typed object cannot be a [`Child`].
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{0} objects are not owned by a MailDomain")]
    UnownedKind(String),
    #[error("a {0} without metadata.name")]
    Unnamed(&'static str),
    #[error("serializing a {kind}: {source}")]
    Serialize {
        kind: &'static str,
        source: serde_json::Error,
    },
}

impl Child {
    /// Wraps a typed object (e.g. a `ConfigMap` from the builders), with `apiVersion` and `kind` set.
    pub fn from_typed<K>(obj: &K) -> Result<Child, ChildError>
    where
        K: Resource<DynamicType = ()> + Serialize,
    {
        let kind_name = K::kind(&());
        let kind = ChildKind::from_kind(&kind_name)
            .ok_or_else(|| ChildError::UnownedKind(kind_name.to_string()))?;
        let name = obj
            .meta()
            .name
            .clone()
            .ok_or(ChildError::Unnamed(kind.as_str()))?;
        let mut object = serde_json::to_value(obj).map_err(|source| ChildError::Serialize {
            kind: kind.as_str(),
            source,
        })?;
        if let Value::Object(map) = &mut object {
            map.insert(
                "apiVersion".into(),
                Value::String(K::api_version(&()).into_owned()),
            );
            map.insert("kind".into(), Value::String(kind_name.into_owned()));
        }
        Ok(Child { kind, name, object })
    }

    /// Wraps an object of an optional CRD kind (its `apiVersion` and `kind` must be set).
    pub fn from_dynamic(obj: &kube::api::DynamicObject) -> Result<Child, ChildError> {
        let kind_name = obj
            .types
            .as_ref()
            .map(|t| t.kind.clone())
            .unwrap_or_default();
        let kind = ChildKind::from_kind(&kind_name).ok_or(ChildError::UnownedKind(kind_name))?;
        let name = obj
            .metadata
            .name
            .clone()
            .ok_or(ChildError::Unnamed(kind.as_str()))?;
        let object = serde_json::to_value(obj).map_err(|source| ChildError::Serialize {
            kind: kind.as_str(),
            source,
        })?;
        Ok(Child { kind, name, object })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    #[test]
    fn typed_objects_become_children_with_type_fields() {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some("d-maps".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let child = Child::from_typed(&cm).unwrap();
        assert_eq!(child.kind, ChildKind::ConfigMap);
        assert_eq!(child.name, "d-maps");
        assert_eq!(child.object["apiVersion"], "v1");
        assert_eq!(child.object["kind"], "ConfigMap");

        let sts = StatefulSet {
            metadata: ObjectMeta {
                name: Some("d-mta".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            Child::from_typed(&sts).unwrap().object["apiVersion"],
            "apps/v1"
        );
    }

    #[test]
    fn unnamed_and_unowned_objects_are_refused() {
        assert!(matches!(
            Child::from_typed(&ConfigMap::default()),
            Err(ChildError::Unnamed("ConfigMap"))
        ));
        let pvc = k8s_openapi::api::core::v1::PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some("mail-d-imap-0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(matches!(
            Child::from_typed(&pvc),
            Err(ChildError::UnownedKind(k)) if k == "PersistentVolumeClaim"
        ));
    }

    #[test]
    fn configuration_before_services_before_workloads() {
        use ChildKind::*;
        assert!(ConfigMap.phase() < Service.phase());
        assert!(Secret.phase() < Service.phase());
        assert!(ServiceAccount.phase() < StatefulSet.phase());
        assert!(NetworkPolicy.phase() < StatefulSet.phase());
        assert!(Service.phase() < StatefulSet.phase());
        assert!(StatefulSet.phase() < PodDisruptionBudget.phase());
        assert!(StatefulSet.phase() < CronJob.phase());
    }

    #[test]
    fn kind_names_round_trip_and_exclude_claims() {
        for k in ChildKind::all() {
            assert_eq!(ChildKind::from_kind(k.as_str()), Some(k));
            assert_eq!(k.api_resource().kind, k.as_str());
        }
        for k in ChildKind::OPTIONAL {
            let ar = k.api_resource();
            assert_eq!(
                k.crd_name(),
                Some(format!("{}.{}", ar.plural, ar.group).as_str())
            );
            assert!(!ChildKind::WATCHED.contains(&k));
        }
        assert_eq!(
            ChildKind::DnsEndpoint.api_resource().api_version,
            "externaldns.k8s.io/v1alpha1"
        );
        assert_eq!(ChildKind::from_kind("PersistentVolumeClaim"), None);
    }
}
