"""Fixtures for the agent's tests.

Nothing under tests/agent/ imports Django: these tests also run under the
oldest supported Python (3.9) with only requests, psutil and cryptography
installed beside pytest.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.agent.stub_server import StubServer

# CI installs every system tool the scanner tests use and sets this, so that a
# missing tool fails the run instead of silently skipping real coverage.
REQUIRE_SYSTEM_TOOLS = os.environ.get("REDFLAG_REQUIRE_SYSTEM_TOOLS") == "1"


def require_tools(*names: str) -> None:
    """Skip (or, in CI, fail) the calling test when a system tool is missing."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    message = f"system tools not installed: {', '.join(missing)}"
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail(message)
    pytest.skip(message)


def require_root() -> None:
    if os.geteuid() == 0:
        return
    if REQUIRE_SYSTEM_TOOLS:
        pytest.fail("this test needs root")
    pytest.skip("this test needs root")


@pytest.fixture
def stub():
    """The loopback protocol stub server (tests/agent/stub_server.py), started and stopped around a test."""
    with StubServer() as server:
        yield server


@pytest.fixture
def config_path(tmp_path) -> Path:
    """Where the agent under test keeps its config (the folder does not exist yet)."""
    return tmp_path / "agent" / "config.json"
