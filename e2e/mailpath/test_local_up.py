"""`postwarden local up` itself: clear refusals before anything starts."""

import subprocess
import time


def test_a_taken_port_is_refused_before_anything_starts(stack):
    # The running stack holds every port of this port base.
    other = stack.dir.parent / (stack.dir.name + "-second")
    started = time.monotonic()
    out = subprocess.run(
        [
            str(stack.binary), "local", "up",
            "-f", str(stack.file),
            "--dir", str(other),
            "--port-base", str(stack.port_base),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "already in use" in out.stderr, out.stderr
    assert f"127.0.0.1:{stack.port(25)} (smtp)" in out.stderr, out.stderr
    assert "--port-base" in out.stderr
    assert time.monotonic() - started < 30, "refused up front, not after starting daemons"
    assert not (other / "var/log").exists(), "no daemon was started"
    subprocess.run(["rm", "-rf", str(other)], check=False)


def test_reload_without_a_stack_names_the_problem(stack, tmp_path):
    out = stack.run("local", "reload", "--dir", tmp_path, check=False)
    assert out.returncode != 0
    assert "run `postwarden local up` first" in out.stderr, out.stderr
