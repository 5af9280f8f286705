"""A rotated serving certificate reaches new connections while existing ones keep working."""

from clients import IMAP, IMAPS, SMTP, SMTP_SSL, fetch_by_message_id, wait_for
from manifest import DOMAIN, PASSWORDS
from messages import raw_message
from test_reload import identities

ALICE = f"alice@{DOMAIN}"


def served_certificates(stack, tls):
    """DER certificate presented on every TLS port, after full verification against ca.crt."""
    certs = {}
    for instance in (0, 1):
        with IMAPS(stack.port(993, instance), tls) as imap:
            certs[f"imaps-{instance}"] = imap.peer_certificate()
        with IMAP(stack.port(143, instance)) as imap:
            imap.starttls(ssl_context=tls)
            certs[f"imap-starttls-{instance}"] = imap.sock.getpeercert(binary_form=True)
    with SMTP_SSL(stack.port(465), tls) as s:
        certs["submissions"] = s.sock.getpeercert(binary_form=True)
    for port in (587, 25):
        with SMTP(stack.port(port)) as s:
            s.starttls(context=tls)
            certs[f"smtp-{port}"] = s.sock.getpeercert(binary_form=True)
    return certs


def test_rotated_certificate_is_served_without_interrupting_sessions(stack, tls):
    daemons = identities(stack)
    before = served_certificates(stack, tls)
    old = before["imaps-0"]
    assert set(before.values()) == {old}, "one serving certificate everywhere"

    with IMAPS(stack.port(993), tls) as session:
        session.login(ALICE, PASSWORDS["alice"])
        assert session.select("INBOX")[0] == "OK"
        assert session.peer_certificate() == old

        stack.run("local", "reload", "--dir", stack.dir, "--rotate-certificate")

        def all_rotated():
            certs = served_certificates(stack, tls)
            return all(c != old for c in certs.values()) and len(set(certs.values())) == 1

        wait_for(all_rotated, "every port serving the new certificate", timeout=30)

        # The session opened before the rotation is still usable.
        assert session.noop()[0] == "OK"
        mid, raw = raw_message(ALICE, ALICE, "after rotation", b"still connected\r\n")
        assert session.append("INBOX", None, None, raw)[0] == "OK"
        fetch_by_message_id(session, mid)
    assert identities(stack) == daemons, "no daemon was restarted"
