//! DNS records: TXT chunking, record sets for each kind of domain, the zone file checked by an
//! independent parser (dnspython), and `render --dns` of the quickstart.

use std::io::Write;
use std::process::{Command, Stdio};

use super::*;
use crate::api::maildomain::{DmarcPolicy, DnsRecord, MtaStsMode, RegionRole};
use crate::api::MailDomain;
use crate::dkim::{DkimAlgorithm, DkimKey};
use crate::pki::tests::{quickstart_domain, ts};

/// The public half of a 2048-bit RSA key made once with `openssl genpkey` for these tests.
const FIXED_RSA_PUBLIC: &str = "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuTWjlq18ScmSU9KRmiscsZRF0kKWJnyV2R3NwK5O6r5Los8QGofFyribWpaguwlGU5NE8wU4N6nQfXrjBtEhpp1OJzIHnKi/ZwClOz0yXyznFFMsTa++C5pwEsROjREzQcEmIp7+eh0+e5DYdBlKgNvnPHt4EgRAfO0+f5bZYvdc5STJV8S6r8NFWZ+8MfgRNWCIvWqQo4m48fAJy8Qqj7beGIDcyRwWmJTYoxhamUP5loTfG0VMtExSk4clfDqlEwzbqmD5st4kaRJTB366XuoOSqQHh0xsqG/Br+nY+mKuDHZ+HSalW1v174HsdKlCfjkmTRZLzc723NsJ67D8GwIDAQAB";

fn fixed_key() -> DkimKey {
    DkimKey::public_only("pw202601010000", DkimAlgorithm::Rsa2048, FIXED_RSA_PUBLIC)
}

fn find<'a>(records: &'a [DnsRecord], name: &str, record_type: &str) -> Vec<&'a DnsRecord> {
    records
        .iter()
        .filter(|r| r.name == name && r.record_type == record_type)
        .collect()
}

fn value(records: &[DnsRecord], name: &str, record_type: &str) -> String {
    let found = find(records, name, record_type);
    assert_eq!(found.len(), 1, "{name} {record_type}: {found:?}");
    found[0].value.clone()
}

