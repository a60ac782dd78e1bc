"""Live stream (SSE): the cursor's hole handling, the async view in-process, and real uvicorn processes.

The uvicorn test runs two server processes against the test database (SQLite file or PostgreSQL);
events are recorded by this test process, so delivery crosses processes as in production
(PostgreSQL: NOTIFY from the insert trigger, then a read by seq; SQLite: a short poll).
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import connection, connections
from django.test import Client

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from events_app.stream import Notifier, SeqCursor
from tests.server.events_app.helpers import make_user
from tests.server.processes import ROOT

# --- the insertion cursor ---------------------------------------------------------------------------


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_cursor_advances_over_contiguous_rows():
    cursor = SeqCursor(10)
    cursor.observe([11, 12, 13])
    assert cursor.low == 13 and not cursor.holes


def test_cursor_waits_on_a_hole_then_gives_up_after_the_grace():
    clock = FakeClock()
    cursor = SeqCursor(10, grace=5, clock=clock)
    cursor.observe([11, 13, 14])  # 12 not committed yet (or rolled back)
    assert cursor.low == 11 and set(cursor.holes) == {12}
    assert not cursor.is_new(13, delivered={13, 14}) and cursor.is_new(12, delivered={13, 14})
    clock.now = 2
    cursor.observe([12, 13, 14])  # 12 committed late: delivered, and the watermark moves past it
    assert cursor.low == 14 and not cursor.holes
    cursor.observe([16])
    assert cursor.low == 14
    clock.now = 8
    cursor.observe([])
    assert cursor.low == 16, "a hole older than the grace (a rollback) is skipped"


def test_cursor_does_not_wait_on_a_huge_jump():
    cursor = SeqCursor(10)
    cursor.observe([100_000])
    assert cursor.low == 100_000


# --- the async view, in process ---------------------------------------------------------------------


class AsgiStream:
    """Drive ASGIHandler directly: collect body chunks; disconnect on request."""

    def __init__(self, path: str, query: str, cookie: str, headers=()):
        self.app = ASGIHandler()
        self.scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode()), *headers],
            "client": ("127.0.0.1", 5000), "server": ("testserver", 80),
        }
        self.status = None
        self.chunks: asyncio.Queue = asyncio.Queue()
        self.gone = asyncio.Event()
        self.requested = False

    async def receive(self):
        if not self.requested:
            self.requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body":
            await self.chunks.put(message.get("body", b""))

    async def next_event(self, name: str, timeout: float = 10) -> dict:
        buffer = b""
        deadline = time.monotonic() + timeout
        while True:
            chunk = await asyncio.wait_for(self.chunks.get(), max(0.1, deadline - time.monotonic()))
            buffer += chunk
            for block in buffer.split(b"\n\n"):
                if f"event: {name}".encode() in block:
                    data = [line[6:] for line in block.decode().splitlines() if line.startswith("data: ")]
                    ids = [line[4:] for line in block.decode().splitlines() if line.startswith("id: ")]
                    return {"data": json.loads("\n".join(data)), "id": ids[0] if ids else None}


def in_thread(function):
    """Run ``function`` in a fresh thread: the browser tests' Playwright keeps an event loop running in
    the main thread for the rest of a session that runs both folders, and neither asyncio.run nor an
    async view under the WSGI test client may run inside it."""
    result: dict = {}

    def target():
        try:
            result["value"] = function()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            result["error"] = exc
        finally:
            connections.close_all()  # this thread's connections, before the test database is dropped

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(120)
    if "error" in result:
        raise result["error"]
    return result["value"]


def session_cookie(user) -> str:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def record(message: str, event_type=EventType.AUTH_FAILURE):
    """A seeded event: it records no change of its own, so it stands alone (these tests commit)."""
    return record_event(event_type=event_type, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                        component=Component.SECURITY, message=message, standalone=True)


@pytest.mark.django_db(transaction=True)
def test_async_view_streams_matching_events_and_resumes_after_last_event_id(settings):
    settings.REDFLAG_EVENT_STREAM_SECONDS = 20
    cookie = session_cookie(make_user("audrey", auditor=True))

    async def scenario():
        stream = AsgiStream("/audit/events/stream", "event_type=auth_failure", cookie)
        served = asyncio.ensure_future(stream.app(stream.scope, stream.receive, stream.send))
        ready = await stream.next_event("ready")
        await sync_to_async(record)("not shown", EventType.CONFIG_CHANGED)
        shown = await sync_to_async(record)("failed log-in for mallory")
        event = await stream.next_event("system_event")
        assert stream.status == 200
        assert event["data"]["id"] == str(shown.id) and event["data"]["message"] == "failed log-in for mallory"
        stream.gone.set()
        await asyncio.wait_for(served, 10)

        # Reconnect with Last-Event-ID from before: the missed event comes (again); dedupe by id.
        again = AsgiStream("/audit/events/stream", "event_type=auth_failure", cookie,
                           headers=[(b"last-event-id", ready["id"].encode())])
        served = asyncio.ensure_future(again.app(again.scope, again.receive, again.send))
        replay = await again.next_event("system_event")
        assert replay["data"]["id"] == str(shown.id)
        again.gone.set()
        await asyncio.wait_for(served, 10)
        # This loop ends here: close its LISTEN connection; the pool threads' connections go below.
        await Notifier.for_running_loop().close()

    in_thread(lambda: asyncio.run(scenario()))
    end_other_sessions_of_this_test_database()


def end_other_sessions_of_this_test_database() -> None:
    """The streams read in the (now finished) loop's thread pool; those threads' connections are not
    reachable from here, so end them server-side before the test database is dropped."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()")


