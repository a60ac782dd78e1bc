"""Ed25519 signing keys: file-only private key, rotation, retirement, the public list."""

from __future__ import annotations

import base64
import os
import stat
import time
from io import StringIO
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.core.management import call_command
from django.core.management.base import CommandError

from agent_client.protocol import key_endorsement_bytes
from events_app.models import SystemEvent
from tokens_app import signing
from tokens_app.models import SigningKey


@pytest.fixture
def key_file(tmp_path, settings):
    settings.REDFLAG_SIGNING_KEY_FILE = tmp_path / "keys" / "signing_key.pem"
    return Path(settings.REDFLAG_SIGNING_KEY_FILE)


def verify(public_b64: str, signature_b64: str, payload: bytes) -> None:
    Ed25519PublicKey.from_public_bytes(base64.b64decode(public_b64)).verify(base64.b64decode(signature_b64), payload)


def test_key_is_created_on_first_use_in_a_0600_file_only(db, key_file):
    assert not key_file.exists()
    key_id, signature = signing.sign(b"payload")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    row = SigningKey.objects.get()
    assert row.key_id == key_id and row.is_primary
    verify(row.public_key, signature, b"payload")
    private_pem = key_file.read_text()
    assert "PRIVATE KEY" in private_pem
    # Nothing private in the database.
    assert all(private_pem.splitlines()[1] not in str(value) for value in SigningKey.objects.values().get().values())


def test_rotation_keeps_the_old_key_verifiable_until_retired(db, key_file, client):
    old_id, old_signature = signing.sign(b"command")
    out = StringIO()
    call_command("rotate_signing_key", stdout=out)
    new_id, new_signature = signing.sign(b"command")
    assert new_id != old_id and f"still verifiable: {old_id}" in out.getvalue()
    keys = {key["key_id"]: key for key in client.get("/api/v1/signing-keys").json()["keys"]}
    assert set(keys) == {old_id, new_id} and keys[new_id]["primary"] and not keys[old_id]["primary"]
    verify(keys[old_id]["public_key"], old_signature, b"command")
    verify(keys[new_id]["public_key"], new_signature, b"command")
    assert SystemEvent.objects.filter(event_type="config_changed", metadata__new_key_id=new_id).exists()

    call_command("rotate_signing_key", "--retire", old_id, stdout=StringIO())
    assert [key["key_id"] for key in client.get("/api/v1/signing-keys").json()["keys"]] == [new_id]


def test_primary_key_cannot_be_retired(db, key_file):
    key_id, _ = signing.sign(b"x")
    with pytest.raises(CommandError, match="rotate first"):
        call_command("rotate_signing_key", "--retire", key_id, stdout=StringIO())
    with pytest.raises(CommandError, match="no signing key"):
        call_command("rotate_signing_key", "--retire", "nope", stdout=StringIO())


def test_another_process_rotating_is_picked_up(db, key_file):
    """Processes share the file: a key written by another process becomes primary here too."""
    first_id, _ = signing.sign(b"x")

    signing._write_private_key(key_file, Ed25519PrivateKey.generate())
    os.utime(key_file, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    second_id, signature = signing.sign(b"x")
    assert second_id != first_id
    assert SigningKey.objects.get(is_primary=True).key_id == second_id


def test_rotation_endorses_the_new_key_with_the_old_one(db, key_file, client):
    old_id, _ = signing.sign(b"x")
    call_command("rotate_signing_key", stdout=StringIO())
    keys = {key["key_id"]: key for key in client.get("/api/v1/signing-keys").json()["keys"]}
    new = next(key for key in keys.values() if key["primary"])
    assert new["endorsed_by"] == old_id and keys[old_id]["endorsement"] == ""
    verify(keys[old_id]["public_key"], new["endorsement"],
           key_endorsement_bytes(key_id=new["key_id"], public_key=new["public_key"]))
