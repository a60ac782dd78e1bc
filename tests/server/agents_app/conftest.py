"""Fixtures of the agents_app tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def release_storage(settings, tmp_path):
    """Release artifacts in the test's own folder (they are files under DATA_DIR)."""
    settings.DATA_DIR = tmp_path / "data"
