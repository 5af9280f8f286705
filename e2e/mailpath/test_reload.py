"""Mailboxes added, changed, suspended and removed take effect without restarting a daemon.

Each test edits FILE and runs `postwarden local reload --dir DIR`, which re-renders the mounted
ConfigMaps and Secrets as the operator would update them; the daemons' own reload path picks
the change up. The daemons' pids and start times must stay the same.
"""

import imaplib
import smtplib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from clients import IMAPS, SMTP, wait_for
from manifest import DOMAIN, mailbox

def identities(stack):
    """{daemon: (pid, start time)} — a restarted daemon changes either."""
    out = {}
    for name, pid in stack.daemon_pids().items():
        stat = Path(f"/proc/{pid}/stat").read_text()
        out[name] = (pid, stat.rsplit(") ", 1)[1].split()[19])
    return out


@pytest.fixture
def unchanged_daemons(stack):
    before = identities(stack)
    yield
    assert identities(stack) == before, "no daemon was restarted"


def imap_login(stack, tls, local_part, password, instance=0):
    try:
        with IMAPS(stack.port(993, instance), tls) as imap:
            return imap.login(f"{local_part}@{DOMAIN}", password)[0] == "OK"
    except imaplib.IMAP4.error:
        return False


def smtp_login(stack, tls, local_part, password):
    with SMTP(stack.port(587)) as s:
        s.starttls(context=tls)
        s.ehlo()
        s.user, s.password = f"{local_part}@{DOMAIN}", password
        try:
            # One mechanism: every refused attempt costs the server's failure delay.
            s.auth("PLAIN", s.auth_plain)
            return True
        except smtplib.SMTPAuthenticationError:
            return False


def rcpt_code(stack, local_part):
    with SMTP(stack.port(25)) as s:
        s.ehlo("mx.elsewhere.example")
        s.mail("sender@elsewhere.example")
        return s.rcpt(f"{local_part}@{DOMAIN}")[0]


def logins(stack, tls, local_part, password):
    """(IMAP instance 0, IMAP instance 1, SMTP AUTH) login results, tried at the same time
    (a refused login takes the server's failure delay)."""
    with ThreadPoolExecutor(3) as pool:
        results = [
            pool.submit(imap_login, stack, tls, local_part, password, 0),
            pool.submit(imap_login, stack, tls, local_part, password, 1),
            pool.submit(smtp_login, stack, tls, local_part, password),
        ]
        return tuple(r.result() for r in results)


def wait_logins(stack, tls, local_part, password, expected, what):
    seen = []

    def check():
        seen.append(logins(stack, tls, local_part, password))
        return seen[-1] == expected

    try:
        wait_for(check, what)
    except AssertionError:
        raise AssertionError(
            f"{what}: (IMAP #0, IMAP #1, SMTP AUTH) logins were {seen[-1]}, expected {expected}"
        ) from None


def test_added_mailbox_receives_and_logs_in(stack, tls, unchanged_daemons):
    password = "dave-Newly-Added-7"
    assert rcpt_code(stack, "dave") == 550
    stack.manifest.mailboxes["dave"] = mailbox("dave")
    stack.manifest.passwords["dave"] = password
    stack.reload()
    wait_logins(stack, tls, "dave", password, (True, True, True), "dave's logins")
    wait_for(lambda: rcpt_code(stack, "dave") == 250, "dave accepted at RCPT")


def test_changed_password_replaces_the_old_one(stack, tls, unchanged_daemons):
    old = stack.manifest.passwords["erin"]
    new = "erin-After-Change-8"
    assert logins(stack, tls, "erin", old) == (True, True, True)
    stack.manifest.passwords["erin"] = new
    stack.reload()
    wait_logins(stack, tls, "erin", new, (True, True, True), "erin's new password")
    assert logins(stack, tls, "erin", old) == (False, False, False)


def test_suspended_mailbox_cannot_log_in_but_still_receives(stack, tls, unchanged_daemons):
    password = stack.manifest.passwords["frank"]
    assert logins(stack, tls, "frank", password) == (True, True, True)
    stack.manifest.mailboxes["frank"]["spec"]["suspended"] = True
    stack.reload()
    wait_logins(stack, tls, "frank", password, (False, False, False), "frank's logins refused")
    assert rcpt_code(stack, "frank") == 250, "mail for a suspended mailbox is still accepted"


def test_removed_mailbox_is_gone(stack, tls, unchanged_daemons):
    password = stack.manifest.passwords["grace"]
    assert logins(stack, tls, "grace", password) == (True, True, True)
    del stack.manifest.mailboxes["grace"]
    stack.reload()
    wait_logins(stack, tls, "grace", password, (False, False, False), "grace's logins refused")
    wait_for(lambda: rcpt_code(stack, "grace") == 550, "grace refused at RCPT")
