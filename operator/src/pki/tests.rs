//! Certificates checked by OpenSSL (an independent verifier), renewal decisions at their
//! boundaries, and a CA rotation over simulated time.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use jiff::Timestamp;

use super::*;
use crate::api::MailDomain;

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86400);

pub(crate) fn ts(s: &str) -> Timestamp {
    s.parse().expect("RFC 3339 timestamp")
}

fn at(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_add(d).unwrap()
}

fn before(t: Timestamp, d: Duration) -> Timestamp {
    t.checked_sub(d).unwrap()
}

/// A scratch directory removed when dropped.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("postwarden-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
    pub(crate) fn write(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `openssl` (a missing binary fails the test): success and stdout + stderr.
pub(crate) fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl must be installed (e2e/install-deps.sh)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

pub(crate) fn quickstart_domain() -> MailDomain {
    let mut inputs = crate::manifest::Inputs::default();
    crate::manifest::load_str(
        std::path::Path::new("quickstart.yaml"),
        crate::render::QUICKSTART,
        &mut inputs,
    )
    .unwrap();
    inputs.domains.remove(0)
}

fn verify_at(scratch: &Scratch, ca_file: &str, cert: &CertKeyPair, when: Timestamp) -> bool {
    let cert_file = scratch.write("leaf.crt", &cert.cert_pem);
    let attime = when.as_second().to_string();
    let (ok, out) = openssl(&[
        "verify",
        "-attime",
        &attime,
        "-purpose",
        "sslserver",
        "-CAfile",
        ca_file,
        &cert_file,
    ]);
    ok && out.contains(": OK")
}

fn checkhost(cert_file: &str, host: &str) -> bool {
    let (ok, out) = openssl(&["x509", "-in", cert_file, "-noout", "-checkhost", host]);
    assert!(ok, "{out}");
    if out.contains("does NOT match") {
        return false;
    }
    assert!(out.contains("does match"), "{out}");
    true
}

#[test]
fn serving_certificate_chains_to_ca_and_names_the_hosts() {
    let now = Timestamp::now();
    let md = quickstart_domain();
    let ca = new_ca("example.com mail CA", now, CaPolicy::default().lifetime).unwrap();
    let names = serving_dns_names(&md, "mail");
    let serving = issue_serving(&ca, &names, now, 90 * DAY).unwrap();

    let scratch = Scratch::new("pki");
    let ca_file = scratch.write("ca.crt", &ca.cert_pem);
    let cert_file = scratch.write("tls.crt", &serving.cert_pem);
    let key_file = scratch.write("tls.key", &serving.key_pem);

    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &ca_file,
        &cert_file,
    ]);
    assert!(ok && out.contains(": OK"), "{out}");

    for host in [
        "mail.example.com",
        "example-com-mta.mail.svc",
        "example-com-imap.mail.svc.cluster.local",
        "example-com-imap-1.example-com-imap-hl.mail.svc",
    ] {
        assert!(checkhost(&cert_file, host), "{host}");
    }
    for host in [
        "example.com",
        "evil.example.com",
        "example-com-imap-2.example-com-imap-hl.mail.svc",
    ] {
        assert!(!checkhost(&cert_file, host), "{host}");
    }

    // The key in tls.key is the certificate's.
    let (_, cert_pub) = openssl(&["x509", "-in", &cert_file, "-noout", "-pubkey"]);
    let (ok, key_pub) = openssl(&["pkey", "-in", &key_file, "-pubout"]);
    assert!(ok && cert_pub.contains("BEGIN PUBLIC KEY"), "{cert_pub}");
    assert_eq!(cert_pub, key_pub);

    let (_, ca_text) = openssl(&["x509", "-in", &ca_file, "-noout", "-text"]);
    assert!(ca_text.contains("CA:TRUE, pathlen:0"), "{ca_text}");
    assert!(ca_text.contains("prime256v1"), "{ca_text}");
    let (_, leaf_text) = openssl(&["x509", "-in", &cert_file, "-noout", "-text"]);
    assert!(leaf_text.contains("CA:FALSE"), "{leaf_text}");
    assert!(
        leaf_text.contains("TLS Web Server Authentication"),
        "{leaf_text}"
    );

    // Another CA's certificate does not chain to this ca.crt.
    let other = new_ca("other CA", now, 365 * DAY).unwrap();
    let stranger = issue_serving(&other, &names, now, 90 * DAY).unwrap();
    assert!(!verify_at(&scratch, &ca_file, &stranger, now));
    assert!(is_issued_by(&serving.cert_pem, &ca.cert_pem).unwrap());
    assert!(!is_issued_by(&stranger.cert_pem, &ca.cert_pem).unwrap());
}

