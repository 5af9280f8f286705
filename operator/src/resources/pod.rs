//! Pieces every mail pod shares: security contexts, placement, volumes, probes, resources.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, ConfigMapVolumeSource, Container, ContainerPort,
    EmptyDirVolumeSource, ExecAction, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection,
    SecretVolumeSource, SecurityContext, TCPSocketAction, TopologySpreadConstraint, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::service::NamedPort;
use super::{keys, Domain};
use crate::config::USER_SHARDS;
use crate::names::Component;

/// A Linux capability a container adds back after dropping ALL, and why the daemon needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capability {
    pub name: &'static str,
    pub why: &'static str,
}

/// The capabilities the root-started mail masters (Postfix `master`, Dovecot `dovecot`) need.
/// Each was shown necessary by running the rendered pods without it (operator/tests/cli.rs,
/// `rendered_pods_run_…`): the failure is noted with each. Everything else a container runtime
/// grants by default (FSETID, SETPCAP, NET_RAW, MKNOD, AUDIT_WRITE, SETFCAP, and KILL or
/// SYS_CHROOT where unused) stays dropped.
pub mod caps {
    use super::Capability;

    pub const NET_BIND_SERVICE: Capability = Capability {
        name: "NET_BIND_SERVICE",
        why: "listen on the standard mail ports below 1024 (25, 465, 587; 24, 143, 993): without it `bind … port 25: Permission denied`",
    };
    pub const SETUID: Capability = Capability {
        name: "SETUID",
        why: "the master starts workers under their unprivileged users: without it `postsuper: fatal: setuid(…)`, Dovecot's login and mail processes fail",
    };
    pub const SETGID: Capability = Capability {
        name: "SETGID",
        why: "the master starts workers under their unprivileged groups: without it `setgid(…): Operation not permitted`",
    };
    pub const CHOWN: Capability = Capability {
        name: "CHOWN",
        why: "the entrypoints hand the runtime and mail directories on fresh volumes to the worker users (`chown postfix …`, `chown 5000 /var/mail`)",
    };
    pub const DAC_OVERRIDE: Capability = Capability {
        name: "DAC_OVERRIDE",
        why: "root-run tools enter what the worker users own: Postfix's queue check (`find: /var/spool/postfix/active: Permission denied`), `doveadm auth test` on Dovecot's auth sockets",
    };
    pub const FOWNER: Capability = Capability {
        name: "FOWNER",
        why: "the entrypoints set the modes of directories owned by the worker users (`chmod … Operation not permitted`)",
    };
    pub const KILL: Capability = Capability {
        name: "KILL",
        why: "Dovecot signals processes of the mail user: `doveadm kick` ends a suspended or removed user's sessions, idle processes are reaped (Postfix works without it)",
    };
    pub const SYS_CHROOT: Capability = Capability {
        name: "SYS_CHROOT",
        why: "Dovecot's login processes chroot into an empty directory before reading client input: without it IMAP on 143 gets no greeting",
    };
}

/// Who a container runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunAs {
    /// Root with only the listed capabilities: daemons whose master must start workers under
    /// other users.
    Root,
    /// A fixed non-root user and group.
    User(i64),
}

/// Container security: no privilege escalation, read-only root filesystem, ALL capabilities
/// dropped and only `add` given back, seccomp RuntimeDefault.
pub fn security_context(run_as: RunAs, add: &[Capability]) -> SecurityContext {
    let (user, non_root) = match run_as {
        RunAs::Root => (0, false),
        RunAs::User(id) => (id, true),
    };
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_user: Some(user),
        run_as_group: Some(user),
        run_as_non_root: Some(non_root),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: (!add.is_empty()).then(|| add.iter().map(|c| c.name.to_string()).collect()),
        }),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

