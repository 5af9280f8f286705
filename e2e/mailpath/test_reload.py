"""Mailboxes added, changed, suspended and removed take effect without restarting a daemon.

FILE is edited once with all four changes and applied with `postwarden local reload --dir DIR`,
which re-renders the mounted ConfigMaps and Secrets as the operator would update them; the
daemons' own reload path (the entrypoints' watchers) picks the change up. Each test checks one
effect; the daemons' pids and start times must stay the same throughout.
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


DAVE_PASSWORD = "dave-Newly-Added-7"
ERIN_NEW_PASSWORD = "erin-After-Change-8"


@pytest.fixture(scope="module")
def lifecycle(stack, tls):
    """One edit of FILE with all four changes, applied by one `local reload`; each test below
    checks its own effect. Asserts first that each mailbox starts in the opposite state, and
    afterwards that no daemon was restarted."""
    m = stack.manifest
    with ThreadPoolExecutor(4) as pool:
        checks = {
            "dave": pool.submit(
                lambda: (logins(stack, tls, "dave", DAVE_PASSWORD), rcpt_code(stack, "dave"))
            ),
            "erin": pool.submit(logins, stack, tls, "erin", m.passwords["erin"]),
            "frank": pool.submit(logins, stack, tls, "frank", m.passwords["frank"]),
            "grace": pool.submit(
                lambda: (logins(stack, tls, "grace", m.passwords["grace"]), rcpt_code(stack, "grace"))
            ),
        }
        before = {name: f.result() for name, f in checks.items()}
    assert before == {
        "dave": ((False, False, False), 550),
        "erin": (True, True, True),
        "frank": (True, True, True),
        "grace": ((True, True, True), 250),
    }
    daemons = identities(stack)
    old = {"erin": m.passwords["erin"], "frank": m.passwords["frank"], "grace": m.passwords["grace"]}

    m.mailboxes["dave"] = mailbox("dave")
    m.passwords["dave"] = DAVE_PASSWORD
    m.passwords["erin"] = ERIN_NEW_PASSWORD
    m.mailboxes["frank"]["spec"]["suspended"] = True
    del m.mailboxes["grace"]
    out = stack.reload()
    assert "updated" in out.stdout, out.stdout
    yield old
    assert identities(stack) == daemons, "no daemon was restarted"


def test_added_mailbox_receives_and_logs_in(stack, tls, lifecycle):
    wait_logins(stack, tls, "dave", DAVE_PASSWORD, (True, True, True), "dave's logins")
    wait_for(lambda: rcpt_code(stack, "dave") == 250, "dave accepted at RCPT")


def test_changed_password_replaces_the_old_one(stack, tls, lifecycle):
    wait_logins(stack, tls, "erin", ERIN_NEW_PASSWORD, (True, True, True), "erin's new password")
    assert logins(stack, tls, "erin", lifecycle["erin"]) == (False, False, False)


def test_suspended_mailbox_cannot_log_in_but_still_receives(stack, tls, lifecycle):
    wait_logins(
        stack, tls, "frank", lifecycle["frank"], (False, False, False), "frank's logins refused"
    )
    assert rcpt_code(stack, "frank") == 250, "mail for a suspended mailbox is still accepted"


def test_removed_mailbox_is_gone(stack, tls, lifecycle):
    wait_logins(
        stack, tls, "grace", lifecycle["grace"], (False, False, False), "grace's logins refused"
    )
    wait_for(lambda: rcpt_code(stack, "grace") == 550, "grace refused at RCPT")
