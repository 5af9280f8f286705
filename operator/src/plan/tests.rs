//! The plan of the quickstart with fixed keys, hashes and timestamps: snapshots of every
//! builder's output, and the properties every plan must have.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, PodSpec, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::*;
use crate::api::maildomain::{CertManagerSpec, DkimAlgorithm, IssuerRef};
use crate::dkim::{DkimKey, StoredKey};
use crate::manifest::{to_yaml, to_yaml_stream, Inputs};
use crate::names::{self, CONFIG_CHECKSUM_ANNOTATION, DOMAIN_LABEL};
use crate::pki::CaPhase;
use crate::resources::secret::text_data;

const TEST_CA_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nTEST-CA-CERTIFICATE\n-----END CERTIFICATE-----\n";
const TEST_CA_KEY: &str = "-----BEGIN PRIVATE KEY-----\nTEST-CA-KEY\n-----END PRIVATE KEY-----\n";
const TEST_SERVING_CERT: &str =
    "-----BEGIN CERTIFICATE-----\nTEST-SERVING-CERTIFICATE\n-----END CERTIFICATE-----\n";
const TEST_SERVING_KEY: &str =
    "-----BEGIN PRIVATE KEY-----\nTEST-SERVING-KEY\n-----END PRIVATE KEY-----\n";
const TEST_DKIM_KEY: &str =
    "-----BEGIN RSA PRIVATE KEY-----\nTEST-DKIM-KEY\n-----END RSA PRIVATE KEY-----\n";
const TEST_DOVEADM_PASSWORD: &str = "test-doveadm-password";
const TEST_HASH_KEY: &str = "test-hash-key";

/// A MailDomain with its Mailboxes, passwords and fixed state.
struct Fixture {
    inputs: Inputs,
    dkim: DkimState,
    internal: InternalSecrets,
    tls: TlsMaterial,
}

impl Fixture {
    fn quickstart() -> Self {
        Self::from_inputs(crate::resources::testing::quickstart())
    }

    fn high_availability() -> Self {
        let mut inputs = Inputs::default();
        crate::manifest::load_str(
            std::path::Path::new("high-availability.yaml"),
            include_str!("../../../manifests/examples/high-availability.yaml"),
            &mut inputs,
        )
        .unwrap();
        Self::from_inputs(inputs)
    }

    fn from_inputs(inputs: Inputs) -> Self {
        let at = Timestamp::from_second(1_767_225_600).unwrap(); // 2026-01-01T00:00:00Z
        let md = &inputs.domains[0];
        let dkim = DkimState {
            keys: vec![StoredKey {
                key: DkimKey {
                    selector: "pw202601010000".into(),
                    algorithm: DkimAlgorithm::Rsa2048,
                    private_pem: TEST_DKIM_KEY.into(),
                    public_b64: "TESTPUBLICKEY".into(),
                },
                created: at,
                activated: Some(at),
                retired: None,
            }],
        };
        let tls = TlsMaterial::external(md).unwrap_or_else(|| TlsMaterial::Internal {
            ca: CaState {
                current: CertKeyPair {
                    cert_pem: TEST_CA_CERT.into(),
                    key_pem: TEST_CA_KEY.into(),
                },
                phase: CaPhase::Stable,
            },
            serving: CertKeyPair {
                cert_pem: TEST_SERVING_CERT.into(),
                key_pem: TEST_SERVING_KEY.into(),
            },
        });
        Self {
            inputs,
            dkim,
            internal: InternalSecrets {
                doveadm_password: TEST_DOVEADM_PASSWORD.into(),
                hash_key: TEST_HASH_KEY.into(),
            },
            tls,
        }
    }

    fn md(&self) -> &MailDomain {
        &self.inputs.domains[0]
    }

    fn md_mut(&mut self) -> &mut MailDomain {
        &mut self.inputs.domains[0]
    }

    fn password(&self, mb: &Mailbox) -> Option<String> {
        let r = &mb.spec.password_secret_ref;
        self.inputs
            .secrets
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some(&r.name))
            .and_then(|s| text_data(s).remove(&r.key))
    }

    fn domain_inputs(&self) -> DomainInputs<'_> {
        let md = self.md();
        DomainInputs {
            continuity_recipients: None,
            md,
            namespace: "mail",
            mailboxes: self
                .inputs
                .mailboxes
                .iter()
                .map(|mb| MailboxInput {
                    mailbox: mb,
                    resolved: resolve_mailbox(
                        mb,
                        &md.spec.domain,
                        self.password(mb).as_deref(),
                        &self.internal.hash_key,
                    ),
                })
                .collect(),
            tls: self.tls.clone(),
            dkim: &self.dkim,
            internal: &self.internal,
            images: Images {
                mta: "ghcr.io/postwarden/mail-mta:test".into(),
                imap: "ghcr.io/postwarden/mail-imap:test".into(),
            },
        }
    }

    fn desired(&self) -> Children {
        desired(&self.domain_inputs()).unwrap()
    }
}