/// The pod spec around `containers`: service account without a token, placement from
/// `spec.placement`, pod security context with `fs_group`, no Service environment variables.
pub fn pod_spec(
    domain: &Domain,
    component: Component,
    fs_group: i64,
    containers: Vec<Container>,
    volumes: Vec<Volume>,
    termination_grace_period_seconds: i64,
) -> PodSpec {
    let placement = &domain.spec.placement;
    PodSpec {
        service_account_name: Some(domain.names.service_account()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            seccomp_profile: Some(runtime_default()),
            fs_group: Some(fs_group),
            // Large mail volumes: only walk the tree when its root does not already match.
            fs_group_change_policy: Some("OnRootMismatch".into()),
            ..PodSecurityContext::default()
        }),
        topology_spread_constraints: Some(topology_spread(domain, component)),
        node_selector: (!placement.node_selector.is_empty())
            .then(|| placement.node_selector.clone()),
        tolerations: (!placement.tolerations.is_empty()).then(|| placement.tolerations.clone()),
        priority_class_name: placement.priority_class_name.clone(),
        termination_grace_period_seconds: Some(termination_grace_period_seconds),
        containers,
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// One constraint per `spec.placement.topologyKeys` entry, skew at most 1. Spreading over
/// hostnames is a hard requirement (two replicas on one node protect against nothing);
/// other keys (zones) are best effort, so a cluster with fewer zones still schedules.
pub fn topology_spread(domain: &Domain, component: Component) -> Vec<TopologySpreadConstraint> {
    domain
        .spec
        .placement
        .topology_keys
        .iter()
        .map(|key| TopologySpreadConstraint {
            topology_key: key.clone(),
            max_skew: 1,
            when_unsatisfiable: if key == "kubernetes.io/hostname" {
                "DoNotSchedule".into()
            } else {
                "ScheduleAnyway".into()
            },
            label_selector: Some(domain.label_selector(component)),
            ..TopologySpreadConstraint::default()
        })
        .collect()
}

/// Requests and limits of a container: the spec's when given (as a whole, so a limit never
/// ends up below a request the user set), else `default`.
pub fn resources(
    spec: Option<&ResourceRequirements>,
    default: DefaultResources,
) -> ResourceRequirements {
    spec.cloned().unwrap_or_else(|| default.requirements())
}

/// Default requests and memory limit of a container. No CPU limit: throttling a mail daemon
/// under a burst only lengthens queues.
#[derive(Clone, Copy, Debug)]
pub struct DefaultResources {
    pub cpu_request: &'static str,
    pub memory_request: &'static str,
    pub memory_limit: &'static str,
}

impl DefaultResources {
    fn requirements(self) -> ResourceRequirements {
        let q = |s: &str| Quantity(s.to_string());
        ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), q(self.cpu_request)),
                ("memory".to_string(), q(self.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                q(self.memory_limit),
            )])),
            ..ResourceRequirements::default()
        }
    }
}

/// Container ports of `ports`, named like the Service ports that target them.
pub fn container_ports(ports: &[NamedPort]) -> Vec<ContainerPort> {
    ports
        .iter()
        .map(|p| ContainerPort {
            name: Some(p.name.into()),
            container_port: p.port.into(),
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        })
        .collect()
}

/// Mode of mounted Secret files: readable by root and the pod's `fsGroup` only.
pub const SECRET_MODE: i32 = 0o440;
/// Mode of mounted ConfigMap files: nothing secret, read-only for everyone.
pub const CONFIG_MODE: i32 = 0o444;

