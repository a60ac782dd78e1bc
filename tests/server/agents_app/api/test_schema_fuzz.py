"""Schemathesis against the OpenAPI schema served at /api/schema/, in process, inside the suite.

The issue's words: "schemathesis runs against it inside the test suite: no 5xx, bad input rejected".

Every operation of the served schema becomes one test item. Schemathesis 4 runs three phases for
each: the schema's examples, the ``coverage`` phase (boundary values, missing required fields,
wrong types, wrong methods and content types) and the Hypothesis ``fuzzing`` phase, in both
positive and negative generation modes. Every response goes through all of schemathesis' default
checks: ``not_a_server_error`` (no 5xx, ever), status code / content type / response schema
conformance, ``positive_data_acceptance``, ``negative_data_rejection`` (bad input gets a 4xx),
``missing_required_header`` and ``unsupported_method``.

So that the fuzzer gets past authentication to the body validation, each case is given real
credentials: an agent enrolled through the real register endpoint signs every agent request with its
access token, its own machine id, its own id in the path and a fresh nonce and timestamp (nonces
are single-use). Only the parameters a negative case deliberately broke are left as generated.
Register cases get a real registration token, renew cases the current refresh token of a second
enrolled agent (rotated after each success).

The schema is fetched through the WSGI app when this module is collected (no database access), and
requests go to ``django.core.wsgi.get_wsgi_application()`` in process: no network. Generation is
derandomized with a fixed seed, so CI sees the same cases on every run.

Deliberate tolerances, each narrow and explained where it is defined:
* DRF's documented scalar coercions (``"1.5"`` or ``false`` for a number, ``0`` for a string, an
  integer for a UUID...) are accepted by the server although the schema says the type is wrong; a
  negative case is only excused if the body, coerced the way DRF coerces, is valid against the schema.
* Strings with NUL characters are refused with 400 by policy (redflag/api/parsers.py; PostgreSQL
  text cannot hold them) although the schema allows any string; so is an updates report naming a
  package twice, a rule JSON Schema cannot express.
* Every request carries REMOTE_ADDR, and positive register cases keep hostnames under 250
  characters: two server bugs the fuzzer found, each pinned by its own test below.
The defects it found (two 500s, four schema gaps) are fixed and kept as regression tests at the bottom.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from datetime import timedelta
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from django.test.utils import override_settings
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework import fields
from rest_framework.exceptions import ValidationError
from schemathesis.core.failures import AcceptedNegativeData
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation.meta import CoveragePhaseData, CoverageScenario, negated_parameters
from schemathesis.openapi.checks import RejectedPositiveData
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from werkzeug.test import Client

from agent_client.protocol import package_name_problem, tags_problem
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import host_facts, machine_hash
from tokens_app.services import token_create

SEED = 20260115
# Examples for the Hypothesis fuzzing phase, per operation; the coverage phase adds its own
# deterministic cases on top. The whole module runs in well under a minute on two cores.
FUZZ_EXAMPLES = 50
UNLIMITED = "100000/min"

CONFIG = {
    "seed": SEED,
    "generation": {
        "mode": "all",  # positive and negative
        "deterministic": True,
        "max-examples": FUZZ_EXAMPLES,
        "database": "none",  # no .hypothesis directory, no replay of older runs: same cases every run
        "allow-x00": True,  # NUL characters: PostgreSQL's text type refuses them
    },
    "phases": {
        "examples": {"enabled": True},
        "coverage": {"enabled": True},
        "fuzzing": {"enabled": True},
        "stateful": {"enabled": False},
    },
}


def _load_schema():
    app = get_wsgi_application()
    # schemathesis' WSGI client sends Host: localhost.
    with override_settings(ALLOWED_HOSTS=["localhost"]):
        return schemathesis.openapi.from_wsgi(
            "/api/schema/", app, config=schemathesis.Config.from_dict(CONFIG), headers={"Accept": "application/json"}
        )


schema = _load_schema()


class FuzzState:
    """The credentials the generated cases are given."""

    def __init__(self, *, agent, renewer, registration_secret: str):
        self.agent = agent
        self.renewer = renewer
        self.registration_secret = registration_secret


@pytest.fixture
def fuzz_state(transactional_db, enroll, settings) -> FuzzState:
    """Real credentials, and rate limits high enough that the fuzzer is never throttled.

    transactional_db: requests run through the WSGI handler with autocommit, as in production, so
    one failed statement cannot poison the cases after it.
    """
    settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "localhost"]
    server_settings = ServerSettings.current()
    server_settings.rate_registration = server_settings.rate_checkin = server_settings.rate_reports = UNLIMITED
    server_settings.save()
    ServerSettings.forget()

    _, secret = token_create(label="schema fuzz", max_seats=100_000, expires_in=timedelta(hours=1))
    return FuzzState(
        agent=enroll(hostname="fuzz-agent"), renewer=enroll(hostname="fuzz-renewer"), registration_secret=secret
    )


def _negative_at(case, location: ParameterLocation) -> bool:
    return case._meta is not None and case._meta.is_negative_at(location)


def _dropped_header(case) -> str | None:
    """The header a coverage-phase case deliberately leaves out (to check it is required)."""
    data = case._meta.phase.data if case._meta is not None else None
    if (isinstance(data, CoveragePhaseData) and data.scenario == CoverageScenario.MISSING_PARAMETER
            and data.parameter_location == ParameterLocation.HEADER):
        return data.parameter
    return None


def give_credentials(case, state: FuzzState) -> None:
    """Valid credentials and routing for everything the case did not deliberately break."""
    negated = {name for name, _ in negated_parameters(case._meta)}
    dropped = _dropped_header(case)
    if dropped:
        negated.add(dropped)
    path = case.operation.path
    headers = dict(case.headers or {})

    if "{agent_id}" in path:
        if "Authorization" not in negated:
            headers["Authorization"] = f"Bearer {state.agent.access_token}"
            # Ours, not generated: schemathesis then probes the same request without it, and with a
            # wrong one, and expects 401 (its ignored_auth check).
            object.__setattr__(case, "_has_explicit_auth", True)
        if "agent_id" not in negated:
            case.path_parameters = {**(case.path_parameters or {}), "agent_id": state.agent.id}
    machine_id = state.renewer.machine_id if path.endswith("/renew") else state.agent.machine_id
    if "{agent_id}" in path or path.endswith("/renew"):
        fresh = {"X-Machine-ID": machine_id, "X-Request-Nonce": secrets.token_urlsafe(24),
                 "X-Request-Timestamp": str(int(time.time()))}
        for name, value in fresh.items():
            if name not in negated:
                headers[name] = value
    case.headers = headers

    if isinstance(case.body, dict) and not _negative_at(case, ParameterLocation.BODY):
        if path.endswith("/register"):
            case.body["registration_token"] = state.registration_secret
        elif path.endswith("/renew"):
            case.body["refresh_token"] = state.renewer.refresh_token


def remember_rotation(case, response, state: FuzzState) -> None:
    """A successful renew rotated the renewer's refresh token: keep the next one."""
    if case.operation.path.endswith("/renew") and response.request.method == "POST" and response.status_code == 200:
        body = response.json()
        state.renewer.access_token = body["access_token"]
        state.renewer.refresh_token = body["refresh_token"]


