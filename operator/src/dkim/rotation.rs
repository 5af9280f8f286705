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
//! Each signing algorithm is a lane of its own with these steps (two lanes with
//! `spec.dkim.dualSigning`). A lane added to a domain that already signs starts with a next key
//! published for the overlap; a lane no longer wanted (the algorithm changed, or dual signing was
//! turned off) stops signing once every wanted lane signs, and its key is dropped an overlap
//! later. So changing `spec.dkim.algorithm` rotates at once, with the full overlap.
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
    /// The primary algorithm.
    pub algorithm: DkimAlgorithm,
    /// Whether a key of the other algorithm signs too.
    pub dual: bool,
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
            dual: spec.dual_signing,
            period,
            overlap,
        })
    }

    /// The algorithms that sign, primary first: one rotation lane each.
    pub fn algorithms(&self) -> Vec<DkimAlgorithm> {
        let mut out = vec![self.algorithm];
        if self.dual {
            out.extend(
                [DkimAlgorithm::Rsa2048, DkimAlgorithm::Ed25519]
                    .into_iter()
                    .filter(|a| *a != self.algorithm),
            );
        }
        out
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
    /// Sign with this key; the key of its algorithm that signed so far is retired.
    Activate { selector: String },
    /// Stop signing with this key (its algorithm no longer signs); it stays published.
    Retire { selector: String },
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
    /// When signing moves to a new key next, in any lane (for `status.dkim.nextRotation`).
    pub next_rotation: Option<Timestamp>,
    /// The primary algorithm (its key is `status.dkim.activeSelector`).
    pub primary: DkimAlgorithm,
}

