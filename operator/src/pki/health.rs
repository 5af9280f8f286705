//! Whether the certificate a MailDomain serves can be trusted by mail clients now, and when
//! that changes by itself.
//!
//! The operator renews the certificates of its internal CA itself; cert-manager and users renew
//! theirs. For those it can only watch: this module reads the Secret's certificate and says
//! whether it is missing, unusable, expiring soon or expired, so the controller can set
//! CertificateReady with a reason, publish a Warning Event before expiry, and requeue for the
//! exact moment the answer changes.

use std::time::Duration;

use jiff::Timestamp;

use super::cert::{inspect, sub};
use crate::api::maildomain::CertificateStatus;

/// Warnings start at most this long before expiry: two weeks to fix a stalled renewal.
pub const MAX_EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// How long before `not_after` a certificate of this lifetime is reported as expiring soon:
/// a sixth of its lifetime, at most [`MAX_EXPIRY_WARNING`]. cert-manager and the internal CA
/// renew a third of the lifetime ahead by default, so the warning only fires when a renewal is
/// already overdue (a 90-day certificate warns 14 days ahead, a 24-hour one 4 hours ahead).
pub fn expiry_warning(lifetime: Duration) -> Duration {
    (lifetime / 6).min(MAX_EXPIRY_WARNING)
}

/// The CertificateReady reason of a usable certificate close to its expiry.
pub const EXPIRING_SOON: &str = "ExpiringSoon";

/// The state of a serving certificate at a moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Usable; it becomes [`Health::ExpiringSoon`] at `warn_at`.
    Valid {
        not_after: Timestamp,
        warn_at: Timestamp,
    },
    /// Usable, but it expires within [`expiry_warning`] and nothing has replaced it yet.
    ExpiringSoon { not_after: Timestamp },
    /// `notAfter` has passed: clients that verify refuse it.
    Expired { not_after: Timestamp },
    /// `notBefore` is still ahead (clock skew, or issued for later).
    NotYetValid { not_before: Timestamp },
    /// The Secret does not exist, or has no `tls.crt`.
    Missing,
    /// `tls.crt` is not a readable certificate, or `tls.key` is absent.
    Unusable(String),
    /// The certificate does not name the host clients connect to.
    WrongHost { host: String, names: Vec<String> },
}

impl Health {
    /// Whether the daemons can serve it (CertificateReady).
    pub fn is_usable(&self) -> bool {
        matches!(self, Health::Valid { .. } | Health::ExpiringSoon { .. })
    }

    /// CamelCase reason for the CertificateReady condition and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Health::Valid { .. } => "Valid",
            Health::ExpiringSoon { .. } => EXPIRING_SOON,
            Health::Expired { .. } => "Expired",
            Health::NotYetValid { .. } => "NotYetValid",
            Health::Missing => "SecretMissing",
            Health::Unusable(_) => "Unusable",
            Health::WrongHost { .. } => "WrongHost",
        }
    }

    /// When the health changes without anything else changing: the warning time, then expiry.
    pub fn changes_at(&self) -> Option<Timestamp> {
        match self {
            Health::Valid { warn_at, .. } => Some(*warn_at),
            Health::ExpiringSoon { not_after } => Some(*not_after),
            Health::NotYetValid { not_before } => Some(*not_before),
            _ => None,
        }
    }

    /// A sentence about the certificate in Secret `secret` for the condition message: names
    /// and absolute times only (so it does not change while nothing changes; never key material).
    pub fn describe(&self, secret: &str) -> String {
        match self {
            Health::Valid { not_after, .. } => format!("{secret} valid until {not_after}"),
            Health::ExpiringSoon { not_after } => {
                format!("{secret} expires at {not_after} and has not been renewed")
            }
            Health::Expired { not_after } => format!(
                "{secret} expired at {not_after}; clients that verify certificates refuse it"
            ),
            Health::NotYetValid { not_before } => {
                format!("{secret} is not valid before {not_before}; check the clocks")
            }
            Health::Missing => format!("Secret {secret} has no certificate (tls.crt) yet"),
            Health::Unusable(why) => format!("{secret}: {why}"),
            Health::WrongHost { host, names } => format!(
                "{secret} does not name {host} (it names {})",
                if names.is_empty() {
                    "no DNS names".to_string()
                } else {
                    names.join(", ")
                }
            ),
        }
    }

    /// [`Health::describe`] with the time left or past, for an Event published at `now`.
    pub fn event_note(&self, secret: &str, now: Timestamp) -> String {
        let sentence = self.describe(secret);
        match self {
            Health::ExpiringSoon { not_after } => format!(
                "{sentence} ({} left)",
                human(not_after.duration_since(now).unsigned_abs())
            ),
            Health::Expired { not_after } => format!(
                "{sentence} ({} ago)",
                human(now.duration_since(*not_after).unsigned_abs())
            ),
            _ => sentence,
        }
    }

    /// `notAfter`, when the certificate could be read.
    pub fn not_after(&self) -> Option<Timestamp> {
        match self {
            Health::Valid { not_after, .. }
            | Health::ExpiringSoon { not_after }
            | Health::Expired { not_after } => Some(*not_after),
            _ => None,
        }
    }
}

