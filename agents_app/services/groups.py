"""Agent groups: created, changed and deleted with their ``group_changed`` event; fleet actions on groups.

A group's agents are resolved when an action starts (``groups_agent_ids``): the bulk operation keeps the
agent ids and the group names, so a later change of a group or of an agent's tags does not change what
an operation already started does.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Iterable
from typing import Any

from django.db import transaction

from agents_app.models import Agent, AgentGroup, BulkOperation
from agents_app.services.bulk import bulk_operation_start
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import record_event

RULE_FIELDS = ("rule_os_family", "rule_tag", "rule_hostname_pattern", "rule_package_type")
# Hostnames named in a group event's metadata; the count is always there.
MEMBERS_IN_EVENT = 100


def _snapshot(group: AgentGroup) -> dict[str, Any]:
    """What an auditor needs to know of the group as it was: its rule and who it held by hand."""
    members = list(group.members.order_by("hostname").values_list("hostname", flat=True)[:MEMBERS_IN_EVENT + 1])
    return {
        "group_id": group.pk,
        "group": group.name,
        "rule": {field.removeprefix("rule_"): getattr(group, field) for field in RULE_FIELDS
                 if getattr(group, field)},
        "members": members[:MEMBERS_IN_EVENT],
        "members_truncated": len(members) > MEMBERS_IN_EVENT,
        "agents": group.agents().count(),
    }


def group_save(*, group: AgentGroup, actor: str, members: Iterable[Agent] | None = None,
               changed: Iterable[str] = ()) -> AgentGroup:
    """Validate and save a group (and its hand-picked ``members`` when given), recording ``group_changed``
    with the rule, the members and how many agents it holds now. ValidationError for a bad rule."""
    creating = group._state.adding
    group.full_clean(exclude=["members"])
    with transaction.atomic():
        group.save()
        if members is not None:
            group.members.set(members)
        snapshot = _snapshot(group)
        record_event(
            event_type=EventType.GROUP_CHANGED,
            subtype=EventSubtype.SUCCESS,
            component=Component.CONFIG,
            message=f"Group {group.name} {'created' if creating else 'changed'}: {snapshot['agents']} agent(s)",
            metadata={**snapshot, "action": "created" if creating else "changed", "changed": sorted(changed)},
            actor=actor,
        )
    return group


def group_delete(*, group: AgentGroup, actor: str) -> None:
    """Delete a group, recording what it was (its agents stay; only the grouping goes)."""
    with transaction.atomic():
        snapshot = _snapshot(group)
        record_event(
            event_type=EventType.GROUP_CHANGED,
            subtype=EventSubtype.SUCCESS,
            component=Component.CONFIG,
            message=f"Group {group.name} deleted",
            metadata={**snapshot, "action": "deleted"},
            actor=actor,
        )
        group.delete()


def groups_agent_ids(groups: Iterable[AgentGroup]) -> list:
    """The ids of the agents in any of ``groups``, revoked agents left out, in hostname order (one query)."""
    filters = [group.agents_q() for group in groups]
    if not filters:
        return []
    return list(Agent.objects.filter(functools.reduce(operator.or_, filters), revoked_at__isnull=True)
                .order_by("hostname").values_list("pk", flat=True).distinct())


def groups_bulk_operation_start(*, kind: str, groups: Iterable[AgentGroup], params: dict | None = None,
                                user=None) -> BulkOperation | None:
    """A fleet action for the agents of ``groups`` (resolved now), as one bulk operation that names the
    groups; None when the groups hold no agent that is not revoked."""
    groups = list(groups)
    agent_ids = groups_agent_ids(groups)
    if not agent_ids:
        return None
    return bulk_operation_start(kind=kind, agent_ids=agent_ids, params=params, user=user,
                                groups=sorted(group.name for group in groups))
