//! Checks of MailDomain and Mailbox specs that give a precise, field-named message.
//!
//! The CRD schema and its CEL rules reject most of this at admission; these functions repeat
//! those rules (so `postwarden render` refuses what the API server would) and add the ones a
//! schema cannot express (quantities in range, durations that fit together).

use std::fmt;
use std::time::Duration;

use once_cell::sync::Lazy;
use regex::Regex;

use super::continuity::ContinuitySpec;
use super::mailbox::{MailboxSpec, LOCAL_PART_PATTERN};
use super::maildomain::{MailDomainSpec, DNS_NAME_PATTERN};
use super::quantity;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, e.g. `spec.domain`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one object.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid(pub Vec<FieldError>);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

static DNS_NAME: Lazy<Regex> = Lazy::new(|| Regex::new(DNS_NAME_PATTERN).expect("valid regex"));
static LOCAL_PART: Lazy<Regex> = Lazy::new(|| Regex::new(LOCAL_PART_PATTERN).expect("valid regex"));
static EMAIL: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[^@\s]+@[^@\s]+\.[^@\s]+$").expect("valid regex"));
/// A host name of one or more labels (`localhost`, `mx1.provider.example`).
static UPSTREAM_HOST: Lazy<Regex> = Lazy::new(|| {
    Regex::new(r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)*[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
        .expect("valid regex")
});
static CRON_FIELD: Lazy<Regex> =
    Lazy::new(|| Regex::new(r"^[0-9A-Za-z*/,\-?LW#]+$").expect("valid regex"));

/// Longest MailDomain name: children append suffixes and StatefulSet pods need room for an ordinal.
pub const MAX_DOMAIN_OBJECT_NAME: usize = 40;
/// Most Dovecot replicas a domain can have: each replicates to every other, so the sync work
/// grows with the square of the count.
pub const MAX_IMAP_REPLICAS: i32 = 5;

/// True for a lowercase DNS name with at least two labels.
pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && DNS_NAME.is_match(s)
}

/// True for an RFC 5321 dot-atom local part of at most 64 characters.
pub fn is_local_part(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && LOCAL_PART.is_match(s)
}

/// True for something shaped like an email address (`local@domain.tld`, no whitespace, at most
/// 254 characters): what may stand in an address map.
pub fn is_email_address(s: &str) -> bool {
    s.len() <= 254 && EMAIL.is_match(s)
}

/// Parses a Go duration (`2160h`, `90m`, `1h30m`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let d: kube::core::Duration = s.parse().ok()?;
    (!d.is_negative()).then(|| d.into())
}

