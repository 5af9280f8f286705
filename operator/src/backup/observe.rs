//! What the backup CronJob's Jobs say about a domain's backups: `status.lastBackup`, the
//! BackupHealthy condition, the Event to record and the metric values. Pure: the controller
//! lists the Jobs and their Pods and passes the clock.

use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::result::{Outcome, RunResult};
use super::schedule::Schedule;
use crate::api::conditions::{self, Desired, BACKUP_HEALTHY};
use crate::api::maildomain::{BackupStatus, MailDomain};
use crate::names::DomainNames;

/// Name of the container running the scripts; its termination message is the result line.
pub const CONTAINER: &str = "backup";

/// Reasons of the BackupHealthy condition and of the backup Events.
pub mod reason {
    pub const SUCCEEDED: &str = "BackupSucceeded";
    pub const FAILED: &str = "BackupFailed";
    pub const OVERDUE: &str = "BackupOverdue";
    pub const PENDING: &str = "BackupPending";
    pub const SUSPENDED: &str = "BackupSuspended";
    pub const INVALID_SCHEDULE: &str = "InvalidSchedule";
}

/// State of one finished or running Job of the CronJob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupRun {
    pub job: String,
    pub started: Option<Timestamp>,
    /// When the Job completed or failed; `None` while it runs.
    pub finished: Option<Timestamp>,
    /// `None` while it runs.
    pub outcome: Option<Outcome>,
    /// The script's result line, when the last Pod left one.
    pub result: Option<RunResult>,
    /// Why Kubernetes failed the Job (`DeadlineExceeded`, `BackoffLimitExceeded`), when it did.
    pub job_failure: Option<String>,
}

/// The runs of the CronJob `cronjob` among `jobs` (those it owns), with the result lines of their
/// Pods, newest first. Jobs of other owners (restore Jobs) are ignored.
pub fn runs(cronjob: &str, jobs: &[Job], pods: &[Pod]) -> Vec<BackupRun> {
    let mut runs: Vec<BackupRun> = jobs
        .iter()
        .filter(|j| owned_by(&j.metadata.owner_references, "CronJob", cronjob))
        .map(|j| run_of(j, pods))
        .collect();
    runs.sort_by(|a, b| {
        let key = |r: &BackupRun| r.finished.or(r.started);
        key(b).cmp(&key(a)).then_with(|| b.job.cmp(&a.job))
    });
    runs
}

fn owned_by(
    refs: &Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>>,
    kind: &str,
    name: &str,
) -> bool {
    refs.iter()
        .flatten()
        .any(|r| r.kind == kind && r.name == name)
}

fn run_of(job: &Job, pods: &[Pod]) -> BackupRun {
    let name = job.metadata.name.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let true_condition = |t: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == t && c.status == "True")
    };
    let (outcome, finished, job_failure) = if let Some(c) = true_condition("Complete") {
        (
            Some(Outcome::Succeeded),
            status
                .completion_time
                .map(|t| t.0)
                .or(c.last_transition_time.as_ref().map(|t| t.0)),
            None,
        )
    } else if let Some(c) = true_condition("Failed") {
        (
            Some(Outcome::Failed),
            c.last_transition_time.as_ref().map(|t| t.0),
            Some(c.reason.clone().unwrap_or_else(|| "Failed".into())),
        )
    } else {
        (None, None, None)
    };
    BackupRun {
        result: last_result(&name, pods),
        started: status.start_time.map(|t| t.0),
        finished,
        outcome,
        job_failure,
        job: name,
    }
}

/// The result line of the Job's most recently finished Pod.
fn last_result(job: &str, pods: &[Pod]) -> Option<RunResult> {
    pods.iter()
        .filter(|p| owned_by(&p.metadata.owner_references, "Job", job))
        .filter_map(|p| {
            let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
            let terminated = statuses
                .iter()
                .find(|s| s.name == CONTAINER)?
                .state
                .as_ref()?
                .terminated
                .as_ref()?;
            let result = RunResult::parse_last(terminated.message.as_deref()?)?;
            Some((terminated.finished_at.as_ref().map(|t| t.0), result))
        })
        .max_by_key(|(finished, _)| *finished)
        .map(|(_, result)| result)
}

