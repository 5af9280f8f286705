//! One availability probe of an upstream: an SMTP session up to RCPT, no message sent.
//!
//! EHLO, STARTTLS (required; the certificate verified for the host name unless the spec says
//! `Encrypt`), EHLO, `MAIL FROM:<>`, `RCPT TO:<postmaster@domain>`, QUIT. A 4xx answer, a 5xx
//! greeting or EHLO, a failed TLS handshake, a refused connection or a timeout is a failure; a
//! 5xx at MAIL or RCPT is an answer (the provider is up and decided).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::rustls;

/// Longest wait for a connection or a reply (Postfix's smtp_helo_timeout is 300 s; a probe that
/// waits that long is no probe).
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// What the probe says about the upstream, with the reply or error that decided it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Available(String),
    Unavailable(String),
}

pub struct Prober {
    ehlo: String,
    recipient: String,
    tls: tokio_rustls::TlsConnector,
}

impl Prober {
    pub fn new(ehlo: &str, recipient: &str, verify: bool) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let config = if verify {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                tracing::warn!("no trusted CA certificates found: verified TLS will fail");
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth()
        };
        Ok(Self {
            ehlo: ehlo.to_string(),
            recipient: recipient.to_string(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// Probes `host:port`.
    pub async fn probe(&self, upstream: &str) -> Outcome {
        match self.session(upstream).await {
            Ok(reply) => Outcome::Available(reply),
            Err(reason) => Outcome::Unavailable(reason),
        }
    }

    async fn session(&self, upstream: &str) -> Result<String, String> {
        let (host, _) = upstream
            .rsplit_once(':')
            .ok_or_else(|| format!("{upstream}: no port"))?;
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(upstream))
            .await
            .map_err(|_| format!("connect to {upstream}: timed out"))?
            .map_err(|e| format!("connect to {upstream}: {e}"))?;
        let mut smtp = Session::new(tcp, upstream);
        smtp.expect_ok("greeting", None).await?;
        let ehlo = format!("EHLO {}", self.ehlo);
        let offered = smtp.expect_ok("EHLO", Some(&ehlo)).await?;
        if !offered.lines().any(|l| {
            l.get(4..)
                .is_some_and(|k| k.eq_ignore_ascii_case("STARTTLS"))
        }) {
            return Err(format!("{upstream} offers no STARTTLS"));
        }
        smtp.expect_ok("STARTTLS", Some("STARTTLS")).await?;
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let tcp = smtp.into_inner();
        let tls = tokio::time::timeout(STEP_TIMEOUT, self.tls.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS with {upstream}: timed out"))?
            .map_err(|e| format!("TLS with {upstream}: {e}"))?;
        let mut smtp = Session::new(tls, upstream);
        smtp.expect_ok("EHLO", Some(&ehlo)).await?;
        smtp.expect_answer("MAIL FROM", "MAIL FROM:<>").await?;
        let rcpt = format!("RCPT TO:<{}>", self.recipient);
        let reply = smtp.expect_answer("RCPT TO", &rcpt).await?;
        let _ = smtp.command("QUIT").await;
        Ok(reply)
    }
}

struct Session<S> {
    io: BufReader<S>,
    peer: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(io: S, peer: &str) -> Self {
        Self {
            io: BufReader::new(io),
            peer: peer.to_string(),
        }
    }

    fn into_inner(self) -> S {
        self.io.into_inner()
    }

    /// Sends `line` and reads the (multi-line) reply.
    async fn command(&mut self, line: &str) -> Result<String, String> {
        let write = async {
            self.io
                .get_mut()
                .write_all(format!("{line}\r\n").as_bytes())
                .await?;
            self.io.get_mut().flush().await
        };
        tokio::time::timeout(STEP_TIMEOUT, write)
            .await
            .map_err(|_| format!("{}: timed out sending {}", self.peer, verb(line)))?
            .map_err(|e| format!("{}: {e}", self.peer))?;
        self.reply(verb(line)).await
    }

    async fn reply(&mut self, after: &str) -> Result<String, String> {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(STEP_TIMEOUT, self.io.read_line(&mut line))
                .await
                .map_err(|_| {
                    format!(
                        "{}: no answer to {after} within {}s",
                        self.peer,
                        STEP_TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| format!("{}: {e}", self.peer))?;
            if n == 0 {
                return Err(format!("{}: connection closed after {after}", self.peer));
            }
            let line = line.trim_end();
            text.push_str(line);
            text.push('\n');
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return Ok(text.trim_end().to_string());
            }
        }
    }

    /// A 2xx/3xx reply, else a failure naming the reply.
    async fn expect_ok(&mut self, what: &str, line: Option<&str>) -> Result<String, String> {
        let reply = match line {
            Some(l) => self.command(l).await?,
            None => self.reply(what).await?,
        };
        match reply.as_bytes().first() {
            Some(b'2' | b'3') => Ok(reply),
            _ => Err(said(&self.peer, &reply, what)),
        }
    }

    /// Any definite answer (2xx, 3xx, 5xx); a 4xx is a failure.
    async fn expect_answer(&mut self, what: &str, line: &str) -> Result<String, String> {
        let reply = self.command(line).await?;
        match reply.as_bytes().first() {
            Some(b'2' | b'3' | b'5') => Ok(said(&self.peer, &reply, what)),
            _ => Err(said(&self.peer, &reply, what)),
        }
    }
}

fn verb(line: &str) -> &str {
    match line.split_once(':') {
        Some((v, _)) if v.starts_with("MAIL") || v.starts_with("RCPT") => v,
        _ => line.split_whitespace().next().unwrap_or(line),
    }
}

/// `host said: 451 4.3.2 ... (in reply to RCPT TO)`, like Postfix's own delay reasons.
fn said(peer: &str, reply: &str, what: &str) -> String {
    let last = reply.lines().last().unwrap_or(reply);
    format!("{peer} said: {last} (in reply to {what})")
}

/// `tls: Encrypt`: the session is encrypted, the certificate is not checked (the signatures of
/// the handshake still are).
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
