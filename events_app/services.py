"""The one write path for SystemEvents."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.models import SystemEvent

if TYPE_CHECKING:
    from agents_app.models import Agent

SYSTEM_ACTOR = "system"


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
) -> SystemEvent:
    """Write one SystemEvent.

    Call it inside the transaction of the change it records, so the change and
    its audit row commit or roll back together. Never pass a secret in
    ``message`` or ``metadata``.
    """
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
