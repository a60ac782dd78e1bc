"""The agent API under ASGI: each request runs its whole Django cycle in one pooled thread.

Why: Django's ASGI handler runs synchronous code through ``sync_to_async``, and with the
project's middleware (all of it synchronous ``MiddlewareMixin``) that is one thread hand-off per
middleware hook, about thirty a request, plus a new thread per request (measured with cProfile
and py-spy: 13 ms of CPU for the cheapest authenticated endpoint, against 1.6 ms for a bare ASGI
handler running the same SQL; ``bench/checkin.py``). Agent requests are small, short and
synchronous from end to end, so for them this wrapper reads the body on the event loop, then runs
Django's WSGI handler (the same URLconf, views and error handling) once in a thread of a fixed
pool, without the middleware that only serves browsers (sessions, CSRF, log-in, messages). Every
other path (admin, auditor pages, the live event stream) goes to Django's ASGI handler unchanged.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler

from redflag.api.errors import database_retry_after, error_body
from redflag.errors import ServiceUnavailable

# Agent endpoints: enrolment, credentials, check-in, results, reports, config.
AGENT_API_PREFIX = "/api/v1/agents/"
DISCONNECTED = b"<the client went away>"  # a sentinel, compared by identity
# Middleware an agent request never needs: it carries no cookie, session or CSRF token, and its
# identity is its bearer token (DRF authentication), not a logged-in person.
BROWSER_ONLY_MIDDLEWARE = frozenset({
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    "accounts_app.signin.middleware.SecondFactorRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
})


class AgentApiHandler(WSGIHandler):
    """Django's WSGI handler with the project's middleware minus the browser-only ones."""

    def load_middleware(self, is_async: bool = False) -> None:
        configured = settings.MIDDLEWARE
        try:
            settings.MIDDLEWARE = [name for name in configured if name not in BROWSER_ONLY_MIDDLEWARE]
            super().load_middleware(is_async=False)
        finally:
            settings.MIDDLEWARE = configured


def wsgi_environ(scope: dict, body: bytes) -> dict:
    """The WSGI environ of an ASGI HTTP scope (PEP 3333: headers as HTTP_*, strings latin-1)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode("utf-8").decode("latin-1"),
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 80),
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", ()):
        name, value = raw_name.decode("latin-1").upper().replace("-", "_"), raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["CONTENT_LENGTH"] = str(len(body))  # what was read is what the view gets
    return environ


class AgentApiInThreads:
    """ASGI app: agent API requests to AgentApiHandler in a fixed thread pool, the rest to ``inner``."""

    def __init__(self, inner, threads: int, shed_after_seconds: float = 5.0) -> None:
        self.inner = inner
        self.shed_after_seconds = shed_after_seconds
        self.handler = AgentApiHandler()
        # As many threads as the process has pooled connections: a request that has a thread has a
        # connection; the others wait for a thread, not inside the pool.
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="agent-api")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith(AGENT_API_PREFIX):
            return await self.inner(scope, receive, send)
        body = await self._read_body(receive, settings.REDFLAG_MAX_BODY_BYTES)
        if body is DISCONNECTED:
            return None  # nobody to answer, and a cut-off body must not be acted on
        if body is None:
            return await self._send(send, 413, [(b"content-type", b"application/json")], self._too_large())
        loop = asyncio.get_running_loop()
        status, headers, content = await loop.run_in_executor(self.executor, self._respond, wsgi_environ(scope, body),
                                                              time.monotonic())
        await self._send(send, status, headers, content)

    def _respond(self, environ: dict, queued_at: float) -> tuple[int, list, bytes]:
        """The whole Django cycle in this thread: request_started, middleware, view, request_finished
        (which hands the pooled connection back). A request that waited for a thread longer than a
        request may wait for a pooled connection is shed with 503 and Retry-After, as the pool sheds it."""
        if time.monotonic() - queued_at > self.shed_after_seconds:
            return 503, [(b"content-type", b"application/json"), (b"retry-after", database_retry_after().encode())], \
                json.dumps(error_body(ServiceUnavailable.default_code, str(ServiceUnavailable.default_detail))).encode()
        started: list = []

        def start_response(status, headers, exc_info=None):
            started[:] = [int(status.split(" ", 1)[0]), headers]

        response = self.handler(environ, start_response)
        try:
            content = b"".join(response)
        finally:
            response.close()
        status, headers = started
        return status, [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers], content

    @staticmethod
    async def _read_body(receive, limit: int) -> bytes | None:  # or DISCONNECTED
        """The request body, or None past ``limit`` bytes (a chunked body has no Content-Length to refuse early)."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    @staticmethod
    def _too_large() -> bytes:
        limit = settings.REDFLAG_MAX_BODY_BYTES
        return json.dumps(error_body("payload_too_large", f"The request body is over the limit of {limit} bytes.")
                          ).encode()

    @staticmethod
    async def _send(send, status: int, headers: list, content: bytes) -> None:
        headers = [(name, value) for name, value in headers if name.lower() != b"content-length"]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(content)).encode())]})
        await send({"type": "http.response.body", "body": content})


def with_agent_api_in_threads(inner):
    """Wrap Django's ASGI application (redflag/asgi.py)."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool") or {}
    return AgentApiInThreads(inner, threads=pool.get("max_size", 8), shed_after_seconds=pool.get("timeout", 5))
