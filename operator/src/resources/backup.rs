//! The backup CronJob of a MailDomain and the Jobs that restore from its snapshots.
//!
//! Both run a script of [`crate::backup::script`] in the mail-imap image (Dovecot's doveadm and
//! restic). They reach the IMAP replicas only over the doveadm protocol, so the replicas'
//! ReadWriteOnce mail volumes stay with their pods; the job has its own scratch volume sized
//! like one replica's mail volume, the users database (to know whom to copy), the doveadm
//! password, the repository key and, for a PVC destination, the claim.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, Job, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PersistentVolumeClaimVolumeSource, PodSecurityContext,
    PodSpec, PodTemplateSpec, SeccompProfile, SecretKeySelector, Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::pod::{self, DefaultResources, RunAs};
use super::{ids, keys, Domain};
use crate::api::maildomain::{BackupSpec, MailDomain};
use crate::backup::observe::CONTAINER;
use crate::backup::script::{self, JobDirs, RestoreRequest};
use crate::config::layout::Layout;
use crate::names::{self, Component};

/// The backup pods run as the mail user (any non-root id would do: they own all their volumes).
pub const BACKUP_UID: i64 = ids::VMAIL;
/// Finished Jobs kept per outcome, for `kubectl logs` and for the operator to read results from.
pub const SUCCESSFUL_JOBS_HISTORY: i32 = 3;
pub const FAILED_JOBS_HISTORY: i32 = 3;
/// Pod retries of one run (a replica restarting mid-copy, a storage hiccup).
pub const BACKOFF_LIMIT: i32 = 2;
/// A run still going after six hours is stuck: kill it so the next one can start.
pub const ACTIVE_DEADLINE_SECONDS: i64 = 6 * 3600;
/// A run that could not start within an hour of its time (controller down) is skipped, not
/// started late on top of the next one.
pub const STARTING_DEADLINE_SECONDS: i64 = 3600;
/// Finished restore Jobs (and their logs) are deleted after a week.
pub const RESTORE_TTL_SECONDS: i32 = 7 * 86_400;
/// Label telling backup runs from restore Jobs.
pub const JOB_KIND_LABEL: &str = "postwarden.dev/job";

/// Requests and memory limit of the job's container. The limit also bounds doveadm should a
/// sync ever run away.
const RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "100m",
    memory_request: "128Mi",
    memory_limit: "1Gi",
};
const USERS_VOLUME: &str = "users";
const SECRETS_VOLUME: &str = "secrets";
const KEY_VOLUME: &str = "backup-key";
const SCRATCH_VOLUME: &str = "scratch";
const TMP_VOLUME: &str = "tmp";
const REPOSITORY_VOLUME: &str = "repository";

/// The backup CronJob of `md` in `namespace`, running `image` (the mail-imap image, which
/// carries doveadm and restic); `None` when the domain has no `spec.backup`.
pub fn build_cronjob(md: &MailDomain, namespace: &str, image: &str) -> Option<CronJob> {
    let backup = md.spec.backup.as_ref()?;
    let domain = Domain::new(md, namespace);
    let layout = domain.layout();
    let dirs = JobDirs::kubernetes();
    let env = script::backup_env(md, backup, namespace, &layout, &dirs);
    let labels = job_labels(domain.name, "backup");
    let pod = pod_spec(
        &domain,
        backup,
        &layout,
        &dirs,
        image,
        script::BACKUP_SCRIPT,
        "backup",
        env,
        true,
    );
    Some(CronJob {
        metadata: domain.meta(domain.names.backup(), Component::Backup),
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            suspend: Some(backup.suspend),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(STARTING_DEADLINE_SECONDS),
            successful_jobs_history_limit: Some(SUCCESSFUL_JOBS_HISTORY),
            failed_jobs_history_limit: Some(FAILED_JOBS_HISTORY),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(BACKOFF_LIMIT),
                    active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
                    template: template(labels, pod),
                    ..JobSpec::default()
                }),
            },
        }),
        ..CronJob::default()
    })
}

