//! The CustomResourceDefinitions, generated from the API types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{MailDomain, Mailbox};

/// Both CRDs, MailDomain first.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![MailDomain::crd(), Mailbox::crd()]
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