/// Everything the controller writes or records about backups in one reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct Observation {
    /// `status.lastBackup`: the newest finished run, or the previous value when no Job is left.
    pub last_backup: Option<BackupStatus>,
    /// The BackupHealthy condition.
    pub condition: Desired<'static>,
    /// An Event to record, only when a run finished since `previous` was written or the domain
    /// just became overdue.
    pub event: Option<conditions::Event>,
    pub metrics: BackupMetrics,
}

/// Metric values per MailDomain.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct BackupMetrics {
    /// 1 when BackupHealthy is true.
    pub healthy: bool,
    /// Unix time of the last successful backup (`postwarden_backup_last_success_timestamp_seconds`).
    pub last_success_unix: Option<i64>,
    /// Whether the newest finished run failed.
    pub last_run_failed: bool,
    /// Mailboxes and repository bytes added by the newest successful run.
    pub last_mailboxes: Option<i64>,
    pub last_bytes: Option<i64>,
}

/// The backup observation of `md` for the controller: `cronjob` is the domain's backup CronJob
/// as read from the cluster (its creation time starts the overdue clock), `jobs` and `pods` the
/// Jobs and Pods labelled with the domain's backup component; the previous `status.lastBackup`
/// and BackupHealthy reason come from `md.status`. `None` when the domain has no backups (the
/// controller then removes the BackupHealthy condition and `status.lastBackup` stays as is).
pub fn observe_domain(
    md: &MailDomain,
    cronjob: Option<&CronJob>,
    jobs: &[Job],
    pods: &[Pod],
    now: Timestamp,
) -> Option<Observation> {
    let backup = md.spec.backup.as_ref()?;
    let name = md.metadata.name.as_deref().unwrap_or_default();
    let runs = runs(&DomainNames::new(name).backup(), jobs, pods);
    let status = md.status.as_ref();
    let previous = status.and_then(|s| s.last_backup.as_ref());
    let was_overdue = status
        .and_then(|s| conditions::find(&s.conditions, BACKUP_HEALTHY))
        .is_some_and(|c| c.status == "False" && c.reason == reason::OVERDUE);
    let created = cronjob
        .and_then(|c| c.metadata.creation_timestamp.as_ref())
        .map(|t| t.0);
    Some(observe(
        &backup.schedule,
        backup.suspend,
        // Before the CronJob exists the clock has not started.
        created.or(Some(now)),
        &runs,
        previous,
        was_overdue,
        now,
    ))
}

/// What the domain's backups look like at `now`.
///
/// `created` is when backups were configured (the CronJob's creation time), so a new domain is
/// not overdue before its first run; `previous` is the `status.lastBackup` written before, so a
/// finished run is reported (Event) once, and a success whose Job was pruned still counts;
/// `was_overdue` is whether BackupHealthy's reason already was [`reason::OVERDUE`].
///
/// BackupHealthy is false when the newest finished run failed, or when no run succeeded within
/// twice the schedule's longest interval (an overdue backup: the CronJob missed runs or they
/// keep failing before reporting).
pub fn observe(
    schedule: &str,
    suspended: bool,
    created: Option<Timestamp>,
    runs: &[BackupRun],
    previous: Option<&BackupStatus>,
    was_overdue: bool,
    now: Timestamp,
) -> Observation {
    let newest = runs.iter().find(|r| r.outcome.is_some());
    let last_backup = newest.map(status_of).or_else(|| previous.cloned());
    let last_success = runs
        .iter()
        .filter(|r| r.outcome == Some(Outcome::Succeeded))
        .filter_map(|r| r.finished)
        .chain(
            previous
                .filter(|p| p.result == Outcome::Succeeded.as_str())
                .and_then(|p| p.time.parse::<Timestamp>().ok()),
        )
        .max();
    let newest_success = runs.iter().find(|r| r.outcome == Some(Outcome::Succeeded));

    let condition = condition(schedule, suspended, created, newest, last_success, now);
    let overdue = !condition.status && condition.reason == reason::OVERDUE;

    let finished_since_previous =
        newest.is_some() && last_backup.as_ref() != previous && last_backup.is_some();
    let event = if finished_since_previous {
        let run = newest.expect("checked above");
        Some(run_event(run))
    } else if overdue && !was_overdue {
        Some(conditions::Event {
            warning: true,
            reason: reason::OVERDUE,
            note: condition.message.clone(),
        })
    } else {
        None
    };

    let metrics = BackupMetrics {
        healthy: condition.status,
        last_success_unix: last_success.map(|t| t.as_second()),
        last_run_failed: last_backup
            .as_ref()
            .is_some_and(|b| b.result == Outcome::Failed.as_str()),
        last_mailboxes: newest_success.and_then(|r| r.result.as_ref().map(|x| x.mailboxes)),
        last_bytes: newest_success.and_then(|r| r.result.as_ref().map(|x| x.bytes)),
    };
    Observation {
        last_backup,
        condition,
        event,
        metrics,
    }
}