fn by_name<'a, T: kube::Resource>(objects: &'a [T], name: &str) -> &'a T {
    objects
        .iter()
        .find(|o| o.meta().name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no {name}"))
}

fn pod(sts: &StatefulSet) -> &PodSpec {
    sts.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
}

fn container<'a>(sts: &'a StatefulSet, name: &str) -> &'a Container {
    pod(sts).containers.iter().find(|c| c.name == name).unwrap()
}

fn checksum_of(sts: &StatefulSet) -> String {
    sts.spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()[CONFIG_CHECKSUM_ANNOTATION]
        .clone()
}

fn secret_text(secrets: &[Secret], name: &str) -> BTreeMap<String, String> {
    text_data(by_name(secrets, name))
}

/// The object as JSON with what other parts own replaced by placeholders: rendered daemon
/// configuration (snapshot-tested in config/) and the checksum over it.
fn redacted(value: impl serde::Serialize) -> Value {
    let mut v = serde_json::to_value(value).unwrap();
    if v["kind"] == "ConfigMap" && v["metadata"]["name"].as_str().unwrap().ends_with("-config") {
        for (_, file) in v["data"].as_object_mut().unwrap() {
            *file = Value::String("<rendered by config/>".into());
        }
    }
    if let Some(a) = v.pointer_mut("/spec/template/metadata/annotations") {
        a[CONFIG_CHECKSUM_ANNOTATION] = Value::String("<sha256 of the config ConfigMap>".into());
    }
    v
}

fn snapshot<T: serde::Serialize>(objects: &[T]) -> String {
    to_yaml_stream(&objects.iter().map(redacted).collect::<Vec<_>>())
}

#[test]
fn snapshot_service_account() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(to_yaml(&c.service_account.unwrap()));
}

#[test]
fn snapshot_secrets() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.secrets));
}

#[test]
fn snapshot_config_maps() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.config_maps));
}

#[test]
fn snapshot_services() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.services));
}

#[test]
fn snapshot_network_policies() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.network_policies));
}

#[test]
fn snapshot_pod_disruption_budgets() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.pod_disruption_budgets));
}

#[test]
fn snapshot_mta_stateful_set() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.stateful_sets[..1]));
}

#[test]
fn snapshot_imap_stateful_set() {
    let c = Fixture::quickstart().desired();
    insta::assert_snapshot!(snapshot(&c.stateful_sets[1..]));
}

#[test]
fn snapshot_cert_manager_certificate() {
    let c = Fixture::high_availability().desired();
    insta::assert_snapshot!(snapshot(&c.certificates));
}

#[test]
fn snapshot_apply_order() {
    let c = Fixture::quickstart().desired();
    let order: Vec<String> = c
        .in_apply_order()
        .iter()
        .map(|o| format!("{} {}", o.kind(), o.name()))
        .collect();
    insta::assert_snapshot!(order.join("\n"));
}

