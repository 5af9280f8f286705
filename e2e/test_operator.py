"""The operator binary against a Kubernetes API: the control plane of e2e/controlplane.sh by
default, a real cluster when KUBECONFIG is set (see e2e/README.md). Every test gets its own
namespace."""

from __future__ import annotations

import base64
import os
import copy
import hashlib
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from cluster import LIVE, RESYNC_SECONDS, Cluster, sleep_until, statefulset_claims
from harness import REPO
from kube import Kube, load_yaml_docs, wait_for as _wait_for

DOMAIN = "example-com"
DOMAIN_LABEL = "postwarden.dev/maildomain"
CHILD_KINDS = ["ConfigMap", "Secret", "Service", "ServiceAccount", "StatefulSet", "PodDisruptionBudget",
               "NetworkPolicy", "CronJob"]
USER_SHARDS = 16
CONVERGE_TIMEOUT = 900 if os.environ.get("KUBECONFIG") else 120
PASSWORDS = {"alice": "correct-horse-battery-staple", "bob": "tr0ub4dor-and-3"}
LEASE_DURATION_SECONDS = 15  # `postwarden run --lease-duration` default
# What the operator writes (its ClusterRole's write verbs), as apiserver_request_total names them.
OPERATOR_RESOURCES = {"configmaps", "secrets", "services", "serviceaccounts", "persistentvolumeclaims", "events",
                      "statefulsets", "poddisruptionbudgets", "networkpolicies", "cronjobs", "jobs", "certificates",
                      "dnsendpoints", "maildomains", "mailboxes"}


@pytest.fixture
def ns(cluster: Cluster, request):
    name = f"pw-{request.node.name[5:25].replace('_', '-').strip('-')}-{uuid.uuid4().hex[:5]}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kube.delete("Namespace", None, name, missing_ok=True)


@pytest.fixture
def operator(cluster: Cluster, request):
    """One running operator; everything the test started is stopped afterwards, and its logs are
    printed when the test failed."""
    identity = cluster.start_operator()
    yield identity
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    if failed:
        print(cluster.operator_logs())
    cluster.clear_faults()
    cluster.stop_all()


# ---- helpers --------------------------------------------------------------------------------------

def wait_for(what: str, fn, timeout: float = 60, interval: float = 0.2):
    """kube.wait_for that fails at once when an operator process died."""
    def check():
        for c in LIVE:
            c.assert_alive()
        return fn()
    return _wait_for(what, check, timeout=timeout, interval=interval)


def quickstart(namespace: str) -> list[dict]:
    docs = load_yaml_docs(str(REPO / "manifests" / "examples" / "quickstart.yaml"))
    for d in docs:
        d["metadata"]["namespace"] = namespace
    return docs


def apply_all(kube: Kube, docs: list[dict]) -> None:
    for d in docs:
        kube.apply(d)


def mailbox(namespace: str, name: str, local_part: str, secret: str | None = None) -> list[dict]:
    out = [{"apiVersion": "postwarden.dev/v1alpha1", "kind": "Mailbox",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"domainRef": {"name": DOMAIN}, "localPart": local_part,
                     "passwordSecretRef": {"name": secret or f"{name}-password"}}}]
    if secret is None:
        out.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-password",
                                                                      "namespace": namespace},
                    "stringData": {"password": f"pw-{name}-{uuid.uuid4().hex}"}})
    return out


def condition(obj: dict | None, type_: str) -> dict | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def is_true(obj: dict | None, type_: str) -> bool:
    c = condition(obj, type_)
    return bool(c) and c.get("status") == "True"


def children(kube: Kube, namespace: str, domain: str = DOMAIN) -> dict[tuple[str, str], dict]:
    out = {}
    for kind in CHILD_KINDS:
        for obj in kube.list(kind, namespace, labels=f"{DOMAIN_LABEL}={domain}"):
            out[(kind, obj["metadata"]["name"])] = obj
    return out


def users(kube: Kube, namespace: str, domain: str = DOMAIN) -> dict[str, str]:
    """Users database entries {address: line} over all shards."""
    out = {}
    for shard in range(USER_SHARDS):
        secret = kube.get_opt("Secret", namespace, f"{domain}-users-{shard:x}")
        for value in ((secret or {}).get("data") or {}).values():
            for line in base64.b64decode(value).decode(errors="replace").splitlines():
                address = line.split(":", 1)[0]
                if "@" in address:
                    out[address] = line
    return out


def expected_shard(address: str) -> int:
    return int(hashlib.md5(address.lower().encode()).hexdigest()[0], 16)


def statefulsets(kube: Kube, namespace: str) -> list[dict]:
    return kube.list("StatefulSet", namespace, labels=f"{DOMAIN_LABEL}={DOMAIN}")


