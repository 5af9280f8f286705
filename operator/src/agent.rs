//! What the agents beside the daemons (`postwarden replicate`, `postwarden continuity`) share:
//! their configuration file, their logs and how they replace a file.

use std::path::Path;

use anyhow::Context as _;
use serde::de::DeserializeOwned;

/// Reads and parses an agent's JSON configuration file.
pub fn read_config<T: DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Logs of the agents: plain lines on stderr, filtered by `POSTWARDEN_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("POSTWARDEN_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
}

/// Writes a file atomically (write to a temporary name, then rename): a reader sees the old or
/// the new content, never a part.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(tmp, path)
}