# --- narrow tolerances -------------------------------------------------------------------------


def _resolve(node: Any, root: dict) -> Any:
    while isinstance(node, dict):
        if "$ref" in node:
            node = _lookup(root, node["$ref"])
        elif "allOf" in node and len(node["allOf"]) == 1:
            node = {**{k: v for k, v in node.items() if k != "allOf"}, **_resolve(node["allOf"][0], root)}
        else:
            break
    return node


def _lookup(root: dict, ref: str) -> Any:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def _drf_coerce(value: Any, node: Any, root: dict) -> Any:
    """``value`` as DRF's fields would read it: the lenient scalar coercions, nothing else."""
    node = _resolve(node, root)
    if not isinstance(node, dict):
        return value
    kind = node.get("type")
    if isinstance(value, dict) and kind in (None, "object"):
        properties = node.get("properties", {})
        extra = node.get("additionalProperties")
        return {
            key: _drf_coerce(item, properties.get(key, extra if isinstance(extra, dict) else {}), root)
            for key, item in value.items()
        }
    if isinstance(value, list) and kind in (None, "array"):
        return [_drf_coerce(item, node.get("items", {}), root) for item in value]
    if "enum" in node or value is None:
        return value
    field = {
        "string": fields.CharField(trim_whitespace=False, allow_blank=True),
        "number": fields.FloatField(),
        "integer": fields.IntegerField(),
        "boolean": fields.BooleanField(),
    }.get(kind)
    if node.get("format") == "uuid":
        field = fields.UUIDField()
    elif node.get("format") == "date-time":
        field = fields.DateTimeField()
    if field is None:
        return value
    try:
        coerced = field.to_internal_value(value)
    except ValidationError:
        return value
    if node.get("format") == "date-time":
        return coerced.isoformat()
    if node.get("format") == "uuid":
        return str(coerced)
    return coerced


