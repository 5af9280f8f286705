"""Inbound mail: LMTP delivery into Dovecot, aliases and forwards, DKIM on the way out, spam."""

import smtplib
import time

import dkim

from clients import IMAPS, SMTP, fetch_by_message_id, find_uid
from dnszone import dkim_keys
from manifest import ALIAS_DOMAIN, DOMAIN, ED25519_DOMAIN, PASSWORDS
from messages import header_values, message_id, raw_message, split

OUTSIDER = "sender@elsewhere.example"

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


def inbound(stack, recipients, raw, sender=OUTSIDER):
    """Sends over port 25 as another domain's server would (no AUTH)."""
    with SMTP(stack.port(25)) as s:
        s.ehlo("mx.elsewhere.example")
        return s.sendmail(sender, recipients, raw, mail_options=["BODY=8BITMIME"])


def mailbox(stack, tls, local_part, instance=0):
    imap = IMAPS(stack.port(993, instance), tls)
    imap.login(f"{local_part}@{DOMAIN}", PASSWORDS[local_part])
    return imap


def test_lmtp_delivery_is_readable_over_imaps_byte_identical(stack, tls):
    # Dot-stuffing, trailing blanks, 8-bit UTF-8, a "From " line and an empty line in between.
    body = (
        "Grüße aus dem Labor — 日本語\r\n"
        ".a line starting with a dot\r\n"
        "..two dots\r\n"
        "From the start of a line\r\n"
        "trailing blanks   \r\n"
        "\r\n"
        "\ttab-indented\r\n"
        + "x" * 900
        + "\r\n"
    ).encode()
    mid, raw = raw_message(OUTSIDER, f"carol@{DOMAIN}", "byte identical", body)
    assert inbound(stack, [f"carol@{DOMAIN}"], raw) == {}
    with mailbox(stack, tls, "carol") as imap:
        uid, fetched = fetch_by_message_id(imap, mid)
        typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[TEXT])")
        assert typ == "OK"
        assert data[0][1] == body
        assert split(fetched)[1] == body


def test_alias_and_alias_domain_deliver_to_the_mailbox(stack, tls):
    sent = {}
    for address in (f"postmaster@{DOMAIN}", f"sales@{DOMAIN}", f"alice@{ALIAS_DOMAIN}"):
        mid, raw = raw_message(OUTSIDER, address, f"to {address}", b"alias\r\n")
        assert inbound(stack, [address], raw) == {}
        sent[address] = mid
    with mailbox(stack, tls, "alice") as imap:
        for address, mid in sent.items():
            _, fetched = fetch_by_message_id(imap, mid)
            assert header_values(fetched, "To") == [address]


def test_delivery_to_dovecot_over_lmtp_is_encrypted(stack, tls):
    mid, raw = raw_message(OUTSIDER, f"carol@{DOMAIN}", "over LMTP", b"encrypted hop\r\n")
    assert inbound(stack, [f"carol@{DOMAIN}"], raw) == {}
    with mailbox(stack, tls, "carol") as imap:
        fetch_by_message_id(imap, mid)
    # Postfix's LMTP client logs each TLS session it opens (lmtp_tls_loglevel 1).
    log = stack.dir / "var" / "log" / "postfix.log"
    lmtp = f"127.0.0.1[127.0.0.1]:{stack.port(24)}"
    deadline = time.monotonic() + 20
    while not any(
        "postfix/lmtp" in line and "TLS connection established to " + lmtp in line
        for line in log.read_text(errors="replace").splitlines()
    ):
        assert time.monotonic() < deadline, "no TLS session of Postfix's LMTP client in the log"
        time.sleep(0.5)


def test_forward_delivers_a_copy_and_keeps_one(stack, tls):
    mid, raw = raw_message(OUTSIDER, f"bob@{DOMAIN}", "forwarded", b"for bob\r\n")
    assert inbound(stack, [f"bob@{DOMAIN}"], raw) == {}
    with mailbox(stack, tls, "carol") as imap:
        fetch_by_message_id(imap, mid)
    with mailbox(stack, tls, "bob") as imap:
        fetch_by_message_id(imap, mid)


