"""Agent releases (services/releases.py): version order, the build command, upload, revocation, the latest rule.

The endpoints are tested in tests/server/agents_app/api/test_releases.py, the admin page in
tests/server/agents_app/admin/test_releases.py.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import zipfile
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from django.core.management import call_command
from django.core.management.base import CommandError

from agent_client.pyz import build as build_pyz
from agents_app.models import AgentRelease
from agents_app.services.releases import (
    ReleaseError,
    latest_release,
    latest_release_ids,
    release_create_from_upload,
    release_revoke,
    version_key,
)
from events_app.models import SystemEvent
from tests.server.agents_app.helpers import build, verify

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("release_storage")]


# --- version order -------------------------------------------------------------------------------


class TestVersionOrder:
    @pytest.mark.parametrize("older, newer", [
        ("0.1.23", "0.1.23.5"), ("0.1.9", "0.1.10"), ("0.1.23.5", "0.1.24"), ("0.9", "0.10"), ("1", "1.0.1"),
    ])
    def test_numeric(self, older, newer):
        assert version_key(older) < version_key(newer)

    def test_trailing_zeros_do_not_count(self):
        assert version_key("1.0") == version_key("1") == version_key("1.0.0")

    @pytest.mark.parametrize("bad", ["", "v1", "1..2", "1.2.", "latest", "1.2-rc1", "1.2.3.4.5.6.7"])
    def test_invalid(self, bad):
        with pytest.raises(ReleaseError):
            version_key(bad)


# --- build command ------------------------------------------------------------------------------


class TestBuildCommand:
    def test_builds_signs_stores_and_records(self, capsys):
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

        with pytest.raises(InvalidSignature):
            verify({**wire, "sha256": "0" * 64})
        with pytest.raises(InvalidSignature):
            verify({**wire, "version": "0.1.24"})


class TestUploadAndRevoke:
    def test_upload_is_signed_the_same_way(self):
        payload = b"#!/usr/bin/env python3\nnot really a zipapp\n"
        release = release_create_from_upload(upload=io.BytesIO(payload), version="0.2", actor="admin")
        assert release.sha256 == hashlib.sha256(payload).hexdigest() and release.size == len(payload)
        verify({**release.manifest, "key_id": release.key_id, "signature": release.signature})

    def test_revoke_once_with_event(self):
        release = build("0.1.23")
        assert release_revoke(release=release, actor="admin") is True
        assert release_revoke(release=release, actor="admin") is False
        assert SystemEvent.objects.filter(metadata__release="revoked").count() == 1


class TestLatestRule:
    def test_highest_non_revoked_version_per_platform(self):
        old, patch, older = build("0.1.23"), build("0.1.23.5"), build("0.1.9")
        assert latest_release(platform="any") == patch
        assert latest_release_ids() == {patch.pk}
        release_revoke(release=patch, actor="admin")
        assert latest_release(platform="any") == old
        assert latest_release_ids() == {old.pk}
        for release in (old, older):
            release_revoke(release=release, actor="admin")
        assert latest_release(platform="any") is None and latest_release_ids() == set()


