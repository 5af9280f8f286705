"""Offline validation of everything a platform team installs: the Helm chart, install.yaml,
the example resources, the alert rules, the Grafana dashboard and the Argo CD health check.

Run: python3 -m pytest -q e2e/test_manifests.py   (tools: e2e/install-deps.sh)

Built-in kinds are validated with kubernetes-validate in strict mode (unknown fields are
errors) against Kubernetes 1.33, the oldest version the chart supports. Objects whose kind
comes from another project's CRD (ServiceMonitor, PodMonitor, PrometheusRule of the
Prometheus Operator) have no bundled schema and are NOT schema-validated; the rules they carry
are checked and unit-tested with promtool instead. MailDomain and Mailbox objects are validated
against the openAPIV3Schema of our own CRDs with jsonschema (CEL rules are not evaluated here;
the operator's validate module and the API server do that).
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_chart  # noqa: E402

ROOT = render_chart.ROOT
KUBE_VERSION = "1.33.0"
FOREIGN_CRD_GROUPS = {"monitoring.coreos.com"}
TESTDATA = ROOT / "e2e" / "testdata"

# Value sets the chart must render valid objects for.
SCENARIOS = {
    "defaults": {},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
    "single-namespace": {
        "watchNamespace": "mail",
        "serviceMonitor": {"enabled": True},
        "mailImages": {"mta": "registry.example/mail-mta:1", "imap": "registry.example/mail-imap:1"},
    },
    "single-replica-pinned": {
        "replicas": 1,
        "leaderElection": {"enabled": False},
        "image": {
            "repository": "registry.example/postwarden",
            "tag": "",
            "digest": "sha256:" + "ab" * 32,
            "pullPolicy": "Always",
        },
        "imagePullSecrets": [{"name": "registry-credentials"}],
        "serviceAccount": {"create": False, "name": "mail-operator"},
        "rbac": {"create": True, "aggregateToDefaultRoles": False},
        "priorityClassName": "system-cluster-critical",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "mail", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "mail"},
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "metrics": {"port": 9090, "service": {"enabled": False}},
        "logging": {"level": "postwarden=debug,kube=info", "format": "text"},
    },
}


def objects(values: dict) -> list[dict]:
    return render_chart.rendered_objects(render_chart.render(values))


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def strict_kubernetes_errors(obj: dict) -> list[str]:
    """Schema errors of a built-in object; a kind without a bundled schema is an error too."""
    try:
        kv.validate(obj, KUBE_VERSION, strict=True)
    except kv.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}"]
    except kv.SchemaNotFoundError as e:
        return [e.message]
    return []


def is_foreign_custom_resource(obj: dict) -> bool:
    return obj["apiVersion"].split("/")[0] in FOREIGN_CRD_GROUPS


# --- CR instances against our CRDs --------------------------------------------------------


def _openapi_to_jsonschema(node: object) -> object:
    """The structural-schema subset the API server enforces, as JSON Schema: `nullable`,
    `x-kubernetes-int-or-string`, and no unknown fields (kubectl's default strict field
    validation rejects them)."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    for key in ("properties",):
        if key in node:
            out[key] = {name: _openapi_to_jsonschema(s) for name, s in node[key].items()}
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if (
        out.get("type") in ("object", ["object", "null"])
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_validators() -> dict[tuple[str, str], jsonschema.Draft202012Validator]:
    validators = {}
    for crd in yaml.safe_load_all((ROOT / "crds" / "postwarden.yaml").read_text()):
        if not crd:
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = _openapi_to_jsonschema(version["schema"]["openAPIV3Schema"])
            schema["properties"] = dict(schema["properties"])
            schema["properties"].update(
                apiVersion={"const": f"{group}/{version['name']}"},
                kind={"const": kind},
                metadata={
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "maxLength": 253, "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                    },
                },
            )
            schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
            jsonschema.Draft202012Validator.check_schema(schema)
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft202012Validator(schema)
    return validators


def document_errors(obj: dict, validators: dict) -> list[str]:
    """Errors of one example document: CRD schema for our kinds, strict Kubernetes for the rest."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in validators:
        return [
            f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
            for e in sorted(validators[key].iter_errors(obj), key=lambda e: list(map(str, e.absolute_path)))
        ]
    return strict_kubernetes_errors(obj)


@pytest.fixture(scope="module")
def validators():
    return crd_validators()


# --- install.yaml -------------------------------------------------------------------------


def test_generated_files_are_up_to_date():
    stale = [
        str(path.relative_to(ROOT))
        for path, want in render_chart.expected_files().items()
        if not path.exists() or path.read_text() != want
    ]
    assert not stale, f"out of date: {stale}; run `python3 e2e/render_chart.py`"


def test_install_yaml_passes_kubernetes_validate_cli():
    tool = shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate is not installed (pip install -r e2e/requirements.txt)"
    run = subprocess.run(
        [tool, "-k", KUBE_VERSION, "--strict", str(ROOT / "manifests" / "install.yaml")],
        capture_output=True, text=True, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    passed = [line for line in run.stdout.splitlines() if line.startswith("INFO") and "passed" in line]
    problems = [line for line in run.stdout.splitlines() if not line.startswith("INFO")]
    assert not problems, "\n".join(problems)
    objs = [o for o in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if o]
    assert len(passed) == len(objs) > 0


def test_install_yaml_holds_namespace_crds_and_operator():
    objs = [o for o in yaml.safe_load_all((ROOT / "manifests" / "install.yaml").read_text()) if o]
    kinds = [o["kind"] for o in objs]
    assert kinds[0] == "Namespace" and objs[0]["metadata"]["name"] == render_chart.NAMESPACE
    assert objs[0]["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert [o["metadata"]["name"] for o in by_kind(objs, "CustomResourceDefinition")] == [
        "maildomains.postwarden.dev",
        "mailboxes.postwarden.dev",
    ]
    # CRDs before anything that needs them; RBAC before the Deployment that uses it.
    assert kinds.index("CustomResourceDefinition") < kinds.index("ClusterRole") < kinds.index("Deployment")
    assert not any(is_foreign_custom_resource(o) for o in objs), "install.yaml must not need Prometheus Operator CRDs"
    for o in objs:
        if o["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert o["metadata"]["namespace"] == render_chart.NAMESPACE, o["metadata"]["name"]


# --- the chart ----------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_chart_renders_strictly_valid_objects(scenario):
    objs = objects(SCENARIOS[scenario])
    assert by_kind(objs, "Deployment")
    errors, skipped = [], []
    for obj in objs:
        if is_foreign_custom_resource(obj):
            skipped.append(obj["kind"])
            continue
        errors += strict_kubernetes_errors(obj)
    assert not errors, "\n".join(errors)
    if scenario == "monitoring":
        assert sorted(skipped) == ["PodMonitor", "PrometheusRule", "ServiceMonitor"]


def test_chart_crds_validate_strictly():
    crds = [o for o in yaml.safe_load_all(render_chart.CHART_CRDS.read_text()) if o]
    assert len(crds) == 2
    for crd in crds:
        assert not strict_kubernetes_errors(crd)


def test_helm_lint_is_clean():
    report = helm.lint(render_chart.CHART, strict=True, kube_version="v" + KUBE_VERSION)
    findings = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not findings, report


def test_chart_version_matches_the_crate():
    cargo = (ROOT / "Cargo.toml").read_text()
    crate_version = re.search(r'^\[workspace\.package\][^\[]*?^version = "([^"]+)"', cargo, re.M | re.S).group(1)
    chart = yaml.safe_load((render_chart.CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == crate_version
    deployment = by_kind(objects({}), "Deployment")[0]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/postwarden/postwarden:{crate_version}"


BAD_VALUES = {
    "zero replicas": ({"replicas": 0}, "/replicas"),
    "replicas as text": ({"replicas": "two"}, "/replicas"),
    "misspelt key": ({"replica": 2}, "'replica' not allowed"),
    "misspelt nested key": ({"serviceMonitor": {"enable": True}}, "'enable' not allowed"),
    "replicas without leader election": ({"replicas": 3, "leaderElection": {"enabled": False}}, "/leaderElection/enabled"),
    "bad pull policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "bad namespace": ({"watchNamespace": "Mail_NS"}, "/watchNamespace"),
    "bad digest": ({"image": {"digest": "latest"}}, "/image/digest"),
    "privileged metrics port": ({"metrics": {"port": 80}}, "/metrics/port"),
    "bad log format": ({"logging": {"format": "xml"}}, "/logging/format"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_values_schema_rejects_bad_values(case):
    values, where = BAD_VALUES[case]
    with helm.Chart.load(render_chart.CHART) as chart:
        with pytest.raises(helm.HelmValuesError) as schema_error:
            chart.validate_schema(values)
        assert where in str(schema_error.value)
    # ... and a render (what `helm install` does) refuses them as well.
    with pytest.raises(helm.HelmError):
        render_chart.render(values)


def test_values_schema_accepts_every_scenario():
    with helm.Chart.load(render_chart.CHART) as chart:
        for values in SCENARIOS.values():
            chart.validate_schema(values)


# --- RBAC and pod security ----------------------------------------------------------------

WRITE = ["get", "list", "watch", "create", "patch", "update", "delete"]
EXPECTED_RULES = {
    ("postwarden.dev", "maildomains"): ["get", "list", "watch", "patch", "update"],
    ("postwarden.dev", "mailboxes"): ["get", "list", "watch", "patch", "update"],
    ("postwarden.dev", "maildomains/status"): ["get", "patch", "update"],
    ("postwarden.dev", "mailboxes/status"): ["get", "patch", "update"],
    ("postwarden.dev", "maildomains/finalizers"): ["update"],
    ("postwarden.dev", "mailboxes/finalizers"): ["update"],
    ("", "configmaps"): WRITE,
    ("", "secrets"): WRITE,
    ("", "services"): WRITE,
    ("", "serviceaccounts"): WRITE,
    ("", "persistentvolumeclaims"): ["get", "list", "watch", "patch"],
    ("", "pods"): ["get", "list", "watch"],
    ("", "events"): ["create", "patch"],
    ("events.k8s.io", "events"): ["create", "patch"],
    ("apps", "statefulsets"): WRITE,
    ("policy", "poddisruptionbudgets"): WRITE,
    ("networking.k8s.io", "networkpolicies"): WRITE,
    ("batch", "cronjobs"): WRITE,
    ("batch", "jobs"): ["get", "list", "watch", "create", "patch", "delete"],
    ("cert-manager.io", "certificates"): WRITE,
    ("externaldns.k8s.io", "dnsendpoints"): WRITE,
}
CRD_RULE = {
    "apiGroups": ["apiextensions.k8s.io"],
    "resources": ["customresourcedefinitions"],
    "resourceNames": [
        "maildomains.postwarden.dev",
        "mailboxes.postwarden.dev",
        "certificates.cert-manager.io",
        "dnsendpoints.externaldns.k8s.io",
    ],
    "verbs": ["get"],
}


def flatten(rules: list[dict]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for rule in rules:
        assert "resourceNames" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out, f"{group}/{resource} granted twice"
                out[(group, resource)] = sorted(rule["verbs"])
    return out


def operator_roles(objs: list[dict]) -> list[dict]:
    return [o for o in objs if o["kind"] in ("ClusterRole", "Role") and not o["metadata"]["name"].endswith(("-edit", "-view"))]


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_rbac_grants_exactly_what_the_operator_uses(scenario):
    objs = objects(SCENARIOS[scenario])
    for role in by_kind(objs, "ClusterRole") + by_kind(objs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(field, []), f"wildcard in {role['metadata']['name']}: {rule}"
    roles = {o["metadata"]["name"]: o for o in operator_roles(objs)}
    namespaced = SCENARIOS[scenario].get("watchNamespace")
    main_kind = "Role" if namespaced else "ClusterRole"
    main = roles["postwarden"]
    assert main["kind"] == main_kind
    rules = main["rules"]
    if namespaced:
        assert main["metadata"]["namespace"] == namespaced
        assert roles["postwarden-crds"]["rules"] == [CRD_RULE]
    else:
        assert rules[-1] == CRD_RULE
        rules = rules[:-1]
    assert flatten(rules) == {k: sorted(v) for k, v in EXPECTED_RULES.items()}
    leader = roles.get("postwarden-leader-election")
    if SCENARIOS[scenario].get("leaderElection", {}).get("enabled", True):
        assert leader["metadata"]["namespace"] == render_chart.NAMESPACE
        assert flatten(leader["rules"]) == {("coordination.k8s.io", "leases"): ["create", "get", "update"]}
    else:
        assert leader is None
    # Every operator role is bound to the operator's ServiceAccount and nothing else.
    sa = SCENARIOS[scenario].get("serviceAccount", {}).get("name") or "postwarden"
    bindings = by_kind(objs, "ClusterRoleBinding") + by_kind(objs, "RoleBinding")
    assert sorted(b["roleRef"]["name"] for b in bindings) == sorted(roles)
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": render_chart.NAMESPACE}]


def test_persistent_volume_claims_are_never_deleted():
    # Read, and patched only to grow them; never created, replaced or deleted.
    for scenario in SCENARIOS.values():
        for role in operator_roles(objects(scenario)):
            for rule in role["rules"]:
                if "persistentvolumeclaims" in rule["resources"]:
                    assert set(rule["verbs"]) <= {"get", "list", "watch", "patch"}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_operator_pod_meets_the_restricted_pod_security_standard(scenario):
    deployment = by_kind(objects(SCENARIOS[scenario]), "Deployment")[0]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("volumes")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    want_args = ["run", "--leader-elect"] if deployment["spec"]["replicas"] > 1 else ["run"]
    assert container["args"] == want_args


def test_defaults_run_two_replicas_with_leader_election_and_a_disruption_budget():
    objs = objects({})
    assert by_kind(objs, "Deployment")[0]["spec"]["replicas"] == 2
    assert by_kind(objs, "PodDisruptionBudget")[0]["spec"]["minAvailable"] == 1
    assert not by_kind(objects({"replicas": 1, "leaderElection": {"enabled": False}}), "PodDisruptionBudget")


def test_rendering_is_deterministic():
    values = SCENARIOS["monitoring"]
    assert render_chart.render(values) == render_chart.render(values)


def test_no_empty_fields_for_argo_cd_to_diff():
    """The API server drops empty lists/maps and nulls; desired state holding them would show
    as a permanent diff in Argo CD."""

    def walk(node, path):
        if isinstance(node, dict):
            for k, v in node.items():
                assert v is not None and v != {} and v != [], f"{path}.{k} is empty"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for scenario in SCENARIOS.values():
        for obj in objects(scenario):
            walk(obj, f"{obj['kind']}/{obj['metadata']['name']}")


# --- examples against the CRD schemas -----------------------------------------------------


EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(example, validators):
    docs = [d for d in yaml.safe_load_all(example.read_text()) if d]
    assert any(d["kind"] == "MailDomain" for d in docs)
    errors = []
    for doc in docs:
        errors += document_errors(doc, validators)
    assert not errors, "\n".join(errors)


INVALID = sorted((TESTDATA / "invalid-examples").glob("*.yaml"))


@pytest.mark.parametrize("example", INVALID, ids=lambda p: p.name)
def test_invalid_examples_are_rejected(example, validators):
    text = example.read_text()
    expected = re.search(r"^# expect-error: (.+)$", text, re.M).group(1)
    (doc,) = [d for d in yaml.safe_load_all(text) if d]
    assert expected in document_errors(doc, validators)


def test_valid_example_turned_invalid_is_rejected(validators):
    """The schema check is not vacuous: breaking a field of a valid example breaks validation."""
    quickstart = [d for d in yaml.safe_load_all((ROOT / "manifests/examples/quickstart.yaml").read_text()) if d]
    domain = next(d for d in quickstart if d["kind"] == "MailDomain")
    assert document_errors(domain, validators) == []
    for mutate, where in [
        (lambda d: d["spec"].pop("domain"), "spec"),
        (lambda d: d["spec"]["backup"].update(retention={"daily": -1}), "spec.backup.retention.daily"),
        (lambda d: d["spec"].update(unknown=True), "spec"),
        (lambda d: d.update(kind="Maildomain"), None),
    ]:
        broken = copy.deepcopy(domain)
        mutate(broken)
        errors = document_errors(broken, validators)
        assert errors, f"accepted: {broken}"
        if where:
            assert any(e.startswith(where + ":") for e in errors), errors


# --- alert rules and dashboard ------------------------------------------------------------


def promtool() -> str:
    tool = shutil.which("promtool")
    assert tool, "promtool is not installed (e2e/install-deps.sh)"
    return tool


def rule_groups() -> list[dict]:
    (rule,) = by_kind(objects(SCENARIOS["monitoring"]), "PrometheusRule")
    return rule["spec"]["groups"]


def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    check = subprocess.run([promtool(), "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    shutil.copy(TESTDATA / "alerts-test.yaml", tmp_path / "alerts-test.yaml")
    test = subprocess.run(
        [promtool(), "test", "rules", "alerts-test.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_every_alert_has_a_unit_test():
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"]}
    tested = {
        t["alertname"]
        for case in yaml.safe_load((TESTDATA / "alerts-test.yaml").read_text())["tests"]
        for t in case.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    assert alerts == tested


def test_dashboard_queries_are_valid_promql(tmp_path):
    dashboard = json.loads((render_chart.CHART / "dashboards" / "postwarden.json").read_text())
    (cm,) = by_kind(objects(SCENARIOS["monitoring"]), "ConfigMap")
    assert json.loads(cm["data"]["postwarden.json"]) == dashboard
    assert cm["metadata"]["namespace"] == "monitoring" and cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    # promtool has no bare query check; a recording rule per query gets the same parser.
    rules = [
        {"record": f"dashboard:query_{i}", "expr": e.replace("$namespace", ".*").replace("$maildomain", ".*")}
        for i, e in enumerate(exprs)
    ]
    (tmp_path / "dashboard-rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    check = subprocess.run([promtool(), "check", "rules", str(tmp_path / "dashboard-rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_chart_queries_only_metrics_the_operator_exports():
    # charts/postwarden/metrics.txt is checked against the operator's registry by its unit test
    # controller::metrics::tests::exported_names_are_the_ones_the_chart_may_query.
    exported = {
        line.strip()
        for listing in ("metrics.txt", "metrics-agent.txt", "metrics-continuity.txt")
        for line in (render_chart.CHART / listing).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    sources = [render_chart.CHART / "templates" / "prometheusrule.yaml", TESTDATA / "alerts-test.yaml"]
    sources += sorted((render_chart.CHART / "dashboards").glob("*.json"))
    used = {name for path in sources for name in re.findall(r"\bpostwarden_[a-z0-9_]+", path.read_text())}
    assert "postwarden_maildomain_condition" in used
    assert used <= exported, f"not exported by the operator: {sorted(used - exported)}"


def test_monitors_scrape_the_operator_and_every_mail_exporter():
    objs = objects(SCENARIOS["monitoring"])
    (sm,) = by_kind(objs, "ServiceMonitor")
    (svc,) = by_kind(objs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (pm,) = by_kind(objs, "PodMonitor")
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["dovecot-metrics", "repl-metrics", "rspamd-metrics", "postfix-metrics", "cont-metrics"]
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    (pm_ns,) = by_kind(objects(SCENARIOS["single-namespace"]), "PodMonitor")
    assert pm_ns["spec"]["namespaceSelector"] == {"matchNames": ["mail"]}


# --- Argo CD health check -----------------------------------------------------------------


def argocd_health(obj: dict) -> dict:
    from lupa.lua51 import LuaRuntime  # Argo CD runs gopher-lua, a Lua 5.1

    lua = LuaRuntime(unpack_returned_tuples=True)
    script = (render_chart.CHART / "argocd" / "health.lua").read_text()
    check = lua.eval("function(obj)\n" + script + "\nend")
    result = check(lua.table_from(obj, recursive=True))
    return {"status": result["status"], "message": result["message"]}


def _domain(generation=2, observed=2, conditions=None):
    obj = {"apiVersion": "postwarden.dev/v1alpha1", "kind": "MailDomain", "metadata": {"name": "x", "generation": generation}}
    if conditions is not None:
        obj["status"] = {"observedGeneration": observed, "conditions": conditions}
    return obj


def _cond(type_, status, reason="R", message="m", observed=2):
    return {"type": type_, "status": status, "reason": reason, "message": message, "observedGeneration": observed}


@pytest.mark.parametrize(
    "obj, status",
    [
        (_domain(), "Progressing"),
        (_domain(conditions=[]), "Progressing"),
        (_domain(conditions=[_cond("Ready", "True", message="Serving example.com")]), "Healthy"),
        (_domain(conditions=[_cond("Ready", "False", "CertificateFailed")]), "Degraded"),
        (_domain(conditions=[_cond("Ready", "False"), _cond("Progressing", "True")]), "Progressing"),
        (_domain(conditions=[_cond("Ready", "Unknown")]), "Progressing"),
        (_domain(generation=3, observed=2, conditions=[_cond("Ready", "True")]), "Progressing"),
        (_domain(generation=3, observed=3, conditions=[_cond("Ready", "True", observed=2)]), "Progressing"),
    ],
)
def test_argocd_health_check_follows_the_ready_condition(obj, status):
    assert argocd_health(obj)["status"] == status


def test_argocd_health_message_names_the_reason():
    health = argocd_health(_domain(conditions=[_cond("Ready", "False", "PasswordSecretMissing", "secret alice-password not found")]))
    assert health == {"status": "Degraded", "message": "PasswordSecretMissing: secret alice-password not found"}


def test_chart_readme_embeds_the_tested_health_check():
    readme = (render_chart.CHART / "README.md").read_text()
    script = (render_chart.CHART / "argocd" / "health.lua").read_text()
    indented = "".join("      " + line if line.strip() else line for line in script.splitlines(True))
    for kind in ("MailDomain", "Mailbox"):
        assert f"resource.customizations.health.postwarden.dev_{kind}: |\n{indented}" in readme, kind


# --- images -------------------------------------------------------------------------------


def dockerfile(name: str) -> str:
    return (ROOT / "images" / name / "Dockerfile").read_text()


def apt_installed(text: str) -> set[str]:
    """Packages a Dockerfile installs with apt-get install (continuation lines joined)."""
    joined = re.sub(r"\\\n", " ", text)
    packages = set()
    for command in re.findall(r"apt-get install ([^&\n]+)", joined):
        packages |= {w for w in command.split() if not w.startswith("-")}
    return packages


def test_mail_images_carry_the_daemons_the_tests_run():
    recipe = (ROOT / "e2e" / "debian13-root.sh").read_text()
    tested = set(re.search(r"^PACKAGES=\(([^)]*)\)", recipe, re.M).group(1).split())
    assert re.search(r"^SUITE=trixie$", recipe, re.M)
    mta, imap = apt_installed(dockerfile("mail-mta")), apt_installed(dockerfile("mail-imap"))
    assert {"postfix", "rspamd", "publicsuffix"} <= mta <= tested | {"openssl", "ca-certificates"}
    assert {"dovecot-core", "dovecot-imapd", "dovecot-lmtpd", "restic"} <= imap <= tested
    assert "prometheus-postfix-exporter" in dockerfile("mail-mta")
    for name in ("mail-mta", "mail-imap"):
        text = dockerfile(name)
        # The Debian release of the root every daemon test runs in.
        assert re.findall(r"^FROM (\S+)", text, re.M)[-1] == "docker.io/library/debian:trixie-slim", name
        assert "rm -rf /var/lib/apt/lists/*" in text and "--no-install-recommends" in text
    # The replication agent the IMAP entrypoint runs is the operator's binary.
    assert "COPY --from=postwarden /usr/local/bin/postwarden /usr/local/bin/postwarden" in dockerfile("mail-imap")


def test_operator_image_runs_as_the_uid_the_chart_sets():
    text = dockerfile("operator")
    stages = re.findall(r"^FROM (\S+)", text, re.M)
    assert stages[-1] == "gcr.io/distroless/cc-debian12:nonroot"
    assert re.findall(r"^USER (\S+)", text, re.M)[-1] == "65532:65532"
    assert 'ENTRYPOINT ["/usr/local/bin/postwarden"]' in text
    pod = by_kind(objects({}), "Deployment")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 65532 and pod["securityContext"]["runAsGroup"] == 65532


def test_build_script_tags_match_the_chart():
    build = (ROOT / "images" / "build.sh").read_text()
    for image in ("postwarden", "mail-mta", "mail-imap"):
        assert f'"$registry/{image}:$version"' in build
    assert 'registry="${REGISTRY:-ghcr.io/postwarden}"' in build
    values = yaml.safe_load((render_chart.CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/postwarden/postwarden"
    assert "ghcr.io/postwarden/mail-mta:<appVersion>" in (render_chart.CHART / "values.yaml").read_text()


def test_image_users_match_the_ids_the_pods_run_as():
    ids = dict(re.findall(r"pub const (\w+): i64 = (\d+);", (ROOT / "operator/src/resources/mod.rs").read_text()))
    # The mail uid is defined once, in the users database module, and reused by the pods.
    userdb = "\n".join(p.read_text() for p in (ROOT / "operator/src/userdb").glob("*.rs"))
    ids["VMAIL"] = re.search(r"pub const VMAIL_UID: u32 = (\d+);", userdb).group(1)
    mta, imap = dockerfile("mail-mta"), dockerfile("mail-imap")
    assert f"usermod --uid {ids['RSPAMD']} --gid {ids['RSPAMD']} _rspamd" in mta
    assert f"useradd --uid {ids['VMAIL']} --gid {ids['VMAIL']} " in imap


def test_operator_default_mail_images_are_the_ones_built_here():
    images_rs = (ROOT / "operator/src/resources/images.rs").read_text()
    assert '"ghcr.io/postwarden"' in images_rs
    assert '"/mail-mta:",\n    env!("CARGO_PKG_VERSION")' in images_rs
    assert '"/mail-imap:",\n    env!("CARGO_PKG_VERSION")' in images_rs
