"""Real mail clients (smtplib, imaplib, ssl) pointed at the local stack on 127.0.0.1.

They connect to 127.0.0.1 but verify TLS exactly as a client of the real host would: the chain
against the CA from DIR/ca.crt and the certificate's name against the MX host name.
"""

import imaplib
import smtplib
import socket
import ssl
import time

from manifest import HOSTNAME

# Clients connect from another loopback address than the servers listen on: daemons treat a
# client whose address equals their own as the local host itself (Dovecot then allows
# plaintext logins), which no real client is.
CLIENT_ADDRESS = ("127.0.0.2", 0)


def connect(port, timeout):
    return socket.create_connection(("127.0.0.1", port), timeout, source_address=CLIENT_ADDRESS)


def tls_context(ca_file):
    ctx = ssl.create_default_context(cafile=str(ca_file))
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class SMTP(smtplib.SMTP):
    """SMTP to 127.0.0.1:port; STARTTLS verifies the certificate for the MX host name."""

    def __init__(self, port, timeout=20, host=HOSTNAME):
        super().__init__(timeout=timeout, source_address=CLIENT_ADDRESS)
        self._host = host
        self.connect_code, self.banner = self.connect("127.0.0.1", port)
        self._host = host


class SMTP_SSL(smtplib.SMTP_SSL):
    """Implicit TLS (port 465) to 127.0.0.1, verifying the certificate for the MX host name."""

    def __init__(self, port, context, timeout=20):
        super().__init__(context=context, timeout=timeout, source_address=CLIENT_ADDRESS)
        self._host = HOSTNAME
        self.connect_code, self.banner = self.connect("127.0.0.1", port)

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(connect(port, timeout), server_hostname=HOSTNAME)


class IMAP(imaplib.IMAP4):
    """IMAP (port 143) to 127.0.0.1; STARTTLS verifies the certificate for the MX host name."""

    def __init__(self, port, timeout=20):
        super().__init__("127.0.0.1", port, timeout=timeout)

    def _create_socket(self, timeout):
        return connect(self.port, timeout)

    def starttls(self, ssl_context=None):
        self.host = HOSTNAME
        try:
            return super().starttls(ssl_context=ssl_context)
        finally:
            self.host = "127.0.0.1"


class IMAPS(imaplib.IMAP4_SSL):
    """IMAPS (port 993) to 127.0.0.1, verifying the certificate for the MX host name."""

    def __init__(self, port, context, timeout=20):
        super().__init__("127.0.0.1", port, ssl_context=context, timeout=timeout)

    def _create_socket(self, timeout):
        return self.ssl_context.wrap_socket(connect(self.port, timeout), server_hostname=HOSTNAME)

    def peer_certificate(self):
        return self.sock.getpeercert(binary_form=True)


def fetch_by_message_id(imap, message_id, mailbox="INBOX", timeout=15.0):
    """Waits until `message_id` is in `mailbox` and returns (uid, full raw message bytes)."""
    deadline = time.monotonic() + timeout
    while True:
        typ, _ = imap.select(mailbox)
        assert typ == "OK", f"SELECT {mailbox} failed"
        uid = find_uid(imap, message_id)
        if uid is not None:
            typ, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
            assert typ == "OK", data
            return uid, data[0][1]
        if time.monotonic() > deadline:
            raise AssertionError(f"{message_id} did not arrive in {mailbox} within {timeout}s")
        time.sleep(0.2)


def find_uid(imap, message_id):
    typ, data = imap.uid("SEARCH", None, "HEADER", "Message-ID", f'"{message_id}"')
    assert typ == "OK", data
    uids = data[0].split()
    return uids[-1].decode() if uids else None


def wait_for(predicate, what, timeout=20.0, interval=0.2):
    """Polls `predicate` until it returns a truthy value; fails naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:  # the condition is not met yet; report the last reason
            last = e
        time.sleep(interval)
    raise AssertionError(f"{what} did not happen within {timeout}s (last: {last!r})")
