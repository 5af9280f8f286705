//! Pure renderers of the daemon configuration files: Postfix, Dovecot, Rspamd and the small
//! entrypoint scripts that reload them when mounted files change.
//!
//! Each renderer takes the MailDomain and a [`Layout`] and returns file name → contents. The
//! names are flat (ConfigMap keys); every file lands in [`Layout::config_dir`].

pub mod continuity;
pub mod dovecot;
pub mod dovecot_auth;
pub mod layout;
pub mod postfix;
pub mod replication;
pub mod rspamd;
pub mod scripts;
mod tls;

pub use layout::{ImapInstance, Layout, Ports, LOOPBACK, USER_SHARDS};

use crate::api::maildomain::MailDomainSpec;

/// The mail server's host name: `spec.hostname`, else `mail.<domain>`.
pub fn hostname(spec: &MailDomainSpec) -> String {
    spec.hostname
        .clone()
        .unwrap_or_else(|| format!("mail.{}", spec.domain))
        .to_ascii_lowercase()
}

/// Files in the secrets directory ([`Layout::secrets_dir`]) the configuration reads.
pub mod secret_files {
    /// Shared password of the Dovecot doveadm servers (replication, backup). Dovecot reads
    /// the file verbatim (`<file`), so it must not end with a newline.
    pub const DOVEADM_PASSWORD: &str = "doveadm-password";
}

/// Files in the DKIM directory ([`Layout::dkim_dir`]).
pub mod dkim_files {
    /// `domain selector` per line: the selector that signs mail of each domain.
    pub const SELECTORS_MAP: &str = "selectors.map";
    /// Rspamd `dkim_signing` settings listing every signing selector per domain (dual signing);
    /// included by the signer's configuration and re-read on reload.
    pub const SIGNING_CONF: &str = "signing.conf";
    /// File name of the private key of `domain` for `selector` (PEM).
    pub fn key(domain: &str, selector: &str) -> String {
        format!("{domain}.{selector}.key")
    }
}

#[cfg(test)]
pub(crate) mod testing;

/// Every file of the MTA pod's ConfigMap: Postfix, Rspamd, the auth sidecar and their
/// entrypoints.
pub fn mta_files(
    md: &crate::api::maildomain::MailDomain,
    layout: &Layout,
) -> std::collections::BTreeMap<String, String> {
    let mut files = postfix::render(md, layout);
    files.extend(rspamd::render(md, layout));
    files.extend(dovecot_auth::render(md, layout));
    files.extend(continuity::render(md, layout));
    let mut scripts = scripts::render(md, layout);
    scripts.retain(|k, _| k != scripts::IMAP_ENTRYPOINT);
    files.extend(scripts);
    files
}

/// Every file of the IMAP pods' ConfigMap: Dovecot, the replication agents' configuration and
/// the entrypoint.
pub fn imap_files(
    md: &crate::api::maildomain::MailDomain,
    layout: &Layout,
) -> std::collections::BTreeMap<String, String> {
    let mut files = dovecot::render(md, layout);
    files.extend(replication::render(md, layout));
    files.extend(continuity::imap_files(md));
    let mut scripts = scripts::render(md, layout);
    scripts.retain(|k, _| k == scripts::IMAP_ENTRYPOINT);
    files.extend(scripts);
    files
}

#[cfg(test)]
pub(crate) mod daemon_tests;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod continuity_tests;
