"""Subsystems: what an agent scans and how often.

One write path for every edit (the agent page's inline, the fleet-wide actions): ``subsystems_update``
changes the rows, bumps each affected agent's config_version once (its agent re-fetches its config at
the next check-in) and records one config_changed event per agent, shaped
``{"subsystems": {name: {field: new value}}}``, all in one transaction.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from django.db import transaction
from django.db.models import F

from agents_app.choices import SUBSYSTEM_SCAN, SubsystemName, SubsystemStatus
from agents_app.models import Agent, AgentSubsystem, Command
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event
from redflag.errors import InvalidRequest

DEFAULT_INTERVAL_MINUTES = {
    SubsystemName.STORAGE: 60,
    SubsystemName.SYSTEM: 60,
}
UPDATES_INTERVAL_MINUTES = 360
ERROR_LIMIT = 2000


def subsystems_ensure(*, agent: Agent, capabilities: Iterable[str], existing: Iterable[str] | None = None) -> None:
    """Create the subsystems an agent reports it can run, in one INSERT; existing ones keep their settings.

    ``existing``: the names the agent has, when the caller knows them (an agent created in the same
    transaction has none), which saves reading them.
    """
    have = set(agent.subsystems.values_list("name", flat=True)) if existing is None else set(existing)
    AgentSubsystem.objects.bulk_create(subsystems_build(agent=agent, names=set(capabilities) - have))


def subsystems_build(*, agent: Agent, names: Iterable[str]) -> list[AgentSubsystem]:
    """New subsystem rows with their default intervals, not saved yet."""
    return [AgentSubsystem(agent=agent, name=name,
                           interval_minutes=DEFAULT_INTERVAL_MINUTES.get(name, UPDATES_INTERVAL_MINUTES))
            for name in sorted(set(names))]


def _validate(changes: Mapping[str, Any]) -> None:
    unknown = set(changes) - set(AgentSubsystem.CONFIG_FIELDS)
    if unknown:
        raise InvalidRequest(f"not a subsystem setting: {', '.join(sorted(unknown))}")
    if "interval_minutes" in changes and int(changes["interval_minutes"]) < 1:
        raise InvalidRequest("interval_minutes must be at least 1")


def subsystems_update(*, changes: Mapping[int, Mapping[str, Any]], actor: str) -> int:
    """Apply ``{subsystem pk: {field: value}}``; returns how many subsystems actually changed.

    Unchanged values are dropped, so a form saved as it was records nothing.
    """
    for fields in changes.values():
        _validate(fields)
    with transaction.atomic():
        rows = AgentSubsystem.objects.filter(pk__in=list(changes)).select_related("agent")
        applied: dict[Agent, dict[str, dict[str, Any]]] = defaultdict(dict)
        same_change: dict[tuple, list[int]] = defaultdict(list)  # one UPDATE per distinct change
        for row in rows.select_for_update(of=("self",)).order_by("pk"):
            different = {field: value for field, value in changes[row.pk].items() if getattr(row, field) != value}
            if different:
                same_change[tuple(sorted(different.items()))].append(row.pk)
                applied[row.agent][row.name] = different
        if not applied:
            return 0
        for different, pks in same_change.items():
            AgentSubsystem.objects.filter(pk__in=pks).update(**dict(different))
        Agent.objects.filter(pk__in=[agent.pk for agent in applied]).update(config_version=F("config_version") + 1)
        for agent, by_name in applied.items():
            record_event(
                event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
                message=f"Subsystems of {agent.hostname} changed: {', '.join(sorted(by_name))}", agent=agent,
                metadata={"subsystems": by_name}, actor=actor,
            )
    return sum(len(by_name) for by_name in applied.values())


def subsystems_configure(*, subsystems, changes: dict[str, Any], actor: str) -> int:
    """The same ``changes`` on every subsystem of the queryset (fleet-wide admin actions)."""
    _validate(changes)
    return subsystems_update(changes={pk: changes for pk in subsystems.values_list("pk", flat=True)}, actor=actor)


def scan_command(subsystem: AgentSubsystem, *, verify: bool) -> tuple[str, dict[str, Any]]:
    """(command type, params) of a scan of ``subsystem``; ``verify`` asks the agent to compare a package
    scan with the tool's own listing (the agent's verify_scans setting)."""
    command_type, params = SUBSYSTEM_SCAN[subsystem.name]
    params = dict(params)
    if verify and "package_type" in params:
        params["verify"] = True
    return command_type, params


def subsystem_for(command: Command) -> str | None:
    """The subsystem whose scheduled scan ``command`` is, if any."""
    for name, (command_type, params) in SUBSYSTEM_SCAN.items():
        if command.command_type == command_type and all(command.params.get(k) == v for k, v in params.items()):
            return name
    return None


def subsystem_scan_finished(*, command: Command, succeeded: bool, error: str, now: datetime) -> None:
    """A scan answered (inside the result's transaction): the subsystem shows its last run."""
    name = subsystem_for(command)
    if name:
        AgentSubsystem.objects.filter(agent_id=command.agent_id, name=name).update(
            last_run_at=now,
            last_status=SubsystemStatus.SUCCEEDED if succeeded else SubsystemStatus.FAILED,
            last_error="" if succeeded else error[-ERROR_LIMIT:],
        )
