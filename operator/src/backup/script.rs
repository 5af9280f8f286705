//! The backup and restore scripts and the environment that places them.
//!
//! Each script is one fixed text (the CronJob and the restore Job carry it verbatim); everything
//! that differs between a pod and a test on one host (paths, replica addresses, retention) is an
//! environment variable computed here from the MailDomain, a [`Layout`] and [`JobDirs`].

use std::path::{Path, PathBuf};

use crate::api::maildomain::{BackupSpec, MailDomain};
use crate::config::layout::Layout;

/// Copies every mailbox over doveadm into a restic snapshot, then applies retention.
pub const BACKUP_SCRIPT: &str = concat!(include_str!("common.sh"), include_str!("backup.sh"));
/// Imports one or all mailboxes of a snapshot back into the running replicas.
pub const RESTORE_SCRIPT: &str = concat!(include_str!("common.sh"), include_str!("restore.sh"));

use crate::config::dovecot::doveadm_endpoint;
use crate::config::secret_files::DOVEADM_PASSWORD;

/// Directories of the job's own volumes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobDirs {
    /// Scratch space: the copied mailboxes, doveadm's and restic's working files.
    pub scratch: PathBuf,
    /// Where a PersistentVolumeClaim destination is mounted.
    pub repository_volume: PathBuf,
    /// Where the encryption key Secret is mounted.
    pub key_dir: PathBuf,
    /// The result line's file: the container's termination message.
    pub result_file: PathBuf,
}

impl JobDirs {
    /// Mount points inside the backup and restore pods.
    pub fn kubernetes() -> Self {
        Self {
            scratch: PathBuf::from("/var/lib/postwarden-backup"),
            repository_volume: PathBuf::from("/var/backup"),
            key_dir: PathBuf::from("/etc/postwarden/backup-key"),
            result_file: PathBuf::from("/dev/termination-log"),
        }
    }

    /// Everything under `dir`, for running the scripts on one host.
    pub fn under(dir: &Path) -> Self {
        Self {
            scratch: dir.join("scratch"),
            repository_volume: dir.join("repository"),
            key_dir: dir.join("backup-key"),
            result_file: dir.join("result.json"),
        }
    }
}

/// The restic repository URL of a destination: a directory on the claim, or an S3 location
/// (`s3:<endpoint>/<bucket>/<prefix>`, the prefix defaulting to `<namespace>/<name>`).
pub fn repository(backup: &BackupSpec, name: &str, namespace: &str, dirs: &JobDirs) -> String {
    match (&backup.destination.s3, &backup.destination.pvc) {
        (Some(s3), _) => {
            let prefix = s3
                .prefix
                .as_deref()
                .map(|p| p.trim_matches('/').to_string())
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| format!("{namespace}/{name}"));
            format!(
                "s3:{}/{}/{prefix}",
                s3.endpoint.trim_end_matches('/'),
                s3.bucket
            )
        }
        _ => dirs.repository_volume.join(name).display().to_string(),
    }
}

/// The doveadm servers of the replicas as dsync destinations (`tcps:HOST:PORT`), in ordinal
/// order.
pub fn doveadm_servers(layout: &Layout) -> Vec<String> {
    (0..layout.imap_replicas())
        .map(|i| {
            let instance = layout.imap_instance(i);
            doveadm_endpoint(&instance.host, instance.ports.doveadm)
        })
        .collect()
}

/// Environment shared by the backup and the restore script.
pub fn common_env(
    md: &MailDomain,
    backup: &BackupSpec,
    namespace: &str,
    layout: &Layout,
    dirs: &JobDirs,
) -> Vec<(&'static str, String)> {
    let name = md.metadata.name.as_deref().unwrap_or_default();
    let mut env = vec![
        ("DOVEADM_SERVERS", doveadm_servers(layout).join(" ")),
        (
            "DOVEADM_PASSWORD_FILE",
            path(&layout.secrets_dir().join(DOVEADM_PASSWORD)),
        ),
        ("SCRATCH_DIR", path(&dirs.scratch)),
        ("RESULT_FILE", path(&dirs.result_file)),
        ("BACKUP_HOST", name.to_string()),
        (
            "RESTIC_REPOSITORY",
            repository(backup, name, namespace, dirs),
        ),
        (
            "RESTIC_PASSWORD_FILE",
            path(&dirs.key_dir.join(&backup.encryption_key_secret_ref.key)),
        ),
    ];
    if let Some(region) = backup
        .destination
        .s3
        .as_ref()
        .and_then(|s| s.region.clone())
    {
        env.push(("AWS_DEFAULT_REGION", region));
    }
    env
}

