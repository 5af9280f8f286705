//! Strict field validation of input documents, as the API server applies it to kubectl's requests
//! (`fieldValidation=Strict`): a field the CRD schema does not declare is an error naming it,
//! instead of being dropped. Serde ignores unknown fields, so `render` checks the raw document
//! against the schema the API server will use before it deserializes it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use serde_json::Value;

use crate::crd;

/// Fields of `metadata` (ObjectMeta) the API server accepts.
const OBJECT_META: &[&str] = &[
    "annotations",
    "creationTimestamp",
    "deletionGracePeriodSeconds",
    "deletionTimestamp",
    "finalizers",
    "generateName",
    "generation",
    "labels",
    "managedFields",
    "name",
    "namespace",
    "ownerReferences",
    "resourceVersion",
    "selfLink",
    "uid",
];

/// The stored version's schema of each custom resource kind.
fn schemas() -> &'static BTreeMap<String, JSONSchemaProps> {
    static SCHEMAS: OnceLock<BTreeMap<String, JSONSchemaProps>> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        crd::all()
            .into_iter()
            .filter_map(|crd| {
                let kind = crd.spec.names.kind.clone();
                let version = crd.spec.versions.into_iter().find(|v| v.storage)?;
                Some((kind, version.schema?.open_api_v3_schema?))
            })
            .collect()
    })
}

/// The paths (`spec.replicas`, `spec.aliases[0].foo`) of fields in `doc` that the schema of
/// custom resource `kind` does not declare, sorted. Empty for an unknown kind.
pub fn unknown_fields(kind: &str, doc: &Value) -> Vec<String> {
    let Some(schema) = schemas().get(kind) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    if let Some(Value::Object(meta)) = doc.get("metadata") {
        found.extend(
            meta.keys()
                .filter(|k| !OBJECT_META.contains(&k.as_str()))
                .map(|k| format!("metadata.{k}")),
        );
    }
    let mut top = schema.clone();
    // apiVersion, kind and metadata are the API server's own, whatever the schema says of them.
    if let Some(props) = top.properties.as_mut() {
        for own in ["apiVersion", "kind", "metadata"] {
            props.insert(own.into(), preserve_unknown());
        }
    }
    walk(&top, doc, "", &mut found);
    found.sort();
    found
}

fn preserve_unknown() -> JSONSchemaProps {
    JSONSchemaProps {
        x_kubernetes_preserve_unknown_fields: Some(true),
        ..Default::default()
    }
}

fn walk(schema: &JSONSchemaProps, value: &Value, path: &str, found: &mut Vec<String>) {
    if schema.x_kubernetes_preserve_unknown_fields == Some(true)
        || schema.x_kubernetes_int_or_string == Some(true)
        || schema.x_kubernetes_embedded_resource == Some(true)
    {
        return;
    }
    match value {
        Value::Object(map) => {
            let additional = match &schema.additional_properties {
                Some(JSONSchemaPropsOrBool::Schema(s)) => Some(Some(s.as_ref())),
                Some(JSONSchemaPropsOrBool::Bool(true)) => Some(None),
                _ => None,
            };
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (
                    schema.properties.as_ref().and_then(|p| p.get(key)),
                    additional,
                ) {
                    (Some(s), _) | (None, Some(Some(s))) => walk(s, child, &child_path, found),
                    (None, Some(None)) => {}
                    (None, None) => {
                        // An object schema without properties is free-form only when the
                        // schema says nothing of its members.
                        if schema.properties.is_some() {
                            found.push(child_path);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(JSONSchemaPropsOrArray::Schema(s)) = &schema.items {
                for (i, item) in items.iter().enumerate() {
                    walk(s, item, &format!("{path}[{i}]"), found);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn domain(spec: Value) -> Value {
        json!({"apiVersion": "postwarden.dev/v1alpha1", "kind": "MailDomain",
               "metadata": {"name": "example-com"}, "spec": spec})
    }

    #[test]
    fn declared_fields_pass() {
        let doc = domain(json!({"domain": "example.com", "mta": {"replicas": 2,
                                "storage": {"size": "1Gi"}}}));
        assert_eq!(unknown_fields("MailDomain", &doc), Vec::<String>::new());
    }

    #[test]
    fn undeclared_fields_are_named_at_any_depth() {
        let mut doc = domain(json!({"domain": "example.com", "replicas": 2,
                                    "mta": {"replica": 2}}));
        doc["metadata"]["labelz"] = json!({});
        doc["extra"] = json!(1);
        assert_eq!(
            unknown_fields("MailDomain", &doc),
            [
                "extra",
                "metadata.labelz",
                "spec.mta.replica",
                "spec.replicas"
            ]
        );
    }

    #[test]
    fn members_of_maps_are_free_and_list_items_are_checked() {
        let doc = json!({"apiVersion": "postwarden.dev/v1alpha1", "kind": "Mailbox",
                         "metadata": {"name": "a", "labels": {"anything": "goes"}},
                         "spec": {"domainRef": {"name": "d"}, "localPart": "a",
                                  "aliases": ["b"], "passwordSecretRef": {"name": "s", "nme": "x"}}});
        assert_eq!(
            unknown_fields("Mailbox", &doc),
            ["spec.passwordSecretRef.nme"]
        );
    }

    #[test]
    fn other_kinds_are_not_judged() {
        assert!(unknown_fields("Secret", &json!({"whatever": 1})).is_empty());
    }
}
