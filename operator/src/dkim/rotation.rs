//! DKIM selector rotation: a pure state machine over the keys kept in the domain's DKIM Secret.
//!
//! With rotation period `R` and overlap `O` (`spec.dkim.rotationPeriod`, `spec.dkim.overlap`):
//!
//! 1. No key: generate one and sign with it at once (nothing was published, nothing to wait for).
//! 2. Active key `A` activated at `tA`: at `tA + R - O` generate the next key `N` and publish it.
//! 3. At `max(tA + R, created(N) + O)` sign with `N`; `A` is retired but stays published, so
//!    mail signed with it shortly before still verifies.
//! 4. At `retired(A) + O` drop `A` from the Secret and from DNS.
//!
//! Every step records its real time, so after downtime the schedule resumes from what actually
//! happened, and a next key always gets its full overlap in DNS before signing switches to it.
//! Changing `spec.dkim.algorithm` starts a rotation at once (the next key uses the new algorithm).
//! A key is never regenerated: only these steps add or remove keys.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::key::{selector_for, DkimKey};
use super::{DkimAlgorithm, DkimError};
use crate::api::maildomain::{DkimSpec, DkimStatus, MailDomainSpec};
use crate::api::validate::parse_duration;
use crate::config::dkim_files;

/// The rotation settings of `spec.dkim`, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationPolicy {
    pub algorithm: DkimAlgorithm,
    pub period: Duration,
    pub overlap: Duration,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self::from_spec(&DkimSpec::default()).expect("the default DKIM spec is valid")
    }
}

impl RotationPolicy {
    /// Parses `spec.dkim`; the overlap must be positive and at most half of the period.
    pub fn from_spec(spec: &DkimSpec) -> Result<Self, DkimError> {
        let parse = |field: &str, value: &str| {
            parse_duration(value).ok_or_else(|| {
                DkimError::Policy(format!("spec.dkim.{field}: {value:?} is not a duration"))
            })
        };
        let period = parse("rotationPeriod", &spec.rotation_period)?;
        let overlap = parse("overlap", &spec.overlap)?;
        if overlap.is_zero() || overlap * 2 > period {
            return Err(DkimError::Policy(
                "spec.dkim.overlap must be positive and at most half of spec.dkim.rotationPeriod"
                    .into(),
            ));
        }
        Ok(Self {
            algorithm: spec.algorithm,
            period,
            overlap,
        })
    }
}

/// A key and its history, as recorded in the DKIM Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub key: DkimKey,
    /// When it was generated (and published).
    pub created: Timestamp,
    /// When signing switched to it.
    pub activated: Option<Timestamp>,
    /// When signing switched away from it.
    pub retired: Option<Timestamp>,
}

/// What a key is used for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    /// Published, not signing yet.
    Next,
    /// Published and signing.
    Active,
    /// Still published, no longer signing.
    Retired,
}

impl StoredKey {
    pub fn role(&self) -> KeyRole {
        match (self.activated, self.retired) {
            (_, Some(_)) => KeyRole::Retired,
            (Some(_), None) => KeyRole::Active,
            (None, None) => KeyRole::Next,
        }
    }
}

/// The DKIM keys of a domain. Every key in it is published in DNS; the active one signs.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DkimState {
    pub keys: Vec<StoredKey>,
}

/// One step of the rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RotationAction {
    /// Generate a key and sign with it right away (the domain has no signing key).
    GenerateActive {
        selector: String,
        algorithm: DkimAlgorithm,
    },
    /// Generate the next key and publish it.
    GenerateNext {
        selector: String,
        algorithm: DkimAlgorithm,
    },
    /// Sign with this key; the key that signed so far is retired.
    Activate { selector: String },
    /// Remove this key from the Secret and from DNS.
    Drop { selector: String },
}

/// The steps due now and when the rotation needs attention next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationPlan {
    /// Steps to take now, in order (empty: the Secret is up to date).
    pub actions: Vec<RotationAction>,
    /// Exactly when the next step falls due.
    pub requeue_at: Timestamp,
    /// When signing moves to a new key next (for `status.dkim.nextRotation`).
    pub next_rotation: Option<Timestamp>,
}

