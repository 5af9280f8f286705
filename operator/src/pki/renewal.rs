//! When the serving certificate is renewed.
//!
//! A certificate is renewed `renewBefore` ahead of its expiry (a third of its lifetime unless
//! the spec says otherwise), and at once when it is missing, unreadable, expired, not yet valid
//! (the clock moved back, or another node's clock ran ahead), names other hosts than wanted, or
//! was not signed by the CA that issues now (after a CA roll). Otherwise the controller requeues
//! for exactly the returned `renew_at`, so no periodic polling is needed.

use std::time::Duration;

use jiff::Timestamp;

use super::cert::{inspect, is_issued_by, sub};
use super::PkiError;
use crate::api::maildomain::TlsSpec;
use crate::api::validate::parse_duration;

/// Lifetime of issued certificates and how long before expiry they are renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RenewalPolicy {
    pub lifetime: Duration,
    pub renew_before: Duration,
}

impl RenewalPolicy {
    /// `renew_before` defaults to a third of `lifetime` and must be shorter than it.
    pub fn new(lifetime: Duration, renew_before: Option<Duration>) -> Result<Self, PkiError> {
        let renew_before = renew_before.unwrap_or(lifetime / 3);
        if renew_before >= lifetime || renew_before.is_zero() {
            return Err(PkiError::Invalid(format!(
                "renewBefore ({}s) must be positive and shorter than the certificate lifetime ({}s)",
                renew_before.as_secs(),
                lifetime.as_secs()
            )));
        }
        Ok(Self {
            lifetime,
            renew_before,
        })
    }

    /// The policy of `spec.tls` (`duration`, `renewBefore`).
    pub fn from_spec(tls: &TlsSpec) -> Result<Self, PkiError> {
        let parse = |field: &str, value: &str| {
            parse_duration(value).ok_or_else(|| {
                PkiError::Invalid(format!("spec.tls.{field}: {value:?} is not a duration"))
            })
        };
        let lifetime = parse("duration", &tls.duration)?;
        let renew_before = tls
            .renew_before
            .as_deref()
            .map(|v| parse("renewBefore", v))
            .transpose()?;
        Self::new(lifetime, renew_before)
    }
}

/// Why a certificate is renewed now.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RenewReason {
    /// There is no certificate.
    Missing,
    /// The stored certificate cannot be parsed.
    Unreadable,
    /// `notAfter` has passed.
    Expired,
    /// The renewal time (`notAfter - renewBefore`) has come.
    WithinRenewBefore,
    /// `notBefore` is still ahead: clocks disagree, and peers with a correct clock may reject it.
    NotYetValid,
    /// Its DNS names differ from the wanted ones (host name, replicas or namespace changed).
    NamesChanged,
    /// It was not signed by the CA that issues now.
    IssuerChanged,
}

impl RenewReason {
    /// CamelCase form, for condition reasons and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            RenewReason::Missing => "Missing",
            RenewReason::Unreadable => "Unreadable",
            RenewReason::Expired => "Expired",
            RenewReason::WithinRenewBefore => "WithinRenewBefore",
            RenewReason::NotYetValid => "NotYetValid",
            RenewReason::NamesChanged => "NamesChanged",
            RenewReason::IssuerChanged => "IssuerChanged",
        }
    }
}

/// What to do about the serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// Keep it; renew (and requeue) exactly at `renew_at`.
    Valid { renew_at: Timestamp },
    /// Issue a new one now.
    RenewNow { reason: RenewReason },
}

/// Decides about `current` (the PEM in `tls.crt`, if any), which must be signed by `issuer_pem`
/// (the CA that issues now) and name exactly `dns_names`.
///
/// Checks in order: missing, unreadable, not yet valid, expired, issuer, names, renewal time.
/// When a certificate is shorter-lived than `renew_before` (issued under an older policy or cut
/// at the CA's expiry), a third of its own lifetime is used instead, so it is not renewed over
/// and over.
pub fn decide(
    current: Option<&str>,
    issuer_pem: &str,
    dns_names: &[String],
    policy: &RenewalPolicy,
    now: Timestamp,
) -> Renewal {
    let renew = |reason| Renewal::RenewNow { reason };
    let Some(pem) = current.filter(|p| !p.trim().is_empty()) else {
        return renew(RenewReason::Missing);
    };
    let Ok(info) = inspect(pem) else {
        return renew(RenewReason::Unreadable);
    };
    if info.not_before > now {
        return renew(RenewReason::NotYetValid);
    }
    if now >= info.not_after {
        return renew(RenewReason::Expired);
    }
    if !is_issued_by(pem, issuer_pem).unwrap_or(false) {
        return renew(RenewReason::IssuerChanged);
    }
    let mut wanted: Vec<&str> = dns_names.iter().map(String::as_str).collect();
    wanted.sort_unstable();
    wanted.dedup();
    if wanted
        != info
            .dns_names
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    {
        return renew(RenewReason::NamesChanged);
    }
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unsigned_abs();
    let renew_before = if policy.renew_before < lifetime {
        policy.renew_before
    } else {
        lifetime / 3
    };
    match sub(info.not_after, renew_before) {
        Ok(renew_at) if now < renew_at => Renewal::Valid { renew_at },
        _ => renew(RenewReason::WithinRenewBefore),
    }
}
