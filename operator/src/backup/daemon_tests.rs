//! The backup and restore scripts, exactly as the CronJob and the restore Job carry them, run
//! against a real Dovecot started from the configuration the operator renders (Layout::local:
//! the pod's file tree under one directory, 127.0.0.1, shifted ports), with restic writing to a
//! directory repository. Only the scripts' environment differs from a pod.
//!
//! Needs root (Dovecot switches to the mail uid; the scripts run as that uid, as in the pod),
//! and the Debian packages dovecot-core, dovecot-imapd and restic.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;

use super::observe::{self, reason};
use super::result::RunResult;
use super::script::{self, JobDirs, RestoreRequest};
use crate::api::maildomain::{BackupSpec, MailDomain};
use crate::config::testing::{quickstart, quickstart_mailboxes};
use crate::config::{dovecot, secret_files, Layout};
use crate::userdb::{self, VMAIL_UID};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const REPOSITORY_KEY: &str = "test-repository-key";
const DOVEADM_PASSWORD: &str = "test-doveadm-password";
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Port bases of the tests running in parallel: each Dovecot gets its own range.
static NEXT_PORT_BASE: AtomicU16 = AtomicU16::new(36_000);

/// A Dovecot started from the rendered configuration, and the directories of a backup job.
struct Harness {
    dir: PathBuf,
    md: MailDomain,
    backup: BackupSpec,
    layout: Layout,
    jobs: JobDirs,
    dovecot: Child,
}

