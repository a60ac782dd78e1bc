"""Capabilities: what an agent says it can really scan, probed at each of its start-ups.

An agent offers a package manager only when it works on that machine (a DNF with an enabled
repository, a Docker daemon that answers). Its subsystems follow what it offers, so a machine
where a tool stopped working gets no scheduled scans of it and no failed commands.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import transaction
from django.db.models import F

from agents_app.choices import SUBSYSTEM_SCAN
from agents_app.models import Agent, Command
from agents_app.services.commands import dedupe_key
from agents_app.services.results import commands_cancel
from agents_app.services.subsystems import subsystems_ensure
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import agent_actor, record_event


def known_capabilities(agent: Agent) -> set[str]:
    """What the agent said last; for an agent that never said (enrolled before it could), its subsystems."""
    if agent.capabilities is not None:
        return set(agent.capabilities)
    return set(agent.subsystems.values_list("name", flat=True))


def agent_capabilities_report(*, agent: Agent, capabilities: Iterable[str]) -> bool:
    """Follow what the agent can scan now; returns whether anything changed.

    1. Compare with what the server knows (known_capabilities). The same set changes nothing
       and writes nothing: each agent start reports it once.
    2. Otherwise, in one transaction: a capability that appeared gets its subsystem (created, or
       enabled again, due at once); one that disappeared has its subsystem disabled (no scheduled
       scans) and its undelivered scan commands cancelled (no failed commands); the agent's
       config_version moves once; one config_changed event says what was added and removed.
    """
    offered = set(capabilities)
    known = known_capabilities(agent)
    if offered == known:
        return False
    added, removed = sorted(offered - known), sorted(known - offered)
    with transaction.atomic():
        subsystems_ensure(agent=agent, capabilities=added)
        agent.subsystems.filter(name__in=added, enabled=False).update(enabled=True, next_run_at=None)
        agent.subsystems.filter(name__in=removed, enabled=True).update(enabled=False)
        Agent.objects.filter(pk=agent.pk).update(capabilities=sorted(offered),
                                                 config_version=F("config_version") + 1)
        agent.refresh_from_db(fields=["capabilities", "config_version"])
        scans = [dedupe_key(*SUBSYSTEM_SCAN[name]) for name in removed if name in SUBSYSTEM_SCAN]
        cancelled = commands_cancel(commands=Command.objects.pending().filter(agent=agent, dedupe_key__in=scans)
                                    .select_related("agent"), actor=agent_actor(agent))
        changes = [f"now offers {', '.join(added)}"] if added else []
        changes += [f"no longer offers {', '.join(removed)}"] if removed else []
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.INFO, component=Component.CONFIG,
            message=f"Capabilities of {agent.hostname} changed: {'; '.join(changes)}", agent=agent,
            metadata={"added": added, "removed": removed, "capabilities": agent.capabilities,
                      "cancelled_commands": cancelled},
            actor=agent_actor(agent),
        )
    return True
