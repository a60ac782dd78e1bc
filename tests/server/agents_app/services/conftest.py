"""Fixtures of the service tests."""

from __future__ import annotations

import pytest

from redflag.models import ServerSettings

CAPABILITIES = ["apt", "docker", "storage", "system"]


@pytest.fixture
def fleet(enroll):
    """Three agents enrolled through the real endpoint, each reporting CAPABILITIES (so four subsystems)."""
    return [enroll(hostname=f"host-{index}", capabilities=CAPABILITIES) for index in range(3)]


@pytest.fixture
def no_automatic_heartbeat(db):
    """Operations without the heartbeat command the server would otherwise queue before them."""
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()
