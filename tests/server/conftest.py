"""Shared fixtures for the server's tests."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest
from django.core.cache import cache

from agents_app.models import Agent
from redflag.models import ServerSettings
from tokens_app.services import token_create


def machine_hash(seed: str = "") -> str:
    return hashlib.sha256((seed or uuid.uuid4().hex).encode()).hexdigest()


REGISTER_URL = "/api/v1/agents/register"
# A fixed instant for agent-side times in request bodies.
NOW = datetime(2026, 1, 15, 12, 0, tzinfo=dt_timezone.utc)


def register(client, secret: str, machine_id: str | None = None, **facts):
    """POST /api/v1/agents/register with this machine's facts (the response, whatever it is)."""
    return client.post(
        REGISTER_URL,
        {"registration_token": secret, "machine_id": machine_id or machine_hash(), **host_facts(**facts)},
        content_type="application/json",
    )


def valid_body(endpoint: str) -> dict:
    """A body the checkin or events endpoint accepts."""
    if endpoint == "events":
        return {"events": [{"id": str(uuid.uuid4()), "event_type": "agent_startup", "event_subtype": "success",
                            "message": "agent started", "occurred_at": NOW.isoformat()}]}
    return {"agent_version": "0.1.0", "metrics": {"cpu_percent": 3.5, "memory_percent": 41.0}}


def host_facts(**overrides) -> dict:
    facts = {
        "hostname": "web-01",
        "os_family": "linux",
        "os_name": "Debian GNU/Linux",
        "os_version": "12",
        "kernel": "6.1.0-13-amd64",
        "arch": "x86_64",
        "agent_version": "0.1.0",
    }
    facts.update(overrides)
    return facts


def security_headers(machine_id: str, *, nonce: str | None = None, timestamp: int | None = None) -> dict:
    return {
        "HTTP_X_MACHINE_ID": machine_id,
        "HTTP_X_REQUEST_NONCE": nonce or secrets.token_urlsafe(24),
        "HTTP_X_REQUEST_TIMESTAMP": str(int(time.time()) if timestamp is None else timestamp),
    }


class EnrolledAgent:
    """An agent registered through the real endpoint, able to sign its requests."""

    def __init__(self, client, body: dict, machine_id: str):
        self.client = client
        self.id = body["agent_id"]
        self.access_token = body["access_token"]
        self.refresh_token = body["refresh_token"]
        self.machine_id = machine_id

    def headers(self, **overrides) -> dict:
        headers = {"HTTP_AUTHORIZATION": f"Bearer {self.access_token}", **security_headers(self.machine_id)}
        headers.update(overrides)
        return headers

    def post(self, suffix: str, data: dict, **header_overrides):
        return self.client.post(
            f"/api/v1/agents/{self.id}/{suffix}", data, content_type="application/json",
            **self.headers(**header_overrides),
        )

    @property
    def model(self):
        return Agent.objects.get(pk=self.id)


@pytest.fixture(autouse=True)
def _fresh_server_settings():
    """ServerSettings.current() caches per process; every test starts from the database."""
    ServerSettings.forget()
    yield
    ServerSettings.forget()


@pytest.fixture(autouse=True)
def _clear_cache():
    cache.clear()
    yield


@pytest.fixture
def registration_secret(db):
    _, secret = token_create(label="test fleet", max_seats=50, expires_in=timedelta(hours=1))
    return secret


@pytest.fixture
def enroll(client, registration_secret):
    """enroll(**facts) -> EnrolledAgent, registered through POST /api/v1/agents/register."""

    def _enroll(machine_id: str | None = None, **facts) -> EnrolledAgent:
        machine_id = machine_id or machine_hash()
        response = register(client, registration_secret, machine_id, **facts)
        assert response.status_code == 201, response.content
        return EnrolledAgent(client, response.json(), machine_id)

    return _enroll


@pytest.fixture
def agent(enroll) -> EnrolledAgent:
    return enroll()
