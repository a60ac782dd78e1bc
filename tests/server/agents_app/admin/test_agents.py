"""The admin is the product: fleet dashboard, agents, updates across the fleet, live operations, bulk progress.

The pages read the wall clock (online/offline, "2 min ago", the 24 h failure
window), so the fixture fleet is built from one `NOW` taken at set-up with
margins of minutes to hours against thresholds of 15 minutes and 24 hours.
"""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django.utils.module_loading import import_string

from agents_app.choices import CommandStatus, CommandType, UpdateStatus
from agents_app.commands import command_create
from agents_app.models import Agent, AgentSubsystem, BulkOperation, Command, PackageUpdate, UpdateLog
from events_app.models import SystemEvent
from redflag.models import ServerSettings
from tests.server.conftest import machine_hash

ADMIN = "/admin/"
AGENTS = "/admin/agents_app/agent/"
UPDATES = "/admin/agents_app/packageupdate/"
COMMANDS = "/admin/agents_app/command/"
OPERATIONS = "/admin/agents_app/bulkoperation/"
LOGS = "/admin/agents_app/updatelog/"


# --- fixtures -------------------------------------------------------------------

@pytest.fixture
def now():
    return timezone.now()


def make_agent(hostname: str, *, seen: timedelta | None, now, **fields) -> Agent:
    """seen: how long ago the agent last checked in (None: never)."""
    return Agent.objects.create(
        hostname=hostname, machine_id_hash=machine_hash(), os_family=fields.pop("os_family", "linux"),
        os_name=fields.pop("os_name", "Debian GNU/Linux"), os_version=fields.pop("os_version", "12"),
        agent_version="0.1.0", last_seen_at=None if seen is None else now - seen, **fields,
    )


def make_update(agent: Agent, name: str, *, package_type="apt", severity="unknown", is_security=False,
                status=UpdateStatus.PENDING, **fields) -> PackageUpdate:
    return PackageUpdate.objects.create(agent=agent, package_type=package_type, name=name, current_version="1.0",
                                        available_version="1.1", severity=severity, is_security=is_security,
                                        status=status, **fields)


def finished_command(agent: Agent, command_type: str, status: str, completed_ago: timedelta, now, **params):
    """A command through the real write path, then moved to where a result would have put it."""
    command = command_create(agent=agent, command_type=command_type, params=params, source="api")
    Command.objects.filter(pk=command.pk).update(status=status, completed_at=now - completed_ago)
    return command


@pytest.fixture
def fleet(db, now):
    """Two online agents (one in heartbeat, needing a reboot), one offline, one revoked and never seen.

    Outstanding: 5 updates (3 security): critical 2, important 1, low 1, unknown 1;
    apt 2, docker 1, dnf 1, windows_update 1. Installed, ignored and closed rows do not count.
    Commands: 2 failures in the last 24 h (failed, timed out), one older, one succeeded, one open.
    """
    web1 = make_agent("web-01", seen=timedelta(minutes=2), now=now, heartbeat_until=now + timedelta(minutes=8),
                      reboot_required=True, reboot_reason="linux-image")
    web2 = make_agent("web-02", seen=timedelta(seconds=30), now=now, os_family="redhat", os_name="Rocky Linux",
                      os_version="9")
    db1 = make_agent("db-01", seen=timedelta(hours=3), now=now, os_family="windows", os_name="Windows Server",
                     os_version="2022")
    old = make_agent("old-01", seen=None, now=now, revoked_at=now - timedelta(days=1))
    make_update(web1, "openssl", severity="important", is_security=True)
    make_update(web1, "vim", severity="low")
    make_update(web1, "postgres", package_type="docker", status=UpdateStatus.APPROVED)
    make_update(web1, "nginx", severity="moderate", status=UpdateStatus.INSTALLED)
    make_update(web2, "curl", package_type="dnf", severity="critical", is_security=True,
                status=UpdateStatus.PENDING_DEPENDENCIES, dependencies=["libcurl"])
    make_update(web2, "bash", package_type="dnf", severity="moderate", status=UpdateStatus.IGNORED)
    make_update(db1, "KB5034441", package_type="windows_update", severity="critical", is_security=True,
                status=UpdateStatus.FAILED)
    make_update(db1, "KB5000000", package_type="windows_update", severity="critical", status=UpdateStatus.CLOSED)
    for agent in (web1, web2):
        for name in ("apt", "storage"):
            AgentSubsystem.objects.create(agent=agent, name=name)
    finished_command(web1, "scan_storage", CommandStatus.FAILED, timedelta(hours=2), now)
    finished_command(web2, "scan_system", CommandStatus.TIMED_OUT, timedelta(hours=1), now)
    finished_command(db1, "scan_system", CommandStatus.FAILED, timedelta(hours=30), now)
    finished_command(db1, "scan_storage", CommandStatus.SUCCEEDED, timedelta(minutes=5), now)
    command_create(agent=web2, command_type="scan_updates", params={"package_type": "dnf"}, source="api")
    return {"web1": web1, "web2": web2, "db1": db1, "old": old}


