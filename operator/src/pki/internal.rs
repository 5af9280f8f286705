//! One pass over the internal-CA mode of a MailDomain: roll the CA if due, renew the serving
//! certificate if needed, and say when to look again. The controller and `render` both use it,
//! so what `render` shows is what the operator does.

use jiff::Timestamp;
use kube::ResourceExt;

use super::ca::{advance_ca, CaAction, CaPolicy, CaState};
use super::cert::{issue_serving, serving_dns_names, serving_secret_data, CertKeyPair};
use super::health::{assess, Renewer, Served};
use super::renewal::{decide, RenewReason, Renewal, RenewalPolicy};
use super::PkiError;
use crate::api::maildomain::MailDomainSpec;
use crate::api::MailDomain;
use crate::names::DomainNames;

/// Subject common name of a domain's internal CA.
pub fn ca_common_name(spec: &MailDomainSpec) -> String {
    format!("{} mail CA", spec.domain)
}

/// The internal CA and serving certificate after one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InternalTls {
    pub ca: CaState,
    /// CA steps taken in this pass: write the CA Secret when not empty.
    pub ca_actions: Vec<CaAction>,
    pub serving: CertKeyPair,
    /// Why the serving certificate was issued in this pass; `None` when it was kept.
    pub renewed: Option<RenewReason>,
    /// When the CA or the certificate needs attention next.
    pub requeue_at: Timestamp,
    /// The serving certificate as served: `status.certificate` and CertificateReady.
    pub served: Served,
}

impl InternalTls {
    /// Data of the serving Secret `<md>-tls`.
    pub fn tls_secret_data(&self) -> std::collections::BTreeMap<String, String> {
        serving_secret_data(&self.serving, &self.ca.trust_bundle())
    }

    /// Data of the CA Secret `<md>-ca`.
    pub fn ca_secret_data(&self) -> std::collections::BTreeMap<String, String> {
        self.ca.to_secret_data()
    }
}

/// Takes the steps due at `now` for `md` in `namespace`, given the stored CA and serving
/// certificate (`None` when missing or unreadable).
pub fn advance_internal_tls(
    md: &MailDomain,
    namespace: &str,
    ca: Option<CaState>,
    serving: Option<CertKeyPair>,
    now: Timestamp,
) -> Result<InternalTls, PkiError> {
    let policy = RenewalPolicy::from_spec(&md.spec.tls)?;
    let (ca, progress) = advance_ca(ca, &ca_common_name(&md.spec), &CaPolicy::default(), now)?;
    let names = serving_dns_names(md, namespace);
    let check = |cert: Option<&str>| decide(cert, &ca.current.cert_pem, &names, &policy, now);

    let current = serving.as_ref().map(|s| s.cert_pem.as_str());
    let (serving, renewed) = match (check(current), serving) {
        (Renewal::Valid { .. }, Some(kept)) => (kept, None),
        (decision, _) => {
            let reason = match decision {
                Renewal::RenewNow { reason } => reason,
                Renewal::Valid { .. } => RenewReason::Missing,
            };
            let issued = issue_serving(&ca.current, &names, now, policy.lifetime)?;
            (issued, Some(reason))
        }
    };
    let renew_at = match check(Some(&serving.cert_pem)) {
        Renewal::Valid { renew_at } => renew_at,
        Renewal::RenewNow { reason } => {
            return Err(PkiError::Invalid(format!(
                "a certificate issued now would need renewal at once ({})",
                reason.as_str()
            )))
        }
    };
    let served = Served {
        secret_name: DomainNames::new(&md.name_any()).tls(),
        renewer: Renewer::Operator,
        health: assess(
            Some(&serving.cert_pem),
            Some(&serving.key_pem),
            &md.spec.mail_hostname(),
            now,
        ),
        renewal_time: Some(renew_at),
    };
    Ok(InternalTls {
        ca,
        ca_actions: progress.actions,
        serving,
        renewed,
        requeue_at: progress.requeue_at.min(renew_at),
        served,
    })
}
