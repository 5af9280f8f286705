"""The "rest of the internet" for the local stack: a minimal SMTP server on loopback.

`postwarden local up` relays all outbound mail to 127.0.0.1:<port-base + 1025> (see
`Layout::local`), so nothing leaves the machine. The suite listens there and keeps what arrives.
"""

import socketserver
import threading
import time


class Received:
    def __init__(self, sender, recipients, data):
        self.sender = sender
        self.recipients = recipients
        self.data = data


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        sink = self.server.sink
        self.reply("220 sink.elsewhere.example ESMTP test sink")
        sender, recipients = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line.strip().split(b" ", 1)[0].upper()
            arg = line.strip()[len(verb):].strip().decode(errors="replace")
            if verb in (b"EHLO", b"HELO"):
                self.reply("250-sink.elsewhere.example")
                self.reply("250-8BITMIME")
                self.reply("250 SIZE 104857600")
            elif verb == b"MAIL":
                sender, recipients = arg.split(":", 1)[1].split()[0].strip("<>"), []
                self.reply("250 2.1.0 Ok")
            elif verb == b"RCPT":
                recipients.append(arg.split(":", 1)[1].split()[0].strip("<>"))
                self.reply("250 2.1.5 Ok")
            elif verb == b"DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    data_line = self.rfile.readline()
                    if not data_line or data_line == b".\r\n":
                        break
                    if data_line.startswith(b".."):
                        data_line = data_line[1:]
                    lines.append(data_line)
                sink.add(Received(sender, recipients, b"".join(lines)))
                self.reply("250 2.0.0 Ok: queued")
            elif verb == b"RSET":
                sender, recipients = None, []
                self.reply("250 2.0.0 Ok")
            elif verb == b"NOOP":
                self.reply("250 2.0.0 Ok")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Command not recognized")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class Sink:
    def __init__(self, port):
        self.port = port
        self._messages = []
        self._lock = threading.Condition()
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.sink = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def add(self, message):
        with self._lock:
            self._messages.append(message)
            self._lock.notify_all()

    def messages(self):
        with self._lock:
            return list(self._messages)

    def wait_for(self, message_id, timeout=20.0):
        """The message with this Message-ID, once it arrives."""
        needle = message_id.encode()
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for m in self._messages:
                    if needle in m.data.split(b"\r\n\r\n", 1)[0]:
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{message_id} did not reach the outbound sink in {timeout}s")
                self._lock.wait(left)
