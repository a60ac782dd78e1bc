"""Reusable reads of the patching policies: who a policy patches, in which ring, which updates it takes,
and which window comes next for a machine. Nothing here writes.

Each read costs a constant number of queries in the number of machines (a few per policy, group or ring).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q

from advisories_app.risk import with_update_risk
from agents_app.choices import UpdateStatus
from agents_app.models import Agent, PackageUpdate
from policies_app.choices import SEVERITY_RANK, ApprovalScope
from policies_app.models import Policy, RolloutStage
from policies_app.windows import Occurrence, current_or_next

# What a policy takes: still waiting (pending), or approved by an admin and not yet installed. A failed
# update is left to an admin, so one broken package is not retried in every window.
TAKEN_STATUSES = (UpdateStatus.PENDING, UpdateStatus.APPROVED)


def enabled_policies():
    """Enabled policies with everything the sweep and the pages read about them, prefetched."""
    return (Policy.objects.filter(enabled=True).select_related("window")
            .prefetch_related("window__blackouts", "groups", "stages__groups"))


def policy_agent_ids(policy: Policy, among: Iterable | None = None) -> set:
    agents = Agent.objects.filter(policy.agents_q())
    if among is not None:
        agents = agents.filter(pk__in=list(among))
    return set(agents.values_list("pk", flat=True))


@dataclass(frozen=True)
class Ring:
    """A rollout stage as the sweep reads it; a policy without stages has one ring of every machine."""

    position: int
    name: str
    agent_ids: frozenset
    soak_hours: int = 0
    success_percent: int = 0
    minimum_machines: int = 0
    halt_failure_percent: int = 100


def policy_rings(policy: Policy, agent_ids: set) -> list[Ring]:
    """The policy's machines split into its rings, in order: a machine belongs to the first ring naming one of
    its groups; a ring without groups takes every machine no ring with groups took."""
    stages: list[RolloutStage] = list(policy.stages.all())
    if not stages:
        return [Ring(position=1, name="All machines", agent_ids=frozenset(agent_ids))]
    taken: set = set()
    named: dict[int, set] = {}
    for stage in stages:
        groups = list(stage.groups.all())
        if groups:
            q = Q(pk__in=[])
            for group in groups:
                q |= group.agents_q()
            members = set(Agent.objects.filter(q, pk__in=list(agent_ids)).values_list("pk", flat=True)) - taken
            named[stage.pk] = members
            taken |= members
    rest = set(agent_ids) - taken
    rings = []
    for stage in stages:
        members = named.get(stage.pk, rest)
        rings.append(Ring(position=stage.position, name=stage.name, agent_ids=frozenset(members),
                          soak_hours=stage.soak_hours, success_percent=stage.success_percent,
                          minimum_machines=stage.minimum_machines, halt_failure_percent=stage.halt_failure_percent))
    return rings


def rules_q(policy: Policy, now: datetime) -> Q:
    """The updates the policy takes, as far as SQL can say (names are matched in Python: fnmatch globs).

    Its rules pick among the pending updates; an update an admin already approved on one of its machines
    is taken whatever the rules say (the approval was the decision; the window is when it happens).
    """
    matching = Q(status__in=TAKEN_STATUSES)
    if policy.approval_scope == ApprovalScope.SECURITY:
        matching &= Q(is_security=True)
    minimum = SEVERITY_RANK.get(policy.minimum_severity, 0)
    if minimum:
        matching &= Q(severity__in=[severity for severity, rank in SEVERITY_RANK.items() if rank >= minimum])
    if policy.package_types:
        matching &= Q(package_type__in=policy.package_types)
    if policy.minimum_age_days:
        old_enough = Q(first_seen_at__lte=now - timedelta(days=policy.minimum_age_days))
        # The soak is waived for an update that fixes a CVE known to be exploited (advisories_app's KEV data).
        matching &= old_enough | Q(known_exploited=True) if policy.exploited_override else old_enough
    # Held packages (apt-mark hold, reported as metadata["held"]) never; "NOT held = true" alone would also
    # drop the rows without the key (SQL's NULL), hence the explicit "no such key".
    not_held = Q(metadata__held__isnull=True) | ~Q(metadata__held=True)
    return (matching | Q(status=UpdateStatus.APPROVED)) & not_held


def taken_updates(policy: Policy, agent_ids: Iterable, now: datetime) -> list[PackageUpdate]:
    """The updates the policy would approve on these machines today: one query."""
    rows = (with_update_risk(PackageUpdate.objects.filter(agent_id__in=list(agent_ids)))
            .filter(rules_q(policy, now)).order_by("agent_id", "package_type", "name"))
    return [row for row in rows if row.status == UpdateStatus.APPROVED or policy.name_allowed(row.name)]


def next_windows_for_agents(agent_ids: Iterable, now: datetime,
                            policies: list[Policy] | None = None) -> dict:
    """For each machine, (policy, occurrence) of the enabled policy whose window comes first (open now
    counts as first). One query per enabled policy, whatever the number of machines."""
    agent_ids = list(agent_ids)
    best: dict = {}
    for policy in (enabled_policies() if policies is None else policies):
        occurrence: Occurrence | None = current_or_next(policy.window.spec(), now)
        if occurrence is None:
            continue
        for agent_id in policy_agent_ids(policy, among=agent_ids):
            known = best.get(agent_id)
            if known is None or occurrence.start < known[1].start:
                best[agent_id] = (policy, occurrence)
    return best


def next_window_for_agent(agent: Agent, now: datetime):
    """(policy, occurrence) of the window that comes next for this machine, or None."""
    return next_windows_for_agents([agent.pk], now).get(agent.pk)
