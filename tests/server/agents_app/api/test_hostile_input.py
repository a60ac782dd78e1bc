"""Oversized, malformed and hostile input on every agent endpoint: 4xx, nothing stored, server unharmed.

test_schema_fuzz.py lets schemathesis explore the schema; this module throws what a fuzzer rarely
builds: 10,000 levels of nesting, 1 MB strings in every string field, lists one item past each
documented cap, invalid UTF-8 and UTF-16, NUL and lone surrogates, NaN and 1e400 and 5,000-digit
integers, wrong types everywhere, other content types, lying Content-Length, duplicate keys, hostile
security headers and hostile paths (invalid UUIDs, traversal in versions, scripts and queries).

Each case is sent with real credentials (an agent enrolled through the real endpoint, a fresh nonce
and timestamp), so the hostile part is what gets judged. Then, every time:

* the answer is a 4xx (never 5xx) with the JSON error body, and the error names the problem;
* nothing is stored: the row counts of every model an agent can write, the agents' rows, the
  command's result fields and the token's seats are unchanged. Only the security events the server
  records on purpose may appear, and each case says which (nonces may grow: they are spent before
  the body is judged);
* the server is unharmed: the endpoint's valid request succeeds right after.

Bodies are built from each endpoint's valid body, so every string field, every capped list and
every number gets its hostile twin without a hand-written wall of cases.
"""

from __future__ import annotations

import io
import json
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
from django.conf import global_settings

from agents_app.models import (
    Agent,
    AgentRelease,
    AgentSubsystem,
    Command,
    IngestedReport,
    PackageUpdate,
    RefreshToken,
    UpdateLog,
)
from agents_app.services.commands import command_create
from agents_app.services.releases import release_create_from_upload
from events_app.models import SystemEvent
from tests.server.conftest import host_facts, machine_hash, security_headers
from tokens_app.models import RegistrationToken

MB = 1024 * 1024
OCCURRED_AT = "2026-01-15T12:00:00+00:00"
SMALL_BODY_LIMIT = 4096  # REDFLAG_MAX_BODY_BYTES for the size cases: cheap to exceed
# Where agents may send anything (stored as JSON, bounded by the body limit): not typed fields.
FREE_FORM = {"metadata", "details", "packages"}
Path = tuple  # ("events", 0, "message")


# --- the endpoints and their valid requests --------------------------------------------------------

@dataclass
class Fleet:
    """What a case runs against: an enrolled agent and a command sent to it."""

    client: Any
    secret: str
    agent: Any
    command_id: str


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str  # {agent} and {command} are filled in from the fleet
    body: Callable[[Fleet], dict] | None = None  # None: a GET
    auth: str = "agent"  # "agent" (bearer + security headers), "renew" (security headers), "none"
    capped: tuple[tuple[Path, int], ...] = ()  # (list path, documented maximum)
    needs_release: bool = False

    def url(self, fleet: Fleet, **parts) -> str:
        values = {"agent": fleet.agent.id, "command": fleet.command_id, **parts}
        return self.path.format(**values)

    def headers(self, fleet: Fleet, **overrides) -> dict:
        if self.auth == "agent":
            return fleet.agent.headers(**overrides)
        if self.auth == "renew":
            return {**security_headers(fleet.agent.machine_id), **overrides}
        return overrides

    def send(self, fleet: Fleet, raw: bytes | None = None, *, content_type: str = "application/json",
             url: str | None = None, **headers):
        url = url or self.url(fleet)
        headers = self.headers(fleet, **headers)
        if self.body is None:
            return fleet.client.get(url, **headers)
        if raw is None:
            raw = json.dumps(self.body(fleet)).encode()
        return fleet.client.generic("POST", url, raw, content_type, **headers)


def _register_body(fleet: Fleet) -> dict:
    return {"registration_token": fleet.secret, "machine_id": machine_hash(), **host_facts(),
            "capabilities": ["apt", "storage"]}


def _checkin_body(fleet: Fleet) -> dict:
    return {"agent_version": "0.1.0", "config_version": 1, "heartbeat_active": False,
            "metrics": {"cpu_percent": 3.5, "memory_used_bytes": 1024, "load_average": [0.5, 0.2, 0.1],
                        "uptime_seconds": 60}}


