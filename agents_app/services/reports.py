"""What agents send in: scan reports, system reports and agent-side events.

An updates report is the full current truth for one package type on one agent.
It is applied in one transaction with a fixed number of statements, whatever
its size: the rows travel as one JSON parameter and the database unpacks them
(jsonb_to_recordset on PostgreSQL, json_each on SQLite) into one upsert. On
PostgreSQL that takes two statements (claim the report id and upsert; then
reopen, install or close by report id), on SQLite five.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from agent_client.protocol import package_name_problem
from agents_app.choices import UpdateStatus
from agents_app.models import Agent, IngestedReport, PackageUpdate
from events_app.choices import Component, EventSubtype, EventType, Origin, Severity
from events_app.models import SystemEvent
from events_app.services import agent_actor, record_event
from redflag.api.throttling import budget_take
from redflag.errors import BudgetExhausted, Conflict
from redflag.models import ServerSettings

TABLE = PackageUpdate._meta.db_table
# Refreshed by every report; status, approvals and dependencies are not.
REPORTED_COLUMNS = ("current_version", "available_version", "severity", "is_security", "repository",
                    "size_bytes", "cve_ids", "kb_ids", "metadata", "source_name")
# Back in the snapshot after being closed or installed: a new update to act on (pending again).
REOPENED = (UpdateStatus.CLOSED, UpdateStatus.INSTALLED)
# Gone from the snapshot: an approved or installing update was installed (the version moved on); one only
# waiting is closed. Ignored ones stay ignored.
GONE_INSTALLED = (UpdateStatus.APPROVED, UpdateStatus.INSTALLING, UpdateStatus.PENDING_DEPENDENCIES)
GONE_CLOSED = (UpdateStatus.PENDING, UpdateStatus.FAILED)


def _sql_list(statuses) -> str:
    return ", ".join(f"'{status.value}'" for status in statuses)  # TextChoices values: no quoting needed


def _settle(name: str, status: UpdateStatus, was: tuple[UpdateStatus, ...], in_report: bool) -> str:
    """One UPDATE of _POSTGRES_SETTLE: this package type's rows in the report (or not in it) that were ``was``."""
    extra = ", \"dependencies\" = '[]'" if status == UpdateStatus.PENDING else ""
    return f"""{name} AS (
    UPDATE "{TABLE}" SET "status" = '{status.value}'{extra}, "status_changed_at" = %(now)s
    WHERE agent_id = %(agent)s AND package_type = %(package_type)s AND status IN ({_sql_list(was)})
      AND last_report_id {"=" if in_report else "<>"} %(report_id)s
    RETURNING 1
)"""


_INSERT_ROWS = f"""
INSERT INTO "{TABLE}" (agent_id, package_type, name, {", ".join(REPORTED_COLUMNS)},
                       status, dependencies, last_report_id, first_seen_at, last_seen_at, status_changed_at)
"""

# 1. Claim the report id and upsert its rows: no row changes when the id was claimed before.
_POSTGRES_UPSERT = f"""
WITH claim AS (
    INSERT INTO "{IngestedReport._meta.db_table}" (agent_id, report_id, kind, received_at)
    VALUES (%(agent)s, %(report_id)s, 'updates', %(now)s)
    ON CONFLICT (agent_id, report_id) DO NOTHING
    RETURNING 1
), report AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
        name text, current_version text, available_version text, severity text, is_security boolean,
        repository text, size_bytes bigint, cve_ids jsonb, kb_ids jsonb, metadata jsonb, source_name text)
), upserted AS (
    {_INSERT_ROWS}
    SELECT %(agent)s, %(package_type)s, r.name, r.current_version, r.available_version, r.severity, r.is_security,
           r.repository, r.size_bytes, r.cve_ids, r.kb_ids, r.metadata, r.source_name,
           '{UpdateStatus.PENDING.value}', '[]'::jsonb, %(report_id)s, %(now)s, %(now)s, %(now)s
    FROM report AS r
    WHERE EXISTS (SELECT FROM claim)
    ON CONFLICT (agent_id, package_type, name) DO UPDATE SET
        {", ".join(f"{column} = EXCLUDED.{column}" for column in REPORTED_COLUMNS)},
        last_report_id = EXCLUDED.last_report_id, last_seen_at = EXCLUDED.last_seen_at
)
SELECT EXISTS (SELECT FROM claim)
"""

# 2. Settle the statuses by the rows' report id (what statement 1 wrote): no join, linear in the agent's rows
#    of this type whatever the planner guesses. The three touch disjoint rows.
_POSTGRES_SETTLE = f"""
WITH {_settle("reopened", UpdateStatus.PENDING, REOPENED, in_report=True)},
{_settle("installed", UpdateStatus.INSTALLED, GONE_INSTALLED, in_report=False)},
{_settle("closed", UpdateStatus.CLOSED, GONE_CLOSED, in_report=False)}
SELECT (SELECT count(*) FROM reopened), (SELECT count(*) FROM installed), (SELECT count(*) FROM closed)
"""

