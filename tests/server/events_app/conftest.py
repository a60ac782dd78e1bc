"""Fixtures of the events_app tests: an auditor (logged in, or with an audit API token), events past their
retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client

from events_app.services import audit_token_issue
from tests.server.events_app.helpers import NOW, bulk_events, make_user


@pytest.fixture
def auditor(db):
    return make_user("audrey", auditor=True)


@pytest.fixture
def auditor_client(auditor) -> Client:
    client = Client()
    client.force_login(auditor)
    return client


@pytest.fixture
def aged_events(db):
    """Five rows past a 365-day retention, three inside it (the newest exactly at NOW)."""
    expired = bulk_events(5, start=NOW - timedelta(days=366), step=timedelta(days=10), message="old")
    kept = bulk_events(3, start=NOW, step=timedelta(days=182), message="recent")  # NOW, -182 d, -364 d
    return expired, kept


@pytest.fixture
def auditor_token(db):
    user = make_user("siem", auditor=True)
    token, secret = audit_token_issue(user=user, label="wazuh", issued_by="root")
    return token, secret