#[test]
fn every_object_is_labelled_namespaced_and_owner_ready() {
    for fx in [Fixture::quickstart(), Fixture::high_availability()] {
        let c = fx.desired();
        let md_name = fx.md().metadata.name.clone().unwrap();
        assert!(c.len() >= 30, "{}", c.len());
        for o in c.in_apply_order() {
            let m = o.metadata();
            let labels = m
                .labels
                .as_ref()
                .unwrap_or_else(|| panic!("{} unlabelled", o.name()));
            assert_eq!(labels[DOMAIN_LABEL], md_name, "{}", o.name());
            assert_eq!(labels["app.kubernetes.io/managed-by"], names::MANAGER);
            assert_eq!(labels["app.kubernetes.io/instance"], md_name);
            assert!(labels.contains_key("app.kubernetes.io/component"));
            assert_eq!(m.namespace.as_deref(), Some("mail"), "{}", o.name());
            assert!(o.name().starts_with(&format!("{md_name}-")), "{}", o.name());
            assert!(m.owner_references.is_none(), "{}", o.name());
        }

        let owner = OwnerReference {
            api_version: "postwarden.dev/v1alpha1".into(),
            kind: "MailDomain".into(),
            name: md_name.clone(),
            uid: "0b1c".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let owned = c.owned_by(&owner);
        for o in owned.in_apply_order() {
            assert_eq!(
                o.metadata().owner_references.as_deref(),
                Some(std::slice::from_ref(&owner)),
                "{}",
                o.name()
            );
        }
    }
}

#[test]
fn config_and_secrets_come_before_services_before_workloads() {
    let c = Fixture::high_availability().desired();
    let kinds: Vec<String> = c
        .in_apply_order()
        .iter()
        .map(|o| o.kind().to_string())
        .collect();
    let last = |k: &[&str]| kinds.iter().rposition(|x| k.contains(&x.as_str())).unwrap();
    let first = |k: &str| kinds.iter().position(|x| x == k).unwrap();
    assert!(last(&["Secret", "ConfigMap", "ServiceAccount"]) < first("Service"));
    assert!(last(&["Service"]) < first("StatefulSet"));
    assert!(first("Certificate") < first("Service"));
}

#[test]
fn pods_roll_only_when_their_configuration_changes() {
    let fx = Fixture::quickstart();
    let before = fx.desired();
    let [mta, imap] = [&before.stateful_sets[0], &before.stateful_sets[1]];
    assert_eq!(
        checksum_of(mta),
        config_map::checksum([by_name(&before.config_maps, "example-com-mta-config")])
    );
    assert_eq!(
        checksum_of(imap),
        config_map::checksum([by_name(&before.config_maps, "example-com-imap-config")])
    );
    assert_ne!(checksum_of(mta), checksum_of(imap));

    // Users, maps, certificates and DKIM keys change without touching the StatefulSets.
    let mut changed = Fixture::quickstart();
    changed.inputs.mailboxes[0]
        .spec
        .aliases
        .push("sales".into());
    changed.inputs.mailboxes[1].spec.suspended = true;
    changed.inputs.mailboxes.pop();
    changed.dkim.keys[0].key.selector = "pw202607010000".into();
    changed.dkim.keys[0].key.private_pem = TEST_DKIM_KEY.replace("TEST", "OTHER");
    if let TlsMaterial::Internal { serving, .. } = &mut changed.tls {
        serving.cert_pem = TEST_SERVING_CERT.replace("TEST", "RENEWED");
    }
    let after = changed.desired();
    assert_eq!(before.stateful_sets, after.stateful_sets);
    let data = |c: &Children, name: &str| by_name(&c.config_maps, name).data.clone();
    let maps = |c: &Children| {
        (0..crate::config::USER_SHARDS)
            .map(|i| data(c, &format!("example-com-maps-{i:x}")))
            .collect::<Vec<_>>()
    };
    assert_ne!(maps(&before), maps(&after));
    assert_ne!(
        secret_text(&before.secrets, "example-com-tls"),
        secret_text(&after.secrets, "example-com-tls")
    );
    assert_ne!(
        secret_text(&before.secrets, "example-com-dkim"),
        secret_text(&after.secrets, "example-com-dkim")
    );

    // A configuration change rolls the pods of that component.
    let mut bigger = Fixture::quickstart();
    bigger.md_mut().spec.mta.message_size_limit.0 = "50Mi".into();
    let rolled = bigger.desired();
    assert_ne!(checksum_of(&rolled.stateful_sets[0]), checksum_of(mta));
    assert_eq!(
        checksum_of(&rolled.stateful_sets[0]),
        config_map::checksum([by_name(&rolled.config_maps, "example-com-mta-config")])
    );
}

#[test]
fn the_same_inputs_give_the_same_objects() {
    let fx = Fixture::quickstart();
    let a = serde_json::to_value(fx.desired().in_apply_order()).unwrap();
    let b = serde_json::to_value(fx.desired().in_apply_order()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn claims_are_kept_and_never_deleted() {
    let c = Fixture::high_availability().desired();
    for (sts, claim, size) in [
        (&c.stateful_sets[0], "queue", "5Gi"),
        (&c.stateful_sets[1], "mail", "200Gi"),
    ] {
        let spec = sts.spec.as_ref().unwrap();
        let policy = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .unwrap();
        assert_eq!(policy.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(policy.when_scaled.as_deref(), Some("Retain"));
        let templates = spec.volume_claim_templates.as_ref().unwrap();
        assert_eq!(templates.len(), 1);
        let t = &templates[0];
        assert_eq!(t.metadata.name.as_deref(), Some(claim));
        let pvc = t.spec.as_ref().unwrap();
        assert_eq!(pvc.storage_class_name.as_deref(), Some("fast-ssd"));
        assert_eq!(
            pvc.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"].0,
            size
        );
    }
    // PVCs are not among the children, so nothing the operator prunes can be a PVC.
    assert!(c
        .in_apply_order()
        .iter()
        .all(|o| o.kind() != "PersistentVolumeClaim"));
}

#[test]
fn containers_drop_all_capabilities_and_add_back_only_their_daemons_needs() {
    let c = Fixture::quickstart().desired();
    let expect = [
        (
            &c.stateful_sets[0],
            "postfix",
            mta::POSTFIX_CAPABILITIES,
            Some(0),
        ),
        (
            &c.stateful_sets[0],
            "rspamd",
            &[][..],
            Some(crate::resources::ids::RSPAMD),
        ),
        (
            &c.stateful_sets[1],
            "dovecot",
            imap::DOVECOT_CAPABILITIES,
            Some(0),
        ),
        (
            &c.stateful_sets[0],
            "postfix-exporter",
            &[][..],
            Some(crate::resources::ids::POSTFIX),
        ),
        (
            &c.stateful_sets[0],
            mta::AUTH_CONTAINER,
            &[][..],
            Some(crate::resources::ids::DOVECOT),
        ),
    ];
    for (sts, name, caps, user) in expect {
        let sc = container(sts, name).security_context.as_ref().unwrap();
        let have = sc.capabilities.as_ref().unwrap();
        assert_eq!(
            have.drop.as_deref(),
            Some(&["ALL".to_string()][..]),
            "{name}"
        );
        let added: Vec<&str> = have.add.iter().flatten().map(String::as_str).collect();
        let wanted: Vec<&str> = caps.iter().map(|c| c.name).collect();
        assert_eq!(added, wanted, "{name}");
        assert!(!added.contains(&"SYS_ADMIN") && !added.contains(&"NET_RAW"));
        assert!(caps.iter().all(|c| !c.why.is_empty()));
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
        assert_eq!(sc.privileged, Some(false), "{name}");
        assert_eq!(sc.run_as_user, user, "{name}");
        assert_eq!(sc.run_as_non_root, Some(user != Some(0)), "{name}");
    }
    // Postfix runs without chroot and without signalling its workers; Dovecot does both.
    for cap in [
        crate::resources::pod::caps::SYS_CHROOT,
        crate::resources::pod::caps::KILL,
    ] {
        assert!(!mta::POSTFIX_CAPABILITIES.contains(&cap));
        assert!(imap::DOVECOT_CAPABILITIES.contains(&cap));
    }

    for sts in &c.stateful_sets {
        let p = pod(sts);
        let psc = p.security_context.as_ref().unwrap();
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        assert!(psc.fs_group.is_some());
        assert_eq!(p.automount_service_account_token, Some(false));
        assert_eq!(p.service_account_name.as_deref(), Some("example-com-mail"));
        for ctr in &p.containers {
            let r = ctr.resources.as_ref().unwrap();
            assert!(
                r.requests.as_ref().unwrap().contains_key("memory"),
                "{}",
                ctr.name
            );
            assert!(
                r.limits.as_ref().unwrap().contains_key("memory"),
                "{}",
                ctr.name
            );
            assert!(ctr.liveness_probe.is_some(), "{}", ctr.name);
            // Every daemon gates readiness; the metrics exporter does not.
            assert_eq!(
                ctr.readiness_probe.is_some(),
                ctr.name != mta::EXPORTER_CONTAINER,
                "{}",
                ctr.name
            );
        }
    }
    assert_eq!(
        c.service_account.unwrap().automount_service_account_token,
        Some(false)
    );
}

#[test]
fn submission_auth_stays_on_the_mta_pods_loopback() {
    let fx = Fixture::quickstart();
    let c = fx.desired();
    let layout = crate::resources::Domain::new(fx.md(), "mail").layout();
    let auth = i32::from(layout.ports.auth);
    // No Service and no NetworkPolicy carries the auth port, and no container declares it.
    for svc in &c.services {
        for port in svc.spec.as_ref().unwrap().ports.iter().flatten() {
            assert_ne!(port.port, auth, "{:?}", svc.metadata.name);
            assert_ne!(port.name.as_deref(), Some("auth"));
        }
    }
    for np in &c.network_policies {
        for rule in np.spec.as_ref().unwrap().ingress.iter().flatten() {
            for port in rule.ports.iter().flatten() {
                assert_ne!(
                    port.port,
                    Some(IntOrString::Int(auth)),
                    "{:?}",
                    np.metadata.name
                );
            }
        }
    }
    for sts in &c.stateful_sets {
        for ctr in &pod(sts).containers {
            for port in ctr.ports.iter().flatten() {
                assert_ne!(port.container_port, auth, "{}", ctr.name);
            }
        }
    }
    // Postfix asks the sidecar of its own pod, which runs Dovecot from the IMAP image.
    let mta_config = c
        .config_maps
        .iter()
        .find(|cm| cm.metadata.name.as_deref() == Some("example-com-mta-config"))
        .unwrap();
    let data = mta_config.data.as_ref().unwrap();
    let main = &data[crate::config::postfix::MAIN_CF];
    assert!(
        main.contains(&format!("\nsmtpd_sasl_path = inet:127.0.0.1:{auth}\n")),
        "{main}"
    );
    assert!(data.contains_key(crate::config::dovecot_auth::DOVECOT_AUTH_CONF));
    let sidecar = container(&c.stateful_sets[0], mta::AUTH_CONTAINER);
    assert_eq!(
        sidecar.image,
        container(&c.stateful_sets[1], "dovecot").image
    );
    let probe = sidecar
        .readiness_probe
        .as_ref()
        .unwrap()
        .exec
        .as_ref()
        .unwrap();
    assert!(probe
        .command
        .iter()
        .flatten()
        .any(|a| a.ends_with(crate::config::dovecot_auth::DOVECOT_AUTH_CONF)));
}

#[test]
fn mounts_follow_the_layout_and_refresh_in_place() {
    let fx = Fixture::quickstart();
    let c = fx.desired();
    let layout = crate::resources::Domain::new(fx.md(), "mail").layout();
    let mounts = |sts: &StatefulSet, name: &str| -> BTreeMap<String, (String, bool)> {
        container(sts, name)
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                // subPath mounts are never refreshed by the kubelet.
                assert!(m.sub_path.is_none() && m.sub_path_expr.is_none());
                (
                    m.name.clone(),
                    (m.mount_path.clone(), m.read_only == Some(true)),
                )
            })
            .collect()
    };
    let path = |p: std::path::PathBuf| p.display().to_string();
    let postfix = mounts(&c.stateful_sets[0], "postfix");
    assert_eq!(postfix["config"], (path(layout.config_dir()), true));
    assert_eq!(postfix["maps"], (path(layout.maps_dir()), true));
    assert_eq!(postfix["tls"], (path(layout.tls_dir()), true));
    assert_eq!(postfix["queue"], ("/var/spool".to_string(), false));
    assert!(layout.queue_dir().starts_with("/var/spool"));
    let rspamd = mounts(&c.stateful_sets[0], "rspamd");
    assert_eq!(rspamd["dkim"], (path(layout.dkim_dir()), true));
    assert!(!rspamd.contains_key("tls") && !rspamd.contains_key("maps"));
    let exporter = mounts(&c.stateful_sets[0], "postfix-exporter");
    assert_eq!(exporter.len(), 1);
    assert_eq!(exporter["queue"], ("/var/spool".to_string(), true));
    let dovecot = mounts(&c.stateful_sets[1], "dovecot");
    assert_eq!(dovecot["users"], (path(layout.users_dir()), true));
    assert_eq!(dovecot["secrets"], (path(layout.secrets_dir()), true));
    assert_eq!(dovecot["mail"], (path(layout.mail_dir()), false));
    assert!(!dovecot.contains_key("dkim") && !dovecot.contains_key("maps"));
    // In the MTA pod only the auth sidecar reads the users database, the same way.
    let auth = mounts(&c.stateful_sets[0], mta::AUTH_CONTAINER);
    assert_eq!(auth["users"], (path(layout.users_dir()), true));
    assert_eq!(auth["config"], (path(layout.config_dir()), true));
    assert_eq!(auth["auth-run"], (path(layout.auth_run_dir()), false));
    assert_eq!(auth["auth-tmp"], ("/tmp".to_string(), false));
    assert_eq!(auth.len(), 4, "no TLS, maps, queue or DKIM: {auth:?}");
    for other in ["postfix", "rspamd", "postfix-exporter"] {
        assert!(!mounts(&c.stateful_sets[0], other).contains_key("users"));
    }
    assert_eq!(
        pod(&c.stateful_sets[0])
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "users"),
        pod(&c.stateful_sets[1])
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "users"),
    );

    // The users volume projects all sixteen shards as `<hex>.passwd`.
    let volumes = pod(&c.stateful_sets[1]).volumes.as_ref().unwrap();
    let users = volumes.iter().find(|v| v.name == "users").unwrap();
    let sources = users.projected.as_ref().unwrap().sources.as_ref().unwrap();
    let files: Vec<String> = sources
        .iter()
        .map(|s| {
            let s = s.secret.as_ref().unwrap();
            let item = &s.items.as_ref().unwrap()[0];
            assert_eq!(s.name, format!("example-com-users-{}", &item.path[..1]));
            item.path.clone()
        })
        .collect();
    assert_eq!(files.len(), 16);
    assert_eq!(files[10], "a.passwd");
    // Only the doveadm password of the internal Secret reaches the pod.
    let internal = volumes.iter().find(|v| v.name == "secrets").unwrap();
    let items = internal.secret.as_ref().unwrap().items.as_ref().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, crate::resources::keys::DOVEADM_PASSWORD);
}

