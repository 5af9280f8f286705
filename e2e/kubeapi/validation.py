"""The admission checks of kube-apiserver that an operator can run into: names, labels, sizes,
immutable fields. Schema validation of custom resources (OpenAPI, CEL) is not done here."""

from __future__ import annotations

import base64
import binascii
import json
import re

from . import errors

# Limits of kube-apiserver and etcd.
MAX_DATA_BYTES = 1 << 20  # Secret and ConfigMap data
MAX_ANNOTATIONS_BYTES = 256 << 10
MAX_OBJECT_BYTES = 1_572_864  # etcd's request size limit (1.5 MiB)

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_SUBDOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
_LABEL_RE = re.compile(rf"^{_LABEL}$")
_QUALIFIED_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DATA_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")

STATEFULSET_MUTABLE_SPEC = {
    "replicas", "ordinals", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy", "minReadySeconds",
}


def _name_causes(rt, name: str) -> list[tuple[str, str]]:
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    if rt.name_rule == "label":
        if len(name) > 63 or not _LABEL_RE.match(name):
            return [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                                      "alphanumeric characters or '-', and must start and end with an alphanumeric "
                                      "character (at most 63 characters)")]
    elif len(name) > 253 or not _SUBDOMAIN_RE.match(name):
        return [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                                  "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                                  "character (at most 253 characters)")]
    return []


def _qualified_name_ok(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _SUBDOMAIN_RE.match(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME_RE.match(name))


def _metadata_causes(meta: dict) -> list[tuple[str, str]]:
    causes = []
    for k, v in (meta.get("labels") or {}).items():
        if not _qualified_name_ok(k):
            causes.append(("metadata.labels", f'Invalid value: "{k}": name part must be at most 63 characters'))
        if not isinstance(v, str) or (v and (len(v) > 63 or not _QUALIFIED_NAME_RE.match(v))):
            causes.append(("metadata.labels", f'Invalid value: "{v}": a valid label must be an empty string or '
                                               "consist of alphanumeric characters, '-', '_' or '.' (at most 63)"))
    annotations = meta.get("annotations") or {}
    for k, v in annotations.items():
        if not _qualified_name_ok(k):
            causes.append(("metadata.annotations", f'Invalid value: "{k}": not a qualified name'))
        if not isinstance(v, str):
            causes.append(("metadata.annotations", f"Invalid value: {k}: annotation values must be strings"))
    size = sum(len(k) + len(str(v)) for k, v in annotations.items())
    if size > MAX_ANNOTATIONS_BYTES:
        causes.append(("metadata.annotations", f"Too long: must have at most {MAX_ANNOTATIONS_BYTES} bytes"))
    controllers = 0
    for i, ref in enumerate(meta.get("ownerReferences") or []):
        for f in ("apiVersion", "kind", "name", "uid"):
            if not ref.get(f):
                causes.append((f"metadata.ownerReferences[{i}].{f}", "Required value"))
        controllers += bool(ref.get("controller"))
    if controllers > 1:
        causes.append(("metadata.ownerReferences", "Invalid value: only one reference can have Controller set to true"))
    return causes


def _data_causes(obj: dict, kind: str) -> list[tuple[str, str]]:
    causes = []
    total = 0
    if kind == "Secret":
        for k, v in (obj.get("data") or {}).items():
            if not _DATA_KEY_RE.match(k):
                causes.append((f"data[{k}]", "Invalid value: a valid config key must consist of alphanumeric "
                                             "characters, '-', '_' or '.'"))
            try:
                total += len(base64.b64decode(v or "", validate=True))
            except (binascii.Error, TypeError, ValueError):
                causes.append((f"data[{k}]", "Invalid value: illegal base64 data"))
    else:
        for field in ("data", "binaryData"):
            for k, v in (obj.get(field) or {}).items():
                if not _DATA_KEY_RE.match(k):
                    causes.append((f"{field}[{k}]", "Invalid value: a valid config key must consist of alphanumeric "
                                                    "characters, '-', '_' or '.'"))
                total += len(k) + len(v or "")
    if total > MAX_DATA_BYTES:
        causes.append(("data", f"Too long: must have at most {MAX_DATA_BYTES} bytes"))
    return causes


def normalize_secret(obj: dict) -> None:
    """Folds stringData into data (base64) as kube-apiserver does before storing."""
    string_data = obj.pop("stringData", None)
    if string_data:
        data = obj.setdefault("data", {})
        for k, v in string_data.items():
            data[k] = base64.b64encode(str(v).encode()).decode()
    obj.setdefault("type", "Opaque")


def check(rt, obj: dict, old: dict | None) -> None:
    """Raises 422 Invalid (or 413) when kube-apiserver would refuse to store obj."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    causes = _name_causes(rt, name) + _metadata_causes(meta)
    if rt.kind in ("Secret", "ConfigMap") and rt.group == "":
        causes += _data_causes(obj, rt.kind)
        if old is not None and old.get("immutable"):
            for f in ("data", "binaryData", "immutable", "type"):
                if old.get(f) != obj.get(f):
                    causes.append((f, "Forbidden: field is immutable when `immutable` is set"))
    if rt.kind == "StatefulSet" and old is not None:
        before = {k: v for k, v in (old.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE_SPEC}
        after = {k: v for k, v in (obj.get("spec") or {}).items() if k not in STATEFULSET_MUTABLE_SPEC}
        if before != after:
            causes.append(("spec", "Forbidden: updates to statefulset spec for fields other than 'replicas', "
                                   "'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' "
                                   "and 'minReadySeconds' are forbidden"))
    if causes:
        raise errors.invalid(rt, name, causes)
    if len(json.dumps(obj, separators=(",", ":"))) > MAX_OBJECT_BYTES:
        raise errors.too_large("etcdserver: request is too large")
