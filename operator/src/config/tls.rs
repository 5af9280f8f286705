//! TLS settings shared by Postfix and Dovecot.

/// TLS 1.2 cipher suites: ECDHE key exchange with AEAD ciphers only (Mozilla "intermediate"
/// without the finite-field DHE suites, which need extra parameters and add nothing for modern
/// clients). TLS 1.3 suites are OpenSSL's defaults, all of them AEAD.
pub const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
