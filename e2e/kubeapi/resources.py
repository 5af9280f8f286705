"""The resource types the emulator serves: built-in kinds and kinds registered by CRDs."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    # Has a /status subresource: the main resource ignores status, /status ignores the rest.
    status: bool = False
    # metadata.generation is maintained (workloads and custom resources; not ConfigMaps, Secrets...).
    generation: bool = False
    # PUT of a missing object creates it (Leases, Events, Services do this in kube-apiserver).
    create_on_update: bool = False
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    # Custom resources: strategic merge patch is refused (415) as kube-apiserver does.
    custom: bool = False
    # Name rule: "subdomain" (DNS-1123 subdomain, 253) or "label" (DNS-1123 label, 63).
    name_rule: str = "subdomain"
    singular: str = field(default="")

    @property
    def key(self) -> tuple[str, str]:
        return (self.group, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> str:
        return self.api_version

    @property
    def singular_name(self) -> str:
        return self.singular or self.kind.lower()

    def discovery_entries(self) -> list[dict]:
        verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
        entries = [
            {
                "name": self.plural,
                "singularName": self.singular_name,
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": verbs,
                **({"shortNames": list(self.short_names)} if self.short_names else {}),
                **({"categories": list(self.categories)} if self.categories else {}),
            }
        ]
        if self.status:
            entries.append(
                {
                    "name": f"{self.plural}/status",
                    "singularName": "",
                    "namespaced": self.namespaced,
                    "kind": self.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        return entries


def _builtin() -> list[ResourceType]:
    rt = ResourceType
    return [
        rt("", "v1", "namespaces", "Namespace", namespaced=False, status=True, short_names=("ns",), name_rule="label"),
        rt("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
        rt("", "v1", "secrets", "Secret"),
        rt("", "v1", "services", "Service", status=True, create_on_update=True, short_names=("svc",),
           categories=("all",), name_rule="label"),
        rt("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
        rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", status=True, short_names=("pvc",)),
        rt("", "v1", "pods", "Pod", status=True, short_names=("po",), categories=("all",)),
        rt("", "v1", "events", "Event", create_on_update=True, short_names=("ev",)),
        rt("", "v1", "endpoints", "Endpoints", create_on_update=True, short_names=("ep",)),
        rt("apps", "v1", "statefulsets", "StatefulSet", status=True, generation=True, short_names=("sts",),
           categories=("all",)),
        rt("apps", "v1", "deployments", "Deployment", status=True, generation=True, short_names=("deploy",),
           categories=("all",)),
        rt("apps", "v1", "replicasets", "ReplicaSet", status=True, generation=True, short_names=("rs",),
           categories=("all",)),
        rt("apps", "v1", "daemonsets", "DaemonSet", status=True, generation=True, short_names=("ds",),
           categories=("all",)),
        rt("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", status=True, generation=True,
           short_names=("pdb",)),
        rt("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy", generation=True, short_names=("netpol",)),
        rt("networking.k8s.io", "v1", "ingresses", "Ingress", status=True, generation=True, short_names=("ing",)),
        rt("batch", "v1", "cronjobs", "CronJob", status=True, generation=True, short_names=("cj",),
           categories=("all",)),
        rt("batch", "v1", "jobs", "Job", status=True, generation=True, categories=("all",)),
        rt("coordination.k8s.io", "v1", "leases", "Lease", create_on_update=True),
        rt("events.k8s.io", "v1", "events", "Event", create_on_update=True, short_names=("ev",)),
        rt("rbac.authorization.k8s.io", "v1", "roles", "Role"),
        rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
        rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", namespaced=False),
        rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", namespaced=False),
        rt("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
           namespaced=False, status=True, generation=True, short_names=("crd", "crds")),
    ]


BUILTIN: list[ResourceType] = _builtin()


def from_crd(crd: dict) -> list[ResourceType]:
    """The resource types a CustomResourceDefinition serves (one per served version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    out = []
    for version in spec.get("versions", []):
        if not version.get("served", True):
            continue
        out.append(
            ResourceType(
                group=spec["group"],
                version=version["name"],
                plural=names["plural"],
                kind=names["kind"],
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                status="status" in (version.get("subresources") or {}),
                generation=True,
                short_names=tuple(names.get("shortNames", [])),
                categories=tuple(names.get("categories", [])),
                custom=True,
                singular=names.get("singular", ""),
            )
        )
    return out