def _events_body(fleet: Fleet) -> dict:
    return {"events": [{"id": str(uuid.uuid4()), "event_type": "agent_startup", "event_subtype": "success",
                        "severity": "info", "component": "agent", "message": "agent started",
                        "metadata": {"pid": 42}, "occurred_at": OCCURRED_AT}]}


def _result_body(fleet: Fleet) -> dict:
    return {"status": "succeeded", "output": "done", "exit_code": 0, "duration_seconds": 1.5,
            "dependencies": ["libc6"], "packages": [{"name": "curl"}], "details": {"note": "ok"}}


def _updates_body(fleet: Fleet) -> dict:
    return {"report_id": f"rep-{uuid.uuid4().hex[:12]}", "package_type": "apt", "not_checked": ["held"],
            "updates": [{"name": "curl", "current_version": "7.88.1-10", "available_version": "7.88.1-10+deb12u5",
                         "severity": "important", "is_security": True, "repository": "bookworm-security",
                         "size_bytes": 391234, "cve_ids": ["CVE-2024-2398"], "kb_ids": ["KB5034441"],
                         "metadata": {"arch": "amd64"}}]}


def _system_body(fleet: Fleet) -> dict:
    return {"hostname": "web-01", "os_name": "Debian GNU/Linux", "os_version": "12", "kernel": "6.1.0-13-amd64",
            "arch": "x86_64", "cpu_model": "EPYC", "cpu_count": 4, "cpu_percent": 2.5,
            "memory_total_bytes": 8 * 2**30, "memory_used_bytes": 2**30, "uptime_seconds": 3600,
            "boot_time": OCCURRED_AT, "ip_addresses": ["192.0.2.10"], "reboot_required": False,
            "reboot_reason": "",
            "disks": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4", "total_bytes": 10**10,
                       "used_bytes": 10**9, "percent": 10.0}]}


AGENT = "/api/v1/agents/{agent}"
REGISTER = Endpoint("register", "/api/v1/agents/register", _register_body, auth="none",
                    capped=((("capabilities",), 16),))
RENEW = Endpoint("renew", "/api/v1/agents/renew", lambda fleet: {"refresh_token": fleet.agent.refresh_token},
                 auth="renew")
CHECKIN = Endpoint("checkin", AGENT + "/checkin", _checkin_body, capped=((("metrics", "load_average"), 3),))
EVENTS = Endpoint("events", AGENT + "/events", _events_body,
                  capped=((("events",), 500), (("events", 0, "metadata"), 100)))
RESULT = Endpoint("result", AGENT + "/commands/{command}/result", _result_body,
                  capped=((("dependencies",), 5000), (("packages",), 5000)))
UPDATES = Endpoint("updates", AGENT + "/reports/updates", _updates_body,
                   capped=((("updates",), 20000), (("updates", 0, "cve_ids"), 500), (("updates", 0, "kb_ids"), 100),
                           (("not_checked",), 1000)))
SYSTEM = Endpoint("system", AGENT + "/reports/system", _system_body,
                  capped=((("disks",), 256), (("ip_addresses",), 256)))
CONFIG = Endpoint("config", AGENT + "/config")
RELEASE_LATEST = Endpoint("release-latest", "/api/v1/releases/latest", needs_release=True)
RELEASE_VERSION = "1.2.3"
RELEASE_MANIFEST = Endpoint("release-manifest", f"/api/v1/releases/{RELEASE_VERSION}", needs_release=True)
RELEASE_ARTIFACT = Endpoint("release-artifact", f"/api/v1/releases/{RELEASE_VERSION}/artifact", needs_release=True)
SIGNING_KEYS = Endpoint("signing-keys", "/api/v1/signing-keys", auth="none")
HEALTH = Endpoint("health", "/api/v1/health", auth="none")

POSTS = [REGISTER, RENEW, CHECKIN, EVENTS, RESULT, UPDATES, SYSTEM]
AUTHENTICATED = [RENEW, CHECKIN, EVENTS, RESULT, UPDATES, SYSTEM, CONFIG, RELEASE_LATEST, RELEASE_MANIFEST,
                 RELEASE_ARTIFACT]
