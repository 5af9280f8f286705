"""Semantics of the emulator's store, driven directly (no HTTP)."""

from __future__ import annotations

import base64
import json

import pytest

from kubeapi import preload
from kubeapi.errors import ApiError
from kubeapi.store import APPLY, JSON_PATCH, MERGE, STRATEGIC, Store
from harness import CRDS

U = dict(user="tests", manager="tests")


@pytest.fixture
def store() -> Store:
    s = Store()
    preload(s, str(CRDS))
    s.create(s.resource("", "v1", "namespaces"), None, {"metadata": {"name": "mail"}}, **U)
    return s


def rt(s: Store, plural: str):
    for r in s.resources.values():
        if r.plural == plural and (plural != "events" or r.group == ""):
            return r
    raise KeyError(plural)


def cm(name: str, data: dict | None = None, **meta) -> dict:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, **meta}, "data": data or {"a": "1"}}


def md(name: str = "example-com", domain: str = "example.com", **spec) -> dict:
    return {"apiVersion": "postwarden.dev/v1alpha1", "kind": "MailDomain", "metadata": {"name": name},
            "spec": {"domain": domain, **spec}}


def apply(s: Store, obj: dict, manager: str = "tests", force: bool = False, subresource: str | None = None,
          ns: str = "mail"):
    r = next(r for r in s.resources.values() if r.kind == obj["kind"] and r.api_version == obj["apiVersion"])
    return s.patch(r, ns, obj["metadata"]["name"], APPLY, json.dumps(obj).encode(), user="tests",
                   manager=manager, force=force, subresource=subresource)[0]


def events(s: Store, since: int) -> list:
    return [(e.type, e.obj["kind"], e.obj["metadata"]["name"]) for e in s.history if e.rv > since]


def test_resource_version_is_one_global_counter_and_each_change_is_one_event(store):
    start = store.rv
    a = store.create(rt(store, "configmaps"), "mail", cm("a"), **U)
    b = store.create(rt(store, "secrets"), "mail", {"metadata": {"name": "b"}, "stringData": {"k": "v"}}, **U)
    assert int(b["metadata"]["resourceVersion"]) == int(a["metadata"]["resourceVersion"]) + 1 == start + 2
    assert a["metadata"]["uid"] != b["metadata"]["uid"]
    assert a["metadata"]["creationTimestamp"].endswith("Z")
    assert base64.b64decode(b["data"]["k"]) == b"v" and "stringData" not in b
    assert events(store, start) == [("ADDED", "ConfigMap", "a"), ("ADDED", "Secret", "b")]


