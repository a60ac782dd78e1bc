"""Write paths for registration tokens and agent credentials.

Each function validates, saves and records its SystemEvent in one transaction.
A refusal that must leave an audit row returns from the transaction first and
raises afterwards, so the event is committed while the caller gets a 4xx.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core import signing
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, agent_actor, record_event
from redflag.errors import AgentRevoked, InvalidCredentials, MachineMismatch
from redflag.models import ServerSettings
from tokens_app.choices import RefusalReason
from tokens_app.hashing import REFRESH_PREFIX, REGISTRATION_PREFIX, display_prefix, hash_secret, new_secret
from tokens_app.models import RefreshToken, RegistrationToken
from tokens_app.querysets import active_condition, token_status

ACCESS_TOKEN_PREFIX = "rf_acc_"
ACCESS_TOKEN_SALT = "redflag.agent-access-token"
# A rotated refresh token may be presented once more within this window, when
# its successor was never used: the renew response was lost (README).
REFRESH_RETRY_GRACE = timedelta(seconds=60)


# --- registration tokens ---------------------------------------------------


class TokenLifetimeTooLong(ValueError):
    pass


def token_create(
    *, label: str, max_seats: int, expires_in: timedelta, created_by=None
) -> tuple[RegistrationToken, str]:
    """Create a registration token; returns it with the plaintext, which is never stored."""
    cap = timedelta(hours=ServerSettings.current().registration_token_max_hours)
    if expires_in > cap:
        raise TokenLifetimeTooLong(f"a token may live at most {cap.total_seconds() / 3600:g} hours")
    if expires_in <= timedelta(0):
        raise ValueError("the expiry must be in the future")
    if max_seats < 1:
        raise ValueError("a token needs at least one seat")
    secret = new_secret(REGISTRATION_PREFIX)
    actor = created_by.get_username() if created_by else SYSTEM_ACTOR
    with transaction.atomic():
        token = RegistrationToken.objects.create(
            label=label,
            token_hash=hash_secret(secret),
            prefix=display_prefix(secret),
            max_seats=max_seats,
            expires_at=timezone.now() + expires_in,
            created_by=created_by,
        )
        record_event(
            event_type=EventType.TOKEN_CREATED,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"Registration token {token.label!r} created ({max_seats} seats)",
            metadata={"token_id": token.pk, "prefix": token.prefix, "seats": max_seats,
                      "expires_at": token.expires_at.isoformat()},
            actor=actor,
        )
    return token, secret


def token_revoke(*, token: RegistrationToken, actor: str) -> bool:
    """Revoke ``token``; False when it was already revoked (nothing recorded)."""
    now = timezone.now()
    with transaction.atomic():
        revoked = RegistrationToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=now)
        if revoked:
            record_event(
                event_type=EventType.TOKEN_REVOKED,
                subtype=EventSubtype.SUCCESS,
                component=Component.SECURITY,
                message=f"Registration token {token.label!r} revoked",
                metadata={"token_id": token.pk, "prefix": token.prefix, "seats_used": token.seats_used},
                actor=actor,
            )
    return bool(revoked)


def token_redeem(*, secret: str, now: datetime) -> RegistrationToken | RefusalReason:
    """Consume one seat with a single conditional UPDATE.

    Returns the token, or the real reason it was refused. Must run inside the
    caller's transaction so the seat and the agent commit together.
    """
    rows = RegistrationToken.objects.by_secret(secret)
    if rows.filter(active_condition(now)).update(seats_used=F("seats_used") + 1):
        return rows.get()
    return token_refusal(secret=secret, now=now)


def token_refusal(*, secret: str, now: datetime) -> RefusalReason:
    """Why this secret cannot enroll a machine now."""
    token = RegistrationToken.objects.by_secret(secret).first()
    if token is None:
        return RefusalReason.UNKNOWN
    return RefusalReason(token_status(token, now).value)


# --- agent credentials -----------------------------------------------------


@dataclass(frozen=True)
class IssuedCredentials:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    refresh_token_expires_at: datetime


def _access_token(agent, now: datetime) -> tuple[str, datetime]:
    payload = {"a": str(agent.pk), "g": agent.credential_generation}
    token = ACCESS_TOKEN_PREFIX + signing.dumps(payload, salt=ACCESS_TOKEN_SALT, compress=False)
    return token, now + timedelta(seconds=settings.REDFLAG_ACCESS_TOKEN_SECONDS)


def _new_refresh_token(agent, family: uuid.UUID, now: datetime) -> tuple[RefreshToken, str]:
    secret = new_secret(REFRESH_PREFIX)
    row = RefreshToken.objects.create(
        agent=agent,
        family=family,
        token_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(days=settings.REDFLAG_REFRESH_TOKEN_DAYS),
    )
    return row, secret


def access_token_read(token: str) -> tuple[str, int]:
    """(agent id, credential generation) from a valid, unexpired access token."""
    if not token.startswith(ACCESS_TOKEN_PREFIX):
        raise InvalidCredentials()
    try:
        payload = signing.loads(
            token[len(ACCESS_TOKEN_PREFIX):], salt=ACCESS_TOKEN_SALT, max_age=settings.REDFLAG_ACCESS_TOKEN_SECONDS
        )
        return str(payload["a"]), int(payload["g"])
    except signing.SignatureExpired:
        raise InvalidCredentials("The access token has expired; renew it.", code="token_expired") from None
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        raise InvalidCredentials() from None


def credentials_issue(*, agent, now: datetime) -> IssuedCredentials:
    """A new access token and the first refresh token of a new family."""
    access, access_expires = _access_token(agent, now)
    refresh_row, refresh = _new_refresh_token(agent, uuid.uuid4(), now)
    return IssuedCredentials(access, access_expires, refresh, refresh_row.expires_at)


def credentials_revoke_all(*, agent, now: datetime) -> None:
    """Invalidate every access and refresh token the agent holds."""
    RefreshToken.objects.filter(agent=agent, revoked_at__isnull=True).update(revoked_at=now)
    type(agent).objects.filter(pk=agent.pk).update(credential_generation=F("credential_generation") + 1)
    agent.refresh_from_db(fields=["credential_generation"])


def _auth_failure(message: str, *, agent=None, metadata: dict, severity=Severity.WARNING) -> None:
    record_event(
        event_type=EventType.AUTH_FAILURE,
        subtype=EventSubtype.FAILED,
        component=Component.SECURITY,
        severity=severity,
        message=message,
        agent=agent,
        metadata=metadata,
        actor=agent_actor(agent) if agent else SYSTEM_ACTOR,
    )


def security_violation(message: str, *, agent, metadata: dict) -> None:
    record_event(
        event_type=EventType.SECURITY_VIOLATION,
        subtype=EventSubtype.CRITICAL,
        component=Component.SECURITY,
        severity=Severity.CRITICAL,
        message=message,
        agent=agent,
        metadata=metadata,
        actor=agent_actor(agent) if agent else SYSTEM_ACTOR,
    )


def _renew_outcome(secret: str, machine_id_hash: str, now: datetime):
    """Decide a renew inside the transaction: IssuedCredentials or an error to raise after commit."""
    token = RefreshToken.objects.select_related("agent").filter(token_hash=hash_secret(secret)).first()
    if token is None:
        _auth_failure("Refresh refused: unknown refresh token", metadata={"reason": "unknown"})
        return InvalidCredentials()
    agent = token.agent
    details = {"family": str(token.family), "refresh_token_id": token.pk}
    if agent.machine_id_hash != machine_id_hash:
        security_violation(
            f"Refresh token of {agent.hostname} presented from another machine",
            agent=agent,
            metadata={**details, "reason": "machine_mismatch", "presented_machine_id": machine_id_hash[:12]},
        )
        return MachineMismatch()
    if agent.revoked_at is not None:
        _auth_failure("Refresh refused: agent revoked", agent=agent, metadata={**details, "reason": "agent_revoked"})
        return AgentRevoked()
    if token.revoked_at is not None or token.expires_at <= now:
        reason = "revoked" if token.revoked_at is not None else "expired"
        _auth_failure(f"Refresh refused: {reason} refresh token", agent=agent, metadata={**details, "reason": reason})
        return InvalidCredentials()
    if token.rotated_at is None and RefreshToken.objects.filter(pk=token.pk, rotated_at__isnull=True).update(
        rotated_at=now
    ):
        successor, successor_secret = _new_refresh_token(agent, token.family, now)
        RefreshToken.objects.filter(pk=token.pk).update(replaced_by=successor)
        record_event(
            event_type=EventType.TOKEN_RENEWAL,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"Credentials renewed for {agent.hostname}",
            agent=agent,
            metadata=details,
            actor=agent_actor(agent),
        )
        access, access_expires = _access_token(agent, now)
        return IssuedCredentials(access, access_expires, successor_secret, successor.expires_at)
    token.refresh_from_db()
    return _rotated_token_presented(token, now, details)


def _rotated_token_presented(token: RefreshToken, now: datetime, details: dict):
    """A rotated token came back: one tolerated retry, otherwise revoke the family."""
    agent = token.agent
    successor = token.replaced_by
    retry_allowed = (
        token.retry_used_at is None
        and now - token.rotated_at <= REFRESH_RETRY_GRACE
        and successor is not None
        and successor.rotated_at is None
        and successor.revoked_at is None
    )
    if retry_allowed:
        claimed = RefreshToken.objects.filter(pk=token.pk, retry_used_at__isnull=True).update(retry_used_at=now)
        if claimed:
            RefreshToken.objects.filter(pk=successor.pk).update(revoked_at=now)
            replacement, replacement_secret = _new_refresh_token(agent, token.family, now)
            RefreshToken.objects.filter(pk=token.pk).update(replaced_by=replacement)
            record_event(
                event_type=EventType.TOKEN_RENEWAL,
                subtype=EventSubtype.WARNING,
                severity=Severity.WARNING,
                component=Component.SECURITY,
                message=f"{agent.hostname} retried its previous refresh token; tolerated once",
                agent=agent,
                metadata={**details, "reason": "retry_after_lost_response"},
                actor=agent_actor(agent),
            )
            access, access_expires = _access_token(agent, now)
            return IssuedCredentials(access, access_expires, replacement_secret, replacement.expires_at)
    RefreshToken.objects.filter(family=token.family, revoked_at__isnull=True).update(revoked_at=now)
    type(agent).objects.filter(pk=agent.pk).update(credential_generation=F("credential_generation") + 1)
    security_violation(
        f"Rotated refresh token of {agent.hostname} was reused; its token family is revoked",
        agent=agent,
        metadata={**details, "reason": "refresh_token_reuse"},
    )
    return InvalidCredentials()


def credentials_renew(*, secret: str, machine_id_hash: str) -> IssuedCredentials:
    """Rotate a refresh token: a new access token and the family's next refresh token."""
    with transaction.atomic():
        outcome = _renew_outcome(secret, machine_id_hash, timezone.now())
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