def grow_fleet(now, count: int) -> None:
    """More of everything the pages count, to prove query counts do not follow the data."""
    for index in range(count):
        agent = make_agent(f"grown-{index:03d}", seen=timedelta(minutes=index % 40), now=now,
                           heartbeat_until=now + timedelta(minutes=5) if index % 3 == 0 else None,
                           reboot_required=index % 2 == 0)
        make_update(agent, "openssl", severity="critical", is_security=True)
        make_update(agent, "zlib", package_type="dnf", severity="low")
        AgentSubsystem.objects.create(agent=agent, name="apt")
        finished_command(agent, "reboot", CommandStatus.FAILED, timedelta(hours=1), now)


def count_queries(client, url: str, **params) -> int:
    ServerSettings.forget()  # each process caches it for a few seconds: count the cold read every time
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(queries)


@pytest.fixture
def run_bulk_inline(monkeypatch, django_capture_on_commit_callbacks):
    """Run each enqueued django-q2 task right away, through the name bulk_operation_start enqueues.

    Returns a helper that posts an admin action and executes the on-commit enqueue.
    """
    monkeypatch.setattr("django_q.tasks.async_task",
                        lambda func, *args, **kwargs: import_string(func)(*args))

    def post(client, url: str, data: dict):
        with django_capture_on_commit_callbacks(execute=True):
            return client.post(url, data)

    return post


def messages_of(response) -> list[str]:
    return [str(message) for message in response.wsgi_request._messages]


def action(client, url: str, name: str, objects, follow: bool = False):
    return client.post(url, {"action": name, "_selected_action": [obj.pk for obj in objects]}, follow=follow)


# --- dashboard --------------------------------------------------------------------

def test_dashboard_numbers_for_the_fixture_fleet(admin_client, fleet):
    response = admin_client.get(ADMIN)
    assert response.status_code == 200
    summary = response.context["fleet"]
    assert summary["agents"] == {"total": 4, "online": 2, "offline": 2, "heartbeat": 1, "reboot": 1, "revoked": 1}
    assert summary["updates_total"] == 5 and summary["security"] == 3
    assert {bar["label"]: bar["count"] for bar in summary["severity_bars"]} == {
        "Critical": 2, "Important": 1, "Moderate": 0, "Low": 1, "Unknown": 1}
    assert {bar["label"]: bar["count"] for bar in summary["type_bars"]} == {
        "APT": 2, "DNF": 1, "Docker images": 1, "Windows Update": 1, "winget": 0}
    assert summary["commands"] == {"open": 1, "failed_24h": 2}
    page = response.content.decode()
    assert "Fleet dashboard" in page and "failed commands (24 h)" in page
    assert "cdn" not in page.lower() and "<script src=\"http" not in page  # no external assets
    # The app list is still there, with the admins' names for the lists.
    assert "Updates across the fleet" in page and "Live operations" in page


def test_every_dashboard_figure_links_to_a_list_with_that_many_rows(admin_client, fleet):
    response = admin_client.get(ADMIN)
    summary, page = response.context["fleet"], response.content.decode()
    links, agents = summary["links"], summary["agents"]
    expected = {
        links["online"]: agents["online"], links["offline"]: agents["offline"],
        links["heartbeat"]: agents["heartbeat"], links["reboot"]: agents["reboot"],
        links["revoked"]: agents["revoked"], links["agents"]: agents["total"],
        links["updates"]: summary["updates_total"], links["security"]: summary["security"],
        links["failed_commands"]: summary["commands"]["failed_24h"],
        links["open_commands"]: summary["commands"]["open"],
    }
    expected.update({bar["url"]: bar["count"] for bar in summary["severity_bars"] + summary["type_bars"]})
    for url, count in expected.items():
        assert url.replace("&", "&amp;") in page, url
        response = admin_client.get(url)
        assert response.status_code == 200, url
        assert response.context["cl"].result_count == count, url


def test_dashboard_query_count_does_not_grow_with_the_fleet(admin_client, fleet, now, django_assert_num_queries):
    small = count_queries(admin_client, ADMIN)
    grow_fleet(now, 40)
    assert count_queries(admin_client, ADMIN) == small
    # session, user, server settings, agents aggregate, updates grouped, commands aggregate, recent actions
    ServerSettings.forget()
    with django_assert_num_queries(7):
        admin_client.get(ADMIN)


# --- agents -------------------------------------------------------------------------

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
    # session, user, server settings, page count, full count, rows (counts as subqueries), two filter lists
    assert small == 8


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


def test_a_mangled_bulk_operation_link_shows_nothing(admin_client, fleet):
    response = admin_client.get(COMMANDS, {"bulk_operation": "not-a-uuid"})
    assert response.status_code == 200 and response.context["cl"].result_count == 0


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


