//! The `postwarden` command as a user runs it: exit codes and messages.

use std::path::PathBuf;
use std::process::{Command, Output};

fn postwarden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_postwarden"))
        .args(args)
        .output()
        .expect("postwarden runs")
}

fn write_temp(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("postwarden-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn crds_prints_both_definitions() {
    let out = postwarden(&["crds"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("name: maildomains.postwarden.dev"));
    assert!(text.contains("name: mailboxes.postwarden.dev"));
}

#[test]
fn render_refuses_an_invalid_domain_naming_file_document_and_field() {
    let path = write_temp(
        "bad-domain.yaml",
        "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {password: x}\n---\n\
         apiVersion: postwarden.dev/v1alpha1\nkind: MailDomain\nmetadata: {name: bad}\nspec:\n  domain: \"Not A Domain!\"\n",
    );
    let out = postwarden(&["render", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bad-domain.yaml: document 2 (MailDomain bad)"),
        "{err}"
    );
    assert!(
        err.contains(r#"spec.domain: "Not A Domain!" is not a valid DNS name"#),
        "{err}"
    );
}

#[test]
fn render_refuses_what_admission_cel_rules_refuse() {
    let path = write_temp(
        "bad-tls.yaml",
        "apiVersion: postwarden.dev/v1alpha1\nkind: MailDomain\nmetadata: {name: x}\nspec:\n  domain: example.com\n  \
         tls: {certManager: {issuerRef: {name: le}}, secretName: mine}\n",
    );
    let out = postwarden(&["render", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("spec.tls: set at most one of tls.certManager and tls.secretName"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn render_names_a_mistyped_field() {
    let path = write_temp(
        "bad-type.yaml",
        "apiVersion: postwarden.dev/v1alpha1\nkind: Mailbox\nmetadata: {name: m}\nspec:\n  domainRef: {name: d}\n  \
         localPart: alice\n  passwordSecretRef: {name: p}\n  suspended: maybe\n",
    );
    let out = postwarden(&["render", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("document 1: spec.suspended:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn render_refuses_unknown_kinds() {
    let path = write_temp(
        "other.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n",
    );
    let out = postwarden(&["render", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unsupported object"),
        "{}",
        stderr(&out)
    );
}

/// Runs `kubernetes-validate` (e2e/requirements.txt) strictly against the oldest Kubernetes
/// we support, on a file of objects.
fn kubernetes_validate(path: &std::path::Path) -> Output {
    Command::new("kubernetes-validate")
        .args(["-k", "1.33.0", "--strict", "--quiet"])
        .arg(path)
        .output()
        .expect("kubernetes-validate is installed (pip install -r e2e/requirements.txt)")
}

#[test]
fn rendered_stacks_are_strictly_valid_kubernetes_1_33_objects() {
    // The check itself can fail: a misspelled field is refused.
    let bad = write_temp(
        "invalid-service.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  prots: [{port: 25}]\n",
    );
    let refused = kubernetes_validate(&bad);
    assert!(
        !refused.status.success(),
        "a misspelled field passed validation"
    );

    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
    let quickstart = examples.join("quickstart.yaml");
    for args in [
        vec!["render"],
        vec!["render", "-f", quickstart.to_str().unwrap()],
        vec!["render", "-f", examples.to_str().unwrap()],
    ] {
        let out = postwarden(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let rendered = String::from_utf8(out.stdout).unwrap();
        assert!(rendered.contains("kind: StatefulSet"), "{args:?}");
        let path = write_temp("rendered.yaml", &rendered);
        let v = kubernetes_validate(&path);
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&v.stdout),
            String::from_utf8_lossy(&v.stderr)
        );
        assert!(v.status.success(), "{args:?}:\n{report}");
        assert!(!report.contains("ERROR"), "{args:?}:\n{report}");
    }
}

#[test]
fn render_names_the_mailbox_whose_password_secret_is_missing() {
    let quickstart = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples/quickstart.yaml"),
    )
    .unwrap();
    let without_bobs_secret: Vec<&str> = quickstart
        .split("\n---\n")
        .filter(|doc| !doc.contains("name: bob-password\n  namespace"))
        .collect();
    let path = write_temp("no-bob-password.yaml", &without_bobs_secret.join("\n---\n"));
    let out = postwarden(&["render", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(
            "Mailbox bob: password Secret bob-password (key password) not found in the inputs"
        ),
        "{}",
        stderr(&out)
    );
}

#[path = "support/pods.rs"]
mod pods;

#[test]
fn rendered_pods_run_their_daemons_with_only_their_capabilities_on_a_read_only_root() {
    let mut inputs = postwarden::manifest::Inputs::default();
    postwarden::manifest::load_str(
        std::path::Path::new("quickstart.yaml"),
        postwarden::render::QUICKSTART,
        &mut inputs,
    )
    .unwrap();
    let children =
        postwarden::render::objects_at(&inputs, jiff::Timestamp::now(), &mut rand::thread_rng())
            .unwrap()
            .remove(0);
    // The mail images pin these users; this machine's packages gave them other ids.
    let ids = pods::HostIds::from_names(&[
        (postwarden::resources::ids::POSTFIX, "postfix"),
        (postwarden::resources::ids::RSPAMD, "_rspamd"),
        (postwarden::resources::ids::DOVECOT, "dovecot"),
    ]);
    // What a client sees on each port: worker processes start (as their users, chrooted where
    // the daemon does), keys are readable, metrics come from the daemons.
    let banner = |port: u16, want: &str| {
        format!("timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}; head -1 <&3' | grep -q '^{want}'")
    };
    // The served certificate chains to the rendered CA and names the mail host.
    let tls = |work: &std::path::Path, port: u16| {
        format!(
            "timeout 5 openssl s_client -connect 127.0.0.1:{port} -CAfile {} -verify_hostname mail.example.com </dev/null 2>&1 | grep -q 'Verify return code: 0 (ok)'",
            work.join("files/tls/ca.crt").display()
        )
    };
    let metrics = |port: u16, want: &str| format!("http_get {port} /metrics | grep -q '^{want}'");
    let [mta, imap] = [&children.stateful_sets[0], &children.stateful_sets[1]];
    // What the entrypoints do when mounted files change, and what operators run by hand.
    let postfix = pods::exec_in(mta, "postfix", &ids);
    let auth_sidecar = pods::exec_in(mta, "dovecot-auth", &ids);
    let dovecot = pods::exec_in(imap, "dovecot", &ids);
    let doveadm = format!("{dovecot} doveadm -c /run/postwarden/dovecot.conf");
    let alice = "alice@example.com correct-horse-battery-staple";
    // Submission with AUTH end to end: Postfix asks the pod's auth sidecar over loopback.
    let plain = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD
            .encode("\0alice@example.com\0correct-horse-battery-staple")
    };
    let submission_auth = format!(
        "(printf 'EHLO client.example.net\\r\\n'; sleep 1; printf 'AUTH PLAIN {plain}\\r\\n'; sleep 4; printf 'QUIT\\r\\n') \
         | timeout 15 openssl s_client -connect 127.0.0.1:587 -starttls smtp -quiet 2>/dev/null | grep -q '^235 '"
    );
    let mta_work = pods::work_dir("example-com-mta");
    let imap_work = pods::work_dir("example-com-imap");
    let mta_checks = [
        ("smtp", banner(25, "220")),
        ("submission", banner(587, "220")),
        ("submissions", tls(&mta_work, 465)),
        ("postfix-metrics", metrics(9154, "postfix_")),
        ("rspamd-metrics", metrics(11334, "rspamd_")),
        (
            "postfix reload",
            format!("{postfix} postfix -c /etc/postwarden/config reload"),
        ),
        (
            "postqueue",
            format!("{postfix} postqueue -c /etc/postwarden/config -p"),
        ),
        ("submission auth", submission_auth),
        (
            "sidecar auth cache flush",
            format!("{auth_sidecar} doveadm -c /etc/postwarden/config/dovecot-auth.conf auth cache flush"),
        ),
    ];
    let imap_checks = [
        ("imap", banner(143, "\\* OK")),
        ("imaps", tls(&imap_work, 993)),
        ("lmtp", banner(24, "220")),
        ("dovecot-metrics", metrics(9900, "dovecot_")),
        (
            "replication-metrics",
            metrics(9901, "postwarden_replication_events_total"),
        ),
        ("doveadm auth test", format!("{doveadm} auth test {alice}")),
        ("doveadm user", format!("{doveadm} user alice@example.com")),
        (
            "doveadm auth cache flush",
            format!("{doveadm} auth cache flush"),
        ),
        ("doveadm who", format!("{doveadm} who")),
        (
            "doveadm kick",
            // A live IMAPS session of alice is ended: doveadm signals a process of the mail user.
            format!(
                "(printf 'a LOGIN {alice}\\r\\n'; sleep 8) | timeout 10 openssl s_client -connect 127.0.0.1:993 -quiet >/dev/null 2>&1 & \
                 sleep 3; {doveadm} who | grep -q alice@example.com && {doveadm} kick alice@example.com && sleep 1 && ! {doveadm} who | grep -q alice@example.com"
            ),
        ),
        ("doveadm reload", format!("{doveadm} reload")),
        (
            // What fsGroupChangePolicy OnRootMismatch checks: group fsGroup, setgid, group
            // rwx. Anything else makes the kubelet re-own the whole mail store on each start.
            "mail volume root",
            r#"[ "$(stat -c '%g %a' "$W/vol/mail")" = "$FSG 2770" ]"#.to_string(),
        ),
    ];
    let expected = [
        (
            "example-com-mta",
            &mta_work,
            vec![25, 465, 587, 9154, 11334, 12345],
            &mta_checks[..],
        ),
        (
            "example-com-imap",
            &imap_work,
            vec![24, 143, 993, 9900, 9901, 12346],
            &imap_checks[..],
        ),
    ];
    for (sts, (name, work, ports, checks)) in children.stateful_sets.iter().zip(expected) {
        assert_eq!(sts.metadata.name.as_deref(), Some(name));
        let checks: Vec<(&str, &str)> = checks.iter().map(|(l, c)| (*l, c.as_str())).collect();
        let script = pods::pod_script(
            sts,
            &children.config_maps,
            &children.secrets,
            &ids,
            work,
            &checks,
        );
        let started = std::time::Instant::now();
        let out = pods::run(&script, work);
        let report = String::from_utf8_lossy(&out.stdout).into_owned();
        println!(
            "pod {name}: {} in {:.1?}",
            report.trim().replace('\n', "; "),
            started.elapsed()
        );
        assert!(out.status.success(), "{report}\n{}", stderr(&out));
        let pod = sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        let containers = &pod.containers;
        for c in containers {
            assert!(
                report.lines().any(|l| l == format!("READY {}", c.name)),
                "{name}/{}:\n{report}\n{}",
                c.name,
                stderr(&out)
            );
        }
        let listening: Vec<i32> = report
            .lines()
            .find_map(|l| l.strip_prefix("LISTENING "))
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        for port in ports {
            assert!(
                listening.contains(&port),
                "{name}: nothing on {port}: {listening:?}"
            );
        }
        for (label, _) in &checks {
            assert!(
                report.lines().any(|l| l == format!("OK {label}")),
                "{name}: {label}:\n{report}"
            );
        }
        // Every process ends on SIGTERM well within the pod's grace period.
        let grace = pod.termination_grace_period_seconds.unwrap();
        let stopped: i64 = report
            .lines()
            .find_map(|l| l.strip_prefix("STOPPED after "))
            .unwrap_or_else(|| panic!("{name}: processes left after SIGTERM:\n{report}"))
            .trim_end_matches('s')
            .parse()
            .unwrap();
        assert!(
            stopped < grace,
            "{name}: {stopped}s to stop, grace {grace}s"
        );
        std::fs::remove_dir_all(work).unwrap();
    }
}

#[test]
fn backup_restore_prints_a_job_for_one_mailbox_from_a_snapshot() {
    let quickstart = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/quickstart.yaml"
    );
    let out = postwarden(&[
        "backup",
        "restore",
        "--domain",
        "example-com",
        "-n",
        "mail",
        "-f",
        quickstart,
        "--mailbox",
        "alice@example.com",
        "--snapshot",
        "057ad2fd",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("apiVersion: batch/v1\nkind: Job\n"),
        "{text}"
    );
    assert!(text.contains("generateName: example-com-restore-"));
    assert!(text.contains("name: RESTORE_MAILBOX\n") && text.contains("value: alice@example.com"));
    assert!(text.contains("value: 057ad2fd"));

    let wrong = postwarden(&[
        "backup",
        "restore",
        "--domain",
        "example-com",
        "-n",
        "mail",
        "-f",
        quickstart,
        "--mailbox",
        "alice@elsewhere.example",
    ]);
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("not an address of example.com"),
        "{}",
        stderr(&wrong)
    );

    let missing = postwarden(&[
        "backup", "restore", "--domain", "nope", "-n", "mail", "-f", quickstart,
    ]);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("no MailDomain mail/nope"),
        "{}",
        stderr(&missing)
    );
}

/// A free loopback port (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Status code and body of a plain HTTP GET, once the server accepts connections.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Err(e) => panic!("port {port} never opened: {e}"),
        }
    };
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[test]
fn run_serves_probes_and_metrics_waits_for_the_api_and_stops_on_sigterm() {
    // An API server that refuses every connection: the operator must keep retrying, report
    // not-ready, and still stop cleanly.
    let kubeconfig = write_temp(
        "kubeconfig-closed",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: \"http://127.0.0.1:1\"}\n\
         users:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u, namespace: default}\n\
         current-context: x\n",
    );
    let (metrics_port, health_port) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_postwarden"))
        .args([
            "run",
            "--leader-elect=false",
            "--metrics-addr",
            &format!("127.0.0.1:{metrics_port}"),
            "--health-addr",
            &format!("127.0.0.1:{health_port}"),
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env_remove("POSTWARDEN_LOG_FORMAT")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("postwarden run starts");

    let (code, body) = http_get(health_port, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, _) = http_get(health_port, "/readyz");
    assert_eq!(code, 503, "not ready before the watch caches are filled");
    let (code, body) = http_get(metrics_port, "/metrics");
    assert_eq!(code, 200);
    assert!(body.contains("postwarden_leader 1"), "{body}");
    assert!(body.contains("postwarden_maildomains 0"), "{body}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 20 s after SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut logs = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut logs).unwrap();
    assert!(exit.success(), "exit {exit:?}; logs:\n{logs}");
    for line in logs.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["message"].is_string() || v["fields"].is_object(),
            "{line}"
        );
    }
    assert!(logs.contains("shutdown requested"), "{logs}");
}