/// Plans the rotation of `state` under `spec` at `now`.
///
/// Specs are validated at admission, so `spec` parses; should it not, the default period and
/// overlap apply (the controller reports the spec error through [`RotationPolicy::from_spec`]).
pub fn plan_rotation(state: &DkimState, spec: &DkimSpec, now: Timestamp) -> RotationPlan {
    let policy = RotationPolicy::from_spec(spec).unwrap_or_else(|_| RotationPolicy {
        algorithm: spec.algorithm,
        ..RotationPolicy::default()
    });
    plan(state, &policy, now)
}

/// Plans the rotation and takes its steps with newly generated keys: the state to store (write
/// the Secret when `plan.actions` is not empty) and the plan (its `requeue_at`, and the
/// status via [`DkimState::status`]).
pub fn advance(
    state: &DkimState,
    spec: &DkimSpec,
    now: Timestamp,
) -> Result<(DkimState, RotationPlan), DkimError> {
    let plan = plan_rotation(state, spec, now);
    let next = state.apply(&plan, now, super::generate)?;
    Ok((next, plan))
}

/// [`plan_rotation`] with a parsed policy.
pub fn plan(state: &DkimState, policy: &RotationPolicy, now: Timestamp) -> RotationPlan {
    // Replay the steps on a copy whose new keys are placeholders: the plan is exactly what
    // `DkimState::apply` will do, and planning again afterwards yields no step.
    let mut keys = state.keys.clone();
    let mut actions = Vec::new();
    loop {
        let (due, action) = next_step(&keys, policy, now);
        if due > now || actions.len() >= MAX_STEPS {
            return RotationPlan {
                actions,
                requeue_at: due.max(now),
                next_rotation: next_switch(&keys, policy),
            };
        }
        apply_step(&mut keys, &action, now, |algorithm, selector| {
            Ok(DkimKey::public_only(selector, algorithm, ""))
        })
        .expect("placeholder keys cannot fail");
        actions.push(action);
    }
}

/// Enough for any state: drop every stray key, activate, generate the next.
const MAX_STEPS: usize = 16;

impl DkimState {
    /// The key that signs.
    pub fn active(&self) -> Option<&StoredKey> {
        active(&self.keys)
    }

    /// The key published ahead of the next switch.
    pub fn next(&self) -> Option<&StoredKey> {
        next(&self.keys)
    }

    /// Every key to publish in DNS (active, next and retired), oldest first.
    pub fn published(&self) -> Vec<DkimKey> {
        let mut keys: Vec<&StoredKey> = self.keys.iter().collect();
        keys.sort_by(|a, b| (a.created, &a.key.selector).cmp(&(b.created, &b.key.selector)));
        keys.into_iter().map(|k| k.key.clone()).collect()
    }

    /// [`selector_for`] `now`, with a letter appended if a key of that minute exists.
    pub fn unused_selector(&self, now: Timestamp) -> String {
        unused_selector(&self.keys, now)
    }

    /// The state after taking the steps of `plan` at `now`, generating keys with `generate`
    /// (normally [`super::generate`]).
    pub fn apply(
        &self,
        plan: &RotationPlan,
        now: Timestamp,
        mut generate: impl FnMut(DkimAlgorithm, &str) -> Result<DkimKey, DkimError>,
    ) -> Result<DkimState, DkimError> {
        let mut keys = self.keys.clone();
        for action in &plan.actions {
            apply_step(&mut keys, action, now, &mut generate)?;
        }
        Ok(DkimState { keys })
    }

    /// `status.dkim` for this state and its plan.
    pub fn status(&self, plan: &RotationPlan) -> Option<DkimStatus> {
        let active = self.active()?;
        Some(DkimStatus {
            active_selector: active.key.selector.clone(),
            next_selector: self.next().map(|n| n.key.selector.clone()),
            next_rotation: plan.next_rotation.map(|t| t.to_string()),
        })
    }

