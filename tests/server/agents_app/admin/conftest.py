"""Fixtures of the admin page tests: the fixture fleet, and bulk operations run at once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from django.utils.module_loading import import_string

from agents_app.choices import CommandStatus, UpdateStatus
from agents_app.models import AgentSubsystem
from agents_app.services.commands import command_create
from tests.server.agents_app.admin.helpers import finished_command, make_agent, make_update


@pytest.fixture
def now():
    return timezone.now()


@pytest.fixture
def fleet(db, now):
    """Two online agents (one in heartbeat, needing a reboot), one offline, one revoked and never seen.

    Outstanding: 5 updates (3 security): critical 2, important 1, low 1, unknown 1;
    apt 2, docker 1, dnf 1, windows_update 1. Installed, ignored and closed rows do not count.
    Commands: 2 failures in the last 24 h (failed, timed out), one older, one succeeded, one open.
    """
    web1 = make_agent("web-01", seen=timedelta(minutes=2), now=now, heartbeat_until=now + timedelta(minutes=8),
                      reboot_required=True, reboot_reason="linux-image")
    web2 = make_agent("web-02", seen=timedelta(seconds=30), now=now, os_family="redhat", os_name="Rocky Linux",
                      os_version="9")
    db1 = make_agent("db-01", seen=timedelta(hours=3), now=now, os_family="windows", os_name="Windows Server",
                     os_version="2022")
    old = make_agent("old-01", seen=None, now=now, revoked_at=now - timedelta(days=1))
    make_update(web1, "openssl", severity="important", is_security=True)
    make_update(web1, "vim", severity="low")
    make_update(web1, "postgres", package_type="docker", status=UpdateStatus.APPROVED)
    make_update(web1, "nginx", severity="moderate", status=UpdateStatus.INSTALLED)
    make_update(web2, "curl", package_type="dnf", severity="critical", is_security=True,
                status=UpdateStatus.PENDING_DEPENDENCIES, dependencies=["libcurl"])
    make_update(web2, "bash", package_type="dnf", severity="moderate", status=UpdateStatus.IGNORED)
    make_update(db1, "KB5034441", package_type="windows_update", severity="critical", is_security=True,
                status=UpdateStatus.FAILED)
    make_update(db1, "KB5000000", package_type="windows_update", severity="critical", status=UpdateStatus.CLOSED)
    for agent in (web1, web2):
        for name in ("apt", "storage"):
            AgentSubsystem.objects.create(agent=agent, name=name)
    finished_command(web1, "scan_storage", CommandStatus.FAILED, timedelta(hours=2), now)
    finished_command(web2, "scan_system", CommandStatus.TIMED_OUT, timedelta(hours=1), now)
    finished_command(db1, "scan_system", CommandStatus.FAILED, timedelta(hours=30), now)
    finished_command(db1, "scan_storage", CommandStatus.SUCCEEDED, timedelta(minutes=5), now)
    command_create(agent=web2, command_type="scan_updates", params={"package_type": "dnf"}, source="api")
    return {"web1": web1, "web2": web2, "db1": db1, "old": old}


@pytest.fixture
def run_bulk_inline(monkeypatch, django_capture_on_commit_callbacks):
    """Run each enqueued django-q2 task right away, through the name bulk_operation_start enqueues.

    Returns a helper that posts an admin action and executes the on-commit enqueue.
    """
    monkeypatch.setattr("agents_app.services.bulk.async_task",
                        lambda func, *args, **kwargs: import_string(func)(*args))

    def post(client, url: str, data: dict):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(url, data)

    return post