/// Environment of the backup script: the common part, the users database and the retention.
pub fn backup_env(
    md: &MailDomain,
    backup: &BackupSpec,
    namespace: &str,
    layout: &Layout,
    dirs: &JobDirs,
) -> Vec<(&'static str, String)> {
    let mut env = common_env(md, backup, namespace, layout, dirs);
    env.extend([
        ("USERS_DIR", path(&layout.users_dir())),
        ("KEEP_DAILY", backup.retention.daily.to_string()),
        ("KEEP_WEEKLY", backup.retention.weekly.to_string()),
        ("KEEP_MONTHLY", backup.retention.monthly.to_string()),
    ]);
    env
}

/// What to restore.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RestoreRequest {
    /// One address (lowercase, of the domain), or every mailbox in the snapshot.
    pub mailbox: Option<String>,
    /// A snapshot id (8 to 64 hex digits), or the latest snapshot.
    pub snapshot: Option<String>,
}

impl RestoreRequest {
    /// Checks the request against the domain: the mailbox must be an address of `domain`
    /// (compared lowercase) and the snapshot an id or `latest`.
    pub fn validate(&self, domain: &str) -> Result<Self, String> {
        let mailbox = match &self.mailbox {
            None => None,
            Some(m) => {
                let m = m.trim().to_ascii_lowercase();
                let (local, dom) = m
                    .rsplit_once('@')
                    .ok_or_else(|| format!("--mailbox {m:?} is not an address"))?;
                let local_ok = !local.is_empty()
                    && local.len() <= 64
                    && local
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
                if !local_ok {
                    return Err(format!("--mailbox {m:?} has an invalid local part"));
                }
                if dom != domain.to_ascii_lowercase() {
                    return Err(format!("--mailbox {m:?} is not an address of {domain}"));
                }
                Some(m)
            }
        };
        let snapshot = match self.snapshot.as_deref().map(str::trim) {
            None | Some("latest") | Some("") => None,
            Some(s) if (8..=64).contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(s.to_ascii_lowercase())
            }
            Some(s) => {
                return Err(format!(
                    "--snapshot {s:?} is neither `latest` nor a snapshot id (8 to 64 hex digits)"
                ))
            }
        };
        Ok(Self { mailbox, snapshot })
    }
}

