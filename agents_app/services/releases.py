"""Agent releases: version order, the signed manifest, and the write paths.

A release is an artifact (the ``redflag-agent.pyz`` zipapp) plus a manifest —
version, platform, size, SHA-256, created — signed with the primary Ed25519
key over ``agent_client.protocol.release_manifest_bytes``, the same bytes the
agent and the installers verify.

Write paths (each records its SystemEvent in the same transaction):
``release_build`` (the management command), ``release_create_from_upload``
(the admin), ``release_revoke``.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Iterable
from datetime import datetime
from datetime import timezone as dt_timezone
from pathlib import Path
from typing import IO

from django.core.files import File
from django.db import IntegrityError, transaction
from django.utils import timezone

from agent_client.protocol import release_manifest_bytes
from agent_client.protocol import version_key as protocol_version_key
from agent_client.pyz import build
from agents_app.models import AgentRelease
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.errors import InvalidRequest
from tokens_app.signing import sign

VERSION_PATTERN = re.compile(r"^\d{1,9}(\.\d{1,9}){0,5}$")
# The same shape as a URL path segment: /api/v1/releases/<version>.
VERSION_REGEX = r"\d{1,9}(?:\.\d{1,9}){0,5}"
ARTIFACT_NAME = "redflag-agent.pyz"
CHUNK = 1024 * 1024


class ReleaseError(InvalidRequest):
    """A release cannot be stored or used (bad version, duplicate, empty artifact, revoked); the message says why."""

    default_code = "invalid_release"


# --- version order: the one place versions are compared ----------------------------------------


def version_key(version: str) -> tuple[int, ...]:
    """agent_client.protocol.version_key (the agent compares with the same rule), within the release pattern."""
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise ReleaseError(f"invalid version {version!r}: use dot-separated numbers, e.g. 0.1.23.5")
    return protocol_version_key(version)


def newest(releases: Iterable[AgentRelease]) -> AgentRelease | None:
    return max(releases, key=lambda release: version_key(release.version), default=None)


# --- reads ---------------------------------------------------------------------------------------


def latest_release(*, platform: str) -> AgentRelease | None:
    """The latest release of ``platform``: the highest version that is not revoked (the one rule)."""
    return newest(AgentRelease.objects.filter(platform=platform, revoked_at__isnull=True))


def latest_release_ids() -> set[int]:
    """Ids of the latest release of every platform, in one query (the admin's changelist)."""
    by_platform: dict[str, list[AgentRelease]] = {}
    for release in AgentRelease.objects.filter(revoked_at__isnull=True).only("pk", "platform", "version"):
        by_platform.setdefault(release.platform, []).append(release)
    return {newest(releases).pk for releases in by_platform.values()}


def release_find(*, version: str, platform: str = AgentRelease.Platform.ANY) -> AgentRelease | None:
    """The release of ``platform`` whose version equals ``version`` numerically (revoked ones included)."""
    wanted = version_key(version)
    candidates = AgentRelease.objects.filter(platform=platform)
    return next((release for release in candidates if version_key(release.version) == wanted), None)


def manifest_wire(release: AgentRelease) -> dict:
    """What agents and installers get: the signed fields plus the signature and its key id."""
    return {**release.manifest, "key_id": release.key_id, "signature": release.signature,
            "revoked": release.revoked_at is not None}


# --- writes --------------------------------------------------------------------------------------


def _digest(handle: IO[bytes]) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    handle.seek(0)
    while chunk := handle.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
    handle.seek(0)
    return digest.hexdigest(), size


def _store(*, handle: IO[bytes], version: str, platform: str, actor: str, how: str) -> AgentRelease:
    """Hash, sign and store one artifact; the file is removed again if the row does not commit."""
    version_key(version)
    if platform not in AgentRelease.Platform.values:
        raise ReleaseError(f"unknown platform {platform!r}; choose one of {', '.join(AgentRelease.Platform.values)}")
    if release_find(version=version, platform=platform) is not None:
        raise ReleaseError(f"release {version} for platform {platform} already exists")
    sha256, size = _digest(handle)
    if size == 0:
        raise ReleaseError("the artifact is empty")
    created = int(timezone.now().timestamp())
    manifest = {"version": version, "platform": platform, "size": size, "sha256": sha256, "created": created}
    key_id, signature = sign(release_manifest_bytes(**manifest))
    release = AgentRelease(version=version, platform=platform, sha256=sha256, size=size, manifest=manifest,
                           key_id=key_id, signature=signature, created_by=actor,
                           created_at=datetime.fromtimestamp(created, tz=dt_timezone.utc))
    release.artifact.save(f"redflag-agent-{version}-{platform}.pyz", File(handle), save=False)
    stored_name = release.artifact.name
    try:
        with transaction.atomic():
            release.save()
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.SUCCESS,
                component=Component.BUILD,
                message=f"Agent release {version} ({platform}) {how}: {size} bytes, sha256 {sha256[:12]}…",
                metadata={"release": "created", "version": version, "platform": platform, "size": size,
                          "sha256": sha256, "key_id": key_id, "how": how},
                actor=actor,
            )
    except IntegrityError:
        release.artifact.storage.delete(stored_name)
        raise ReleaseError(f"release {version} for platform {platform} already exists") from None
    except BaseException:
        release.artifact.storage.delete(stored_name)
        raise
    return release


def release_build(*, version: str, platform: str = AgentRelease.Platform.ANY,
                  actor: str = SYSTEM_ACTOR) -> AgentRelease:
    """Build redflag-agent.pyz from agent_client/ (reproducible zipapp), sign its manifest, store it."""
    version_key(version)
    with tempfile.TemporaryDirectory() as staging:
        path = build(Path(staging) / ARTIFACT_NAME, version=version)
        with open(path, "rb") as handle:
            return _store(handle=handle, version=version, platform=platform, actor=actor, how="built")


def release_create_from_upload(*, upload: IO[bytes], version: str, platform: str = AgentRelease.Platform.ANY,
                               actor: str) -> AgentRelease:
    """An artifact an admin built elsewhere, hashed and signed here exactly like a built one."""
    return _store(handle=upload, version=version, platform=platform, actor=actor, how="uploaded")


def release_revoke(*, release: AgentRelease, actor: str) -> bool:
    """Refuse the release from now on (downloads answer 410); returns False if it was already revoked."""
    with transaction.atomic():
        changed = AgentRelease.objects.filter(pk=release.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now())
        if not changed:
            return False
        release.refresh_from_db(fields=["revoked_at"])
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.WARNING,
            severity=Severity.WARNING,
            component=Component.BUILD,
            message=f"Agent release {release.version} ({release.platform}) revoked",
            metadata={"release": "revoked", "version": release.version, "platform": release.platform,
                      "sha256": release.sha256},
            actor=actor,
        )
    return True
