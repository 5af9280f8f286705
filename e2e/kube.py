"""A small Kubernetes REST client for the e2e suite: the same calls against the suite's control plane and a
real cluster (kubeconfig with bearer token, client certificate or none; JSON only)."""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import requests
import yaml

# (apiVersion, kind) -> (plural, namespaced) for the kinds the suite touches.
KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Secret"): ("secrets", True),
    ("v1", "Service"): ("services", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Event"): ("events", True),
    ("events.k8s.io/v1", "Event"): ("events", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("apps/v1", "Deployment"): ("deployments", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("networking.k8s.io/v1", "NetworkPolicy"): ("networkpolicies", True),
    ("batch/v1", "CronJob"): ("cronjobs", True),
    ("coordination.k8s.io/v1", "Lease"): ("leases", True),
    ("storage.k8s.io/v1", "StorageClass"): ("storageclasses", False),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): ("customresourcedefinitions", False),
    ("postwarden.dev/v1alpha1", "MailDomain"): ("maildomains", True),
    ("postwarden.dev/v1alpha1", "Mailbox"): ("mailboxes", True),
    ("cert-manager.io/v1", "Certificate"): ("certificates", True),
}
KIND_ALIASES = {kind: (api_version, kind) for (api_version, kind) in KINDS if api_version != "events.k8s.io/v1"}


class ApiStatusError(Exception):
    def __init__(self, code: int, body: dict | str):
        self.code = code
        self.body = body
        self.reason = body.get("reason") if isinstance(body, dict) else None
        super().__init__(f"{code} {self.reason}: {body.get('message') if isinstance(body, dict) else body}")


@dataclass
class Kube:
    server: str
    session: requests.Session
    field_manager: str = "postwarden-e2e"

    @classmethod
    def from_kubeconfig(cls, path: str, context: str | None = None) -> "Kube":
        with open(path) as f:
            cfg = yaml.safe_load(f)
        ctx_name = context or cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next((u["user"] for u in cfg.get("users", []) if u["name"] == ctx.get("user")), {}) or {}
        s = requests.Session()
        # Only the kubeconfig decides whom to trust (REQUESTS_CA_BUNDLE would replace its CA).
        s.trust_env = False
        tmp = tempfile.mkdtemp(prefix="kube-")

        def material(data_key: str, file_key: str, source: dict) -> str | None:
            if source.get(data_key):
                p = os.path.join(tmp, data_key)
                with open(p, "wb") as out:
                    out.write(base64.b64decode(source[data_key]))
                return p
            return source.get(file_key)

        ca = material("certificate-authority-data", "certificate-authority", cluster)
        s.verify = False if cluster.get("insecure-skip-tls-verify") else (ca or True)
        cert = material("client-certificate-data", "client-certificate", user)
        key = material("client-key-data", "client-key", user)
        if cert and key:
            s.cert = (cert, key)
        token = user.get("token") or (open(user["tokenFile"]).read().strip() if user.get("tokenFile") else None)
        if token:
            s.headers["Authorization"] = f"Bearer {token}"
        s.headers["User-Agent"] = "postwarden-e2e/1"
        return cls(cluster["server"].rstrip("/"), s)

    # ---- paths ---------------------------------------------------------------------------------

    @staticmethod
    def _kind(kind: str, api_version: str | None = None) -> tuple[str, str, bool]:
        if api_version is None:
            api_version, kind = KIND_ALIASES[kind]
        plural, namespaced = KINDS[(api_version, kind)]
        return api_version, plural, namespaced

    def path(self, kind: str, namespace: str | None = None, name: str | None = None, *,
             api_version: str | None = None, subresource: str | None = None) -> str:
        api_version, plural, namespaced = self._kind(kind, api_version)
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        if namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base

    # ---- requests -------------------------------------------------------------------------------

    def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                content_type: str = "application/json", raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": content_type} if data is not None else {}
        r = self.session.request(method, self.server + path, params=params, data=data, headers=headers, timeout=60)
        try:
            payload = r.json()
        except ValueError:
            payload = r.text
        if r.status_code >= 400:
            raise ApiStatusError(r.status_code, payload)
        return payload

    def get(self, kind: str, namespace: str | None, name: str, **kw) -> dict:
        return self.request("GET", self.path(kind, namespace, name, **kw))

    def get_opt(self, kind: str, namespace: str | None, name: str, **kw) -> dict | None:
        try:
            return self.get(kind, namespace, name, **kw)
        except ApiStatusError as e:
            if e.code == 404:
                return None
            raise

    def list(self, kind: str, namespace: str | None = None, *, labels: str | None = None,
             fields: str | None = None, **kw) -> list[dict]:
        params = {k: v for k, v in (("labelSelector", labels), ("fieldSelector", fields)) if v}
        return self.request("GET", self.path(kind, namespace, **kw), params=params)["items"]

    def create(self, obj: dict) -> dict:
        kind, ns = obj["kind"], obj.get("metadata", {}).get("namespace")
        return self.request("POST", self.path(kind, ns, api_version=obj["apiVersion"]), body=obj)

    def apply(self, obj: dict, *, force: bool = True, subresource: str | None = None,
              manager: str | None = None) -> dict:
        meta = obj["metadata"]
        return self.request(
            "PATCH", self.path(obj["kind"], meta.get("namespace"), meta["name"], api_version=obj["apiVersion"],
                               subresource=subresource),
            params={"fieldManager": manager or self.field_manager, "force": "true" if force else "false"},
            raw=json.dumps(obj).encode(), content_type="application/apply-patch+yaml")

    def merge_patch(self, kind: str, namespace: str | None, name: str, patch: dict, *,
                    subresource: str | None = None, **kw) -> dict:
        return self.request("PATCH", self.path(kind, namespace, name, subresource=subresource, **kw),
                            params={"fieldManager": self.field_manager}, body=patch,
                            content_type="application/merge-patch+json")

    def replace(self, obj: dict, *, subresource: str | None = None) -> dict:
        meta = obj["metadata"]
        return self.request("PUT", self.path(obj["kind"], meta.get("namespace"), meta["name"],
                                             api_version=obj["apiVersion"], subresource=subresource), body=obj)

    def delete(self, kind: str, namespace: str | None, name: str, *, propagation: str | None = None,
               missing_ok: bool = False, **kw) -> dict | None:
        body = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if propagation:
            body["propagationPolicy"] = propagation
        try:
            return self.request("DELETE", self.path(kind, namespace, name, **kw), body=body)
        except ApiStatusError as e:
            if missing_ok and e.code == 404:
                return None
            raise


def wait_for(what: str, fn: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """Polls fn until it returns something truthy; fails with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
        except ApiStatusError as e:
            last = e
        if last and not isinstance(last, Exception):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}"[:4000])
        time.sleep(interval)


def load_yaml_docs(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]
