"""A small SMTP server on loopback that plays a continuity upstream for the operator tier: it
offers STARTTLS (a throwaway self-signed certificate) and answers RCPT either with 250 or with
Microsoft's `451 4.3.2 Temporary server error`; `close()` stops listening (connections are
then refused). It never takes a message: the continuity agent's probe ends at RCPT."""

from __future__ import annotations

import socketserver
import ssl
import subprocess
import threading
from pathlib import Path

DEFER = "451 4.3.2 Temporary server error. Please try again later"


class Upstream:
    def __init__(self, workdir: Path):
        key, cert = workdir / "upstream.key", workdir / "upstream.crt"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-subj", "/CN=upstream.test", "-days", "1", "-keyout", str(key),
                        "-out", str(cert)], check=True, capture_output=True)
        self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls.load_cert_chain(cert, key)
        self.deferring = False
        self.sessions = 0
        upstream = self

        class Session(socketserver.StreamRequestHandler):
            timeout = 10

            def handle(self):
                upstream.sessions += 1
                conn = self.connection
                reader = conn.makefile("rb")

                def say(line: str):
                    conn.sendall(line.encode() + b"\r\n")

                say("220 upstream.test ESMTP")
                while True:
                    line = reader.readline().decode(errors="replace").strip()
                    if not line:
                        return
                    verb = line.split(" ", 1)[0].upper()
                    if verb == "EHLO":
                        say("250-upstream.test")
                        say("250 STARTTLS" if not isinstance(conn, ssl.SSLSocket) else "250 8BITMIME")
                    elif verb == "STARTTLS":
                        say("220 2.0.0 Ready to start TLS")
                        conn = upstream.tls.wrap_socket(conn, server_side=True)
                        reader = conn.makefile("rb")
                    elif verb == "MAIL":
                        say("250 2.1.0 OK")
                    elif verb == "RCPT":
                        say(DEFER if upstream.deferring else "250 2.1.5 Recipient OK")
                    elif verb == "QUIT":
                        say("221 2.0.0 Bye")
                        return
                    else:
                        say("502 5.5.2 Command not recognized")

        self.session = Session
        self.server = None
        self.port = 0
        self.listen()

    def listen(self) -> None:
        """Listens (again, on the same port after `close()`)."""
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), self.session)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
