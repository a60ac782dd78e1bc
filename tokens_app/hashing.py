"""Generation and hashing of bearer secrets (registration and refresh tokens)."""

import hashlib
import secrets

# 256-bit secrets; the prefix tells token kinds apart in a paste buffer.
REGISTRATION_PREFIX = "rf_reg_"
REFRESH_PREFIX = "rf_ref_"
DISPLAY_PREFIX_CHARS = 8


def new_secret(kind_prefix: str) -> str:
    return kind_prefix + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a secret safe to show in lists: kind prefix plus a few characters."""
    for kind in (REGISTRATION_PREFIX, REFRESH_PREFIX):
        if secret.startswith(kind):
            return secret[: len(kind) + DISPLAY_PREFIX_CHARS]
    return secret[:DISPLAY_PREFIX_CHARS]