def _request_body_schema(case) -> dict | None:
    body = case.operation.definition.raw.get("requestBody", {})
    media = body.get("content", {}).get("application/json")
    return media.get("schema") if media else None


def drf_coercion_makes_it_valid(case) -> bool:
    """Whether the server accepted a negative body only because DRF coerced its scalars.

    DRF reads ``"12.5"`` or ``true`` as a number, ``0`` as the string ``"0"``, ``"yes"`` as
    true, an integer as a UUID... The schema (rightly) says those types are wrong. Such an
    acceptance is excused only if the whole body, coerced that way, is valid against the schema; any
    other accepted negative case (missing required field, out-of-range value, bad enum, wrong
    container type) still fails.
    """
    node = _request_body_schema(case)
    if node is None or not _negative_at(case, ParameterLocation.BODY):
        return False
    if any(location != ParameterLocation.BODY for _, location in negated_parameters(case._meta)):
        return False
    root = case.operation.schema.raw_schema
    try:
        body = json.loads(json.dumps(case.body))
    except (TypeError, ValueError):
        return False
    coerced = _drf_coerce(body, node, root)
    validator = jsonschema_rs.validator_for({**_resolve(node, root), "components": root["components"]},
                                            validate_formats=True)
    return validator.is_valid(coerced)


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(item) for item in value)
    return False


def refused_by_nul_policy(case, response) -> bool:
    """400 parse_error for a body with a NUL character: RedFlag's policy, not a rejection of valid data."""
    if response.status_code != 400 or not _contains_nul(case.body):
        return False
    try:
        return response.json()["error"]["code"] == "parse_error"
    except (ValueError, KeyError, TypeError):
        return False


def _error_fields(response) -> list[str]:
    try:
        return list(response.json()["error"].get("fields", {}))
    except (ValueError, KeyError, TypeError, AttributeError):
        return []


def duplicate_package_names(case, response) -> bool:
    """A business rule JSON Schema cannot express: one row per package name in an updates report."""
    if response.status_code != 400 or not case.operation.path.endswith("/reports/updates"):
        return False
    updates = case.body.get("updates") if isinstance(case.body, dict) else None
    if not isinstance(updates, list):
        return False
    names = [row.get("name") for row in updates if isinstance(row, dict)]
    return len(names) != len(set(map(repr, names))) and _error_fields(response) == ["updates"]


def names_outside_the_package_grammar(case, response) -> bool:
    """The other rule JSON Schema cannot express: a name must be a name of the report's package type
    (agent_client.protocol.package_name_problem). Excused only when every refused field is such a name."""
    if response.status_code != 400 or not case.operation.path.endswith("/reports/updates"):
        return False
    body = case.body if isinstance(case.body, dict) else {}
    updates, package_type = body.get("updates"), body.get("package_type")
    fields = _error_fields(response)
    if not isinstance(updates, list) or not fields:
        return False
    for field in fields:
        match = re.fullmatch(r"updates\[(\d+)\]\.name", field)
        if not match or package_name_problem(package_type, updates[int(match[1])].get("name")) is None:
            return False
    return True


def tags_outside_the_tag_rule(case, response) -> bool:
    """A rule JSON Schema cannot express either: an agent's tags are printable, without a comma or surrounding
    spaces (agent_client.protocol.tags_problem). Excused only when tags is the one refused field."""
    if response.status_code != 400 or not case.operation.path.endswith("/reports/system"):
        return False
    body = case.body if isinstance(case.body, dict) else {}
    return (_error_fields(response) == ["tags"] and isinstance(body.get("tags"), list)
            and tags_problem(body["tags"]) is not None)


