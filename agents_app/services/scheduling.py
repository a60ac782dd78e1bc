"""Which subsystem scans are due, and their commands: one set-based function.

It runs from a django-q2 schedule over the whole fleet, and in the check-in
path for the asking agent (so heartbeat agents get due work at once).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from agents_app.choices import CommandSource
from agents_app.models import Agent, AgentSubsystem, Command
from agents_app.services.commands import command_build, dedupe_key
from agents_app.services.subsystems import scan_command
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event
from redflag.models import ServerSettings
from tokens_app.signing import primary_key

SWEEP_LIMIT = 5000


def schedule_due_scans(*, now: datetime | None = None, agent_ids: Iterable | None = None,
                       limit: int = SWEEP_LIMIT) -> int:
    """Create the due scan commands; returns how many were created.

    1. Lock the due subsystems (SKIP LOCKED on PostgreSQL, so concurrent sweeps
       split the work; SQLite serializes writers).
    2. Skip an agent at max_pending_commands, and a kind already open for it.
    3. Create the signed commands in one statement; the partial unique index on
       open commands has the last word against any race.
    4. Advance next_run_at only for subsystems whose command now exists, so a
       failed creation never skips a run.
    """
    now = now or timezone.now()
    if agent_ids is not None:
        agent_ids = list(agent_ids)
        # The check-in path: one cheap read when nothing is due, no transaction.
        if not AgentSubsystem.objects.due(now).filter(agent_id__in=agent_ids).exists():
            return 0
    with transaction.atomic():
        due = AgentSubsystem.objects.due(now).filter(agent__revoked_at__isnull=True)
        if agent_ids is not None:
            due = due.filter(agent_id__in=agent_ids)
        if connection.features.has_select_for_update_skip_locked:
            due = due.select_for_update(skip_locked=True, of=("self",))
        due = list(due.select_related("agent").order_by(F("next_run_at").asc(nulls_first=True))[:limit])
        if not due:
            return 0
        agent_set = {subsystem.agent_id for subsystem in due}
        open_commands = Command.objects.open().filter(agent_id__in=agent_set)
        open_counts = dict(open_commands.values("agent_id").annotate(n=Count("id")).values_list("agent_id", "n"))
        open_keys = set(open_commands.values_list("agent_id", "dedupe_key"))
        max_pending = ServerSettings.current().max_pending_commands
        signing_key = primary_key()  # once per sweep, not per command

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
                source=CommandSource.SCHEDULER, now=now, key=signing_key,
            )))
        if not planned:
            return 0
        Command.objects.bulk_create([command for _, command in planned], ignore_conflicts=True)
        created = set(Command.objects.filter(pk__in=[command.pk for _, command in planned])
                      .values_list("pk", flat=True))
        advance: dict[int, list[int]] = defaultdict(list)
        for subsystem, command in planned:
            if command.pk in created:
                advance[subsystem.interval_minutes].append(subsystem.pk)
        for minutes, pks in advance.items():
            AgentSubsystem.objects.filter(pk__in=pks).update(next_run_at=now + timedelta(minutes=minutes))
        if created:
            agents = {subsystem.agent_id for subsystem, command in planned if command.pk in created}
            record_event(
                event_type=EventType.COMMAND_CREATED,
                subtype=EventSubtype.INITIATED,
                component=Component.SCHEDULER,
                message=f"Scheduled {len(created)} scan(s) for {len(agents)} agent(s)",
                agent=Agent.objects.get(pk=next(iter(agents))) if len(agents) == 1 else None,
                metadata={"commands": len(created), "agents": len(agents), "source": CommandSource.SCHEDULER},
            )
    return len(created)
