"""Authenticated agent endpoints: 401/403 first, then the happy path, then hostile input."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta, timezone as dt_timezone

import pytest
from django.utils import timezone

from agents_app.models import Agent
from agents_app.services import agent_allow_rebind, agent_revoke
from events_app.models import SystemEvent
from redflag.models import RequestNonce
from tests.server.conftest import machine_hash, security_headers

AGENT_ENDPOINTS = ["checkin", "events"]
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=dt_timezone.utc)


def valid_body(endpoint: str) -> dict:
    if endpoint == "events":
        return {"events": [{"id": str(uuid.uuid4()), "event_type": "agent_startup", "event_subtype": "success",
                            "message": "agent started", "occurred_at": NOW.isoformat()}]}
    return {"agent_version": "0.1.0", "metrics": {"cpu_percent": 3.5, "memory_percent": 41.0}}


@pytest.mark.parametrize("endpoint", AGENT_ENDPOINTS)
class TestCredentialsFirst:
    def test_no_credentials_is_401(self, client, agent, endpoint):
        response = client.post(f"/api/v1/agents/{agent.id}/{endpoint}", valid_body(endpoint),
                               content_type="application/json", **security_headers(agent.machine_id))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"

    def test_garbage_token_is_401(self, agent, endpoint):
        response = agent.post(endpoint, valid_body(endpoint), HTTP_AUTHORIZATION="Bearer rf_acc_forged")
        assert response.status_code == 401

    def test_token_signed_with_another_key_is_401(self, agent, endpoint, settings):
        from django.core import signing

        forged = "rf_acc_" + signing.dumps({"a": agent.id, "g": 1}, key="x" * 50, salt="redflag.agent-access-token")
        assert agent.post(endpoint, valid_body(endpoint), HTTP_AUTHORIZATION=f"Bearer {forged}").status_code == 401

    def test_wrong_machine_is_403_and_recorded(self, agent, endpoint):
        response = agent.post(endpoint, valid_body(endpoint), HTTP_X_MACHINE_ID=machine_hash("other"))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "machine_mismatch"
        event = SystemEvent.objects.get(event_type="security_violation")
        assert event.agent_id == uuid.UUID(agent.id) and event.metadata["reason"] == "machine_mismatch"

    def test_another_agents_path_is_403(self, agent, enroll, endpoint):
        other = enroll(hostname="other")
        response = agent.client.post(f"/api/v1/agents/{other.id}/{endpoint}", valid_body(endpoint),
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "wrong_agent"

    def test_revoked_agent_is_403(self, agent, endpoint):
        agent_revoke(agent=agent.model, actor="alice")
        # Its access token is dead too (generation bumped): 401 before the revocation check.
        assert agent.post(endpoint, valid_body(endpoint)).status_code == 401

    def test_replayed_nonce_is_409_and_recorded(self, agent, endpoint):
        headers = security_headers(agent.machine_id)
        nonce = headers["HTTP_X_REQUEST_NONCE"]
        first = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_NONCE=nonce)
        assert first.status_code == 200
        replay = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_NONCE=nonce)
        assert replay.status_code == 409
        assert replay.json()["error"]["code"] == "replayed_nonce"
        assert SystemEvent.objects.filter(event_type="security_violation", metadata__reason="replayed_nonce").exists()

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_timestamp_outside_five_minutes_is_401(self, agent, endpoint, skew):
        response = agent.post(endpoint, valid_body(endpoint), HTTP_X_REQUEST_TIMESTAMP=str(int(time.time()) + skew))
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "stale_request"

    @pytest.mark.parametrize("header", ["HTTP_X_REQUEST_NONCE", "HTTP_X_REQUEST_TIMESTAMP", "HTTP_X_MACHINE_ID"])
    def test_missing_security_header_is_400_naming_it(self, agent, endpoint, header):
        response = agent.post(endpoint, valid_body(endpoint), **{header: ""})
        assert response.status_code == 400
        name = header[5:].replace("_", "-").title().replace("Id", "ID")
        assert name in response.json()["error"]["fields"]


def test_checkin_updates_last_seen_and_metrics(agent):
    Agent.objects.filter(pk=agent.id).update(last_seen_at=None)
    response = agent.post("checkin", {"agent_version": "0.1.1", "metrics": {"cpu_percent": 12.5}})
    assert response.status_code == 200
    body = response.json()
    assert body["commands"] == [] and body["config_version"] == 1 and body["poll_interval_seconds"] == 300
    assert body["heartbeat"] == {"active": False, "until": None}
    model = agent.model
    assert model.agent_version == "0.1.1" and model.metrics == {"cpu_percent": 12.5}
    assert timezone.now() - model.last_seen_at < timedelta(seconds=5)
    assert model.is_online and Agent.objects.online().filter(pk=agent.id).exists()


def test_checkin_query_count_does_not_grow_with_the_fleet(agent, enroll, django_assert_num_queries):
    """Auth (1), nonce (savepoint, insert, release), update (1), due scans (1), pending commands (1)."""
    agent.post("checkin", {})  # warm the per-process settings cache
    with django_assert_num_queries(7):
        assert agent.post("checkin", {}).status_code == 200
    for index in range(12):
        enroll(hostname=f"other-{index}").post("checkin", {})
    with django_assert_num_queries(7):
        assert agent.post("checkin", {}).status_code == 200


def test_checkin_query_count_does_not_grow_with_pending_commands(agent, django_assert_num_queries):
    from agents_app.commands import command_create

    agent.post("checkin", {})
    model = agent.model
    command_create(agent=model, command_type="reboot", source="api")
    with django_assert_num_queries(11):  # + savepoint, claim, read back, release
        assert len(agent.post("checkin", {}).json()["commands"]) == 1
    for package_type in ("apt", "dnf", "docker", "winget", "windows_update"):
        command_create(agent=model, command_type="scan_updates", params={"package_type": package_type}, source="api")
    command_create(agent=model, command_type="scan_storage", source="api")
    with django_assert_num_queries(11):
        assert len(agent.post("checkin", {}).json()["commands"]) == 6


@pytest.mark.parametrize("metrics, field", [
    ({"cpu_percent": 101}, "metrics.cpu_percent"),
    ({"cpu_percent": "lots"}, "metrics.cpu_percent"),
    ({"load_average": [1, 2, 3, 4]}, "metrics.load_average"),
])
def test_checkin_bad_metrics_are_named(agent, metrics, field):
    response = agent.post("checkin", {"metrics": metrics})
    assert response.status_code == 400
    assert field in response.json()["error"]["fields"]


def test_checkin_is_rate_limited_per_agent(agent, enroll):
    from redflag.models import ServerSettings

    row = ServerSettings.current()
    row.rate_checkin = "2/min"
    row.save()
    other = enroll()
    assert [agent.post("checkin", {}).status_code for _ in range(3)] == [200, 200, 429]
    assert other.post("checkin", {}).status_code == 200


def test_events_are_ingested_idempotently(agent):
    body = valid_body("events")
    body["events"].append({**body["events"][0], "id": str(uuid.uuid4()), "event_type": "agent_scan",
                           "event_subtype": "failed", "severity": "error", "message": "apt failed",
                           "metadata": {"exit_code": 100}})
    first = agent.post("events", body)
    assert first.status_code == 200 and first.json() == {"received": 2, "stored": 2}
    again = agent.post("events", body)
    assert again.json() == {"received": 2, "stored": 0}
    stored = SystemEvent.objects.filter(agent_id=agent.id, event_type__in=["agent_startup", "agent_scan"])
    assert stored.count() == 2
    scan = stored.get(event_type="agent_scan")
    assert scan.actor == "agent:web-01" and scan.metadata == {"exit_code": 100} and scan.created_at == NOW


def test_agents_cannot_send_server_side_event_types(agent):
    body = valid_body("events")
    body["events"][0]["event_type"] = "token_created"
    response = agent.post("events", body)
    assert response.status_code == 400
    assert "events[0].event_type" in response.json()["error"]["fields"]


def test_event_time_in_the_future_is_clamped(agent):
    body = valid_body("events")
    body["events"][0]["occurred_at"] = (timezone.now() + timedelta(days=365)).isoformat()
    agent.post("events", body)
    assert SystemEvent.objects.get(event_type="agent_startup").created_at <= timezone.now()


def test_rebind_lets_a_reinstalled_machine_through_once(agent):
    new_machine = machine_hash("reinstalled")
    assert agent.post("checkin", {}, HTTP_X_MACHINE_ID=new_machine).status_code == 403
    agent_allow_rebind(agent=agent.model, actor="alice")
    assert agent.post("checkin", {}, HTTP_X_MACHINE_ID=new_machine).status_code == 200
    assert agent.model.machine_id_hash == new_machine and agent.model.rebind_allowed_until is None
    # The old machine id is now the stranger.
    assert agent.post("checkin", {}).status_code == 403
    assert SystemEvent.objects.filter(event_type="config_changed", message__contains="new machine id").exists()


class TestHostileInput:
    def test_oversized_body_is_413(self, agent, settings):
        settings.REDFLAG_MAX_BODY_BYTES = 2048
        response = agent.post("checkin", {"agent_version": "x" * 4096})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"

    def test_malformed_json_is_400(self, agent):
        response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", "{not json",
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"

    def test_invalid_utf8_is_400(self, agent):
        response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", b'{"agent_version": "\xff\xfe"}',
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 400

    @pytest.mark.parametrize("depth", [40, 100_000])
    def test_deep_nesting_is_400(self, agent, depth):
        body = '{"events": [{"metadata": ' + "[" * depth + "]" * depth + "}]}"
        response = agent.client.post(f"/api/v1/agents/{agent.id}/events", body,
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 400
        assert "nests deeper" in response.json()["error"]["message"]

    def test_nan_is_400(self, agent):
        response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"metrics": {"cpu_percent": NaN}}',
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 400

    def test_wrong_top_level_type_is_400(self, agent):
        response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", json.dumps([1, 2]),
                                     content_type="application/json", **agent.headers())
        assert response.status_code == 400

    def test_unknown_api_path_is_json_404(self, client, db):
        response = client.get("/api/v1/nothing-here")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_nonce_pruning_keeps_recent_nonces(agent):
    from redflag.tasks import prune_request_nonces

    agent.post("checkin", {})
    RequestNonce.objects.create(nonce="o" * 20, created_at=timezone.now() - timedelta(minutes=11))
    assert prune_request_nonces() == 1
    assert RequestNonce.objects.count() >= 1


def test_nul_characters_are_400_not_a_database_error(agent):
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"agent_version": "0.1\\u0000"}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert "NUL" in response.json()["error"]["message"]


def test_lone_surrogate_escapes_are_400(agent):
    response = agent.client.post(f"/api/v1/agents/{agent.id}/checkin", '{"agent_version": "\\udad1x"}',
                                 content_type="application/json", **agent.headers())
    assert response.status_code == 400
    assert "surrogate" in response.json()["error"]["message"]


def test_agent_events_get_an_insertion_seq_for_the_live_stream(agent):
    agent.post("events", valid_body("events"))
    newest = SystemEvent.objects.order_by("-seq").first()
    assert newest.event_type == "agent_startup"  # the last row inserted has the highest seq
    assert not SystemEvent.objects.filter(seq__isnull=True).exists()


def test_an_unsatisfiable_accept_header_still_gets_json(agent):
    response = agent.post("checkin", {}, HTTP_ACCEPT="U")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"
