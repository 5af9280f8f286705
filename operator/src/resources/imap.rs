//! The IMAP StatefulSet `<md>-imap`: Dovecot serving IMAP (143 STARTTLS, 993 TLS), LMTP
//! delivery and SASL auth for Postfix, and doveadm for replication and backups. Mail lives
//! on a per-pod volume; with two replicas the pods replicate each other.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Container;

use super::pod::{self, caps, DefaultResources, RunAs};
use super::service;
use super::stateful_set::{self, Shape};
use super::{ids, keys, Domain};
use crate::config::scripts;
use crate::names::Component;

/// Where the entrypoint links the configuration of the pod's Dovecot instance, for doveadm.
pub const DOVECOT_CONF_LINK: &str = "dovecot.conf";

pub const DOVECOT_CONTAINER: &str = "dovecot";

/// The capabilities of the Dovecot container (see [`caps`] for why each is needed).
pub const DOVECOT_CAPABILITIES: &[pod::Capability] = &[
    caps::NET_BIND_SERVICE,
    caps::SETUID,
    caps::SETGID,
    caps::CHOWN,
    caps::DAC_OVERRIDE,
    caps::FOWNER,
    caps::KILL,
    caps::SYS_CHROOT,
];

const DOVECOT_RESOURCES: DefaultResources = DefaultResources {
    cpu_request: "100m",
    memory_request: "256Mi",
    memory_limit: "1Gi",
};

/// The StatefulSet `<md>-imap`.
///
/// - `image`: the IMAP image (Dovecot).
/// - `config_checksum`: checksum of the IMAP ConfigMap, which rolls the pods when it changes.
/// - `tls_secret`: the Secret with `tls.crt`/`tls.key` (depends on `spec.tls`).
pub fn build(
    domain: &Domain,
    image: &str,
    config_checksum: String,
    tls_secret: &str,
) -> StatefulSet {
    let layout = domain.layout();
    let config_dir = layout.config_dir();
    let conf = layout
        .run_dir()
        .join(DOVECOT_CONF_LINK)
        .display()
        .to_string();

    let mut ports = service::imap_ports(&layout.ports).to_vec();
    ports.extend(service::imap_internal_ports(&layout.ports));
    ports.extend(service::imap_metrics_ports(&layout));

    // `service status` asks the master process over its socket: quiet, unlike a TCP probe
    // on the IMAP ports, which logs a disconnect every time.
    let status = ["doveadm", "-c", conf.as_str(), "service", "status"];
    let dovecot = Container {
        name: DOVECOT_CONTAINER.into(),
        image: Some(image.into()),
        command: Some(vec![
            "/bin/sh".to_string(),
            config_dir
                .join(scripts::IMAP_ENTRYPOINT)
                .display()
                .to_string(),
        ]),
        ports: Some(pod::container_ports(&ports)),
        resources: Some(pod::resources(
            domain.spec.imap.resources.as_ref(),
            DOVECOT_RESOURCES,
        )),
        security_context: Some(pod::security_context(RunAs::Root, DOVECOT_CAPABILITIES)),
        startup_probe: Some(pod::exec_probe(&status, 2, 60)),
        readiness_probe: Some(pod::exec_probe(&status, 10, 3)),
        liveness_probe: Some(pod::exec_probe(&status, 30, 3)),
        volume_mounts: Some(vec![
            pod::mount("config", &config_dir, true),
            pod::mount("tls", layout.tls_dir(), true),
            pod::mount("users", layout.users_dir(), true),
            pod::mount("secrets", layout.secrets_dir(), true),
            pod::mount("mail", layout.mail_dir(), false),
            pod::mount("run", layout.run_dir(), false),
            pod::mount("tmp", "/tmp", false),
        ]),
        ..Container::default()
    };

    let volumes = vec![
        pod::config_map_volume("config", domain.names.imap_config()),
        pod::secret_volume("tls", tls_secret.to_string(), &[]),
        pod::users_volume("users", domain),
        // Only the doveadm password: the hash key is the operator's alone.
        pod::secret_volume(
            "secrets",
            domain.names.internal(),
            &[keys::DOVEADM_PASSWORD],
        ),
        // Dovecot's base and state directories: sockets, pid file, replication state.
        pod::empty_dir("run", "128Mi"),
        pod::empty_dir("tmp", "256Mi"),
    ];

    stateful_set::build(
        domain,
        Shape {
            name: domain.names.imap(),
            component: Component::Imap,
            service_name: domain.names.imap_headless(),
            replicas: domain.spec.imap.replicas,
            default_container: DOVECOT_CONTAINER,
            config_checksum,
            pod: pod::pod_spec(
                domain,
                Component::Imap,
                ids::VMAIL,
                vec![dovecot],
                volumes,
                30,
            ),
            claim: "mail",
            storage: domain.spec.imap.storage.clone(),
        },
    )
}