/// A Job restoring `request` from the backups of `md` into its running replicas. Its name is
/// generated (`<md>-restore-xxxxx`): create it, do not apply it. Errors when the domain has no
/// backups or the request does not fit the domain.
pub fn build_restore_job(
    md: &MailDomain,
    namespace: &str,
    image: &str,
    request: &RestoreRequest,
) -> Result<Job, String> {
    let domain = Domain::new(md, namespace);
    let name = domain.name;
    let backup = md
        .spec
        .backup
        .as_ref()
        .ok_or_else(|| format!("MailDomain {name} has no spec.backup to restore from"))?;
    let request = request.validate(&md.spec.domain)?;
    let layout = domain.layout();
    let dirs = JobDirs::kubernetes();
    let env = script::restore_env(md, backup, namespace, &layout, &dirs, &request);
    let mut labels = job_labels(name, "restore");
    let mut annotations = BTreeMap::from([(
        "postwarden.dev/restore-snapshot".to_string(),
        request.snapshot.clone().unwrap_or_else(|| "latest".into()),
    )]);
    annotations.insert(
        "postwarden.dev/restore-mailbox".into(),
        request.mailbox.clone().unwrap_or_else(|| "*".into()),
    );
    labels.insert("postwarden.dev/restore-of".into(), name.to_string());
    let pod = pod_spec(
        &domain,
        backup,
        &layout,
        &dirs,
        image,
        script::RESTORE_SCRIPT,
        "restore",
        env,
        false,
    );
    let metadata = ObjectMeta {
        generate_name: Some(format!("{name}-restore-")),
        namespace: Some(namespace.to_string()),
        labels: Some(labels.clone()),
        annotations: Some(annotations),
        ..ObjectMeta::default()
    };
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            // A retry is safe: messages already put back are recognised and not doubled.
            backoff_limit: Some(1),
            active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
            ttl_seconds_after_finished: Some(RESTORE_TTL_SECONDS),
            template: template(labels, pod),
            ..JobSpec::default()
        }),
        ..Job::default()
    })
}

/// Labels of a backup or restore Job and its pods: the domain's backup component (what the IMAP
/// NetworkPolicy admits to the doveadm port) plus which kind of job it is.
fn job_labels(name: &str, kind: &str) -> BTreeMap<String, String> {
    let mut labels = names::labels(name, Component::Backup);
    labels.insert(JOB_KIND_LABEL.into(), kind.into());
    labels
}

fn template(labels: BTreeMap<String, String>, spec: PodSpec) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            ..ObjectMeta::default()
        }),
        spec: Some(spec),
    }
}

