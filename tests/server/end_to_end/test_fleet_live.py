"""A scripted agent over real HTTP: scan report → approve → dry-run → install → result.

The agent side verifies every command's Ed25519 signature with the keys it got
at registration, as the real agent must.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from datetime import timedelta

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_client.protocol import command_signing_bytes_from_wire
from agents_app.choices import UpdateStatus
from agents_app.models import PackageUpdate, UpdateLog
from agents_app.services.package_updates import updates_approve, updates_install
from redflag.models import ServerSettings
from tokens_app.services import token_create


class ScriptedAgent:
    def __init__(self, base_url: str, registration_token: str):
        self.base = base_url
        self.machine_id = hashlib.sha256(b"live-" + uuid.uuid4().bytes).hexdigest()
        response = requests.post(f"{base_url}/api/v1/agents/register", json={
            "registration_token": registration_token, "machine_id": self.machine_id, "hostname": "live-01",
            "os_family": "linux", "agent_version": "0.1.0", "capabilities": ["apt"]}, timeout=10)
        assert response.status_code == 201, response.text
        body = response.json()
        self.id, self.access_token = body["agent_id"], body["access_token"]
        self.keys = {key["key_id"]: Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
                     for key in body["signing_keys"]}

    def post(self, suffix: str, body: dict) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.access_token}", "X-Machine-ID": self.machine_id,
                   "X-Request-Nonce": secrets.token_urlsafe(24), "X-Request-Timestamp": str(int(time.time()))}
        return requests.post(f"{self.base}/api/v1/agents/{self.id}/{suffix}", json=body, headers=headers, timeout=10)

    def checkin(self) -> list[dict]:
        response = self.post("checkin", {"agent_version": "0.1.0", "heartbeat_active": False})
        assert response.status_code == 200, response.text
        commands = response.json()["commands"]
        for command in commands:
            assert command["agent_id"] == self.id
            self.keys[command["key_id"]].verify(base64.b64decode(command["signature"]),
                                                command_signing_bytes_from_wire(command))
        return commands

    def result(self, command: dict, **body) -> None:
        response = self.post(f"commands/{command['id']}/result", body)
        assert response.status_code == 200 and response.json()["changed"], response.text


@pytest.mark.django_db(transaction=True)
def test_scripted_agent_through_the_whole_update_workflow(live_server):
    settings_row = ServerSettings.current()
    settings_row.heartbeat_before_operations = False
    settings_row.save()
    _, secret = token_create(label="live", max_seats=1, expires_in=timedelta(hours=1))
    agent = ScriptedAgent(live_server.url, secret)

    scan = agent.checkin()
    assert [command["type"] for command in scan] == ["scan_updates"]
    report = {"report_id": uuid.uuid4().hex, "package_type": "apt", "updates": [
        {"name": "openssl", "current_version": "3.0.11-1~deb12u1", "available_version": "3.0.13-1~deb12u1",
         "severity": "important", "is_security": True, "repository": "Debian-Security/bookworm-security"},
        {"name": "vim", "current_version": "2:9.0.1378-2", "available_version": "2:9.0.1378-2+deb12u1"},
    ]}
    assert agent.post("reports/updates", report).status_code == 200
    agent.result(scan[0], status="succeeded", exit_code=0)

    # The admin approves the security update and installs it.
    updates_approve(updates=PackageUpdate.objects.filter(is_security=True), actor="admin")
    updates_install(updates=PackageUpdate.objects.filter(status=UpdateStatus.APPROVED), actor="admin")

    dry_run = agent.checkin()
    assert [(c["type"], c["params"]) for c in dry_run] == [
        ("dry_run_update", {"package_type": "apt", "packages": ["openssl"]})]
    agent.result(dry_run[0], status="running")
    agent.result(dry_run[0], status="succeeded", exit_code=0, dependencies=["openssl"], duration_seconds=0.8,
                 output="Inst openssl [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security)")

    install = agent.checkin()
    assert [c["type"] for c in install] == ["install_updates"]
    agent.result(install[0], status="succeeded", exit_code=0, duration_seconds=9.5, output="Setting up openssl")

    assert dict(PackageUpdate.objects.values_list("name", "status")) == {"openssl": "installed", "vim": "pending"}
    assert list(UpdateLog.objects.order_by("created_at").values_list("action", "succeeded")) == [
        ("dry_run", True), ("install", True)]
    assert agent.checkin() == []
