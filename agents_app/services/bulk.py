"""Fleet-wide actions as django-q2 tasks with progress in a BulkOperation row.

The admin creates the operation and enqueues the task on commit; the task does
each agent's part through the same write paths as a single action, counting
done and failed as it goes. Re-running a task is safe: each part is idempotent
(an already-open command of the same kind counts as done).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django_q.tasks import async_task

from agent_client.protocol import REBOOT_PARAMS
from agents_app.choices import CommandSource, CommandType, UpdateStatus
from agents_app.models import Agent, BulkOperation, Command, PackageUpdate
from agents_app.services.agent_upgrade import agent_update_start
from agents_app.services.commands import CommandAlreadyOpen, command_create, reboot_params_check
from agents_app.services.heartbeat import heartbeat_before_operation, heartbeat_enable
from agents_app.services.package_updates import updates_approve, updates_install
from agents_app.services.releases import ReleaseError, release_find
from agents_app.services.subsystems import scan_command
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event

MAX_RECORDED_ERRORS = 50


def bulk_operation_start(*, kind: str, agent_ids: list, params: dict | None = None, user=None,
                         groups: list[str] | None = None) -> BulkOperation:
    """Create the operation and enqueue its task when the transaction commits.

    ``groups``: the names of the agent groups the agents were resolved from (at start: a later change of
    a group does not change the operation), kept in its params and its event.
    """
    if kind == BulkOperation.Kind.REBOOT:
        reboot_params_check(_reboot_params(params or {}))  # refused now, not once per agent
    params = {**(params or {}), "agent_ids": [str(agent_id) for agent_id in agent_ids]}
    if groups is not None:
        params["groups"] = list(groups)
    with transaction.atomic():
        operation = BulkOperation.objects.create(kind=kind, params=params, requested=len(agent_ids), created_by=user)
        record_event(
            event_type=EventType.BULK_OPERATION,
            subtype=EventSubtype.INITIATED,
            component=Component.SERVER,
            message=f"{operation.get_kind_display()} requested for {len(agent_ids)} agent(s)",
            metadata={"bulk_operation_id": str(operation.pk), "kind": kind, "agents": len(agent_ids),
                      "source": CommandSource.WEB_UI_BULK, **({"groups": list(groups)} if groups is not None else {})},
            actor=user.get_username() if user else SYSTEM_ACTOR,
        )
        transaction.on_commit(lambda: async_task("agents_app.tasks.bulk_operation_run", str(operation.pk),
                                                 task_name=f"bulk-{operation.pk}"))
    return operation


@dataclass(frozen=True)
class Asked:
    """Who asks for an agent action and how: from one agent's page (``web_ui``) or as part of a bulk operation."""

    params: dict[str, Any]
    actor: str
    source: str
    created_by: Any = None
    operation: BulkOperation | None = None

    def command(self, agent: Agent, command_type: str, params: dict[str, Any] | None = None) -> None:
        """Queue one command for ``agent``; one already open of the same kind counts as done."""
        try:
            command_create(agent=agent, command_type=command_type, params=params, source=self.source,
                           actor=self.actor, created_by=self.created_by, bulk_operation=self.operation)
        except CommandAlreadyOpen:
            pass  # already queued: the agent will do it


def _scan(agent: Agent, asked: Asked) -> None:
    for subsystem in agent.subsystems.filter(enabled=True):
        command_type, params = scan_command(subsystem, verify=agent.verify_scans)
        asked.command(agent, command_type, params)


def _updates(agent: Agent, asked: Asked):
    updates = PackageUpdate.objects.filter(agent=agent)
    return updates.filter(is_security=True) if asked.params.get("security_only") else updates


def _approve(agent: Agent, asked: Asked) -> None:
    updates_approve(updates=_updates(agent, asked), actor=asked.actor, source=asked.source)


def _install(agent: Agent, asked: Asked) -> None:
    updates = _updates(agent, asked)
    if asked.params.get("approved_only", True):
        updates = updates.filter(status=UpdateStatus.APPROVED)
    try:
        updates_install(updates=updates, actor=asked.actor, source=asked.source, created_by=asked.created_by,
                        bulk_operation=asked.operation)
    except CommandAlreadyOpen:
        pass


def _heartbeat(agent: Agent, asked: Asked) -> None:
    minutes = asked.params.get("minutes")
    if minutes:
        heartbeat_enable(agent=agent, minutes=minutes, source=asked.source, actor=asked.actor,
                         created_by=asked.created_by, bulk_operation=asked.operation)
    else:
        asked.command(agent, CommandType.DISABLE_HEARTBEAT)


