"""Dovecot: no password in cleartext, and two instances that replicate each other."""

import base64
import imaplib
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


# Replication normally takes well under a second (printed below). Dovecot 2.3's dsync over tcps
# now and then stalls with both ends waiting; the replicator gives such a sync up after 30 s
# (`-T 30`, config::replication) and runs it again, which this allows for.
REPLICATION_TIMEOUT = 75

def test_replication_between_the_two_dovecot_instances(stack, tls):
    mid, raw = raw_message(ALICE, ALICE, "replicated", b"written on instance 0\r\n")
    with IMAPS(stack.port(993, 0), tls) as first, IMAPS(stack.port(993, 1), tls) as second:
        first.login(ALICE, PASSWORDS["alice"])
        second.login(ALICE, PASSWORDS["alice"])
        typ, _ = first.append("INBOX", None, None, raw)
        assert typ == "OK"

        started = time.monotonic()

        def on_second():
            second.select("INBOX")
            return find_uid(second, mid)

        uid_second = wait_for(on_second, "the append replicating to instance 1", timeout=REPLICATION_TIMEOUT)
        print(f"append replicated 0 -> 1 in {time.monotonic() - started:.2f} s")
        typ, _ = second.uid("STORE", uid_second, "+FLAGS", r"(\Flagged)")
        assert typ == "OK"

        started = time.monotonic()

        def flagged_on_first():
            first.select("INBOX")
            uid = find_uid(first, mid)
            typ, data = first.uid("FETCH", uid, "(FLAGS)")
            return typ == "OK" and b"\\Flagged" in data[0]

        wait_for(flagged_on_first, "the flag syncing back to instance 0", timeout=REPLICATION_TIMEOUT)
        print(f"flag replicated 1 -> 0 in {time.monotonic() - started:.2f} s")


def test_wrong_password_is_refused_over_imaps(stack, tls):
    with IMAPS(stack.port(993), tls) as imap:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            imap.login(ALICE, PASSWORDS["alice"] + "-wrong")
