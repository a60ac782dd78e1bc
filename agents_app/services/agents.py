"""Write paths for agents: registration, machine binding, revocation, an admin's edits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.core.exceptions import ObjectDoesNotExist
from django.db import IntegrityError, connection, models, transaction
from django.db.models.expressions import DatabaseDefault
from django.utils import timezone

from agents_app.models import Agent, machine_id_prefix
from agents_app.services.capabilities import agent_capabilities_report
from agents_app.services.credentials import (
    IssuedCredentials,
    credentials_current,
    credentials_issue,
    credentials_prepare,
    credentials_revoke_all,
)
from agents_app.services.results import commands_cancel_open
from agents_app.services.subsystems import subsystems_build, subsystems_ensure
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import agent_actor, record_event, security_violation
from redflag.errors import Conflict, InvalidRequest, MachineMismatch, RegistrationRefused
from tokens_app.choices import RefusalReason, TokenStatus
from tokens_app.models import RegistrationToken
from tokens_app.querysets import token_status
from tokens_app.services import token_redeem, token_redeem_sql, token_refusal

HOST_FACT_FIELDS = ("hostname", "os_family", "os_name", "os_version", "kernel", "arch", "agent_version")
REBIND_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Registration:
    agent: Agent
    credentials: IssuedCredentials
    reregistered: bool


class AlreadyEnrolled(Conflict):
    default_code = "already_enrolled"
    default_detail = ("This machine is already enrolled. Re-enrol it with its agent's current refresh token, "
                      "or ask an admin to allow a re-enrolment of that agent.")


class ReenrolmentWay(models.TextChoices):
    """How a re-enrolment of a known machine proved it may take the agent's identity."""

    REFRESH_TOKEN = "refresh_token", "the agent's current refresh token"
    ADMIN_WINDOW = "admin_window", "a re-enrolment window an admin opened"


def _refused_event(reason: RefusalReason, facts: dict[str, Any], client_ip: str, token_id) -> None:
    record_event(
        event_type=EventType.AGENT_REGISTRATION,
        subtype=EventSubtype.FAILED,
        component=Component.SECURITY,
        severity=Severity.WARNING,
        message=f"Registration of {facts.get('hostname', '?')} refused: {reason.label.lower()} token",
        hostname=facts.get("hostname", ""),
        metadata={"reason": reason.value, "token_id": token_id, "client_ip": client_ip},
        actor=f"agent:{facts.get('hostname', '?')}",
        standalone=True,  # the registration rolled back; its refusal stays on record
    )


