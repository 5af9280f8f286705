//! The DNS records a MailDomain needs: MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT and the records
//! mail clients configure themselves from. They go to `status.dnsRecords`, to
//! `postwarden render --dns` (zone-file syntax) and, optionally, to an external-dns
//! `DNSEndpoint`.
//!
//! Names are fully qualified without the trailing dot; values are zone-file presentation form
//! with absolute host names and TXT data split into quoted strings of at most 255 bytes. The
//! MTA-STS policy body (which is served over HTTPS, not DNS) travels in the `_mta-sts` record's
//! comment; [`mta_sts_policy`] gives it as data.

pub mod external_dns;
pub mod records;
pub mod txt;
pub mod zone;

pub use external_dns::dns_endpoint;
pub use records::{client_host, mta_sts_policy, mx_hosts, records, MtaStsPolicy, DEFAULT_TTL};
pub use txt::{quote_txt, txt_strings, unquote_txt, MAX_TXT_STRING};
pub use zone::zone_file;

#[cfg(test)]
mod tests;
