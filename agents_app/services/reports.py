"""What agents send in: scan reports, system reports and agent-side events.

An updates report is the full current truth for one package type on one agent.
It is applied in one transaction with a fixed number of statements, whatever
its size: the rows travel as one JSON parameter and the database unpacks them
(jsonb_to_recordset on PostgreSQL, json_each on SQLite) into one upsert.
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

_POSTGRES_UPSERT = f"""
INSERT INTO {TABLE} (agent_id, package_type, name, {", ".join(REPORTED_COLUMNS)},
                     status, dependencies, last_report_id, first_seen_at, last_seen_at, status_changed_at)
SELECT %(agent)s, %(package_type)s, r.name, r.current_version, r.available_version, r.severity, r.is_security,
       r.repository, r.size_bytes, r.cve_ids, r.kb_ids, r.metadata, r.source_name,
       %(pending)s, '[]'::jsonb, %(report_id)s, %(now)s, %(now)s, %(now)s
FROM jsonb_to_recordset(%(rows)s::jsonb) AS r(
    name text, current_version text, available_version text, severity text, is_security boolean,
    repository text, size_bytes bigint, cve_ids jsonb, kb_ids jsonb, metadata jsonb, source_name text)
ON CONFLICT (agent_id, package_type, name) DO UPDATE SET
    {", ".join(f"{column} = EXCLUDED.{column}" for column in REPORTED_COLUMNS)},
    last_report_id = EXCLUDED.last_report_id, last_seen_at = EXCLUDED.last_seen_at
"""

_SQLITE_UPSERT = f"""
INSERT INTO {TABLE} (agent_id, package_type, name, {", ".join(REPORTED_COLUMNS)},
                     status, dependencies, last_report_id, first_seen_at, last_seen_at, status_changed_at)
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


def _claim_report(agent: Agent, report_id: str, kind: str) -> bool:
    try:
        with transaction.atomic():
            IngestedReport.objects.create(agent=agent, report_id=report_id, kind=kind)
    except IntegrityError:
        return False
    return True


def _source_name(package_type: str, update: dict[str, Any]) -> str:
    """The update's metadata["source"] when it is a package name of this type other than the update's own;
    else "". The agent's word is checked like its package names, but a bad one only goes unused."""
    source = (update.get("metadata") or {}).get("source")
    if source == update["name"] or package_name_problem(package_type, source) is not None:
        return ""
    return source


def _upsert(agent: Agent, package_type: str, report_id: str, rows: list[dict[str, Any]], now: datetime) -> None:
    vendor = connection.vendor
    params = {
        "package_type": package_type,
        "pending": UpdateStatus.PENDING.value,
        "report_id": report_id,
        "rows": json.dumps([{**row, "source_name": _source_name(package_type, row)} for row in rows]),
    }
    if vendor == "postgresql":
        sql, params["agent"], params["now"] = _POSTGRES_UPSERT, agent.pk, now
    elif vendor == "sqlite":
        # Django stores UUIDs as 32 hex characters and datetimes as ISO text on SQLite.
        sql, params["agent"] = _SQLITE_UPSERT, agent.pk.hex
        params["now"] = connection.ops.adapt_datetimefield_value(now)
    else:  # pragma: no cover - RedFlag supports PostgreSQL and SQLite
        raise NotImplementedError(f"report ingestion does not support {vendor}")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def updates_report_ingest(*, agent: Agent, report_id: str, package_type: str, updates: list[dict[str, Any]],
                          not_checked: list[str], now: datetime | None = None) -> dict[str, int] | None:
    """Apply a full snapshot; None when this report id was applied before (nothing changes)."""
    now = now or timezone.now()
    with transaction.atomic():
        if not _claim_report(agent, report_id, "updates"):
            return None
        if updates:
            _upsert(agent, package_type, report_id, updates, now)
        mine = PackageUpdate.objects.filter(agent=agent, package_type=package_type)
        # Back in the snapshot after being closed or installed: a new update to act on.
        reopened = mine.filter(last_report_id=report_id, status__in=(UpdateStatus.CLOSED, UpdateStatus.INSTALLED)
                               ).update(status=UpdateStatus.PENDING, dependencies=[], status_changed_at=now)
        absent = mine.exclude(last_report_id=report_id)
        # An approved or installing update that is gone: the version moved on.
        installed = absent.filter(status__in=(UpdateStatus.APPROVED, UpdateStatus.INSTALLING,
                                              UpdateStatus.PENDING_DEPENDENCIES)
                                  ).update(status=UpdateStatus.INSTALLED, status_changed_at=now)
        closed = absent.filter(status__in=(UpdateStatus.PENDING, UpdateStatus.FAILED)).update(
            status=UpdateStatus.CLOSED, status_changed_at=now
        )
        security = sum(1 for row in updates if row["is_security"])
        record_event(
            event_type=EventType.AGENT_SCAN,
            subtype=EventSubtype.SUCCESS,
            component=Component.AGENT,
            severity=Severity.INFO,
            message=f"{package_type} scan on {agent.hostname}: {len(updates)} update(s), {security} security",
            agent=agent,
            metadata={"report_id": report_id, "package_type": package_type, "updates": len(updates),
                      "security": security, "closed": closed, "installed": installed, "reopened": reopened,
                      "not_checked": not_checked[:50]},
            actor=agent_actor(agent),
        )
    return {"updates": len(updates), "closed": closed, "installed": installed, "reopened": reopened}


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
