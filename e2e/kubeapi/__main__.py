"""Runs the Kubernetes API emulator until interrupted.

    python3 -m kubeapi --crds crds/postwarden.yaml --kubeconfig /tmp/kubeconfig --users operator,tests

(with e2e/ on PYTHONPATH). Prints `listening on http://127.0.0.1:PORT` once it accepts requests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from . import make_server, preload, write_kubeconfig
from .server import KubeApiEmulator


async def main() -> None:
    ap = argparse.ArgumentParser(prog="kubeapi", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--crds", action="append", default=[], help="YAML file of CRDs (or any objects) to load")
    ap.add_argument("--kubeconfig", help="write a kubeconfig for the server here")
    ap.add_argument("--users", default="admin",
                    help="comma-separated bearer-token users; each gets a kubeconfig context of that name")
    ap.add_argument("--bookmark-interval", type=float, default=15.0)
    ap.add_argument("--log-requests", action="store_true")
    args = ap.parse_args()

    emulator = KubeApiEmulator(bookmark_interval=args.bookmark_interval, log_requests=args.log_requests)
    for path in args.crds:
        preload(emulator.store, path)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with emulator, make_server(emulator, host=args.host, port=args.port or None) as server:
        url = f"http://{server.host}:{server.port}"
        if args.kubeconfig:
            write_kubeconfig(args.kubeconfig, url, args.users.split(","))
        print(f"listening on {url}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
