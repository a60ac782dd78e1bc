"""The one write path for SystemEvents."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Max, Q
from django.utils import timezone

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SEQ_NAME, AuditApiToken, SystemEvent
from redflag.models import EVENT_RETENTION_FLOOR_DAYS, SECURITY_EVENT_RETENTION_FLOOR_DAYS

if TYPE_CHECKING:
    from agents_app.models import Agent

SYSTEM_ACTOR = "system"


class EventOutsideTransaction(RuntimeError):
    """A programming error: an event that records a change must commit with that change."""


def agent_actor(agent: Agent) -> str:
    return f"agent:{agent.hostname}"


def record_event(
    *,
    event_type: EventType,
    subtype: EventSubtype,
    component: Component,
    message: str,
    severity: Severity = Severity.INFO,
    agent: Agent | None = None,
    hostname: str = "",
    metadata: dict[str, Any] | None = None,
    actor: str = SYSTEM_ACTOR,
    standalone: bool = False,
) -> SystemEvent:
    """Write one SystemEvent.

    Call it inside the transaction of the change it records, so the change and its audit row
    commit or roll back together; outside one it refuses (EventOutsideTransaction). An event that
    records no change of its own (start-up, a refused registration, a replayed nonce) says so
    with ``standalone=True``. Never pass a secret in ``message`` or ``metadata``.
    """
    if not standalone and not transaction.get_connection().in_atomic_block:
        raise EventOutsideTransaction(f"{event_type} event outside a transaction: {message[:80]!r}")
    return SystemEvent.objects.create(
        agent=agent,
        hostname=(hostname or (agent.hostname if agent else ""))[:255],
        event_type=event_type,
        event_subtype=subtype,
        severity=severity,
        component=component,
        message=message,
        metadata=metadata or {},
        actor=actor[:255],  # "agent:" + a 255-character hostname would not fit
    )


def record_events(events: list[dict[str, Any]]) -> int:
    """Write many SystemEvents in a constant number of queries, in the caller's transaction.

    Each dict holds ``record_event``'s keyword arguments (but ``standalone``). For sweeps that record one
    event per machine (the patching policies) and must not grow queries with the fleet. ``seq`` keeps its
    insertion order: PostgreSQL hands out one block of sequence values; on SQLite the first row's INSERT
    takes the database's single write lock for this transaction, so the MAX(seq) read after it cannot move
    before commit and the rest follow it.
    """
    if not events:
        return 0
    if not transaction.get_connection().in_atomic_block:
        raise EventOutsideTransaction(f"{len(events)} events outside a transaction")
    rows = []
    for event in events:
        agent = event.get("agent")
        rows.append(SystemEvent(
            agent=agent,
            hostname=(event.get("hostname") or (agent.hostname if agent else ""))[:255],
            event_type=event["event_type"], event_subtype=event["subtype"],
            severity=event.get("severity", Severity.INFO), component=event["component"],
            message=event["message"], metadata=event.get("metadata") or {},
            actor=event.get("actor", SYSTEM_ACTOR)[:255],
        ))
    connection = transaction.get_connection()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT nextval(%s) FROM generate_series(1, %s)", [SEQ_NAME, len(rows)])
            seqs = sorted(value for (value,) in cursor.fetchall())
    else:
        rows[0].save(force_insert=True)
        base = SystemEvent.objects.aggregate(top=Max("seq"))["top"]
        rows, seqs = rows[1:], range(base + 1, base + len(rows))
    for row, seq in zip(rows, seqs):
        row.seq = seq
    SystemEvent.objects.bulk_create(rows)
    return len(events)


def _security_event(event_type: EventType, subtype: EventSubtype, severity: Severity, message: str, *,
                    agent: Agent | None, metadata: dict[str, Any], standalone: bool) -> SystemEvent:
    return record_event(event_type=event_type, subtype=subtype, component=Component.SECURITY, severity=severity,
                        message=message, agent=agent, metadata=metadata,
                        actor=agent_actor(agent) if agent else SYSTEM_ACTOR, standalone=standalone)


def security_violation(message: str, *, agent: Agent | None, metadata: dict[str, Any],
                       standalone: bool = False) -> SystemEvent:
    """Someone tried what the rules forbid (another machine's credentials, a reused refresh token...)."""
    return _security_event(EventType.SECURITY_VIOLATION, EventSubtype.CRITICAL, Severity.CRITICAL, message,
                           agent=agent, metadata=metadata, standalone=standalone)


def auth_failure(message: str, *, agent: Agent | None = None, metadata: dict[str, Any],
                 standalone: bool = False) -> SystemEvent:
    """Credentials that do not hold (unknown, expired, revoked): a warning, not an attack by itself."""
    return _security_event(EventType.AUTH_FAILURE, EventSubtype.FAILED, Severity.WARNING, message,
                           agent=agent, metadata=metadata, standalone=standalone)


def event_export_record(*, actor: str, export_format: str, filters: dict[str, Any], via: str) -> SystemEvent:
    """Record that ``actor`` exported the history matching ``filters`` (as ``export_format``)."""
    return record_event(
        event_type=EventType.AUDIT_EXPORT,
        subtype=EventSubtype.INITIATED,
        component=Component.SECURITY,
        message=f"{actor} exported event history as {export_format}",
        metadata={"format": export_format, "filters": filters, "via": via},
        actor=actor,
        standalone=True,  # an export changes nothing
    )


# Events kept SECURITY_EVENT_RETENTION_FLOOR_DAYS at least: the security component, and the audit
# trail's record of itself (a purge, a configuration change such as a new retention).
SECURITY_EVENT_TYPES = (EventType.EVENTS_PURGED, EventType.CONFIG_CHANGED)


def security_events() -> Q:
    return Q(component=Component.SECURITY) | Q(event_type__in=SECURITY_EVENT_TYPES)


def retention_cutoffs(*, now: datetime, retention_days: int) -> tuple[datetime, datetime]:
    """(ordinary, security) cutoffs for ``retention_days``, never later than the floors allow."""
    return (now - timedelta(days=max(retention_days, EVENT_RETENTION_FLOOR_DAYS)),
            now - timedelta(days=max(retention_days, SECURITY_EVENT_RETENTION_FLOOR_DAYS)))


def events_purge(*, now: datetime, retention_days: int, batch_size: int = 5000) -> int:
    """Delete events past their retention, oldest first, in batches; record it.

    Whatever ``retention_days`` says, no event younger than its floor goes: ordinary events stay
    EVENT_RETENTION_FLOOR_DAYS (90), security events (security_events()) SECURITY_EVENT_RETENTION_FLOOR_DAYS
    (365). An admin who sets a short retention, or a caller passing 0, cannot wipe the audit trail,
    nor the record of the purge or of the settings change that asked for it.

    1. Take the next ``batch_size`` expired ids: created before the ordinary cutoff (index event_time
       serves that range), and for security events before the security cutoff too.
    2. Delete them in one statement, its own short transaction (autocommit), so writers are never blocked long
       and a crash loses at most one batch of work, which the next run redoes.
    3. Repeat until a batch comes back short, then write ONE events_purged event saying how many
       rows went and the cutoffs.
    """
    cutoff, security_cutoff = retention_cutoffs(now=now, retention_days=retention_days)
    expired = SystemEvent.objects.filter(created_at__lt=cutoff).filter(
        Q(created_at__lt=security_cutoff) | ~security_events())
    removed = 0
    oldest = expired.order_by("created_at").values_list("created_at", flat=True).first()
    while True:
        batch = list(expired.order_by("created_at").values_list("pk", flat=True)[:batch_size])
        if not batch:
            break
        # One DELETE statement: atomic by itself, its own short transaction under autocommit.
        deleted, _ = SystemEvent.objects.filter(pk__in=batch).delete()
        removed += deleted
        if len(batch) < batch_size:
            break
    record_event(
        event_type=EventType.EVENTS_PURGED,
        subtype=EventSubtype.SUCCESS,
        component=Component.SCHEDULER,
        message=(f"Retention removed {removed} events created before {cutoff:%Y-%m-%d %H:%M} UTC "
                 f"(security events before {security_cutoff:%Y-%m-%d %H:%M} UTC)"),
        # retention_days: what was applied to ordinary events (the request, raised to the floor).
        metadata={"removed": removed, "cutoff": cutoff.isoformat(),
                  "retention_days": max(retention_days, EVENT_RETENTION_FLOOR_DAYS),
                  "oldest_removed": oldest.isoformat() if oldest else None},
        standalone=True,  # the batches committed one by one; this sums them up
    )
    return removed


AUDIT_TOKEN_PREFIX = "rfa_"


def audit_token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def audit_token_issue(*, user, label: str, issued_by: str) -> tuple[AuditApiToken, str]:
    """A new read-API token for ``user``; returns it and the plaintext (shown once, never stored)."""
    secret = AUDIT_TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = AuditApiToken.objects.create(
            user=user, label=label, token_hash=audit_token_hash(secret), prefix=secret[:12], created_by=issued_by,
        )
        record_event(
            event_type=EventType.TOKEN_CREATED,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"{issued_by} issued audit API token {token.prefix}… for {user.get_username()}",
            metadata={"kind": "audit_api", "audit_token_id": str(token.pk), "user": user.get_username(),
                      "label": label},
            actor=issued_by,
        )
    return token, secret


def audit_token_revoke(*, token: AuditApiToken, revoked_by: str) -> bool:
    """Revoke once (conditional UPDATE); False if it was already revoked."""
    with transaction.atomic():
        changed = AuditApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
        if changed:
            record_event(
                event_type=EventType.TOKEN_REVOKED,
                subtype=EventSubtype.SUCCESS,
                component=Component.SECURITY,
                message=f"{revoked_by} revoked audit API token {token.prefix}…",
                metadata={"kind": "audit_api", "audit_token_id": str(token.pk), "user": token.user.get_username()},
                actor=revoked_by,
            )
    return bool(changed)
