//! `postwarden render`: every object the operator would create, computed offline.

use crate::manifest::Inputs;

/// The quickstart example, rendered when no file is given.
pub const QUICKSTART: &str = include_str!("../../manifests/examples/quickstart.yaml");

/// Every Kubernetes object for the inputs, as a multi-document YAML stream.
pub fn objects_yaml(inputs: &Inputs) -> anyhow::Result<String> {
    anyhow::bail!(
        "rendering {} domain(s) needs the resource builders",
        inputs.domains.len()
    )
}

/// The DNS records of every domain, in zone-file syntax.
pub fn dns_zone(inputs: &Inputs) -> anyhow::Result<String> {
    anyhow::bail!(
        "rendering DNS for {} domain(s) needs the dns module",
        inputs.domains.len()
    )
}
