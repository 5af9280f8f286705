"""A Kubernetes API server emulator for testing operators without a cluster (see e2e/README.md)."""

from __future__ import annotations

import yaml

from .server import KubeApiEmulator, make_server
from .store import Store

__all__ = ["KubeApiEmulator", "Store", "make_server", "preload", "write_kubeconfig", "kubeconfig"]


def preload(store: Store, path: str) -> None:
    """Creates every object of a YAML file (CRDs first), as `kubectl create -f` would."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    docs.sort(key=lambda d: d.get("kind") != "CustomResourceDefinition")
    for doc in docs:
        group, _, version = doc["apiVersion"].rpartition("/")
        rt = next(r for r in store.resources.values()
                  if r.group == group and r.version == version and r.kind == doc["kind"])
        ns = (doc.get("metadata") or {}).get("namespace") or ("default" if rt.namespaced else None)
        store.create(rt, ns, doc, user="admin", manager="kubectl-create")


def kubeconfig(url: str, users: list[str]) -> dict:
    """A kubeconfig with one context per user (bearer token = user name), the first current."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": u, "user": {"token": u}} for u in users],
        "contexts": [{"name": u, "context": {"cluster": "emulator", "user": u, "namespace": "default"}}
                     for u in users],
        "current-context": users[0],
    }


def write_kubeconfig(path: str, url: str, users: list[str]) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(kubeconfig(url, users), f)
