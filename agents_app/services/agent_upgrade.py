"""Agent self-update: the update_agent command with its signed, short-lived update nonce.

The nonce names one agent, one target version, a 10-minute window and whether
a downgrade was explicitly allowed; the agent refuses anything else. Start,
success and failure are SystemEvents with one metadata shape:
old_version, new_version, platform, source.
"""

from __future__ import annotations

import secrets
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from agent_client.protocol import update_nonce_bytes
from agents_app.choices import CommandType
from agents_app.models import Agent, AgentRelease, Command
from agents_app.services.commands import command_create
from agents_app.services.heartbeat import heartbeat_before_operation
from agents_app.services.releases import ReleaseError, manifest_wire, version_key
from events_app.choices import Component, EventSubtype, EventType, Severity
from events_app.services import SYSTEM_ACTOR, record_event
from tokens_app.signing import sign

UPDATE_NONCE_LIFETIME = timedelta(minutes=10)
# An update_agent command that has not reported back by then is failed (the timeout sweep).
UPDATE_REPORT_TIMEOUT = timedelta(minutes=15)


def update_metadata(command: Command, agent: Agent) -> dict:
    return {"old_version": command.params.get("old_version", ""), "new_version": command.params.get("version", ""),
            "platform": command.params.get("platform", ""), "source": command.source,
            "command_id": str(command.pk)}


def agent_update_start(*, agent: Agent, release: AgentRelease, source: str, actor: str = SYSTEM_ACTOR,
                       allow_downgrade: bool = False, created_by=None, bulk_operation=None) -> Command:
    """Queue update_agent for one agent, with heartbeat first and the initiated event."""
    if release.revoked_at is not None:
        raise ReleaseError(f"release {release.version} is revoked")
    downgrade = bool(agent.agent_version) and version_key(release.version) < version_key(agent.agent_version)
    if downgrade and not allow_downgrade:
        raise ReleaseError(f"{agent.hostname} runs {agent.agent_version}; {release.version} would be a downgrade")
    now = timezone.now()
    nonce = {"agent_id": str(agent.pk), "version": release.version, "issued_at": int(now.timestamp()),
             "expires_at": int((now + UPDATE_NONCE_LIFETIME).timestamp()), "downgrade": downgrade,
             "nonce": secrets.token_urlsafe(16)}
    key_id, signature = sign(update_nonce_bytes(**nonce))
    params = {
        "version": release.version, "platform": release.platform, "old_version": agent.agent_version,
        "manifest": manifest_wire(release),
        "update_nonce": {**nonce, "key_id": key_id, "signature": signature},
    }
    heartbeat_before_operation(agent=agent, now=now, source=source, actor=actor)
    with transaction.atomic():
        command = command_create(agent=agent, command_type=CommandType.UPDATE_AGENT, params=params, source=source,
                                 actor=actor, created_by=created_by, bulk_operation=bulk_operation)
        record_event(
            event_type=EventType.AGENT_UPDATE, subtype=EventSubtype.INITIATED, component=Component.AGENT,
            message=f"Update of {agent.hostname} from {agent.agent_version or '?'} to {release.version} requested",
            agent=agent, metadata=update_metadata(command, agent), actor=actor,
        )
    return command


def agent_update_finished(*, command: Command, agent: Agent, succeeded: bool, reason: str = "") -> None:
    """Called in the transaction that closes the command (result or timeout)."""
    record_event(
        event_type=EventType.AGENT_UPDATE,
        subtype=EventSubtype.SUCCESS if succeeded else EventSubtype.FAILED,
        severity=Severity.INFO if succeeded else Severity.ERROR,
        component=Component.AGENT,
        message=(f"{agent.hostname} updated to {command.params.get('version')}" if succeeded
                 else f"Update of {agent.hostname} to {command.params.get('version')} failed: {reason[:200]}"),
        agent=agent, metadata={**update_metadata(command, agent), **({"reason": reason[:500]} if reason else {})},
    )
