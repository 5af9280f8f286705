"""Postfix's doors: submission only over TLS with a password, no open relay, no unknown users."""

import base64
import smtplib

import pytest

from clients import IMAPS, SMTP, SMTP_SSL, fetch_by_message_id
from manifest import DOMAIN, PASSWORDS
from messages import raw_message

ALICE = f"alice@{DOMAIN}"
CAROL = f"carol@{DOMAIN}"


def test_submission_587_with_starttls_and_auth_delivers(stack, tls):
    with SMTP(stack.port(587)) as s:
        s.ehlo()
        assert s.has_extn("starttls")
        s.starttls(context=tls)
        s.ehlo()
        assert s.has_extn("auth"), "AUTH offered once TLS is up"
        s.login(ALICE, PASSWORDS["alice"])
        mid, raw = raw_message(ALICE, CAROL, "submission 587", b"hello over 587\r\n")
        assert s.sendmail(ALICE, [CAROL], raw) == {}
    with IMAPS(stack.port(993), tls) as imap:
        imap.login(CAROL, PASSWORDS["carol"])
        fetch_by_message_id(imap, mid)


def test_auth_is_refused_before_starttls(stack):
    with SMTP(stack.port(587)) as s:
        s.ehlo()
        assert not s.has_extn("auth"), "AUTH must not be offered in cleartext"
        token = base64.b64encode(f"\0{ALICE}\0{PASSWORDS['alice']}".encode()).decode()
        code, reply = s.docmd("AUTH", f"PLAIN {token}")
        assert 500 <= code < 600, (code, reply)


def test_submissions_465_implicit_tls(stack, tls):
    with SMTP_SSL(stack.port(465), tls) as s:
        assert s.connect_code == 220
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        s.ehlo()
        s.login(ALICE, PASSWORDS["alice"])
        mid, raw = raw_message(ALICE, CAROL, "submission 465", b"hello over 465\r\n")
        assert s.sendmail(ALICE, [CAROL], raw) == {}
    with IMAPS(stack.port(993), tls) as imap:
        imap.login(CAROL, PASSWORDS["carol"])
        fetch_by_message_id(imap, mid)


@pytest.mark.parametrize("port", [587, 465])
def test_wrong_password_is_refused(stack, tls, port):
    conn = SMTP_SSL(stack.port(port), tls) if port == 465 else SMTP(stack.port(port))
    with conn as s:
        if port == 587:
            s.starttls(context=tls)
        s.ehlo()
        s.user, s.password = ALICE, PASSWORDS["alice"] + "-wrong"
        with pytest.raises(smtplib.SMTPAuthenticationError) as refused:
            s.auth("PLAIN", s.auth_plain)
        assert refused.value.smtp_code == 535


def test_unauthenticated_relay_to_a_foreign_domain_is_refused(stack, tls):
    with SMTP(stack.port(25)) as s:
        s.ehlo("client.elsewhere.example")
        code, _ = s.mail("someone@elsewhere.example")
        assert code == 250
        code, reply = s.rcpt("victim@foreign.example")
        assert 500 <= code < 600, (code, reply)
    # Submission without AUTH, even over TLS, relays nothing either.
    with SMTP(stack.port(587)) as s:
        s.starttls(context=tls)
        s.ehlo()
        code, reply = s.mail(ALICE)
        if code == 250:
            code, reply = s.rcpt("victim@foreign.example")
        assert 500 <= code < 600, (code, reply)


def test_unknown_local_recipient_is_refused_at_rcpt(stack):
    with SMTP(stack.port(25)) as s:
        s.ehlo("client.elsewhere.example")
        assert s.mail("someone@elsewhere.example")[0] == 250
        code, reply = s.rcpt(f"nobody-here@{DOMAIN}")
        assert code == 550, (code, reply)
        # A known recipient in the same transaction is still accepted.
        assert s.rcpt(CAROL)[0] == 250
