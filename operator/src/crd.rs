//! The CustomResourceDefinitions, generated from the API types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps,
};
use kube::CustomResourceExt;

use crate::api::{MailDomain, Mailbox};

/// Both CRDs, MailDomain first.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![MailDomain::crd(), Mailbox::crd()];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                removable_optional_objects(schema);
            }
        }
    }
    crds
}

/// An optional object with required members (`spec.backup`, `spec.tls.certManager`) gets no
/// schema defaults below it; the operator applies those defaults when it reads the object.
///
/// Server-side apply removes only the fields the applier set. Fields the API server defaulted
/// belong to nobody, so they would stay behind when a GitOps tool (Flux, Argo CD with
/// server-side apply) drops such an object from its manifest, and the remains, missing their
/// required members, would be refused: the object could never be removed.
fn removable_optional_objects(schema: &mut JSONSchemaProps) {
    let required = schema.required.clone().unwrap_or_default();
    for (name, child) in schema.properties.iter_mut().flatten() {
        let optional = !required.contains(name) && child.default.is_none();
        if optional && has_required_members(child) {
            strip_defaults(child);
        } else {
            removable_optional_objects(child);
        }
    }
}

fn has_required_members(schema: &JSONSchemaProps) -> bool {
    schema.required.as_ref().is_some_and(|r| !r.is_empty())
        || schema
            .properties
            .iter()
            .flatten()
            .any(|(_, child)| has_required_members(child))
}

fn strip_defaults(schema: &mut JSONSchemaProps) {
    schema.default = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_defaults(child);
    }
}

/// Both CRDs as one multi-document YAML stream: the content of `crds/postwarden.yaml`.
pub fn yaml() -> String {
    let mut out = String::new();
    for crd in all() {
        out.push_str("---\n");
        out.push_str(&crate::manifest::to_yaml(&crd));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn schema(crd: &CustomResourceDefinition) -> Value {
        serde_json::to_value(
            crd.spec.versions[0]
                .schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn crds_are_namespaced_with_status_and_printer_columns() {
        for crd in all() {
            assert_eq!(crd.spec.group, "postwarden.dev");
            assert_eq!(crd.spec.scope, "Namespaced");
            let v = &crd.spec.versions[0];
            assert_eq!(v.name, "v1alpha1");
            assert!(v.served && v.storage);
            assert!(v.subresources.as_ref().unwrap().status.is_some());
            let cols: Vec<_> = v
                .additional_printer_columns
                .as_ref()
                .unwrap()
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            assert!(cols.contains(&"Ready") && cols.contains(&"Age"), "{cols:?}");
            assert!(crd
                .spec
                .names
                .categories
                .as_ref()
                .unwrap()
                .contains(&"mail".to_string()));
        }
        let md = MailDomain::crd();
        let cols: Vec<_> = md.spec.versions[0]
            .additional_printer_columns
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(cols, ["Domain", "Ready", "Mailboxes", "Age"]);
    }

    /// Every property of the schema has a description, so `kubectl explain` documents it.
    #[test]
    fn every_field_is_documented() {
        fn walk(path: &str, v: &Value, missing: &mut Vec<String>) {
            if let Some(props) = v.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    let here = format!("{path}.{k}");
                    // Embedded Kubernetes types (metadata, resources, tolerations, conditions) carry their own docs.
                    let inside_k8s = ["metadata", "resources", "tolerations", "conditions"]
                        .iter()
                        .any(|s| here.contains(&format!(".{s}.")));
                    if p.get("description").is_none()
                        && !inside_k8s
                        && k != "metadata"
                        && k != "apiVersion"
                        && k != "kind"
                    {
                        missing.push(here.clone());
                    }
                    walk(&here, p, missing);
                }
            }
            if let Some(items) = v.get("items") {
                walk(&format!("{path}[]"), items, missing);
            }
        }
        for crd in all() {
            let mut missing = Vec::new();
            walk(&crd.spec.names.kind, &schema(&crd), &mut missing);
            assert!(missing.is_empty(), "undocumented fields: {missing:?}");
        }
    }

    #[test]
    fn schema_is_structural_and_carries_cel_rules() {
        let text = serde_json::to_string(&schema(&MailDomain::crd())).unwrap();
        assert!(
            !text.contains("\"anyOf\"")
                && !text.contains("\"oneOf\"")
                && !text.contains("\"$ref\""),
            "non-structural schema"
        );
        assert!(text.contains("spec.domain is immutable"));
        assert!(text.contains("set at most one of tls.certManager and tls.secretName"));
        let text = serde_json::to_string(&schema(&Mailbox::crd())).unwrap();
        assert!(text.contains("spec.localPart is immutable"));
    }

    #[test]
    fn optional_objects_with_required_members_carry_no_defaults() {
        let spec = &schema(&all()[0])["properties"]["spec"]["properties"];
        let text = |v: &Value| v.to_string();
        for path in [&spec["backup"], &spec["tls"]["properties"]["certManager"]] {
            assert!(!text(path).contains("\"default\""), "{path}");
        }
        // Elsewhere the defaults stay: they show the effective spec.
        assert_eq!(spec["tls"]["properties"]["duration"]["default"], "2160h");
        assert_eq!(spec["mta"]["properties"]["replicas"]["default"], 2);
        // And the operator still applies them when it reads the object.
        let md: crate::api::MailDomainSpec = serde_json::from_value(serde_json::json!({
            "domain": "example.com",
            "tls": {"certManager": {"issuerRef": {"name": "le"}}},
            "backup": {"schedule": "30 2 * * *", "destination": {"pvc": {"claimName": "b"}},
                       "encryptionKeySecretRef": {"name": "k"}}
        }))
        .unwrap();
        let issuer = &md.tls.cert_manager.unwrap().issuer_ref;
        assert_eq!(
            (issuer.kind.as_str(), issuer.group.as_str()),
            ("Issuer", "cert-manager.io")
        );
        assert_eq!(md.backup.unwrap().encryption_key_secret_ref.key, "password");
    }

    #[test]
    fn checked_in_crds_match_the_types() {
        let checked_in = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/postwarden.yaml"
        ))
        .expect("crds/postwarden.yaml exists");
        assert!(
            checked_in == yaml(),
            "crds/postwarden.yaml is stale: run `postwarden crds > crds/postwarden.yaml`"
        );
    }
}
