//! Issuing the internal CA and serving certificates, and reading them back.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use kube::ResourceExt;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

use super::PkiError;
use crate::api::MailDomain;
use crate::names::DomainNames;

/// A certificate and its private key, both PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPair {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertKeyPair {
    // Private keys never reach logs, not even through a stray `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertKeyPair")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Certificates start this long before `now`, so peers whose clocks lag a little accept them.
pub const BACKDATE: Duration = Duration::from_secs(3600);

/// Organization named in the subject of every certificate the operator issues.
const ORGANIZATION: &str = "postwarden";

/// A new self-signed CA (ECDSA P-256) valid from `now - BACKDATE` for `lifetime` from `now`.
/// It may sign end-entity certificates only (path length 0).
pub fn new_ca(
    common_name: &str,
    now: Timestamp,
    lifetime: Duration,
) -> Result<CertKeyPair, PkiError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = subject(common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, sub(now, BACKDATE)?, add(now, lifetime)?)?;
    params.serial_number = Some(random_serial());
    let cert = params.self_signed(&key)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names` (the first is also the subject common name), with a
/// new ECDSA P-256 key, signed by `ca`. It is valid from `now - BACKDATE` for `lifetime` from
/// `now`, but never past the CA's own expiry (a chain is only as valid as its issuer).
pub fn issue_serving(
    ca: &CertKeyPair,
    dns_names: &[String],
    now: Timestamp,
    lifetime: Duration,
) -> Result<CertKeyPair, PkiError> {
    let first = dns_names
        .first()
        .ok_or_else(|| PkiError::Invalid("a serving certificate needs a DNS name".into()))?;
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let (_, ca_not_after) = cert_validity(&ca.cert_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;

    let mut params = CertificateParams::new(dns_names.to_vec())?;
    params.distinguished_name = subject(first);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Client authentication too: the daemons present this certificate to each other.
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    set_validity(
        &mut params,
        sub(now, BACKDATE)?,
        add(now, lifetime)?.min(ca_not_after),
    )?;
    params.serial_number = Some(random_serial());

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(CertKeyPair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Every name a client may reach the mail daemons by: the MX host name, `mail.<domain>`, the
/// Services' in-cluster names (short `.svc` and `.svc.cluster.local` forms) and each Dovecot
/// pod's name under its headless Service (the pods replicate to each other over TLS).
/// The host name comes first; no name appears twice.
pub fn serving_dns_names(md: &MailDomain, namespace: &str) -> Vec<String> {
    let spec = &md.spec;
    let names = DomainNames::new(&md.name_any());
    let mut out = vec![spec.mail_hostname(), format!("mail.{}", spec.domain)];
    let in_cluster = |host: &str| {
        [
            format!("{host}.{namespace}.svc"),
            format!("{host}.{namespace}.svc.cluster.local"),
        ]
    };
    for service in [names.mta(), names.imap(), names.imap_headless()] {
        out.extend(in_cluster(&service));
    }
    for ordinal in 0..spec.imap.replicas.max(0) {
        let pod = format!("{}-{ordinal}.{}", names.imap(), names.imap_headless());
        out.extend(in_cluster(&pod));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|n| seen.insert(n.clone()));
    out
}

/// The `kubernetes.io/tls` Secret data of a serving certificate: `tls.crt`, `tls.key`, and
/// `ca.crt` holding every CA clients must trust (see [`super::CaState::trust_bundle`]).
pub fn serving_secret_data(serving: &CertKeyPair, trust_bundle: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("tls.crt".to_string(), serving.cert_pem.clone()),
        ("tls.key".to_string(), serving.key_pem.clone()),
        ("ca.crt".to_string(), trust_bundle.to_string()),
    ])
}

/// What the renewal decisions need to know about a certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    /// DNS subject alternative names, sorted, without duplicates.
    pub dns_names: Vec<String>,
}

/// Validity period (`notBefore`, `notAfter`) of the first certificate in `cert_pem`.
pub fn cert_validity(cert_pem: &str) -> Result<(Timestamp, Timestamp), PkiError> {
    let info = inspect(cert_pem)?;
    Ok((info.not_before, info.not_after))
}

/// Reads the first certificate in `cert_pem`.
pub fn inspect(cert_pem: &str) -> Result<CertInfo, PkiError> {
    let pem = first_pem(cert_pem)?;
    let cert = parse(&pem)?;
    let validity = cert.validity();
    let time =
        |t: i64| Timestamp::from_second(t).map_err(|e| PkiError::Parse(format!("time {t}: {e}")));
    let mut dns_names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_string()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(PkiError::Parse(e.to_string())),
    };
    dns_names.sort();
    dns_names.dedup();
    Ok(CertInfo {
        not_before: time(validity.not_before.timestamp())?,
        not_after: time(validity.not_after.timestamp())?,
        dns_names,
    })
}

/// True when the first certificate of `cert_pem` carries a valid signature of the first
/// certificate of `ca_pem`'s key.
pub fn is_issued_by(cert_pem: &str, ca_pem: &str) -> Result<bool, PkiError> {
    let (cert_pem, ca_pem) = (first_pem(cert_pem)?, first_pem(ca_pem)?);
    let (cert, ca) = (parse(&cert_pem)?, parse(&ca_pem)?);
    Ok(cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok())
}

fn parse(pem: &Pem) -> Result<X509Certificate<'_>, PkiError> {
    pem.parse_x509().map_err(|e| PkiError::Parse(e.to_string()))
}

fn first_pem(text: &str) -> Result<Pem, PkiError> {
    Pem::iter_from_buffer(text.as_bytes())
        .next()
        .ok_or_else(|| PkiError::Parse("no PEM block found".into()))?
        .map_err(|e| PkiError::Parse(e.to_string()))
}

/// X.509 limits a common name to 64 characters (RFC 5280 ub-common-name).
const MAX_COMMON_NAME: usize = 64;

/// Organization `postwarden` and the common name, left out when too long (a certificate is
/// matched by its DNS names anyway).
fn subject(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, ORGANIZATION);
    if common_name.len() <= MAX_COMMON_NAME {
        dn.push(DnType::CommonName, common_name);
    }
    dn
}

/// A CA's common name: `name` (cut to fit) and its creation time, so that the old and the new
/// CA of a rotation have distinct subjects and chains are never ambiguous.
pub fn dated_ca_name(name: &str, now: Timestamp) -> String {
    let stamp = now
        .to_zoned(jiff::tz::TimeZone::UTC)
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let mut cut = MAX_COMMON_NAME - stamp.len() - 1;
    while cut < name.len() && !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} {stamp}", &name[..cut.min(name.len())])
}

/// A positive 128-bit random serial: every certificate is unique even when issued twice in the
/// same second for the same names.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

pub(crate) fn add(t: Timestamp, d: Duration) -> Result<Timestamp, PkiError> {
    t.checked_add(d)
        .map_err(|e| PkiError::Invalid(format!("{t} + {d:?}: {e}")))
}

pub(crate) fn sub(t: Timestamp, d: Duration) -> Result<Timestamp, PkiError> {
    t.checked_sub(d)
        .map_err(|e| PkiError::Invalid(format!("{t} - {d:?}: {e}")))
}

/// Sets the validity period. rcgen takes `time::OffsetDateTime`, built here from the Unix epoch
/// plus whole seconds, so the crate needs no direct dependency on `time`.
fn set_validity(
    params: &mut CertificateParams,
    not_before: Timestamp,
    not_after: Timestamp,
) -> Result<(), PkiError> {
    let since_epoch = |t: Timestamp| {
        u64::try_from(t.as_second())
            .map(Duration::from_secs)
            .map_err(|_| PkiError::Invalid(format!("{t} is before 1970")))
    };
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    params.not_before = epoch + since_epoch(not_before)?;
    params.not_after = epoch + since_epoch(not_after)?;
    Ok(())
}
