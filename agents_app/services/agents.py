"""Write paths for agents: registration, machine binding, revocation, an admin's edits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents_app.models import Agent
from agents_app.services.credentials import IssuedCredentials, credentials_issue, credentials_revoke_all
from agents_app.services.subsystems import subsystems_ensure
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import agent_actor, record_event, security_violation
from redflag.errors import Conflict, InvalidRequest, MachineMismatch, RegistrationRefused
from tokens_app.choices import RefusalReason
from tokens_app.models import RegistrationToken
from tokens_app.services import token_redeem, token_refusal

HOST_FACT_FIELDS = ("hostname", "os_family", "os_name", "os_version", "kernel", "arch", "agent_version")
REBIND_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class Registration:
    agent: Agent
    credentials: IssuedCredentials
    reregistered: bool


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
    *, token_secret: str, machine_id_hash: str, facts: dict[str, Any], client_ip: str
) -> Registration:
    """Enroll a machine, or take over its existing record when the machine id is known.

    1. Find the agent bound to this machine id; reuse it (same id, history kept)
       after revoking its old credentials, or create a new one; issue credentials
       and record the event.
    2. Last, consume a token seat with one conditional UPDATE (no over-issue). Its
       row lock lasts only until the commit, so many machines enrolling with one
       token do not queue behind each other's whole registration.
    All in one transaction: a refused seat rolls the registration back. A refusal
    commits only its audit event, then raises the same 401 for every reason.
    """
    now = timezone.now()
    try:
        with transaction.atomic():
            token = RegistrationToken.objects.by_secret(token_secret).active(now).first()
            if token is None:
                raise _Refused(token_refusal(secret=token_secret, now=now))
            registration = _register_with_seat(token, machine_id_hash, facts, client_ip, now)
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
    return registration


class _Refused(Exception):
    def __init__(self, reason: RefusalReason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def _register_with_seat(token, machine_id_hash, facts, client_ip, now) -> Registration:
    host_facts = {field: facts.get(field, "") for field in HOST_FACT_FIELDS}
    agent = Agent.objects.select_for_update().filter(machine_id_hash=machine_id_hash).first()
    metadata = {"token_id": token.pk, "token_label": token.label, "client_ip": client_ip,
                "agent_version": host_facts["agent_version"]}
    if agent is None:
        agent = Agent.objects.create(machine_id_hash=machine_id_hash, registered_at=now, last_seen_at=now, **host_facts)
        record_event(
            event_type=EventType.AGENT_REGISTRATION,
            subtype=EventSubtype.SUCCESS,
            component=Component.SECURITY,
            message=f"Agent {agent.hostname} registered",
            agent=agent,
            metadata=metadata,
            actor=agent_actor(agent),
        )
        reregistered = False
    else:
        previous_hostname = agent.hostname
        credentials_revoke_all(agent=agent, now=now)
        for field, value in host_facts.items():
            setattr(agent, field, value)
        agent.registered_at = now
        agent.last_seen_at = now
        agent.revoked_at = None
        agent.save()
        record_event(
            event_type=EventType.AGENT_REGISTRATION,
            subtype=EventSubtype.WARNING,
            severity=Severity.WARNING,
            component=Component.SECURITY,
            message=f"Machine of {agent.hostname} registered again; existing agent taken over, old credentials revoked",
            agent=agent,
            metadata={**metadata, "previous_hostname": previous_hostname},
            actor=agent_actor(agent),
        )
        reregistered = True
    subsystems_ensure(agent=agent, capabilities=facts.get("capabilities", ()))
    return Registration(agent, credentials_issue(agent=agent, now=now), reregistered)


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
                        metadata={"old_machine_id": agent.machine_id_hash[:12], "new_machine_id": machine_id_hash[:12]},
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
        metadata={"reason": "machine_mismatch", "presented_machine_id": machine_id_hash[:12],
                  "bound_machine_id": agent.machine_id_hash[:12]},
        standalone=True,  # a refusal changes nothing
    )
    raise MachineMismatch()


def agent_allow_rebind(*, agent: Agent, actor: str) -> None:
    """Admin action: let the agent's next authenticated request bind a new machine id."""
    with transaction.atomic():
        Agent.objects.filter(pk=agent.pk).update(rebind_allowed_until=timezone.now() + REBIND_WINDOW)
        record_event(
            event_type=EventType.CONFIG_CHANGED,
            subtype=EventSubtype.INITIATED,
            severity=Severity.WARNING,
            component=Component.SECURITY,
            message=f"Machine rebind allowed for {agent.hostname} for {REBIND_WINDOW.total_seconds() / 3600:g} h",
            agent=agent,
            metadata={"window_hours": REBIND_WINDOW.total_seconds() / 3600},
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
EDITABLE_FIELDS = ("poll_interval_seconds", "tags")


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
