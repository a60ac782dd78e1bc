"""Write paths for agents: registration, machine binding, revocation, an admin's edits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, models, transaction
from django.utils import timezone

from agents_app.models import Agent, machine_id_prefix
from agents_app.services.capabilities import agent_capabilities_report
from agents_app.services.credentials import (
    IssuedCredentials,
    credentials_current,
    credentials_issue,
    credentials_revoke_all,
)
from agents_app.services.results import commands_cancel_open
from agents_app.services.subsystems import subsystems_ensure
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import agent_actor, record_event, security_violation
from redflag.errors import Conflict, InvalidRequest, MachineMismatch, RegistrationRefused
from tokens_app.choices import RefusalReason, TokenStatus
from tokens_app.models import RegistrationToken
from tokens_app.querysets import token_status
from tokens_app.services import token_redeem, token_refusal

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

    1. Find the agent bound to this machine id (locked).
    2. None: a new agent, which takes a seat of an active token with one conditional UPDATE, last,
       so the token's row lock lasts only until the commit.
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
            token = RegistrationToken.objects.by_secret(token_secret).first()
            agent = Agent.objects.select_for_update().filter(machine_id_hash=machine_id_hash).first()
            if agent is not None:
                registration = _reenrol(agent, token, facts, client_ip, refresh_token, now)
            else:
                if token is None or token_status(token, now) != TokenStatus.ACTIVE:
                    raise _Refused(token_refusal(secret=token_secret, now=now))
                registration = _enrol(token, machine_id_hash, facts, client_ip, now)
                redeemed = token_redeem(secret=token_secret, now=now)
                if isinstance(redeemed, RefusalReason):  # revoked or used up since the read above
                    raise _Refused(redeemed)
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


def _enrol(token, machine_id_hash, facts, client_ip, now) -> Registration:
    agent = Agent.objects.create(machine_id_hash=machine_id_hash, registered_at=now, last_seen_at=now,
                                 capabilities=sorted(set(facts.get("capabilities", ()))), **_host_facts(facts))
    record_event(
        event_type=EventType.AGENT_REGISTRATION,
        subtype=EventSubtype.SUCCESS,
        component=Component.SECURITY,
        message=f"Agent {agent.hostname} registered",
        agent=agent,
        metadata=_registration_metadata(token, facts, client_ip),
        actor=agent_actor(agent),
    )
    subsystems_ensure(agent=agent, capabilities=facts.get("capabilities", ()))
    return Registration(agent, credentials_issue(agent=agent, now=now), False)


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
