"""Heartbeat mode: the agent polls every 5 s until ``heartbeat_until``.

The server's ``heartbeat_until`` follows what the agent acknowledged: it is
set when an enable_heartbeat command succeeds and cleared when a
disable_heartbeat succeeds, expires, or the agent stops reporting it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db import transaction

from agents_app.choices import CommandStatus, CommandType
from agents_app.models import Agent, Command
from agents_app.services.commands import CommandAlreadyOpen, command_create
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.models import ServerSettings

HEARTBEAT_POLL_SECONDS = 5


def heartbeat_active(agent: Agent, now: datetime) -> bool:
    return bool(agent.heartbeat_until and agent.heartbeat_until > now)


def next_poll_expected(agent: Agent, now: datetime) -> tuple[datetime | None, datetime | None, bool]:
    """When the agent's next check-in is due: (earliest, latest, heartbeat), or (None, None, False) for an
    agent never seen. Earliest is last seen + the poll interval (5 s in heartbeat mode); the agent adds up
    to 10 % jitter, at most a minute (agent_client.runner.poll_delay), so only past ``latest`` is it late."""
    if agent.last_seen_at is None:
        return None, None, False
    heartbeat = heartbeat_active(agent, now)
    interval = HEARTBEAT_POLL_SECONDS if heartbeat else agent.effective_poll_interval_seconds
    earliest = agent.last_seen_at + timedelta(seconds=interval)
    jitter = 0 if heartbeat else min(60.0, interval * 0.1)
    return earliest, earliest + timedelta(seconds=jitter), heartbeat


def heartbeat_enable(*, agent: Agent, minutes: int | None, source: str, actor: str = SYSTEM_ACTOR,
                     created_by=None, bulk_operation=None) -> Command | None:
    """Queue enable_heartbeat; None when one is already waiting for this agent."""
    minutes = minutes or ServerSettings.current().heartbeat_duration_minutes
    try:
        return command_create(agent=agent, command_type=CommandType.ENABLE_HEARTBEAT,
                              params={"duration_minutes": minutes}, source=source, actor=actor,
                              created_by=created_by, bulk_operation=bulk_operation)
    except CommandAlreadyOpen:
        return None


def heartbeat_before_operation(*, agent: Agent, now: datetime, source: str, actor: str) -> None:
    """Heartbeat on before dry-runs, installs, reboots and agent updates (ServerSettings)."""
    if ServerSettings.current().heartbeat_before_operations and not heartbeat_active(agent, now):
        heartbeat_enable(agent=agent, minutes=None, source=source, actor=actor)


def heartbeat_acknowledged(*, command: Command, now: datetime) -> None:
    """An enable/disable_heartbeat command succeeded: the agent's state is now the server's."""
    if command.command_type == CommandType.ENABLE_HEARTBEAT:
        until = now + timedelta(minutes=int(command.params.get("duration_minutes") or 10))
    else:
        until = None
    Agent.objects.filter(pk=command.agent_id).update(heartbeat_until=until)


def heartbeat_reconcile(*, agent: Agent, reported_active: bool | None, now: datetime) -> None:
    """Clear a heartbeat the agent no longer reports (it restarted, say), and record it.

    Only when no enable_heartbeat is on its way: a just-queued heartbeat has not
    reached the agent yet.
    """
    if reported_active is not False or not heartbeat_active(agent, now):
        return
    in_flight = Command.objects.filter(
        agent=agent, command_type=CommandType.ENABLE_HEARTBEAT,
        status__in=(CommandStatus.PENDING, CommandStatus.SENT, CommandStatus.RUNNING),
    ).exists()
    if in_flight:
        return
    with transaction.atomic():
        if Agent.objects.filter(pk=agent.pk, heartbeat_until=agent.heartbeat_until).update(heartbeat_until=None):
            record_event(
                event_type=EventType.AGENT_CHECKIN,
                subtype=EventSubtype.WARNING,
                severity=Severity.WARNING,
                component=Component.AGENT,
                message=f"{agent.hostname} no longer reports heartbeat mode; cleared on the server",
                agent=agent,
                metadata={"heartbeat_until": agent.heartbeat_until.isoformat()},
            )
    agent.heartbeat_until = None