/// Plans the rotation of `state` under `spec` at `now`.
///
/// Specs are validated at admission, so `spec` parses; should it not, the default period and
/// overlap apply (the controller reports the spec error through [`RotationPolicy::from_spec`]).
pub fn plan_rotation(state: &DkimState, spec: &DkimSpec, now: Timestamp) -> RotationPlan {
    let policy = RotationPolicy::from_spec(spec).unwrap_or_else(|_| RotationPolicy {
        algorithm: spec.algorithm,
        dual: spec.dual_signing,
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
                primary: policy.algorithm,
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
    /// The signing key activated last (of any algorithm).
    pub fn active(&self) -> Option<&StoredKey> {
        self.signing()
            .into_iter()
            .max_by_key(|k| (k.activated, k.created))
    }

    /// The signing key of `algorithm`, falling back to [`Self::active`] while that algorithm's
    /// lane has none yet (right after an algorithm change).
    pub fn primary(&self, algorithm: DkimAlgorithm) -> Option<&StoredKey> {
        active(&self.keys, algorithm).or_else(|| self.active())
    }

    /// Every key that signs (one per algorithm), by selector.
    pub fn signing(&self) -> Vec<&StoredKey> {
        let mut out: Vec<&StoredKey> = [DkimAlgorithm::Rsa2048, DkimAlgorithm::Ed25519]
            .into_iter()
            .filter_map(|a| active(&self.keys, a))
            .collect();
        out.sort_by(|a, b| a.key.selector.cmp(&b.key.selector));
        out
    }

    /// The key of `algorithm` published ahead of its next switch.
    pub fn next(&self, algorithm: DkimAlgorithm) -> Option<&StoredKey> {
        next(&self.keys, algorithm)
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
        let active = self.primary(plan.primary)?;
        Some(DkimStatus {
            active_selector: active.key.selector.clone(),
            signing_selectors: self
                .signing()
                .iter()
                .map(|k| k.key.selector.clone())
                .collect(),
            next_selector: self.next(plan.primary).map(|n| n.key.selector.clone()),
            next_rotation: plan.next_rotation.map(|t| t.to_string()),
        })
    }

    /// The DKIM Secret's data: `state.json` (selectors, algorithms and timestamps) and one
    /// `<selector>.key` per key (private PEM), which [`Self::from_secret_data`] reads back;
    /// and the signer's files ([`crate::config::dkim_files`]): `selectors.map` naming the
    /// primary signing selector of the domain and of each alias domain, every signing key as
    /// `<domain>.<selector>.key` for each, in the signer's form ([`DkimKey::signer_key`]), and
    /// `signing.conf`, which lists every signing selector per domain when more than one key
    /// signs (dual signing) and is otherwise empty. A rotation changes only this Secret: the
    /// signer re-reads the map and keys by itself and is reloaded for `signing.conf`.
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
        if let Some(primary) = self.primary(spec.dkim.algorithm) {
            for domain in spec.all_domains() {
                map.push_str(&format!("{domain} {}\n", primary.key.selector));
            }
        }
        let signing = self.signing();
        for k in &signing {
            let signer_key = k.key.signer_key()?;
            for domain in spec.all_domains() {
                data.insert(dkim_files::key(domain, &k.key.selector), signer_key.clone());
            }
        }
        data.insert(dkim_files::SELECTORS_MAP.to_string(), map);
        data.insert(
            dkim_files::SIGNING_CONF.to_string(),
            signing_conf(spec, &signing),
        );
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

/// Rspamd `dkim_signing` settings naming every signing selector of each domain, when more than
/// one key signs; keys are found by the module's `path` template (`$domain.$selector.key`).
fn signing_conf(spec: &MailDomainSpec, signing: &[&StoredKey]) -> String {
    let mut out = String::from("# Generated by postwarden; do not edit.\n");
    if signing.len() < 2 {
        out.push_str("# One key signs: the selector map names it.\n");
        return out;
    }
    out.push_str("domain {\n");
    for domain in spec.all_domains() {
        out.push_str(&format!("  \"{domain}\" {{\n    selectors = [\n"));
        for k in signing {
            out.push_str(&format!(
                "      {{ selector = \"{}\"; }},\n",
                k.key.selector
            ));
        }
        out.push_str("    ];\n  }\n");
    }
    out.push_str("}\n");
    out
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

/// The key of `lane` that signs.
fn active(keys: &[StoredKey], lane: DkimAlgorithm) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.key.algorithm == lane && k.role() == KeyRole::Active)
        .max_by_key(|k| (k.activated, k.created))
}

/// The key of `lane` published ahead of its next switch.
fn next(keys: &[StoredKey], lane: DkimAlgorithm) -> Option<&StoredKey> {
    keys.iter()
        .filter(|k| k.key.algorithm == lane && k.role() == KeyRole::Next)
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

/// When signing switches from `active` to `next` (keys of one lane): after the full rotation
/// period, but never before `next` has been published for the overlap.
fn switch_at(active: &StoredKey, next: &StoredKey, policy: &RotationPolicy) -> Timestamp {
    let activated = active.activated.unwrap_or(active.created);
    after(activated, policy.period).max(after(next.created, policy.overlap))
}

/// The earliest pending step and when it falls due (possibly in the past).
fn next_step(
    keys: &[StoredKey],
    policy: &RotationPolicy,
    now: Timestamp,
) -> (Timestamp, RotationAction) {
    let wanted = policy.algorithms();
    let mut steps: Vec<(Timestamp, RotationAction)> = Vec::new();
    let drop = |k: &StoredKey| RotationAction::Drop {
        selector: k.key.selector.clone(),
    };
    let every_wanted_lane_signs = wanted.iter().all(|a| active(keys, *a).is_some());
    for k in keys {
        let lane = k.key.algorithm;
        let (active, next) = (active(keys, lane), next(keys, lane));
        match k.role() {
            KeyRole::Retired => {
                let retired = k.retired.expect("a retired key has a retirement time");
                steps.push((after(retired, policy.overlap), drop(k)));
            }
            // A lane no longer wanted stops signing once the wanted ones all sign (until then
            // its key is the lane's active one, which the arms below leave alone).
            KeyRole::Active if !wanted.contains(&lane) && every_wanted_lane_signs => {
                let selector = k.key.selector.clone();
                steps.push((now, RotationAction::Retire { selector }));
            }
            KeyRole::Next if !wanted.contains(&lane) => steps.push((now, drop(k))),
            // A second signing key or an older next key of a lane can only come from a hand
            // edit. A stray signing key stays published for the overlap after the real one
            // took over.
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
    for lane in wanted {
        // Another lane signs with a key published before now: this lane's first key is published
        // for the overlap before it signs. A new domain's first keys all sign at once.
        let others_sign = keys
            .iter()
            .any(|k| k.key.algorithm != lane && k.role() == KeyRole::Active && k.created < now);
        let generate = |signing: bool| {
            let selector = unused_selector(keys, now);
            let algorithm = lane;
            if signing {
                RotationAction::GenerateActive {
                    selector,
                    algorithm,
                }
            } else {
                RotationAction::GenerateNext {
                    selector,
                    algorithm,
                }
            }
        };
        steps.push(match (active(keys, lane), next(keys, lane)) {
            (None, Some(n)) if others_sign => (after(n.created, policy.overlap), activate(n)),
            (None, Some(n)) => (now, activate(n)),
            (None, None) => (now, generate(!others_sign)),
            (Some(a), None) => {
                let activated = a.activated.unwrap_or(a.created);
                let due = before(after(activated, policy.period), policy.overlap);
                (due, generate(false))
            }
            (Some(a), Some(n)) => (switch_at(a, n, policy), activate(n)),
        });
    }
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

/// When signing moves to a new key next, in any lane.
fn next_switch(keys: &[StoredKey], policy: &RotationPolicy) -> Option<Timestamp> {
    policy
        .algorithms()
        .into_iter()
        .filter_map(|lane| {
            let a = active(keys, lane)?;
            Some(match next(keys, lane) {
                Some(n) => switch_at(a, n, policy),
                None => after(a.activated.unwrap_or(a.created), policy.period),
            })
        })
        .min()
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
            let lane = find(keys, selector, "activate")?.key.algorithm;
            for k in keys.iter_mut() {
                if k.key.algorithm == lane && k.role() == KeyRole::Active {
                    k.retired = Some(now);
                }
            }
            let k = find(keys, selector, "activate")?;
            k.activated = Some(now);
            k.retired = None;
        }
        RotationAction::Retire { selector } => find(keys, selector, "retire")?.retired = Some(now),
        RotationAction::Drop { selector } => keys.retain(|k| &k.key.selector != selector),
    }
    Ok(())
}

fn find<'a>(
    keys: &'a mut [StoredKey],
    selector: &str,
    what: &str,
) -> Result<&'a mut StoredKey, DkimError> {
    keys.iter_mut()
        .find(|k| k.key.selector == selector)
        .ok_or_else(|| DkimError::Secret(format!("no key {selector:?} to {what}")))
}
