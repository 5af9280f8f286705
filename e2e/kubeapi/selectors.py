"""Label and field selectors in the syntax of kube-apiserver query parameters."""

from __future__ import annotations

import re
from typing import Callable

from .errors import bad_request

_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")

Matcher = Callable[[dict], bool]


def _split(expr: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in expr:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector(expr: str | None) -> Matcher:
    if not expr:
        return lambda labels: True
    reqs: list[Matcher] = []
    for term in _split(expr):
        m = _SET_RE.match(term)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            if op == "in":
                reqs.append(lambda l, k=key, vs=values: l.get(k) in vs)
            else:
                reqs.append(lambda l, k=key, vs=values: l.get(k) not in vs)
        elif "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            reqs.append(lambda l, k=k, v=v: l.get(k) != v)
        elif "==" in term or "=" in term:
            k, v = (s.strip() for s in re.split("==?", term, maxsplit=1))
            reqs.append(lambda l, k=k, v=v: l.get(k) == v)
        elif term.startswith("!"):
            reqs.append(lambda l, k=term[1:].strip(): k not in l)
        elif re.fullmatch(r"[A-Za-z0-9./_-]+", term):
            reqs.append(lambda l, k=term: k in l)
        else:
            raise bad_request(f"unable to parse requirement: {term!r}")
    return lambda labels: all(r(labels) for r in reqs)


# Fields selectable on every kind, plus those kube-apiserver supports on Events.
_FIELDS_ALL = {"metadata.name", "metadata.namespace"}
_FIELDS_BY_KIND = {
    "Event": {
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
        "reason", "reportingComponent", "source", "type", "regarding.kind", "regarding.name",
        "regarding.namespace", "regarding.uid",
    },
}


def _field(obj: dict, path: str) -> str:
    cur = obj
    for k in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(k)
    return "" if cur is None else str(cur)


def field_selector(expr: str | None, kind: str) -> Matcher:
    if not expr:
        return lambda obj: True
    reqs: list[Matcher] = []
    allowed = _FIELDS_ALL | _FIELDS_BY_KIND.get(kind, set())
    for term in _split(expr):
        if "!=" in term:
            k, v = term.split("!=", 1)
            neg = True
        elif "=" in term:
            k, v = re.split("==?", term, maxsplit=1)
            neg = False
        else:
            raise bad_request(f"invalid selector: {expr!r}; can't understand {term!r}")
        k, v = k.strip(), v.strip()
        if k not in allowed:
            raise bad_request(f'field label not supported: {k}')
        reqs.append(lambda o, k=k, v=v, neg=neg: (_field(o, k) == v) != neg)
    return lambda obj: all(r(obj) for r in reqs)
