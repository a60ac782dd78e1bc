"""The agent keeps its own copies of the server's vocabularies (it cannot import Django).

These tests make the copies fail loudly the day they drift apart: the agent's
one vocabulary is agent_client/protocol.py (plus its event and severity lists).
"""

from agent_client import events as agent_events
from agent_client import protocol
from agent_client.runner import EVENTS_PER_REQUEST
from agent_client.scanners import base as scanner_base
from agents_app.api.serializers import MAX_EVENTS_PER_REQUEST, CommandResultSerializer
from agents_app.choices import CommandStatus, CommandType, PackageType, SubsystemName, UpdateSeverity
from events_app.choices import AGENT_REPORTABLE_TYPES, Component, EventSubtype, Severity


def test_event_vocabulary_matches():
    assert set(agent_events.EVENT_TYPES) == {str(value) for value in AGENT_REPORTABLE_TYPES}
    assert set(agent_events.SUBTYPES) == set(EventSubtype.values)
    assert set(agent_events.SEVERITIES) == set(Severity.values)
    assert set(agent_events.COMPONENTS) == set(Component.values)
    assert agent_events.MAX_MESSAGE_CHARS == 2000


def test_update_vocabulary_matches():
    assert set(scanner_base.SEVERITIES) == set(UpdateSeverity.values)
    assert set(protocol.PackageType.ALL) == set(PackageType.values)
    assert set(protocol.Capability.ALL) == set(SubsystemName.values)


def test_command_types_match():
    assert set(protocol.CommandType.ALL) == set(CommandType.values)
    assert len(protocol.CommandType.ALL) == len(CommandType.values)  # no name listed twice


def test_result_statuses_are_exactly_those_the_result_endpoint_accepts():
    def accepted(status: str) -> bool:
        return CommandResultSerializer(data={"status": status}).is_valid()

    candidates = set(CommandStatus.values) | set(protocol.ResultStatus.ALL)
    assert {status for status in candidates if accepted(status)} == set(protocol.ResultStatus.ALL)
    # ...and each is a status a command can have on the server.
    assert set(protocol.ResultStatus.ALL) <= set(CommandStatus.values)


def test_events_batch_size_matches():
    assert EVENTS_PER_REQUEST == MAX_EVENTS_PER_REQUEST
