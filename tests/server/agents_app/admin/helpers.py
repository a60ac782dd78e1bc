"""The admin tests' fixture fleet and helpers.

The pages read the wall clock (online/offline, "2 min ago", the 24 h failure
window), so the fixture fleet is built from one `NOW` taken at set-up with
margins of minutes to hours against thresholds of 15 minutes and 24 hours.
"""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext

from agents_app.choices import CommandStatus, UpdateStatus
from agents_app.models import Agent, AgentSubsystem, Command, PackageUpdate
from agents_app.services.commands import command_create
from redflag.models import ServerSettings
from tests.server.conftest import machine_hash

ADMIN = "/admin/"


AGENTS = "/admin/agents_app/agent/"


UPDATES = "/admin/agents_app/packageupdate/"


COMMANDS = "/admin/agents_app/command/"


OPERATIONS = "/admin/agents_app/bulkoperation/"


LOGS = "/admin/agents_app/updatelog/"


def make_agent(hostname: str, *, seen: timedelta | None, now, **fields) -> Agent:
    """seen: how long ago the agent last checked in (None: never)."""
    return Agent.objects.create(
        hostname=hostname, machine_id_hash=machine_hash(), os_family=fields.pop("os_family", "linux"),
        os_name=fields.pop("os_name", "Debian GNU/Linux"), os_version=fields.pop("os_version", "12"),
        agent_version="0.1.0", last_seen_at=None if seen is None else now - seen, **fields,
    )


def make_update(agent: Agent, name: str, *, package_type="apt", severity="unknown", is_security=False,
                status=UpdateStatus.PENDING, **fields) -> PackageUpdate:
    return PackageUpdate.objects.create(agent=agent, package_type=package_type, name=name, current_version="1.0",
                                        available_version="1.1", severity=severity, is_security=is_security,
                                        status=status, **fields)


def finished_command(agent: Agent, command_type: str, status: str, completed_ago: timedelta, now, **params):
    """A command through the real write path, then moved to where a result would have put it."""
    command = command_create(agent=agent, command_type=command_type, params=params, source="api")
    Command.objects.filter(pk=command.pk).update(status=status, completed_at=now - completed_ago)
    return command


def grow_fleet(now, count: int) -> None:
    """More of everything the pages count, to prove query counts do not follow the data."""
    for index in range(count):
        agent = make_agent(f"grown-{index:03d}", seen=timedelta(minutes=index % 40), now=now,
                           heartbeat_until=now + timedelta(minutes=5) if index % 3 == 0 else None,
                           reboot_required=index % 2 == 0)
        make_update(agent, "openssl", severity="critical", is_security=True)
        make_update(agent, "zlib", package_type="dnf", severity="low")
        AgentSubsystem.objects.create(agent=agent, name="apt")
        finished_command(agent, "reboot", CommandStatus.FAILED, timedelta(hours=1), now)


def count_queries(client, url: str, **params) -> int:
    ServerSettings.forget()  # each process caches it for a few seconds: count the cold read every time
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(queries)


def messages_of(response) -> list[str]:
    return [str(message) for message in response.wsgi_request._messages]


def action(client, url: str, name: str, objects, follow: bool = False):
    return client.post(url, {"action": name, "_selected_action": [obj.pk for obj in objects]}, follow=follow)
