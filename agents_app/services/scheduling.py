"""Which subsystem scans are due, and their commands: one set-based function.

It runs from a django-q2 schedule over the whole fleet, and in the check-in
path for the asking agent (so heartbeat agents get due work at once).

The commands are stored unsigned and signed as they are delivered
(agents_app.services.commands.commands_deliver): planning 200,000 scans is
then one SQL statement per call on PostgreSQL, with no Python per row.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from agents_app.choices import OPEN_COMMAND_STATUSES, SUBSYSTEM_SCAN, CommandSource, CommandStatus, SubsystemName
from agents_app.models import Agent, AgentSubsystem, Command
from agents_app.services.commands import COMMAND_LIFETIME, command_build, dedupe_key
from agents_app.services.subsystems import scan_command
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event
from redflag.models import ServerSettings

SWEEP_LIMIT = 5000

assert set(SUBSYSTEM_SCAN) == set(SubsystemName.values), "every subsystem has a scan (else it stays due forever)"


@dataclass(frozen=True)
class Scheduled:
    """What one sweep created: how many commands, for how many agents (and which, when one)."""

    commands: int
    agents: int
    agent_id: uuid.UUID | str | None


def schedule_due_scans(*, now: datetime | None = None, agent_ids: Iterable | None = None,
                       limit: int = SWEEP_LIMIT) -> int:
    """Create the due scan commands; returns how many were created.

    1. Lock the due subsystems of agents that are not revoked, oldest due first, at most
       ``limit`` (SKIP LOCKED on PostgreSQL, so concurrent sweeps split the work; SQLite
       serializes writers).
    2. Skip a kind already open for the agent, and stop at the agent's max_pending_commands.
    3. Create the commands, unsigned (signed at delivery); the partial unique index on open
       commands has the last word against any race (ON CONFLICT DO NOTHING).
    4. Advance next_run_at only for subsystems whose command now exists, so a failed or lost
       creation never skips a run.
    5. One command_created event for the whole sweep.

    PostgreSQL does steps 1–4 in one statement (``_create_in_sql``); SQLite in Python
    (``_create_in_python``), with the same rules.
    """
    now = now or timezone.now()
    if agent_ids is not None:
        agent_ids = list(agent_ids)
        # The check-in path: one cheap read when nothing is due, no transaction.
        if not AgentSubsystem.objects.due(now).filter(agent_id__in=agent_ids).exists():
            return 0
    max_pending = ServerSettings.current().max_pending_commands
    create = _create_in_sql if connection.vendor == "postgresql" else _create_in_python
    with transaction.atomic():
        scheduled = create(now=now, agent_ids=agent_ids, limit=limit, max_pending=max_pending)
        if scheduled.commands:
            record_event(
                event_type=EventType.COMMAND_CREATED,
                subtype=EventSubtype.INITIATED,
                component=Component.SCHEDULER,
                message=f"Scheduled {scheduled.commands} scan(s) for {scheduled.agents} agent(s)",
                agent=Agent.objects.get(pk=scheduled.agent_id) if scheduled.agents == 1 else None,
                metadata={"commands": scheduled.commands, "agents": scheduled.agents,
                          "source": CommandSource.SCHEDULER},
            )
    return scheduled.commands


def _scan_kinds() -> dict[str, list]:
    """SUBSYSTEM_SCAN as parallel arrays for the statement: name, type, params, params with
    verify (package scans of agents with verify_scans), dedupe key."""
    kinds: dict[str, list] = {"names": [], "types": [], "params": [], "verified": [], "keys": []}
    for name, (command_type, params) in SUBSYSTEM_SCAN.items():
        verified = {**params, "verify": True} if "package_type" in params else params
        kinds["names"].append(str(name))
        kinds["types"].append(str(command_type))
        kinds["params"].append(json.dumps({key: str(value) for key, value in params.items()}))
        kinds["verified"].append(json.dumps({key: value if isinstance(value, bool) else str(value)
                                             for key, value in verified.items()}))
        kinds["keys"].append(dedupe_key(command_type, params))
    return kinds


# Steps 1–4 of schedule_due_scans in one statement. ``due`` locks (SKIP LOCKED) the oldest due
# subsystems, never-run ones first: two reads of the partial index subsystem_due (IS NULL, then in
# next_run_at order), read only as far as ``limit`` rows, so a call costs its batch, not the whole
# backlog (one ORDER BY … NULLS FIRST would sort every due row: the index is NULLS LAST). never_run's
# ORDER BY … DESC NULLS FIRST orders nothing (all NULL): it is the index read backwards, so the planner
# takes the index even when its statistics still think most rows are NULL (after a mass enrolment). ``planned``
# drops kinds already open and numbers each agent's new commands after its open ones
# (max_pending_commands); ``created`` inserts, the partial unique index deciding any race;
# ``advanced`` moves next_run_at only where ``created`` returned the command.
_SWEEP_SQL = """
WITH kinds AS (
    SELECT * FROM unnest(%(names)s::text[], %(types)s::text[], %(params)s::jsonb[], %(verified)s::jsonb[],
                         %(keys)s::text[]) AS k(name, command_type, params, verified_params, dedupe_key)
),
never_run AS (
    SELECT s.id, s.agent_id, s.name, s.interval_minutes, s.next_run_at, a.verify_scans
    FROM {subsystem} s JOIN {agent} a ON a.id = s.agent_id
    WHERE s.enabled AND s.auto_run AND s.next_run_at IS NULL AND a.revoked_at IS NULL {agent_filter}
    ORDER BY s.next_run_at DESC NULLS FIRST
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
),
overdue AS (
    SELECT s.id, s.agent_id, s.name, s.interval_minutes, s.next_run_at, a.verify_scans
    FROM {subsystem} s JOIN {agent} a ON a.id = s.agent_id
    WHERE s.enabled AND s.auto_run AND s.next_run_at <= %(now)s AND a.revoked_at IS NULL {agent_filter}
    ORDER BY s.next_run_at
    LIMIT %(limit)s
    FOR UPDATE OF s SKIP LOCKED
),
due AS (
    SELECT * FROM never_run UNION ALL SELECT * FROM overdue LIMIT %(limit)s
),
open_commands AS (
    SELECT c.agent_id, count(*) AS open_count, array_agg(c.dedupe_key) AS open_keys
    FROM {command} c
    WHERE c.status = ANY(%(open)s::text[]) AND c.agent_id IN (SELECT agent_id FROM due)
    GROUP BY c.agent_id
),
candidates AS (
    SELECT d.id, d.agent_id, d.interval_minutes, k.command_type, k.dedupe_key,
           CASE WHEN d.verify_scans THEN k.verified_params ELSE k.params END AS params,
           COALESCE(o.open_count, 0)
             + row_number() OVER (PARTITION BY d.agent_id ORDER BY d.next_run_at ASC NULLS FIRST, d.id) AS open_after
    FROM due d
    JOIN kinds k ON k.name = d.name
    LEFT JOIN open_commands o ON o.agent_id = d.agent_id
    WHERE o.open_keys IS NULL OR NOT (k.dedupe_key = ANY(o.open_keys))
),
planned AS (
    SELECT * FROM candidates WHERE open_after <= %(max_pending)s
),
created AS (
    INSERT INTO {command} (id, agent_id, command_type, params, dedupe_key, status, source, created_at, issued_at,
                           expires_at, nonce, key_id, signature, result, output)
    SELECT gen_random_uuid(), p.agent_id, p.command_type, p.params, p.dedupe_key, %(pending)s, %(source)s,
           %(now)s, %(issued_at)s, %(expires_at)s, '', '', '', '{{}}'::jsonb, ''
    FROM planned p
    ON CONFLICT DO NOTHING
    RETURNING agent_id, dedupe_key
),
advanced AS (
    UPDATE {subsystem} s SET next_run_at = %(now)s + make_interval(mins => p.interval_minutes)
    FROM planned p JOIN created c ON c.agent_id = p.agent_id AND c.dedupe_key = p.dedupe_key
    WHERE s.id = p.id
    RETURNING s.agent_id
)
SELECT count(*), count(DISTINCT agent_id), min(agent_id::text) FROM advanced
"""


def _create_in_sql(*, now: datetime, agent_ids: list | None, limit: int, max_pending: int) -> Scheduled:
    quote = connection.ops.quote_name
    sql = _SWEEP_SQL.format(
        subsystem=quote(AgentSubsystem._meta.db_table), agent=quote(Agent._meta.db_table),
        command=quote(Command._meta.db_table),
        agent_filter="AND s.agent_id = ANY(%(agent_ids)s::uuid[])" if agent_ids is not None else "",
    )
    params = {
        **_scan_kinds(), "now": now, "limit": limit, "max_pending": max_pending,
        "open": [str(status) for status in OPEN_COMMAND_STATUSES], "pending": str(CommandStatus.PENDING),
        "source": str(CommandSource.SCHEDULER), "issued_at": now.replace(microsecond=0),
        "expires_at": (now + COMMAND_LIFETIME).replace(microsecond=0),
        "agent_ids": [uuid.UUID(str(agent_id)) for agent_id in agent_ids or ()],
    }
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        commands, agents, agent_id = cursor.fetchone()
    return Scheduled(commands=commands, agents=agents, agent_id=agent_id)


def _create_in_python(*, now: datetime, agent_ids: list | None, limit: int, max_pending: int) -> Scheduled:
    """SQLite: the same steps as _SWEEP_SQL, planned in Python and written in three statements."""
    due = AgentSubsystem.objects.due(now).filter(agent__revoked_at__isnull=True)
    if agent_ids is not None:
        due = due.filter(agent_id__in=agent_ids)
    if connection.features.has_select_for_update_skip_locked:
        due = due.select_for_update(skip_locked=True, of=("self",))
    due = list(due.select_related("agent").order_by(F("next_run_at").asc(nulls_first=True), "pk")[:limit])
    if not due:
        return Scheduled(commands=0, agents=0, agent_id=None)
    agent_set = {subsystem.agent_id for subsystem in due}
    open_commands = Command.objects.open().filter(agent_id__in=agent_set)
    open_counts = dict(open_commands.values("agent_id").annotate(n=Count("id")).values_list("agent_id", "n"))
    open_keys = set(open_commands.values_list("agent_id", "dedupe_key"))

    planned: list[tuple[AgentSubsystem, Command]] = []
    for subsystem in due:
        command_type, params = scan_command(subsystem, verify=subsystem.agent.verify_scans)
        key = (subsystem.agent_id, dedupe_key(command_type, params))
        if key in open_keys or open_counts.get(subsystem.agent_id, 0) >= max_pending:
            continue
        open_keys.add(key)
        open_counts[subsystem.agent_id] = open_counts.get(subsystem.agent_id, 0) + 1
        planned.append((subsystem, command_build(
            agent_id=subsystem.agent_id, command_type=command_type, params=params,
            source=CommandSource.SCHEDULER, now=now, signed=False,
        )))
    if not planned:
        return Scheduled(commands=0, agents=0, agent_id=None)
    Command.objects.bulk_create([command for _, command in planned], ignore_conflicts=True)
    created = set(Command.objects.filter(pk__in=[command.pk for _, command in planned])
                  .values_list("pk", flat=True))
    advance: dict[int, list[int]] = defaultdict(list)
    agents = set()
    for subsystem, command in planned:
        if command.pk in created:
            advance[subsystem.interval_minutes].append(subsystem.pk)
            agents.add(subsystem.agent_id)
    for minutes, pks in advance.items():
        AgentSubsystem.objects.filter(pk__in=pks).update(next_run_at=now + timedelta(minutes=minutes))
    return Scheduled(commands=len(created), agents=len(agents), agent_id=next(iter(agents)) if agents else None)
