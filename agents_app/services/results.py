"""How a command ends — the agent's answer, a time-out or a cancel — in one place.

Every ending is claimed with a conditional UPDATE of the command's status (so an answer and a
sweep never both win, and a repeated answer changes nothing), then the effects of the command's
type are applied once (``_apply_effects``, one dispatch by type) and the command_completed event
is recorded, all in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents_app.choices import OPEN_COMMAND_STATUSES, CommandStatus, CommandType, UpdateStatus, names_in_words
from agents_app.models import Agent, Command
from agents_app.services.agent_upgrade import UPDATE_REPORT_TIMEOUT, agent_update_finished
from agents_app.services.commands import OUTPUT_LIMIT
from agents_app.services.heartbeat import heartbeat_acknowledged
from agents_app.services.package_updates import package_operation_abandoned, package_operation_finished
from agents_app.services.subsystems import subsystem_scan_finished
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, agent_actor, record_event

# A sent or running command silent for this long is timed out (update_agent: UPDATE_REPORT_TIMEOUT).
SENT_TIMEOUT = timedelta(hours=2)
TIMEOUT_SWEEP_BATCH = 1000

SCAN_TYPES = (CommandType.SCAN_UPDATES, CommandType.SCAN_DOCKER, CommandType.SCAN_STORAGE, CommandType.SCAN_SYSTEM)
PACKAGE_OPERATION_TYPES = (CommandType.DRY_RUN_UPDATE, CommandType.INSTALL_UPDATES, CommandType.CONFIRM_DEPENDENCIES)
INSTALL_TYPES = (CommandType.INSTALL_UPDATES, CommandType.CONFIRM_DEPENDENCIES)
HEARTBEAT_TYPES = (CommandType.ENABLE_HEARTBEAT, CommandType.DISABLE_HEARTBEAT)


@dataclass(frozen=True)
class Ending:
    """What ended a command: the agent's answer (``answered``), or the server giving up on it."""

    status: str
    answered: bool
    output: str = ""
    result: dict[str, Any] | None = None
    # Unanswered endings: where the package updates it carried go, and the word for the event.
    updates_to: str = UpdateStatus.FAILED
    verb: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == CommandStatus.SUCCEEDED


def _apply_effects(command: Command, ending: Ending, now: datetime) -> None:
    """The one dispatch by command type: what the end of each kind of command changes."""
    kind = command.command_type
    if kind in SCAN_TYPES:
        if ending.answered:
            subsystem_scan_finished(command=command, succeeded=ending.succeeded, error=ending.output, now=now)
    elif kind in PACKAGE_OPERATION_TYPES:
        if ending.answered:
            package_operation_finished(command=command, succeeded=ending.succeeded, result=ending.result or {},
                                       output=ending.output, now=now)
        else:
            package_operation_abandoned(command=command, status=ending.updates_to, now=now)
    elif kind in HEARTBEAT_TYPES:
        if ending.succeeded:
            heartbeat_acknowledged(command=command, now=now)
    elif kind == CommandType.UPDATE_AGENT:
        reason = ending.output if ending.answered else f"command {ending.verb}"
        agent_update_finished(command=command, agent=command.agent, succeeded=ending.succeeded, reason=reason)


def command_result_record(*, agent: Agent, command: Command, status: str, output: str, result: dict[str, Any],
                          now: datetime | None = None) -> bool:
    """Apply the agent's answer; False when it changes nothing (a repeat, or the command already ended)."""
    now = now or timezone.now()
    if status == CommandStatus.RUNNING:
        return bool(Command.objects.filter(pk=command.pk, status__in=(CommandStatus.PENDING, CommandStatus.SENT))
                    .update(status=CommandStatus.RUNNING, started_at=now))
    ending = Ending(status=status, answered=True, output=output, result=result)
    with transaction.atomic():
        claimed = Command.objects.filter(pk=command.pk, status__in=OPEN_COMMAND_STATUSES).update(
            status=status, completed_at=now, output=output[-OUTPUT_LIMIT:], result=result
        )
        if not claimed:
            return False
        command.refresh_from_db()
        # Read before the effects: a finished dry-run hands its updates on to the install it starts.
        packages = operation_packages(command) if command.command_type in PACKAGE_OPERATION_TYPES else []
        _apply_effects(command, ending, now)
        outcome = "succeeded" if ending.succeeded else "failed"
        subtype = EventSubtype.SUCCESS if ending.succeeded else EventSubtype.FAILED
        severity = Severity.INFO if ending.succeeded else Severity.ERROR
        metadata = {"command_id": str(command.pk), "command_type": command.command_type,
                    "exit_code": result.get("exit_code"), "source": command.source}
        message = f"{command.title} on {agent.hostname} {outcome}"
        if command.command_type in PACKAGE_OPERATION_TYPES:
            metadata.update(package_type=command.params.get("package_type", ""), packages=packages)
            reported = reported_changes(result)
            if reported:  # what the agent says it did: versions, digests, containers recreated
                metadata["reported"] = reported
            message = f"{message}: {versions_in_words(packages)}" if packages else message
        record_event(event_type=EventType.COMMAND_COMPLETED, subtype=subtype, severity=severity,
                     component=Component.AGENT, message=message, agent=agent, metadata=metadata,
                     actor=agent_actor(agent))
        if command.command_type in INSTALL_TYPES:
            # The fact an auditor asks for ("what was installed where, at which version"), filterable on its own.
            record_event(event_type=EventType.AGENT_INSTALL, subtype=subtype, severity=severity,
                         component=Component.AGENT, message=message, agent=agent, metadata=metadata,
                         actor=agent_actor(agent))
    return True


