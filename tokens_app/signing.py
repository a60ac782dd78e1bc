"""Ed25519 signing keys.

The primary private key lives only in REDFLAG_SIGNING_KEY_FILE (PKCS#8 PEM,
mode 0600); the database holds public keys with their ids. Rotation writes a
new primary key; older public keys stay listed (and verifiable by agents) until
retired. Several processes may share the file: creation takes a file lock and
every process reloads the key when the file changes.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.utils import timezone

from agent_client.protocol import key_endorsement_bytes
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.errors import Conflict
from tokens_app.models import SigningKey


@dataclass(frozen=True)
class LoadedKey:
    key_id: str
    private_key: Ed25519PrivateKey
    public_b64: str


_loaded: dict[tuple[str, int], LoadedKey] = {}


def _public_raw(private_key: Ed25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id_for(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _write_private_key(path: Path, private_key: Ed25519PrivateKey) -> None:
    """Atomically replace the key file; the file is 0600 from its first byte."""
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


class _FileLock:
    def __init__(self, path: Path):
        self.path = path.with_name(path.name + ".lock")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def _read_key_file(path: Path) -> LoadedKey:
    stat = path.stat()
    cache_key = (str(path), stat.st_mtime_ns)
    if cache_key not in _loaded:
        private_key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ImproperlyConfigured(f"{path} does not hold an Ed25519 private key")
        raw = _public_raw(private_key)
        _loaded.clear()
        _loaded[cache_key] = LoadedKey(key_id_for(raw), private_key, base64.b64encode(raw).decode())
    return _loaded[cache_key]


def _publish(loaded: LoadedKey, endorsed_by: LoadedKey | None = None) -> SigningKey:
    """Make sure the database lists ``loaded`` as the primary key (endorsed by its predecessor on rotation)."""
    with transaction.atomic():
        row = SigningKey.objects.select_for_update().filter(key_id=loaded.key_id).first()
        if row is not None and row.is_primary:
            return row
        SigningKey.objects.filter(is_primary=True).exclude(key_id=loaded.key_id).update(is_primary=False)
        if row is None:
            endorsement = {}
            if endorsed_by is not None:
                signed = key_endorsement_bytes(key_id=loaded.key_id, public_key=loaded.public_b64)
                endorsement = {"endorsed_by": endorsed_by.key_id,
                               "endorsement": base64.b64encode(endorsed_by.private_key.sign(signed)).decode()}
            try:
                with transaction.atomic():
                    row = SigningKey.objects.create(key_id=loaded.key_id, public_key=loaded.public_b64,
                                                    is_primary=True, **endorsement)
            except IntegrityError:  # another request or process published the same key first
                row = SigningKey.objects.get(key_id=loaded.key_id)
        else:
            row.is_primary = True
            row.retired_at = None
            row.save(update_fields=["is_primary", "retired_at"])
        return row


def primary_key() -> LoadedKey:
    """The key new signatures are made with, created on first use."""
    path = Path(settings.REDFLAG_SIGNING_KEY_FILE)
    if not path.exists():
        with _FileLock(path):
            if not path.exists():
                _write_private_key(path, Ed25519PrivateKey.generate())
    loaded = _read_key_file(path)
    if not SigningKey.objects.filter(key_id=loaded.key_id, is_primary=True).exists():
        _publish(loaded)
    return loaded


def sign(payload: bytes, key: LoadedKey | None = None) -> tuple[str, str]:
    """Sign ``payload`` with the primary key: (key id, base64 signature).

    ``key``: a ``primary_key()`` the caller fetched once for many signatures (a sweep
    signing thousands of commands checks the key file and the database once, not per command).
    """
    loaded = key or primary_key()
    return loaded.key_id, base64.b64encode(loaded.private_key.sign(payload)).decode()


def active_public_keys() -> list[SigningKey]:
    primary_key()
    return list(SigningKey.objects.filter(retired_at__isnull=True).order_by("-is_primary", "-created_at"))


def signing_key_rotate(*, actor: str = SYSTEM_ACTOR) -> SigningKey:
    """Write a new primary key; the previous one stays verifiable until retired."""
    path = Path(settings.REDFLAG_SIGNING_KEY_FILE)
    previous = primary_key()
    with _FileLock(path):
        _write_private_key(path, Ed25519PrivateKey.generate())
    loaded = _read_key_file(path)
    with transaction.atomic():
        row = _publish(loaded, endorsed_by=previous)
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            severity=Severity.WARNING,
            message=f"Signing key rotated: {previous.key_id} → {loaded.key_id}",
            metadata={"old_key_id": previous.key_id, "new_key_id": loaded.key_id},
            actor=actor,
        )
    return row


def signing_key_retire(*, key_id: str, actor: str = SYSTEM_ACTOR) -> SigningKey:
    """Stop listing a non-primary key; agents drop it at their next key refresh."""
    with transaction.atomic():
        row = SigningKey.objects.select_for_update().get(key_id=key_id)
        if row.is_primary:
            raise Conflict("the primary signing key cannot be retired; rotate first")
        if row.retired_at is None:
            row.retired_at = timezone.now()
            row.save(update_fields=["retired_at"])
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.SUCCESS,
                component=Component.SECURITY,
                severity=Severity.WARNING,
                message=f"Signing key {key_id} retired",
                metadata={"key_id": key_id},
                actor=actor,
            )
    return row
