"""redflag/api/asgi.py: agent API requests run their Django cycle in one pooled thread; everything
else reaches Django's ASGI handler unchanged; a body past the limit is refused before it is read whole."""

from __future__ import annotations

import json
import time

import pytest
from asgiref.sync import async_to_sync
from django.core.asgi import get_asgi_application

from redflag.api.asgi import AgentApiInThreads, wsgi_environ


def call(app, path: str, *, method: str = "POST", chunks: tuple[bytes, ...] = (b"",), headers=()):
    sent: list[dict] = []
    pending = list(chunks)

    async def receive():
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http", "path": path,
             "query_string": b"", "root_path": "", "server": ("testserver", 80), "client": ("127.0.0.1", 4000),
             "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"), *headers]}
    async_to_sync(app)(scope, receive, send)
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(message.get("body", b"") for message in sent if message["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


@pytest.fixture
def app():
    return AgentApiInThreads(get_asgi_application(), threads=2)


def test_an_agent_request_is_answered_by_django_in_a_pool_thread(app, transactional_db):
    status, headers, body = call(app, "/api/v1/agents/register", chunks=(b'{"registration_token": ', b'"x"}'))
    assert status == 400  # the registration view's own validation: the body arrived in two chunks, whole
    assert "machine_id" in json.loads(body)["error"]["fields"]
    assert headers[b"content-length"] == str(len(body)).encode()


def test_a_body_past_the_limit_is_413_before_it_is_read_whole(app, settings):
    settings.REDFLAG_MAX_BODY_BYTES = 10
    status, _, body = call(app, "/api/v1/agents/register", chunks=(b"x" * 8, b"x" * 8, b"never read"))
    assert status == 413
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_other_paths_go_to_the_inner_application(transactional_db):
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["path"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = AgentApiInThreads(inner, threads=1)
    assert call(app, "/admin/", method="GET")[0] == 204
    assert call(app, "/api/v1/health", method="GET")[0] == 204
    assert seen == ["/admin/", "/api/v1/health"]


def test_the_environ_carries_headers_as_wsgi_names():
    environ = wsgi_environ({"method": "GET", "path": "/api/v1/agents/x/config", "query_string": b"a=1",
                            "headers": [(b"x-machine-id", b"ab"), (b"content-type", b"application/json"),
                                        (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")],
                            "client": ("10.0.0.1", 5)}, b"{}")
    assert environ["HTTP_X_MACHINE_ID"] == "ab" and environ["CONTENT_TYPE"] == "application/json"
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1,2.2.2.2"  # repeated headers joined, as WSGI servers do
    assert environ["CONTENT_LENGTH"] == "2" and environ["REMOTE_ADDR"] == "10.0.0.1"
    assert environ["QUERY_STRING"] == "a=1" and environ["wsgi.input"].read() == b"{}"


def test_a_client_gone_mid_body_gets_nothing_done(app, transactional_db):
    messages = [{"type": "http.request", "body": b'{"registration_token": ', "more_body": True},
                {"type": "http.disconnect"}]
    sent: list = []

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/api/v1/agents/register", "query_string": b"",
             "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 4000)}
    async_to_sync(app)(scope, receive, send)
    assert sent == []


def test_a_request_that_waited_too_long_for_a_thread_is_shed_with_503(db):
    """As a request that waits longer than the pool timeout for a connection is (REDFLAG_DB_POOL_TIMEOUT)."""
    app = AgentApiInThreads(get_asgi_application(), threads=1, shed_after_seconds=5)
    environ = wsgi_environ({"method": "GET", "path": "/api/v1/agents/x/config", "headers": []}, b"")
    status, headers, body = app._respond(environ, queued_at=time.monotonic() - 6)
    assert status == 503 and dict(headers)[b"retry-after"].isdigit()
    assert json.loads(body)["error"]["code"] == "unavailable"
