//! The internal CA of a MailDomain and its rotation.
//!
//! A CA is rolled in three steps so that no client ever sees a certificate it cannot verify:
//!
//! 1. **Introduce** (at `notAfter - renewBefore` of the current CA): a new CA is created and
//!    added to the trust bundle (`ca.crt` of the serving Secret), while the old CA still signs.
//! 2. **Switch** (after `overlap`, once every pod has the bundle): the new CA signs; the serving
//!    certificate is renewed ([`super::RenewReason::IssuerChanged`]). The old CA stays in the
//!    bundle, since pods may still present certificates it signed until they pick up the new one.
//! 3. **Drop** (after another `overlap`): the old CA leaves the bundle.
//!
//! An expired or unreadable CA is replaced at once (trusting it buys nothing).
//!
//! The CA Secret (`<md>-ca`) holds `ca.crt`/`ca.key` (the CA that signs), `next.crt`/`next.key`
//! while introducing, `previous.crt` while retiring, and `state.json` with the phase and when it
//! began. See [`CaState::to_secret_data`].

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::cert::{add, cert_validity, dated_ca_name, new_ca, sub, CertKeyPair};
use super::PkiError;

const DAY: Duration = Duration::from_secs(24 * 3600);

/// Lifetime, renewal time and trust overlap of the internal CA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaPolicy {
    pub lifetime: Duration,
    /// How long before its expiry a CA is rolled.
    pub renew_before: Duration,
    /// How long both CAs are trusted before the switch, and again after it.
    pub overlap: Duration,
}

impl Default for CaPolicy {
    /// Five years, rolled with a third left, one day of overlap on each side of the switch
    /// (Secret volumes reach pods within about a minute; a day leaves room for a stuck node).
    fn default() -> Self {
        let lifetime = 5 * 365 * DAY;
        Self {
            lifetime,
            renew_before: lifetime / 3,
            overlap: DAY,
        }
    }
}

/// Where a CA rotation stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaPhase {
    /// One CA, trusted and signing.
    Stable,
    /// `next` is trusted but does not sign yet; it takes over at `since + overlap`.
    Introducing { next: CertKeyPair, since: Timestamp },
    /// The CA that signed until `since` stays trusted until `since + overlap`.
    Retiring {
        previous_cert_pem: String,
        since: Timestamp,
    },
}

/// The internal CA as stored in its Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaState {
    /// The CA that signs serving certificates.
    pub current: CertKeyPair,
    pub phase: CaPhase,
}

/// One step of a CA rotation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaAction {
    /// Create a CA (there is none, or it is expired or unreadable), replacing any.
    Create,
    /// Create the next CA and trust it alongside the current one.
    Introduce,
    /// Sign with the next CA; keep trusting the previous one.
    Switch,
    /// Stop trusting the previous CA.
    DropPrevious,
}

/// What to do now, and when to look again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaDecision {
    Act(CaAction),
    /// Nothing to do until `at`.
    WaitUntil {
        at: Timestamp,
    },
}

impl CaState {
    /// A new, stable CA.
    pub fn create(common_name: &str, policy: &CaPolicy, now: Timestamp) -> Result<Self, PkiError> {
        Ok(Self {
            current: new_ca(&dated_ca_name(common_name, now), now, policy.lifetime)?,
            phase: CaPhase::Stable,
        })
    }

    /// Every CA certificate clients must trust now, signing CA first: the `ca.crt` of the
    /// serving Secret.
    pub fn trust_bundle(&self) -> String {
        let mut out = pem_block(&self.current.cert_pem);
        match &self.phase {
            CaPhase::Stable => {}
            CaPhase::Introducing { next, .. } => out.push_str(&pem_block(&next.cert_pem)),
            CaPhase::Retiring {
                previous_cert_pem, ..
            } => out.push_str(&pem_block(previous_cert_pem)),
        }
        out
    }

    /// The state after `action`. A CA that `Create` or `Introduce` makes is named
    /// `common_name` and its creation time.
    pub fn apply(
        state: Option<Self>,
        action: CaAction,
        common_name: &str,
        policy: &CaPolicy,
        now: Timestamp,
    ) -> Result<Self, PkiError> {
        let unexpected = |what: &str| {
            PkiError::Invalid(format!("CA action {action:?} does not apply to {what}"))
        };
        match (action, state) {
            (CaAction::Create, _) => Self::create(common_name, policy, now),
            (_, None) => Err(unexpected("a missing CA")),
            (CaAction::Introduce, Some(s)) => Ok(Self {
                phase: CaPhase::Introducing {
                    next: new_ca(&dated_ca_name(common_name, now), now, policy.lifetime)?,
                    since: now,
                },
                current: s.current,
            }),
            (CaAction::Switch, Some(s)) => match s.phase {
                CaPhase::Introducing { next, .. } => Ok(Self {
                    current: next,
                    phase: CaPhase::Retiring {
                        previous_cert_pem: s.current.cert_pem,
                        since: now,
                    },
                }),
                _ => Err(unexpected("a CA that is not introducing a successor")),
            },
            (CaAction::DropPrevious, Some(s)) => Ok(Self {
                current: s.current,
                phase: CaPhase::Stable,
            }),
        }
    }

