//! The state the operator generates for a MailDomain and keeps in its Secrets — internal
//! secrets, DKIM keys, the internal CA and the serving certificate — advanced to `now`: read
//! from the existing Secrets, rotated where a rotation step is due, generated where missing.
//!
//! The decisions are the pure ones of [`crate::pki`] and [`crate::dkim`]; this module only
//! strings them together and generates keys when told to, and reports when the state changes
//! next by itself, which is when the reconcile requeues.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::api::maildomain::DkimStatus;
use crate::api::MailDomain;
use crate::dkim::{self, DkimState, RotationAction};
use crate::names::DomainNames;
use crate::pki::health::{self, Renewer, Served};
use crate::pki::{self, CaAction, CaState, CertKeyPair};
use crate::resources::secret::{text_data, InternalSecrets};

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub enum Tls {
    /// The internal CA and the serving pair it signed.
    Internal { ca: CaState, serving: CertKeyPair },
    /// cert-manager fills this Secret.
    CertManager { secret_name: String },
    /// The user's own Secret.
    Existing { secret_name: String },
}

/// The generated state of one domain at `now`.
#[derive(Clone, Debug)]
pub struct GeneratedState {
    pub internal: InternalSecrets,
    pub dkim: DkimState,
    pub dkim_status: Option<DkimStatus>,
    pub tls: Tls,
    /// The serving certificate, wherever it comes from, and how it stands at `now`.
    pub certificate: Served,
    /// When this state changes next by itself (DKIM and CA rotation steps, certificate renewal).
    pub scheduled: Vec<Timestamp>,
    /// What was generated or rotated just now, in words for an Event (never key material).
    pub changes: Vec<String>,
}

/// Advances the state kept in `secrets` (existing Secrets by name) to `now`.
pub fn advance(
    md: &MailDomain,
    namespace: &str,
    secrets: &BTreeMap<String, Secret>,
    now: Timestamp,
    rng: &mut impl rand::RngCore,
) -> Result<GeneratedState, String> {
    let names = DomainNames::new(&md.name_any());
    let text = |name: &str| secrets.get(name).map(text_data);
    let mut changes = Vec::new();
    let mut scheduled = Vec::new();

    let internal = match text(&names.internal()).and_then(|d| InternalSecrets::from_secret_data(&d))
    {
        Some(s) => s,
        None => {
            changes.push("generated the internal secrets".to_string());
            InternalSecrets::generate(rng)
        }
    };

    let stored = match text(&names.dkim()) {
        Some(data) => DkimState::from_secret_data(&data)
            .map_err(|e| format!("Secret {}: {e}", names.dkim()))?,
        None => DkimState::default(),
    };
    let (dkim, plan) =
        dkim::advance(&stored, &md.spec.dkim, now).map_err(|e| format!("DKIM rotation: {e}"))?;
    changes.extend(plan.actions.iter().map(describe_dkim));
    scheduled.push(plan.requeue_at);
    let dkim_status = dkim.status(&plan);

    let (tls, certificate) = if let Some(name) = &md.spec.tls.secret_name {
        let served = external(md, name, Renewer::User, secrets.get(name), now);
        let tls = Tls::Existing {
            secret_name: name.clone(),
        };
        (tls, served)
    } else if md.spec.tls.cert_manager.is_some() {
        let name = names.tls();
        let served = external(md, &name, Renewer::CertManager, secrets.get(&name), now);
        (Tls::CertManager { secret_name: name }, served)
    } else {
        let ca = match text(&names.ca()) {
            Some(data) => CaState::from_secret_data(&data)
                .map_err(|e| format!("Secret {}: {e}", names.ca()))?,
            None => None,
        };
        let serving = text(&names.tls()).and_then(|d| {
            Some(CertKeyPair {
                cert_pem: d.get("tls.crt")?.clone(),
                key_pem: d.get("tls.key")?.clone(),
            })
        });
        let internal = pki::advance_internal_tls(md, namespace, ca, serving, now)
            .map_err(|e| format!("internal CA and serving certificate: {e}"))?;
        changes.extend(internal.ca_actions.iter().map(describe_ca));
        if let Some(reason) = internal.renewed {
            changes.push(format!(
                "issued a serving certificate ({})",
                reason.as_str()
            ));
        }
        scheduled.push(internal.requeue_at);
        let served = internal.served.clone();
        let tls = Tls::Internal {
            ca: internal.ca,
            serving: internal.serving,
        };
        (tls, served)
    };
    // Requeue when the certificate's health changes by the clock alone (the expiry warning
    // and expiry of a certificate someone else renews).
    scheduled.extend(certificate.health.changes_at());

    Ok(GeneratedState {
        internal,
        dkim,
        dkim_status,
        tls,
        certificate,
        scheduled,
        changes,
    })
}

