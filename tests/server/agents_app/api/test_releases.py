"""The release endpoints (api/releases.py): an agent fetches the signed manifest and the artifact."""

from __future__ import annotations

import hashlib

import pytest

from agents_app.services.releases import release_revoke
from events_app.models import SystemEvent
from tests.server.agents_app.helpers import build, verify
from tests.server.conftest import machine_hash

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("release_storage")]


ENDPOINTS = ["/api/v1/releases/latest?platform=any", "/api/v1/releases/0.1.23", "/api/v1/releases/0.1.23/artifact"]


class TestReleaseApi:
    @pytest.mark.parametrize("url", ENDPOINTS)
    def test_no_credentials_is_401(self, client, url):
        build("0.1.23")
        response = client.get(url)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "not_authenticated"

    @pytest.mark.parametrize("url", ENDPOINTS)
    def test_garbage_token_is_401(self, client, agent, url):
        build("0.1.23")
        response = client.get(url, **agent.headers(HTTP_AUTHORIZATION="Bearer nope"))
        assert response.status_code == 401
        assert set(response.json()["error"]) >= {"code", "message"}

    @pytest.mark.parametrize("url", ENDPOINTS)
    def test_other_machine_is_403(self, client, agent, url):
        build("0.1.23")
        response = client.get(url, **agent.headers(HTTP_X_MACHINE_ID=machine_hash("elsewhere")))
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "machine_mismatch"
        event = SystemEvent.objects.get(event_type="security_violation")
        assert str(event.agent_id) == agent.id and event.metadata["reason"] == "machine_mismatch"
        assert event.metadata["presented_machine_id"] == machine_hash("elsewhere")[:12]

    def test_latest_manifest_verifies(self, client, agent):
        build("0.1.23")
        build("0.1.23.5")
        response = client.get("/api/v1/releases/latest?platform=any", **agent.headers())
        assert response.status_code == 200, response.content
        manifest = response.json()
        assert manifest["version"] == "0.1.23.5" and manifest["revoked"] is False
        verify(manifest)

    def test_latest_bad_platform_400_and_none_404(self, client, agent):
        response = client.get("/api/v1/releases/latest?platform=plan9", **agent.headers())
        assert response.status_code == 400 and "platform" in response.json()["error"]["fields"]
        response = client.get("/api/v1/releases/latest", **agent.headers())
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"

    def test_manifest_by_version(self, client, agent):
        build("0.1.23")
        response = client.get("/api/v1/releases/0.1.23", **agent.headers())
        assert response.status_code == 200
        verify(response.json())

    def test_artifact_streams_with_hash(self, client, agent):
        release = build("0.1.23")
        response = client.get("/api/v1/releases/0.1.23/artifact", **agent.headers())
        assert response.status_code == 200 and response.streaming
        body = b"".join(response.streaming_content)
        assert hashlib.sha256(body).hexdigest() == release.sha256 == response["X-Content-SHA256"]
        assert int(response["Content-Length"]) == release.size == len(body)

    def test_unknown_404_revoked_410(self, client, agent):
        release = build("0.1.23")
        for url in ("/api/v1/releases/9.9", "/api/v1/releases/9.9/artifact", "/api/v1/releases/nope/artifact"):
            response = client.get(url, **agent.headers())
            assert response.status_code == 404, url
            assert response.json()["error"]["code"] == "not_found"
        release_revoke(release=release, actor="admin")
        for url in ("/api/v1/releases/0.1.23", "/api/v1/releases/0.1.23/artifact"):
            response = client.get(url, **agent.headers())
            assert response.status_code == 410
            assert response.json()["error"]["code"] == "release_revoked"
        response = client.get("/api/v1/releases/latest", **agent.headers())
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
