//! Password hashes for the users database.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sha_crypt::{PasswordHasher, ShaCrypt};

/// Why a Secret's password value cannot go into the users database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty")]
    Empty,
    #[error("password hashes in the {0} scheme are not accepted: give the plain password (it is hashed with SHA512-CRYPT) or a {{SHA512-CRYPT}} or {{ARGON2ID}} hash")]
    WeakScheme(String),
    #[error("the {0} hash is malformed: it must look like {1}")]
    MalformedHash(&'static str, &'static str),
    #[error("the salt key is empty")]
    NoSaltKey,
}

const SHA512_CRYPT: &str = "{SHA512-CRYPT}";
const ARGON2ID: &str = "{ARGON2ID}";

/// Turns a Secret's password value into a `{SCHEME}hash` for the passwd-file.
///
/// A value that already is a `{SHA512-CRYPT}$6$...` or `{ARGON2ID}$argon2id$...` hash is
/// returned unchanged. Any other `{SCHEME}` prefix (PLAIN, MD5-CRYPT, SHA, SSHA, ...) is refused.
/// Anything else is the plain password: it is hashed with SHA512-CRYPT (5,000 rounds, the
/// glibc and `doveadm pw` default) under a deterministic salt, the first 12 bytes of
/// HMAC-SHA256(`salt_key`, lowercase `address` || 0x00 || `password`).
///
/// Why a deterministic salt leaks nothing: the salt is a keyed PRF of the address and the
/// password, so without `salt_key` it is indistinguishable from a random salt. It differs per
/// address (equal passwords of two users give unrelated hashes) and per password (a changed
/// password gets a fresh salt), so no precomputation helps across users and a guess must still
/// be checked through the full SHA512-CRYPT cost per user. What an observer of the stored hash
/// can learn is only whether a user's password is the same as at an earlier time, which the
/// write of a changed Secret reveals anyway. In exchange an unchanged password gives a
/// byte-identical hash, so resyncs write nothing and do not roll or reload anything.
pub fn hash_password(
    password: &str,
    salt_key: &[u8],
    address: &str,
) -> Result<String, PasswordError> {
    if let Some(rest) = password.strip_prefix('{') {
        if let Some((scheme, _)) = rest.split_once('}') {
            return accept_hash(password, scheme);
        }
    }
    if password.is_empty() {
        return Err(PasswordError::Empty);
    }
    if salt_key.is_empty() {
        return Err(PasswordError::NoSaltKey);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(salt_key).expect("HMAC takes keys of any length");
    mac.update(address.to_ascii_lowercase().as_bytes());
    mac.update(&[0]);
    mac.update(password.as_bytes());
    let salt = mac.finalize().into_bytes();
    let hash = ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt[..12])
        .expect("SHA512-CRYPT accepts any password and a 12-byte salt");
    Ok(format!("{SHA512_CRYPT}{hash}"))
}

fn accept_hash(value: &str, scheme: &str) -> Result<String, PasswordError> {
    let (name, shape, ok) = match scheme.to_ascii_uppercase().as_str() {
        "SHA512-CRYPT" => (
            SHA512_CRYPT,
            "{SHA512-CRYPT}$6$<salt>$<hash>",
            is_crypt_field_safe(&value[SHA512_CRYPT.len()..], "$6$"),
        ),
        "ARGON2ID" => (
            ARGON2ID,
            "{ARGON2ID}$argon2id$v=19$m=...,t=...,p=...$<salt>$<hash>",
            is_crypt_field_safe(&value[ARGON2ID.len()..], "$argon2id$"),
        ),
        _ => return Err(PasswordError::WeakScheme(scheme.to_string())),
    };
    // The scheme prefix is case-insensitive for Dovecot, but keep one spelling in the file.
    if !ok || !value.starts_with(name) {
        return Err(PasswordError::MalformedHash(
            name.trim_matches(['{', '}']),
            shape,
        ));
    }
    Ok(value.to_string())
}

/// A crypt string with the expected prefix and nothing that would break a passwd-file line.
fn is_crypt_field_safe(hash: &str, prefix: &str) -> bool {
    hash.starts_with(prefix)
        && hash.len() > prefix.len() + 8
        && hash
            .chars()
            .all(|c| c.is_ascii_graphic() && c != ':' && c != '{' && c != '}')
}