def agent_register(
    *, token_secret: str, machine_id_hash: str, facts: dict[str, Any], client_ip: str,
    refresh_token: str | None = None,
) -> Registration:
    """Enroll a new machine, or re-enrol a known one that proves it may.

    The machine id is an identifier, not a secret (any local user reads it), so knowing it proves
    nothing. In one transaction:

    1. Read the token, and find the agent bound to this machine id (locked).
    2. None: a new agent, its registration event, its subsystems (one INSERT) and its first refresh
       token; then it takes a seat of an active token with one conditional UPDATE, last, so the
       token's row lock lasts only until the commit. Seven statements and one commit; on
       PostgreSQL, steps 1 and 2 are one statement plus the event (``_enrol_in_one_statement``).
       tests/server/agents_app/services/test_agents.py counts both.
    3. One: a re-enrolment, allowed only with the agent's current refresh token or through a
       re-enrolment window an admin opened (one use). A revoked agent comes back only through the
       window. The old credentials are revoked, every open command is cancelled (nothing planned
       before is delivered without a new admin action), and no seat is taken: the token only has
       to be neither revoked nor expired.
    Otherwise the transaction rolls back and only the refusal is recorded: 401 for a bad token
    (one answer for every reason), 409 for a known machine without proof, recorded as a
    security violation naming the agent and the token.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            if connection.vendor == "postgresql":
                registration = _enrol_in_one_statement(token_secret, machine_id_hash, facts, client_ip, now)
                if registration is not None:
                    return registration
            token = _one(RegistrationToken.objects.by_secret(token_secret))
            # The lock reads only the id: a new machine (the common case) needs no more.
            agent_id = _one(Agent.objects.select_for_update().filter(machine_id_hash=machine_id_hash)
                            .values_list("pk", flat=True))
            if agent_id is not None:
                agent = Agent.objects.get(pk=agent_id)
                registration = _reenrol(agent, token, facts, client_ip, refresh_token, now)
            else:
                if token is None or token_status(token, now) != TokenStatus.ACTIVE:
                    raise _Refused(token_refusal(token=token, now=now))
                registration = _enrol(token, machine_id_hash, facts, client_ip, now)
                refused = token_redeem(token=token, now=now)
                if refused is not None:  # revoked or used up since the read above
                    raise _Refused(refused)
    except IntegrityError:
        # Another registration for the same machine id committed first.
        raise Conflict("A registration for this machine is already in progress; retry.") from None
    except _Refused as refused:
        known = RegistrationToken.objects.by_secret(token_secret).values_list("pk", flat=True).first()
        _refused_event(refused.reason, facts, client_ip, known)
        raise RegistrationRefused() from None
    except _NotProven as refused:
        security_violation(
            f"Registration refused: the machine of {refused.agent.hostname} is already enrolled and the request "
            f"did not prove it may re-enrol ({refused.why})",
            agent=refused.agent,
            metadata={"reason": "reenrolment_not_proven", "why": refused.why, "token_id": token.pk,
                      "token_label": token.label, "token_prefix": token.prefix, "client_ip": client_ip,
                      "presented_hostname": str(facts.get("hostname", ""))[:255]},
            standalone=True,  # the registration rolled back; its refusal stays on record
        )
        raise AlreadyEnrolled() from None
    return registration


def _one(queryset):
    """The one row of a lookup by a unique column, or None; ``.get()`` sends no ORDER BY (``.first()``
    orders by the model's ordering, which costs compiling on this hot path and buys nothing here)."""
    try:
        return queryset.get()
    except ObjectDoesNotExist:  # a values_list() raises its model's DoesNotExist too
        return None


class _Refused(Exception):
    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


class _NotProven(Exception):
    def __init__(self, agent: Agent, why: str) -> None:
        super().__init__(why)
        self.agent, self.why = agent, why


def _host_facts(facts: dict[str, Any]) -> dict[str, Any]:
    return {field: facts.get(field, "") for field in HOST_FACT_FIELDS}


def _registration_metadata(token: RegistrationToken, facts: dict[str, Any], client_ip: str) -> dict[str, Any]:
    return {"token_id": token.pk, "token_label": token.label, "client_ip": client_ip,
            "agent_version": facts.get("agent_version", "")}


def _registered_record(agent: Agent, token: RegistrationToken, facts: dict[str, Any], client_ip: str) -> None:
    record_event(
        event_type=EventType.AGENT_REGISTRATION,
        subtype=EventSubtype.SUCCESS,
        component=Component.SECURITY,
        message=f"Agent {agent.hostname} registered",
        agent=agent,
        metadata=_registration_metadata(token, facts, client_ip),
        actor=agent_actor(agent),
    )


def _enrol(token, machine_id_hash, facts, client_ip, now) -> Registration:
    agent = Agent.objects.create(machine_id_hash=machine_id_hash, registered_at=now, last_seen_at=now,
                                 capabilities=sorted(set(facts.get("capabilities", ()))), **_host_facts(facts))
    _registered_record(agent, token, facts, client_ip)
    subsystems_ensure(agent=agent, capabilities=facts.get("capabilities", ()), existing=())
    return Registration(agent, credentials_issue(agent=agent, now=now), False)


def _insert_if_seated(row: models.Model) -> tuple[str, list]:
    """The INSERT of one unsaved row, done only if the statement's ``seat`` was taken. Its values are
    prepared as the ORM's own INSERT prepares them; NULL columns are left out (their default is NULL),
    and so are columns the database fills (an auto-numbered id, a ``db_default``)."""
    columns, values = [], []
    for field in row._meta.local_concrete_fields:
        if field.db_returning:
            continue
        value = field.pre_save(row, True)
        if isinstance(value, DatabaseDefault):
            continue
        value = field.get_db_prep_save(value, connection)
        if value is not None:
            columns.append(connection.ops.quote_name(field.column))
            values.append(value)
    table = connection.ops.quote_name(row._meta.db_table)
    return (f"INSERT INTO {table} ({', '.join(columns)}) SELECT {', '.join(['%s'] * len(values))} "
            f"WHERE EXISTS (SELECT 1 FROM seat)", values)


def _enrol_in_one_statement(token_secret, machine_id_hash, facts, client_ip, now) -> Registration | None:
    """PostgreSQL, a new machine: ``_enrol`` and the seat in one statement, then the event (inside the
    caller's transaction).

    The statement locks the agent bound to this machine id if there is one; only if there is none does
    the token's conditional UPDATE (``token_redeem_sql``, the one validity rule) take a seat, and only
    if it did are the agent, its subsystems and its refresh token inserted. The event needs the token's
    id and label, which the UPDATE returns. None when no seat was taken (a known machine, a token that
    is not active): nothing was written, and the caller's general path finds out which and answers.
    The rows skip ``Model.save()``: Agent, AgentSubsystem and RefreshToken have no save() of their
    own and no signal receivers (a model that gains one must leave this path).
    """
    agent = Agent(machine_id_hash=machine_id_hash, registered_at=now, last_seen_at=now,
                  capabilities=sorted(set(facts.get("capabilities", ()))), **_host_facts(facts))
    credentials, refresh_row = credentials_prepare(agent=agent, now=now)
    rows = [agent, *subsystems_build(agent=agent, names=agent.capabilities), refresh_row]
    quote = connection.ops.quote_name
    agents, machine = quote(Agent._meta.db_table), quote(Agent._meta.get_field("machine_id_hash").column)
    seat_sql, seat_params = token_redeem_sql(secret=token_secret, now=now, condition="NOT EXISTS (SELECT 1 FROM known)")
    ctes = [f"known AS (SELECT id FROM {agents} WHERE {machine} = %s FOR UPDATE)", f"seat AS ({seat_sql})"]
    params = [machine_id_hash, *seat_params]
    for index, row in enumerate(rows):
        insert_sql, insert_params = _insert_if_seated(row)
        ctes.append(f"row_{index} AS ({insert_sql})")
        params += insert_params
    with connection.cursor() as cursor:
        cursor.execute(f"WITH {', '.join(ctes)} SELECT id, label FROM seat", params)
        seat = cursor.fetchone()
    if seat is None:
        return None
    for row in rows:
        row._state.adding, row._state.db = False, connection.alias
    token = RegistrationToken(pk=seat[0], label=seat[1])
    _registered_record(agent, token, facts, client_ip)
    return Registration(agent, credentials, False)


def _reenrolment_way(agent: Agent, refresh_token: str | None, now) -> ReenrolmentWay:
    """How this request proves it may take ``agent``'s identity; _NotProven otherwise."""
    if refresh_token and agent.revoked_at is None and credentials_current(agent=agent, secret=refresh_token,
                                                                           now=now):
        return ReenrolmentWay.REFRESH_TOKEN
    if agent.rebind_allowed_until and agent.rebind_allowed_until > now:
        # One use: the conditional UPDATE is the claim (the agent's row is locked anyway).
        if Agent.objects.filter(pk=agent.pk, rebind_allowed_until__gt=now).update(rebind_allowed_until=None):
            return ReenrolmentWay.ADMIN_WINDOW
    if agent.revoked_at is not None:
        raise _NotProven(agent, "the agent is revoked")
    raise _NotProven(agent, "no valid refresh token" if refresh_token else "no refresh token")


def _reenrol(agent, token, facts, client_ip, refresh_token, now) -> Registration:
    # No seat is taken, but the token must be one an admin has not withdrawn (nor let expire).
    if token is None:
        raise _Refused(RefusalReason.UNKNOWN)
    status = token_status(token, now)
    if status not in (TokenStatus.ACTIVE, TokenStatus.EXHAUSTED):
        raise _Refused(RefusalReason(status.value))
    way = _reenrolment_way(agent, refresh_token, now)
    previous = {"hostname": agent.hostname, "revoked_at": agent.revoked_at.isoformat() if agent.revoked_at else None}
    credentials_revoke_all(agent=agent, now=now)
    Agent.objects.filter(pk=agent.pk).update(registered_at=now, last_seen_at=now, revoked_at=None,
                                             rebind_allowed_until=None, **_host_facts(facts))
    agent.refresh_from_db()
    cancelled = commands_cancel_open(agent=agent, reason="the agent re-enrolled", actor=agent_actor(agent))
    restored = previous["revoked_at"] is not None
    record_event(
        event_type=EventType.AGENT_REGISTRATION,
        subtype=EventSubtype.WARNING,
        severity=Severity.WARNING,
        component=Component.SECURITY,
        message=(f"Agent {agent.hostname} re-enrolled with {way.label}"
                 f"{' and restored from revocation' if restored else ''}; old credentials revoked, "
                 f"{cancelled} open command(s) cancelled"),
        agent=agent,
        metadata={**_registration_metadata(token, facts, client_ip), "way": way.value, "restored": restored,
                  "cancelled_commands": cancelled, "previous_hostname": previous["hostname"],
                  "previous_revoked_at": previous["revoked_at"]},
        actor=agent_actor(agent),
    )
    if facts.get("capabilities"):  # the machine may have gained or lost a package manager since
        agent_capabilities_report(agent=agent, capabilities=facts["capabilities"])
    return Registration(agent, credentials_issue(agent=agent, now=now), True)


def agent_check_machine(*, agent: Agent, machine_id_hash: str) -> None:
    """Refuse a request from another machine, unless an admin opened a rebind window."""
    if machine_id_hash == agent.machine_id_hash:
        return
    now = timezone.now()
    if agent.rebind_allowed_until and agent.rebind_allowed_until > now:
        try:
            with transaction.atomic():
                bound = Agent.objects.filter(pk=agent.pk, rebind_allowed_until__gt=now).update(
                    machine_id_hash=machine_id_hash, rebind_allowed_until=None
                )
                if bound:
                    record_event(
                        event_type=EventType.CONFIG_CHANGED,
                        subtype=EventSubtype.SUCCESS,
                        severity=Severity.WARNING,
                        component=Component.SECURITY,
                        message=f"Agent {agent.hostname} bound to a new machine id",
                        agent=agent,
                        metadata={"old_machine_id": machine_id_prefix(agent.machine_id_hash),
                                  "new_machine_id": machine_id_prefix(machine_id_hash)},
                        actor=agent_actor(agent),
                    )
        except IntegrityError:
            bound = 0  # the new id belongs to another agent: refuse below
        if bound:
            agent.machine_id_hash = machine_id_hash
            agent.rebind_allowed_until = None
            return
    security_violation(
        f"Request for {agent.hostname} came from another machine",
        agent=agent,
        metadata={"reason": "machine_mismatch", "presented_machine_id": machine_id_prefix(machine_id_hash),
                  "bound_machine_id": machine_id_prefix(agent.machine_id_hash)},
        standalone=True,  # a refusal changes nothing
    )
    raise MachineMismatch()


def agent_allow_rebind(*, agent: Agent, actor: str) -> None:
    """Admin action: open a re-enrolment window (REBIND_WINDOW, one use) for the agent.

    Within it, either the agent's next authenticated request may bind a new machine id (a
    reinstall that kept the config), or one registration from its machine may re-enrol it without
    its refresh token (a reinstall that lost it) — which also brings back a revoked agent.
    """
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(rebind_allowed_until=timezone.now() + REBIND_WINDOW)
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.INITIATED,
            severity=Severity.WARNING,
            component=Component.SECURITY,
            message=(f"Re-enrolment of {agent.hostname} allowed once within {REBIND_WINDOW.total_seconds() / 3600:g} h"
                     f"{' (the agent is revoked: re-enrolling restores it)' if agent.revoked_at else ''}"),
            agent=agent,
            metadata={"window_hours": REBIND_WINDOW.total_seconds() / 3600, "revoked": agent.revoked_at is not None},
            actor=actor,
        )


