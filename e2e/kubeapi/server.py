"""HTTP face of the emulator: a kmock handler serving the Kubernetes REST API from store.Store.

kmock provides the aiohttp server on a free loopback port, request parsing and recording
(`handler.requests`), Kubernetes-style error rendering, and its reaction DSL for in-process
tests (`emulator['patch', kmock.resource('apps', 'v1', 'statefulsets')] << 500`). The
semantics (storage, resourceVersion, watch, apply, status, GC) live in store.py.
"""

from __future__ import annotations

import asyncio
import collections
import json
import re
import sys
import time
import traceback
from typing import Any

import aiohttp.test_utils
import aiohttp.web
import aiohttp.web_request
import aiohttp.web_runner
import aiohttp.web_server
import attrs
import kmock

from . import errors
from .errors import ApiError
from .resources import ResourceType
from .store import Store

# kube-apiserver refuses request bodies over 3 MiB; objects over 1.5 MiB then fail in etcd.
MAX_REQUEST_BODY = 3 << 20
# Requests kept for kmock-style assertions (the DSL views); older ones are dropped.
KEEP_REQUESTS = 5000
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
JSON = "application/json"


class _LargeBodyServer(aiohttp.test_utils.RawTestServer):
    """aiohttp's raw server with a body limit above kube's, so oversize bodies get kube's 413."""

    async def _make_runner(self, debug: bool = True, **kwargs: Any) -> aiohttp.web_runner.ServerRunner:
        srv = aiohttp.web_server.Server(self._handler, loop=self._loop, debug=False, **kwargs)

        def factory(message, payload, protocol, writer, task):
            return aiohttp.web_request.BaseRequest(message, payload, protocol, writer, task, srv._loop,
                                                   client_max_size=MAX_REQUEST_BODY + 1)

        srv.request_factory = factory
        return aiohttp.web_runner.ServerRunner(srv, debug=False, **kwargs)


def make_server(handler: "KubeApiEmulator", host: str = "127.0.0.1", port: int | None = None) -> kmock.Server:
    return kmock.Server(handler, host=host, port=port, server_cls=_LargeBodyServer)


def _status_response(err: ApiError) -> aiohttp.web.Response:
    return aiohttp.web.json_response(err.status(), status=err.code)


