"""Sign-in events: lock-outs, second-factor failures, factor changes and refused single sign-ons.

Each is standalone (``record_event(standalone=True)``): allauth has already saved what changed (an
authenticator) or nothing changed (a refusal). None carries a secret: no password, TOTP secret or
code, recovery code, WebAuthn credential or provider token, only names, kinds and addresses.
"""

from __future__ import annotations

import hashlib

from django.core.cache import cache

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event
from redflag.api.throttling import AdminLoginThrottle

USERNAME_LIMIT = 150  # Django's username length: what someone typed is kept to that


def client_ip(request) -> str:
    return AdminLoginThrottle().get_ident(request) if request is not None else ""


def signin_lockout_record(*, request, username: str, reason: str, window_seconds: int) -> bool:
    """Record that sign-in is locked for ``username`` from this address; once per window (True when recorded).

    An attacker keeps knocking after the lock; one event per lock says what happened without letting
    them fill the history.
    """
    username = username[:USERNAME_LIMIT]
    address = client_ip(request)
    # Hashed: what someone typed has spaces and colons, which some cache backends refuse in a key.
    key = hashlib.sha256("\0".join((reason, username.lower(), address)).encode()).hexdigest()
    if not cache.add(f"redflag-lockout:{key}", 1, timeout=window_seconds):
        return False
    record_event(event_type=EventType.USER_LOCKOUT, subtype=EventSubtype.WARNING, severity=Severity.WARNING,
                 component=Component.ACCOUNTS,
                 message=f"Sign-in locked for {username!r} from {address or 'an unknown address'} ({reason})",
                 metadata={"username": username, "client_ip": address, "reason": reason,
                           "window_seconds": window_seconds},
                 actor=username or "anonymous", standalone=True)
    return True


def signin_failure_record(*, request, username: str, stage: str, detail: str, **metadata) -> None:
    """A sign-in refused after its first step: wrong second factor, SSO-only, a provider error, no role."""
    username = username[:USERNAME_LIMIT]
    record_event(event_type=EventType.AUTH_FAILURE, subtype=EventSubtype.FAILED, severity=Severity.WARNING,
                 component=Component.SECURITY, message=f"Sign-in refused for {username!r}: {detail}",
                 metadata={"username": username, "client_ip": client_ip(request), "stage": stage, **metadata},
                 actor=username or "anonymous", standalone=True)


def second_factor_change_record(*, request, user, change: str, factor: str) -> None:
    """A factor added, removed or reset (new recovery codes): who, which kind, from where."""
    username = user.get_username()
    record_event(event_type=EventType.MFA_CHANGED, subtype=EventSubtype.SUCCESS,
                 severity=Severity.WARNING if change == "removed" else Severity.INFO,
                 component=Component.ACCOUNTS, message=f"{username}: {factor} {change}",
                 metadata={"user_id": user.pk, "username": username, "change": change, "factor": factor,
                           "client_ip": client_ip(request)},
                 actor=username, standalone=True)
