//! One DKIM key pair, its selector and its DNS TXT value.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use rand::rngs::OsRng;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::EncodePublicKey;
use rsa::{RsaPrivateKey, RsaPublicKey};

use super::{DkimAlgorithm, DkimError};

/// Size of generated RSA keys: RFC 8301 requires at least 1024 bits and recommends 2048; 2048
/// is also the largest whose TXT record every DNS provider accepts.
pub const RSA_BITS: usize = 2048;

/// A DKIM key pair.
///
/// `private_pem` is PKCS#1 (`BEGIN RSA PRIVATE KEY`) for RSA, the form every DKIM signer reads,
/// and PKCS#8 v1 (`BEGIN PRIVATE KEY`) for Ed25519. `public_b64` is the `p=` tag: the base64
/// DER SubjectPublicKeyInfo for RSA (RFC 6376), the raw 32-byte key for Ed25519 (RFC 8463).
#[derive(Clone, PartialEq, Eq)]
pub struct DkimKey {
    pub selector: String,
    pub algorithm: DkimAlgorithm,
    pub private_pem: String,
    pub public_b64: String,
}

impl std::fmt::Debug for DkimKey {
    // Private keys never reach logs, not even through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DkimKey")
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .field("private_pem", &"<redacted>")
            .field("public_b64", &self.public_b64)
            .finish()
    }
}

/// A new key pair for `selector`.
pub fn generate(algorithm: DkimAlgorithm, selector: &str) -> Result<DkimKey, DkimError> {
    let failed = |e: &dyn std::fmt::Display| DkimError::Generate {
        algorithm,
        message: e.to_string(),
    };
    let private_pem = match algorithm {
        DkimAlgorithm::Rsa2048 => RsaPrivateKey::new(&mut OsRng, RSA_BITS)
            .map_err(|e| failed(&e))?
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| failed(&e))?
            .to_string(),
        DkimAlgorithm::Ed25519 => {
            let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
            KeypairBytes {
                secret_key: key.to_bytes(),
                public_key: None,
            }
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .map_err(|e| failed(&e))?
            .to_string()
        }
    };
    DkimKey::from_private_pem(selector, algorithm, private_pem)
}

impl DkimKey {
    /// Rebuilds a key from its stored private half (the public half is derived from it).
    pub fn from_private_pem(
        selector: &str,
        algorithm: DkimAlgorithm,
        private_pem: String,
    ) -> Result<Self, DkimError> {
        let bad = |e: &dyn std::fmt::Display| DkimError::Key {
            selector: selector.to_string(),
            message: e.to_string(),
        };
        let public = match algorithm {
            DkimAlgorithm::Rsa2048 => {
                let key = RsaPrivateKey::from_pkcs1_pem(&private_pem).map_err(|e| bad(&e))?;
                RsaPublicKey::from(&key)
                    .to_public_key_der()
                    .map_err(|e| bad(&e))?
                    .as_bytes()
                    .to_vec()
            }
            DkimAlgorithm::Ed25519 => ed25519_dalek::SigningKey::from_pkcs8_pem(&private_pem)
                .map_err(|e| bad(&e))?
                .verifying_key()
                .to_bytes()
                .to_vec(),
        };
        Ok(Self {
            selector: selector.to_string(),
            algorithm,
            private_pem,
            public_b64: BASE64.encode(public),
        })
    }

    /// The private key as the signer (Rspamd) reads it from `<domain>.<selector>.key`: the PEM
    /// for RSA; for Ed25519 Rspamd's own form, base64 of the 32-byte seed followed by the
    /// 32-byte public key on one line (what `rspamadm dkim_keygen -t ed25519` writes; Rspamd
    /// does not read Ed25519 PEM).
    pub fn signer_key(&self) -> Result<String, DkimError> {
        match self.algorithm {
            DkimAlgorithm::Rsa2048 => Ok(self.private_pem.clone()),
            DkimAlgorithm::Ed25519 => {
                let key =
                    ed25519_dalek::SigningKey::from_pkcs8_pem(&self.private_pem).map_err(|e| {
                        DkimError::Key {
                            selector: self.selector.clone(),
                            message: e.to_string(),
                        }
                    })?;
                Ok(BASE64.encode(key.to_keypair_bytes()))
            }
        }
    }

    /// A key with its public half only, e.g. read back from a published record.
    pub fn public_only(selector: &str, algorithm: DkimAlgorithm, public_b64: &str) -> Self {
        Self {
            selector: selector.to_string(),
            algorithm,
            private_pem: String::new(),
            public_b64: public_b64.to_string(),
        }
    }
}

/// The `k=` tag of an algorithm.
pub fn key_type(algorithm: DkimAlgorithm) -> &'static str {
    match algorithm {
        DkimAlgorithm::Rsa2048 => "rsa",
        DkimAlgorithm::Ed25519 => "ed25519",
    }
}

/// The TXT record data published at `<selector>._domainkey.<domain>` (one string; split it
/// into DNS character-strings with [`crate::dns::txt_strings`]).
pub fn txt_value(key: &DkimKey) -> String {
    format!(
        "v=DKIM1; k={}; p={}",
        key_type(key.algorithm),
        key.public_b64
    )
}

/// The selector of a key created at `now`: `pw` and the UTC time to the minute,
/// `pwYYYYMMDDhhmm` (e.g. `pw202601150930`). Selectors of later keys sort after earlier ones,
/// name when the key was made, and are valid DNS labels. Keys of one domain are hours apart
/// (rotation period at least 24h, overlap at most half of it), so they never share a minute;
/// [`super::DkimState::unused_selector`] still guards against it.
pub fn selector_for(now: Timestamp) -> String {
    now.to_zoned(TimeZone::UTC)
        .strftime("pw%Y%m%d%H%M")
        .to_string()
}