def _dump(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@attrs.define(kw_only=True)
class KubeApiEmulator(kmock.KubernetesScaffold):
    store: Store = attrs.field(factory=Store)
    # Write requests per (kind, verb, user); verb is create/update/patch/apply/delete/deletecollection,
    # with "/status" appended for the status subresource.
    writes: collections.Counter = attrs.field(factory=collections.Counter)
    # Injected faults: {"method", "path" (regex), "status", "delay", "times"}.
    faults: list[dict] = attrs.field(factory=list)
    bookmark_interval: float = 15.0
    log_requests: bool = False
    _gc_pending: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        # kmock's own discovery fallbacks are replaced by the store-backed routes in _serve().
        pass

    # ---- dispatch ---------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        try:
            await raw_request.read()
        except aiohttp.web.HTTPRequestEntityTooLarge as e:
            return await self._render_error(e)
        try:
            request = await kmock.Request._parse(raw_request, id=len(self._requests))
        except ValueError:
            # kmock 0.8 cannot parse some core paths (e.g. /api/v1/namespaces); they are routed
            # by _serve() from the raw URL anyway.
            request = kmock.Request(id=len(self._requests), raw_request=raw_request, url=raw_request.url,
                                    method=raw_request.method, params=dict(raw_request.query),
                                    headers=dict(raw_request.headers), body=await raw_request.read())
        self._requests.append(request)
        try:
            return await self._handle(request)
        except Exception as e:  # a bug in the emulator: report it to the client as kube would
            return await self._render_error(e)

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        if len(self._requests) > KEEP_REQUESTS:
            del self._requests[: len(self._requests) - KEEP_REQUESTS]
        if self._payloads:  # reactions declared in-process with kmock's DSL come first
            try:
                return await super()._handle(request)
            except NotImplementedError:
                pass
        started = time.monotonic()
        try:
            response = await self._faulted(request)
            if response is None:
                response = await self._serve(request)
        except ApiError as e:
            response = _status_response(e)
        if self.log_requests:
            print(f"{request.method} {request.url.path_qs} -> {response.status} "
                  f"({(time.monotonic() - started) * 1000:.1f} ms)", file=sys.stderr, flush=True)
        return response

    async def _render_error(self, exc: Exception) -> aiohttp.web.StreamResponse:
        if isinstance(exc, aiohttp.web.HTTPRequestEntityTooLarge):
            return _status_response(errors.too_large(f"Request entity too large: limit is {MAX_REQUEST_BODY}"))
        traceback.print_exception(exc, file=sys.stderr)
        return _status_response(ApiError(500, "InternalError", f"emulator error: {exc!r}"))

    async def _faulted(self, request: kmock.Request) -> aiohttp.web.StreamResponse | None:
        for fault in list(self.faults):
            if fault.get("method") and fault["method"].upper() != request.method.value.upper():
                continue
            if fault.get("path") and not re.search(fault["path"], request.url.path):
                continue
            if fault.get("times") is not None:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self.faults.remove(fault)
            if fault.get("delay"):
                await asyncio.sleep(float(fault["delay"]))
            if fault.get("status"):
                code = int(fault["status"])
                return _status_response(ApiError(code, fault.get("reason", "InternalError"),
                                                 fault.get("message", "injected fault")))
        return None

    def _user(self, request: kmock.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth.startswith("Bearer ") else "anonymous"

    def _manager(self, request: kmock.Request) -> str:
        if request.params.get("fieldManager"):
            return request.params["fieldManager"]
        return request.headers.get("User-Agent", "unknown").split("/")[0] or "unknown"

    async def _serve(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        path = request.url.path.rstrip("/") or "/"
        method = request.method.value.upper()
        if path.startswith("/_emulator"):
            return self._control(path, method, request)
        if path in ("/healthz", "/readyz", "/livez"):
            return aiohttp.web.Response(text="ok")
        if path == "/version":
            return aiohttp.web.json_response({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-postwarden-emulator",
                "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc",
                "platform": "linux/amd64"})
        if path == "/":
            return aiohttp.web.json_response({"paths": sorted(
                {"/api", "/api/v1", "/apis", "/version"} | {f"/apis/{gv}" for gv in self.store.group_versions()
                                                             if "/" in gv})})
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            if len(parts) == 1:
                return self._api_versions(request)
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis":
            if len(parts) == 1:
                return aiohttp.web.json_response(self._group_list())
            if len(parts) == 2:
                return aiohttp.web.json_response(self._group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return aiohttp.web.json_response(self._resource_list(group, version))
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.store.resource(group, version, rest[0])
        if rt.namespaced is False:
            namespace = None
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and not (sub == "status" and rt.status):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if method in WRITE_METHODS:
            return await self._write(request, method, rt, namespace, name, sub)
        if method != "GET":
            raise ApiError(405, "MethodNotAllowed", f"method {method} is not supported")
        params = request.params
        if params.get("watch") in ("true", "1"):
            fsel = params.get("fieldSelector")
            if name:
                fsel = ",".join(x for x in (fsel, f"metadata.name={name}") if x)
            return await self._watch(request, rt, namespace, fsel)
        if name:
            return aiohttp.web.json_response(self.store.get(rt, namespace, name))
        limit = int(params["limit"]) if params.get("limit") else None
        return aiohttp.web.json_response(self.store.list(
            rt, namespace, label_selector_expr=params.get("labelSelector"),
            field_selector_expr=params.get("fieldSelector"), limit=limit,
            continue_token=params.get("continue")))

    async def _write(self, request: kmock.Request, method: str, rt: ResourceType, namespace: str | None,
                     name: str | None, sub: str | None) -> aiohttp.web.StreamResponse:
        user = self._user(request)
        manager = self._manager(request)
        params = request.params
        dry_run = params.get("dryRun") == "All"
        body = request.body
        content_type = request.headers.get("Content-Type", JSON)
        if "protobuf" in content_type or "cbor" in content_type:
            raise errors.unsupported_media_type(
                f"the body of the request was in an unknown format ({content_type}) - the emulator accepts JSON "
                f"(and YAML for apply patches) only")
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
        if method == "PATCH" and content_type.startswith("application/apply-patch"):
            verb = "apply"
        if method == "DELETE" and name is None:
            verb = "deletecollection"
        if sub:
            verb += f"/{sub}"
        self.writes[(rt.kind, verb, user)] += 1
        if rt.namespaced and namespace is None and verb != "create":
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

        def decode() -> Any:
            try:
                return json.loads(body or b"null")
            except ValueError as e:
                raise errors.bad_request(f"error decoding request body: {e}")

        status = 200
        if method == "POST":
            if name is not None:
                raise ApiError(405, "MethodNotAllowed", "POST to a named object is not supported")
            result = self.store.create(rt, namespace, decode(), user=user, manager=manager, dry_run=dry_run)
            status = 201
        elif method == "PUT":
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "PUT needs an object name")
            result, created = self.store.replace(rt, namespace, name, decode(), user=user, manager=manager,
                                                 subresource=sub, dry_run=dry_run)
            status = 201 if created else 200
        elif method == "PATCH":
            if name is None:
                raise ApiError(405, "MethodNotAllowed", "PATCH needs an object name")
            apply = content_type.startswith("application/apply-patch")
            result, created = self.store.patch(
                rt, namespace, name, content_type, body, user=user,
                manager=params.get("fieldManager") if apply else manager, subresource=sub,
                force=params.get("force") == "true", dry_run=dry_run)
            status = 201 if created else 200
        else:
            options = decode() or {}
            for k in ("propagationPolicy", "gracePeriodSeconds"):
                if params.get(k):
                    options[k] = params[k]
            if name is None:
                result = self.store.delete_collection(
                    rt, namespace, options, user=user, label_selector_expr=params.get("labelSelector"),
                    field_selector_expr=params.get("fieldSelector"))
            else:
                result = self.store.delete(rt, namespace, name, options, user=user, dry_run=dry_run)
        if not dry_run and self._needs_gc(method, result):
            self._schedule_gc()
        return aiohttp.web.json_response(result, status=status)

    def _needs_gc(self, method: str, result: dict) -> bool:
        if method == "DELETE":
            return True
        meta = result.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            return True
        refs = meta.get("ownerReferences") or []
        return bool(refs) and not all(r.get("uid") in self.store.by_uid for r in refs)

    def _schedule_gc(self) -> None:
        if self._gc_pending:
            return
        self._gc_pending = True

        def run() -> None:
            self._gc_pending = False
            self.store.gc_until_stable()

        asyncio.get_running_loop().call_later(0.01, run)

    # ---- watch ------------------------------------------------------------------------------

    async def _watch(self, request: kmock.Request, rt: ResourceType, namespace: str | None,
                     fsel: str | None) -> aiohttp.web.StreamResponse:
        params = request.params
        queue: asyncio.Queue = asyncio.Queue()
        bookmarks = params.get("allowWatchBookmarks") == "true"
        initial_end = params.get("sendInitialEvents") == "true"
        rv = params.get("resourceVersion")
        try:
            backlog, unsubscribe = self.store.watch(
                rt, namespace, queue.put_nowait, resource_version=None if initial_end else rv,
                label_selector_expr=params.get("labelSelector"), field_selector_expr=fsel)
        except ApiError as e:
            if e.code != 410:
                raise
            backlog, unsubscribe = [{"type": "ERROR", "object": e.status()}], (lambda: None)
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": JSON})
        response.enable_chunked_encoding()
        raw = request._raw_request
        assert raw is not None
        try:
            await response.prepare(raw)
            if backlog:
                await response.write(b"".join(_dump(ev) + b"\n" for ev in backlog))
            if backlog and backlog[0]["type"] == "ERROR":
                await response.write_eof()
                return response
            if initial_end:
                await response.write(_dump(self._bookmark(rt, initial_end=True)) + b"\n")
            else:
                await response.write(b"")
            last = time.monotonic()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    ev = await asyncio.wait_for(queue.get(), timeout=min(left, self.bookmark_interval))
                except asyncio.TimeoutError:
                    if bookmarks and queue.empty() and time.monotonic() - last >= self.bookmark_interval:
                        await response.write(_dump(self._bookmark(rt)) + b"\n")
                        last = time.monotonic()
                    continue
                chunk = [_dump(ev)]
                while not queue.empty():
                    chunk.append(_dump(queue.get_nowait()))
                await response.write(b"\n".join(chunk) + b"\n")
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            unsubscribe()
        return response

    def _bookmark(self, rt: ResourceType, initial_end: bool = False) -> dict:
        meta: dict = {"resourceVersion": str(self.store.rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta}}

    # ---- discovery --------------------------------------------------------------------------

    def _api_versions(self, request: kmock.Request) -> aiohttp.web.Response:
        host = request.headers.get("Host", "127.0.0.1")
        return aiohttp.web.json_response({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})

    def _group_entry(self, group: str) -> dict | None:
        versions = sorted({rt.version for rt in self.store.resources.values() if rt.group == group},
                          key=lambda v: (not v.startswith("v1"), v))
        if not versions:
            return None
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def _group_list(self) -> dict:
        groups = sorted({rt.group for rt in self.store.resources.values() if rt.group})
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self._group_entry(g) for g in groups]}

    def _group(self, group: str) -> dict:
        entry = self._group_entry(group)
        if entry is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIGroup", "apiVersion": "v1", **entry}

    def _resource_list(self, group: str, version: str) -> dict:
        rts = [rt for rt in self.store.resources.values() if rt.group == group and rt.version == version]
        if not rts:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": rts[0].group_version,
                "resources": [e for rt in sorted(rts, key=lambda r: r.plural) for e in rt.discovery_entries()]}

    # ---- control endpoints for tests ------------------------------------------------------------

    def writes_report(self) -> dict:
        rows = [{"kind": k, "verb": v, "user": u, "count": n} for (k, v, u), n in sorted(self.writes.items())]
        changes = [{"kind": k, "type": t, "user": u, "count": n}
                   for (k, t, u), n in sorted(self.store.changes.items())]
        return {"writes": rows, "total": sum(self.writes.values()), "changes": changes,
                "resourceVersion": str(self.store.rv)}

    def _control(self, path: str, method: str, request: kmock.Request) -> aiohttp.web.Response:
        if path == "/_emulator/writes" and method == "GET":
            return aiohttp.web.json_response(self.writes_report())
        if path == "/_emulator/reset" and method == "POST":
            self.writes.clear()
            self.store.changes.clear()
            return aiohttp.web.json_response(self.writes_report())
        if path == "/_emulator/faults":
            if method == "POST":
                fault = json.loads(request.body or b"{}")
                self.faults.append(fault)
                return aiohttp.web.json_response({"faults": self.faults}, status=201)
            if method == "DELETE":
                self.faults.clear()
                return aiohttp.web.json_response({"faults": []})
            return aiohttp.web.json_response({"faults": self.faults})
        if path == "/_emulator/gc" and method == "POST":
            self.store.gc_until_stable()
            return aiohttp.web.json_response({"resourceVersion": str(self.store.rv)})
        raise ApiError(404, "NotFound", f"no emulator control endpoint {method} {path}")
