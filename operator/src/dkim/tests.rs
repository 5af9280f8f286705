//! DKIM keys verified by an independent implementation (PyPI dkimpy), selectors, the Secret
//! format, and the rotation state machine over simulated time.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::api::maildomain::DkimSpec;
use crate::pki::tests::ts;

const DAY: Duration = Duration::from_secs(86400);

fn at(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap()
}

/// Signs a message with `private_pem` using dkimpy and verifies it against the zone-file TXT
/// data `txt_presentation` served by the test's resolver. Ed25519 keys are handed to dkimpy in
/// its own format (the base64 seed), taken by this script from the PKCS#8 PEM or from the
/// signer's form (seed and public key).
const DKIMPY_SIGN_AND_VERIFY: &str = r#"
import base64, json, re, sys
import dkim

req = json.load(sys.stdin)
domain, selector = req["domain"].encode(), req["selector"].encode()
pem = req["private_pem"]
if req["algorithm"] == "ed25519" and pem.startswith("-----"):
    der = base64.b64decode("".join(l for l in pem.splitlines() if not l.startswith("-----")))
    prefix = bytes.fromhex("302e020100300506032b657004220420")
    assert der[:16] == prefix and len(der) == 48, "PKCS#8 v1 Ed25519 key"
    private, algo = base64.b64encode(der[16:]), b"ed25519-sha256"
elif req["algorithm"] == "ed25519":
    # Rspamd's form: base64 of seed and public key.
    raw = base64.b64decode(pem, validate=True)
    assert len(raw) == 64, "seed and public key"
    private, algo = base64.b64encode(raw[:32]), b"ed25519-sha256"
else:
    private, algo = pem.encode(), b"rsa-sha256"

# The TXT record as published: quoted strings of at most 255 bytes, joined.
strings = re.findall(r'"((?:[^"\\]|\\.)*)"', req["txt"])
assert strings and all(len(s.encode()) <= 255 for s in strings), strings
record = "".join(strings).encode()

message = (b"From: alice@" + domain + b"\r\nTo: bob@example.net\r\nSubject: rotation\r\n"
           b"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <1@" + domain + b">\r\n\r\n"
           b"Signed by the operator's key.\r\n")