/// Environment of the restore script: the common part and the request.
pub fn restore_env(
    md: &MailDomain,
    backup: &BackupSpec,
    namespace: &str,
    layout: &Layout,
    dirs: &JobDirs,
    request: &RestoreRequest,
) -> Vec<(&'static str, String)> {
    let mut env = common_env(md, backup, namespace, layout, dirs);
    env.push((
        "RESTORE_SNAPSHOT",
        request.snapshot.clone().unwrap_or_else(|| "latest".into()),
    ));
    env.push((
        "RESTORE_MAILBOX",
        request.mailbox.clone().unwrap_or_default(),
    ));
    env
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::maildomain::MailDomainSpec;

    fn domain(backup: &str) -> MailDomain {
        let spec: MailDomainSpec =
            serde_saphyr::from_str(&format!("domain: example.com\nbackup: {backup}")).unwrap();
        let mut md = MailDomain::new("example-com", spec);
        md.metadata.namespace = Some("mail".into());
        md
    }

    fn env_map(env: &[(&'static str, String)]) -> std::collections::BTreeMap<&'static str, String> {
        env.iter().cloned().collect()
    }

    #[test]
    fn pvc_backup_env_in_kubernetes() {
        let md = domain("{schedule: '30 2 * * *', destination: {pvc: {claimName: b}}, encryptionKeySecretRef: {name: k}}");
        let backup = md.spec.backup.clone().unwrap();
        let env = env_map(&backup_env(
            &md,
            &backup,
            "mail",
            &Layout::kubernetes("example-com", "mail", 2),
            &JobDirs::kubernetes(),
        ));
        assert_eq!(
            env["DOVEADM_SERVERS"],
            "tcps:example-com-imap-0.example-com-imap-hl.mail.svc:12346 tcps:example-com-imap-1.example-com-imap-hl.mail.svc:12346"
        );
        assert_eq!(env["RESTIC_REPOSITORY"], "/var/backup/example-com");
        assert_eq!(
            env["RESTIC_PASSWORD_FILE"],
            "/etc/postwarden/backup-key/password"
        );
        assert_eq!(
            env["DOVEADM_PASSWORD_FILE"],
            "/etc/postwarden/secrets/doveadm-password"
        );
        assert_eq!(env["USERS_DIR"], "/etc/postwarden/users");
        assert_eq!(env["RESULT_FILE"], "/dev/termination-log");
        assert_eq!(
            (
                env["KEEP_DAILY"].as_str(),
                env["KEEP_WEEKLY"].as_str(),
                env["KEEP_MONTHLY"].as_str()
            ),
            ("7", "4", "6")
        );
        assert!(!env.contains_key("AWS_DEFAULT_REGION"));
    }

    #[test]
    fn s3_repository_url_and_region() {
        let md = domain("{schedule: '@daily', retention: {daily: 3, weekly: 2, monthly: 1}, destination: {s3: {endpoint: 'https://s3.example.net/', bucket: mail, region: eu-1, credentialsSecretRef: {name: c}}}, encryptionKeySecretRef: {name: k, key: repo-key}}");
        let backup = md.spec.backup.clone().unwrap();
        let dirs = JobDirs::kubernetes();
        assert_eq!(
            repository(&backup, "example-com", "mail", &dirs),
            "s3:https://s3.example.net/mail/mail/example-com"
        );
        let mut with_prefix = backup.clone();
        with_prefix.destination.s3.as_mut().unwrap().prefix = Some("/backups/mx/".into());
        assert_eq!(
            repository(&with_prefix, "example-com", "mail", &dirs),
            "s3:https://s3.example.net/mail/backups/mx"
        );
        let env = env_map(&backup_env(
            &md,
            &backup,
            "mail",
            &Layout::kubernetes("example-com", "mail", 1),
            &dirs,
        ));
        assert_eq!(env["AWS_DEFAULT_REGION"], "eu-1");
        assert_eq!(
            env["RESTIC_PASSWORD_FILE"],
            "/etc/postwarden/backup-key/repo-key"
        );
        assert_eq!(env["KEEP_DAILY"], "3");
    }

    #[test]
    fn local_layout_points_at_each_instance_doveadm_port() {
        let layout = Layout::local(Path::new("/tmp/x"), 20000, 2);
        assert_eq!(
            doveadm_servers(&layout),
            [
                format!("tcps:127.0.0.1:{}", layout.imap_instance_ports[0].doveadm),
                format!("tcps:127.0.0.1:{}", layout.imap_instance_ports[1].doveadm)
            ]
        );
    }

    #[test]
    fn restore_request_is_checked_against_the_domain() {
        let ok = RestoreRequest {
            mailbox: Some(" Alice@Example.com".into()),
            snapshot: Some("057AD2FD".into()),
        }
        .validate("example.com")
        .unwrap();
        assert_eq!(ok.mailbox.as_deref(), Some("alice@example.com"));
        assert_eq!(ok.snapshot.as_deref(), Some("057ad2fd"));
        let latest = RestoreRequest {
            mailbox: None,
            snapshot: Some("latest".into()),
        }
        .validate("example.com")
        .unwrap();
        assert_eq!(latest, RestoreRequest::default());
        for (mailbox, snapshot, why) in [
            (Some("alice@example.net"), None, "not an address of"),
            (Some("alice"), None, "not an address"),
            (Some("a/b@example.com"), None, "invalid local part"),
            (Some("../x@example.com"), None, "invalid local part"),
            (None, Some("yesterday"), "neither `latest`"),
            (None, Some("abc"), "neither `latest`"),
        ] {
            let err = RestoreRequest {
                mailbox: mailbox.map(String::from),
                snapshot: snapshot.map(String::from),
            }
            .validate("example.com")
            .unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    #[test]
    fn scripts_share_the_common_prelude_and_end_with_a_result() {
        for script in [BACKUP_SCRIPT, RESTORE_SCRIPT] {
            assert!(script.starts_with("#!/bin/bash\n"));
            assert!(script.contains("write_doveadm_conf"));
            assert!(script
                .trim_end()
                .lines()
                .last()
                .unwrap()
                .contains("emit_result"));
        }
    }
}
