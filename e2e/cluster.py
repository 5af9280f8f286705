"""Where the e2e suite runs: the emulator with operator processes it starts itself, or a real
cluster (KUBECONFIG set) with the operator installed by helm. Tests speak only to `Cluster`."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import requests

from harness import EmulatorProcess, OperatorProcess, writes_by
from kube import Kube, wait_for

OPERATOR_NAMESPACE = os.environ.get("POSTWARDEN_E2E_OPERATOR_NAMESPACE", "postwarden-system")
# How often the operator resyncs a MailDomain in the suite (the quiet test waits two of them).
RESYNC_SECONDS = int(os.environ.get("POSTWARDEN_E2E_RESYNC_SECONDS", "4"))
OPERATOR_USER_PREFIX = "operator-"
OPERATOR_POD_SELECTOR = "app.kubernetes.io/name=postwarden,app.kubernetes.io/component=operator"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """Common interface; see EmulatedCluster and RealCluster."""

    emulated: bool
    kube: Kube

    def start_operator(self, identity: str | None = None) -> str: ...
    def stop_operator(self, identity: str, *, hard: bool = False) -> None: ...
    def assert_alive(self) -> None: ...
    def stop_all(self) -> None: ...
    def running(self) -> list[str]: ...
    def operator_logs(self) -> str: ...
    def simulate_kubelet(self, namespace: str, statefulset: dict) -> None: ...
    def create_claims_like_statefulset_controller(self, namespace: str, statefulset: dict) -> list[str]: ...
    def stall_writes(self, path_regex: str, seconds: float) -> None: ...
    def refuse_writes(self, path_regex: str, status: int, message: str) -> bool: ...
    def clear_faults(self) -> None: ...
    def operator_writes(self, identity: str | None = None) -> dict[str, int] | None: ...
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


class EmulatedCluster(Cluster):
    emulated = True

    def __init__(self, workdir: Path):
        self.workdir = workdir
        # A fresh identity (kubeconfig user, POD_NAME) per operator started, as a new pod would have.
        self.identities = [f"{OPERATOR_USER_PREFIX}{c}" for c in "abcdefghijklmnopqrstuvwxyz"]
        self.used: set[str] = set()
        self.emulator = EmulatorProcess(workdir, users=["tests", *self.identities])
        self.kube = Kube.from_kubeconfig(str(self.emulator.kubeconfig), "tests")
        self.kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}})
        self.processes: dict[str, OperatorProcess] = {}
        self.stopped: list[OperatorProcess] = []

    def assert_alive(self) -> None:
        """Fails at once, with the logs, when an operator the suite started has exited by itself."""
        dead = [p for p in self.processes.values() if not p.alive()]
        if dead:
            raise AssertionError(f"operator {dead[0].identity} exited with {dead[0].proc.returncode}:\n"
                                 f"{dead[0].logs()}")

    def start_operator(self, identity: str | None = None) -> str:
        identity = identity or next(i for i in self.identities if i not in self.used)
        self.used.add(identity)
        self.processes[identity] = OperatorProcess(
            self.workdir, self.emulator.kubeconfig, identity, namespace=OPERATOR_NAMESPACE,
            resync_seconds=RESYNC_SECONDS, metrics_port=free_port(), health_port=free_port())
        return identity

    def process(self, identity: str) -> OperatorProcess:
        return self.processes[identity]

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

    def simulate_kubelet(self, namespace: str, statefulset: dict) -> None:
        """Sets StatefulSet status as the StatefulSet controller does once every pod is ready."""
        n = statefulset["spec"].get("replicas", 1)
        revision = f"{statefulset['metadata']['name']}-{statefulset['metadata'].get('generation', 1)}"
        self.kube.merge_patch("StatefulSet", namespace, statefulset["metadata"]["name"], {"status": {
            "observedGeneration": statefulset["metadata"].get("generation", 1), "replicas": n, "readyReplicas": n,
            "currentReplicas": n, "updatedReplicas": n, "availableReplicas": n, "currentRevision": revision,
            "updateRevision": revision, "collisionCount": 0}}, subresource="status")

    def create_claims_like_statefulset_controller(self, namespace: str, statefulset: dict) -> list[str]:
        """PVCs `<claim>-<sts>-<ordinal>` with the pod selector labels and no owner (the default
        persistentVolumeClaimRetentionPolicy is Retain)."""
        names = []
        sts = statefulset["metadata"]["name"]
        labels = statefulset["spec"]["selector"].get("matchLabels", {})
        for claim in statefulset["spec"].get("volumeClaimTemplates", []):
            for ordinal in range(statefulset["spec"].get("replicas", 1)):
                name = f"{claim['metadata']['name']}-{sts}-{ordinal}"
                self.kube.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                                 "metadata": {"name": name, "namespace": namespace, "labels": labels},
                                 "spec": claim["spec"]}, manager="statefulset-controller")
                names.append(name)
        return names

    def stall_writes(self, path_regex: str, seconds: float) -> None:
        self.emulator.fault(method="PATCH", path=path_regex, delay=seconds)

    def refuse_writes(self, path_regex: str, status: int, message: str) -> bool:
        reason = {403: "Forbidden", 422: "Invalid"}.get(status, "InternalError")
        self.emulator.fault(method="PATCH", path=path_regex, status=status, reason=reason, message=message)
        return True

    def clear_faults(self) -> None:
        self.emulator.clear_faults()

    def operator_writes(self, identity: str | None = None) -> dict[str, int]:
        return writes_by(self.emulator.writes(), identity or OPERATOR_USER_PREFIX)

    def reset_writes(self) -> None:
        self.emulator.reset()

    def reconciles(self, identity: str) -> int:
        """MailDomain reconciles the operator has run (its postwarden_reconciles counter)."""
        text = metrics(self.processes[identity].metrics_port)
        return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("postwarden_reconciles_total{") and 'kind="MailDomain"' in line))

    def close(self) -> None:
        self.stop_all()
        self.emulator.stop()


class RealCluster(Cluster):
    """The operator runs as the Deployment `postwarden` installed by helm into OPERATOR_NAMESPACE."""

    emulated = False

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

    def simulate_kubelet(self, namespace: str, statefulset: dict) -> None:
        pass  # the real StatefulSet controller and kubelet set status

    def create_claims_like_statefulset_controller(self, namespace: str, statefulset: dict) -> list[str]:
        sts = statefulset["metadata"]["name"]
        names = [f"{c['metadata']['name']}-{sts}-{i}" for c in statefulset["spec"].get("volumeClaimTemplates", [])
                 for i in range(statefulset["spec"].get("replicas", 1))]
        wait_for(f"PVCs of {sts}", lambda: all(self.kube.get_opt("PersistentVolumeClaim", namespace, n)
                                               for n in names), timeout=300)
        return names

    def stall_writes(self, path_regex: str, seconds: float) -> None:
        pass  # a real API server cannot be slowed down from here; the kill lands wherever it lands

    def refuse_writes(self, path_regex: str, status: int, message: str) -> bool:
        return False  # a real API server refuses only what its own rules refuse

    def clear_faults(self) -> None:
        pass

    def operator_writes(self, identity: str | None = None) -> None:
        return None  # not observable on a real cluster; tests compare resourceVersions instead

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
    return EmulatedCluster(workdir)


def metrics(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text


def sleep_until(deadline: float) -> None:
    while time.monotonic() < deadline:
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