impl Harness {
    fn start(name: &str) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "the backup tests start Dovecot and need root"
        );
        // Each harness takes its own range, skipping ranges another process already listens in:
        // a Dovecot of someone else's answering our doveadm client would stall the test.
        let port_base = loop {
            let base = NEXT_PORT_BASE.fetch_add(2_000, Ordering::SeqCst);
            assert!(base < 60_000, "no free port range for the backup tests");
            let probe = Layout::local(std::path::Path::new("/nonexistent"), base, 1);
            let free = probe
                .listen_ports()
                .iter()
                .all(|(port, _)| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok());
            if free {
                break base;
            }
        };
        let dir =
            std::env::temp_dir().join(format!("postwarden-backup-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut md = quickstart();
        md.spec.imap.replicas = 1;
        let backup = md.spec.backup.clone().expect("the quickstart has backups");
        let layout = Layout::local(&dir, port_base, 1);

        // What the kubelet would mount: the rendered ConfigMap, the users Secrets, TLS, secrets.
        for (file, text) in dovecot::render(&md, &layout) {
            write(&layout.config_dir().join(file), &text, 0o644);
        }
        let users = userdb::build(&md.spec, &quickstart_mailboxes());
        for (i, shard) in users.shards.iter().enumerate() {
            write(
                &layout.users_dir().join(userdb::shard_file_name(i)),
                shard,
                0o644,
            );
        }
        let now = Timestamp::now();
        let day = Duration::from_secs(86_400);
        let ca = crate::pki::cert::new_ca("test CA", now, day).unwrap();
        let serving =
            crate::pki::cert::issue_serving(&ca, &["mail.example.com".into()], now, day).unwrap();
        write(&layout.tls_dir().join("tls.crt"), &serving.cert_pem, 0o644);
        write(&layout.tls_dir().join("tls.key"), &serving.key_pem, 0o600);
        write(&layout.tls_dir().join("ca.crt"), &ca.cert_pem, 0o644);
        // Readable by the mail uid, like the 0440 fsGroup mount in the pods.
        let password = layout.secrets_dir().join(secret_files::DOVEADM_PASSWORD);
        write(&password, DOVEADM_PASSWORD, 0o400);
        chown(&password, Some(VMAIL_UID), Some(VMAIL_UID)).unwrap();
        let instance = layout.imap_instance(0);
        for d in [&instance.mail_dir, &instance.run_dir, &dir.join("var/log")] {
            std::fs::create_dir_all(d).unwrap();
        }
        chown(&instance.mail_dir, Some(VMAIL_UID), Some(VMAIL_UID)).unwrap();

        // The job's own volumes, owned by the uid the job runs as.
        let jobs = JobDirs::under(&dir.join("job"));
        for d in [&jobs.scratch, &jobs.repository_volume, &jobs.key_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        let key_file = jobs.key_dir.join(&backup.encryption_key_secret_ref.key);
        write(&key_file, REPOSITORY_KEY, 0o400);
        chown_tree(&dir.join("job"));

        let conf = layout.config_dir().join(dovecot::instance_file_name(0));
        let dovecot = daemon(&dir, "dovecot")
            .args(["-F", "-c"])
            .arg(&conf)
            .stdin(Stdio::null())
            .spawn()
            .expect("dovecot starts");
        let h = Self {
            dir,
            md,
            backup,
            layout,
            jobs,
            dovecot,
        };
        h.wait_listening(instance.ports.doveadm);
        h
    }

    fn wait_listening(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "Dovecot did not listen on {port}:\n{}",
                self.dovecot_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn dovecot_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("var/log/dovecot-0.log")).unwrap_or_default()
    }

    /// `doveadm ARGS...` on the server side, with the instance's rendered configuration.
    fn doveadm(&self, args: &[&str], stdin: Option<&str>) -> String {
        let conf = self
            .layout
            .config_dir()
            .join(dovecot::instance_file_name(0));
        let mut cmd = daemon(&self.dir, "doveadm");
        cmd.arg("-c").arg(conf).args(args);
        let out = run(cmd, stdin);
        assert!(
            out.status.success(),
            "doveadm {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.dovecot_log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn save(&self, user: &str, mailbox: &str, subject: &str, body: &str) {
        let message = format!(
            "From: sender@example.net\r\nTo: {user}\r\nSubject: {subject}\r\n\
             Message-ID: <{}@example.net>\r\n\r\n{body}\r\n",
            subject.replace(' ', ".")
        );
        self.doveadm(&["save", "-u", user, "-m", mailbox], Some(&message));
    }

    fn flag(&self, user: &str, mailbox: &str, subject: &str, flags: &str) {
        self.doveadm(
            &[
                "flags", "add", "-u", user, flags, "mailbox", mailbox, "subject", subject,
            ],
            None,
        );
    }

    /// Every message of `user`: (folder, subject, body, flags without \Recent), sorted.
    fn messages(&self, user: &str) -> Vec<(String, String, String, String)> {
        let out = self.doveadm(
            &[
                "-f",
                "json",
                "fetch",
                "-u",
                user,
                "mailbox flags hdr.subject body",
                "all",
            ],
            None,
        );
        let rows: Vec<BTreeMap<String, String>> = serde_json::from_str(&out).unwrap();
        let mut v: Vec<_> = rows
            .into_iter()
            .map(|r| {
                let flags: Vec<&str> = r["flags"]
                    .split_whitespace()
                    .filter(|f| *f != "\\Recent")
                    .collect();
                (
                    r["mailbox"].clone(),
                    r["hdr.subject"].clone(),
                    r["body"].trim_end().to_string(),
                    flags.join(" "),
                )
            })
            .collect();
        v.sort();
        v
    }

    fn env(&self, restore: Option<&RestoreRequest>) -> Vec<(&'static str, String)> {
        match restore {
            None => script::backup_env(&self.md, &self.backup, "mail", &self.layout, &self.jobs),
            Some(r) => {
                script::restore_env(&self.md, &self.backup, "mail", &self.layout, &self.jobs, r)
            }
        }
    }

    /// Runs `script` as the mail uid (the pods' runAsUser) with `env` and nothing else, and
    /// returns the process output and the result line it left in the termination-message file.
    fn run_script(
        &self,
        script_text: &str,
        env: &[(&'static str, String)],
    ) -> (Output, Option<RunResult>) {
        let _ = std::fs::remove_file(&self.jobs.result_file);
        let mut cmd = daemon(&self.dir, "setpriv");
        cmd.args([
            "--reuid",
            &VMAIL_UID.to_string(),
            "--regid",
            &VMAIL_UID.to_string(),
            "--clear-groups",
            "/bin/bash",
            "-c",
            script_text,
            "backup",
        ])
        .env_clear()
        .env("PATH", PATH)
        // A stalled dsync is retried after 15 s here instead of the pods' 120 s.
        .env("DSYNC_STALL_SECONDS", "15")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let started = Instant::now();
        let out = run(cmd, None);
        println!(
            "script run in {:.2} s, exit {:?}",
            started.elapsed().as_secs_f64(),
            out.status.code()
        );
        let result = std::fs::read_to_string(&self.jobs.result_file)
            .ok()
            .and_then(|t| RunResult::parse_last(&t));
        (out, result)
    }

    fn backup(&self, extra: &[(&'static str, String)]) -> (Output, Option<RunResult>) {
        let mut env = self.env(None);
        env.extend(extra.iter().cloned());
        self.run_script(script::BACKUP_SCRIPT, &env)
    }

    fn restore(&self, request: &RestoreRequest) -> (Output, Option<RunResult>) {
        self.run_script(script::RESTORE_SCRIPT, &self.env(Some(request)))
    }

    fn repository(&self) -> String {
        script::repository(&self.backup, "example-com", "mail", &self.jobs)
    }

    /// `restic ARGS...` against the job's repository, as root.
    fn restic(&self, args: &[&str]) -> Output {
        let key_file = self
            .jobs
            .key_dir
            .join(&self.backup.encryption_key_secret_ref.key);
        let mut cmd = daemon(&self.dir, "restic");
        cmd.args(args)
            .env("RESTIC_REPOSITORY", self.repository())
            .env("RESTIC_PASSWORD_FILE", key_file)
            .env("RESTIC_CACHE_DIR", self.dir.join("restic-cache"))
            .env("TZ", "UTC");
        run(cmd, None)
    }

    /// Times of the snapshots in the repository, oldest first.
    fn snapshot_times(&self) -> Vec<String> {
        let out = self.restic(&["snapshots", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let mut times: Vec<String> = list
            .iter()
            .map(|s| {
                let t: Timestamp = s["time"].as_str().unwrap().parse().unwrap();
                t.strftime("%Y-%m-%d %H:%M").to_string()
            })
            .collect();
        times.sort();
        times
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = self.dovecot.kill();
        let _ = self.dovecot.wait();
        // `dovecot -F` is the master: its children follow it, give them a moment.
        std::thread::sleep(Duration::from_millis(100));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `program` of the daemons' runtime (a Debian root with POSTWARDEN_ROOT), seeing `dir`.
fn daemon(dir: &Path, program: &str) -> Command {
    crate::config::daemon_tests::runtime(dir).command(program)
}

fn run(mut cmd: Command, stdin: Option<&str>) -> Output {
    use std::io::Write;
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown_tree(dir: &Path) {
    chown(dir, Some(VMAIL_UID), Some(VMAIL_UID)).unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            chown_tree(&path);
        } else {
            chown(&path, Some(VMAIL_UID), Some(VMAIL_UID)).unwrap();
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Job of the backup CronJob that ended as `state`, and its Pod with `message` as the
/// container's termination message: what the controller lists.
fn finished_job(state: &str, at: &str, message: &str) -> (Job, Pod) {
    use serde_json::json;
    let condition = match state {
        "Complete" => json!({"type": "Complete", "status": "True", "lastTransitionTime": at}),
        _ => {
            json!({"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "lastTransitionTime": at})
        }
    };
    let job = serde_json::from_value(json!({
        "metadata": {"name": "example-com-backup-1", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "CronJob", "name": "example-com-backup", "uid": "c"}]},
        "status": {"startTime": at, "completionTime": if state == "Complete" { json!(at) } else { json!(null) },
                   "conditions": [condition]}
    }))
    .unwrap();
    let pod = serde_json::from_value(json!({
        "metadata": {"name": "example-com-backup-1-x", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "example-com-backup-1", "uid": "j"}]},
        "status": {"containerStatuses": [{"name": observe::CONTAINER, "image": "i", "imageID": "",
            "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": 1, "finishedAt": at, "message": message}}}]}
    }))
    .unwrap();
    (job, pod)
}

#[test]
fn backup_delete_restore_roundtrip_brings_back_bodies_flags_and_folders() {
    let h = Harness::start("roundtrip");
    h.save(ALICE, "INBOX", "quarterly report", "numbers are up");
    h.save(ALICE, "INBOX", "lunch", "at noon?");
    h.save(ALICE, "INBOX", "invoice 42", "please pay");
    h.doveadm(&["mailbox", "create", "-u", ALICE, "Projects/2026"], None);
    h.save(ALICE, "Projects/2026", "kickoff", "agenda attached");
    h.flag(ALICE, "INBOX", "quarterly report", "\\Seen \\Flagged");
    h.flag(ALICE, "INBOX", "lunch", "\\Seen \\Answered");
    h.flag(ALICE, "Projects/2026", "kickoff", "\\Flagged");
    h.save(BOB, "INBOX", "hello bob", "hi");
    let alice_before = h.messages(ALICE);
    let bob_before = h.messages(BOB);
    assert_eq!(alice_before.len(), 4);

    let (out, result) = h.backup(&[]);
    assert!(out.status.success(), "backup failed:\n{}", stderr(&out));
    let result = result.expect("the backup leaves a result line");
    assert!(result.succeeded(), "{result:?}");
    assert_eq!(result.mailboxes, 2, "alice and bob");
    assert!(result.bytes > 0 && result.total_bytes > 0, "{result:?}");
    let snapshot = result.snapshot_id().expect("a snapshot id").to_string();
    // The result line is also the last line on stdout, for `kubectl logs`.
    assert_eq!(
        RunResult::parse_last(&String::from_utf8_lossy(&out.stdout)),
        Some(result.clone())
    );

    // Disaster: alice's inbox emptied and her folder deleted; then new mail arrives.
    h.doveadm(&["expunge", "-u", ALICE, "mailbox", "INBOX", "all"], None);
    h.doveadm(&["mailbox", "delete", "-u", ALICE, "Projects/2026"], None);
    h.save(ALICE, "INBOX", "arrived after the snapshot", "keep me");
    h.flag(ALICE, "INBOX", "arrived after the snapshot", "\\Seen");
    assert_eq!(h.messages(ALICE).len(), 1);

    let (out, restored) = h.restore(&RestoreRequest::default());
    assert!(out.status.success(), "restore failed:\n{}", stderr(&out));
    let restored = restored.expect("the restore leaves a result line");
    assert!(restored.succeeded(), "{restored:?}");
    assert_eq!(restored.snapshot, snapshot);
    assert_eq!(restored.mailboxes, 2);
    assert_eq!(
        restored.messages,
        Some(4),
        "alice's four, none of bob's twice"
    );

    let mut expected = alice_before.clone();
    expected.push((
        "INBOX".into(),
        "arrived after the snapshot".into(),
        "keep me".into(),
        "\\Seen".into(),
    ));
    expected.sort();
    assert_eq!(
        h.messages(ALICE),
        expected,
        "bodies, flags and folders are back, new mail kept"
    );
    assert_eq!(h.messages(BOB), bob_before, "bob's mailbox is unchanged");

    // Restoring again, one mailbox from the named snapshot, puts nothing in twice.
    let (out, again) = h.restore(&RestoreRequest {
        mailbox: Some(ALICE.into()),
        snapshot: Some(snapshot.clone()),
    });
    assert!(
        out.status.success(),
        "second restore failed:\n{}",
        stderr(&out)
    );
    let again = again.unwrap();
    assert_eq!((again.mailboxes, again.messages), (1, Some(0)));
    assert_eq!(h.messages(ALICE), expected);
}

#[test]
fn retention_prunes_the_right_snapshots() {
    let h = Harness::start("retention");
    h.save(ALICE, "INBOX", "one", "1");
    // Earlier runs at simulated times (each a complete backup of the same mail).
    for time in [
        "2026-01-10 02:30:00", // Sat
        "2026-02-14 02:30:00", // Sat
        "2026-02-28 02:30:00", // Sat, newest of February
        "2026-03-01 02:30:00", // Sun, newest of ISO week 9
        "2026-03-05 02:30:00", // Thu
        "2026-03-06 02:30:00", // Fri
        "2026-03-06 14:00:00", // Fri, newest of that day
        "2026-03-07 02:30:00", // Sat
    ] {
        let (out, result) = h.backup(&[
            ("BACKUP_TIME", time.to_string()),
            // Keep everything but same-day duplicates until the run under test.
            ("KEEP_DAILY", "1000".into()),
        ]);
        assert!(out.status.success(), "backup at {time}:\n{}", stderr(&out));
        assert!(result.unwrap().succeeded());
    }
    // keep-daily already keeps one snapshot a day: the Friday morning one has gone.
    assert_eq!(h.snapshot_times().len(), 7);

    // The scheduled run with keep 3 daily, 2 weekly, 2 monthly.
    let (out, result) = h.backup(&[
        ("BACKUP_TIME", "2026-03-08 02:30:00".into()),
        ("KEEP_DAILY", "3".into()),
        ("KEEP_WEEKLY", "2".into()),
        ("KEEP_MONTHLY", "2".into()),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(result.unwrap().succeeded());
    assert_eq!(
        h.snapshot_times(),
        [
            "2026-02-28 02:30", // monthly: February
            "2026-03-01 02:30", // weekly: ISO week 9
            "2026-03-06 14:00", // daily
            "2026-03-07 02:30", // daily
            "2026-03-08 02:30", // daily, weekly (week 10), monthly (March), last
        ]
    );
    // Pruned snapshots' data is gone too, and what is left is intact.
    let check = h.restic(&["check"]);
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn failed_backup_is_reported_in_the_result_and_the_status() {
    let h = Harness::start("failure");
    h.save(ALICE, "INBOX", "one", "1");

    // A repository created with another key: restic cannot open it.
    let other_key = h.dir.join("other-key");
    write(&other_key, "not the configured key", 0o644);
    let mut init = daemon(&h.dir, "restic");
    init.args(["init"])
        .env("RESTIC_REPOSITORY", h.repository())
        .env("RESTIC_PASSWORD_FILE", &other_key);
    let out = run(init, None);
    assert!(out.status.success(), "{}", stderr(&out));
    chown_tree(&h.jobs.repository_volume);

    let (out, result) = h.backup(&[]);
    assert_eq!(out.status.code(), Some(1), "a failed backup exits non-zero");
    let result = result.expect("a failed backup still leaves a result line");
    assert!(!result.succeeded());
    assert_eq!(result.snapshot_id(), None);
    assert!(
        result.message.contains("wrong password"),
        "the reason is restic's: {}",
        result.message
    );
    assert!(!result.message.contains(REPOSITORY_KEY));

    // The operator reads it from the Job's Pod and reports it.
    let message = std::fs::read_to_string(&h.jobs.result_file).unwrap();
    let (job, pod) = finished_job("Failed", "2026-03-10T02:35:00Z", &message);
    let runs = observe::runs("example-com-backup", &[job], &[pod]);
    let o = observe::observe(
        &h.backup.schedule,
        false,
        None,
        &runs,
        None,
        false,
        "2026-03-10T03:00:00Z".parse().unwrap(),
    );
    let last = o.last_backup.unwrap();
    assert_eq!(last.result, "Failed");
    assert!(!o.condition.status);
    assert_eq!(o.condition.reason, reason::FAILED);
    assert!(o.condition.message.contains("wrong password"));
    assert_eq!(o.event.unwrap().reason, reason::FAILED);
    assert!(o.metrics.last_run_failed);

    // A replica refusing doveadm (wrong password): nothing can be copied, nothing is stored.
    std::fs::remove_dir_all(&h.jobs.repository_volume).unwrap();
    std::fs::create_dir_all(&h.jobs.repository_volume).unwrap();
    chown_tree(&h.jobs.repository_volume);
    let wrong = h.dir.join("wrong-doveadm-password");
    write(&wrong, "nope", 0o444);
    let (out, result) = h.backup(&[("DOVEADM_PASSWORD_FILE", wrong.display().to_string())]);
    assert_eq!(out.status.code(), Some(1));
    let result = result.unwrap();
    assert!(!result.succeeded());
    assert_eq!((result.mailboxes, result.failed_mailboxes), (0, 2));
    assert_eq!(result.snapshot_id(), None);
    assert!(
        result.message.contains("doveadm authentication failed"),
        "{}",
        result.message
    );
    assert!(!result.message.contains(DOVEADM_PASSWORD));

    // A user the replica does not know (its users database lags): the others are kept in a
    // partial snapshot, and the run still fails.
    let users = h.dir.join("users-with-a-ghost");
    std::fs::create_dir_all(&users).unwrap();
    for entry in std::fs::read_dir(h.layout.users_dir()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, users.join(path.file_name().unwrap())).unwrap();
    }
    write(
        &users.join("ghost.passwd"),
        "ghost@example.com:{SHA512-CRYPT}x::::::\n",
        0o444,
    );
    let (out, result) = h.backup(&[("USERS_DIR", users.display().to_string())]);
    assert_eq!(out.status.code(), Some(1));
    let result = result.unwrap();
    assert!(!result.succeeded());
    assert_eq!((result.mailboxes, result.failed_mailboxes), (2, 1));
    assert!(result.snapshot_id().is_some(), "a partial snapshot is kept");
    assert!(
        result.message.contains("ghost@example.com"),
        "{}",
        result.message
    );
}
