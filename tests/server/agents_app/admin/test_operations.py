"""Live operations (admin/operations.py): commands, bulk operations and their progress, update logs."""

from __future__ import annotations

from django.contrib.auth import get_user_model

from agents_app.models import BulkOperation, Command, UpdateLog
from agents_app.services.bulk import bulk_operation_run, bulk_operation_start
from agents_app.services.commands import command_create
from events_app.models import SystemEvent
from tests.server.agents_app.admin.helpers import COMMANDS, LOGS, OPERATIONS, action


def test_a_mangled_bulk_operation_link_shows_nothing(admin_client, fleet):
    response = admin_client.get(COMMANDS, {"bulk_operation": "not-a-uuid"})
    assert response.status_code == 200 and response.context["cl"].result_count == 0


def test_bulk_operation_page_refreshes_until_finished(admin_client, fleet, django_capture_on_commit_callbacks,
                                                      monkeypatch):
    monkeypatch.setattr("agents_app.services.bulk.async_task", lambda *args, **kwargs: None)  # queued, not yet run

    user = get_user_model().objects.get(username="admin")
    operation = bulk_operation_start(kind=BulkOperation.Kind.SCAN, agent_ids=[fleet["web1"].pk, fleet["web2"].pk],
                                     user=user)
    url = f"{OPERATIONS}{operation.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert '<meta http-equiv="refresh" content="2">' in page and "0 / 2" in page
    bulk_operation_run(str(operation.pk))
    page = admin_client.get(url).content.decode()
    assert 'http-equiv="refresh"' not in page
    assert "2 / 2" in page and "Finished" in page and "Scan updates (APT)" in page and "web-02" in page
    assert "4 command(s) started: 4 pending" in page
    assert 'name="_save"' not in page  # view-only
    listing = admin_client.get(OPERATIONS).content.decode()
    assert "2 / 2" in listing and "rf-progress" in listing
    commands = admin_client.get(COMMANDS, {"bulk_operation": operation.pk})
    assert commands.context["cl"].result_count == Command.objects.filter(bulk_operation=operation).count() == 4

    # A command that fails after the operation finished shows on the operation, in the list and on its page.
    Command.objects.filter(pk=Command.objects.filter(bulk_operation=operation).first().pk).update(status="failed")
    page = admin_client.get(url).content.decode()
    assert "Finished, 1 command(s) failed" in page and "4 command(s) started: 1 failed, 3 pending" in page
    assert "Finished, 1 command(s) failed" in admin_client.get(OPERATIONS).content.decode()


def test_bulk_operation_errors_are_listed(admin_client, fleet):
    operation = BulkOperation.objects.create(kind="reboot", requested=3, done=1, failed=2, status="finished",
                                             errors=[{"agent": "web-01", "error": "boom <b>"}])
    page = admin_client.get(f"{OPERATIONS}{operation.pk}/change/").content.decode()
    assert "boom &lt;b&gt;" in page and "3 / 3" in page
    assert admin_client.get(f"{OPERATIONS}add/").status_code == 403


def test_command_list_and_detail(admin_client, fleet):
    page = admin_client.get(COMMANDS).content.decode()
    assert "Live operations" in page and "Scan updates (DNF)" in page and "web-02" in page
    command = Command.objects.get(command_type="scan_storage", status="failed")
    Command.objects.filter(pk=command.pk).update(result={"exit_code": 2}, output="disk <full>")
    response = admin_client.get(f"{COMMANDS}{command.pk}/change/")
    page = response.content.decode()
    assert "&quot;exit_code&quot;: 2" in page and "disk &lt;full&gt;" in page and "<pre" in page
    assert 'name="_save"' not in page
    assert admin_client.get(f"{COMMANDS}add/").status_code == 403
    assert admin_client.post(f"{COMMANDS}{command.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Command.objects.filter(pk=command.pk).exists()
    failed = admin_client.get(COMMANDS, {"outcome": "failed_24h"}).context["cl"].result_list
    assert {c.command_type for c in failed} == {"scan_storage", "scan_system"} and len(failed) == 2


def test_cancel_pending_action(admin_client, fleet):
    pending = Command.objects.get(status="pending")
    sent = command_create(agent=fleet["web1"], command_type="reboot", source="api")
    Command.objects.filter(pk=sent.pk).update(status="sent")
    response = action(admin_client, COMMANDS, "cancel_pending", [pending, sent], follow=True)
    assert "Cancelled 1 command(s); 1 had already reached the agent or finished." in response.content.decode()
    pending.refresh_from_db()
    assert pending.status == "cancelled"
    assert Command.objects.get(pk=sent.pk).status == "sent"
    assert SystemEvent.objects.filter(event_type="command_completed", actor="admin").count() == 1


def test_retry_failed_action_and_its_conflicts(admin_client, fleet):
    failed = Command.objects.get(command_type="scan_storage", status="failed")
    response = action(admin_client, COMMANDS, "retry_failed", [failed], follow=True)
    assert "Queued 1 retry command(s)." in response.content.decode()
    retry = Command.objects.get(retry_of=failed)
    assert retry.status == "pending" and retry.source == "web_ui" and retry.created_by.username == "admin"
    # The retry is open now: a second retry is a CommandAlreadyOpen, shown as a message.
    response = action(admin_client, COMMANDS, "retry_failed", [failed], follow=True)
    assert response.status_code == 200
    assert "the same kind of command is already open" in response.content.decode()
    succeeded = Command.objects.get(status="succeeded")
    response = action(admin_client, COMMANDS, "retry_failed", [succeeded], follow=True)
    assert "Only failed, timed-out or cancelled commands can be retried" in response.content.decode()
    assert Command.objects.filter(retry_of__isnull=False).count() == 1


def test_update_log_admin_is_read_only(admin_client, fleet):
    log = UpdateLog.objects.create(agent=fleet["web1"], package_type="apt", packages=["openssl"], action="install",
                                   succeeded=False, exit_code=100, output_tail="E: <broken>", duration_seconds=3.5)
    listing = admin_client.get(LOGS)
    assert [row.pk for row in listing.context["cl"].result_list] == [log.pk] and "web-01" in listing.content.decode()
    page = admin_client.get(f"{LOGS}{log.pk}/change/").content.decode()
    assert "E: &lt;broken&gt;" in page and 'name="_save"' not in page
    assert admin_client.get(f"{LOGS}add/").status_code == 403
