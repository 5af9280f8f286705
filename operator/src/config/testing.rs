//! Fixtures for the renderer tests: the quickstart example.

use std::path::Path;

use crate::api::maildomain::MailDomain;
use crate::api::quantity;
use crate::manifest::{load_str, Inputs};
use crate::userdb::{hash_password, ResolvedMailbox};

/// Salt key of the fixtures' password hashes.
pub const SALT_KEY: &[u8] = b"postwarden-test-salt-key";

/// The quickstart MailDomain and Secrets.
pub fn quickstart_inputs() -> Inputs {
    let text = include_str!("../../../manifests/examples/quickstart.yaml");
    let mut inputs = Inputs::default();
    load_str(Path::new("quickstart.yaml"), text, &mut inputs).expect("quickstart loads");
    inputs
}

/// The continuity example (a Microsoft 365 domain with this stack as its secondary MX).
pub fn continuity_inputs() -> Inputs {
    let text = include_str!("../../../manifests/examples/continuity.yaml");
    let mut inputs = Inputs::default();
    load_str(Path::new("continuity.yaml"), text, &mut inputs).expect("continuity example loads");
    inputs
}

pub fn quickstart() -> MailDomain {
    quickstart_inputs().domains.remove(0)
}

/// The quickstart's Mailboxes, resolved as the controller would (passwords from their Secrets).
pub fn quickstart_mailboxes() -> Vec<ResolvedMailbox> {
    let inputs = quickstart_inputs();
    let domain = &inputs.domains[0].spec.domain;
    inputs
        .mailboxes
        .iter()
        .map(|m| {
            let secret = inputs
                .secrets
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(&m.spec.password_secret_ref.name))
                .expect("password secret");
            let password = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(&m.spec.password_secret_ref.key))
                .expect("password key");
            let address = format!("{}@{domain}", m.spec.normalized_local_part());
            ResolvedMailbox {
                local_part: m.spec.normalized_local_part(),
                password_hash: hash_password(password, SALT_KEY, &address).expect("hash"),
                aliases: m.spec.aliases.clone(),
                forward_to: m.spec.forward_to.clone(),
                keep_copy: m.spec.keep_copy,
                quota_bytes: m.spec.quota.as_ref().and_then(quantity::to_bytes),
                suspended: m.spec.suspended,
            }
        })
        .collect()
}
