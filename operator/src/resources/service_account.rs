//! The ServiceAccount `<md>-mail` of the mail pods: the daemons never talk to the Kubernetes
//! API, so no token is mounted and the account has no RBAC bindings.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::Domain;
use crate::names::Component;

/// ServiceAccount `<md>-mail`, with `automountServiceAccountToken: false`.
pub fn build(domain: &Domain) -> ServiceAccount {
    ServiceAccount {
        metadata: domain.meta(domain.names.service_account(), Component::Mta),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}
