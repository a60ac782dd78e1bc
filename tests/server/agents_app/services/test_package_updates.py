"""Package updates (services/package_updates.py): approve / ignore, then dry-run → (confirm) → install."""

from __future__ import annotations

import pytest

from agents_app.choices import CommandType, UpdateStatus
from agents_app.models import Command, PackageUpdate, UpdateLog
from agents_app.services.package_updates import (
    updates_approve,
    updates_confirm_dependencies,
    updates_ignore,
    updates_install,
    updates_unignore,
)
from events_app.models import SystemEvent
from redflag.errors import InvalidRequest

pytestmark = pytest.mark.usefixtures("no_automatic_heartbeat")


def add_updates(agent, *names, package_type="apt", **fields):
    return [PackageUpdate.objects.create(agent=agent.model, package_type=package_type, name=name,
                                         current_version="1", available_version="2", **fields) for name in names]


def deliver(agent) -> dict[str, dict]:
    return {command["type"]: command for command in agent.post("checkin", {}).json()["commands"]}


def finish(agent, command, status="succeeded", **result):
    response = agent.post(f"commands/{command['id']}/result", {"status": status, **result})
    assert response.status_code == 200, response.content
    return response.json()


def test_approve_ignore_unignore_record_events(agent):
    add_updates(agent, "curl", "vim")
    assert updates_approve(updates=PackageUpdate.objects.filter(name="curl"), actor="alice") == 1
    assert updates_ignore(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 1
    assert updates_approve(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 0  # ignored stays
    assert updates_unignore(updates=PackageUpdate.objects.filter(name="vim"), actor="alice") == 1
    assert dict(PackageUpdate.objects.values_list("name", "status")) == {"curl": "approved", "vim": "pending"}
    events = SystemEvent.objects.filter(event_type="config_changed", actor="alice")
    assert events.count() == 3 and all(event.agent_id for event in events)


def test_install_without_new_dependencies_confirms_itself(agent):
    add_updates(agent, "curl", "libcurl4")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    dry_run = deliver(agent)[CommandType.DRY_RUN_UPDATE]
    assert dry_run["params"] == {"package_type": "apt", "packages": ["curl", "libcurl4"]}
    finish(agent, dry_run, dependencies=["curl", "libcurl4"], exit_code=0, duration_seconds=1.5,
           output="Inst curl [1] (2 Debian:12/stable)")
    install = deliver(agent)[CommandType.INSTALL_UPDATES]
    assert set(PackageUpdate.objects.values_list("status", flat=True)) == {UpdateStatus.INSTALLING}
    finish(agent, install, exit_code=0, duration_seconds=12.0, output="Setting up curl (2) ...")
    assert set(PackageUpdate.objects.values_list("status", flat=True)) == {UpdateStatus.INSTALLED}
    logs = list(UpdateLog.objects.order_by("created_at").values_list("action", "succeeded", "exit_code"))
    assert logs == [("dry_run", True, 0), ("install", True, 0)]
    assert UpdateLog.objects.get(action="install").output_tail == "Setting up curl (2) ..."


def test_install_with_new_dependencies_waits_for_an_admin(agent):
    add_updates(agent, "nginx")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], dependencies=["nginx", "libnginx-mod-http"])
    update = PackageUpdate.objects.get()
    assert update.status == UpdateStatus.PENDING_DEPENDENCIES and update.dependencies == ["libnginx-mod-http"]
    assert deliver(agent) == {}  # nothing installs by itself
    updates_confirm_dependencies(updates=PackageUpdate.objects.all(), actor="alice")
    confirm = deliver(agent)[CommandType.CONFIRM_DEPENDENCIES]
    assert confirm["params"]["dependencies"] == ["libnginx-mod-http"]
    finish(agent, confirm, status="failed", exit_code=100, output="E: Unable to fetch")
    update.refresh_from_db()
    assert update.status == UpdateStatus.FAILED
    assert UpdateLog.objects.get(action="install").succeeded is False