#[test]
fn txt_strings_split_at_exactly_255_bytes() {
    for (len, pieces) in [
        (0, 1),
        (1, 1),
        (254, 1),
        (255, 1),
        (256, 2),
        (510, 2),
        (511, 3),
    ] {
        let text = "a".repeat(len);
        let split = txt_strings(&text);
        assert_eq!(split.len(), pieces, "{len}");
        assert!(split.iter().all(|p| p.len() <= MAX_TXT_STRING));
        assert_eq!(split[0].len(), len.min(255));
        assert_eq!(split.concat(), text);
    }
    // Never inside a UTF-8 character: 254 ASCII bytes then a two-byte character.
    let text = format!("{}é", "a".repeat(254));
    let split = txt_strings(&text);
    assert_eq!(split.iter().map(|p| p.len()).collect::<Vec<_>>(), [254, 2]);

    let quoted = quote_txt(&"b".repeat(300));
    assert_eq!(
        quoted,
        format!("\"{}\" \"{}\"", "b".repeat(255), "b".repeat(45))
    );
    assert_eq!(quote_txt(""), "\"\"");
    let tricky = r#"say "hi" \ bye"#;
    assert_eq!(quote_txt(tricky), r#""say \"hi\" \\ bye""#);
    assert_eq!(unquote_txt(&quote_txt(tricky)), tricky);
    assert_eq!(unquote_txt(&quoted), "b".repeat(300));
}

#[test]
fn quickstart_zone_snapshot() {
    let md = quickstart_domain();
    let zone = zone_file(&records(&md, &[fixed_key()]));
    insta::assert_snapshot!("quickstart_zone", zone);
}

#[test]
fn records_of_the_quickstart() {
    let md = quickstart_domain();
    let r = records(&md, &[fixed_key()]);
    assert!(r.iter().all(|r| r.ttl == DEFAULT_TTL));
    assert_eq!(value(&r, "example.com", "MX"), "10 mail.example.com.");
    assert_eq!(value(&r, "example.com", "TXT"), "\"v=spf1 mx -all\"");
    let dkim = value(&r, "pw202601010000._domainkey.example.com", "TXT");
    assert_eq!(
        unquote_txt(&dkim),
        format!("v=DKIM1; k=rsa; p={FIXED_RSA_PUBLIC}")
    );
    assert_eq!(
        value(&r, "_dmarc.example.com", "TXT"),
        "\"v=DMARC1; p=quarantine; pct=100; rua=mailto:dmarc-reports@example.com\""
    );
    let policy = mta_sts_policy(&md.spec);
    assert_eq!(
        policy.body,
        "version: STSv1\r\nmode: testing\r\nmx: mail.example.com\r\nmax_age: 604800\r\n"
    );
    assert_eq!(
        policy.url,
        "https://mta-sts.example.com/.well-known/mta-sts.txt"
    );
    assert_eq!(
        value(&r, "_mta-sts.example.com", "TXT"),
        format!("\"v=STSv1; id={}\"", policy.id)
    );
    let sts = find(&r, "_mta-sts.example.com", "TXT")[0];
    assert!(sts.comment.as_deref().unwrap().contains(&policy.url));
    assert!(sts.comment.as_deref().unwrap().contains("  mode: testing"));
    assert_eq!(
        value(&r, "_smtp._tls.example.com", "TXT"),
        "\"v=TLSRPTv1; rua=mailto:tls-reports@example.com\""
    );
    for (service, port) in [
        ("_submissions._tcp", 465),
        ("_submission._tcp", 587),
        ("_imaps._tcp", 993),
        ("_imap._tcp", 143),
    ] {
        assert_eq!(
            value(&r, &format!("{service}.example.com"), "SRV"),
            format!("0 1 {port} mail.example.com.")
        );
    }
    assert_eq!(value(&r, "_pop3s._tcp.example.com", "SRV"), "0 0 0 .");
    assert_eq!(
        value(&r, "autoconfig.example.com", "CNAME"),
        "mail.example.com."
    );
    assert_eq!(
        value(&r, "autodiscover.example.com", "CNAME"),
        "mail.example.com."
    );
}

fn domain_with(edit: impl FnOnce(&mut MailDomain)) -> MailDomain {
    let mut md = quickstart_domain();
    edit(&mut md);
    md
}

#[test]
fn mx_priorities_with_a_second_region() {
    let primary = domain_with(|md| md.spec.region.peer_hostname = Some("mx2.example.net".into()));
    let r = records(&primary, &[]);
    let mx: Vec<&str> = find(&r, "example.com", "MX")
        .iter()
        .map(|r| r.value.as_str())
        .collect();
    assert_eq!(mx, ["10 mail.example.com.", "20 mx2.example.net."]);
    assert!(mta_sts_policy(&primary.spec)
        .body
        .contains("mx: mail.example.com\r\nmx: mx2.example.net\r\n"));
    assert_eq!(
        value(&r, "_imaps._tcp.example.com", "SRV"),
        "0 1 993 mail.example.com."
    );

    let secondary = domain_with(|md| {
        md.spec.hostname = Some("mx2.example.net".into());
        md.spec.region.role = RegionRole::Secondary;
        md.spec.region.peer_hostname = Some("mail.example.com".into());
    });
    let r2 = records(&secondary, &[]);
    // Both regions publish the same records.
    assert_eq!(r2, r);
}

#[test]
fn alias_domains_get_sender_and_receiver_records_only() {
    let md = domain_with(|md| {
        md.spec.alias_domains = vec!["example.org".into()];
        md.spec.policy.spf.include = vec!["include:_spf.example.net".into()];
        md.spec.policy.dmarc.policy = DmarcPolicy::Reject;
        md.spec.policy.dmarc.percentage = 50;
        md.spec.dns.ttl = Some(300);
    });
    let r = records(&md, &[fixed_key()]);
    assert!(r.iter().all(|r| r.ttl == 300));
    for domain in ["example.com", "example.org"] {
        assert_eq!(value(&r, domain, "MX"), "10 mail.example.com.");
        assert_eq!(
            value(&r, domain, "TXT"),
            "\"v=spf1 mx include:_spf.example.net -all\""
        );
        assert_eq!(
            find(&r, &format!("pw202601010000._domainkey.{domain}"), "TXT").len(),
            1
        );
        assert_eq!(
            value(&r, &format!("_dmarc.{domain}"), "TXT"),
            format!("\"v=DMARC1; p=reject; pct=50; rua=mailto:dmarc-reports@{domain}\"")
        );
    }
    for name in ["_mta-sts.example.org", "_smtp._tls.example.org"] {
        assert!(find(&r, name, "TXT").is_empty(), "{name}");
    }
    assert!(r
        .iter()
        .all(|r| r.record_type != "SRV" || r.name.ends_with("example.com")));
}

#[test]
fn report_address_in_another_of_the_domains_is_authorized() {
    let md = domain_with(|md| {
        md.spec.alias_domains = vec!["example.org".into()];
        md.spec.policy.dmarc.report_address = Some("reports@example.com".into());
        md.spec.policy.tls_report_address = Some("mailto:tls@example.net".into());
    });
    let r = records(&md, &[]);
    assert_eq!(
        value(&r, "_dmarc.example.org", "TXT"),
        "\"v=DMARC1; p=quarantine; pct=100; rua=mailto:reports@example.com\""
    );
    assert_eq!(
        value(&r, "example.org._report._dmarc.example.com", "TXT"),
        "\"v=DMARC1\""
    );
    assert!(find(&r, "example.com._report._dmarc.example.com", "TXT").is_empty());
    assert_eq!(
        value(&r, "_smtp._tls.example.com", "TXT"),
        "\"v=TLSRPTv1; rua=mailto:tls@example.net\""
    );
    // A third-party report address is that party's to authorize.
    let md = domain_with(|md| md.spec.policy.dmarc.report_address = Some("d@example.net".into()));
    assert!(records(&md, &[])
        .iter()
        .all(|r| !r.name.contains("._report._dmarc.")));
}

#[test]
fn mta_sts_id_follows_the_policy() {
    let md = quickstart_domain();
    let id = mta_sts_policy(&md.spec).id;
    assert_eq!(id.len(), 20);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(mta_sts_policy(&quickstart_domain().spec).id, id);
    let enforce = domain_with(|md| md.spec.policy.mta_sts.mode = MtaStsMode::Enforce);
    assert_ne!(mta_sts_policy(&enforce.spec).id, id);
    let longer = domain_with(|md| md.spec.policy.mta_sts.max_age_seconds = 86400 * 30);
    assert_ne!(mta_sts_policy(&longer.spec).id, id);
    // Enforce needs a publicly trusted certificate: said where the record is.
    let r = records(&enforce, &[]);
    let comment = find(&r, "_mta-sts.example.com", "TXT")[0]
        .comment
        .clone()
        .unwrap();
    assert!(comment.contains("WARNING: mode enforce"), "{comment}");
    let r = records(&quickstart_domain(), &[]);
    let comment = find(&r, "_mta-sts.example.com", "TXT")[0]
        .comment
        .clone()
        .unwrap();
    assert!(!comment.contains("WARNING"));
}

#[test]
fn external_dns_endpoint_groups_targets() {
    let md = domain_with(|md| {
        md.metadata.uid = Some("0000-1111".into());
        md.spec.region.peer_hostname = Some("mx2.example.net".into());
    });
    let r = records(&md, &[fixed_key()]);
    let ep = dns_endpoint(&md, &r);
    assert_eq!(ep.metadata.name.as_deref(), Some("example-com-dns"));
    assert_eq!(ep.metadata.namespace.as_deref(), Some("mail"));
    assert_eq!(
        ep.metadata.owner_references.as_ref().unwrap()[0].uid,
        "0000-1111"
    );
    let types = ep.types.as_ref().unwrap();
    assert_eq!(
        (types.api_version.as_str(), types.kind.as_str()),
        ("externaldns.k8s.io/v1alpha1", "DNSEndpoint")
    );
    let endpoints = ep.data["spec"]["endpoints"].as_array().unwrap();
    let get = |name: &str, t: &str| {
        endpoints
            .iter()
            .find(|e| e["dnsName"] == name && e["recordType"] == t)
            .unwrap_or_else(|| panic!("{name} {t}"))
            .clone()
    };
    assert_eq!(
        get("example.com", "MX")["targets"],
        serde_json::json!(["10 mail.example.com", "20 mx2.example.net"])
    );
    assert_eq!(
        get("pw202601010000._domainkey.example.com", "TXT")["targets"],
        serde_json::json!([format!("v=DKIM1; k=rsa; p={FIXED_RSA_PUBLIC}")])
    );
    assert_eq!(get("_dmarc.example.com", "TXT")["recordTTL"], 3600);
}

/// Parses a zone with dnspython: (owner, type, rdata text) of every record.
fn parse_zone(zone: &str) -> Vec<(String, String, String)> {
    const SCRIPT: &str = r#"
import json, sys
import dns.name, dns.zone
zone = dns.zone.from_text(sys.stdin.read(), origin=dns.name.root, relativize=False, check_origin=False)
out = []
for name, node in zone.nodes.items():
    for rdataset in node.rdatasets:
        for rdata in rdataset:
            if rdataset.rdtype == 16:
                assert all(len(s) <= 255 for s in rdata.strings)
            out.append([name.to_text(), dns.rdatatype.to_text(rdataset.rdtype), rdata.to_text()])
print(json.dumps(sorted(out)))
"#;
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(zone.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "dnspython (pip install -r e2e/requirements.txt): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn quickstart_inputs() -> crate::manifest::Inputs {
    let mut inputs = crate::manifest::Inputs::default();
    crate::manifest::load_str(
        std::path::Path::new("quickstart.yaml"),
        crate::render::QUICKSTART,
        &mut inputs,
    )
    .unwrap();
    inputs
}

#[test]
fn render_dns_of_the_quickstart_publishes_the_rendered_secrets_key() {
    let now = ts("2026-03-01T12:00:00Z");
    let inputs = quickstart_inputs();
    let md = &inputs.domains[0];
    let state = crate::render::OfflineState::for_domain(&inputs, md, now).unwrap();
    assert!(state.dkim_generated);
    let zone = crate::render::domain_zone(md, &state);
    assert!(zone.contains("made up by this render"), "{zone}");

    // Every kind of record, parsed by an independent zone parser.
    let parsed = parse_zone(&zone);
    let has = |name: &str, t: &str| parsed.iter().any(|(n, ty, _)| n == name && ty == t);
    for (name, t) in [
        ("example.com.", "MX"),
        ("example.com.", "TXT"),
        ("pw202603011200._domainkey.example.com.", "TXT"),
        ("_dmarc.example.com.", "TXT"),
        ("_mta-sts.example.com.", "TXT"),
        ("_smtp._tls.example.com.", "TXT"),
        ("_submissions._tcp.example.com.", "SRV"),
        ("_imaps._tcp.example.com.", "SRV"),
        ("autoconfig.example.com.", "CNAME"),
    ] {
        assert!(has(name, t), "{name} {t} in {parsed:?}");
    }
    assert_eq!(parsed.len(), records(md, &state.dkim.published()).len());

    // The DKIM record holds the public half of the key in the rendered DKIM Secret: a message
    // signed with that Secret's active key verifies against the parsed record.
    let secret_data = state.dkim.to_secret_data(&md.spec).unwrap();
    let (_, selector) = secret_data["selectors.map"]
        .trim_end()
        .split_once(' ')
        .unwrap();
    let private = DkimKey::from_private_pem(
        selector,
        DkimAlgorithm::Rsa2048,
        secret_data[&format!("example.com.{selector}.key")].clone(),
    )
    .unwrap();
    let (_, _, txt) = parsed
        .iter()
        .find(|(n, t, _)| n == &format!("{selector}._domainkey.example.com.") && t == "TXT")
        .unwrap();
    assert_eq!(
        crate::dkim::tests::dkimpy_verifies(&private, "example.com", txt),
        Ok(true)
    );

    // Given that Secret back as input, render keeps the key instead of making a new one.
    let mut with_secret = inputs.clone();
    with_secret
        .secrets
        .push(k8s_openapi::api::core::v1::Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("example-com-dkim".into()),
                namespace: Some("mail".into()),
                ..Default::default()
            },
            string_data: Some(secret_data),
            ..Default::default()
        });
    let later = ts("2026-03-02T12:00:00Z");
    let again = crate::render::OfflineState::for_domain(&with_secret, md, later).unwrap();
    assert!(!again.dkim_generated);
    assert_eq!(again.dkim, state.dkim);
    let zone_again = crate::render::domain_zone(md, &again);
    assert!(zone_again.contains("from the Secret example-com-dkim"));
    assert_eq!(
        zone_again.lines().skip(2).collect::<Vec<_>>(),
        zone.lines().skip(4).collect::<Vec<_>>()
    );

    // The rendered serving certificate chains to the rendered CA.
    let tls = state.tls.as_ref().unwrap();
    assert!(crate::pki::is_issued_by(&tls.serving.cert_pem, &tls.ca.current.cert_pem).unwrap());
}

#[test]
fn render_dns_covers_every_domain_of_the_inputs() {
    let mut inputs = quickstart_inputs();
    let mut second = inputs.domains[0].clone();
    second.metadata.name = Some("example-org".into());
    second.spec.domain = "example.org".into();
    second.spec.tls.secret_name = Some("own-cert".into());
    second.spec.dkim.algorithm = DkimAlgorithm::Ed25519;
    inputs.domains.push(second);
    let zone = crate::render::dns_zone(&inputs).unwrap();
    assert!(zone.contains(";; MailDomain mail/example-com: records to publish for example.com"));
    assert!(zone.contains(";; MailDomain mail/example-org: records to publish for example.org"));
    assert!(zone.contains("._domainkey.example.org.") && zone.contains("k=ed25519"));
    let state = crate::render::OfflineState::for_domain(
        &inputs,
        &inputs.domains[1],
        ts("2026-01-01T00:00:00Z"),
    )
    .unwrap();
    assert!(state.tls.is_none());
}
