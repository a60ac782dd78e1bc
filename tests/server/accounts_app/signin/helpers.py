"""Signing in as a browser does, through the real pages: the password form, the second factor, TOTP set-up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import struct
import time

from django.urls import reverse

PASSWORD = "a long test passphrase 42"


def totp(secret: str, *, at: float | None = None, period: int = 30, digits: int = 6) -> str:
    """RFC 6238 TOTP (HMAC-SHA1), computed here from the secret the set-up page shows, as an app would."""
    key = base64.b32decode(secret.upper() + "=" * (-len(secret) % 8))
    counter = int((time.time() if at is None else at) // period)
    digest = hmac.new(key, struct.pack(">Q", counter), hashlib.sha1).digest()
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10**digits).zfill(digits)


def sign_in(client, username: str, password: str = PASSWORD, next_url: str = "/admin/"):
    return client.post(reverse("sign_in"), {"login": username, "password": password, "next": next_url})


def shown_secret(page_html: str) -> str:
    """The TOTP secret the set-up page shows (the read-only "Authenticator secret" field)."""
    match = re.search(r'id="authenticator_secret"[^>]*value="([A-Z2-7]+)"', page_html) or re.search(
        r'value="([A-Z2-7]{16,})"[^>]*id="authenticator_secret"', page_html)
    assert match, "no authenticator secret on the set-up page"
    return match.group(1)


def shown_recovery_codes(page_html: str) -> list[str]:
    match = re.search(r'<textarea[^>]*id="recovery_codes"[^>]*>(.*?)</textarea>', page_html, re.S)
    assert match, "no recovery codes on the page"
    return html.unescape(match.group(1)).split()


def set_up_totp(client) -> str:
    """Walk the TOTP set-up as a signed-in person: read the secret, answer with its code. Returns the secret."""
    page = client.get(reverse("mfa_activate_totp"))
    assert page.status_code == 200, page.status_code
    secret = shown_secret(page.content.decode())
    done = client.post(reverse("mfa_activate_totp"), {"code": totp(secret)})
    assert done.status_code == 302 and done["Location"] == reverse("mfa_view_recovery_codes"), (
        done.status_code, done.content[:2000])
    return secret
