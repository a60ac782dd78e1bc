"""Groups in the admin: created, changed and deleted through group_save / group_delete (each a
``group_changed`` event), who is in them on their page, fleet actions for the agents of groups, and the
agent list's group and tag filters."""

from __future__ import annotations

from datetime import timedelta

import pytest

from agents_app.models import Agent, AgentGroup, BulkOperation, Command, PackageUpdate
from agents_app.services.groups import group_save
from events_app.models import SystemEvent
from redflag.admin_site import NAVIGATION
from redflag.models import ServerSettings
from tests.server.agents_app.admin.helpers import AGENTS, OPERATIONS, action, make_agent, messages_of

GROUPS = "/admin/agents_app/agentgroup/"


def hostnames(response) -> list[str]:
    return sorted(agent.hostname for agent in response.context["cl"].result_list)


def group_form(**fields) -> dict:
    return {"name": "", "description": "", "rule_os_family": "", "rule_tag": "", "rule_hostname_pattern": "",
            "rule_package_type": "", **fields}


@pytest.fixture
def no_heartbeat_before_operations(db):
    """Reboots and installs without the enable_heartbeat the server would queue before them."""
    row = ServerSettings.current()
    row.heartbeat_before_operations = False
    row.save()


@pytest.fixture
def web_group(fleet):
    return group_save(group=AgentGroup(name="web", rule_hostname_pattern="web-*"), actor="test")


def test_groups_are_in_the_navigation():
    assert ("Groups", "agents_app", "AgentGroup") in NAVIGATION


def test_creating_a_group_in_the_admin_records_its_rule_and_members(admin_client, fleet):
    response = admin_client.post(f"{GROUPS}add/", group_form(name="linux-web", rule_os_family="linux",
                                                              rule_hostname_pattern="web-*",
                                                              members=[str(fleet["db1"].pk)]))
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    group = AgentGroup.objects.get(name="linux-web")
    assert list(group.members.all()) == [fleet["db1"]]
    # web-02 reports os_family "redhat": the rule wants linux, so it is db-01 by hand and web-01 by rule.
    assert sorted(group.agents().values_list("hostname", flat=True)) == ["db-01", "web-01"]
    event = SystemEvent.objects.get(event_type="group_changed")
    assert event.actor == "admin" and event.component == "config"
    assert event.metadata == {"group_id": group.pk, "group": "linux-web", "action": "created",
                              "rule": {"os_family": "linux", "hostname_pattern": "web-*"}, "members": ["db-01"],
                              "members_truncated": False, "agents": 2, "changed": sorted(event.metadata["changed"])}


def test_a_bad_hostname_pattern_is_a_form_error_not_an_event(admin_client, fleet):
    response = admin_client.post(f"{GROUPS}add/", group_form(name="bad", rule_hostname_pattern="web-(.*)"))
    assert response.status_code == 200
    assert "rule_hostname_pattern" in response.context["adminform"].form.errors
    assert not AgentGroup.objects.exists() and not SystemEvent.objects.filter(event_type="group_changed").exists()


