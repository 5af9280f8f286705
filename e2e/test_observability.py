"""Mail stack statistics reach Prometheus the way the chart's PodMonitor, alerts and dashboard
expect: the Postfix queue through the exporter sidecar, Dovecot's own OpenMetrics listener
configured as the chart README documents.

A throwaway Postfix instance on 127.0.0.1 (no listening SMTP service) defers a message to a
closed loopback port; the queue exporter of the mail-mta image, run as the postfix user like the
sidecar, must report it under the metric names PostwardenMtaQueueGrowing and the dashboard use.
A throwaway Dovecot with that stats configuration counts a login, a failed login and IMAP\ncommands. Needs root (the daemons' masters) and e2e/install-deps.sh.

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

from harness import daemon_root, in_runtime, runtime_id

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
    # Not pytest's tmp_path: its parents are 0700 and the postfix user must reach the spool.
    base = Path(tempfile.mkdtemp(prefix="postwarden-queue-"))
    base.chmod(0o755)

    def postfix(*args: str, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(in_runtime(*args, share=(base,)), **kw)

    conf, spool, data = base / "conf", base / "spool", base / "data"
    for d in (conf, spool, data):
        d.mkdir()
    os.chown(data, runtime_id("passwd", "postfix"), -1)
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
    shutil.copy((daemon_root() or Path("/")) / "etc/postfix/master.cf", conf / "master.cf")
    postfix("postconf", "-c", str(conf), "-F", "*/*/chroot = n", check=True)
    postfix("postfix", "-c", str(conf), "start", check=True, capture_output=True)
    try:
        yield {"conf": conf, "spool": spool, "log": base / "maillog", "run": postfix}
    finally:
        postfix("postfix", "-c", str(conf), "stop", check=False, capture_output=True)
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
        ["setpriv", f"--reuid={runtime_id('passwd', 'postfix')}", f"--regid={runtime_id('group', 'postfix')}",
         "--clear-groups", "--", exporter, f"--web.listen-address=127.0.0.1:{port}",
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
        postfix_instance["run"](
            "sendmail", "-C", str(postfix_instance["conf"]), "-f", "sender@queue-test.invalid", "rcpt@example.net",
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


# --- Dovecot's OpenMetrics listener -------------------------------------------------------

CHART_README = Path(__file__).resolve().parent.parent / "charts" / "postwarden" / "README.md"
DASHBOARD = CHART_README.parent / "dashboards" / "postwarden.json"


def documented_dovecot_stats() -> str:
    """The Dovecot stats configuration the chart README tells the config renderer to emit."""
    blocks = re.findall(r"```\n(service stats \{.*?)```", CHART_README.read_text(), re.S)
    assert len(blocks) == 1, "chart README must hold one Dovecot stats block"
    return blocks[0]


@pytest.fixture
def dovecot_instance():
    assert os.geteuid() == 0, "Dovecot's master needs root: run as root (CI does)"
    base = Path(tempfile.mkdtemp(prefix="postwarden-stats-"))
    base.chmod(0o755)
    (base / "run").mkdir()
    (base / "home").mkdir()
    os.chown(base / "home", runtime_id("passwd", "dovecot"), -1)
    imap_port, metrics_port = free_port(), free_port()
    # The one listener on loopback: Dovecot 2.4 has no per-listener address, `listen` covers it.
    stats = documented_dovecot_stats().replace("port = 9900", f"port = {metrics_port}")
    conf = base / "dovecot.conf"
    conf.write_text(
        f"""dovecot_config_version = 2.4.0
dovecot_storage_version = 2.4.0
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
auth_allow_cleartext = yes
first_valid_uid = 1
mail_driver = maildir
mail_path = ~/Maildir
mail_uid = dovecot
mail_gid = dovecot
passdb static {{
  password = correct-horse
}}
userdb static {{
  fields {{
    home = {base}/home/%{{user}}
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = {imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{stats}"""
    )
    # Dovecot daemonizes: its children must not hold pipes of ours open.
    subprocess.run(in_runtime("dovecot", "-c", str(conf), share=(base,)), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield {"conf": conf, "imap": imap_port, "metrics": metrics_port, "log": base / "dovecot.log"}
    finally:
        subprocess.run(in_runtime("doveadm", "-c", str(conf), "stop", share=(base,)), check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def imap_session(port: int, commands: list[bytes]) -> list[bytes]:
    """Tagged replies to `commands` (tags a, b, c, ...) on one plain IMAP connection."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        stream = sock.makefile("rwb")
        stream.readline()
        for i, command in enumerate(commands):
            tag = bytes([ord("a") + i])
            stream.write(tag + b" " + command + b"\r\n")
            stream.flush()
            while True:
                line = stream.readline()
                if not line or line.startswith(tag + b" "):
                    replies.append(line)
                    break
    return replies


def test_dovecot_exports_the_metrics_the_dashboard_uses(dovecot_instance):
    port = dovecot_instance["metrics"]
    metrics = ""
    for _ in range(50):
        try:
            metrics = scrape(port)
            break
        except OSError:
            time.sleep(0.1)
    assert "dovecot_build_info" in metrics, metrics

    replies = imap_session(dovecot_instance["imap"], [b"LOGIN alice correct-horse", b"NOOP", b"NOOP", b"LOGOUT"])
    assert all(b" OK " in r for r in replies), replies
    assert b" NO " in imap_session(dovecot_instance["imap"], [b"LOGIN bob wrong"])[0]

    samples = {}
    for _ in range(50):
        samples = {
            m.group(1): float(m.group(2))
            for m in re.finditer(r"^(dovecot_\w+(?:\{[^}]*\})?) (\S+)$", scrape(port), re.M)
        }
        if samples.get("dovecot_auth_failure_total") == 1:
            break
        time.sleep(0.1)
    log = dovecot_instance["log"].read_text() if dovecot_instance["log"].exists() else ""
    assert samples.get("dovecot_auth_success_total") == 1, f"{samples}\n{log}"
    assert samples.get("dovecot_auth_failure_total") == 1, samples
    assert samples.get("dovecot_mail_delivery_total") == 0, samples
    # group_by exports a series per cmd_name AND per (cmd_name, reply state): the dashboard
    # selects tagged_reply_state="" so that commands are not counted twice.
    assert samples.get('dovecot_imap_command_total{cmd_name="NOOP"}') == 2, samples
    assert samples.get('dovecot_imap_command_total{cmd_name="NOOP",tagged_reply_state="OK"}') == 2, samples

    exported = {name.split("{")[0] for name in samples}
    dashboard_dovecot = set(re.findall(r"\b(dovecot_\w+)", DASHBOARD.read_text()))
    assert dashboard_dovecot and dashboard_dovecot <= exported, dashboard_dovecot - exported
