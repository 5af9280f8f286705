"""Processes the e2e suite starts: `postwarden run`."""

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
INSTALL = REPO / "manifests" / "install.yaml"


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


def daemon_root() -> Path | None:
    """The Debian root the mail daemons run from: POSTWARDEN_ROOT (set empty for the host's own
    packages on a Debian 13 host), else the cached Debian 13 root of e2e/debian13-root.sh."""
    if "POSTWARDEN_ROOT" in os.environ:
        value = os.environ["POSTWARDEN_ROOT"]
        return Path(value) if value else None
    out = subprocess.run([str(E2E / "debian13-root.sh")], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def in_runtime(*command: str, share: tuple[Path, ...] = ()) -> list[str]:
    """The command line running `command` in the daemons' runtime (`postwarden local exec`),
    with the directories in `share` visible at their paths."""
    root = daemon_root()
    args = [str(operator_binary()), "local", "exec"]
    if root:
        args += ["--root", str(root)]
    for d in share:
        args += ["--share", str(d)]
    return args + ["--", *command]


def runtime_id(database: str, name: str) -> int:
    """The uid (`passwd`) or gid (`group`) of `name` in the daemons' runtime."""
    base = daemon_root() or Path("/")
    for line in (base / "etc" / database).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise KeyError(f"{name} is not in {base}/etc/{database}")


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
            "KUBECONFIG": str(kubeconfig),
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