def agent_revoke(*, agent: Agent, actor: str) -> None:
    """Admin action: revoke every credential; the agent gets 403 until it registers again."""
    now = timezone.now()
    with transaction.atomic():
        credentials_revoke_all(agent=agent, now=now)
        Agent.objects.filter(pk=agent.pk).update(revoked_at=now)
        record_event(
            event_type=EventType.TOKEN_REVOKED,
            subtype=EventSubtype.SUCCESS,
            severity=Severity.WARNING,
            component=Component.SECURITY,
            message=f"Agent {agent.hostname} revoked",
            agent=agent,
            actor=actor,
        )


# What an admin may change on an agent's page (the rest is reported by the agent).
EDITABLE_FIELDS = ("poll_interval_seconds", "tags", "verify_scans")


def agent_settings_update(*, agent: Agent, changes: dict[str, Any], actor: str) -> bool:
    """An admin's edit of the agent's own settings; False when nothing changed.

    A new poll interval reaches the agent with its next check-in reply, so config_version stays.
    """
    unknown = set(changes) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidRequest(f"not an agent setting: {', '.join(sorted(unknown))}")
    with transaction.atomic():
        stored = Agent.objects.select_for_update().values(*changes).get(pk=agent.pk)
        different = {field: value for field, value in changes.items() if stored[field] != value}
        if not different:
            return False
        Agent.objects.filter(pk=agent.pk).update(**different)
        for field, value in different.items():
            setattr(agent, field, value)
        record_event(
            event_type=EventType.CONFIG_CHANGED, subtype=EventSubtype.SUCCESS, component=Component.CONFIG,
            message=f"Agent {agent.hostname} changed: {', '.join(different)}", agent=agent,
            metadata=different, actor=actor,
        )
    return True
