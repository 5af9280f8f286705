#!/usr/bin/env python3
"""Mail throughput: the rendered stack against a stock Debian 13 stack, on this machine, now.

Starts `postwarden local up` of the quickstart (two Dovecot replicas, so replication runs) and
stock-stack.sh (Postfix + OpenDKIM + Dovecot as Debian configures them), both from the Debian 13
root and both up at once; then alternates load rounds between them (load.py: COUNT messages on
port 25 over CONCURRENCY connections, until each is readable over IMAP). Prints each round, the
medians, their ratio, the rendered stack's replication lag (a message readable in one replica →
readable in the other) and the CPU each daemon spent per message — where the time goes.

  python3 e2e/mailbench/run.py [--rounds 5] [--count 1500] [--concurrency 4]

Needs root (the daemons run as their own users) and the root from e2e/debian13-root.sh.
"""

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import load  # noqa: E402

QUICKSTART = REPO / "manifests/examples/quickstart.yaml"
HOSTNAME = "mail.example.com"
USER = "alice@example.com"
RENDERED_PASSWORD = "correct-horse-battery-staple"  # the quickstart's Secret


def cpu_seconds(roots):
    """CPU seconds (user + system, reaped children included) of each process tree in `roots`."""
    stat, children = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        stat[int(pid)] = sum(int(f) for f in fields[11:15])
        children.setdefault(int(fields[1]), []).append(int(pid))
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for name, root in roots.items():
        total, todo = 0, [root]
        while todo:
            pid = todo.pop()
            total += stat.get(pid, 0)
            todo.extend(children.get(pid, []))
        out[name] = total / tick
    return out


