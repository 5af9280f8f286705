//! Custom resource types of the `postwarden.dev/v1alpha1` API.
//!
//! The Rust types are the single source of the CRD schemas (`postwarden crds`), including the
//! CEL rules that the API server enforces at admission. [`validate`] holds the checks that go
//! beyond what a schema can say, shared by `postwarden render` and the reconcilers.

pub mod conditions;
pub mod continuity;
pub mod mailbox;
pub mod maildomain;
pub mod quantity;
pub mod validate;

pub use mailbox::{Mailbox, MailboxSpec, MailboxStatus};
pub use maildomain::{MailDomain, MailDomainSpec, MailDomainStatus};

/// API group of every Postwarden resource.
pub const GROUP: &str = "postwarden.dev";
/// The one served and stored version.
pub const VERSION: &str = "v1alpha1";