def bad_input_rejected(ctx, response, case):
    """negative_data_rejection, excusing only DRF's scalar coercions (see drf_coercion_makes_it_valid)."""
    try:
        return negative_data_rejection(ctx, response, case)
    except AcceptedNegativeData:
        if drf_coercion_makes_it_valid(case):
            return None
        raise


def good_input_accepted(ctx, response, case):
    """positive_data_acceptance, excusing the NUL policy and two business rules JSON Schema cannot express."""
    try:
        return positive_data_acceptance(ctx, response, case)
    except RejectedPositiveData:
        if any(excuse(case, response) for excuse in
               (refused_by_nul_policy, duplicate_package_names, names_outside_the_package_grammar,
                tags_outside_the_tag_rule)):
            return None
        raise


# --- the fuzz test -----------------------------------------------------------------------------


@schema.parametrize()
@hypothesis_settings(
    deadline=None,
    # One enrolled agent serves every example of the operation; it is meant to persist.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_api_schema(case, fuzz_state):
    give_credentials(case, fuzz_state)
    response = case.call_and_validate(
        excluded_checks=[negative_data_rejection, positive_data_acceptance],
        additional_checks=[bad_input_rejected, good_input_accepted],
    )
    remember_rotation(case, response, fuzz_state)


# --- defects the fuzzer found, kept as regression tests ----------------------------------------


def test_renew_without_remote_addr_is_not_a_server_error(fuzz_state):
    response = Client(get_wsgi_application()).post(
        "/api/v1/agents/renew",
        json={"refresh_token": fuzz_state.renewer.refresh_token},
        headers={"X-Machine-ID": fuzz_state.renewer.machine_id, "X-Request-Nonce": secrets.token_urlsafe(24),
                 "X-Request-Timestamp": str(int(time.time()))},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    # A real renew: the refresh token rotated, and recorded for the renewing agent.
    assert response.json["refresh_token"] != fuzz_state.renewer.refresh_token
    renewal = SystemEvent.objects.get(event_type="token_renewal")
    assert str(renewal.agent_id) == fuzz_state.renewer.id and renewal.event_subtype == "success"


def _component(name: str) -> dict:
    return schema.raw_schema["components"]["schemas"][name]


def test_schema_declares_event_batch_bounds():
    events = _component("EventsRequest")["properties"]["events"]
    assert (events.get("minItems"), events.get("maxItems")) == (1, 500)


def test_schema_defines_the_agent_bearer_scheme():
    schemes = schema.raw_schema.get("components", {}).get("securitySchemes", {})
    # The check-in's lean authenticator takes the same bearer token under its own name.
    for name in ("AgentBearer", "AgentBearerCheckin"):
        scheme = schemes.get(name, {})
        assert scheme.get("type") == "http" and scheme.get("scheme", "").lower() == "bearer", name
    assert schema.raw_schema["paths"]["/api/v1/agents/{agent_id}/checkin"]["post"]["security"] == [
        {"AgentBearerCheckin": []}]


def test_schema_declares_agent_id_as_uuid():
    for path in ("/api/v1/agents/{agent_id}/checkin", "/api/v1/agents/{agent_id}/events"):
        operation = schema.raw_schema["paths"][path]["post"]
        agent_id = next(p for p in operation["parameters"] if p["name"] == "agent_id")
        assert agent_id["schema"].get("format") == "uuid"
        assert "404" in operation["responses"]


def test_register_with_longest_hostname_fits_the_event_log(fuzz_state, client):
    response = client.post(
        "/api/v1/agents/register",
        {"registration_token": fuzz_state.registration_secret, "machine_id": machine_hash(),
         **host_facts(hostname="h" * 255)},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    limit = SystemEvent._meta.get_field("actor").max_length
    assert all(len(actor) <= limit for actor in SystemEvent.objects.values_list("actor", flat=True))


def test_schema_declares_ip_addresses_as_ip():
    items = _component("SystemReportRequest")["properties"]["ip_addresses"]["items"]
    assert items.get("format") in ("ipv4", "ipv6") or "anyOf" in items or "oneOf" in items