def test_writes_that_change_nothing_bump_nothing(store):
    r = rt(store, "configmaps")
    created = store.create(r, "mail", cm("a", labels={"x": "1"}), **U)
    rv = store.rv
    same, _ = store.replace(r, "mail", "a", cm("a", labels={"x": "1"}), **U)
    assert same["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    store.patch(r, "mail", "a", MERGE, b'{"data": {"a": "1"}}', **U)
    store.patch(r, "mail", "a", JSON_PATCH, b'[{"op": "replace", "path": "/data/a", "value": "1"}]', **U)
    store.patch(r, "mail", "a", STRATEGIC, b'{"metadata": {"labels": {"x": "1"}}}', **U)
    assert store.rv == rv and events(store, rv) == []
    for _ in range(2):
        apply(store, cm("b", {"k": "v"}), manager="op")
    rv = store.rv
    applied = apply(store, cm("b", {"k": "v"}), manager="op")
    assert store.rv == rv and applied["metadata"]["resourceVersion"] == str(rv)


def test_generation_follows_spec_only(store):
    r = rt(store, "maildomains")
    obj = store.create(r, "mail", md(), **U)
    assert obj["metadata"]["generation"] == 1
    obj, _ = store.patch(r, "mail", "example-com", MERGE, b'{"metadata": {"labels": {"a": "b"}}}', **U)
    assert obj["metadata"]["generation"] == 1
    obj, _ = store.patch(r, "mail", "example-com", MERGE, b'{"status": {"observedGeneration": 1}}',
                         subresource="status", **U)
    assert obj["metadata"]["generation"] == 1 and obj["status"] == {"observedGeneration": 1}
    obj, _ = store.patch(r, "mail", "example-com", MERGE, b'{"spec": {"mta": {"replicas": 3}}}', **U)
    assert obj["metadata"]["generation"] == 2
    assert "generation" not in store.create(rt(store, "configmaps"), "mail", cm("c"), **U)["metadata"]


def test_status_subresource_is_kept_apart_from_spec(store):
    r = rt(store, "maildomains")
    created = store.create(r, "mail", {**md(), "status": {"mailboxes": 5}}, **U)
    assert "status" not in created, "create ignores status when the status subresource exists"
    store.patch(r, "mail", "example-com", MERGE, b'{"status": {"mailboxes": 2}}', subresource="status", **U)
    obj, _ = store.patch(r, "mail", "example-com", MERGE,
                         b'{"spec": {"domain": "example.org"}, "status": {"mailboxes": 9}}', **U)
    assert obj["status"] == {"mailboxes": 2} and obj["spec"]["domain"] == "example.org"
    obj, _ = store.patch(r, "mail", "example-com", MERGE,
                         b'{"spec": {"domain": "changed.example"}, "status": {"mailboxes": 3}}',
                         subresource="status", **U)
    assert obj["spec"]["domain"] == "example.org" and obj["status"] == {"mailboxes": 3}
    full = store.get(r, "mail", "example-com")
    full["status"] = {"mailboxes": 4}
    obj, _ = store.replace(r, "mail", "example-com", full, subresource="status", **U)
    assert obj["status"] == {"mailboxes": 4}


def test_server_side_apply_creates_updates_and_drops_fields_the_manager_stopped_applying(store):
    first = apply(store, cm("a", {"one": "1", "two": "2"}, labels={"l": "x"}), manager="op")
    assert first["metadata"]["managedFields"][0]["manager"] == "op"
    assert first["metadata"]["managedFields"][0]["operation"] == "Apply"
    assert first["metadata"]["managedFields"][0]["fieldsV1"]["f:data"] == {"f:one": {}, "f:two": {}}
    store.patch(rt(store, "configmaps"), "mail", "a", MERGE, b'{"data": {"other": "o"}}', user="u", manager="edit")
    second = apply(store, cm("a", {"one": "1b"}), manager="op")
    assert second["data"] == {"one": "1b", "other": "o"}, "removed: two (op's); kept: other (edit's)"
    assert "labels" not in second["metadata"]
    managers = {(e["manager"], e["operation"]) for e in second["metadata"]["managedFields"]}
    assert managers == {("op", "Apply"), ("edit", "Update")}


def test_server_side_apply_conflicts_between_managers_unless_forced(store):
    apply(store, cm("a", {"k": "mine"}), manager="op")
    with pytest.raises(ApiError) as e:
        apply(store, cm("a", {"k": "theirs"}), manager="other")
    assert e.value.code == 409 and e.value.reason == "Conflict" and '"op"' in e.value.message
    apply(store, cm("a", {"k": "mine"}), manager="other")  # same value: shared ownership, no conflict
    forced = apply(store, cm("a", {"k": "theirs"}), manager="other", force=True)
    assert forced["data"]["k"] == "theirs"
    owners = {e["manager"]: e["fieldsV1"] for e in forced["metadata"]["managedFields"]}
    assert "op" not in owners and owners["other"] == {"f:data": {"f:k": {}}}


def test_apply_requires_field_manager_and_matching_kind(store):
    r = rt(store, "configmaps")
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "a", APPLY, json.dumps(cm("a")).encode(), user="t", manager=None)
    assert e.value.code == 422
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "a", APPLY, b"apiVersion: v1\nkind: Secret\nmetadata: {name: a}\n", user="t",
                    manager="m")
    assert e.value.code == 400
    yaml_body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  k: from-yaml\n"
    obj, created = store.patch(r, "mail", "a", APPLY, yaml_body, user="t", manager="m")
    assert created and obj["data"] == {"k": "from-yaml"}


