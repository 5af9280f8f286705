"""In-memory object store with the semantics of kube-apiserver that controllers rely on.

Pure and synchronous (no HTTP, no asyncio): the server in server.py maps requests onto it, and
the unit tests drive it directly. Every change gets the next value of one global
resourceVersion counter and one watch event; a write that changes nothing gets neither.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import jsonpatch
import yaml

from . import errors, fields, validation
from .errors import ApiError
from .resources import BUILTIN, ResourceType, from_crd
from .selectors import field_selector, label_selector

ObjKey = tuple[str, str]  # (namespace or "", name)
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
APPLY = "application/apply-patch+yaml"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
GC_USER = "system:serviceaccount:kube-system:generic-garbage-collector"
NAMESPACE_USER = "system:serviceaccount:kube-system:namespace-controller"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    rkey: tuple[str, str]
    obj: dict
    old: dict | None = None


@dataclass
class Watch:
    rt: ResourceType
    namespace: str | None
    labels: Callable[[dict], bool]
    field_match: Callable[[dict], bool]
    sink: Callable[[dict], None]

    def matches(self, obj: dict | None) -> bool:
        if obj is None:
            return False
        meta = obj.get("metadata", {})
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels(meta.get("labels") or {}) and self.field_match(obj)

    def translate(self, ev: Event) -> dict | None:
        """The event this watcher sees: objects moving across its selector appear as ADDED/DELETED."""
        now = self.matches(ev.obj)
        if ev.type == "MODIFIED":
            before = self.matches(ev.old)
            if before and now:
                return {"type": "MODIFIED", "object": ev.obj}
            if now:
                return {"type": "ADDED", "object": ev.obj}
            if before:
                return {"type": "DELETED", "object": ev.obj}
            return None
        return {"type": ev.type, "object": ev.obj} if now else None


def json_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        else:
            result[k] = json_merge_patch(result.get(k), v)
    return result


def _strip_directives(patch: Any) -> Any:
    """Drops strategic-merge directives ($patch, $setElementOrder/...), keeping a JSON merge patch."""
    if isinstance(patch, dict):
        return {k: _strip_directives(v) for k, v in patch.items() if not k.startswith("$")}
    if isinstance(patch, list):
        return [_strip_directives(v) for v in patch]
    return patch


@dataclass
class Store:
    history_limit: int = 200_000
    resources: dict[tuple[str, str, str], ResourceType] = field(default_factory=dict)
    objects: dict[tuple[str, str], dict[ObjKey, dict]] = field(default_factory=dict)
    by_uid: dict[str, tuple[tuple[str, str], ObjKey]] = field(default_factory=dict)
    rv: int = 1
    history: collections.deque = field(default_factory=collections.deque)
    watches: dict[tuple[str, str], list[Watch]] = field(default_factory=lambda: collections.defaultdict(list))
    # Changes (events) per (kind, event type, user): what actually moved in the store.
    changes: collections.Counter = field(default_factory=collections.Counter)

    def __post_init__(self) -> None:
        for rt in BUILTIN:
            self.resources[(rt.group, rt.version, rt.plural)] = rt
        ns = self.resource("", "v1", "namespaces")
        for name in SYSTEM_NAMESPACES:
            self.create(ns, None, {"metadata": {"name": name}}, user="system", manager="kube-apiserver")

    # ---- resource types -------------------------------------------------------------------

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.resources.get((group, version, plural))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return rt

    def group_versions(self) -> dict[str, list[ResourceType]]:
        out: dict[str, list[ResourceType]] = collections.defaultdict(list)
        for rt in self.resources.values():
            out[rt.group_version].append(rt)
        return out

    def _sync_crd(self, crd: dict | None, removed: dict | None = None) -> None:
        for old in from_crd(removed or {}):
            self.resources.pop((old.group, old.version, old.plural), None)
        for rt in from_crd(crd or {}):
            self.resources[(rt.group, rt.version, rt.plural)] = rt

    def schema_defaults(self, rt: ResourceType) -> dict | None:
        """The openAPIV3Schema of a custom resource's version, for structural defaulting."""
        if not rt.custom:
            return None
        crd = self._table(("apiextensions.k8s.io", "customresourcedefinitions")).get(("", f"{rt.plural}.{rt.group}"))
        for v in (crd or {}).get("spec", {}).get("versions", []):
            if v.get("name") == rt.version:
                return (v.get("schema") or {}).get("openAPIV3Schema")
        return None

    # ---- reading ---------------------------------------------------------------------------

    def _table(self, rkey: tuple[str, str]) -> dict[ObjKey, dict]:
        return self.objects.setdefault(rkey, {})

    def _key(self, rt: ResourceType, namespace: str | None, name: str) -> ObjKey:
        return ((namespace or "") if rt.namespaced else "", name)

    def _present(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        obj = self._table(rt.key).get(self._key(rt, namespace, name))
        if obj is None:
            raise errors.not_found(rt, name)
        return obj

    def _view(self, rt: ResourceType, obj: dict) -> dict:
        """The object as served under rt's version."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> dict:
        return self._view(rt, self._present(rt, namespace, name))

    def list(self, rt: ResourceType, namespace: str | None, *, label_selector_expr: str | None = None,
             field_selector_expr: str | None = None, limit: int | None = None,
             continue_token: str | None = None) -> dict:
        lmatch = label_selector(label_selector_expr)
        fmatch = field_selector(field_selector_expr, rt.kind)
        list_rv = self.rv
        after: list | None = None
        if continue_token:
            try:
                token = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                list_rv, after = int(token["rv"]), token["after"]
            except (ValueError, KeyError, TypeError):
                raise errors.bad_request("invalid continue token")
        keys = sorted(self._table(rt.key))
        items, cont = [], None
        for key in keys:
            if namespace is not None and rt.namespaced and key[0] != namespace:
                continue
            if after is not None and list(key) <= after:
                continue
            obj = self._table(rt.key)[key]
            if not lmatch(obj["metadata"].get("labels") or {}) or not fmatch(obj):
                continue
            if limit and len(items) >= limit:
                last = items[-1]["metadata"]
                token = {"rv": list_rv, "after": [last.get("namespace", ""), last["name"]]}
                cont = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
                break
            items.append(self._view(rt, obj))
        meta: dict[str, Any] = {"resourceVersion": str(list_rv)}
        if cont:
            meta["continue"] = cont
        return {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": meta, "items": items}

    def watch(self, rt: ResourceType, namespace: str | None, sink: Callable[[dict], None], *,
              resource_version: str | None = None, label_selector_expr: str | None = None,
              field_selector_expr: str | None = None) -> tuple[list[dict], Callable[[], None]]:
        """Registers a watch. Returns the events owed so far and an unsubscribe function.

        From a resourceVersion: every change after it (410 Expired once the history no longer
        reaches back that far). Without one, or "0": the current objects as ADDED events.
        """
        w = Watch(rt, namespace if rt.namespaced else None, label_selector(label_selector_expr),
                  field_selector(field_selector_expr, rt.kind), sink)
        backlog: list[dict] = []
        if resource_version in (None, "", "0"):
            for key in sorted(self._table(rt.key)):
                obj = self._table(rt.key)[key]
                if w.matches(obj):
                    backlog.append({"type": "ADDED", "object": self._view(rt, obj)})
        else:
            try:
                since = int(resource_version)
            except ValueError:
                raise errors.bad_request(f"invalid resourceVersion {resource_version!r}")
            oldest = self.history[0].rv if self.history else self.rv + 1
            if since < oldest - 1 and since < self.rv:
                raise errors.gone(f"too old resource version: {since} ({oldest - 1})")
            for ev in self.history:
                if ev.rv > since and ev.rkey == rt.key:
                    t = w.translate(ev)
                    if t:
                        backlog.append({"type": t["type"], "object": self._view(rt, t["object"])})
        self.watches[rt.key].append(w)

        def unsubscribe() -> None:
            if w in self.watches[rt.key]:
                self.watches[rt.key].remove(w)

        def sink_view(ev: dict) -> None:
            sink({"type": ev["type"], "object": self._view(rt, ev["object"])})

        w.sink = sink_view
        return backlog, unsubscribe

    # ---- committing ------------------------------------------------------------------------

    def _emit(self, rt: ResourceType, type_: str, obj: dict, old: dict | None, user: str) -> None:
        ev = Event(self.rv, type_, rt.key, obj, old)
        self.history.append(ev)
        while len(self.history) > self.history_limit:
            self.history.popleft()
        self.changes[(rt.kind, type_, user)] += 1
        for w in list(self.watches.get(rt.key, [])):
            t = w.translate(ev)
            if t:
                w.sink(t)

    def _next_rv(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _store(self, rt: ResourceType, obj: dict, old: dict | None, user: str) -> None:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        self._table(rt.key)[key] = obj
        self.by_uid[meta["uid"]] = (rt.key, key)
        self._emit(rt, "MODIFIED" if old is not None else "ADDED", obj, old, user)
        if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._sync_crd(obj, old)

    def _remove(self, rt: ResourceType, obj: dict, user: str) -> dict:
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        self._table(rt.key).pop(key, None)
        self.by_uid.pop(meta["uid"], None)
        gone = copy.deepcopy(obj)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._emit(rt, "DELETED", gone, None, user)
        if rt.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self._sync_crd(None, obj)
        return gone

    def _spec_part(self, rt: ResourceType, obj: dict) -> dict:
        return {k: v for k, v in obj.items()
                if k not in ("metadata", "apiVersion", "kind") and not (k == "status" and rt.status)}

    @staticmethod
    def _comparable(obj: dict) -> dict:
        out = copy.deepcopy(obj)
        for entry in out.get("metadata", {}).get("managedFields", []):
            entry.pop("time", None)
        return out

    def _finish(self, rt: ResourceType, old: dict | None, new: dict, user: str, dry_run: bool) -> dict:
        """Validates and stores new (the successor of old, or a new object): server-owned metadata,
        generation, resourceVersion, no-op detection, finalizer release."""
        meta = new["metadata"]
        if rt.kind == "Secret" and rt.group == "":
            validation.normalize_secret(new)
        if rt.custom:
            schema = self.schema_defaults(rt)
            if schema:
                _apply_defaults(new, schema)
        if old is not None:
            ometa = old["metadata"]
            for k in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                      "generation", "name", "namespace"):
                if k in ometa:
                    meta[k] = ometa[k]
                else:
                    meta.pop(k, None)
            meta["resourceVersion"] = ometa["resourceVersion"]
            if ometa.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(ometa.get("finalizers") or [])
                if added:
                    raise errors.invalid(rt, meta["name"], [(
                        "metadata.finalizers", f"Forbidden: no new finalizers can be added if the object is being "
                                               f"deleted, found new finalizers {sorted(added)}")])
            validation.check(rt, new, old)
            if self._comparable(new) == self._comparable(old):
                return old
            if rt.generation and self._spec_part(rt, new) != self._spec_part(rt, old):
                meta["generation"] = ometa.get("generation", 1) + 1
            if dry_run:
                return new
            meta["resourceVersion"] = self._next_rv()
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                self._store(rt, new, old, user)
                return self._remove(rt, new, user)
            self._store(rt, new, old, user)
            return new
        validation.check(rt, new, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(k, None)
        if dry_run:
            return new
        meta["resourceVersion"] = self._next_rv()
        self._store(rt, new, None, user)
        return new

    # ---- managed fields ----------------------------------------------------------------------

    @staticmethod
    def _entries(obj: dict) -> list[dict]:
        return obj.setdefault("metadata", {}).setdefault("managedFields", [])

    @staticmethod
    def _entry_paths(entry: dict) -> set[fields.Path]:
        return fields.from_fields_v1(entry.get("fieldsV1") or {})

    def _set_entry(self, obj: dict, rt: ResourceType, manager: str, operation: str, subresource: str | None,
                   paths: set[fields.Path]) -> None:
        entries = self._entries(obj)
        for e in list(entries):
            if (e.get("manager"), e.get("operation"), e.get("subresource")) == (manager, operation, subresource):
                entries.remove(e)
        if paths:
            entry = {"manager": manager, "operation": operation, "apiVersion": rt.api_version,
                     "time": now_rfc3339(), "fieldsType": "FieldsV1", "fieldsV1": fields.to_fields_v1(paths)}
            if subresource:
                entry["subresource"] = subresource
            entries.append(entry)

    def _take_ownership(self, obj: dict, rt: ResourceType, manager: str, operation: str,
                        subresource: str | None, taken: set[fields.Path], owned: set[fields.Path]) -> None:
        """Other managers lose `taken`; (manager, operation) then owns `owned`."""
        me = (manager, operation, subresource)
        for e in list(self._entries(obj)):
            if (e.get("manager"), e.get("operation"), e.get("subresource")) == me:
                continue
            mine = self._entry_paths(e)
            kept = {p for p in mine if not any(fields.overlaps(p, t) for t in taken)}
            if kept != mine:
                self._set_entry(obj, rt, e["manager"], e["operation"], e.get("subresource"), kept)
        self._set_entry(obj, rt, manager, operation, subresource, owned)
        if not self._entries(obj):
            obj["metadata"].pop("managedFields", None)

    def _record_update(self, rt: ResourceType, old: dict | None, new: dict, manager: str,
                       subresource: str | None) -> None:
        include_status = subresource == "status" or not rt.status
        before = fields.ownable(old, include_status=include_status) if old else {}
        after = fields.ownable(new, include_status=include_status)
        changed = fields.changed_paths(before, after)
        gone = {p for p in fields.leaf_paths(before) if fields.get(after, p) is fields._MISSING}
        if not changed and not gone:
            return
        mine: set[fields.Path] = set()
        for e in self._entries(new):
            if (e.get("manager"), e.get("operation"), e.get("subresource")) == (manager, "Update", subresource):
                mine = self._entry_paths(e)
        mine = {p for p in mine if not any(fields.overlaps(p, g) for g in gone)} | changed
        self._take_ownership(new, rt, manager, "Update", subresource, changed | gone, mine)

    # ---- writes --------------------------------------------------------------------------------

    def _check_body(self, rt: ResourceType, namespace: str | None, body: Any, name: str | None) -> dict:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request was in an unknown format")
        if body.get("kind") not in (None, rt.kind) or body.get("apiVersion") not in (None, rt.api_version):
            raise errors.bad_request(
                f"the API version in the data ({body.get('apiVersion')}) does not match the expected API version "
                f"({rt.api_version})" if body.get("apiVersion") not in (None, rt.api_version) else
                f"the kind in the data ({body.get('kind')}) does not match the expected kind ({rt.kind})")
        meta = body.get("metadata") or {}
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request("the namespace of the provided object does not match the namespace sent on "
                                     "the request")
        if name is not None and meta.get("name") not in (None, name):
            raise errors.bad_request("the name of the object does not match the name on the URL")
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        obj.setdefault("metadata", {})
        if rt.namespaced:
            obj["metadata"]["namespace"] = namespace
        else:
            obj["metadata"].pop("namespace", None)
        if name is not None:
            obj["metadata"]["name"] = name
        obj["metadata"].pop("managedFields", None)
        obj["metadata"].pop("selfLink", None)
        return obj

    def _check_namespace(self, rt: ResourceType, namespace: str | None) -> None:
        if not rt.namespaced:
            return
        ns = self._table(("", "namespaces")).get(("", namespace or ""))
        if ns is None:
            raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                           {"name": namespace, "kind": "namespaces"})
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(f"unable to create new content in namespace {namespace} because it is being "
                                   f"terminated")

    @staticmethod
    def _check_preconditions(rt: ResourceType, name: str, current: dict, wanted: dict) -> None:
        rv = (wanted.get("metadata") or {}).get("resourceVersion")
        if rv not in (None, "") and str(rv) != current["metadata"]["resourceVersion"]:
            raise errors.stale(rt, name)
        uid = (wanted.get("metadata") or {}).get("uid")
        if uid and uid != current["metadata"]["uid"]:
            raise errors.conflict(rt, name, f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                                            f"{current['metadata']['uid']}")

    def create(self, rt: ResourceType, namespace: str | None, body: Any, *, user: str, manager: str,
               dry_run: bool = False, apply: bool = False) -> dict:
        obj = self._check_body(rt, namespace, body, None)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        self._check_namespace(rt, namespace)
        name = meta.get("name", "")
        if self._table(rt.key).get(self._key(rt, namespace, name)) is not None:
            raise errors.already_exists(rt, name)
        if rt.status:
            obj.pop("status", None)
        for k in ("resourceVersion", "uid", "creationTimestamp"):
            meta.pop(k, None)
        if apply:
            self._set_entry(obj, rt, manager, "Apply", None,
                            set(fields.leaf_paths(fields.ownable(body, include_status=not rt.status))))
        else:
            self._record_update(rt, None, obj, manager, None)
        if rt.kind == "Namespace":
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        return self._finish(rt, None, obj, user, dry_run)

    def _successor(self, rt: ResourceType, old: dict, wanted: dict, subresource: str | None) -> dict:
        """What a write of `wanted` to the object or its /status leaves in store."""
        if subresource == "status":
            new = copy.deepcopy(old)
            if "status" in wanted:
                new["status"] = copy.deepcopy(wanted["status"])
            else:
                new.pop("status", None)
            return new
        if subresource:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({subresource})")
        new = copy.deepcopy(wanted)
        new["metadata"]["managedFields"] = copy.deepcopy(old["metadata"].get("managedFields", []))
        if not new["metadata"]["managedFields"]:
            new["metadata"].pop("managedFields")
        if rt.status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        return new

    def replace(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *, user: str, manager: str,
                subresource: str | None = None, dry_run: bool = False) -> tuple[dict, bool]:
        """PUT. Returns (object, created)."""
        wanted = self._check_body(rt, namespace, body, name)
        old = self._table(rt.key).get(self._key(rt, namespace, name))
        if old is None:
            if rt.create_on_update and not subresource:
                return self.create(rt, namespace, body, user=user, manager=manager, dry_run=dry_run), True
            raise errors.not_found(rt, name)
        self._check_preconditions(rt, name, old, wanted)
        new = self._successor(rt, old, wanted, subresource)
        self._record_update(rt, old, new, manager, subresource)
        return self._finish(rt, old, new, user, dry_run), False

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str, raw: bytes, *,
              user: str, manager: str | None, subresource: str | None = None, force: bool = False,
              dry_run: bool = False) -> tuple[dict, bool]:
        """PATCH of any supported type. Returns (object, created)."""
        content_type = content_type.split(";")[0].strip()
        if content_type == APPLY:
            return self._apply(rt, namespace, name, raw, user=user, manager=manager, subresource=subresource,
                               force=force, dry_run=dry_run)
        try:
            patch = json.loads(raw or b"null")
        except ValueError as e:
            raise errors.bad_request(f"error decoding patch: {e}")
        old = self._present(rt, namespace, name)
        manager = manager or "unknown"
        if content_type == MERGE:
            wanted = json_merge_patch(old, patch)
        elif content_type == STRATEGIC:
            if rt.custom:
                raise errors.unsupported_media_type(
                    f"the body of the request was in an unknown format - accepted media types include: "
                    f"{JSON_PATCH}, {MERGE}, {APPLY}")
            wanted = json_merge_patch(old, _strip_directives(patch))
        elif content_type == JSON_PATCH:
            try:
                wanted = jsonpatch.apply_patch(old, patch)
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                raise errors.invalid(rt, name, [("patch", str(e))])
        else:
            raise errors.unsupported_media_type(f"unsupported patch type {content_type!r}")
        if not isinstance(wanted, dict):
            raise errors.bad_request("patch result is not an object")
        self._check_preconditions(rt, name, old, wanted)
        wanted = self._check_body(rt, namespace, {**wanted, "apiVersion": rt.api_version, "kind": rt.kind}, name)
        new = self._successor(rt, old, wanted, subresource)
        self._record_update(rt, old, new, manager, subresource)
        return self._finish(rt, old, new, user, dry_run), False

    def _apply(self, rt: ResourceType, namespace: str | None, name: str, raw: bytes, *, user: str,
               manager: str | None, subresource: str | None, force: bool, dry_run: bool) -> tuple[dict, bool]:
        """Server-side apply: field ownership per manager, conflicts unless forced, fields the
        manager stopped applying are removed unless another manager owns them."""
        if not manager:
            raise errors.invalid(rt, name, [("fieldManager", "Required value: is required for apply patch")])
        try:
            applied = yaml.safe_load(raw or b"")
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}")
        if not isinstance(applied, dict) or not applied.get("apiVersion") or not applied.get("kind"):
            raise errors.bad_request("apply patch must be an object with apiVersion and kind")
        applied = self._check_body(rt, namespace, applied, name)
        old = self._table(rt.key).get(self._key(rt, namespace, name))
        if old is None:
            if subresource:
                raise errors.not_found(rt, name)
            return self.create(rt, namespace, applied, user=user, manager=manager, dry_run=dry_run, apply=True), True
        self._check_preconditions(rt, name, old, applied)
        if subresource == "status":
            part = {"status": applied["status"]} if "status" in applied else {}
        elif subresource:
            raise errors.not_found(rt, name)
        else:
            part = fields.ownable(applied, include_status=not rt.status)
        applied_paths = set(fields.leaf_paths(part))
        me = (manager, "Apply", subresource)
        mine: set[fields.Path] = set()
        others: set[fields.Path] = set()
        conflicts: list[tuple[str, str]] = []
        for e in self._entries(old):
            paths = self._entry_paths(e)
            if (e.get("manager"), e.get("operation"), e.get("subresource")) == me:
                mine = paths
                continue
            others |= paths
            for p in paths:
                for q in applied_paths:
                    if fields.overlaps(p, q):
                        at = p if len(p) <= len(q) else q
                        if fields.get(old, at) != fields.get(part, at):
                            conflicts.append((e.get("manager", ""), ".".join(at)))
        if conflicts and not force:
            msg = "; ".join(f'conflict with "{m}": .{p}' for m, p in sorted(set(conflicts)))
            raise ApiError(409, "Conflict", f"Apply failed with {len(set(conflicts))} conflict(s): {msg}",
                           {"causes": [{"reason": "FieldManagerConflict", "message": f'conflict with "{m}"',
                                        "field": f".{p}"} for m, p in sorted(set(conflicts))]})
        new = copy.deepcopy(old)
        if force:
            others = {p for p in others if not any(fields.overlaps(p, q) for q in applied_paths)}
        for p in mine - applied_paths:
            if not any(fields.overlaps(p, q) for q in applied_paths | others):
                fields.remove(new, p)
        fields.merge(new, part)
        self._take_ownership(new, rt, manager, "Apply", subresource,
                             applied_paths if force else set(), applied_paths)
        return self._finish(rt, old, new, user, dry_run), False

    def delete(self, rt: ResourceType, namespace: str | None, name: str, options: dict | None = None, *,
               user: str, dry_run: bool = False) -> dict:
        options = options or {}
        obj = self._present(rt, namespace, name)
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != obj["metadata"]["uid"]:
            raise errors.conflict(rt, name, f"Precondition failed: UID in precondition: {pre['uid']}, UID in "
                                            f"object meta: {obj['metadata']['uid']}")
        if pre.get("resourceVersion") and str(pre["resourceVersion"]) != obj["metadata"]["resourceVersion"]:
            raise errors.stale(rt, name)
        if dry_run:
            return obj
        policy = options.get("propagationPolicy") or ("Orphan" if options.get("orphanDependents") else None)
        meta = obj["metadata"]
        extra = []
        if policy == "Foreground":
            extra = ["foregroundDeletion"]
        elif policy == "Orphan":
            extra = ["orphan"]
        if rt.kind == "Namespace" and rt.group == "":
            extra = []
        if meta.get("finalizers") or extra or rt.kind == "Namespace":
            if meta.get("deletionTimestamp"):
                return obj
            new = copy.deepcopy(obj)
            new["metadata"]["deletionTimestamp"] = now_rfc3339()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            for f in extra:
                if f not in new["metadata"].setdefault("finalizers", []):
                    new["metadata"]["finalizers"].append(f)
            if rt.kind == "Namespace":
                new["status"] = {"phase": "Terminating"}
            new["metadata"]["resourceVersion"] = self._next_rv()
            self._store(rt, new, obj, user)
            return new
        return self._remove(rt, obj, user)

    def delete_collection(self, rt: ResourceType, namespace: str | None, options: dict | None, *, user: str,
                          label_selector_expr: str | None = None, field_selector_expr: str | None = None) -> dict:
        listed = self.list(rt, namespace, label_selector_expr=label_selector_expr,
                           field_selector_expr=field_selector_expr)
        for item in listed["items"]:
            m = item["metadata"]
            try:
                self.delete(rt, m.get("namespace"), m["name"], options, user=user)
            except ApiError:
                pass
        return listed

    # ---- controllers kube-apiserver's cluster runs beside it ------------------------------------

    def _all(self):
        for rkey, table in self.objects.items():
            for obj in list(table.values()):
                yield rkey, obj

    def _rt_of(self, obj: dict) -> ResourceType | None:
        group, _, version = obj["apiVersion"].rpartition("/")
        for rt in self.resources.values():
            if rt.group == group and rt.kind == obj["kind"]:
                return rt
        return None

    def _release(self, rt: ResourceType, obj: dict, finalizer: str) -> None:
        new = copy.deepcopy(obj)
        new["metadata"]["finalizers"] = [f for f in new["metadata"]["finalizers"] if f != finalizer]
        if not new["metadata"]["finalizers"]:
            del new["metadata"]["finalizers"]
        self._finish(rt, obj, new, GC_USER, False)

    def gc(self) -> int:
        """One pass of the garbage collector and namespace controller (background deletion of
        dependents whose owners are all gone, Foreground/Orphan finalizers, namespace teardown).
        Returns the number of changes; call until it returns 0."""
        done = 0
        live_uids = set(self.by_uid)
        dependents: dict[str, list[tuple[ResourceType, dict]]] = collections.defaultdict(list)
        for rkey, obj in self._all():
            refs = obj["metadata"].get("ownerReferences") or []
            rt = self._rt_of(obj)
            if not refs or rt is None:
                continue
            for ref in refs:
                dependents[ref["uid"]].append((rt, obj))
            if not any(ref["uid"] in live_uids for ref in refs) and not obj["metadata"].get("deletionTimestamp"):
                self.delete(rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], user=GC_USER)
                done += 1
        for rkey, obj in self._all():
            meta = obj["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            rt = self._rt_of(obj)
            if rt is None:
                continue
            current = self._table(rkey).get((meta.get("namespace", ""), meta["name"]))
            if current is None:
                continue
            finalizers = meta.get("finalizers") or []
            if "orphan" in finalizers:
                for drt, dep in dependents.get(meta["uid"], []):
                    dcur = self._table(drt.key).get((dep["metadata"].get("namespace", ""), dep["metadata"]["name"]))
                    if dcur is None:
                        continue
                    new = copy.deepcopy(dcur)
                    new["metadata"]["ownerReferences"] = [r for r in new["metadata"]["ownerReferences"]
                                                          if r["uid"] != meta["uid"]]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self._finish(drt, dcur, new, GC_USER, False)
                self._release(rt, current, "orphan")
                done += 1
            elif "foregroundDeletion" in finalizers:
                deps = [(drt, d) for drt, d in dependents.get(meta["uid"], [])
                        if self._table(drt.key).get((d["metadata"].get("namespace", ""), d["metadata"]["name"]))]
                for drt, dep in deps:
                    if not dep["metadata"].get("deletionTimestamp"):
                        self.delete(drt, dep["metadata"].get("namespace"), dep["metadata"]["name"],
                                    {"propagationPolicy": "Foreground"}, user=GC_USER)
                        done += 1
                if not deps:
                    self._release(rt, current, "foregroundDeletion")
                    done += 1
            elif rt.kind == "Namespace" and rt.group == "":
                contents = [(r, o) for r, o in self._all() if r != rt.key and o["metadata"].get("namespace") == meta["name"]]
                for r, o in contents:
                    ort = self._rt_of(o)
                    if ort is not None and not o["metadata"].get("deletionTimestamp"):
                        self.delete(ort, meta["name"], o["metadata"]["name"], user=NAMESPACE_USER)
                        done += 1
                if not contents:
                    self._remove(rt, current, NAMESPACE_USER)
                    done += 1
        return done

    def gc_until_stable(self, rounds: int = 50) -> None:
        for _ in range(rounds):
            if not self.gc():
                return


def _apply_defaults(obj: Any, schema: dict) -> None:
    """Structural defaulting of a custom resource from its openAPIV3Schema (the `default`
    keywords), as kube-apiserver does when reading and writing."""
    if not isinstance(obj, dict) or schema.get("type") not in (None, "object"):
        return
    for prop, sub in (schema.get("properties") or {}).items():
        if prop == "metadata":
            continue
        if prop not in obj and "default" in sub:
            obj[prop] = copy.deepcopy(sub["default"])
        if prop in obj:
            if isinstance(obj[prop], dict):
                _apply_defaults(obj[prop], sub)
            elif isinstance(obj[prop], list) and isinstance(sub.get("items"), dict):
                for item in obj[prop]:
                    _apply_defaults(item, sub["items"])

