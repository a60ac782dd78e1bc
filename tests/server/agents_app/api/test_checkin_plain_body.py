"""The check-in's plain-body validation (CheckinSerializer.plain_validated_data) and its precompiled reads.

The plain validation skips building a DRF serializer for the body every agent sends; it must never
accept what the serializer refuses, and what it accepts must equal the serializer's validated data.
The precompiled "anything due / pending?" reads (checkin._due_and_pending_probes) must follow the
querysets that define those rules.
"""

from __future__ import annotations

import random
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone
from hypothesis import given, settings
from hypothesis import strategies as st

from agents_app.api.serializers import BIGINT_MAX, CheckinSerializer
from agents_app.choices import CommandStatus
from agents_app.models import AgentSubsystem, Command
from agents_app.services import checkin as checkin_service
from agents_app.services.commands import command_create

NOW = timezone.now().replace(microsecond=0)

# Values near every edge of every field: types JSON can carry, in and out of range.
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2, max_value=3),
    st.sampled_from([0, 100, 101, BIGINT_MAX, BIGINT_MAX + 1, 10**400, -1, 99.5, 100.0, 100.01, -0.0, 1e308]),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-10, max_value=200),
    st.sampled_from(["", " ", "0.1.23", "x" * 32, "x" * 33, "12", "true", "é", "a\x00b", "1e3"]),
)
METRIC_NAMES = [name for name, _ in CheckinSerializer.PLAIN_METRICS] + ["swap_percent"]
LOADS = st.one_of(st.lists(st.one_of(JSON_SCALARS), max_size=4), JSON_SCALARS)
METRICS = st.one_of(
    st.dictionaries(st.sampled_from(METRIC_NAMES), st.one_of(JSON_SCALARS, LOADS), max_size=8),
    JSON_SCALARS, st.lists(JSON_SCALARS, max_size=2),
)
BODIES = st.one_of(
    st.fixed_dictionaries({}, optional={
        "agent_version": JSON_SCALARS, "config_version": JSON_SCALARS, "heartbeat_active": JSON_SCALARS,
        "metrics": METRICS, "capabilities": st.lists(st.sampled_from(["apt", "docker", "nope"]), max_size=2),
        "unknown": JSON_SCALARS,
    }),
    JSON_SCALARS, st.lists(JSON_SCALARS, max_size=2),
)


def serializer_result(body):
    serializer = CheckinSerializer(data=body)
    return serializer.validated_data if serializer.is_valid() else None


def plain(body):
    return CheckinSerializer.plain_validated_data(body)


@settings(max_examples=1500, deadline=None, derandomize=True)
@given(BODIES)
def test_plain_validation_accepts_only_what_the_serializer_accepts_and_gives_the_same_data(body):
    fast = plain(body)
    if fast is not None:
        assert serializer_result(body) == fast
        assert [type(value) for value in fast.get("metrics", {}).values()] == [
            type(value) for value in serializer_result(body)["metrics"].values()]


def test_the_agents_own_body_takes_the_plain_path():
    rng = random.Random(7)
    body = {"agent_version": "0.1.23", "config_version": 4, "heartbeat_active": False, "metrics": {
        "cpu_percent": 12, "memory_percent": rng.uniform(0, 100), "memory_used_bytes": 2_000_000_000,
        "memory_total_bytes": 8_000_000_000, "disk_percent": 41.5, "load_average": [0.3, 0, 1],
        "uptime_seconds": 86_400}}
    assert plain(body) == serializer_result(body)
    assert plain(body)["metrics"]["cpu_percent"] == 12.0 and isinstance(plain(body)["metrics"]["cpu_percent"], float)
    assert plain({}) == serializer_result({}) == {"metrics": {}}


@pytest.mark.parametrize("body", [
    {"agent_version": ""}, {"agent_version": 12}, {"agent_version": "x" * 33}, {"config_version": True},
    {"config_version": -1}, {"heartbeat_active": "yes"}, {"metrics": None}, {"metrics": {"cpu_percent": 101}},
    {"metrics": {"load_average": [1, 2, 3, 4]}}, {"metrics": {"cpu_percent": True}}, {"capabilities": ["apt"]},
    {"extra": 1}, [], "text",
])
def test_anything_else_is_left_to_the_serializer(body):
    assert plain(body) is None


@pytest.mark.django_db
def test_the_precompiled_reads_follow_the_rules(agent, enroll):
    """Due and pending as the querysets define them, for this agent only, at the request's time."""
    model = agent.model
    other = enroll().model  # due scans and a pending command of another agent never count
    for owner in (model, other):
        for name in ("apt", "storage"):
            AgentSubsystem.objects.create(agent=owner, name=name, enabled=True, auto_run=True)
    command_create(agent=other, command_type="scan_storage", params={}, source="web_ui", actor="alice")
    subsystems = AgentSubsystem.objects.filter(agent=model)
    assert subsystems.exists()
    subsystems.update(next_run_at=NOW + timedelta(hours=1))

    def probe(now):
        due, pending = checkin_service._due_and_pending_probes()
        ops = connection.ops
        pk = model._meta.pk.get_db_prep_value(model.pk, connection)
        db_now = ops.adapt_datetimefield_value(now)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT EXISTS ({due.sql}), EXISTS ({pending.sql})",
                           [*due.params(now=db_now, agent=pk), *pending.params(now=db_now, agent=pk)])
            found = tuple(bool(value) for value in cursor.fetchone())
        expected = (AgentSubsystem.objects.due(now).filter(agent_id=model.pk).exists(),
                    Command.objects.pending().filter(agent_id=model.pk, expires_at__gt=now).exists())
        assert found == expected
        return found

    assert probe(NOW) == (False, False)
    subsystems.filter(pk=subsystems.first().pk).update(auto_run=False, next_run_at=None)  # not auto-run: never due
    assert probe(NOW) == (False, False)
    assert probe(NOW + timedelta(hours=2)) == (True, False)  # the scans fall due
    command = command_create(agent=model, command_type="scan_storage", params={}, source="web_ui", actor="alice")
    assert probe(NOW)[1] is True
    assert probe(command.expires_at + timedelta(seconds=1))[1] is False  # expired: not handed over
    Command.objects.filter(pk=command.pk).update(status=CommandStatus.SENT)
    assert probe(NOW)[1] is False
