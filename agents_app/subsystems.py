"""Subsystem configuration across the fleet: the bulk write path."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from django.db import transaction
from django.db.models import F

from agents_app.models import Agent, AgentSubsystem
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event


def subsystems_configure(*, subsystems, changes: dict[str, Any], actor: str) -> int:
    """Set enabled / auto_run / interval_minutes on many subsystems in one transaction.

    Each affected agent's config_version goes up once (its agent re-fetches its
    config at the next check-in) and gets one config_changed event. Returns how
    many subsystems actually changed.
    """
    unknown = set(changes) - set(AgentSubsystem.CONFIG_FIELDS)
    if unknown:
        raise ValueError(f"not a subsystem setting: {', '.join(sorted(unknown))}")
    if "interval_minutes" in changes and int(changes["interval_minutes"]) < 1:
        raise ValueError("interval_minutes must be at least 1")
    with transaction.atomic():
        rows = [row for row in subsystems.select_related("agent").select_for_update(of=("self",))
                if any(getattr(row, field) != value for field, value in changes.items())]
        if not rows:
            return 0
        AgentSubsystem.objects.filter(pk__in=[row.pk for row in rows]).update(**changes)
        by_agent: dict[Agent, list[str]] = defaultdict(list)
        for row in rows:
            by_agent[row.agent].append(row.name)
        Agent.objects.filter(pk__in=[agent.pk for agent in by_agent]).update(config_version=F("config_version") + 1)
        for agent, names in by_agent.items():
            record_event(
                event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                message=f"Subsystems of {agent.hostname} changed: {', '.join(sorted(names))}", agent=agent,
                metadata={"subsystems": sorted(names), "changes": changes}, actor=actor,
            )
    return len(rows)
