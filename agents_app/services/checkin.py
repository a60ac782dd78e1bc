"""One check-in: the agent is alive, its heartbeat is reconciled, its due scans are created and up to
DELIVERY_BATCH signed commands are handed over. The view only validates and serialises."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.utils import timezone

from agents_app.models import Agent, Command
from agents_app.services.capabilities import agent_capabilities_report
from agents_app.services.commands import commands_deliver
from agents_app.services.heartbeat import HEARTBEAT_POLL_SECONDS, heartbeat_active, heartbeat_reconcile
from agents_app.services.scheduling import schedule_due_scans


@dataclass(frozen=True)
class CheckinReply:
    commands: list[Command]
    config_version: int
    poll_interval_seconds: int
    heartbeat_active: bool
    heartbeat_until: datetime | None
    server_time: datetime


def agent_alive(*, agent: Agent, agent_version: str | None, metrics: dict[str, Any], now: datetime) -> None:
    """Record that the agent is alive: one UPDATE, no event (check-ins are not audit news)."""
    changes: dict[str, Any] = {"last_seen_at": now, "metrics": metrics}
    if agent_version:
        changes["agent_version"] = agent_version
    Agent.objects.filter(pk=agent.pk).update(**changes)
    for field, value in changes.items():
        setattr(agent, field, value)


def checkin_handle(*, agent: Agent, agent_version: str | None, metrics: dict[str, Any],
                   heartbeat_reported: bool | None, capabilities: list[str] | None = None,
                   now: datetime | None = None) -> CheckinReply:
    """The check-in, in order:

    1. the agent is alive (last seen, version, metrics);
    2. capabilities it reports (once per agent start) that differ from the known ones change its
       subsystems, before anything is scheduled;
    3. a heartbeat the agent no longer reports is cleared;
    4. this agent's due scans become commands (so an agent in heartbeat mode gets them at once);
    5. its oldest pending commands are claimed and handed over;
    6. the reply says how soon to come back: 5 s in heartbeat mode, else its poll interval.
    """
    now = now or timezone.now()
    agent_alive(agent=agent, agent_version=agent_version, metrics=metrics, now=now)
    if capabilities is not None:
        agent_capabilities_report(agent=agent, capabilities=capabilities)
    heartbeat_reconcile(agent=agent, reported_active=heartbeat_reported, now=now)
    schedule_due_scans(now=now, agent_ids=[agent.pk])
    commands = commands_deliver(agent=agent, now=now)
    active = heartbeat_active(agent, now)
    return CheckinReply(
        commands=commands,
        config_version=agent.config_version,
        poll_interval_seconds=HEARTBEAT_POLL_SECONDS if active else agent.effective_poll_interval_seconds,
        heartbeat_active=active,
        heartbeat_until=agent.heartbeat_until if active else None,
        server_time=now,
    )
