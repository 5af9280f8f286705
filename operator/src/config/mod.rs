//! Pure renderers of the daemon configuration files: Postfix, Dovecot, Rspamd and the small
//! entrypoint scripts that reload them when mounted files change.

pub mod layout;

pub use layout::{Layout, Ports, USER_SHARDS};
