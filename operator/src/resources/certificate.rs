//! The cert-manager `Certificate` `<md>-tls` (only with `spec.tls.certManager`): cert-manager
//! issues the serving certificate into the Secret `<md>-tls`, which the pods mount like the
//! internal CA's. cert-manager renews it in place; the daemons reload it without a restart.
//!
//! cert-manager's CRDs are optional in the cluster, so this is a `DynamicObject`.

use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::Domain;
use crate::api::maildomain::CertManagerSpec;
use crate::names::{self, Component};

/// `cert-manager.io/v1` `Certificate`, plural `certificates`.
pub fn api_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate"),
        "certificates",
    )
}

/// The names on a cert-manager certificate: the host name clients and other MTAs connect to
/// and `mail.<domain>`. No cluster-internal names: public issuers (ACME) cannot validate them,
/// and the daemons do not verify names on their internal connections.
pub fn dns_names(domain: &Domain) -> Vec<String> {
    let mut names = vec![
        domain.spec.mail_hostname().to_ascii_lowercase(),
        format!("mail.{}", domain.spec.domain.to_ascii_lowercase()),
    ];
    names.dedup();
    names
}

/// The Certificate for `dns_names` (the serving certificate's subject alternative names).
pub fn build(
    domain: &Domain,
    cert_manager: &CertManagerSpec,
    dns_names: &[String],
) -> DynamicObject {
    let tls = &domain.spec.tls;
    let issuer = &cert_manager.issuer_ref;
    let mut spec = json!({
        "secretName": domain.names.tls(),
        "secretTemplate": { "labels": names::labels(domain.name, Component::Tls) },
        "dnsNames": dns_names,
        "duration": tls.duration,
        "issuerRef": { "name": issuer.name, "kind": issuer.kind, "group": issuer.group },
        // A fresh key at every renewal, like the internal CA's certificates.
        "privateKey": { "algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always" },
        "usages": ["server auth", "digital signature"],
    });
    if let Some(renew_before) = &tls.renew_before {
        spec["renewBefore"] = json!(renew_before);
    }
    let mut obj = DynamicObject::new(&domain.names.tls(), &api_resource())
        .within(domain.namespace)
        .data(json!({ "spec": spec }));
    obj.metadata.labels = Some(names::labels(domain.name, Component::Tls));
    obj
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::maildomain::IssuerRef;
    use crate::resources::testing;

    #[test]
    fn certificate_fills_the_secret_the_pods_mount() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let cm = CertManagerSpec {
            issuer_ref: IssuerRef {
                name: "letsencrypt".into(),
                kind: "ClusterIssuer".into(),
                group: "cert-manager.io".into(),
            },
        };
        let obj = build(&domain, &cm, &["mail.example.com".into()]);
        let v = serde_json::to_value(&obj).unwrap();
        assert_eq!(v["apiVersion"], "cert-manager.io/v1");
        assert_eq!(v["kind"], "Certificate");
        assert_eq!(v["metadata"]["namespace"], "mail");
        assert_eq!(v["spec"]["secretName"], "example-com-tls");
        assert_eq!(v["spec"]["issuerRef"]["kind"], "ClusterIssuer");
        assert_eq!(v["spec"]["dnsNames"][0], "mail.example.com");
        assert_eq!(v["spec"]["duration"], "2160h");
        assert!(v["spec"].get("renewBefore").is_none());
    }

    #[test]
    fn certificate_names_are_public_host_names_only() {
        let mut md = testing::quickstart_domain();
        assert_eq!(dns_names(&testing::domain(&md)), ["mail.example.com"]);
        md.spec.hostname = Some("mx1.example.com".into());
        assert_eq!(
            dns_names(&testing::domain(&md)),
            ["mx1.example.com", "mail.example.com"]
        );
    }
}
