"""The Debian 13 root the mail images' daemons are proven in (e2e/debian13-root.sh).

Checks that the root holds the releases the images ship and that the MTA configuration the
operator renders for the quickstart parses in Postfix 3.10 without a warning (an unknown or
removed parameter is a warning there, so a setting Postfix 3.10 no longer knows fails here).
"""

import json
import pathlib
import re
import shutil
import subprocess
import tempfile

import pytest
import yaml

from harness import E2E, operator_binary


def root_script(*args: str) -> str:
    return subprocess.run(
        [str(E2E / "debian13-root.sh"), *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture(scope="module")
def root() -> pathlib.Path:
    return pathlib.Path(root_script().strip())


@pytest.fixture(scope="module")
def versions(root) -> dict[str, str]:
    """What `debian13-root.sh versions` reports, by name (debian, postfix, dovecot, ...)."""
    return dict(line.split(" ", 1) for line in root_script("versions").splitlines())


def in_root(root: pathlib.Path, *cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *cmd], capture_output=True, text=True, timeout=120)


def version(text: str) -> tuple[int, int]:
    m = re.search(r"(\d+)\.(\d+)", text)
    assert m, text
    return int(m.group(1)), int(m.group(2))


def test_root_is_debian_13(versions):
    assert version(versions["debian"])[0] == 13


@pytest.mark.parametrize("daemon, want", [("postfix", (3, 10)), ("dovecot", (2, 4)), ("rspamd", (3, 12))])
def test_root_holds_the_image_releases(versions, daemon, want):
    assert version(versions[daemon]) == want, versions


def test_dovecot_24_keeps_dsync_and_drops_the_replicator(root):
    """Replication without the replicator rests on doveadm sync and the notify plugins."""
    modules = {p.name for p in (root / "usr/lib/dovecot/modules").iterdir()}
    assert any(m.startswith("lib15_notify_plugin") for m in modules), sorted(modules)
    assert any(m.startswith("lib20_mail_log_plugin") for m in modules), sorted(modules)
    assert not any("replication" in m for m in modules), sorted(modules)
    run = in_root(root, "doveadm", "sync")
    # Without a user, sync refuses naming its options rather than "Unknown command".
    assert "-u, -F, -A" in run.stderr, run.stdout + run.stderr


def rendered_mta_files() -> dict[str, str]:
    out = subprocess.run([str(operator_binary()), "render"], check=True, capture_output=True, text=True).stdout
    for obj in yaml.safe_load_all(out):
        if obj and obj.get("kind") == "ConfigMap" and "main.cf" in obj.get("data", {}):
            return obj["data"]
    raise AssertionError("no ConfigMap with main.cf in the rendered quickstart")


def test_rendered_postfix_configuration_parses_in_postfix_310_without_warnings(root):
    files = rendered_mta_files()
    tmp = pathlib.Path(tempfile.mkdtemp(dir=root / "tmp"))
    try:
        for name in ("main.cf", "master.cf"):
            (tmp / name).write_text(files[name])
        inside = "/" + str(tmp.relative_to(root))
        main = in_root(root, "postconf", "-c", inside, "-n")
        assert main.returncode == 0, main.stderr
        assert main.stderr == "", main.stderr
        assert "smtpd_tls" in main.stdout
        master = in_root(root, "postconf", "-c", inside, "-M")
        assert master.returncode == 0, master.stderr
        assert master.stderr == "", master.stderr
        assert re.search(r"^25\s+inet", master.stdout, re.M), master.stdout
    finally:
        shutil.rmtree(tmp)


def test_the_benchmark_runs_both_stacks_and_every_message_arrives(root):
    """The throughput benchmark (e2e/mailbench/run.py), one short round: the rendered quickstart
    and the stock Debian 13 stack both start from the root, and every message the rendered stack
    accepted is readable over IMAP in both its replicas. The figures are the
    benchmark's business, not this test's."""
    out = subprocess.run(
        ["python3", str(E2E / "mailbench/run.py"), "--rounds", "1", "--count", "60", "--json",
         "--root", str(root), "--postwarden", str(operator_binary()),
         "--rendered-port-base", "21000", "--stock-port-base", "41000"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for stack in ("rendered", "stock"):
        assert summary[stack]["refused"] == 0, summary
        assert summary[stack]["median_msgs_per_s"] > 0, summary
    # Stock Dovecot 2.4 may defer a delivery ("Too many concurrent deliveries for user") to
    # Postfix's next queue run, minutes later; every delivery of the rendered stack must arrive.
    assert summary["rendered"]["unreadable"] == 0, summary
    assert summary["rendered"]["replication_lag_ms_p99"] is not None, summary
    assert summary["ratio"] > 0, summary
