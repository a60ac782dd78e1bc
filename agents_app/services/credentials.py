"""Agent credentials: short-lived access tokens and rotating refresh-token families.

An access token is Django-signed (agent id and credential generation), so checking one costs no
query beyond reading the agent; bumping ``Agent.credential_generation`` invalidates every access
token issued before. A refresh token is stored as a SHA-256 hash and rotates on every renew; a
rotated token presented again revokes its whole family (it was copied), except for one retry
within REFRESH_RETRY_GRACE when the renew answer was lost.
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

from agents_app.models import Agent, RefreshToken, machine_id_prefix
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import agent_actor, auth_failure, record_event, security_violation
from redflag.errors import AgentRevoked, InvalidCredentials, MachineMismatch
from tokens_app.hashing import REFRESH_PREFIX, hash_secret, new_secret

ACCESS_TOKEN_PREFIX = "rf_acc_"
ACCESS_TOKEN_SALT = "redflag.agent-access-token"
# A rotated refresh token may be presented once more within this window, when
# its successor was never used: the renew response was lost (README).
REFRESH_RETRY_GRACE = timedelta(seconds=60)


@dataclass(frozen=True)
class IssuedCredentials:
    access_token: str
    access_token_expires_at: datetime
    refresh_token: str
    refresh_token_expires_at: datetime


def _access_token(agent: Agent, now: datetime) -> tuple[str, datetime]:
    payload = {"a": str(agent.pk), "g": agent.credential_generation}
    token = ACCESS_TOKEN_PREFIX + signing.dumps(payload, salt=ACCESS_TOKEN_SALT, compress=False)
    return token, now + timedelta(seconds=settings.REDFLAG_ACCESS_TOKEN_SECONDS)


def _refresh_token_row(agent: Agent, family: uuid.UUID, now: datetime) -> tuple[RefreshToken, str]:
    """A refresh token and its row, not saved yet."""
    secret = new_secret(REFRESH_PREFIX)
    row = RefreshToken(
        agent=agent,
        family=family,
        token_hash=hash_secret(secret),
        created_at=now,
        expires_at=now + timedelta(days=settings.REDFLAG_REFRESH_TOKEN_DAYS),
    )
    return row, secret


def _new_refresh_token(agent: Agent, family: uuid.UUID, now: datetime) -> tuple[RefreshToken, str]:
    row, secret = _refresh_token_row(agent, family, now)
    row.save(force_insert=True)
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


def credentials_current(*, agent: Agent, secret: str, now: datetime) -> bool:
    """Whether ``secret`` is ``agent``'s current refresh token: its own, not rotated, revoked or expired."""
    return RefreshToken.objects.filter(agent=agent, token_hash=hash_secret(secret), rotated_at__isnull=True,
                                       revoked_at__isnull=True, expires_at__gt=now).exists()


def credentials_prepare(*, agent: Agent, now: datetime) -> tuple[IssuedCredentials, RefreshToken]:
    """``credentials_issue`` without its write: the caller inserts the refresh token's row (the
    enrolment does, in its one statement)."""
    access, access_expires = _access_token(agent, now)
    refresh_row, refresh = _refresh_token_row(agent, uuid.uuid4(), now)
    return IssuedCredentials(access, access_expires, refresh, refresh_row.expires_at), refresh_row


def credentials_issue(*, agent: Agent, now: datetime) -> IssuedCredentials:
    """A new access token and the first refresh token of a new family."""
    issued, refresh_row = credentials_prepare(agent=agent, now=now)
    refresh_row.save(force_insert=True)
    return issued


def credentials_revoke_all(*, agent: Agent, now: datetime) -> None:
    """Invalidate every access and refresh token the agent holds."""
    RefreshToken.objects.filter(agent=agent, revoked_at__isnull=True).update(revoked_at=now)
    Agent.objects.filter(pk=agent.pk).update(credential_generation=F("credential_generation") + 1)
    agent.refresh_from_db(fields=["credential_generation"])


def _renew_outcome(secret: str, machine_id_hash: str, now: datetime):
    """Decide a renew inside the transaction: IssuedCredentials or an error to raise after commit."""
    token = RefreshToken.objects.select_related("agent").filter(token_hash=hash_secret(secret)).first()
    if token is None:
        auth_failure("Refresh refused: unknown refresh token", metadata={"reason": "unknown"})
        return InvalidCredentials()
    agent = token.agent
    details = {"family": str(token.family), "refresh_token_id": token.pk}
    if agent.machine_id_hash != machine_id_hash:
        security_violation(
            f"Refresh token of {agent.hostname} presented from another machine",
            agent=agent,
            metadata={**details, "reason": "machine_mismatch",
                      "presented_machine_id": machine_id_prefix(machine_id_hash)},
        )
        return MachineMismatch()
    if agent.revoked_at is not None:
        auth_failure("Refresh refused: agent revoked", agent=agent, metadata={**details, "reason": "agent_revoked"})
        return AgentRevoked()
    if token.revoked_at is not None or token.expires_at <= now:
        reason = "revoked" if token.revoked_at is not None else "expired"
        auth_failure(f"Refresh refused: {reason} refresh token", agent=agent, metadata={**details, "reason": reason})
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
    Agent.objects.filter(pk=agent.pk).update(credential_generation=F("credential_generation") + 1)
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
