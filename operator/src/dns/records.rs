//! Every DNS record a MailDomain needs.
//!
//! For the domain and each alias domain: MX, SPF, DKIM (one TXT per published selector) and
//! DMARC, since mail may be sent and received under any of them. For the domain only: MTA-STS,
//! TLS-RPT and the mail-client records (RFC 6186 SRV, autoconfig and autodiscover), since clients
//! and policies name the one mail host.

use sha2::{Digest, Sha256};

use super::txt::quote_txt;
use crate::api::maildomain::{
    DmarcPolicy, DnsRecord, MailDomainSpec, MtaStsMode, RegionRole, TlsSpec,
};
use crate::api::MailDomain;
use crate::dkim::{txt_value, DkimKey};

/// TTL when `spec.dns.ttl` is not set.
pub const DEFAULT_TTL: i64 = 3600;

/// The records to publish for `md`, given the DKIM keys to publish (their public halves).
pub fn records(md: &MailDomain, dkim_published: &[DkimKey]) -> Vec<DnsRecord> {
    let spec = &md.spec;
    let mut out = Records {
        ttl: spec.dns.ttl.unwrap_or(DEFAULT_TTL),
        list: Vec::new(),
    };
    for (i, domain) in spec.all_domains().enumerate() {
        let primary = i == 0;
        sender_and_receiver_records(&mut out, spec, domain, primary, dkim_published);
        if primary {
            policy_records(&mut out, spec, domain);
            client_records(&mut out, spec, domain);
        }
    }
    dmarc_report_authorizations(&mut out, spec);
    out.list
}

struct Records {
    ttl: i64,
    list: Vec<DnsRecord>,
}

impl Records {
    fn push(&mut self, name: String, record_type: &str, value: String, comment: Option<String>) {
        self.list.push(DnsRecord {
            name,
            record_type: record_type.to_string(),
            ttl: self.ttl,
            value,
            comment,
        });
    }
}

/// The mail exchangers, as (preference, host): the primary region's host at 10, the
/// secondary's at 20; with continuity the provider's hosts first and this stack at 20.
pub fn mx_hosts(spec: &MailDomainSpec) -> Vec<(u16, String)> {
    let own = spec.mail_hostname();
    if let Some(c) = &spec.continuity {
        // The provider stays the first MX (10, 11, ...); this stack is the secondary at 20.
        // An upstream given as an IP address is no MX target and is left out.
        let mut hosts: Vec<(u16, String)> = c
            .upstream
            .hosts
            .iter()
            .filter(|h| h.parse::<std::net::IpAddr>().is_err())
            .zip(10u16..)
            .map(|(h, p)| (p, h.to_ascii_lowercase()))
            .collect();
        hosts.push((20, own));
        return hosts;
    }
    match (spec.region.role, spec.region.peer_hostname.clone()) {
        (RegionRole::Primary, None) => vec![(10, own)],
        (RegionRole::Primary, Some(peer)) => vec![(10, own), (20, peer)],
        (RegionRole::Secondary, Some(peer)) => vec![(10, peer), (20, own)],
        // Rejected at admission (a secondary names its primary); serve what is known.
        (RegionRole::Secondary, None) => vec![(20, own)],
    }
}

/// The host mail clients use: the primary region's (a secondary only queues inbound mail).
pub fn client_host(spec: &MailDomainSpec) -> String {
    match (spec.region.role, &spec.region.peer_hostname) {
        (RegionRole::Secondary, Some(peer)) => peer.clone(),
        _ => spec.mail_hostname(),
    }
}

fn sender_and_receiver_records(
    out: &mut Records,
    spec: &MailDomainSpec,
    domain: &str,
    primary: bool,
    dkim: &[DkimKey],
) {
    let alias_note = |what: &str| {
        (!primary).then(|| {
            format!(
                "{what} of alias domain {domain} (mail for it reaches {})",
                spec.domain
            )
        })
    };
    for (i, (preference, host)) in mx_hosts(spec).into_iter().enumerate() {
        let comment = if i == 0 {
            alias_note("Mail exchangers").or_else(|| Some(format!("Mail exchangers of {domain}")))
        } else {
            None
        };
        out.push(
            domain.to_string(),
            "MX",
            format!("{preference} {host}."),
            comment,
        );
    }

    let mut spf = vec!["v=spf1".to_string(), "mx".to_string()];
    spf.extend(spec.policy.spf.include.iter().cloned());
    spf.push("-all".into());
    out.push(
        domain.to_string(),
        "TXT",
        quote_txt(&spf.join(" ")),
        Some(
            "SPF: only the mail exchangers (and spec.policy.spf.include) send for the domain"
                .into(),
        ),
    );

    for key in dkim {
        out.push(
            format!("{}._domainkey.{domain}", key.selector),
            "TXT",
            quote_txt(&txt_value(key)),
            Some(format!("DKIM public key, selector {}", key.selector)),
        );
    }

    let dmarc = &spec.policy.dmarc;
    let rua = dmarc
        .report_address
        .clone()
        .unwrap_or_else(|| format!("dmarc-reports@{domain}"));
    out.push(
        format!("_dmarc.{domain}"),
        "TXT",
        quote_txt(&format!(
            "v=DMARC1; p={}; pct={}; rua=mailto:{rua}",
            dmarc_policy(dmarc.policy),
            dmarc.percentage
        )),
        Some(format!("DMARC policy; aggregate reports go to {rua}")),
    );
}

