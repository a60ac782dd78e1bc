"""Commands: built, created with their event, signed (at creation, or for scheduled scans at delivery),
delivered at check-in, retried.

A leaf: how a command ends (answer, time-out, cancel) is agents_app.services.results.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Case, F, Value, When
from django.utils import timezone

from agent_client.protocol import command_signing_bytes, package_name_problem, reboot_params_problem
from agents_app.choices import SUBSYSTEM_SCAN, CommandSource, CommandStatus, CommandType
from agents_app.models import Agent, Command
from agents_app.services.wakeup import agent_wake_on_commit
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from redflag.errors import Conflict, InvalidRequest
from tokens_app.signing import LoadedKey, primary_key, sign

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
    signed: bool = True,
) -> Command:
    """An unsaved Command, signed here, once (with ``key`` when the caller builds many: see
    ``tokens_app.signing.sign``), and never over a package name that is not one (package_names_check).

    ``signed=False`` only for the scheduler's scans (``scheduled_scan_problem`` says which): they
    are signed by ``commands_deliver`` as they are handed over, and nothing else is ever signed there.
    """
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
        bulk_operation=bulk_operation,
        retry_of=retry_of,
    )
    if signed:
        command_sign(command, key)
    elif problem := scheduled_scan_problem(command):
        raise InvalidRequest(f"refusing to plan an unsigned command: {problem}")
    return command


def command_sign(command: Command, key: LoadedKey | None = None) -> None:
    """Draw the command's nonce (unpredictable: secrets) and sign its envelope, in place."""
    command.nonce = secrets.token_urlsafe(16)
    command.key_id, command.signature = sign(
        command_signing_bytes(
            agent_id=str(command.agent_id),
            command_id=str(command.pk),
            command_type=command.command_type,
            params=command.params,
            issued_at=int(command.issued_at.timestamp()),
            expires_at=int(command.expires_at.timestamp()),
            nonce=command.nonce,
        ),
        key,
    )


def scheduled_scan_problem(command: Command) -> str | None:
    """Why ``command`` may not be signed at delivery (None: it may).

    Only what the scheduler plans is stored unsigned: a scan of one subsystem
    (agents_app.choices.SUBSYSTEM_SCAN), with ``verify`` for package scans. Anything else that
    reaches delivery without a signature was written by something other than RedFlag's own
    write paths, and is refused rather than signed: whoever can write to the database can at
    most ask for a scan.
    """
    if command.source != CommandSource.SCHEDULER:
        return f"a {command.source} command must be signed when it is created"
    params = dict(command.params) if isinstance(command.params, dict) else None
    if params is None:
        return "its parameters are not an object"
    verify = params.pop("verify", None)
    for scan_type, scan_params in SUBSYSTEM_SCAN.values():
        if command.command_type == scan_type and params == scan_params:
            if verify is None or (verify is True and "package_type" in params):
                return None
            return "only package scans take verify, and only as true"
    return f"{command.command_type} with these parameters is not a scheduled scan"


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
    """Claim the agent's oldest pending commands (at most 10), sign the scheduled scans among them,
    and mark them sent.

    1. One read of the pending commands (the common check-in reads nothing: checkin_claim).
    2. Refuse any unsigned command that is not a scheduled scan (scheduled_scan_problem).
    3. Sign the scheduled scans with the primary key: a fresh nonce, key id and signature,
       written with the claim, so what was handed over stays on the row (the admin shows it).
    4. One conditional UPDATE claims them all (status pending → sent): a concurrent check-in can
       never deliver the same command twice, and a scan it claimed first keeps its own
       signature. When the UPDATE claimed fewer rows than were read, the claimed ones are read back.
    """
    candidates = list(
        Command.objects.pending().filter(agent=agent, expires_at__gt=now).order_by("created_at")[:DELIVERY_BATCH]
    )
    if not candidates:
        return []
    unsigned = [command for command in candidates if not command.signature]
    refused = {command.pk: problem for command in unsigned if (problem := scheduled_scan_problem(command))}
    if refused:
        _commands_refuse(agent=agent, refused=refused, now=now)
        candidates = [command for command in candidates if command.pk not in refused]
        unsigned = [command for command in unsigned if command.pk not in refused]
        if not candidates:
            return []
    changes: dict[str, Any] = {"status": CommandStatus.SENT, "sent_at": now}
    if unsigned:
        key = primary_key()
        for command in unsigned:
            command_sign(command, key)
        for field in ("nonce", "key_id", "signature"):
            changes[field] = Case(*[When(pk=command.pk, then=Value(getattr(command, field))) for command in unsigned],
                                  default=F(field))
    # In a transaction, not autocommit: a server that dies while the claim waits on a row lock must
    # leave the commands pending (the UPDATE would otherwise commit by itself once the lock is free,
    # marking sent what no agent received; tests/server/end_to_end/test_crash_recovery.py). Inside a
    # caller's transaction no savepoint is needed: an error here ends the request anyway.
    with transaction.atomic(savepoint=False):
        claimed = Command.objects.filter(pk__in=[command.pk for command in candidates],
                                         status=CommandStatus.PENDING).update(**changes)
    if claimed == len(candidates):
        for command in candidates:
            command.status, command.sent_at = CommandStatus.SENT, now
        return candidates
    # Another check-in of the same agent claimed some first: hand over only what this one claimed.
    return list(Command.objects.filter(pk__in=[command.pk for command in candidates], status=CommandStatus.SENT,
                                       sent_at=now).order_by("created_at"))


def _commands_refuse(*, agent: Agent, refused: dict, now: datetime) -> None:
    """End unsigned commands that are no scheduled scan as failed, unsigned and undelivered, with one
    security_violation event: they did not come from RedFlag's write paths."""
    with transaction.atomic():
        ended = Command.objects.filter(pk__in=list(refused), status=CommandStatus.PENDING, signature="").update(
            status=CommandStatus.FAILED, completed_at=now, output="refused: unsigned and not a scheduled scan")
        if ended:
            record_event(
                event_type=EventType.SECURITY_VIOLATION,
                subtype=EventSubtype.CRITICAL,
                severity=Severity.CRITICAL,
                component=Component.SECURITY,
                message=f"Refused to sign {ended} command(s) for {agent.hostname} that were stored unsigned",
                agent=agent,
                metadata={"commands": {str(pk): problem for pk, problem in refused.items()}},
            )


def command_retry(*, command: Command, actor: str, created_by=None) -> Command:
    """A new command with the same type and parameters, linked to the failed one."""
    if command.status not in (CommandStatus.FAILED, CommandStatus.TIMED_OUT, CommandStatus.CANCELLED):
        raise Conflict(f"Only failed, timed-out or cancelled commands can be retried (this one is {command.status}).")
    return command_create(
        agent=command.agent, command_type=command.command_type, params=command.params, source=CommandSource.WEB_UI,
        actor=actor, created_by=created_by, retry_of=command,
    )
