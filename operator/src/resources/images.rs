//! Container images of the mail pods.
//!
//! The defaults are the mail runtime images built from images/ for this release, so an
//! operator upgrade moves the daemons with it; `spec.mta.image` / `spec.imap.image` pin others.

use crate::api::MailDomainSpec;

/// The one place the default registry is written (a macro, so `concat!` can use it).
macro_rules! default_repository {
    () => {
        "ghcr.io/postwarden"
    };
}

/// Registry and repository prefix of the default images.
pub const DEFAULT_REPOSITORY: &str = default_repository!();
/// Postfix + Rspamd (Debian bookworm-slim, images/mail-mta).
pub const DEFAULT_MTA_IMAGE: &str = concat!(
    default_repository!(),
    "/mail-mta:",
    env!("CARGO_PKG_VERSION")
);
/// Dovecot (Debian bookworm-slim, images/mail-imap).
pub const DEFAULT_IMAP_IMAGE: &str = concat!(
    default_repository!(),
    "/mail-imap:",
    env!("CARGO_PKG_VERSION")
);

/// The images one MailDomain's pods run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    /// Postfix and the Rspamd sidecar.
    pub mta: String,
    /// Dovecot: the IMAP pods and the MTA pods' auth sidecar.
    pub imap: String,
}

impl Default for Images {
    fn default() -> Self {
        Self {
            mta: DEFAULT_MTA_IMAGE.to_string(),
            imap: DEFAULT_IMAP_IMAGE.to_string(),
        }
    }
}

impl Images {
    /// The images of `spec`: its overrides, else `defaults` (the operator's configured images).
    pub fn for_spec(spec: &MailDomainSpec, defaults: &Images) -> Self {
        Self {
            mta: spec
                .mta
                .image
                .clone()
                .unwrap_or_else(|| defaults.mta.clone()),
            imap: spec
                .imap
                .image
                .clone()
                .unwrap_or_else(|| defaults.imap.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_live_under_one_repository_and_carry_the_release() {
        for image in [DEFAULT_MTA_IMAGE, DEFAULT_IMAP_IMAGE] {
            assert!(
                image.starts_with(&format!("{DEFAULT_REPOSITORY}/")),
                "{image}"
            );
            assert!(
                image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
                "{image}"
            );
        }
    }

    #[test]
    fn spec_images_override_the_defaults() {
        let mut spec: MailDomainSpec =
            serde_json::from_value(serde_json::json!({"domain": "example.com"})).unwrap();
        assert_eq!(
            Images::for_spec(&spec, &Images::default()),
            Images::default()
        );
        spec.imap.image = Some("registry.example/dovecot:2.3".into());
        let images = Images::for_spec(&spec, &Images::default());
        assert_eq!(images.imap, "registry.example/dovecot:2.3");
        assert_eq!(images.mta, DEFAULT_MTA_IMAGE);
    }
}