class Rendered:
    name = "rendered"

    def __init__(self, args, work):
        self.dir = work / "rendered"
        self.base = args.rendered_port_base
        self.log = open(work / "rendered.log", "w")
        self.proc = subprocess.Popen(
            [args.postwarden, "local", "up", "-f", str(QUICKSTART), "--dir", str(self.dir),
             "--port-base", str(self.base), "--root", args.root],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        ready = self.dir / "ready"
        deadline = time.monotonic() + 180
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.log.flush()
                tail = (work / "rendered.log").read_text()[-3000:]
                raise SystemExit(f"bench: local up did not get ready:\n{tail}")
            time.sleep(0.5)
        info = json.loads(ready.read_text())
        self.roots = dict(info["daemons"])
        # The replication agents run beside each Dovecot, below the local up process.
        self.roots["local-up"] = self.proc.pid
        self.ports = info["ports"]

    def load_args(self):
        return ["--smtp-port", str(self.ports["smtp"]), "--imap-port", str(self.ports["imaps-0"]),
                "--imap-port", str(self.ports["imaps-1"]), "--password", RENDERED_PASSWORD,
                "--cafile", str(self.dir / "ca.crt")]

    def cpu(self):
        all_ = cpu_seconds({"all": self.proc.pid})["all"]
        parts = cpu_seconds({k: v for k, v in self.roots.items() if k != "local-up"})
        parts["agents+entrypoints"] = all_ - sum(parts.values())
        return parts

    def stop(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class Stock:
    name = "stock"

    def __init__(self, args, work):
        self.dir = work / "stock"
        self.args = args
        subprocess.run(
            [args.postwarden, "local", "exec", "--root", args.root, "--share", str(work), "--share",
             str(HERE), "--", "bash", str(HERE / "stock-stack.sh"), "up", str(self.dir),
             str(args.stock_port_base)],
            check=True, stdout=subprocess.DEVNULL,
        )
        ready = dict(line.split("=", 1) for line in (self.dir / "ready").read_text().split())
        self.ready = ready
        names = ["opendkim", "dovecot", "postfix"]
        pids = [int(p) for p in (self.dir / "pids").read_text().split()]
        self.roots = dict(zip(names, pids))

    def load_args(self):
        return ["--smtp-port", self.ready["SMTP_PORT"], "--imap-port", self.ready["IMAPS_PORT"],
                "--password", self.ready["PASSWORD"], "--cafile", self.ready["CAFILE"]]

    def cpu(self):
        return cpu_seconds(self.roots)

    def stop(self):
        subprocess.run(["bash", str(HERE / "stock-stack.sh"), "down", str(self.dir)], check=False)


def round_of(stack, args, count):
    before = stack.cpu()
    result = load.run(load.parse(
        stack.load_args()
        + ["--user", USER, "--hostname", HOSTNAME, "--count", str(count), "--concurrency",
           str(args.concurrency), "--size", str(args.size), "--starttls", "--purge"]
    ))
    after = stack.cpu()
    result["cpu_ms_per_msg"] = {k: round((after[k] - before[k]) * 1000 / max(1, result["accepted"]), 2) for k in after}
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--postwarden", default=str(REPO / "target/debug/postwarden"))
    p.add_argument("--root", default=os.environ.get("POSTWARDEN_ROOT"))
    p.add_argument("--rendered-port-base", type=int, default=20000)
    p.add_argument("--stock-port-base", type=int, default=40000)
    p.add_argument("--json", action="store_true", help="print the summary as one JSON line")
    args = p.parse_args()
    if not args.root:
        args.root = subprocess.run([str(REPO / "e2e/debian13-root.sh")], check=True, capture_output=True,
                                   text=True).stdout.strip()
    # Short: the stock stack's UNIX socket paths live below it.
    work = Path(tempfile.mkdtemp(prefix="pwbench-", dir="/tmp"))
    os.chmod(work, 0o755)
    stacks = []
    try:
        stacks.append(Rendered(args, work))
        stacks.append(Stock(args, work))
        for s in stacks:  # warm-up: caches, first sync of the replicas
            round_of(s, args, min(200, args.count))
        results = {s.name: [] for s in stacks}
        for r in range(args.rounds):
            order = stacks if r % 2 == 0 else stacks[::-1]
            for s in order:
                res = round_of(s, args, args.count)
                results[s.name].append(res)
                print(f"round {r + 1} {s.name}: {json.dumps(res)}", flush=True)
        summary = summarize(results)
        print(json.dumps(summary) if args.json else report(summary, args))
    finally:
        for s in stacks:
            s.stop()
        shutil.rmtree(work, ignore_errors=True)


def summarize(results):
    def med(values):
        values = [v for v in values if v is not None]
        return round(statistics.median(values), 1) if values else None

    out = {}
    for name, rounds in results.items():
        out[name] = {
            "msgs_per_s": [r["msgs_per_s"] for r in rounds],
            "median_msgs_per_s": med([r["msgs_per_s"] for r in rounds]),
            "visible_ms_p50": med([r["visible_ms"]["p50"] for r in rounds]),
            "visible_ms_p99": med([r["visible_ms"]["p99"] for r in rounds]),
            "refused": sum(r["refused"] for r in rounds),
            "unreadable": sum(r["missing"] for r in rounds),
            "cpu_ms_per_msg": {k: med([r["cpu_ms_per_msg"][k] for r in rounds]) for k in rounds[0]["cpu_ms_per_msg"]},
        }
        if "lag_ms" in rounds[0]:
            out[name]["replication_lag_ms_p50"] = med([r["lag_ms"]["p50"] for r in rounds])
            out[name]["replication_lag_ms_p99"] = med([r["lag_ms"]["p99"] for r in rounds])
    r, s = out["rendered"]["median_msgs_per_s"], out["stock"]["median_msgs_per_s"]
    out["ratio"] = round(r / s, 2) if s else None
    return out


def report(summary, args):
    lines = [f"{args.rounds} rounds of {args.count} x {args.size} B on port 25 over {args.concurrency} connections"]
    for name in ("rendered", "stock"):
        s = summary[name]
        cpu = ", ".join(f"{k} {v}" for k, v in sorted(s["cpu_ms_per_msg"].items(), key=lambda kv: -(kv[1] or 0)))
        lines.append(f"{name}: median {s['median_msgs_per_s']} msg/s (rounds {s['msgs_per_s']}), "
                     f"readable after p50 {s['visible_ms_p50']} ms / p99 {s['visible_ms_p99']} ms, "
                     f"refused {s['refused']}, accepted but not readable within the timeout {s['unreadable']}")
        if "replication_lag_ms_p50" in s:
            lines.append(f"  replication lag p50 {s['replication_lag_ms_p50']} ms, p99 {s['replication_lag_ms_p99']} ms")
        lines.append(f"  CPU ms per message: {cpu}")
    lines.append(f"ratio rendered/stock: {summary['ratio']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
