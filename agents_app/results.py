"""Command results from agents: idempotent, each type's effects applied once."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import transaction
from django.utils import timezone

from agents_app.choices import (
    OPEN_COMMAND_STATUSES,
    SUBSYSTEM_SCAN,
    CommandStatus,
    CommandType,
    SubsystemStatus,
)
from agents_app.commands import OUTPUT_LIMIT
from agents_app.heartbeat import heartbeat_acknowledged
from agents_app.models import Agent, AgentSubsystem, Command, UpdateLog
from agents_app.updates import dry_run_finished, install_finished
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import agent_actor, record_event

SCAN_TYPES = (CommandType.SCAN_UPDATES, CommandType.SCAN_DOCKER, CommandType.SCAN_STORAGE, CommandType.SCAN_SYSTEM)
INSTALL_TYPES = (CommandType.INSTALL_UPDATES, CommandType.CONFIRM_DEPENDENCIES)


def subsystem_for(command: Command) -> str | None:
    for name, (command_type, params) in SUBSYSTEM_SCAN.items():
        if command.command_type == command_type and all(command.params.get(k) == v for k, v in params.items()):
            return name
    return None


def _scan_finished(command: Command, succeeded: bool, output: str, now: datetime) -> None:
    name = subsystem_for(command)
    if name:
        AgentSubsystem.objects.filter(agent_id=command.agent_id, name=name).update(
            last_run_at=now,
            last_status=SubsystemStatus.SUCCEEDED if succeeded else SubsystemStatus.FAILED,
            last_error="" if succeeded else output[-2000:],
        )


def _package_operation_finished(command: Command, succeeded: bool, result: dict[str, Any], output: str,
                                now: datetime) -> None:
    dry_run = command.command_type == CommandType.DRY_RUN_UPDATE
    UpdateLog.objects.create(
        agent_id=command.agent_id,
        command=command,
        package_type=command.params.get("package_type", ""),
        packages=command.params.get("packages", []),
        action=UpdateLog.Action.DRY_RUN if dry_run else UpdateLog.Action.INSTALL,
        succeeded=succeeded,
        exit_code=result.get("exit_code"),
        output_tail=(result.get("output_tail") or output)[-OUTPUT_LIMIT:],
        duration_seconds=result.get("duration_seconds"),
        created_at=now,
    )
    if dry_run:
        requested = set(command.params.get("packages", []))
        extra = [name for name in result.get("dependencies", []) if name not in requested]
        dry_run_finished(command=command, succeeded=succeeded, dependencies=extra, now=now)
    else:
        install_finished(command=command, succeeded=succeeded, now=now)


def _apply_effects(command: Command, succeeded: bool, result: dict[str, Any], output: str, now: datetime) -> None:
    if command.command_type in SCAN_TYPES:
        _scan_finished(command, succeeded, output, now)
    elif command.command_type == CommandType.DRY_RUN_UPDATE or command.command_type in INSTALL_TYPES:
        _package_operation_finished(command, succeeded, result, output, now)
    elif command.command_type in (CommandType.ENABLE_HEARTBEAT, CommandType.DISABLE_HEARTBEAT) and succeeded:
        heartbeat_acknowledged(command=command, now=now)
    elif command.command_type == CommandType.UPDATE_AGENT:
        from agents_app.agent_updates import agent_update_finished

        agent_update_finished(command=command, agent=command.agent, succeeded=succeeded, reason=output)


def command_result_record(*, agent: Agent, command: Command, status: str, output: str, result: dict[str, Any],
                          now: datetime | None = None) -> bool:
    """Apply a result; False when it changes nothing (a repeat, or the command is already finished)."""
    now = now or timezone.now()
    if status == CommandStatus.RUNNING:
        return bool(Command.objects.filter(pk=command.pk, status__in=(CommandStatus.PENDING, CommandStatus.SENT))
                    .update(status=CommandStatus.RUNNING, started_at=now))
    succeeded = status == CommandStatus.SUCCEEDED
    with transaction.atomic():
        claimed = Command.objects.filter(pk=command.pk, status__in=OPEN_COMMAND_STATUSES).update(
            status=status, completed_at=now, output=output[-OUTPUT_LIMIT:], result=result
        )
        if not claimed:
            return False
        command.refresh_from_db()
        _apply_effects(command, succeeded, result, output, now)
        record_event(
            event_type=EventType.COMMAND_COMPLETED,
            subtype=EventSubtype.SUCCESS if succeeded else EventSubtype.FAILED,
            severity=Severity.INFO if succeeded else Severity.ERROR,
            component=Component.AGENT,
            message=f"{command.command_type} on {agent.hostname} {'succeeded' if succeeded else 'failed'}",
            agent=agent,
            metadata={"command_id": str(command.pk), "command_type": command.command_type,
                      "exit_code": result.get("exit_code"), "source": command.source},
            actor=agent_actor(agent),
        )
    return True