def test_patch_types_and_their_errors(store):
    r = rt(store, "configmaps")
    store.create(r, "mail", cm("a", {"x": "1"}), **U)
    obj, _ = store.patch(r, "mail", "a", JSON_PATCH, b'[{"op": "add", "path": "/data/y", "value": "2"}]', **U)
    assert obj["data"] == {"x": "1", "y": "2"}
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "a", JSON_PATCH, b'[{"op": "test", "path": "/data/x", "value": "9"}]', **U)
    assert e.value.code == 422
    obj, _ = store.patch(r, "mail", "a", MERGE, b'{"data": {"x": null}}', **U)
    assert obj["data"] == {"y": "2"}
    store.create(rt(store, "maildomains"), "mail", md(), **U)
    with pytest.raises(ApiError) as e:
        store.patch(rt(store, "maildomains"), "mail", "example-com", STRATEGIC, b'{"spec": {}}', **U)
    assert e.value.code == 415
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "missing", MERGE, b"{}", **U)
    assert (e.value.code, e.value.reason) == (404, "NotFound")
    assert e.value.status()["details"] == {"kind": "configmaps", "name": "missing"}


def test_optimistic_concurrency_on_resource_version(store):
    leases = rt(store, "leases")
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "postwarden"},
             "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15}}
    created, was_created = store.replace(leases, "mail", "postwarden", lease, **U)  # PUT creates Leases
    assert was_created
    mine = json.loads(json.dumps(created))
    theirs = json.loads(json.dumps(created))
    mine["spec"]["holderIdentity"] = "b"
    store.replace(leases, "mail", "postwarden", mine, **U)
    theirs["spec"]["holderIdentity"] = "c"
    with pytest.raises(ApiError) as e:
        store.replace(leases, "mail", "postwarden", theirs, **U)
    assert (e.value.code, e.value.reason) == (409, "Conflict")
    with pytest.raises(ApiError) as e:
        store.patch(leases, "mail", "postwarden", MERGE,
                    json.dumps({"metadata": {"resourceVersion": created["metadata"]["resourceVersion"]},
                                "spec": {"holderIdentity": "d"}}).encode(), **U)
    assert e.value.code == 409
    with pytest.raises(ApiError) as e:
        store.replace(rt(store, "configmaps"), "mail", "nope", cm("nope"), **U)
    assert e.value.code == 404, "ConfigMaps are not created by PUT"


