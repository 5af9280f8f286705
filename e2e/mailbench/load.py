#!/usr/bin/env python3
"""SMTP → IMAP load: send messages on port 25 and watch them arrive in every replica's INBOX.

One round: COUNT messages of SIZE bytes to one recipient over CONCURRENCY SMTP connections, while
one IMAP watcher per replica port polls the INBOX for new Message-IDs. Prints one JSON line:

  accepted      messages answered 250 after DATA (anything else is counted in `refused`)
  msgs_per_s    accepted / (last message visible in the first replica's INBOX − first MAIL FROM)
  visible_ms    acceptance → first visible in any replica (p50, p99)
  lag_ms        first visible in a replica → visible in the last replica (p50, p99); only with
                more than one IMAP port: the replication lag an IMAP client sees
  missing       accepted messages never seen in some replica before --timeout

Standard library only, so it runs on any machine with Python 3.
"""

import argparse
import imaplib
import json
import re
import smtplib
import socket
import ssl
import statistics
import threading
import time
import uuid

MSGID = re.compile(rb"Message-ID:\s*<([^>]+)>", re.I)


def percentile(values, p):
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


class Imap(imaplib.IMAP4_SSL):
    """IMAPS to 127.0.0.1:port from 127.0.0.2, so no daemon takes the client for itself."""

    def __init__(self, port, context, hostname):
        self._hostname = hostname
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=30)

    def _create_socket(self, timeout):
        sock = socket.create_connection(("127.0.0.1", self.port), timeout, source_address=("127.0.0.2", 0))
        return self.ssl_context.wrap_socket(sock, server_hostname=self._hostname)


def login(args, port):
    imap = Imap(port, args.context, args.hostname)
    imap.login(args.user, args.password)
    return imap


def purge(args):
    """Empty the INBOX in every replica and wait until all agree it is empty."""
    for port in args.imap_port:
        imap = login(args, port)
        typ, data = imap.select("INBOX")
        if int(data[0]):
            imap.store("1:*", "+FLAGS.SILENT", r"(\Deleted)")
            imap.expunge()
        imap.logout()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        counts = []
        for port in args.imap_port:
            imap = login(args, port)
            typ, data = imap.select("INBOX", readonly=True)
            counts.append(int(data[0]))
            imap.logout()
        if not any(counts):
            return
        time.sleep(0.2)
    raise SystemExit(f"load: INBOX not empty in every replica after purge: {counts}")


