"""The emulator over HTTP, as kube clients and kubectl see it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest
import requests

from harness import EmulatorProcess
from kube import ApiStatusError, Kube, wait_for


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    emu = EmulatorProcess(tmp_path_factory.mktemp("emulator"), users=["tests", "kubectl"], bookmark_interval=0.5)
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def kube(emulator) -> Kube:
    k = Kube.from_kubeconfig(str(emulator.kubeconfig), "tests")
    k.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mail"}})
    return k


def configmap(name: str, **data) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "mail"},
            "data": data}


def test_discovery_lists_the_groups_an_operator_uses(emulator):
    api = requests.get(f"{emulator.url}/api").json()
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    core = requests.get(f"{emulator.url}/api/v1").json()
    assert core["groupVersion"] == "v1"
    assert {"configmaps", "secrets", "services", "persistentvolumeclaims", "events"} <= \
        {r["name"] for r in core["resources"]}
    groups = {g["name"]: g for g in requests.get(f"{emulator.url}/apis").json()["groups"]}
    for group in ("apps", "policy", "networking.k8s.io", "batch", "coordination.k8s.io", "events.k8s.io",
                  "apiextensions.k8s.io", "postwarden.dev"):
        assert group in groups, group
    assert groups["postwarden.dev"]["preferredVersion"]["groupVersion"] == "postwarden.dev/v1alpha1"
    crs = requests.get(f"{emulator.url}/apis/postwarden.dev/v1alpha1").json()
    names = {r["name"]: r for r in crs["resources"]}
    assert names["maildomains"]["kind"] == "MailDomain" and names["maildomains"]["namespaced"]
    assert "maildomains/status" in names
    assert requests.get(f"{emulator.url}/apis/nothing.example/v1").status_code == 404


def test_errors_carry_kube_status_bodies(kube):
    with pytest.raises(ApiStatusError) as e:
        kube.get("ConfigMap", "mail", "missing")
    assert e.value.code == 404 and e.value.body["reason"] == "NotFound" and e.value.body["kind"] == "Status"
    assert kube.get_opt("ConfigMap", "mail", "missing") is None
    kube.create(configmap("dup"))
    with pytest.raises(ApiStatusError) as e:
        kube.create(configmap("dup"))
    assert (e.value.code, e.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiStatusError) as e:
        kube.create(configmap("Bad_Name"))
    assert (e.value.code, e.value.reason) == (422, "Invalid")


def test_oversize_bodies_are_refused(kube):
    with pytest.raises(ApiStatusError) as e:
        kube.create(configmap("huge", blob="x" * (3 << 20)))
    assert e.value.code == 413
    with pytest.raises(ApiStatusError) as e:
        kube.create(configmap("big", blob="x" * (1100 << 10)))
    assert (e.value.code, e.value.reason) == (422, "Invalid")


def _watch(emulator, path: str, params: dict, out: list, stop: threading.Event) -> threading.Thread:
    def run():
        with requests.get(f"{emulator.url}{path}", params={"watch": "true", **params}, stream=True,
                          headers={"Authorization": "Bearer tests"}, timeout=30) as r:
            for line in r.iter_lines():
                if line:
                    out.append(json.loads(line))
                if stop.is_set():
                    return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_watch_streams_changes_after_a_resource_version_with_bookmarks(emulator, kube):
    kube.create(configmap("w-before"))
    rv = kube.request("GET", "/api/v1/namespaces/mail/configmaps")["metadata"]["resourceVersion"]
    events: list = []
    stop = threading.Event()
    _watch(emulator, "/api/v1/namespaces/mail/configmaps",
           {"resourceVersion": rv, "allowWatchBookmarks": "true", "labelSelector": "w=1", "timeoutSeconds": "20"},
           events, stop)
    obj = configmap("w-after", a="1")
    obj["metadata"]["labels"] = {"w": "1"}
    kube.create(obj)
    kube.merge_patch("ConfigMap", "mail", "w-after", {"data": {"a": "2"}})
    kube.merge_patch("ConfigMap", "mail", "w-after", {"data": {"a": "2"}})  # no-op: no event
    kube.delete("ConfigMap", "mail", "w-after")
    wait_for("DELETED and a bookmark", lambda: any(e["type"] == "DELETED" for e in events) and any(
        e["type"] == "BOOKMARK" for e in events))
    stop.set()
    changes = [(e["type"], e["object"]["metadata"]["name"], e["object"]["data"]["a"])
               for e in events if e["type"] != "BOOKMARK"]
    assert changes == [("ADDED", "w-after", "1"), ("MODIFIED", "w-after", "2"), ("DELETED", "w-after", "2")]
    bookmark = next(e for e in events if e["type"] == "BOOKMARK")
    assert int(bookmark["object"]["metadata"]["resourceVersion"]) >= int(events[-2]["object"]["metadata"]
                                                                         ["resourceVersion"])


def test_watch_ends_at_its_timeout(emulator, kube):
    started = time.monotonic()
    r = requests.get(f"{emulator.url}/api/v1/namespaces/mail/configmaps",
                     params={"watch": "true", "timeoutSeconds": "1", "resourceVersion": "0"}, timeout=10)
    assert r.status_code == 200 and time.monotonic() - started < 5
    assert all(json.loads(line)["type"] == "ADDED" for line in r.text.splitlines() if line)


def test_streaming_list_ends_initial_events_with_a_bookmark(emulator, kube):
    kube.create(configmap("s1"))
    r = requests.get(f"{emulator.url}/api/v1/namespaces/mail/configmaps",
                     params={"watch": "true", "sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                             "allowWatchBookmarks": "true", "timeoutSeconds": "1"}, timeout=10)
    events = [json.loads(line) for line in r.text.splitlines() if line]
    end = next(i for i, e in enumerate(events) if e["type"] == "BOOKMARK")
    assert events[end]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert "s1" in {e["object"]["metadata"]["name"] for e in events[:end]}


def test_writes_are_counted_per_kind_verb_and_user(emulator, kube):
    emulator.reset()
    kube.create(configmap("counted"))
    kube.apply(configmap("counted", k="v"))
    kube.apply(configmap("counted", k="v"))
    kube.merge_patch("ConfigMap", "mail", "counted", {"data": {"k": "v"}})
    kube.delete("ConfigMap", "mail", "counted")
    report = emulator.writes()
    rows = {(r["kind"], r["verb"], r["user"]): r["count"] for r in report["writes"]}
    assert rows == {("ConfigMap", "create", "tests"): 1, ("ConfigMap", "apply", "tests"): 2,
                    ("ConfigMap", "patch", "tests"): 1, ("ConfigMap", "delete", "tests"): 1}
    changes = {(c["kind"], c["type"]): c["count"] for c in report["changes"] if c["user"] == "tests"}
    assert changes == {("ConfigMap", "ADDED"): 1, ("ConfigMap", "MODIFIED"): 1, ("ConfigMap", "DELETED"): 1}
    emulator.reset()
    assert emulator.writes()["total"] == 0


def test_injected_faults(emulator, kube):
    emulator.fault(method="POST", path="/configmaps$", status=500, times=1)
    with pytest.raises(ApiStatusError) as e:
        kube.create(configmap("faulted"))
    assert e.value.code == 500
    kube.create(configmap("faulted"))


def test_garbage_collection_over_http(kube):
    owner = kube.create({"apiVersion": "postwarden.dev/v1alpha1", "kind": "MailDomain",
                         "metadata": {"name": "gc-owner", "namespace": "mail"}, "spec": {"domain": "gc.example"}})
    child = configmap("gc-child")
    child["metadata"]["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": "MailDomain",
                                             "name": "gc-owner", "uid": owner["metadata"]["uid"],
                                             "controller": True}]
    kube.create(child)
    kube.create(configmap("gc-unowned"))
    kube.delete("MailDomain", "mail", "gc-owner")
    wait_for("dependent collected", lambda: kube.get_opt("ConfigMap", "mail", "gc-child") is None, timeout=10)
    assert kube.get_opt("ConfigMap", "mail", "gc-unowned")


@pytest.fixture(scope="module")
def kubectl(emulator, tmp_path_factory):
    if not shutil.which("kubectl"):
        pytest.fail("kubectl is not installed (the emulator is tested with it)")
    cache = tmp_path_factory.mktemp("kubecache")
    env = {**os.environ, "KUBECONFIG": str(emulator.kubeconfig), "KUBECACHEDIR": str(cache)}

    def run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(["kubectl", "--context", "kubectl", *args], input=stdin, env=env, capture_output=True,
                           text=True, timeout=60)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {p.stderr}")
        return p

    return run


def test_kubectl_apply_get_delete(kubectl, kube, emulator):
    quickstart = os.path.join(os.path.dirname(__file__), "..", "..", "manifests", "examples", "quickstart.yaml")
    out = kubectl("apply", "--server-side", "--validate=false", "-f", quickstart).stdout
    assert "maildomain.postwarden.dev/example-com serverside-applied" in out
    rv = emulator.writes()["resourceVersion"]
    kubectl("apply", "--server-side", "--validate=false", "-f", quickstart)
    assert emulator.writes()["resourceVersion"] == rv, "re-applying the same manifest changes nothing"
    md = json.loads(kubectl("get", "-n", "mail", "maildomain", "example-com", "-o", "json",
                             "--show-managed-fields").stdout)
    assert md["spec"]["domain"] == "example.com" and md["metadata"]["generation"] == 1
    assert md["spec"]["mta"]["storage"]["size"] == "1Gi", "CRD schema defaults are applied"
    assert md["metadata"]["managedFields"][0]["manager"] == "kubectl"
    listed = kubectl("get", "mail", "-n", "mail").stdout
    assert "mailbox.postwarden.dev/alice" in listed and "maildomain.postwarden.dev/example-com" in listed
    missing = kubectl("get", "-n", "mail", "mailbox", "nobody", check=False)
    assert missing.returncode != 0 and 'mailboxes.postwarden.dev "nobody" not found' in missing.stderr
    kubectl("delete", "-n", "mail", "mailbox", "bob")
    assert kube.get_opt("Mailbox", "mail", "bob") is None
    patched = kubectl("patch", "-n", "mail", "maildomain", "example-com", "--subresource=status", "--type=merge",
                      "-p", '{"status": {"mailboxes": 1}}', "-o", "json").stdout
    assert json.loads(patched)["status"] == {"mailboxes": 1}
    assert kube.get("MailDomain", "mail", "example-com")["metadata"]["generation"] == 1
