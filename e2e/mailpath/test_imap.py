"""Dovecot: no password in cleartext, and three instances that replicate each other."""

import base64
import imaplib
import re
import time

import pytest

from clients import IMAP, IMAPS, connect, find_uid, wait_for
from manifest import DOMAIN, PASSWORDS
from messages import raw_message

ALICE = f"alice@{DOMAIN}"


def raw_exchange(port, *commands):
    """Sends IMAP commands on a plain socket, returning the tagged reply of each."""
    replies = []
    with connect(port, 10) as sock:
        f = sock.makefile("rb")
        greeting = f.readline()
        assert greeting.startswith(b"* OK"), greeting
        for n, command in enumerate(commands):
            tag = f"a{n}".encode()
            sock.sendall(tag + b" " + command + b"\r\n")
            while True:
                line = f.readline()
                assert line, "connection closed"
                if line.startswith(tag + b" "):
                    replies.append(line)
                    break
    return greeting, replies


def test_plaintext_login_is_refused_before_starttls(stack, tls):
    token = base64.b64encode(f"\0{ALICE}\0{PASSWORDS['alice']}".encode())
    greeting, replies = raw_exchange(
        stack.port(143),
        b"CAPABILITY",
        f'LOGIN {ALICE} "{PASSWORDS["alice"]}"'.encode(),
        b"AUTHENTICATE PLAIN " + token,
    )
    login, authenticate = replies[1], replies[2]
    assert login.split()[1] in (b"NO", b"BAD"), login
    assert authenticate.split()[1] in (b"NO", b"BAD"), authenticate
    # The same credentials work once the connection is encrypted.
    with IMAP(stack.port(143)) as imap:
        assert "STARTTLS" in imap.capabilities
        assert "LOGINDISABLED" in imap.capabilities
        imap.starttls(ssl_context=tls)
        typ, _ = imap.login(ALICE, PASSWORDS["alice"])
        assert typ == "OK"


# Replication normally takes well under a second (printed below). A dsync that stalls is given up
# by the agent after 30 s of silence (`-T 30`, replicate::sync) and run again, which this allows for.
REPLICATION_TIMEOUT = 75

def test_replication_among_the_three_dovecot_instances(stack, tls):
    """An append on instance 0 reaches 1 and 2; a flag set on 2 reaches 0 and 1."""
    mid, raw = raw_message(ALICE, ALICE, "replicated", b"written on instance 0\r\n")
    sessions = [IMAPS(stack.port(993, i), tls) for i in range(3)]
    try:
        for s in sessions:
            s.login(ALICE, PASSWORDS["alice"])
        typ, _ = sessions[0].append("INBOX", None, None, raw)
        assert typ == "OK"
        started = time.monotonic()

        def uid_on(i):
            def look():
                sessions[i].select("INBOX")
                return find_uid(sessions[i], mid)
            return look

        uids = {}
        for i in (1, 2):
            uids[i] = wait_for(uid_on(i), f"the append replicating to instance {i}", timeout=REPLICATION_TIMEOUT)
            print(f"append replicated 0 -> {i} in {time.monotonic() - started:.2f} s")
        typ, _ = sessions[2].uid("STORE", uids[2], "+FLAGS", r"(\Flagged)")
        assert typ == "OK"
        started = time.monotonic()

        def flagged_on(i):
            def look():
                uid = uid_on(i)()
                if not uid:
                    return False
                typ, data = sessions[i].uid("FETCH", uid, "(FLAGS)")
                return typ == "OK" and b"\\Flagged" in data[0]
            return look

        for i in (0, 1):
            wait_for(flagged_on(i), f"the flag syncing from instance 2 to {i}", timeout=REPLICATION_TIMEOUT)
            print(f"flag replicated 2 -> {i} in {time.monotonic() - started:.2f} s")
    finally:
        for s in sessions:
            try:
                s.logout()
            except Exception:
                pass


def test_replication_agents_report_no_lag_and_no_failures(stack):
    """Each agent's metrics (port-base + 901 + 10000 per instance): a series per peer, no lag and
    nothing queued once idle, and syncs that succeeded (a start-up sweep may fail while the
    peers are still starting; it is retried)."""
    import urllib.request

    for i in range(3):
        def idle():
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.port(901, i)}/metrics", timeout=5) as r:
                text = r.read().decode()
            lags = re.findall(r'^postwarden_replication_lag_seconds\{peer="(imap-\d)"\} (\S+)$', text, re.M)
            return text if len(lags) == 2 and all(float(v) == 0 for _, v in lags) else None

        text = wait_for(idle, f"agent {i} idle", timeout=REPLICATION_TIMEOUT)
        peers = {p for p in re.findall(r'peer="(imap-\d)"', text)}
        assert peers == {f"imap-{o}" for o in range(3) if o != i}, text
        queued = re.findall(r'^postwarden_replication_queue_length\{peer="imap-\d"\} (\S+)$', text, re.M)
        assert queued and all(float(q) == 0 for q in queued), text
        assert re.search(r'^postwarden_replication_syncs_total\{peer="imap-\d",result="ok"\} [1-9]', text, re.M), text


def test_wrong_password_is_refused_over_imaps(stack, tls):
    with IMAPS(stack.port(993), tls) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(ALICE, PASSWORDS["alice"] + "-wrong")