ALL = [*POSTS, CONFIG, RELEASE_LATEST, RELEASE_MANIFEST, RELEASE_ARTIFACT, SIGNING_KEYS, HEALTH]


def publish_release() -> None:
    release_create_from_upload(upload=io.BytesIO(b"PK\x05\x06" + bytes(18)), version=RELEASE_VERSION, actor="test")


@pytest.fixture
def fleet(client, enroll, registration_secret, settings, tmp_path, request) -> Fleet:
    settings.DATA_DIR = tmp_path / "data"
    agent = enroll()
    command = command_create(agent=agent.model, command_type="scan_storage", source="api")
    Command.objects.filter(pk=command.pk).update(status="sent")
    callspec = getattr(request.node, "callspec", None)
    endpoint = callspec.params.get("endpoint") if callspec else None
    if endpoint is not None and endpoint.needs_release:
        publish_release()
    return Fleet(client, registration_secret, agent, str(command.pk))


# --- what "nothing stored" means -------------------------------------------------------------------

WRITABLE = (Agent, AgentSubsystem, Command, PackageUpdate, UpdateLog, SystemEvent, IngestedReport, RefreshToken,
            AgentRelease)


def stored(fleet: Fleet) -> dict:
    """Everything a hostile request could have written (RequestNonce excepted: spent before the body is read)."""
    return {
        "rows": {model.__name__: model.objects.count() for model in WRITABLE},
        "events": Counter(SystemEvent.objects.values_list("event_type", flat=True)),
        "agents": list(Agent.objects.order_by("pk").values()),
        "commands": list(Command.objects.order_by("pk").values("pk", "status", "output", "result", "started_at",
                                                               "completed_at")),
        "refresh_tokens": list(RefreshToken.objects.order_by("pk").values()),
        "seats": list(RegistrationToken.objects.values_list("seats_used", flat=True)),
    }


def assert_refused(response, before: dict, fleet: Fleet, *, status: int | tuple = (400,), names: str = "",
                   records: tuple[str, ...] = ()) -> dict:
    """A 4xx with the JSON error body naming the problem; nothing stored but the events in ``records``."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.content[:500])
    error = response.json()["error"]
    assert error["code"] and error["message"]
    assert names.lower() in json.dumps(error).lower(), error
    after = stored(fleet)
    expected_events = before["events"] + Counter(records)
    assert after["events"] == expected_events
    assert after["rows"]["SystemEvent"] == before["rows"]["SystemEvent"] + len(records)
    for key in ("agents", "commands", "refresh_tokens", "seats"):
        assert after[key] == before[key], key
    assert {k: v for k, v in after["rows"].items() if k != "SystemEvent"} == \
           {k: v for k, v in before["rows"].items() if k != "SystemEvent"}
    return error


def assert_unharmed(endpoint: Endpoint, fleet: Fleet) -> None:
    response = endpoint.send(fleet)
    assert response.status_code in (200, 201, 204), (response.status_code, response.content[:500])


# --- bodies built from the valid one ---------------------------------------------------------------

def leaves(value, path: Path = ()):
    """(path, value) for every scalar outside the free-form fields."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key not in FREE_FORM:
                yield from leaves(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from leaves(child, (*path, index))
    else:
        yield path, value


def replaced(value, path: Path, new):
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(child, rest, new) if index == head else child for index, child in enumerate(value)]


def at(value, path: Path):
    for part in path:
        value = value[part]
    return value


