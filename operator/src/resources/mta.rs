//! The MTA StatefulSet `<md>-mta`: Postfix with Rspamd as a sidecar milter (inbound SPF,
//! DKIM and DMARC checks, spam scoring; outbound DKIM signing) and an auth-only Dovecot as
//! its SASL server on loopback (`config::dovecot_auth`), so submission passwords never cross
//! the pod network and submission does not depend on the IMAP pods. The mail queue lives on a
//! per-pod volume so a restarted pod resumes it.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;

use super::pod::{self, caps, DefaultResources, RunAs};
use super::service;
use super::stateful_set::{self, Shape};
use super::{ids, Domain};
use crate::config::{dovecot_auth, scripts};
use crate::names::Component;

pub const POSTFIX_CONTAINER: &str = "postfix";
pub const RSPAMD_CONTAINER: &str = "rspamd";
pub const EXPORTER_CONTAINER: &str = "postfix-exporter";
pub const AUTH_CONTAINER: &str = "dovecot-auth";

/// The capabilities of the Postfix container (see [`caps`] for why each is needed). Postfix
/// runs without chroot, so SYS_CHROOT stays dropped; it starts, reloads and stops (in about
/// 4 s instead of 1 s) without KILL, so that stays dropped too.
pub const POSTFIX_CAPABILITIES: &[pod::Capability] = &[
    caps::NET_BIND_SERVICE,
    caps::SETUID,
    caps::SETGID,
    caps::CHOWN,
    caps::DAC_OVERRIDE,
    caps::FOWNER,
];

const POSTFIX_RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "100m",
    memory_request: "128Mi",
    memory_limit: "512Mi",
};
const EXPORTER_RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "10m",
    memory_request: "32Mi",
    memory_limit: "128Mi",
};
const AUTH_RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "20m",
    memory_request: "32Mi",
    memory_limit: "128Mi",
};
const RSPAMD_RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "100m",
    memory_request: "256Mi",
    memory_limit: "1Gi",
};

/// Where the queue volume is mounted: the parent of Postfix's queue directory.
pub fn queue_volume_root(layout: &crate::config::Layout) -> std::path::PathBuf {
    let queue = layout.queue_dir();
    queue
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or(queue)
}

/// The Postfix container's ports: SMTP and submission, and the continuity agent's metrics when
/// it runs beside Postfix.
fn postfix_ports(domain: &Domain, layout: &crate::config::Layout) -> Vec<service::NamedPort> {
    let mut ports = service::smtp_ports(&layout.ports).to_vec();
    if domain.spec.continuity.is_some() {
        ports.push(service::continuity_metrics_port(&layout.ports));
    }
    ports
}

