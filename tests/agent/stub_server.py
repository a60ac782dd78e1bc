"""A small RedFlag protocol server on 127.0.0.1 for the agent's tests (no Django).

It speaks the v1 agent contract (register, renew with rotation, check-in,
events, signing keys, health) with the same checks the real server makes on
headers: bearer token, machine id, unique nonce, timestamp skew. Tests can
script one-off answers (``stub.script("checkin", 429, ..., headers=...)``),
flip state (expired access token, revoked agent, heartbeat), stop the server
and start it again on the same port, and read everything it received.

It also answers requests in absolute form (``POST http://host/...``), the way
an agent sends them through ``HTTP_PROXY``: a test can make the agent believe
it talks to a server on another machine while every byte stays on loopback
(``proxied_hosts`` lists the hosts the agent asked for).
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import datetime as dt
import email.utils
import http.server
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any, Callable, Optional

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from agent_client import config as config_module
from agent_client.protocol import command_signing_bytes

NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")
SKEW_SECONDS = 300


@dataclasses.dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    endpoint: str


@dataclasses.dataclass
class Scripted:
    status: int
    body: Any
    headers: dict[str, str]
    drop_connection: bool = False


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")


class StubServer:
    def __init__(self, *, registration_token: str = "rf_reg_test-token", poll_interval_seconds: int = 60) -> None:
        self.registration_token = registration_token
        self.poll_interval_seconds = poll_interval_seconds
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.scripts: dict[str, collections.deque[Scripted]] = collections.defaultdict(collections.deque)
        self.events: dict[str, dict[str, Any]] = {}
        self.event_posts: list[str] = []  # every event id received, repeats included
        self.nonces: set = set()
        self.agent_id = str(uuid.uuid4())
        self.machine_id: Optional[str] = None
        self.generation = 0
        self.access_token = ""
        self.refresh_token = ""
        self.access_expired = False
        self.revoked = False
        self.heartbeat_until: Optional[dt.datetime] = None
        self.config_version = 1
        self.on_request: Optional[Callable[[Received], None]] = None
        self.proxied_hosts: list[str] = []
        # Unix time the Date header claims (a server whose clock differs from ours).
        self.date_override: Optional[float] = None
        # When set, stores the events and then drops the connection without an answer (a lost ack).
        self.drop_events_ack_once = False
        # Commands the next check-ins hand out (signed with this stub's key), and what came back.
        self.commands: list[dict[str, Any]] = []
        self.results: dict[str, list[Any]] = collections.defaultdict(list)
        self.reports: dict[str, list[Any]] = collections.defaultdict(list)
        key = Ed25519PrivateKey.generate()
        self.private_key = key
        self.public_key = base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()
        self.port = 0
        self._httpd: Optional[http.server.ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubServer:
        handler = _make_handler(self)
        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- test helpers ------------------------------------------------------------------

    def script(self, endpoint: str, status: int, body: Any = None, *, headers: Optional[dict[str, str]] = None,
               times: int = 1, drop_connection: bool = False) -> None:
        for _ in range(times):
            self.scripts[endpoint].append(Scripted(status, body, dict(headers or {}), drop_connection))

    def calls(self, endpoint: str) -> list[Received]:
        with self.lock:
            return [entry for entry in self.received if entry.endpoint == endpoint]

    def sign_command(self, command_type: str, params: Optional[dict[str, Any]] = None, *,
                     lifetime: int = 3600) -> dict[str, Any]:
        """A command for the enrolled agent, signed with key k1 the way the real server signs."""
        now = int(time.time())
        command = {"id": str(uuid.uuid4()), "agent_id": self.agent_id, "type": command_type,
                   "params": params or {}, "issued_at": now, "expires_at": now + lifetime,
                   "nonce": uuid.uuid4().hex, "key_id": "k1"}
        signed = command_signing_bytes(agent_id=self.agent_id, command_id=command["id"], command_type=command_type,
                                       params=command["params"], issued_at=now, expires_at=now + lifetime,
                                       nonce=command["nonce"])
        command["signature"] = base64.b64encode(self.private_key.sign(signed)).decode()
        return command

    def enroll(self, machine_id: str) -> dict[str, Any]:
        """Enroll directly (what a successful /register does), for tests that start registered."""
        with self.lock:
            return self._register_locked(machine_id)

    # -- the protocol ----------------------------------------------------------------------

    def _issue_locked(self) -> dict[str, Any]:
        self.generation += 1
        self.access_token = f"rf_acc_stub-{self.generation}-{uuid.uuid4().hex}"
        self.refresh_token = f"rf_ref_stub-{self.generation}-{uuid.uuid4().hex}"
        self.access_expired = False
        now = dt.datetime.now(dt.timezone.utc)
        return {
            "access_token": self.access_token,
            "access_token_expires_at": _iso(now + dt.timedelta(minutes=15)),
            "refresh_token": self.refresh_token,
            "refresh_token_expires_at": _iso(now + dt.timedelta(days=90)),
        }

    def _register_locked(self, machine_id: str) -> dict[str, Any]:
        self.machine_id = machine_id
        self.revoked = False
        return {
            "agent_id": self.agent_id,
            "reregistered": False,
            **self._issue_locked(),
            "signing_keys": self._keys(),
            "config": {"config_version": self.config_version, "poll_interval_seconds": self.poll_interval_seconds},
        }

    def _keys(self) -> list[dict[str, Any]]:
        return [{"key_id": "k1", "algorithm": "ed25519", "public_key": self.public_key, "primary": True,
                 "created_at": "2030-01-01T00:00:00Z"}]

    def handle(self, method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        endpoint = _endpoint(method, path)
        if endpoint == "result":  # the command id travels in the path
            headers = {**headers, "x-command-id": path.split("?", 1)[0].split("/")[-2]}
        entry = Received(method, path, headers, body, endpoint)
        with self.lock:
            self.received.append(entry)
        if self.on_request is not None:
            self.on_request(entry)
        with self.lock:
            if self.scripts[endpoint]:
                scripted = self.scripts[endpoint].popleft()
                if scripted.drop_connection:
                    return -1, None, {}
                return scripted.status, scripted.body, scripted.headers
            return self._answer_locked(endpoint, headers, body)

    def _answer_locked(self, endpoint: str, headers: dict[str, str], body: Any) -> tuple[int, Any, dict[str, str]]:
        if endpoint == "health":
            return 200, {"status": "ok", "database": "ok"}, {}
        if endpoint == "signing-keys":
            return 200, {"keys": self._keys()}, {}
        if endpoint == "register":
            if not isinstance(body, dict) or body.get("registration_token") != self.registration_token:
                return _error(401, "registration_refused", "The registration token is not valid.")
            if not re.match(r"^[0-9a-f]{64}$", str(body.get("machine_id", ""))):
                return _error(400, "invalid", "machine_id: bad")
            return 201, self._register_locked(body["machine_id"]), {}
        if endpoint == "renew":
            problem = self._check_nonce(headers)
            if problem:
                return problem
            if headers.get("x-machine-id") != self.machine_id:
                return _error(403, "machine_mismatch", "X-Machine-ID does not match.")
            if self.revoked:
                return _error(403, "agent_revoked", "This agent has been revoked.")
            if not isinstance(body, dict) or body.get("refresh_token") != self.refresh_token or not self.refresh_token:
                return _error(401, "invalid_credentials", "The credentials are invalid or expired.")
            return 200, self._issue_locked(), {}
        if endpoint in ("checkin", "events", "result", "reports/updates", "reports/system"):
            authorization = headers.get("authorization", "")
            if authorization != f"Bearer {self.access_token}" or not self.access_token:
                return _error(401, "invalid_credentials", "The credentials are invalid or expired.")
            if self.access_expired:
                return _error(401, "token_expired", "The access token has expired; renew it.")
            if self.revoked:
                return _error(403, "agent_revoked", "This agent has been revoked.")
            if headers.get("x-machine-id") != self.machine_id:
                return _error(403, "machine_mismatch", "X-Machine-ID does not match.")
            problem = self._check_nonce(headers)
            if problem:
                return problem
            if endpoint == "result":
                self.results[headers["x-command-id"]].append(body)
                first = len(self.results[headers["x-command-id"]]) == 1
                return 200, {"status": body.get("status"), "changed": first}, {}
            if endpoint.startswith("reports/"):
                key = body.get("report_id") or f"system-{len(self.reports)}"
                self.reports[key].append(body)
                return (200, {"duplicate": len(self.reports[key]) > 1}, {}) if endpoint == "reports/updates" \
                    else (204, None, {})
            if endpoint == "checkin":
                now = dt.datetime.now(dt.timezone.utc)
                active = bool(self.heartbeat_until and self.heartbeat_until > now)
                commands, self.commands = self.commands, []
                return 200, {
                    "commands": commands,
                    "config_version": self.config_version,
                    "poll_interval_seconds": self.poll_interval_seconds,
                    "heartbeat": {"active": active, "until": _iso(self.heartbeat_until) if active else None},
                    "server_time": _iso(now),
                }, {}
            events = body.get("events") if isinstance(body, dict) else None
            if not isinstance(events, list) or not 1 <= len(events) <= 500:
                return _error(400, "invalid", "events: 1 to 500 required")
            stored = 0
            for event in events:
                self.event_posts.append(event["id"])
                if event["id"] not in self.events:
                    self.events[event["id"]] = event
                    stored += 1
            if self.drop_events_ack_once:
                self.drop_events_ack_once = False
                return -1, None, {}
            return 200, {"received": len(events), "stored": stored}, {}
        return _error(404, "not_found", "No such API endpoint.")

    def _check_nonce(self, headers: dict[str, str]) -> Optional[tuple[int, Any, dict[str, str]]]:
        nonce = headers.get("x-request-nonce", "")
        timestamp = headers.get("x-request-timestamp", "")
        if not NONCE.match(nonce) or not timestamp.isdigit():
            return _error(400, "invalid", "security headers missing")
        server_now = self.date_override if self.date_override is not None else time.time()
        if abs(server_now - int(timestamp)) > SKEW_SECONDS:
            return _error(401, "stale_request", "X-Request-Timestamp is outside the allowed clock skew.")
        if nonce in self.nonces:
            return _error(409, "replayed_nonce", "X-Request-Nonce was already used.")
        self.nonces.add(nonce)
        return None


def _error(status: int, code: str, message: str) -> tuple[int, Any, dict[str, str]]:
    return status, {"error": {"code": code, "message": message}}, {}


def _endpoint(method: str, path: str) -> str:
    path = path.split("?", 1)[0]
    if path == "/api/v1/agents/register":
        return "register"
    if path == "/api/v1/agents/renew":
        return "renew"
    if path == "/api/v1/health":
        return "health"
    if path == "/api/v1/signing-keys":
        return "signing-keys"
    if re.match(r"^/api/v1/agents/[^/]+/commands/[^/]+/result$", path):
        return "result"
    match = re.match(r"^/api/v1/agents/[^/]+/([a-z/]+)$", path)
    return match.group(1) if match else path


def _make_handler(stub: StubServer) -> type:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {key.lower(): value for key, value in self.headers.items()}
            path, target = self.path, urllib.parse.urlsplit(self.path)
            if target.scheme:  # absolute form: sent through HTTP_PROXY to a "remote" server
                stub.proxied_hosts.append(target.netloc)
                path = urllib.parse.urlunsplit(("", "", target.path, target.query, ""))
            status, answer, extra = stub.handle(self.command, path, headers, body)
            if status < 0:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            payload = json.dumps(answer).encode() if answer is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = _serve

        def date_time_string(self, timestamp: Optional[float] = None) -> str:
            if stub.date_override is not None:
                return email.utils.formatdate(stub.date_override, usegmt=True)
            return super().date_time_string(timestamp)

    return Handler


# --- helpers the tests share ---------------------------------------------------------------

TEST_MACHINE_ID = "ab" * 32


def enrolled_config(stub: StubServer, config_path: Any, machine_id: str = TEST_MACHINE_ID) -> Any:
    """Enroll with the stub and write the agent's config file as ``register`` would; returns the config."""
    answer = stub.enroll(machine_id)
    config = config_module.AgentConfig(
        server_url=stub.url,
        agent_id=answer["agent_id"],
        machine_id_hash=machine_id,
        access_token=answer["access_token"],
        access_token_expires_at=answer["access_token_expires_at"],
        refresh_token=answer["refresh_token"],
        refresh_token_expires_at=answer["refresh_token_expires_at"],
        signing_keys=answer["signing_keys"],
        config_version=answer["config"]["config_version"],
        poll_interval_seconds=answer["config"]["poll_interval_seconds"],
    )
    config_module.save(config, config_path)
    return config
