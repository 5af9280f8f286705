"""Test messages with unique Message-IDs, as raw CRLF bytes."""

import uuid

from manifest import DOMAIN


def message_id():
    return f"<{uuid.uuid4().hex}@test.{DOMAIN}>"


def raw_message(sender, recipient, subject, body, mid=None, extra_headers=()):
    """A complete message; `body` is bytes with CRLF line ends, ending in CRLF."""
    mid = mid or message_id()
    headers = [
        f"From: {sender}",
        f"To: {recipient}",
        f"Subject: {subject}",
        f"Message-ID: {mid}",
        "Date: Thu, 01 Jan 2026 12:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        *extra_headers,
    ]
    return mid, ("\r\n".join(headers) + "\r\n\r\n").encode() + body


def split(raw):
    """(headers, body) of a raw message."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head, body


def header_values(raw, name):
    head, _ = split(raw)
    unfolded = head.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ")
    prefix = name.lower().encode() + b":"
    return [
        line[len(prefix):].strip().decode(errors="replace")
        for line in unfolded.split(b"\r\n")
        if line.lower().startswith(prefix)
    ]
