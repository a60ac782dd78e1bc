"""Real local receivers for the delivery tests: an HTTP endpoint (ntfy-style or a webhook receiver that
verifies signatures with the README's own code) and an SMTP server (aiosmtpd)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from tests.server.processes import free_port

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_verify():
    """The ``verify`` function of README's "Verifying the webhook" section, executed as written."""
    section = README.read_text().split("### Verifying the webhook", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 (our own README, the point of the test)
    return namespace["verify"], code


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes
    verified: bool | None = None


class HttpReceiver:
    """A threaded HTTP server that records each request and answers with the next status of ``statuses``
    (the last one repeats). With ``secret`` it verifies the signature first and answers 401 if it fails."""

    def __init__(self, statuses=(200,), secret: bytes | None = None):
        self.statuses = list(statuses)
        self.secret = secret
        self.requests: list[Request] = []
        self.verify = readme_verify()[0] if secret is not None else None
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = Request("POST", self.path, dict(self.headers.items()), body)
                status = receiver.statuses.pop(0) if len(receiver.statuses) > 1 else receiver.statuses[0]
                if receiver.verify is not None:
                    request.verified = receiver.verify(receiver.secret, self.headers, body)
                    status = status if request.verified else 401
                receiver.requests.append(request)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"id":"x","time":1,"event":"message"}' if status < 300 else b'{"error":"no"}')

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@dataclass
class SmtpInbox:
    messages: list = field(default_factory=list)
    logins: list = field(default_factory=list)

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos),
                              message_from_bytes(envelope.original_content, policy=policy.default)))
        return "250 OK"


class SmtpReceiver:
    """aiosmtpd on a free loopback port, accepting one user name and password (AUTH without TLS: loopback)."""

    def __init__(self, user: str, password: str):
        self.inbox = SmtpInbox()

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = auth_data.login.decode() == user and auth_data.password.decode() == password
            self.inbox.logins.append(ok)
            return AuthResult(success=ok)

        self.port = free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                     auth_require_tls=False)

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()
