"""The agent pages (admin/agents.py): the list, its filters and constant queries, the agent page, its actions.

Actions on several agents run as bulk operations (their page: test_operations.py).
"""

from __future__ import annotations

import re

import pytest
from django.utils import timezone

from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command, PackageUpdate
from events_app.models import SystemEvent
from tests.server.agents_app.admin.helpers import (
    AGENTS,
    COMMANDS,
    OPERATIONS,
    UPDATES,
    action,
    count_queries,
    grow_fleet,
    messages_of,
)


def test_agent_list_columns(admin_client, fleet):
    response = admin_client.get(AGENTS)
    rows = {agent.hostname: agent for agent in response.context["cl"].result_list}
    assert (rows["web-01"].outstanding_count, rows["web-01"].security_count) == (3, 1)
    assert (rows["web-02"].outstanding_count, rows["web-02"].security_count) == (1, 1)
    assert (rows["db-01"].outstanding_count, rows["db-01"].security_count) == (1, 1)
    assert (rows["old-01"].outstanding_count, rows["old-01"].security_count) == (0, 0)
    page = response.content.decode()
    for label in ("Heartbeat", "Online", "Offline", "Revoked"):
        assert f">{label}</span>" in page
    assert "2 min ago" in page and "3 h ago" in page and "never" in page
    assert "Rocky Linux 9" in page and "Windows Server 2022" in page
    assert f"agent__id__exact={fleet['web1'].pk}" in page


@pytest.mark.parametrize(("params", "expected"), [
    ({"status": "online"}, {"web-01", "web-02"}),
    ({"status": "offline"}, {"db-01", "old-01"}),
    ({"status": "heartbeat"}, {"web-01"}),
    ({"status": "revoked"}, {"old-01"}),
    ({"os_family": "windows"}, {"db-01"}),
    ({"reboot_required__exact": "1"}, {"web-01"}),
    ({"security": "yes"}, {"web-01", "web-02", "db-01"}),
    ({"security": "no"}, {"old-01"}),
    ({"q": "web"}, {"web-01", "web-02"}),
    ({"q": "rocky"}, {"web-02"}),
])
def test_agent_filters_and_search(admin_client, fleet, params, expected):
    response = admin_client.get(AGENTS, params)
    assert {agent.hostname for agent in response.context["cl"].result_list} == expected


def test_agent_list_query_count_does_not_grow_with_agents(admin_client, fleet, now):
    filtered = {"status": "online", "security": "yes", "o": "-5"}  # ordered by the outstanding count, too
    small, small_filtered = count_queries(admin_client, AGENTS), count_queries(admin_client, AGENTS, **filtered)
    grow_fleet(now, 60)  # 64 agents on one page, each with its counts
    assert count_queries(admin_client, AGENTS) == small
    assert count_queries(admin_client, AGENTS, **filtered) == small_filtered
    # session, user, server settings, page count, full count, rows (counts as subqueries), two filter lists,
    # the groups and the tags the group and tag filters offer, the enabled policies (next-window column)
    assert small == 11


