"""The control plane of e2e/controlplane.sh as the suite uses it: started and stopped, the operator
installed with kubectl, ServiceAccount tokens, and what the API server itself records about
writes (its audit log and its apiserver_request_total metric)."""

from __future__ import annotations

import base64
import copy
import json
import os
import subprocess
from pathlib import Path

import requests
import yaml

from kube import KINDS

E2E = Path(__file__).resolve().parent
SCRIPT = E2E / "controlplane.sh"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
METRIC_WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"
KIND_OF = {plural: kind for (_, kind), (plural, _) in KINDS.items()} | {"leases": "Lease"}


class ControlPlane:
    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir.parent / "controlplane-up.log", "w") as log:
            subprocess.run([str(SCRIPT), "up", str(self.dir)], check=True, stdout=log, stderr=subprocess.STDOUT,
                           timeout=3600)
        self.kubeconfig = self.dir / "kubeconfig"
        self.server = (self.dir / "server").read_text().strip()
        self.ca = self.dir / "pki" / "ca.crt"
        self.admin = requests.Session()
        self.admin.trust_env = False
        self.admin.verify = str(self.ca)
        self.admin.cert = (str(self.dir / "pki" / "admin.crt"), str(self.dir / "pki" / "admin.key"))

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig), "KUBECACHEDIR": str(self.dir / "kubectl-cache")}
        r = subprocess.run([str(self.dir / "bin" / "kubectl"), *args], input=stdin, capture_output=True, text=True, env=env, timeout=300)
        if r.returncode != 0:
            raise subprocess.CalledProcessError(r.returncode, ["kubectl", *args], r.stdout, r.stderr)
        return r.stdout

    def install(self, manifest: Path) -> None:
        """As a user installs: `kubectl apply --server-side`. The Deployment is scaled to zero:
        simulated nodes run no containers, so the operator runs as processes beside the suite."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(manifest))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/maildomains.postwarden.dev", "crd/mailboxes.postwarden.dev")
        for doc in yaml.safe_load_all(manifest.read_text()):
            if doc and doc["kind"] == "Deployment":
                self.kubectl("-n", doc["metadata"]["namespace"], "scale", f"deployment/{doc['metadata']['name']}",
                             "--replicas=0")

    def service_account_kubeconfig(self, namespace: str, name: str, out: Path) -> tuple[Path, str]:
        """A kubeconfig with a fresh token of the ServiceAccount (TokenRequest), and the token's
        credential id, which the audit log records with every request it authenticates."""
        token = self.kubectl("-n", namespace, "create", "token", name, "--duration=24h").strip()
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        out.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": name,
            "clusters": [{"name": "e2e", "cluster": {"server": self.server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": "e2e", "user": name}}],
        }))
        out.chmod(0o600)
        return out, f"JTI={claims['jti']}"

    def withhold_writes(self, manifest: Path, service_account: str, resource: str) -> None:
        """Applies the install's ClusterRole for `service_account` without write verbs on `resource`."""
        docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
        bound = {d["roleRef"]["name"] for d in docs if d["kind"] == "ClusterRoleBinding"
                 and any(s.get("name") == service_account for s in d.get("subjects") or [])}
        for role in (d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] in bound):
            narrowed = copy.deepcopy(role)
            for rule in narrowed["rules"]:
                if resource in rule.get("resources", []):
                    rule["verbs"] = [v for v in rule["verbs"] if v not in WRITE_VERBS]
            self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(narrowed))

    # ---- what the API server records ------------------------------------------------------------

    def audit_size(self) -> int:
        path = self.dir / "audit.log"
        return path.stat().st_size if path.exists() else 0

    def audited_writes(self, offset: int, username: str, credential: str | None = None) -> dict[str, int]:
        """{"Kind verb": count} of the user's write requests logged after `offset` (only those
        authenticated by `credential` when given)."""
        out: dict[str, int] = {}
        with open(self.dir / "audit.log", "rb") as f:
            f.seek(offset)
            for line in f:
                if not line.endswith(b"\n"):
                    break  # being written
                event = json.loads(line)
                user = event.get("user") or {}
                if event.get("verb") not in WRITE_VERBS or user.get("username") != username:
                    continue
                if credential and credential not in (user.get("extra") or {}).get(CREDENTIAL_ID, []):
                    continue
                ref = event.get("objectRef") or {}
                kind = KIND_OF.get(ref.get("resource"), ref.get("resource"))
                key = f"{kind}{'/' + ref['subresource'] if ref.get('subresource') else ''} {event['verb']}"
                out[key] = out.get(key, 0) + 1
        return out

    def request_totals(self) -> dict[str, float]:
        """apiserver_request_total summed over write verbs, per `resource[/subresource]`."""
        text = self.admin.get(f"{self.server}/metrics", timeout=30).text
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line.startswith("apiserver_request_total{"):
                continue
            labels_text, value = line[len("apiserver_request_total{"):].rsplit("} ", 1)
            labels = dict(part.split("=", 1) for part in labels_text.split('",') if "=" in part)
            labels = {k: v.strip('"') for k, v in labels.items()}
            if labels.get("verb") not in METRIC_WRITE_VERBS:
                continue
            key = labels.get("resource", "") + (f"/{labels['subresource']}" if labels.get("subresource") else "")
            out[key] = out.get(key, 0.0) + float(value)
        return out

    def down(self) -> None:
        subprocess.run([str(SCRIPT), "down", str(self.dir)], check=False, timeout=120)