def test_changing_and_deleting_a_group_are_recorded(admin_client, web_group):
    response = admin_client.post(f"{GROUPS}{web_group.pk}/change/", group_form(name="web", rule_tag="production"))
    assert response.status_code == 302
    changed = SystemEvent.objects.filter(event_type="group_changed").latest("created_at")
    assert changed.metadata["action"] == "changed" and changed.metadata["changed"] == ["rule_hostname_pattern",
                                                                                      "rule_tag"]
    response = admin_client.post(f"{GROUPS}{web_group.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not AgentGroup.objects.exists()
    deleted = SystemEvent.objects.filter(event_type="group_changed").latest("created_at")
    assert deleted.metadata["action"] == "deleted" and deleted.metadata["rule"] == {"tag": "production"}
    assert Agent.objects.count() == 4  # the agents stay


def test_the_group_page_lists_the_agents_it_holds_now(admin_client, fleet, web_group):
    Agent.objects.filter(pk=fleet["web1"].pk).update(reported_tags=["<script>x</script>"])
    page = admin_client.get(f"{GROUPS}{web_group.pk}/change/").content.decode()
    assert "<strong>2</strong> agent(s) in this group" in page
    assert "web-01" in page and "web-02" in page and "db-01" not in page
    assert "&lt;script&gt;x&lt;/script&gt;" in page and "<script>x</script>" not in page
    listing = admin_client.get(GROUPS).content.decode()
    assert f'href="{AGENTS}?group={web_group.pk}">2</a>' in listing


def test_reboot_announced_for_a_group_reaches_its_agents_only(admin_client, fleet, web_group, run_bulk_inline,
                                                              no_heartbeat_before_operations):
    Agent.objects.filter(pk=fleet["old"].pk).update(hostname="web-old")  # revoked: left out
    response = run_bulk_inline(admin_client, GROUPS, {"action": "reboot_announced",
                                                      "_selected_action": [web_group.pk]})
    operation = BulkOperation.objects.get()
    assert response.status_code == 302 and response["Location"] == f"{OPERATIONS}{operation.pk}/change/"
    assert operation.params["groups"] == ["web"] and operation.params["delay_minutes"] == 10
    assert (operation.requested, operation.done, operation.failed) == (2, 2, 0)
    reboots = Command.objects.filter(command_type="reboot", bulk_operation=operation)
    assert sorted(reboots.values_list("agent__hostname", flat=True)) == ["web-01", "web-02"]
    assert {tuple(sorted(command.params)) for command in reboots} == {("delay_minutes", "message")}
    started = SystemEvent.objects.get(event_type="bulk_operation", event_subtype="initiated")
    assert started.metadata["groups"] == ["web"] and started.metadata["agents"] == 2


def test_approve_all_then_install_approved_for_groups(admin_client, fleet, web_group, run_bulk_inline,
                                                      no_heartbeat_before_operations):
    run_bulk_inline(admin_client, GROUPS, {"action": "approve_all_updates", "_selected_action": [web_group.pk]})
    assert dict(PackageUpdate.objects.filter(agent=fleet["web1"]).values_list("name", "status")) == {
        "openssl": "approved", "vim": "approved", "postgres": "approved", "nginx": "installed"}
    assert PackageUpdate.objects.get(name="KB5034441").status == "failed"  # db-01 is not in the group
    run_bulk_inline(admin_client, GROUPS, {"action": "install_approved_updates", "_selected_action": [web_group.pk]})
    dry_runs = Command.objects.filter(command_type="dry_run_update").order_by("params__package_type")
    assert [(command.agent.hostname, command.params) for command in dry_runs] == [
        ("web-01", {"package_type": "apt", "packages": ["openssl", "vim"]}),
        ("web-01", {"package_type": "docker", "packages": ["postgres"]})]


def test_a_group_without_agents_starts_nothing(admin_client, fleet):
    empty = group_save(group=AgentGroup(name="nobody", rule_tag="nothing-has-this"), actor="test")
    response = action(admin_client, GROUPS, "scan_now", [empty], follow=True)
    assert "hold no agent that is not revoked" in messages_of(response)[0]
    assert not BulkOperation.objects.exists()


@pytest.mark.parametrize("params, expected", [
    ({"group": "{web}"}, ["web-01", "web-02"]),
    ({"tag": "production"}, ["db-01", "web-01"]),  # admin tag on web-01, reported by db-01
    ({"tag": "eu-west"}, ["web-01"]),
    ({"group": "not-a-number"}, []),
    ({"group": "999999"}, []),
])
def test_agent_list_filters_by_group_and_tag(admin_client, fleet, web_group, params, expected):
    Agent.objects.filter(pk=fleet["web1"].pk).update(tags=["production", "eu-west"])
    Agent.objects.filter(pk=fleet["db1"].pk).update(reported_tags=["production"])
    params = {key: value.format(web=web_group.pk) for key, value in params.items()}
    response = admin_client.get(AGENTS, params)
    assert response.status_code == 200
    assert hostnames(response) == expected


def test_the_tag_filter_offers_admin_and_reported_tags(admin_client, fleet):
    Agent.objects.filter(pk=fleet["web1"].pk).update(tags=["production"])
    Agent.objects.filter(pk=fleet["db1"].pk).update(reported_tags=["Backup", "production"])
    page = admin_client.get(AGENTS).content.decode()
    assert "?tag=Backup" in page and "?tag=production" in page


def test_the_agent_page_shows_its_groups_reported_tags_and_next_check_in(admin_client, fleet, web_group):
    group_save(group=AgentGroup(name="by hand <b>"), members=[fleet["web2"]], actor="test")
    Agent.objects.filter(pk=fleet["web2"].pk).update(reported_tags=["from-config"])
    page = admin_client.get(f"{AGENTS}{fleet['web2'].pk}/change/").content.decode()
    assert f'href="{GROUPS}{web_group.pk}/change/">web</a>' in page
    assert "by hand &lt;b&gt;" in page
    assert "from-config" in page
    # Seen 30 s ago with the default 300 s interval: due in about 4 min; one scan waits for it.
    assert "expected in 4 min" in page and "1 command(s) waiting for it" in page
    page = admin_client.get(f"{AGENTS}{fleet['db1'].pk}/change/").content.decode()
    assert "in no group" in page and "overdue since" in page


def test_the_agent_page_says_when_a_heartbeat_agent_polls(admin_client, fleet, now):
    agent = make_agent("beat-01", seen=timedelta(seconds=1), now=now, heartbeat_until=now + timedelta(minutes=5))
    page = admin_client.get(f"{AGENTS}{agent.pk}/change/").content.decode()
    assert "heartbeat mode: every 5 s" in page
