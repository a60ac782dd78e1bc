"""A seeded fleet history with hand-picked figures (README, "Compliance and reports", states the rules).

At NOW, with the default deadlines (critical 7 days, important 14, moderate 30, low 90):

=========  ===============================================================  ==========================
machine    updates                                                          counts as
=========  ===============================================================  ==========================
web-01     openssl, critical security, first seen 8 days ago                overdue critical
web-02     openssl, critical security, 6 days; curl, important, 15 days     overdue important
db-01      zlib, moderate security, 29 days; nano, not security, 200 days;  compliant
           sudo, critical security but ignored, 100 days
db-02      bash critical installed after exactly 3 days (2 days ago);       compliant, offline
           vim important installed after 5 days (yesterday); tar important
           closed 9 days ago (outside a 7-day period)
old-01     revoked: openssl critical, 30 days                               not counted
=========  ===============================================================  ==========================

So: 4 machines, 3 online; critical 3/4 = 75 %, important 75 %, overall 2/4 = 50 %; 5 outstanding updates of
which 4 security; time to patch over 7 days: critical 1 update, 3 days; important 1 update, 5 days.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

import pytest

from agents_app.choices import UpdateStatus
from agents_app.models import Agent, AgentGroup, PackageUpdate
from tests.server.conftest import machine_hash

# A fixed instant for the whole history; every date below is built from it.
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=dt_timezone.utc)
DAY = timedelta(days=1)


def machine(hostname: str, *, online: bool = True, **fields) -> Agent:
    return Agent.objects.create(hostname=hostname, machine_id_hash=machine_hash(hostname), os_family="linux",
                                last_seen_at=NOW - (timedelta(minutes=1) if online else 2 * DAY), **fields)


def update(agent: Agent, name: str, severity: str, *, age: timedelta, security: bool = True,
           status: str = UpdateStatus.PENDING, resolved_ago: timedelta | None = None,
           package_type: str = "apt") -> PackageUpdate:
    first_seen = NOW - age
    return PackageUpdate.objects.create(
        agent=agent, package_type=package_type, name=name, current_version="1.0", available_version="1.1",
        severity=severity, is_security=security, status=status, first_seen_at=first_seen, last_seen_at=NOW,
        status_changed_at=NOW - resolved_ago if resolved_ago is not None else first_seen)


@pytest.fixture
def history(db):
    web1, web2 = machine("web-01"), machine("web-02")
    db1, db2 = machine("db-01"), machine("db-02", online=False)
    old = machine("old-01", revoked_at=NOW - 10 * DAY)
    update(web1, "openssl", "critical", age=8 * DAY)
    update(web2, "openssl", "critical", age=6 * DAY)
    update(web2, "curl", "important", age=15 * DAY)
    update(db1, "zlib", "moderate", age=29 * DAY)
    update(db1, "nano", "low", age=200 * DAY, security=False)
    update(db1, "sudo", "critical", age=100 * DAY, status=UpdateStatus.IGNORED)
    update(db2, "bash", "critical", age=5 * DAY, status=UpdateStatus.INSTALLED, resolved_ago=2 * DAY)
    update(db2, "vim", "important", age=6 * DAY, status=UpdateStatus.INSTALLED, resolved_ago=1 * DAY)
    update(db2, "tar", "important", age=10 * DAY, status=UpdateStatus.CLOSED, resolved_ago=9 * DAY)
    update(old, "openssl", "critical", age=30 * DAY)
    web_group = AgentGroup.objects.create(name="Web servers", rule_hostname_pattern="web-*")
    return {"web-01": web1, "web-02": web2, "db-01": db1, "db-02": db2, "old-01": old, "web": web_group}


def add_machines(count: int, prefix: str = "bulk") -> None:
    """``count`` more machines, each with an overdue critical and a patched important update (for query counts)."""
    for index in range(count):
        agent = machine(f"{prefix}-{index:03d}")
        update(agent, "openssl", "critical", age=20 * DAY)
        update(agent, "curl", "important", age=4 * DAY, status=UpdateStatus.INSTALLED, resolved_ago=DAY)