def name_of(path: Path) -> str:
    """("events", 0, "message") -> "events[0].message", the error body's field names."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def every(predicate, new) -> Callable[[dict], dict]:
    def transform(body):
        for path, value in leaves(body):
            if predicate(value):
                body = replaced(body, path, new(value))
        return body

    return transform


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def lists_for_objects(body):
    """Every nested object (outside the free-form fields) sent as a list holding it."""
    def wrap(value, top=False):
        if isinstance(value, dict):
            inner = {k: (v if k in FREE_FORM else wrap(v)) for k, v in value.items()}
            return inner if top else [inner]
        if isinstance(value, list):
            return [wrap(child) for child in value]
        return value

    return wrap(body, top=True)


# Type confusion: each applies to an endpoint only when its valid body has something to confuse.
TRANSFORMS = {
    "null-everywhere": every(lambda v: True, lambda v: None),
    "objects-for-strings": every(lambda v: isinstance(v, str), lambda v: {"$": v}),
    "lists-for-strings": every(lambda v: isinstance(v, str), lambda v: [v]),
    "strings-for-numbers": every(is_number, lambda v: "plenty"),
    "bools-for-ints": every(is_int, lambda v: True),
    "negative-numbers": every(is_number, lambda v: -1),
    "huge-ints-2**64": every(is_int, lambda v: 2**64),
    "lists-for-objects": lists_for_objects,
}


def too_many(path: Path, cap: int) -> Callable[[dict], dict]:
    def transform(body):
        items = at(body, path)
        if isinstance(items, dict):
            return replaced(body, path, {f"key{i}": i for i in range(cap + 1)})
        grown = [items[0]] * (cap + 1)
        if path == ("updates",):  # distinct names, so the cap is the only thing wrong
            grown = [{**items[0], "name": f"pkg{i}"} for i in range(cap + 1)]
        return replaced(body, path, grown)

    return transform


def _sample_fleet() -> Fleet:
    """Stand-in values so the cases can be listed at collection time."""
    agent = type("SampleAgent", (), {"id": "x", "refresh_token": "rf_ref_sample"})()
    return Fleet(client=None, secret="secret", agent=agent, command_id="x")


@dataclass(frozen=True)
class FieldCase:
    transform: Callable[[dict], dict]
    names: str = ""  # the field the error must name ("" when many fields are wrong)


def field_cases(endpoint: Endpoint) -> dict[str, FieldCase]:
    sample = endpoint.body(_sample_fleet())
    cases = {}
    for path, value in leaves(sample):
        if isinstance(value, str):
            cases[f"1MB-string:{name_of(path)}"] = FieldCase(
                lambda body, path=path: replaced(body, path, "x" * MB), name_of(path))
    for path, cap in endpoint.capped:
        cases[f"over-cap:{name_of(path)}>{cap}"] = FieldCase(too_many(path, cap), name_of(path))
    for label, transform in TRANSFORMS.items():
        if transform(sample) != sample:
            cases[label] = FieldCase(transform)
    return cases


FIELD_CASES = [pytest.param(endpoint, case, id=f"{endpoint.name}-{label}")
               for endpoint in POSTS for label, case in field_cases(endpoint).items()]


@pytest.mark.parametrize("endpoint, case", FIELD_CASES)
def test_hostile_field_is_400_naming_it(fleet, endpoint, case):
    body = case.transform(endpoint.body(fleet))
    before = stored(fleet)
    response = endpoint.send(fleet, json.dumps(body).encode())
    error = assert_refused(response, before, fleet, names=case.names)
    assert error["code"] == "invalid" and error["fields"]
    assert_unharmed(endpoint, fleet)


# --- bodies that never reach a serializer ----------------------------------------------------------

def spliced(fragment: str | bytes) -> Callable[[dict], bytes]:
    """The valid body with one more (unknown) key whose value is ``fragment``, as raw JSON text."""
    def build(body):
        text = json.dumps(body).encode()
        extra = fragment.encode() if isinstance(fragment, str) else fragment
        return text[:-1] + b', "x": ' + extra + b"}"

    return build


def constant(raw: str | bytes) -> Callable[[dict], bytes]:
    return lambda body: raw.encode() if isinstance(raw, str) else raw


def duplicate_first_key(body):
    key, value = next(iter(body.items()))
    return ("{" + json.dumps(key) + ": " + json.dumps(value) + ", " + json.dumps(body)[1:]).encode()


@dataclass(frozen=True)
class RawCase:
    build: Callable[[dict], bytes]
    names: str  # a fragment of the error message
    status: int = 400
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)


DEEP = 10_000
RAW_CASES = {
    "nested-arrays-10000": RawCase(constant("[" * DEEP + "]" * DEEP), "nests deeper"),
    "nested-objects-10000": RawCase(constant('{"a":' * DEEP + "1" + "}" * DEEP), "nests deeper"),
    "nested-33-inside-valid-body": RawCase(spliced("[" * 33 + "]" * 33), "nests deeper"),
    "malformed": RawCase(constant('{"a": '), "not valid JSON"),
    "whitespace-only": RawCase(constant(" \n\t "), "not valid JSON"),
    "invalid-utf8": RawCase(spliced(b'"\xff\xfe\xc3\x28"'), "UTF-8"),
    "overlong-utf8-slash": RawCase(spliced(b'"\xc0\xaf"'), "UTF-8"),
    "utf16-with-bom": RawCase(lambda body: json.dumps(body).encode("utf-16"), "UTF-8"),
    "utf8-bom": RawCase(lambda body: b"\xef\xbb\xbf" + json.dumps(body).encode(), "not valid JSON"),
    "raw-nul-byte": RawCase(spliced(b'"a\x00b"'), "not valid JSON"),
    "nul-escape": RawCase(spliced(r'"a\u0000b"'), "NUL"),
    "lone-surrogate": RawCase(spliced(r'"\ud800"'), "surrogate"),
    "NaN": RawCase(spliced("NaN"), "not valid JSON"),
    "Infinity": RawCase(spliced("Infinity"), "not valid JSON"),
    "-Infinity": RawCase(spliced("-Infinity"), "not valid JSON"),
    "1e400": RawCase(spliced("1e400"), "not valid JSON"),
    "int-10**5000": RawCase(spliced("1" + "0" * 5000), "not valid JSON"),
    "duplicate-keys": RawCase(duplicate_first_key, "duplicate"),
    "top-level-array": RawCase(lambda body: json.dumps([body]).encode(), "expected a dictionary"),
    "top-level-number": RawCase(constant("1"), "expected a dictionary"),
    "top-level-string": RawCase(constant('"hello"'), "expected a dictionary"),
    "top-level-true": RawCase(constant("true"), "expected a dictionary"),
    "top-level-null": RawCase(constant("null"), "no data provided"),
    "form-encoded": RawCase(constant("hostname=web-01&events=1"), "unsupported media type", status=415,
                            content_type="application/x-www-form-urlencoded"),
    "text-plain": RawCase(lambda body: json.dumps(body).encode(), "unsupported media type", status=415,
                          content_type="text/plain"),
    "multipart": RawCase(constant('--b\r\nContent-Disposition: form-data; name="a"\r\n\r\n1\r\n--b--\r\n'),
                         "unsupported media type", status=415, content_type="multipart/form-data; boundary=b"),
    "no-content-type": RawCase(lambda body: json.dumps(body).encode(), "unsupported media type", status=415,
                               content_type=""),
    # Size: the limit is lowered to SMALL_BODY_LIMIT for these, so "just over" stays cheap.
    "one-byte-over-limit": RawCase(
        lambda body: spliced('"' + "x" * SMALL_BODY_LIMIT + '"')(body)[: SMALL_BODY_LIMIT + 1], "limit", status=413),
    "content-length-lies-huge": RawCase(lambda body: json.dumps(body).encode(), "limit", status=413,
                                        headers={"CONTENT_LENGTH": str(10**30)}),
    "content-length-lies-short": RawCase(lambda body: json.dumps(body).encode(), "not valid JSON",
                                         headers={"CONTENT_LENGTH": "7"}),
    "content-length-negative": RawCase(lambda body: json.dumps(body).encode(), "negative",
                                       headers={"CONTENT_LENGTH": "-1"}),
    "content-length-not-a-number": RawCase(lambda body: json.dumps(body).encode(), "not a number",
                                           headers={"CONTENT_LENGTH": "1e3"}),
    "content-length-5000-digits": RawCase(lambda body: json.dumps(body).encode(), "not a number",
                                          headers={"CONTENT_LENGTH": "9" * 5000}),
}


@pytest.mark.parametrize("label", RAW_CASES)
@pytest.mark.parametrize("endpoint", POSTS, ids=lambda endpoint: endpoint.name)
def test_hostile_body_is_refused(fleet, settings, endpoint, label):
    case = RAW_CASES[label]
    if label == "one-byte-over-limit":
        settings.REDFLAG_MAX_BODY_BYTES = SMALL_BODY_LIMIT
    before = stored(fleet)
    response = endpoint.send(fleet, case.build(endpoint.body(fleet)), content_type=case.content_type,
                             **case.headers)
    assert_refused(response, before, fleet, status=case.status, names=case.names)
    assert_unharmed(endpoint, fleet)


@pytest.mark.parametrize("endpoint, free_form", [(EVENTS, ("events", 0, "metadata")), (RESULT, ("details",)),
                                                 (UPDATES, ("updates", 0, "metadata"))],
                         ids=["events-metadata", "result-details", "updates-metadata"])
def test_a_number_overflowing_to_infinity_in_free_form_json_is_400(fleet, endpoint, free_form):
    """1e400 parses to inf, which PostgreSQL's jsonb refuses (it was a 500) and SQLite's JSON_VALID too (a 409)."""
    raw = json.dumps(replaced(endpoint.body(fleet), free_form, {"n": "OVERFLOW"})).encode()
    before = stored(fleet)
    response = endpoint.send(fleet, raw.replace(b'"OVERFLOW"', b"1e400"))
    assert_refused(response, before, fleet, names="too large")
    assert_unharmed(endpoint, fleet)


@pytest.mark.parametrize("endpoint", [e for e in POSTS if e is not CHECKIN], ids=lambda endpoint: endpoint.name)
def test_empty_body_is_400_naming_a_required_field(fleet, endpoint):
    before = stored(fleet)
    error = assert_refused(endpoint.send(fleet, b""), before, fleet, names="required")
    assert error["fields"]
    assert_unharmed(endpoint, fleet)


def test_an_empty_checkin_is_a_plain_checkin(fleet):
    """Every check-in field is optional, so no body is the smallest valid check-in (not hostile)."""
    Agent.objects.filter(pk=fleet.agent.id).update(last_seen_at=None, metrics={"cpu_percent": 50.0})
    response = CHECKIN.send(fleet, b"")
    assert response.status_code == 200
    assert response.json()["commands"] == []  # the fleet's one command was already sent
    seen = Agent.objects.get(pk=fleet.agent.id)
    assert seen.last_seen_at is not None and seen.metrics == {}  # recorded like any check-in, metrics empty


@pytest.mark.parametrize("endpoint", POSTS, ids=lambda endpoint: endpoint.name)
def test_unknown_fields_are_ignored_and_never_stored(fleet, endpoint):
    """Unknown keys are accepted (a newer agent may send more) but nothing of them reaches the database."""
    marker = "unknown-" + uuid.uuid4().hex
    body = {**endpoint.body(fleet), marker: marker}
    item = next((path[:-1] for path, _ in leaves(body) if len(path) > 2 and isinstance(path[-2], int)), None)
    if item:  # and inside the first list item: an event, a package, a disk
        body = replaced(body, item, {**at(body, item), marker: marker})
    assert endpoint.send(fleet, json.dumps(body).encode()).status_code in (200, 201, 204)
    dumped = json.dumps(stored(fleet), default=str) + json.dumps(
        list(SystemEvent.objects.values("message", "metadata")), default=str)
    assert marker not in dumped


# --- hostile security headers ----------------------------------------------------------------------

# Header values reach Django as latin-1 text: "\xff" stands for the raw byte 0xFF.
HEADER_CASES = {
    "authorization-invalid-utf8": ("HTTP_AUTHORIZATION", "Bearer rf_acc_\xff\xfe\xc3\x28", 401),
    "authorization-64KB": ("HTTP_AUTHORIZATION", "Bearer rf_acc_" + "A" * 65536 + ":x:y", 401),
    "authorization-control-chars": ("HTTP_AUTHORIZATION", "Bearer rf_acc_\x00\x01\x1b[2J", 401),
    "authorization-basic": ("HTTP_AUTHORIZATION", "Basic YWRtaW46YWRtaW4=", 401),
    "machine-id-invalid-utf8": ("HTTP_X_MACHINE_ID", "\xff" * 64, 400),
    "machine-id-64KB": ("HTTP_X_MACHINE_ID", "a" * 65536, 400),
    "machine-id-nul": ("HTTP_X_MACHINE_ID", "\x00" * 64, 400),
    "machine-id-trailing-newline": ("HTTP_X_MACHINE_ID", None, 400),  # the agent's own id + "\n"
    "nonce-invalid-utf8": ("HTTP_X_REQUEST_NONCE", "\xff" * 24, 400),
    "nonce-64KB": ("HTTP_X_REQUEST_NONCE", "n" * 65536, 400),
    "nonce-control-chars": ("HTTP_X_REQUEST_NONCE", "nonce\x00\x07\x1b" * 4, 400),
    "nonce-trailing-newline": ("HTTP_X_REQUEST_NONCE", "n" * 24 + "\n", 400),
    "timestamp-1e999": ("HTTP_X_REQUEST_TIMESTAMP", "1e999", 400),
    "timestamp-negative": ("HTTP_X_REQUEST_TIMESTAMP", "-1", 400),
    "timestamp-NaN": ("HTTP_X_REQUEST_TIMESTAMP", "NaN", 400),
    "timestamp-10**30": ("HTTP_X_REQUEST_TIMESTAMP", str(10**30), 400),
    "timestamp-5000-digits": ("HTTP_X_REQUEST_TIMESTAMP", "9" * 5000, 400),
    "timestamp-invalid-utf8": ("HTTP_X_REQUEST_TIMESTAMP", "\xff\xfe", 400),
    "timestamp-12-digits-far-future": ("HTTP_X_REQUEST_TIMESTAMP", "9" * 12, 401),
}
HEADER_PARAMS = [
    pytest.param(endpoint, label, id=f"{endpoint.name}-{label}")
    for endpoint in AUTHENTICATED for label in HEADER_CASES
    if not (endpoint.auth == "renew" and label.startswith("authorization"))
]


@pytest.mark.parametrize("endpoint, label", HEADER_PARAMS)
def test_hostile_security_header_is_refused(fleet, endpoint, label):
    header, value, status = HEADER_CASES[label]
    if value is None:
        value = fleet.agent.machine_id + "\n"
    before = stored(fleet)
    response = endpoint.send(fleet, **{header: value})
    name = header[5:].replace("_", "-").lower()
    assert_refused(response, before, fleet, status=status, names="" if status == 401 else name)
    assert_unharmed(endpoint, fleet)


# --- hostile paths and queries ---------------------------------------------------------------------

UUID_LIKE_JUNK = ["not-a-uuid", "..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e", str(2**64), "%00",
                  "{12345678-1234-5678-1234-567812345678}"]
PER_AGENT = [CHECKIN, EVENTS, RESULT, UPDATES, SYSTEM, CONFIG]


@pytest.mark.parametrize("junk", UUID_LIKE_JUNK)
@pytest.mark.parametrize("endpoint", PER_AGENT, ids=lambda endpoint: endpoint.name)
def test_invalid_agent_id_in_path_is_json_404(fleet, endpoint, junk):
    before = stored(fleet)
    response = endpoint.send(fleet, url=endpoint.url(fleet, agent=junk))
    assert_refused(response, before, fleet, status=404, names="not_found")
    assert_unharmed(endpoint, fleet)


@pytest.mark.parametrize("endpoint", PER_AGENT, ids=lambda endpoint: endpoint.name)
def test_another_agents_id_in_path_is_403_and_recorded(fleet, enroll, endpoint):
    other = enroll(hostname="neighbour")
    before = stored(fleet)
    response = endpoint.send(fleet, url=endpoint.url(fleet, agent=other.id))
    assert_refused(response, before, fleet, status=403, names="wrong_agent", records=("security_violation",))
    assert_unharmed(endpoint, fleet)


@pytest.mark.parametrize("command", ["not-a-uuid", "unknown", "another-agents", str(2**64),
                                     "..%2F..%2Fresult"])
def test_bad_command_id_is_404_and_commands_untouched(fleet, enroll, command):
    if command == "unknown":
        command = str(uuid.uuid4())
    elif command == "another-agents":
        command = str(command_create(agent=enroll(hostname="neighbour").model, command_type="reboot",
                                     source="api").pk)
    before = stored(fleet)
    response = RESULT.send(fleet, url=RESULT.url(fleet, command=command))
    assert_refused(response, before, fleet, status=404, names="not_found")
    assert_unharmed(RESULT, fleet)


@pytest.mark.parametrize("version", ["..%2F..%2Fsettings.py", "1.2.3%2F..%2F..%2Fmanage.py", "9" * 10,
                                     "1.2.3%00", "1.2.3.4.5.6.7", "-1", "1e3", "%2e%2e"])
@pytest.mark.parametrize("endpoint", [RELEASE_MANIFEST, RELEASE_ARTIFACT], ids=lambda endpoint: endpoint.name)
def test_hostile_release_version_is_json_404(fleet, endpoint, version):
    before = stored(fleet)
    response = endpoint.send(fleet, url=endpoint.path.replace(RELEASE_VERSION, version))
    assert_refused(response, before, fleet, status=404, names="not_found")
    assert_unharmed(endpoint, fleet)


@pytest.mark.parametrize("platform", ["..%2F..%2Fetc%2Fpasswd", "x" * 10_000, "%00", "%ff%fe", "any%00"])
def test_hostile_release_platform_is_400(fleet, platform):
    publish_release()
    before = stored(fleet)
    response = RELEASE_LATEST.send(fleet, url=f"/api/v1/releases/latest?platform={platform}")
    assert_refused(response, before, fleet, status=400, names="platform")
    assert_unharmed(RELEASE_LATEST, fleet)


@pytest.mark.parametrize("url", [
    "/install/..%2F..%2Fredflag%2Fsettings.py", "/install/../manage.py", "/install/linux.sh%00",
    "/install/%2e%2e", "/install/linux.sh%2F..%2F..%2Fmanage.py", "/install/manifest.json?platform=..%2F..",
    "/install/redflag-agent.pyz?platform=%00",
])
def test_installer_paths_do_not_traverse(fleet, url):
    before = stored(fleet)
    response = fleet.client.get(url)
    assert response.status_code == 404, (url, response.status_code)
    assert b"SECRET_KEY" not in response.content and b"django" not in response.content.lower()
    assert stored(fleet) == before


@pytest.mark.parametrize("endpoint", [SIGNING_KEYS, HEALTH, CONFIG], ids=lambda endpoint: endpoint.name)
def test_get_endpoints_refuse_an_oversized_body_and_ignore_a_hostile_one(fleet, settings, endpoint):
    settings.REDFLAG_MAX_BODY_BYTES = SMALL_BODY_LIMIT
    url, headers = endpoint.url(fleet), endpoint.headers(fleet)
    before = stored(fleet)
    oversized = fleet.client.generic("GET", url, b"x" * (SMALL_BODY_LIMIT + 1), "application/json", **headers)
    assert_refused(oversized, before, fleet, status=413, names="limit")
    deep = "[" * 2000 + "]" * 2000  # under the limit: only its shape is hostile
    ignored = fleet.client.generic("GET", url, deep, "application/json", **endpoint.headers(fleet))
    assert ignored.status_code == 200  # a GET never parses its body
    assert_unharmed(endpoint, fleet)


def test_a_valid_body_over_djangos_upload_limit_is_accepted(fleet, settings):
    """REDFLAG_MAX_BODY_BYTES is the limit, not Django's DATA_UPLOAD_MAX_MEMORY_SIZE (it answered an HTML 400)."""
    body = {**_result_body(fleet), "packages": [{"name": "p" * 600}] * 5000}
    raw = json.dumps(body).encode()
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = global_settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # Django's 2.5 MB
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < len(raw) < settings.REDFLAG_MAX_BODY_BYTES
    response = RESULT.send(fleet, raw)
    assert response.status_code == 200, response.content[:300]
    assert len(Command.objects.get(pk=fleet.command_id).result["packages"]) == 5000