@pytest.mark.django_db(transaction=True)
def test_stream_refuses_others_and_bad_ids(client):
    def get(query="", **headers):
        return in_thread(lambda: client.get(f"/audit/events/stream{query}", **headers))

    anonymous = get()
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/?next=")
    client.force_login(make_user("plain"))
    assert get().status_code == 403
    client.force_login(make_user("audrey", auditor=True))
    for refused, name in ((get(HTTP_LAST_EVENT_ID="abc"), "Last-Event-ID"), (get("?severity=loud"), "severity")):
        assert refused.status_code == 400
        assert refused["Content-Type"].startswith("text/plain") and name in refused.content.decode()  # not a stream


@pytest.mark.django_db(transaction=True)
def test_stream_ends_after_its_lifetime(settings, client):
    settings.REDFLAG_EVENT_STREAM_SECONDS = 1
    client.force_login(make_user("audrey", auditor=True))
    started = time.monotonic()
    body = in_thread(lambda: b"".join(client.get("/audit/events/stream").streaming_content).decode())
    assert time.monotonic() - started < 10
    assert body.startswith("retry: 2000\n") and "event: bye" in body


# --- real uvicorn processes --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_uvicorn(port: int) -> subprocess.Popen:
    database = settings.DATABASES["default"]
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "PYTHONUNBUFFERED": "1",
           "REDFLAG_EVENT_STREAM_SECONDS": "30"}
    if database["ENGINE"].endswith("postgresql"):
        env["DATABASE_URL"] = (f"postgresql://{database['USER']}:{database['PASSWORD'] or ''}@{database['HOST']}:"
                               f"{database['PORT'] or 5432}/{database['NAME']}")
    else:  # the SQLite test database is a file (redflag.settings TEST NAME) the server can open too
        env["DATABASE_URL"] = f"sqlite:///{database['NAME']}"
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "redflag.asgi:application", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def read_events(url: str, cookie: str, into: queue.Queue, stop: threading.Event) -> None:
    try:
        with requests.get(url, headers={"Cookie": cookie}, stream=True, timeout=(5, 40)) as response:
            into.put(("status", response.status_code))
            name = None
            for line in response.iter_lines(decode_unicode=True):
                if stop.is_set():
                    return
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    into.put((name, json.loads(line[6:])))
    except requests.RequestException as exc:
        if not stop.is_set():  # the server going away at the end of the test is expected
            into.put(("error", repr(exc)))


def wait_ready(port: int, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(process.stdout.read())
        try:
            requests.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=2)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError("uvicorn did not start")


@pytest.mark.django_db(transaction=True)
def test_two_uvicorn_processes_stream_an_event_recorded_elsewhere():
    cookie = session_cookie(make_user("audrey", auditor=True))
    ports = [free_port(), free_port()]
    servers = [start_uvicorn(port) for port in ports]
    stop = threading.Event()
    try:
        for port, server in zip(ports, servers):
            wait_ready(port, server)
        streams = []
        for port in ports:
            inbox: queue.Queue = queue.Queue()
            reader = threading.Thread(target=read_events, daemon=True, args=(
                f"http://127.0.0.1:{port}/audit/events/stream?event_type=auth_failure", cookie, inbox, stop))
            reader.start()
            streams.append(inbox)
        for inbox in streams:
            assert inbox.get(timeout=20) == ("status", 200)
            assert inbox.get(timeout=20)[0] == "ready"
        started = time.monotonic()
        shown = record("failed log-in seen by every process")
        for inbox in streams:
            name, data = inbox.get(timeout=20)
            assert (name, data["id"]) == ("system_event", str(shown.id))
        latency = time.monotonic() - started
        assert latency < 10, latency
    finally:
        stop.set()
        for server in servers:
            server.terminate()
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
