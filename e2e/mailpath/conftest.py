"""One `postwarden local up` stack for the whole session, started and stopped by the suite.

Ports: --port-base 20000 (MAILPATH_PORT_BASE overrides), so SMTP is 20025, submission 20587,
IMAPS 20993, the second Dovecot's IMAPS 30993 and the third's 40993. Tests of Ed25519 DKIM
signing get a second, smaller stack at port-base + 35000, started when the first of them runs. The stack's start-to-ready time and the
suite's wall time are printed in the summary.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from clients import tls_context  # noqa: E402
from manifest import Manifest  # noqa: E402
from sink import Sink  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
# Rspamd's compiled rule cache (its run directory, `Layout::rspamd_run_dir`), kept between runs
# of the suite: compiling takes most of a cold start. A fresh machine (CI) starts cold.
RSPAMD_RUN_DIR = "run/postwarden/rspamd"
RSPAMD_CACHE = Path(
    os.environ.get("MAILPATH_RSPAMD_CACHE", REPO / "target" / "mailpath-rspamd-cache")
)
PORT_BASE = int(os.environ.get("MAILPATH_PORT_BASE", "20000"))
READY_TIMEOUT = 330
TIMINGS = {}
SUITE_START = time.monotonic()


def postwarden_binary():
    if os.environ.get("POSTWARDEN_BIN"):
        return Path(os.environ["POSTWARDEN_BIN"])
    subprocess.run(
        ["cargo", "build", "--quiet", "--locked", "--bin", "postwarden"], cwd=REPO, check=True
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "postwarden"


class Stack:
    """A running `postwarden local up` and what the tests need to talk to it."""

    def __init__(self, binary, directory, manifest):
        self.binary = binary
        self.dir = directory
        self.file = directory / "mail.yaml"
        self.manifest = manifest
        self.port_base = PORT_BASE
        self.process = None
        self.ready = None

    # Ports as `postwarden local up` documents them: port-base + the standard port; the second
    # Dovecot instance is shifted by a further 10000.
    def port(self, standard, instance=0):
        return self.port_base + instance * 10000 + standard

    @property
    def ca_file(self):
        return self.dir / "ca.crt"

    def tls(self):
        return tls_context(self.ca_file)

    def run(self, *args, check=True):
        """Runs `postwarden ARGS...` (e.g. `local reload`) and returns the completed process."""
        out = subprocess.run(
            [str(self.binary), *map(str, args)], capture_output=True, text=True, timeout=120
        )
        if check and out.returncode != 0:
            raise AssertionError(
                f"postwarden {' '.join(map(str, args))} failed ({out.returncode}):\n"
                f"{out.stdout}\n{out.stderr}"
            )
        return out

    def reload(self, *extra):
        """Rewrites FILE from the manifest and applies it with `postwarden local reload`."""
        self.manifest.write(self.file)
        return self.run("local", "reload", "--dir", self.dir, *extra)

    def daemon_pids(self):
        """Main pid of every daemon, as `local up` reports it in DIR/ready."""
        return json.loads((self.dir / "ready").read_text())["daemons"]

    def log(self):
        return (self.dir / "local-up.log").read_text(errors="replace")

    def start(self):
        """Starts `postwarden local up` on DIR and waits until it is ready."""
        log = open(self.dir / "local-up.log", "a")
        started = time.monotonic()
        self.process = subprocess.Popen(
            [
                str(self.binary), "local", "up",
                "-f", str(self.file),
                "--dir", str(self.dir),
                "--port-base", str(self.port_base),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        ready = self.dir / "ready"
        while not ready.exists():
            if self.process.poll() is not None:
                raise AssertionError(
                    f"postwarden local up exited with {self.process.returncode} before ready:\n{self.log()}"
                )
            if time.monotonic() - started > READY_TIMEOUT:
                raise AssertionError(f"stack not ready within {READY_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.05)
        self.ready = json.loads(ready.read_text())

    def stop(self):
        """SIGTERM to `local up`; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def restart_mta(self):
        """Restarts Postfix alone (SIGUSR1 to `local up`) and waits until it listens again;
        Dovecot and Rspamd keep running, as in a Kubernetes MTA container restart."""
        before = self.ready["daemons"]["postfix"]
        self.process.send_signal(signal.SIGUSR1)
        ready = self.dir / "ready"
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"local up exited while restarting Postfix:\n{self.log()}")
            try:
                now = json.loads(ready.read_text())
            except (OSError, ValueError):
                now = self.ready
            if now["daemons"].get("postfix") not in (None, before):
                self.ready = now
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix not back within {READY_TIMEOUT}s:\n{self.log()}")
            time.sleep(0.05)

    def restart(self):
        """Stops the whole stack and starts it again on the same DIR (queue and mail kept)."""
        code = self.stop()
        assert code == 0, f"local up exited {code} on SIGTERM:\n{self.log()}"
        self.start()