def test_outbound_dkim_signature_verifies_against_dns_txt(stack, tls, sink):
    assert_signed_and_verified(stack, tls, sink, DOMAIN, "rsa-sha256")


def test_dual_signing_adds_ed25519_and_rsa_signatures_that_verify(ed25519_stack):
    s = ed25519_stack
    assert_signed_and_verified(s, s.tls(), s.sink, ED25519_DOMAIN, "ed25519-sha256", "rsa-sha256")


def test_turning_dual_signing_off_reloads_the_signer_with_one_key(ed25519_stack):
    s = ed25519_stack
    s.manifest.domain["spec"]["dkim"]["dualSigning"] = False
    pids = s.daemon_pids()
    s.reload()
    # The entrypoint notices the DKIM Secret change within its watch interval and reloads
    # Rspamd (SIGHUP), which drops the RSA selector; the daemons keep running.
    deadline = time.monotonic() + 90
    while True:
        try:
            assert_signed_and_verified(s, s.tls(), s.sink, ED25519_DOMAIN, "ed25519-sha256")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert s.daemon_pids() == pids


def assert_signed_and_verified(stack, tls, sink, domain, *algorithms):
    """alice@domain sends out through 587; the copy the relay receives carries one signature
    per algorithm in `algorithms`, each of which dkimpy verifies against the key dns.txt
    publishes."""
    keys = dkim_keys((stack.dir / "dns.txt").read_text())
    assert keys, "dns.txt publishes a DKIM key"

    def dnsfunc(name, timeout=5):
        key = name.decode() if isinstance(name, bytes) else name
        return keys.get(key.rstrip(".") + ".", "").encode()

    sender, recipient = f"alice@{domain}", "friend@elsewhere.example"
    mid, raw = raw_message(sender, recipient, "signed", b"Signed by the MTA.\r\n")
    with SMTP(stack.port(587), host=stack.manifest.domain["spec"]["hostname"]) as s:
        s.starttls(context=tls)
        s.login(sender, PASSWORDS["alice"])
        assert s.sendmail(sender, [recipient], raw) == {}
    sent = sink.wait_for(mid)
    assert sent.recipients == [recipient]
    signatures = header_values(sent.data, "DKIM-Signature")
    assert len(signatures) == len(algorithms), signatures
    seen = []
    for index, signature in enumerate(signatures):
        tags = dict(t.split("=", 1) for t in signature.replace(" ", "").split(";") if "=" in t)
        assert tags["d"] == domain, tags
        seen.append(tags["a"])
        assert f"{tags['s']}._domainkey.{domain}." in keys, "signed with a key dns.txt publishes"
        assert verifies(sent.data, index, dnsfunc), f"dkimpy verifies {tags['a']}"
        tampered = sent.data.replace(b"Signed by the MTA.", b"Signed by someone else.")
        assert not verifies(tampered, index, dnsfunc), "a changed body fails verification"
    assert sorted(seen) == sorted(algorithms), seen


def test_gtube_is_rejected_or_marked(stack, tls):
    mid = message_id()
    _, raw = raw_message(OUTSIDER, f"alice@{DOMAIN}", "gtube", GTUBE + b"\r\n", mid=mid)
    try:
        inbound(stack, [f"alice@{DOMAIN}"], raw)
    except smtplib.SMTPDataError as rejected:
        assert 500 <= rejected.smtp_code < 600, rejected
        with mailbox(stack, tls, "alice") as imap:
            imap.select("INBOX")
            assert find_uid(imap, mid) is None, "a rejected message is not delivered"
        return
    with mailbox(stack, tls, "alice") as imap:
        _, delivered = fetch_by_message_id(imap, mid, mailbox="INBOX")
    flags = [v.lower() for v in header_values(delivered, "X-Spam") + header_values(delivered, "X-Spam-Flag")]
    assert "yes" in flags, f"GTUBE accepted without a spam mark:\n{split(delivered)[0].decode()}"


def verifies(message, index, dnsfunc):
    """Whether dkimpy verifies the message's signature number `index`."""
    try:
        return dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc)
    except dkim.DKIMException:
        return False
