"""Patching in the admin: windows and policies created through their forms (recorded as events), bad input
refused with the field named, the policy page's preview, and the rollout actions."""

from __future__ import annotations

import pytest

from events_app.choices import EventType
from events_app.models import SystemEvent
from policies_app.choices import RolloutStatus
from policies_app.models import Blackout, MaintenanceWindow, Policy, Rollout
from tests.server.policies_app.helpers import add_updates, make_fleet, make_group, make_policy

pytestmark = pytest.mark.django_db
WINDOWS = "/admin/policies_app/maintenancewindow/"
POLICIES = "/admin/policies_app/policy/"
ROLLOUTS = "/admin/policies_app/rollout/"


def window_form(**overrides) -> dict:
    data = {
        "name": "Sunday night", "time_zone": "Europe/Berlin", "weekdays": ["6"], "month_days": ["-1"],
        "start_time": "02:30", "duration_minutes": "120",
        "blackouts-TOTAL_FORMS": "1", "blackouts-INITIAL_FORMS": "0",
        "blackouts-MIN_NUM_FORMS": "0", "blackouts-MAX_NUM_FORMS": "1000",
        "blackouts-0-first_date": "2026-12-24", "blackouts-0-last_date": "2026-12-26",
        "blackouts-0-reason": "holidays",
    }
    data.update(overrides)
    return data


def policy_form(window, groups, **overrides) -> dict:
    data = {
        "name": "Security nightly", "description": "", "enabled": "on", "groups": [g.pk for g in groups],
        "window": window.pk, "approval_scope": "security", "minimum_severity": "unknown", "package_types": ["apt"],
        "include_patterns": "", "exclude_patterns": "linux-image-*", "minimum_age_days": "2",
        "exploited_override": "on", "action": "install_no_extra", "reboot": "when_required",
        "reboot_max_concurrent": "1", "reboot_delay_minutes": "5", "missed_window": "next_window",
        "stages-TOTAL_FORMS": "0", "stages-INITIAL_FORMS": "0", "stages-MIN_NUM_FORMS": "0",
        "stages-MAX_NUM_FORMS": "1000",
    }
    data.update(overrides)
    return data


def test_an_admin_creates_a_window_with_a_blackout_and_the_change_is_recorded(admin_client):
    response = admin_client.post(f"{WINDOWS}add/", window_form())
    assert response.status_code == 302, response.content.decode()[:2000]
    window = MaintenanceWindow.objects.get()
    assert (window.weekdays, window.month_days, window.time_zone) == ([6], [-1], "Europe/Berlin")
    assert Blackout.objects.get().reason == "holidays"
    event = SystemEvent.objects.get(event_type=EventType.MAINTENANCE_WINDOW)
    assert event.actor == "admin" and event.metadata["blackouts"] == ["2026-12-24 – 2026-12-26"]
    listing = admin_client.get(WINDOWS).content.decode()
    assert "Sun; last day of the month at 02:30 Europe/Berlin" in listing


@pytest.mark.parametrize(("overrides", "field_message"), [
    ({"time_zone": "Mars/Olympus"}, "is not an IANA time zone"),
    ({"weekdays": [], "month_days": []}, "Pick at least one weekday or day of the month"),
    ({"duration_minutes": "5"}, "greater than or equal to 15"),
    ({"blackouts-0-last_date": "2026-12-01"}, "The last date is before the first"),
])
def test_bad_window_input_is_refused_naming_the_problem(admin_client, overrides, field_message):
    response = admin_client.post(f"{WINDOWS}add/", window_form(**overrides))
    assert response.status_code == 200
    assert field_message in response.content.decode()
    assert not MaintenanceWindow.objects.exists()


def test_an_admin_creates_a_policy_and_its_page_previews_what_will_happen(admin_client):
    agents = make_fleet(2)
    add_updates(agents, "openssl")
    add_updates(agents[:1], "linux-image-amd64")
    admin_client.post(f"{WINDOWS}add/", window_form())
    group = make_group("web", "web-*")
    response = admin_client.post(f"{POLICIES}add/", policy_form(MaintenanceWindow.objects.get(), [group]))
    assert response.status_code == 302, response.content.decode()[:3000]
    policy = Policy.objects.get()
    assert policy.package_types == ["apt"] and list(policy.groups.all()) == [group]
    assert SystemEvent.objects.filter(event_type=EventType.CONFIG_CHANGED, metadata__policy="Security nightly",
                                      actor="admin").exists()
    page = admin_client.get(f"{POLICIES}{policy.pk}/change/").content.decode()
    assert "What will happen" in page
    assert page.count('class="rf-preview-row"') == 2
    assert "openssl 1.1" in page and "linux-image-amd64" not in page.split("What will happen")[1]


def test_a_policy_with_a_bad_pattern_is_refused(admin_client):
    admin_client.post(f"{WINDOWS}add/", window_form())
    data = policy_form(MaintenanceWindow.objects.get(), [make_group("web", "web-*")], include_patterns="$(reboot)")
    response = admin_client.post(f"{POLICIES}add/", data)
    assert response.status_code == 200 and "is not a name pattern" in response.content.decode()


def test_rollout_list_and_its_admin_actions(admin_client):
    policy = make_policy([make_group("web", "web-*")])
    rollout = Rollout.objects.create(policy=policy, status=RolloutStatus.HALTED, halted_reason="canary failed")
    listing = admin_client.get(ROLLOUTS).content.decode()
    assert "canary failed" in listing and "Halted" in listing
    admin_client.post(ROLLOUTS, {"action": "abort", "_selected_action": [rollout.pk]})
    rollout.refresh_from_db()
    assert rollout.status == RolloutStatus.ABORTED


def test_pages_render(admin_client):
    make_policy([make_group("web", "web-*")])
    for url in (WINDOWS, POLICIES, ROLLOUTS, "/admin/policies_app/machineturn/", f"{WINDOWS}add/", f"{POLICIES}add/"):
        assert admin_client.get(url).status_code == 200, url


def test_the_agent_list_and_page_show_the_next_window(admin_client):
    (agent,) = make_fleet(1)
    policy = make_policy([make_group("web", "web-*")])
    listing = admin_client.get("/admin/agents_app/agent/").content.decode()
    assert "Next window" in listing and "Sun " in listing
    page = admin_client.get(f"/admin/agents_app/agent/{agent.pk}/change/").content.decode()
    assert "Next maintenance window" in page and f"/admin/policies_app/policy/{policy.pk}/change/" in page
    assert "window Sunday night" in page