# --- bulk operation page ------------------------------------------------------------

def test_bulk_operation_page_refreshes_until_finished(admin_client, fleet, django_capture_on_commit_callbacks,
                                                      monkeypatch):
    monkeypatch.setattr("django_q.tasks.async_task", lambda *args, **kwargs: None)  # queued, not yet run
    from agents_app.bulk import bulk_operation_run, bulk_operation_start
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="admin")
    operation = bulk_operation_start(kind=BulkOperation.Kind.SCAN, agent_ids=[fleet["web1"].pk, fleet["web2"].pk],
                                     user=user)
    url = f"{OPERATIONS}{operation.pk}/change/"
    page = admin_client.get(url).content.decode()
    assert '<meta http-equiv="refresh" content="2">' in page and "0 / 2" in page
    bulk_operation_run(str(operation.pk))
    page = admin_client.get(url).content.decode()
    assert 'http-equiv="refresh"' not in page
    assert "2 / 2" in page and "Finished" in page and "scan_updates" in page and "web-02" in page
    assert 'name="_save"' not in page  # view-only
    listing = admin_client.get(OPERATIONS).content.decode()
    assert "2 / 2" in listing and "rf-progress" in listing
    commands = admin_client.get(COMMANDS, {"bulk_operation": operation.pk})
    assert commands.context["cl"].result_count == Command.objects.filter(bulk_operation=operation).count() == 4


def test_bulk_operation_errors_are_listed(admin_client, fleet):
    operation = BulkOperation.objects.create(kind="reboot", requested=3, done=1, failed=2, status="finished",
                                             errors=[{"agent": "web-01", "error": "boom <b>"}])
    page = admin_client.get(f"{OPERATIONS}{operation.pk}/change/").content.decode()
    assert "boom &lt;b&gt;" in page and "3 / 3" in page
    assert admin_client.get(f"{OPERATIONS}add/").status_code == 403


# --- updates across the fleet --------------------------------------------------------

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


# --- live operations ----------------------------------------------------------------

def test_command_list_and_detail(admin_client, fleet):
    page = admin_client.get(COMMANDS).content.decode()
    assert "Live operations" in page and "scan_updates" in page and "web-02" in page
    command = Command.objects.get(command_type="scan_storage", status="failed")
    Command.objects.filter(pk=command.pk).update(result={"exit_code": 2}, output="disk <full>")
    response = admin_client.get(f"{COMMANDS}{command.pk}/change/")
    page = response.content.decode()
    assert "&quot;exit_code&quot;: 2" in page and "disk &lt;full&gt;" in page and "<pre" in page
    assert 'name="_save"' not in page
    assert admin_client.get(f"{COMMANDS}add/").status_code == 403
    assert admin_client.post(f"{COMMANDS}{command.pk}/delete/", {"post": "yes"}).status_code == 403
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


# --- update logs ------------------------------------------------------------------

def test_update_log_admin_is_read_only(admin_client, fleet):
    log = UpdateLog.objects.create(agent=fleet["web1"], package_type="apt", packages=["openssl"], action="install",
                                   succeeded=False, exit_code=100, output_tail="E: <broken>", duration_seconds=3.5)
    listing = admin_client.get(LOGS)
    assert [row.pk for row in listing.context["cl"].result_list] == [log.pk] and "web-01" in listing.content.decode()
    page = admin_client.get(f"{LOGS}{log.pk}/change/").content.decode()
    assert "E: &lt;broken&gt;" in page and 'name="_save"' not in page
    assert admin_client.get(f"{LOGS}add/").status_code == 403


def test_subsystems_across_the_fleet_change_in_bulk(admin_client, fleet):
    url = "/admin/agents_app/agentsubsystem/"
    apt = AgentSubsystem.objects.filter(name="apt")
    before = dict(Agent.objects.values_list("hostname", "config_version"))
    response = admin_client.post(url, {"action": "daily", "_selected_action": list(apt.values_list("pk", flat=True))})
    assert response.status_code == 302
    assert set(apt.values_list("interval_minutes", flat=True)) == {1440}
    after = dict(Agent.objects.values_list("hostname", "config_version"))
    assert after["web-01"] == before["web-01"] + 1 and after["db-01"] == before["db-01"]
    assert SystemEvent.objects.filter(event_type="config_changed", actor="admin",
                                      metadata__changes__interval_minutes=1440).count() == 2
    assert admin_client.get(url, {"name__exact": "apt"}).context["cl"].result_count == 2


def test_agent_timeline_interleaves_events_and_commands_and_every_page_links_the_history(admin_client, fleet):
    web1 = fleet["web1"]
    page = admin_client.get(f"{AGENTS}{web1.pk}/change/").content.decode()
    timeline = page[page.index("Timeline"):]
    assert "scan_storage" in timeline and "command_created" in timeline
    assert f'/audit/events/?agent={web1.pk}' in page
    assert 'href="/audit/events/">Event history</a>' in page