#[test]
fn serving_names_cover_host_services_and_imap_pods() {
    let mut md = quickstart_domain();
    md.spec.hostname = Some("mx.example.org".into());
    let names = serving_dns_names(&md, "mail");
    assert_eq!(
        names,
        [
            "mx.example.org",
            "mail.example.com",
            "example-com-mta.mail.svc",
            "example-com-mta.mail.svc.cluster.local",
            "example-com-imap.mail.svc",
            "example-com-imap.mail.svc.cluster.local",
            "example-com-imap-hl.mail.svc",
            "example-com-imap-hl.mail.svc.cluster.local",
            "example-com-imap-0.example-com-imap-hl.mail.svc",
            "example-com-imap-0.example-com-imap-hl.mail.svc.cluster.local",
            "example-com-imap-1.example-com-imap-hl.mail.svc",
            "example-com-imap-1.example-com-imap-hl.mail.svc.cluster.local",
        ]
    );
    // The default host name is mail.<domain>: listed once.
    let md = quickstart_domain();
    let names = serving_dns_names(&md, "mail");
    assert_eq!(names[0], "mail.example.com");
    assert_eq!(names.iter().filter(|n| *n == "mail.example.com").count(), 1);
}

#[test]
fn validity_is_backdated_and_capped_at_the_ca() {
    let t0 = ts("2026-01-01T00:00:00Z");
    let ca = new_ca("ca", t0, 100 * DAY).unwrap();
    assert_eq!(
        cert_validity(&ca.cert_pem).unwrap(),
        (before(t0, BACKDATE), at(t0, 100 * DAY))
    );
    let names = vec!["mail.example.com".to_string()];
    let leaf = issue_serving(&ca, &names, t0, 90 * DAY).unwrap();
    assert_eq!(
        cert_validity(&leaf.cert_pem).unwrap(),
        (before(t0, BACKDATE), at(t0, 90 * DAY))
    );
    let late = at(t0, 50 * DAY);
    let capped = issue_serving(&ca, &names, late, 90 * DAY).unwrap();
    assert_eq!(
        cert_validity(&capped.cert_pem).unwrap().1,
        at(t0, 100 * DAY)
    );
    assert_eq!(inspect(&leaf.cert_pem).unwrap().dns_names, names);
    assert!(cert_validity("not a certificate").is_err());
}

#[test]
fn renewal_decisions_at_the_boundaries() {
    let t0 = ts("2026-01-01T00:00:00Z");
    let ca = new_ca("ca", t0, 5 * 365 * DAY).unwrap();
    let names = vec![
        "mail.example.com".to_string(),
        "example-com-mta.mail.svc".to_string(),
    ];
    let cert = issue_serving(&ca, &names, t0, 90 * DAY).unwrap();
    let policy = RenewalPolicy::new(90 * DAY, None).unwrap();
    assert_eq!(policy.renew_before, 30 * DAY);
    let decide_at = |now| decide(Some(&cert.cert_pem), &ca.cert_pem, &names, &policy, now);
    let renew_at = at(t0, 60 * DAY);
    let valid = Renewal::Valid { renew_at };
    let now = |reason| Renewal::RenewNow { reason };

    // Long before, and one second before, the renewal time: keep, requeue at renew_at.
    assert_eq!(decide_at(at(t0, DAY)), valid);
    assert_eq!(decide_at(before(renew_at, Duration::from_secs(1))), valid);
    // Exactly at it and after it.
    assert_eq!(decide_at(renew_at), now(RenewReason::WithinRenewBefore));
    assert_eq!(
        decide_at(at(renew_at, DAY)),
        now(RenewReason::WithinRenewBefore)
    );
    // At and after notAfter.
    assert_eq!(decide_at(at(t0, 90 * DAY)), now(RenewReason::Expired));
    assert_eq!(decide_at(at(t0, 400 * DAY)), now(RenewReason::Expired));
    // notBefore (t0 - 1h) still ahead: the clock is behind the issuer's.
    assert_eq!(
        decide_at(before(t0, 2 * HOUR)),
        now(RenewReason::NotYetValid)
    );
    assert_eq!(decide_at(before(t0, BACKDATE)), valid);

    // An explicit renewBefore.
    let ten_days = RenewalPolicy::new(90 * DAY, Some(10 * DAY)).unwrap();
    assert_eq!(
        decide(
            Some(&cert.cert_pem),
            &ca.cert_pem,
            &names,
            &ten_days,
            at(t0, 70 * DAY)
        ),
        Renewal::Valid {
            renew_at: at(t0, 80 * DAY)
        }
    );

    // Missing, unreadable, other names, other issuer.
    let d = |pem: Option<&str>, issuer: &str, names: &[String]| {
        decide(pem, issuer, names, &policy, at(t0, DAY))
    };
    assert_eq!(d(None, &ca.cert_pem, &names), now(RenewReason::Missing));
    assert_eq!(
        d(Some(" \n"), &ca.cert_pem, &names),
        now(RenewReason::Missing)
    );
    assert_eq!(
        d(Some("garbage"), &ca.cert_pem, &names),
        now(RenewReason::Unreadable)
    );
    let more = [names.clone(), vec!["imap.example.com".to_string()]].concat();
    assert_eq!(
        d(Some(&cert.cert_pem), &ca.cert_pem, &more),
        now(RenewReason::NamesChanged)
    );
    let reordered: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(d(Some(&cert.cert_pem), &ca.cert_pem, &reordered), valid);
    let other = new_ca("ca", t0, 365 * DAY).unwrap();
    assert_eq!(
        d(Some(&cert.cert_pem), &other.cert_pem, &names),
        now(RenewReason::IssuerChanged)
    );
}