/// A volume of a ConfigMap's files.
pub fn config_map_volume(volume: &str, config_map: String) -> Volume {
    Volume {
        name: volume.into(),
        config_map: Some(ConfigMapVolumeSource {
            name: config_map,
            default_mode: Some(CONFIG_MODE),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A volume of a Secret's files (all keys, or only `items`).
pub fn secret_volume(volume: &str, secret: String, items: &[&str]) -> Volume {
    Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(SECRET_MODE),
            items: (!items.is_empty()).then(|| {
                items
                    .iter()
                    .map(|k| KeyToPath {
                        key: k.to_string(),
                        path: k.to_string(),
                        ..KeyToPath::default()
                    })
                    .collect()
            }),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Mode of the users database files. Dovecot looks passwords up in its auth process, which
/// runs as Dovecot's unprivileged internal user, not as root or the mail group, so the files
/// are world-readable inside the containers that mount them: the IMAP pods' Dovecot and the
/// MTA pods' auth sidecar (no other software runs there; login processes are chrooted away
/// from them).
pub const USERS_MODE: i32 = 0o444;

/// The users database: all [`USER_SHARDS`] Secrets projected into one directory of
/// `<hex>.passwd` files. A projected volume is refreshed in place by the kubelet, so a
/// changed Mailbox reaches Dovecot without a restart.
pub fn users_volume(volume: &str, domain: &Domain) -> Volume {
    Volume {
        name: volume.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(USERS_MODE),
            sources: Some(
                (0..USER_SHARDS)
                    .map(|i| VolumeProjection {
                        secret: Some(SecretProjection {
                            name: domain.names.users_shard(i),
                            items: Some(vec![KeyToPath {
                                key: keys::users_shard(i),
                                path: keys::users_shard(i),
                                ..KeyToPath::default()
                            }]),
                            optional: Some(false),
                        }),
                        ..VolumeProjection::default()
                    })
                    .collect(),
            ),
        }),
        ..Volume::default()
    }
}

/// The Postfix address maps: every shard ConfigMap's files in one directory (file names are
/// unique across shards).
pub fn maps_volume(volume: &str, domain: &Domain) -> Volume {
    Volume {
        name: volume.into(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(CONFIG_MODE),
            sources: Some(
                (0..USER_SHARDS)
                    .map(|i| VolumeProjection {
                        config_map: Some(ConfigMapProjection {
                            name: domain.names.maps_shard(i),
                            items: None,
                            optional: Some(false),
                        }),
                        ..VolumeProjection::default()
                    })
                    .collect(),
            ),
        }),
        ..Volume::default()
    }
}

/// A scratch volume (runtime sockets, pid files, temporary files) bounded by `size_limit`.
pub fn empty_dir(volume: &str, size_limit: &str) -> Volume {
    Volume {
        name: volume.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.into())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// Mount of `volume` at `path`. Never with subPath: subPath mounts are not refreshed when
/// the Secret or ConfigMap changes.
pub fn mount(volume: &str, path: impl AsRef<std::path::Path>, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: path.as_ref().display().to_string(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// A probe running `command` in the container.
pub fn exec_probe(command: &[&str], period: i32, failure_threshold: i32) -> Probe {
    Probe {
        exec: Some(ExecAction {
            command: Some(command.iter().map(|s| s.to_string()).collect()),
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// A probe connecting to the named `port`.
pub fn tcp_probe(port: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port.into()),
            ..TCPSocketAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

/// A probe getting `path` from the named `port`.
pub fn http_probe(path: &str, port: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::testing;

    #[test]
    fn hostname_spread_is_required_and_zone_spread_preferred() {
        let md = testing::quickstart_domain();
        let domain = testing::domain(&md);
        let tsc = topology_spread(&domain, Component::Imap);
        assert_eq!(tsc.len(), 2);
        assert_eq!(tsc[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(tsc[0].when_unsatisfiable, "DoNotSchedule");
        assert_eq!(tsc[1].topology_key, "topology.kubernetes.io/zone");
        assert_eq!(tsc[1].when_unsatisfiable, "ScheduleAnyway");
        assert!(tsc.iter().all(|c| c.max_skew == 1
            && c.label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/component"]
                == "imap"));
    }

    #[test]
    fn spec_resources_replace_the_defaults_as_a_whole() {
        let default = DefaultResources {
            cpu_request: "100m",
            memory_request: "128Mi",
            memory_limit: "512Mi",
        };
        let d = resources(None, default);
        assert_eq!(d.limits.as_ref().unwrap()["memory"].0, "512Mi");
        assert!(!d.limits.as_ref().unwrap().contains_key("cpu"));
        let mine = ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "memory".to_string(),
                Quantity("2Gi".into()),
            )])),
            ..ResourceRequirements::default()
        };
        assert_eq!(resources(Some(&mine), default), mine);
    }

    #[test]
    fn security_context_drops_all_and_adds_back_only_what_is_listed() {
        let sc = security_context(RunAs::Root, &[caps::NET_BIND_SERVICE]);
        let c = sc.capabilities.unwrap();
        assert_eq!(c.drop.unwrap(), ["ALL"]);
        assert_eq!(c.add.unwrap(), ["NET_BIND_SERVICE"]);
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let user = security_context(RunAs::User(5001), &[]);
        assert_eq!(user.run_as_non_root, Some(true));
        assert_eq!(user.capabilities.unwrap().add, None);
    }
}
