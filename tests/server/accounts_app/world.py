"""A small fleet split in two groups, something of every kind on each agent, and people in every role.

The out-of-scope agent's hostname and id are the markers the boundary tests look for in every body.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import time, timedelta

from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from accounts_app.services import role_grants_replace
from advisories_app.models import Exposure, Vulnerability
from agents_app.models import Agent, AgentGroup, AgentSubsystem, BulkOperation, PackageUpdate, UpdateLog
from agents_app.services.commands import command_create
from events_app.choices import Component, EventSubtype, EventType
from events_app.services import audit_token_issue, record_event
from policies_app.choices import TurnState
from policies_app.models import MachineTurn, MaintenanceWindow, Policy, Rollout
from redflag.models import ServerSettings
from reports_app.choices import ReportStatus
from reports_app.models import Report
from tests.server.conftest import machine_hash
from tokens_app.services import token_create

PASSWORD = "correct horse battery staple"
INSIDE_HOST = "web-inside-01"
OUTSIDE_HOST = "db-outside-01"

# Who walks the pages: a role on the whole fleet or on the "web" group only, and the mixes that make a
# permission's scope narrower than what the user sees.
PEOPLE = {
    "viewer-fleet": [("viewer", [])],
    "viewer-web": [("viewer", ["web"])],
    "operator-fleet": [("operator", [])],
    "operator-web": [("operator", ["web"])],
    "approver-fleet": [("approver", [])],
    "approver-web": [("approver", ["web"])],
    "auditor-fleet": [("auditor", [])],
    "auditor-web": [("auditor", ["web"])],
    "admin-fleet": [("admin", [])],
    # Reads the whole fleet, acts only on the web servers.
    "approver-web-viewer-fleet": [("viewer", []), ("approver", ["web"]), ("operator", ["web"])],
    "staff-no-role": [],
}
ROLES_OF = {name: {role for role, _ in grants} for name, grants in PEOPLE.items()}


@dataclass
class World:
    inside: Agent
    outside: Agent
    root: object
    users: dict = field(default_factory=dict)
    inside_rows: dict = field(default_factory=dict)  # model label -> pk of a row of the inside agent
    outside_rows: dict = field(default_factory=dict)
    secrets: dict = field(default_factory=dict)  # username -> audit API token

    @property
    def outside_markers(self) -> tuple[str, ...]:
        return (OUTSIDE_HOST, str(self.outside.pk))

    @property
    def inside_markers(self) -> tuple[str, ...]:
        return (INSIDE_HOST, str(self.inside.pk))


def _agent(hostname: str, now) -> Agent:
    return Agent.objects.create(hostname=hostname, machine_id_hash=machine_hash(), os_family="linux",
                                os_name="Debian GNU/Linux", os_version="12", agent_version="0.1.0",
                                last_seen_at=now - timedelta(minutes=1))


def _rows_of(agent: Agent, cve: Vulnerability, index: int) -> dict:
    subsystem = AgentSubsystem.objects.create(agent=agent, name="apt")
    update = PackageUpdate.objects.create(agent=agent, package_type="apt", name=f"openssl{index}",
                                          current_version="3.0.1", available_version="3.0.2", severity="critical",
                                          is_security=True)
    command = command_create(agent=agent, command_type="scan_updates", params={"package_type": "apt"}, source="api")
    log = UpdateLog.objects.create(agent=agent, command=command, package_type="apt", packages=[update.name],
                                   action=UpdateLog.Action.DRY_RUN, succeeded=True, exit_code=0)
    exposure = Exposure.objects.create(package_update=update, agent=agent, vulnerability=cve,
                                       status="fixed_by_update", fixed_version="3.0.2")
    with transaction.atomic():
        event = record_event(event_type=EventType.AGENT_SCAN, subtype=EventSubtype.SUCCESS,
                             component=Component.AGENT, message=f"scan of {agent.hostname}", agent=agent)
    return {"agents_app.agent": agent.pk, "agents_app.agentsubsystem": subsystem.pk,
            "agents_app.packageupdate": update.pk, "agents_app.command": command.pk, "agents_app.updatelog": log.pk,
            "advisories_app.exposure": exposure.pk, "events_app.systemevent": event.pk}


def build_world() -> World:
    now = timezone.now()
    ServerSettings.objects.update_or_create(pk=1, defaults={"public_url": "https://redflag.example.test"})
    ServerSettings.forget()  # the installers render with it
    inside, outside = _agent(INSIDE_HOST, now), _agent(OUTSIDE_HOST, now)
    web = AgentGroup.objects.create(name="web")
    web.members.set([inside])
    db = AgentGroup.objects.create(name="db")
    db.members.set([outside])
    cve = Vulnerability.objects.create(cve_id="CVE-2024-6119", cvss_score=7.5)
    User = get_user_model()
    root = User.objects.create_superuser("root", "root@example.test", PASSWORD)
    world = World(inside=inside, outside=outside, root=root)
    world.inside_rows = {**_rows_of(inside, cve, 1), "agents_app.agentgroup": web.pk}
    world.outside_rows = {**_rows_of(outside, cve, 2), "agents_app.agentgroup": db.pk}
    # An operation over both groups, started by root: no scoped user's own.
    operation = BulkOperation.objects.create(kind=BulkOperation.Kind.SCAN, requested=2, created_by=root,
                                             params={"agent_ids": [str(inside.pk), str(outside.pk)]},
                                             errors=[{"agent": OUTSIDE_HOST, "error": "offline"}])
    world.outside_rows["agents_app.bulkoperation"] = operation.pk
    for group, host, rows in ((web, INSIDE_HOST, world.inside_rows), (db, OUTSIDE_HOST, world.outside_rows)):
        report = Report.objects.create(group=group, scope_name=group.name, period_days=7,
                                       status=ReportStatus.SUCCEEDED, csv_content=f"hostname\n{host}\n".encode())
        rows["reports_app.report"] = report.pk
    window = MaintenanceWindow.objects.create(name="nightly", start_time=time(2, 0), duration_minutes=120,
                                              weekdays=list(range(7)))
    for group, agent, rows in ((web, inside, world.inside_rows), (db, outside, world.outside_rows)):
        policy = Policy.objects.create(name=f"patch {group.name}", window=window)
        policy.groups.set([group])
        rollout = Rollout.objects.create(policy=policy)
        turn = MachineTurn.objects.create(policy=policy, agent=agent, rollout=rollout, occurrence_start=now,
                                          occurrence_end=now + timedelta(hours=2), state=TurnState.WAITING_ADMIN,
                                          claim=uuid.uuid4(), note=f"waits on {agent.hostname}")
        rows.update({"policies_app.policy": policy.pk, "policies_app.rollout": rollout.pk,
                     "policies_app.machineturn": turn.pk})
    token_create(label="lab", max_seats=5, expires_in=timedelta(hours=1), created_by=root)
    for username, grants in PEOPLE.items():
        user = User.objects.create_user(username, f"{username}@example.test", PASSWORD, is_staff=True)
        role_grants_replace(user=user, grants=grants, actor="root", source="admin")
        world.users[username] = user
        _, world.secrets[username] = audit_token_issue(user=user, label=f"{username} api", issued_by="root")
    world.users["root"] = root
    _, world.secrets["root"] = audit_token_issue(user=root, label="root api", issued_by="root")
    return world
