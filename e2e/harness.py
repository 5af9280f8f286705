"""Processes the e2e suite starts: the Kubernetes API emulator and `postwarden run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml

E2E = Path(__file__).resolve().parent
REPO = E2E.parent
CRDS = REPO / "crds" / "postwarden.yaml"


class EmulatorProcess:
    """`python3 -m kubeapi` on 127.0.0.1 with a free port, CRDs preloaded and a kubeconfig whose
    contexts are bearer-token users (so the emulator can attribute writes to each client)."""

    def __init__(self, workdir: Path, users: list[str], crds: list[Path] | None = None, log_requests: bool = False,
                 bookmark_interval: float | None = None):
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig"
        self.users = users
        args = [sys.executable, "-m", "kubeapi", "--kubeconfig", str(self.kubeconfig), "--users", ",".join(users)]
        for crd in crds if crds is not None else [CRDS]:
            args += ["--crds", str(crd)]
        if log_requests:
            args.append("--log-requests")
        if bookmark_interval is not None:
            args += ["--bookmark-interval", str(bookmark_interval)]
        self.log = open(workdir / "emulator.log", "w")
        env = {**os.environ, "PYTHONPATH": str(E2E) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"emulator did not start: {line!r}; see {workdir / 'emulator.log'}")
        self.url = line.split()[-1]

    def control(self, method: str, path: str, body: dict | None = None) -> dict:
        r = requests.request(method, f"{self.url}/_emulator/{path}", data=json.dumps(body) if body else None,
                             timeout=30)
        r.raise_for_status()
        return r.json()

    def writes(self) -> dict:
        return self.control("GET", "writes")

    def reset(self) -> None:
        self.control("POST", "reset")

    def fault(self, **fault) -> None:
        self.control("POST", "faults", fault)

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def writes_by(report: dict, user_prefix: str = "", kind: str | None = None) -> dict[str, int]:
    """Write requests of users starting with user_prefix, as {"Kind verb": count}."""
    out: dict[str, int] = {}
    for row in report["writes"]:
        if row["user"].startswith(user_prefix) and (kind is None or row["kind"] == kind):
            key = f"{row['kind']} {row['verb']}"
            out[key] = out.get(key, 0) + row["count"]
    return out


def peak_rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def operator_binary() -> Path:
    explicit = os.environ.get("POSTWARDEN_BIN")
    path = Path(explicit) if explicit else REPO / "target" / "debug" / "postwarden"
    if not path.is_file():
        raise FileNotFoundError(f"operator binary {path} not found: run `cargo build --locked` first "
                                f"(or set POSTWARDEN_BIN)")
    return path


class OperatorProcess:
    """One `postwarden run` process against a kubeconfig context, logging to a file."""

    def __init__(self, workdir: Path, kubeconfig: Path, identity: str, *, namespace: str,
                 resync_seconds: int, metrics_port: int, health_port: int, extra_env: dict | None = None):
        self.identity = identity
        self.metrics_port = metrics_port
        self.log_path = workdir / f"operator-{identity}-{int(time.time() * 1000)}.log"
        self.log = open(self.log_path, "w")
        args = [str(operator_binary()), "run"] + os.environ.get("POSTWARDEN_E2E_RUN_ARGS", "--leader-elect").split()
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig_for(workdir, kubeconfig, identity)),
            # The Lease lives in the operator's namespace and names its holder after the pod.
            "POD_NAMESPACE": namespace,
            "POD_NAME": identity,
            "POSTWARDEN_RESYNC": f"{resync_seconds}s",
            "POSTWARDEN_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "POSTWARDEN_HEALTH_ADDR": f"127.0.0.1:{health_port}",
            "POSTWARDEN_LOG_FORMAT": "text",
            "NO_COLOR": "1",
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            **(extra_env or {}),
        }
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    @staticmethod
    def kubeconfig_for(workdir: Path, kubeconfig: Path, identity: str) -> Path:
        """A copy of kubeconfig whose current context is `identity` when it has one (the emulator
        gives every client its own bearer-token user, so writes can be attributed)."""
        cfg = yaml.safe_load(kubeconfig.read_text())
        if any(c["name"] == identity for c in cfg.get("contexts", [])):
            cfg["current-context"] = identity
        out = workdir / f"kubeconfig-{identity}"
        out.write_text(yaml.safe_dump(cfg))
        return out

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
            self.proc.wait()

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self, tail: int = 60) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-tail:])