def converge(cluster: Cluster, namespace: str) -> dict:
    """Waits until the MailDomain is Ready for its current generation (its StatefulSets' pods
    scheduled, their claims bound, the pods Ready); returns it."""
    kube = cluster.kube

    def ready():
        md = kube.get("MailDomain", namespace, DOMAIN)
        sts = statefulsets(kube, namespace)
        status = md.get("status") or {}
        return md if len(sts) >= 2 and is_true(md, "Ready") and \
            status.get("observedGeneration") == md["metadata"]["generation"] else None

    return wait_for(f"MailDomain {namespace}/{DOMAIN} Ready", ready, timeout=CONVERGE_TIMEOUT, interval=0.5)


def events_about(kube: Kube, namespace: str, name: str) -> list[dict]:
    """Events about `name`, however published: the API server serves every Event under both
    events.k8s.io/v1 and v1, so each is taken once (by uid)."""
    found: dict[str, dict] = {}
    for api_version in ("events.k8s.io/v1", "v1"):
        for ev in kube.list("Event", namespace, api_version=api_version):
            ref = ev.get("regarding") or ev.get("involvedObject") or {}
            if ref.get("name") == name:
                found.setdefault(ev["metadata"]["uid"], ev)
    return list(found.values())


def snapshot(kube: Kube, namespace: str) -> dict[tuple[str, str], dict]:
    """What the operator writes: children without the status that cluster controllers keep
    (StatefulSet replicas counts...), and the MailDomain and Mailboxes with theirs."""
    def strip(obj: dict, keep_status: bool) -> dict:
        obj = copy.deepcopy(obj)
        obj["metadata"].pop("managedFields", None)
        if not keep_status:
            obj.pop("status", None)
            obj["metadata"].pop("resourceVersion", None)
        return obj

    out = {k: strip(o, False) for k, o in children(kube, namespace).items()}
    for kind in ("MailDomain", "Mailbox"):
        for o in kube.list(kind, namespace):
            out[(kind, o["metadata"]["name"])] = strip(o, True)
    return out