/// The StatefulSet `<md>-mta`.
///
/// - `image`: the MTA image (Postfix and Rspamd).
/// - `auth_image`: the IMAP image, whose Dovecot runs the auth sidecar.
/// - `config_checksum`: checksum of the MTA ConfigMap, which rolls the pods when it changes.
/// - `tls_secret`: the Secret with `tls.crt`/`tls.key` (depends on `spec.tls`).
pub fn build(
    domain: &Domain,
    image: &str,
    auth_image: &str,
    config_checksum: String,
    tls_secret: &str,
) -> StatefulSet {
    let layout = domain.layout();
    let config_dir = layout.config_dir();
    let entry = |script: &str| {
        vec![
            "/bin/sh".to_string(),
            config_dir.join(script).display().to_string(),
        ]
    };

    // Is the master process alive? What `postfix status` checks, without the log line it
    // writes to the container log on every probe.
    let alive = format!(
        "kill -0 $(cat {})",
        layout.queue_dir().join("pid/master.pid").display()
    );
    let postfix_status = ["sh", "-c", alive.as_str()];
    let postfix = Container {
        name: POSTFIX_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(entry(scripts::MTA_ENTRYPOINT)),
        ports: Some(pod::container_ports(&postfix_ports(domain, &layout))),
        resources: Some(pod::resources(
            domain.spec.mta.resources.as_ref(),
            POSTFIX_RESOURCES,
        )),
        security_context: Some(pod::security_context(RunAs::Root, POSTFIX_CAPABILITIES)),
        // Checking a large queue on start takes a while. A TCP probe would log a lost
        // connection every time.
        startup_probe: Some(pod::exec_probe(&postfix_status, 2, 90)),
        readiness_probe: Some(pod::exec_probe(&postfix_status, 10, 3)),
        liveness_probe: Some(pod::exec_probe(&postfix_status, 30, 3)),
        volume_mounts: Some(vec![
            pod::mount("config", &config_dir, true),
            pod::mount("maps", layout.maps_dir(), true),
            pod::mount("tls", layout.tls_dir(), true),
            // The volume holds the queue directory rather than being it: the kubelet keeps the
            // volume root group-owned by the fsGroup, while Postfix sets the ownership and modes
            // it insists on for its queue directories below it.
            pod::mount("queue", queue_volume_root(&layout), false),
            pod::mount("run", layout.run_dir(), false),
            pod::mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };

    let metrics = service::rspamd_metrics_port(&layout.ports);
    let rspamd = Container {
        name: RSPAMD_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(entry(scripts::RSPAMD_ENTRYPOINT)),
        ports: Some(pod::container_ports(&[metrics])),
        resources: Some(pod::resources(None, RSPAMD_RESOURCES)),
        // Rspamd listens above 1024 and needs no privilege at all.
        security_context: Some(pod::security_context(RunAs::User(ids::RSPAMD), &[])),
        // Rspamd compiles its rules on start (~10 s on a small node).
        startup_probe: Some(pod::http_probe("/ping", metrics.name, 2, 60)),
        readiness_probe: Some(pod::http_probe("/ping", metrics.name, 10, 3)),
        liveness_probe: Some(pod::http_probe("/ping", metrics.name, 30, 3)),
        volume_mounts: Some(vec![
            pod::mount("config", &config_dir, true),
            pod::mount("dkim", layout.dkim_dir(), true),
            pod::mount("run", layout.run_dir(), false),
            pod::mount("rspamd-tmp", "/tmp", false),
        ]),
        ..Container::default()
    };

    // Postfix queue sizes and ages for Prometheus, read from Postfix's `showq` socket on the
    // queue volume (mounted read-only). It does not gate readiness: mail flows without it.
    let exporter_port = service::postfix_metrics_port();
    let showq = layout.queue_dir().join("public/showq");
    let exporter = Container {
        name: EXPORTER_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec![
            "prometheus-postfix-exporter".into(),
            format!("--web.listen-address=:{}", exporter_port.port),
            format!("--postfix.showq_path={}", showq.display()),
            // Postfix logs to the container log, not a file: only the queue metrics count.
            "--postfix.logfile_path=/dev/null".into(),
        ]),
        ports: Some(pod::container_ports(&[exporter_port])),
        resources: Some(pod::resources(None, EXPORTER_RESOURCES)),
        // As the postfix user, the owner of the queue's `public/` directory; no capability.
        security_context: Some(pod::security_context(RunAs::User(ids::POSTFIX), &[])),
        liveness_probe: Some(pod::tcp_probe(exporter_port.name, 30, 3)),
        volume_mounts: Some(vec![pod::mount("queue", queue_volume_root(&layout), true)]),
        ..Container::default()
    };

    // Postfix's SASL server: Dovecot auth on loopback only (no container port: nothing outside
    // the pod may reach it), as Dovecot's own unprivileged user without any capability.
    let auth_conf = config_dir
        .join(dovecot_auth::DOVECOT_AUTH_CONF)
        .display()
        .to_string();
    let auth_status = ["doveadm", "-c", auth_conf.as_str(), "service", "status"];
    let auth = Container {
        name: AUTH_CONTAINER.into(),
        image: Some(auth_image.into()),
        command: Some(entry(scripts::AUTH_ENTRYPOINT)),
        resources: Some(pod::resources(None, AUTH_RESOURCES)),
        security_context: Some(pod::security_context(RunAs::User(ids::DOVECOT), &[])),
        startup_probe: Some(pod::exec_probe(&auth_status, 2, 30)),
        readiness_probe: Some(pod::exec_probe(&auth_status, 10, 3)),
        liveness_probe: Some(pod::exec_probe(&auth_status, 30, 3)),
        volume_mounts: Some(vec![
            pod::mount("config", &config_dir, true),
            pod::mount("users", layout.users_dir(), true),
            pod::mount("auth-run", layout.auth_run_dir(), false),
            // Dovecot 2.4 writes its parsed configuration to /tmp before reading it.
            pod::mount("auth-tmp", "/tmp", false),
        ]),
        ..Container::default()
    };

    let volumes = vec![
        pod::config_map_volume("config", domain.names.mta_config()),
        pod::users_volume("users", domain),
        pod::maps_volume("maps", domain),
        pod::secret_volume("tls", tls_secret.to_string(), &[]),
        pod::secret_volume("dkim", domain.names.dkim(), &[]),
        // Runtime state of both daemons (pid files, Postfix's TLS and postscreen caches,
        // Rspamd's compiled rules): rebuilt after a restart.
        pod::empty_dir("run", "256Mi"),
        pod::empty_dir("tmp", "256Mi"),
        // Rspamd spools messages it scans; room for a few at the size limit.
        pod::empty_dir("rspamd-tmp", "2Gi"),
        // The auth sidecar's base and state directories (sockets, pid file).
        pod::empty_dir("auth-run", "16Mi"),
        pod::empty_dir("auth-tmp", "16Mi"),
    ];

    stateful_set::build(
        domain,
        Shape {
            name: domain.names.mta(),
            component: Component::Mta,
            service_name: domain.names.mta_headless(),
            replicas: domain.spec.mta.replicas,
            default_container: POSTFIX_CONTAINER,
            config_checksum,
            // Postfix finishes deliveries in progress before it exits.
            pod: pod::pod_spec(
                domain,
                Component::Mta,
                ids::RSPAMD,
                vec![postfix, rspamd, exporter, auth],
                volumes,
                60,
            ),
            claim: "queue",
            storage: domain.spec.mta.storage.clone(),
        },
    )
}