def operation_packages(command: Command) -> list[dict[str, str]]:
    """The packages a dry-run or install concerns, each with the versions it moves between (at most 100)."""
    rows = command.package_updates.order_by("name").values_list("name", "current_version", "available_version")
    named = {name: {"name": name, "from": current, "to": available} for name, current, available in rows[:100]}
    # Dependencies an admin confirmed are in the command but have no pending-update row of their own.
    for name in command.params.get("dependencies") or []:
        named.setdefault(name, {"name": name, "from": "", "to": ""})
    return list(named.values())[:100]


def reported_changes(result: dict[str, Any]) -> list[dict[str, str]]:
    """The agent's own account of each package it changed (``result.packages``), as short flat text:
    at most 100 entries, scalar fields only, keys of 64 and values of 255 characters."""
    entries = result.get("packages") if isinstance(result.get("packages"), list) else []
    return [{str(key)[:64]: str(value)[:255] for key, value in entry.items()
             if isinstance(value, (str, int, float)) and not isinstance(value, bool)}
            for entry in entries[:100] if isinstance(entry, dict)]


def versions_in_words(packages: list[dict[str, str]], limit: int = 5) -> str:
    """'openssl 3.0.13-1 → 3.0.14-1, curl 7.88.1 → 7.88.2 and 3 more'."""
    return names_in_words(
        [f"{package['name']} {package['from']} → {package['to']}" if package["to"] else package["name"]
         for package in packages], limit)


def _end_unanswered(command: Command, *, from_statuses, ending: Ending, now: datetime, subtype, severity,
                    component, actor: str = SYSTEM_ACTOR) -> bool:
    """End a command the agent will never answer (cancelled, timed out); False if it already ended."""
    with transaction.atomic():
        if not Command.objects.filter(pk=command.pk, status__in=from_statuses).update(
            status=ending.status, completed_at=now
        ):
            return False  # the agent answered, or another sweep got there first
        _apply_effects(command, ending, now)
        record_event(
            event_type=EventType.COMMAND_COMPLETED, subtype=subtype, severity=severity, component=component,
            message=f"{command.title} for {command.agent.hostname} {ending.verb}", agent=command.agent,
            metadata={"command_id": str(command.pk), "status": ending.status, "was": command.status}, actor=actor,
        )
    return True


def commands_cancel(*, commands: Iterable[Command], actor: str) -> int:
    """Cancel commands that have not reached the agent yet; their updates stay approved."""
    now = timezone.now()
    ending = Ending(status=CommandStatus.CANCELLED, answered=False, updates_to=UpdateStatus.APPROVED,
                    verb="cancelled")
    return sum(
        _end_unanswered(command, from_statuses=(CommandStatus.PENDING,), ending=ending, now=now,
                        subtype=EventSubtype.INFO, severity=Severity.INFO, component=Component.SERVER, actor=actor)
        for command in commands
    )


def commands_cancel_open(*, agent: Agent, reason: str, actor: str) -> int:
    """Cancel every open command of ``agent``, sent ones included (its identity changed hands: nothing
    planned before may reach the machine without a new admin action). Approved updates stay approved."""
    now = timezone.now()
    ending = Ending(status=CommandStatus.CANCELLED, answered=False, updates_to=UpdateStatus.APPROVED,
                    verb=f"cancelled: {reason}")
    return sum(
        _end_unanswered(command, from_statuses=OPEN_COMMAND_STATUSES, ending=ending, now=now,
                        subtype=EventSubtype.WARNING, severity=Severity.WARNING, component=Component.SECURITY,
                        actor=actor)
        for command in Command.objects.open().filter(agent=agent).select_related("agent")
    )


def commands_time_out(*, now: datetime | None = None) -> int:
    """The sweep: sent or running commands silent for SENT_TIMEOUT, and undelivered expired ones.

    Each command is claimed with a conditional UPDATE, so two sweeps never double-count.
    """
    now = now or timezone.now()
    sent = (CommandStatus.SENT, CommandStatus.RUNNING)
    stale = (
        Command.objects.filter(status__in=sent, sent_at__lt=now - SENT_TIMEOUT)
        | Command.objects.filter(status__in=sent, command_type=CommandType.UPDATE_AGENT,
                                 sent_at__lt=now - UPDATE_REPORT_TIMEOUT)
        | Command.objects.filter(status=CommandStatus.PENDING, expires_at__lte=now)
    )
    ending = Ending(status=CommandStatus.TIMED_OUT, answered=False, updates_to=UpdateStatus.FAILED, verb="timed out")
    return sum(
        _end_unanswered(command, from_statuses=OPEN_COMMAND_STATUSES, ending=ending, now=now,
                        subtype=EventSubtype.FAILED, severity=Severity.WARNING, component=Component.SCHEDULER)
        for command in stale.select_related("agent")[:TIMEOUT_SWEEP_BATCH]
    )
