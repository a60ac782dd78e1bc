"""Self-update on the agent side: every tampering is refused before anything is replaced."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
import zipfile
from pathlib import Path

import pytest

from agent_client.executor import pinned_keys
from agent_client.protocol import release_manifest_bytes, update_nonce_bytes
from agent_client.selfupdate import MAX_START_ATTEMPTS, SelfUpdater, UpdateRefused, verify_update, version_key
from tests.agent.test_executor import Signer

AGENT_ID = str(uuid.uuid4())


def make_pyz(path: Path, marker: str) -> bytes:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("__main__.py", f"print({marker!r})\n")
    return path.read_bytes()


def update_params(signer: Signer, artifact: bytes, *, version="0.1.23.5", agent_id=AGENT_ID, lifetime=600,
                  downgrade=False, manifest_signer=None) -> dict:
    now = int(time.time())
    manifest = {"version": version, "platform": "any", "size": len(artifact),
                "sha256": hashlib.sha256(artifact).hexdigest(), "created": now}
    manifest_signer = manifest_signer or signer
    manifest.update(key_id=manifest_signer.key_id, signature=base64.b64encode(
        manifest_signer.private.sign(release_manifest_bytes(**{k: manifest[k] for k in
                                                                ("version", "platform", "size", "sha256",
                                                                 "created")}))).decode())
    nonce = {"agent_id": agent_id, "version": version, "issued_at": now, "expires_at": now + lifetime,
             "downgrade": downgrade, "nonce": uuid.uuid4().hex}
    nonce.update(key_id=signer.key_id, signature=base64.b64encode(signer.private.sign(update_nonce_bytes(
        **{k: nonce[k] for k in ("agent_id", "version", "issued_at", "expires_at", "downgrade", "nonce")}))).decode())
    return {"version": version, "platform": "any", "old_version": "0.1.23", "manifest": manifest,
            "update_nonce": nonce}


@pytest.fixture
def world(tmp_path):
    signer = Signer()
    installed = tmp_path / "bin" / "redflag-agent.pyz"
    installed.parent.mkdir()
    old_bytes = make_pyz(installed, "0.1.23")
    new_bytes = make_pyz(tmp_path / "new.pyz", "0.1.23.5")
    served = {"bytes": new_bytes}
    restarts = []

    def download(version, destination, max_bytes):
        data = served["bytes"][:max_bytes + 1]
        destination.write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    def updater(version="0.1.23"):
        return SelfUpdater(state_dir=tmp_path / "state", agent_id=AGENT_ID, current_version=version,
                           keys=lambda: pinned_keys([signer.public]), download=download,
                           request_restart=lambda: restarts.append(True), agent_file=lambda: installed)

    return {"signer": signer, "installed": installed, "old": old_bytes, "new": new_bytes, "served": served,
            "updater": updater, "restarts": restarts}


def test_update_swaps_the_file_keeps_the_previous_and_confirms_after_checkin(world):
    command_id = str(uuid.uuid4())
    progress = world["updater"]().apply(command_id, update_params(world["signer"], world["new"]))
    assert "restarting" in progress and world["restarts"] == [True]
    assert world["installed"].read_bytes() == world["new"]
    assert world["installed"].with_name("redflag-agent.pyz.previous").read_bytes() == world["old"]
    new_version = world["updater"]("0.1.23.5")
    assert new_version.on_start() is None
    assert new_version.after_cycle(True) == {"command_id": command_id, "status": "succeeded",
                                              "output": "now running 0.1.23.5 (was 0.1.23)"}
    assert new_version.after_cycle(True) is None  # reported once


def test_a_new_version_that_cannot_check_in_is_rolled_back(world):
    command_id = str(uuid.uuid4())
    world["updater"]().apply(command_id, update_params(world["signer"], world["new"]))
    new_version = world["updater"]("0.1.23.5")
    for _ in range(MAX_START_ATTEMPTS):
        assert new_version.after_cycle(False) is None
    assert world["installed"].read_bytes() == world["old"]
    report = world["updater"]("0.1.23").on_start()  # the old file runs again and says why
    assert report["command_id"] == command_id and report["status"] == "failed"
    assert "could not check in" in report["output"]


@pytest.mark.parametrize("tamper, reason", [
    ("flipped_byte", "bad_artifact"),
    ("unknown_manifest_key", "bad_manifest"),
    ("other_agents_nonce", "wrong_agent"),
    ("expired_nonce", "expired"),
    ("downgrade", "downgrade"),
    ("forged_nonce", "bad_update_nonce"),
])
def test_tampering_is_refused_and_nothing_is_replaced(world, tamper, reason):
    signer, new = world["signer"], world["new"]
    params = update_params(signer, new)
    current = "0.1.23"
    if tamper == "flipped_byte":
        world["served"]["bytes"] = new[:-1] + bytes([new[-1] ^ 1])
    elif tamper == "unknown_manifest_key":
        params = update_params(signer, new, manifest_signer=Signer("k9"))
    elif tamper == "other_agents_nonce":
        params = update_params(signer, new, agent_id=str(uuid.uuid4()))
    elif tamper == "expired_nonce":
        params = update_params(signer, new, lifetime=-1)
    elif tamper == "downgrade":
        params = update_params(signer, new, version="0.1.22")
    elif tamper == "forged_nonce":
        params["update_nonce"]["version"] = "9.9.9"
    with pytest.raises(UpdateRefused) as refused:
        world["updater"](current).apply(str(uuid.uuid4()), params)
    assert refused.value.reason == reason
    assert world["installed"].read_bytes() == world["old"] and world["restarts"] == []
    assert not world["installed"].with_name("redflag-agent.pyz.previous").exists()


def test_an_explicitly_signed_downgrade_is_allowed(world):
    params = update_params(world["signer"], world["new"], version="0.1.22", downgrade=True)
    verify_update(params, agent_id=AGENT_ID, keys=pinned_keys([world["signer"].public]), current_version="0.1.23",
                  highest_accepted="0.1.23", now=time.time())


def test_the_highest_accepted_version_blocks_later_downgrades(world):
    world["updater"]().apply(str(uuid.uuid4()), update_params(world["signer"], world["new"]))
    world["updater"]("0.1.23.5").after_cycle(True)
    # Even an agent file restored by hand to 0.1.23 will not accept 0.1.23.2 now.
    with pytest.raises(UpdateRefused, match="older") as refused:
        world["updater"]("0.1.23").apply(str(uuid.uuid4()), update_params(world["signer"], world["new"],
                                                                           version="0.1.23.2"))
    assert refused.value.reason == "downgrade"


def test_version_order():
    assert version_key("0.1.23") < version_key("0.1.23.5") < version_key("0.1.24") < version_key("0.2")
    assert version_key("0.1.23.0") == version_key("0.1.23")
