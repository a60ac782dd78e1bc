"""Building blocks of the policy tests: a fleet, a group, a window open at a named instant, a policy."""

from __future__ import annotations

from datetime import datetime, time, timedelta
from datetime import timezone as dt_timezone
from hashlib import sha256

from agents_app.choices import CommandStatus, UpdateSeverity
from agents_app.models import Agent, AgentGroup, Command, PackageUpdate
from agents_app.services.results import command_result_record
from policies_app.models import MaintenanceWindow, Policy

UTC = dt_timezone.utc
# A Sunday; the test window opens every Sunday at 02:00 UTC for two hours.
WINDOW_OPENS = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
IN_WINDOW = WINDOW_OPENS + timedelta(minutes=5)
BEFORE_WINDOW = WINDOW_OPENS - timedelta(hours=1)
AFTER_WINDOW = WINDOW_OPENS + timedelta(hours=3)
SUNDAY = 6


def make_fleet(count: int, prefix: str = "web", seen: datetime | None = IN_WINDOW) -> list[Agent]:
    return Agent.objects.bulk_create([
        Agent(hostname=f"{prefix}-{i:03d}", os_family="linux", last_seen_at=seen,
              machine_id_hash=sha256(f"{prefix}-{i}".encode()).hexdigest())
        for i in range(count)
    ])


def make_group(name: str, pattern: str) -> AgentGroup:
    return AgentGroup.objects.create(name=name, rule_hostname_pattern=pattern)


def make_window(name: str = "Sunday night", **fields) -> MaintenanceWindow:
    fields = {"time_zone": "UTC", "weekdays": [SUNDAY], "start_time": time(2, 0), "duration_minutes": 120,
              **fields}
    return MaintenanceWindow.objects.get_or_create(name=name, defaults=fields)[0]


def make_policy(groups, window=None, name: str = "Security nightly", **fields) -> Policy:
    # Created long ago, and last week's window was handled: nothing looks missed unless a test says so.
    fields = {"created_at": BEFORE_WINDOW - timedelta(days=30),
              "last_occurrence_start": WINDOW_OPENS - timedelta(days=7), **fields}
    policy = Policy.objects.create(name=name, window=window or make_window(), **fields)
    policy.groups.set(groups)
    return policy


def add_updates(agents, name: str = "openssl", *, security: bool = True, severity=UpdateSeverity.IMPORTANT,
                first_seen: datetime = BEFORE_WINDOW - timedelta(days=10), **fields) -> list[PackageUpdate]:
    return PackageUpdate.objects.bulk_create([
        PackageUpdate(agent=agent, package_type="apt", name=name, current_version="1.0", available_version="1.1",
                      is_security=security, severity=severity, first_seen_at=first_seen, **fields)
        for agent in agents
    ])


def answer(command: Command, *, succeeded: bool = True, result: dict | None = None, when: datetime | None = None):
    """The agent's answer through the real result path (which runs agents_app's dry-run → install step)."""
    status = CommandStatus.SUCCEEDED if succeeded else CommandStatus.FAILED
    command_result_record(agent=command.agent, command=command, status=status, output="",
                          result={"exit_code": 0 if succeeded else 1, **(result or {})}, now=when)
