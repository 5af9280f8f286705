//! Reads the continuity agents' `/status` from a MailDomain's running MTA pods, for the
//! `UpstreamAvailable` condition ([`crate::continuity::observe`]).
//!
//! The agent listens on every pod address on the continuity metrics port; the MTA
//! NetworkPolicy admits the operator's pods there. A plain HTTP/1.1 GET suffices: the answer
//! is a few hundred bytes of JSON and holds no secret.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures::future::join_all;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::context::Context;
use crate::api::conditions::Desired;
use crate::api::MailDomain;
use crate::config::Ports;
use crate::continuity::observe::{self, Report};
use crate::continuity::Status;
use crate::names::Component;

/// How long one agent may take to answer.
const TIMEOUT: Duration = Duration::from_secs(2);
/// The most of an answer that is read.
const MAX_ANSWER: u64 = 64 * 1024;
/// Bounds of the time between two looks at the agents.
const POLL_MIN: Duration = Duration::from_secs(10);
const POLL_MAX: Duration = Duration::from_secs(60);

/// The condition for a domain with `spec.continuity`, or `None` without.
pub async fn observe(
    ctx: &Context,
    md: &MailDomain,
    namespace: &str,
    name: &str,
) -> Option<Desired<'static>> {
    md.spec.continuity.as_ref()?;
    // Pods use the standard ports (`Layout::kubernetes`).
    let port = Ports::standard().continuity_metrics;
    let pods = ctx.stores.pods_of(namespace, name, Component::Mta);
    let reports = join_all(pods.iter().filter_map(running).map(|(pod, ip)| async move {
        Report {
            pod,
            status: fetch(SocketAddr::new(ip, port)).await,
        }
    }))
    .await;
    Some(observe::condition(&reports))
}

/// How soon to look at the agents again: once per detection window, within bounds, so an
/// outage reaches the status about as fast as the agents decide it.
pub fn poll_interval(md: &MailDomain) -> Option<Duration> {
    let d = &md.spec.continuity.as_ref()?.detection;
    let window =
        Duration::from_secs(u64::from(d.interval_seconds) * u64::from(d.failure_threshold));
    Some(window.clamp(POLL_MIN, POLL_MAX))
}

/// Name and address of a pod that runs and is not going away.
fn running(pod: &Pod) -> Option<(String, IpAddr)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.as_deref()?.parse().ok()?;
    Some((pod.metadata.name.clone()?, ip))
}

async fn fetch(addr: SocketAddr) -> Result<Status, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("asking {addr}: {e}"))?;
        let mut answer = Vec::new();
        stream
            .take(MAX_ANSWER)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("reading from {addr}: {e}"))?;
        parse(&answer).map_err(|e| format!("{addr}: {e}"))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("{addr}: no answer within {} s", TIMEOUT.as_secs())))
}

/// The agent's status from a whole HTTP/1.1 response (a `Content-Length` body, as the agent
/// sends it).
fn parse(answer: &[u8]) -> Result<Status, String> {
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("incomplete HTTP answer")?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status_line = head.lines().next().unwrap_or_default();
    let code = status_line.split_whitespace().nth(1).unwrap_or_default();
    if !status_line.starts_with("HTTP/1.") || code != "200" {
        return Err(format!("answered {status_line:?}"));
    }
    if head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    }) {
        return Err("chunked answer".into());
    }
    serde_json::from_slice(&answer[split + 4..]).map_err(|e| format!("not a status: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_agents_answer() {
        let body = r#"{"upstreamAvailable":false,"localDelivery":true,"lastReply":"451 4.3.2 busy","since":7,"spooledMessages":3,"oldestSpooledSeconds":20,"heldCopies":0}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        let s = parse(answer.as_bytes()).unwrap();
        assert!(!s.upstream_available && s.local_delivery);
        assert_eq!(s.last_reply, "451 4.3.2 busy");
        assert_eq!(s.spooled_messages, 3);
        // What the agent serializes, the operator reads.
        let again = serde_json::to_string(&s).unwrap();
        assert_eq!(again, body);
    }

    #[test]
    fn refuses_what_is_not_a_status() {
        assert!(parse(b"HTTP/1.1 404 Not Found\r\n\r\n")
            .unwrap_err()
            .contains("404"));
        assert!(parse(b"HTTP/1.1 200 OK\r\ncontent-le").is_err());
        assert!(parse(b"HTTP/1.1 200 OK\r\n\r\n<html>").is_err());
        assert!(parse(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[tokio::test]
    async fn an_agent_that_does_not_listen_is_reported() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = fetch(addr).await.unwrap_err();
        assert!(e.contains("connecting to 127.0.0.1"), "{e}");
    }
}