@pytest.fixture(scope="session")
def sink():
    """Receives everything the stack sends out (its relayhost is 127.0.0.1:port-base+1025)."""
    with Sink(PORT_BASE + 1025) as s:
        yield s


@pytest.fixture(scope="session")
def stack(sink):
    with running_stack(Manifest(), PORT_BASE, "") as s:
        yield s


@pytest.fixture(scope="session")
def ed25519_stack():
    """A second stack (port base +35000) for a domain signing with Ed25519, with its own sink."""
    base = PORT_BASE + 35000
    with Sink(base + 1025) as sink, running_stack(Manifest.ed25519(), base, "ed25519 ") as s:
        s.sink = sink
        yield s


@contextlib.contextmanager
def running_stack(manifest, port_base, label):
    """`postwarden local up` of `manifest` until the block ends; start and stop times are
    reported in the summary under `label`."""
    binary = postwarden_binary()
    directory = Path(tempfile.mkdtemp(prefix="postwarden-mailpath-"))
    s = Stack(binary, directory, manifest)
    s.port_base = port_base
    manifest.write(s.file)
    copy_cache(RSPAMD_CACHE, directory / RSPAMD_RUN_DIR)
    started = time.monotonic()
    try:
        s.start()
        TIMINGS[f"{label}stack start-to-ready (seen by the suite)"] = time.monotonic() - started
        TIMINGS[f"{label}stack start-to-ready (reported by local up)"] = s.ready["readySeconds"]
        for name, seconds in s.ready["daemonReadySeconds"].items():
            TIMINGS[f"  {label}{name} listening after"] = seconds
        yield s
    finally:
        stopping = time.monotonic()
        code = s.stop()
        TIMINGS[f"{label}stack stop"] = time.monotonic() - stopping
        copy_cache(directory / RSPAMD_RUN_DIR, RSPAMD_CACHE)
        pids = (s.ready or {}).get("daemons", {})
        alive = {name: pid for name, pid in pids.items() if pid_alive(pid)}
        if code != 0 or alive:
            print(s.log(), file=sys.stderr)
            print(f"kept {directory} for inspection", file=sys.stderr)
        assert code == 0, f"local up exited {code} on SIGTERM"
        assert not alive, f"daemons still running after local up stopped: {alive}"
        if not os.environ.get("MAILPATH_KEEP_DIR"):
            subprocess.run(["rm", "-rf", str(directory)], check=False)


def copy_cache(source, target):
    """Copies Rspamd's hyperscan cache files (`*.hs*`) from `source` to `target`."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if ".hs" in f.name and f.is_file():
            shutil.copyfile(f, target / f.name)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is as good as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.fixture(scope="session")
def tls(stack):
    return stack.tls()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("mail path timings")
    for name, seconds in TIMINGS.items():
        terminalreporter.write_line(f"{name}: {seconds:.2f} s")
    terminalreporter.write_line(
        f"mail-path suite wall time: {time.monotonic() - SUITE_START:.2f} s"
    )