/// A certificate someone else renews, read from its Secret (absent when not created yet).
fn external(
    md: &MailDomain,
    secret_name: &str,
    renewer: Renewer,
    secret: Option<&Secret>,
    now: Timestamp,
) -> Served {
    let data = secret.map(text_data).unwrap_or_default();
    let health = health::assess(
        data.get("tls.crt").map(String::as_str),
        data.get("tls.key").map(String::as_str),
        &md.spec.mail_hostname(),
        now,
    );
    Served {
        secret_name: secret_name.to_string(),
        renewer,
        health,
        renewal_time: None,
    }
}

fn describe_dkim(action: &RotationAction) -> String {
    match action {
        RotationAction::GenerateActive { selector, .. } => {
            format!("generated DKIM key {selector} and signs with it")
        }
        RotationAction::GenerateNext { selector, .. } => {
            format!("generated DKIM key {selector} (published ahead of use)")
        }
        RotationAction::Activate { selector } => format!("DKIM signing switched to {selector}"),
        RotationAction::Retire { selector } => format!("stopped signing with DKIM key {selector}"),
        RotationAction::Drop { selector } => format!("retired DKIM key {selector}"),
    }
}

fn describe_ca(action: &CaAction) -> String {
    format!("internal CA: {action:?}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MailDomainSpec;
    use k8s_openapi::ByteString;

    fn domain() -> MailDomain {
        let mut md = MailDomain::new(
            "example",
            serde_json::from_value::<MailDomainSpec>(serde_json::json!({
                "domain": "example.com",
                "dkim": {"algorithm": "ed25519"}
            }))
            .unwrap(),
        );
        md.metadata.namespace = Some("mail".into());
        md
    }

    fn as_secrets(state: &GeneratedState) -> BTreeMap<String, Secret> {
        let secret = |name: &str, data: BTreeMap<String, String>| {
            (
                name.to_string(),
                Secret {
                    data: Some(
                        data.into_iter()
                            .map(|(k, v)| (k, ByteString(v.into_bytes())))
                            .collect(),
                    ),
                    ..Default::default()
                },
            )
        };
        let Tls::Internal { ca, serving } = &state.tls else {
            panic!("internal CA expected")
        };
        BTreeMap::from([
            secret("example-internal", state.internal.to_secret_data()),
            secret(
                "example-dkim",
                state.dkim.to_secret_data(&domain().spec).unwrap(),
            ),
            secret("example-ca", ca.to_secret_data()),
            secret(
                "example-tls",
                pki::serving_secret_data(serving, &ca.trust_bundle()),
            ),
        ])
    }

    #[test]
    fn first_reconcile_generates_then_state_is_stable() {
        let md = domain();
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut rng = rand::thread_rng();
        let first = advance(&md, "mail", &BTreeMap::new(), now, &mut rng).unwrap();
        assert!(first.changes.iter().any(|c| c.contains("internal secrets")));
        assert!(first
            .changes
            .iter()
            .any(|c| c.contains("serving certificate")));
        assert!(first.dkim_status.is_some());
        let cert = first.certificate.status();
        assert_eq!(cert.secret_name, "example-tls");
        assert!(cert.not_after.is_some() && cert.renewal_time.is_some());

        let later: Timestamp = "2026-01-02T00:00:00Z".parse().unwrap();
        let second = advance(&md, "mail", &as_secrets(&first), later, &mut rng).unwrap();
        assert!(second.changes.is_empty(), "{:?}", second.changes);
        assert_eq!(second.internal, first.internal);
        assert_eq!(second.dkim, first.dkim);
        assert_eq!(second.certificate, first.certificate);
        let earliest = second.scheduled.iter().min().unwrap();
        assert!(*earliest > later, "next step lies ahead");
        assert!(
            second
                .scheduled
                .iter()
                .any(|t| Some(t.to_string()) == cert.renewal_time),
            "requeue at the certificate renewal"
        );
    }

    #[test]
    fn corrupt_state_is_an_error_not_a_regeneration() {
        let md = domain();
        let bad = Secret {
            data: Some(BTreeMap::from([(
                "state.json".to_string(),
                ByteString(b"{not json".to_vec()),
            )])),
            ..Default::default()
        };
        let secrets = BTreeMap::from([("example-dkim".to_string(), bad)]);
        let err = advance(
            &md,
            "mail",
            &secrets,
            Timestamp::now(),
            &mut rand::thread_rng(),
        )
        .unwrap_err();
        assert!(err.contains("example-dkim"), "{err}");
    }
}