#[allow(clippy::too_many_arguments)]
fn pod_spec(
    domain: &Domain,
    backup: &BackupSpec,
    layout: &Layout,
    dirs: &JobDirs,
    image: &str,
    script_text: &str,
    arg0: &str,
    env: Vec<(&'static str, String)>,
    with_users: bool,
) -> PodSpec {
    let mut env: Vec<EnvVar> = env
        .into_iter()
        .map(|(k, v)| EnvVar {
            name: k.into(),
            value: Some(v),
            ..EnvVar::default()
        })
        .collect();
    if let Some(s3) = &backup.destination.s3 {
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            env.push(EnvVar {
                name: key.into(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: s3.credentials_secret_ref.name.clone(),
                        key: key.into(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            });
        }
    }

    let key = backup.encryption_key_secret_ref.key.as_str();
    let mut mounts = vec![
        pod::mount(SCRATCH_VOLUME, &dirs.scratch, false),
        pod::mount(TMP_VOLUME, "/tmp", false),
        pod::mount(SECRETS_VOLUME, layout.secrets_dir(), true),
        pod::mount(KEY_VOLUME, &dirs.key_dir, true),
    ];
    let mut volumes = vec![
        // The copies of all mailboxes fit in what one replica holds.
        pod::empty_dir(SCRATCH_VOLUME, &domain.spec.imap.storage.size.0),
        pod::empty_dir(TMP_VOLUME, "64Mi"),
        // Only the doveadm password of the internal Secret.
        pod::secret_volume(
            SECRETS_VOLUME,
            domain.names.internal(),
            &[keys::DOVEADM_PASSWORD],
        ),
        pod::secret_volume(
            KEY_VOLUME,
            backup.encryption_key_secret_ref.name.clone(),
            &[key],
        ),
    ];
    if with_users {
        mounts.push(pod::mount(USERS_VOLUME, layout.users_dir(), true));
        volumes.push(pod::users_volume(USERS_VOLUME, domain));
    }
    if let Some(pvc) = &backup.destination.pvc {
        mounts.push(pod::mount(
            REPOSITORY_VOLUME,
            &dirs.repository_volume,
            false,
        ));
        volumes.push(Volume {
            name: REPOSITORY_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: pvc.claim_name.clone(),
                read_only: None,
            }),
            ..Volume::default()
        });
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(image.into()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(vec![
            "/bin/bash".into(),
            "-c".into(),
            script_text.into(),
            arg0.into(),
        ]),
        env: Some(env),
        volume_mounts: Some(mounts),
        resources: Some(pod::resources(None, RESOURCES)),
        termination_message_path: Some(dirs.result_file.display().to_string()),
        // The script writes its result line there; a crash before that leaves the log tail.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(pod::security_context(RunAs::User(BACKUP_UID), &[])),
        ..Container::default()
    };

    let placement = &domain.spec.placement;
    PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(domain.names.service_account()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            fs_group: Some(BACKUP_UID),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..SeccompProfile::default()
            }),
            ..PodSecurityContext::default()
        }),
        node_selector: (!placement.node_selector.is_empty())
            .then(|| placement.node_selector.clone()),
        tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
        priority_class_name: placement.priority_class_name.clone(),
        containers: vec![container],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::maildomain::MailDomainSpec;

    const IMAGE: &str = "ghcr.io/postwarden/mail-imap:test";

    fn domain(yaml: &str) -> MailDomain {
        let spec: MailDomainSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut md = MailDomain::new("example-com", spec);
        md.metadata.namespace = Some("mail".into());
        md
    }

    fn quickstart() -> MailDomain {
        domain(
            "domain: example.com\nimap: {replicas: 2}\nbackup:\n  schedule: '30 2 * * *'\n  destination: {pvc: {claimName: mail-backups}}\n  encryptionKeySecretRef: {name: mail-backup-key}\n",
        )
    }

    fn pod(cj: &CronJob) -> PodSpec {
        cj.spec
            .clone()
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template
            .spec
            .unwrap()
    }

    fn env(spec: &PodSpec) -> BTreeMap<String, EnvVar> {
        spec.containers[0]
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn no_backup_spec_no_cronjob() {
        assert_eq!(
            build_cronjob(&domain("domain: example.com"), "mail", IMAGE),
            None
        );
    }

    #[test]
    fn quickstart_cronjob() {
        let mut cj = build_cronjob(&quickstart(), "mail", IMAGE).unwrap();
        // The script text is tested where it is written and run; here only its place matters.
        let job = cj
            .spec
            .as_mut()
            .unwrap()
            .job_template
            .spec
            .as_mut()
            .unwrap();
        let container = &mut job.template.spec.as_mut().unwrap().containers[0];
        container.command.as_mut().unwrap()[2] = "<BACKUP_SCRIPT>".into();
        insta::assert_yaml_snapshot!(cj);
    }

    #[test]
    fn schedule_policy_and_limits() {
        let mut md = quickstart();
        md.spec.backup.as_mut().unwrap().suspend = true;
        let cj = build_cronjob(&md, "mail", IMAGE).unwrap();
        assert_eq!(cj.metadata.name.as_deref(), Some("example-com-backup"));
        let spec = cj.spec.unwrap();
        assert_eq!(spec.schedule, "30 2 * * *");
        assert_eq!(spec.suspend, Some(true));
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        assert_eq!(spec.successful_jobs_history_limit, Some(3));
        assert_eq!(spec.failed_jobs_history_limit, Some(3));
        assert_eq!(spec.starting_deadline_seconds, Some(3600));
        let job = spec.job_template.spec.unwrap();
        assert_eq!(job.backoff_limit, Some(2));
        assert_eq!(job.active_deadline_seconds, Some(6 * 3600));
        let pod = job.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(IMAGE));
        assert_eq!(
            c.command.as_ref().unwrap()[2],
            crate::backup::script::BACKUP_SCRIPT,
            "the CronJob carries the script verbatim"
        );
        assert_eq!(
            c.termination_message_path.as_deref(),
            Some("/dev/termination-log")
        );
    }

    #[test]
    fn replicas_mail_volumes_are_never_mounted() {
        let pod = pod(&build_cronjob(&quickstart(), "mail", IMAGE).unwrap());
        let volumes = pod.volumes.clone().unwrap();
        let claims: Vec<_> = volumes
            .iter()
            .filter_map(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.as_str())
            .collect();
        assert_eq!(
            claims,
            ["mail-backups"],
            "only the backup destination claim"
        );
        let env = env(&pod);
        assert!(env["DOVEADM_SERVERS"]
            .value
            .as_deref()
            .unwrap()
            .contains("tcps:example-com-imap-1.example-com-imap-hl.mail.svc:12346"));
        let scratch = volumes.iter().find(|v| v.name == "scratch").unwrap();
        assert_eq!(
            scratch.empty_dir.as_ref().unwrap().size_limit,
            Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                "10Gi".into()
            ))
        );
    }

    #[test]
    fn pods_are_least_privileged_and_secrets_come_from_files() {
        let pod = pod(&build_cronjob(&quickstart(), "mail", IMAGE).unwrap());
        assert_eq!(pod.automount_service_account_token, Some(false));
        let sc = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.capabilities.unwrap().drop, Some(vec!["ALL".to_string()]));
        assert_eq!(sc.seccomp_profile.unwrap().type_, "RuntimeDefault");
        for e in env(&pod).values() {
            assert!(
                !e.name.contains("PASSWORD") || e.name.ends_with("_FILE"),
                "{} must be a file reference",
                e.name
            );
        }
        let volumes = pod.volumes.clone().unwrap();
        let secrets = volumes.iter().find(|v| v.name == "secrets").unwrap();
        let items = secrets.secret.as_ref().unwrap().items.clone().unwrap();
        assert_eq!(
            items.len(),
            1,
            "only the doveadm password of the internal Secret"
        );
        assert_eq!(items[0].key, "doveadm-password");
        let users = volumes.iter().find(|v| v.name == "users").unwrap();
        assert_eq!(
            users
                .projected
                .as_ref()
                .unwrap()
                .sources
                .as_ref()
                .unwrap()
                .len(),
            crate::config::USER_SHARDS
        );
    }

    #[test]
    fn s3_credentials_come_from_their_secret() {
        let md = domain("domain: example.com\nbackup:\n  schedule: '@daily'\n  destination: {s3: {endpoint: 'https://s3.example.net', bucket: mail, credentialsSecretRef: {name: s3-creds}}}\n  encryptionKeySecretRef: {name: k, key: repo}\n");
        let pod = pod(&build_cronjob(&md, "mail", IMAGE).unwrap());
        let env = env(&pod);
        assert_eq!(
            env["RESTIC_REPOSITORY"].value.as_deref(),
            Some("s3:https://s3.example.net/mail/mail/example-com")
        );
        for key in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"] {
            let r = env[key].value_from.clone().unwrap().secret_key_ref.unwrap();
            assert_eq!((r.name.as_str(), r.key.as_str()), ("s3-creds", key));
        }
        assert!(pod
            .volumes
            .unwrap()
            .iter()
            .all(|v| v.persistent_volume_claim.is_none()));
    }

    #[test]
    fn restore_job_for_one_mailbox_from_a_snapshot() {
        let request = RestoreRequest {
            mailbox: Some("Alice@example.com".into()),
            snapshot: Some("057ad2fd".into()),
        };
        let job = build_restore_job(&quickstart(), "mail", IMAGE, &request).unwrap();
        assert_eq!(job.metadata.name, None);
        assert_eq!(
            job.metadata.generate_name.as_deref(),
            Some("example-com-restore-")
        );
        let labels = job.metadata.labels.clone().unwrap();
        assert_eq!(labels[JOB_KIND_LABEL], "restore");
        let spec = job.spec.unwrap();
        assert_eq!(spec.ttl_seconds_after_finished, Some(RESTORE_TTL_SECONDS));
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.containers[0].command.as_ref().unwrap()[2],
            crate::backup::script::RESTORE_SCRIPT
        );
        let env = env(&pod);
        assert_eq!(
            env["RESTORE_MAILBOX"].value.as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(env["RESTORE_SNAPSHOT"].value.as_deref(), Some("057ad2fd"));
        assert!(pod.volumes.unwrap().iter().all(|v| v.name != "users"));
        insta::assert_yaml_snapshot!(job.metadata);
    }

    #[test]
    fn backup_and_restore_pods_may_reach_the_doveadm_port() {
        let md = quickstart();
        let policy = super::super::network_policy::build_imap(&Domain::new(&md, "mail"));
        let doveadm_peers: Vec<BTreeMap<String, String>> = policy
            .spec
            .unwrap()
            .ingress
            .unwrap()
            .into_iter()
            .filter(|rule| {
                rule.ports.iter().flatten().any(|p| {
                    p.port
                        == Some(
                            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(12346),
                        )
                        || p.port
                            == Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                                    "doveadm".into(),
                                ),
                            )
                })
            })
            .flat_map(|rule| rule.from.unwrap_or_default())
            .filter_map(|peer| peer.pod_selector?.match_labels)
            .collect();
        assert!(!doveadm_peers.is_empty());
        let cronjob_pod = build_cronjob(&md, "mail", IMAGE)
            .unwrap()
            .spec
            .unwrap()
            .job_template
            .spec
            .unwrap()
            .template;
        let restore_pod = build_restore_job(&md, "mail", IMAGE, &RestoreRequest::default())
            .unwrap()
            .spec
            .unwrap()
            .template;
        for template in [cronjob_pod, restore_pod] {
            let labels = template.metadata.unwrap().labels.unwrap();
            assert!(
                doveadm_peers
                    .iter()
                    .any(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v))),
                "{labels:?} matches no doveadm peer of {doveadm_peers:?}"
            );
        }
    }

    #[test]
    fn restore_needs_backups_and_a_fitting_request() {
        let none = build_restore_job(
            &domain("domain: example.com"),
            "mail",
            IMAGE,
            &RestoreRequest::default(),
        );
        assert!(none.unwrap_err().contains("no spec.backup"));
        let wrong = build_restore_job(
            &quickstart(),
            "mail",
            IMAGE,
            &RestoreRequest {
                mailbox: Some("alice@example.org".into()),
                snapshot: None,
            },
        );
        assert!(wrong.unwrap_err().contains("not an address of example.com"));
    }
}