#[test]
fn short_lived_certificate_is_not_renewed_over_and_over() {
    // Cut at the CA's expiry, the certificate lives 20 days, less than renewBefore (30 days):
    // it is renewed a third of its lifetime before expiry, not at once.
    let t0 = ts("2026-01-01T00:00:00Z");
    let ca = new_ca("ca", before(t0, 80 * DAY), 100 * DAY).unwrap();
    let names = vec!["mail.example.com".to_string()];
    let cert = issue_serving(&ca, &names, t0, 90 * DAY).unwrap();
    let policy = RenewalPolicy::new(90 * DAY, None).unwrap();
    let (nb, na) = cert_validity(&cert.cert_pem).unwrap();
    let lifetime = na.duration_since(nb).unsigned_abs();
    assert_eq!(
        decide(Some(&cert.cert_pem), &ca.cert_pem, &names, &policy, t0),
        Renewal::Valid {
            renew_at: before(na, lifetime / 3)
        }
    );
}

#[test]
fn common_names_fit_x509_limits() {
    let t0 = ts("2026-01-01T00:00:00Z");
    assert_eq!(
        cert::dated_ca_name("example.com mail CA", t0),
        "example.com mail CA 20260101T000000Z"
    );
    let long = format!("{}.example.com mail CA", "a".repeat(60));
    assert_eq!(cert::dated_ca_name(&long, t0).len(), 64);
    // A host name too long for a common name is still named by the DNS names.
    let ca = new_ca("ca", t0, 365 * DAY).unwrap();
    let host = format!("{}.{}.example.com", "a".repeat(40), "b".repeat(40));
    let leaf = issue_serving(&ca, std::slice::from_ref(&host), t0, 90 * DAY).unwrap();
    assert_eq!(inspect(&leaf.cert_pem).unwrap().dns_names, [host]);
    let scratch = Scratch::new("long-cn");
    let file = scratch.write("tls.crt", &leaf.cert_pem);
    let (ok, subject) = openssl(&["x509", "-in", &file, "-noout", "-subject"]);
    assert!(
        ok && subject.contains("O = postwarden") && !subject.contains("CN"),
        "{subject}"
    );
}

#[test]
fn renewal_policy_from_spec() {
    let mut tls = crate::api::maildomain::TlsSpec::default();
    let p = RenewalPolicy::from_spec(&tls).unwrap();
    assert_eq!((p.lifetime, p.renew_before), (2160 * HOUR, 720 * HOUR));
    tls.renew_before = Some("240h".into());
    assert_eq!(
        RenewalPolicy::from_spec(&tls).unwrap().renew_before,
        240 * HOUR
    );
    tls.renew_before = Some("2160h".into());
    assert!(RenewalPolicy::from_spec(&tls).is_err());
    tls.renew_before = Some("soon".into());
    assert!(RenewalPolicy::from_spec(&tls).is_err());
}

fn certs_in(bundle: &str) -> usize {
    bundle.matches("BEGIN CERTIFICATE").count()
}