def test_failed_dry_run_fails_the_updates(agent):
    add_updates(agent, "curl")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], status="failed", exit_code=100)
    assert PackageUpdate.objects.get().status == UpdateStatus.FAILED
    assert not Command.objects.filter(command_type=CommandType.INSTALL_UPDATES).exists()


def test_install_groups_by_package_type(agent):
    add_updates(agent, "curl")
    add_updates(agent, "nginx:1.27", package_type="docker")
    dry_runs = updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    assert sorted(command.params["package_type"] for command in dry_runs) == ["apt", "docker"]


@pytest.mark.parametrize(("package_type", "name"), [
    ("apt", "-oAPT::Get::Trivial-Only=false"), ("apt", "openssh-server-"), ("dnf", "https://127.0.0.1/x.rpm"),
    ("dnf", "/tmp/x.rpm"), ("dnf", "@core"), ("dnf", "evil.rpm"), ("docker", "nginx;id"),
    ("winget", "--source=evil"), ("windows_update", "KB5034441 & calc"),
])
def test_a_stored_name_that_is_no_package_name_is_never_signed(agent, package_type, name):
    """A row from before names were checked at ingestion: the signer checks again and refuses."""
    add_updates(agent, name, package_type=package_type)
    with pytest.raises(InvalidRequest, match="refusing to sign a command for package"):
        updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    assert not Command.objects.exists() and PackageUpdate.objects.get().status == UpdateStatus.PENDING


def test_a_dry_run_that_reports_a_dependency_that_is_no_package_name_fails(agent):
    add_updates(agent, "curl")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], dependencies=["curl", "-o", "Dpkg::Options=x"])
    assert PackageUpdate.objects.get().status == UpdateStatus.FAILED
    assert deliver(agent) == {}  # no install was built over those names


def test_events_and_logs_name_the_packages_and_their_versions(agent):
    """What an auditor reads: which packages, from which version to which, on which machine, by which manager."""
    PackageUpdate.objects.create(agent=agent.model, package_type="apt", name="openssl", current_version="3.0.13-1",
                                 available_version="3.0.14-1")
    PackageUpdate.objects.create(agent=agent.model, package_type="apt", name="curl", current_version="7.88.1-10",
                                 available_version="7.88.1-10+deb12u8")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], dependencies=[], exit_code=0)
    finish(agent, deliver(agent)[CommandType.INSTALL_UPDATES], exit_code=0)

    host = agent.model.hostname
    versions = "curl 7.88.1-10 → 7.88.1-10+deb12u8, openssl 3.0.13-1 → 3.0.14-1"
    completed = SystemEvent.objects.filter(event_type="command_completed").order_by("seq")
    assert [event.message for event in completed] == [
        f"Dry run update (APT): curl, openssl on {host} succeeded: {versions}",
        f"Install updates (APT): curl, openssl on {host} succeeded: {versions}",
    ]
    installed = SystemEvent.objects.get(event_type="agent_install")
    assert installed.event_subtype == "success" and installed.agent_id == agent.model.pk
    assert installed.message == f"Install updates (APT): curl, openssl on {host} succeeded: {versions}"
    assert installed.metadata["package_type"] == "apt"
    assert installed.metadata["packages"] == [
        {"name": "curl", "from": "7.88.1-10", "to": "7.88.1-10+deb12u8"},
        {"name": "openssl", "from": "3.0.13-1", "to": "3.0.14-1"}]
    assert [str(log).split(" on ")[0] for log in UpdateLog.objects.order_by("created_at")] == [
        "Dry-run of curl, openssl", "Install of curl, openssl"]


def test_a_failed_install_is_recorded_as_a_failed_agent_install(agent):
    add_updates(agent, "nginx")
    updates_install(updates=PackageUpdate.objects.all(), actor="alice")
    finish(agent, deliver(agent)[CommandType.DRY_RUN_UPDATE], dependencies=[])
    finish(agent, deliver(agent)[CommandType.INSTALL_UPDATES], status="failed", exit_code=100)
    failed = SystemEvent.objects.get(event_type="agent_install")
    assert failed.event_subtype == "failed" and failed.severity == "error"
    assert failed.message.endswith("failed: nginx 1 → 2")
