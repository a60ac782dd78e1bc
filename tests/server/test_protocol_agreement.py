"""The agent keeps its own copies of the server's vocabularies (it cannot import Django).

These tests make the copies fail loudly the day they drift apart.
"""

from agent_client import events as agent_events
from agent_client.scanners import base as scanner_base
from agent_client.cli import CAPABILITY_NAMES
from agents_app.api.serializers import MAX_EVENTS_PER_REQUEST
from agents_app.choices import PackageType, SubsystemName, UpdateSeverity
from events_app.choices import AGENT_REPORTABLE_TYPES, Component, EventSubtype, Severity


def test_event_vocabulary_matches():
    assert set(agent_events.EVENT_TYPES) == {str(value) for value in AGENT_REPORTABLE_TYPES}
    assert set(agent_events.SUBTYPES) == set(EventSubtype.values)
    assert set(agent_events.SEVERITIES) == set(Severity.values)
    assert set(agent_events.COMPONENTS) == set(Component.values)
    assert agent_events.MAX_MESSAGE_CHARS == 2000


def test_update_vocabulary_matches():
    assert set(scanner_base.SEVERITIES) == set(UpdateSeverity.values)
    assert set(scanner_base.PACKAGE_TYPES) == set(PackageType.values)
    assert set(CAPABILITY_NAMES) == set(SubsystemName.values)


def test_events_batch_size_matches():
    from agent_client.runner import EVENTS_PER_REQUEST

    assert EVENTS_PER_REQUEST == MAX_EVENTS_PER_REQUEST