#[test]
fn ca_rotation_keeps_both_cas_trusted_across_the_switch() {
    let policy = CaPolicy {
        lifetime: 30 * DAY,
        renew_before: 10 * DAY,
        overlap: DAY,
    };
    let t0 = ts("2026-01-01T00:00:00Z");
    let names = vec!["mail.example.com".to_string()];
    let scratch = Scratch::new("ca-rotation");
    let advance = |state: Option<CaState>, now| advance_ca(state, "ca", &policy, now).unwrap();

    // Created when missing; rolled with a third of its life left.
    let (ca, p) = advance(None, t0);
    assert_eq!(p.actions, [CaAction::Create]);
    assert_eq!(p.requeue_at, at(t0, 20 * DAY));
    assert_eq!(certs_in(&ca.trust_bundle()), 1);
    let old_serving = issue_serving(&ca.current, &names, t0, 9 * DAY).unwrap();

    let (same, p) = advance(
        Some(ca.clone()),
        before(at(t0, 20 * DAY), Duration::from_secs(1)),
    );
    assert_eq!((p.actions.len(), p.requeue_at), (0, at(t0, 20 * DAY)));
    assert_eq!(same, ca);

    // Introduce: the new CA is trusted, the old one still signs.
    let t_intro = at(t0, 20 * DAY);
    let (introducing, p) = advance(Some(ca.clone()), t_intro);
    assert_eq!(p.actions, [CaAction::Introduce]);
    assert_eq!(p.requeue_at, at(t_intro, DAY));
    assert_eq!(introducing.current, ca.current);
    let CaPhase::Introducing { next, .. } = &introducing.phase else {
        panic!("introducing")
    };
    let subject = |pem: &str| {
        let f = scratch.write("subject.crt", pem);
        openssl(&["x509", "-in", &f, "-noout", "-subject"]).1
    };
    assert_ne!(subject(&next.cert_pem), subject(&ca.current.cert_pem));
    assert_eq!(certs_in(&introducing.trust_bundle()), 2);
    let bundle_during_intro = scratch.write("intro-bundle.crt", &introducing.trust_bundle());
    let renewed_by_old = issue_serving(&introducing.current, &names, t_intro, 9 * DAY).unwrap();
    assert!(verify_at(
        &scratch,
        &bundle_during_intro,
        &renewed_by_old,
        t_intro
    ));

    // Switch: the new CA signs; certificates of the old one are renewed.
    let t_switch = at(t_intro, DAY);
    let (switched, p) = advance(Some(introducing.clone()), t_switch);
    assert_eq!(p.actions, [CaAction::Switch]);
    assert_eq!(p.requeue_at, at(t_switch, DAY));
    let CaPhase::Introducing { next, .. } = &introducing.phase else {
        panic!("introducing")
    };
    assert_eq!(&switched.current, next);
    let serving_policy = RenewalPolicy::new(9 * DAY, None).unwrap();
    assert_eq!(
        decide(
            Some(&renewed_by_old.cert_pem),
            &switched.current.cert_pem,
            &names,
            &serving_policy,
            t_switch
        ),
        Renewal::RenewNow {
            reason: RenewReason::IssuerChanged
        }
    );
    let renewed_by_new = issue_serving(&switched.current, &names, t_switch, 9 * DAY).unwrap();
    // A pod still holding the bundle of the introduction trusts the new certificate, and a pod
    // with the new bundle still trusts certificates of the old CA.
    assert!(verify_at(
        &scratch,
        &bundle_during_intro,
        &renewed_by_new,
        t_switch
    ));
    let bundle_after_switch = scratch.write("switch-bundle.crt", &switched.trust_bundle());
    assert!(verify_at(
        &scratch,
        &bundle_after_switch,
        &renewed_by_old,
        t_switch
    ));
    assert!(verify_at(
        &scratch,
        &bundle_after_switch,
        &renewed_by_new,
        t_switch
    ));

    // Drop: only the new CA is trusted; next roll 20 days after the new CA was made.
    let t_drop = at(t_switch, DAY);
    let (stable, p) = advance(Some(switched.clone()), t_drop);
    assert_eq!(p.actions, [CaAction::DropPrevious]);
    assert_eq!(p.requeue_at, at(t_intro, 20 * DAY));
    assert_eq!(certs_in(&stable.trust_bundle()), 1);
    let final_bundle = scratch.write("final-bundle.crt", &stable.trust_bundle());
    assert!(verify_at(&scratch, &final_bundle, &renewed_by_new, t_drop));
    assert!(!verify_at(&scratch, &final_bundle, &old_serving, t_drop));

    // After downtime the due steps are taken at once, each recorded at the real time.
    let late = at(t_intro, 5 * DAY);
    let (s, p) = advance(Some(introducing.clone()), late);
    assert_eq!(p.actions, [CaAction::Switch]);
    assert_eq!(p.requeue_at, at(late, DAY));
    assert!(matches!(s.phase, CaPhase::Retiring { since, .. } if since == late));

    // An expired CA is replaced outright.
    let (_, p) = advance(Some(ca.clone()), at(t0, 31 * DAY));
    assert_eq!(p.actions, [CaAction::Create]);
    assert_eq!(
        decide_ca(Some(&ca), &policy, at(t0, 30 * DAY)).unwrap(),
        CaDecision::Act(CaAction::Create)
    );
}

