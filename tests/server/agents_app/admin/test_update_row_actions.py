"""Per-update actions on the update's page and on each row of the updates list (approve, install now,
ignore, ...), each the existing admin action on a one-update selection, and what happens next to it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timezone

import pytest
from django.contrib.auth.models import Permission
from django.utils import timezone as django_timezone

from agents_app.admin import updates as updates_admin
from agents_app.models import AgentGroup, Command, PackageUpdate
from events_app.models import SystemEvent
from policies_app.models import MaintenanceWindow, Policy
from policies_app.selection import next_windows_for_agents
from tests.server.agents_app.admin.helpers import UPDATES, count_queries, grow_fleet
from tests.server.agents_app.admin.test_groups_admin import no_heartbeat_before_operations  # noqa: F401

WINDOW_OPENS = datetime(2026, 12, 5, 2, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Occurrence:
    start: datetime


class WindowsOf:
    """A next-window source as policies_app plugs in: the agents it patches, and the calls it got."""

    def __init__(self, *agents):
        self.patched = {agent.pk for agent in agents}
        self.calls = []

    def __call__(self, agent_ids, now):
        self.calls.append(sorted(str(agent_id) for agent_id in agent_ids))
        return {agent_id: ("nightly-security", Occurrence(WINDOW_OPENS)) for agent_id in agent_ids
                if agent_id in self.patched}


@pytest.fixture
def windows():
    def plug(*agents):
        source = WindowsOf(*agents)
        updates_admin.next_windows_source_set(source)
        return source

    plugged = updates_admin._next_windows_source
    yield plug
    updates_admin.next_windows_source_set(plugged)


def page_of(admin_client, update) -> str:
    response = admin_client.get(f"{UPDATES}{update.pk}/change/")
    assert response.status_code == 200
    return response.content.decode()


def test_the_page_offers_the_actions_its_status_allows_and_they_come_back_to_it(admin_client, fleet):
    openssl = PackageUpdate.objects.get(name="openssl")
    page = page_of(admin_client, openssl)
    assert [value for value in ("approve", "install", "ignore", "unignore", "confirm_dependencies")
            if f'name="update_action" value="{value}"' in page] == ["approve", "install", "ignore"]
    assert ">Waits for an admin<" in page

    response = admin_client.post(f"{UPDATES}{openssl.pk}/change/", {"update_action": "approve"})
    assert response.status_code == 302 and response["Location"] == f"{UPDATES}{openssl.pk}/change/"
    openssl.refresh_from_db()
    assert openssl.status == "approved"
    assert SystemEvent.objects.filter(event_type="config_changed", metadata__packages=["openssl"]).exists()
    page = page_of(admin_client, openssl)
    assert "Approved: waits for an admin to install it" in page
    assert 'value="approve"' not in page and 'value="install"' in page


@pytest.mark.usefixtures("no_heartbeat_before_operations")
def test_install_now_starts_the_dry_run_and_says_so(admin_client, fleet):
    vim = PackageUpdate.objects.get(name="vim")
    admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "install"})
    dry_run = Command.objects.get(command_type="dry_run_update", agent=fleet["web1"])
    assert dry_run.params == {"package_type": "apt", "packages": ["vim"]}
    assert "Dry-run under way: installs at once when it pulls in nothing extra" in page_of(admin_client, vim)


def test_ignore_and_unignore_from_the_page(admin_client, fleet):
    vim = PackageUpdate.objects.get(name="vim")
    admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "ignore"})
    vim.refresh_from_db()
    assert vim.status == "ignored"
    assert 'value="unignore"' in page_of(admin_client, vim)
    admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "unignore"})
    vim.refresh_from_db()
    assert vim.status == "pending"


@pytest.mark.parametrize("name", ["delete_selected", "retry_failed", "no_such_action"])
def test_only_the_row_actions_can_be_posted(admin_client, fleet, name):
    vim = PackageUpdate.objects.get(name="vim")
    assert admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": name}).status_code == 403
    vim.refresh_from_db()
    assert vim.status == "pending"


def test_a_user_who_may_only_read_cannot_act(client, fleet, django_user_model):
    reader = django_user_model.objects.create_user("reader", password="pw", is_staff=True)
    reader.user_permissions.add(Permission.objects.get(codename="view_packageupdate"))
    client.force_login(reader)
    vim = PackageUpdate.objects.get(name="vim")
    assert 'name="update_action"' not in page_of(client, vim)
    assert client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "approve"}).status_code == 403
    vim.refresh_from_db()
    assert vim.status == "pending"


def test_each_row_of_the_list_has_its_buttons_and_returns_to_the_filtered_list(admin_client, fleet):
    listing = admin_client.get(UPDATES, {"status": "outstanding"}).content.decode()
    vim = PackageUpdate.objects.get(name="vim")
    assert f'formaction="{UPDATES}{vim.pk}/change/" name="update_action" value="approve"' in listing
    back = f"http://testserver{UPDATES}?status=outstanding"
    response = admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "approve"}, HTTP_REFERER=back)
    assert response["Location"] == back
    # Somewhere else (another site) is never where it sends the admin.
    response = admin_client.post(f"{UPDATES}{vim.pk}/change/", {"update_action": "ignore"},
                                 HTTP_REFERER=f"https://evil.example{UPDATES}")
    assert response["Location"] == f"{UPDATES}{vim.pk}/change/"


def test_an_approved_update_names_the_window_that_installs_it(admin_client, fleet, windows):
    source = windows(fleet["web1"])
    postgres = PackageUpdate.objects.get(name="postgres")  # approved on web-01
    PackageUpdate.objects.filter(name="KB5034441").update(status="approved")  # db-01: no policy
    listing = admin_client.get(UPDATES).content.decode()
    assert "Installs in the window of policy nightly-security opening 2026-12-05 02:00 UTC" in listing
    assert "Approved: waits for an admin to install it" in listing  # KB5034441
    # One look-up for the whole page, for the agents with an approved update.
    assert source.calls == [sorted([str(fleet["web1"].pk), str(fleet["db1"].pk)])]
    assert "opening 2026-12-05 02:00 UTC" in page_of(admin_client, postgres)


def test_the_list_query_count_does_not_grow_with_rows(admin_client, fleet, now, windows):
    windows(fleet["web1"])
    small = count_queries(admin_client, UPDATES)
    grow_fleet(now, 20)
    PackageUpdate.objects.filter(name="openssl").update(status="approved")
    assert count_queries(admin_client, UPDATES) == small


def test_the_policy_engines_own_read_plugs_in(admin_client, fleet):
    """policies_app's next_windows_for_agents is plugged in when the admin loads: an approved update on a
    machine a policy patches names that policy and its next opening; one on another machine waits."""
    assert updates_admin._next_windows_source is next_windows_for_agents
    window = MaintenanceWindow.objects.create(name="sunday-night", time_zone="Europe/Berlin", weekdays=[6],
                                              start_time=time(3, 0), duration_minutes=120)
    policy = Policy.objects.create(name="web-nightly", window=window)
    policy.groups.add(AgentGroup.objects.create(name="web", rule_hostname_pattern="web-*"))
    postgres = PackageUpdate.objects.get(name="postgres")  # approved on web-01
    page = page_of(admin_client, postgres)
    opening = next_windows_for_agents([fleet["web1"].pk], django_timezone.now())[fleet["web1"].pk][1].start
    assert opening.weekday() == 6 and (opening.hour, opening.minute) in ((1, 0), (2, 0))  # 03:00 Berlin
    assert f"Installs in the window of policy web-nightly opening {opening:%Y-%m-%d %H:%M} UTC" in page
    Policy.objects.filter(pk=policy.pk).update(action="dry_run")  # a policy that only dry-runs says so
    assert (f"Dry-run in the window of policy web-nightly opening {opening:%Y-%m-%d %H:%M} UTC, then waits for an "
            "admin to install it") in page_of(admin_client, postgres)
    PackageUpdate.objects.filter(name="KB5034441").update(status="approved")  # db-01: in no policy's group
    assert "Approved: waits for an admin to install it" in page_of(admin_client, PackageUpdate.objects.get(
        name="KB5034441"))
