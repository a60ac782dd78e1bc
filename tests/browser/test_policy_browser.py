"""Patching by policy in a real browser: an admin creates a maintenance window (with a blackout) and a policy
in the admin, and the policy's page shows what will happen: its next window and, per machine, the updates it
would approve."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from playwright.sync_api import expect

from agents_app.models import Agent, AgentGroup, PackageUpdate
from policies_app.models import Blackout, MaintenanceWindow, Policy
from redflag.models import ServerSettings
from tests.browser.conftest import log_in, screenshot
from tests.server.conftest import machine_hash

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]
PASSWORD = "browser-policy-pw"


@pytest.fixture
def fleet(django_user_model):
    ServerSettings.forget()
    django_user_model.objects.create_superuser("admin", "admin@example.net", PASSWORD)
    now = timezone.now()
    agents = [Agent.objects.create(hostname=name, machine_id_hash=machine_hash(), os_family="linux",
                                   last_seen_at=now - timedelta(minutes=1)) for name in ("web-01", "web-02")]
    PackageUpdate.objects.create(agent=agents[0], package_type="apt", name="openssl", current_version="3.0.11",
                                 available_version="3.0.13", severity="important", is_security=True,
                                 first_seen_at=now - timedelta(days=5))
    PackageUpdate.objects.create(agent=agents[1], package_type="apt", name="vim", current_version="9.0",
                                 available_version="9.1", severity="low")  # not security: not taken
    AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*")
    return agents


def test_admin_creates_a_window_and_a_policy_and_sees_the_preview(page, live_server, fleet):
    log_in(page, "admin", PASSWORD)

    page.goto("/admin/policies_app/maintenancewindow/add/")
    page.fill("#id_name", "Sunday night")
    page.fill("#id_time_zone", "Europe/Berlin")
    page.check("#id_weekdays_6")  # Sunday
    page.fill("#id_start_time", "02:30")
    page.fill("#id_duration_minutes", "120")
    page.click("#blackouts-group .add-row a")
    page.fill("#id_blackouts-0-first_date", "2026-12-24")
    page.fill("#id_blackouts-0-last_date", "2026-12-26")
    page.fill("#id_blackouts-0-reason", "holidays")
    page.click("input[name=_save]")
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")
    expect(page.locator("#result_list")).to_contain_text("Sun at 02:30 Europe/Berlin for 2 h 00 min")
    window = MaintenanceWindow.objects.get()
    assert Blackout.objects.get(window=window).reason == "holidays"

    page.goto("/admin/policies_app/policy/add/")
    page.fill("#id_name", "Security nightly")
    page.select_option("#id_groups_from", label="web")
    page.click("#id_groups_add")
    page.select_option("#id_window", label="Sunday night")
    page.click("input[name=_continue]")  # save and keep editing: the preview is on the saved policy's page
    expect(page.locator(".messagelist")).to_contain_text("was added successfully")

    preview = page.locator("#policy-preview")
    expect(preview).to_contain_text("What will happen")
    expect(preview).to_contain_text("Next window: Sun")
    expect(preview.locator("tr.rf-preview-row")).to_have_count(2)
    expect(preview.locator("tr.rf-preview-row", has_text="web-01")).to_contain_text("openssl 3.0.13")
    expect(preview.locator("tr.rf-preview-row", has_text="web-02")).to_contain_text("Nothing to do")
    screenshot(page, "policy-preview")
    policy = Policy.objects.get()
    assert list(policy.groups.values_list("name", flat=True)) == ["web"] and policy.window == window
