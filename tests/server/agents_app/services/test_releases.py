"""Agent releases: the build command, the signed manifest, version order, the latest rule, the API."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.core.management import call_command
from django.core.management.base import CommandError

from agent_client.protocol import release_manifest_bytes
from tests.server.conftest import machine_hash

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _release_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"


def build(version: str):
    from agents_app.releases import release_build

    return release_build(version=version, actor="test")


def public_key(key_id: str) -> Ed25519PublicKey:
    from tokens_app.models import SigningKey

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(SigningKey.objects.get(key_id=key_id).public_key))


def verify(manifest: dict) -> None:
    """What the agent does: the signature over release_manifest_bytes with the published key (raises if bad)."""
    signed = release_manifest_bytes(version=manifest["version"], platform=manifest["platform"],
                                    size=manifest["size"], sha256=manifest["sha256"], created=manifest["created"])
    public_key(manifest["key_id"]).verify(base64.b64decode(manifest["signature"]), signed)


# --- version order -------------------------------------------------------------------------------


class TestVersionOrder:
    @pytest.mark.parametrize("older, newer", [
        ("0.1.23", "0.1.23.5"), ("0.1.9", "0.1.10"), ("0.1.23.5", "0.1.24"), ("0.9", "0.10"), ("1", "1.0.1"),
    ])
    def test_numeric(self, older, newer):
        from agents_app.releases import version_key

        assert version_key(older) < version_key(newer)

    def test_trailing_zeros_do_not_count(self):
        from agents_app.releases import version_key

        assert version_key("1.0") == version_key("1") == version_key("1.0.0")

    @pytest.mark.parametrize("bad", ["", "v1", "1..2", "1.2.", "latest", "1.2-rc1", "1.2.3.4.5.6.7"])
    def test_invalid(self, bad):
        from agents_app.releases import ReleaseError, version_key

        with pytest.raises(ReleaseError):
            version_key(bad)


# --- build command ------------------------------------------------------------------------------


class TestBuildCommand:
    def test_builds_signs_stores_and_records(self, capsys):
        from agents_app.models import AgentRelease
        from events_app.models import SystemEvent

        call_command("build_agent_release", "--version", "0.1.23")
        release = AgentRelease.objects.get()
        data = release.artifact.read()
        release.artifact.close()
        assert (release.version, release.platform) == ("0.1.23", "any")
        assert release.size == len(data) and release.sha256 == hashlib.sha256(data).hexdigest()
        assert "agent_client/cli.py" in zipfile.ZipFile(io.BytesIO(data)).namelist()
        assert data.startswith(b"#!/usr/bin/env python3")
        assert release.manifest == {"version": "0.1.23", "platform": "any", "size": release.size,
                                    "sha256": release.sha256, "created": int(release.created_at.timestamp())}
        verify({**release.manifest, "key_id": release.key_id, "signature": release.signature})
        event = SystemEvent.objects.get(metadata__release="created")
        assert event.metadata["version"] == "0.1.23" and event.component == "build"
        assert release.sha256 in capsys.readouterr().out

    def test_reproducible_and_duplicate_refused(self):
        from agents_app.models import AgentRelease

        import hashlib
        import tempfile
        from pathlib import Path

        from agent_client.pyz import build as build_pyz

        first = build("0.1.23")
        second = build("0.1.23.5")
        assert first.sha256 != second.sha256  # each release carries its own __version__
        again = build_pyz(Path(tempfile.mkdtemp()) / "again.pyz", version="0.1.23")
        assert hashlib.sha256(again.read_bytes()).hexdigest() == first.sha256  # same sources, same bytes
        with pytest.raises(CommandError, match="already exists"):
            call_command("build_agent_release", "--version", "0.1.23.0")  # numerically equal to 0.1.23
        with pytest.raises(CommandError, match="invalid version"):
            call_command("build_agent_release", "--version", "latest")
        assert AgentRelease.objects.count() == 2

    def test_tampered_manifest_does_not_verify(self):
        release = build("0.1.23")
        wire = {**release.manifest, "key_id": release.key_id, "signature": release.signature}
        from cryptography.exceptions import InvalidSignature

        with pytest.raises(InvalidSignature):
            verify({**wire, "sha256": "0" * 64})
        with pytest.raises(InvalidSignature):
            verify({**wire, "version": "0.1.24"})


class TestUploadAndRevoke:
    def test_upload_is_signed_the_same_way(self):
        from agents_app.releases import release_create_from_upload

        payload = b"#!/usr/bin/env python3\nnot really a zipapp\n"
        release = release_create_from_upload(upload=io.BytesIO(payload), version="0.2", actor="admin")
        assert release.sha256 == hashlib.sha256(payload).hexdigest() and release.size == len(payload)
        verify({**release.manifest, "key_id": release.key_id, "signature": release.signature})

    def test_revoke_once_with_event(self):
        from agents_app.releases import release_revoke
        from events_app.models import SystemEvent

        release = build("0.1.23")
        assert release_revoke(release=release, actor="admin") is True
        assert release_revoke(release=release, actor="admin") is False
        assert SystemEvent.objects.filter(metadata__release="revoked").count() == 1


class TestLatestRule:
    def test_highest_non_revoked_version_per_platform(self):
        from agents_app.models import AgentRelease
        from agents_app.releases import latest_release, latest_release_ids, release_revoke

        old, patch, older = build("0.1.23"), build("0.1.23.5"), build("0.1.9")
        assert latest_release(platform="any") == patch
        assert latest_release_ids() == {patch.pk}
        assert [r.is_latest for r in (old, patch, older)] == [False, True, False]
        release_revoke(release=patch, actor="admin")
        assert latest_release(platform="any") == old
        assert latest_release_ids() == {old.pk}
        assert AgentRelease.objects.get(pk=old.pk).is_latest
        for release in (old, older):
            release_revoke(release=release, actor="admin")
        assert latest_release(platform="any") is None and latest_release_ids() == set()


# --- the API ------------------------------------------------------------------------------------

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
        from agents_app.releases import release_revoke

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
        assert client.get("/api/v1/releases/latest", **agent.headers()).status_code == 404


class TestAdmin:
    def test_changelist_marks_latest_and_upload_signs(self, admin_client):
        from django.core.files.uploadedfile import SimpleUploadedFile

        from agents_app.models import AgentRelease

        build("0.1.23")
        build("0.1.23.5")
        response = admin_client.get("/admin/agents_app/agentrelease/")
        assert response.status_code == 200
        assert response.content.decode().count("latest-release") == 1
        payload = b"#!/usr/bin/env python3\nuploaded\n"
        response = admin_client.post("/admin/agents_app/agentrelease/add/", {
            "version": "0.1.24", "platform": "any",
            "upload": SimpleUploadedFile("redflag-agent.pyz", payload),
        })
        assert response.status_code == 302, response.content.decode()[:2000]
        release = AgentRelease.objects.get(version="0.1.24")
        assert release.sha256 == hashlib.sha256(payload).hexdigest() and release.created_by == "admin"
        verify({**release.manifest, "key_id": release.key_id, "signature": release.signature})

    def test_revoke_action(self, admin_client):
        from agents_app.models import AgentRelease

        release = build("0.1.23")
        response = admin_client.post("/admin/agents_app/agentrelease/", {
            "action": "revoke_releases", "_selected_action": [release.pk],
        })
        assert response.status_code == 302
        assert AgentRelease.objects.get(pk=release.pk).revoked_at is not None
