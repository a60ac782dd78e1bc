"""The release admin (admin/releases.py): the latest release marked, an upload signed, revocation."""

from __future__ import annotations

import hashlib

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from agents_app.models import AgentRelease
from tests.server.agents_app.helpers import build, verify

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("release_storage")]


class TestAdmin:
    def test_changelist_marks_latest_and_upload_signs(self, admin_client):
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
        release = build("0.1.23")
        response = admin_client.post("/admin/agents_app/agentrelease/", {
            "action": "revoke_releases", "_selected_action": [release.pk],
        })
        assert response.status_code == 302
        assert AgentRelease.objects.get(pk=release.pk).revoked_at is not None