#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }

    fn duration(&mut self, field: &str, value: &str, min: Duration) -> Option<Duration> {
        match parse_duration(value) {
            Some(d) if d >= min => Some(d),
            Some(_) => {
                self.push(
                    field,
                    format!("{value:?} is shorter than the minimum {}s", min.as_secs()),
                );
                None
            }
            None => {
                self.push(
                    field,
                    format!("{value:?} is not a duration such as 2160h or 90m"),
                );
                None
            }
        }
    }

    fn bytes_between(
        &mut self,
        field: &str,
        q: &k8s_openapi::apimachinery::pkg::api::resource::Quantity,
        min: u64,
        max: u64,
    ) {
        match quantity::to_bytes(q) {
            Some(b) if (min..=max).contains(&b) => {}
            Some(_) => self.push(
                field,
                format!("{:?} is out of range ({min} to {max} bytes)", q.0),
            ),
            None => self.push(field, format!("{:?} is not a quantity such as 10Gi", q.0)),
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);
const MI: u64 = 1024 * 1024;
const GI: u64 = 1024 * MI;

/// Validates a MailDomain's name and spec.
pub fn maildomain(name: &str, spec: &MailDomainSpec) -> Result<(), Invalid> {
    let mut e = Errors::default();
    if name.len() > MAX_DOMAIN_OBJECT_NAME {
        e.push(
            "metadata.name",
            format!("{name:?} is longer than {MAX_DOMAIN_OBJECT_NAME} characters"),
        );
    }
    if !is_dns_name(&spec.domain) {
        e.push(
            "spec.domain",
            format!("{:?} is not a valid DNS name", spec.domain),
        );
    }
    for (i, alias) in spec.alias_domains.iter().enumerate() {
        let field = format!("spec.aliasDomains[{i}]");
        if !is_dns_name(alias) {
            e.push(field, format!("{alias:?} is not a valid DNS name"));
        } else if alias == &spec.domain {
            e.push(field, format!("{alias:?} is the domain itself"));
        } else if spec.alias_domains[..i].contains(alias) {
            e.push(field, format!("{alias:?} is listed twice"));
        }
    }
    if let Some(host) = &spec.hostname {
        if !is_dns_name(host) {
            e.push("spec.hostname", format!("{host:?} is not a valid DNS name"));
        }
    }
    if !(1..=10).contains(&spec.mta.replicas) {
        e.push(
            "spec.mta.replicas",
            format!("{} is not between 1 and 10", spec.mta.replicas),
        );
    }
    if !(1..=MAX_IMAP_REPLICAS).contains(&spec.imap.replicas) {
        e.push(
            "spec.imap.replicas",
            format!(
                "{} is not between 1 and {MAX_IMAP_REPLICAS}",
                spec.imap.replicas
            ),
        );
    }
    e.bytes_between(
        "spec.mta.messageSizeLimit",
        &spec.mta.message_size_limit,
        MI,
        GI,
    );
    e.bytes_between(
        "spec.mta.storage.size",
        &spec.mta.storage.size,
        64 * MI,
        u64::MAX / 2,
    );
    e.bytes_between(
        "spec.imap.storage.size",
        &spec.imap.storage.size,
        64 * MI,
        u64::MAX / 2,
    );

    if spec.tls.cert_manager.is_some() && spec.tls.secret_name.is_some() {
        e.push("spec.tls", "set at most one of certManager and secretName");
    }
    let lifetime = e.duration("spec.tls.duration", &spec.tls.duration, 24 * HOUR);
    if let Some(rb) = &spec.tls.renew_before {
        let renew = e.duration("spec.tls.renewBefore", rb, HOUR);
        if let (Some(l), Some(r)) = (lifetime, renew) {
            if r >= l {
                e.push(
                    "spec.tls.renewBefore",
                    format!("{rb:?} must be shorter than spec.tls.duration"),
                );
            }
        }
    }
    let rotation = e.duration(
        "spec.dkim.rotationPeriod",
        &spec.dkim.rotation_period,
        24 * HOUR,
    );
    let overlap = e.duration("spec.dkim.overlap", &spec.dkim.overlap, HOUR);
    if let (Some(r), Some(o)) = (rotation, overlap) {
        if o * 2 > r {
            e.push(
                "spec.dkim.overlap",
                "must be at most half of spec.dkim.rotationPeriod",
            );
        }
    }
    if let Some(backup) = &spec.backup {
        let fields: Vec<&str> = backup.schedule.split_whitespace().collect();
        let named = backup.schedule.starts_with('@');
        if !(named || (fields.len() == 5 && fields.iter().all(|f| CRON_FIELD.is_match(f)))) {
            e.push(
                "spec.backup.schedule",
                format!("{:?} is not a five-field cron schedule", backup.schedule),
            );
        }
        if backup.destination.pvc.is_some() == backup.destination.s3.is_some() {
            e.push("spec.backup.destination", "set exactly one of pvc and s3");
        }
        if let Some(s3) = &backup.destination.s3 {
            if !(s3.endpoint.starts_with("https://") || s3.endpoint.starts_with("http://")) {
                e.push(
                    "spec.backup.destination.s3.endpoint",
                    format!("{:?} is not an http(s) URL", s3.endpoint),
                );
            }
        }
    }
    if spec.region.role == super::maildomain::RegionRole::Secondary
        && spec.region.peer_hostname.is_none()
    {
        e.push(
            "spec.region.peerHostname",
            "a Secondary region needs the primary's host name",
        );
    }
    if let Some(peer) = &spec.region.peer_hostname {
        if !is_dns_name(peer) {
            e.push(
                "spec.region.peerHostname",
                format!("{peer:?} is not a valid DNS name"),
            );
        }
    }
    if spec.spam.add_header_score >= spec.spam.reject_score {
        e.push(
            "spec.spam.addHeaderScore",
            "must be below spec.spam.rejectScore",
        );
    }
    if let Some(c) = &spec.continuity {
        continuity(&mut e, spec, c);
    }
    if let Some(addr) = &spec.policy.dmarc.report_address {
        if !EMAIL.is_match(addr) {
            e.push(
                "spec.policy.dmarc.reportAddress",
                format!("{addr:?} is not an email address"),
            );
        }
    }
    e.finish()
}

/// `spec.continuity`: durations in range, an upstream that is not this stack, nothing that
/// contradicts relaying to the provider.
fn continuity(e: &mut Errors, spec: &MailDomainSpec, c: &ContinuitySpec) {
    let within = |e: &mut Errors, field: &str, value: &str, min: Duration, max: Duration| {
        if let Some(d) = e.duration(field, value, min) {
            if d > max {
                e.push(
                    field,
                    format!(
                        "{value:?} is longer than the maximum {}h",
                        max.as_secs() / 3600
                    ),
                );
            }
        }
    };
    within(
        e,
        "spec.continuity.spoolRetention",
        &c.spool_retention,
        HOUR,
        720 * HOUR,
    );
    within(
        e,
        "spec.continuity.emergencyInbox.retention",
        &c.emergency_inbox.retention,
        24 * HOUR,
        8760 * HOUR,
    );
    if spec.region.role == super::maildomain::RegionRole::Secondary {
        e.push(
            "spec.continuity",
            "cannot be combined with spec.region.role Secondary: continuity relays to the provider itself",
        );
    }
    let hosts = &c.upstream.hosts;
    if hosts.is_empty() || hosts.len() > 4 {
        e.push("spec.continuity.upstream.hosts", "list 1 to 4 hosts");
    }
    let own_host = spec.mail_hostname();
    for (i, host) in hosts.iter().enumerate() {
        let field = format!("spec.continuity.upstream.hosts[{i}]");
        let name_ok = host.parse::<std::net::Ipv4Addr>().is_ok()
            || (host.len() <= 253 && UPSTREAM_HOST.is_match(host));
        if !name_ok {
            e.push(
                field,
                format!("{host:?} is not a lowercase host name or an IPv4 address"),
            );
        } else if *host == spec.domain || *host == own_host || spec.alias_domains.contains(host) {
            e.push(
                field,
                format!("{host:?} is this stack's own domain or host: name the provider's inbound servers"),
            );
        }
    }
    if c.upstream.port == 0 {
        e.push(
            "spec.continuity.upstream.port",
            "must be between 1 and 65535",
        );
    }
    let d = &c.detection;
    if !(2..=300).contains(&d.interval_seconds) {
        e.push(
            "spec.continuity.detection.intervalSeconds",
            format!("{} is not between 2 and 300", d.interval_seconds),
        );
    }
    if !(1..=20).contains(&d.failure_threshold) {
        e.push(
            "spec.continuity.detection.failureThreshold",
            format!("{} is not between 1 and 20", d.failure_threshold),
        );
    }
    if let Some(r) = &c.recipients.config_map_ref {
        if r.name.is_empty() || r.key.is_empty() {
            e.push(
                "spec.continuity.recipients.configMapRef",
                "needs the ConfigMap's name and key",
            );
        }
    }
}

/// Validates a Mailbox spec.
pub fn mailbox(spec: &MailboxSpec) -> Result<(), Invalid> {
    let mut e = Errors::default();
    if spec.domain_ref.name.is_empty() {
        e.push("spec.domainRef.name", "must name a MailDomain");
    }
    if !is_local_part(&spec.local_part) {
        e.push(
            "spec.localPart",
            format!(
                "{:?} is not a dot-atom local part of at most 64 characters",
                spec.local_part
            ),
        );
    }
    if spec.password_secret_ref.name.is_empty() {
        e.push("spec.passwordSecretRef.name", "must name a Secret");
    }
    for (i, alias) in spec.aliases.iter().enumerate() {
        if !is_local_part(alias) {
            e.push(
                format!("spec.aliases[{i}]"),
                format!("{alias:?} is not a dot-atom local part of at most 64 characters"),
            );
        }
    }
    for (i, fwd) in spec.forward_to.iter().enumerate() {
        if !is_email_address(fwd) {
            e.push(
                format!("spec.forwardTo[{i}]"),
                format!("{fwd:?} is not an email address"),
            );
        }
    }
    if let Some(q) = &spec.quota {
        e.bytes_between("spec.quota", q, MI, u64::MAX / 2);
    }
    e.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::mailbox::PasswordSecretRef;
    use crate::api::maildomain::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn domain(yaml: &str) -> MailDomainSpec {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn fields(r: Result<(), Invalid>) -> Vec<String> {
        r.err()
            .map(|i| i.0.into_iter().map(|e| e.field).collect())
            .unwrap_or_default()
    }

    #[test]
    fn minimal_domain_gets_defaults_and_passes() {
        let spec = domain("domain: example.com");
        assert_eq!(spec.mta.replicas, 2);
        assert_eq!(spec.imap.replicas, 2);
        assert_eq!(spec.mail_hostname(), "mail.example.com");
        assert_eq!(spec.dkim.algorithm, DkimAlgorithm::Rsa2048);
        assert!(spec.spam.enabled);
        assert_eq!(maildomain("example-com", &spec), Ok(()));
    }

    #[test]
    fn domain_names_accepted_and_refused() {
        for ok in [
            "example.com",
            "mail.example.co.uk",
            "a-b.example",
            "xn--bcher-kva.example",
            "1.example",
        ] {
            assert!(is_dns_name(ok), "{ok} should be accepted");
        }
        for bad in [
            "Not A Domain!",
            "Example.com",
            "example",
            "-a.example",
            "a-.example",
            "a..example",
            ".example.com",
            "example.com.",
            "a_b.example",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(!is_dns_name(bad), "{bad} should be refused");
        }
        let err = maildomain("x", &domain("domain: 'Not A Domain!'")).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"spec.domain: "Not A Domain!" is not a valid DNS name"#
        );
    }

    #[test]
    fn local_parts_accepted_and_refused() {
        for ok in [
            "alice",
            "first.last",
            "o'brien",
            "x+tag",
            "a",
            &"a".repeat(64),
            "UPPER",
        ] {
            assert!(is_local_part(ok), "{ok} should be accepted");
        }
        for bad in [
            "",
            ".alice",
            "alice.",
            "a..b",
            "a b",
            "a@b",
            "a\"b",
            &"a".repeat(65),
            "(comment)",
        ] {
            assert!(!is_local_part(bad), "{bad} should be refused");
        }
    }

    #[test]
    fn bounds_and_cross_field_rules() {
        let mut spec = domain("domain: example.com");
        spec.mta.replicas = 0;
        spec.imap.replicas = 6;
        spec.mta.message_size_limit = Quantity("10Gi".into());
        spec.alias_domains = vec![
            "example.com".into(),
            "alias.example".into(),
            "alias.example".into(),
        ];
        spec.tls.renew_before = Some("3000h".into());
        spec.dkim.overlap = "3000h".into();
        spec.spam.add_header_score = 20;
        assert_eq!(
            fields(maildomain(
                "a-name-that-is-much-longer-than-forty-characters",
                &spec
            )),
            [
                "metadata.name",
                "spec.aliasDomains[0]",
                "spec.aliasDomains[2]",
                "spec.mta.replicas",
                "spec.imap.replicas",
                "spec.mta.messageSizeLimit",
                "spec.tls.renewBefore",
                "spec.dkim.overlap",
                "spec.spam.addHeaderScore",
            ]
        );
    }

    #[test]
    fn durations_and_schedules() {
        assert_eq!(
            parse_duration("2160h"),
            Some(Duration::from_secs(2160 * 3600))
        );
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90d"), None);
        assert_eq!(parse_duration("-1h"), None);
        let mut spec =
            domain("domain: example.com\ntls: {duration: 1h}\ndkim: {rotationPeriod: soon}");
        assert_eq!(
            fields(maildomain("x", &spec)),
            ["spec.tls.duration", "spec.dkim.rotationPeriod"]
        );
        spec = domain(
            "domain: example.com\nbackup: {schedule: 'every day', destination: {}, encryptionKeySecretRef: {name: k}}",
        );
        assert_eq!(
            fields(maildomain("x", &spec)),
            ["spec.backup.schedule", "spec.backup.destination"]
        );
        spec = domain(
            "domain: example.com\nbackup: {schedule: '@daily', destination: {pvc: {claimName: b}}, encryptionKeySecretRef: {name: k}}",
        );
        assert_eq!(maildomain("x", &spec), Ok(()));
    }

    #[test]
    fn secondary_region_needs_peer() {
        let spec = domain("domain: example.com\nregion: {role: Secondary}");
        assert_eq!(fields(maildomain("x", &spec)), ["spec.region.peerHostname"]);
    }

    fn mailbox_spec(local: &str) -> MailboxSpec {
        MailboxSpec {
            domain_ref: LocalObjectRef {
                name: "example-com".into(),
            },
            local_part: local.into(),
            password_secret_ref: PasswordSecretRef {
                name: "p".into(),
                key: "password".into(),
            },
            aliases: vec![],
            forward_to: vec![],
            keep_copy: true,
            quota: None,
            suspended: false,
        }
    }

    #[test]
    fn mailbox_rules() {
        assert_eq!(mailbox(&mailbox_spec("alice")), Ok(()));
        let mut spec = mailbox_spec("al ice");
        spec.aliases = vec!["ok".into(), "not ok".into()];
        spec.forward_to = vec!["bob@example.net".into(), "nobody".into()];
        spec.quota = Some(Quantity("lots".into()));
        assert_eq!(
            fields(mailbox(&spec)),
            [
                "spec.localPart",
                "spec.aliases[1]",
                "spec.forwardTo[1]",
                "spec.quota"
            ]
        );
    }
}
