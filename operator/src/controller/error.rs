//! Errors of a reconcile. None of them panics the operator; every one is retried with backoff
//! (see [`super::backoff`]) and its message never carries secret values.

use super::kinds::ChildKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: ChildKind,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: ChildKind,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {kind} {name}: {source}")]
    Status {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("building the desired state: {0}")]
    Plan(String),
    #[error("object without {0}")]
    MissingMetadata(&'static str),
}

impl Error {
    /// Short label for the `error` label of `reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status { .. } => "status",
            Error::Plan(_) => "plan",
            Error::MissingMetadata(_) => "metadata",
        }
    }
}
