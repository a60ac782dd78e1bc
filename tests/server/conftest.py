"""Shared fixtures for the server's tests."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from datetime import timedelta

import pytest



def machine_hash(seed: str = "") -> str:
    return hashlib.sha256((seed or uuid.uuid4().hex).encode()).hexdigest()


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
        from agents_app.models import Agent

        return Agent.objects.get(pk=self.id)


@pytest.fixture(autouse=True)
def _fresh_server_settings():
    """ServerSettings.current() caches per process; every test starts from the database."""
    from redflag.models import ServerSettings

    ServerSettings.forget()
    yield
    ServerSettings.forget()


@pytest.fixture(autouse=True)
def _clear_cache():
    from django.core.cache import cache

    cache.clear()
    yield


@pytest.fixture
def registration_secret(db):
    from tokens_app.services import token_create

    _, secret = token_create(label="test fleet", max_seats=50, expires_in=timedelta(hours=1))
    return secret


@pytest.fixture
def enroll(client, registration_secret):
    """enroll(**facts) -> EnrolledAgent, registered through POST /api/v1/agents/register."""

    def _enroll(machine_id: str | None = None, **facts) -> EnrolledAgent:
        machine_id = machine_id or machine_hash()
        response = client.post(
            "/api/v1/agents/register",
            {"registration_token": registration_secret, "machine_id": machine_id, **host_facts(**facts)},
            content_type="application/json",
        )
        assert response.status_code == 201, response.content
        return EnrolledAgent(client, response.json(), machine_id)

    return _enroll


@pytest.fixture
def agent(enroll) -> EnrolledAgent:
    return enroll()