_SQLITE_UPSERT = f"""
{_INSERT_ROWS}
SELECT %(agent)s, %(package_type)s, json_extract(value, '$.name'), json_extract(value, '$.current_version'),
       json_extract(value, '$.available_version'), json_extract(value, '$.severity'),
       json_extract(value, '$.is_security'), json_extract(value, '$.repository'),
       json_extract(value, '$.size_bytes'), json(json_extract(value, '$.cve_ids')),
       json(json_extract(value, '$.kb_ids')), json(json_extract(value, '$.metadata')),
       json_extract(value, '$.source_name'),
       %(pending)s, '[]', %(report_id)s, %(now)s, %(now)s, %(now)s
FROM json_each(%(rows)s) WHERE true
ON CONFLICT (agent_id, package_type, name) DO UPDATE SET
    {", ".join(f"{column} = excluded.{column}" for column in REPORTED_COLUMNS)},
    last_report_id = excluded.last_report_id, last_seen_at = excluded.last_seen_at
"""


def _source_name(package_type: str, update: dict[str, Any]) -> str:
    """The update's metadata["source"] when it is a package name of this type other than the update's own;
    else "". The agent's word is checked like its package names, but a bad one only goes unused."""
    source = (update.get("metadata") or {}).get("source")
    if source is None or source == update["name"] or package_name_problem(package_type, source) is not None:
        return ""
    return source


def _rows_json(package_type: str, rows: list[dict[str, Any]]) -> str:
    return json.dumps([{**row, "source_name": _source_name(package_type, row)} for row in rows])


def _ingest_postgresql(agent: Agent, package_type: str, report_id: str, rows: list[dict[str, Any]],
                       now: datetime) -> dict[str, int] | None:
    """Two statements, whatever the report's size; None (and no change) when the report id was claimed before."""
    params = {"agent": agent.pk, "package_type": package_type, "report_id": report_id, "now": now,
              "rows": _rows_json(package_type, rows)}
    with connection.cursor() as cursor:
        cursor.execute(_POSTGRES_UPSERT, params)
        if not cursor.fetchone()[0]:
            return None
        cursor.execute(_POSTGRES_SETTLE, params)
        reopened, installed, closed = cursor.fetchone()
    return {"closed": closed, "installed": installed, "reopened": reopened}


def _ingest_sqlite(agent: Agent, package_type: str, report_id: str, rows: list[dict[str, Any]],
                   now: datetime) -> dict[str, int] | None:
    """The same steps one statement each (SQLite has no data-modifying WITH)."""
    try:
        with transaction.atomic():
            IngestedReport.objects.create(agent=agent, report_id=report_id, kind="updates")
    except IntegrityError:
        return None
    if rows:
        # Django stores UUIDs as 32 hex characters and datetimes as ISO text on SQLite.
        params = {"agent": agent.pk.hex, "package_type": package_type, "report_id": report_id,
                  "now": connection.ops.adapt_datetimefield_value(now), "rows": _rows_json(package_type, rows),
                  "pending": UpdateStatus.PENDING.value}
        with connection.cursor() as cursor:
            cursor.execute(_SQLITE_UPSERT, params)
    mine = PackageUpdate.objects.filter(agent=agent, package_type=package_type)
    reopened = mine.filter(last_report_id=report_id, status__in=REOPENED).update(
        status=UpdateStatus.PENDING, dependencies=[], status_changed_at=now)
    absent = mine.exclude(last_report_id=report_id)
    installed = absent.filter(status__in=GONE_INSTALLED).update(status=UpdateStatus.INSTALLED, status_changed_at=now)
    closed = absent.filter(status__in=GONE_CLOSED).update(status=UpdateStatus.CLOSED, status_changed_at=now)
    return {"closed": closed, "installed": installed, "reopened": reopened}


def updates_report_ingest(*, agent: Agent, report_id: str, package_type: str, updates: list[dict[str, Any]],
                          not_checked: list[str], now: datetime | None = None) -> dict[str, int] | None:
    """Apply a full snapshot; None when this report id was applied before (nothing changes)."""
    now = now or timezone.now()
    vendor = connection.vendor
    if vendor == "postgresql":
        ingest = _ingest_postgresql
    elif vendor == "sqlite":
        ingest = _ingest_sqlite
    else:  # pragma: no cover - RedFlag supports PostgreSQL and SQLite
        raise NotImplementedError(f"report ingestion does not support {vendor}")
    with transaction.atomic():
        counts = ingest(agent, package_type, report_id, updates, now)
        if counts is None:
            return None
        security = sum(1 for row in updates if row["is_security"])
        record_event(
            event_type=EventType.AGENT_SCAN,
            subtype=EventSubtype.SUCCESS,
            component=Component.AGENT,
            severity=Severity.INFO,
            message=f"{package_type} scan on {agent.hostname}: {len(updates)} update(s), {security} security",
            agent=agent,
            metadata={"report_id": report_id, "package_type": package_type, "updates": len(updates),
                      "security": security, **counts, "not_checked": not_checked[:50]},
            actor=agent_actor(agent),
        )
    return {"updates": len(updates), **counts}


