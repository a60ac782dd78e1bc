"""Updates across the fleet (admin/updates.py): filters, constant queries, approve / ignore / install actions."""

from __future__ import annotations

from agents_app.choices import CommandType
from agents_app.models import Command, PackageUpdate
from events_app.models import SystemEvent
from tests.server.agents_app.admin.helpers import UPDATES, action, count_queries, grow_fleet


def test_update_list_filters_and_search(admin_client, fleet):
    def names(**params):
        return {update.name for update in admin_client.get(UPDATES, params).context["cl"].result_list}

    assert names(status="outstanding") == {"openssl", "vim", "postgres", "curl", "KB5034441"}
    assert names(status="ignored") == {"bash"}
    assert names(package_type__exact="dnf") == {"curl", "bash"}
    assert names(severity__exact="critical", status="outstanding") == {"curl", "KB5034441"}
    assert names(is_security__exact="1") == {"openssl", "curl", "KB5034441"}
    assert names(agent__id__exact=fleet["db1"].pk) == {"KB5034441", "KB5000000"}
    assert names(q="web-02") == {"curl", "bash"}
    page = admin_client.get(UPDATES).content.decode()
    assert "Updates across the fleet" in page and "1.0 → 1.1" in page


def test_update_list_query_count_does_not_grow(admin_client, fleet, now):
    small = count_queries(admin_client, UPDATES)
    grow_fleet(now, 30)
    # The agent filter lists agents (one query whatever their number); rows come with their agent.
    assert count_queries(admin_client, UPDATES) == small


def test_approve_action_changes_status_and_records_the_event(admin_client, fleet):
    openssl = PackageUpdate.objects.get(name="openssl")
    response = action(admin_client, UPDATES, "approve", [openssl, PackageUpdate.objects.get(name="bash")],
                      follow=True)
    assert "Approved 1 update(s); 1 were not in a state that allows it." in response.content.decode()
    openssl.refresh_from_db()
    assert openssl.status == "approved"
    event = SystemEvent.objects.get(event_type="config_changed", agent=fleet["web1"])
    assert event.actor == "admin" and event.metadata["packages"] == ["openssl"]


def test_ignore_and_unignore_actions(admin_client, fleet):
    vim = PackageUpdate.objects.get(name="vim")
    action(admin_client, UPDATES, "ignore", [vim])
    vim.refresh_from_db()
    assert vim.status == "ignored"
    action(admin_client, UPDATES, "unignore", [vim])
    vim.refresh_from_db()
    assert vim.status == "pending"
    assert SystemEvent.objects.filter(event_type="config_changed", actor="admin").count() == 2


def test_install_action_starts_a_dry_run_and_an_open_one_is_a_message(admin_client, fleet):
    openssl, vim = PackageUpdate.objects.filter(name__in=("openssl", "vim")).order_by("name")
    response = action(admin_client, UPDATES, "install", [openssl, vim], follow=True)
    assert "Started 1 dry-run(s)" in response.content.decode()
    dry_run = Command.objects.get(command_type=CommandType.DRY_RUN_UPDATE)
    assert dry_run.params["packages"] == ["openssl", "vim"] and dry_run.created_by.username == "admin"
    # The same dry-run is still open: CommandAlreadyOpen becomes a message, not a 500.
    response = action(admin_client, UPDATES, "install", [openssl], follow=True)
    assert response.status_code == 200
    assert "already open for: web-01" in response.content.decode()
    assert Command.objects.filter(command_type=CommandType.DRY_RUN_UPDATE).count() == 1


def test_confirm_dependencies_action(admin_client, fleet):
    curl = PackageUpdate.objects.get(name="curl")
    response = action(admin_client, UPDATES, "confirm_dependencies", [curl], follow=True)
    assert "Started 1 install(s)" in response.content.decode()
    command = Command.objects.get(command_type=CommandType.CONFIRM_DEPENDENCIES)
    assert command.params["dependencies"] == ["libcurl"]
    curl.refresh_from_db()
    assert curl.status == "installing"
    response = action(admin_client, UPDATES, "confirm_dependencies", [curl], follow=True)
    assert "None of the selected updates is waiting" in response.content.decode()


def test_update_detail_is_read_only(admin_client, fleet):
    update = PackageUpdate.objects.get(name="openssl")
    url = f"{UPDATES}{update.pk}/change/"
    response = admin_client.get(url)
    assert response.status_code == 200 and 'name="_save"' not in response.content.decode()
    assert admin_client.post(url, {"status": "installed"}).status_code == 403
    assert admin_client.get(f"{UPDATES}add/").status_code == 403
    assert admin_client.post(f"{UPDATES}{update.pk}/delete/", {"post": "yes"}).status_code == 403
    update.refresh_from_db()
    assert update.status == "pending"
