"""The Postfix queue reaches Prometheus the way the chart's PodMonitor and alerts expect.

A throwaway Postfix instance on 127.0.0.1 (no listening SMTP service) defers a message to a
closed loopback port; the queue exporter of the mail-mta image, run as the postfix user like the
sidecar, must report it under the metric names PostwardenMtaQueueGrowing and the dashboard use.
Needs root (Postfix's master) and e2e/install-deps.sh.

Run: python3 -m pytest -q e2e/test_observability.py
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

EXPORTER = "prometheus-postfix-exporter"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port() -> int:
    """A loopback port nothing listens on, so delivery is deferred with 'connection refused'."""
    return free_port()


@pytest.fixture
def postfix_instance():
    assert os.geteuid() == 0, "Postfix's master needs root: run as root (CI does)"
    postfix = shutil.which("postfix") or "/usr/sbin/postfix"
    assert os.access(postfix, os.X_OK), "postfix is not installed (e2e/install-deps.sh)"
    # Not pytest's tmp_path: its parents are 0700 and the postfix user must reach the spool.
    base = Path(tempfile.mkdtemp(prefix="postwarden-queue-"))
    base.chmod(0o755)
    conf, spool, data = base / "conf", base / "spool", base / "data"
    for d in (conf, spool, data):
        d.mkdir()
    shutil.chown(data, "postfix")
    (conf / "main.cf").write_text(
        "\n".join(
            [
                "compatibility_level = 3.6",
                f"queue_directory = {spool}",
                f"data_directory = {data}",
                "mail_owner = postfix",
                "setgid_group = postdrop",
                "inet_interfaces = 127.0.0.1",
                "inet_protocols = ipv4",
                "myhostname = queue-test.invalid",
                "mydestination =",
                f"relayhost = [127.0.0.1]:{closed_port()}",
                "master_service_disable = inet",
                f"maillog_file = {base}/maillog",
                f"maillog_file_prefixes = {base}",
                "smtp_connect_timeout = 2s",
                "",
            ]
        )
    )
    shutil.copy("/etc/postfix/master.cf", conf / "master.cf")
    subprocess.run(["postconf", "-c", str(conf), "-F", "*/*/chroot = n"], check=True)
    subprocess.run([postfix, "-c", str(conf), "start"], check=True, capture_output=True)
    try:
        yield {"conf": conf, "spool": spool, "log": base / "maillog"}
    finally:
        subprocess.run([postfix, "-c", str(conf), "stop"], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def queue_counts(metrics: str) -> dict[str, float]:
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'^postfix_showq_message_size_bytes_count\{queue="(\w+)"\} (\S+)$', metrics, re.M)
    }


def test_postfix_queue_exporter_reports_deferred_mail(postfix_instance):
    exporter = shutil.which(EXPORTER)
    assert exporter, f"{EXPORTER} is not installed (e2e/install-deps.sh)"
    port = free_port()
    showq = postfix_instance["spool"] / "public" / "showq"
    # The sidecar's command line (images/README.md), as the postfix user.
    proc = subprocess.Popen(
        ["runuser", "-u", "postfix", "--", exporter, f"--web.listen-address=127.0.0.1:{port}",
         f"--postfix.showq_path={showq}", "--postfix.logfile_path=/dev/null"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        metrics = ""
        for _ in range(50):
            try:
                metrics = scrape(port)
                break
            except OSError:
                time.sleep(0.1)
        assert f'postfix_up{{path="{showq}"}} 1' in metrics, metrics
        assert sum(queue_counts(metrics).values()) == 0

        message = "Subject: queued\n\nThis message cannot leave.\n"
        subprocess.run(
            ["sendmail", "-C", str(postfix_instance["conf"]), "-f", "sender@queue-test.invalid", "rcpt@example.net"],
            input=message, text=True, check=True,
        )
        counts = {}
        for _ in range(100):  # delivery is refused at once; bounded wait for the deferral
            counts = queue_counts(scrape(port))
            if counts.get("deferred") == 1:
                break
            time.sleep(0.2)
        log = postfix_instance["log"].read_text() if postfix_instance["log"].exists() else ""
        assert counts.get("deferred") == 1, f"{counts}\n{log}"
        assert set(counts) == {"active", "deferred", "hold", "incoming", "maildrop"}
        assert sum(counts.values()) == 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)