    /// The DKIM Secret's data: `state.json` (selectors, algorithms and timestamps) and one
    /// `<selector>.key` per key (private PEM), which [`Self::from_secret_data`] reads back;
    /// and the signer's files ([`crate::config::dkim_files`]): `selectors.map` naming the
    /// active selector of the domain and of each alias domain, and the active key as
    /// `<domain>.<selector>.key` for each, in the signer's form ([`DkimKey::signer_key`]).
    /// A rotation changes only this Secret; the signer re-reads the map and keys without a
    /// restart or a configuration change.
    pub fn to_secret_data(
        &self,
        spec: &MailDomainSpec,
    ) -> Result<BTreeMap<String, String>, DkimError> {
        let stored = StoredState {
            keys: self
                .keys
                .iter()
                .map(|k| StoredMeta {
                    selector: k.key.selector.clone(),
                    algorithm: k.key.algorithm,
                    created: k.created,
                    activated: k.activated,
                    retired: k.retired,
                })
                .collect(),
        };
        let mut data = BTreeMap::from([(
            STATE_KEY.to_string(),
            serde_json::to_string_pretty(&stored).expect("DKIM state serializes") + "\n",
        )]);
        for k in &self.keys {
            data.insert(key_file(&k.key.selector), k.key.private_pem.clone());
        }
        let mut map = String::new();
        if let Some(active) = self.active() {
            let selector = &active.key.selector;
            let signer_key = active.key.signer_key()?;
            for domain in spec.all_domains() {
                map.push_str(&format!("{domain} {selector}\n"));
                data.insert(dkim_files::key(domain, selector), signer_key.clone());
            }
        }
        data.insert(dkim_files::SELECTORS_MAP.to_string(), map);
        Ok(data)
    }

    /// Reads the DKIM Secret's data (as text, see [`crate::pki::secret_text`]). An empty Secret
    /// is an empty state; key files without `state.json` are an error (they are never
    /// overwritten by new keys).
    pub fn from_secret_data(data: &BTreeMap<String, String>) -> Result<Self, DkimError> {
        let Some(json) = data.get(STATE_KEY) else {
            if data
                .keys()
                .any(|k| k.ends_with(".key") || k == dkim_files::SELECTORS_MAP)
            {
                return Err(DkimError::Secret(format!(
                    "holds keys but no {STATE_KEY}; refusing to replace them"
                )));
            }
            return Ok(Self::default());
        };
        let stored: StoredState = serde_json::from_str(json)
            .map_err(|e| DkimError::Secret(format!("{STATE_KEY}: {e}")))?;
        let keys = stored
            .keys
            .into_iter()
            .map(|m| {
                let pem = data
                    .get(&key_file(&m.selector))
                    .ok_or_else(|| DkimError::Secret(format!("lacks {}", key_file(&m.selector))))?;
                Ok(StoredKey {
                    key: DkimKey::from_private_pem(&m.selector, m.algorithm, pem.clone())?,
                    created: m.created,
                    activated: m.activated,
                    retired: m.retired,
                })
            })
            .collect::<Result<Vec<_>, DkimError>>()?;
        Ok(Self { keys })
    }
}

/// Name of the state entry in the DKIM Secret.
pub const STATE_KEY: &str = "state.json";
/// Secret entry holding the private PEM of `selector` (the signer reads its own copies).
pub fn key_file(selector: &str) -> String {
    format!("{selector}.key")
}

#[derive(Serialize, Deserialize)]
struct StoredState {
    keys: Vec<StoredMeta>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredMeta {
    selector: String,
    algorithm: DkimAlgorithm,
    created: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    activated: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    retired: Option<Timestamp>,
}

fn active(keys: &[StoredKey]) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.role() == KeyRole::Active)
        .max_by_key(|k| (k.activated, k.created))
}

fn next(keys: &[StoredKey]) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.role() == KeyRole::Next)
        .max_by_key(|k| (k.created, k.key.selector.clone()))
}

fn unused_selector(keys: &[StoredKey], now: Timestamp) -> String {
    let base = selector_for(now);
    let taken = |s: &str| keys.iter().any(|k| k.key.selector == s);
    if !taken(&base) {
        return base;
    }
    ('a'..='z')
        .map(|c| format!("{base}{c}"))
        .find(|s| !taken(s))
        .unwrap_or_else(|| format!("{base}z{}", keys.len()))
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap_or(Timestamp::MAX)
}

fn before(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(d).unwrap_or(Timestamp::MIN)
}

