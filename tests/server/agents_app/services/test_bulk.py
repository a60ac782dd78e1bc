"""Bulk operations (services/bulk.py): a django-q2 task over the fleet, one agent at a time."""

from __future__ import annotations

from unittest import mock

import pytest

from agents_app.models import BulkOperation, Command, PackageUpdate
from agents_app.services import bulk
from agents_app.services.bulk import bulk_operation_run, bulk_operation_start
from events_app.models import SystemEvent

pytestmark = pytest.mark.usefixtures("no_automatic_heartbeat")


def add_updates(agent, *names, package_type="apt", **fields):
    return [PackageUpdate.objects.create(agent=agent.model, package_type=package_type, name=name,
                                         current_version="1", available_version="2", **fields) for name in names]


def test_bulk_operation_records_progress_and_an_event_per_agent(enroll, django_capture_on_commit_callbacks):
    agents = [enroll(hostname=f"bulk-{index}", capabilities=["apt", "storage"]) for index in range(3)]
    for agent in agents:
        add_updates(agent, "openssl", is_security=True)
        add_updates(agent, "vim")
    with mock.patch("agents_app.services.bulk.async_task") as enqueue, django_capture_on_commit_callbacks(execute=True):
        operation = bulk_operation_start(kind=BulkOperation.Kind.APPROVE, agent_ids=[a.id for a in agents],
                                         params={"security_only": True})
    enqueue.assert_called_once_with("agents_app.tasks.bulk_operation_run", str(operation.pk),
                                    task_name=f"bulk-{operation.pk}")
    bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.requested, operation.done, operation.failed, operation.status) == (3, 3, 0, "finished")
    assert PackageUpdate.objects.filter(status="approved").count() == 3
    assert PackageUpdate.objects.filter(name="vim", status="pending").count() == 3
    per_agent = SystemEvent.objects.filter(event_type="config_changed", metadata__source="web_ui_bulk")
    assert sorted(per_agent.values_list("hostname", flat=True)) == ["bulk-0", "bulk-1", "bulk-2"]
    assert SystemEvent.objects.filter(event_type="bulk_operation").count() == 2  # requested, finished


def test_bulk_scan_is_idempotent_and_counts_missing_agents_as_failed(enroll):
    agents = [enroll(hostname=f"scan-{index}", capabilities=["apt", "storage"]) for index in range(2)]
    operation = BulkOperation.objects.create(kind="scan", requested=3,
                                             params={"agent_ids": [a.id for a in agents] + [
                                                 "00000000-0000-0000-0000-000000000000"]})
    bulk_operation_run(str(operation.pk))
    BulkOperation.objects.filter(pk=operation.pk).update(status="running")  # a retried task
    bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.done, operation.failed) == (2, 1)
    assert Command.objects.filter(source="web_ui_bulk").count() == 4  # no duplicates from the retry
    assert set(Command.objects.values_list("bulk_operation_id", flat=True)) == {operation.pk}


def test_one_failing_agent_does_not_stop_the_fleet(enroll):
    agents = [enroll(hostname=f"f-{index}") for index in range(3)]
    operation = BulkOperation.objects.create(kind="reboot", requested=3, params={"agent_ids": [a.id for a in agents]})
    real = bulk.command_create

    def flaky(*, agent, **kwargs):
        if agent.hostname == "f-1":
            raise RuntimeError("signing key unreadable")
        return real(agent=agent, **kwargs)

    with mock.patch("agents_app.services.bulk.command_create", side_effect=flaky):
        bulk_operation_run(str(operation.pk))
    operation.refresh_from_db()
    assert (operation.done, operation.failed) == (2, 1)
    assert operation.errors == [{"agent": "f-1", "error": "signing key unreadable"}]