#[test]
fn ca_state_round_trips_through_its_secret() {
    let policy = CaPolicy::default();
    let t0 = ts("2026-01-01T00:00:00Z");
    let stable = CaState::create("ca", &policy, t0).unwrap();
    let introducing =
        CaState::apply(Some(stable.clone()), CaAction::Introduce, "ca", &policy, t0).unwrap();
    let retiring = CaState::apply(
        Some(introducing.clone()),
        CaAction::Switch,
        "ca",
        &policy,
        t0,
    )
    .unwrap();
    for state in [stable, introducing, retiring] {
        let data = state.to_secret_data();
        assert_eq!(
            CaState::from_secret_data(&data).unwrap(),
            Some(state.clone())
        );
    }
    assert_eq!(
        CaState::from_secret_data(&Default::default()).unwrap(),
        None
    );
    let broken = std::collections::BTreeMap::from([("ca.crt".to_string(), "junk".to_string())]);
    assert!(CaState::from_secret_data(&broken).is_err());
    assert!(!format!("{:?}", CaState::create("ca", &policy, t0).unwrap()).contains("PRIVATE KEY"));
}

#[test]
fn internal_tls_pass_creates_keeps_renews_and_follows_the_ca() {
    let md = quickstart_domain();
    let t0 = ts("2026-01-01T00:00:00Z");
    let first = advance_internal_tls(&md, "mail", None, None, t0).unwrap();
    assert_eq!(first.ca_actions, [CaAction::Create]);
    assert_eq!(first.renewed, Some(RenewReason::Missing));
    // Default tls.duration 2160h (90 days), renewed with 30 days left.
    let renew_at = at(t0, 60 * DAY);
    assert_eq!(first.requeue_at, renew_at);
    assert_eq!(first.served.secret_name, "example-com-tls");
    assert_eq!(first.served.reason(), "Issued");
    assert_eq!(
        first.served.status().not_after.as_deref(),
        Some("2026-04-01T00:00:00Z")
    );
    assert_eq!(
        first.served.status().renewal_time.as_deref(),
        Some("2026-03-02T00:00:00Z")
    );
    let data = first.tls_secret_data();
    assert_eq!(data["ca.crt"], first.ca.trust_bundle());
    assert_eq!(data["tls.crt"], first.serving.cert_pem);

    // Nothing changes until the renewal time.
    let kept = advance_internal_tls(
        &md,
        "mail",
        Some(first.ca.clone()),
        Some(first.serving.clone()),
        before(renew_at, Duration::from_secs(1)),
    )
    .unwrap();
    assert!(kept.ca_actions.is_empty());
    assert_eq!((kept.renewed, &kept.serving), (None, &first.serving));

    let renewed = advance_internal_tls(
        &md,
        "mail",
        Some(first.ca.clone()),
        Some(first.serving.clone()),
        renew_at,
    )
    .unwrap();
    assert_eq!(renewed.renewed, Some(RenewReason::WithinRenewBefore));
    assert_eq!(renewed.requeue_at, at(renew_at, 60 * DAY));

    // A new Dovecot replica needs its pod name on the certificate.
    let mut one_replica = md.clone();
    one_replica.spec.imap.replicas = 1;
    let fewer = advance_internal_tls(
        &one_replica,
        "mail",
        Some(first.ca.clone()),
        Some(first.serving.clone()),
        at(t0, DAY),
    )
    .unwrap();
    assert_eq!(fewer.renewed, Some(RenewReason::NamesChanged));

    // When the CA switches, the certificate is reissued in the same pass.
    let (_, ca_not_after) = cert_validity(&first.ca.current.cert_pem).unwrap();
    let ca_roll = before(ca_not_after, CaPolicy::default().renew_before);
    let introducing =
        advance_internal_tls(&md, "mail", Some(first.ca.clone()), None, ca_roll).unwrap();
    assert_eq!(introducing.ca_actions, [CaAction::Introduce]);
    assert_eq!(introducing.requeue_at, at(ca_roll, DAY));
    let switched = advance_internal_tls(
        &md,
        "mail",
        Some(introducing.ca.clone()),
        Some(introducing.serving.clone()),
        at(ca_roll, DAY),
    )
    .unwrap();
    assert_eq!(switched.ca_actions, [CaAction::Switch]);
    assert_eq!(switched.renewed, Some(RenewReason::IssuerChanged));
    assert!(is_issued_by(&switched.serving.cert_pem, &switched.ca.current.cert_pem).unwrap());
}

