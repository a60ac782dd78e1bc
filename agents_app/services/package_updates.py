"""The approve → dry-run → (confirm) → install workflow for package updates.

1. Approve (or ignore / unignore) updates.
2. Install: per agent and package type, a dry_run_update command (heartbeat first).
3. The dry-run's result lists the extra packages it would pull in. With none, the
   install is confirmed automatically (install_updates); otherwise the updates wait
   in pending_dependencies until an admin confirms (confirm_dependencies).
4. The install's result marks the updates installed or failed; each operation
   writes an UpdateLog.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.db import transaction
from django.utils import timezone

from agent_client.protocol import package_name_problem
from agents_app.choices import CommandSource, CommandType, UpdateStatus
from agents_app.models import Agent, Command, PackageUpdate, UpdateLog
from agents_app.services.commands import OUTPUT_LIMIT, command_create
from agents_app.services.heartbeat import heartbeat_before_operation
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import SYSTEM_ACTOR, record_event

APPROVABLE = (UpdateStatus.PENDING, UpdateStatus.FAILED)
INSTALLABLE = (UpdateStatus.PENDING, UpdateStatus.APPROVED, UpdateStatus.FAILED)


def _by_agent(updates: Iterable[PackageUpdate]) -> dict[Agent, list[PackageUpdate]]:
    grouped: dict[Agent, list[PackageUpdate]] = defaultdict(list)
    for update in updates:
        grouped[update.agent].append(update)
    return grouped


def _set_status(updates, status: str, *, actor: str, source: str, verb: str, allowed) -> int:
    """Move the updates that are in an allowed state; one event per agent, in the same transaction."""
    changed = 0
    now = timezone.now()
    for agent, rows in _by_agent(updates.select_related("agent")).items():
        with transaction.atomic():
            movable = [row for row in rows if row.status in allowed]
            if not movable:
                continue
            moved = PackageUpdate.objects.filter(pk__in=[row.pk for row in movable], status__in=allowed).update(
                status=status, status_changed_at=now
            )
            changed += moved
            record_event(
                event_type=EventType.CONFIG_CHANGED,
                subtype=EventSubtype.SUCCESS,
                component=Component.CONFIG,
                message=f"{moved} update(s) {verb} on {agent.hostname}",
                agent=agent,
                metadata={"packages": sorted(row.name for row in movable), "status": status, "source": source},
                actor=actor,
            )
    return changed


def updates_approve(*, updates, actor: str, source: str = CommandSource.WEB_UI) -> int:
    return _set_status(updates, UpdateStatus.APPROVED, actor=actor, source=source, verb="approved",
                       allowed=APPROVABLE)


def updates_ignore(*, updates, actor: str, source: str = CommandSource.WEB_UI) -> int:
    allowed = (UpdateStatus.PENDING, UpdateStatus.APPROVED, UpdateStatus.FAILED, UpdateStatus.PENDING_DEPENDENCIES)
    return _set_status(updates, UpdateStatus.IGNORED, actor=actor, source=source, verb="ignored", allowed=allowed)


def updates_unignore(*, updates, actor: str, source: str = CommandSource.WEB_UI) -> int:
    return _set_status(updates, UpdateStatus.PENDING, actor=actor, source=source, verb="un-ignored",
                       allowed=(UpdateStatus.IGNORED,))


def updates_install(*, updates, actor: str, source: str = CommandSource.WEB_UI, created_by=None,
                    bulk_operation=None) -> list[Command]:
    """Start the install workflow: one dry-run per agent and package type. Returns the dry-runs."""
    now = timezone.now()
    dry_runs = []
    for agent, rows in _by_agent(updates.select_related("agent").filter(status__in=INSTALLABLE)).items():
        by_type: dict[str, list[PackageUpdate]] = defaultdict(list)
        for row in rows:
            by_type[row.package_type].append(row)
        heartbeat_before_operation(agent=agent, now=now, source=source, actor=actor)
        for package_type, typed in by_type.items():
            with transaction.atomic():
                command = command_create(
                    agent=agent, command_type=CommandType.DRY_RUN_UPDATE, source=source, actor=actor,
                    params={"package_type": package_type, "packages": sorted(row.name for row in typed)},
                    created_by=created_by, bulk_operation=bulk_operation,
                )
                PackageUpdate.objects.filter(pk__in=[row.pk for row in typed]).update(
                    status=UpdateStatus.APPROVED, operation_command=command, status_changed_at=now
                )
            dry_runs.append(command)
    return dry_runs


def _install_command(*, agent: Agent, rows: list[PackageUpdate], command_type: str, dependencies: list[str],
                     source: str, actor: str, created_by=None) -> Command:
    command = command_create(
        agent=agent, command_type=command_type, source=source, actor=actor, created_by=created_by,
        params={"package_type": rows[0].package_type, "packages": sorted(row.name for row in rows),
                "dependencies": sorted(dependencies)},
    )
    PackageUpdate.objects.filter(pk__in=[row.pk for row in rows]).update(
        status=UpdateStatus.INSTALLING, operation_command=command, status_changed_at=timezone.now()
    )
    return command


def updates_confirm_dependencies(*, updates, actor: str, created_by=None) -> list[Command]:
    """An admin accepts the extra packages a dry-run found: install with them."""
    commands = []
    rows = updates.select_related("agent").filter(status=UpdateStatus.PENDING_DEPENDENCIES)
    for agent, agent_rows in _by_agent(rows).items():
        by_type: dict[str, list[PackageUpdate]] = defaultdict(list)
        for row in agent_rows:
            by_type[row.package_type].append(row)
        for typed in by_type.values():
            dependencies = sorted({name for row in typed for name in row.dependencies})
            with transaction.atomic():
                commands.append(_install_command(
                    agent=agent, rows=typed, command_type=CommandType.CONFIRM_DEPENDENCIES,
                    dependencies=dependencies, source=CommandSource.WEB_UI, actor=actor, created_by=created_by,
                ))
    return commands


def package_operation_finished(*, command: Command, succeeded: bool, result: dict[str, Any], output: str,
                               now) -> None:
    """A dry-run or install answered (inside the result's transaction): log it, move its updates on."""
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
        package_type = command.params.get("package_type", "")
        if any(package_name_problem(package_type, name) for name in extra):
            succeeded = False  # a "dependency" that is no package name is never signed into an install
        _dry_run_finished(command=command, succeeded=succeeded, dependencies=extra, now=now)
    else:
        status = UpdateStatus.INSTALLED if succeeded else UpdateStatus.FAILED
        command.package_updates.update(status=status, status_changed_at=now)


def package_operation_abandoned(*, command: Command, status: str, now) -> None:
    """A dry-run or install that will never be answered (cancelled, timed out): its updates go to ``status``."""
    command.package_updates.filter(status__in=(UpdateStatus.INSTALLING, UpdateStatus.APPROVED)).update(
        status=status, status_changed_at=now
    )


def _dry_run_finished(*, command: Command, succeeded: bool, dependencies: list[str], now) -> None:
    """Confirm automatically when the dry-run found no extra packages, or wait for an admin."""
    rows = list(command.package_updates.select_related("agent"))
    if not rows:
        return
    if not succeeded:
        PackageUpdate.objects.filter(pk__in=[row.pk for row in rows]).update(
            status=UpdateStatus.FAILED, status_changed_at=now
        )
        return
    if dependencies:
        PackageUpdate.objects.filter(pk__in=[row.pk for row in rows]).update(
            status=UpdateStatus.PENDING_DEPENDENCIES, dependencies=sorted(dependencies), status_changed_at=now
        )
        return
    _install_command(agent=command.agent, rows=rows, command_type=CommandType.INSTALL_UPDATES, dependencies=[],
                     source=CommandSource.SYSTEM, actor=SYSTEM_ACTOR)
