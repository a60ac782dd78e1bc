"""The agent's side of the fast channel against a real HTTP server on loopback (no Django).

Each test's server answers GET /api/v1/agents/{id}/wait the way a test scripts it: streamed lines
with pauses (chunked, as uvicorn sends them), a refusal, or silence. The end-to-end tests with the
real server are in tests/server/end_to_end/test_fast_channel.py.
"""

from __future__ import annotations

import datetime as dt
import http.server
import json
import random
import threading
import time
from typing import Any, Callable, Optional

import pytest
import requests

from agent_client import wakeup
from agent_client.config import AgentConfig, format_time, utc_now
from agent_client.transport import Client
from agent_client.wakeup import HoldResult, WakeChannel

AGENT_ID = "0b5c1d0e-7f6a-4c3b-9a21-5e8d7c6b5a49"
MACHINE_ID = "cd" * 32
TOKEN = "access-token-of-the-test"


class WaitServer:
    """A loopback HTTP server whose /wait answer is one scripted function per request."""

    def __init__(self) -> None:
        self.answers: list[Callable[[http.server.BaseHTTPRequestHandler], None]] = []
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append({"path": self.path, "headers": dict(self.headers)})
                answer = server.answers.pop(0) if server.answers else refuse(404, "not_found")
                answer(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> WaitServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def stream(*parts: Any) -> Callable:
    """200 with chunked lines; a number in ``parts`` is a pause in seconds."""

    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-ndjson")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for part in parts:
            if isinstance(part, (int, float)):
                time.sleep(part)
                continue
            data = (part if isinstance(part, str) else json.dumps(part)).encode() + b"\n"
            handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            handler.wfile.flush()
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    return answer


def refuse(status: int, code: str, headers: Optional[dict] = None) -> Callable:
    def answer(handler: http.server.BaseHTTPRequestHandler) -> None:
        body = json.dumps({"error": {"code": code, "message": code}}).encode()
        handler.send_response(status)
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return answer


def client_for(url: str, *, expires_in: dt.timedelta = dt.timedelta(hours=1)) -> Client:
    config = AgentConfig(server_url=url, agent_id=AGENT_ID, machine_id_hash=MACHINE_ID, access_token=TOKEN,
                         access_token_expires_at=format_time(utc_now() + expires_in), refresh_token="refresh")
    return Client(config, machine_id_hash=MACHINE_ID)


def channel_for(client: Client) -> WakeChannel:
    return WakeChannel(client=lambda: client, stop=threading.Event(), rng=random.Random(7))


def hold_once(server: Optional[WaitServer], client: Optional[Client] = None) -> tuple:
    channel = channel_for(client or client_for(server.url))
    with requests.Session() as session:
        return channel.hold(session), channel


def test_a_wake_up_after_keepalives_is_read_and_the_request_is_signed():
    with WaitServer() as server:
        server.answers.append(stream({"waiting": True}, "", 0.2, "", {"wake": True, "reason": "notified"}))
        result, channel = hold_once(server)
    assert result == HoldResult.WOKEN
    assert (channel.holds_opened, channel.wakeups, channel.failures) == (1, 1, 0)
    request = server.requests[0]
    assert request["path"] == f"/api/v1/agents/{AGENT_ID}/wait"
    headers = request["headers"]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["X-Machine-ID"] == MACHINE_ID
    assert len(headers["X-Request-Nonce"]) >= 16
    assert abs(int(headers["X-Request-Timestamp"]) - time.time()) < 5


def test_the_end_of_a_hold_reopens_at_once():
    with WaitServer() as server:
        server.answers.append(stream({"waiting": True}, {"wake": False, "reason": "hold_ended"}))
        result, channel = hold_once(server)
    assert result == HoldResult.ENDED
    assert channel.delay_after(result) == 0.0


@pytest.mark.parametrize("answer, expected, at_least", [
    (refuse(404, "not_found"), HoldResult.UNSUPPORTED, wakeup.UNSUPPORTED_RETRY_SECONDS),
    (refuse(405, "method_not_allowed"), HoldResult.UNSUPPORTED, wakeup.UNSUPPORTED_RETRY_SECONDS),
    (refuse(403, "agent_revoked"), HoldResult.REFUSED, wakeup.REFUSED_RETRY_SECONDS),
    (refuse(503, "wake_channel_unavailable", {"Retry-After": "60"}), HoldResult.RETRY_AFTER, 60),
    (refuse(429, "rate_limited", {"Retry-After": "30"}), HoldResult.RETRY_AFTER, 30),
])
def test_refusals_leave_the_agent_polling_and_retry_later(answer, expected, at_least):
    with WaitServer() as server:
        server.answers.append(answer)
        result, channel = hold_once(server)
    assert result == expected
    assert channel.delay_after(result) >= at_least


def test_a_refused_token_asks_the_poll_loop_to_renew_and_the_channel_never_renews_itself():
    with WaitServer() as server:
        server.answers.append(refuse(401, "token_expired"))
        result, _ = hold_once(server)
        assert result == HoldResult.NEEDS_CHECKIN
        # A token about to expire is not used at all: the runner's check-in renews it first.
        result, _ = hold_once(server, client_for(server.url, expires_in=dt.timedelta(seconds=10)))
        assert result == HoldResult.NEEDS_CHECKIN
        assert len(server.requests) == 1  # and no /renew, ever
        assert all("/renew" not in request["path"] for request in server.requests)


def test_silence_past_the_read_timeout_or_garbage_is_a_failure_with_backoff(monkeypatch):
    monkeypatch.setattr(wakeup, "READ_TIMEOUT_SECONDS", 0.5)
    with WaitServer() as server:
        server.answers.append(stream({"waiting": True}, 2.0, {"wake": True}))
        server.answers.append(stream("not json"))
        server.answers.append(stream({"waiting": True}))  # closed without a last line
        results = [hold_once(server)[0] for _ in range(3)]
    assert results == [HoldResult.FAILED] * 3
    channel = channel_for(client_for("http://127.0.0.1:9"))
    delays = [channel.delay_after(HoldResult.FAILED) for _ in range(12)]
    assert delays[0] <= wakeup.BACKOFF_BASE_SECONDS and delays[3] >= 4 * wakeup.BACKOFF_BASE_SECONDS
    assert max(delays) <= wakeup.BACKOFF_MAX_SECONDS


def test_no_server_at_all_is_a_failure():
    result, _ = hold_once(None, client_for("http://127.0.0.1:9"))
    assert result == HoldResult.FAILED


def test_the_runner_wait_returns_on_a_nudge_at_once_and_on_stop_within_a_second():
    channel = channel_for(client_for("http://127.0.0.1:9"))
    threading.Timer(0.2, channel.nudge).start()
    started = time.monotonic()
    assert channel.wait(30) is False
    assert time.monotonic() - started < 1.0

    threading.Timer(0.2, channel.stop.set).start()
    started = time.monotonic()
    assert channel.wait(30) is True
    assert time.monotonic() - started < 0.2 + wakeup.STOP_CHECK_SECONDS + 0.5

    assert channel.wait(0.1) is True  # stopped stays stopped


def test_the_thread_nudges_the_runner_and_waits_for_its_check_in_before_the_next_hold():
    with WaitServer() as server:
        server.answers.append(stream({"waiting": True}, {"wake": True, "reason": "notified"}))
        server.answers.append(stream({"waiting": True}, 0.3, {"wake": False, "reason": "hold_ended"}))
        channel = channel_for(client_for(server.url))
        channel.start()
        try:
            assert channel.wait(10) is False  # nudged by the wake-up
            time.sleep(0.5)
            assert len(server.requests) == 1  # the next hold waits for the check-in
            channel.cycle_finished()
            deadline = time.monotonic() + 5
            while len(server.requests) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(server.requests) == 2
        finally:
            channel.stop.set()
            channel.thread.join(timeout=5)
    assert not channel.thread.is_alive()
