"""Where the e2e suite runs: the control plane of e2e/controlplane.sh with operator processes it
starts itself, or a real cluster (KUBECONFIG set) with the operator installed by helm. Tests speak
only to `Cluster`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import requests

from controlplane import ControlPlane
from harness import INSTALL, OperatorProcess
from kube import Kube, wait_for

OPERATOR_NAMESPACE = os.environ.get("POSTWARDEN_E2E_OPERATOR_NAMESPACE", "postwarden-system")
# How often the operator resyncs a MailDomain in the suite (the quiet test waits two of them).
RESYNC_SECONDS = int(os.environ.get("POSTWARDEN_E2E_RESYNC_SECONDS", "4"))
OPERATOR_USER_PREFIX = "operator-"
OPERATOR_SERVICE_ACCOUNT = "postwarden"
OPERATOR_POD_SELECTOR = "app.kubernetes.io/name=postwarden,app.kubernetes.io/component=operator"


# Clusters open in this session (tests check their operator processes are still alive).
LIVE: list["Cluster"] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Common interface; see ControlPlaneCluster and RealCluster."""

    local: bool = False  # operator processes run here (their metrics and logs are readable)
    kube: Kube

    def start_operator(self, identity: str | None = None) -> str: ...
    def stop_operator(self, identity: str, *, hard: bool = False) -> None: ...
    def assert_alive(self) -> None: ...
    def stop_all(self) -> None: ...
    def running(self) -> list[str]: ...
    def operator_logs(self) -> str: ...
    def stall_writes(self, resource: str) -> None: ...
    def clear_faults(self) -> None: ...
    def operator_writes(self, identity: str | None = None) -> dict[str, int] | None: ...
    def api_writes(self) -> dict[str, float] | None: ...
    def reset_writes(self) -> None: ...
    def reconciles(self, identity: str) -> int | None: ...

    def lease_holder(self) -> str | None:
        """holderIdentity of the operator's leader Lease (found among all Leases by holder)."""
        for lease in self.kube.list("Lease", self.lease_namespace()):
            holder = (lease.get("spec") or {}).get("holderIdentity") or ""
            if any(identity in holder for identity in self.candidates()):
                return next(i for i in self.candidates() if i in holder)
        return None

    def lease_namespace(self) -> str | None:
        return OPERATOR_NAMESPACE

    def candidates(self) -> list[str]:
        return self.running()


class ControlPlaneCluster(Cluster):
    """The control plane of e2e/controlplane.sh (real API server, controllers, scheduler, simulated
    nodes), with the operator installed from manifests/install.yaml and run as processes here,
    each authenticated by its own token of the install's ServiceAccount."""

    local = True

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.dir = workdir / "controlplane"
        self.plane = ControlPlane(self.dir)
        self.kube = Kube.from_kubeconfig(str(self.plane.kubeconfig))
        self.plane.install(INSTALL)
        self.identities = [f"{OPERATOR_USER_PREFIX}{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
        self.used: set[str] = set()
        self.tokens: dict[str, str] = {}  # identity -> credential id of its token
        self.processes: dict[str, OperatorProcess] = {}
        self.stopped: list[OperatorProcess] = []
        self.audit_offset = self.plane.audit_size()
        self.held: list[str] = []

    def assert_alive(self) -> None:
        """Fails at once, with the logs, when an operator the suite started has exited by itself."""
        dead = [p for p in self.processes.values() if not p.alive()]
        if dead:
            raise AssertionError(f"operator {dead[0].identity} exited with {dead[0].proc.returncode}:\n"
                                 f"{dead[0].logs()}")

    def start_operator(self, identity: str | None = None) -> str:
        identity = identity or next(i for i in self.identities if i not in self.used)
        self.used.add(identity)
        kubeconfig, credential = self.plane.service_account_kubeconfig(
            OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT, self.workdir / f"kubeconfig-{identity}")
        self.tokens[identity] = credential
        self.processes[identity] = OperatorProcess(
            self.workdir, kubeconfig, identity, namespace=OPERATOR_NAMESPACE,
            resync_seconds=RESYNC_SECONDS, metrics_port=free_port(), health_port=free_port())
        return identity

    def process(self, identity: str) -> OperatorProcess:
        return self.processes[identity]

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        """kubectl of the control plane's release as the cluster administrator."""
        return self.plane.kubectl(*args, stdin=stdin)

    def stop_operator(self, identity: str, *, hard: bool = False) -> None:
        proc = self.processes.pop(identity)
        proc.kill() if hard else proc.stop()
        self.stopped.append(proc)

    def stop_all(self) -> None:
        for identity in list(self.processes):
            self.stop_operator(identity)

    def running(self) -> list[str]:
        return [i for i, p in self.processes.items() if p.alive()]

    def candidates(self) -> list[str]:
        return self.identities

    def operator_logs(self) -> str:
        return "\n".join(f"--- {p.identity} ({p.log_path})\n{p.logs()}"
                         for p in [*self.stopped, *self.processes.values()])

    def stall_writes(self, resource: str) -> None:
        """Withdraws the operator's write verbs on `resource` from its ClusterRole: its writes
        are refused (403) until clear_faults() restores the role from the install manifest."""
        self.plane.withhold_writes(INSTALL, OPERATOR_SERVICE_ACCOUNT, resource)
        self.held.append(resource)

    def clear_faults(self) -> None:
        if self.held:
            self.plane.install(INSTALL)
            self.held = []

    def operator_writes(self, identity: str | None = None) -> dict[str, int]:
        """Write requests of the operator's ServiceAccount since reset_writes() (of one
        operator's token when identity is given), from the API server's audit log."""
        credential = self.tokens.get(identity) if identity else None
        return self.plane.audited_writes(self.audit_offset, f"system:serviceaccount:{OPERATOR_NAMESPACE}:"
                                         f"{OPERATOR_SERVICE_ACCOUNT}", credential)

    def api_writes(self) -> dict[str, float]:
        """The API server's own count of write requests (apiserver_request_total) per resource."""
        return self.plane.request_totals()

    def reset_writes(self) -> None:
        self.audit_offset = self.plane.audit_size()

    def reconciles(self, identity: str) -> int:
        """MailDomain reconciles the operator has run (its postwarden_reconciles counter)."""
        text = metrics(self.processes[identity].metrics_port)
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("postwarden_reconciles_total{") and 'kind="MailDomain"' in line))

    def close(self) -> None:
        self.stop_all()
        self.plane.down()