def test_agent_page_shows_system_storage_updates_commands_events(admin_client, fleet):
    web1 = fleet["web1"]
    Agent.objects.filter(pk=web1.pk).update(system_info={
        "cpu_model": "AMD EPYC", "cpu_count": 4, "cpu_percent": 12.5, "memory_total_bytes": 8 * 2**30,
        "memory_used_bytes": 2 * 2**30, "uptime_seconds": 93784, "ip_addresses": ["192.0.2.10"],
        "disks": [{"mountpoint": "/", "device": "/dev/sda1", "fstype": "ext4", "total_bytes": 100 * 2**30,
                   "used_bytes": 42 * 2**30, "percent": 42.0},
                  {"mountpoint": "/var/<script>", "device": "/dev/sdb1", "fstype": "xfs", "total_bytes": 10,
                   "used_bytes": 9, "percent": 95.0}],
        "reboot_required": True})
    response = admin_client.get(f"{AGENTS}{web1.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "AMD EPYC" in page and "2.0\xa0GB of 8.0\xa0GB" in page and "1 day, 2:03:04" in page
    assert "/dev/sda1" in page and "width:42.0%" in page and "width:95.0%" in page
    assert "/var/&lt;script&gt;" in page and "/var/<script>" not in page  # agent strings are escaped
    assert "openssl" in page and "postgres" in page and "nginx" not in page  # outstanding only
    assert "scan_storage" in page and "command_created" in page
    assert 'name="subsystems-0-interval_minutes"' in page  # the subsystem inline is editable
    for name in ("scan_now", "heartbeat_10", "stop_heartbeat", "reboot", "approve_security_updates"):
        assert f'data-action="{name}"' in page


def test_agent_page_links_lead_to_that_agents_rows(admin_client, fleet):
    web1 = fleet["web1"]
    page = admin_client.get(f"{AGENTS}{web1.pk}/change/").content.decode()
    links = {
        "All outstanding updates": (UPDATES, 3),
        "All commands for web-01": (COMMANDS, Command.objects.filter(agent=web1).count()),
        "All events for web-01": ("/admin/events_app/systemevent/", SystemEvent.objects.filter(agent=web1).count()),
    }
    for text, (prefix, count) in links.items():
        href = re.search(rf'<a href="({re.escape(prefix)}[^"]*)">{text}', page).group(1).replace("&amp;", "&")
        response = admin_client.get(href)
        assert response.status_code == 200, href  # not a 302 to ?e=1 (a refused lookup)
        assert response.context["cl"].result_count == count, href


def test_agent_page_shows_only_a_prefix_of_the_machine_id(admin_client, fleet):
    """The machine id identifies a machine; in full it would help anyone who wants to impersonate it."""
    web1 = fleet["web1"]
    page = admin_client.get(f"{AGENTS}{web1.pk}/change/").content.decode()
    assert f"{web1.machine_id_hash[:12]}…" in page
    assert web1.machine_id_hash not in page and web1.machine_id_hash[:13] not in page


def test_agent_page_without_a_system_report(admin_client, fleet):
    page = admin_client.get(f"{AGENTS}{fleet['old'].pk}/change/").content.decode()
    assert "No system report yet." in page and "No disks reported." in page


def form_data(response) -> dict:
    """The POST body the change page would send unchanged: the agent form plus its inline formsets."""
    data = {}

    def add(form):
        for name, field in form.fields.items():
            value = form[name].value()
            if isinstance(value, bool) or value is None:
                if value:
                    data[form.add_prefix(name)] = "on"
            else:
                data[form.add_prefix(name)] = value.pk if hasattr(value, "pk") else value
            if field.show_hidden_initial:  # the hidden "initial-" input a browser sends too
                data[form.add_initial_prefix(name)] = data.get(form.add_prefix(name), "")

    add(response.context["adminform"].form)
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
        for form in formset.forms:
            add(form)
    return data


def test_editing_a_subsystem_bumps_config_version_and_records_the_change(admin_client, fleet):
    web1 = fleet["web1"]
    url = f"{AGENTS}{web1.pk}/change/"
    data = form_data(admin_client.get(url))
    version = Agent.objects.get(pk=web1.pk).config_version
    apt_prefix = next(key[: -len("-id")] for key, value in data.items()
                      if key.endswith("-id") and AgentSubsystem.objects.get(pk=value).name == "apt")
    data[f"{apt_prefix}-interval_minutes"] = 45
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert AgentSubsystem.objects.get(agent=web1, name="apt").interval_minutes == 45
    assert Agent.objects.get(pk=web1.pk).config_version == version + 1
    event = SystemEvent.objects.get(event_type="config_changed", agent=web1)
    assert event.actor == "admin" and event.metadata["subsystems"]["apt"]["interval_minutes"] == 45
    assert set(event.metadata["subsystems"]) == {"apt"}  # the unchanged storage row is not reported


def test_editing_an_agent_goes_through_its_write_path_and_records_only_changes(admin_client, fleet):
    web1 = fleet["web1"]
    url = f"{AGENTS}{web1.pk}/change/"
    data = form_data(admin_client.get(url))
    data["poll_interval_seconds"] = 120
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context and response.context["errors"]
    assert Agent.objects.get(pk=web1.pk).poll_interval_seconds == 120
    event = SystemEvent.objects.get(event_type="config_changed", agent=web1)
    assert (event.actor, event.metadata) == ("admin", {"poll_interval_seconds": 120})
    # Saved again as it is: no second event. Read-only facts posted anyway change nothing.
    data = form_data(admin_client.get(url))
    data["hostname"], data["machine_id_hash"] = "impostor", "0" * 64
    assert admin_client.post(url, data).status_code == 302
    assert SystemEvent.objects.filter(event_type="config_changed", agent=web1).count() == 1
    assert Agent.objects.filter(pk=web1.pk, hostname=web1.hostname, machine_id_hash=web1.machine_id_hash).exists()


@pytest.mark.parametrize(("action_name", "expected_types", "params"), [
    ("scan_now", {"scan_updates", "scan_storage"}, None),
    ("heartbeat_10", {"enable_heartbeat"}, {"duration_minutes": 10}),
    ("heartbeat_30", {"enable_heartbeat"}, {"duration_minutes": 30}),
    ("heartbeat_60", {"enable_heartbeat"}, {"duration_minutes": 60}),
    ("stop_heartbeat", {"disable_heartbeat"}, {}),
    ("reboot", {"reboot"}, {}),
])
def test_agent_actions_run_as_bulk_operations(admin_client, fleet, run_bulk_inline, action_name, expected_types,
                                              params):
    selected = [fleet["web1"], fleet["db1"], fleet["old"]]
    response = run_bulk_inline(admin_client, AGENTS, {"action": action_name,
                                                      "_selected_action": [agent.pk for agent in selected]})
    operation = BulkOperation.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{OPERATIONS}{operation.pk}/change/"
    assert "1 revoked agent(s) skipped" in " ".join(messages_of(response))
    assert (operation.status, operation.requested, operation.done, operation.failed) == ("finished", 2, 2, 0)
    created = Command.objects.filter(bulk_operation=operation)
    assert {command.agent.hostname for command in created} <= {"web-01", "db-01"}
    assert {command.command_type for command in created} == expected_types
    assert all(command.source == "web_ui_bulk" for command in created)
    if params is not None:
        assert all(command.params == params for command in created)
    assert SystemEvent.objects.filter(event_type="bulk_operation", event_subtype="initiated", actor="admin").exists()


def test_an_action_on_one_agent_runs_at_once_as_web_ui_and_says_what_it_queued(admin_client, fleet):
    """From one agent's page (or one selected row): no bulk operation, no progress page; the commands say who
    asked and that it was the web UI, and the message names them."""
    response = action(admin_client, AGENTS, "scan_now", [fleet["web1"]])
    assert response.status_code == 302 and response["Location"] == f"{AGENTS}{fleet['web1'].pk}/change/"
    assert not BulkOperation.objects.exists()
    created = Command.objects.filter(agent=fleet["web1"], source="web_ui")
    assert created.exists() and all(command.created_by.username == "admin" for command in created)
    assert all(command.bulk_operation is None for command in created)
    message = " ".join(messages_of(response))
    assert message.startswith("Scan now for web-01: ") and "queued" in message
    assert all(command.title.split(":")[0] in message for command in created[:3])


def test_approve_security_updates_action(admin_client, fleet, run_bulk_inline):
    response = run_bulk_inline(admin_client, AGENTS, {"action": "approve_security_updates",
                                                      "_selected_action": [fleet["web1"].pk, fleet["db1"].pk]})
    assert response.status_code == 302
    statuses = dict(PackageUpdate.objects.values_list("name", "status"))
    assert statuses["openssl"] == "approved" and statuses["KB5034441"] == "approved"  # failed may be approved again
    assert statuses["vim"] == "pending"  # not a security update
    assert statuses["curl"] == "pending_dependencies"  # web-02 was not selected
    event = SystemEvent.objects.get(event_type="config_changed", agent=fleet["web1"])
    assert event.metadata["source"] == "web_ui_bulk" and event.actor == "admin"


def test_only_revoked_agents_selected_starts_nothing(admin_client, fleet):
    response = action(admin_client, AGENTS, "scan_now", [fleet["old"]], follow=True)
    assert "Only revoked agents" in response.content.decode()
    assert not BulkOperation.objects.exists()


def test_agent_page_button_posts_the_changelist_action(admin_client, fleet, run_bulk_inline):
    page = admin_client.get(f"{AGENTS}{fleet['web2'].pk}/change/").content.decode()
    assert f'value="{fleet["web2"].pk}"' in page and f'action="{AGENTS}"' in page
    response = run_bulk_inline(admin_client, AGENTS, {"action": "heartbeat_10",
                                                      "_selected_action": fleet["web2"].pk})
    assert response.status_code == 302
    assert Command.objects.filter(agent=fleet["web2"], command_type="enable_heartbeat").exists()


def test_agent_timeline_interleaves_events_and_commands_and_every_page_links_the_history(admin_client, fleet):
    web1 = fleet["web1"]
    page = admin_client.get(f"{AGENTS}{web1.pk}/change/").content.decode()
    timeline = page[page.index("Timeline"):]
    assert "scan_storage" in timeline and "command_created" in timeline
    assert f'/audit/events/?agent={web1.pk}' in page
    assert 'href="/audit/events/">Event history</a>' in page


def test_agent_rebind_and_revoke_actions(admin_client, agent):
    url = "/admin/agents_app/agent/"
    admin_client.post(url, {"action": "allow_rebind", "_selected_action": [agent.id]})
    assert agent.model.rebind_allowed_until > timezone.now()
    admin_client.post(url, {"action": "revoke_credentials", "_selected_action": [agent.id]})
    assert agent.model.revoked_at is not None
    assert agent.post("checkin", {}).status_code == 401
    page = admin_client.get(url).content.decode()
    assert "Revoked" in page