fn status_of(run: &BackupRun) -> BackupStatus {
    let outcome = run.outcome.unwrap_or(Outcome::Failed);
    let r = run.result.as_ref();
    BackupStatus {
        time: run.finished.map(|t| t.to_string()).unwrap_or_default(),
        result: outcome.as_str().to_string(),
        mailboxes: r.map(|r| r.mailboxes),
        bytes: r.map(|r| r.bytes),
        snapshot: r.and_then(|r| r.snapshot_id().map(String::from)),
    }
}

/// Why a failed run failed, in words for a condition message or an Event.
fn failure_text(run: &BackupRun) -> String {
    match (&run.result, &run.job_failure) {
        (Some(r), _) if !r.message.is_empty() => r.message.clone(),
        (_, Some(reason)) => format!("the Job failed ({reason})"),
        _ => "the Job failed without a result".into(),
    }
}

fn run_event(run: &BackupRun) -> conditions::Event {
    match run.outcome {
        Some(Outcome::Succeeded) => {
            let r = run.result.as_ref();
            conditions::Event {
                warning: false,
                reason: reason::SUCCEEDED,
                note: format!(
                    "backup {} stored snapshot {} of {} mailbox(es), {} bytes added",
                    run.job,
                    r.and_then(|r| r.snapshot_id()).unwrap_or("?"),
                    r.map_or(0, |r| r.mailboxes),
                    r.map_or(0, |r| r.bytes),
                ),
            }
        }
        _ => conditions::Event {
            warning: true,
            reason: reason::FAILED,
            note: format!("backup {} failed: {}", run.job, failure_text(run)),
        },
    }
}

fn condition(
    schedule: &str,
    suspended: bool,
    created: Option<Timestamp>,
    newest: Option<&BackupRun>,
    last_success: Option<Timestamp>,
    now: Timestamp,
) -> Desired<'static> {
    if let Some(run) = newest.filter(|r| r.outcome == Some(Outcome::Failed)) {
        return Desired::new(
            BACKUP_HEALTHY,
            false,
            reason::FAILED,
            format!(
                "the last backup ({}) failed: {}",
                run.job,
                failure_text(run)
            ),
        );
    }
    if suspended {
        return Desired::new(
            BACKUP_HEALTHY,
            true,
            reason::SUSPENDED,
            "backups are suspended (spec.backup.suspend)",
        );
    }
    let schedule = match Schedule::parse(schedule) {
        Ok(s) => s,
        Err(e) => return Desired::new(BACKUP_HEALTHY, false, reason::INVALID_SCHEDULE, e),
    };
    let reference = last_success.or(created).unwrap_or(now);
    let Some(interval) = schedule.longest_interval(reference) else {
        return Desired::new(
            BACKUP_HEALTHY,
            false,
            reason::INVALID_SCHEDULE,
            "the schedule never runs",
        );
    };
    let allowed = interval * 2;
    let since = now.duration_since(reference);
    match last_success {
        Some(t) if since <= allowed => Desired::new(
            BACKUP_HEALTHY,
            true,
            reason::SUCCEEDED,
            format!("last successful backup at {t}"),
        ),
        None if since <= allowed => Desired::new(
            BACKUP_HEALTHY,
            true,
            reason::PENDING,
            match schedule.next_after(now) {
                Some(next) => format!("no backup has run yet; the next is due at {next}"),
                None => "no backup has run yet".into(),
            },
        ),
        _ => Desired::new(
            BACKUP_HEALTHY,
            false,
            reason::OVERDUE,
            format!(
                "no successful backup since {}, more than twice the schedule's interval ({})",
                last_success.map_or_else(|| "backups were configured".into(), |t| t.to_string()),
                human(interval)
            ),
        ),
    }
}

