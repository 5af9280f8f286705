//! PodDisruptionBudgets: voluntary disruptions (node drains, upgrades) take at most one MTA
//! and one IMAP pod at a time.

use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::Domain;
use crate::names::Component;

/// PodDisruptionBudget `<md>-mta`.
pub fn build_mta(domain: &Domain) -> PodDisruptionBudget {
    build(domain, domain.names.mta(), Component::Mta)
}

/// PodDisruptionBudget `<md>-imap`.
pub fn build_imap(domain: &Domain) -> PodDisruptionBudget {
    build(domain, domain.names.imap(), Component::Imap)
}

fn build(domain: &Domain, name: String, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: domain.meta(name, component),
        spec: Some(PodDisruptionBudgetSpec {
            // maxUnavailable (not minAvailable) so a single-replica domain can still be drained.
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(domain.label_selector(component)),
            // A pod that is not running anyway (crash loop) never blocks a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}
