//! TLS for the mail daemons: an internal CA and the serving certificate of each MailDomain
//! (rcgen, ECDSA P-256), and the pure decisions of when to renew them, with the clock passed in.
//!
//! - [`cert`]: issuing and reading certificates.
//! - [`renewal`]: when the serving certificate is renewed ([`decide`]).
//! - [`ca`]: when the CA is rolled, with an overlap in which the old and the new CA are both
//!   trusted ([`decide_ca`], [`CaState`]).
//! - [`health`]: whether a served certificate, whoever renews it, is usable, expiring soon
//!   or expired ([`health::assess`]).
//! - [`internal`]: one pass over both, as the controller and `render` run it
//!   ([`advance_internal_tls`]).
//!
//! Nothing here reads a clock or the cluster: the controller passes `now` and the Secrets' data
//! and requeues at the times the decisions return.

pub mod ca;
pub mod cert;
pub mod health;
pub mod internal;
pub mod renewal;

pub use ca::{advance_ca, decide_ca, CaAction, CaDecision, CaPhase, CaPolicy, CaProgress, CaState};
pub use cert::{
    cert_validity, inspect, is_issued_by, issue_serving, new_ca, serving_dns_names,
    serving_secret_data, CertInfo, CertKeyPair, BACKDATE,
};
pub use health::Health;
pub use internal::{advance_internal_tls, ca_common_name, InternalTls};
pub use renewal::{decide, RenewReason, Renewal, RenewalPolicy};

/// A certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("generating a key or certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading a certificate: {0}")]
    Parse(String),
    #[error("{0}")]
    Invalid(String),
}

/// A Secret's entries as text: `data` (decoded) merged with `stringData`, skipping entries that
/// are not UTF-8. Certificates, keys and the state files kept beside them are all text.
pub fn secret_text(
    secret: &k8s_openapi::api::core::v1::Secret,
) -> std::collections::BTreeMap<String, String> {
    let mut out: std::collections::BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect();
    out.extend(secret.string_data.clone().unwrap_or_default());
    out
}

#[cfg(test)]
pub(crate) mod tests;