#[test]
fn no_secret_material_in_any_config_map() {
    let fx = Fixture::quickstart();
    let c = fx.desired();
    let mut secrets: Vec<String> = vec![
        TEST_CA_KEY.into(),
        TEST_SERVING_KEY.into(),
        TEST_DKIM_KEY.into(),
        TEST_DOVEADM_PASSWORD.into(),
        TEST_HASH_KEY.into(),
    ];
    for s in &fx.inputs.secrets {
        secrets.extend(text_data(s).into_values());
    }
    let hashes: Vec<String> = c
        .secrets
        .iter()
        .filter(|s| s.metadata.name.as_deref().unwrap().contains("-users-"))
        .flat_map(|s| text_data(s).into_values())
        .flat_map(|passwd| {
            passwd
                .lines()
                .map(|l| l.split(':').nth(1).unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(hashes.len(), 2, "both quickstart mailboxes have a hash");
    secrets.extend(hashes);
    crate::render::tests::assert_no_secrets_in_config_maps(&c.config_maps, &secrets);
}

#[test]
fn address_conflicts_leave_out_the_newer_mailbox_or_the_alias() {
    let mut fx = Fixture::quickstart();
    let mut twin = fx.inputs.mailboxes[0].clone();
    twin.metadata.name = Some("alice-twin".into());
    twin.spec.aliases.clear();
    let mut carol = fx.inputs.mailboxes[1].clone();
    carol.metadata.name = Some("carol".into());
    carol.spec.local_part = "carol".into();
    carol.spec.aliases = vec!["Abuse".into(), "sales".into()];
    fx.inputs.mailboxes.push(twin);
    fx.inputs.mailboxes.push(carol);
    let c = fx.desired();

    let outcome = |name: &str| c.mailboxes.iter().find(|m| m.name == name).unwrap();
    assert_eq!(outcome("alice").exclusion, None);
    assert_eq!(outcome("bob").exclusion, None);
    let twin = outcome("alice-twin").exclusion.clone().unwrap();
    assert_eq!(twin.reason, ExclusionReason::AddressConflict);
    assert_eq!(
        twin.message,
        "address alice@example.com belongs to Mailbox alice"
    );
    let carol = outcome("carol");
    assert_eq!(carol.exclusion, None);
    assert_eq!(carol.address, "carol@example.com");
    assert_eq!(carol.dropped_aliases.len(), 1);
    assert_eq!(carol.dropped_aliases[0].0, "abuse");

    // alice keeps her one login and abuse@; carol gets sales@ but not abuse@.
    let passwd: String = c
        .secrets
        .iter()
        .filter(|s| s.metadata.name.as_deref().unwrap().contains("-users-"))
        .flat_map(|s| text_data(s).into_values())
        .collect();
    assert_eq!(passwd.matches("alice@example.com:").count(), 1);
    assert_eq!(passwd.matches("carol@example.com:").count(), 1);
    let aliases: String = c
        .config_maps
        .iter()
        .flat_map(|cm| cm.data.iter().flatten())
        .filter(|(k, _)| k.starts_with(&format!("{}-", crate::userdb::MAP_ALIASES)))
        .map(|(_, v)| v.as_str())
        .collect();
    let line = |addr: &str| {
        aliases
            .lines()
            .find(|l| l.starts_with(&format!("{addr} ")))
            .map(str::to_string)
    };
    assert_eq!(
        line("abuse@example.com").unwrap(),
        "abuse@example.com alice@example.com"
    );
    assert_eq!(
        line("sales@example.com").unwrap(),
        "sales@example.com carol@example.com"
    );
}

#[test]
fn a_mailbox_without_a_password_is_reported_and_left_out() {
    let mut fx = Fixture::quickstart();
    fx.inputs
        .secrets
        .retain(|s| s.metadata.name.as_deref() != Some("bob-password"));
    let c = fx.desired();
    let bob = c.mailboxes.iter().find(|m| m.name == "bob").unwrap();
    let e = bob.exclusion.as_ref().unwrap();
    assert_eq!(e.reason, ExclusionReason::PasswordSecretMissing);
    assert_eq!(
        e.message,
        "password Secret bob-password (key password) not found"
    );
    let passwd: String = c
        .secrets
        .iter()
        .flat_map(|s| text_data(s).into_iter())
        .filter(|(k, _)| k.ends_with(".passwd"))
        .map(|(_, v)| v)
        .collect();
    assert!(!passwd.contains("bob@"));
    assert!(passwd.contains("alice@"));
}

#[test]
fn tls_modes_decide_certificate_secrets_and_mounts() {
    let tls_volume = |c: &Children| -> String {
        let sts = &c.stateful_sets[0];
        let v = pod(sts).volumes.as_ref().unwrap();
        let tls = v.iter().find(|v| v.name == "tls").unwrap();
        tls.secret.as_ref().unwrap().secret_name.clone().unwrap()
    };
    let names = |c: &Children| -> Vec<String> {
        c.secrets
            .iter()
            .map(|s| s.metadata.name.clone().unwrap())
            .collect()
    };

    let internal = Fixture::quickstart().desired();
    assert!(internal.certificates.is_empty());
    assert!(names(&internal).contains(&"example-com-ca".to_string()));
    let tls = secret_text(&internal.secrets, "example-com-tls");
    assert_eq!(tls["tls.crt"], TEST_SERVING_CERT);
    assert_eq!(tls["ca.crt"], TEST_CA_CERT);
    assert_eq!(tls_volume(&internal), "example-com-tls");

    let mut fx = Fixture::quickstart();
    fx.md_mut().spec.tls.cert_manager = Some(CertManagerSpec {
        issuer_ref: IssuerRef {
            name: "letsencrypt".into(),
            kind: "ClusterIssuer".into(),
            group: "cert-manager.io".into(),
        },
    });
    fx.tls = TlsMaterial::external(fx.md()).unwrap();
    let cm = fx.desired();
    assert_eq!(cm.certificates.len(), 1);
    let cert = serde_json::to_value(&cm.certificates[0]).unwrap();
    assert_eq!(cert["spec"]["secretName"], "example-com-tls");
    assert_eq!(cert["spec"]["dnsNames"][0], "mail.example.com");
    assert!(!names(&cm)
        .iter()
        .any(|n| n == "example-com-tls" || n == "example-com-ca"));
    assert_eq!(tls_volume(&cm), "example-com-tls");

    let mut fx = Fixture::quickstart();
    fx.md_mut().spec.tls.secret_name = Some("my-mail-cert".into());
    fx.tls = TlsMaterial::external(fx.md()).unwrap();
    let own = fx.desired();
    assert!(own.certificates.is_empty());
    assert!(!names(&own)
        .iter()
        .any(|n| n == "example-com-tls" || n == "example-com-ca"));
    assert_eq!(tls_volume(&own), "my-mail-cert");
}

#[test]
fn dkim_secret_serves_the_signer_and_keeps_the_rotation_state() {
    let mut fx = Fixture::quickstart();
    fx.md_mut().spec.alias_domains = vec!["example.net".into()];
    let c = fx.desired();
    let dkim = secret_text(&c.secrets, "example-com-dkim");
    assert_eq!(
        dkim[crate::config::dkim_files::SELECTORS_MAP],
        "example.com pw202601010000\nexample.net pw202601010000\n"
    );
    for d in ["example.com", "example.net"] {
        assert_eq!(
            dkim[&crate::config::dkim_files::key(d, "pw202601010000")],
            TEST_DKIM_KEY
        );
    }
    // Everything the dkim module stores to read its state back is there, unchanged.
    for (k, v) in fx.dkim.to_secret_data(&fx.md().spec).unwrap() {
        assert_eq!(dkim.get(&k), Some(&v), "{k}");
    }
}

#[test]
fn external_dns_endpoint_only_when_asked() {
    let fx = Fixture::quickstart();
    assert!(fx.desired().dns_endpoints.is_empty());
    let mut fx = Fixture::quickstart();
    fx.md_mut().spec.dns.external_dns = true;
    let c = fx.desired();
    assert_eq!(c.dns_endpoints.len(), 1);
    let e = &c.dns_endpoints[0];
    assert_eq!(e.metadata.namespace.as_deref(), Some("mail"));
    assert!(e.metadata.owner_references.is_none());
    let v = serde_json::to_value(e).unwrap();
    let endpoints = v["spec"]["endpoints"].as_array().unwrap();
    assert!(endpoints
        .iter()
        .any(|e| e["dnsName"] == "pw202601010000._domainkey.example.com"));
}

#[test]
fn spec_drives_replicas_images_placement_and_resources() {
    let mut fx = Fixture::high_availability();
    fx.md_mut().spec.placement.priority_class_name = Some("mail-critical".into());
    fx.md_mut().spec.placement.tolerations = vec![k8s_openapi::api::core::v1::Toleration {
        key: Some("dedicated".into()),
        operator: Some("Equal".into()),
        value: Some("mail".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    }];
    fx.md_mut().spec.imap.image = Some("registry.example/dovecot:pinned".into());
    let md = fx.md().clone();
    let mut inputs = fx.domain_inputs();
    inputs.images = Images::for_spec(&md.spec, &Images::default());
    let c = desired(&inputs).unwrap();
    let [mta, imap] = [&c.stateful_sets[0], &c.stateful_sets[1]];
    assert_eq!(mta.spec.as_ref().unwrap().replicas, Some(3));
    assert_eq!(imap.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        container(imap, "dovecot").image.as_deref(),
        Some("registry.example/dovecot:pinned")
    );
    assert_eq!(
        container(mta, "postfix").image.as_deref(),
        Some(crate::resources::images::DEFAULT_MTA_IMAGE)
    );
    assert_eq!(
        container(mta, "rspamd").image,
        container(mta, "postfix").image
    );
    for sts in [mta, imap] {
        let p = pod(sts);
        assert_eq!(
            p.node_selector.as_ref().unwrap()["node-role.example/mail"],
            "true"
        );
        assert_eq!(
            p.tolerations.as_ref().unwrap()[0].key.as_deref(),
            Some("dedicated")
        );
        assert_eq!(p.priority_class_name.as_deref(), Some("mail-critical"));
        assert_eq!(p.topology_spread_constraints.as_ref().unwrap().len(), 2);
    }
    let r = container(mta, "postfix").resources.as_ref().unwrap();
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "200m");
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "1Gi");

    let svc = by_name(&c.services, "corp-example-mta");
    assert_eq!(
        svc.spec.as_ref().unwrap().type_.as_deref(),
        Some("LoadBalancer")
    );
    let pdb = by_name(&c.pod_disruption_budgets, "corp-example-imap");
    assert_eq!(
        pdb.spec.as_ref().unwrap().max_unavailable,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1))
    );
}

