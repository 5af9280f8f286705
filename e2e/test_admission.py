"""Admission: every bad MailDomain and Mailbox of testdata/admission is refused by the API server
(kubectl's default strict field validation, the CRD schemas and their CEL rules) and by
`postwarden render`, both naming the field the case's `# field:` line gives."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import operator_binary

CORPUS = sorted((Path(__file__).resolve().parent / "testdata" / "admission").glob("*.yaml"))


def field_of(case: Path) -> str:
    return re.search(r"^# field: (\S+)$", case.read_text(), re.M).group(1)


@pytest.fixture(scope="module")
def admission_ns(cluster):
    name = f"pw-admission-{uuid.uuid4().hex[:5]}"
    cluster.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kube.delete("Namespace", None, name, missing_ok=True)


def test_the_corpus_covers_both_kinds_and_the_kinds_of_refusal():
    kinds = {re.search(r"^kind: (\w+)$", c.read_text(), re.M).group(1) for c in CORPUS}
    assert kinds == {"MailDomain", "Mailbox"}
    assert len(CORPUS) >= 12, [c.name for c in CORPUS]


@pytest.mark.parametrize("case", CORPUS, ids=lambda p: p.stem)
def test_kubectl_refuses_naming_the_field(cluster, admission_ns, case):
    kubectl = getattr(cluster, "kubectl", None)
    if kubectl is None:
        pytest.skip("needs the suite's own control plane")
    with pytest.raises(subprocess.CalledProcessError) as refused:
        kubectl("apply", "-n", admission_ns, "-f", str(case))
    assert field_of(case) in refused.value.stderr, refused.value.stderr


@pytest.mark.parametrize("case", CORPUS, ids=lambda p: p.stem)
def test_render_refuses_naming_the_same_field(case):
    r = subprocess.run([str(operator_binary()), "render", "-f", str(case)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0, f"render accepted {case.name}:\n{r.stdout[:2000]}"
    assert field_of(case) in r.stderr, r.stderr


def test_render_accepts_the_corpus_fixed(tmp_path):
    """Not vacuous: the quickstart renders, and so does a corpus case with its bad line removed."""
    case = next(c for c in CORPUS if c.stem == "maildomain-unknown-field")
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text("\n".join(line for line in case.read_text().splitlines() if "replicas: 2" not in line) + "\n")
    r = subprocess.run([str(operator_binary()), "render", "-f", str(fixed)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
