"""Helpers of the release tests: build a release as the build command does, check it as the agent does."""

from __future__ import annotations

import base64

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from agent_client.protocol import release_manifest_bytes
from agents_app.services.releases import release_build
from tokens_app.models import SigningKey


def build(version: str):
    return release_build(version=version, actor="test")


def public_key(key_id: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(base64.b64decode(SigningKey.objects.get(key_id=key_id).public_key))


def verify(manifest: dict) -> None:
    """What the agent does: the signature over release_manifest_bytes with the published key (raises if bad)."""
    signed = release_manifest_bytes(version=manifest["version"], platform=manifest["platform"],
                                    size=manifest["size"], sha256=manifest["sha256"], created=manifest["created"])
    public_key(manifest["key_id"]).verify(base64.b64decode(manifest["signature"]), signed)