    /// The CA Secret's data.
    pub fn to_secret_data(&self) -> BTreeMap<String, String> {
        let mut data = BTreeMap::from([
            ("ca.crt".to_string(), self.current.cert_pem.clone()),
            ("ca.key".to_string(), self.current.key_pem.clone()),
        ]);
        let (phase, since) = match &self.phase {
            CaPhase::Stable => (StoredPhase::Stable, None),
            CaPhase::Introducing { next, since } => {
                data.insert("next.crt".into(), next.cert_pem.clone());
                data.insert("next.key".into(), next.key_pem.clone());
                (StoredPhase::Introducing, Some(*since))
            }
            CaPhase::Retiring {
                previous_cert_pem,
                since,
            } => {
                data.insert("previous.crt".into(), previous_cert_pem.clone());
                (StoredPhase::Retiring, Some(*since))
            }
        };
        let state = StoredState { phase, since };
        data.insert(
            "state.json".into(),
            serde_json::to_string(&state).expect("CA state serializes"),
        );
        data
    }

    /// Reads the CA Secret's data (as text, see [`super::secret_text`]). `Ok(None)` when the
    /// Secret holds no CA; an error when it holds a broken one (replace it with
    /// [`CaAction::Create`], and say so in an Event).
    pub fn from_secret_data(data: &BTreeMap<String, String>) -> Result<Option<Self>, PkiError> {
        let Some(cert_pem) = data.get("ca.crt") else {
            return Ok(None);
        };
        let get = |key: &str| {
            data.get(key)
                .cloned()
                .ok_or_else(|| PkiError::Invalid(format!("CA Secret lacks {key}")))
        };
        let current = CertKeyPair {
            cert_pem: cert_pem.clone(),
            key_pem: get("ca.key")?,
        };
        cert_validity(&current.cert_pem)?;
        let state: StoredState = match data.get("state.json") {
            Some(json) => serde_json::from_str(json)
                .map_err(|e| PkiError::Invalid(format!("CA Secret state.json: {e}")))?,
            None => StoredState {
                phase: StoredPhase::Stable,
                since: None,
            },
        };
        let since = || {
            state
                .since
                .ok_or_else(|| PkiError::Invalid("CA Secret state.json lacks since".into()))
        };
        let phase = match state.phase {
            StoredPhase::Stable => CaPhase::Stable,
            StoredPhase::Introducing => CaPhase::Introducing {
                next: CertKeyPair {
                    cert_pem: get("next.crt")?,
                    key_pem: get("next.key")?,
                },
                since: since()?,
            },
            StoredPhase::Retiring => CaPhase::Retiring {
                previous_cert_pem: get("previous.crt")?,
                since: since()?,
            },
        };
        Ok(Some(Self { current, phase }))
    }
}

/// Decides the next step of the CA's life at `now`. A `state` of `None` means there is no CA
/// (or it could not be read).
pub fn decide_ca(
    state: Option<&CaState>,
    policy: &CaPolicy,
    now: Timestamp,
) -> Result<CaDecision, PkiError> {
    let act = |a| Ok(CaDecision::Act(a));
    let Some(state) = state else {
        return act(CaAction::Create);
    };
    let Ok((_, not_after)) = cert_validity(&state.current.cert_pem) else {
        return act(CaAction::Create);
    };
    let wait = |at: Timestamp| Ok(CaDecision::WaitUntil { at });
    match &state.phase {
        CaPhase::Introducing { next, since } => {
            if cert_validity(&next.cert_pem).is_err() {
                return act(CaAction::Introduce);
            }
            let switch_at = add(*since, policy.overlap)?.min(not_after);
            if now >= switch_at {
                act(CaAction::Switch)
            } else {
                wait(switch_at)
            }
        }
        _ if now >= not_after => act(CaAction::Create),
        CaPhase::Retiring { since, .. } => {
            let drop_at = add(*since, policy.overlap)?;
            if now >= drop_at {
                act(CaAction::DropPrevious)
            } else {
                wait(drop_at)
            }
        }
        CaPhase::Stable => {
            let roll_at = sub(not_after, policy.renew_before)?;
            if now >= roll_at {
                act(CaAction::Introduce)
            } else {
                wait(roll_at)
            }
        }
    }
}

/// What [`advance_ca`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaProgress {
    /// The steps taken, in order; empty when the stored CA is up to date.
    pub actions: Vec<CaAction>,
    /// When the CA needs attention next.
    pub requeue_at: Timestamp,
}

/// Takes every step due at `now` and returns the new state with what was done. Write the CA
/// Secret when `actions` is not empty.
pub fn advance_ca(
    state: Option<CaState>,
    common_name: &str,
    policy: &CaPolicy,
    now: Timestamp,
) -> Result<(CaState, CaProgress), PkiError> {
    let mut state = state;
    let mut actions = Vec::new();
    // Each step moves forward (create → introduce → switch → drop); four bound any sequence.
    for _ in 0..4 {
        match decide_ca(state.as_ref(), policy, now)? {
            CaDecision::Act(action) => {
                state = Some(CaState::apply(state, action, common_name, policy, now)?);
                actions.push(action);
            }
            CaDecision::WaitUntil { at } => {
                let state = state.expect("a CA exists once nothing is left to do");
                let progress = CaProgress {
                    actions,
                    requeue_at: at,
                };
                return Ok((state, progress));
            }
        }
    }
    Err(PkiError::Invalid(format!(
        "CA rotation did not settle: {actions:?}"
    )))
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    phase: StoredPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    since: Option<Timestamp>,
}

#[derive(Serialize, Deserialize)]
enum StoredPhase {
    Stable,
    Introducing,
    Retiring,
}

fn pem_block(pem: &str) -> String {
    let mut s = pem.trim_end().to_string();
    s.push('\n');
    s
}