def self_signed(host: str, not_before: datetime, not_after: datetime) -> dict[str, str]:
    """A kubernetes.io/tls Secret's data: an ECDSA P-256 certificate naming `host`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(key, hashes.SHA256()))
    return {
        "tls.crt": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "tls.key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode(),
    }


def event_note(ev: dict) -> str:
    return ev.get("note") or ev.get("message") or ""


def without_leases(writes: dict[str, int] | None) -> dict[str, int] | None:
    if writes is None:
        return None
    return {k: v for k, v in writes.items() if not k.startswith("Lease ")}


def earlier_test_namespaces_deleted(kube: Kube, ns: str) -> None:
    """Waits until earlier tests' namespaces are gone: write counts do not say which namespace
    they were for, and the operator keeps trying to reconcile what is being deleted (the
    namespace controller's deletes count in apiserver_request_total too)."""
    wait_for("earlier test namespaces deleted", lambda: not [
        n for n in kube.list("Namespace") if n["metadata"]["name"] != ns and n["status"].get("phase") == "Terminating"],
        timeout=CONVERGE_TIMEOUT)


# ---- scenarios ------------------------------------------------------------------------------------

def test_quickstart_creates_owned_children_and_becomes_ready(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    # Before any pod is ready (nobody plays the kubelet yet) the domain is Progressing, not Ready.
    progressing = wait_for("MailDomain Progressing", lambda: (lambda md: md if is_true(md, "Progressing") else None)(
        kube.get("MailDomain", ns, DOMAIN)), timeout=CONVERGE_TIMEOUT)
    assert condition(progressing, "Ready")["status"] == "False", progressing.get("status")
    md = converge(cluster, ns)
    assert not is_true(md, "Progressing"), md["status"]

    kids = children(kube, ns)
    names = {f"{k} {n}" for k, n in kids}
    for expected in ["StatefulSet example-com-mta", "StatefulSet example-com-imap", "Service example-com-mta",
                     "Service example-com-imap", "Service example-com-imap-hl", "ConfigMap example-com-mta-config",
                     "ConfigMap example-com-imap-config", "ServiceAccount example-com-mail"] + [f"Secret example-com-users-{i:x}" for i in range(USER_SHARDS)]:
        assert expected in names, f"missing child {expected}; have {sorted(names)}"
    for (kind, name), obj in kids.items():
        refs = obj["metadata"].get("ownerReferences") or []
        assert any(r["uid"] == md["metadata"]["uid"] and r["kind"] == "MailDomain" and r.get("controller")
                   for r in refs), f"{kind} {name} is not owned by the MailDomain: {refs}"
        labels = obj["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") == "postwarden", f"{kind} {name}: {labels}"
        assert labels.get("app.kubernetes.io/instance") == DOMAIN, f"{kind} {name}: {labels}"
    entries = users(kube, ns)
    assert {"alice@example.com", "bob@example.com"} <= set(entries)
    for address, line in entries.items():
        assert "$6$" in line or "$argon2id$" in line, f"{address} is not stored as a strong hash"
    assert kube.get_opt("Secret", ns, f"{DOMAIN}-users-{expected_shard('alice@example.com'):x}")
    for (kind, name), obj in kids.items():
        text = str(obj.get("data")) + str(obj.get("status"))
        for password in PASSWORDS.values():
            assert password not in text and base64.b64encode(password.encode()).decode() not in text, \
                f"a plaintext password is in {kind} {name}"
    assert md["status"].get("mailboxes") == 2


def test_quickstart_backup_schedule_becomes_an_owned_cronjob(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    md = converge(cluster, ns)
    cronjob = wait_for("backup CronJob", lambda: kube.get_opt("CronJob", ns, f"{DOMAIN}-backup"), timeout=30)
    assert cronjob["spec"]["schedule"] == "30 2 * * *"
    assert any(r["uid"] == md["metadata"]["uid"] for r in cronjob["metadata"].get("ownerReferences") or [])


def test_edit_maildomain_updates_children_and_observed_generation(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    md = converge(cluster, ns)
    before = kube.get("ConfigMap", ns, f"{DOMAIN}-mta-config")
    spec = copy.deepcopy(quickstart(ns)[0])
    spec["spec"]["mta"]["replicas"] = 3
    spec["spec"]["spam"] = {"rejectScore": 20}
    kube.apply(spec)
    generation = kube.get("MailDomain", ns, DOMAIN)["metadata"]["generation"]
    assert generation == md["metadata"]["generation"] + 1
    wait_for("MTA StatefulSet scaled to 3",
             lambda: kube.get("StatefulSet", ns, f"{DOMAIN}-mta")["spec"]["replicas"] == 3, timeout=CONVERGE_TIMEOUT)
    wait_for("MTA config changed", lambda: kube.get("ConfigMap", ns, f"{DOMAIN}-mta-config")["data"]
             != before["data"], timeout=CONVERGE_TIMEOUT)
    md = converge(cluster, ns)
    assert md["status"]["observedGeneration"] == generation
    assert all(c.get("observedGeneration", generation) == generation for c in md["status"]["conditions"])


def test_mailbox_add_remove_changes_users_not_statefulsets(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    templates = {s["metadata"]["name"]: s["spec"]["template"] for s in statefulsets(kube, ns)}
    shards_before = {s: (kube.get_opt("Secret", ns, f"{DOMAIN}-users-{s:x}") or {}).get("data")
                     for s in range(USER_SHARDS)}

    apply_all(kube, mailbox(ns, "carol", "carol"))
    wait_for("carol in the users database", lambda: "carol@example.com" in users(kube, ns), timeout=CONVERGE_TIMEOUT)
    changed = [s for s in range(USER_SHARDS)
               if (kube.get_opt("Secret", ns, f"{DOMAIN}-users-{s:x}") or {}).get("data") != shards_before[s]]
    assert changed == [expected_shard("carol@example.com")], f"shards changed: {changed}"
    wait_for("mailbox count 3", lambda: (kube.get("MailDomain", ns, DOMAIN).get("status") or {})
             .get("mailboxes") == 3, timeout=CONVERGE_TIMEOUT)

    kube.delete("Mailbox", ns, "bob")
    wait_for("bob gone from the users database", lambda: "bob@example.com" not in users(kube, ns),
             timeout=CONVERGE_TIMEOUT)
    assert {"alice@example.com", "carol@example.com"} <= set(users(kube, ns))
    converge(cluster, ns)
    after = {s["metadata"]["name"]: s["spec"]["template"] for s in statefulsets(kube, ns)}
    assert after == templates, "a mailbox change must not roll the pods"


def test_delete_maildomain_collects_children_and_keeps_volumes(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    claims = [c for s in statefulsets(kube, ns) for c in statefulset_claims(kube, ns, s, timeout=CONVERGE_TIMEOUT)]
    assert claims, "the StatefulSets have no volumeClaimTemplates"
    kube.delete("MailDomain", ns, DOMAIN)
    wait_for("children collected", lambda: not children(kube, ns), timeout=CONVERGE_TIMEOUT)
    wait_for("MailDomain gone", lambda: kube.get_opt("MailDomain", ns, DOMAIN) is None, timeout=CONVERGE_TIMEOUT)
    for claim in claims:
        assert kube.get_opt("PersistentVolumeClaim", ns, claim), f"PVC {claim} was deleted with the domain"
    assert kube.get_opt("Mailbox", ns, "alice"), "Mailboxes are the user's objects, not children"


def test_bad_mailboxes_get_conditions_and_events_while_others_reconcile(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    apply_all(kube, mailbox(ns, "mallory", "mallory", secret="does-not-exist"))
    apply_all(kube, mailbox(ns, "alice-again", "alice"))
    apply_all(kube, mailbox(ns, "dave", "dave"))

    def reason(name: str) -> str | None:
        mb = kube.get("Mailbox", ns, name)
        ready = condition(mb, "Ready")
        return ready["reason"] if ready and ready["status"] == "False" else None

    wait_for("mallory PasswordSecretMissing", lambda: reason("mallory") == "PasswordSecretMissing",
             timeout=CONVERGE_TIMEOUT)
    wait_for("address conflict reported", lambda: "AddressConflict" in (reason("alice-again"), reason("alice")),
             timeout=CONVERGE_TIMEOUT)
    wait_for("an Event about mallory", lambda: events_about(kube, ns, "mallory"), timeout=CONVERGE_TIMEOUT)
    conflicted = "alice-again" if reason("alice-again") == "AddressConflict" else "alice"
    wait_for(f"an Event about {conflicted}", lambda: events_about(kube, ns, conflicted), timeout=CONVERGE_TIMEOUT)
    wait_for("dave served despite the bad mailboxes", lambda: "dave@example.com" in users(kube, ns),
             timeout=CONVERGE_TIMEOUT)
    entries = users(kube, ns)
    assert "mallory@example.com" not in entries
    assert "alice@example.com" in entries and "bob@example.com" in entries
    md = kube.get("MailDomain", ns, DOMAIN)
    assert is_true(md, "Ready") or is_true(md, "Degraded"), md.get("status")


def test_operator_killed_mid_reconcile_converges_after_restart(cluster, ns, operator):
    kube = cluster.kube
    # Hold the operator's StatefulSet writes so the kill lands after the config, before the workloads.
    cluster.stall_writes("statefulsets")
    apply_all(kube, quickstart(ns))
    wait_for("first children written", lambda: kube.get_opt("ConfigMap", ns, f"{DOMAIN}-mta-config"),
             timeout=CONVERGE_TIMEOUT)
    if cluster.local:
        time.sleep(1)
        assert not statefulsets(kube, ns), "the StatefulSet writes were not held back"
    cluster.stop_operator(operator, hard=True)
    cluster.clear_faults()
    cluster.start_operator()
    md = converge(cluster, ns)
    kids = children(kube, ns)
    assert ("StatefulSet", f"{DOMAIN}-mta") in kids and ("StatefulSet", f"{DOMAIN}-imap") in kids
    assert all(any(r["uid"] == md["metadata"]["uid"] for r in o["metadata"].get("ownerReferences") or [])
               for o in kids.values())


def test_steady_state_quiet(cluster, ns, operator):
    """Two idle resyncs write nothing (Lease renewals of leader election aside)."""
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    earlier_test_namespaces_deleted(kube, ns)
    time.sleep(2)  # let the reconcile that Ready triggered finish
    cluster.reset_writes()
    before_objects = snapshot(kube, ns)
    before_api = cluster.api_writes()
    before = cluster.reconciles(operator)
    sleep_until(time.monotonic() + 2 * RESYNC_SECONDS + 3)
    after = cluster.reconciles(operator)
    after_api = cluster.api_writes()
    if before is not None:
        assert after - before >= 2, f"expected two resyncs in the window, saw {after - before} reconciles"
    if before_api is not None:
        # The API server's own count of writes to everything the operator writes (its Lease aside).
        grown = {r: after_api[r] - before_api.get(r, 0) for r in after_api
                 if r.split("/")[0] in OPERATOR_RESOURCES and after_api[r] != before_api.get(r, 0)}
        assert not grown, f"apiserver_request_total grew during two idle resyncs: {grown}"
    assert without_leases(cluster.operator_writes()) in ({}, None), \
        f"writes during two idle resyncs: {cluster.operator_writes()}"
    after_objects = snapshot(kube, ns)
    changed = sorted(f"{k} {n}" for (k, n) in set(before_objects) | set(after_objects)
                     if before_objects.get((k, n)) != after_objects.get((k, n)))
    assert not changed, f"objects changed during idle resyncs: {changed}"


def test_leader_election_one_leads_and_the_other_takes_over(cluster, ns, operator):
    kube = cluster.kube
    first = wait_for("a leader", cluster.lease_holder, timeout=60)
    assert first == operator
    second = cluster.start_operator()
    time.sleep(3)
    assert cluster.lease_holder() == first, "the second operator took a lease that was held"
    cluster.reset_writes()
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    if cluster.local:
        assert cluster.operator_writes(second) == {}, f"the standby wrote: {cluster.operator_writes(second)}"
        assert without_leases(cluster.operator_writes(first)), "the leader wrote nothing"
    stopped = time.monotonic()
    cluster.stop_operator(first)  # SIGTERM: the leader gives the Lease up as it exits
    # On a real cluster the Deployment also starts a replacement pod, which may win the Lease too.
    wait_for("the standby takes over", lambda: cluster.lease_holder() not in (None, first) and (
        not cluster.local or cluster.lease_holder() == second), timeout=60, interval=0.05)
    handover = time.monotonic() - stopped
    print(f"leader hand-over after SIGTERM: {handover:.2f} s (Lease duration {LEASE_DURATION_SECONDS} s)")
    if cluster.local:
        # A released Lease is taken on the standby's next attempt; an unreleased one only expires.
        assert handover < LEASE_DURATION_SECONDS, f"hand-over took {handover:.1f} s: the Lease was not released"
    spec = copy.deepcopy(quickstart(ns)[0])
    spec["spec"]["imap"]["replicas"] = 1
    kube.apply(spec)
    wait_for("the new leader reconciles",
             lambda: kube.get("StatefulSet", ns, f"{DOMAIN}-imap")["spec"]["replicas"] == 1, timeout=CONVERGE_TIMEOUT)


def test_user_certificate_missing_expiring_and_replaced_is_reported(cluster, ns, operator):
    """tls.secretName: the operator cannot renew the certificate, so it says what it sees:
    CertificateReady with a reason, a Warning Event before expiry, and a Normal one once fixed."""
    kube = cluster.kube
    docs = quickstart(ns)
    assert docs[0]["kind"] == "MailDomain"
    docs[0]["spec"]["tls"] = {"secretName": "user-tls"}
    apply_all(kube, docs)

    def certificate_ready() -> dict:
        return condition(kube.get("MailDomain", ns, DOMAIN), "CertificateReady") or {}

    def events(reason: str) -> list[dict]:
        return [e for e in events_about(kube, ns, DOMAIN) if e.get("reason") == reason]

    def secret(data: dict[str, str]) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "user-tls", "namespace": ns}, "stringData": data}

    wait_for("CertificateReady False (SecretMissing)",
             lambda: certificate_ready().get("reason") == "SecretMissing", timeout=CONVERGE_TIMEOUT)
    assert certificate_ready()["status"] == "False"
    missing = wait_for("a CertificateMissing Event", lambda: events("CertificateMissing"),
                       timeout=CONVERGE_TIMEOUT)[0]
    assert missing["type"] == "Warning" and "user-tls" in event_note(missing), missing

    # 80 of its 90 days gone, nobody renewed it: still served, but a Warning.
    now = datetime.now(timezone.utc).replace(microsecond=0)
    expiring = now + timedelta(days=10)
    kube.apply(secret(self_signed("mail.example.com", now - timedelta(days=80), expiring)))
    wait_for("CertificateReady True (ExpiringSoon)",
             lambda: certificate_ready().get("reason") == "ExpiringSoon", timeout=CONVERGE_TIMEOUT)
    assert certificate_ready()["status"] == "True"
    warning = wait_for("a CertificateExpiringSoon Event", lambda: events("CertificateExpiringSoon"),
                       timeout=CONVERGE_TIMEOUT)[0]
    assert warning["type"] == "Warning", warning
    assert "has not been renewed" in event_note(warning) and "left)" in event_note(warning), warning
    status = kube.get("MailDomain", ns, DOMAIN)["status"]["certificate"]
    assert status["secretName"] == "user-tls"
    assert status["notAfter"] == expiring.strftime("%Y-%m-%dT%H:%M:%SZ"), status

    # Replaced with a fresh one: valid again, said once.
    kube.apply(secret(self_signed("mail.example.com", now - timedelta(hours=1), now + timedelta(days=90))))
    wait_for("CertificateReady True (Valid)",
             lambda: certificate_ready().get("reason") == "Valid", timeout=CONVERGE_TIMEOUT)
    fixed = wait_for("a CertificateValid Event", lambda: events("CertificateValid"), timeout=CONVERGE_TIMEOUT)
    assert [e["type"] for e in fixed] == ["Normal"], [(e.get("eventTime"), e.get("reportingInstance"),
                                                        event_note(e), e.get("series")) for e in fixed]
    assert len(events("CertificateExpiringSoon")) == 1 and len(events("CertificateMissing")) == 1


def test_bigger_volumes_grow_the_claims_and_smaller_ones_are_refused(cluster, ns, operator):
    kube = cluster.kube
    apply_all(kube, quickstart(ns))
    converge(cluster, ns)
    imap = kube.get("StatefulSet", ns, f"{DOMAIN}-imap")
    claims = statefulset_claims(kube, ns, imap, timeout=CONVERGE_TIMEOUT)
    assert claims == [f"mail-{DOMAIN}-imap-0", f"mail-{DOMAIN}-imap-1"]

    def size(obj: dict) -> str:
        return obj["spec"]["resources"]["requests"]["storage"]

    def template_size() -> str | None:
        sts = kube.get_opt("StatefulSet", ns, f"{DOMAIN}-imap")
        return size(sts["spec"]["volumeClaimTemplates"][0]) if sts else None

    def domain_with(storage: str, mta_replicas: int = 2) -> dict:
        md = copy.deepcopy(quickstart(ns)[0])
        md["spec"]["imap"]["storage"] = {"size": storage}
        md["spec"]["mta"]["replicas"] = mta_replicas
        return md

    # Bigger: the claims grow, the StatefulSet comes back with the new template.
    kube.apply(domain_with("20Gi"))
    wait_for("claims grown to 20Gi",
             lambda: all(size(kube.get("PersistentVolumeClaim", ns, c)) == "20Gi" for c in claims),
             timeout=CONVERGE_TIMEOUT)
    wait_for("IMAP StatefulSet recreated with 20Gi claims", lambda: template_size() == "20Gi",
             timeout=CONVERGE_TIMEOUT)
    assert kube.get("StatefulSet", ns, f"{DOMAIN}-imap")["metadata"]["uid"] != imap["metadata"]["uid"]
    growing = [e for e in events_about(kube, ns, DOMAIN) if e.get("reason") == "VolumesGrowing"]
    assert growing and all(c in event_note(growing[0]) for c in claims), growing
    md = converge(cluster, ns)
    assert not is_true(md, "Degraded"), md["status"]

    # Smaller: refused and said so, while the rest of the same edit is applied.
    kube.apply(domain_with("5Gi", mta_replicas=3))
    wait_for("MTA scaled to 3 despite the refused volume change",
             lambda: kube.get("StatefulSet", ns, f"{DOMAIN}-mta")["spec"]["replicas"] == 3,
             timeout=CONVERGE_TIMEOUT)
    degraded = wait_for("Degraded (StorageChangeRefused)",
                        lambda: (c := condition(kube.get("MailDomain", ns, DOMAIN), "Degraded"))
                        and c["status"] == "True" and c["reason"] == "StorageChangeRefused" and c,
                        timeout=CONVERGE_TIMEOUT)
    assert "cannot shrink from 20Gi to 5Gi" in degraded["message"], degraded
    assert template_size() == "20Gi"
    assert all(size(kube.get("PersistentVolumeClaim", ns, c)) == "20Gi" for c in claims)


# Enough of cert-manager's Certificate CRD for the API to serve the kind (no controller runs).
CERT_MANAGER_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
    "metadata": {"name": "certificates.cert-manager.io"},
    "spec": {
        "group": "cert-manager.io", "scope": "Namespaced",
        "names": {"kind": "Certificate", "listKind": "CertificateList", "plural": "certificates",
                  "singular": "certificate"},
        "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
                      "schema": {"openAPIV3Schema": {"type": "object",
                                                     "x-kubernetes-preserve-unknown-fields": True}}}],
    },
}


def test_certificate_of_a_former_cert_manager_spec_is_pruned(cluster, ns, operator):
    """Back from cert-manager to the internal CA: the Certificate goes, or cert-manager would
    keep overwriting the Secret the operator now fills."""
    kube = cluster.kube
    if kube.get_opt("CustomResourceDefinition", None, CERT_MANAGER_CRD["metadata"]["name"]) is None:
        kube.apply(CERT_MANAGER_CRD)
    # Optional CRDs are looked up when the operator starts.
    cluster.stop_operator(operator)
    cluster.start_operator()
    docs = quickstart(ns)
    domain = docs[0]
    domain["spec"]["tls"] = {"certManager": {"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}}}
    apply_all(kube, docs)
    name = f"{DOMAIN}-tls"
    cert = wait_for("the cert-manager Certificate", lambda: kube.get_opt("Certificate", ns, name),
                    timeout=CONVERGE_TIMEOUT)
    assert cert["spec"]["secretName"] == name
    assert cert["spec"]["issuerRef"]["kind"] == "ClusterIssuer"
    wait_for("CertificateReady waiting for cert-manager",
             lambda: (condition(kube.get("MailDomain", ns, DOMAIN), "CertificateReady") or {}).get("reason")
             == "WaitingForCertManager", timeout=CONVERGE_TIMEOUT)

    # Dropped from the manifest and applied server-side, as Flux or Argo CD would.
    del domain["spec"]["tls"]
    kube.apply(domain)
    assert "tls" not in kube.get("MailDomain", ns, DOMAIN)["spec"] or \
        "certManager" not in kube.get("MailDomain", ns, DOMAIN)["spec"]["tls"]
    wait_for("the Certificate pruned", lambda: kube.get_opt("Certificate", ns, name) is None,
             timeout=CONVERGE_TIMEOUT)
    wait_for("CertificateReady from the internal CA",
             lambda: (condition(kube.get("MailDomain", ns, DOMAIN), "CertificateReady") or {}).get("reason")
             == "Issued", timeout=CONVERGE_TIMEOUT)


def test_server_side_apply_drops_the_backup_section(cluster, ns, operator):
    """A GitOps tool applying a manifest without spec.backup removes it; nothing the API
    server defaulted below it stays behind (which would be refused for lacking a schedule)."""
    kube = cluster.kube
    docs = quickstart(ns)
    apply_all(kube, docs)
    wait_for("the backup CronJob", lambda: kube.get_opt("CronJob", ns, f"{DOMAIN}-backup"),
             timeout=CONVERGE_TIMEOUT)
    domain = docs[0]
    del domain["spec"]["backup"]
    kube.apply(domain)
    assert "backup" not in kube.get("MailDomain", ns, DOMAIN)["spec"]
    wait_for("the backup CronJob pruned", lambda: kube.get_opt("CronJob", ns, f"{DOMAIN}-backup") is None,
             timeout=CONVERGE_TIMEOUT)


def test_claims_the_storage_class_cannot_grow_are_reported_and_the_rest_applies(cluster, ns, operator):
    """The claims' StorageClass lacks allowVolumeExpansion: the API server refuses the growth,
    the operator says so, and the rest of the same edit applies."""
    kube = cluster.kube
    fixed = os.environ.get("POSTWARDEN_E2E_FIXED_STORAGECLASS", "fixed")
    if kube.get_opt("StorageClass", None, fixed) is None:
        pytest.skip(f"the cluster has no StorageClass {fixed!r} without volume expansion")
    docs = quickstart(ns)
    docs[0]["spec"]["imap"]["storage"] = {"size": "10Gi", "storageClassName": fixed}
    apply_all(kube, docs)
    converge(cluster, ns)
    imap = kube.get("StatefulSet", ns, f"{DOMAIN}-imap")
    statefulset_claims(kube, ns, imap, timeout=CONVERGE_TIMEOUT)
    domain = copy.deepcopy(docs[0])
    domain["spec"]["imap"]["storage"]["size"] = "20Gi"
    domain["spec"]["mta"]["replicas"] = 3
    kube.apply(domain)
    degraded = wait_for("Degraded (StorageChangeRefused)",
                        lambda: (c := condition(kube.get("MailDomain", ns, DOMAIN), "Degraded"))
                        and c["status"] == "True" and c["reason"] == "StorageChangeRefused" and c,
                        timeout=CONVERGE_TIMEOUT)
    assert "cannot grow to 20Gi" in degraded["message"] and "must support resize" in degraded["message"], degraded
    wait_for("MTA scaled to 3 despite it",
             lambda: kube.get("StatefulSet", ns, f"{DOMAIN}-mta")["spec"]["replicas"] == 3,
             timeout=CONVERGE_TIMEOUT)
    kept = kube.get("StatefulSet", ns, f"{DOMAIN}-imap")
    assert kept["metadata"]["uid"] == imap["metadata"]["uid"], "not recreated"
    assert kept["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_upstream_availability_from_the_continuity_agents_reaches_the_status(cluster, ns, operator, tmp_path):
    """Continuity: the operator reads each MTA pod's continuity agent (the real agent, on the pod's
    address) and reports the upstream as the UpstreamAvailable condition, with an Event when an
    outage starts and one when it ends, and nothing written while nothing changes."""
    if not cluster.local:
        pytest.skip("the agents run on this machine, at the simulated pods' addresses")
    import json
    import subprocess

    from harness import operator_binary
    from smtp_standin import DEFER, Upstream

    kube = cluster.kube
    docs = quickstart(ns)
    md = next(d for d in docs if d["kind"] == "MailDomain")
    md["spec"]["continuity"] = {"upstream": {"hosts": ["example-com.mail.protection.outlook.com"]},
                                "detection": {"intervalSeconds": 2, "failureThreshold": 1}}
    apply_all(kube, docs)
    converge(cluster, ns)
    pods = sorted(p["metadata"]["name"] for p in kube.list("Pod", ns, labels=f"{DOMAIN_LABEL}={DOMAIN},"
                                                                          "app.kubernetes.io/component=mta"))
    assert pods == [f"{DOMAIN}-mta-0", f"{DOMAIN}-mta-1"], pods
    config = json.loads(kube.get("ConfigMap", ns, f"{DOMAIN}-mta-config")["data"]["continuity.json"])
    port = int(config["metricsListen"].rsplit(":", 1)[1])
    assert port == 9902

    upstream = Upstream(tmp_path)
    agents = []
    try:
        # Each pod gets a loopback address of its own (the simulated nodes run nothing), and an
        # agent from the rendered configuration listens there, probing the stand-in upstream.
        subnet = 1 + int(ns.rsplit("-", 1)[1], 16) % 250
        for i, pod in enumerate(pods):
            ip = f"127.77.{subnet}.{10 + i}"
            kube.merge_patch("Pod", ns, pod, {"status": {"podIP": ip, "podIPs": [{"ip": ip}]}}, subresource="status")
            state = tmp_path / pod
            state.mkdir()
            for key in ("continuity-deliver.regexp", "continuity-hold.regexp"):
                (state / key).write_text(kube.get("ConfigMap", ns, f"{DOMAIN}-mta-config")["data"][key])
            c = dict(config, metricsListen=f"{ip}:{port}", upstreams=[f"127.0.0.1:{upstream.port}"],
                     verifyTls=False, postfixConfig=str(state), stateDir=str(state),
                     deliverMap=str(state / "continuity-deliver.regexp"), holdMap=str(state / "continuity-hold.regexp"))
            (state / "continuity.json").write_text(json.dumps(c))
            log = open(state / "agent.log", "wb")
            agents.append(subprocess.Popen([str(operator_binary()), "continuity", "--config", str(state / "continuity.json")],
                                           stdout=log, stderr=subprocess.STDOUT))

        seen: list = []

        def upstream_condition(status: str, reason: str, *fragments: str):
            def check():
                c = condition(kube.get("MailDomain", ns, DOMAIN), "UpstreamAvailable")
                seen.append(c)
                return c if c and c["status"] == status and c["reason"] == reason and \
                    all(f in c["message"] for f in fragments) else None
            try:
                return wait_for(f"UpstreamAvailable={status} ({reason})", check, timeout=60, interval=0.5)
            except AssertionError as e:
                logs = "\n".join((tmp_path / p / "agent.log").read_text()[-2000:] for p in pods)
                raise AssertionError(f"{e}; the condition was {seen[-1] if seen else None}; agents:\n{logs}") from None

        def upstream_events() -> list[tuple[str, str, str]]:
            return sorted((e["type"], e["reason"], event_note(e)) for e in events_about(kube, ns, DOMAIN)
                          if e["reason"] in ("UpstreamUnavailable", "UpstreamAvailable"))

        up = upstream_condition("True", "UpstreamAnswering", "250 2.1.5 Recipient OK")
        assert upstream_events() == [], "a healthy start records no Event"

        # Steady state: the agents keep answering the same; the operator writes nothing.
        earlier_test_namespaces_deleted(kube, ns)
        time.sleep(2)
        cluster.reset_writes()
        sleep_until(time.monotonic() + 3 * RESYNC_SECONDS + 1)
        assert without_leases(cluster.operator_writes()) in ({}, None), \
            f"writes while the upstream kept answering: {cluster.operator_writes()}"
        assert condition(kube.get("MailDomain", ns, DOMAIN), "UpstreamAvailable") == up

        # The provider answers 451 4.3.2: unavailable, seen by both pods, one Warning.
        upstream.deferring = True
        started = time.monotonic()
        down = upstream_condition("False", "UpstreamUnavailable", DEFER, "seen by " + ", ".join(pods))
        print(f"outage in the status after {time.monotonic() - started:.1f} s: {down['message']}")
        warnings = wait_for("the outage Event", lambda: [e for e in upstream_events() if e[0] == "Warning"] or None)
        assert len(warnings) == 1 and warnings[0][1] == "UpstreamUnavailable" and DEFER in warnings[0][2], warnings
        # The provider stops listening: still the same outage (no second Event), the newest reply.
        upstream.close()
        upstream_condition("False", "UpstreamUnavailable", "Connection refused")
        time.sleep(2 * RESYNC_SECONDS)
        assert [e for e in upstream_events() if e[0] == "Warning"] == warnings
        assert condition(kube.get("MailDomain", ns, DOMAIN), "UpstreamAvailable")["lastTransitionTime"] == \
            down["lastTransitionTime"]

        # Back (a new listener on the same port): available, one Normal Event.
        upstream.deferring = False
        upstream.listen()
        started = time.monotonic()
        back = upstream_condition("True", "UpstreamAnswering", "250 2.1.5 Recipient OK")
        print(f"recovery in the status after {time.monotonic() - started:.1f} s: {back['message']}")
        normal = wait_for("the recovery Event", lambda: [e for e in upstream_events() if e[0] == "Normal"] or None)
        assert [e[1] for e in normal] == ["UpstreamAvailable"], normal

        # No agent answers: Unknown, with why.
        for a in agents:
            a.terminate()
            a.wait(10)
        upstream_condition("Unknown", "AgentsUnreachable", "no continuity agent answered", "Connection refused")
        for a in agents:
            assert a.returncode == 0, (tmp_path / pods[0] / "agent.log").read_text()
    finally:
        for a in agents:
            if a.poll() is None:
                a.kill()
        upstream.close()
