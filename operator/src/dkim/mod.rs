//! DKIM signing keys of a MailDomain: generation, the DNS TXT value, and selector rotation.
//!
//! - [`key`]: one key pair and its selector.
//! - [`rotation`]: which keys exist and what to do next ([`plan_rotation`]), stored in the
//!   domain's DKIM Secret ([`DkimState::to_secret_data`]).

pub mod key;
pub mod rotation;

pub use crate::api::maildomain::DkimAlgorithm;
pub use key::{generate, selector_for, txt_value, DkimKey};
pub use rotation::{
    advance, plan_rotation, DkimState, KeyRole, RotationAction, RotationPlan, RotationPolicy,
    StoredKey,
};

/// A DKIM key could not be made, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    #[error("generating a {algorithm:?} key: {message}")]
    Generate {
        algorithm: DkimAlgorithm,
        message: String,
    },
    #[error("DKIM key {selector:?}: {message}")]
    Key { selector: String, message: String },
    #[error("DKIM Secret: {0}")]
    Secret(String),
    #[error("{0}")]
    Policy(String),
}

#[cfg(test)]
pub(crate) mod tests;
