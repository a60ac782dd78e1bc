""""What will happen": a policy's next window and, per machine, the updates it would approve and what it
would do with them, computed from today's data. A read: nothing is written (tests prove it)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from agents_app.models import Agent, PackageUpdate
from policies_app.choices import OPEN_ROLLOUT_STATUSES, PolicyAction, RebootRule, RolloutStatus
from policies_app.models import Policy, Rollout
from policies_app.selection import policy_agent_ids, policy_rings, taken_updates
from policies_app.windows import Occurrence, current_or_next
from redflag.models import ServerSettings

PREVIEW_MACHINES = 500  # a page, not the whole fleet: the rest is counted


@dataclass
class MachinePreview:
    agent: Agent
    online: bool
    ring: str
    waits_for_ring: bool
    updates: list[PackageUpdate] = field(default_factory=list)

    @property
    def outcome(self) -> str:
        if not self.updates:
            return "Nothing to do"
        if self.waits_for_ring:
            return f"Waits until the rollout reaches ring {self.ring}"
        return "" if self.online else "Offline now: would miss the window"


@dataclass
class PolicyPreview:
    policy: Policy
    occurrence: Occurrence | None
    rollout: Rollout | None
    machines: list[MachinePreview]
    machine_count: int
    action: str
    reboot: str

    @property
    def update_count(self) -> int:
        return sum(len(machine.updates) for machine in self.machines)


def policy_preview(policy: Policy, now: datetime) -> PolicyPreview:
    """A constant number of queries in the number of machines (a few per group and ring)."""
    occurrence = current_or_next(policy.window.spec(), now)
    agent_ids = policy_agent_ids(policy)
    rings = policy_rings(policy, agent_ids)
    rollout = Rollout.objects.filter(policy=policy, status__in=OPEN_ROLLOUT_STATUSES).first()
    # Without an open rollout the next window starts one at the first ring.
    reached = rollout.stage_position if rollout else rings[0].position
    halted = rollout is not None and rollout.status == RolloutStatus.HALTED
    ring_of = {agent_id: ring for ring in rings for agent_id in ring.agent_ids}
    agents = list(Agent.objects.filter(pk__in=list(agent_ids)).order_by("hostname")[:PREVIEW_MACHINES])
    updates = defaultdict(list)
    for update in taken_updates(policy, [agent.pk for agent in agents], now):
        updates[update.agent_id].append(update)
    threshold = now - ServerSettings.current().offline_threshold
    machines = []
    for agent in agents:
        ring = ring_of.get(agent.pk)
        machines.append(MachinePreview(
            agent=agent, online=bool(agent.last_seen_at and agent.last_seen_at >= threshold),
            ring=ring.name if ring else "", waits_for_ring=halted or (ring is not None and ring.position > reached),
            updates=updates.get(agent.pk, []),
        ))
    action = PolicyAction(policy.action).label
    reboot = RebootRule(policy.reboot).label
    if policy.reboot != RebootRule.NEVER:
        reboot += (f"; at most {policy.reboot_max_concurrent} per group at once, announced "
                   f"{policy.reboot_delay_minutes} min ahead")
    return PolicyPreview(policy=policy, occurrence=occurrence, rollout=rollout, machines=machines,
                         machine_count=len(agent_ids), action=action, reboot=reboot)
