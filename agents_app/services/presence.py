"""Online/offline transitions: one event per transition, never one per sweep."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.utils import timezone

from agents_app.models import Agent
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import record_event

ONLINE, OFFLINE = "online", "offline"
BATCH = 1000


def _transition(agent: Agent, old: str, new: str) -> bool:
    with transaction.atomic():
        if not Agent.objects.filter(pk=agent.pk, presence_recorded=old).update(presence_recorded=new):
            return False  # another sweep recorded it
        if old:  # the first sighting after registration is not news
            went_offline = new == OFFLINE
            record_event(
                event_type=EventType.AGENT_CHECKIN,
                subtype=EventSubtype.WARNING if went_offline else EventSubtype.INFO,
                severity=Severity.WARNING if went_offline else Severity.INFO,
                component=Component.SCHEDULER,
                message=f"{agent.hostname} went offline" if went_offline else f"{agent.hostname} came back online",
                agent=agent,
                metadata={"presence": new,
                          "last_seen_at": agent.last_seen_at.isoformat() if agent.last_seen_at else None},
            )
    return True


def presence_sweep(*, now: datetime | None = None) -> int:
    now = now or timezone.now()
    online = Agent.objects.online(now)
    recorded = 0
    for agent in online.exclude(presence_recorded=ONLINE)[:BATCH]:
        recorded += _transition(agent, agent.presence_recorded, ONLINE)
    went_offline = Agent.objects.filter(presence_recorded=ONLINE).exclude(pk__in=online.values("pk"))
    for agent in went_offline[:BATCH]:
        recorded += _transition(agent, ONLINE, OFFLINE)
    return recorded
