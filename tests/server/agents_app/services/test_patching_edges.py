"""The fleet's side of unattended patching: group writes and fleet actions on groups, when the next poll
is expected, and what the rescan after an install does to the updates it reports."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from django.core.exceptions import ValidationError

from agents_app.models import Agent, AgentGroup, BulkOperation, PackageUpdate
from agents_app.services.groups import group_delete, group_save, groups_agent_ids, groups_bulk_operation_start
from agents_app.services.heartbeat import next_poll_expected
from agents_app.services.package_updates import updates_install
from agents_app.services.reports import updates_report_ingest
from agents_app.services.results import command_result_record
from events_app.models import SystemEvent
from tests.server.conftest import machine_hash

pytestmark = pytest.mark.usefixtures("no_automatic_heartbeat")

NOW = datetime(2026, 3, 29, 0, 30, tzinfo=timezone.utc)


def make(hostname, **fields):
    return Agent.objects.create(hostname=hostname, machine_id_hash=machine_hash(), **fields)


# --- groups ----------------------------------------------------------------------------------


def test_group_save_and_delete_record_what_the_group_was(db):
    web = make("web-1", tags=["production"])
    make("db-1", tags=["production"])
    group = group_save(group=AgentGroup(name="prod-web", rule_tag="production", rule_hostname_pattern="web-*"),
                       members=[], actor="alice")
    group_save(group=group, members=[Agent.objects.get(hostname="db-1")], actor="bob", changed=["members"])
    group_delete(group=group, actor="carol")
    events = list(SystemEvent.objects.filter(event_type="group_changed").order_by("created_at", "seq"))
    assert [(event.actor, event.metadata["action"], event.metadata["agents"]) for event in events] == [
        ("alice", "created", 1), ("bob", "changed", 2), ("carol", "deleted", 2)]
    assert events[1].metadata["members"] == ["db-1"] and events[1].metadata["changed"] == ["members"]
    assert events[2].metadata["rule"] == {"tag": "production", "hostname_pattern": "web-*"}
    assert not AgentGroup.objects.exists() and Agent.objects.get(pk=web.pk)


def test_group_save_refuses_a_bad_rule_and_records_nothing(db):
    with pytest.raises(ValidationError):
        group_save(group=AgentGroup(name="bad", rule_hostname_pattern="$(reboot)"), actor="alice")
    assert not AgentGroup.objects.exists() and not SystemEvent.objects.exists()


def test_the_agents_of_groups_are_resolved_once_without_revoked_or_duplicates(db, django_assert_num_queries):
    make("web-1", os_family="linux")
    make("web-2", os_family="linux", revoked_at=NOW)
    make("win-1", os_family="windows")
    linux = AgentGroup.objects.create(name="linux", rule_os_family="linux")
    web = AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*")
    with django_assert_num_queries(1):
        ids = groups_agent_ids([linux, web])
    assert list(Agent.objects.filter(pk__in=ids).values_list("hostname", flat=True)) == ["web-1"]
    assert groups_agent_ids([]) == []


def test_a_group_action_keeps_the_agents_it_started_with(db, django_capture_on_commit_callbacks, monkeypatch):
    monkeypatch.setattr("agents_app.services.bulk.async_task", lambda *args, **kwargs: None)
    make("web-1")
    web = AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*")
    with django_capture_on_commit_callbacks(execute=True):
        operation = groups_bulk_operation_start(kind=BulkOperation.Kind.SCAN, groups=[web])
    make("web-2")  # joins the group after the start: not part of this operation
    assert operation.requested == 1 and len(operation.params["agent_ids"]) == 1
    assert operation.params["groups"] == ["web"]
    assert groups_bulk_operation_start(kind=BulkOperation.Kind.SCAN,
                                       groups=[AgentGroup.objects.create(name="none", rule_tag="x")]) is None


# --- when the next poll is expected -------------------------------------------------------------


@pytest.mark.parametrize("fields, expected", [
    ({"last_seen_at": None}, (None, None, False)),
    ({"last_seen_at": NOW - timedelta(seconds=30)},
     (NOW + timedelta(seconds=270), NOW + timedelta(seconds=300), False)),  # 300 s + 10 % jitter
    ({"last_seen_at": NOW - timedelta(seconds=30), "poll_interval_seconds": 3600},
     (NOW + timedelta(seconds=3570), NOW + timedelta(seconds=3630), False)),  # jitter at most a minute
    ({"last_seen_at": NOW - timedelta(seconds=2), "heartbeat_until": NOW + timedelta(minutes=5)},
     (NOW + timedelta(seconds=3), NOW + timedelta(seconds=3), True)),
    ({"last_seen_at": NOW - timedelta(seconds=2), "heartbeat_until": NOW - timedelta(seconds=1)},
     (NOW + timedelta(seconds=298), NOW + timedelta(seconds=328), False)),  # heartbeat over
])
def test_next_poll_expected(db, fields, expected):
    assert next_poll_expected(make("a", **fields), NOW) == expected


# --- the rescan after an install ---------------------------------------------------------------


def test_the_rescan_after_an_install_closes_a_dependency_that_the_install_upgraded(db):
    """openssl is installed with libssl3 pulled in; libssl3 had its own pending row. The install's result
    marks openssl installed; the rescan the agent sends right after it no longer lists libssl3, so it is
    closed now instead of showing as pending until the next scheduled scan."""
    agent = make("web-1")
    for name in ("openssl", "libssl3", "vim"):
        PackageUpdate.objects.create(agent=agent, package_type="apt", name=name, current_version="1",
                                     available_version="2")
    (dry_run,) = updates_install(updates=PackageUpdate.objects.filter(name="openssl"), actor="alice")
    command_result_record(agent=agent, command=dry_run, status="succeeded", output="",
                          result={"dependencies": [], "exit_code": 0})
    install = PackageUpdate.objects.get(name="openssl").operation_command
    assert install.command_type == "install_updates"
    command_result_record(agent=agent, command=install, status="succeeded", output="",
                          result={"dependencies": ["libssl3"], "exit_code": 0})
    assert PackageUpdate.objects.get(name="libssl3").status == "pending"  # what the agent would show without it
    vim = {"name": "vim", "current_version": "1", "available_version": "2", "severity": "unknown",
           "is_security": False, "repository": "", "size_bytes": None, "cve_ids": [], "kb_ids": [], "metadata": {}}
    updates_report_ingest(agent=agent, report_id="rescan-1", package_type="apt", updates=[vim], not_checked=[])
    assert dict(PackageUpdate.objects.values_list("name", "status")) == {
        "openssl": "installed", "libssl3": "closed", "vim": "pending"}