class Watcher(threading.Thread):
    """Records when each Message-ID first shows up in one replica's INBOX."""

    def __init__(self, args, port, wanted):
        super().__init__(daemon=True)
        self.args, self.port, self.wanted = args, port, wanted
        self.seen = {}
        self.stop = threading.Event()
        self.error = None

    def run(self):
        # A replica's first sync may replace the mailbox under an open session ("IMAP session
        # state is inconsistent"): log in again, as clients do, and keep the times seen so far.
        for attempt in range(5):
            try:
                self.watch()
                return
            except imaplib.IMAP4.abort as e:
                self.error = f"imap port {self.port}: {e!r}"
                time.sleep(0.2)
            except Exception as e:  # reported by the round, never swallowed
                self.error = f"imap port {self.port}: {e!r}"
                return

    def watch(self):
        imap = login(self.args, self.port)
        imap.select("INBOX", readonly=True)
        next_uid = 1
        while not self.stop.is_set():
            imap.noop()
            typ, data = imap.uid("FETCH", f"{next_uid}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            now = time.monotonic()
            for part in data or []:
                if not isinstance(part, tuple):
                    continue
                uid = re.search(rb"UID (\d+)", part[0])
                if uid and int(uid.group(1)) >= next_uid:
                    next_uid = int(uid.group(1)) + 1
                found = MSGID.search(part[1])
                if found:
                    self.seen.setdefault(found.group(1).decode(), now)
            if self.wanted.issubset(self.seen):
                break
            time.sleep(self.args.poll)
        self.error = None
        imap.logout()


def message(args, msgid):
    body_line = "x" * 76 + "\r\n"
    lines = max(1, (args.size - 300) // len(body_line))
    return (
        f"From: Load <{args.sender}>\r\n"
        f"To: <{args.rcpt}>\r\n"
        f"Subject: load {msgid}\r\n"
        f"Message-ID: <{msgid}>\r\n"
        f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n" + body_line * lines
    ).encode()


def sender(args, msgids, accepted, refused, lock):
    smtp = None
    for msgid in msgids:
        try:
            if smtp is None:
                smtp = smtplib.SMTP(timeout=60, source_address=("127.0.0.2", 0))
                smtp.connect("127.0.0.1", args.smtp_port)
                smtp._host = args.hostname  # the name STARTTLS verifies
                smtp.ehlo("load.test")
                if args.starttls:
                    smtp.starttls(context=args.context)
                    smtp.ehlo("load.test")
            smtp.sendmail(args.sender, [args.rcpt], message(args, msgid))
            with lock:
                accepted[msgid] = time.monotonic()
        except (smtplib.SMTPException, OSError, ValueError) as e:
            with lock:
                refused.append(f"{msgid}: {e!r}"[:200])
            if smtp is not None:
                try:
                    smtp.close()
                except OSError:
                    pass
            smtp = None
    if smtp is not None:
        try:
            smtp.quit()
        except (smtplib.SMTPException, OSError):
            pass


def run(args):
    if args.purge:
        purge(args)
    run_id = uuid.uuid4().hex[:12]
    msgids = [f"{run_id}.{i}@load.test" for i in range(args.count)]
    wanted = set(msgids)
    watchers = [Watcher(args, port, wanted) for port in args.imap_port]
    for w in watchers:
        w.start()
    accepted, refused, lock = {}, [], threading.Lock()
    start = time.monotonic()
    senders = [
        threading.Thread(target=sender, args=(args, msgids[i :: args.concurrency], accepted, refused, lock))
        for i in range(args.concurrency)
    ]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    sent_s = time.monotonic() - start
    deadline = time.monotonic() + args.timeout
    ok = set(accepted)
    for w in watchers:
        w.wanted = ok
        w.join(max(0.0, deadline - time.monotonic()))
        w.stop.set()
    errors = [w.error for w in watchers if w.error]
    first = watchers[0].seen
    done = max((first[m] for m in ok if m in first), default=start)
    visible, lag = [], []
    for m in ok:
        times = [w.seen.get(m) for w in watchers]
        if None in times:
            continue
        visible.append((min(times) - accepted[m]) * 1000)
        lag.append((max(times) - min(times)) * 1000)
    missing = sum(1 for m in ok if any(m not in w.seen for w in watchers))
    result = {
        "count": args.count,
        "accepted": len(ok),
        "refused": len(refused),
        "missing": missing,
        "sent_s": round(sent_s, 2),
        "msgs_per_s": round(len(ok) / (done - start), 1) if done > start else 0.0,
        "visible_ms": {"p50": percentile(visible, 50), "p99": percentile(visible, 99)},
    }
    if len(watchers) > 1:
        result["lag_ms"] = {"p50": percentile(lag, 50), "p99": percentile(lag, 99), "max": max(lag, default=None)}
    for key in ("visible_ms", "lag_ms"):
        for k, v in result.get(key, {}).items():
            result[key][k] = None if v is None else round(v)
    if errors or refused:
        result["errors"] = (errors + refused)[:5]
    return result


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smtp-port", type=int, required=True)
    p.add_argument("--imap-port", type=int, action="append", required=True, help="IMAPS port of a replica; repeat for each")
    p.add_argument("--user", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--rcpt", help="recipient (default: --user)")
    p.add_argument("--sender", default="load@load.test")
    p.add_argument("--cafile", required=True)
    p.add_argument("--hostname", required=True, help="name the servers' certificate carries")
    p.add_argument("--count", type=int, default=1500)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--starttls", action="store_true", help="STARTTLS on port 25 (off: as most senders on the internet do)")
    p.add_argument("--poll", type=float, default=0.02, help="seconds between IMAP polls")
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for accepted messages to show up")
    p.add_argument("--purge", action="store_true", help="empty the INBOX first")
    args = p.parse_args(argv)
    args.rcpt = args.rcpt or args.user
    args.context = ssl.create_default_context(cafile=args.cafile)
    return args


if __name__ == "__main__":
    print(json.dumps(run(parse())), flush=True)
