//! The desired children of one MailDomain, typed per kind, and the order they are applied in.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::DynamicObject;
use serde::{Serialize, Serializer};

use super::addresses::Exclusion;

/// Every object one MailDomain needs, plus what the plan found about its Mailboxes.
///
/// Objects carry names, namespace and labels but no ownerReference: the controller adds the
/// MailDomain's with [`Children::owned_by`] (offline rendering has no owner uid).
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub service_account: Option<ServiceAccount>,
    pub secrets: Vec<Secret>,
    pub config_maps: Vec<ConfigMap>,
    /// cert-manager `Certificate` (with `spec.tls.certManager`).
    pub certificates: Vec<DynamicObject>,
    pub services: Vec<Service>,
    pub network_policies: Vec<NetworkPolicy>,
    pub pod_disruption_budgets: Vec<PodDisruptionBudget>,
    pub stateful_sets: Vec<StatefulSet>,
    /// The backup CronJob (with `spec.backup`).
    pub cron_jobs: Vec<CronJob>,
    /// external-dns `DNSEndpoint` (with `spec.dns.externalDNS`).
    pub dns_endpoints: Vec<DynamicObject>,
    /// Each Mailbox of the domain: its address, and why it is left out when it is.
    pub mailboxes: Vec<MailboxOutcome>,
}

/// What the plan decided for one Mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxOutcome {
    /// Name of the Mailbox object.
    pub name: String,
    /// `localpart@domain`, lowercase (for `status.address`).
    pub address: String,
    /// `None`: in the users database. `Some`: left out, with the condition reason and message.
    pub exclusion: Option<Exclusion>,
    /// Aliases (lowercase) not delivered to this Mailbox because another holds them, each with
    /// its reason; the Mailbox works with its other addresses.
    pub dropped_aliases: Vec<(String, Exclusion)>,
}

/// One child, borrowed, whatever its kind.
#[derive(Clone, Copy, Debug)]
pub enum Child<'a> {
    ServiceAccount(&'a ServiceAccount),
    Secret(&'a Secret),
    ConfigMap(&'a ConfigMap),
    Service(&'a Service),
    NetworkPolicy(&'a NetworkPolicy),
    PodDisruptionBudget(&'a PodDisruptionBudget),
    StatefulSet(&'a StatefulSet),
    CronJob(&'a CronJob),
    /// A custom resource of an optional CRD (Certificate, DNSEndpoint).
    Dynamic(&'a DynamicObject),
}

impl Children {
    /// Every object in apply order: what others refer to exists before they do. The
    /// ServiceAccount, Secrets and ConfigMaps first (pods mount them), then the Certificate
    /// (it fills the TLS Secret), Services, NetworkPolicies and PodDisruptionBudgets (in place
    /// before the pods they cover), the StatefulSets, and last the CronJob and DNSEndpoint.
    pub fn in_apply_order(&self) -> Vec<Child<'_>> {
        let mut out = Vec::with_capacity(self.len());
        out.extend(self.service_account.iter().map(Child::ServiceAccount));
        out.extend(self.secrets.iter().map(Child::Secret));
        out.extend(self.config_maps.iter().map(Child::ConfigMap));
        out.extend(self.certificates.iter().map(Child::Dynamic));
        out.extend(self.services.iter().map(Child::Service));
        out.extend(self.network_policies.iter().map(Child::NetworkPolicy));
        out.extend(
            self.pod_disruption_budgets
                .iter()
                .map(Child::PodDisruptionBudget),
        );
        out.extend(self.stateful_sets.iter().map(Child::StatefulSet));
        out.extend(self.cron_jobs.iter().map(Child::CronJob));
        out.extend(self.dns_endpoints.iter().map(Child::Dynamic));
        out
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        usize::from(self.service_account.is_some())
            + self.secrets.len()
            + self.config_maps.len()
            + self.certificates.len()
            + self.services.len()
            + self.network_policies.len()
            + self.pod_disruption_budgets.len()
            + self.stateful_sets.len()
            + self.cron_jobs.len()
            + self.dns_endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object with `owner` (the MailDomain's controller reference, from
    /// `MailDomain::controller_owner_ref(&())`) as its only ownerReference, so deleting the
    /// MailDomain garbage-collects them. PVCs are not children: they outlive the domain.
    pub fn owned_by(mut self, owner: &OwnerReference) -> Self {
        let owners = Some(vec![owner.clone()]);
        let set = |m: &mut ObjectMeta| m.owner_references = owners.clone();
        self.service_account
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.secrets.iter_mut().for_each(|o| set(&mut o.metadata));
        self.config_maps
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.certificates
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.services.iter_mut().for_each(|o| set(&mut o.metadata));
        self.network_policies
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.pod_disruption_budgets
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.stateful_sets
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self.cron_jobs.iter_mut().for_each(|o| set(&mut o.metadata));
        self.dns_endpoints
            .iter_mut()
            .for_each(|o| set(&mut o.metadata));
        self
    }
}

impl Child<'_> {
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Child::ServiceAccount(o) => &o.metadata,
            Child::Secret(o) => &o.metadata,
            Child::ConfigMap(o) => &o.metadata,
            Child::Service(o) => &o.metadata,
            Child::NetworkPolicy(o) => &o.metadata,
            Child::PodDisruptionBudget(o) => &o.metadata,
            Child::StatefulSet(o) => &o.metadata,
            Child::CronJob(o) => &o.metadata,
            Child::Dynamic(o) => &o.metadata,
        }
    }

    /// The object's kind (`Secret`, `StatefulSet`, `Certificate`, ...).
    pub fn kind(&self) -> &str {
        use k8s_openapi::Resource;
        match self {
            Child::ServiceAccount(_) => ServiceAccount::KIND,
            Child::Secret(_) => Secret::KIND,
            Child::ConfigMap(_) => ConfigMap::KIND,
            Child::Service(_) => Service::KIND,
            Child::NetworkPolicy(_) => NetworkPolicy::KIND,
            Child::PodDisruptionBudget(_) => PodDisruptionBudget::KIND,
            Child::StatefulSet(_) => StatefulSet::KIND,
            Child::CronJob(_) => CronJob::KIND,
            Child::Dynamic(o) => o.types.as_ref().map_or("", |t| t.kind.as_str()),
        }
    }

    /// The object's name.
    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or_default()
    }
}

impl Serialize for Child<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Child::ServiceAccount(o) => o.serialize(s),
            Child::Secret(o) => o.serialize(s),
            Child::ConfigMap(o) => o.serialize(s),
            Child::Service(o) => o.serialize(s),
            Child::NetworkPolicy(o) => o.serialize(s),
            Child::PodDisruptionBudget(o) => o.serialize(s),
            Child::StatefulSet(o) => o.serialize(s),
            Child::CronJob(o) => o.serialize(s),
            Child::Dynamic(o) => o.serialize(s),
        }
    }
}
