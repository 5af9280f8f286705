//! Everything one MailDomain needs, computed purely from its spec, its Mailboxes and the
//! state kept in its Secrets: [`desired`] turns [`DomainInputs`] into [`Children`].
//!
//! The controller reads the cluster, fills the inputs, calls [`desired`], adds the owner
//! reference and applies [`Children::in_apply_order`]; `postwarden render` does the same with
//! generated state and prints the objects.

pub mod addresses;
pub mod children;

pub use addresses::{Exclusion, ExclusionReason};
pub use children::{Child, Children, MailboxOutcome};
