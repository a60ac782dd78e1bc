"""The API guard (redflag/middleware.py): a body over REDFLAG_MAX_BODY_BYTES is a 413 before any view runs."""

from __future__ import annotations


def test_oversized_body_is_413(agent, settings):
    settings.REDFLAG_MAX_BODY_BYTES = 2048
    response = agent.post("checkin", {"agent_version": "x" * 4096})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"