/// `n` Mailboxes `user<i>` with a ready hash, each forwarding a copy elsewhere.
fn many_mailboxes(fx: &Fixture, n: usize) -> Vec<Mailbox> {
    let template = &fx.inputs.mailboxes[1];
    (0..n)
        .map(|i| {
            let mut m = template.clone();
            m.metadata.name = Some(format!("user{i}"));
            m.spec.local_part = format!("user{i}");
            m
        })
        .collect()
}

#[test]
fn many_mailboxes_fit_the_api_size_limit_and_larger_objects_are_refused_by_name() {
    const HASH: &str = "{SHA512-CRYPT}$6$abcdefghijklmnop$ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijk";
    let fx = Fixture::quickstart();
    // Every mailbox forwards a copy: the largest maps per mailbox. One ConfigMap held 1.2 MB of
    // maps at 10,000 of them; sharded, the largest object stays far below the limit.
    for n in [1_000, 12_000] {
        let boxes = many_mailboxes(&fx, n);
        let mut inputs = fx.domain_inputs();
        inputs.mailboxes = boxes
            .iter()
            .map(|mb| MailboxInput {
                mailbox: mb,
                resolved: resolve_mailbox(mb, "example.com", Some(HASH), TEST_HASH_KEY),
            })
            .collect();
        let t = std::time::Instant::now();
        let c = desired(&inputs).unwrap_or_else(|e| panic!("{n} mailboxes: {e}"));
        println!("desired() with {n} mailboxes: {:?}", t.elapsed());
        assert_eq!(c.mailboxes.len(), n);
        let largest = c
            .config_maps
            .iter()
            .filter(|cm| cm.metadata.name.as_deref().unwrap().contains("-maps-"))
            .map(|cm| {
                cm.data
                    .iter()
                    .flatten()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>()
            })
            .max()
            .unwrap();
        println!("largest maps shard with {n} mailboxes: {largest} bytes");
        assert!(largest * 8 < MAX_DATA_BYTES, "{largest}");
    }
    let mut huge = by_name(&fx.desired().config_maps, "example-com-maps-0").clone();
    huge.data = Some(BTreeMap::from([(
        "aliases-0".to_string(),
        "x".repeat(MAX_DATA_BYTES),
    )]));
    let Err(PlanError::TooLarge { kind, name, bytes }) = check_sizes(&[huge], &[]) else {
        panic!("an object over the limit is refused")
    };
    assert_eq!((kind, name.as_str()), ("ConfigMap", "example-com-maps-0"));
    assert!(bytes > MAX_DATA_BYTES);
}
