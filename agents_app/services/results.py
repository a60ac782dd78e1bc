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

from agents_app.choices import OPEN_COMMAND_STATUSES, CommandStatus, CommandType, UpdateStatus
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
        _apply_effects(command, ending, now)
        record_event(
            event_type=EventType.COMMAND_COMPLETED,
            subtype=EventSubtype.SUCCESS if ending.succeeded else EventSubtype.FAILED,
            severity=Severity.INFO if ending.succeeded else Severity.ERROR,
            component=Component.AGENT,
            message=f"{command.command_type} on {agent.hostname} {'succeeded' if ending.succeeded else 'failed'}",
            agent=agent,
            metadata={"command_id": str(command.pk), "command_type": command.command_type,
                      "exit_code": result.get("exit_code"), "source": command.source},
            actor=agent_actor(agent),
        )
    return True


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
            message=f"{command.command_type} for {command.agent.hostname} {ending.verb}", agent=command.agent,
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