/// A report address in another of the MailDomain's domains must say it accepts the reports
/// (RFC 7489 §7.1): `<policy domain>._report._dmarc.<report domain>`.
fn dmarc_report_authorizations(out: &mut Records, spec: &MailDomainSpec) {
    let Some(address) = &spec.policy.dmarc.report_address else {
        return;
    };
    let Some((_, report_domain)) = address.rsplit_once('@') else {
        return;
    };
    let report_domain = report_domain.to_ascii_lowercase();
    if !spec.all_domains().any(|d| d == report_domain) {
        return;
    }
    for domain in spec.all_domains().filter(|d| *d != report_domain) {
        out.push(
            format!("{domain}._report._dmarc.{report_domain}"),
            "TXT",
            quote_txt("v=DMARC1"),
            Some(format!(
                "{report_domain} accepts the DMARC reports of {domain}"
            )),
        );
    }
}

fn dmarc_policy(p: DmarcPolicy) -> &'static str {
    match p {
        DmarcPolicy::None => "none",
        DmarcPolicy::Quarantine => "quarantine",
        DmarcPolicy::Reject => "reject",
    }
}

/// An MTA-STS policy (RFC 8461) and where it must be served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtaStsPolicy {
    /// `https://mta-sts.<domain>/.well-known/mta-sts.txt`
    pub url: String,
    /// The policy file, CRLF-separated as the RFC requires.
    pub body: String,
    /// The `id=` of the `_mta-sts` TXT record: derived from the body, so it changes exactly
    /// when the policy does and senders refetch it.
    pub id: String,
}

/// The MTA-STS policy of the domain: its mode, every MX host, and its max_age.
pub fn mta_sts_policy(spec: &MailDomainSpec) -> MtaStsPolicy {
    let sts = &spec.policy.mta_sts;
    let mut body = format!("version: STSv1\r\nmode: {}\r\n", sts.mode.as_str());
    for (_, host) in mx_hosts(spec) {
        body.push_str(&format!("mx: {host}\r\n"));
    }
    body.push_str(&format!("max_age: {}\r\n", sts.max_age_seconds));
    let digest = Sha256::digest(body.as_bytes());
    let id: String = digest.iter().take(10).map(|b| format!("{b:02x}")).collect();
    MtaStsPolicy {
        url: format!("https://mta-sts.{}/.well-known/mta-sts.txt", spec.domain),
        body,
        id,
    }
}

fn uses_internal_ca(tls: &TlsSpec) -> bool {
    tls.cert_manager.is_none() && tls.secret_name.is_none()
}

fn policy_records(out: &mut Records, spec: &MailDomainSpec, domain: &str) {
    let policy = mta_sts_policy(spec);
    let mut comment = format!(
        "MTA-STS. Serve this policy as text/plain at {url}\n\
         (an HTTPS host for mta-sts.{domain} with a publicly trusted certificate; lines end in CRLF):\n",
        url = policy.url
    );
    for line in policy.body.lines() {
        comment.push_str(&format!("  {line}\n"));
    }
    if spec.policy.mta_sts.mode == MtaStsMode::Enforce && uses_internal_ca(&spec.tls) {
        comment.push_str(
            "WARNING: mode enforce needs a publicly trusted certificate on every MX host, which\n\
             the internal CA's is not: use tls.certManager with a public issuer or tls.secretName.\n",
        );
    }
    out.push(
        format!("_mta-sts.{domain}"),
        "TXT",
        quote_txt(&format!("v=STSv1; id={}", policy.id)),
        Some(comment),
    );

    let rua = spec
        .policy
        .tls_report_address
        .clone()
        .unwrap_or_else(|| format!("tls-reports@{domain}"));
    let rua = if rua.starts_with("mailto:") || rua.starts_with("https:") {
        rua
    } else {
        format!("mailto:{rua}")
    };
    out.push(
        format!("_smtp._tls.{domain}"),
        "TXT",
        quote_txt(&format!("v=TLSRPTv1; rua={rua}")),
        Some("TLS-RPT (RFC 8460): where senders report TLS failures".into()),
    );
}

fn client_records(out: &mut Records, spec: &MailDomainSpec, domain: &str) {
    let host = client_host(spec);
    // RFC 6186 service records; RFC 8314 prefers implicit TLS, each service has its own name.
    let services = [
        ("_submissions._tcp", 465),
        ("_submission._tcp", 587),
        ("_imaps._tcp", 993),
        ("_imap._tcp", 143),
    ];
    for (i, (service, port)) in services.into_iter().enumerate() {
        out.push(
            format!("{service}.{domain}"),
            "SRV",
            format!("0 1 {port} {host}."),
            (i == 0).then(|| {
                "Mail client services (RFC 6186): submission and IMAP, implicit TLS and STARTTLS"
                    .to_string()
            }),
        );
    }
    for (i, service) in ["_pop3s._tcp", "_pop3._tcp"].into_iter().enumerate() {
        out.push(
            format!("{service}.{domain}"),
            "SRV",
            "0 0 0 .".into(),
            (i == 0).then(|| "POP3 is not offered (target \".\", RFC 2782)".to_string()),
        );
    }
    for (i, name) in ["autoconfig", "autodiscover"].into_iter().enumerate() {
        out.push(
            format!("{name}.{domain}"),
            "CNAME",
            format!("{host}."),
            (i == 0).then(|| {
                "Client autoconfiguration names (Thunderbird autoconfig, Outlook autodiscover), \
                 pointing at the mail host;\nclients that find no configuration file there \
                 try its standard ports"
                    .to_string()
            }),
        );
    }
}
