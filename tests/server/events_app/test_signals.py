"""Log-in signals (events_app/signals.py): every admin log-in and failed attempt is recorded, never the password."""

from __future__ import annotations

import pytest

from events_app.models import SystemEvent
from tests.server.events_app.helpers import make_user


@pytest.fixture
def auditor(db):
    """An auditor with a password of its own, so the test can look for it in what was recorded."""
    user = make_user("audrey", auditor=True)
    user.set_password("pw-audrey-123")
    user.save()
    return user


def test_admin_logins_are_recorded(client, auditor):
    client.login(username="audrey", password="wrong")
    client.post("/admin/login/", {"login": "audrey", "password": "wrong"})
    client.post("/admin/login/", {"login": "audrey", "password": "pw-audrey-123"})
    assert SystemEvent.objects.filter(event_type="auth_failure", metadata__username="audrey").count() == 2
    assert SystemEvent.objects.filter(event_type="user_login", actor="audrey").count() == 1
    assert not SystemEvent.objects.filter(message__contains="pw-audrey").exists()
