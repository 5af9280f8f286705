//! The external-dns `DNSEndpoint` `<md>-dns` (only with `spec.dns.externalDNS`): the records
//! the domain needs, for external-dns to publish. Optional CRD, so a `DynamicObject`.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{json, Value};

use super::Domain;
use crate::api::maildomain::DnsRecord;
use crate::names::{self, Component};

/// `externaldns.k8s.io/v1alpha1` `DNSEndpoint`, plural `dnsendpoints`.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
        "dnsendpoints",
    )
}

/// Name of the DNSEndpoint of a MailDomain.
pub fn name(domain: &Domain) -> String {
    format!("{}-dns", domain.name)
}

/// The DNSEndpoint holding `records`, one endpoint per owner name and type.
pub fn build(domain: &Domain, records: &[DnsRecord]) -> DynamicObject {
    let mut endpoints: Vec<Value> = Vec::new();
    for r in records {
        let target = target(r);
        let same = endpoints
            .iter_mut()
            .find(|e| e["dnsName"] == r.name.as_str() && e["recordType"] == r.record_type.as_str());
        match same {
            Some(e) => e["targets"]
                .as_array_mut()
                .expect("targets")
                .push(json!(target)),
            None => endpoints.push(json!({
                "dnsName": r.name,
                "recordType": r.record_type,
                "recordTTL": r.ttl,
                "targets": [target],
            })),
        }
    }
    let mut obj = DynamicObject::new(&name(domain), &api_resource())
        .within(domain.namespace)
        .data(json!({ "spec": { "endpoints": endpoints } }));
    obj.metadata.labels = Some(names::labels(domain.name, Component::Dkim));
    obj
}

/// external-dns takes TXT targets unquoted (it splits long values itself); zone-file TXT
/// data is a sequence of quoted strings.
fn target(r: &DnsRecord) -> String {
    if r.record_type != "TXT" {
        return r.value.clone();
    }
    let mut out = String::new();
    let mut in_string = false;
    let mut escaped = false;
    for c in r.value.chars() {
        match (in_string, escaped, c) {
            (true, true, c) => {
                out.push(c);
                escaped = false;
            }
            (true, false, '\\') => escaped = true,
            (_, false, '"') => in_string = !in_string,
            (true, false, c) => out.push(c),
            (false, _, _) => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    fn rec(name: &str, t: &str, value: &str) -> DnsRecord {
        DnsRecord {
            name: name.into(),
            record_type: t.into(),
            ttl: 3600,
            value: value.into(),
        }
    }

    #[test]
    fn records_group_by_name_and_type_with_txt_unquoted() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let obj = build(
            &domain,
            &[
                rec("example.com", "MX", "10 mail.example.com."),
                rec("example.com", "TXT", "\"v=spf1 mx -all\""),
                rec("example.com", "TXT", "\"google-site-verification=x\""),
                rec(
                    "pw._domainkey.example.com",
                    "TXT",
                    "\"v=DKIM1; k=rsa; p=AB\" \"CD\\\"E\"",
                ),
            ],
        );
        let v = serde_json::to_value(&obj).unwrap();
        assert_eq!(v["kind"], "DNSEndpoint");
        let eps = v["spec"]["endpoints"].as_array().unwrap();
        assert_eq!(eps.len(), 3);
        assert_eq!(eps[0]["targets"][0], "10 mail.example.com.");
        assert_eq!(eps[1]["targets"].as_array().unwrap().len(), 2);
        assert_eq!(eps[1]["targets"][0], "v=spf1 mx -all");
        assert_eq!(eps[2]["targets"][0], "v=DKIM1; k=rsa; p=ABCD\"E");
    }
}