fn human(d: SignedDuration) -> String {
    let secs = d.as_secs();
    if secs % 86_400 == 0 {
        format!("{}d", secs / 86_400)
    } else if secs % 3_600 == 0 {
        format!("{}h", secs / 3_600)
    } else {
        format!("{}m", secs / 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CRON: &str = "example-com-backup";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(name: &str, owner: &str, state: &str, at: &str) -> Job {
        let conditions = match state {
            "Complete" => json!([{"type": "Complete", "status": "True", "lastTransitionTime": at}]),
            "Running" => json!([]),
            reason => {
                json!([{"type": "Failed", "status": "True", "reason": reason, "lastTransitionTime": at}])
            }
        };
        let mut status = json!({"startTime": "2026-03-01T00:00:00Z", "conditions": conditions});
        if state == "Complete" {
            status["completionTime"] = json!(at);
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": owner, "name": CRON, "uid": "u1"}]},
            "status": status,
        }))
        .unwrap()
    }

    fn pod(job: &str, finished: &str, message: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{job}-x"), "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "u2"}]},
            "status": {"containerStatuses": [{
                "name": CONTAINER, "image": "i", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"exitCode": 0, "finishedAt": finished, "message": message}}
            }]}
        }))
        .unwrap()
    }

    const OK: &str = "{\"result\":\"Succeeded\",\"mailboxes\":2,\"failedMailboxes\":0,\"bytes\":16300,\"totalBytes\":5842,\"snapshot\":\"057ad2fd\",\"message\":\"\"}\n";
    const BAD: &str = "{\"result\":\"Failed\",\"mailboxes\":0,\"failedMailboxes\":0,\"bytes\":0,\"totalBytes\":0,\"snapshot\":\"\",\"message\":\"restic repository unavailable: Fatal: wrong password or no key found\"}\n";

    fn observe_at(runs: &[BackupRun], previous: Option<&BackupStatus>, now: &str) -> Observation {
        observe(
            "30 2 * * *",
            false,
            Some(ts("2026-02-01T00:00:00Z")),
            runs,
            previous,
            false,
            ts(now),
        )
    }

    #[test]
    fn successful_run_fills_last_backup_and_is_reported_once() {
        let jobs = [job("b-1", "CronJob", "Complete", "2026-03-10T02:31:05Z")];
        let pods = [pod("b-1", "2026-03-10T02:31:04Z", OK)];
        let runs = runs(CRON, &jobs, &pods);
        let o = observe_at(&runs, None, "2026-03-10T12:00:00Z");
        let last = o.last_backup.clone().unwrap();
        assert_eq!(last.time, "2026-03-10T02:31:05Z");
        assert_eq!(last.result, "Succeeded");
        assert_eq!(
            (last.mailboxes, last.bytes, last.snapshot.as_deref()),
            (Some(2), Some(16300), Some("057ad2fd"))
        );
        assert!(o.condition.status);
        assert_eq!(o.condition.reason, reason::SUCCEEDED);
        let e = o.event.unwrap();
        assert_eq!((e.warning, e.reason), (false, reason::SUCCEEDED));
        assert!(e.note.contains("057ad2fd"), "{}", e.note);
        assert_eq!(
            o.metrics,
            BackupMetrics {
                healthy: true,
                last_success_unix: Some(ts("2026-03-10T02:31:05Z").as_second()),
                last_run_failed: false,
                last_mailboxes: Some(2),
                last_bytes: Some(16300),
            }
        );
        // The next reconcile, with that status written, records nothing new.
        let again = observe_at(&runs, Some(&last), "2026-03-10T12:05:00Z");
        assert_eq!(again.event, None);
        assert_eq!(again.last_backup.as_ref(), Some(&last));
    }

    #[test]
    fn failed_run_after_a_success_makes_backups_unhealthy_with_the_scripts_reason() {
        let jobs = [
            job("b-1", "CronJob", "Complete", "2026-03-09T02:31:05Z"),
            job(
                "b-2",
                "CronJob",
                "BackoffLimitExceeded",
                "2026-03-10T02:40:00Z",
            ),
        ];
        let pods = [
            pod("b-1", "2026-03-09T02:31:04Z", OK),
            pod("b-2", "2026-03-10T02:35:00Z", "partial output"),
            pod("b-2", "2026-03-10T02:39:59Z", BAD),
        ];
        let runs = runs(CRON, &jobs, &pods);
        assert_eq!(runs[0].job, "b-2", "newest first");
        let o = observe_at(&runs, None, "2026-03-10T03:00:00Z");
        let last = o.last_backup.unwrap();
        assert_eq!((last.result.as_str(), last.snapshot), ("Failed", None));
        assert!(!o.condition.status);
        assert_eq!(o.condition.reason, reason::FAILED);
        assert!(
            o.condition.message.contains("wrong password"),
            "{}",
            o.condition.message
        );
        let e = o.event.unwrap();
        assert_eq!((e.warning, e.reason), (true, reason::FAILED));
        assert!(o.metrics.last_run_failed && !o.metrics.healthy);
        assert_eq!(
            o.metrics.last_success_unix,
            Some(ts("2026-03-09T02:31:05Z").as_second())
        );
        assert_eq!(o.metrics.last_bytes, Some(16300));
    }

    #[test]
    fn job_killed_by_its_deadline_reports_the_jobs_reason() {
        let jobs = [job(
            "b-3",
            "CronJob",
            "DeadlineExceeded",
            "2026-03-10T08:30:00Z",
        )];
        let o = observe_at(&runs(CRON, &jobs, &[]), None, "2026-03-10T09:00:00Z");
        assert_eq!(o.condition.reason, reason::FAILED);
        assert!(o.condition.message.contains("DeadlineExceeded"));
        assert_eq!(o.last_backup.unwrap().mailboxes, None);
    }

    #[test]
    fn no_success_within_twice_the_interval_is_overdue_and_warned_once() {
        let jobs = [job("b-1", "CronJob", "Complete", "2026-03-07T02:31:00Z")];
        let pods = [pod("b-1", "2026-03-07T02:31:00Z", OK)];
        let runs = runs(CRON, &jobs, &pods);
        let previous = observe_at(&runs, None, "2026-03-07T03:00:00Z").last_backup;
        // 47 hours later: still healthy.
        let fine = observe_at(&runs, previous.as_ref(), "2026-03-09T01:31:00Z");
        assert!(fine.condition.status);
        // 49 hours later: two runs were missed.
        let late = observe_at(&runs, previous.as_ref(), "2026-03-09T03:31:00Z");
        assert!(!late.condition.status);
        assert_eq!(late.condition.reason, reason::OVERDUE);
        assert!(
            late.condition.message.contains("1d"),
            "{}",
            late.condition.message
        );
        assert_eq!(late.event.as_ref().unwrap().reason, reason::OVERDUE);
        let still = observe(
            "30 2 * * *",
            false,
            None,
            &runs,
            previous.as_ref(),
            true,
            ts("2026-03-09T04:00:00Z"),
        );
        assert_eq!(still.condition.reason, reason::OVERDUE);
        assert_eq!(still.event, None, "the overdue Event is recorded once");
    }

    #[test]
    fn a_new_domain_is_pending_until_its_first_run_is_due_twice() {
        let created = Some(ts("2026-03-10T00:00:00Z"));
        let pending = observe(
            "30 2 * * *",
            false,
            created,
            &[],
            None,
            false,
            ts("2026-03-10T12:00:00Z"),
        );
        assert!(pending.condition.status);
        assert_eq!(pending.condition.reason, reason::PENDING);
        assert!(pending.condition.message.contains("2026-03-11T02:30:00Z"));
        assert_eq!((pending.last_backup, pending.event), (None, None));
        let overdue = observe(
            "30 2 * * *",
            false,
            created,
            &[],
            None,
            false,
            ts("2026-03-12T01:00:00Z"),
        );
        assert_eq!(overdue.condition.reason, reason::OVERDUE);
    }

    #[test]
    fn pruned_jobs_keep_the_previous_success_and_suspension_is_not_overdue() {
        let previous = BackupStatus {
            time: "2026-03-01T02:31:00Z".into(),
            result: "Succeeded".into(),
            mailboxes: Some(2),
            bytes: Some(1),
            snapshot: Some("057ad2fd".into()),
        };
        let o = observe_at(&[], Some(&previous), "2026-03-02T12:00:00Z");
        assert_eq!(o.last_backup.as_ref(), Some(&previous));
        assert!(o.condition.status);
        assert_eq!(o.event, None);
        let suspended = observe(
            "30 2 * * *",
            true,
            None,
            &[],
            Some(&previous),
            false,
            ts("2026-04-01T00:00:00Z"),
        );
        assert!(suspended.condition.status);
        assert_eq!(suspended.condition.reason, reason::SUSPENDED);
    }

    #[test]
    fn running_and_foreign_jobs_do_not_count() {
        let jobs = [
            job("b-9", "CronJob", "Running", ""),
            job(
                "restore-1",
                "MailDomain",
                "BackoffLimitExceeded",
                "2026-03-10T05:00:00Z",
            ),
        ];
        let runs = runs(CRON, &jobs, &[]);
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].outcome, None);
        let o = observe_at(&runs, None, "2026-02-01T12:00:00Z");
        assert_eq!(o.last_backup, None);
        assert_eq!(o.condition.reason, reason::PENDING);
    }

    #[test]
    fn observe_domain_reads_the_previous_state_from_the_status() {
        let mut md = MailDomain::new(
            "example-com",
            serde_saphyr::from_str(
                "domain: example.com\nbackup: {schedule: '30 2 * * *', destination: {pvc: {claimName: b}}, encryptionKeySecretRef: {name: k}}",
            )
            .unwrap(),
        );
        let cronjob: CronJob = serde_json::from_value(json!({
            "metadata": {"name": CRON, "creationTimestamp": "2026-03-01T00:00:00Z"}
        }))
        .unwrap();
        let now = ts("2026-03-10T00:00:00Z");
        let first = observe_domain(&md, Some(&cronjob), &[], &[], now).unwrap();
        assert_eq!(first.condition.reason, reason::OVERDUE);
        assert!(first.event.is_some());
        // Written to the status, the overdue condition is not announced again.
        let mut status = crate::api::maildomain::MailDomainStatus::default();
        conditions::set(&mut status.conditions, first.condition, 1, now);
        md.status = Some(status);
        let second = observe_domain(&md, Some(&cronjob), &[], &[], now).unwrap();
        assert_eq!(second.condition.reason, reason::OVERDUE);
        assert_eq!(second.event, None);
        md.spec.backup = None;
        assert_eq!(observe_domain(&md, Some(&cronjob), &[], &[], now), None);
    }

    #[test]
    fn an_unparsable_schedule_is_reported_not_panicked_on() {
        let o = observe(
            "@every 1h",
            false,
            None,
            &[],
            None,
            false,
            ts("2026-03-10T00:00:00Z"),
        );
        assert!(!o.condition.status);
        assert_eq!(o.condition.reason, reason::INVALID_SCHEDULE);
    }
}
