#!/usr/bin/env python3
"""Benchmark (not a test): one MailDomain with N Mailboxes against the control plane of
e2e/controlplane.sh.

    python3 e2e/bench.py --mailboxes 1000 10000 [--idle 60]

For each N, on a fresh control plane with one `postwarden run` (target/debug/postwarden or
POSTWARDEN_BIN), prints: time to create the objects, time until the users database holds every
mailbox and the MailDomain is Ready (from the first create and from the last), the operator's
peak RSS (VmHWM), its write requests during convergence and during an idle window (from the API
server's audit log, per kind), and the API server's own count of writes to the kinds the
operator writes (apiserver_request_total, all clients) in the idle window.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cluster import ControlPlaneCluster  # noqa: E402
from harness import peak_rss_kib  # noqa: E402
from kube import Kube  # noqa: E402
from test_operator import DOMAIN, OPERATOR_RESOURCES, converge, is_true, quickstart, users  # noqa: E402

NAMESPACE = "bench"


def create_mailboxes(kube: Kube, n: int, workers: int = 4) -> None:
    def one(i: int) -> None:
        name = f"user{i:05d}"
        kube.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-password",
                                                                       "namespace": NAMESPACE},
                     "stringData": {"password": uuid.uuid4().hex}})
        kube.create({"apiVersion": "postwarden.dev/v1alpha1", "kind": "Mailbox",
                     "metadata": {"name": name, "namespace": NAMESPACE},
                     "spec": {"domainRef": {"name": DOMAIN}, "localPart": name,
                              "passwordSecretRef": {"name": f"{name}-password"}}})

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for f in concurrent.futures.as_completed([pool.submit(one, i) for i in range(n)]):
            f.result()


def total(writes: dict[str, int]) -> int:
    return sum(writes.values())


def run(n: int, idle: float, workdir: Path) -> dict:
    cluster = ControlPlaneCluster(workdir)
    try:
        kube = cluster.kube
        kube.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        identity = cluster.start_operator()
        pid = cluster.process(identity).pid
        time.sleep(1)
        cluster.reset_writes()
        started = time.monotonic()
        domain = [d for d in quickstart(NAMESPACE) if d["kind"] in ("MailDomain", "Secret")
                  and d["metadata"]["name"] in (DOMAIN, "mail-backup-key")]
        for d in domain:
            kube.apply(d)
        create_mailboxes(kube, n)
        created = time.monotonic() - started
        expected = n

        def done() -> bool:
            cluster.assert_alive()
            md = kube.get("MailDomain", NAMESPACE, DOMAIN)
            return len(users(kube, NAMESPACE)) >= expected and is_true(md, "Ready") and \
                (md.get("status") or {}).get("mailboxes") == expected

        deadline = time.monotonic() + 3600
        while not done():
            if time.monotonic() > deadline:
                raise SystemExit(f"not converged within an hour for {n} mailboxes")
            try:
                converge(cluster, NAMESPACE)
            except AssertionError:
                pass
            time.sleep(0.5)
        converged = time.monotonic() - started
        convergence_writes = cluster.operator_writes()
        time.sleep(2)
        cluster.reset_writes()
        before = cluster.api_writes()
        time.sleep(idle)
        after = cluster.api_writes()
        idle_writes = cluster.operator_writes()
        idle_api = {r: after[r] - before.get(r, 0) for r in after
                    if r.split("/")[0] in OPERATOR_RESOURCES and after[r] != before.get(r, 0)}
        return {"mailboxes": n, "create_s": created, "converged_s": converged, "peak_rss_mib": (peak_rss_kib(pid) or 0) / 1024,
                "convergence_writes": convergence_writes, "idle_writes": idle_writes, "idle_api": idle_api}
    finally:
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mailboxes", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--idle", type=float, default=60.0, help="idle window in seconds (default 60)")
    args = ap.parse_args()
    rows = []
    for n in args.mailboxes:
        with tempfile.TemporaryDirectory(prefix=f"bench-{n}-") as tmp:
            r = run(n, args.idle, Path(tmp))
        rows.append(r)
        print(f"{n} mailboxes: objects created in {r['create_s']:.1f} s; users database complete and Ready "
              f"{r['converged_s']:.1f} s after the first create ({r['converged_s'] - r['create_s']:.1f} s after the last); operator peak RSS {r['peak_rss_mib']:.1f} MiB; "
              f"API writes during convergence {total(r['convergence_writes'])} "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(r['convergence_writes'].items()))}); "
              f"during {args.idle:.0f} s idle {total(r['idle_writes'])} "
              f"({', '.join(f'{k}: {v}' for k, v in sorted(r['idle_writes'].items())) or 'none'}); "
              f"apiserver_request_total writes to the operator's kinds while idle "
              f"{sum(r['idle_api'].values()):.0f} ({', '.join(f'{k}: {v:.0f}' for k, v in sorted(r['idle_api'].items())) or 'none'})",
              flush=True)


if __name__ == "__main__":
    main()
