"""Commands: built and signed once, created with their event, delivered at check-in, retried.

A leaf: how a command ends (answer, time-out, cancel) is agents_app.services.results.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agent_client.protocol import command_signing_bytes, package_name_problem, reboot_params_problem
from agents_app.choices import CommandSource, CommandStatus, CommandType
from agents_app.models import Agent, Command
from agents_app.services.wakeup import agent_wake_on_commit
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.errors import Conflict, InvalidRequest
from tokens_app.signing import LoadedKey, sign

DELIVERY_BATCH = 10
COMMAND_LIFETIME = timedelta(hours=24)
# How much of a command's output is kept (its tail).
OUTPUT_LIMIT = 64 * 1024


class CommandAlreadyOpen(Conflict):
    default_code = "command_already_open"
    default_detail = "The same kind of command is already waiting for this agent."


def dedupe_key(command_type: str, params: dict[str, Any]) -> str:
    """What makes two commands 'the same kind': the type, plus the package type where there is one."""
    package_type = params.get("package_type")
    return f"{command_type}:{package_type}" if package_type else str(command_type)


def package_names_check(params: dict[str, Any]) -> None:
    """Every package a command names is a name of its package type, checked again right before signing
    (the scan report that brought it in was checked too): InvalidRequest naming the first bad one."""
    names = [*params.get("packages", ()), *params.get("dependencies", ())]
    for name in names:
        problem = package_name_problem(params.get("package_type", ""), name)
        if problem:
            raise InvalidRequest(f"refusing to sign a command for package {str(name)[:100]!r}: {problem}")


def reboot_params_check(params: dict[str, Any]) -> None:
    """A reboot's announced delay and message (protocol.reboot_params_problem, checked again by the agent):
    InvalidRequest naming the problem, before anything is signed."""
    problem = reboot_params_problem(params)
    if problem:
        raise InvalidRequest(f"refusing to sign a reboot: {problem}")


def command_build(
    *,
    agent_id,
    command_type: str,
    params: dict[str, Any],
    source: str,
    now: datetime,
    created_by=None,
    bulk_operation=None,
    retry_of=None,
    lifetime: timedelta = COMMAND_LIFETIME,
    key: LoadedKey | None = None,
) -> Command:
    """An unsaved, signed Command. Nothing is delivered unsigned: signing happens here, once
    (with ``key`` when the caller builds many: see ``tokens_app.signing.sign``), and never over a
    package name that is not one (package_names_check)."""
    package_names_check(params)
    if command_type == CommandType.REBOOT:
        reboot_params_check(params)
    command = Command(
        agent_id=agent_id,
        command_type=command_type,
        params=params,
        dedupe_key=dedupe_key(command_type, params),
        source=source,
        created_by=created_by,
        created_at=now,
        issued_at=now.replace(microsecond=0),
        expires_at=(now + lifetime).replace(microsecond=0),
        nonce=secrets.token_urlsafe(16),
        bulk_operation=bulk_operation,
        retry_of=retry_of,
    )
    command.key_id, command.signature = sign(
        command_signing_bytes(
            agent_id=str(agent_id),
            command_id=str(command.id),
            command_type=command_type,
            params=params,
            issued_at=int(command.issued_at.timestamp()),
            expires_at=int(command.expires_at.timestamp()),
            nonce=command.nonce,
        ),
        key,
    )
    return command


def command_create(
    *,
    agent: Agent,
    command_type: str,
    params: dict[str, Any] | None = None,
    source: str,
    actor: str = SYSTEM_ACTOR,
    created_by=None,
    bulk_operation=None,
    retry_of=None,
    record: bool = True,
) -> Command:
    """Create one signed command and its command_created event.

    Raises CommandAlreadyOpen when an open command of the same kind exists
    (the database's partial unique constraint decides, so races cannot double it).
    """
    params = params or {}
    now = timezone.now()
    command = command_build(
        agent_id=agent.pk, command_type=command_type, params=params, source=source, now=now,
        created_by=created_by, bulk_operation=bulk_operation, retry_of=retry_of,
    )
    try:
        with transaction.atomic():
            command.save(force_insert=True)
            agent_wake_on_commit(agent.pk)  # an agent on the fast channel checks in now, not at its next poll
            if record:
                record_event(
                    event_type=EventType.COMMAND_CREATED,
                    subtype=EventSubtype.INITIATED,
                    component=Component.SERVER,
                    message=f"{command.title} queued for {agent.hostname}",
                    agent=agent,
                    metadata={"command_id": str(command.pk), "command_type": command_type, "params": params,
                              "source": source, **({"retry_of": str(retry_of.pk)} if retry_of else {})},
                    actor=actor,
                )
    except IntegrityError:
        raise CommandAlreadyOpen() from None
    return command


def wire_format(command: Command) -> dict[str, Any]:
    """A command as the check-in reply carries it; the agent verifies these fields."""
    return {
        "id": str(command.pk),
        "agent_id": str(command.agent_id),
        "type": command.command_type,
        "params": command.params,
        "issued_at": int(command.issued_at.timestamp()),
        "expires_at": int(command.expires_at.timestamp()),
        "nonce": command.nonce,
        "key_id": command.key_id,
        "signature": command.signature,
    }


def commands_deliver(*, agent: Agent, now: datetime) -> list[Command]:
    """Claim the agent's oldest pending commands (at most 10) and mark them sent.

    One read when nothing is pending (the common check-in). Otherwise a
    conditional UPDATE claims them, so a concurrent check-in can never deliver
    the same command twice, and the claimed rows are read back in the same
    transaction.
    """
    candidates = list(
        Command.objects.pending().filter(agent=agent, expires_at__gt=now)
        .order_by("created_at").values_list("pk", flat=True)[:DELIVERY_BATCH]
    )
    if not candidates:
        return []
    with transaction.atomic():
        Command.objects.filter(pk__in=candidates, status=CommandStatus.PENDING).update(
            status=CommandStatus.SENT, sent_at=now
        )
        return list(Command.objects.filter(pk__in=candidates, status=CommandStatus.SENT, sent_at=now)
                    .order_by("created_at"))


def command_retry(*, command: Command, actor: str, created_by=None) -> Command:
    """A new command with the same type and parameters, linked to the failed one."""
    if command.status not in (CommandStatus.FAILED, CommandStatus.TIMED_OUT, CommandStatus.CANCELLED):
        raise Conflict(f"Only failed, timed-out or cancelled commands can be retried (this one is {command.status}).")
    return command_create(
        agent=command.agent, command_type=command.command_type, params=command.params, source=CommandSource.WEB_UI,
        actor=actor, created_by=created_by, retry_of=command,
    )
