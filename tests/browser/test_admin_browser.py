"""The admin in a real browser: log in, read the dashboard, approve an update, run a bulk action and watch
its progress page reach done (a real django-q2 cluster runs it), turn heartbeat on for one agent."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from agents_app.choices import UpdateStatus
from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command, PackageUpdate
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.browser.conftest import screenshot
from tests.server.conftest import machine_hash

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "browser-admin-pw"
BULK_TIMEOUT_MS = 60_000  # cluster start-up (a few seconds) plus one poll


@pytest.fixture
def fleet(django_user_model):
    ServerSettings.forget()  # the live server runs in this process and shares the per-process cache
    django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)
    now = timezone.now()
    web = Agent.objects.create(hostname="web-01", machine_id_hash=machine_hash(), os_family="linux",
                               os_name="Debian GNU/Linux", os_version="12", agent_version="0.1.0",
                               last_seen_at=now - timedelta(minutes=1), reboot_required=True,
                               system_info={"disks": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4",
                                                       "total_bytes": 100, "used_bytes": 63, "percent": 63.0}],
                                            "reboot_required": True})
    db = Agent.objects.create(hostname="db-01", machine_id_hash=machine_hash(), os_family="linux",
                              os_name="Rocky Linux", os_version="9", agent_version="0.1.0",
                              last_seen_at=now - timedelta(hours=2))
    for agent in (web, db):
        AgentSubsystem.objects.create(agent=agent, name="apt", next_run_at=now + timedelta(days=1))
    PackageUpdate.objects.create(agent=web, package_type="apt", name="openssl", current_version="3.0.11",
                                 available_version="3.0.13", severity="important", is_security=True)
    PackageUpdate.objects.create(agent=db, package_type="dnf", name="zlib", current_version="1.2",
                                 available_version="1.3", severity="low")
    return {"web": web, "db": db}


def run_action(page, name: str) -> None:
    page.select_option("select[name=action]", name)
    page.click("button[name=index]")


def wait_for_bulk_operation_to_finish(page, requested: int) -> BulkOperation:
    """The page reloads itself (meta refresh, 2 s) until the cluster has finished the operation."""
    expect(page).to_have_url(re.compile(r"/admin/agents_app/bulkoperation/[0-9a-f-]{36}/change/$"))
    expect(page.locator(".field-status_label .readonly")).to_have_text("Finished", timeout=BULK_TIMEOUT_MS)
    expect(page.locator(".rf-progress-text").first).to_have_text(f"{requested} / {requested}")
    assert page.locator('meta[http-equiv="refresh"]').count() == 0  # stops refreshing once finished
    operation_id = page.url.rstrip("/").split("/")[-2]
    return BulkOperation.objects.get(pk=operation_id)


def test_admin_dashboard_approve_bulk_scan_and_heartbeat(page, live_server, fleet, qcluster):
    # Log in.
    page.goto("/admin/login/?next=/admin/")
    page.fill("#id_login", "admin")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    # The dashboard.
    expect(page.locator("#rf-agents .rf-number")).to_have_text("2")
    expect(page.locator("#rf-online .rf-number")).to_have_text("1")
    expect(page.locator("#rf-offline .rf-number")).to_have_text("1")
    expect(page.locator("#rf-security .rf-number")).to_have_text("1")
    expect(page.locator("#rf-reboot .rf-number")).to_have_text("1")
    screenshot(page, "dashboard")

    # Approve the security update from the fleet-wide list the dashboard links to.
    page.click("#rf-security")
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    page.locator("#result_list tbody tr", has_text="openssl").locator("input.action-select").check()
    run_action(page, "approve")
    expect(page.locator("ul.messagelist")).to_contain_text("Approved 1 update(s).")
    assert PackageUpdate.objects.get(name="openssl").status == UpdateStatus.APPROVED
    assert SystemEvent.objects.filter(event_type="config_changed", actor="admin").exists()

    # A bulk action over the whole fleet: scan now, run by the django-q2 cluster.
    page.goto("/admin/agents_app/agent/")
    page.check("#action-toggle")
    run_action(page, "scan_now")
    expect(page.locator("ul.messagelist")).to_contain_text("Scan now started for 2 agent(s).")
    operation = wait_for_bulk_operation_to_finish(page, requested=2)
    assert (operation.status, operation.done, operation.failed) == ("finished", 2, 0)
    expect(page.locator(".field-commands_created")).to_contain_text("web-01")
    expect(page.locator(".field-commands_created")).to_contain_text("db-01")
    assert Command.objects.filter(bulk_operation=operation, command_type="scan_updates").count() == 2
    screenshot(page, "bulk_operation")

    # Heartbeat on for one agent, from its own page: queued at once (no bulk operation), back on the page.
    agent_page = f"/admin/agents_app/agent/{fleet['web'].pk}/change/"
    page.goto(agent_page)
    expect(page.locator(".field-storage")).to_contain_text("/dev/sda1")
    screenshot(page, "agent")
    page.click('button[data-action="heartbeat_10"]')
    expect(page.locator("ul.messagelist")).to_contain_text("web-01")
    assert page.url.endswith(agent_page)
    heartbeat = Command.objects.get(command_type="enable_heartbeat")
    assert (heartbeat.agent_id, heartbeat.params, heartbeat.source, heartbeat.bulk_operation_id) == (
        fleet["web"].pk, {"duration_minutes": 10}, "web_ui", None)
    page.goto("/admin/agents_app/command/?command_type__exact=enable_heartbeat")
    rows = page.locator("#result_list tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("web-01")
    expect(rows.first).to_contain_text("Pending")