/// When signing switches from `active` to `next`: after the full rotation period, but never
/// before `next` has been published for the overlap. Right after an algorithm change the
/// period is not waited for.
fn switch_at(active: &StoredKey, next: &StoredKey, policy: &RotationPolicy) -> Timestamp {
    let published_long_enough = after(next.created, policy.overlap);
    if active.key.algorithm != policy.algorithm {
        return published_long_enough;
    }
    let activated = active.activated.unwrap_or(active.created);
    after(activated, policy.period).max(published_long_enough)
}

/// The earliest pending step and when it falls due (possibly in the past).
fn next_step(
    keys: &[StoredKey],
    policy: &RotationPolicy,
    now: Timestamp,
) -> (Timestamp, RotationAction) {
    let mut steps: Vec<(Timestamp, RotationAction)> = Vec::new();
    let drop = |k: &StoredKey| RotationAction::Drop {
        selector: k.key.selector.clone(),
    };
    let (active, next) = (active(keys), next(keys));
    for k in keys {
        match k.role() {
            KeyRole::Retired => {
                let retired = k.retired.expect("a retired key has a retirement time");
                steps.push((after(retired, policy.overlap), drop(k)));
            }
            // A second signing key or an older next key can only come from a hand edit. A
            // stray signing key stays published for the overlap after the real one took over.
            KeyRole::Active if !is(active, k) => {
                let since = active.and_then(|a| a.activated).unwrap_or(now);
                steps.push((after(since, policy.overlap), drop(k)));
            }
            KeyRole::Next if !is(next, k) => steps.push((now, drop(k))),
            _ => {}
        }
    }
    let activate = |k: &StoredKey| RotationAction::Activate {
        selector: k.key.selector.clone(),
    };
    steps.push(match (active, next) {
        (None, Some(n)) => (now, activate(n)),
        (None, None) => (
            now,
            RotationAction::GenerateActive {
                selector: unused_selector(keys, now),
                algorithm: policy.algorithm,
            },
        ),
        (Some(a), None) => {
            let activated = a.activated.unwrap_or(a.created);
            let due = if a.key.algorithm != policy.algorithm {
                now
            } else {
                before(after(activated, policy.period), policy.overlap)
            };
            (
                due,
                RotationAction::GenerateNext {
                    selector: unused_selector(keys, now),
                    algorithm: policy.algorithm,
                },
            )
        }
        (Some(a), Some(n)) => (switch_at(a, n, policy), activate(n)),
    });
    // Earliest first; among equals, drops come first (they were pushed first).
    steps
        .into_iter()
        .enumerate()
        .min_by_key(|(i, (due, _))| (*due, *i))
        .map(|(_, step)| step)
        .expect("there is always a step")
}

fn is(chosen: Option<&StoredKey>, k: &StoredKey) -> bool {
    chosen.is_some_and(|c| std::ptr::eq(c, k))
}

/// When signing moves to a new key next.
fn next_switch(keys: &[StoredKey], policy: &RotationPolicy) -> Option<Timestamp> {
    let a = active(keys)?;
    Some(match next(keys) {
        Some(n) => switch_at(a, n, policy),
        None => after(a.activated.unwrap_or(a.created), policy.period),
    })
}

fn apply_step(
    keys: &mut Vec<StoredKey>,
    action: &RotationAction,
    now: Timestamp,
    mut generate: impl FnMut(DkimAlgorithm, &str) -> Result<DkimKey, DkimError>,
) -> Result<(), DkimError> {
    match action {
        RotationAction::GenerateActive {
            selector,
            algorithm,
        } => keys.push(StoredKey {
            key: generate(*algorithm, selector)?,
            created: now,
            activated: Some(now),
            retired: None,
        }),
        RotationAction::GenerateNext {
            selector,
            algorithm,
        } => keys.push(StoredKey {
            key: generate(*algorithm, selector)?,
            created: now,
            activated: None,
            retired: None,
        }),
        RotationAction::Activate { selector } => {
            for k in keys.iter_mut() {
                if k.role() == KeyRole::Active {
                    k.retired = Some(now);
                }
            }
            let k = keys
                .iter_mut()
                .find(|k| &k.key.selector == selector)
                .ok_or_else(|| DkimError::Secret(format!("no key {selector:?} to activate")))?;
            k.activated = Some(now);
            k.retired = None;
        }
        RotationAction::Drop { selector } => keys.retain(|k| &k.key.selector != selector),
    }
    Ok(())
}
