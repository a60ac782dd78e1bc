"""Destination secrets at rest: Fernet with a key file of its own, masks for display, scrubbing for logs.

The key is a file in DATA_DIR (``notifications.key``, 0600, created on first use), not derived from
SECRET_KEY: rotating SECRET_KEY (the usual answer to a leaked settings file) must not make every
stored destination unreadable, and a copy of the settings (SECRET_KEY sits in environment files,
compose files, CI variables) must not be enough to read the destinations out of a database dump.
Several processes share it the way they already share the command-signing key in DATA_DIR. Two
processes creating it at once agree: O_EXCL lets one write, the other reads the winner's key.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings

KEY_FILE_NAME = "notifications.key"
MASK = "…"
# Fragments shorter than this are not scrubbed from error texts: "1" or "to" would garble them,
# and a secret that short protects nothing anyway.
MIN_SCRUB_LENGTH = 4


class SecretUnreadable(RuntimeError):
    """The stored secret does not decrypt with this key file (another DATA_DIR's key?)."""


def key_path() -> Path:
    return Path(getattr(settings, "REDFLAG_NOTIFICATIONS_KEY_FILE", "") or Path(settings.DATA_DIR) / KEY_FILE_NAME)


@lru_cache(maxsize=4)
def _fernet(path: Path) -> Fernet:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return Fernet(path.read_bytes().strip())
    key = Fernet.generate_key()
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return Fernet(key)


def encrypt(plaintext: str) -> str:
    return _fernet(key_path()).encrypt(plaintext.encode()).decode()


def decrypt(token: str) -> str:
    try:
        return _fernet(key_path()).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(f"stored secret does not decrypt with {key_path()}") from None


def mask_url(url: str) -> str:
    """What a page may show of a destination URL: its scheme and host, never credentials, path or query.

    The path and query hide too: an ntfy topic, a Gotify or Discord token, a Slack hook's ids all sit
    there. Apprise's own privacy mode keeps the first and last characters of tokens, and an ntfy
    token given as the user name whole, so it is not used for this.
    """
    parts = urlsplit(url.strip())
    try:
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        host, port = "", ""
    # Telegram's bot token sits where a host would ("tgram://123:ABC/chat"): a host with a colon part
    # that is not a port number, or no dot, is not shown.
    if not re.fullmatch(r"[A-Za-z0-9.-]+", host) or ("." not in host and host != "localhost"):
        host, port = MASK, ""
    credentials = f"{MASK}@" if "@" in parts.netloc else ""
    rest = f"/{MASK}" if (parts.path.strip("/") or parts.query) else ""
    return f"{parts.scheme}://{credentials}{host}{port}{rest}"


def secret_fragments(*values: str) -> set[str]:
    """Every piece of these URLs or secrets that could be a secret: user, password, path segments,
    query values, a host that is not a host name, each raw and percent-decoded."""
    fragments: set[str] = set()
    for value in values:
        if not value:
            continue
        fragments.add(value)
        parts = urlsplit(value)
        if not parts.scheme:
            continue
        pieces = [parts.netloc.rpartition("@")[0], *parts.netloc.rpartition("@")[0].split(":"),
                  *parts.path.split("/"), parts.query, *[v for _, v in parse_qsl(parts.query)]]
        host = parts.netloc.rpartition("@")[2]
        if not re.fullmatch(r"[A-Za-z0-9.-]+(:\d+)?", host) or "." not in host:
            pieces.extend([host, *host.split(":")])
        for piece in pieces:
            fragments.update({piece, unquote(piece)})
    return {fragment for fragment in fragments if len(fragment) >= MIN_SCRUB_LENGTH}


def scrub(text: str, fragments: set[str]) -> str:
    """``text`` with every secret fragment replaced, longest first (so a URL goes before its parts)."""
    for fragment in sorted(fragments, key=len, reverse=True):
        text = text.replace(fragment, MASK)
    return text