sig = dkim.sign(message, selector, domain, private, signature_algorithm=algo,
                include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
asked = []
def dns(name, timeout=5):
    asked.append(name)
    return record if name == selector + b"._domainkey." + domain + b"." else None
ok = dkim.verify(sig + message, dnsfunc=dns)
print(json.dumps({"verified": bool(ok), "asked": [a.decode() for a in asked]}))
"#;

/// Runs the dkimpy script: Ok(verified) or Err(script failure).
pub(crate) fn dkimpy_verifies(
    key: &DkimKey,
    domain: &str,
    txt_presentation: &str,
) -> Result<bool, String> {
    let request = serde_json::json!({
        "domain": domain,
        "selector": key.selector,
        "algorithm": key::key_type(key.algorithm),
        "private_pem": key.private_pem,
        "txt": txt_presentation,
    });
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(DKIMPY_SIGN_AND_VERIFY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 must be installed");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!(
            "dkimpy (pip install -r e2e/requirements.txt): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let expected = format!("{}._domainkey.{domain}.", key.selector);
    assert_eq!(reply["asked"], serde_json::json!([expected]), "{reply}");
    Ok(reply["verified"] == true)
}

fn published_txt(key: &DkimKey) -> String {
    crate::dns::quote_txt(&txt_value(key))
}

#[test]
fn rsa_key_txt_verifies_a_signature_made_with_the_private_key() {
    let key = generate(DkimAlgorithm::Rsa2048, "pw202601010000").unwrap();
    assert!(key
        .private_pem
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let txt = txt_value(&key);
    assert!(txt.starts_with("v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"));
    // 2048-bit keys need two TXT strings.
    assert_eq!(published_txt(&key).matches('"').count(), 4);
    assert_eq!(
        dkimpy_verifies(&key, "example.com", &published_txt(&key)),
        Ok(true)
    );
    // The check can fail: another key's record does not verify this key's signature.
    let other = generate(DkimAlgorithm::Rsa2048, "pw202601010000").unwrap();
    assert_eq!(
        dkimpy_verifies(&key, "example.com", &published_txt(&other)),
        Ok(false)
    );
}

#[test]
fn ed25519_key_txt_verifies_a_signature_made_with_the_private_key() {
    let key = generate(DkimAlgorithm::Ed25519, "pw202601010000").unwrap();
    assert!(key.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    assert!(txt_value(&key).starts_with("v=DKIM1; k=ed25519; p="));
    assert_eq!(key.public_b64.len(), 44);
    assert_eq!(
        dkimpy_verifies(&key, "example.org", &published_txt(&key)),
        Ok(true)
    );
    let other = generate(DkimAlgorithm::Ed25519, "pw202601010000").unwrap();
    assert_eq!(
        dkimpy_verifies(&key, "example.org", &published_txt(&other)),
        Ok(false)
    );
    // The signer's copy of the key signs for the same record.
    let signer = DkimKey {
        private_pem: key.signer_key().unwrap(),
        ..key.clone()
    };
    assert!(!signer.private_pem.contains('\n'));
    assert_eq!(
        dkimpy_verifies(&signer, "example.org", &published_txt(&key)),
        Ok(true)
    );
}

#[test]
fn public_half_is_derived_from_the_stored_private_key() {
    for algorithm in [DkimAlgorithm::Rsa2048, DkimAlgorithm::Ed25519] {
        let key = generate(algorithm, "s1").unwrap();
        let again = DkimKey::from_private_pem("s1", algorithm, key.private_pem.clone()).unwrap();
        assert_eq!(again, key);
        // OpenSSL derives the same public key from the private PEM.
        let scratch = crate::pki::tests::Scratch::new("dkim");
        let file = scratch.write("k.pem", &key.private_pem);
        let (ok, spki) = crate::pki::tests::openssl(&["pkey", "-in", &file, "-pubout"]);
        assert!(ok, "{spki}");
        let b64: String = spki.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let expected = match algorithm {
            DkimAlgorithm::Rsa2048 => der,
            DkimAlgorithm::Ed25519 => der[der.len() - 32..].to_vec(),
        };
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(expected),
            key.public_b64
        );
        assert!(!format!("{key:?}").contains("PRIVATE KEY"));
    }
    assert!(DkimKey::from_private_pem("s", DkimAlgorithm::Rsa2048, "junk".into()).is_err());
}

#[test]
fn selectors_name_the_minute_and_sort_by_time() {
    assert_eq!(selector_for(ts("2026-01-15T09:30:59Z")), "pw202601150930");
    assert_eq!(
        selector_for(ts("2026-01-15T09:30:00+02:00")),
        "pw202601150730"
    );
    let times = [
        "2026-12-31T23:59:00Z",
        "2027-01-01T00:00:00Z",
        "2027-02-01T10:00:00Z",
    ];
    let selectors: Vec<String> = times.iter().map(|t| selector_for(ts(t))).collect();
    let mut sorted = selectors.clone();
    sorted.sort();
    assert_eq!(selectors, sorted);
    // A DNS label.
    assert!(selectors.iter().all(|s| s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())));
    // A selector already taken gets a letter.
    let now = ts("2026-01-15T09:30:00Z");
    let state = DkimState {
        keys: vec![StoredKey {
            key: DkimKey::public_only("pw202601150930", DkimAlgorithm::Ed25519, "x"),
            created: now,
            activated: Some(now),
            retired: None,
        }],
    };
    assert_eq!(state.unused_selector(now), "pw202601150930a");
}

fn ed25519_spec() -> DkimSpec {
    DkimSpec {
        algorithm: DkimAlgorithm::Ed25519,
        ..DkimSpec::default()
    }
}

/// Plans and applies at `now`; planning again right after yields nothing more.
fn step(state: &DkimState, spec: &DkimSpec, now: Timestamp) -> (DkimState, RotationPlan) {
    let plan = plan_rotation(state, spec, now);
    let next = state.apply(&plan, now, generate).unwrap();
    let again = plan_rotation(&next, spec, now);
    assert!(again.actions.is_empty(), "{again:?}");
    assert_eq!(again.requeue_at, plan.requeue_at);
    (next, plan)
}

fn selectors(keys: &[DkimKey]) -> Vec<String> {
    keys.iter().map(|k| k.selector.clone()).collect()
}

#[test]
fn rotation_over_two_full_cycles() {
    // rotationPeriod 180 days, overlap 7 days.
    let spec = ed25519_spec();
    let t0 = ts("2026-01-01T00:00:00Z");
    let (s1, s2, s3) = (
        selector_for(t0),
        selector_for(at(t0, 173 * DAY)),
        selector_for(at(t0, 353 * DAY)),
    );

    // t0: the first key signs at once.
    let (state, plan) = step(&DkimState::default(), &spec, t0);
    assert_eq!(
        plan.actions,
        [RotationAction::GenerateActive {
            selector: s1.clone(),
            algorithm: DkimAlgorithm::Ed25519
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 173 * DAY));
    assert_eq!(plan.next_rotation, Some(at(t0, 180 * DAY)));
    assert_eq!(state.active().unwrap().key.selector, s1);
    assert_eq!(selectors(&state.published()), [s1.as_str()]);

    // A second before the next key is due: nothing, same requeue time.
    let (state, plan) = step(&state, &spec, at(t0, 173 * DAY - Duration::from_secs(1)));
    assert!(plan.actions.is_empty());
    assert_eq!(plan.requeue_at, at(t0, 173 * DAY));

    // Period minus overlap: the next key is published.
    let (state, plan) = step(&state, &spec, at(t0, 173 * DAY));
    assert_eq!(
        plan.actions,
        [RotationAction::GenerateNext {
            selector: s2.clone(),
            algorithm: DkimAlgorithm::Ed25519
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 180 * DAY));
    assert_eq!(selectors(&state.published()), [s1.clone(), s2.clone()]);
    assert_eq!(state.active().unwrap().key.selector, s1);
    let status = state.status(&plan).unwrap();
    assert_eq!(
        (
            status.active_selector.as_str(),
            status.next_selector.as_deref()
        ),
        (s1.as_str(), Some(s2.as_str()))
    );
    assert_eq!(status.next_rotation, Some("2026-06-30T00:00:00Z".into()));

    // Period: signing switches; the old key stays published.
    let (state, plan) = step(&state, &spec, at(t0, 180 * DAY));
    assert_eq!(
        plan.actions,
        [RotationAction::Activate {
            selector: s2.clone()
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 187 * DAY));
    assert_eq!(state.active().unwrap().key.selector, s2);
    assert_eq!(selectors(&state.published()), [s1.clone(), s2.clone()]);
    assert_eq!(
        state
            .keys
            .iter()
            .find(|k| k.key.selector == s1)
            .unwrap()
            .role(),
        KeyRole::Retired
    );

    // Overlap after the switch: the retired key is dropped.
    let (state, plan) = step(&state, &spec, at(t0, 187 * DAY));
    assert_eq!(
        plan.actions,
        [RotationAction::Drop {
            selector: s1.clone()
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 353 * DAY));
    assert_eq!(selectors(&state.published()), [s2.as_str()]);

    // Second cycle.
    let (state, plan) = step(&state, &spec, at(t0, 353 * DAY));
    assert_eq!(plan.actions.len(), 1);
    assert_eq!(plan.requeue_at, at(t0, 360 * DAY));
    assert_eq!(selectors(&state.published()), [s2.clone(), s3.clone()]);
    let (state, plan) = step(&state, &spec, at(t0, 360 * DAY));
    assert_eq!(
        plan.actions,
        [RotationAction::Activate {
            selector: s3.clone()
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 367 * DAY));
    assert_eq!(state.active().unwrap().key.selector, s3);
    let (state, plan) = step(&state, &spec, at(t0, 367 * DAY));
    assert_eq!(
        plan.actions,
        [RotationAction::Drop {
            selector: s2.clone()
        }]
    );
    assert_eq!(plan.requeue_at, at(t0, 533 * DAY));
    assert_eq!(selectors(&state.published()), [s3.as_str()]);
    assert_eq!(state.status(&plan).unwrap().next_selector, None);

    // The keys survive the Secret: same state after a round trip.
    let mut spec = crate::pki::tests::quickstart_domain().spec;
    spec.alias_domains = vec!["example.org".into()];
    let data = state.to_secret_data(&spec).unwrap();
    assert_eq!(
        data["selectors.map"],
        format!("example.com {s3}\nexample.org {s3}\n")
    );
    let signer_key = state.active().unwrap().key.signer_key().unwrap();
    assert_eq!(data[&format!("example.com.{s3}.key")], signer_key);
    assert_eq!(data[&format!("example.org.{s3}.key")], signer_key);
    assert_eq!(DkimState::from_secret_data(&data).unwrap(), state);
}

#[test]
fn rotation_after_downtime_still_publishes_for_the_full_overlap() {
    let spec = ed25519_spec();
    let t0 = ts("2026-01-01T00:00:00Z");
    let (state, _) = step(&DkimState::default(), &spec, t0);
    // Down from day 100 to day 400: the next key is generated now and signs a week later.
    let late = at(t0, 400 * DAY);
    let (state, plan) = step(&state, &spec, late);
    assert!(matches!(
        plan.actions.as_slice(),
        [RotationAction::GenerateNext { .. }]
    ));
    assert_eq!(plan.requeue_at, at(late, 7 * DAY));
    let (state, plan) = step(&state, &spec, at(late, 7 * DAY));
    assert!(matches!(
        plan.actions.as_slice(),
        [RotationAction::Activate { .. }]
    ));
    // Both a retirement and a new key falling due while down are handled in one pass.
    let much_later = at(late, 500 * DAY);
    let (state, plan) = step(&state, &spec, much_later);
    assert!(
        matches!(
            plan.actions.as_slice(),
            [
                RotationAction::Drop { .. },
                RotationAction::GenerateNext { .. }
            ]
        ),
        "{plan:?}"
    );
    assert_eq!(state.published().len(), 2);
}

#[test]
fn algorithm_change_rotates_at_once_with_the_full_overlap() {
    let t0 = ts("2026-01-01T00:00:00Z");
    let placeholder = |a: DkimAlgorithm, s: &str| Ok(DkimKey::public_only(s, a, "x"));
    let spec = ed25519_spec();
    let plan = plan_rotation(&DkimState::default(), &spec, t0);
    let state = DkimState::default().apply(&plan, t0, placeholder).unwrap();
    let rsa = DkimSpec::default();
    let now = at(t0, 10 * DAY);
    let plan = plan_rotation(&state, &rsa, now);
    assert!(matches!(
        plan.actions.as_slice(),
        [RotationAction::GenerateNext {
            algorithm: DkimAlgorithm::Rsa2048,
            ..
        }]
    ));
    assert_eq!(plan.requeue_at, at(now, 7 * DAY));
    let state = state.apply(&plan, now, placeholder).unwrap();
    let plan = plan_rotation(&state, &rsa, at(now, 7 * DAY));
    // The new key signs and the old algorithm's key stops signing, at the same moment.
    assert!(matches!(
        plan.actions.as_slice(),
        [
            RotationAction::Activate { .. },
            RotationAction::Retire { .. }
        ]
    ));
    let state = state.apply(&plan, at(now, 7 * DAY), placeholder).unwrap();
    assert_eq!(
        state.active().unwrap().key.algorithm,
        DkimAlgorithm::Rsa2048
    );
}

#[test]
fn secret_with_keys_but_no_state_is_never_overwritten() {
    let data = std::collections::BTreeMap::from([(
        "default.key".to_string(),
        "-----BEGIN RSA PRIVATE KEY-----".to_string(),
    )]);
    assert!(DkimState::from_secret_data(&data).is_err());
    assert_eq!(
        DkimState::from_secret_data(&Default::default()).unwrap(),
        DkimState::default()
    );
}

#[test]
fn rotation_policy_from_spec() {
    let p = RotationPolicy::from_spec(&DkimSpec::default()).unwrap();
    assert_eq!((p.period, p.overlap), (180 * DAY, 7 * DAY));
    let bad = DkimSpec {
        overlap: "2200h".into(),
        ..DkimSpec::default()
    };
    assert!(RotationPolicy::from_spec(&bad).is_err());
}

fn dual(algorithm: DkimAlgorithm) -> DkimSpec {
    DkimSpec {
        algorithm,
        dual_signing: true,
        ..DkimSpec::default()
    }
}

fn placeholder(a: DkimAlgorithm, s: &str) -> Result<DkimKey, DkimError> {
    Ok(DkimKey::public_only(s, a, "x"))
}

/// Plans and applies at `now` with placeholder keys; planning again yields nothing more.
fn quick_step(state: &DkimState, spec: &DkimSpec, now: Timestamp) -> (DkimState, RotationPlan) {
    let plan = plan_rotation(state, spec, now);
    let next = state.apply(&plan, now, placeholder).unwrap();
    assert!(plan_rotation(&next, spec, now).actions.is_empty());
    (next, plan)
}

fn signing_algorithms(state: &DkimState) -> Vec<DkimAlgorithm> {
    let mut out: Vec<DkimAlgorithm> = state.signing().iter().map(|k| k.key.algorithm).collect();
    out.sort_by_key(|a| format!("{a:?}"));
    out
}

#[test]
fn dual_signing_starts_both_keys_at_once_for_a_new_domain_and_rotates_each_lane() {
    let t0 = ts("2026-01-01T00:00:00Z");
    let spec = dual(DkimAlgorithm::Rsa2048);
    let (state, plan) = step(&DkimState::default(), &spec, t0);
    let s1 = selector_for(t0);
    assert_eq!(
        plan.actions,
        [
            RotationAction::GenerateActive {
                selector: s1.clone(),
                algorithm: DkimAlgorithm::Rsa2048
            },
            RotationAction::GenerateActive {
                selector: format!("{s1}a"),
                algorithm: DkimAlgorithm::Ed25519
            },
        ]
    );
    assert_eq!(
        signing_algorithms(&state),
        [DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048]
    );
    let status = state.status(&plan).unwrap();
    assert_eq!(status.active_selector, s1, "primary");
    assert_eq!(status.signing_selectors, [s1.clone(), format!("{s1}a")]);

    // The signer: the map names the primary key, signing.conf both, both keys are present.
    let md = crate::pki::tests::quickstart_domain();
    let data = state.to_secret_data(&md.spec).unwrap();
    assert_eq!(data["selectors.map"], format!("example.com {s1}\n"));
    assert!(data.contains_key(&format!("example.com.{s1}.key")));
    assert!(data.contains_key(&format!("example.com.{s1}a.key")));
    let conf = &data["signing.conf"];
    assert!(
        conf.contains(&format!("{{ selector = \"{s1}\"; }}")),
        "{conf}"
    );
    assert!(
        conf.contains(&format!("{{ selector = \"{s1}a\"; }}")),
        "{conf}"
    );
    assert!(conf.contains("\"example.com\" {"), "{conf}");

    // Each lane rotates on its own schedule, retiring only its own key.
    let (state, plan) = quick_step(&state, &spec, at(t0, 173 * DAY));
    assert_eq!(plan.actions.len(), 2, "a next key per lane: {plan:?}");
    let (state, plan) = quick_step(&state, &spec, at(t0, 180 * DAY));
    assert!(
        plan.actions
            .iter()
            .all(|a| matches!(a, RotationAction::Activate { .. })),
        "{plan:?}"
    );
    assert_eq!(state.signing().len(), 2);
    assert_eq!(
        state
            .keys
            .iter()
            .filter(|k| k.role() == KeyRole::Retired)
            .count(),
        2
    );
    let (state, _) = quick_step(&state, &spec, at(t0, 187 * DAY));
    assert_eq!(state.keys.len(), 2);
}

#[test]
fn turning_dual_signing_on_publishes_the_second_key_first_and_off_retires_it() {
    let t0 = ts("2026-01-01T00:00:00Z");
    let single = DkimSpec::default();
    let (state, _) = quick_step(&DkimState::default(), &single, t0);

    // On: the Ed25519 key is published now and signs an overlap later.
    let on = at(t0, 30 * DAY);
    let spec = dual(DkimAlgorithm::Rsa2048);
    let (state, plan) = quick_step(&state, &spec, on);
    assert!(
        matches!(
            plan.actions.as_slice(),
            [RotationAction::GenerateNext {
                algorithm: DkimAlgorithm::Ed25519,
                ..
            }]
        ),
        "{plan:?}"
    );
    assert_eq!(plan.requeue_at, at(on, 7 * DAY));
    assert_eq!(signing_algorithms(&state), [DkimAlgorithm::Rsa2048]);
    let md = crate::pki::tests::quickstart_domain();
    let one = state.to_secret_data(&md.spec).unwrap();
    assert!(!one["signing.conf"].contains("domain {"), "one key signs");
    let (state, _) = quick_step(&state, &spec, at(on, 7 * DAY));
    assert_eq!(
        signing_algorithms(&state),
        [DkimAlgorithm::Ed25519, DkimAlgorithm::Rsa2048]
    );

    // Off: the Ed25519 key stops signing at once, stays published for the overlap.
    let off = at(t0, 60 * DAY);
    let (state, plan) = quick_step(&state, &single, off);
    assert!(
        matches!(plan.actions.as_slice(), [RotationAction::Retire { .. }]),
        "{plan:?}"
    );
    assert_eq!(signing_algorithms(&state), [DkimAlgorithm::Rsa2048]);
    assert_eq!(state.published().len(), 2);
    let (state, plan) = quick_step(&state, &single, at(off, 7 * DAY));
    assert!(matches!(
        plan.actions.as_slice(),
        [RotationAction::Drop { .. }]
    ));
    assert_eq!(state.published().len(), 1);
}
