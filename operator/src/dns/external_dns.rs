//! external-dns `DNSEndpoint` (`externaldns.k8s.io/v1alpha1`) holding a domain's records, for
//! clusters where external-dns publishes DNS (`spec.dns.externalDNS`).

use std::collections::BTreeMap;

use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::txt::unquote_txt;
use crate::api::maildomain::DnsRecord;
use crate::api::MailDomain;
use crate::names::{labels, Component, DomainNames};

/// The external-dns endpoint type.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("externaldns.k8s.io", "v1alpha1", "DNSEndpoint"),
        "dnsendpoints",
    )
}

/// One endpoint per owner name and type, targets in external-dns form: TXT as plain text (the
/// provider splits and quotes it), host names without the trailing dot.
pub fn dns_endpoint(md: &MailDomain, records: &[DnsRecord]) -> DynamicObject {
    let mut grouped: BTreeMap<(String, String), (i64, Vec<String>)> = BTreeMap::new();
    for r in records {
        let target = match r.record_type.as_str() {
            "TXT" => unquote_txt(&r.value),
            _ => r.value.trim_end_matches('.').to_string(),
        };
        let entry = grouped
            .entry((r.name.clone(), r.record_type.clone()))
            .or_insert((r.ttl, Vec::new()));
        entry.1.push(target);
    }
    let endpoints: Vec<_> = grouped
        .into_iter()
        .map(|((name, record_type), (ttl, targets))| {
            json!({"dnsName": name, "recordType": record_type, "recordTTL": ttl, "targets": targets})
        })
        .collect();
    let name = md.name_any();
    let mut obj = DynamicObject::new(&DomainNames::new(&name).dns_endpoint(), &api_resource())
        .data(json!({ "spec": { "endpoints": endpoints } }));
    obj.metadata = ObjectMeta {
        name: obj.metadata.name.take(),
        namespace: md.namespace(),
        labels: Some(labels(&name, Component::Dns)),
        owner_references: md.controller_owner_ref(&()).map(|o| vec![o]),
        ..ObjectMeta::default()
    };
    obj
}