def _reboot_params(params: dict[str, Any]) -> dict[str, Any]:
    """The announced delay and message a reboot carries, from the action's params (which hold more)."""
    return {key: params[key] for key in REBOOT_PARAMS if key in params}


def _reboot(agent: Agent, asked: Asked) -> None:
    heartbeat_before_operation(agent=agent, now=timezone.now(), source=asked.source, actor=asked.actor)
    asked.command(agent, CommandType.REBOOT, _reboot_params(asked.params))


def _update_agent(agent: Agent, asked: Asked) -> None:
    release = release_find(version=asked.params["version"])
    if release is None:
        raise ReleaseError(f"release {asked.params['version']} no longer exists")
    if agent.agent_version == release.version:
        return  # already there
    try:
        agent_update_start(agent=agent, release=release, source=asked.source, actor=asked.actor,
                           created_by=asked.created_by, bulk_operation=asked.operation)
    except CommandAlreadyOpen:
        pass


PARTS: dict[str, Callable[[Agent, Asked], None]] = {
    BulkOperation.Kind.SCAN: _scan,
    BulkOperation.Kind.APPROVE: _approve,
    BulkOperation.Kind.INSTALL: _install,
    BulkOperation.Kind.HEARTBEAT: _heartbeat,
    BulkOperation.Kind.REBOOT: _reboot,
    BulkOperation.Kind.UPDATE_AGENT: _update_agent,
}


def agent_action_run(*, kind: str, agent: Agent, params: dict[str, Any] | None = None, actor: str,
                     user=None) -> list[Command]:
    """One agent's action from its own page, at once and with source ``web_ui``: the commands it queued.

    The same part a bulk operation runs per agent, without the operation: nothing to follow on a
    progress page, and the commands say who asked (``created_by``).
    """
    asked = Asked(params=params or {}, actor=actor, source=CommandSource.WEB_UI, created_by=user)
    started = timezone.now()
    with transaction.atomic():
        PARTS[kind](agent, asked)
    return list(Command.objects.filter(agent=agent, source=CommandSource.WEB_UI, created_at__gte=started)
                .order_by("created_at"))


def bulk_operation_run(operation_id: str) -> None:
    operation = BulkOperation.objects.select_related("created_by").get(pk=operation_id)
    if operation.status == BulkOperation.Status.FINISHED:
        return
    BulkOperation.objects.filter(pk=operation.pk).update(status=BulkOperation.Status.RUNNING, done=0, failed=0,
                                                         errors=[])
    actor = operation.created_by.get_username() if operation.created_by else SYSTEM_ACTOR
    part = PARTS[operation.kind]
    asked = Asked(params=operation.params, actor=actor, source=CommandSource.WEB_UI_BULK,
                  created_by=operation.created_by, operation=operation)
    errors = []
    for agent in Agent.objects.filter(pk__in=operation.params["agent_ids"]).order_by("hostname"):
        try:
            with transaction.atomic():
                part(agent, asked)
        except Exception as exc:  # one agent's failure must not stop the fleet's
            BulkOperation.objects.filter(pk=operation.pk).update(failed=F("failed") + 1)
            if len(errors) < MAX_RECORDED_ERRORS:
                errors.append({"agent": agent.hostname, "error": str(exc)[:300]})
                BulkOperation.objects.filter(pk=operation.pk).update(errors=errors)
        else:
            BulkOperation.objects.filter(pk=operation.pk).update(done=F("done") + 1)
    missing = operation.requested - Agent.objects.filter(pk__in=operation.params["agent_ids"]).count()
    if missing:
        BulkOperation.objects.filter(pk=operation.pk).update(failed=F("failed") + missing)
    with transaction.atomic():
        BulkOperation.objects.filter(pk=operation.pk).update(status=BulkOperation.Status.FINISHED,
                                                             finished_at=timezone.now())
        operation.refresh_from_db()
        record_event(
            event_type=EventType.BULK_OPERATION,
            subtype=EventSubtype.SUCCESS if not operation.failed else EventSubtype.WARNING,
            severity=Severity.INFO if not operation.failed else Severity.WARNING,
            component=Component.SERVER,
            message=f"{operation.get_kind_display()}: {operation.done} done, {operation.failed} failed",
            metadata={"bulk_operation_id": str(operation.pk), "done": operation.done, "failed": operation.failed,
                      "source": CommandSource.WEB_UI_BULK},
            actor=actor,
        )
