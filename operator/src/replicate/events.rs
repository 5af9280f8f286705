//! Change events from Dovecot's event exporter (`driver = unix`, `format = json`): one JSON
//! object per line, the user in `fields.user`.

use std::path::Path;

use tokio::io::AsyncBufReadExt;
use tokio::net::UnixListener;

/// The user a change event is about, if it names one.
pub fn user_of(line: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    let user = value.get("fields")?.get("user")?.as_str()?;
    (!user.is_empty()).then(|| user.to_ascii_lowercase())
}

/// Listens on `path` for Dovecot's stats process (Dovecot's internal user, hence the group)
/// and calls `on_user` for every user an event names.
pub async fn listen(
    path: &Path,
    group: Option<u32>,
    on_user: impl Fn(String) + Clone + Send + 'static,
) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    loop {
        let (stream, _) = listener.accept().await?;
        let on_user = on_user.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(user) = user_of(&line) {
                    on_user(user);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_user_comes_from_the_event_fields() {
        let delivery = r#"{"event":"mail_delivery_finished","fields":{"rcpt_to":"alice@example.com","user":"Alice@Example.com","message_size":275}}"#;
        assert_eq!(user_of(delivery).as_deref(), Some("alice@example.com"));
        assert_eq!(
            user_of(r#"{"event":"imap_command_finished","fields":{}}"#),
            None
        );
        assert_eq!(user_of("not json"), None);
    }
}
