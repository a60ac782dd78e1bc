"""The one write path for SystemEvents."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable

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


@dataclass(frozen=True)
class PurgePace:
    """How hard the retention purge may push beside the live traffic (bench/purge.py measures it).

    Each batch is one short DELETE of at most ``batch_size`` rows (its own transaction, row locks held for
    milliseconds, a bounded burst of WAL); after it the purge rests ``rest_ratio`` times as long as the batch
    took, at least ``min_rest`` seconds: a busy database makes batches slower, and the purge then yields more.
    ``time_budget`` stops it (and says so in its record) before the django-q2 timeout would kill it mid-batch.
    """

    batch_size: int = 5000
    rest_ratio: float = 1.0
    min_rest: float = 0.02
    time_budget: float | None = None


@dataclass(frozen=True)
class PurgeOutcome:
    removed: int
    batches: int
    complete: bool  # False: stopped at the time budget with expired rows left


def events_purge(*, now: datetime, retention_days: int, pace: PurgePace = PurgePace(),
                 sleep: Callable[[float], None] = time.sleep) -> PurgeOutcome:
    """Delete events past their retention, oldest first, in paced batches; record it.

    Whatever ``retention_days`` says, no event younger than its floor goes: ordinary events stay
    EVENT_RETENTION_FLOOR_DAYS (90), security events (security_events()) SECURITY_EVENT_RETENTION_FLOOR_DAYS
    (365). An admin who sets a short retention, or a caller passing 0, cannot wipe the audit trail,
    nor the record of the purge or of the settings change that asked for it.

    1. Read the creation times of the next ``pace.batch_size`` expired events, oldest first, from where the
       previous batch ended (a keyset on created_at, index event_time): each batch reads a bounded index range,
       never again past the dead entries of the rows already deleted (they stay in the index until VACUUM).
       Security events between the two cutoffs are stepped over once, not re-read by every batch.
    2. Delete the expired events of that created_at range in one statement (a batch, plus any ties on its last
       instant), its own short transaction (autocommit), so writers are never blocked long and a crash loses
       at most one batch of work, which the next run redoes.
    3. Rest (see PurgePace), then repeat until a batch comes back short or the time budget is spent.
    4. Write ONE events_purged event with the counts (rows, batches, time spent and rested) and the cutoffs.
    """
    cutoff, security_cutoff = retention_cutoffs(now=now, retention_days=retention_days)
    expired = SystemEvent.objects.filter(created_at__lt=cutoff).filter(
        Q(created_at__lt=security_cutoff) | ~security_events()).order_by("created_at")
    started = time.monotonic()
    removed = batches = 0
    rested = 0.0
    oldest = newest = None
    complete = False
    while True:
        batch_started = time.monotonic()
        rest = expired if newest is None else expired.filter(created_at__gte=newest)
        stamps = list(rest.values_list("created_at", flat=True)[:pace.batch_size])
        if not stamps:
            complete = True
            break
        # One DELETE of a created_at range (the index's order, so neighbouring heap pages), not of a list of
        # random UUIDs: its own short transaction under autocommit.
        deleted, _ = rest.filter(created_at__lte=stamps[-1]).delete()
        removed += deleted
        batches += 1
        oldest = oldest or stamps[0]
        newest = stamps[-1]
        if len(stamps) < pace.batch_size:
            complete = True
            break
        if pace.time_budget is not None and time.monotonic() - started >= pace.time_budget:
            break
        pause = max(pace.min_rest, (time.monotonic() - batch_started) * pace.rest_ratio)
        sleep(pause)
        rested += pause
    spent = time.monotonic() - started
    record_event(
        event_type=EventType.EVENTS_PURGED,
        subtype=EventSubtype.SUCCESS if complete else EventSubtype.WARNING,
        component=Component.SCHEDULER,
        message=(f"Retention removed {removed} events created before {cutoff:%Y-%m-%d %H:%M} UTC "
                 f"(security events before {security_cutoff:%Y-%m-%d %H:%M} UTC) in {batches} batches"
                 + ("" if complete else "; stopped at its time budget, the rest follows")),
        # retention_days: what was applied to ordinary events (the request, raised to the floor).
        metadata={"removed": removed, "batches": batches, "complete": complete, "cutoff": cutoff.isoformat(),
                  "retention_days": max(retention_days, EVENT_RETENTION_FLOOR_DAYS),
                  "oldest_removed": oldest.isoformat() if oldest else None,
                  "newest_removed": newest.isoformat() if newest else None,
                  "seconds": round(spent, 3), "rested_seconds": round(rested, 3)},
        standalone=True,  # the batches committed one by one; this sums them up
    )
    return PurgeOutcome(removed=removed, batches=batches, complete=complete)


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