#[test]
fn health_of_a_served_certificate_at_its_boundaries() {
    use health::{assess, Health};
    let t0 = ts("2026-01-01T00:00:00Z");
    let ca = new_ca("ca", t0, 5 * 365 * DAY).unwrap();
    let names = vec!["mail.example.com".to_string()];
    let cert = issue_serving(&ca, &names, t0, 90 * DAY).unwrap();
    let (crt, key) = (Some(cert.cert_pem.as_str()), Some(cert.key_pem.as_str()));
    let host = "mail.example.com";
    let not_after = at(t0, 90 * DAY);
    let warn_at = at(t0, 76 * DAY);
    let valid = Health::Valid { not_after, warn_at };
    let soon = Health::ExpiringSoon { not_after };

    // Long before and one second before the warning time; at and after it; at and after expiry.
    assert_eq!(assess(crt, key, host, at(t0, DAY)), valid);
    assert_eq!(valid.changes_at(), Some(warn_at));
    assert_eq!(
        assess(crt, key, host, before(warn_at, Duration::from_secs(1))),
        valid
    );
    assert_eq!(assess(crt, key, host, warn_at), soon);
    assert_eq!(soon.changes_at(), Some(not_after));
    assert_eq!(
        assess(crt, key, host, before(not_after, Duration::from_secs(1))),
        soon
    );
    let expired = Health::Expired { not_after };
    assert_eq!(assess(crt, key, host, not_after), expired);
    assert_eq!(assess(crt, key, host, at(not_after, 30 * DAY)), expired);
    assert!(!expired.is_usable() && soon.is_usable() && valid.is_usable());
    // Clock skew: notBefore (t0 - 1h) still ahead; at notBefore it is valid.
    let skewed = assess(crt, key, host, before(t0, 2 * HOUR));
    assert_eq!(
        skewed,
        Health::NotYetValid {
            not_before: before(t0, BACKDATE)
        }
    );
    assert_eq!(skewed.changes_at(), Some(before(t0, BACKDATE)));
    assert_eq!(assess(crt, key, host, before(t0, BACKDATE)), valid);

    // Missing, unreadable, no key, another host; a wildcard covers the host.
    let now = at(t0, DAY);
    assert_eq!(assess(None, key, host, now), Health::Missing);
    assert_eq!(assess(Some("  "), key, host, now), Health::Missing);
    assert_eq!(assess(Some("garbage"), key, host, now).reason(), "Unusable");
    assert_eq!(assess(crt, None, host, now).reason(), "Unusable");
    let wrong = assess(crt, key, "mx.example.com", now);
    assert_eq!(
        wrong,
        Health::WrongHost {
            host: "mx.example.com".into(),
            names: names.clone()
        }
    );
    assert_eq!(
        wrong.describe("example-tls"),
        "example-tls does not name mx.example.com (it names mail.example.com)"
    );
    let wildcard = issue_serving(&ca, &["*.example.com".to_string()], t0, 90 * DAY).unwrap();
    assert!(assess(Some(&wildcard.cert_pem), key, "mx.example.com", now).is_usable());

    // Condition messages name the Secret and absolute times; Events add the time left.
    let message = soon.describe("example-tls");
    assert_eq!(
        message,
        format!("example-tls expires at {not_after} and has not been renewed")
    );
    assert_eq!(
        soon.event_note("example-tls", before(not_after, 3 * DAY)),
        format!("{message} (3d left)")
    );
    assert!(expired
        .event_note("example-tls", at(not_after, 2 * HOUR))
        .ends_with("(2h ago)"));
    assert!(Health::Missing
        .describe("user-tls")
        .contains("Secret user-tls has no certificate"));
}