/// Who renews the served certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Renewer {
    /// The operator, from its internal CA.
    Operator,
    /// cert-manager, into the Secret of the Certificate the operator created.
    CertManager,
    /// The user, who named the Secret in `tls.secretName`.
    User,
}

/// The certificate a MailDomain serves: where it is, who renews it, and how it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub secret_name: String,
    pub renewer: Renewer,
    pub health: Health,
    /// When the operator renews it (its own certificates only).
    pub renewal_time: Option<Timestamp>,
}

impl Served {
    /// `status.certificate`.
    pub fn status(&self) -> CertificateStatus {
        CertificateStatus {
            secret_name: self.secret_name.clone(),
            not_after: self.health.not_after().map(|t| t.to_string()),
            renewal_time: self.renewal_time.map(|t| t.to_string()),
        }
    }

    /// The CertificateReady reason. A certificate the operator issued is `Issued` while
    /// usable; cert-manager not having filled its Secret yet is `WaitingForCertManager`.
    pub fn reason(&self) -> &'static str {
        match (self.renewer, &self.health) {
            (Renewer::Operator, Health::Valid { .. }) => "Issued",
            (Renewer::CertManager, Health::Missing) => "WaitingForCertManager",
            (_, h) => h.reason(),
        }
    }

    /// The reason of the Event published on entering this state.
    pub fn event_reason(&self) -> &'static str {
        match &self.health {
            Health::Valid { .. } => "CertificateValid",
            Health::ExpiringSoon { .. } => "CertificateExpiringSoon",
            Health::Expired { .. } => "CertificateExpired",
            Health::NotYetValid { .. } => "CertificateNotYetValid",
            Health::Missing => "CertificateMissing",
            Health::Unusable(_) => "CertificateUnusable",
            Health::WrongHost { .. } => "CertificateWrongHost",
        }
    }

    /// Whether entering this state deserves a Warning Event: someone has to act.
    pub fn needs_attention(&self) -> bool {
        !matches!(
            (self.renewer, &self.health),
            (_, Health::Valid { .. }) | (Renewer::CertManager, Health::Missing)
        )
    }
}

/// Assesses the `tls.crt` / `tls.key` pair (either may be absent) for serving `host` at `now`.
/// Checks in order: missing, unreadable, key absent, not yet valid, expired, host, expiry warning.
pub fn assess(cert_pem: Option<&str>, key_pem: Option<&str>, host: &str, now: Timestamp) -> Health {
    let Some(pem) = cert_pem.filter(|p| !p.trim().is_empty()) else {
        return Health::Missing;
    };
    let info = match inspect(pem) {
        Ok(info) => info,
        Err(e) => return Health::Unusable(format!("tls.crt is not a readable certificate: {e}")),
    };
    if key_pem.is_none_or(|k| k.trim().is_empty()) {
        return Health::Unusable("the Secret has no private key (tls.key)".into());
    }
    if now < info.not_before {
        return Health::NotYetValid {
            not_before: info.not_before,
        };
    }
    if now >= info.not_after {
        return Health::Expired {
            not_after: info.not_after,
        };
    }
    if !info.dns_names.iter().any(|n| covers(n, host)) {
        return Health::WrongHost {
            host: host.to_string(),
            names: info.dns_names,
        };
    }
    let lifetime = info
        .not_after
        .duration_since(info.not_before)
        .unsigned_abs();
    match sub(info.not_after, expiry_warning(lifetime)) {
        Ok(warn_at) if now < warn_at => Health::Valid {
            not_after: info.not_after,
            warn_at,
        },
        _ => Health::ExpiringSoon {
            not_after: info.not_after,
        },
    }
}

/// Whether certificate name `name` (possibly a `*.` wildcard of one label) matches `host`.
fn covers(name: &str, host: &str) -> bool {
    let (name, host) = (name.to_ascii_lowercase(), host.to_ascii_lowercase());
    let (name, host) = (name.trim_end_matches('.'), host.trim_end_matches('.'));
    match name.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
        None => name == host,
    }
}

/// A duration in the largest whole unit that fits: "13d", "5h", "42m", "30s".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d", s / 86_400),
        s if s >= 3_600 => format!("{}h", s / 3_600),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_exactly_one_label() {
        assert!(covers("mail.example.com", "MAIL.example.com."));
        assert!(covers("*.example.com", "mail.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "a.mail.example.com"));
        assert!(!covers("mail.example.org", "mail.example.com"));
    }

    #[test]
    fn warning_window_is_a_sixth_of_the_lifetime_capped_at_two_weeks() {
        let day = Duration::from_secs(86_400);
        assert_eq!(expiry_warning(90 * day), MAX_EXPIRY_WARNING);
        assert_eq!(expiry_warning(day), Duration::from_secs(4 * 3600));
        assert_eq!(expiry_warning(60 * day), 10 * day);
    }

    #[test]
    fn durations_read_in_their_largest_unit() {
        assert_eq!(human(Duration::from_secs(13 * 86_400 + 5)), "13d");
        assert_eq!(human(Duration::from_secs(7_200)), "2h");
        assert_eq!(human(Duration::from_secs(59)), "59s");
    }
}
