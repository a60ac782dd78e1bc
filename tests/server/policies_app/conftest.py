"""Fixtures of the policy tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _signing_key(settings, tmp_path):
    """Commands are signed: each test signs with its own key file."""
    settings.REDFLAG_SIGNING_KEY_FILE = str(tmp_path / "signing.key")