def system_report_ingest(*, agent: Agent, report: dict[str, Any], now: datetime | None = None) -> None:
    """Store the latest system facts; the reboot flag clears only when the agent reports it gone."""
    now = now or timezone.now()
    report = dict(report)
    tags = report.pop("tags", None)  # absent (an older agent): the stored ones stay
    changes = {
        "system_info": report,
        "system_reported_at": now,
        "reboot_required": report["reboot_required"],
        "reboot_reason": report.get("reboot_reason", "")[:255] if report["reboot_required"] else "",
    }
    for field in ("os_name", "os_version", "kernel", "arch", "hostname"):
        if report.get(field):
            changes[field] = report[field]
    if report.get("boot_time"):
        changes["last_boot_at"] = report["boot_time"]
    if tags is not None:
        changes["reported_tags"] = list(tags)
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(**changes)
        if tags is not None and list(tags) != list(agent.reported_tags or []):
            # Group membership by tag follows these: say when they change.
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.INFO,
                component=Component.AGENT,
                message=f"{agent.hostname} reports the tags {', '.join(tags) or '(none)'}",
                agent=agent,
                metadata={"reported_tags": list(tags), "previous": list(agent.reported_tags or [])},
                actor=agent_actor(agent),
            )
        if agent.reboot_required and not report["reboot_required"]:
            record_event(
                event_type=EventType.AGENT_REBOOT,
                subtype=EventSubtype.SUCCESS,
                component=Component.AGENT,
                message=f"{agent.hostname} no longer needs a reboot",
                agent=agent,
                metadata={"previous_reason": agent.reboot_reason},
                actor=agent_actor(agent),
            )
        elif report["reboot_required"] and not agent.reboot_required:
            record_event(
                event_type=EventType.AGENT_REBOOT,
                subtype=EventSubtype.WARNING,
                severity=Severity.WARNING,
                component=Component.AGENT,
                message=f"{agent.hostname} needs a reboot: {changes['reboot_reason'] or 'no reason given'}",
                agent=agent,
                metadata={"reason": changes["reboot_reason"]},
                actor=agent_actor(agent),
            )


def agent_events_ingest(*, agent: Agent, events: list[dict[str, Any]], now: datetime) -> int:
    """Store agent-side events, idempotent by the agent's event id. Returns how many were new.

    Each event is stored as the agent's own account (origin agent, its claimed time kept as
    reported_at, ordered by when the server received it). Events count against the agent's budget
    (ServerSettings.rate_agent_events); past it the whole request is refused with 429 and
    Retry-After, and one warning per window records the overflow.

    One INSERT per new event (SystemEvent.save gives each its insertion ``seq`` for the live
    stream, which bulk_create would leave empty). A concurrent retry of the same batch that
    commits first makes this one a 409; the agent retries and finds them known.
    """
    wait, first_refusal = budget_take(bucket="agent_events", identity=str(agent.pk), amount=len(events))
    if wait is not None:
        if first_refusal:  # once per window, not once per refused request
            record_event(
                event_type=EventType.AGENT_CHECKIN, subtype=EventSubtype.WARNING, severity=Severity.WARNING,
                component=Component.SECURITY, agent=agent,
                message=f"{agent.hostname} sent more events than its budget allows; refusing them for "
                        f"{int(wait)} s",
                metadata={"reason": "event_budget_exhausted", "refused": len(events),
                          "budget": ServerSettings.current().rate_for("agent_events")},
                standalone=True,  # a refusal changes nothing
            )
        raise BudgetExhausted(wait=wait)
    ids = [event["id"] for event in events]
    try:
        with transaction.atomic():
            return _store_agent_events(agent, events, ids, now)
    except IntegrityError:
        raise Conflict("These events are being stored by another request; retry.") from None


def _store_agent_events(agent: Agent, events: list[dict[str, Any]], ids: list, now: datetime) -> int:
    known = set(SystemEvent.objects.filter(pk__in=ids).values_list("pk", flat=True))
    fresh = [
        SystemEvent(
            id=event["id"],
            agent=agent,
            hostname=agent.hostname,
            event_type=event["event_type"],
            event_subtype=event["event_subtype"],
            severity=event["severity"],
            component=event["component"],
            message=event["message"],
            metadata=event["metadata"],
            actor=agent_actor(agent),
            origin=Origin.AGENT,
            created_at=now,  # the history orders by when the server learnt of it
            reported_at=event["occurred_at"],
        )
        for event in events
        if event["id"] not in known
    ]
    for event in fresh:
        event.save(force_insert=True)
    return len(fresh)
