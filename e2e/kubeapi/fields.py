"""Field paths of objects: the leaf paths server-side apply tracks ownership of, and FieldsV1.

Lists are atomic here (a list is one leaf): real server-side apply merges keyed lists such as
`containers` by name, which the emulator does not (see e2e/README.md).
"""

from __future__ import annotations

import copy
from typing import Any, Iterator

Path = tuple[str, ...]

# Metadata fields a writer can own; the rest of metadata belongs to the server.
OWNABLE_METADATA = ("labels", "annotations", "ownerReferences", "finalizers")
_MISSING = object()


def leaf_paths(obj: Any, prefix: Path = ()) -> Iterator[Path]:
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            yield from leaf_paths(v, prefix + (k,))
    elif prefix:
        yield prefix


def ownable(obj: dict, *, include_status: bool) -> dict:
    """The part of an object whose fields have owners (no apiVersion/kind/server metadata)."""
    out: dict = {}
    for k, v in obj.items():
        if k in ("apiVersion", "kind"):
            continue
        if k == "status" and not include_status:
            continue
        if k == "metadata":
            meta = {m: v[m] for m in OWNABLE_METADATA if m in v}
            if meta:
                out["metadata"] = meta
            continue
        out[k] = v
    return out


def get(obj: Any, path: Path) -> Any:
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return _MISSING
        obj = obj[k]
    return obj


def remove(obj: dict, path: Path) -> None:
    """Removes the field at path and prunes maps left empty below the top level."""
    parents = []
    cur: Any = obj
    for k in path[:-1]:
        if not isinstance(cur, dict) or k not in cur:
            return
        parents.append((cur, k))
        cur = cur[k]
    if isinstance(cur, dict):
        cur.pop(path[-1], None)
    for parent, k in reversed(parents[1:]):
        if parent[k] == {}:
            del parent[k]


def merge(base: dict, applied: dict) -> None:
    """Merges applied into base in place: maps merge recursively, lists and scalars replace."""
    for k, v in applied.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and v:
            merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)


def changed_paths(old: dict, new: dict) -> set[Path]:
    """Leaves of new that are absent from old or differ."""
    return {p for p in leaf_paths(new) if get(old, p) != get(new, p)}


def to_fields_v1(paths: set[Path]) -> dict:
    root: dict = {}
    for p in sorted(paths):
        node = root
        for k in p:
            node = node.setdefault(f"f:{k}", {})
    return root


def from_fields_v1(fields: dict, prefix: Path = ()) -> set[Path]:
    out: set[Path] = set()
    for k, v in fields.items():
        if k == ".":
            if prefix:
                out.add(prefix)
            continue
        name = k[2:] if k.startswith("f:") else k
        if isinstance(v, dict) and v:
            out |= from_fields_v1(v, prefix + (name,))
        else:
            out.add(prefix + (name,))
    return out


def overlaps(a: Path, b: Path) -> bool:
    n = min(len(a), len(b))
    return a[:n] == b[:n]
