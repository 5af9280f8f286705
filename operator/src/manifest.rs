//! Reading and writing YAML manifests: the input of `postwarden render` and the output of every
//! command that prints Kubernetes objects.

use std::fmt;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::api::{validate, MailDomain, Mailbox};
use crate::strict;

/// Serializes one object as a YAML document (without the leading `---`).
pub fn to_yaml<T: Serialize>(value: &T) -> String {
    // Going through serde_json::Value drops nothing and gives stable, sorted-by-struct output.
    let value = serde_json::to_value(value).expect("Kubernetes objects serialize to JSON");
    // Multi-line strings (config files) as literal blocks; long single lines never folded.
    let mut opts = serde_saphyr::SerializerOptions::default();
    opts.prefer_block_scalars = true;
    opts.folded_wrap_chars = usize::MAX;
    opts.min_fold_chars = usize::MAX;
    serde_saphyr::to_string_with_options(&value, opts).expect("JSON values serialize to YAML")
}

/// Serializes objects as a multi-document YAML stream.
pub fn to_yaml_stream<T: Serialize>(values: &[T]) -> String {
    let mut out = String::new();
    for v in values {
        out.push_str("---\n");
        out.push_str(&to_yaml(v));
    }
    out
}

/// Where a document came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    /// 1-based index of the document in its file.
    pub document: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: document {}", self.file.display(), self.document)
    }
}

/// A problem with the input, naming the file, the document and the field.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Document { origin: Origin, message: String },
    #[error("{origin} ({kind} {name}): {error}")]
    Invalid {
        origin: Origin,
        kind: &'static str,
        name: String,
        error: validate::Invalid,
    },
}

/// The resources `render` works from.
#[derive(Clone, Debug, Default)]
pub struct Inputs {
    pub domains: Vec<MailDomain>,
    pub mailboxes: Vec<Mailbox>,
    pub secrets: Vec<Secret>,
    /// ConfigMaps a spec refers to (`spec.continuity.recipients.configMapRef`).
    pub config_maps: Vec<ConfigMap>,
}

impl Inputs {
    /// The text of `spec.continuity.recipients.configMapRef` of `md`, looked up in the inputs
    /// (see [`crate::plan::DomainInputs::continuity_recipients`]).
    pub fn continuity_recipients(
        &self,
        md: &crate::api::MailDomain,
    ) -> Option<Result<String, String>> {
        let r = md
            .spec
            .continuity
            .as_ref()?
            .recipients
            .config_map_ref
            .as_ref()?;
        let namespace = md.metadata.namespace.as_deref();
        let cm = self.config_maps.iter().find(|c| {
            c.metadata.name.as_deref() == Some(&r.name)
                && c.metadata.namespace.as_deref() == namespace
        });
        Some(match cm {
            None => Err(format!("ConfigMap {} is not in the input", r.name)),
            Some(cm) => crate::plan::config_map_key(cm, &r.key),
        })
    }
}

/// Loads a file, or every `*.yaml`/`*.yml` file of a directory in name order.
pub fn load_path(path: &Path) -> Result<Inputs, LoadError> {
    let io = |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut inputs = Inputs::default();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        load_str(&file, &text, &mut inputs)?;
    }
    Ok(inputs)
}

/// Parses one multi-document YAML text into `inputs`, validating every MailDomain and Mailbox.
pub fn load_str(file: &Path, text: &str, inputs: &mut Inputs) -> Result<(), LoadError> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| LoadError::Yaml {
        path: file.to_path_buf(),
        message: e.to_string(),
    })?;
    for (i, doc) in docs.into_iter().enumerate() {
        let origin = Origin {
            file: file.to_path_buf(),
            document: i + 1,
        };
        if doc.is_null() {
            continue;
        }
        let api_version = doc
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let kind = doc
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        match (api_version.as_str(), kind.as_str()) {
            ("postwarden.dev/v1alpha1", "MailDomain") => {
                let md: MailDomain = typed(&origin, doc)?;
                let name = md.metadata.name.clone().unwrap_or_default();
                let semantic = validate::maildomain(&name, &md.spec);
                check(&origin, "MailDomain", &name, &md, semantic)?;
                inputs.domains.push(md);
            }
            ("postwarden.dev/v1alpha1", "Mailbox") => {
                let mb: Mailbox = typed(&origin, doc)?;
                let name = mb.metadata.name.clone().unwrap_or_default();
                let semantic = validate::mailbox(&mb.spec);
                check(&origin, "Mailbox", &name, &mb, semantic)?;
                inputs.mailboxes.push(mb);
            }
            ("v1", "Secret") => inputs.secrets.push(typed(&origin, doc)?),
            ("v1", "ConfigMap") => inputs.config_maps.push(typed(&origin, doc)?),
            _ => {
                return Err(LoadError::Document {
                    origin,
                    message: format!(
                        "unsupported object {api_version:?} {kind:?}: expected MailDomain, Mailbox (postwarden.dev/v1alpha1), Secret or ConfigMap (v1)"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// Deserializes a document, naming the offending field on failure. Custom resources are held to
/// their CRD schema as strictly as kubectl's requests are: an undeclared field is an error.
fn typed<T: DeserializeOwned>(origin: &Origin, doc: Value) -> Result<T, LoadError> {
    let needs_name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty);
    if needs_name {
        return Err(LoadError::Document {
            origin: origin.clone(),
            message: "metadata.name: required".into(),
        });
    }
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    let unknown = strict::unknown_fields(kind, &doc);
    if !unknown.is_empty() {
        let fields: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field {f:?}"))
            .collect();
        return Err(LoadError::Document {
            origin: origin.clone(),
            message: fields.join(", "),
        });
    }
    serde_path_to_error::deserialize(doc).map_err(|e| LoadError::Document {
        origin: origin.clone(),
        message: format!("{}: {}", e.path(), e.inner()),
    })
}

/// Runs the CEL rules of the CRD schema, as the API server would at creation, and merges their
/// findings with the semantic checks (one message per field, admission's first).
fn check<K>(
    origin: &Origin,
    kind: &'static str,
    name: &str,
    obj: &K,
    semantic: Result<(), validate::Invalid>,
) -> Result<(), LoadError>
where
    K: kube::CustomResourceExt + Serialize,
{
    let mut errors: Vec<validate::FieldError> = match kube::core::cel::validate_cel(obj) {
        Ok(()) => Vec::new(),
        Err(errors) => errors
            .into_vec()
            .into_iter()
            .map(|e| validate::FieldError {
                field: e.field_path.trim_start_matches('.').to_string(),
                message: e.message,
            })
            .collect(),
    };
    for e in semantic.err().map(|i| i.0).unwrap_or_default() {
        if !errors.iter().any(|seen| seen.field == e.field) {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        return Ok(());
    }
    errors.sort_by(|a, b| a.field.cmp(&b.field));
    Err(LoadError::Invalid {
        origin: origin.clone(),
        kind,
        name: name.to_string(),
        error: validate::Invalid(errors),
    })
}