class RealCluster(Cluster):
    """The operator runs as the Deployment `postwarden` installed by helm into OPERATOR_NAMESPACE."""

    def __init__(self, kubeconfig: str):
        self.kube = Kube.from_kubeconfig(kubeconfig)
        self.deployment = os.environ.get("POSTWARDEN_E2E_DEPLOYMENT", "postwarden")
        self.env = {**os.environ}
        self.wanted = 1
        self.seen: set[str] = set()  # operator pods already handed to tests
        self.deleted = False

    def _kubectl(self, *args: str) -> str:
        return subprocess.run(["kubectl", "-n", OPERATOR_NAMESPACE, *args], check=True, capture_output=True,
                              text=True, env=self.env, timeout=300).stdout

    def _scale(self, replicas: int) -> None:
        self.wanted = replicas
        self._kubectl("scale", f"deployment/{self.deployment}", f"--replicas={replicas}")
        self._kubectl("rollout", "status", f"deployment/{self.deployment}", "--timeout=180s")
        wait_for(f"{replicas} operator pods", lambda: len(self.running()) == replicas, timeout=180)

    def start_operator(self, identity: str | None = None) -> str:
        """Another replica — or, after a pod was deleted, the replacement the Deployment makes."""
        if self.deleted:
            wait_for("a replacement operator pod", lambda: len(self.running()) == self.wanted and
                     set(self.running()) - self.seen, timeout=300)
            self.deleted = False
        else:
            self._scale(self.wanted + 1 if self.seen else 1)
        new = sorted(set(self.running()) - self.seen) or self.running()
        self.seen |= set(self.running())
        return new[0]

    def stop_operator(self, identity: str, *, hard: bool = False) -> None:
        if hard:
            self._kubectl("delete", "pod", identity, "--grace-period=0", "--force", "--wait=false")
        else:
            self._kubectl("delete", "pod", identity, "--wait=true")
        self.deleted = True  # the Deployment replaces the pod under a new name

    def stop_all(self) -> None:
        self.seen = set()
        self.deleted = False
        self._scale(1)

    def running(self) -> list[str]:
        pods = self.kube.list("Pod", OPERATOR_NAMESPACE, labels=OPERATOR_POD_SELECTOR)
        return [p["metadata"]["name"] for p in pods
                if p.get("status", {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]

    def operator_logs(self) -> str:
        try:
            return self._kubectl("logs", f"deployment/{self.deployment}", "--tail=100")
        except subprocess.CalledProcessError as e:
            return str(e)

    def assert_alive(self) -> None:
        pass  # the Deployment restarts crashed pods; a crash loop shows up as a timeout with logs

    def stall_writes(self, resource: str) -> None:
        pass  # the install on a real cluster is not ours to narrow; the kill lands wherever it lands

    def clear_faults(self) -> None:
        pass

    def operator_writes(self, identity: str | None = None) -> None:
        return None  # not observable on a real cluster; tests compare resourceVersions instead

    def api_writes(self) -> None:
        return None  # the API server's metrics need more than the suite's RBAC there

    def reset_writes(self) -> None:
        pass

    def reconciles(self, identity: str) -> None:
        return None  # the pods' metrics port is not reachable from here

    def close(self) -> None:
        pass


def open_cluster(workdir: Path) -> Cluster:
    kubeconfig = os.environ.get("KUBECONFIG")
    if kubeconfig:
        return RealCluster(kubeconfig)
    return ControlPlaneCluster(workdir)


def statefulset_claims(kube: Kube, namespace: str, statefulset: dict, timeout: float = 120) -> list[str]:
    """The StatefulSet controller's claims `<claim>-<sts>-<ordinal>`, once they all exist."""
    sts = statefulset["metadata"]["name"]
    names = [f"{c['metadata']['name']}-{sts}-{i}" for c in statefulset["spec"].get("volumeClaimTemplates", [])
             for i in range(statefulset["spec"].get("replicas", 1))]
    wait_for(f"PVCs of {sts}", lambda: all(kube.get_opt("PersistentVolumeClaim", namespace, n) for n in names),
             timeout=timeout)
    return names


def metrics(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def sleep_until(deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