def test_create_errors(store):
    r = rt(store, "configmaps")
    store.create(r, "mail", cm("a"), **U)
    with pytest.raises(ApiError) as e:
        store.create(r, "mail", cm("a"), **U)
    assert (e.value.code, e.value.reason) == (409, "AlreadyExists")
    with pytest.raises(ApiError) as e:
        store.create(r, "mail", cm("Not_Valid"), **U)
    assert (e.value.code, e.value.reason) == (422, "Invalid") and e.value.details["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiError) as e:
        store.create(r, "absent", cm("a"), **U)
    assert e.value.code == 404 and 'namespaces "absent" not found' in e.value.message
    with pytest.raises(ApiError) as e:
        store.create(r, "mail", cm("b", labels={"k": "x" * 64}), **U)
    assert e.value.code == 422
    generated = store.create(r, "mail", {"metadata": {"generateName": "gen-"}, "data": {}}, **U)
    assert generated["metadata"]["name"].startswith("gen-")


def test_size_limits(store):
    secrets, cms = rt(store, "secrets"), rt(store, "configmaps")
    just_fits = base64.b64encode(b"x" * ((1 << 20) - 10)).decode()
    store.create(secrets, "mail", {"metadata": {"name": "fits"}, "data": {"k": just_fits}}, **U)
    too_big = base64.b64encode(b"x" * ((1 << 20) + 1)).decode()
    with pytest.raises(ApiError) as e:
        store.create(secrets, "mail", {"metadata": {"name": "big"}, "data": {"k": too_big}}, **U)
    assert e.value.code == 422 and "1048576" in e.value.message
    with pytest.raises(ApiError) as e:
        store.create(cms, "mail", cm("big", {"a": "x" * (600 << 10), "b": "y" * (600 << 10)}), **U)
    assert e.value.code == 422
    r = rt(store, "maildomains")
    with pytest.raises(ApiError) as e:
        store.create(r, "mail", md(blob="z" * (1600 << 10)), **U)
    assert e.value.code == 413
    with pytest.raises(ApiError) as e:
        store.create(cms, "mail", cm("ann", annotations={"a": "x" * (257 << 10)}), **U)
    assert e.value.code == 422


def test_statefulset_immutable_fields(store):
    r = rt(store, "statefulsets")
    sts = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
           "spec": {"serviceName": "s", "replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}}, "spec": {"containers": []}}}}
    store.create(r, "mail", sts, **U)
    store.patch(r, "mail", "s", MERGE, b'{"spec": {"replicas": 3}}', **U)
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "s", MERGE, b'{"spec": {"serviceName": "other"}}', **U)
    assert e.value.code == 422 and "Forbidden" in e.value.message


def test_finalizers_hold_deletion_until_removed(store):
    r = rt(store, "configmaps")
    store.create(r, "mail", cm("a", finalizers=["postwarden.dev/cleanup"]), **U)
    marked = store.delete(r, "mail", "a", user="t")
    assert marked["metadata"]["deletionTimestamp"]
    assert store.get(r, "mail", "a")["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiError) as e:
        store.patch(r, "mail", "a", MERGE, b'{"metadata": {"finalizers": ["postwarden.dev/cleanup", "x/y"]}}', **U)
    assert e.value.code == 422
    rv = store.rv
    store.patch(r, "mail", "a", MERGE, b'{"metadata": {"finalizers": null}}', **U)
    with pytest.raises(ApiError):
        store.get(r, "mail", "a")
    assert [t for t, _, _ in events(store, rv)] == ["MODIFIED", "DELETED"]


def _owned(owner: dict, name: str) -> dict:
    ref = {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
           "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    return cm(name, ownerReferences=[ref])


def test_garbage_collection_of_dependents(store):
    owner = store.create(rt(store, "maildomains"), "mail", md(), **U)
    r = rt(store, "configmaps")
    store.create(r, "mail", _owned(owner, "child"), **U)
    store.create(r, "mail", _owned(_owned(owner, "x") | {"metadata": store.get(r, "mail", "child")["metadata"]},
                                   "grandchild"), **U)
    store.create(r, "mail", cm("unowned"), **U)
    store.delete(rt(store, "maildomains"), "mail", "example-com", user="t")
    assert {o["metadata"]["name"] for o in store.list(r, "mail")["items"]} >= {"child", "grandchild"}, \
        "background deletion: dependents go after the owner, in a later GC pass"
    store.gc_until_stable()
    assert [o["metadata"]["name"] for o in store.list(r, "mail")["items"]] == ["unowned"]


def test_orphan_and_foreground_propagation(store):
    mds, r = rt(store, "maildomains"), rt(store, "configmaps")
    owner = store.create(mds, "mail", md("a", "a.example"), **U)
    store.create(r, "mail", _owned(owner, "kept"), **U)
    store.delete(mds, "mail", "a", {"propagationPolicy": "Orphan"}, user="t")
    store.gc_until_stable()
    kept = store.get(r, "mail", "kept")
    assert "ownerReferences" not in kept["metadata"]
    owner = store.create(mds, "mail", md("b", "b.example"), **U)
    store.create(r, "mail", _owned(owner, "dep"), **U)
    store.delete(mds, "mail", "b", {"propagationPolicy": "Foreground"}, user="t")
    assert "foregroundDeletion" in store.get(mds, "mail", "b")["metadata"]["finalizers"]
    store.gc_until_stable()
    with pytest.raises(ApiError):
        store.get(mds, "mail", "b")
    with pytest.raises(ApiError):
        store.get(r, "mail", "dep")


def test_dependents_of_an_absent_owner_are_collected(store):
    ghost = {"apiVersion": "postwarden.dev/v1alpha1", "kind": "MailDomain",
             "metadata": {"name": "gone", "uid": "00000000-0000-0000-0000-000000000000"}}
    store.create(rt(store, "configmaps"), "mail", _owned(ghost, "stray"), **U)
    store.gc_until_stable()
    with pytest.raises(ApiError):
        store.get(rt(store, "configmaps"), "mail", "stray")


def test_list_selectors_and_pagination(store):
    r = rt(store, "configmaps")
    store.create(rt(store, "namespaces"), None, {"metadata": {"name": "other"}}, **U)
    for i in range(7):
        store.create(r, "mail", cm(f"c{i}", labels={"app": "x" if i % 2 else "y", "i": str(i)}), **U)
    store.create(r, "other", cm("elsewhere", labels={"app": "x"}), **U)
    names = lambda items: [o["metadata"]["name"] for o in items]  # noqa: E731
    assert names(store.list(r, "mail", label_selector_expr="app=x")["items"]) == ["c1", "c3", "c5"]
    assert names(store.list(r, None, label_selector_expr="app=x")["items"]) == ["c1", "c3", "c5", "elsewhere"]
    assert names(store.list(r, "mail", label_selector_expr="app!=x,i in (0,2)")["items"]) == ["c0", "c2"]
    assert names(store.list(r, "mail", label_selector_expr="i notin (0,1,2,3,4,5),app")["items"]) == ["c6"]
    assert names(store.list(r, "mail", field_selector_expr="metadata.name=c4")["items"]) == ["c4"]
    with pytest.raises(ApiError) as e:
        store.list(r, "mail", field_selector_expr="data.a=1")
    assert e.value.code == 400
    page = store.list(r, "mail", limit=3)
    seen = names(page["items"])
    while page["metadata"].get("continue"):
        page = store.list(r, "mail", limit=3, continue_token=page["metadata"]["continue"])
        seen += names(page["items"])
    assert seen == [f"c{i}" for i in range(7)]


def test_watch_from_resource_version_with_selectors(store):
    r = rt(store, "configmaps")
    store.create(r, "mail", cm("before", labels={"app": "x"}), **U)
    since = store.list(r, "mail")["metadata"]["resourceVersion"]
    store.create(r, "mail", cm("after", labels={"app": "x"}), **U)
    store.create(r, "mail", cm("unlabelled"), **U)
    live: list = []
    backlog, unsubscribe = store.watch(r, "mail", live.append, resource_version=since, label_selector_expr="app=x")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in backlog] == [("ADDED", "after")]
    store.patch(r, "mail", "unlabelled", MERGE, b'{"metadata": {"labels": {"app": "x"}}}', **U)
    store.patch(r, "mail", "after", MERGE, b'{"metadata": {"labels": {"app": "y"}}}', **U)
    store.patch(r, "mail", "before", MERGE, b'{"data": {"a": "2"}}', **U)
    store.delete(r, "mail", "before", user="t")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in live] == [
        ("ADDED", "unlabelled"), ("DELETED", "after"), ("MODIFIED", "before"), ("DELETED", "before")]
    unsubscribe()
    full, _ = store.watch(r, None, live.append, resource_version="0")
    assert {e["object"]["metadata"]["name"] for e in full} == {"after", "unlabelled"}


def test_watch_from_a_compacted_resource_version_is_gone():
    s = Store(history_limit=5)
    r = s.resource("", "v1", "configmaps")
    for i in range(10):
        s.create(r, "default", cm(f"c{i}"), **U)
    with pytest.raises(ApiError) as e:
        s.watch(r, None, lambda ev: None, resource_version="2")
    assert e.value.code == 410
    s.watch(r, None, lambda ev: None, resource_version=str(s.rv - 2))


def test_crds_register_their_kinds(store):
    assert store.resource("postwarden.dev", "v1alpha1", "maildomains").status
    crd = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "widgets.example.dev"},
           "spec": {"group": "example.dev", "scope": "Cluster",
                    "names": {"plural": "widgets", "kind": "Widget", "singular": "widget"},
                    "versions": [{"name": "v1", "served": True, "storage": True,
                                  "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                      "spec": {"type": "object", "properties": {
                                          "size": {"type": "integer", "default": 3}}}}}}}]}}
    crds = rt(store, "customresourcedefinitions")
    store.create(crds, None, crd, **U)
    widgets = store.resource("example.dev", "v1", "widgets")
    assert not widgets.namespaced and not widgets.status
    w = store.create(widgets, None, {"apiVersion": "example.dev/v1", "kind": "Widget",
                                     "metadata": {"name": "w"}, "spec": {}}, **U)
    assert w["spec"] == {"size": 3}, "defaults from the schema"
    store.delete(crds, None, "widgets.example.dev", user="t")
    with pytest.raises(ApiError):
        store.resource("example.dev", "v1", "widgets")


def test_namespace_deletion_removes_its_contents(store):
    r = rt(store, "configmaps")
    store.create(r, "mail", cm("a"), **U)
    store.delete(rt(store, "namespaces"), None, "mail", user="t")
    assert store.get(rt(store, "namespaces"), None, "mail")["status"]["phase"] == "Terminating"
    with pytest.raises(ApiError) as e:
        store.create(r, "mail", cm("b"), **U)
    assert e.value.code == 403
    store.gc_until_stable()
    assert store.list(r, "mail")["items"] == []
    with pytest.raises(ApiError):
        store.get(rt(store, "namespaces"), None, "mail")
